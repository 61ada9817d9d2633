//! Sharing maicivy's own PostgreSQL database (CONTRACT.md, "Sharing maicivy's
//! PostgreSQL database"): a database made as maicivy makes it, with rows written as
//! its Go backend writes them, then opened by this server's store. Twice: with the
//! `TIMESTAMP` columns of maicivy's SQL migrations, and with the `TIMESTAMPTZ` (and
//! `BIGINT`) columns its ORM makes.

mod common;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use common::PgTestDb;
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::store::{self, Letters};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The column types of one way of making maicivy's schema.
#[derive(Clone, Copy)]
struct Flavour {
    time: &'static str,
    int: &'static str,
}

const SQL_MIGRATIONS: Flavour = Flavour {
    time: "TIMESTAMP",
    int: "INT",
};
const ORM: Flavour = Flavour {
    time: "TIMESTAMPTZ",
    int: "BIGINT",
};

/// maicivy's tables, from the columns CONTRACT.md lists (with the foreign keys and
/// the CHECK), in `flavour`'s types.
fn maicivy_schema(f: Flavour) -> String {
    let Flavour { time, int } = f;
    format!(
        "CREATE TABLE visitors (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            session_id VARCHAR(255) UNIQUE NOT NULL,
            ip_hash VARCHAR(64),
            user_agent TEXT,
            browser VARCHAR(100),
            os VARCHAR(100),
            device VARCHAR(50),
            visit_count {int} DEFAULT 1,
            first_visit {time} NOT NULL,
            last_visit {time} NOT NULL,
            created_at {time} DEFAULT NOW(),
            updated_at {time} DEFAULT NOW(),
            deleted_at {time}
        );
        CREATE TABLE analytics_events (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            visitor_id UUID NOT NULL REFERENCES visitors(id),
            event_type VARCHAR(50) NOT NULL,
            event_data JSONB,
            page_url VARCHAR(500),
            referrer VARCHAR(500),
            session_duration {int} DEFAULT 0,
            created_at {time} NOT NULL DEFAULT NOW(),
            updated_at {time} NOT NULL DEFAULT NOW(),
            deleted_at {time}
        );
        CREATE INDEX idx_analytics_events_created_at ON analytics_events (created_at);
        CREATE TABLE generated_letters (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            visitor_id UUID NOT NULL REFERENCES visitors(id),
            company_name VARCHAR(255) NOT NULL,
            letter_type VARCHAR(20) CHECK (letter_type IN ('motivation', 'anti_motivation')),
            content TEXT NOT NULL,
            created_at {time} DEFAULT NOW(),
            updated_at {time} DEFAULT NOW(),
            deleted_at {time}
        );"
    )
}

/// A time as a literal with an explicit `+00`: a `TIMESTAMPTZ` column reads it as
/// that instant, a `TIMESTAMP` one drops the offset and keeps the UTC wall clock,
/// which is what Go's driver writes into each.
fn lit(at: DateTime<Utc>) -> String {
    format!("'{}+00'", at.format("%Y-%m-%d %H:%M:%S%.6f"))
}

fn t(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, d, h, m, 0).unwrap()
}

/// What the test seeded, to look for it afterwards.
struct Seeded {
    known: Uuid,
    /// Go's rows that are not deleted, and those that are.
    live_events: Vec<Uuid>,
    deleted_events: Vec<Uuid>,
}

async fn exec(conn: &mut PgConnection, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .expect("seed statement");
}

