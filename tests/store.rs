//! The event store on both backends, and what the server does when it fails.
//! PostgreSQL tests use the server on this machine (`TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), each in a database of its own.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::{PgTestDb, TestServer, WsClient, visitor};
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::store::{self, EventStore, Letters, Summary};
use serde_json::json;
use sqlx::Connection;

fn event(kind: &str, who: VisitorId, at: chrono::DateTime<Utc>) -> NewEvent {
    with_data(kind, who, at, json!({"k": "v", "n": 1}))
}

fn with_data(
    kind: &str,
    who: VisitorId,
    at: chrono::DateTime<Utc>,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: EventType::parse(kind).unwrap(),
        visitor_id: who,
        event_data: data.as_object().unwrap().clone(),
        page_url: Some("/cv".into()),
        referrer: None,
        occurred_at: at,
    }
}

fn on_page(mut e: NewEvent, page: &str) -> NewEvent {
    e.page_url = Some(page.into());
    e
}

/// The same checks for every backend.
async fn exercise(store: &dyn EventStore) {
    let a = VisitorId::parse(&visitor()).unwrap();
    let b = VisitorId::parse(&visitor()).unwrap();
    let c = VisitorId::parse(&visitor()).unwrap();
    let day = Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, 0).unwrap();
    let mut first = event("page_view", a, day);
    first.referrer = Some("https://example.org/".into());
    let first_id = first.id;
    store
        .insert_batch(&[
            first,
            event("letter_generate", a, day + Duration::minutes(1)),
            event("page_view", b, day + Duration::minutes(2)),
            event("page_view", b, day + Duration::days(1)),
            event("page_view", c, day + Duration::minutes(3)),
            on_page(
                event("page_view", c, day + Duration::minutes(4)),
                "/letters",
            ),
        ])
        .await
        .unwrap();

    // A large batch goes in, whole.
    let many: Vec<_> = (0..2500)
        .map(|i| {
            event(
                "button_click",
                b,
                day + Duration::hours(1) + Duration::seconds(i),
            )
        })
        .collect();
    store.insert_batch(&many).await.unwrap();
    store.insert_batch(&[]).await.unwrap();
    // Storing events again (a retry after a COMMIT of unknown outcome) neither fails
    // nor duplicates them, nor counts them twice, alone or beside new events (whose
    // letter counts once).
    store.insert_batch(&many[..10]).await.unwrap();
    let letter_again = event("letter_generate", b, day + Duration::hours(1));
    let mut mixed = many[10..20].to_vec();
    mixed.push(letter_again.clone());
    store.insert_batch(&mixed).await.unwrap();
    store.insert_batch(&[letter_again]).await.unwrap();

    // The figures below are the aggregates' (a new SQLite store's answer at once;
    // PostgreSQL's after a fold step finds no rows of other writers).
    for _ in 0..100 {
        if store.fold_step().await.unwrap().caught_up {
            break;
        }
    }
    assert!(store.aggregates_ready());
    let summary = store
        .summary(day - Duration::hours(12), day + Duration::hours(12))
        .await
        .unwrap();
    assert_eq!(
        summary,
        Summary {
            total_events: 5 + 2500 + 1,
            letters_generated: 1 + 1,
            unique_visitors: 3
        }
    );
    // Newest first, by the time of the event (not by the order of insertion).
    let top = store.timeline(2, 0).await.unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].event_type, "page_view");
    assert_eq!(top[0].created_at, day + Duration::days(1));
    assert_eq!(top[1].event_type, "button_click");
    assert_eq!(top[1].event_data, json!({"k": "v", "n": 1}));
    assert_eq!(top[1].page_url.as_deref(), Some("/cv"));
    assert_eq!(top[1].visitor_id, b.to_string());
    let oldest = store.timeline(1, 2506).await.unwrap();
    assert_eq!(oldest[0].id, first_id);
    assert_eq!(oldest[0].created_at, day);
    assert_eq!(oldest[0].referrer.as_deref(), Some("https://example.org/"));
    assert_eq!(store.timeline(10, 2507).await.unwrap().len(), 0);

    let seen = store
        .visitors_since(day + Duration::hours(6))
        .await
        .unwrap();
    assert_eq!(seen, vec![(b, day + Duration::days(1))]);

    let minutes = store
        .events_per_minute(day, day + Duration::minutes(3))
        .await
        .unwrap();
    let minute = |m: i64| (day + Duration::minutes(m)).timestamp_millis();
    assert_eq!(
        minutes
            .iter()
            .map(|m| (m.minute_ms, m.count))
            .collect::<Vec<_>>(),
        vec![(minute(0), 1), (minute(1), 1), (minute(2), 1)]
    );

    // c moved on to /letters: c counts there, not on /cv.
    let pages = store
        .pages_since(day - Duration::hours(1), 10)
        .await
        .unwrap();
    let pages: Vec<_> = pages
        .iter()
        .map(|p| (p.page_url.as_str(), p.visitors, p.views))
        .collect();
    assert_eq!(pages, vec![("/cv", 2, 4), ("/letters", 1, 1)]);

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

    // Without maicivy's tables, its fallbacks are absent, not zero.
    assert_eq!(store.maicivy_visitors_since(day).await.unwrap(), None);
    assert_eq!(store.maicivy_letters_since(day).await.unwrap(), None);
    assert_eq!(store.session_visitor("some-session").await.unwrap(), None);
    store.ping().await.unwrap();
}

