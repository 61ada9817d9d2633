//! What maicivy's own pages and clients meet on the HTTP and WebSocket surface
//! (CONTRACT.md), in the embedded mode: CORS on every route, the routes its
//! dashboard calls with Go's clamps and shapes, its session cookie, `pong` to every
//! ping, figures read after the request, and events shaped as Go publishes them.

mod common;

use common::{TestServer, WsClient, http, visitor};
use serde_json::{Value, json};

const DASHBOARD: &str = "http://localhost:3000";

#[tokio::test]
async fn a_preflight_from_maicivys_pages_is_answered_on_every_route() {
    let server = TestServer::start_default().await;
    for path in [
        "/api/v1/analytics/stats?period=day",
        "/api/v1/analytics/realtime",
        "/api/v1/analytics/themes",
        "/api/v1/analytics/letters",
        "/api/v1/analytics/heatmap",
        "/api/v1/analytics/timeline",
        "/api/v1/analytics/event",
        "/healthz",
    ] {
        let r = http()
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("Origin", DASHBOARD)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "content-type,x-request-id",
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], DASHBOARD, "{path}");
        assert_eq!(h["access-control-allow-credentials"], "true", "{path}");
        assert_eq!(h["access-control-max-age"], "86400", "{path}");
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{path}: {methods}");
        }
        let headers = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        for name in [
            "origin",
            "content-type",
            "accept",
            "authorization",
            "x-request-id",
        ] {
            assert!(headers.contains(name), "{path}: {headers}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn reads_with_credentials_carry_the_reflected_origin() {
    let server = TestServer::start_default().await;
    for path in [
        "/api/v1/analytics/stats",
        "/api/v1/analytics/realtime",
        "/api/v1/analytics/themes",
        // A refusal too, so the page can read its sentence.
        "/api/v1/analytics/stats?period=year",
    ] {
        let r = http()
            .get(server.url(path))
            .header("Origin", DASHBOARD)
            .header("Cookie", "maicivy_session=abc")
            .send()
            .await
            .unwrap();
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], DASHBOARD, "{path}");
        assert_eq!(h["access-control-allow-credentials"], "true", "{path}");
        let vary = h
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        assert!(vary.contains("origin"), "{path}: vary {vary}");
    }
    server.stop().await;
}

#[tokio::test]
async fn allowed_origins_narrow_cors() {
    let server = TestServer::with(&[
        "--heartbeat-interval",
        "60s",
        "--allowed-origins",
        DASHBOARD,
    ])
    .await;
    let ask = |origin: &'static str| {
        http()
            .get(server.url("/api/v1/analytics/realtime"))
            .header("Origin", origin)
            .send()
    };
    let ok = ask(DASHBOARD).await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], DASHBOARD);
    let other = ask("http://evil.example").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "a foreign origin must not be allowed: {:?}",
        other.headers()
    );
    server.stop().await;
}

#[tokio::test]
async fn stats_answer_a_fraction_day_by_default_and_maicivys_sentence() {
    let server = TestServer::start_default().await;
    for _ in 0..4 {
        let (status, _) = server
            .post_event(&json!({"event_type": "page_view", "visitor_id": visitor()}))
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = server
        .post_event(
            &json!({"event_type": "letter_generate", "visitor_id": visitor(),
            "event_data": {"letter_type": "motivation"}}),
        )
        .await;
    assert_eq!(status, 201);
    // 1 letter for 5 visitors.
    for path in ["/api/v1/analytics/stats", "/api/v1/analytics/stats?period="] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 200, "{path}");
        let d = &body["data"];
        assert_eq!(d["period"], "day", "{path}");
        assert_eq!(d["total_events"], 5);
        assert_eq!(d["letters_generated"], 1);
        assert_eq!(d["unique_visitors"], 5);
        assert_eq!(
            d["conversion_rate"], 0.2,
            "{path}: a fraction, not a percentage"
        );
    }
    let (status, body) = server.get_json("/api/v1/analytics/stats?period=year").await;
    assert_eq!(status, 400);
    assert_eq!(body["success"], false);
    assert_eq!(
        body["error"],
        "Invalid period. Must be: day, week, or month"
    );
    server.stop().await;
}

