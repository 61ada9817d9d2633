//! Shared test harness: the real server on `127.0.0.1:0`, a real WebSocket client
//! (tokio-tungstenite, an implementation independent of the server's), and a real
//! HTTP client. Every wait has a timeout.
#![allow(dead_code)]

pub mod own_redis;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use maicivy_analytics::service::Analytics;
use maicivy_analytics::{Config, Server};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn config(extra: &[&str]) -> Config {
    let mut args = vec![
        "maicivy-analytics",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "sqlite::memory:",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub analytics: Arc<Analytics>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        raise_fd_limit();
        let server = Server::bind(config).await.expect("server starts");
        let addr = server.local_addr();
        let analytics = server.analytics();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            analytics,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// The server on `127.0.0.1:0` and an in-memory SQLite store, with `flags` (as on
    /// the command line) on top: how most tests start one.
    pub async fn with(flags: &[&str]) -> Self {
        Self::start(config(flags)).await
    }

    /// The default server, with a heartbeat far enough away not to interleave.
    pub async fn start_default() -> Self {
        Self::with(&["--heartbeat-interval", "60s"]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/analytics", self.addr)
    }

    /// Stops the server gracefully (as SIGTERM does) and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT * 2, handle)
                .await
                .expect("server stops in time")
                .expect("server task ends cleanly");
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line (`name` with its labels, as printed). A metric
    /// that is not exported fails the test: a renamed metric must not read as 0.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_if_exported(name)
            .await
            .unwrap_or_else(|| panic!("metric {name} is not exported"))
    }

    /// The value of one metric line, `None` when it is not exported (a labelled
    /// counter that never counted).
    pub async fn metric_if_exported(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// POSTs an event as JSON; returns the status and the JSON answer.
    pub async fn post_event(&self, body: &Value) -> (u16, Value) {
        let r = http()
            .post(self.url("/api/v1/analytics/event"))
            .json(body)
            .send()
            .await
            .expect("event POST answers");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = http()
            .get(self.url(path))
            .send()
            .await
            .expect("GET answers");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// Tests open thousands of sockets: take the hard open-file limit.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("connects in time")
            .expect("WebSocket handshake succeeds");
        Self { ws }
    }

    /// Connects and checks the first message is `initial_stats`; returns its data.
    pub async fn connect_with_stats(url: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await;
        let first = c.next_json().await;
        assert_eq!(first["type"], "initial_stats", "first message: {first}");
        (c, first["data"].clone())
    }

    /// The next message of any kind (text frames parsed as JSON).
    pub async fn next_message(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message arrives in time")
                .expect("the connection is open")
                .expect("a valid frame");
            match msg {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_message().await {
            Message::Text(t) => serde_json::from_str(&t).expect("server sends JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Skips messages until one of `kind` arrives.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send succeeds");
    }

    /// Waits for the server's close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the close arrives in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// Polls `check` until it gives `Some`, within `WAIT`: a wait with a deadline and
/// no sleep standing in for synchronisation. Panics with `what` when time is up.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh random visitor id.
pub fn visitor() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a test needing `service` must fail (CI) or may skip (a laptop without it).
pub fn services_required() -> bool {
    std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (returns `None`) or fails when a service is missing. A skip passes, so
/// libtest's summary would hide it: each one is recorded, and the list is printed
/// to stderr when the test binary exits, right under its summary line.
pub fn skip_or_fail(service: &str, why: &str) -> Option<()> {
    if services_required() {
        panic!("{service} is required (REQUIRE_SERVICES=1) but {why}");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        // SAFETY: `report_skips` is an `extern "C" fn()` that only reads a static.
        unsafe { libc::atexit(report_skips) };
    }
    skipped.push(format!("{test}: {service} not available ({why})"));
    None
}

static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Runs at exit (after libtest's summary), outside any test's captured output.
extern "C" fn report_skips() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = format!(
        "\nSKIPPED {} test(s) (they passed without running; REQUIRE_SERVICES=1 makes them fail):\n",
        skipped.len()
    );
    for s in skipped.iter() {
        out.push_str(&format!("  SKIPPED {s}\n"));
    }
    use std::io::Write;
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// The PostgreSQL server of the tests (`TEST_POSTGRES_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database, dropped when the guard goes. Where the server has
/// ICU, its default collation is `en-US` (as a production database usually has),
/// not bytewise `C`, so that a query relying on the byte order of text is caught.
pub struct PgTestDb {
    pub name: String,
    pub url: String,
}

impl PgTestDb {
    /// `None` (after `skip_or_fail`) when no server answers.
    pub async fn create() -> Option<Self> {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let connect = sqlx::PgConnection::connect(&admin);
        let mut conn = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                skip_or_fail("PostgreSQL", &format!("{admin}: {e}"));
                return None;
            }
            Err(_) => {
                skip_or_fail("PostgreSQL", "connection timed out");
                return None;
            }
        };
        let name = format!("maicivy_test_{}", uuid::Uuid::new_v4().simple());
        let icu: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_collation WHERE collname = 'en-US-x-icu'")
                .fetch_optional(&mut conn)
                .await
                .expect("read the server's collations");
        // `name` is made of a fixed prefix and hex digits.
        let sql = if icu.is_some() {
            format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            )
        } else {
            format!("CREATE DATABASE {name}")
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = postgres_admin_url();
        // Drop from a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                })
        })
        .join();
    }
}