/// Themes, heatmap, letters and what the store does with values it must bound, on
/// a day of their own (ten days before `exercise`'s).
async fn exercise_maicivy_routes(store: &dyn EventStore) {
    let who = VisitorId::parse(&visitor()).unwrap();
    let day = Utc.with_ymd_and_hms(2025, 11, 28, 12, 0, 0).unwrap();
    let theme = |t: serde_json::Value| with_data("cv_theme_change", who, day, json!({"theme": t}));
    let click = |kind: &str, x: serde_json::Value, y: serde_json::Value, page: &str, at| {
        on_page(with_data(kind, who, at, json!({"x": x, "y": y})), page)
    };
    let letter = |t: Option<&str>, at| {
        with_data(
            "letter_generate",
            who,
            at,
            t.map_or(json!({}), |t| json!({"letter_type": t})),
        )
    };
    let mut events = vec![
        theme(json!("backend")),
        theme(json!("backend")),
        theme(json!("backend")),
        theme(json!("frontend")),
        theme(json!("devops")),
        theme(json!("Zeta")),
        theme(json!(5)),
        theme(json!(null)),
        with_data("page_view", who, day, json!({"theme": "backend"})),
    ];
    let recent = day - Duration::minutes(30);
    events.extend([
        click("button_click", json!(450), json!(200), "/cv", recent),
        click("link_click", json!(450), json!(200), "/cv", recent),
        click("button_click", json!(450.4), json!(199.6), "/cv", recent),
        click("button_click", json!(2.5), json!(0.5), "/cv", recent),
        click("button_click", json!(3.5), json!(-0.4), "/letters", recent),
        click("button_click", json!("450"), json!(200), "/cv", recent),
        click("page_view", json!(450), json!(200), "/cv", recent),
        on_page(
            with_data("button_click", who, recent, json!({"x": 1})),
            "/cv",
        ),
        click(
            "button_click",
            json!(450),
            json!(200),
            "/cv",
            day - Duration::hours(3),
        ),
    ]);
    // 18:29 UTC is 23:59 in India (UTC+5:30); 18:31 is the next day there.
    let evening = Utc.with_ymd_and_hms(2025, 11, 28, 18, 29, 0).unwrap();
    events.extend([
        letter(Some("motivation"), evening),
        letter(Some("anti_motivation"), evening),
        letter(Some("motivation"), evening + Duration::minutes(2)),
        letter(Some("something_else"), evening + Duration::minutes(2)),
        letter(None, evening + Duration::minutes(2)),
        letter(Some("motivation"), evening + Duration::hours(20)),
    ]);
    let mut long = with_data("page_view", who, day - Duration::days(1), json!({}));
    long.referrer = Some("é".repeat(600));
    long.page_url = Some(format!("/{}", "p".repeat(700)));
    events.push(long);
    store.insert_batch(&events).await.unwrap();

    let themes: Vec<_> = store
        .top_themes(10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.theme, t.views))
        .collect();
    let expected: Vec<(String, u64)> =
        [("backend", 3), ("Zeta", 1), ("devops", 1), ("frontend", 1)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
    assert_eq!(themes, expected, "ties in byte order, on both backends");
    assert_eq!(store.top_themes(2).await.unwrap().len(), 2);

    let cells = |v: Vec<maicivy_analytics::store::HeatCell>| {
        v.into_iter()
            .map(|c| (c.x, c.y, c.count))
            .collect::<Vec<_>>()
    };
    let since = day - Duration::hours(1);
    assert_eq!(
        cells(store.heatmap(since, None).await.unwrap()),
        vec![(450.0, 200.0, 3), (2.0, 0.0, 1), (4.0, 0.0, 1)]
    );
    assert_eq!(
        cells(store.heatmap(since, Some("/letters")).await.unwrap()),
        vec![(4.0, 0.0, 1)]
    );
    assert_eq!(
        cells(
            store
                .heatmap(day - Duration::hours(4), Some("/cv"))
                .await
                .unwrap()
        ),
        vec![(450.0, 200.0, 4), (2.0, 0.0, 1)]
    );

    let from = Utc.with_ymd_and_hms(2025, 11, 28, 0, 0, 0).unwrap();
    let to = from + Duration::days(2);
    let nov = |d| chrono::NaiveDate::from_ymd_opt(2025, 11, d).unwrap();
    let india = store
        .letters(from, to, chrono_tz::Asia::Kolkata)
        .await
        .unwrap();
    assert_eq!(
        india,
        Letters {
            motivation: 3,
            anti_motivation: 1,
            per_day: vec![(nov(28), 2), (nov(29), 4)],
        }
    );
    let utc = store.letters(from, to, chrono_tz::UTC).await.unwrap();
    assert_eq!(utc.per_day, vec![(nov(28), 5), (nov(29), 1)]);
    let none = store
        .letters(from, from + Duration::hours(18), chrono_tz::UTC)
        .await
        .unwrap();
    assert_eq!(none, Letters::default());

    let all = store.timeline(10_000, 0).await.unwrap();
    let long = all
        .iter()
        .find(|e| e.referrer.as_deref().is_some_and(|r| r.starts_with('é')))
        .expect("the event with a long referrer is stored");
    assert_eq!(long.referrer.as_ref().unwrap().chars().count(), 500);
    assert_eq!(long.page_url.as_ref().unwrap().chars().count(), 500);
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
    exercise_maicivy_routes(&*store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_store() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let store = store::connect(&db.url).await.unwrap();
    exercise(&*store).await;
    exercise_maicivy_routes(&*store).await;
    store.close().await;
}

#[tokio::test]
async fn in_memory_store() {
    let store = store::connect("sqlite::memory:").await.unwrap();
    exercise(&*store).await;
    exercise_maicivy_routes(&*store).await;
    store.close().await;
}

#[tokio::test]
async fn an_unsupported_database_url_is_a_clear_error() {
    let err = store::connect("mysql://localhost/x").await.err().unwrap();
    assert!(err.to_string().contains("sqlite://PATH"), "{err}");
}

#[tokio::test]
async fn the_server_on_postgres_keeps_figures_across_a_restart() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let server = TestServer::with(&["--database-url", &db.url]).await;
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

    let server = TestServer::with(&["--database-url", &db.url]).await;
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
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let server = TestServer::with(&["--database-url", &db.url]).await;
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

/// Whether another session sees the event: committed for real, not only
/// acknowledged.
async fn committed_pg(url: &str, id: uuid::Uuid) -> bool {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE id = $1::uuid")
        .bind(id.to_string())
        .fetch_one(&mut c)
        .await
        .unwrap();
    n == 1
}

/// A COMMIT that fails (here a deferred constraint trigger refuses one event type)
/// must not leave its connection in the pool: that connection is closed, and the
/// next batch commits for real. A statement that fails is rolled back, and the
/// next batch commits too.
#[tokio::test]
async fn a_failed_commit_on_postgres_closes_its_connection_and_later_batches_commit() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let store = store::connect(&db.url).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.event_type = 'refused_at_commit' OR NEW.event_type = 'refused_now' THEN
                 RAISE EXCEPTION 'refused by backend % here', pg_backend_pid();
             END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON analytics_events
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.event_type = 'refused_at_commit') EXECUTE FUNCTION refuse();
         CREATE TRIGGER refuse_now AFTER INSERT ON analytics_events
             FOR EACH ROW WHEN (NEW.event_type = 'refused_now') EXECUTE FUNCTION refuse();",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let who = VisitorId::parse(&visitor()).unwrap();
    let now = Utc::now();

    let refused = event("refused_at_commit", who, now);
    let err = store
        .insert_batch(std::slice::from_ref(&refused))
        .await
        .unwrap_err();
    let text = err.to_string();
    let pid: i32 = text
        .split("backend ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the trigger's error, with its backend: {text}"));
    // The store dropped the connection before answering; the server notices the
    // closed socket at once, but asynchronously.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection whose COMMIT failed is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let kept = event("page_view", who, now);
    store
        .insert_batch(std::slice::from_ref(&kept))
        .await
        .unwrap();
    assert!(committed_pg(&db.url, kept.id).await);
    assert!(!committed_pg(&db.url, refused.id).await);

    let refused = event("refused_now", who, now);
    assert!(
        store
            .insert_batch(std::slice::from_ref(&refused))
            .await
            .is_err()
    );
    let kept = event("page_view", who, now);
    store
        .insert_batch(std::slice::from_ref(&kept))
        .await
        .unwrap();
    assert!(committed_pg(&db.url, kept.id).await);
    assert!(!committed_pg(&db.url, refused.id).await);
    store.close().await;
}

