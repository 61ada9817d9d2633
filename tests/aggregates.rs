//! The aggregates (src/store/aggregates/) against the raw queries they replace:
//! random events across local-day and time-zone boundaries on both stores (the
//! PostgreSQL ones partly written behind the store's back, as maicivy's Go backend
//! does, some soft-deleted); a backfill interrupted and resumed; a restart;
//! retention; the time zone changed; the timeline's cursor.
//!
//! "Raw" is the same store with `set_raw_reads(true)`: the queries over the events
//! that every route ran before the aggregates.

mod common;

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use common::{PgTestDb, TestServer, visitor};
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::period::{day_start, local_day};
use maicivy_analytics::store::{self, EventStore, Summary, TimelineCursor};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use sqlx::Connection;

const ZONES: [Tz; 5] = [
    chrono_tz::UTC,
    chrono_tz::Asia::Kolkata,
    chrono_tz::America::New_York,
    chrono_tz::Asia::Kathmandu,
    chrono_tz::Australia::Lord_Howe,
];

/// The first second of the random events: the days around the change to daylight
/// saving time in New York (2025-03-09).
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 7, 12, 0, 0).unwrap()
}
const SPAN_S: i64 = 4 * 86_400;

/// One random event.
#[derive(Debug, Clone)]
struct Spec {
    at_s: i64,
    visitor: u8,
    kind: u8,
    page: u8,
    variant: u8,
    id: u128,
    /// PostgreSQL: inserted by SQL behind the store (as Go does), maybe deleted.
    foreign: bool,
    deleted: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    // Times anywhere, or within ten minutes of a UTC hour or half hour, where the
    // local midnights of the zones above fall.
    let at = prop_oneof![
        0..SPAN_S,
        (0..SPAN_S / 1800, -600i64..600).prop_map(|(h, d)| (h * 1800 + d).clamp(0, SPAN_S - 1)),
    ];
    (
        at,
        0u8..10,
        0u8..6,
        0u8..4,
        0u8..24,
        any::<u128>(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(at_s, visitor, kind, page, variant, id, foreign, deleted)| Spec {
                at_s,
                visitor,
                kind,
                page,
                variant,
                id,
                foreign,
                deleted: foreign && deleted,
            },
        )
}

#[derive(Debug, Clone)]
struct Case {
    tz: usize,
    events: Vec<Spec>,
    /// Sizes of the batches the writer gets (cycled).
    batches: Vec<usize>,
    /// A batch stored twice (a retry after a COMMIT of unknown outcome).
    retry: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..ZONES.len(),
        prop::collection::vec(spec(), 0..150),
        prop::collection::vec(1usize..40, 1..6),
        any::<usize>(),
    )
        .prop_map(|(tz, events, batches, retry)| Case {
            tz,
            events,
            batches,
            retry,
        })
}

fn new_event(s: &Spec) -> NewEvent {
    let (kind, data): (&str, Value) = match s.kind {
        0 => ("page_view", json!({})),
        1 => (
            "letter_generate",
            match s.variant % 4 {
                0 => json!({"letter_type": "motivation"}),
                1 => json!({"letter_type": "anti_motivation"}),
                2 => json!({"letter_type": "something_else"}),
                _ => json!({}),
            },
        ),
        2 | 3 => {
            let coords = [
                json!(450),
                json!(450.4),
                json!(2.5),
                json!(3.5),
                json!(-0.4),
                json!("450"),
            ];
            let x = coords[usize::from(s.variant) % 6].clone();
            let y = coords[usize::from(s.variant / 6) % 6].clone();
            (
                if s.kind == 2 {
                    "button_click"
                } else {
                    "link_click"
                },
                json!({ "x": x, "y": y }),
            )
        }
        4 => {
            let themes = [json!("backend"), json!("frontend"), json!("Zeta"), json!(5)];
            let theme = themes[usize::from(s.variant) % 4].clone();
            ("cv_theme_change", json!({ "theme": theme }))
        }
        _ => ("form_submit", json!({"n": s.variant})),
    };
    NewEvent {
        id: uuid::Uuid::from_u128(s.id),
        event_type: EventType::parse(kind).unwrap(),
        visitor_id: VisitorId::from_uuid(uuid::Uuid::from_u128(
            0x3f1c_0000 + u128::from(s.visitor),
        )),
        event_data: data.as_object().unwrap().clone(),
        page_url: (s.page > 0).then(|| format!("/p{}", s.page)),
        referrer: None,
        occurred_at: start() + Duration::seconds(s.at_s),
    }
}

