//! The dashboard, client.js and script.js in a real browser: headless Chromium driven by
//! playwright-core (the scripts in `e2e/`), against the real server.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`; or `CHROMIUM=path`), `node`, and
//! `npm ci --prefix e2e`. Without them each test says why and skips, unless
//! `REQUIRE_SERVICES=1`, when it fails. The dashboard test takes a screenshot into
//! `target/e2e/dashboard.png`; with `UPDATE_SCREENSHOT=1`, into `docs/dashboard.png`.
//!
//! A script asks this side for what only it can do (stop and start the server) with a
//! line `@step` on its stdout, and waits for `done` on its stdin.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;

/// How long one whole browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// One browser at a time: the machine has two cores, and a test's timing should not
/// depend on what another test's Chromium is doing.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e")
}

/// The e2e directory when Chromium, node and playwright-core are all there; otherwise
/// skips (or fails under `REQUIRE_SERVICES=1`) saying what is missing.
fn browser_available() -> Option<PathBuf> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        skip_or_fail(
            "chromium",
            &format!("{chromium} is missing (apt-get install -y chromium)"),
        );
        return None;
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        skip_or_fail(
            "node",
            "`node` is not on PATH (apt-get install -y nodejs npm)",
        );
        return None;
    }
    let dir = e2e_dir();
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        skip_or_fail(
            "playwright-core",
            "e2e/node_modules is missing (npm ci --prefix e2e)",
        );
        return None;
    }
    Some(dir)
}

/// A running `node e2e/<script>`.
struct NodeRun {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    output: String,
    stderr: tokio::task::JoinHandle<String>,
    deadline: tokio::time::Instant,
}

impl NodeRun {
    fn start(dir: &Path, script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Self {
            child,
            stdin,
            stdout,
            output: String::new(),
            stderr,
            deadline: tokio::time::Instant::now() + SCRIPT_TIMEOUT,
        }
    }

    /// The next step the script asks for (`@name`), or `None` once it has ended.
    async fn next_step(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout_at(self.deadline, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("the browser script ran too long:\n{}", self.output))
                .expect("read the script's output")?;
            println!("  {line}");
            self.output.push_str(&line);
            self.output.push('\n');
            if let Some(step) = line.strip_prefix('@') {
                return Some(step.to_owned());
            }
        }
    }

    async fn done(&mut self) {
        self.stdin
            .write_all(b"done\n")
            .await
            .expect("answer the script");
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the end; panics with the output unless it passed.
    async fn finish(mut self, name: &str) -> String {
        if let Some(step) = self.next_step().await {
            panic!("{name}: unexpected step @{step}");
        }
        let status: ExitStatus = tokio::time::timeout_at(self.deadline, self.child.wait())
            .await
            .expect("the browser script ends in time")
            .expect("wait for node");
        let stderr = tokio::time::timeout(WAIT, self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        assert!(
            status.success() && self.output.contains(&format!("PASS {name}")),
            "{name} failed ({status}):\n{}\n{stderr}",
            self.output
        );
        self.output
    }
}

#[tokio::test]
async fn dashboard_shows_events_as_they_arrive() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    let server = TestServer::with(&["--heartbeat-interval", "500ms"]).await;
    // The picture of the README is refreshed on request only, so that a test run does
    // not change a tracked file; otherwise it lands in target/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shot = if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        root.join("docs/dashboard.png")
    } else {
        root.join("target/e2e/dashboard.png")
    };
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let base = server.url("/");
    let run = NodeRun::start(&dir, "dashboard.mjs", &[&base, shot.to_str().unwrap()]);
    run.finish("dashboard").await;
    assert!(shot.exists(), "the screenshot was written");
    server.stop().await;
}

#[tokio::test]
async fn dashboard_opens_with_a_token_when_the_hub_requires_one() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    let server = TestServer::with(&["--heartbeat-interval", "500ms", "--jwt-secret", SECRET]).await;
    let exp = chrono::Utc::now().timestamp() + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "dashboard", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let run = NodeRun::start(&dir, "token.mjs", &[&server.url("/"), &token]);
    run.finish("token").await;
    server.stop().await;
}