#[tokio::test]
async fn timeline_clamps_like_maicivy_and_gives_maicivys_columns() {
    let server = TestServer::start_default().await;
    let who = visitor();
    let r = http()
        .post(server.url("/api/v1/analytics/event"))
        .header("Referer", "https://www.example.org/jobs")
        .json(&json!({"event_type": "pdf_download", "visitor_id": who,
            "page_url": "/cv", "event_data": {"format": "a4"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (query, limit, offset) in [
        ("", 50, 0),
        ("?limit=0", 50, 0),
        ("?limit=101", 50, 0),
        ("?limit=abc&offset=-3", 50, 0),
        ("?limit=7&offset=0", 7, 0),
        ("?offset=1", 50, 1),
    ] {
        let (status, body) = server
            .get_json(&format!("/api/v1/analytics/timeline{query}"))
            .await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(body["meta"]["limit"], limit, "{query}");
        assert_eq!(body["meta"]["offset"], offset, "{query}");
    }
    let (_, body) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(body["meta"]["count"], 1);
    let item = &body["data"][0];
    assert!(
        uuid::Uuid::parse_str(item["id"].as_str().unwrap()).is_ok(),
        "{item}"
    );
    assert_eq!(item["visitor_id"], who);
    assert_eq!(item["event_type"], "pdf_download");
    assert_eq!(item["event_data"], json!({"format": "a4"}));
    assert_eq!(item["page_url"], "/cv");
    assert_eq!(item["referrer"], "https://www.example.org/jobs");
    assert!(
        chrono::DateTime::parse_from_rfc3339(item["created_at"].as_str().unwrap()).is_ok(),
        "{item}"
    );
    server.stop().await;
}

#[tokio::test]
async fn themes_are_counted_from_theme_changes_most_viewed_first() {
    let server = TestServer::start_default().await;
    for theme in [
        "backend",
        "devops",
        "backend",
        "fullstack",
        "backend",
        "devops",
    ] {
        server
            .post_event(
                &json!({"event_type": "cv_theme_change", "visitor_id": visitor(),
                "event_data": {"theme": theme}}),
            )
            .await;
    }
    // Not a string theme: not counted.
    server
        .post_event(&json!({"event_type": "cv_theme_change", "event_data": {"theme": 3}}))
        .await;
    let (status, body) = server.get_json("/api/v1/analytics/themes").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!([{"theme": "backend", "views": 3}, {"theme": "devops", "views": 2},
               {"theme": "fullstack", "views": 1}])
    );
    let (_, body) = server.get_json("/api/v1/analytics/themes?limit=1").await;
    assert_eq!(body["data"], json!([{"theme": "backend", "views": 3}]));
    // Outside 1–20 means 5.
    let (_, body) = server.get_json("/api/v1/analytics/themes?limit=99").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn letters_by_type_with_a_history() {
    let server = TestServer::start_default().await;
    // No letters yet: one zero entry per day of the last 1 / 7 / 30 days.
    for (period, days) in [("day", 1), ("week", 7), ("month", 30)] {
        let (status, body) = server
            .get_json(&format!("/api/v1/analytics/letters?period={period}"))
            .await;
        assert_eq!(status, 200);
        let history = body["data"]["history"].as_array().unwrap();
        assert_eq!(history.len(), days, "{period}: {body}");
        assert!(history.iter().all(|h| h["count"] == 0), "{body}");
        assert_eq!(body["data"]["total"], 0);
    }
    for kind in ["motivation", "motivation", "anti_motivation"] {
        server
            .post_event(
                &json!({"event_type": "letter_generate", "visitor_id": visitor(),
                "event_data": {"letter_type": kind}}),
            )
            .await;
    }
    server
        .post_event(&json!({"event_type": "page_view", "visitor_id": visitor()}))
        .await;
    let (status, body) = server.get_json("/api/v1/analytics/letters").await;
    assert_eq!(status, 200);
    let d = &body["data"];
    assert_eq!(d["period"], "day");
    assert_eq!(d["total"], 3);
    assert_eq!(d["motivation"], 2);
    assert_eq!(d["anti_motivation"], 1);
    assert_eq!(d["unique_visitors"], 4);
    assert_eq!(d["conversion_rate"], 0.75);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(d["history"], json!([{"date": today, "count": 3}]));
    let (status, body) = server
        .get_json("/api/v1/analytics/letters?period=year")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "Invalid period. Must be: day, week, or month"
    );
    server.stop().await;
}

#[tokio::test]
async fn heatmap_counts_clicks_per_rounded_position() {
    let server = TestServer::start_default().await;
    let click = |kind: &str, page: &str, x: Value, y: Value| {
        json!({"event_type": kind, "page_url": page, "visitor_id": visitor(),
            "event_data": {"x": x, "y": y}})
    };
    for body in [
        click("button_click", "/cv", json!(450.4), json!(200.2)),
        click("link_click", "/cv", json!(450), json!(200)),
        click("button_click", "/cv", json!(10), json!(20)),
        click("button_click", "/letters", json!(450), json!(200)),
        // Not counted: not a click, or no numeric position.
        click("page_view", "/cv", json!(450), json!(200)),
        click("button_click", "/cv", json!("450"), json!(200)),
    ] {
        assert_eq!(server.post_event(&body).await.0, 201);
    }
    let (status, body) = server
        .get_json("/api/v1/analytics/heatmap?page_url=/cv&hours=24")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!([{"x": 450, "y": 200, "count": 2, "intensity": 2},
               {"x": 10, "y": 20, "count": 1, "intensity": 1}])
    );
    assert_eq!(
        body["meta"],
        json!({"page_url": "/cv", "hours": 24, "count": 2})
    );
    // Every page; hours outside 1–168 means 24.
    let (_, body) = server.get_json("/api/v1/analytics/heatmap?hours=500").await;
    assert_eq!(body["meta"]["hours"], 24);
    assert_eq!(body["meta"]["page_url"], "");
    assert_eq!(
        body["data"][0],
        json!({"x": 450, "y": 200, "count": 3, "intensity": 3})
    );
    server.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_one_visitor() {
    let server = TestServer::start_default().await;
    let (mut watcher, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let mut seen = Vec::new();
    for session in ["s-one", "s-one", "s-two"] {
        let r = http()
            .post(server.url("/api/v1/analytics/event"))
            .header("Cookie", format!("theme=dark; maicivy_session={session}"))
            .json(&json!({"event_type": "page_view"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let ev = watcher.next_of_type("page_view").await;
        seen.push(ev["visitor_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen[0], seen[1], "one session, one visitor");
    assert_ne!(seen[0], seen[2], "another session, another visitor");
    let (_, body) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(body["data"]["unique_today"], 2);
    server.stop().await;
}

#[tokio::test]
async fn a_ping_with_an_invalid_visitor_id_gets_its_pong_and_marks_nobody() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    for text in [
        r#"{"type":"ping","visitor_id":"not-a-uuid"}"#,
        r#"{"type":"heartbeat","visitor_id":42}"#,
    ] {
        client.send_text(text).await;
        let answer = client.next_json().await;
        assert_eq!(answer["type"], "pong", "answer to {text}: {answer}");
        assert!(answer["time"].as_i64().unwrap() > 0);
    }
    client.send_text(r#"{"type":"refresh_stats"}"#).await;
    let stats = client.next_of_type("initial_stats").await;
    assert_eq!(stats["data"]["current_visitors"], 0, "{stats}");
    server.stop().await;
}

#[tokio::test]
async fn figures_are_read_after_the_request() {
    let server = TestServer::start_default().await;
    let (mut client, first) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_eq!(first["current_visitors"], 0);
    // Each answer must show what the request before it did, however quick the
    // succession: a shared copy even 500 ms old would not.
    // Four: what one connection may mark (PresenceMarks).
    for n in 1..=4u64 {
        let id = visitor();
        client
            .send_text(&json!({"type": "ping", "visitor_id": id}).to_string())
            .await;
        client.send_text(r#"{"type":"refresh_stats"}"#).await;
        let stats = client.next_of_type("initial_stats").await;
        assert_eq!(
            stats["data"]["current_visitors"], n,
            "after ping {n}: {stats}"
        );
        let (status, _) = server
            .post_event(&json!({"event_type": "page_view", "visitor_id": id}))
            .await;
        assert_eq!(status, 201);
        let (_, body) = server.get_json("/api/v1/analytics/realtime").await;
        assert_eq!(body["data"]["total_events"], n, "after event {n}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn events_are_published_as_go_publishes_them() {
    let server = TestServer::start_default().await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    server
        .post_event(&json!({"event_type": "button_click", "visitor_id": visitor()}))
        .await;
    let ev = client.next_of_type("button_click").await;
    assert_eq!(ev["page_url"], "", "page_url is always present: {ev}");
    let ts = ev["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z'), "{ts}");
    let fraction = ts.split('.').nth(1).expect("sub-second digits");
    assert!(fraction.len() > 1, "{ts}");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
    server.stop().await;
}

#[tokio::test]
async fn values_the_stores_cannot_hold_are_refused_with_a_sentence() {
    let server = TestServer::start_default().await;
    let long = format!("/{}", "a".repeat(500));
    for body in [
        json!({"event_type": "page_view", "page_url": "/cv\u{0}"}),
        json!({"event_type": "page_view", "event_data": {"k": ["ok", "n\u{0}ul"]}}),
        json!({"event_type": "page_view", "event_data": {"k\u{0}": 1}}),
        json!({"event_type": "page_view", "page_url": long}),
    ] {
        let (status, answer) = server.post_event(&body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["success"], false);
        assert!(answer["error"].as_str().unwrap().len() > 20, "{answer}");
    }
    let (_, body) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(body["data"]["total_events"], 0);
    // 500 characters are fine (maicivy's VARCHAR(500)).
    let fits = format!("/{}", "é".repeat(499));
    assert_eq!(
        server
            .post_event(&json!({"event_type": "page_view", "page_url": fits}))
            .await
            .0,
        201
    );
    server.stop().await;
}