/// SQLite keeps the transaction open when its COMMIT fails on a deferred foreign
/// key: the store must not hand that connection out again, or the next batch
/// would be a savepoint of a transaction that never commits. Here the deferred key
/// is on a `visitors` table (maicivy's columns), which the store writes first for
/// an unknown visitor.
#[tokio::test]
async fn a_failed_commit_on_sqlite_leaves_no_open_transaction_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("f.db").display());
    store::connect(&url).await.unwrap().close().await;
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .busy_timeout(std::time::Duration::from_millis(200));
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let known = VisitorId::parse(&visitor()).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE sessions (sid TEXT PRIMARY KEY);
         INSERT INTO sessions VALUES ('known-session');
         CREATE TABLE visitors (
             id TEXT PRIMARY KEY,
             session_id TEXT NOT NULL UNIQUE
                 REFERENCES sessions (sid) DEFERRABLE INITIALLY DEFERRED,
             visit_count INTEGER, first_visit TEXT NOT NULL, last_visit TEXT NOT NULL,
             created_at TEXT, updated_at TEXT, deleted_at TEXT);
         INSERT INTO visitors VALUES ('{known}', 'known-session', 1, '2025-12-08 00:00:00.000000',
             '2025-12-08 00:00:00.000000', '2025-12-08 00:00:00.000000',
             '2025-12-08 00:00:00.000000', NULL);"
    )))
    .execute(&mut other)
    .await
    .unwrap();
    let store = store::connect(&url).await.unwrap();
    assert_eq!(
        store.session_visitor("known-session").await.unwrap(),
        Some(known),
        "the store found the visitors table"
    );

    // An unknown visitor's row breaks the deferred key: the COMMIT fails.
    let stranger = VisitorId::parse(&visitor()).unwrap();
    let now = Utc::now();
    assert!(
        store
            .insert_batch(&[event("page_view", stranger, now)])
            .await
            .is_err()
    );
    let kept = event("page_view", known, now);
    store
        .insert_batch(std::slice::from_ref(&kept))
        .await
        .unwrap();

    // Another connection sees the event, and can write: no transaction of the
    // store's holds the file.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM analytics_events WHERE id = $1")
        .bind(kept.id.to_string())
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(n, 1, "the batch after the failure committed for real");
    let strangers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM visitors WHERE id = $1")
        .bind(stranger.to_string())
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(strangers, 0);
    sqlx::query("INSERT INTO sessions VALUES ('another')")
        .execute(&mut other)
        .await
        .expect("the file is not locked by a transaction left open");
    store.close().await;
}