/// Rows as maicivy's Go backend leaves them, deleted ones (GORM's soft delete)
/// included.
async fn seed(conn: &mut PgConnection) -> Seeded {
    let known = Uuid::new_v4();
    let deleted_visitor = Uuid::new_v4();
    let old_visitor = Uuid::new_v4();
    for (id, session, created, deleted) in [
        (known, "go-session-known", t(8, 8, 0), None),
        (
            deleted_visitor,
            "go-session-deleted",
            t(8, 8, 30),
            Some(t(8, 9, 0)),
        ),
        (old_visitor, "go-session-old", t(1, 8, 0), None),
    ] {
        exec(
            conn,
            format!(
                "INSERT INTO visitors (id, session_id, ip_hash, user_agent, visit_count, \
                 first_visit, last_visit, created_at, updated_at, deleted_at) VALUES \
                 ('{id}', '{session}', 'abc123', 'Mozilla/5.0', 3, {c}, {c}, {c}, {c}, {d})",
                c = lit(created),
                d = deleted.map_or("NULL".into(), lit),
            ),
        )
        .await;
    }
    let mut live_events = Vec::new();
    let mut deleted_events = Vec::new();
    // (type, data, page, time, deleted)
    type GoEvent = (
        &'static str,
        Option<serde_json::Value>,
        &'static str,
        DateTime<Utc>,
        bool,
    );
    let events: [GoEvent; 9] = [
        ("page_view", Some(json!({})), "/cv", t(8, 9, 0), false),
        (
            "cv_theme_change",
            Some(json!({"theme": "backend"})),
            "/cv",
            t(8, 9, 1),
            false,
        ),
        (
            "cv_theme_change",
            Some(json!({"theme": "backend"})),
            "/cv",
            t(8, 9, 2),
            false,
        ),
        (
            "button_click",
            Some(json!({"x": 100, "y": 50})),
            "/cv",
            t(8, 9, 30),
            false,
        ),
        // Go's own letter event: with `generated_letters` there, letters are
        // counted from that table, not from these.
        (
            "letter_generate",
            Some(json!({"letter_type": "motivation"})),
            "/letters",
            t(8, 9, 40),
            false,
        ),
        ("pdf_download", None, "/cv", t(8, 9, 50), false),
        (
            "cv_theme_change",
            Some(json!({"theme": "deleted-theme"})),
            "/cv",
            t(8, 10, 0),
            true,
        ),
        (
            "button_click",
            Some(json!({"x": 100, "y": 50})),
            "/cv",
            t(8, 10, 1),
            true,
        ),
        ("page_view", Some(json!({})), "/deleted", t(8, 10, 2), true),
    ];
    for (kind, data, page, at, deleted) in events {
        let id = Uuid::new_v4();
        let data = data.map_or("NULL".into(), |d| format!("'{d}'::jsonb"));
        exec(
            conn,
            format!(
                "INSERT INTO analytics_events (id, visitor_id, event_type, event_data, page_url, \
                 referrer, session_duration, created_at, updated_at, deleted_at) VALUES \
                 ('{id}', '{known}', '{kind}', {data}, '{page}', 'https://www.google.com/', 0, \
                 {at}, {at}, {del})",
                at = lit(at),
                del = if deleted { lit(at) } else { "NULL".into() },
            ),
        )
        .await;
        if deleted {
            deleted_events.push(id);
        } else {
            live_events.push(id);
        }
    }
    // 18:29 UTC is 23:59 in India (UTC+5:30); 18:31 is the next day there.
    for (kind, at, deleted) in [
        ("motivation", t(8, 18, 29), false),
        ("anti_motivation", t(8, 18, 31), false),
        ("motivation", t(8, 18, 35), true),
        ("motivation", t(1, 12, 0), false),
    ] {
        exec(
            conn,
            format!(
                "INSERT INTO generated_letters (visitor_id, company_name, letter_type, content, \
                 created_at, updated_at, deleted_at) VALUES \
                 ('{known}', 'ACME', '{kind}', 'Dear ACME…', {at}, {at}, {del})",
                at = lit(at),
                del = if deleted { lit(at) } else { "NULL".into() },
            ),
        )
        .await;
    }
    Seeded {
        known,
        live_events,
        deleted_events,
    }
}