/// Folds until the store says it has caught up (bounded).
async fn fold_all(store: &dyn EventStore) {
    for _ in 0..10_000 {
        if store.fold_step().await.unwrap().caught_up {
            assert!(store.aggregates_ready());
            return;
        }
    }
    panic!("the fold never caught up");
}

/// `f` answered from the aggregates, then from the events.
macro_rules! both {
    ($store:expr, $call:expr) => {{
        $store.set_raw_reads(false);
        let agg = $call.await.unwrap();
        $store.set_raw_reads(true);
        let raw = $call.await.unwrap();
        $store.set_raw_reads(false);
        (agg, raw)
    }};
}

fn close_enough(agg: &Summary, raw: &Summary, what: &str) {
    assert_eq!(
        (agg.total_events, agg.letters_generated),
        (raw.total_events, raw.letters_generated),
        "{what}: exact counts"
    );
    let (a, r) = (agg.unique_visitors as f64, raw.unique_visitors as f64);
    assert!(
        (a - r).abs() <= (r * 0.02).max(1.0),
        "{what}: unique visitors {a} against {r}"
    );
}

/// Every read the routes make, from the aggregates and raw, over the days of the
/// events in `tz`.
async fn compare(store: &dyn EventStore, tz: Tz) {
    assert!(store.aggregates_ready(), "the aggregates answer");
    let first = local_day(tz, start()) - Duration::days(1);
    let last = local_day(tz, start() + Duration::seconds(SPAN_S)) + Duration::days(1);
    let mut day = first;
    while day <= last {
        let (from, to) = (day_start(tz, day), day_start(tz, day + Duration::days(1)));
        let (agg, raw) = both!(store, store.summary(from, to));
        assert_eq!(agg, raw, "day {day}: exact, unique visitors too");
        day += Duration::days(1);
    }
    // A week and a month as the routes ask them: whole local days.
    let (from, to) = (
        day_start(tz, first),
        day_start(tz, last + Duration::days(1)),
    );
    let (agg, raw) = both!(store, store.summary(from, to));
    close_enough(&agg, &raw, "all days");
    let (agg, raw) = both!(store, store.letters(from, to, tz));
    assert_eq!(agg, raw, "letters per day");
    // Ranges that are not whole days: edges raw, the rest aggregated.
    for (a, b) in [
        (
            start() + Duration::minutes(433),
            start() + Duration::hours(53),
        ),
        (
            start() - Duration::seconds(17),
            start() + Duration::seconds(SPAN_S + 99),
        ),
        (
            day_start(tz, local_day(tz, start()) + Duration::days(1)),
            Utc::now() + Duration::days(1),
        ),
    ] {
        let (agg, raw) = both!(store, store.summary(a, b));
        close_enough(&agg, &raw, &format!("{a}..{b}"));
        let (agg, raw) = both!(store, store.letters(a, b, tz));
        assert_eq!(agg, raw, "letters {a}..{b}");
    }
    for (a, b) in [
        (start() + Duration::hours(20), start() + Duration::hours(23)),
        (
            start() + Duration::seconds(3_601 * 7),
            start() + Duration::seconds(3_599 * 12),
        ),
    ] {
        let (agg, raw) = both!(store, store.events_per_minute(a, b));
        assert_eq!(agg, raw, "events per minute {a}..{b}");
    }
    for back_s in [0, 59, 3_600, 86_400 + 7, 2 * 86_400 + 3_599, SPAN_S] {
        let since = start() + Duration::seconds(SPAN_S - back_s);
        let (agg, raw) = both!(store, store.pages_since(since, 100));
        assert_eq!(agg, raw, "pages since {since}");
        let (agg, raw) = both!(store, store.pages_since(since, 2));
        assert_eq!(agg, raw, "two pages since {since}");
        for page in [None, Some("/p1"), Some("/nowhere")] {
            let (agg, raw) = both!(store, store.heatmap(since, page));
            assert_eq!(agg, raw, "heatmap since {since} on {page:?}");
        }
        let (mut agg, mut raw) = both!(store, store.visitors_since(since));
        agg.sort();
        raw.sort();
        assert_eq!(agg, raw, "visitors since {since}");
    }
    let (agg, raw) = both!(store, store.top_themes(20));
    assert_eq!(agg, raw, "themes");
}

