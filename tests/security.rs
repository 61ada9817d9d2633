//! Security and abuse resistance (SECURITY.md), against the real server: for every
//! refusal, its status or close code, its sentence, its metric, and that the other
//! clients go on as before.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, WAIT, WsClient, config, http, visitor};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A test-only EC P-256 key pair (ES256); it protects nothing.
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgR0QccF2q7lL8/Mij
NbUFQgnqpXCZTMlccVmabspZDiyhRANCAAR7YBfTzlbVKRWnAsFg3h70a6NYgsvj
GmIgx+fF9Kd1Hhl2J8t0zyT7lXKyoHSXaQiG72KHl0zSONFrsg4Vvelu
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEe2AX085W1SkVpwLBYN4e9GujWILL
4xpiIMfnxfSndR4ZdifLdM8k+5VysqB0l2kIhu9ih5dM0jjRa7IOFb3pbg==
-----END PUBLIC KEY-----
";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "dashboard", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn assert_error(status: u16, body: &Value, expected: u16, words: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["success"], false, "{body}");
    let sentence = body["error"].as_str().expect("an error sentence");
    assert!(sentence.ends_with('.'), "{sentence}");
    assert!(
        sentence.contains(words),
        "{sentence:?} should say {words:?}"
    );
}

fn request(url: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

/// Opens a WebSocket that the server must refuse; returns the status and its JSON.
async fn refused_upgrade(req: Request) -> (u16, Value) {
    match tokio::time::timeout(WAIT, connect_async(req))
        .await
        .expect("the server answers in time")
    {
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            (
                status,
                serde_json::from_slice(&body).expect("a JSON answer"),
            )
        }
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

/// Opens a WebSocket that the server must accept and reads `initial_stats`.
async fn accepted(req: Request) -> WsClient {
    let (ws, _) = tokio::time::timeout(WAIT, connect_async(req))
        .await
        .expect("connects in time")
        .expect("the upgrade is accepted");
    let mut c = WsClient { ws };
    assert_eq!(c.next_json().await["type"], "initial_stats");
    c
}

/// Posts an event and checks that `client` receives it: it was not disturbed.
async fn still_served(server: &TestServer, client: &mut WsClient) {
    let id = visitor();
    let (status, body) = server
        .post_event(&json!({"event_type": "still_here", "visitor_id": id}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(client.next_of_type("still_here").await["visitor_id"], id);
}

/// Waits (polling, with a timeout) until a counter reaches `at_least`.
async fn metric_reaches(server: &TestServer, name: &str, at_least: f64) {
    tokio::time::timeout(WAIT, async {
        loop {
            if server.metric(name).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not reach {at_least}"));
}

fn refused(reason: &str) -> String {
    format!("maicivy_requests_refused_total{{reason=\"{reason}\"}}")
}

fn closed(reason: &str) -> String {
    format!("maicivy_websocket_connections_closed_total{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn without_auth_flags_the_feed_is_open() {
    let server = TestServer::start_default().await;
    let mut client = accepted(request(&server.ws_url(), &[])).await;
    let (status, _) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(status, 200);
    still_served(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn the_websocket_and_the_read_api_need_a_valid_token() {
    let server = TestServer::with(&[
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "0s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let url = server.ws_url();
    let good = hs256(now() + 3600);

    // Accepted with the token in the query or in the Authorization header.
    let mut by_query = accepted(request(&format!("{url}?token={good}"), &[])).await;
    let bearer = format!("Bearer {good}");
    let mut by_header = accepted(request(&url, &[("authorization", &bearer)])).await;

    let (status, body) = refused_upgrade(request(&url, &[])).await;
    assert_error(status, &body, 401, "requires a token");
    let (status, body) = refused_upgrade(request(&format!("{url}?token=nonsense"), &[])).await;
    assert_error(status, &body, 401, "not valid");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 3600}),
        &EncodingKey::from_secret(b"someone-else's-secret-0123456789abcdef"),
    )
    .unwrap();
    let (status, body) = refused_upgrade(request(&format!("{url}?token={forged}"), &[])).await;
    assert_error(status, &body, 401, "not valid");
    let expired = hs256(now() - 10);
    let (status, body) = refused_upgrade(request(&format!("{url}?token={expired}"), &[])).await;
    assert_error(status, &body, 401, "expired");

    // The read API follows the same setting, with the same answers.
    for path in [
        "/api/v1/analytics/realtime",
        "/api/v1/analytics/timeline",
        "/api/v1/analytics/stats?period=week",
    ] {
        let r = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 401, "requires a token");
        let r = http()
            .get(server.url(path))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = http()
            .get(server.url(&format!("{path}{sep}token={good}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A plain GET still learns that this is a WebSocket address (426), nothing more.
    let (status, _) = server.get_json("/ws/analytics").await;
    assert_eq!(status, 426);
    // Ingestion and the health checks stay open.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(server.get_json(path).await.0, 200, "{path}");
    }
    still_served(&server, &mut by_query).await;
    by_header.next_of_type("still_here").await;

    assert_eq!(server.metric(&refused("token_missing")).await, 4.0);
    assert_eq!(server.metric(&refused("token_invalid")).await, 2.0);
    assert_eq!(server.metric(&refused("token_expired")).await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn a_public_key_verifies_es256_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.pub.pem");
    std::fs::write(&key, EC_PUBLIC).unwrap();
    let server = TestServer::with(&[
        "--jwt-public-key",
        key.to_str().unwrap(),
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let sign = |alg, key: &EncodingKey| {
        jsonwebtoken::encode(&Header::new(alg), &json!({"exp": now() + 600}), key).unwrap()
    };
    let es256 = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    );
    let mut client = accepted(request(&format!("{}?token={es256}", server.ws_url()), &[])).await;
    // The public key used as an HMAC secret (the algorithm-confusion attack) fails.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
    );
    let (status, body) = refused_upgrade(request(
        &format!("{}?token={confused}", server.ws_url()),
        &[],
    ))
    .await;
    assert_error(status, &body, 401, "not valid");
    still_served(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_with_4001() {
    let server = TestServer::with(&[
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "0s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let url = server.ws_url();
    let mut short = accepted(request(&format!("{url}?token={}", hs256(now() + 2)), &[])).await;
    let mut long = accepted(request(
        &format!("{url}?token={}", hs256(now() + 3600)),
        &[],
    ))
    .await;
    assert_eq!(short.close_code().await, Some(4001));
    assert_eq!(
        maicivy_analytics::disconnect::Disconnect::TokenExpired.close_code(),
        Some(4001),
        "the documented code"
    );
    metric_reaches(&server, &closed("token_expired"), 1.0).await;
    still_served(&server, &mut long).await;
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_the_websocket_and_on_ingestion() {
    let server = TestServer::with(&[
        "--allowed-origins",
        "https://site.example,https://dash.example",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let url = server.ws_url();
    let mut ours = accepted(request(&url, &[("origin", "https://dash.example")])).await;
    // No Origin: not a browser page, nothing to protect.
    let mut plain = accepted(request(&url, &[])).await;
    let (status, body) =
        refused_upgrade(request(&url, &[("origin", "https://evil.example")])).await;
    assert_error(status, &body, 403, "origin");

    let post = |origin: &'static str| {
        http()
            .post(server.url("/api/v1/analytics/event"))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(json!({"event_type": "page_view", "visitor_id": visitor()}).to_string())
            .send()
    };
    let r = post("https://evil.example").await.unwrap();
    assert_eq!(r.headers().get("access-control-allow-origin"), None);
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 403, "origin");
    let r = post("https://site.example").await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://site.example"
    );
    assert_eq!(server.metric(&refused("origin_forbidden")).await, 2.0);
    still_served(&server, &mut ours).await;
    plain.next_of_type("still_here").await;
    server.stop().await;
}

#[tokio::test]
async fn the_instance_connection_limit_answers_503() {
    let server = TestServer::with(&["--max-connections", "2", "--heartbeat-interval", "60s"]).await;
    let url = server.ws_url();
    let mut first = accepted(request(&url, &[])).await;
    let mut second = accepted(request(&url, &[])).await;
    let (status, body) = refused_upgrade(request(&url, &[])).await;
    assert_error(status, &body, 503, "connection limit");
    assert_eq!(server.metric(&refused("connections_instance")).await, 1.0);
    still_served(&server, &mut first).await;

    // A place that frees up can be taken again.
    second.ws.close(None).await.unwrap();
    metric_reaches(&server, &closed("client"), 1.0).await;
    let mut third = accepted(request(&url, &[])).await;
    still_served(&server, &mut third).await;
    server.stop().await;
}

#[tokio::test]
async fn the_per_ip_connection_limit_answers_429_and_believes_only_trusted_proxies() {
    let server = TestServer::with(&[
        "--max-connections-per-ip",
        "2",
        "--limits-exempt",
        "",
        "--trusted-proxies",
        "127.0.0.1",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let url = server.ws_url();
    // Behind the (trusted) proxy at 127.0.0.1: the client is the last address it saw.
    let a = [("x-forwarded-for", "198.51.100.7")];
    let mut a1 = accepted(request(&url, &a)).await;
    let _a2 = accepted(request(&url, &a)).await;
    let (status, body) = refused_upgrade(request(&url, &a)).await;
    assert_error(status, &body, 429, "Too many connections from your address");
    // An address the client wrote itself further left is not believed.
    let forged = [("x-forwarded-for", "203.0.113.1, 198.51.100.7")];
    let (status, _) = refused_upgrade(request(&url, &forged)).await;
    assert_eq!(status, 429);
    // Another client is not affected.
    let mut b = accepted(request(&url, &[("x-forwarded-for", "198.51.100.8")])).await;
    assert_eq!(server.metric(&refused("connections_per_ip")).await, 2.0);
    still_served(&server, &mut a1).await;
    b.next_of_type("still_here").await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_told_then_closed_with_1008() {
    let server = TestServer::with(&[
        "--ws-messages-per-second",
        "1",
        "--ws-message-burst",
        "2",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let (mut other, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (mut flooder, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    for _ in 0..3 {
        flooder.send_text(r#"{"type":"ping"}"#).await;
    }
    assert_eq!(flooder.next_json().await["type"], "pong");
    assert_eq!(flooder.next_json().await["type"], "pong");
    let told = flooder.next_json().await;
    assert_eq!(told["type"], "error", "{told}");
    assert!(
        told["error"].as_str().unwrap().contains("too fast"),
        "{told}"
    );
    // Going on regardless ends the connection. (Sends may fail once it is closed.)
    for _ in 0..30 {
        let _ = flooder.ws.send(Message::text(r#"{"type":"ping"}"#)).await;
    }
    assert_eq!(flooder.close_code().await, Some(1008));
    metric_reaches(&server, &closed("rate_limited"), 1.0).await;
    assert!(
        server
            .metric("maicivy_websocket_messages_rate_limited_total")
            .await
            >= 11.0
    );
    still_served(&server, &mut other).await;
    server.stop().await;
}

#[tokio::test]
async fn ingestion_over_the_rate_of_an_ip_gets_429_with_retry_after() {
    let server = TestServer::with(&[
        "--ingest-events-per-second",
        "1",
        "--ingest-burst",
        "2",
        "--limits-exempt",
        "",
        "--trusted-proxies",
        "127.0.0.1",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let post = |ip: &'static str| {
        http()
            .post(server.url("/api/v1/analytics/event"))
            .header("x-forwarded-for", ip)
            .json(&json!({"event_type": "page_view", "visitor_id": visitor()}))
            .send()
    };
    assert_eq!(post("198.51.100.7").await.unwrap().status(), 201);
    assert_eq!(post("198.51.100.7").await.unwrap().status(), 201);
    let r = post("198.51.100.7").await.unwrap();
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 429, "Too many events");
    assert_eq!(
        server
            .metric("maicivy_ingestion_errors_total{reason=\"rate_limited\"}")
            .await,
        1.0
    );
    // Another address has its own allowance.
    assert_eq!(post("198.51.100.8").await.unwrap().status(), 201);
    // Exactly the three accepted events reached the client; the refused one did not.
    for _ in 0..3 {
        client.next_of_type("page_view").await;
    }
    still_served(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn the_existing_size_limits_answer_413_and_1009() {
    let server = TestServer::with(&[
        "--max-body-bytes",
        "1024",
        "--max-message-bytes",
        "256",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let (mut other, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let big = json!({"event_type": "page_view", "page_url": "x".repeat(2000)});
    let (status, body) = server.post_event(&big).await;
    assert_error(status, &body, 413, "larger than the limit");
    assert_eq!(
        server
            .metric("maicivy_ingestion_errors_total{reason=\"too_large\"}")
            .await,
        1.0
    );
    let (mut talker, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    talker.send_text(&"x".repeat(300)).await;
    assert_eq!(talker.close_code().await, Some(1009));
    metric_reaches(&server, &closed("message_too_big"), 1.0).await;
    still_served(&server, &mut other).await;
    server.stop().await;
}

/// Reads one WebSocket frame sent by the server (unmasked) from `bytes`.
fn next_frame(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (len, rest) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([rest[0], rest[1]])),
            &rest[2..],
        ),
        127 => panic!("no frame here is that large"),
        n => (usize::from(n), rest),
    };
    (rest.len() >= len).then(|| (b0 & 0x0f, &rest[..len], &rest[len..]))
}

#[tokio::test]
async fn a_client_that_answers_no_ping_is_closed_with_4002() {
    let server = TestServer::with(&[
        "--ws-ping-interval",
        "200ms",
        "--ws-idle-timeout",
        "500ms",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    // A live client, read all the time, so that its WebSocket library answers pings.
    let (live, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut sink, mut stream) = live.ws.split();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    // A dead client: a raw socket that completes the handshake and then never
    // answers anything.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        format!(
            "GET /ws/analytics HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut received))
        .await
        .expect("the server closes the dead client in time")
        .unwrap();
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    assert!(received.starts_with(b"HTTP/1.1 101"));
    let (mut pings, mut close_code) = (0, None);
    let mut rest = &received[head_end..];
    while let Some((opcode, payload, tail)) = next_frame(rest) {
        match opcode {
            0x9 => pings += 1,
            0x8 => close_code = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
        rest = tail;
    }
    assert!(pings >= 1, "the server pinged before giving up");
    assert_eq!(close_code, Some(4002));
    metric_reaches(&server, &closed("idle_timeout"), 1.0).await;

    // The live client, which answered every ping, is still served.
    let id = visitor();
    server
        .post_event(&json!({"event_type": "still_here", "visitor_id": id}))
        .await;
    let got = tokio::time::timeout(WAIT, async {
        while let Some(m) = rx.recv().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "still_here" {
                    return v;
                }
            }
        }
        panic!("the live client's connection ended");
    })
    .await
    .expect("the live client gets the event");
    assert_eq!(got["visitor_id"], id);
    assert_eq!(server.metric(&closed("idle_timeout")).await, 1.0);
    let _ = sink.close().await;
    reader.abort();
    server.stop().await;
}

#[tokio::test]
async fn the_cookieless_visitor_follows_x_forwarded_for_only_from_trusted_proxies() {
    async fn two_visitors(trusted: &[&str]) -> (Value, Value) {
        let mut flags = vec!["--heartbeat-interval", "60s"];
        flags.extend_from_slice(trusted);
        let server = TestServer::with(&flags).await;
        let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
        let mut ids = Vec::new();
        for ip in ["198.51.100.7", "198.51.100.8"] {
            let r = http()
                .post(server.url("/api/v1/analytics/event"))
                .header("x-forwarded-for", ip)
                .header("user-agent", "Same Browser")
                .body(r#"{"event_type":"page_view"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            ids.push(client.next_of_type("page_view").await["visitor_id"].clone());
        }
        server.stop().await;
        (ids[0].clone(), ids[1].clone())
    }
    let (a, b) = two_visitors(&["--trusted-proxies", "127.0.0.0/8"]).await;
    assert_ne!(a, b, "two clients behind the proxy are two visitors");
    let (a, b) = two_visitors(&[]).await;
    assert_eq!(a, b, "an untrusted peer's X-Forwarded-For is ignored");
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    common::raise_fd_limit();
    let server = maicivy_analytics::Server::bind(config(&["--metrics-listen", "127.0.0.1:0"]))
        .await
        .unwrap();
    let main = server.local_addr();
    let private = server.metrics_addr().expect("a metrics address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let r = http()
        .get(format!("http://{main}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http()
        .get(format!("http://{private}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("maicivy_websocket_connections")
    );
    let r = http()
        .get(format!("http://{main}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = stop.send(());
    tokio::time::timeout(WAIT * 2, handle)
        .await
        .expect("stops in time")
        .unwrap();
}
