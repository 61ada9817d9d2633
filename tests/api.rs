//! The HTTP routes of CONTRACT.md and every bad input, against the real server.

mod common;

use common::{TestServer, WsClient, http, visitor};
use serde_json::{Value, json};

async fn post_raw(server: &TestServer, content_type: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http()
        .post(server.url("/api/v1/analytics/event"))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON answer"))
}

fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["success"], false, "{body}");
    let sentence = body["error"].as_str().expect("an error sentence");
    assert!(sentence.len() > 10 && sentence.ends_with('.'), "{sentence}");
}

#[tokio::test]
async fn events_are_accepted_as_json_and_as_text_plain() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let body = json!({"event_type": "page_view", "page_url": "/cv", "visitor_id": visitor()});
    for ct in [
        Some("application/json"),
        Some("text/plain;charset=UTF-8"),
        None,
    ] {
        let (status, answer) = post_raw(&server, ct, &body.to_string()).await;
        assert_eq!(status, 201, "{ct:?}: {answer}");
        assert_eq!(answer["message"], "Event tracked successfully");
        assert_eq!(client.next_of_type("page_view").await["page_url"], "/cv");
    }
    // A custom event type is fine too.
    let (status, _) = server
        .post_event(&json!({"event_type": "shop.cart:add-item", "visitor_id": visitor()}))
        .await;
    assert_eq!(status, 201);
    server.stop().await;
}

#[tokio::test]
async fn the_visitor_comes_from_the_body_then_the_cookie_then_a_daily_hash() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let cookie_id = visitor();
    let post = |cookie: Option<String>, ua: &'static str| {
        let mut req = http()
            .post(server.url("/api/v1/analytics/event"))
            .header("content-type", "text/plain")
            .header("user-agent", ua)
            .body(r#"{"event_type":"page_view"}"#);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    assert_eq!(
        post(Some(format!("theme=dark; visitor_id={cookie_id}")), "A")
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        client.next_of_type("page_view").await["visitor_id"],
        cookie_id
    );

    // Without an id: the same IP and User-Agent give the same UUID today.
    post(None, "Browser A").await.unwrap();
    let a1 = client.next_of_type("page_view").await["visitor_id"].clone();
    post(None, "Browser A").await.unwrap();
    let a2 = client.next_of_type("page_view").await["visitor_id"].clone();
    post(None, "Browser B").await.unwrap();
    let b = client.next_of_type("page_view").await["visitor_id"].clone();
    assert_eq!(a1, a2);
    assert_ne!(a1, b);
    assert!(uuid::Uuid::parse_str(a1.as_str().unwrap()).is_ok());
    // A cookie that is not a UUID is ignored, not trusted.
    post(Some("visitor_id=<script>".into()), "Browser A")
        .await
        .unwrap();
    assert_eq!(client.next_of_type("page_view").await["visitor_id"], a1);
    server.stop().await;
}

