//! Restarts and stops: what was acknowledged survives, clients are told.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{TestServer, WsClient, visitor};
use serde_json::json;

#[tokio::test]
async fn a_restart_keeps_todays_figures_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("events.db").display());
    let server = TestServer::with(&["--database-url", &db]).await;
    let a = visitor();
    for (kind, who) in [
        ("page_view", a.clone()),
        ("letter_generate", a.clone()),
        ("page_view", visitor()),
    ] {
        let (status, _) = server
            .post_event(&json!({"event_type": kind, "visitor_id": who, "page_url": "/cv"}))
            .await;
        assert_eq!(status, 201);
    }
    server.stop().await;

    let server = TestServer::with(&["--database-url", &db]).await;
    let (_, stats) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_eq!(stats["total_events"], 3);
    assert_eq!(stats["letters_today"], 1);
    assert_eq!(stats["unique_today"], 2);
    assert_eq!(stats["current_visitors"], 2);
    let (_, timeline) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(timeline["meta"]["count"], 3);
    assert_eq!(timeline["data"][0]["event_type"], "page_view");
    assert_eq!(timeline["data"][1]["event_type"], "letter_generate");
    server.stop().await;
}

#[tokio::test]
async fn a_stop_closes_clients_with_1001_and_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("events.db").display());
    let server = TestServer::with(&["--database-url", &db]).await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;

    // Events keep arriving while the server stops.
    let url = server.url("/api/v1/analytics/event");
    let senders: Vec<_> = (0..8)
        .map(|worker| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = common::http();
                let mut acked = Vec::new();
                for i in 0..50 {
                    let page = format!("/w{worker}/e{i}");
                    let sent = http
                        .post(&url)
                        .json(&json!({"event_type": "page_view", "page_url": page, "visitor_id": visitor()}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 201 => acked.push(page),
                        // Refused (503) or not connected: not acknowledged.
                        _ => {}
                    }
                }
                acked
            })
        })
        .collect();
    // Stop once the first events are through.
    client.next_of_type("page_view").await;
    server.stop().await;
    assert_eq!(client.close_code().await, Some(1001));
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(!acked.is_empty());

    let server = TestServer::with(&["--database-url", &db]).await;
    let mut stored = std::collections::HashSet::new();
    for offset in (0..400).step_by(100) {
        let (_, page) = server
            .get_json(&format!(
                "/api/v1/analytics/timeline?limit=100&offset={offset}"
            ))
            .await;
        for e in page["data"].as_array().unwrap() {
            stored.insert(e["page_url"].as_str().unwrap().to_owned());
        }
    }
    for page in &acked {
        assert!(stored.contains(page), "acknowledged event {page} was lost");
    }
    server.stop().await;
}

/// The real binary, stopped with SIGTERM, as an operator or systemd would.
#[tokio::test]
async fn the_binary_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_maicivy-analytics"))
        .args(["--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!(
            "sqlite://{}",
            dir.path().join("events.db").display()
        ))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = tokio::time::timeout(common::WAIT, rx)
        .await
        .expect("the server says where it listens")
        .unwrap();
    let (mut client, _) = WsClient::connect_with_stats(&format!("ws://{addr}/ws/analytics")).await;
    let r = common::http()
        .post(format!("http://{addr}/api/v1/analytics/event"))
        .json(&json!({"event_type": "page_view", "visitor_id": visitor()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(client.close_code().await, Some(1001));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // No new connections once stopped.
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still accepting after the stop"
    );
}
