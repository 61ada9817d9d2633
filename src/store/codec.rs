//! How times, UUIDs and counts cross the driver: as text in one fixed form, so that
//! one Rust path serves both backends without sqlx's chrono or uuid features.

use chrono::{DateTime, Utc};

/// The one text form of a time in the database, in UTC: fixed width, so that on
/// SQLite (where times are TEXT) comparing texts is comparing times, and what
/// PostgreSQL's `to_char(…, 'YYYY-MM-DD HH24:MI:SS.US')` gives back. Microseconds, as
/// PostgreSQL's `TIMESTAMP` keeps.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// `at` in `TIME_FORMAT`, written digit by digit: the writer formats two times per
/// event, and chrono's formatter interprets its format string every time.
pub(super) fn time_to_sql(at: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let year = at.year();
    let nanos = at.nanosecond();
    // Years of other widths and leap seconds: chrono's own rendering.
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return at.format(TIME_FORMAT).to_string();
    }
    let mut out = String::with_capacity(26);
    for (n, width, after) in [
        (year as u32, 4, '-'),
        (at.month(), 2, '-'),
        (at.day(), 2, ' '),
        (at.hour(), 2, ':'),
        (at.minute(), 2, ':'),
        (at.second(), 2, '.'),
    ] {
        push_digits(&mut out, n, width);
        out.push(after);
    }
    push_digits(&mut out, nanos / 1000, 6);
    out
}

/// 9999-12-31 23:59:59: later than any event, and a time both backends read (an
/// upper bound for "every event since").
pub(super) fn end_of_time() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).expect("a time")
}

fn push_digits(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u32.pow(place) % 10) as u8));
    }
}

fn decode_error(what: &str, raw: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: unexpected value {raw:?}").into())
}

pub(super) fn time_from_sql(raw: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| decode_error("a time", raw))
}

/// A minute bucket (`YYYY-MM-DD HH:MM`, UTC) as the dialects' `minute_text` give it.
pub(super) fn minute_from_sql(raw: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M")
        .map(|t| t.and_utc())
        .map_err(|_| decode_error("a minute", raw))
}

pub(super) fn uuid_from_sql(raw: &str) -> Result<uuid::Uuid, sqlx::Error> {
    uuid::Uuid::parse_str(raw).map_err(|_| decode_error("a UUID", raw))
}

pub(super) fn count(n: i64) -> u64 {
    n.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_have_one_fixed_width_text_that_sorts_as_time() {
        let at = Utc
            .with_ymd_and_hms(2025, 12, 8, 9, 5, 7)
            .unwrap()
            .checked_add_signed(chrono::Duration::nanoseconds(123_456_789))
            .unwrap();
        assert_eq!(time_to_sql(at), "2025-12-08 09:05:07.123456");
        assert_eq!(
            time_from_sql("2025-12-08 09:05:07.123456").unwrap(),
            at - chrono::Duration::nanoseconds(789)
        );
        let whole = Utc.with_ymd_and_hms(2025, 12, 8, 9, 5, 7).unwrap();
        assert_eq!(time_to_sql(whole), "2025-12-08 09:05:07.000000");
        assert!(time_to_sql(whole) < time_to_sql(at));
        assert!(time_from_sql("yesterday").is_err());
        // The hand-written rendering is chrono's, across widths and digits.
        for (y, mo, d, h, mi, sec, ns) in [
            (1, 1, 1, 0, 0, 0, 0),
            (999, 2, 28, 23, 59, 59, 999_999_999),
            (1970, 1, 1, 0, 0, 0, 1_000),
            (2026, 12, 31, 12, 34, 56, 789_012_345),
            (9999, 12, 31, 23, 59, 59, 999_999),
            (10000, 1, 1, 0, 0, 0, 0),
        ] {
            let t = Utc.with_ymd_and_hms(y, mo, d, h, mi, sec).unwrap()
                + chrono::Duration::nanoseconds(ns);
            assert_eq!(time_to_sql(t), t.format(TIME_FORMAT).to_string());
        }
        assert_eq!(
            minute_from_sql("2025-12-08 09:05").unwrap(),
            Utc.with_ymd_and_hms(2025, 12, 8, 9, 5, 0).unwrap()
        );
    }
}