#[tokio::test]
async fn invalid_events_get_400_with_a_sentence() {
    let server = TestServer::start_default().await;
    let cases = [
        r#"{"event_data":{}}"#,
        r#"{"event_type":""}"#,
        r#"{"event_type":"Page View"}"#,
        r#"{"event_type":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        r#"{"event_type":42}"#,
        r#"{"event_type":"heartbeat"}"#,
        r#"{"event_type":"initial_stats"}"#,
        r#"{"event_type":"visitor_connected"}"#,
        r#"{"event_type":"page_view","event_data":[1,2]}"#,
        r#"{"event_type":"page_view","event_data":"x"}"#,
        r#"{"event_type":"page_view","page_url":5}"#,
        r#"{"event_type":"page_view","visitor_id":"not-a-uuid"}"#,
        r#"{"event_type":"page_view""#,
        "not json at all",
        "[]",
        "",
    ];
    for body in cases {
        let (status, answer) = post_raw(&server, Some("application/json"), body).await;
        assert_error(status, &answer, 400);
    }
    let (_, answer) = post_raw(&server, None, r#"{"event_type":"pong"}"#).await;
    assert!(answer["error"].as_str().unwrap().contains("reserved"));
    // Nothing was stored or counted.
    let (_, rt) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(rt["data"]["total_events"], 0);
    assert!(
        server
            .metric("maicivy_ingestion_errors_total{reason=\"invalid\"}")
            .await
            >= cases.len() as f64
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_another_media_type_415() {
    let server = TestServer::with(&["--max-body-bytes", "1000"]).await;
    let big = json!({"event_type": "page_view", "event_data": {"pad": "x".repeat(2000)}});
    let (status, answer) = post_raw(&server, Some("application/json"), &big.to_string()).await;
    assert_error(status, &answer, 413);
    // Chunked, without a Content-Length: still refused.
    let stream = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100]))),
    );
    let r = http()
        .post(server.url("/api/v1/analytics/event"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (status, answer) = post_raw(
        &server,
        Some("application/x-www-form-urlencoded"),
        "event_type=page_view",
    )
    .await;
    assert_error(status, &answer, 415);
    server.stop().await;
}

#[tokio::test]
async fn realtime_gives_the_live_figures() {
    let server = TestServer::start_default().await;
    let a = visitor();
    for (kind, who) in [
        ("page_view", &a),
        ("letter_generate", &a),
        ("page_view", &visitor()),
    ] {
        server
            .post_event(&json!({"event_type": kind, "visitor_id": who}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let (status, body) = server.get_json("/api/v1/analytics/realtime").await;
        assert_eq!(status, 200);
        assert_eq!(body["success"], true);
        let d = &body["data"];
        if d["total_events"] == 3 {
            assert_eq!(d["unique_today"], 2);
            assert_eq!(d["current_visitors"], 2);
            assert_eq!(d["letters_today"], 1);
            assert!(d["timestamp"].is_i64());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn timeline_is_newest_first_with_limit_and_offset() {
    let server = TestServer::start_default().await;
    for i in 0..5 {
        server
            .post_event(&json!({"event_type": "page_view", "page_url": format!("/p{i}"), "visitor_id": visitor()}))
            .await;
    }
    let (status, body) = server
        .get_json("/api/v1/analytics/timeline?limit=2&offset=1")
        .await;
    assert_eq!(status, 200);
    let meta = &body["meta"];
    assert_eq!(
        (&meta["limit"], &meta["offset"], &meta["count"]),
        (&json!(2), &json!(1), &json!(2)),
        "{meta}"
    );
    let pages: Vec<_> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["page_url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pages, ["/p3", "/p2"]);
    let first = &body["data"][0];
    assert_eq!(first["event_type"], "page_view");
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, all) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(all["meta"]["limit"], 50);
    assert_eq!(all["meta"]["count"], 5);
    // maicivy's clamps, not refusals (tests/maicivy_http.rs has each case).
    for clamped in ["limit=0", "limit=101", "limit=abc", "offset=-1"] {
        let (status, answer) = server
            .get_json(&format!("/api/v1/analytics/timeline?{clamped}"))
            .await;
        assert_eq!(status, 200, "{clamped}: {answer}");
        assert_eq!(answer["meta"]["count"], 5, "{clamped}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn stats_per_period() {
    let server = TestServer::start_default().await;
    let a = visitor();
    for (kind, who) in [
        ("page_view", a.clone()),
        ("letter_generate", a.clone()),
        ("page_view", visitor()),
        ("page_view", visitor()),
    ] {
        server
            .post_event(&json!({"event_type": kind, "visitor_id": who}))
            .await;
    }
    let today = chrono::Utc::now();
    for (period, key) in [
        ("day", today.format("%Y-%m-%d").to_string()),
        ("week", today.format("%G-W%V").to_string()),
        ("month", today.format("%Y-%m").to_string()),
    ] {
        let (status, body) = server
            .get_json(&format!("/api/v1/analytics/stats?period={period}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let d = &body["data"];
        assert_eq!(d["period"], period);
        assert_eq!(d["period_key"], key);
        assert_eq!(d["total_events"], 4);
        assert_eq!(d["letters_generated"], 1);
        assert_eq!(d["unique_visitors"], 3);
        // Letters per unique visitor as a fraction, as maicivy's page expects.
        let rate = d["conversion_rate"].as_f64().unwrap();
        assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");
    }
    let (status, answer) = server.get_json("/api/v1/analytics/stats?period=year").await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"],
        "Invalid period. Must be: day, week, or month"
    );
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start_default().await;
    assert_eq!(server.get_json("/healthz").await.0, 200);
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    server
        .post_event(&json!({"event_type": "page_view", "visitor_id": visitor()}))
        .await;
    let text = server.metrics().await;
    for name in [
        "maicivy_websocket_connections ",
        "maicivy_websocket_connections_opened_total",
        "maicivy_websocket_messages_sent_total",
        "maicivy_websocket_messages_dropped_total",
        "maicivy_events_ingested_total 1",
        "maicivy_stats_computations_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let server = TestServer::start_default().await;
    let (status, body) = server.get_json("/nope").await;
    assert_error(status, &body, 404);
    let r = http()
        .get(server.url("/api/v1/analytics/event"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 405);
    server.stop().await;
}

#[tokio::test]
async fn assets_carry_an_etag_and_a_client_that_has_them_gets_304() {
    let server = TestServer::start_default().await;
    for path in ["/", "/client.js", "/script.js", "/assets/dashboard.js"] {
        let first = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(first.status(), 200, "{path}");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: {etag}");
        assert!(!first.bytes().await.unwrap().is_empty());
        let again = http()
            .get(server.url(path))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let (status, body) = server.get_json("/assets/nope.js").await;
    assert_error(status, &body, 404);
    server.stop().await;
}
