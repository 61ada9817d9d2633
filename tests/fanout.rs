//! Fan-out at scale and under a slow reader: nobody waits for anybody.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient, visitor};
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_all_receive_an_event_and_connecting_costs_few_queries() {
    let server = TestServer::start_default().await;
    let before = server.metric("maicivy_stats_computations_total").await;
    let url = server.ws_url();
    let connects: Vec<_> = (0..1000)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { WsClient::connect_with_stats(&url).await.0 })
        })
        .collect();
    let mut clients = Vec::new();
    for c in connects {
        clients.push(c.await.expect("every client gets initial_stats"));
    }
    assert_eq!(server.analytics.hub.connected_clients(), 1000);
    // Connect-time figures come from a short shared cache: a thousand connections
    // cost a handful of computations, not a thousand.
    let computations = server.metric("maicivy_stats_computations_total").await - before;
    assert!(
        computations <= 20.0,
        "{computations} computations for 1000 connections"
    );

    let id = visitor();
    let (status, _) = server
        .post_event(&json!({"event_type": "button_click", "visitor_id": id}))
        .await;
    assert_eq!(status, 201);
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.next_of_type("button_click").await }))
        .collect();
    for r in receivers {
        assert_eq!(r.await.unwrap()["visitor_id"], id);
    }
    server.stop().await;
}

/// A client with a tiny receive buffer, so that not reading fills it quickly.
async fn stalled_client(
    server: &TestServer,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.ws_url(), stream)
        .await
        .expect("handshake");
    let first = tokio::time::timeout(common::WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.to_text().unwrap().contains("initial_stats"));
    ws
}

async fn post_big_events_while_a_fast_client_keeps_up(server: &TestServer, count: usize) {
    let (mut fast, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let pad = "x".repeat(16 * 1024);
    for i in 0..count {
        let (status, _) = server
            .post_event(&json!({
                "event_type": "page_view",
                "page_url": format!("/{i}"),
                "visitor_id": visitor(),
                "event_data": {"pad": pad},
            }))
            .await;
        assert_eq!(status, 201);
        // The fast client gets each event before the next one is even sent,
        // whatever the stalled client does.
        let ev = fast.next_of_type("page_view").await;
        assert_eq!(ev["page_url"], format!("/{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_a_queue_behind_is_closed_with_4000() {
    let server = TestServer::with(&[
        "--heartbeat-interval",
        "60s",
        "--client-queue",
        "16",
        "--write-timeout",
        "60s",
    ])
    .await;
    let mut slow = stalled_client(&server).await;
    post_big_events_while_a_fast_client_keeps_up(&server, 400).await;

    // Now the slow client reads: what reached its socket, in order, then 4000.
    let mut last = -1i64;
    let code = loop {
        let msg = tokio::time::timeout(common::WAIT, slow.next())
            .await
            .expect("the slow client hears from the server")
            .expect("a frame")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "page_view" {
                    continue; // visitor_connected
                }
                let i: i64 = v["page_url"].as_str().unwrap()[1..].parse().unwrap();
                assert_eq!(i, last + 1, "events arrive in order, without holes");
                last = i;
            }
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert_eq!(code, Some(4000));
    assert!(
        last < 399,
        "the slow client cannot have received everything"
    );
    assert!(
        server
            .metric("maicivy_websocket_messages_dropped_total")
            .await
            > 0.0
    );
    assert_eq!(
        server
            .metric("maicivy_websocket_connections_closed_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let server =
        TestServer::with(&["--heartbeat-interval", "60s", "--write-timeout", "500ms"]).await;
    let _slow = stalled_client(&server).await;
    post_big_events_while_a_fast_client_keeps_up(&server, 400).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let closed = server
            .metric("maicivy_websocket_connections_closed_total{reason=\"slow_consumer\"}")
            .await;
        if closed == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the fast client's session (now closed too) and nobody else was affected.
    server.stop().await;
}
