//! The load tool itself: run against a test server with small counts, it connects
//! every client and reports full delivery in its JSON line. No timing is asserted.

// The root package's harness: the real server on 127.0.0.1:0.
#[path = "../../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{TestServer, config};
use serde_json::Value;

/// Runs `maicivy-bench` with `args`; returns its exit status and its JSON line.
async fn bench(args: &[&str]) -> (std::process::ExitStatus, Value) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_maicivy-bench"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the tool finishes in time")
        .expect("the tool runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON line in the output:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status, serde_json::from_str(line).expect("a JSON line"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_reports_full_delivery() {
    let server = TestServer::start(config(&["--heartbeat-interval", "60s"])).await;
    let url = server.ws_url();
    let (status, report) = bench(&[
        "--url",
        &url,
        "--clients",
        "30",
        "--sources",
        "3",
        "--rate",
        "50",
        "--duration",
        "400ms",
        "--settle",
        "0s",
        "--drain",
        "20s",
        "--http-concurrency",
        "2",
    ])
    .await;
    assert!(status.success(), "{report}");
    assert_eq!(report["connected"], 30, "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    assert_eq!(report["events_failed"], 0, "{report}");
    let acked = report["events_acked"].as_u64().unwrap();
    assert_eq!(acked, 20, "{report}");
    assert_eq!(report["expected_deliveries"].as_u64(), Some(acked * 30));
    assert_eq!(report["deliveries"].as_u64(), Some(acked * 30), "{report}");
    assert_eq!(report["delivery_ratio"], 1.0);
    assert!(report["latency_ms"]["p99"].is_number(), "{report}");
    assert_eq!(report["complete"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_counts_slow_clients_apart_and_ingests() {
    let server = TestServer::start(config(&["--heartbeat-interval", "60s"])).await;
    let url = server.ws_url();
    let (status, report) = bench(&[
        "--url",
        &url,
        "--clients",
        "10",
        "--slow-share",
        "0.2",
        "--rate",
        "20",
        "--duration",
        "250ms",
        "--settle",
        "0s",
        "--drain",
        "20s",
    ])
    .await;
    assert!(status.success(), "{report}");
    assert_eq!(report["slow_clients"], 2);
    assert_eq!(report["reading_clients"], 8);
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");

    let (status, report) = bench(&[
        "--url",
        &url,
        "--ingest-only",
        "--http-concurrency",
        "4",
        "--duration",
        "300ms",
    ])
    .await;
    assert!(status.success(), "{report}");
    assert_eq!(report["mode"], "ingest");
    assert_eq!(report["events_failed"], 0, "{report}");
    assert!(report["events_acked"].as_u64().unwrap() > 0, "{report}");
    server.stop().await;
}

#[tokio::test]
async fn the_tool_refuses_more_clients_than_one_process_holds() {
    let (status, _) = tokio::time::timeout(Duration::from_secs(30), async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_maicivy-bench"))
            .args(["--clients", "100000000"])
            .output()
            .await
            .expect("the tool runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(stderr.contains("several"), "{stderr}");
        (out.status, stderr)
    })
    .await
    .expect("the tool answers in time");
    assert_eq!(status.code(), Some(2));
}

/// In Redis mode the tool can inject straight into the channel, as maicivy's Go
/// backend publishes: every reading client still receives every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_injects_into_redis_for_a_server_in_redis_mode() {
    // Logical database 15 of the local Redis is this test's own (redis_mode uses 9–14).
    let redis_url = "redis://127.0.0.1:6379/15";
    let reachable = match redis::Client::open(redis_url) {
        Ok(client) => matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection()
            )
            .await,
            Ok(Ok(_))
        ),
        Err(_) => false,
    };
    if !reachable {
        common::skip_or_fail("Redis", &format!("none answers at {redis_url}"));
        return;
    }
    let channel = format!("test:bench:{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start(config(&[
        "--heartbeat-interval",
        "60s",
        "--redis-url",
        redis_url,
        "--channel",
        &channel,
    ]))
    .await;
    // Subscribed before events are published (readiness includes the subscription).
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while server.get_json("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = server.ws_url();
    let (status, report) = bench(&[
        "--url",
        &url,
        "--clients",
        "20",
        "--rate",
        "50",
        "--duration",
        "200ms",
        "--settle",
        "0s",
        "--drain",
        "20s",
        "--redis-url",
        redis_url,
        "--channel",
        &channel,
    ])
    .await;
    assert!(status.success(), "{report}");
    assert_eq!(report["injected_via"], "redis", "{report}");
    let acked = report["events_acked"].as_u64().unwrap();
    assert_eq!(acked, 10, "{report}");
    assert_eq!(report["deliveries"].as_u64(), Some(acked * 20), "{report}");
    assert_eq!(report["complete"], true);
    // Nothing went through HTTP ingestion.
    assert_eq!(server.metric("maicivy_events_ingested_total").await, 0.0);
    server.stop().await;
}