async fn shared_database(flavour: Flavour) {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    // The server's own zone must not matter: the store's sessions are UTC.
    exec(
        &mut admin,
        format!("ALTER DATABASE {} SET timezone TO 'Asia/Kolkata'", db.name),
    )
    .await;
    exec(&mut admin, maicivy_schema(flavour)).await;
    let seeded = seed(&mut admin).await;

    // It starts on maicivy's database, and again (nothing migrated twice).
    let store = store::connect(&db.url).await.expect("the store starts");
    store.close().await;
    let store = store::connect(&db.url).await.expect("the store restarts");
    let fk: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.table_constraints \
         WHERE table_name = 'analytics_events' AND constraint_type = 'FOREIGN KEY'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(fk, 1, "maicivy's foreign key is left in place");
    let old_bookkeeping: Option<String> =
        sqlx::query_scalar("SELECT CAST(to_regclass('_sqlx_migrations') AS TEXT)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        old_bookkeeping, None,
        "the earlier migration set never ran here"
    );

    // An event of a visitor maicivy does not know, and one of a visitor it knows.
    let stranger = VisitorId::from_uuid(Uuid::new_v4());
    let at = t(8, 12, 34) + Duration::microseconds(56_123_456);
    let ours = NewEvent {
        id: Uuid::new_v4(),
        event_type: EventType::parse("button_click").unwrap(),
        visitor_id: stranger,
        event_data: json!({"x": 100.4, "y": 49.6, "label": "Télécharger"})
            .as_object()
            .unwrap()
            .clone(),
        page_url: Some("/cv".into()),
        referrer: Some("https://ref.example/page".into()),
        occurred_at: at,
    };
    let known = VisitorId::from_uuid(seeded.known);
    let theirs = NewEvent {
        id: Uuid::new_v4(),
        event_type: EventType::parse("cv_theme_change").unwrap(),
        visitor_id: known,
        event_data: json!({"theme": "backend"}).as_object().unwrap().clone(),
        page_url: None,
        referrer: None,
        occurred_at: at + Duration::seconds(1),
    };
    store
        .insert_batch(&[ours.clone(), theirs.clone()])
        .await
        .expect("the batch commits despite the foreign key");

    // The visitors row Go will join on, and the event row as Go reads it.
    let wall = |at: DateTime<Utc>| {
        let text = at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        if flavour.time == "TIMESTAMPTZ" {
            format!("{text}+00")
        } else {
            text
        }
    };
    // (This connection's zone is UTC, as sqlx sets it: `::text` of a TIMESTAMPTZ
    // is printed in it.)
    let (session, first, last, count, deleted): (String, String, String, i64, Option<String>) =
        sqlx::query_as(
            "SELECT session_id, first_visit::text, last_visit::text, CAST(visit_count AS BIGINT), \
             deleted_at::text FROM visitors WHERE id = $1::uuid",
        )
        .bind(stranger.to_string())
        .fetch_one(&mut admin)
        .await
        .expect("a visitors row for the stranger");
    assert_eq!(session, format!("maicivy-analytics:{stranger}"));
    assert_eq!((first, last), (wall(at), wall(at)));
    assert_eq!((count, deleted), (1, None));
    let known_session: String =
        sqlx::query_scalar("SELECT session_id FROM visitors WHERE id = $1::uuid")
            .bind(seeded.known.to_string())
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        known_session, "go-session-known",
        "a known visitor is untouched"
    );

    type GoRow = (
        String,
        String,
        String,
        sqlx::types::Json<serde_json::Value>,
        Option<String>,
        Option<String>,
        i64,
        String,
        String,
        Option<String>,
    );
    let row: GoRow = sqlx::query_as(
        "SELECT id::text, visitor_id::text, event_type, event_data, page_url, referrer, \
         CAST(session_duration AS BIGINT), created_at::text, updated_at::text, deleted_at::text \
         FROM analytics_events WHERE id = $1::uuid",
    )
    .bind(ours.id.to_string())
    .fetch_one(&mut admin)
    .await
    .expect("our event is a row of maicivy's table");
    assert_eq!(row.0, ours.id.to_string());
    assert_eq!(row.1, stranger.to_string());
    assert_eq!(row.2, "button_click");
    assert_eq!(
        row.3.0,
        json!({"x": 100.4, "y": 49.6, "label": "Télécharger"})
    );
    assert_eq!(row.4.as_deref(), Some("/cv"));
    assert_eq!(row.5.as_deref(), Some("https://ref.example/page"));
    assert_eq!(row.6, 0);
    assert_eq!((row.7, row.8, row.9), (wall(at), wall(at), None));
    let data_type: String = sqlx::query_scalar(
        "SELECT jsonb_typeof(event_data) FROM analytics_events WHERE id = $1::uuid",
    )
    .bind(ours.id.to_string())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        data_type, "object",
        "event_data is a JSONB object, not a string"
    );

    // The reads include Go's rows and leave the deleted ones out.
    let timeline = store.timeline(100, 0).await.unwrap();
    let ids: Vec<Uuid> = timeline.iter().map(|e| e.id).collect();
    assert_eq!(ids[..2], [theirs.id, ours.id], "newest first");
    for id in &seeded.live_events {
        assert!(ids.contains(id), "Go's event {id} is in the timeline");
    }
    for id in &seeded.deleted_events {
        assert!(!ids.contains(id), "the deleted event {id} is not");
    }
    assert_eq!(ids.len(), seeded.live_events.len() + 2);
    let mine = &timeline[1];
    assert_eq!(mine.created_at, at);
    assert_eq!(mine.referrer.as_deref(), Some("https://ref.example/page"));
    let go_first = timeline.last().unwrap();
    assert_eq!(go_first.created_at, t(8, 9, 0), "Go's times read as UTC");
    assert_eq!(
        go_first.referrer.as_deref(),
        Some("https://www.google.com/")
    );
    let null_data = timeline
        .iter()
        .find(|e| e.event_type == "pdf_download")
        .unwrap();
    assert_eq!(null_data.event_data, json!({}));

    let day = t(8, 0, 0);
    let summary = store.summary(day, day + Duration::days(1)).await.unwrap();
    assert_eq!(
        (
            summary.total_events,
            summary.letters_generated,
            summary.unique_visitors
        ),
        (seeded.live_events.len() as u64 + 2, 1, 2)
    );
    // The window starts 10 s before Go's 09:00 page view: a store that read
    // TIMESTAMP as local Indian time would put it 5 h 30 earlier, outside.
    let early = store
        .summary(
            t(8, 8, 59) + Duration::seconds(50),
            t(8, 9, 0) + Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(early.total_events, 1);

    let heat: Vec<(f64, f64, u64)> = store
        .heatmap(day, None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.x, c.y, c.count))
        .collect();
    assert_eq!(heat, vec![(100.0, 50.0, 2)]);
    assert_eq!(store.heatmap(day, Some("/letters")).await.unwrap(), vec![]);

    let themes: Vec<(String, u64)> = store
        .top_themes(5)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.theme, t.views))
        .collect();
    assert_eq!(themes, vec![("backend".to_owned(), 3)]);

    // From `generated_letters` (not the letter_generate events), days in India.
    let dec = |d| NaiveDate::from_ymd_opt(2025, 12, d).unwrap();
    let letters = store
        .letters(day, day + Duration::days(2), chrono_tz::Asia::Kolkata)
        .await
        .unwrap();
    assert_eq!(
        letters,
        Letters {
            motivation: 1,
            anti_motivation: 1,
            per_day: vec![(dec(8), 1), (dec(9), 1)],
        }
    );
    let utc = store
        .letters(day, day + Duration::days(2), chrono_tz::UTC)
        .await
        .unwrap();
    assert_eq!(utc.per_day, vec![(dec(8), 2)]);

    assert_eq!(
        store.session_visitor("go-session-known").await.unwrap(),
        Some(known)
    );
    assert_eq!(
        store.session_visitor("go-session-deleted").await.unwrap(),
        None
    );
    assert_eq!(
        store.session_visitor("no-such-session").await.unwrap(),
        None
    );
    // The known visitor, the stranger's new row; not the deleted one, not the old one.
    assert_eq!(store.maicivy_visitors_since(day).await.unwrap(), Some(2));
    assert_eq!(store.maicivy_letters_since(day).await.unwrap(), Some(2));
    assert_eq!(
        store.maicivy_letters_since(t(1, 0, 0)).await.unwrap(),
        Some(3)
    );

    let seen = store.visitors_since(day).await.unwrap();
    assert!(seen.contains(&(known, theirs.occurred_at)), "{seen:?}");
    assert!(seen.contains(&(stranger, at)), "{seen:?}");
    let pages = store.pages_since(day, 10).await.unwrap();
    assert_eq!(
        pages.len(),
        1,
        "the deleted page view is not a page: {pages:?}"
    );
    assert_eq!((pages[0].page_url.as_str(), pages[0].views), ("/cv", 1));
    let minutes = store
        .events_per_minute(t(8, 9, 0), t(8, 9, 3))
        .await
        .unwrap();
    assert_eq!(
        minutes.iter().map(|m| m.count).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert_eq!(minutes[0].minute_ms, t(8, 9, 0).timestamp_millis());
    store.close().await;
}

