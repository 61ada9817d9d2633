//! Hoarding clients and answers made before the app (issue 12, items 4 and 7): HTTP
//! connections per client IP, the open-file headroom, the JSON sentence on every
//! error the server emits, and whole numbers that cannot be stored exactly.
//!
//! Two client IPs on one machine: Linux routes all of 127.0.0.0/8 to loopback, so
//! a client socket bound to 127.0.0.2 is another address to the server.

mod common;
mod raw_http;

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, WAIT};
use raw_http::{HEALTHZ, Reader, connect_from, exchange, ip, post_event};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn refused(reason: &str) -> String {
    format!("maicivy_requests_refused_total{{reason=\"{reason}\"}}")
}

fn event() -> String {
    serde_json::json!({"event_type": "page_view", "visitor_id": common::visitor()}).to_string()
}

/// A connection from `source` that has been served once and is kept alive (so it is
/// certainly accepted and counted).
async fn held(
    source: IpAddr,
    server: &TestServer,
) -> (
    Reader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (r, mut w) = connect_from(source, server.addr).await.into_split();
    w.write_all(HEALTHZ).await.unwrap();
    let mut r = Reader::new(r);
    let answer = r.answer().await.expect("a held connection is served");
    assert_eq!(answer.status, 200, "{}", answer.head);
    (r, w)
}

