//! maicivy's Go key layout: each key's name (Go's week key included), what it must
//! hold, its TTL, and which keys still matter today.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::period::{go_week_key, local_day, month_key};

pub(super) const VISITORS_KEY: &str = "analytics:realtime:visitors";
pub(super) const PRESENCE_KEY: &str = "maicivy-analytics:presence";
pub(super) const THEMES_KEY: &str = "analytics:themes:top";
/// The event whose `event_data.theme` Go counts in `analytics:themes:top`.
pub(super) const THEME_CHANGE: &str = "cv_theme_change";
/// Go's TTL of the day's `total_events`.
const DAY_TTL_SECS: i64 = 90 * 24 * 60 * 60;
/// Go's TTL of the week's and month's `total_events`.
const PERIOD_TTL_SECS: i64 = 365 * 24 * 60 * 60;
/// The presence set outlives the window, so that a heartbeat that comes late still
/// finds (and announces) the visitors who left; refreshed on every write.
pub(super) const PRESENCE_MIN_TTL_SECS: i64 = 10 * 60;

/// What a key of the layout must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Set,
    Counter,
    Hll,
    SortedSet,
}

/// The period part of Go's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Day,
    Week,
    Month,
}

impl Scope {
    pub(super) const ALL: [Self; 3] = [Self::Day, Self::Week, Self::Month];

    fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// The `<key>` of the period containing `day`, as Go formats it.
    fn key_of(self, day: NaiveDate) -> String {
        match self {
            Self::Day => day.format("%Y-%m-%d").to_string(),
            Self::Week => go_week_key(day),
            Self::Month => month_key(day),
        }
    }

    pub(super) fn total_ttl(self) -> i64 {
        match self {
            Self::Day => DAY_TTL_SECS,
            Self::Week | Self::Month => PERIOD_TTL_SECS,
        }
    }
}

/// One key of the layout: its name, what it must hold, and its family, the
/// low-cardinality label of `maicivy_redis_wrong_type_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) family: &'static str,
}

impl Key {
    pub(super) fn visitors() -> Self {
        Self {
            name: VISITORS_KEY.to_owned(),
            kind: Kind::Set,
            family: "visitors",
        }
    }

    pub(super) fn presence() -> Self {
        Self {
            name: PRESENCE_KEY.to_owned(),
            kind: Kind::SortedSet,
            family: "presence",
        }
    }

    pub(super) fn themes() -> Self {
        Self {
            name: THEMES_KEY.to_owned(),
            kind: Kind::SortedSet,
            family: "themes",
        }
    }

    pub(super) fn total(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:stats:{}:{}:total_events",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Counter,
            family: match scope {
                Scope::Day => "day_total",
                Scope::Week => "week_total",
                Scope::Month => "month_total",
            },
        }
    }

    pub(super) fn letters(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:stats:{}:{}:letters_generated",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Counter,
            family: match scope {
                Scope::Day => "day_letters",
                Scope::Week => "week_letters",
                Scope::Month => "month_letters",
            },
        }
    }

    pub(super) fn unique(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:visitors:unique:{}:{}",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Hll,
            family: match scope {
                Scope::Day => "day_unique",
                Scope::Week => "week_unique",
                Scope::Month => "month_unique",
            },
        }
    }
}

/// The days Monday .. `today` of `today`'s ISO week.
pub(super) fn week_days(today: NaiveDate) -> Vec<NaiveDate> {
    let monday = today - chrono::Duration::days(today.weekday().num_days_from_monday().into());
    monday.iter_days().take_while(|d| *d <= today).collect()
}

/// The keys whose type still matters at `now`: those this server writes today or
/// reads for today's figures and this week's, month's and themes' answers.
pub(super) fn live_key_names(tz: Tz, now: DateTime<Utc>) -> HashSet<String> {
    let today = local_day(tz, now);
    let mut keys = vec![Key::visitors(), Key::presence(), Key::themes()];
    for scope in Scope::ALL {
        keys.extend([
            Key::total(scope, today),
            Key::letters(scope, today),
            Key::unique(scope, today),
        ]);
    }
    for day in week_days(today) {
        keys.extend([
            Key::total(Scope::Day, day),
            Key::letters(Scope::Day, day),
            Key::unique(Scope::Day, day),
        ]);
    }
    keys.into_iter().map(|k| k.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_keys_cover_the_iso_week() {
        let tz = chrono_tz::UTC;
        // A Wednesday: Monday's day keys still matter for the week.
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let live = live_key_names(tz, now);
        assert!(live.contains("analytics:stats:day:2026-11-30:total_events"));
        assert!(live.contains("analytics:stats:week:2026-W12:total_events"));
        assert!(!live.contains("analytics:stats:day:2026-11-29:total_events"));
    }
}