/// Stores the case: the writer's batches (one of them twice), and on PostgreSQL
/// the foreign rows by SQL.
async fn store_case(store: &dyn EventStore, case: &Case, pg_url: Option<&str>) {
    let (own, foreign): (Vec<&Spec>, Vec<&Spec>) = case
        .events
        .iter()
        .partition(|s| !(s.foreign && pg_url.is_some()));
    let own: Vec<NewEvent> = own.into_iter().map(new_event).collect();
    let mut rest = &own[..];
    let mut sizes = case.batches.iter().cycle();
    let mut n = 0;
    while !rest.is_empty() {
        let take = (*sizes.next().unwrap()).min(rest.len());
        let (batch, tail) = rest.split_at(take);
        store.insert_batch(batch).await.unwrap();
        if n == case.retry % case.batches.len() {
            store.insert_batch(batch).await.unwrap();
        }
        n += 1;
        rest = tail;
    }
    if let Some(url) = pg_url {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        for s in foreign {
            insert_like_go(&mut c, &new_event(s), s.deleted).await;
        }
    }
}

/// A row of `analytics_events` written as maicivy's Go backend writes it.
async fn insert_like_go(c: &mut sqlx::PgConnection, e: &NewEvent, deleted: bool) {
    let at = e.occurred_at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    sqlx::query(
        "INSERT INTO analytics_events (id, visitor_id, event_type, event_data, page_url, \
         referrer, session_duration, created_at, updated_at, deleted_at) VALUES \
         ($1::uuid, $2::uuid, $3, $4::jsonb, $5, NULL, 0, $6::timestamp, $6::timestamp, \
         CASE WHEN $7 THEN $6::timestamp END)",
    )
    .bind(e.id.to_string())
    .bind(e.visitor_id.to_string())
    .bind(e.event_type.as_str())
    .bind(Value::Object(e.event_data.clone()).to_string())
    .bind(e.page_url.as_deref())
    .bind(at)
    .bind(deleted)
    .execute(c)
    .await
    .unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cases(n: u32) -> TestRunner {
    TestRunner::new(PropConfig {
        cases: n,
        failure_persistence: None,
        ..PropConfig::default()
    })
}

#[test]
fn sqlite_aggregates_equal_the_raw_queries() {
    let rt = runtime();
    cases(48)
        .run(&case(), |case| {
            rt.block_on(async {
                let tz = ZONES[case.tz];
                let store = store::connect_in("sqlite::memory:", tz).await.unwrap();
                store_case(&*store, &case, None).await;
                compare(&*store, tz).await;
                store.close().await;
            });
            Ok(())
        })
        .unwrap();
}

/// Empties a PostgreSQL test database between cases, aggregates and their state too.
async fn reset_pg(url: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "TRUNCATE analytics_events, agg_day, agg_day_type, agg_day_sketch, agg_visitor_day, \
         agg_minute, agg_minute_page, agg_heat, agg_theme, agg_own_xacts; \
         UPDATE agg_state SET timezone = NULL, ready = 0, cursor_at = NULL, cursor_id = NULL, \
         folded = 0",
    )
    .execute(&mut c)
    .await
    .unwrap();
}

