//! Every read route's store query at N events over 30 days, on SQLite and
//! PostgreSQL: the events go straight into the store (`insert_batch`, batches of
//! 5,000, so the writer's aggregates are built as in production), then each route
//! is timed (p50, p99, max over `READS_ITERATIONS` calls).
//!
//! ```sh
//! READS_BACKEND=sqlite READS_N=1000000,10000000 cargo bench --bench reads
//! READS_BACKEND=postgres READS_N=1000000,10000000 cargo bench --bench reads
//! ```
//! `READS_N` lists growing sizes: the store is filled up to each in turn (its
//! events always spread over the 30 days before the fill) and measured. The store
//! is `READS_SQLITE` (default `/tmp/maicivy-reads.db`) or the PostgreSQL database
//! `maicivy_reads_bench` on `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `READS_FRESH=1` starts it anew.
//! `READS_RAW=1` also times each route's query over the events (a few calls);
//! `READS_ONLY=restore` times only the routes whose name contains `restore`.
//! On PostgreSQL the fill ends with `VACUUM ANALYZE`, as autovacuum would (this
//! machine's server runs with `autovacuum = off`).
//! `READS_PG_DB` names the PostgreSQL database (default `maicivy_reads_bench`) and
//! `READS_FILL_ONLY=1` fills without timing, so that one store per size can be
//! filled while the machine is busy and timed later while it is quiet:
//!
//! ```sh
//! READS_SQLITE=/tmp/reads-10m.db READS_N=10000000 READS_FILL_ONLY=1 cargo bench --bench reads
//! READS_SQLITE=/tmp/reads-10m.db READS_N=10000000 cargo bench --bench reads
//! ```

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, DurationRound, Utc};
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::period::{Period, day_start, local_day};
use maicivy_analytics::store::{self, EventStore, TimelineCursor};
use serde_json::json;

const BATCH: usize = 5_000;
const DAYS: i64 = 30;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// xorshift64*: the same events on every run, no dependency on a rand API.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const PAGES: [&str; 20] = [
    "/",
    "/cv",
    "/letters",
    "/about",
    "/blog",
    "/blog/1",
    "/blog/2",
    "/blog/3",
    "/projects",
    "/projects/a",
    "/projects/b",
    "/contact",
    "/cv/pdf",
    "/cv/backend",
    "/cv/frontend",
    "/talks",
    "/talks/1",
    "/talks/2",
    "/now",
    "/uses",
];
const THEMES: [&str; 6] = [
    "backend", "frontend", "devops", "data", "mobile", "security",
];

/// Events `range` of `count`, in time order over the 30 days before `end`; about
/// ten events per visitor per day.
fn events(
    rng: &mut Rng,
    range: std::ops::Range<usize>,
    count: usize,
    end: chrono::DateTime<Utc>,
    per_day: u64,
) -> Vec<NewEvent> {
    let span_us = DAYS * 86_400_000_000;
    let start = end - ChronoDuration::days(DAYS);
    let visitors_per_day = (per_day / 10).max(10);
    range
        .map(|i| {
            // In i128: i × span overflows an i64 past about 3.5 million events.
            let offset = (i as i128 * span_us as i128 / count as i128) as i64
                + rng.below((span_us / count as i64).max(1) as u64) as i64;
            let at = start + ChronoDuration::microseconds(offset);
            let day = offset / 86_400_000_000;
            let visitor = uuid::Uuid::from_u128(((day as u128) << 64) | u128::from(rng.below(visitors_per_day)));
            let page = PAGES[rng.below(PAGES.len() as u64) as usize];
            let roll = rng.below(100);
            let (kind, data) = match roll {
                0..50 => ("page_view", json!({})),
                50..75 => (
                    if roll < 65 { "button_click" } else { "link_click" },
                    json!({"x": (rng.below(6) * 150) as f64 + 0.4, "y": rng.below(5) * 120}),
                ),
                75..80 => ("cv_theme_change", json!({"theme": THEMES[rng.below(6) as usize]})),
                80..82 => (
                    "letter_generate",
                    json!({"letter_type": if rng.below(2) == 0 { "motivation" } else { "anti_motivation" }}),
                ),
                82..90 => ("pdf_download", json!({})),
                _ => ("form_submit", json!({"form": "contact"})),
            };
            NewEvent {
                // As the server makes them: time-ordered (version 7) at the event's time.
                id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    at.timestamp() as u64,
                    at.timestamp_subsec_nanos(),
                )),
                event_type: EventType::parse(kind).unwrap(),
                visitor_id: VisitorId::from_uuid(visitor),
                event_data: data.as_object().unwrap().clone(),
                page_url: Some(page.to_owned()),
                referrer: None,
                occurred_at: at,
            }
        })
        .collect()
}

