//! The Redis mode of CONTRACT.md, against real servers: several instances on one Redis
//! (and one PostgreSQL), Redis written and read with plain commands, and a Redis
//! that this test kills and restarts itself.
//!
//! Isolation, since tests run in parallel and the contract fixes the key names: each
//! test has its own `--channel` and its own Redis logical database on the shared
//! server (127.0.0.1:6379), or its own `redis-server` on a free port.
//!
//! Without Redis (or PostgreSQL, or `redis-server`) a test prints why and passes,
//! unless `REQUIRE_SERVICES=1`.
//!
//! `cargo test --test redis_mode -- --nocapture latency` prints the time from a
//! publish on one instance to its receipt by a client of another.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::own_redis::{OwnRedis, connect};
use common::{TestServer, WsClient, config, http, skip_or_fail, visitor};
use maicivy_analytics::Config;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long Redis or an instance may take to come (back) up.
const RECOVERY: Duration = Duration::from_secs(20);

/// `None` with the reason printed, or a failure under `REQUIRE_SERVICES=1`.
fn skipped<T>(service: &str, why: &str) -> Option<T> {
    skip_or_fail(service, why)?;
    unreachable!("skip_or_fail either skips or fails")
}

fn unique_channel(test: &str) -> String {
    format!("test:{test}:{}", uuid::Uuid::new_v4().simple())
}

/// Logical database `db` of the shared Redis, emptied; `None` (skip) without Redis.
/// Each test uses its own `db`.
async fn shared_redis(db: u8) -> Option<(String, MultiplexedConnection)> {
    let url = format!("{SHARED_REDIS}/{db}");
    match connect(&url).await {
        Ok(mut con) => {
            let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
            Some((url, con))
        }
        Err(e) => skipped("Redis", &format!("none answers at {url} ({e})")),
    }
}

fn redis_config(redis_url: &str, channel: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--channel",
        channel,
        "--heartbeat-interval",
        "60s",
    ];
    args.extend_from_slice(extra);
    config(&args)
}

