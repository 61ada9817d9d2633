//! Redis shared with maicivy's Go backend (CONTRACT.md, "Redis mode"): the keys Go
//! writes are what this server shows, the keys this server writes have Go's types and
//! values, a key of the wrong type is an error and not a zero, and a payload on the
//! channel that is not UTF-8 never reaches a browser.
//!
//! Isolation: the contract fixes the key names, so every test runs its own
//! `redis-server` on a free port (no FLUSH of anyone's data, no key shared with a
//! concurrent test). Without `redis-server` a test prints why and passes, unless
//! `REQUIRE_SERVICES=1`.
//!
//! Dates are computed by the test itself (UTC, the server's default time zone) with
//! Go's formulas written out, not with the server's helpers, so that a wrong key
//! formula fails here. A test that runs across midnight UTC may see two days.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate, Utc};
use common::own_redis::OwnRedis;
use common::{TestServer, WsClient, config, http, visitor};
use maicivy_analytics::Config;
use maicivy_analytics::broker::RedisConnection;
use maicivy_analytics::live::{LiveStats, RedisLive};
use maicivy_analytics::metrics::Metrics;
use maicivy_analytics::period::Period;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long Redis or an instance may take to come up, or a figure to show.
const DEADLINE: Duration = Duration::from_secs(20);

fn redis_config(redis_url: &str) -> Config {
    let channel = format!("test:maicivy:{}", uuid::Uuid::new_v4().simple());
    config(&[
        "--redis-url",
        redis_url,
        "--channel",
        &channel,
        "--heartbeat-interval",
        "60s",
    ])
}

