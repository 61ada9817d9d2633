//! Databases of this server's earlier layout (integer ids, `created_at_ms`) are
//! migrated to maicivy's layout without losing an event: a SQLite file and a
//! PostgreSQL database made exactly as the earlier version left them (its migration,
//! its sqlx bookkeeping, its rows), then opened by the current store.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use common::PgTestDb;
use maicivy_analytics::store::{self, EventStore, SqliteStore};
use serde_json::{Value, json};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, Executor, SqlSafeStr};

/// The earlier PostgreSQL migration, byte for byte (it was
/// `migrations/postgres/0001_events.sql`, removed since; its checksum is recorded in
/// the `_sqlx_migrations` table of every deployment that ran it).
const EARLIER_PG_0001: &str = "-- The same schema as migrations/sqlite, in PostgreSQL's dialect.
CREATE TABLE IF NOT EXISTS analytics_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type    TEXT   NOT NULL,
    visitor_id    TEXT   NOT NULL,
    event_data    JSONB  NOT NULL DEFAULT '{}',
    page_url      TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS analytics_events_created_at ON analytics_events (created_at_ms);

CREATE TABLE IF NOT EXISTS visitor_salts (
    day  TEXT PRIMARY KEY,
    salt BYTEA NOT NULL
);
";

fn sha384_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha384::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An event of the earlier layout, and how it must read afterwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Old {
    event_type: String,
    visitor_id: String,
    event_data: String,
    page_url: Option<String>,
    created_at_ms: i64,
}

fn old_events() -> Vec<Old> {
    let visitor = |n: u128| uuid::Uuid::from_u128(0x3f1c_6a2e_8b4d_4c1e_9a7f_2d5e_8c0b_0000 + n);
    let ev = |kind: &str, who, data: Value, page: Option<&str>, ms| Old {
        event_type: kind.into(),
        visitor_id: visitor(who).to_string(),
        event_data: data.to_string(),
        page_url: page.map(str::to_owned),
        created_at_ms: ms,
    };
    vec![
        ev("page_view", 1, json!({}), Some("/cv"), 1_765_195_200_123),
        ev(
            "letter_generate",
            1,
            json!({"letter_type": "motivation"}),
            Some("/letters"),
            1_765_195_260_999,
        ),
        ev(
            "cv_theme_change",
            2,
            json!({"theme": "backend", "nested": {"a": [1, 2.5, "é"]}}),
            None,
            1_765_195_261_001,
        ),
        ev(
            "button_click",
            2,
            json!({"x": 450, "y": 200}),
            Some("/cv"),
            1_765_195_262_000,
        ),
        // The same millisecond twice: both stay.
        ev(
            "button_click",
            2,
            json!({"x": 450, "y": 200}),
            Some("/cv"),
            1_765_195_262_000,
        ),
        ev(
            "shop.cart:add-1",
            3,
            json!({"sku": "A-1"}),
            Some("/shop?q=1&r=2"),
            1_700_000_000_007,
        ),
        // Before 1970, to check the conversion's arithmetic on negative times.
        ev("page_view", 3, json!({}), Some("/old"), -1),
    ]
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// Every event of `expected` is in the store, with the same type, visitor, data,
/// page and time, each under a UUID of its own.
async fn assert_all_kept(store: &dyn EventStore, expected: &[Old]) {
    let stored = store.timeline(1000, 0).await.unwrap();
    assert_eq!(stored.len(), expected.len(), "{stored:#?}");
    type Seen = (String, String, String, Option<String>, DateTime<Utc>);
    let got: BTreeSet<Seen> = stored
        .iter()
        .map(|e| {
            (
                e.event_type.clone(),
                e.visitor_id.clone(),
                e.event_data.to_string(),
                e.page_url.clone(),
                e.created_at,
            )
        })
        .collect();
    let want: BTreeSet<_> = expected
        .iter()
        .map(|o| {
            let data: Value = serde_json::from_str(&o.event_data).unwrap();
            (
                o.event_type.clone(),
                o.visitor_id.clone(),
                data.to_string(),
                o.page_url.clone(),
                time(o.created_at_ms),
            )
        })
        .collect();
    // Two identical old events are one entry of each set; the length check above
    // counts them.
    assert_eq!(got, want);
    let ids: BTreeSet<uuid::Uuid> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), stored.len(), "every event has an id of its own");
    assert!(
        ids.iter().all(|id| id.get_version_num() == 4),
        "random UUIDs: {ids:?}"
    );
    // Newest first, the pre-1970 one last.
    assert_eq!(stored.last().unwrap().created_at, time(-1));
}