/// Polls `/readyz` until it answers `want` (200 or 503), within `RECOVERY`.
async fn wait_ready(server: &TestServer, want: u16) -> Value {
    let deadline = Instant::now() + RECOVERY;
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

/// Two instances on one Redis and one channel, both subscribed.
async fn two_ready_instances(url: &str, channel: &str) -> (TestServer, TestServer) {
    let a = TestServer::start(redis_config(url, channel, &[])).await;
    let b = TestServer::start(redis_config(url, channel, &[])).await;
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;
    (a, b)
}

/// The raw text of the next message that is not a heartbeat or a presence notice.
async fn next_payload(c: &mut WsClient) -> String {
    loop {
        match c.next_message().await {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if !matches!(
                    v["type"].as_str(),
                    Some("heartbeat" | "visitor_connected" | "visitor_disconnected")
                ) {
                    return t.as_str().to_owned();
                }
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn event(kind: &str, visitor: &str, seq: u32) -> Value {
    json!({"event_type": kind, "visitor_id": visitor, "event_data": {"seq": seq}, "page_url": "/t"})
}

async fn post_ok(server: &TestServer, body: &Value) {
    let (status, answer) = server.post_event(body).await;
    assert_eq!(status, 201, "{answer}");
}

fn today() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

async fn get_u64(con: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<u64>>(con)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits until `key` holds `want` (figures replayed in the background).
async fn wait_for_value(con: &mut MultiplexedConnection, key: &str, want: u64) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let got = get_u64(con, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} is {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `/realtime` until it reports `total` events; returns its figures.
async fn wait_realtime(server: &TestServer, total: u64) -> Value {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (_, r) = server.get_json("/api/v1/analytics/realtime").await;
        if r["data"]["total_events"] == total {
            return r["data"].clone();
        }
        assert!(Instant::now() < deadline, "/realtime still says {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_event_ingested_on_one_instance_reaches_clients_of_another_once() {
    let Some((url, _con)) = shared_redis(9).await else {
        return;
    };
    let channel = unique_channel("fanout");
    let (a, b) = two_ready_instances(&url, &channel).await;
    let (mut on_a, _) = WsClient::connect_with_stats(&a.ws_url()).await;
    let (mut on_b, _) = WsClient::connect_with_stats(&b.ws_url()).await;

    let v = visitor();
    post_ok(&a, &event("page_view", &v, 1)).await;
    let got_a = next_payload(&mut on_a).await;
    let got_b = next_payload(&mut on_b).await;
    assert_eq!(got_a, got_b, "every client gets the same bytes");
    let msg: Value = serde_json::from_str(&got_b).unwrap();
    assert_eq!(msg["type"], "page_view");
    assert_eq!(msg["visitor_id"], v.as_str());
    assert_eq!(msg["data"]["seq"], 1);

    // The publisher's own clients get it through Redis only: the next message
    // after it is the next event, not a second copy.
    post_ok(&b, &event("button_click", &v, 2)).await;
    for c in [&mut on_a, &mut on_b] {
        let next: Value = serde_json::from_str(&next_payload(c).await).unwrap();
        assert_eq!(next["data"]["seq"], 2, "no duplicate of the first event");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_plain_publish_reaches_clients_of_every_instance_byte_for_byte() {
    let Some((url, mut con)) = shared_redis(10).await else {
        return;
    };
    let channel = unique_channel("plain");
    let (a, b) = two_ready_instances(&url, &channel).await;
    let (mut on_a, _) = WsClient::connect_with_stats(&a.ws_url()).await;
    let (mut on_b, _) = WsClient::connect_with_stats(&b.ws_url()).await;

    // What maicivy's Go backend might publish: its own spacing, key order and
    // non-ASCII text must all arrive untouched.
    let payload = "{\"type\":\"cv_theme_change\",  \"data\":{\"theme\":\"sombre\u{2014}été\"},\"visitor_id\":\"go-side\",\"z\":1}";
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(payload)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(receivers, 2, "one subscription per instance");
    assert_eq!(next_payload(&mut on_a).await, payload);
    assert_eq!(next_payload(&mut on_b).await, payload);

    // More clients do not mean more subscriptions.
    let _more: Vec<WsClient> = futures_util::future::join_all(
        (0..5).map(|_| async { WsClient::connect_with_stats(&a.ws_url()).await.0 }),
    )
    .await;
    let numsub: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channel)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(numsub.1, 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn figures_in_the_contract_layout_are_shared_with_other_writers() {
    let Some((url, mut con)) = shared_redis(11).await else {
        return;
    };
    let day = today();
    let visitors = "analytics:realtime:visitors";
    let unique = format!("analytics:visitors:unique:day:{day}");
    let total = format!("analytics:stats:day:{day}:total_events");
    let letters = format!("analytics:stats:day:{day}:letters_generated");
    // Seeded as maicivy's Go backend writes them: two current visitors (a set whose
    // whole key expires 5 minutes after the last write), four unique today, 42
    // events, 7 letters.
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(visitors)
        .arg(&["go-1", "go-2"])
        .ignore()
        .cmd("EXPIRE")
        .arg(visitors)
        .arg(300)
        .ignore()
        .cmd("PFADD")
        .arg(&unique)
        .arg(&["go-1", "go-2", "go-3", "go-4"])
        .ignore()
        .cmd("SET")
        .arg(&total)
        .arg(42)
        .ignore()
        .cmd("SET")
        .arg(&letters)
        .arg(7)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();

    let channel = unique_channel("figures");
    let (a, b) = two_ready_instances(&url, &channel).await;
    let (mut on_a, stats) = WsClient::connect_with_stats(&a.ws_url()).await;
    assert_eq!(stats["current_visitors"], 2, "{stats}");
    assert_eq!(stats["unique_today"], 4, "{stats}");
    assert_eq!(stats["total_events"], 42, "{stats}");
    assert_eq!(stats["letters_today"], 7, "{stats}");
    let (mut on_b, _) = WsClient::connect_with_stats(&b.ws_url()).await;

    // Our writes land in the same keys, with the contract's TTLs (none on letters
    // and HyperLogLogs, as Go).
    let v = visitor();
    post_ok(&a, &event("letter_generate", &v, 1)).await;
    assert_eq!(get_u64(&mut con, &total).await, 43);
    assert_eq!(get_u64(&mut con, &letters).await, 8);
    let member: bool = redis::cmd("SISMEMBER")
        .arg(visitors)
        .arg(&v)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(member, "{v} is in Go's set of current visitors");
    for (key, min, max) in [
        (visitors, 1, 300),
        (total.as_str(), 89 * 86400, 90 * 86400),
        (letters.as_str(), -1, -1),
        (unique.as_str(), -1, -1),
    ] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!((min..=max).contains(&ttl), "TTL of {key} is {ttl}");
    }
    let uniques: u64 = redis::cmd("PFCOUNT")
        .arg(&unique)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(uniques, 5);

    // The arrival (at the letter, on A) is announced once, through Redis, to every
    // instance's clients; the visitor's next event, on B, announces nothing more.
    post_ok(&b, &event("page_view", &v, 2)).await;
    for c in [&mut on_a, &mut on_b] {
        let mut arrivals = 0;
        loop {
            let m = c.next_json().await;
            if m["type"] == "visitor_connected" && m["visitor_id"] == v.as_str() {
                arrivals += 1;
            }
            if m["type"] == "page_view" {
                break;
            }
        }
        assert_eq!(arrivals, 1, "visitor_connected is announced once");
    }

    // Whichever instance answers, the same figures (once each instance's
    // half-second cache of them has expired).
    let ra = wait_realtime(&a, 44).await;
    let rb = wait_realtime(&b, 44).await;
    for k in [
        "current_visitors",
        "unique_today",
        "total_events",
        "letters_today",
    ] {
        assert_eq!(ra[k], rb[k], "{k}: {ra} / {rb}");
    }
    assert_eq!(rb["current_visitors"], 3);
    assert_eq!(rb["unique_today"], 5);
    assert_eq!(rb["letters_today"], 8);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn visitors_who_leave_are_pruned_and_announced_once() {
    let Some((url, mut con)) = shared_redis(12).await else {
        return;
    };
    let channel = unique_channel("prune");
    // A one-second window and heartbeat: both instances prune concurrently.
    let extra = ["--active-window", "1s", "--heartbeat-interval", "200ms"];
    let a = TestServer::start(redis_config(&url, &channel, &extra)).await;
    let b = TestServer::start(redis_config(&url, &channel, &extra)).await;
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;
    let (mut on_a, _) = WsClient::connect_with_stats(&a.ws_url()).await;

    let v = visitor();
    post_ok(&a, &event("page_view", &v, 1)).await;
    let mut departures = 0;
    loop {
        let m = on_a.next_json().await;
        if m["type"] == "visitor_disconnected" && m["visitor_id"] == v.as_str() {
            departures += 1;
        }
        // Two heartbeats with zero current visitors after the departure: both
        // instances have pruned since.
        if departures > 0 && m["type"] == "heartbeat" && m["data"]["current_visitors"] == 0 {
            let m = on_a.next_of_type("heartbeat").await;
            assert_eq!(m["data"]["current_visitors"], 0);
            break;
        }
    }
    assert_eq!(departures, 1, "visitor_disconnected is announced once");
    // Presence is this server's own sorted set, pruned; Go's set (whose whole key
    // expires one window after its last write) is left to expire.
    let present: i64 = redis::cmd("ZCARD")
        .arg("maicivy-analytics:presence")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(present, 0);
    let current: i64 = redis::cmd("SCARD")
        .arg("analytics:realtime:visitors")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(current, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_lost_mid_stream_clients_stay_and_fan_out_resumes() {
    let Some(mut redis_server) = OwnRedis::on_free_port() else {
        return;
    };
    redis_server.start().await;
    let url = redis_server.url();
    let channel = unique_channel("restart");
    let (a, b) = two_ready_instances(&url, &channel).await;
    let (mut on_a, _) = WsClient::connect_with_stats(&a.ws_url()).await;
    let (mut on_b, _) = WsClient::connect_with_stats(&b.ws_url()).await;

    let v = visitor();
    post_ok(&a, &event("page_view", &v, 1)).await;
    for c in [&mut on_a, &mut on_b] {
        let m: Value = serde_json::from_str(&next_payload(c).await).unwrap();
        assert_eq!(m["data"]["seq"], 1);
    }

    redis_server.kill();
    let why = wait_ready(&a, 503).await;
    assert_eq!(why["success"], false);
    assert!(
        why["error"].as_str().is_some_and(|s| s.ends_with('.')),
        "{why}"
    );

    // While Redis is away: stored (201), and this instance's clients still see them.
    post_ok(&a, &event("page_view", &v, 2)).await;
    post_ok(&a, &event("letter_generate", &v, 3)).await;
    for seq in [2, 3] {
        let m: Value = serde_json::from_str(&next_payload(&mut on_a).await).unwrap();
        assert_eq!(m["data"]["seq"], seq);
    }

    redis_server.start().await;
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;

    // The same WebSocket connections, both subscriptions restored.
    post_ok(&a, &event("page_view", &v, 4)).await;
    let m: Value = serde_json::from_str(&next_payload(&mut on_a).await).unwrap();
    assert_eq!(
        m["data"]["seq"], 4,
        "no duplicate of an event delivered locally"
    );
    let m: Value = serde_json::from_str(&next_payload(&mut on_b).await).unwrap();
    assert_eq!(m["data"]["seq"], 4);
    let mut con = connect(&url).await.unwrap();
    let raw = "{\"type\":\"go_after_restart\"}";
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(raw)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(receivers, 2);
    assert_eq!(next_payload(&mut on_a).await, raw);
    assert_eq!(next_payload(&mut on_b).await, raw);

    // Nothing acknowledged is lost: all four are stored...
    let (_, timeline) = a.get_json("/api/v1/analytics/timeline?limit=100").await;
    let mut seqs: Vec<u64> = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_data"]["seq"].as_u64())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // ...and the figures of the two ingested during the outage were replayed into
    // the restarted (empty, since unpersisted) Redis, next to the fourth.
    let day = today();
    wait_for_value(
        &mut con,
        &format!("analytics:stats:day:{day}:total_events"),
        3,
    )
    .await;
    wait_for_value(
        &mut con,
        &format!("analytics:stats:day:{day}:letters_generated"),
        1,
    )
    .await;
    assert!(
        a.metric("maicivy_redis_reconnects_total{link=\"pubsub\"}")
            .await
            >= 1.0
    );
    assert!(
        b.metric("maicivy_redis_reconnects_total{link=\"pubsub\"}")
            .await
            >= 1.0
    );
    assert!(
        a.metric("maicivy_redis_reconnects_total{link=\"commands\"}")
            .await
            >= 1.0
    );
    assert_eq!(a.metric("maicivy_redis_pending_events").await, 0.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_down_at_start_the_server_starts_and_becomes_ready_when_it_comes() {
    let Some(mut redis_server) = OwnRedis::on_free_port() else {
        return;
    };
    let channel = unique_channel("late");
    let server = TestServer::start(redis_config(&redis_server.url(), &channel, &[])).await;
    let why = wait_ready(&server, 503).await;
    assert_eq!(why["success"], false);
    // It says why, and that it is on it.
    assert!(
        why["error"]
            .as_str()
            .is_some_and(|s| s.contains("Redis") && s.contains("retrying")),
        "{why}"
    );
    // Serving all the same: the client is told the figures cannot be read (no
    // zeros standing for "unknown"), ingestion goes into the store.
    let mut client = WsClient::connect(&server.ws_url()).await;
    let first = client.next_json().await;
    assert_eq!(first["type"], "error", "{first}");
    assert_eq!(
        server.get_json("/api/v1/analytics/realtime").await.0,
        503,
        "no silent zero while Redis is down"
    );
    let v = visitor();
    post_ok(&server, &event("page_view", &v, 1)).await;
    let m: Value = serde_json::from_str(&next_payload(&mut client).await).unwrap();
    assert_eq!(m["data"]["seq"], 1);

    redis_server.start().await;
    wait_ready(&server, 200).await;
    let mut con = connect(&redis_server.url()).await.unwrap();
    let raw = "{\"type\":\"hello\"}";
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(raw)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(next_payload(&mut client).await, raw);
    let day = today();
    wait_for_value(
        &mut con,
        &format!("analytics:stats:day:{day}:total_events"),
        1,
    )
    .await;
    // Redis is back: the figures are read again, with the event of the outage.
    let (status, body) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total_events"], 1);
    server.stop().await;
}

/// A database of its own on the shared PostgreSQL, dropped at the end.
struct TempDb {
    name: String,
}

impl TempDb {
    async fn create() -> Option<Self> {
        use sqlx::{Connection, Executor};
        let mut admin = match tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::PgConnection::connect(PG_ADMIN),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return skipped("PostgreSQL", &format!("{PG_ADMIN} refused ({e})"));
            }
            Err(_) => {
                return skipped("PostgreSQL", &format!("{PG_ADMIN} did not answer"));
            }
        };
        let name = format!("maicivy_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name}"
            ))))
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        Some(Self { name })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: a thread of its own to block on.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            use sqlx::{Connection, Executor};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
                    let _ = admin
                        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        ))))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn two_instances_on_one_postgres_database_give_the_same_answers() {
    let Some(db) = TempDb::create().await else {
        return;
    };
    let Some((url, _con)) = shared_redis(13).await else {
        return;
    };
    let channel = unique_channel("pg");
    let db_url = db.url();
    let a = TestServer::start(redis_config(&url, &channel, &["--database-url", &db_url])).await;
    let b = TestServer::start(redis_config(&url, &channel, &["--database-url", &db_url])).await;
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;

    let visitors = [visitor(), visitor(), visitor()];
    for seq in 0..12u32 {
        let kind = if seq % 4 == 0 {
            "letter_generate"
        } else {
            "page_view"
        };
        let on = if seq % 2 == 0 { &a } else { &b };
        post_ok(on, &event(kind, &visitors[seq as usize % 3], seq)).await;
    }
    for path in [
        "/api/v1/analytics/timeline?limit=100",
        "/api/v1/analytics/timeline?limit=5&offset=3",
        "/api/v1/analytics/stats?period=day",
        "/api/v1/analytics/stats?period=week",
        "/api/v1/analytics/stats?period=month",
    ] {
        let (sa, ja) = a.get_json(path).await;
        let (sb, jb) = b.get_json(path).await;
        assert_eq!((sa, sb), (200, 200), "{path}");
        assert_eq!(ja, jb, "{path}: the same whichever instance answers");
    }
    let (_, timeline) = a.get_json("/api/v1/analytics/timeline?limit=100").await;
    assert_eq!(timeline["data"].as_array().unwrap().len(), 12);
    let (_, stats) = b.get_json("/api/v1/analytics/stats?period=day").await;
    assert_eq!(stats["data"]["total_events"], 12, "{stats}");
    assert_eq!(stats["data"]["letters_generated"], 3, "{stats}");
    assert_eq!(stats["data"]["unique_visitors"], 3, "{stats}");
    let ra = wait_realtime(&a, 12).await;
    let rb = wait_realtime(&b, 12).await;
    assert_eq!(ra["unique_today"], rb["unique_today"]);
    a.stop().await;
    b.stop().await;
    drop(db);
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{label}: n={} mean={mean:?} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Prints latencies; asserts only that every message arrives.
#[tokio::test]
async fn latency_from_publish_on_one_instance_to_a_client_of_another() {
    let Some((url, _con)) = shared_redis(14).await else {
        return;
    };
    let channel = unique_channel("latency");
    let (a, b) = two_ready_instances(&url, &channel).await;
    let (mut on_b, _) = WsClient::connect_with_stats(&b.ws_url()).await;

    const N: usize = 500;
    let mut publish = Vec::with_capacity(N);
    for i in 0..N {
        let payload = format!("{{\"type\":\"latency_probe\",\"i\":{i}}}");
        let start = Instant::now();
        a.analytics
            .broker()
            .publish(payload.clone().into())
            .await
            .expect("published");
        assert_eq!(next_payload(&mut on_b).await, payload);
        publish.push(start.elapsed());
    }
    summary("broker publish on A -> client of B", publish);

    let v = visitor();
    let mut ingest = Vec::with_capacity(N / 5);
    for i in 0..(N / 5) as u32 {
        let start = Instant::now();
        post_ok(&a, &event("page_view", &v, i)).await;
        let m: Value = serde_json::from_str(&next_payload(&mut on_b).await).unwrap();
        assert_eq!(m["data"]["seq"], i);
        ingest.push(start.elapsed());
    }
    summary(
        "POST on A (stored, counted, published) -> client of B",
        ingest,
    );
    a.stop().await;
    b.stop().await;
}
