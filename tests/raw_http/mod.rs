//! Raw HTTP/1.1 over TCP for the slow-client and connection-limit tests: a client
//! that sends exactly the bytes a test names, from the source address it names
//! (Linux routes all of 127.0.0.0/8 to loopback, so 127.0.0.2 is a second client
//! IP), and reads answers byte by byte. Every read has a deadline.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single wait may take (as `common::WAIT`).
pub const WAIT: Duration = Duration::from_secs(10);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from `source`.
pub async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connects in time")
        .expect("connects")
}

/// One answer: its status, its head (status line and headers) and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of a header (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON; panics with the answer when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks the answer is `status` with the JSON sentence; returns the sentence.
    pub fn assert_refusal(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.head);
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "not JSON: {}",
            self.head
        );
        let v = self.json();
        assert_eq!(v["success"], false, "{v}");
        let sentence = v["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            sentence.len() > 10 && sentence.ends_with('.'),
            "not a sentence: {v}"
        );
        sentence
    }
}

/// Reads answers from one side of a connection.
pub struct Reader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Self {
        Self { r, buf: Vec::new() }
    }

    /// More bytes; `false` when the connection is closed (end or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.r.read(&mut chunk))
            .await
            .expect("the server answers or closes in time");
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next answer (framed by its `content-length`); `None` when the
    /// connection closes before one arrives whole.
    pub async fn answer(&mut self) -> Option<Answer> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let mut answer = Answer {
                    status,
                    head,
                    body: Vec::new(),
                };
                let len: usize = answer
                    .header("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                while self.buf.len() < end + 4 + len {
                    if !self.fill().await {
                        return None;
                    }
                }
                answer.body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(answer);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Waits until the server closes the connection; returns what came meanwhile.
    pub async fn closed(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

/// Sends `request` on a new connection from `source` and reads one answer.
pub async fn exchange(source: IpAddr, to: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut stream = connect_from(source, to).await;
    if stream.write_all(request).await.is_err() {
        return None;
    }
    Reader::new(stream).answer().await
}

pub const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// A POST of one event, as raw bytes.
pub fn post_event(body: &str) -> Vec<u8> {
    format!(
        "POST /api/v1/analytics/event HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