#[tokio::test]
async fn a_sqlite_file_of_the_earlier_layout_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("earlier.db");
    let url = format!("sqlite://{}", path.display());

    // The earlier version's start: its migration 0001 (the same bytes, still
    // shipped; checked here), applied and recorded by sqlx as it did.
    let migrator = sqlx::migrate!("migrations/sqlite");
    let first = migrator.iter().find(|m| m.version == 1).unwrap();
    assert_eq!(
        sha384_hex(first.sql.as_str().as_bytes()),
        "6230bacbdaf4810d58b750d29f9814349ae185a815dedfbb4a2b94a40dc71baefdede8fcbdefbbeeabafddb8d46e03b1",
        "migrations/sqlite/0001 must stay byte for byte what deployments applied"
    );
    assert_eq!(sha384_hex(first.sql.as_str().as_bytes()), {
        let c: &[u8] = &first.checksum;
        c.iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    migrator.run_to(1, &mut conn).await.unwrap();
    let old = old_events();
    for o in &old {
        sqlx::query(
            "INSERT INTO analytics_events (event_type, visitor_id, event_data, page_url, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&o.event_type)
        .bind(&o.visitor_id)
        .bind(&o.event_data)
        .bind(&o.page_url)
        .bind(o.created_at_ms)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO visitor_salts (day, salt) VALUES ('2025-12-08', x'0102')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let store = SqliteStore::connect(&url)
        .await
        .expect("the earlier file opens");
    assert_all_kept(&store, &old).await;
    store.close().await;

    // Reopened: nothing converted twice, still everything, and new events go in.
    let store = SqliteStore::connect(&url).await.unwrap();
    assert_all_kept(&store, &old).await;
    store
        .insert_batch(&[new_event()])
        .await
        .expect("new events go into the converted table");
    assert_eq!(store.timeline(1000, 0).await.unwrap().len(), old.len() + 1);
    store.close().await;

    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let versions: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, vec![(1, true), (2, true), (3, true), (4, true)]);
    let times: Vec<String> =
        sqlx::query_scalar("SELECT created_at FROM analytics_events ORDER BY created_at")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(times[0], "1969-12-31 23:59:59.999000");
    assert!(
        times
            .iter()
            .all(|t| t.len() == "2025-12-08 12:00:00.123000".len()),
        "one fixed-width text form: {times:?}"
    );
    let salt: Vec<u8> = sqlx::query_scalar("SELECT salt FROM visitor_salts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(salt, vec![1, 2]);
    conn.close().await.unwrap();
}

async fn bookkeeping(conn: &mut sqlx::PgConnection) -> sqlx::Result<Vec<(i64, Vec<u8>, bool)>> {
    sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(conn)
        .await
}

fn new_event() -> maicivy_analytics::domain::NewEvent {
    maicivy_analytics::domain::NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: maicivy_analytics::domain::EventType::parse("page_view").unwrap(),
        visitor_id: maicivy_analytics::domain::VisitorId::from_uuid(uuid::Uuid::new_v4()),
        event_data: Default::default(),
        page_url: Some("/after".into()),
        referrer: Some("https://example.org/".into()),
        occurred_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_postgres_database_of_the_earlier_layout_keeps_every_event() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    assert_eq!(
        sha384_hex(EARLIER_PG_0001.as_bytes()),
        "87d6839a42859788f5446f4cc6b8c6a4b58d7daa19fcb48e52f6148ae49070ea5eebbb438327aad712abb110e457db0b",
        "the earlier migration, byte for byte"
    );
    // The earlier version's start: its one migration, recorded in `_sqlx_migrations`.
    let earlier = Migrator::with_migrations(vec![Migration::new(
        1,
        "events".into(),
        MigrationType::Simple,
        EARLIER_PG_0001.into_sql_str(),
        false,
    )]);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    earlier.run(&mut conn).await.unwrap();
    let mut old = old_events();
    // The earlier layout had no bound on page URLs; maicivy's column has 500.
    old.push(Old {
        event_type: "page_view".into(),
        visitor_id: uuid::Uuid::new_v4().to_string(),
        event_data: "{}".into(),
        page_url: Some(format!("/{}", "é".repeat(600))),
        created_at_ms: 1_765_195_300_000,
    });
    for o in &old {
        sqlx::query(
            "INSERT INTO analytics_events (event_type, visitor_id, event_data, page_url, \
             created_at_ms) VALUES ($1, $2, $3::jsonb, $4, $5)",
        )
        .bind(&o.event_type)
        .bind(&o.visitor_id)
        .bind(&o.event_data)
        .bind(&o.page_url)
        .bind(o.created_at_ms)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.execute("INSERT INTO visitor_salts (day, salt) VALUES ('2025-12-08', '\\x0102')")
        .await
        .unwrap();
    let before = bookkeeping(&mut conn).await.unwrap();
    assert_eq!(before.len(), 1);

    let store = store::connect(&db.url)
        .await
        .expect("the earlier database opens");
    // The long page URL is cut to maicivy's 500 characters; the event is kept.
    let mut expected = old.clone();
    let long = expected.last_mut().unwrap();
    long.page_url = long
        .page_url
        .as_deref()
        .map(|p| p.chars().take(500).collect());
    assert_all_kept(&*store, &expected).await;
    store.insert_batch(&[new_event()]).await.unwrap();
    store.close().await;
    let store = store::connect(&db.url).await.expect("and reopens");
    assert_eq!(
        store.timeline(1000, 0).await.unwrap().len(),
        expected.len() + 1
    );
    store.close().await;

    assert_eq!(
        bookkeeping(&mut conn).await.unwrap(),
        before,
        "the earlier bookkeeping is left alone"
    );
    let ours: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM maicivy_analytics_migrations WHERE success")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(ours, vec![1, 2, 3]);
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.columns \
         WHERE table_name LIKE 'analytics_events%' AND column_name = 'created_at_ms'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(leftovers, 0, "the earlier table is gone");
    let (kind, wall): (String, String) = sqlx::query_as(
        "SELECT CAST(data_type AS TEXT), \
         (SELECT created_at::text FROM analytics_events WHERE page_url = '/cv' \
          ORDER BY created_at LIMIT 1) \
         FROM information_schema.columns \
         WHERE table_name = 'analytics_events' AND column_name = 'created_at'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(kind, "timestamp without time zone");
    assert_eq!(
        wall, "2025-12-08 12:00:00.123",
        "UTC wall clock, to the millisecond"
    );
    let salt: Vec<u8> = sqlx::query_scalar("SELECT salt FROM visitor_salts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(salt, vec![1, 2]);
}
