//! Calendar periods in the configured time zone: the "today" of the live figures and
//! the day / week / month of the `stats` route.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The calendar date of `at` in `tz` (the `<date>` of the Redis keys).
pub fn local_day(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// The instant `day` starts in `tz`. On a day whose midnight a DST change skips, the
/// first instant that exists.
pub fn day_start(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    // Walk forward in minutes past a skipped midnight (a DST gap is at most hours).
    for _ in 0..=24 * 60 {
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return local.with_timezone(&Utc);
        }
        t += Duration::minutes(1);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// The `<W>` of maicivy's Go week keys (`analytics:stats:week:<W>:…`): Go formats it
/// with the layout `2006-W01`, in which `01` is the month, so it is the year and the
/// month (`2026-W12` for every day of December 2026), not an ISO week. Written
/// exactly so, because Go reads those keys by the same formula.
pub fn go_week_key(day: NaiveDate) -> String {
    format!("{:04}-W{:02}", day.year(), day.month())
}

/// The `<YYYY-MM>` of maicivy's month keys.
pub fn month_key(day: NaiveDate) -> String {
    format!("{:04}-{:02}", day.year(), day.month())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

/// A period resolved against a clock: its key and its `[from, to)` range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// `2025-12-08` for a day, `2025-W50` for an ISO week, `2025-12` for a month.
    pub key: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    /// maicivy's rule and sentence: no value (or an empty one) means `day`.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        match raw {
            None | Some("") | Some("day") => Ok(Self::Day),
            Some("week") => Ok(Self::Week),
            Some("month") => Ok(Self::Month),
            Some(_) => Err("Invalid period. Must be: day, week, or month".to_owned()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// The period of this kind that contains `now`.
    pub fn current(self, tz: Tz, now: DateTime<Utc>) -> Range {
        let today = local_day(tz, now);
        let (key, first, next) = match self {
            Self::Day => (
                today.format("%Y-%m-%d").to_string(),
                today,
                today + Duration::days(1),
            ),
            Self::Week => {
                let monday = today - Duration::days(today.weekday().num_days_from_monday().into());
                let iso = today.iso_week();
                (
                    format!("{}-W{:02}", iso.year(), iso.week()),
                    monday,
                    monday + Duration::days(7),
                )
            }
            Self::Month => {
                let first = today.with_day(1).expect("day 1 exists");
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .expect("first of a month exists");
                (today.format("%Y-%m").to_string(), first, next)
            }
        };
        Range {
            key,
            from: day_start(tz, first),
            to: day_start(tz, next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_in_utc() {
        let now = utc("2025-12-10T12:00:00Z");
        let d = Period::Day.current(chrono_tz::UTC, now);
        assert_eq!(d.key, "2025-12-10");
        assert_eq!(d.from, utc("2025-12-10T00:00:00Z"));
        assert_eq!(d.to, utc("2025-12-11T00:00:00Z"));
        let w = Period::Week.current(chrono_tz::UTC, now);
        assert_eq!(w.key, "2025-W50");
        assert_eq!(w.from, utc("2025-12-08T00:00:00Z"));
        let m = Period::Month.current(chrono_tz::UTC, now);
        assert_eq!(m.key, "2025-12");
        assert_eq!(m.to, utc("2026-01-01T00:00:00Z"));
        assert!(Period::parse(Some("year")).is_err());
        assert_eq!(Period::parse(None), Ok(Period::Day));
        assert_eq!(Period::parse(Some("")), Ok(Period::Day));
    }

    #[test]
    fn go_week_keys_are_year_and_month() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(go_week_key(day("2026-12-01")), "2026-W12");
        assert_eq!(go_week_key(day("2026-12-31")), "2026-W12");
        assert_eq!(go_week_key(day("2027-01-04")), "2027-W01");
        assert_eq!(month_key(day("2027-01-04")), "2027-01");
    }

    #[test]
    fn the_day_follows_the_time_zone() {
        let paris = chrono_tz::Europe::Paris;
        // 23:30 UTC is already tomorrow in Paris.
        let now = utc("2025-12-10T23:30:00Z");
        assert_eq!(local_day(paris, now).to_string(), "2025-12-11");
        assert_eq!(
            Period::Day.current(paris, now).from,
            utc("2025-12-10T23:00:00Z")
        );
    }
}