struct Timing {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn time<F, Fut, T>(iterations: usize, mut f: F) -> Timing
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..iterations.min(5) {
        let _ = f().await;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let _ = std::hint::black_box(f().await);
        samples.push(t.elapsed());
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Timing {
        p50: at(0.50),
        p99: at(0.99),
        max: *samples.last().unwrap(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn measure(store: &dyn EventStore, n: u64, backend: &str, iterations: usize, raw: bool) {
    let tz = store.timezone();
    // The routes ask as of the newest event (a second after it), not the clock: a
    // store filled an hour ago answers as it did at the end of its fill, so that
    // the windows of the last minutes hold what a live store's would.
    let newest = store.timeline(1, 0).await.unwrap();
    let now = newest.first().map_or_else(Utc::now, |e| e.created_at) + ChronoDuration::seconds(1);
    // A cursor in the middle of the timeline, and a deep offset.
    let deep = (n / 2).min(1_000_000);
    let middle = store.timeline(1, n / 2).await.unwrap();
    let cursor = middle.first().map(TimelineCursor::after);
    let minute = now.duration_trunc(ChronoDuration::minutes(1)).unwrap();
    let today = day_start(tz, local_day(tz, now));
    type Route<'a> = (
        &'static str,
        Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> + 'a>,
    );
    let mut routes: Vec<Route<'_>> = Vec::new();
    for period in [Period::Day, Period::Week, Period::Month] {
        let range = period.current(tz, now);
        let name: &'static str = match period {
            Period::Day => "/stats?period=day",
            Period::Week => "/stats?period=week",
            Period::Month => "/stats?period=month",
        };
        let r = range.clone();
        routes.push((
            name,
            Box::new(move || {
                let r = r.clone();
                Box::pin(async move {
                    store.summary(r.from, r.to).await.unwrap();
                })
            }),
        ));
        let lname: &'static str = match period {
            Period::Day => "/letters?period=day",
            Period::Week => "/letters?period=week",
            Period::Month => "/letters?period=month",
        };
        routes.push((
            lname,
            Box::new(move || {
                let r = range.clone();
                Box::pin(async move {
                    store.summary(r.from, r.to).await.unwrap();
                    store.letters(r.from, r.to, tz).await.unwrap();
                })
            }),
        ));
    }
    for (name, minutes) in [
        ("/events-per-minute?minutes=30", 30),
        ("/events-per-minute?minutes=1440", 1440),
    ] {
        routes.push((
            name,
            Box::new(move || {
                Box::pin(async move {
                    let from = minute - ChronoDuration::minutes(minutes - 1);
                    store
                        .events_per_minute(from, minute + ChronoDuration::minutes(1))
                        .await
                        .unwrap();
                })
            }),
        ));
    }
    for (name, minutes) in [("/pages-now?minutes=5", 5), ("/pages-now?minutes=60", 60)] {
        routes.push((
            name,
            Box::new(move || {
                Box::pin(async move {
                    store
                        .pages_since(now - ChronoDuration::minutes(minutes), 10)
                        .await
                        .unwrap();
                })
            }),
        ));
    }
    for (name, hours, page) in [
        ("/heatmap?hours=24", 24, None),
        ("/heatmap?hours=168", 168, None),
        ("/heatmap?hours=24&page_url=/cv", 24, Some("/cv")),
    ] {
        routes.push((
            name,
            Box::new(move || {
                Box::pin(async move {
                    store
                        .heatmap(now - ChronoDuration::hours(hours), page)
                        .await
                        .unwrap();
                })
            }),
        ));
    }
    routes.push((
        "/themes?limit=5",
        Box::new(move || {
            Box::pin(async move {
                store.top_themes(5).await.unwrap();
            })
        }),
    ));
    routes.push((
        "/timeline?limit=50",
        Box::new(move || {
            Box::pin(async move {
                store.timeline(50, 0).await.unwrap();
            })
        }),
    ));
    routes.push((
        "/timeline?limit=100&before=<middle>",
        Box::new(move || {
            Box::pin(async move {
                store.timeline_before(100, 0, cursor).await.unwrap();
            })
        }),
    ));
    routes.push((
        "/timeline?limit=100&offset=N/2 (≤1M)",
        Box::new(move || {
            Box::pin(async move {
                store.timeline(100, deep).await.unwrap();
            })
        }),
    ));
    routes.push((
        "restore: summary(today)",
        Box::new(move || {
            Box::pin(async move {
                store
                    .summary(today, now + ChronoDuration::days(1))
                    .await
                    .unwrap();
            })
        }),
    ));
    routes.push((
        "restore: visitors_since(today)",
        Box::new(move || {
            Box::pin(async move {
                store.visitors_since(today).await.unwrap();
            })
        }),
    ));
    if raw {
        // The sketch against the exact count of the raw query.
        let week = Period::Week.current(tz, now);
        let month = Period::Month.current(tz, now);
        for (name, from, to) in [
            ("week", week.from, week.to),
            ("month", month.from, month.to),
            (
                "30 days",
                today - ChronoDuration::days(29),
                today + ChronoDuration::days(1),
            ),
        ] {
            let agg = store.summary(from, to).await.unwrap().unique_visitors;
            store.set_raw_reads(true);
            let exact = store.summary(from, to).await.unwrap().unique_visitors;
            store.set_raw_reads(false);
            println!(
                "unique visitors, {name}: sketch {agg}, exact {exact}, error {:+.3}%",
                (agg as f64 - exact as f64) * 100.0 / (exact.max(1) as f64)
            );
        }
    }
    println!(
        "\n| backend | N | route | p50 ms | p99 ms | max ms |{}",
        if raw { " raw p50 ms |" } else { "" }
    );
    println!("|---|---|---|---|---|---|{}", if raw { "---|" } else { "" });
    let only = env("READS_ONLY", "");
    for (name, f) in routes
        .iter()
        .filter(|(name, _)| name.contains(only.as_str()))
    {
        // The deep offset is the old way, O(offset): a few calls are enough.
        let its = if name.contains("offset") {
            iterations.min(20)
        } else {
            iterations
        };
        let t = time(its, f).await;
        let raw_col = if raw {
            store.set_raw_reads(true);
            let r = time(3, f).await;
            store.set_raw_reads(false);
            format!(" {} |", ms(r.p50))
        } else {
            String::new()
        };
        println!(
            "| {backend} | {n} | `{name}` | {} | {} | {} |{raw_col}",
            ms(t.p50),
            ms(t.p99),
            ms(t.max)
        );
    }
}

async fn total_events(store: &dyn EventStore) -> u64 {
    let now = Utc::now();
    store
        .summary(
            now - ChronoDuration::days(DAYS + 400),
            now + ChronoDuration::days(1),
        )
        .await
        .unwrap()
        .total_events
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let backend = env("READS_BACKEND", "sqlite");
    let sizes: Vec<u64> = env("READS_N", "1000000")
        .split(',')
        .map(|s| s.trim().parse().expect("READS_N: numbers"))
        .collect();
    let iterations: usize = env("READS_ITERATIONS", "200").parse().unwrap();
    let fresh = env("READS_FRESH", "0") == "1";
    let raw = env("READS_RAW", "0") == "1";
    let fill_only = env("READS_FILL_ONLY", "0") == "1";
    let pg_db = env("READS_PG_DB", "maicivy_reads_bench");
    assert!(
        pg_db
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "READS_PG_DB: lower-case letters, digits and _"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = if backend == "postgres" {
            use sqlx::Connection;
            let admin = env(
                "TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            );
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            if fresh {
                // The name is the operator's own (`READS_PG_DB`), and an identifier
                // cannot be a bound parameter.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await
                .unwrap();
            }
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&pg_db)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap();
            if exists.is_none() {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {pg_db}")))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b)
                .unwrap_or(&admin)
                .to_owned();
            format!("{base}/{pg_db}")
        } else {
            let path = env("READS_SQLITE", "/tmp/maicivy-reads.db");
            if fresh {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
            format!("sqlite://{path}")
        };
        let store = store::connect_in(&url, chrono_tz::UTC).await.unwrap();
        // A new store is empty: the first fold step finds nothing and the
        // aggregates answer at once (as at a first start).
        for _ in 0..1000 {
            if store.fold_step().await.unwrap().caught_up {
                break;
            }
        }
        assert!(
            store.aggregates_ready(),
            "the aggregates must be ready (READS_FRESH=1?)"
        );
        let mut have = total_events(&*store).await;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ have);
        for target in sizes {
            if target > have {
                let add = (target - have) as usize;
                let end = Utc::now();
                let per_day = target / DAYS as u64;
                let t = Instant::now();
                // In batches, each in time order; the batches in time order too.
                let mut done = 0usize;
                while done < add {
                    let chunk = events(&mut rng, done..(done + BATCH).min(add), add, end, per_day);
                    store.insert_batch(&chunk).await.unwrap();
                    done += chunk.len();
                    if done % 1_000_000 < BATCH {
                        eprintln!("filled {} of {add} in {:.0?}", done, t.elapsed());
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                eprintln!(
                    "fill: {add} events in {secs:.0} s ({:.0} events/s, aggregates included)",
                    add as f64 / secs
                );
                have = target;
                // The events reach the fill's end: the last day holds its share.
                let last_day = store
                    .summary(
                        end - ChronoDuration::days(1),
                        end + ChronoDuration::seconds(1),
                    )
                    .await
                    .unwrap()
                    .total_events;
                assert!(
                    last_day >= per_day / 2,
                    "{last_day} events in the fill's last day, {per_day} expected"
                );
                if backend == "postgres" {
                    // What autovacuum does after such a fill on a default server: the
                    // planner needs the tables' statistics (without them, generic
                    // estimates pick scans over the indexes), and an index-only scan
                    // (pages-now) needs the pages marked all-visible.
                    use sqlx::Connection;
                    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                    sqlx::raw_sql("VACUUM ANALYZE")
                        .execute(&mut c)
                        .await
                        .unwrap();
                }
            }
            if !fill_only {
                measure(&*store, have, &backend, iterations, raw).await;
            }
        }
        store.close().await;
    });
}