#[tokio::test]
async fn one_ip_over_its_http_connection_cap_is_refused_while_others_get_in() {
    let server = TestServer::with(&[
        "--max-http-connections-per-ip",
        "3",
        "--limits-exempt",
        "127.0.0.1",
        "--trusted-proxies",
        "127.0.0.4",
        "--http-idle-timeout",
        "60s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let hoarder = ip("127.0.0.2");
    let mut hoard = Vec::new();
    for _ in 0..3 {
        hoard.push(held(hoarder, &server).await);
    }
    // The fourth: a 429 with the sentence, then closed, at once (its request is
    // not even read).
    let mut extra = Reader::new(connect_from(hoarder, server.addr).await);
    let answer = extra.answer().await.expect("the refusal is written");
    let sentence = answer.assert_refusal(429);
    assert!(sentence.contains("Too many connections"), "{sentence}");
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert!(extra.closed().await.is_empty());
    assert_eq!(
        server.metric(&refused("http_connections_per_ip")).await,
        1.0
    );

    // Meanwhile: the exempt loopback is not limited, another IP has its own count,
    // and a trusted proxy (many clients behind one address) is not limited either.
    let mut exempt = Vec::new();
    for _ in 0..5 {
        exempt.push(held(ip("127.0.0.1"), &server).await);
    }
    for _ in 0..5 {
        exempt.push(held(ip("127.0.0.4"), &server).await);
    }
    let other = ip("127.0.0.3");
    assert_eq!(
        exchange(other, server.addr, HEALTHZ).await.unwrap().status,
        200
    );
    let stored = exchange(other, server.addr, &post_event(&event()))
        .await
        .unwrap();
    assert_eq!(stored.status, 201, "{}", stored.head);

    // A place the hoarder gives back can be taken again.
    drop(hoard.pop());
    common::eventually("the hoarder's freed place to be taken", || async {
        let answer = exchange(hoarder, server.addr, HEALTHZ).await?;
        (answer.status == 200).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn websocket_sessions_leave_the_http_count_for_the_websocket_limits() {
    let server = TestServer::with(&[
        "--max-http-connections-per-ip",
        "2",
        "--max-connections-per-ip",
        "4",
        "--limits-exempt",
        "",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let client = ip("127.0.0.2");
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let tcp = connect_from(client, server.addr).await;
        let (mut ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(server.ws_url(), tcp))
                .await
                .expect("the handshake is answered in time")
                .expect("a WebSocket session opens");
        // The session runs: its upgrade is complete.
        let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap();
        assert!(first.is_some_and(|m| m.is_ok()));
        sessions.push(ws);
    }
    // Four sessions, and still the two HTTP connections of the cap.
    let _a = held(client, &server).await;
    let _b = held(client, &server).await;
    let answer = exchange(client, server.addr, HEALTHZ).await.unwrap();
    answer.assert_refusal(429);
    assert_eq!(
        server.metric(&refused("http_connections_per_ip")).await,
        1.0
    );
    // The sessions count where they belong: once an HTTP place is free again, a
    // fifth handshake gets through to the WebSocket cap, which refuses it.
    drop(_b);
    common::eventually("a fifth session refused by the WebSocket cap", || async {
        let tcp = connect_from(client, server.addr).await;
        let refused_ws = matches!(
            tokio_tungstenite::client_async(server.ws_url(), tcp).await,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429
        );
        assert!(refused_ws, "a fifth session from one IP must be refused");
        (server
            .metric_if_exported(&refused("connections_per_ip"))
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    drop(sessions);
    server.stop().await;
}

#[tokio::test]
async fn the_answers_hyper_and_extractors_give_before_the_app_carry_the_json_sentence() {
    let server = TestServer::start_default().await;
    let local = ip("127.0.0.1");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: test\r\n\r\n", "a".repeat(70_000));
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for (request, status, words) in [
        (long_uri.into_bytes(), 414, "URI"),
        (huge_header.into_bytes(), 431, "headers"),
        (many_headers.into_bytes(), 431, "headers"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n".to_vec(),
            400,
            "HTTP",
        ),
        (b"BR\x01KEN / HTTP/1.1\r\n\r\n".to_vec(), 400, "HTTP"),
        // axum's own rejection of a path that is not UTF-8 (text/plain before).
        (
            b"GET /assets/%FF HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(),
            400,
            "",
        ),
    ] {
        let mut stream = connect_from(local, server.addr).await;
        // The server may answer and close before reading it all.
        let _ = tokio::time::timeout(WAIT, stream.write_all(&request)).await;
        let answer = Reader::new(stream)
            .answer()
            .await
            .unwrap_or_else(|| panic!("no {status} answer"));
        let sentence = answer.assert_refusal(status);
        assert!(sentence.contains(words), "{status}: {sentence}");
    }
    // The server still serves.
    assert_eq!(server.get_json("/healthz").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn whole_numbers_beyond_i64_and_u64_are_refused_and_the_others_come_back_exactly() {
    let pg = common::PgTestDb::create().await;
    let mut stores = vec!["sqlite::memory:".to_owned()];
    stores.extend(pg.as_ref().map(|db| db.url.clone()));
    for store in stores {
        let server =
            TestServer::with(&["--database-url", &store, "--heartbeat-interval", "60s"]).await;
        for too_big in [
            "18446744073709551616",
            "-9223372036854775809",
            "1234567890123456789012345",
        ] {
            // Raw bytes: a JSON library on this side would already have made it a float.
            let body = format!(r#"{{"event_type":"big","event_data":{{"n":{too_big}}}}}"#);
            let answer = exchange(ip("127.0.0.1"), server.addr, &post_event(&body))
                .await
                .unwrap();
            let sentence = answer.assert_refusal(400);
            assert!(
                sentence.contains("cannot be stored exactly") && sentence.contains(too_big),
                "{store}: {sentence}"
            );
        }
        let kept = r#"{"event_type":"big","event_data":{"a":9007199254740993,"b":18446744073709551615,"c":-9223372036854775808,"f":0.5}}"#;
        let answer = exchange(ip("127.0.0.1"), server.addr, &post_event(kept))
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            201,
            "{store}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let text = common::http()
            .get(server.url("/api/v1/analytics/timeline"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for exact in [
            "\"a\":9007199254740993",
            "\"b\":18446744073709551615",
            "\"c\":-9223372036854775808",
        ] {
            assert!(text.contains(exact), "{store}: {exact} not in {text}");
        }
        let timeline: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            timeline["meta"]["count"], 1,
            "{store}: only the exact event is stored"
        );
        server.stop().await;
    }
}

/// The issue's scene: the open-file limit lowered to 600 and 700 idle connections
/// from one IP. The server (the real binary, so that the limit is its own) keeps its
/// sockets under the limit, answers `/healthz` from the exempt loopback, lets a new
/// client in, and never runs out of files. The per-IP cap is off here, so that the
/// open-file headroom alone is what holds.
#[tokio::test]
async fn with_600_open_files_700_idle_connections_lock_out_neither_healthz_nor_new_clients() {
    common::raise_fd_limit();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 600 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_maicivy-analytics"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
            "--max-http-connections-per-ip",
            "0",
            "--limits-exempt",
            "127.0.0.1",
            "--http-header-timeout",
            "60s",
            "--http-idle-timeout",
            "60s",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(
                !line.contains("open-file limit limit=") || line.contains("limit=600"),
                "{line}"
            );
            if line.contains("is serving")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                return addr.trim().parse().unwrap();
            }
        }
        panic!("the server stopped before serving");
    })
    .await
    .expect("the server starts in time");
    // Everything the server logs from now on.
    let log = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });

    let hoarder = ip("127.0.0.2");
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..700 {
        idle.push(connect_from(hoarder, addr).await);
    }
    // The exempt loopback is answered...
    let answer = common::eventually("/healthz from the exempt loopback", || async {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            exchange(ip("127.0.0.1"), addr, HEALTHZ),
        )
        .await
        .ok()??;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_eq!(answer.json()["status"], "ok");
    // ...and so is a new client elsewhere: idle connections made room.
    common::eventually("an event from a new client", || async {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            exchange(ip("127.0.0.3"), addr, &post_event(&event())),
        )
        .await
        .ok()??;
        (answer.status == 201).then_some(())
    })
    .await;
    drop(idle);
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    let log = tokio::time::timeout(WAIT, log).await.unwrap().unwrap();
    let out_of_files: Vec<_> = log
        .iter()
        .filter(|l| l.contains("Too many open files") || l.contains("could not accept"))
        .collect();
    assert!(
        out_of_files.is_empty(),
        "the server ran out of files: {out_of_files:?}"
    );
}