#[test]
fn postgres_aggregates_equal_the_raw_queries_with_rows_written_behind_the_store() {
    let rt = runtime();
    let Some(db) = rt.block_on(PgTestDb::create()) else {
        return;
    };
    rt.block_on(async { store::connect(&db.url).await.unwrap().close().await });
    cases(16)
        .run(&case(), |case| {
            rt.block_on(async {
                reset_pg(&db.url).await;
                let tz = ZONES[case.tz];
                let store = store::connect_in(&db.url, tz).await.unwrap();
                store_case(&*store, &case, Some(&db.url)).await;
                fold_all(&*store).await;
                compare(&*store, tz).await;
                store.close().await;
            });
            Ok(())
        })
        .unwrap();
}

/// The aggregate tables, row by row, as text: two stores that folded the same rows
/// have the same.
async fn dump_sqlite(url: &str) -> Vec<String> {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let mut out = Vec::new();
    for sql in dump_queries("hex(sketch)") {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap();
        out.extend(rows);
    }
    out
}

async fn dump_pg(url: &str) -> Vec<String> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut out = Vec::new();
    for sql in dump_queries("encode(sketch, 'hex')") {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap();
        out.extend(rows);
    }
    out
}

const DUMPS: [(&str, &str); 8] = [
    (
        "agg_day",
        "day, events, letters, motivation, anti_motivation, visitors",
    ),
    ("agg_day_type", "day, event_type, events"),
    ("agg_day_sketch", "day, HEX"),
    (
        "agg_visitor_day",
        "day, visitor_id, last_seen, page_at, page_id, page_url",
    ),
    ("agg_minute", "minute, events"),
    ("agg_minute_page", "minute, page_url, views"),
    ("agg_heat", "level, bucket, page_url, x, y, clicks"),
    ("agg_theme", "theme, views"),
];

/// One query per aggregate table: its rows as text, in order.
fn dump_queries(hexed: &str) -> Vec<String> {
    DUMPS
        .iter()
        .map(|(table, columns)| {
            let expr: Vec<String> = columns
                .split(", ")
                .map(|col| {
                    let col = if col == "HEX" { hexed } else { col };
                    format!("COALESCE(CAST({col} AS TEXT), '-')")
                })
                .collect();
            format!(
                "SELECT '{table}|' || {} FROM {table} ORDER BY 1",
                expr.join(" || '|' || ")
            )
        })
        .collect()
}

/// Events spread over 40 days, for the backfill, retention and restart tests.
fn history(n: usize, until: DateTime<Utc>) -> Vec<NewEvent> {
    let mut runner = TestRunner::deterministic();
    let specs = prop::collection::vec(spec(), n..=n)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut e = new_event(s);
            // The same specs for every `until`: their ids must differ.
            e.id = uuid::Uuid::from_u128(s.id ^ ((until.timestamp_micros() as u128) << 64));
            e.occurred_at = until - Duration::seconds((i as i64 * 40 * 86_400) / n as i64 + 1);
            e
        })
        .collect()
}