#[tokio::test]
async fn dashboard_reconnects_after_a_restart_and_catches_up() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("events.db").display());
    let args = |listen: &str| -> Vec<String> {
        [
            "--listen",
            listen,
            "--database-url",
            &db,
            "--heartbeat-interval",
            "500ms",
        ]
        .map(String::from)
        .to_vec()
    };
    let start = |listen: String| {
        let a = args(&listen);
        async move {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            TestServer::with(&a).await
        }
    };
    let first = start("127.0.0.1:0".into()).await;
    let addr = first.addr;
    let mut server = Some(first);
    let mut run = NodeRun::start(&dir, "restart.mjs", &[&format!("http://{addr}/")]);
    while let Some(step) = run.next_step().await {
        match step.as_str() {
            "stop" => {
                server.take().expect("running").stop().await;
                // Another instance on the same database, at an address the page does
                // not know: what it records must reach the page after the restart.
                let away = start("127.0.0.1:0".into()).await;
                for _ in 0..2 {
                    let (status, body) = away
                        .post_event(&serde_json::json!({
                            "event_type": "pdf_download",
                            "page_url": "/while-away",
                            "visitor_id": visitor(),
                        }))
                        .await;
                    assert_eq!(status, 201, "{body}");
                }
                let (status, body) = away
                    .post_event(&serde_json::json!({
                        "event_type": "page_view",
                        "page_url": "/while-away",
                        "visitor_id": visitor(),
                    }))
                    .await;
                assert_eq!(status, 201, "{body}");
                away.stop().await;
            }
            "start" => {
                assert!(server.is_none(), "the server is stopped");
                server = Some(start(addr.to_string()).await);
            }
            other => panic!("unknown step @{other}"),
        }
        run.done().await;
    }
    run.finish("restart").await;
    if let Some(server) = server {
        server.stop().await;
    }
}

/// Chromium sends messages over the limit (20,000 bytes, 1 MiB, 20 MiB) and its
/// `onclose` sees 1009: the close frame survives Chromium still sending.
#[tokio::test]
async fn chromium_sees_1009_for_a_message_over_the_limit() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    let server = TestServer::with(&[
        "--max-message-bytes",
        "16384",
        "--heartbeat-interval",
        "60s",
    ])
    .await;
    let run = NodeRun::start(&dir, "close_codes.mjs", &[&server.url("/")]);
    run.finish("close_codes").await;
    server.stop().await;
}

/// A WebSocket server that sends `initial_stats` on each connection and then nothing,
/// keeping the socket open: to client.js, a dead server. Records the text it receives.
async fn silent_ws_server() -> (String, Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws/analytics", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0usize));
    let (rx, conns) = (Arc::clone(&received), Arc::clone(&connections));
    tokio::spawn(async move {
        // Ends with the test's runtime.
        while let Ok((tcp, _)) = listener.accept().await {
            let (rx, conns) = (Arc::clone(&rx), Arc::clone(&conns));
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                *conns.lock().unwrap() += 1;
                let stats = r#"{"type":"initial_stats","data":{"current_visitors":0,"unique_today":0,"total_events":0,"letters_today":0,"timestamp":0}}"#;
                if ws.send(Message::text(stats)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        rx.lock().unwrap().push(t.to_string());
                    }
                }
            });
        }
    });
    (url, received, connections)
}

#[tokio::test]
async fn client_reconnects_when_heartbeats_stop_and_sends_nothing_twice() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    let server = TestServer::with(&["--heartbeat-interval", "500ms"]).await;
    let (silent, received, connections) = silent_ws_server().await;
    let run = NodeRun::start(&dir, "client.mjs", &[&server.url("/"), &silent]);
    run.finish("client").await;
    assert!(
        *connections.lock().unwrap() >= 2,
        "client.js opened a new connection"
    );
    // The last message may still be on its way when the page closes the socket.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = received.lock().unwrap().clone();
        let count = |marker: &str| got.iter().filter(|m| m.contains(marker)).count();
        if count("\"after\"") >= 1 || tokio::time::Instant::now() > deadline {
            assert_eq!(count("\"once\""), 1, "queued message sent once: {got:?}");
            assert_eq!(count("\"after\""), 1, "later message sent once: {got:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// The site that carries the snippet, on an origin of its own.
async fn site(hub: &str) -> (String, tokio::task::JoinHandle<()>) {
    let snippet = format!("{hub}script.js");
    let landing = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Landing</title>
<script defer src="{snippet}" data-allow-localhost data-allow-automation></script></head>
<body><h1>A site</h1>
<a id="pricing" href="/pricing">Pricing</a> <button id="cta">Contact us</button>
<script>
document.getElementById('pricing').addEventListener('click', function (e) {{
  e.preventDefault(); history.pushState({{}}, '', '/pricing');
}});
document.getElementById('cta').addEventListener('click', function () {{
  window.maicivy('button_click', {{ id: 'cta' }});
}});
</script></body></html>"#
    );
    let plain = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Plain</title>
<script defer src="{snippet}"></script></head><body><h1>No opt-in</h1></body></html>"#
    );
    let app = Router::new()
        .route("/landing", get(move || async move { Html(landing) }))
        .route("/plain", get(move || async move { Html(plain) }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, handle)
}

#[tokio::test]
async fn snippet_page_views_show_on_the_dashboard() {
    let Some(dir) = browser_available() else {
        return;
    };
    let _one = BROWSER.lock().await;
    let server = TestServer::with(&["--heartbeat-interval", "500ms"]).await;
    let (site_url, site_task) = site(&server.url("/")).await;
    let run = NodeRun::start(&dir, "snippet.mjs", &[&server.url("/"), &site_url]);
    run.finish("snippet").await;
    site_task.abort();
    server.stop().await;
}

/// Without a browser: the tracking snippet's cross-origin requests get CORS answers
/// (preflight and POST) with the page's origin reflected, as on every route
/// (tests/maicivy_http.rs checks the read routes).
#[tokio::test]
async fn cors_answers_the_snippets_requests() {
    let server = TestServer::start_default().await;
    let client = http();
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/v1/analytics/event"),
        )
        .header("Origin", "https://site.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://site.example");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("content-type")
    );

    let post = client
        .post(server.url("/api/v1/analytics/event"))
        .header("Origin", "https://site.example")
        .header("Content-Type", "text/plain")
        .body(r#"{"event_type":"page_view","page_url":"/x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
    assert_eq!(
        post.headers()["access-control-allow-origin"],
        "https://site.example"
    );
    server.stop().await;
}

