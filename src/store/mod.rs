//! The event store: where every ingested event is kept, and what the read routes
//! query.
//!
//! **Architecture Invariant:** nothing outside this module writes SQL. The rest of the
//! server sees the `EventStore` trait and the domain types.
//!
//! The layout is maicivy's `analytics_events` table (CONTRACT.md, "Sharing maicivy's
//! PostgreSQL database"), so that this server and maicivy's Go backend can share one
//! PostgreSQL database and read each other's rows; a SQLite file holds the same
//! columns. Where maicivy's `visitors` and `generated_letters` tables exist (found once
//! at connect), the store also writes the one and reads both.
//!
//! One type per backend (`SqliteStore`, `PgStore`), each owning its connection setup
//! and its migrations (`migrations/sqlite`, `migrations/postgres_maicivy`). The queries
//! are written once, in `sql_store_impl!`, and expanded for each concrete pool type
//! (concrete types keep sqlx's trait bounds out of sight); the few fragments where the
//! two SQL dialects differ (casts, JSON, time formatting) come from each backend's
//! dialect macro (`sqlite_sql!`, `pg_sql!`).
//!
//! Times and UUIDs cross the driver as text (`TIME_FORMAT`, hyphenated UUIDs): one
//! Rust path for both backends, and no dependency on sqlx's chrono/uuid features.

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{NewEvent, StoredEvent, VisitorId};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Why the store could not answer. Its text is for the log, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported database URL {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://…"
    )]
    UnsupportedUrl(String),
}

/// Counts over a time range, for the `stats` route and for rebuilding today's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub total_events: u64,
    pub letters_generated: u64,
    pub unique_visitors: u64,
}

/// Events of one minute, for the dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCount {
    /// Unix milliseconds of the minute's start (UTC minutes).
    pub minute_ms: i64,
    pub count: u64,
}

/// A page being viewed now, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PageNow {
    pub page_url: String,
    /// Visitors whose latest `page_view` in the window is this page: who is on it now.
    pub visitors: u64,
    /// `page_view` events of this page in the window.
    pub views: u64,
}

/// Views of one CV theme (`cv_theme_change` events whose `event_data.theme` is a
/// string), for the `themes` route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThemeViews {
    pub theme: String,
    pub views: u64,
}

/// Clicks at one rounded position, for the `heatmap` route.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeatCell {
    /// `event_data.x` and `.y` rounded to whole numbers (half to even, as maicivy's
    /// `%.0f`).
    pub x: f64,
    pub y: f64,
    pub count: u64,
}