/// A SQLite file of the version before the aggregates, with `events` in it.
async fn sqlite_before_aggregates(path: &std::path::Path, events: &[NewEvent]) -> String {
    let url = format!("sqlite://{}", path.display());
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true);
    let mut c = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::migrate!("migrations/sqlite")
        .run_to(2, &mut c)
        .await
        .unwrap();
    let mut tx = c.begin().await.unwrap();
    for e in events {
        let at = e.occurred_at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        sqlx::query(
            "INSERT INTO analytics_events (id, visitor_id, event_type, event_data, page_url, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(e.id.to_string())
        .bind(e.visitor_id.to_string())
        .bind(e.event_type.as_str())
        .bind(Value::Object(e.event_data.clone()).to_string())
        .bind(e.page_url.as_deref())
        .bind(at)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    c.close().await.unwrap();
    url
}

/// Checks a few routes of a store against the raw queries (the 40 days of
/// `history`).
async fn compare_history(store: &dyn EventStore, until: DateTime<Utc>) {
    assert!(store.aggregates_ready());
    let tz = store.timezone();
    for back in [0, 1, 7, 39] {
        let day = local_day(tz, until) - Duration::days(back);
        let (from, to) = (day_start(tz, day), day_start(tz, day + Duration::days(1)));
        let (agg, raw) = both!(store, store.summary(from, to));
        assert_eq!(agg, raw, "day {day}");
    }
    let from = day_start(tz, local_day(tz, until) - Duration::days(41));
    let (agg, raw) = both!(store, store.summary(from, until + Duration::days(1)));
    close_enough(&agg, &raw, "40 days");
    let (agg, raw) = both!(store, store.heatmap(until - Duration::hours(168), None));
    assert_eq!(agg, raw);
    let (agg, raw) = both!(store, store.top_themes(20));
    assert_eq!(agg, raw);
}

#[tokio::test]
async fn a_sqlite_backfill_interrupted_and_resumed_gives_the_same_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let until = Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap();
    let events = history(5_000, until);
    let paris = chrono_tz::Europe::Paris;

    // Upgraded, then backfilled in one go.
    let whole = sqlite_before_aggregates(&dir.path().join("whole.db"), &events).await;
    let store = store::connect_in(&whole, paris).await.unwrap();
    assert!(
        !store.aggregates_ready(),
        "an upgraded file backfills first"
    );
    // Until then the routes answer from the events.
    let day = local_day(paris, until);
    let s = store
        .summary(
            day_start(paris, day),
            day_start(paris, day + Duration::days(1)),
        )
        .await
        .unwrap();
    assert!(s.total_events > 0);
    fold_all(&*store).await;
    compare_history(&*store, until).await;
    store.close().await;

    // Upgraded, one step, stopped; restarted, the rest.
    let cut = sqlite_before_aggregates(&dir.path().join("cut.db"), &events).await;
    let store = store::connect_in(&cut, paris).await.unwrap();
    let p = store.fold_step().await.unwrap();
    assert!(!p.caught_up && p.folded > 0 && p.folded < 5_000, "{p:?}");
    store.close().await;
    let store = store::connect_in(&cut, paris).await.unwrap();
    assert!(!store.aggregates_ready());
    let p = store.fold_step().await.unwrap();
    assert_eq!(
        p.total_folded,
        2 * p.folded,
        "resumed where it stopped: {p:?}"
    );
    fold_all(&*store).await;
    compare_history(&*store, until).await;
    store.close().await;
    assert_eq!(dump_sqlite(&whole).await, dump_sqlite(&cut).await);

    // Restarted once more: ready at once, the same figures.
    let store = store::connect_in(&cut, paris).await.unwrap();
    assert!(store.aggregates_ready(), "a restart keeps the aggregates");
    compare_history(&*store, until).await;
    store.close().await;
    assert_eq!(dump_sqlite(&whole).await, dump_sqlite(&cut).await);
}

