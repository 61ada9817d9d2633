//! Faults an operator meets: secrets that must never reach a log, a store that
//! refuses or hangs, and what `/readyz` says meanwhile.

mod common;

use std::process::Stdio;

const SHORT_SECRET: &str = "shortsecretXYZ";

/// Runs the real binary with `args` and `env`; it must refuse to start. Returns its
/// stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_maicivy-analytics"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "sqlite::memory:",
    ])
    .args(args)
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(common::WAIT, cmd.output())
        .await
        .expect("the server refuses to start in time, it does not serve")
        .expect("the binary runs");
    assert!(!out.status.success(), "a short secret must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_refused_jwt_secret_is_never_printed() {
    for (args, env) in [
        (vec!["--jwt-secret", SHORT_SECRET], vec![]),
        (vec![], vec![("MAICIVY_JWT_SECRET", SHORT_SECRET)]),
    ] {
        let stderr = refused_start(&args, &env).await;
        assert!(
            stderr.contains("at least 32 bytes"),
            "the refusal says why: {stderr}"
        );
        assert!(
            !stderr.contains(SHORT_SECRET) && !stderr.contains("shortsecret"),
            "the secret leaked into stderr: {stderr}"
        );
    }
}

/// A request whose client hangs up right after sending it: its event is still
/// stored, counted and broadcast (the pipeline, not the request task, does that).
#[tokio::test]
async fn an_event_whose_client_hung_up_is_stored_counted_and_broadcast() {
    use tokio::io::AsyncWriteExt;
    let server = common::TestServer::start_default().await;
    let (mut watcher, _) = common::WsClient::connect_with_stats(&server.ws_url()).await;
    let body = serde_json::json!({"event_type": "form_submit", "visitor_id": common::visitor()})
        .to_string();
    let request = format!(
        "POST /api/v1/analytics/event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    drop(tcp);
    let ev = watcher.next_of_type("form_submit").await;
    assert_eq!(ev["type"], "form_submit");
    let (_, stats) = server.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(stats["data"]["total_events"], 1);
    let (_, timeline) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(timeline["meta"]["count"], 1);
    server.stop().await;
}

/// The store hangs (another process holds the database's write lock): events get
/// 503 with a sentence within the commit deadline, `/readyz` says ingestion is
/// failing, and both recover by themselves when the lock goes.
#[tokio::test]
async fn a_hung_store_answers_503_in_time_and_recovers() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let url = format!("sqlite://{}", path.display());
    let server =
        common::TestServer::with(&["--heartbeat-interval", "60s", "--database-url", &url]).await;
    let event = || serde_json::json!({"event_type": "page_view", "visitor_id": common::visitor()});
    assert_eq!(server.post_event(&event()).await.0, 201);
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let (status, body) = server.post_event(&event()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
    // Within the commit deadline (5 s), with room for a slow machine; the client's
    // own timeout (10 s) would have failed the request otherwise.
    assert!(started.elapsed() < std::time::Duration::from_secs(9));
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .unwrap()
            .contains("refusing commits"),
        "{ready}"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(server.post_event(&event()).await.0, 201);
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    server.stop().await;
}

/// A tmpfs of `bytes` mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => common::skip_or_fail(
                "a tmpfs mount",
                &format!(
                    "mount failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            )
            .map(|()| unreachable!()),
            Err(e) => common::skip_or_fail("a tmpfs mount", &format!("no mount: {e}"))
                .map(|()| unreachable!()),
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// SQLite on a disk that fills up: every acknowledged event is in the file after a
/// restart, the full disk answers 503 and fails `/readyz`, and ingestion recovers
/// by itself once space is freed.
#[tokio::test]
async fn a_full_disk_loses_no_acknowledged_event_and_recovers() {
    use sqlx::Connection;
    let Some(disk) = Tmpfs::mount(2 * 1024 * 1024) else {
        return;
    };
    // Room that can be given back later.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![1u8; 512 * 1024]).unwrap();
    let path = disk.path().join("events.db");
    let url = format!("sqlite://{}", path.display());
    let config = || {
        common::config(&[
            "--heartbeat-interval",
            "60s",
            "--database-url",
            &url,
            "--ingest-events-per-second",
            "100000",
            "--ingest-burst",
            "100000",
        ])
    };
    let server = common::TestServer::start(config()).await;
    let pad = "x".repeat(2000);
    let event = |n: u64| {
        serde_json::json!({"event_type": "page_view", "visitor_id": common::visitor(),
            "event_data": {"n": n, "pad": pad}})
    };
    let mut acknowledged = Vec::new();
    let mut refusals = 0;
    let mut n = 0;
    // Bounded: 2 MiB holds well under 2,000 such events.
    while refusals < 5 && n < 5_000 {
        n += 1;
        match server.post_event(&event(n)).await {
            (201, _) => acknowledged.push(n),
            (503, body) => {
                assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
                refusals += 1;
            }
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    assert_eq!(refusals, 5, "the disk never filled ({n} events)");
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "readiness while the disk is full: {ready}");

    std::fs::remove_file(&filler).unwrap();
    // Recovery without a restart: the next events commit.
    let mut recovered = false;
    for _ in 0..20 {
        n += 1;
        if server.post_event(&event(n)).await.0 == 201 {
            acknowledged.push(n);
            recovered = true;
            break;
        }
    }
    assert!(recovered, "ingestion did not recover once space was freed");
    assert_eq!(server.get_json("/readyz").await.0, 200);
    server.stop().await;

    // After a clean stop, in the file: every acknowledged event, and the server
    // starts again on it.
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let stored: Vec<(i64,)> =
        sqlx::query_as("SELECT json_extract(event_data, '$.n') FROM analytics_events")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let stored: std::collections::HashSet<u64> = stored.into_iter().map(|(n,)| n as u64).collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    db.close().await.unwrap();
    let again = common::TestServer::start(config()).await;
    let (_, stats) = again.get_json("/api/v1/analytics/realtime").await;
    assert_eq!(stats["data"]["total_events"], acknowledged.len() as u64);
    again.stop().await;
}