/// Polls `/readyz` until it answers `want`; returns its body.
async fn wait_ready(server: &TestServer, want: u16) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = http().get(server.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {status} {body}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `/readyz` until it answers 503 with a sentence containing `needle` (it may
/// first answer 503 for another reason, such as the subscription starting).
async fn wait_unready_naming(server: &TestServer, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = http().get(server.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if let Some(why) = body["error"].as_str()
            && status == 503
            && why.contains(needle)
        {
            return why.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answers {status} {body}, expected 503 naming {needle}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `GET key` until it holds `want`: counting follows the store's commit and
/// may come after the POST's answer.
async fn wait_counter(con: &mut MultiplexedConnection, key: &str, want: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n: Option<u64> = cmd(con, &["GET", key]).await;
        if n == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{key} is {n:?}, expected {want}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post_ok(server: &TestServer, body: &Value) {
    let (status, answer) = server.post_event(body).await;
    assert_eq!(status, 201, "{answer}");
}

/// Go's day key part, `2006-01-02`.
fn go_day(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// Go's `2006-W01`: the year and the month.
fn go_week(d: NaiveDate) -> String {
    format!("{:04}-W{:02}", d.year(), d.month())
}

/// Go's `2006-01`.
fn go_month(d: NaiveDate) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Monday .. today of today's ISO week.
fn this_week() -> Vec<NaiveDate> {
    let today = today();
    let monday = today - chrono::Duration::days(today.weekday().num_days_from_monday().into());
    monday.iter_days().take_while(|d| *d <= today).collect()
}

async fn cmd<T: redis::FromRedisValue>(con: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The figures through the trait, from a `RedisLive` of the test's own on the same
/// Redis (what every route reads).
fn own_live(
    redis: &OwnRedis,
    metrics: Arc<Metrics>,
    store: Arc<dyn maicivy_analytics::store::EventStore>,
) -> RedisLive {
    let connection = RedisConnection::open(&redis.url()).unwrap();
    RedisLive::start(
        &connection,
        chrono_tz::UTC,
        Duration::from_secs(300),
        metrics,
        store,
        CancellationToken::new(),
    )
}

async fn memory_store() -> Arc<dyn maicivy_analytics::store::EventStore> {
    maicivy_analytics::store::connect("sqlite::memory:")
        .await
        .unwrap()
}

#[tokio::test]
async fn figures_go_wrote_first_are_what_every_route_shows() {
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    let mut con = redis.connect().await.unwrap();
    let today = today();
    let week = this_week();

    // Exactly what Go's middleware and `updateRedisAggregations` leave behind.
    let _: () = cmd(
        &mut con,
        &[
            "SADD",
            "analytics:realtime:visitors",
            "go-1",
            "go-2",
            "go-3",
        ],
    )
    .await;
    let _: () = cmd(&mut con, &["EXPIRE", "analytics:realtime:visitors", "300"]).await;
    // Each day of the week: 10+i events, i+1 letters, visitors "common" and
    // "only-i"; today also "today-a" and "today-b".
    let (mut week_total, mut week_letters) = (0, 0);
    for (i, day) in week.iter().enumerate() {
        let d = go_day(*day);
        let (total, letters) = (10 + i as u64, i as u64 + 1);
        week_total += total;
        week_letters += letters;
        let _: () = cmd(
            &mut con,
            &[
                "INCRBY",
                &format!("analytics:stats:day:{d}:total_events"),
                &total.to_string(),
            ],
        )
        .await;
        let _: () = cmd(
            &mut con,
            &[
                "EXPIRE",
                &format!("analytics:stats:day:{d}:total_events"),
                "7776000",
            ],
        )
        .await;
        let _: () = cmd(
            &mut con,
            &[
                "INCRBY",
                &format!("analytics:stats:day:{d}:letters_generated"),
                &letters.to_string(),
            ],
        )
        .await;
        let _: () = cmd(
            &mut con,
            &[
                "PFADD",
                &format!("analytics:visitors:unique:day:{d}"),
                "common",
                &format!("only-{i}"),
            ],
        )
        .await;
    }
    let t = go_day(today);
    let _: () = cmd(
        &mut con,
        &[
            "PFADD",
            &format!("analytics:visitors:unique:day:{t}"),
            "today-a",
            "today-b",
        ],
    )
    .await;
    let (today_total, today_letters) = (10 + week.len() as u64 - 1, week.len() as u64);
    let week_unique = 1 + week.len() as u64 + 2;
    // The Sunday before the week: must not count in it.
    let sunday = go_day(week[0] - chrono::Duration::days(1));
    let _: () = cmd(
        &mut con,
        &[
            "INCRBY",
            &format!("analytics:stats:day:{sunday}:total_events"),
            "1000",
        ],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "PFADD",
            &format!("analytics:visitors:unique:day:{sunday}"),
            "outside",
        ],
    )
    .await;
    // Go's week key (the month, really) and month key, with figures of their own:
    // this server's ISO week must not read the former.
    let (w, m) = (go_week(today), go_month(today));
    let _: () = cmd(
        &mut con,
        &[
            "INCRBY",
            &format!("analytics:stats:week:{w}:total_events"),
            "500",
        ],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "INCRBY",
            &format!("analytics:stats:week:{w}:letters_generated"),
            "50",
        ],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "INCRBY",
            &format!("analytics:stats:month:{m}:total_events"),
            "700",
        ],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "INCRBY",
            &format!("analytics:stats:month:{m}:letters_generated"),
            "70",
        ],
    )
    .await;
    let month_visitors: Vec<String> = (0..9).map(|i| format!("m-{i}")).collect();
    let mut pfadd = redis::cmd("PFADD");
    pfadd
        .arg(format!("analytics:visitors:unique:month:{m}"))
        .arg(&month_visitors);
    let _: () = pfadd.query_async(&mut con).await.unwrap();
    for (theme, views) in [("backend", "12"), ("devops", "3"), ("frontend", "7")] {
        let _: () = cmd(&mut con, &["ZINCRBY", "analytics:themes:top", views, theme]).await;
    }

    let server = TestServer::start(redis_config(&redis.url())).await;
    wait_ready(&server, 200).await;
    let expected = json!({
        "current_visitors": 3,
        "unique_today": 4,
        "total_events": today_total,
        "letters_today": today_letters,
    });
    let (_client, stats) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (_, realtime) = server.get_json("/api/v1/analytics/realtime").await;
    for (source, figures) in [("initial_stats", &stats), ("/realtime", &realtime["data"])] {
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&figures[k], v, "{source} {k}: {figures}");
        }
    }

    for (period, key, total, letters, unique) in [
        ("day", go_day(today), today_total, today_letters, 4),
        (
            "week",
            format!(
                "{}-W{:02}",
                today.iso_week().year(),
                today.iso_week().week()
            ),
            week_total,
            week_letters,
            week_unique,
        ),
        ("month", go_month(today), 700, 70, 9),
    ] {
        let (status, body) = server
            .get_json(&format!("/api/v1/analytics/stats?period={period}"))
            .await;
        assert_eq!(status, 200, "{period}: {body}");
        let d = &body["data"];
        assert_eq!(d["period_key"], key.as_str(), "{period}: {body}");
        assert_eq!(d["total_events"], total, "{period}: {body}");
        assert_eq!(d["letters_generated"], letters, "{period}: {body}");
        assert_eq!(d["unique_visitors"], unique, "{period}: {body}");
    }

    let (status, themes) = server.get_json("/api/v1/analytics/themes?limit=2").await;
    assert_eq!(status, 200, "{themes}");
    assert_eq!(
        themes["data"],
        json!([{"theme": "backend", "views": 12}, {"theme": "frontend", "views": 7}])
    );
    server.stop().await;
}

#[tokio::test]
async fn events_ingested_here_land_in_go_keys_with_go_types() {
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    let mut con = redis.connect().await.unwrap();
    let server = TestServer::start(redis_config(&redis.url())).await;
    wait_ready(&server, 200).await;

    let (a, b) = (visitor(), visitor());
    for body in [
        json!({"event_type": "page_view", "visitor_id": a, "page_url": "/cv"}),
        json!({"event_type": "letter_generate", "visitor_id": a, "event_data": {"letter_type": "motivation"}}),
        json!({"event_type": "cv_theme_change", "visitor_id": b, "event_data": {"theme": "backend"}}),
        // Not a string: Go counts no theme for it.
        json!({"event_type": "cv_theme_change", "visitor_id": a, "event_data": {"theme": 5}}),
        json!({"event_type": "cv_theme_change", "visitor_id": a, "event_data": {"theme": "backend"}}),
    ] {
        post_ok(&server, &body).await;
    }

    let today = today();
    let (d, w, m) = (go_day(today), go_week(today), go_month(today));
    let day_total = format!("analytics:stats:day:{d}:total_events");
    // Each event's commands are one MULTI/EXEC: once the fifth has counted, all are in.
    wait_counter(&mut con, &day_total, 5).await;

    const DAY: i64 = 86_400;
    // key, TYPE, value, TTL range (-1: no expiry)
    let expected: Vec<(String, &str, u64, (i64, i64))> = vec![
        ("analytics:realtime:visitors".into(), "set", 2, (1, 300)),
        (day_total.clone(), "string", 5, (89 * DAY, 90 * DAY)),
        (
            format!("analytics:stats:week:{w}:total_events"),
            "string",
            5,
            (364 * DAY, 365 * DAY),
        ),
        (
            format!("analytics:stats:month:{m}:total_events"),
            "string",
            5,
            (364 * DAY, 365 * DAY),
        ),
        (
            format!("analytics:stats:day:{d}:letters_generated"),
            "string",
            1,
            (-1, -1),
        ),
        (
            format!("analytics:stats:week:{w}:letters_generated"),
            "string",
            1,
            (-1, -1),
        ),
        (
            format!("analytics:stats:month:{m}:letters_generated"),
            "string",
            1,
            (-1, -1),
        ),
        (
            format!("analytics:visitors:unique:day:{d}"),
            "string",
            2,
            (-1, -1),
        ),
        (
            format!("analytics:visitors:unique:week:{w}"),
            "string",
            2,
            (-1, -1),
        ),
        (
            format!("analytics:visitors:unique:month:{m}"),
            "string",
            2,
            (-1, -1),
        ),
        ("analytics:themes:top".into(), "zset", 1, (-1, -1)),
    ];
    for (key, kind, value, (min_ttl, max_ttl)) in &expected {
        let t: String = cmd(&mut con, &["TYPE", key]).await;
        assert_eq!(&t, kind, "TYPE {key}");
        let got: u64 = if key.contains(":unique:") {
            cmd(&mut con, &["PFCOUNT", key]).await
        } else if *kind == "set" {
            cmd(&mut con, &["SCARD", key]).await
        } else if *kind == "zset" {
            cmd(&mut con, &["ZCARD", key]).await
        } else {
            cmd(&mut con, &["GET", key]).await
        };
        assert_eq!(got, *value, "value of {key}");
        let ttl: i64 = cmd(&mut con, &["TTL", key]).await;
        assert!(
            (*min_ttl..=*max_ttl).contains(&ttl),
            "TTL of {key} is {ttl}"
        );
    }
    for v in [&a, &b] {
        let member: bool = cmd(&mut con, &["SISMEMBER", "analytics:realtime:visitors", v]).await;
        assert!(member, "{v} in Go's set");
    }
    let views: f64 = cmd(&mut con, &["ZSCORE", "analytics:themes:top", "backend"]).await;
    assert_eq!(views, 2.0);

    // Nothing else in Go's namespace, and ours is a key of its own.
    let mut keys: Vec<String> = cmd(&mut con, &["KEYS", "*"]).await;
    keys.sort();
    let mut want: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    want.push("maicivy-analytics:presence".into());
    want.sort();
    assert_eq!(keys, want);
    let presence: String = cmd(&mut con, &["TYPE", "maicivy-analytics:presence"]).await;
    assert_eq!(presence, "zset");
    server.stop().await;
}

#[tokio::test]
async fn a_key_of_the_wrong_type_is_an_error_not_a_zero() {
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    let mut con = redis.connect().await.unwrap();
    let d = go_day(today());
    // The layout of this server's earlier versions: a sorted set where Go keeps a set.
    let _: () = cmd(
        &mut con,
        &["ZADD", "analytics:realtime:visitors", "1", "old"],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "SET",
            &format!("analytics:stats:day:{d}:total_events"),
            "42",
        ],
    )
    .await;

    let server = TestServer::start(redis_config(&redis.url())).await;
    // A read of the figures (connecting reads them) meets the key. No figures were
    // ever read: the client is told so, not shown zeros.
    let mut client = WsClient::connect(&server.ws_url()).await;
    let first = client.next_json().await;
    assert_eq!(first["type"], "error", "{first}");
    assert!(
        first["error"].as_str().unwrap().contains("cannot be read"),
        "{first}"
    );
    let (status, body) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(status, 503, "no silent zero on /realtime: {body}");
    let sentence = wait_unready_naming(&server, "analytics:realtime:visitors").await;
    assert_eq!(
        sentence,
        "Redis key analytics:realtime:visitors holds a zset, not the set maicivy's layout needs."
    );
    assert!(
        server
            .metric("maicivy_redis_wrong_type_total{key=\"visitors\"}")
            .await
            >= 1.0,
        "{}",
        server.metrics().await
    );
    // Events are still taken, and counted in the keys that are right.
    post_ok(
        &server,
        &json!({"event_type": "page_view", "visitor_id": visitor()}),
    )
    .await;
    wait_counter(
        &mut con,
        &format!("analytics:stats:day:{d}:total_events"),
        43,
    )
    .await;

    // The figures are an error, not zeros, through the trait every route reads.
    let metrics = Arc::new(Metrics::new());
    let live = own_live(&redis, Arc::clone(&metrics), memory_store().await);
    let err = live.snapshot(Utc::now()).await.expect_err("no silent zero");
    assert!(
        err.to_string()
            .contains("analytics:realtime:visitors holds a zset"),
        "{err}"
    );
    assert_eq!(live.readiness(), Err(sentence.clone()));
    assert!(
        metrics
            .render()
            .contains("maicivy_redis_wrong_type_total{key=\"visitors\"} 1")
    );

    // Once the key holds a set again, the next read of the figures clears readiness.
    let _: () = cmd(&mut con, &["DEL", "analytics:realtime:visitors"]).await;
    let _: () = cmd(&mut con, &["SADD", "analytics:realtime:visitors", "go-1"]).await;
    let stats = live.snapshot(Utc::now()).await.expect("figures read");
    assert_eq!(stats.current_visitors, 1);
    assert_eq!(stats.total_events, 43);
    assert_eq!(live.readiness(), Ok(()));
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Each request after the short stats cache reads the figures again.
        let _ = server.get_json("/api/v1/analytics/realtime").await;
        let r = http().get(server.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stays {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn counters_and_hyperloglogs_that_are_not_are_errors_too() {
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    let mut con = redis.connect().await.unwrap();
    let d = go_day(today());
    let m = go_month(today());
    let total = format!("analytics:stats:day:{d}:total_events");
    let _: () = cmd(&mut con, &["SET", &total, "not a number"]).await;
    let _: () = cmd(
        &mut con,
        &[
            "SET",
            &format!("analytics:visitors:unique:month:{m}"),
            "plain",
        ],
    )
    .await;
    let _: () = cmd(&mut con, &["LPUSH", "analytics:themes:top", "backend"]).await;

    let metrics = Arc::new(Metrics::new());
    let live = own_live(&redis, Arc::clone(&metrics), memory_store().await);
    let now = Utc::now();
    let err = live
        .snapshot(now)
        .await
        .expect_err("a counter that is not an integer");
    assert_eq!(
        err.to_string(),
        format!(
            "the live figures are unreachable: Redis key {total} holds a value that is not an \
             integer, not the integer counter maicivy's layout needs."
        )
    );
    let err = live
        .period_summary(Period::Month, now)
        .await
        .expect_err("a month HyperLogLog that is a plain string");
    assert!(err.to_string().contains("is not a HyperLogLog"), "{err}");
    let err = live.top_themes(5).await.expect_err("themes in a list");
    assert!(
        err.to_string()
            .contains("analytics:themes:top holds a list"),
        "{err}"
    );
    let why = live.readiness().expect_err("three keys of the wrong type");
    assert!(
        why.ends_with("(and 2 more keys of the wrong type)."),
        "{why}"
    );
    let text = metrics.render();
    for family in ["day_total", "month_unique", "themes"] {
        assert!(
            text.contains(&format!(
                "maicivy_redis_wrong_type_total{{key=\"{family}\"}} 1"
            )),
            "{text}"
        );
    }

    // Through the routes: an error answer, not a zero.
    let server = TestServer::start(redis_config(&redis.url())).await;
    for path in [
        "/api/v1/analytics/stats?period=day",
        "/api/v1/analytics/stats?period=week",
        "/api/v1/analytics/themes",
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["success"], false, "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_payload_that_is_not_utf8_is_dropped_and_the_client_stays() {
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    let mut con = redis.connect().await.unwrap();
    let cfg = redis_config(&redis.url());
    let channel = cfg.channel.clone();
    let server = TestServer::start(cfg).await;
    wait_ready(&server, 200).await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;

    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&b"{\"type\":\"page_view\",\"x\":\"\xff\xfe\"}"[..])
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    let valid = "{\"type\":\"after\",\"text\":\"été\"}";
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(valid)
        .query_async(&mut con)
        .await
        .unwrap();
    // One subscription delivers in order: the valid payload comes after the invalid
    // one has been dropped (a text frame of it would have failed this read).
    loop {
        match client.next_message().await {
            Message::Text(t) if t.as_str() == valid => break,
            Message::Text(t) if t.contains("\"heartbeat\"") => continue,
            other => panic!("expected the valid payload, got {other:?}"),
        }
    }
    assert_eq!(
        server
            .metric("maicivy_channel_payloads_dropped_total{reason=\"invalid_utf8\"}")
            .await,
        1.0,
        "{}",
        server.metrics().await
    );
    server.stop().await;
}

#[tokio::test]
async fn the_outage_backlog_replays_every_key_of_go_s_layout() {
    let Some(mut redis) = OwnRedis::started().await else {
        return;
    };
    let server = TestServer::start(redis_config(&redis.url())).await;
    wait_ready(&server, 200).await;
    redis.kill();
    wait_ready(&server, 503).await;

    // Stored while Redis is away; their figures wait in the backlog.
    let (a, b) = (visitor(), visitor());
    for body in [
        json!({"event_type": "page_view", "visitor_id": a}),
        json!({"event_type": "letter_generate", "visitor_id": a, "event_data": {"letter_type": "motivation"}}),
        json!({"event_type": "cv_theme_change", "visitor_id": b, "event_data": {"theme": "backend"}}),
    ] {
        post_ok(&server, &body).await;
    }

    // Back, empty: everything below comes from the replay.
    redis.start().await;
    let mut con = redis.connect().await.unwrap();
    let today = today();
    let (d, w, m) = (go_day(today), go_week(today), go_month(today));
    wait_counter(
        &mut con,
        &format!("analytics:stats:day:{d}:total_events"),
        3,
    )
    .await;
    for key in [
        format!("analytics:stats:week:{w}:total_events"),
        format!("analytics:stats:month:{m}:total_events"),
    ] {
        let n: u64 = cmd(&mut con, &["GET", &key]).await;
        assert_eq!(n, 3, "{key}");
        let ttl: i64 = cmd(&mut con, &["TTL", &key]).await;
        assert!(ttl > 364 * 86_400, "TTL of {key} is {ttl}");
    }
    for scope in [d.as_str(), w.as_str(), m.as_str()] {
        let period = match scope.len() {
            10 => "day",
            7 => "month",
            _ => "week",
        };
        let letters: u64 = cmd(
            &mut con,
            &[
                "GET",
                &format!("analytics:stats:{period}:{scope}:letters_generated"),
            ],
        )
        .await;
        assert_eq!(letters, 1, "{period} letters");
        let unique: u64 = cmd(
            &mut con,
            &[
                "PFCOUNT",
                &format!("analytics:visitors:unique:{period}:{scope}"),
            ],
        )
        .await;
        assert_eq!(unique, 2, "{period} unique");
    }
    let t: String = cmd(&mut con, &["TYPE", "analytics:realtime:visitors"]).await;
    assert_eq!(t, "set");
    let current: u64 = cmd(&mut con, &["SCARD", "analytics:realtime:visitors"]).await;
    assert_eq!(current, 2);
    let views: f64 = cmd(&mut con, &["ZSCORE", "analytics:themes:top", "backend"]).await;
    assert_eq!(views, 1.0);
    let present: u64 = cmd(&mut con, &["ZCARD", "maicivy-analytics:presence"]).await;
    assert_eq!(present, 2);
    server.stop().await;
}

#[tokio::test]
async fn go_s_fallbacks_count_maicivy_s_rows_when_redis_has_none() {
    use sqlx::Connection;
    let Some(redis) = OwnRedis::started().await else {
        return;
    };
    // maicivy's tables in the store's file, as a deployment sharing its data has them.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    maicivy_analytics::store::connect(&url)
        .await
        .unwrap()
        .close()
        .await;
    let now = Utc::now();
    let today = today();
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 1).unwrap().and_utc();
    let monday = this_week()[0];
    let first = today.with_day(1).unwrap();
    // Created now (three, one of them deleted), just after Monday's and the 1st's
    // midnight, and 40 days ago.
    let visitors = [
        (now, false),
        (now, false),
        (now, true),
        (midnight(monday), false),
        (midnight(first), false),
        (now - chrono::Duration::days(40), false),
    ];
    let letters = [(now, false), (now, true), (midnight(first), false)];
    let at = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let mut sql = String::from(
        "CREATE TABLE visitors (id TEXT PRIMARY KEY, session_id TEXT NOT NULL UNIQUE,
             visit_count INTEGER, first_visit TEXT NOT NULL, last_visit TEXT NOT NULL,
             created_at TEXT, updated_at TEXT, deleted_at TEXT);
         CREATE TABLE generated_letters (id TEXT PRIMARY KEY, visitor_id TEXT,
             letter_type TEXT, created_at TEXT, updated_at TEXT, deleted_at TEXT);",
    );
    for (i, (t, deleted)) in visitors.iter().enumerate() {
        let gone = if *deleted {
            format!("'{}'", at(now))
        } else {
            "NULL".into()
        };
        sql += &format!(
            "INSERT INTO visitors VALUES ('{}', 's-{i}', 1, '{t}', '{t}', '{t}', '{t}', {gone});",
            visitor(),
            t = at(*t)
        );
    }
    for (t, deleted) in &letters {
        let gone = if *deleted {
            format!("'{}'", at(now))
        } else {
            "NULL".into()
        };
        sql += &format!(
            "INSERT INTO generated_letters VALUES ('{}', NULL, 'motivation', '{t}', '{t}', {gone});",
            visitor(),
            t = at(*t)
        );
    }
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    let store = maicivy_analytics::store::connect(&url).await.unwrap();

    // What each period's fallback must count: rows since its start, not deleted.
    let since = |rows: &[(chrono::DateTime<Utc>, bool)], from: NaiveDate| {
        let from = from.and_hms_opt(0, 0, 0).unwrap().and_utc();
        rows.iter().filter(|(t, d)| !d && *t >= from).count() as u64
    };
    let live = own_live(&redis, Arc::new(Metrics::new()), store);
    let stats = live.snapshot(now).await.unwrap();
    assert_eq!(stats.unique_today, since(&visitors, today));
    assert_eq!(stats.letters_today, since(&letters, today));
    for (period, start) in [
        (Period::Day, today),
        (Period::Week, monday),
        (Period::Month, first),
    ] {
        let s = live.period_summary(period, now).await.unwrap().unwrap();
        assert_eq!(s.unique_visitors, since(&visitors, start), "{period:?}");
        assert_eq!(s.letters_generated, since(&letters, start), "{period:?}");
        assert_eq!(s.total_events, 0, "{period:?}");
    }

    // Redis's own figures win once it has some.
    let mut con = redis.connect().await.unwrap();
    let d = go_day(today);
    let _: () = cmd(
        &mut con,
        &[
            "PFADD",
            &format!("analytics:visitors:unique:day:{d}"),
            "go-1",
        ],
    )
    .await;
    let _: () = cmd(
        &mut con,
        &[
            "SET",
            &format!("analytics:stats:day:{d}:letters_generated"),
            "9",
        ],
    )
    .await;
    let stats = live.snapshot(Utc::now()).await.unwrap();
    assert_eq!((stats.unique_today, stats.letters_today), (1, 9));
}