#[tokio::test]
async fn a_postgres_backfill_interrupted_and_resumed_gives_the_same_aggregates() {
    let (Some(whole), Some(cut)) = (PgTestDb::create().await, PgTestDb::create().await) else {
        return;
    };
    let until = Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap();
    let events = history(5_000, until);
    let tz = chrono_tz::America::New_York;
    for db in [&whole, &cut] {
        // The rows of a database the store has not counted (an earlier version's,
        // or maicivy's), written behind its back.
        store::connect_in(&db.url, tz).await.unwrap().close().await;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut tx = c.begin().await.unwrap();
        for e in &events {
            insert_like_go(&mut tx, e, false).await;
        }
        tx.commit().await.unwrap();
    }
    let store = store::connect_in(&whole.url, tz).await.unwrap();
    fold_all(&*store).await;
    compare_history(&*store, until).await;
    store.close().await;

    let store = store::connect_in(&cut.url, tz).await.unwrap();
    let p = store.fold_step().await.unwrap();
    assert!(!p.caught_up && p.folded > 0, "{p:?}");
    store.close().await;
    let store = store::connect_in(&cut.url, tz).await.unwrap();
    assert!(!store.aggregates_ready());
    fold_all(&*store).await;
    compare_history(&*store, until).await;
    store.close().await;
    assert_eq!(dump_pg(&whole.url).await, dump_pg(&cut.url).await);

    let store = store::connect_in(&cut.url, tz).await.unwrap();
    assert!(store.aggregates_ready(), "a restart keeps the aggregates");
    compare_history(&*store, until).await;
    store.close().await;
}

/// Retention deletes the old events, in batches, and the figures of their days
/// stay; on a store whose backfill is not done it deletes nothing.
async fn retention_keeps_the_figures(
    store: &dyn EventStore,
    count_before: impl AsyncFn(DateTime<Utc>) -> i64,
) {
    let now = Utc::now();
    let tz = store.timezone();
    let old_day = local_day(tz, now - Duration::days(365));
    let old = day_start(tz, old_day) + Duration::hours(12);
    let mut events: Vec<NewEvent> = history(3_000, old);
    events.extend(history(300, now));
    for chunk in events.chunks(500) {
        store.insert_batch(chunk).await.unwrap();
    }
    let year = (
        day_start(tz, old_day - Duration::days(60)),
        day_start(tz, old_day + Duration::days(1)),
    );
    let before = store.summary(year.0, year.1).await.unwrap();
    let day_before = store
        .summary(
            day_start(tz, old_day),
            day_start(tz, old_day + Duration::days(1)),
        )
        .await
        .unwrap();
    assert!(before.total_events >= 2_900, "{before:?}");
    let cutoff = now - Duration::days(90);
    assert!(count_before(cutoff).await > 2_900);
    let mut deleted = 0;
    let mut left = count_before(cutoff).await;
    for _ in 0..1_000 {
        let n = store.retention_step(cutoff, 700).await.unwrap();
        if n == 0 {
            break;
        }
        deleted += n;
        let now_left = count_before(cutoff).await;
        assert!(
            left - now_left <= 700,
            "small batches: {left} then {now_left}"
        );
        left = now_left;
    }
    assert!(deleted >= 3_000, "{deleted}");
    assert_eq!(
        count_before(cutoff).await,
        0,
        "no raw event older than the window"
    );
    assert_eq!(
        store.summary(year.0, year.1).await.unwrap(),
        before,
        "a year ago still answers"
    );
    assert_eq!(
        store
            .summary(
                day_start(tz, old_day),
                day_start(tz, old_day + Duration::days(1))
            )
            .await
            .unwrap(),
        day_before
    );
    // The recent events are all there, and raw and aggregated agree on them.
    let today = local_day(tz, now);
    let recent = (
        day_start(tz, today - Duration::days(41)),
        day_start(tz, today + Duration::days(1)),
    );
    let (agg, raw) = both!(store, store.summary(recent.0, recent.1));
    close_enough(&agg, &raw, "the window");
    assert_eq!(agg.total_events, 300);
}

#[tokio::test]
async fn retention_removes_raw_rows_and_leaves_period_figures_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let store = store::connect_in(&url, chrono_tz::Europe::Paris)
        .await
        .unwrap();
    retention_keeps_the_figures(&*store, async |cutoff| {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE created_at < $1")
            .bind(cutoff.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
            .fetch_one(&mut c)
            .await
            .unwrap()
    })
    .await;
    store.close().await;
}