/// Without a browser: the assets are served from the binary with their types, and the
/// two dashboard routes answer as documented (SQLite).
#[tokio::test]
async fn assets_and_dashboard_routes() {
    let server = TestServer::start_default().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/client.js", "text/javascript"),
        ("/script.js", "text/javascript"),
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/dashboard.css", "text/css"),
        ("/assets/vendor/uplot/uPlot.iife.min.js", "text/javascript"),
        ("/assets/vendor/uplot/LICENSE", "text/plain"),
    ] {
        let r = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(!r.text().await.unwrap().is_empty(), "{path} has a body");
    }
    check_dashboard_routes(&server).await;
    server.stop().await;
}

/// The same routes on PostgreSQL (`TEST_POSTGRES_URL`, by default the local server), in
/// a database of their own: the SQL is written once for both backends.
#[tokio::test]
async fn dashboard_routes_on_postgres() {
    use sqlx::Connection;
    let admin = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = match tokio::time::timeout(WAIT, sqlx::PgConnection::connect(&admin)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return skip_or_fail("PostgreSQL", &format!("{admin}: {e}")).unwrap_or(()),
        Err(_) => return skip_or_fail("PostgreSQL", "connection timed out").unwrap_or(()),
    };
    // A fixed prefix and hex digits: safe to splice.
    let name = format!("maicivy_dash_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let server = TestServer::with(&["--database-url", &url, "--heartbeat-interval", "60s"]).await;
    check_dashboard_routes(&server).await;
    server.stop().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
}

async fn check_dashboard_routes(server: &TestServer) {
    let a = visitor();
    let b = visitor();
    for (who, page) in [(&a, "/cv"), (&b, "/cv"), (&a, "/letters")] {
        let (status, _) = server
            .post_event(
                &serde_json::json!({"event_type":"page_view","page_url":page,"visitor_id":who}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (status, _) = server
        .post_event(
            &serde_json::json!({"event_type":"button_click","page_url":"/cv","visitor_id":b}),
        )
        .await;
    assert_eq!(status, 201);

    // a moved on to /letters: one visitor on each page; /cv has two views.
    let (status, body) = server.get_json("/api/v1/analytics/pages-now").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        serde_json::json!([
            {"page_url": "/cv", "visitors": 1, "views": 2},
            {"page_url": "/letters", "visitors": 1, "views": 1},
        ])
    );

    let (status, body) = server
        .get_json("/api/v1/analytics/events-per-minute?minutes=30")
        .await;
    assert_eq!(status, 200, "{body}");
    let series = body["data"].as_array().unwrap();
    assert_eq!(series.len(), 30);
    let total: u64 = series.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    let minutes: Vec<i64> = series
        .iter()
        .map(|p| p["minute"].as_i64().unwrap())
        .collect();
    assert!(
        minutes.windows(2).all(|w| w[1] - w[0] == 60),
        "one entry a minute"
    );
    let now = chrono::Utc::now().timestamp();
    assert!(now - minutes[29] < 120, "the current minute is last");

    for bad in [
        "/api/v1/analytics/events-per-minute?minutes=0",
        "/api/v1/analytics/events-per-minute?minutes=abc",
        "/api/v1/analytics/pages-now?limit=1000",
    ] {
        let (status, body) = server.get_json(bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["success"], false);
        assert!(body["error"].as_str().unwrap().ends_with('.'), "{body}");
    }
}