/// The letters of a period, for the `letters` route: from maicivy's
/// `generated_letters` rows where that table exists, otherwise from the
/// `letter_generate` events' `event_data.letter_type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Letters {
    pub motivation: u64,
    pub anti_motivation: u64,
    /// Letters per local calendar day (in the `tz` asked for), oldest first; days
    /// without letters are left out.
    pub per_day: Vec<(NaiveDate, u64)>,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores the events in one transaction: all or none. Where maicivy's `visitors`
    /// table exists, a visitor it does not know gets a row there first (its
    /// `session_id` is `maicivy-analytics:<visitor id>`), in the same transaction.
    async fn insert_batch(&self, events: &[NewEvent]) -> Result<(), StoreError>;

    /// Newest first.
    async fn timeline(&self, limit: u32, offset: u64) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events with `from <= created_at < to`.
    async fn summary(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Summary, StoreError>;

    /// Events per minute with `from <= created_at < to`, oldest first; minutes
    /// without events are left out.
    async fn events_per_minute(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteCount>, StoreError>;

    /// The pages of the `page_view` events since `from`, the most visitors first,
    /// at most `limit` of them.
    async fn pages_since(
        &self,
        from: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PageNow>, StoreError>;

    /// Every visitor seen since `from`, with the time they were last seen.
    async fn visitors_since(
        &self,
        from: DateTime<Utc>,
    ) -> Result<Vec<(VisitorId, DateTime<Utc>)>, StoreError>;

    /// The secret salt of `day` for cookieless visitor ids, created on first use.
    /// Salts of earlier days are deleted.
    async fn daily_salt(&self, day: NaiveDate) -> Result<Vec<u8>, StoreError>;

    /// The most viewed CV themes of all time, most views first, at most `limit`.
    async fn top_themes(&self, limit: u32) -> Result<Vec<ThemeViews>, StoreError>;

    /// `button_click` and `link_click` events since `from` whose `event_data` has
    /// numeric `x` and `y`, counted per rounded position; only those of `page_url`
    /// when it is given. The most clicks first.
    async fn heatmap(
        &self,
        from: DateTime<Utc>,
        page_url: Option<&str>,
    ) -> Result<Vec<HeatCell>, StoreError>;

    /// The letters with `from <= created_at < to`, days counted in `tz`.
    async fn letters(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Result<Letters, StoreError>;

    /// Rows of maicivy's `visitors` table created since `from` (deleted ones left
    /// out); `None` when that table does not exist. Go's fallback for a zero unique
    /// count.
    async fn maicivy_visitors_since(&self, from: DateTime<Utc>) -> Result<Option<u64>, StoreError>;

    /// Rows of maicivy's `generated_letters` created since `from` (deleted ones left
    /// out); `None` when that table does not exist. Go's fallback for zero letters.
    async fn maicivy_letters_since(&self, from: DateTime<Utc>) -> Result<Option<u64>, StoreError>;

    /// The visitor maicivy knows for the `maicivy_session` cookie `session_id`
    /// (`visitors.session_id`, not deleted); `None` when it knows none or has no
    /// `visitors` table.
    async fn session_visitor(&self, session_id: &str) -> Result<Option<VisitorId>, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the pool once every write has finished.
    async fn close(&self);
}

/// Opens (and migrates) the store that `url` names.
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Which of maicivy's tables this database has, found once at connect. A table
/// counts only when it has every column the store uses (`VISITORS_COLUMNS`,
/// `LETTERS_COLUMNS`): someone else's `visitors` table would otherwise make every
/// batch fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MaicivyTables {
    pub visitors: bool,
    pub generated_letters: bool,
}

const VISITORS_COLUMNS: [&str; 8] = [
    "id",
    "session_id",
    "visit_count",
    "first_visit",
    "last_visit",
    "created_at",
    "updated_at",
    "deleted_at",
];
const LETTERS_COLUMNS: [&str; 4] = ["id", "letter_type", "created_at", "deleted_at"];

impl MaicivyTables {
    /// From the column names of `visitors` and `generated_letters` (none for a
    /// table that does not exist).
    fn from_columns(visitors: &[String], letters: &[String]) -> Self {
        let complete = |table: &str, have: &[String], need: &[&str]| {
            let missing: Vec<&str> = need
                .iter()
                .copied()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            if !have.is_empty() && !missing.is_empty() {
                tracing::warn!(
                    table,
                    ?missing,
                    "a table of this name exists but is not maicivy's; it is left alone"
                );
            }
            !have.is_empty() && missing.is_empty()
        };
        let tables = Self {
            visitors: complete("visitors", visitors, &VISITORS_COLUMNS),
            generated_letters: complete("generated_letters", letters, &LETTERS_COLUMNS),
        };
        tracing::info!(
            visitors = tables.visitors,
            generated_letters = tables.generated_letters,
            "maicivy's tables found"
        );
        tables
    }
}

/// The one text form of a time in the database, in UTC: fixed width, so that on
/// SQLite (where times are TEXT) comparing texts is comparing times, and what
/// PostgreSQL's `to_char(…, 'YYYY-MM-DD HH24:MI:SS.US')` gives back. Microseconds, as
/// PostgreSQL's `TIMESTAMP` keeps.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

fn time_to_sql(at: DateTime<Utc>) -> String {
    at.format(TIME_FORMAT).to_string()
}

fn decode_error(what: &str, raw: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: unexpected value {raw:?}").into())
}

fn time_from_sql(raw: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| decode_error("a time", raw))
}

/// A minute bucket (`YYYY-MM-DD HH:MM`, UTC) as the dialects' `minute_text` give it.
fn minute_from_sql(raw: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M")
        .map(|t| t.and_utc())
        .map_err(|_| decode_error("a minute", raw))
}

fn uuid_from_sql(raw: &str) -> Result<uuid::Uuid, sqlx::Error> {
    uuid::Uuid::parse_str(raw).map_err(|_| decode_error("a UUID", raw))
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

/// maicivy's `VARCHAR(500)` columns refuse a longer value, and one refused value
/// would fail the whole batch; cut on a character boundary, as the column counts
/// characters.
const MAX_URL_CHARS: usize = 500;

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The `visitors.session_id` of a visitor this server adds: a prefix that no
/// browser session of maicivy's can carry, so no cookie ever maps to it.
fn session_id_for(visitor: VisitorId) -> String {
    format!("maicivy-analytics:{visitor}")
}

/// One `visitors` row per distinct visitor of a batch, with the times of their first
/// and last event. Sorted by id: concurrent writers (several instances) that insert
/// the same new visitors then take their row locks in one order and cannot deadlock.
fn batch_visitors(events: &[NewEvent]) -> Vec<(VisitorId, DateTime<Utc>, DateTime<Utc>)> {
    let mut seen: std::collections::BTreeMap<VisitorId, (DateTime<Utc>, DateTime<Utc>)> =
        std::collections::BTreeMap::new();
    for e in events {
        seen.entry(e.visitor_id)
            .and_modify(|(first, last)| {
                *first = (*first).min(e.occurred_at);
                *last = (*last).max(e.occurred_at);
            })
            .or_insert((e.occurred_at, e.occurred_at));
    }
    seen.into_iter()
        .map(|(id, (first, last))| (id, first, last))
        .collect()
}

/// Rounds the raw `x`/`y` groups of the heatmap query and merges those that round
/// to the same cell. Values that are not finite numbers are left out.
fn heat_cells(rows: Vec<(Option<String>, Option<String>, i64)>) -> Vec<HeatCell> {
    fn round(raw: Option<&str>) -> Option<f64> {
        let v: f64 = raw?.trim().parse().ok()?;
        // `+ 0.0` turns -0 into 0, so that -0.4 and 0.4 share a cell.
        v.is_finite().then(|| v.round_ties_even() + 0.0)
    }
    let mut cells: std::collections::HashMap<(u64, u64), HeatCell> =
        std::collections::HashMap::new();
    for (x, y, n) in rows {
        let (Some(x), Some(y)) = (round(x.as_deref()), round(y.as_deref())) else {
            continue;
        };
        cells
            .entry((x.to_bits(), y.to_bits()))
            .or_insert(HeatCell { x, y, count: 0 })
            .count += count(n);
    }
    let mut cells: Vec<HeatCell> = cells.into_values().collect();
    cells.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.x.total_cmp(&b.x))
            .then(a.y.total_cmp(&b.y))
    });
    cells
}

