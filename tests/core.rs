//! The WebSocket protocol of CONTRACT.md, row by row, against the real server.

mod common;

use common::{TestServer, WsClient, visitor};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn assert_stats_shape(data: &serde_json::Value) {
    for field in [
        "current_visitors",
        "unique_today",
        "total_events",
        "letters_today",
        "timestamp",
    ] {
        assert!(
            data[field].is_u64() || data[field].is_i64(),
            "{field} in {data}"
        );
    }
}

#[tokio::test]
async fn initial_stats_is_the_first_message() {
    let server = TestServer::start_default().await;
    let (_, data) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_stats_shape(&data);
    let now = chrono::Utc::now().timestamp();
    assert!((data["timestamp"].as_i64().unwrap() - now).abs() <= 5);
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_arrives_every_interval_with_fresh_figures() {
    let server = TestServer::with(&["--heartbeat-interval", "200ms"]).await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let first = client.next_of_type("heartbeat").await;
    assert_stats_shape(&first["data"]);
    let (status, _) = server
        .post_event(&json!({"event_type": "page_view", "visitor_id": visitor()}))
        .await;
    assert_eq!(status, 201);
    // A later heartbeat carries the new figures.
    loop {
        let hb = client.next_of_type("heartbeat").await;
        if hb["data"]["total_events"] == 1 {
            assert_eq!(hb["data"]["unique_today"], 1);
            assert_eq!(hb["data"]["current_visitors"], 1);
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn every_event_reaches_every_client() {
    let server = TestServer::start_default().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::connect_with_stats(&server.ws_url()).await.0);
    }
    let id = visitor();
    let (status, body) = server
        .post_event(&json!({
            "event_type": "letter_generate",
            "event_data": {"letter_type": "motivation"},
            "page_url": "/letters",
            "visitor_id": id,
        }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!({"success": true, "message": "Event tracked successfully"})
    );
    for c in &mut clients {
        let ev = c.next_of_type("letter_generate").await;
        assert_eq!(ev["visitor_id"], id);
        assert_eq!(ev["page_url"], "/letters");
        assert_eq!(ev["data"], json!({"letter_type": "motivation"}));
        let ts = ev["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn refresh_stats_is_answered_with_initial_stats() {
    let server = TestServer::start_default().await;
    let (mut client, before) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_eq!(before["letters_today"], 0);
    server
        .post_event(&json!({"event_type": "letter_generate", "visitor_id": visitor()}))
        .await;
    client.next_of_type("letter_generate").await;
    // The connect-time cache is short: ask until the fresh figures show.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        client.send_text(r#"{"type":"refresh_stats"}"#).await;
        let answer = client.next_of_type("initial_stats").await;
        if answer["data"]["letters_today"] == 1 {
            assert_eq!(answer["data"]["total_events"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "figures never refreshed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn ping_and_heartbeat_are_answered_with_pong() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    for kind in ["ping", "heartbeat"] {
        client.send_text(&json!({"type": kind}).to_string()).await;
        let pong = client.next_json().await;
        assert_eq!(pong["type"], "pong", "answer to {kind}");
        assert!(pong["time"].as_i64().unwrap() > 1_700_000_000);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_ping_with_a_visitor_marks_them_active_and_announces_them() {
    let server = TestServer::start_default().await;
    let (mut watcher, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (mut browser, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let id = visitor();
    browser
        .send_text(&json!({"type": "ping", "visitor_id": id}).to_string())
        .await;
    assert_eq!(browser.next_of_type("pong").await["type"], "pong");
    let connected = watcher.next_of_type("visitor_connected").await;
    assert_eq!(connected["visitor_id"], id);
    assert!(connected["timestamp"].is_i64());
    // A second ping does not announce them again; the stats count them once.
    browser
        .send_text(&json!({"type": "heartbeat", "visitor_id": id}).to_string())
        .await;
    browser.next_of_type("pong").await;
    let (_, stats) = server.get_json("/api/v1/analytics/realtime").await;
    let _ = stats;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (_, rt) = server.get_json("/api/v1/analytics/realtime").await;
        if rt["data"]["current_visitors"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn visitors_who_leave_the_window_are_announced_as_disconnected() {
    // The window is five minutes in production; one second here.
    let server =
        TestServer::with(&["--heartbeat-interval", "300ms", "--active-window", "1s"]).await;
    let (mut watcher, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let id = visitor();
    server
        .post_event(&json!({"event_type": "page_view", "visitor_id": id}))
        .await;
    assert_eq!(
        watcher.next_of_type("visitor_connected").await["visitor_id"],
        id
    );
    let gone = watcher.next_of_type("visitor_disconnected").await;
    assert_eq!(gone["visitor_id"], id);
    let hb = watcher.next_of_type("heartbeat").await;
    assert_eq!(hb["data"]["current_visitors"], 0);
    assert_eq!(hb["data"]["unique_today"], 1, "still a visitor of today");
    server.stop().await;
}

#[tokio::test]
async fn protocol_ping_frames_get_pong_frames() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    client
        .ws
        .send(Message::Ping(b"are-you-there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(common::WAIT, async {
        use futures_util::StreamExt;
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"are-you-there");
    server.stop().await;
}

#[tokio::test]
async fn invalid_messages_are_answered_and_touch_nobody_else() {
    let server = TestServer::start_default().await;
    let (mut bad, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (mut other, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    for text in [
        "not json",
        "[1,2]",
        r#"{"no_type":true}"#,
        r#"{"type":"launch_missiles"}"#,
    ] {
        bad.send_text(text).await;
        let answer = bad.next_json().await;
        assert_eq!(answer["type"], "error", "answer to {text}");
        assert!(answer["error"].as_str().unwrap().len() > 10);
    }
    bad.ws
        .send(Message::Binary(vec![0, 1, 2].into()))
        .await
        .unwrap();
    assert_eq!(bad.next_json().await["type"], "error");
    // Still connected, still served; the other client never saw any of it.
    bad.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(bad.next_json().await["type"], "pong");
    server
        .post_event(&json!({"event_type": "page_view", "visitor_id": visitor()}))
        .await;
    assert_eq!(other.next_json().await["type"], "page_view");
    assert_eq!(bad.next_of_type("page_view").await["type"], "page_view");
    assert!(
        server
            .metric("maicivy_websocket_invalid_messages_total")
            .await
            >= 5.0
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_with_1009() {
    let server =
        TestServer::with(&["--heartbeat-interval", "60s", "--max-message-bytes", "1024"]).await;
    let (mut big, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (mut other, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    big.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(big.close_code().await, Some(1009));
    other.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(other.next_json().await["type"], "pong");
    server.stop().await;
}

#[tokio::test]
async fn a_plain_get_gets_426() {
    let server = TestServer::start_default().await;
    let r = common::http()
        .get(server.url("/ws/analytics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["upgrade"], "websocket");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains("WebSocket"));
    server.stop().await;
}

#[tokio::test]
async fn connected_clients_are_counted_in_the_library_and_the_gauge() {
    let server = TestServer::start_default().await;
    let (a, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (b, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_eq!(server.analytics.hub.connected_clients(), 2);
    assert_eq!(server.metric("maicivy_websocket_connections").await, 2.0);
    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while server.analytics.hub.connected_clients() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "clients never left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("maicivy_websocket_connections").await, 0.0);
    assert_eq!(
        server
            .metric("maicivy_websocket_connections_opened_total")
            .await,
        2.0
    );
    server.stop().await;
}