#[tokio::test]
async fn a_maicivy_database_with_timestamp_columns_is_shared() {
    shared_database(SQL_MIGRATIONS).await;
}

#[tokio::test]
async fn a_maicivy_database_made_by_its_orm_with_timestamptz_columns_is_shared() {
    shared_database(ORM).await;
}

/// An empty database gets maicivy's layout without the foreign key (there is no
/// `visitors` table to point at), and no `visitors` rows are written.
#[tokio::test]
async fn an_empty_database_gets_maicivys_layout_without_the_foreign_key() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let store = store::connect(&db.url).await.unwrap();
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT), CAST(is_nullable AS TEXT) \
         FROM information_schema.columns WHERE table_name = 'analytics_events' \
         ORDER BY ordinal_position",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let expected = [
        ("id", "uuid", "NO"),
        ("visitor_id", "uuid", "NO"),
        ("event_type", "character varying", "NO"),
        ("event_data", "jsonb", "YES"),
        ("page_url", "character varying", "YES"),
        ("referrer", "character varying", "YES"),
        ("session_duration", "integer", "YES"),
        ("created_at", "timestamp without time zone", "NO"),
        ("updated_at", "timestamp without time zone", "NO"),
        ("deleted_at", "timestamp without time zone", "YES"),
    ];
    let columns: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(columns, expected);
    let fk: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.table_constraints \
         WHERE table_name = 'analytics_events' AND constraint_type = 'FOREIGN KEY'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(fk, 0);
    let who = VisitorId::from_uuid(Uuid::new_v4());
    store
        .insert_batch(&[NewEvent {
            id: Uuid::new_v4(),
            event_type: EventType::parse("page_view").unwrap(),
            visitor_id: who,
            event_data: Default::default(),
            page_url: None,
            referrer: None,
            occurred_at: Utc::now(),
        }])
        .await
        .unwrap();
    let visitors: Option<String> =
        sqlx::query_scalar("SELECT CAST(to_regclass('visitors') AS TEXT)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(visitors, None);
    assert_eq!(
        store
            .maicivy_visitors_since(Utc::now() - Duration::days(1))
            .await
            .unwrap(),
        None
    );
    store.close().await;
}