/// Folds the per-minute letter counts of the letters query into `Letters`. The
/// query groups by UTC minute, not by day, because a local day starts at a UTC
/// minute that need not be a whole hour (India is UTC+5:30, Nepal +5:45), and only
/// Rust knows `tz`.
fn letters_by_day(
    rows: Vec<(String, i64, i64, i64)>,
    tz: chrono_tz::Tz,
) -> Result<Letters, sqlx::Error> {
    let mut letters = Letters::default();
    let mut days: std::collections::BTreeMap<NaiveDate, u64> = std::collections::BTreeMap::new();
    for (minute, total, motivation, anti) in rows {
        let day = minute_from_sql(&minute)?.with_timezone(&tz).date_naive();
        *days.entry(day).or_default() += count(total);
        letters.motivation += count(motivation);
        letters.anti_motivation += count(anti);
    }
    letters.per_day = days.into_iter().collect();
    Ok(letters)
}

fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 32];
    rand::fill(&mut salt[..]);
    salt
}

/// The queries, written once for both backends (`$N` placeholders work in both).
/// `$d` names the backend's dialect macro, which expands to string literals:
/// - `$d!(uuid)`, `$d!(time)`: the type a bound text is cast to before it meets a
///   UUID or time column (PostgreSQL has no implicit cast from text);
/// - `$d!(time_text "expr")`: a time expression as `TIME_FORMAT` text in UTC;
/// - `$d!(minute_text "expr")`: its UTC minute, `YYYY-MM-DD HH:MM`;
/// - `$d!(json_text "key")`: `event_data.key` as SQL text (a JSON string unquoted);
/// - `$d!(json_is_string "key")`, `$d!(json_is_number "key")`: the JSON type tests;
/// - `$d!(json_raw "key")`: the JSON text of `event_data.key`;
/// - `$d!(binary_order)`: a collation that orders text by bytes on both backends;
/// - `$d!(columns_of_table)`: a query listing the columns of table `$1`.
///
/// The store type has `pool`, `tables: MaicivyTables` and
/// `discard_failed_connections: bool`.
macro_rules! sql_store_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            /// Finds maicivy's tables (see `MaicivyTables`).
            async fn find_maicivy_tables(
                pool: &sqlx::Pool<$db>,
            ) -> Result<$crate::store::MaicivyTables, $crate::store::StoreError> {
                let mut columns = Vec::with_capacity(2);
                for table in ["visitors", "generated_letters"] {
                    let names: Vec<String> = sqlx::query_scalar($d!(columns_of_table))
                        .bind(table)
                        .fetch_all(pool)
                        .await?;
                    columns.push(names);
                }
                Ok($crate::store::MaicivyTables::from_columns(
                    &columns[0],
                    &columns[1],
                ))
            }

            /// The statements of one batch, inside the caller's transaction.
            async fn write_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                events: &[$crate::domain::NewEvent],
            ) -> Result<(), sqlx::Error> {
                use $crate::store::{MAX_URL_CHARS, time_to_sql, truncate_chars};
                // Bind parameters are limited per statement (SQLite: 32,766,
                // PostgreSQL: 65,535), so large batches go in chunks, still inside
                // the one transaction.
                const CHUNK: usize = 1000;
                if self.tables.visitors {
                    // maicivy's `analytics_events.visitor_id` references `visitors`:
                    // a visitor it does not know gets a row first.
                    let visitors = $crate::store::batch_visitors(events);
                    for chunk in visitors.chunks(CHUNK) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO visitors (id, session_id, visit_count, first_visit, \
                             last_visit, created_at, updated_at) ",
                        );
                        q.push_values(chunk, |mut row, (id, first, last)| {
                            row.push("CAST(")
                                .push_bind_unseparated(id.to_string())
                                .push_unseparated(concat!(" AS ", $d!(uuid), ")"))
                                .push_bind($crate::store::session_id_for(*id))
                                .push("1");
                            for at in [first, last, first, last] {
                                row.push("CAST(")
                                    .push_bind_unseparated(time_to_sql(*at))
                                    .push_unseparated(concat!(" AS ", $d!(time), ")"));
                            }
                        });
                        q.push(" ON CONFLICT DO NOTHING");
                        q.build().execute(&mut *conn).await?;
                    }
                }
                for chunk in events.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO analytics_events (id, visitor_id, event_type, event_data, \
                         page_url, referrer, session_duration, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, e| {
                        for id in [e.id, e.visitor_id.as_uuid()] {
                            row.push("CAST(")
                                .push_bind_unseparated(id.hyphenated().to_string())
                                .push_unseparated(concat!(" AS ", $d!(uuid), ")"));
                        }
                        row.push_bind(e.event_type.as_str())
                            .push_bind(sqlx::types::Json(&e.event_data))
                            .push_bind(
                                e.page_url.as_deref().map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            )
                            .push_bind(
                                e.referrer.as_deref().map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            )
                            .push("0");
                        for _ in 0..2 {
                            row.push("CAST(")
                                .push_bind_unseparated(time_to_sql(e.occurred_at))
                                .push_unseparated(concat!(" AS ", $d!(time), ")"));
                        }
                    });
                    // Idempotent per event id: when a COMMIT's outcome is unknown (the
                    // connection broke during it) and the caller stores the same events
                    // again, those already there are neither an error nor a duplicate.
                    q.push(" ON CONFLICT (id) DO NOTHING");
                    q.build().execute(&mut *conn).await?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::EventStore for $store {
            async fn insert_batch(
                &self,
                events: &[$crate::domain::NewEvent],
            ) -> Result<(), $crate::store::StoreError> {
                use sqlx::Connection as _;
                if events.is_empty() {
                    return Ok(());
                }
                let mut conn = self.pool.acquire().await?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let written = self.write_batch(&mut tx, events).await;
                // `clean`: whether the connection is known to be outside any
                // transaction now. A connection that goes back to the pool inside an
                // open transaction (a COMMIT or ROLLBACK that failed, or sqlx's
                // transaction depth out of step with the server's) turns every later
                // batch into a savepoint of a transaction that never commits: they
                // would be acknowledged and then lost. Such a connection is closed
                // instead; the pool opens a fresh one.
                let (result, clean) = match written {
                    Ok(()) => match tx.commit().await {
                        Ok(()) => (Ok(()), true),
                        // A failed COMMIT may leave the transaction open (SQLite keeps
                        // it after a deferred constraint fails) or not (PostgreSQL
                        // ends it); the connection cannot tell us which.
                        Err(e) => (Err(e), false),
                    },
                    Err(e) => {
                        let rolled_back = tx.rollback().await.is_ok();
                        (Err(e), rolled_back)
                    }
                };
                if let Err(e) = result {
                    if !(clean && !conn.is_in_transaction()) {
                        if self.discard_failed_connections {
                            tracing::warn!("closing a database connection whose transaction failed");
                            // Dropping the detached connection closes it at once: a
                            // graceful close could wait on a broken server.
                            drop(conn.detach());
                        } else {
                            tracing::error!(
                                "a transaction failed on the only connection of an in-memory \
                                 database, which cannot be closed without losing the data"
                            );
                        }
                    }
                    return Err(e.into());
                }
                Ok(())
            }

            async fn timeline(
                &self,
                limit: u32,
                offset: u64,
            ) -> Result<Vec<$crate::domain::StoredEvent>, $crate::store::StoreError> {
                use $crate::store::{time_from_sql, uuid_from_sql};
                type Row = (
                    String,
                    String,
                    String,
                    Option<sqlx::types::Json<serde_json::Value>>,
                    Option<String>,
                    Option<String>,
                    String,
                );
                let rows: Vec<Row> = sqlx::query_as(concat!(
                    "SELECT CAST(id AS TEXT), CAST(visitor_id AS TEXT), event_type, event_data, \
                     page_url, referrer, ",
                    $d!(time_text "created_at"),
                    " FROM analytics_events WHERE deleted_at IS NULL \
                     ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                ))
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                let mut events = Vec::with_capacity(rows.len());
                for (id, visitor_id, event_type, data, page_url, referrer, at) in rows {
                    events.push($crate::domain::StoredEvent {
                        id: uuid_from_sql(&id)?,
                        visitor_id,
                        event_type,
                        // maicivy's column is nullable; an event without data reads
                        // as the empty object an ingested one gets.
                        event_data: match data {
                            None | Some(sqlx::types::Json(serde_json::Value::Null)) => {
                                serde_json::Value::Object(Default::default())
                            }
                            Some(sqlx::types::Json(v)) => v,
                        },
                        page_url,
                        referrer,
                        created_at: time_from_sql(&at)?,
                    });
                }
                Ok(events)
            }

            async fn summary(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Summary, $crate::store::StoreError> {
                use $crate::store::{count, time_to_sql};
                let (total, letters, unique): (i64, i64, i64) = sqlx::query_as(concat!(
                    "SELECT COUNT(*), \
                     COALESCE(SUM(CASE WHEN event_type = 'letter_generate' THEN 1 ELSE 0 END), 0), \
                     COUNT(DISTINCT visitor_id) \
                     FROM analytics_events WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND created_at < CAST($2 AS ",
                    $d!(time),
                    ")"
                ))
                .bind(time_to_sql(from))
                .bind(time_to_sql(to))
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::store::Summary {
                    total_events: count(total),
                    letters_generated: count(letters),
                    unique_visitors: count(unique),
                })
            }

            async fn events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                use $crate::store::{count, minute_from_sql, time_to_sql};
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT ",
                    $d!(minute_text "created_at"),
                    ", COUNT(*) FROM analytics_events WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND created_at < CAST($2 AS ",
                    $d!(time),
                    ") GROUP BY 1 ORDER BY 1"
                ))
                .bind(time_to_sql(from))
                .bind(time_to_sql(to))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(minute, n)| {
                        Ok($crate::store::MinuteCount {
                            minute_ms: minute_from_sql(&minute)?.timestamp_millis(),
                            count: count(n),
                        })
                    })
                    .collect()
            }

            async fn pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                use $crate::store::{count, time_to_sql};
                // `rn = 1`: each visitor's latest page_view in the window (by time,
                // then id, so that a tie still names one page), so a visitor who
                // moved on counts on the new page.
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(concat!(
                    "SELECT page_url, SUM(CASE WHEN rn = 1 THEN 1 ELSE 0 END) AS visitors, \
                     COUNT(*) AS views FROM (\
                       SELECT page_url, ROW_NUMBER() OVER (PARTITION BY visitor_id \
                         ORDER BY created_at DESC, id DESC) AS rn \
                       FROM analytics_events WHERE event_type = 'page_view' \
                       AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ")) v WHERE page_url IS NOT NULL GROUP BY page_url \
                     ORDER BY visitors DESC, views DESC, page_url",
                    $d!(binary_order),
                    " LIMIT $2"
                ))
                .bind(time_to_sql(from))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(page_url, visitors, views)| $crate::store::PageNow {
                        page_url,
                        visitors: count(visitors),
                        views: count(views),
                    })
                    .collect())
            }

            async fn visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                use $crate::store::{time_from_sql, time_to_sql, uuid_from_sql};
                let rows: Vec<(String, String)> = sqlx::query_as(concat!(
                    "SELECT CAST(visitor_id AS TEXT), ",
                    $d!(time_text "MAX(created_at)"),
                    " FROM analytics_events WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") GROUP BY visitor_id"
                ))
                .bind(time_to_sql(from))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id, at)| {
                        Ok((
                            $crate::domain::VisitorId::from_uuid(uuid_from_sql(&id)?),
                            time_from_sql(&at)?,
                        ))
                    })
                    .collect()
            }

            async fn daily_salt(
                &self,
                day: chrono::NaiveDate,
            ) -> Result<Vec<u8>, $crate::store::StoreError> {
                let day = day.format("%Y-%m-%d").to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM visitor_salts WHERE day < $1")
                    .bind(&day)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO visitor_salts (day, salt) VALUES ($1, $2) \
                     ON CONFLICT (day) DO NOTHING",
                )
                .bind(&day)
                .bind($crate::store::new_salt())
                .execute(&mut *tx)
                .await?;
                let (salt,): (Vec<u8>,) =
                    sqlx::query_as("SELECT salt FROM visitor_salts WHERE day = $1")
                        .bind(&day)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(salt)
            }

            async fn top_themes(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::ThemeViews>, $crate::store::StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT theme, views FROM (SELECT ",
                    $d!(json_text "theme"),
                    " AS theme, COUNT(*) AS views FROM analytics_events \
                     WHERE event_type = 'cv_theme_change' AND deleted_at IS NULL AND ",
                    $d!(json_is_string "theme"),
                    " GROUP BY 1) t ORDER BY views DESC, theme",
                    $d!(binary_order),
                    " LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(theme, views)| $crate::store::ThemeViews {
                        theme,
                        views: $crate::store::count(views),
                    })
                    .collect())
            }

            async fn heatmap(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                page_url: Option<&str>,
            ) -> Result<Vec<$crate::store::HeatCell>, $crate::store::StoreError> {
                // Grouped by the raw JSON numbers (few distinct positions, whatever
                // the number of clicks); rounding and merging is Rust's, so that it
                // is half-to-even on both backends.
                let rows: Vec<(Option<String>, Option<String>, i64)> =
                    sqlx::query_as(concat!(
                        "SELECT ",
                        $d!(json_raw "x"),
                        ", ",
                        $d!(json_raw "y"),
                        ", COUNT(*) FROM analytics_events \
                         WHERE event_type IN ('button_click', 'link_click') \
                         AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND ($2 IS NULL OR page_url = $2) AND ",
                        $d!(json_is_number "x"),
                        " AND ",
                        $d!(json_is_number "y"),
                        " GROUP BY 1, 2"
                    ))
                    .bind($crate::store::time_to_sql(from))
                    .bind(page_url)
                    .fetch_all(&self.pool)
                    .await?;
                Ok($crate::store::heat_cells(rows))
            }

            async fn letters(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
                tz: chrono_tz::Tz,
            ) -> Result<$crate::store::Letters, $crate::store::StoreError> {
                let sql = if self.tables.generated_letters {
                    concat!(
                        "SELECT ",
                        $d!(minute_text "created_at"),
                        ", COUNT(*), \
                         SUM(CASE WHEN letter_type = 'motivation' THEN 1 ELSE 0 END), \
                         SUM(CASE WHEN letter_type = 'anti_motivation' THEN 1 ELSE 0 END) \
                         FROM generated_letters WHERE deleted_at IS NULL \
                         AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY 1"
                    )
                } else {
                    concat!(
                        "SELECT ",
                        $d!(minute_text "created_at"),
                        ", COUNT(*), SUM(CASE WHEN ",
                        $d!(json_text "letter_type"),
                        " = 'motivation' THEN 1 ELSE 0 END), SUM(CASE WHEN ",
                        $d!(json_text "letter_type"),
                        " = 'anti_motivation' THEN 1 ELSE 0 END) \
                         FROM analytics_events WHERE event_type = 'letter_generate' \
                         AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY 1"
                    )
                };
                let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sql)
                    .bind($crate::store::time_to_sql(from))
                    .bind($crate::store::time_to_sql(to))
                    .fetch_all(&self.pool)
                    .await?;
                Ok($crate::store::letters_by_day(rows, tz)?)
            }

            async fn maicivy_visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                if !self.tables.visitors {
                    return Ok(None);
                }
                let n: i64 = sqlx::query_scalar(concat!(
                    "SELECT COUNT(*) FROM visitors WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ")"
                ))
                .bind($crate::store::time_to_sql(from))
                .fetch_one(&self.pool)
                .await?;
                Ok(Some($crate::store::count(n)))
            }

            async fn maicivy_letters_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                if !self.tables.generated_letters {
                    return Ok(None);
                }
                let n: i64 = sqlx::query_scalar(concat!(
                    "SELECT COUNT(*) FROM generated_letters WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ")"
                ))
                .bind($crate::store::time_to_sql(from))
                .fetch_one(&self.pool)
                .await?;
                Ok(Some($crate::store::count(n)))
            }

            async fn session_visitor(
                &self,
                session_id: &str,
            ) -> Result<Option<$crate::domain::VisitorId>, $crate::store::StoreError> {
                if !self.tables.visitors {
                    return Ok(None);
                }
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT CAST(id AS TEXT) FROM visitors \
                     WHERE session_id = $1 AND deleted_at IS NULL LIMIT 1",
                )
                .bind(session_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match id {
                    Some(id) => Some($crate::domain::VisitorId::from_uuid(
                        $crate::store::uuid_from_sql(&id)?,
                    )),
                    None => None,
                })
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }
    };
}
pub(crate) use sql_store_impl;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_have_one_fixed_width_text_that_sorts_as_time() {
        let at = Utc
            .with_ymd_and_hms(2025, 12, 8, 9, 5, 7)
            .unwrap()
            .checked_add_signed(chrono::Duration::nanoseconds(123_456_789))
            .unwrap();
        assert_eq!(time_to_sql(at), "2025-12-08 09:05:07.123456");
        assert_eq!(
            time_from_sql("2025-12-08 09:05:07.123456").unwrap(),
            at - chrono::Duration::nanoseconds(789)
        );
        let whole = Utc.with_ymd_and_hms(2025, 12, 8, 9, 5, 7).unwrap();
        assert_eq!(time_to_sql(whole), "2025-12-08 09:05:07.000000");
        assert!(time_to_sql(whole) < time_to_sql(at));
        assert!(time_from_sql("yesterday").is_err());
        assert_eq!(
            minute_from_sql("2025-12-08 09:05").unwrap(),
            Utc.with_ymd_and_hms(2025, 12, 8, 9, 5, 0).unwrap()
        );
    }

    #[test]
    fn urls_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abcdef", 3), "abc");
        let long = "é".repeat(600);
        let cut = truncate_chars(&long, MAX_URL_CHARS);
        assert_eq!(cut.chars().count(), 500);
        assert_eq!(cut.len(), 1000);
    }

    #[test]
    fn heat_cells_round_half_to_even_and_merge() {
        let raw = |x: &str, y: &str, n| (Some(x.to_owned()), Some(y.to_owned()), n);
        let cells = heat_cells(vec![
            raw("450", "200", 2),
            raw("450.4", "199.6", 1),
            raw("2.5", "0.5", 1),
            raw("3.5", "-0.4", 1),
            raw("1e400", "1", 9),
            raw("not a number", "1", 9),
            (None, Some("1".into()), 9),
        ]);
        let got: Vec<(f64, f64, u64)> = cells.iter().map(|c| (c.x, c.y, c.count)).collect();
        assert_eq!(got, vec![(450.0, 200.0, 3), (2.0, 0.0, 1), (4.0, 0.0, 1)]);
        assert!(cells.iter().all(|c| c.y.is_sign_positive()), "-0 is 0");
    }

    #[test]
    fn letters_are_counted_per_local_day_even_at_half_hour_offsets() {
        // 18:29 UTC is 23:59 in India (UTC+5:30), 18:31 is 00:01 the next day.
        let rows = vec![
            ("2025-12-08 18:29".to_owned(), 2, 1, 1),
            ("2025-12-08 18:31".to_owned(), 3, 2, 0),
            ("2025-12-09 03:00".to_owned(), 1, 0, 1),
        ];
        let india = letters_by_day(rows.clone(), chrono_tz::Asia::Kolkata).unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2025, 12, d).unwrap();
        assert_eq!(
            india,
            Letters {
                motivation: 3,
                anti_motivation: 2,
                per_day: vec![(day(8), 2), (day(9), 4)],
            }
        );
        let utc = letters_by_day(rows, chrono_tz::UTC).unwrap();
        assert_eq!(utc.per_day, vec![(day(8), 5), (day(9), 1)]);
    }

    #[test]
    fn batch_visitors_are_distinct_sorted_and_span_their_events() {
        let t = |s| Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, s).unwrap();
        let a = VisitorId::from_uuid(uuid::Uuid::from_u128(2));
        let b = VisitorId::from_uuid(uuid::Uuid::from_u128(1));
        let e = |who, at| NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: crate::domain::EventType::parse("page_view").unwrap(),
            visitor_id: who,
            event_data: Default::default(),
            page_url: None,
            referrer: None,
            occurred_at: at,
        };
        let rows = batch_visitors(&[e(a, t(5)), e(b, t(3)), e(a, t(1)), e(a, t(9))]);
        assert_eq!(rows, vec![(b, t(3), t(3)), (a, t(1), t(9))]);
        assert_eq!(
            session_id_for(a),
            "maicivy-analytics:00000000-0000-0000-0000-000000000002"
        );
    }
}
