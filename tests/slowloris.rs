//! Slow clients (issue 12, item 4): every phase of an HTTP connection has a
//! deadline (headers, body, idle keep-alive, an answer the client stops reading),
//! and the server keeps serving others meanwhile. The flags are set small here; each
//! wait for a server-side timeout is bounded and its timing asserted.

mod common;
mod raw_http;

use std::time::{Duration, Instant};

use common::TestServer;
use raw_http::{HEALTHZ, Reader, connect_from, ip};
use tokio::io::AsyncWriteExt;

/// Some slack for a loaded machine, above a timeout that should have fired.
const SLACK: Duration = Duration::from_secs(3);

fn refused(reason: &str) -> String {
    format!("maicivy_requests_refused_total{{reason=\"{reason}\"}}")
}

/// Writes `bytes` one at a time, `every` apart, until done or the server closes.
/// Returns how many were written.
fn dribble(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    every: Duration,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        for (i, b) in bytes.iter().enumerate() {
            if w.write_all(&[*b]).await.is_err() {
                return i;
            }
            tokio::time::sleep(every).await;
        }
        bytes.len()
    })
}

#[tokio::test]
async fn headers_that_arrive_byte_by_byte_are_cut_at_the_header_timeout_while_others_are_served() {
    let server = TestServer::with(&[
        "--http-header-timeout",
        "1s",
        "--http-idle-timeout",
        "30s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    // A byte every 100 ms: the connection is never quiet for long, so only a
    // deadline on the headers as a whole can cut it (they would take 8 s).
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(40)
    )
    .into_bytes();
    let whole = request.len();
    let (r, w) = connect_from(ip("127.0.0.1"), server.addr)
        .await
        .into_split();
    let started = Instant::now();
    let writer = dribble(w, request, Duration::from_millis(100));
    // A client that opens a connection and sends nothing at all.
    let silent = connect_from(ip("127.0.0.1"), server.addr).await;

    // Meanwhile, other clients are served.
    assert_eq!(
        server
            .post_event(&serde_json::json!({"event_type": "page_view"}))
            .await
            .0,
        201
    );
    assert_eq!(server.get_json("/healthz").await.0, 200);

    let mut slow = Reader::new(r);
    let got = slow.closed().await;
    let cut_after = started.elapsed();
    assert!(
        got.is_empty(),
        "the slow client was answered: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(1) + SLACK,
        "cut after {cut_after:?}, the header timeout is 1 s"
    );
    let sent = writer.await.unwrap();
    assert!(sent < whole, "the headers were all sent ({sent} bytes)");
    let silent_after = {
        let mut r = Reader::new(silent);
        assert!(r.closed().await.is_empty());
        started.elapsed()
    };
    assert!(
        silent_after < Duration::from_secs(1) + SLACK,
        "{silent_after:?}"
    );
    assert_eq!(server.metric(&refused("http_header_timeout")).await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_before() {
    let server = TestServer::with(&[
        "--http-header-timeout",
        "1s",
        "--http-idle-timeout",
        "2s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let stream = connect_from(ip("127.0.0.1"), server.addr).await;
    let (r, mut w) = stream.into_split();
    let mut reader = Reader::new(r);
    // Two requests on one connection: it is kept alive.
    for _ in 0..2 {
        w.write_all(HEALTHZ).await.unwrap();
        assert_eq!(reader.answer().await.expect("answered").status, 200);
    }
    let idle_from = Instant::now();
    assert!(reader.closed().await.is_empty());
    let idle = idle_from.elapsed();
    // Closed by the idle timeout (2 s), not by the header timeout (1 s) that
    // applies once a request has begun.
    assert!(
        idle >= Duration::from_millis(1800) && idle < Duration::from_secs(2) + SLACK,
        "closed after {idle:?} of idleness, the idle timeout is 2 s"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_never_completes_gets_a_408_sentence_at_the_body_timeout() {
    let server = TestServer::with(&[
        "--http-body-timeout",
        "1s",
        "--http-header-timeout",
        "5s",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let head =
        "POST /api/v1/analytics/event HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n";
    let cases: [(&str, String, Option<Duration>); 3] = [
        // Ten bytes of a hundred, then nothing.
        (
            "short",
            format!("{head}Content-Length: 100\r\n\r\n{{\"event_ty"),
            None,
        ),
        // A chunk announcing 2^64-1 bytes, a few of them, then nothing.
        (
            "chunked",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n{{\"event_type\""),
            None,
        ),
        // A byte every 100 ms: never quiet, never finished.
        (
            "trickle",
            format!("{head}Content-Length: 1000\r\n\r\n{}", " ".repeat(200)),
            Some(Duration::from_millis(100)),
        ),
    ];
    for (name, request, every) in cases {
        let (r, mut w) = connect_from(ip("127.0.0.1"), server.addr)
            .await
            .into_split();
        let started = Instant::now();
        let _writer = match every {
            None => {
                w.write_all(request.as_bytes()).await.unwrap();
                tokio::spawn(async move {
                    // Keeps the write side open: the client is still "sending".
                    let _w = w;
                    std::future::pending::<()>().await;
                })
            }
            Some(every) => {
                let (head, body) = request.split_once("\r\n\r\n").unwrap();
                w.write_all(format!("{head}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let h = dribble(w, body.as_bytes().to_vec(), every);
                tokio::spawn(async move {
                    let _ = h.await;
                })
            }
        };
        let mut reader = Reader::new(r);
        let answer = reader
            .answer()
            .await
            .unwrap_or_else(|| panic!("{name}: closed without an answer"));
        let after = started.elapsed();
        let sentence = answer.assert_refusal(408);
        assert!(sentence.contains("did not arrive"), "{name}: {sentence}");
        assert_eq!(answer.header("connection"), Some("close"), "{name}");
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(1) + SLACK,
            "{name}: answered after {after:?}, the body timeout is 1 s"
        );
        // And the connection is closed: the rest of that body cannot be read.
        reader.closed().await;
    }
    assert_eq!(server.metric(&refused("http_body_timeout")).await, 3.0);
    // Nothing was stored from those bodies, and the server still takes events.
    assert_eq!(
        server
            .post_event(&serde_json::json!({"event_type": "page_view"}))
            .await
            .0,
        201
    );
    let (_, timeline) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(timeline["meta"]["count"], 1, "{timeline}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_is_cut_at_the_idle_timeout() {
    let server =
        TestServer::with(&["--http-idle-timeout", "1s", "--heartbeat-interval", "60s"]).await;
    // A small receive window, and thousands of pipelined requests for a 12 KB
    // script that are never read: the server's writes block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio::time::timeout(common::WAIT, socket.connect(server.addr))
        .await
        .unwrap()
        .unwrap();
    let (r, mut w) = stream.into_split();
    let requests = b"GET /client.js HTTP/1.1\r\nHost: test\r\n\r\n".repeat(2000);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&requests).await;
        w
    });
    let started = Instant::now();
    common::eventually("the stalled connection to be cut", || async {
        (server
            .metric_if_exported(&refused("http_write_timeout"))
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Cut: what the client finally reads ends, far short of 2000 answers.
    let got = Reader::new(r).closed().await;
    assert!(got.len() < 2000 * 12_000, "{} bytes", got.len());
    // Others are served.
    assert_eq!(server.get_json("/healthz").await.0, 200);
    writer.abort();
    let _ = writer.await;
    server.stop().await;
}
