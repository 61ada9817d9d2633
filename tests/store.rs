//! The event store on both backends, and what the server does when it fails.
//! PostgreSQL tests use the server on this machine (`TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), each in a database of its own.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::{TestServer, WsClient, config, skip_or_fail, visitor};
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::store::{self, EventStore, Summary};
use serde_json::json;
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database, dropped when the guard goes.
struct TempDb {
    name: String,
    url: String,
}

impl TempDb {
    async fn create() -> Option<Self> {
        let admin = admin_url();
        let connect = sqlx::PgConnection::connect(&admin);
        let mut conn = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await
        {
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
        // `name` is made of a fixed prefix and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
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

impl Drop for TempDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Drop from a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
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

fn event(kind: &str, who: VisitorId, at: chrono::DateTime<Utc>) -> NewEvent {
    NewEvent {
        event_type: EventType::parse(kind).unwrap(),
        visitor_id: who,
        event_data: json!({"k": "v", "n": 1}).as_object().unwrap().clone(),
        page_url: Some("/cv".into()),
        occurred_at: at,
    }
}

/// The same checks for every backend.
async fn exercise(store: &dyn EventStore) {
    let a = VisitorId::parse(&visitor()).unwrap();
    let b = VisitorId::parse(&visitor()).unwrap();
    let day = Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap();
    let ids = store
        .insert_batch(&[
            event("page_view", a, day),
            event("letter_generate", a, day + Duration::minutes(1)),
            event("page_view", b, day + Duration::minutes(2)),
            event("page_view", b, day + Duration::days(1)),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // A large batch goes in, whole.
    let many: Vec<_> = (0..2500)
        .map(|i| event("button_click", b, day + Duration::seconds(i)))
        .collect();
    assert_eq!(store.insert_batch(&many).await.unwrap().len(), 2500);

    let summary = store
        .summary(day - Duration::hours(12), day + Duration::hours(12))
        .await
        .unwrap();
    assert_eq!(
        summary,
        Summary {
            total_events: 3 + 2500,
            letters_generated: 1,
            unique_visitors: 2
        }
    );
    let top = store.timeline(2, 0).await.unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].event_type, "button_click");
    assert_eq!(top[0].event_data, json!({"k": "v", "n": 1}));
    assert_eq!(top[0].page_url.as_deref(), Some("/cv"));
    let older = store.timeline(1, 2500).await.unwrap();
    assert_eq!(older[0].event_type, "page_view");
    assert_eq!(older[0].created_at, day + Duration::days(1));

    let seen = store
        .visitors_since(day + Duration::hours(6))
        .await
        .unwrap();
    assert_eq!(seen, vec![(b, day + Duration::days(1))]);

    let d = day.date_naive();
    let salt = store.daily_salt(d).await.unwrap();
    assert_eq!(salt.len(), 32);
    assert_eq!(
        store.daily_salt(d).await.unwrap(),
        salt,
        "stable within the day"
    );
    let next = store.daily_salt(d.succ_opt().unwrap()).await.unwrap();
    assert_ne!(next, salt);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = store::connect(&url).await.unwrap();
    exercise(&*store).await;
    store.close().await;
    // Reopening migrates nothing twice and keeps everything.
    let store = store::connect(&url).await.unwrap();
    assert_eq!(store.timeline(100, 0).await.unwrap().len(), 100);
    store.close().await;
}

#[tokio::test]
async fn postgres_store() {
    let Some(db) = TempDb::create().await else {
        return;
    };
    let store = store::connect(&db.url).await.unwrap();
    exercise(&*store).await;
    store.close().await;
}

#[tokio::test]
async fn an_unsupported_database_url_is_a_clear_error() {
    let err = store::connect("mysql://localhost/x").await.err().unwrap();
    assert!(err.to_string().contains("sqlite://PATH"), "{err}");
}

#[tokio::test]
async fn the_server_on_postgres_keeps_figures_across_a_restart() {
    let Some(db) = TempDb::create().await else {
        return;
    };
    let server = TestServer::start(config(&["--database-url", &db.url])).await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (status, _) = server
        .post_event(&json!({"event_type": "letter_generate", "visitor_id": visitor(), "event_data": {"letter_type": "motivation"}}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        client.next_of_type("letter_generate").await["data"]["letter_type"],
        "motivation"
    );
    server.stop().await;

    let server = TestServer::start(config(&["--database-url", &db.url])).await;
    let (_, stats) = WsClient::connect_with_stats(&server.ws_url()).await;
    assert_eq!(
        (
            stats["total_events"].as_u64(),
            stats["letters_today"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, t) = server.get_json("/api/v1/analytics/timeline").await;
    assert_eq!(t["data"][0]["event_data"]["letter_type"], "motivation");
    server.stop().await;
}

#[tokio::test]
async fn when_the_store_fails_ingestion_answers_503_and_nothing_is_broadcast() {
    let Some(db) = TempDb::create().await else {
        return;
    };
    let server = TestServer::start(config(&["--database-url", &db.url])).await;
    let (mut client, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE analytics_events RENAME TO analytics_events_away")
        .execute(&mut admin)
        .await
        .unwrap();
    let (status, body) = server
        .post_event(
            &json!({"event_type": "page_view", "page_url": "/lost", "visitor_id": visitor()}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], false);
    let sentence = body["error"].as_str().unwrap();
    assert!(
        sentence.contains("not recorded") && !sentence.contains("relation"),
        "{sentence}"
    );
    sqlx::query("ALTER TABLE analytics_events_away RENAME TO analytics_events")
        .execute(&mut admin)
        .await
        .unwrap();
    let (status, _) = server
        .post_event(
            &json!({"event_type": "page_view", "page_url": "/kept", "visitor_id": visitor()}),
        )
        .await;
    assert_eq!(status, 201);
    // The first event the client sees is the stored one: the refused one was never sent.
    assert_eq!(client.next_of_type("page_view").await["page_url"], "/kept");
    let (_, rt) = server.get_json("/api/v1/analytics/realtime").await;
    assert!(rt["data"]["total_events"].as_u64().unwrap() <= 1);
    assert_eq!(
        server
            .metric("maicivy_ingestion_errors_total{reason=\"store_failed\"}")
            .await,
        1.0
    );
    server.stop().await;
}
