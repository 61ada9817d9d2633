//! The aggregates: what the writer adds up in the transaction of each batch, so that
//! a read route costs as many rows as its period has days (or minutes, or hours),
//! never as many as it has events.
//!
//! | table | key | what |
//! |---|---|---|
//! | `agg_day` | local day | events, letters (and `motivation` / `anti_motivation`), distinct visitors (exact) |
//! | `agg_day_type` | local day, event type | events |
//! | `agg_day_sketch` | local day | the day's visitors as HyperLogLog registers (`Sketch`) |
//! | `agg_visitor_day` | local day, visitor | last seen; latest `page_view` (time, id, page) |
//! | `agg_minute` | UTC minute | events |
//! | `agg_minute_page` | UTC minute, page | `page_view` events |
//! | `agg_heat` | level (minute, hour, UTC day), bucket, page, x, y | clicks |
//! | `agg_theme` | theme | `cv_theme_change` views, all time |
//!
//! `Delta` is what a set of events adds to them, computed in Rust from the events
//! the batch really inserted (a retried event already stored adds nothing), and
//! applied by `apply_delta` (`apply_impl!`) with one multi-row upsert per table, keys in
//! sorted order (concurrent writers on PostgreSQL lock rows in one order). The
//! same `Delta` folds rows the writer did not count (the backfill, maicivy's rows):
//! every part of it is order-independent (sums, maxima, a set, a union of sketches).
//!
//! Local days are those of the store's time zone (`agg_state.timezone`). Unique
//! visitors of one day are exact (`agg_day.visitors`, from the distinct
//! `agg_visitor_day` rows); of several days, the estimate of the union of their
//! sketches.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::period::{day_start, local_day};

mod apply;
mod sketch;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use apply::{add_rows, apply_impl};
pub(crate) use sketch::{Sketch, visitor_hash};
pub(crate) use state::state_impl;

/// Buckets of `agg_heat`.
pub(crate) const LEVEL_MINUTE: i64 = 0;
pub(crate) const LEVEL_HOUR: i64 = 1;
pub(crate) const LEVEL_DAY: i64 = 2;
/// Added to a level: the same buckets with every page's clicks together (`page_url`
/// ''), so that the heatmap of all pages reads a few cells per bucket.
pub(crate) const ALL_PAGES: i64 = 3;

/// The day number stored for a local date: days since 1970-01-01.
pub(crate) fn day_number(day: NaiveDate) -> i64 {
    (day - NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date")).num_days()
}

pub(crate) fn day_of_number(n: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date") + chrono::Duration::days(n)
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The Unix minute (hour, day) that contains `us`.
pub(crate) fn minute_of(us: i64) -> i64 {
    us.div_euclid(60_000_000)
}
pub(crate) fn hour_of(us: i64) -> i64 {
    us.div_euclid(3_600_000_000)
}
pub(crate) fn utc_day_of(us: i64) -> i64 {
    us.div_euclid(86_400_000_000)
}

/// The first whole bucket of `width` microseconds that starts at or after `us`.
pub(crate) fn ceil_bucket(us: i64, width: i64) -> i64 {
    us.div_euclid(width) + i64::from(us.rem_euclid(width) != 0)
}

/// How a half-open range `[from, to)` splits into whole local days of `tz` and the
/// parts before and after them, which are too short to be a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DaySplit {
    /// Whole days `[first, end)` (day numbers); empty when `first >= end`.
    pub first: i64,
    pub end: i64,
    /// `[from, head_end)` and `[tail_start, to)`; empty when the bounds meet.
    pub head_end: DateTime<Utc>,
    pub tail_start: DateTime<Utc>,
}

pub(crate) fn split_days(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> DaySplit {
    let d = local_day(tz, from);
    let first = if day_start(tz, d) == from {
        d
    } else {
        d.succ_opt().unwrap_or(d)
    };
    let last = local_day(tz, to);
    if from >= to || first >= last {
        return DaySplit {
            first: 0,
            end: 0,
            head_end: to.max(from),
            tail_start: to.max(from),
        };
    }
    DaySplit {
        first: day_number(first),
        end: day_number(last),
        head_end: day_start(tz, first),
        tail_start: day_start(tz, last),
    }
}

/// One event as the aggregates see it: stored values (a page URL already cut to
/// what the column holds), the time in Unix microseconds.
pub(crate) struct AggEvent<'a> {
    pub id: &'a str,
    pub visitor: &'a str,
    pub event_type: &'a str,
    pub data: Option<&'a Map<String, Value>>,
    pub page_url: Option<&'a str>,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DayCounts {
    pub events: i64,
    pub letters: i64,
    pub motivation: i64,
    pub anti_motivation: i64,
}

/// A visitor's part of one day in a `Delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VisitorDay {
    pub last_seen: i64,
    /// The latest `page_view`: time, event id, page (`None`: a page view without).
    pub page: Option<(i64, String, Option<String>)>,
}