#[tokio::test]
async fn retention_removes_raw_rows_and_leaves_period_figures_on_postgres() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let store = store::connect_in(&db.url, chrono_tz::Asia::Kolkata)
        .await
        .unwrap();
    assert_eq!(
        store.retention_step(Utc::now(), 10).await.unwrap(),
        0,
        "nothing is deleted before the backfill is done"
    );
    fold_all(&*store).await;
    let url = db.url.clone();
    retention_keeps_the_figures(&*store, async |cutoff| {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE created_at < $1::timestamp")
            .bind(cutoff.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
            .fetch_one(&mut c)
            .await
            .unwrap()
    })
    .await;
    store.close().await;
}

/// Aggregates of one zone are rebuilt for another.
#[tokio::test]
async fn another_time_zone_rebuilds_the_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tz.db").display());
    let until = Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap();
    let store = store::connect_in(&url, chrono_tz::UTC).await.unwrap();
    for chunk in history(3_000, until).chunks(400) {
        store.insert_batch(chunk).await.unwrap();
    }
    compare_history(&*store, until).await;
    store.close().await;
    // Opened without a zone: the recorded one, nothing rebuilt.
    let store = store::connect(&url).await.unwrap();
    assert_eq!(store.timezone(), chrono_tz::UTC);
    assert!(store.aggregates_ready());
    store.close().await;
    let store = store::connect_in(&url, chrono_tz::Asia::Kathmandu)
        .await
        .unwrap();
    assert_eq!(store.timezone(), chrono_tz::Asia::Kathmandu);
    assert!(!store.aggregates_ready(), "rebuilt for the new zone");
    fold_all(&*store).await;
    compare_history(&*store, until).await;
    store.close().await;
}

/// `meta.next` walks the whole timeline, page after page, as `offset` does.
#[tokio::test]
async fn the_timeline_cursor_pages_like_offset_does() {
    let server = TestServer::with(&["--heartbeat-interval", "60s"]).await;
    for i in 0..23 {
        let (status, _) = server
            .post_event(&json!({"event_type": "page_view", "page_url": format!("/{i}"), "visitor_id": visitor()}))
            .await;
        assert_eq!(status, 201);
    }
    let (_, all) = server
        .get_json("/api/v1/analytics/timeline?limit=100")
        .await;
    let all: Vec<Value> = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 23);
    let mut walked = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let path = match &next {
            None => "/api/v1/analytics/timeline?limit=5".to_owned(),
            Some(c) => format!("/api/v1/analytics/timeline?limit=5&before={c}"),
        };
        let (status, page) = server.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        walked.extend(page["data"].as_array().unwrap().iter().cloned());
        next = page["meta"]["next"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(walked, all, "every event once, newest first");
    // With offset, the cursor's page skips that many more.
    let (_, first) = server.get_json("/api/v1/analytics/timeline?limit=5").await;
    let cursor = first["meta"]["next"].as_str().unwrap();
    let (_, skipped) = server
        .get_json(&format!(
            "/api/v1/analytics/timeline?limit=5&offset=5&before={cursor}"
        ))
        .await;
    assert_eq!(skipped["data"].as_array().unwrap()[..], all[10..15]);
    let (status, body) = server
        .get_json("/api/v1/analytics/timeline?before=not-a-cursor")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("meta.next"));
    server.stop().await;
}

#[test]
fn cursors_are_opaque_round_trips() {
    let c = TimelineCursor {
        at: Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap() + Duration::microseconds(7),
        id: uuid::Uuid::from_u128(42),
    };
    assert_eq!(TimelineCursor::parse(&c.encode()), Some(c));
    for bad in ["", "1.2", "x.00000000000000000000000000000042", "1"] {
        assert_eq!(TimelineCursor::parse(bad), None, "{bad}");
    }
    let _ = (NaiveDate::MIN, StdDuration::ZERO);
}
