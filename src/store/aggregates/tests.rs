//! The aggregates' arithmetic: day splits, heat ranges, what a delta counts.

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn ranges_split_into_whole_local_days_and_edges() {
    let paris = chrono_tz::Europe::Paris;
    let from = utc("2025-12-07T23:00:00Z"); // midnight in Paris
    let to = utc("2025-12-10T23:00:00Z");
    let s = split_days(paris, from, to);
    let d8 = day_number(NaiveDate::from_ymd_opt(2025, 12, 8).unwrap());
    assert_eq!((s.first, s.end), (d8, d8 + 3));
    assert_eq!((s.head_end, s.tail_start), (from, to));
    let s = split_days(
        paris,
        from + chrono::Duration::hours(1),
        to + chrono::Duration::hours(2),
    );
    assert_eq!((s.first, s.end), (d8 + 1, d8 + 3));
    assert_eq!(s.head_end, utc("2025-12-08T23:00:00Z"));
    assert_eq!(s.tail_start, to);
    let s = split_days(paris, from, from + chrono::Duration::hours(5));
    assert!(s.first >= s.end);
    assert_eq!(
        day_of_number(d8),
        NaiveDate::from_ymd_opt(2025, 12, 8).unwrap()
    );
}

#[test]
fn heat_ranges_cover_everything_after_a_minute_once() {
    let r = heat_ranges(61);
    assert_eq!(r.minutes, (61, 120));
    assert_eq!(r.hours, (2, 24));
    assert_eq!(r.days_from, 1);
    let r = heat_ranges(24 * 60);
    assert_eq!(r.minutes, (1440, 1440));
    assert_eq!(r.hours, (24, 24));
    assert_eq!(r.days_from, 1);
    assert_eq!(ceil_bucket(120_000_001, 60_000_000), 3);
    assert_eq!(ceil_bucket(120_000_000, 60_000_000), 2);
    assert_eq!(minute_of(-1), -1);
}

#[test]
fn a_delta_counts_what_the_raw_queries_count() {
    let tz = chrono_tz::UTC;
    let data = |v: Value| v.as_object().unwrap().clone();
    let letter = data(serde_json::json!({"letter_type": "motivation"}));
    let click = data(serde_json::json!({"x": 2.5, "y": -0.4}));
    let bad = data(serde_json::json!({"x": "1", "y": 2}));
    let theme = data(serde_json::json!({"theme": "backend"}));
    let at = micros(utc("2025-12-08T12:00:30Z"));
    let e = |id, kind, d, page, at| AggEvent {
        id,
        visitor: "v",
        event_type: kind,
        data: d,
        page_url: page,
        at,
    };
    let mut delta = Delta::default();
    for ev in [
        e("a", "letter_generate", Some(&letter), None, at),
        e("b", "button_click", Some(&click), Some("/cv"), at),
        e("c", "link_click", Some(&bad), Some("/cv"), at),
        e("d", "cv_theme_change", Some(&theme), None, at),
        e("e", "page_view", None, Some("/cv"), at),
        e("f", "page_view", None, None, at),
    ] {
        delta.add(tz, &ev);
    }
    let day = utc_day_of(at);
    assert_eq!(
        delta.days[&day],
        DayCounts {
            events: 6,
            letters: 1,
            motivation: 1,
            anti_motivation: 0
        }
    );
    assert_eq!(
        delta.heat.len(),
        6,
        "one cell at three levels, per page and in all"
    );
    let key = delta.heat.keys().next().unwrap();
    assert_eq!((f64::from_bits(key.3), f64::from_bits(key.4)), (2.0, 0.0));
    assert!(f64::from_bits(key.4).is_sign_positive());
    assert_eq!(delta.themes["backend"], 1);
    assert_eq!(delta.minute_pages.len(), 1);
    let v = &delta.visitors[&(day, "v".to_owned())];
    assert_eq!(
        v.page,
        Some((at, "f".to_owned(), None)),
        "latest by (time, id)"
    );
}