/// What a set of events adds to the aggregates; `BTreeMap`s, so that keys come out
/// sorted.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub days: BTreeMap<i64, DayCounts>,
    pub day_types: BTreeMap<(i64, String), i64>,
    pub visitors: BTreeMap<(i64, String), VisitorDay>,
    pub minutes: BTreeMap<i64, i64>,
    pub minute_pages: BTreeMap<(i64, String), i64>,
    /// (level, bucket, page, x bits, y bits) → clicks.
    pub heat: BTreeMap<(i64, i64, String, u64, u64), i64>,
    pub themes: BTreeMap<String, i64>,
}

/// A JSON number rounded half to even, as maicivy's `%.0f` (`None` for anything
/// else, or a number that is not finite).
fn rounded(v: Option<&Value>) -> Option<f64> {
    let v = v?.as_f64()?;
    v.is_finite().then(|| v.round_ties_even() + 0.0)
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    pub fn add(&mut self, tz: Tz, e: &AggEvent<'_>) {
        let day = day_number(local_day(tz, from_micros(e.at)));
        let text = |k: &str| e.data.and_then(|d| d.get(k)).and_then(Value::as_str);
        let counts = self.days.entry(day).or_default();
        counts.events += 1;
        if e.event_type == crate::domain::LETTER_GENERATE {
            counts.letters += 1;
            match text("letter_type") {
                Some("motivation") => counts.motivation += 1,
                Some("anti_motivation") => counts.anti_motivation += 1,
                _ => {}
            }
        }
        *self
            .day_types
            .entry((day, e.event_type.to_owned()))
            .or_default() += 1;
        let minute = minute_of(e.at);
        *self.minutes.entry(minute).or_default() += 1;

        let page_view = e.event_type == "page_view";
        let visitor = self
            .visitors
            .entry((day, e.visitor.to_owned()))
            .or_insert(VisitorDay {
                last_seen: e.at,
                page: None,
            });
        visitor.last_seen = visitor.last_seen.max(e.at);
        if page_view {
            let newer = match &visitor.page {
                None => true,
                Some((at, id, _)) => (e.at, e.id) > (*at, id.as_str()),
            };
            if newer {
                visitor.page = Some((e.at, e.id.to_owned(), e.page_url.map(str::to_owned)));
            }
            if let Some(page) = e.page_url {
                *self
                    .minute_pages
                    .entry((minute, page.to_owned()))
                    .or_default() += 1;
            }
        }
        match e.event_type {
            "button_click" | "link_click" => {
                let field = |k: &str| e.data.and_then(|d| d.get(k));
                if let (Some(x), Some(y)) = (rounded(field("x")), rounded(field("y"))) {
                    let page = e.page_url.unwrap_or("");
                    for (level, bucket) in [
                        (LEVEL_MINUTE, minute),
                        (LEVEL_HOUR, hour_of(e.at)),
                        (LEVEL_DAY, utc_day_of(e.at)),
                    ] {
                        // Per page, and all pages together (`ALL_PAGES` levels up).
                        for (level, page) in [(level, page), (level + ALL_PAGES, "")] {
                            *self
                                .heat
                                .entry((level, bucket, page.to_owned(), x.to_bits(), y.to_bits()))
                                .or_default() += 1;
                        }
                    }
                }
            }
            "cv_theme_change" => {
                if let Some(theme) = text("theme") {
                    *self.themes.entry(theme.to_owned()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

/// The bucket ranges of `agg_heat` that together hold exactly the clicks at or
/// after `from_us` (a whole minute; the seconds before it are read raw): minutes up
/// to the next whole hour, hours up to the next whole UTC day, then days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeatRanges {
    pub minutes: (i64, i64),
    pub hours: (i64, i64),
    pub days_from: i64,
}

pub(crate) fn heat_ranges(first_minute: i64) -> HeatRanges {
    let first_hour = first_minute.div_euclid(60) + i64::from(first_minute.rem_euclid(60) != 0);
    let first_day = first_hour.div_euclid(24) + i64::from(first_hour.rem_euclid(24) != 0);
    HeatRanges {
        minutes: (first_minute, first_hour * 60),
        hours: (first_hour, first_day * 24),
        days_from: first_day,
    }
}

/// The aggregate tables a rebuild empties (`agg_state` stays, reset).
pub(crate) const TABLES: [&str; 8] = [
    "agg_day",
    "agg_day_type",
    "agg_day_sketch",
    "agg_visitor_day",
    "agg_minute",
    "agg_minute_page",
    "agg_heat",
    "agg_theme",
];

/// What a store knows of its aggregates: the zone of their days, and whether they
/// answer the routes yet (until the backfill is done, routes query the events).
pub(crate) struct AggConfig {
    pub tz: Tz,
    pub ready: std::sync::atomic::AtomicBool,
    /// `set_raw_reads(true)`: the routes query the events.
    pub raw_only: std::sync::atomic::AtomicBool,
}

impl AggConfig {
    pub fn new(tz: Tz, ready: bool) -> Self {
        Self {
            tz,
            ready: std::sync::atomic::AtomicBool::new(ready),
            raw_only: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The `ON CONFLICT` condition under which an upserted `agg_visitor_day` row's page
/// view is later than the stored one (by time, then id in byte order, as the raw
/// query orders them).
macro_rules! newer_page {
    ($d:ident) => {
        concat!(
            "(excluded.page_at IS NOT NULL AND (agg_visitor_day.page_at IS NULL \
             OR excluded.page_at > agg_visitor_day.page_at \
             OR (excluded.page_at = agg_visitor_day.page_at AND excluded.page_id",
            $d!(binary_order),
            " > agg_visitor_day.page_id)))"
        )
    };
}
pub(crate) use newer_page;

/// A row of `analytics_events` as the fold reads it.
pub(crate) struct FoldRow {
    pub id: String,
    pub visitor: String,
    pub event_type: String,
    /// `event_data` as JSON text.
    pub data: Option<String>,
    pub page_url: Option<String>,
    /// `created_at` in `TIME_FORMAT`.
    pub at: String,
    pub deleted: bool,
    /// Counted by the writer already (PostgreSQL: its transaction is one of ours).
    pub own: bool,
}

/// The delta of the rows to fold (neither deleted nor the writer's), and how many.
pub(crate) fn delta_of_rows(tz: Tz, rows: &[FoldRow]) -> Result<(Delta, u64), sqlx::Error> {
    let mut delta = Delta::default();
    let mut n = 0;
    for r in rows {
        if r.deleted || r.own {
            continue;
        }
        let at = micros(super::time_from_sql(&r.at)?);
        let data: Option<Map<String, Value>> = r
            .data
            .as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            });
        delta.add(
            tz,
            &AggEvent {
                id: &r.id,
                visitor: &r.visitor,
                event_type: &r.event_type,
                data: data.as_ref(),
                page_url: r.page_url.as_deref(),
                at,
            },
        );
        n += 1;
    }
    Ok((delta, n))
}
