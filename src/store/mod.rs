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

pub(crate) mod aggregates;
mod maintenance;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{NewEvent, StoredEvent, VisitorId};

pub use maintenance::Maintenance;
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

    /// Newest first, after `before` (the last event of the previous page, see
    /// `TimelineCursor`) when it is given: an index range, as cheap at any depth;
    /// `offset` skips that many more.
    async fn timeline_before(
        &self,
        limit: u32,
        offset: u64,
        before: Option<TimelineCursor>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match before {
            None => self.timeline(limit, offset).await,
            Some(_) => Ok(Vec::new()),
        }
    }

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

    /// One step of the fold: folds into the aggregates a chunk of the rows the
    /// writer did not count (those stored before the aggregates existed, maicivy's
    /// own rows on a shared PostgreSQL database). Resumable: its position is
    /// committed with what it folded.
    async fn fold_step(&self) -> Result<FoldProgress, StoreError> {
        Ok(FoldProgress {
            folded: 0,
            total_folded: 0,
            caught_up: true,
            continuous: false,
        })
    }

    /// One step of retention: deletes at most `batch` events created before
    /// `cutoff` (or, when none is left, prunes a chunk of the short-window
    /// aggregates); the number of rows deleted, 0 when there is nothing to do. Does
    /// nothing until the aggregates are ready: the figures of what it deletes must
    /// be in them.
    async fn retention_step(&self, _cutoff: DateTime<Utc>, _batch: u32) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Whether the read routes are answered from the aggregates (the backfill is
    /// done); until then they query the events.
    fn aggregates_ready(&self) -> bool {
        false
    }

    /// The time zone whose local days the aggregates count.
    fn timezone(&self) -> chrono_tz::Tz {
        chrono_tz::UTC
    }

    /// With `true`, every route queries the events as before the aggregates
    /// existed: what the tests and the benchmark compare the aggregates with.
    fn set_raw_reads(&self, _raw: bool) {}

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the pool once every write has finished.
    async fn close(&self);
}

/// Opens (and migrates) the store that `url` names, its aggregates in the time zone
/// they were built for (UTC for a new store).
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    open(url, None).await
}

/// Opens (and migrates) the store that `url` names, its aggregates counting the
/// days of `tz`: aggregates built for another zone are rebuilt (in the background,
/// the routes querying the events meanwhile).
pub async fn connect_in(url: &str, tz: chrono_tz::Tz) -> Result<Arc<dyn EventStore>, StoreError> {
    open(url, Some(tz)).await
}

async fn open(url: &str, tz: Option<chrono_tz::Tz>) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, tz).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url, tz).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Where a timeline page ended: its last event's time and id. Opaque to clients
/// (`meta.next`, then `before=`): `<Unix microseconds>.<id in hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineCursor {
    pub at: DateTime<Utc>,
    pub id: uuid::Uuid,
}

impl TimelineCursor {
    pub fn after(event: &StoredEvent) -> Self {
        Self {
            at: event.created_at,
            id: event.id,
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.id.simple())
    }

    /// `None` for anything `encode` did not make.
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.trim().split_once('.')?;
        if id.len() != 32 {
            return None;
        }
        Some(Self {
            at: DateTime::from_timestamp_micros(at.parse().ok()?)?,
            id: uuid::Uuid::try_parse(id).ok()?,
        })
    }
}

/// What one `fold_step` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldProgress {
    /// Rows folded by this step.
    pub folded: u64,
    /// Rows folded since the aggregates were (re)built.
    pub total_folded: u64,
    /// Nothing is left to fold for now: the routes read the aggregates.
    pub caught_up: bool,
    /// More rows may come that the writer does not count (PostgreSQL, which
    /// maicivy's Go backend writes too): keep folding now and then.
    pub continuous: bool,
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
                let tables =
                    $crate::store::MaicivyTables::from_columns(&columns[0], &columns[1]);
                if tables.generated_letters {
                    // The letters route reads a range of them: an index range.
                    sqlx::query(
                        "CREATE INDEX IF NOT EXISTS maicivy_analytics_generated_letters_created_at \
                         ON generated_letters (created_at)",
                    )
                    .execute(pool)
                    .await?;
                }
                Ok(tables)
            }

            /// Reads `agg_state` and records the time zone: the one recorded when
            /// `tz` is `None` (UTC for a new store); a zone other than the recorded
            /// one wipes the aggregates and starts their backfill again (their days
            /// were another zone's).
            async fn init_aggregates(
                pool: &sqlx::Pool<$db>,
                tz: Option<chrono_tz::Tz>,
            ) -> Result<$crate::store::aggregates::AggConfig, $crate::store::StoreError> {
                let (recorded, ready): (Option<String>, i64) =
                    sqlx::query_as("SELECT timezone, ready FROM agg_state WHERE id = 1")
                        .fetch_one(pool)
                        .await?;
                let recorded_tz = recorded.as_deref().and_then(|r| r.parse::<chrono_tz::Tz>().ok());
                let tz = tz.or(recorded_tz).unwrap_or(chrono_tz::UTC);
                let mut ready = ready != 0;
                match recorded.as_deref() {
                    Some(r) if r == tz.name() => {}
                    None => {
                        sqlx::query("UPDATE agg_state SET timezone = $1 WHERE id = 1")
                            .bind(tz.name())
                            .execute(pool)
                            .await?;
                    }
                    Some(r) => {
                        tracing::warn!(
                            recorded = r,
                            configured = tz.name(),
                            "the aggregates count the days of another time zone: they are \
                             rebuilt from the events (days whose events retention deleted \
                             are lost)"
                        );
                        let mut tx = pool.begin().await?;
                        for table in $crate::store::aggregates::TABLES {
                            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                                .execute(&mut *tx)
                                .await?;
                        }
                        let forget = $d!(forget_own_xacts);
                        if !forget.is_empty() {
                            sqlx::query(forget).execute(&mut *tx).await?;
                        }
                        sqlx::query($d!(rebuild_state))
                            .bind(tz.name())
                            .execute(&mut *tx)
                            .await?;
                        let (now_ready,): (i64,) =
                            sqlx::query_as("SELECT ready FROM agg_state WHERE id = 1")
                                .fetch_one(&mut *tx)
                                .await?;
                        tx.commit().await?;
                        ready = now_ready != 0;
                    }
                }
                Ok($crate::store::aggregates::AggConfig::new(tz, ready))
            }

            /// The statements of one batch, inside the caller's transaction. Returns
            /// the ids of the events it inserted (not of those already stored).
            async fn write_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                events: &[$crate::domain::NewEvent],
            ) -> Result<Vec<String>, sqlx::Error> {
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
                let mut inserted = Vec::with_capacity(events.len());
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
                    // again, those already there are neither an error nor a duplicate,
                    // and are not counted again (RETURNING names the inserted ones).
                    q.push(" ON CONFLICT (id) DO NOTHING RETURNING CAST(id AS TEXT)");
                    let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *conn).await?;
                    inserted.extend(ids);
                }
                Ok(inserted)
            }

            /// Adds what the inserted events of a batch count to the aggregates, in
            /// the batch's transaction.
            async fn count_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                events: &[$crate::domain::NewEvent],
                inserted: Vec<String>,
            ) -> Result<(), sqlx::Error> {
                use $crate::store::aggregates::{AggEvent, Delta, micros};
                use $crate::store::{MAX_URL_CHARS, truncate_chars};
                if inserted.is_empty() {
                    return Ok(());
                }
                let all = inserted.len() == events.len();
                let inserted: std::collections::HashSet<String> = if all {
                    Default::default()
                } else {
                    inserted.into_iter().collect()
                };
                let mut delta = Delta::default();
                let mut latest = i64::MIN;
                for e in events {
                    let id = e.id.hyphenated().to_string();
                    if !all && !inserted.contains(&id) {
                        continue;
                    }
                    let visitor = e.visitor_id.to_string();
                    let at = micros(e.occurred_at);
                    latest = latest.max(at);
                    delta.add(
                        self.agg.tz,
                        &AggEvent {
                            id: &id,
                            visitor: &visitor,
                            event_type: e.event_type.as_str(),
                            data: Some(&e.event_data),
                            page_url: e.page_url.as_deref().map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            at,
                        },
                    );
                }
                self.apply_delta(conn, &delta).await?;
                let own = $d!(record_own_xact);
                if !own.is_empty() {
                    sqlx::query(own).bind(latest).execute(&mut *conn).await?;
                }
                Ok(())
            }

            /// Applies `delta` to the aggregate tables, inside the caller's
            /// transaction: one multi-row upsert per table, keys in sorted order.
            async fn apply_delta(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                delta: &$crate::store::aggregates::Delta,
            ) -> Result<(), sqlx::Error> {
                use std::collections::{BTreeMap, HashSet};
                use $crate::store::aggregates::{Sketch, visitor_hash};
                const CHUNK: usize = 1000;
                if delta.is_empty() {
                    return Ok(());
                }
                // Visitors new to a day first: they count in `agg_day.visitors` and
                // go into the day's sketch; the others only move their times on.
                let mut new_per_day: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
                let rows: Vec<_> = delta.visitors.iter().collect();
                let mut known = Vec::new();
                for chunk in rows.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_visitor_day (day, visitor_id, last_seen, page_at, \
                         page_id, page_url) ",
                    );
                    q.push_values(chunk, |mut b, ((day, visitor), v)| {
                        b.push_bind(*day)
                            .push_bind(visitor.as_str())
                            .push_bind(v.last_seen)
                            .push_bind(v.page.as_ref().map(|p| p.0))
                            .push_bind(v.page.as_ref().map(|p| p.1.as_str()))
                            .push_bind(v.page.as_ref().and_then(|p| p.2.as_deref()));
                    });
                    q.push(" ON CONFLICT (day, visitor_id) DO NOTHING RETURNING day, visitor_id");
                    let new: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *conn).await?;
                    let new: HashSet<(i64, String)> = new.into_iter().collect();
                    for row in chunk {
                        if new.contains(row.0) {
                            new_per_day
                                .entry(row.0.0)
                                .or_default()
                                .push(visitor_hash(&row.0.1));
                        } else {
                            known.push(*row);
                        }
                    }
                }
                for chunk in known.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_visitor_day (day, visitor_id, last_seen, page_at, \
                         page_id, page_url) ",
                    );
                    q.push_values(chunk, |mut b, ((day, visitor), v)| {
                        b.push_bind(*day)
                            .push_bind(visitor.as_str())
                            .push_bind(v.last_seen)
                            .push_bind(v.page.as_ref().map(|p| p.0))
                            .push_bind(v.page.as_ref().map(|p| p.1.as_str()))
                            .push_bind(v.page.as_ref().and_then(|p| p.2.as_deref()));
                    });
                    q.push(concat!(
                        " ON CONFLICT (day, visitor_id) DO UPDATE SET \
                         last_seen = CASE WHEN excluded.last_seen > agg_visitor_day.last_seen \
                           THEN excluded.last_seen ELSE agg_visitor_day.last_seen END, \
                         page_at = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_at ELSE agg_visitor_day.page_at END, \
                         page_id = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_id ELSE agg_visitor_day.page_id END, \
                         page_url = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_url ELSE agg_visitor_day.page_url END \
                         WHERE excluded.last_seen > agg_visitor_day.last_seen OR ",
                        $crate::store::aggregates::newer_page!($d)
                    ));
                    q.build().execute(&mut *conn).await?;
                }

                let days: Vec<_> = delta.days.iter().collect();
                for chunk in days.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_day (day, events, letters, motivation, \
                         anti_motivation, visitors) ",
                    );
                    q.push_values(chunk, |mut b, (day, c)| {
                        let visitors = new_per_day.get(day).map_or(0, |v| v.len() as i64);
                        b.push_bind(**day)
                            .push_bind(c.events)
                            .push_bind(c.letters)
                            .push_bind(c.motivation)
                            .push_bind(c.anti_motivation)
                            .push_bind(visitors);
                    });
                    q.push(
                        " ON CONFLICT (day) DO UPDATE SET events = agg_day.events + excluded.events, \
                         letters = agg_day.letters + excluded.letters, \
                         motivation = agg_day.motivation + excluded.motivation, \
                         anti_motivation = agg_day.anti_motivation + excluded.anti_motivation, \
                         visitors = agg_day.visitors + excluded.visitors",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                let types: Vec<_> = delta.day_types.iter().collect();
                for chunk in types.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_day_type (day, event_type, events) ",
                    );
                    q.push_values(chunk, |mut b, ((day, kind), n)| {
                        b.push_bind(*day).push_bind(kind.as_str()).push_bind(**n);
                    });
                    q.push(
                        " ON CONFLICT (day, event_type) DO UPDATE SET \
                         events = agg_day_type.events + excluded.events",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                let minutes: Vec<_> = delta.minutes.iter().collect();
                for chunk in minutes.chunks(CHUNK) {
                    let mut q =
                        sqlx::QueryBuilder::<$db>::new("INSERT INTO agg_minute (minute, events) ");
                    q.push_values(chunk, |mut b, (minute, n)| {
                        b.push_bind(**minute).push_bind(**n);
                    });
                    q.push(
                        " ON CONFLICT (minute) DO UPDATE SET \
                         events = agg_minute.events + excluded.events",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                let pages: Vec<_> = delta.minute_pages.iter().collect();
                for chunk in pages.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_minute_page (minute, page_url, views) ",
                    );
                    q.push_values(chunk, |mut b, ((minute, page), n)| {
                        b.push_bind(*minute).push_bind(page.as_str()).push_bind(**n);
                    });
                    q.push(
                        " ON CONFLICT (minute, page_url) DO UPDATE SET \
                         views = agg_minute_page.views + excluded.views",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                let heat: Vec<_> = delta.heat.iter().collect();
                for chunk in heat.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO agg_heat (level, bucket, page_url, x, y, clicks) ",
                    );
                    q.push_values(chunk, |mut b, ((level, bucket, page, x, y), n)| {
                        b.push_bind(*level)
                            .push_bind(*bucket)
                            .push_bind(page.as_str())
                            .push_bind(f64::from_bits(*x))
                            .push_bind(f64::from_bits(*y))
                            .push_bind(**n);
                    });
                    q.push(
                        " ON CONFLICT (level, bucket, page_url, x, y) DO UPDATE SET \
                         clicks = agg_heat.clicks + excluded.clicks",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                let themes: Vec<_> = delta.themes.iter().collect();
                for chunk in themes.chunks(CHUNK) {
                    let mut q =
                        sqlx::QueryBuilder::<$db>::new("INSERT INTO agg_theme (theme, views) ");
                    q.push_values(chunk, |mut b, (theme, n)| {
                        b.push_bind(theme.as_str()).push_bind(**n);
                    });
                    q.push(
                        " ON CONFLICT (theme) DO UPDATE SET views = agg_theme.views + excluded.views",
                    );
                    q.build().execute(&mut *conn).await?;
                }
                // The sketches last: the first batch of a day inserts it, later ones
                // merge into it (row locked on PostgreSQL).
                for (day, hashes) in &new_per_day {
                    let mut sketch = Sketch::new();
                    for &h in hashes {
                        sketch.insert_hash(h);
                    }
                    let created = sqlx::query(
                        "INSERT INTO agg_day_sketch (day, sketch) VALUES ($1, $2) \
                         ON CONFLICT (day) DO NOTHING",
                    )
                    .bind(*day)
                    .bind(sketch.to_bytes())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if created == 1 {
                        continue;
                    }
                    let stored: Vec<u8> = sqlx::query_scalar(concat!(
                        "SELECT sketch FROM agg_day_sketch WHERE day = $1",
                        $d!(for_update)
                    ))
                    .bind(*day)
                    .fetch_one(&mut *conn)
                    .await?;
                    match Sketch::from_bytes(&stored) {
                        Some(old) => sketch.union(&old),
                        None => {
                            // Not a sketch (written by hand?): the day's exact visitor
                            // set rebuilds it.
                            tracing::warn!(day, "a stored sketch could not be read; rebuilt");
                            let all: Vec<String> = sqlx::query_scalar(
                                "SELECT visitor_id FROM agg_visitor_day WHERE day = $1",
                            )
                            .bind(*day)
                            .fetch_all(&mut *conn)
                            .await?;
                            for v in &all {
                                sketch.insert_hash(visitor_hash(v));
                            }
                        }
                    }
                    sqlx::query("UPDATE agg_day_sketch SET sketch = $2 WHERE day = $1")
                        .bind(*day)
                        .bind(sketch.to_bytes())
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// Folds rows the writer did not count into the aggregates, in the
            /// caller's transaction (the backfill and maicivy's rows).
            async fn fold_rows(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[$crate::store::aggregates::FoldRow],
            ) -> Result<u64, sqlx::Error> {
                let (delta, n) = $crate::store::aggregates::delta_of_rows(self.agg.tz, rows)?;
                self.apply_delta(conn, &delta).await?;
                Ok(n)
            }

            async fn raw_timeline(
                &self,
                limit: u32,
                offset: u64,
                before: Option<$crate::store::TimelineCursor>,
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
                // The cursor is the last event of the previous page: the page after
                // it is an index range, whatever its depth.
                let rows: Vec<Row> = match before {
                    None => sqlx::query_as(concat!(
                        "SELECT CAST(id AS TEXT), CAST(visitor_id AS TEXT), event_type, event_data, \
                         page_url, referrer, ",
                        $d!(time_text "created_at"),
                        " FROM analytics_events WHERE deleted_at IS NULL \
                         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                    ))
                    .bind(i64::from(limit))
                    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?,
                    Some(cursor) => sqlx::query_as(concat!(
                        "SELECT CAST(id AS TEXT), CAST(visitor_id AS TEXT), event_type, event_data, \
                         page_url, referrer, ",
                        $d!(time_text "created_at"),
                        " FROM analytics_events WHERE deleted_at IS NULL \
                         AND (created_at, id) < (CAST($3 AS ",
                        $d!(time),
                        "), CAST($4 AS ",
                        $d!(uuid),
                        ")) ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                    ))
                    .bind(i64::from(limit))
                    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                    .bind($crate::store::time_to_sql(cursor.at))
                    .bind(cursor.id.hyphenated().to_string())
                    .fetch_all(&self.pool)
                    .await?,
                };
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

            async fn raw_summary(
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

            /// The distinct visitors of `[from, to)`, raw (the edges of a range that
            /// are not whole days).
            async fn raw_visitor_ids(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                Ok(sqlx::query_scalar(concat!(
                    "SELECT DISTINCT CAST(visitor_id AS TEXT) FROM analytics_events \
                     WHERE deleted_at IS NULL AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND created_at < CAST($2 AS ",
                    $d!(time),
                    ")"
                ))
                .bind($crate::store::time_to_sql(from))
                .bind($crate::store::time_to_sql(to))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn agg_summary(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Summary, $crate::store::StoreError> {
                use $crate::store::aggregates::{Sketch, split_days, visitor_hash};
                use $crate::store::count;
                let split = split_days(self.agg.tz, from, to);
                let (mut total, mut letters) = (0u64, 0u64);
                let mut edge: std::collections::HashSet<String> = Default::default();
                for (a, b) in [(from, split.head_end), (split.tail_start, to)] {
                    if a < b {
                        let s = self.raw_summary(a, b).await?;
                        total += s.total_events;
                        letters += s.letters_generated;
                        if s.unique_visitors > 0 {
                            edge.extend(self.raw_visitor_ids(a, b).await?);
                        }
                    }
                }
                if split.first >= split.end {
                    return Ok($crate::store::Summary {
                        total_events: total,
                        letters_generated: letters,
                        unique_visitors: edge.len() as u64,
                    });
                }
                let days: Vec<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT events, letters, visitors FROM agg_day WHERE day >= $1 AND day < $2",
                )
                .bind(split.first)
                .bind(split.end)
                .fetch_all(&self.pool)
                .await?;
                let (mut max_day, mut sum_days) = (0u64, 0u64);
                for (e, l, v) in days {
                    total += count(e);
                    letters += count(l);
                    max_day = max_day.max(count(v));
                    sum_days += count(v);
                }
                let unique = if split.end - split.first == 1 && edge.is_empty() {
                    sum_days
                } else {
                    let sketches: Vec<Vec<u8>> = sqlx::query_scalar(
                        "SELECT sketch FROM agg_day_sketch WHERE day >= $1 AND day < $2",
                    )
                    .bind(split.first)
                    .bind(split.end)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut union = Sketch::new();
                    for bytes in &sketches {
                        if let Some(s) = Sketch::from_bytes(bytes) {
                            union.union(&s);
                        }
                    }
                    for v in &edge {
                        union.insert_hash(visitor_hash(v));
                    }
                    // Never fewer than the busiest day, never more than all days.
                    let low = max_day.max(edge.len() as u64);
                    union.estimate().clamp(low, sum_days + edge.len() as u64)
                };
                Ok($crate::store::Summary {
                    total_events: total,
                    letters_generated: letters,
                    unique_visitors: unique,
                })
            }

            async fn raw_events_per_minute(
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

            async fn agg_events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                use $crate::store::aggregates::{ceil_bucket, from_micros, micros};
                const MINUTE: i64 = 60_000_000;
                let first = ceil_bucket(micros(from), MINUTE);
                let end = micros(to).div_euclid(MINUTE);
                if first >= end {
                    return self.raw_events_per_minute(from, to).await;
                }
                let head_end = from_micros(first * MINUTE);
                let mut out = if from < head_end {
                    self.raw_events_per_minute(from, head_end).await?
                } else {
                    Vec::new()
                };
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT minute, events FROM agg_minute WHERE minute >= $1 AND minute < $2 \
                     ORDER BY minute",
                )
                .bind(first)
                .bind(end)
                .fetch_all(&self.pool)
                .await?;
                out.extend(rows.into_iter().filter(|&(_, n)| n > 0).map(|(m, n)| {
                    $crate::store::MinuteCount {
                        minute_ms: m * 60_000,
                        count: $crate::store::count(n),
                    }
                }));
                let tail = from_micros(end * MINUTE);
                if tail < to {
                    out.extend(self.raw_events_per_minute(tail, to).await?);
                }
                Ok(out)
            }

            async fn raw_pages_since(
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

            async fn agg_pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                use std::collections::HashMap;
                use $crate::store::aggregates::{ceil_bucket, from_micros, micros};
                use $crate::store::{count, time_to_sql};
                const MINUTE: i64 = 60_000_000;
                // Who is where: each visitor's latest page view of each day, those
                // in the window (an index range on `page_at`).
                let latest: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
                    "SELECT visitor_id, page_at, page_id, page_url FROM agg_visitor_day \
                     WHERE page_at IS NOT NULL AND page_at >= $1",
                )
                .bind(micros(from))
                .fetch_all(&self.pool)
                .await?;
                let mut by_visitor: HashMap<String, (i64, String, Option<String>)> =
                    HashMap::with_capacity(latest.len());
                for (visitor, at, id, page) in latest {
                    match by_visitor.get(&visitor) {
                        Some((a, i, _)) if (*a, i.as_str()) >= (at, id.as_str()) => {}
                        _ => {
                            by_visitor.insert(visitor, (at, id, page));
                        }
                    }
                }
                let mut pages: HashMap<String, (u64, u64)> = HashMap::new();
                for (_, _, page) in by_visitor.into_values() {
                    if let Some(page) = page {
                        pages.entry(page).or_default().0 += 1;
                    }
                }
                // Views: whole minutes from the aggregates, the seconds before the
                // first whole minute raw.
                let first = ceil_bucket(micros(from), MINUTE);
                let head_end = from_micros(first * MINUTE);
                if from < head_end {
                    let raw: Vec<(String, i64)> = sqlx::query_as(concat!(
                        "SELECT page_url, COUNT(*) FROM analytics_events \
                         WHERE event_type = 'page_view' AND deleted_at IS NULL \
                         AND page_url IS NOT NULL AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY page_url"
                    ))
                    .bind(time_to_sql(from))
                    .bind(time_to_sql(head_end))
                    .fetch_all(&self.pool)
                    .await?;
                    for (page, n) in raw {
                        pages.entry(page).or_default().1 += count(n);
                    }
                }
                let views: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT page_url, CAST(SUM(views) AS BIGINT) FROM agg_minute_page \
                     WHERE minute >= $1 GROUP BY page_url",
                )
                .bind(first)
                .fetch_all(&self.pool)
                .await?;
                for (page, n) in views {
                    pages.entry(page).or_default().1 += count(n);
                }
                let mut out: Vec<$crate::store::PageNow> = pages
                    .into_iter()
                    .filter(|(_, (_, views))| *views > 0)
                    .map(|(page_url, (visitors, views))| $crate::store::PageNow {
                        page_url,
                        visitors,
                        views,
                    })
                    .collect();
                out.sort_by(|a, b| {
                    b.visitors
                        .cmp(&a.visitors)
                        .then(b.views.cmp(&a.views))
                        .then(a.page_url.as_bytes().cmp(b.page_url.as_bytes()))
                });
                out.truncate(limit as usize);
                Ok(out)
            }

            async fn raw_visitors_since(
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

            async fn agg_visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                use $crate::store::aggregates::{day_number, from_micros, micros};
                // A visitor last seen at or after `from` on a day that contains or
                // follows it was seen since `from`, and that is when.
                let day = day_number($crate::period::local_day(self.agg.tz, from));
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT visitor_id, MAX(last_seen) FROM agg_visitor_day \
                     WHERE day >= $1 AND last_seen >= $2 GROUP BY visitor_id",
                )
                .bind(day)
                .bind(micros(from))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id, at)| {
                        Ok((
                            $crate::domain::VisitorId::from_uuid($crate::store::uuid_from_sql(&id)?),
                            from_micros(at),
                        ))
                    })
                    .collect()
            }

            async fn raw_top_themes(
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

            async fn agg_top_themes(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::ThemeViews>, $crate::store::StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT theme, views FROM agg_theme WHERE views > 0 \
                     ORDER BY views DESC, theme",
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

            /// Raw clicks of `[from, to)` grouped by their JSON `x` and `y`.
            async fn raw_heat_rows(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: Option<chrono::DateTime<chrono::Utc>>,
                page_url: Option<&str>,
            ) -> Result<Vec<(Option<String>, Option<String>, i64)>, $crate::store::StoreError> {
                // Grouped by the raw JSON numbers (few distinct positions, whatever
                // the number of clicks); rounding and merging is Rust's, so that it
                // is half-to-even on both backends.
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $d!(json_raw "x"),
                    ", ",
                    $d!(json_raw "y"),
                    ", COUNT(*) FROM analytics_events \
                     WHERE event_type IN ('button_click', 'link_click') \
                     AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND ($3 IS NULL OR created_at < CAST($3 AS ",
                    $d!(time),
                    ")) AND ($2 IS NULL OR page_url = $2) AND ",
                    $d!(json_is_number "x"),
                    " AND ",
                    $d!(json_is_number "y"),
                    " GROUP BY 1, 2"
                ))
                .bind($crate::store::time_to_sql(from))
                .bind(page_url)
                .bind(to.map($crate::store::time_to_sql))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn agg_heatmap(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                page_url: Option<&str>,
            ) -> Result<Vec<$crate::store::HeatCell>, $crate::store::StoreError> {
                use $crate::store::aggregates::{ceil_bucket, from_micros, heat_ranges, micros};
                const MINUTE: i64 = 60_000_000;
                let first = ceil_bucket(micros(from), MINUTE);
                let head_end = from_micros(first * MINUTE);
                let mut rows = Vec::new();
                if from < head_end {
                    rows = self.raw_heat_rows(from, Some(head_end), page_url).await?;
                }
                let r = heat_ranges(first);
                // One page's cells, or the cells of all pages together.
                let (base, page) = match page_url {
                    Some(p) => (0, p),
                    None => ($crate::store::aggregates::ALL_PAGES, ""),
                };
                let cells: Vec<(f64, f64, i64)> = sqlx::query_as(
                    "SELECT x, y, CAST(SUM(clicks) AS BIGINT) FROM agg_heat \
                     WHERE ((level = $7 AND bucket >= $1 AND bucket < $2) \
                        OR (level = $7 + 1 AND bucket >= $3 AND bucket < $4) \
                        OR (level = $7 + 2 AND bucket >= $5)) \
                     AND page_url = $6 GROUP BY x, y",
                )
                .bind(r.minutes.0)
                .bind(r.minutes.1)
                .bind(r.hours.0)
                .bind(r.hours.1)
                .bind(r.days_from)
                .bind(page)
                .bind(base)
                .fetch_all(&self.pool)
                .await?;
                // The aggregated cells are rounded already: they merge with the raw
                // ones through the same rounding.
                rows.extend(
                    cells
                        .into_iter()
                        .map(|(x, y, n)| (Some(x.to_string()), Some(y.to_string()), n)),
                );
                Ok($crate::store::heat_cells(rows))
            }

            async fn raw_letters(
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

            async fn agg_letters(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Letters, $crate::store::StoreError> {
                use $crate::store::aggregates::{day_of_number, split_days};
                use $crate::store::count;
                let tz = self.agg.tz;
                let split = split_days(tz, from, to);
                if split.first >= split.end {
                    return self.raw_letters(from, to, tz).await;
                }
                let mut days: std::collections::BTreeMap<chrono::NaiveDate, u64> =
                    Default::default();
                let mut letters = $crate::store::Letters::default();
                for (a, b) in [(from, split.head_end), (split.tail_start, to)] {
                    if a < b {
                        let edge = self.raw_letters(a, b, tz).await?;
                        letters.motivation += edge.motivation;
                        letters.anti_motivation += edge.anti_motivation;
                        for (d, n) in edge.per_day {
                            *days.entry(d).or_default() += n;
                        }
                    }
                }
                let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT day, letters, motivation, anti_motivation FROM agg_day \
                     WHERE day >= $1 AND day < $2 AND letters > 0",
                )
                .bind(split.first)
                .bind(split.end)
                .fetch_all(&self.pool)
                .await?;
                for (day, n, m, a) in rows {
                    *days.entry(day_of_number(day)).or_default() += count(n);
                    letters.motivation += count(m);
                    letters.anti_motivation += count(a);
                }
                letters.per_day = days.into_iter().collect();
                Ok(letters)
            }

            /// Whether the aggregates can answer (the backfill is done).
            fn agg_ready(&self) -> bool {
                self.agg.ready.load(std::sync::atomic::Ordering::Acquire)
                    && !self.agg.raw_only.load(std::sync::atomic::Ordering::Acquire)
            }

            /// Deletes up to `batch` events older than `cutoff`, then (once none
            /// is left) prunes the aggregates that only short windows read: visitor
            /// days older than `cutoff`, minutes and hours older than 8 days too.
            async fn retention_once(
                &self,
                cutoff: chrono::DateTime<chrono::Utc>,
                batch: u32,
            ) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::aggregates::{day_number, hour_of, micros, minute_of};
                if !self.agg_ready() {
                    // Rows not folded yet would take their figures with them.
                    return Ok(0);
                }
                let deleted = sqlx::query(concat!(
                    "DELETE FROM analytics_events WHERE id IN (SELECT id FROM analytics_events \
                     WHERE created_at < CAST($1 AS ",
                    $d!(time),
                    ") ORDER BY created_at LIMIT $2)"
                ))
                .bind($crate::store::time_to_sql(cutoff))
                .bind(i64::from(batch))
                .execute(&self.pool)
                .await?
                .rows_affected();
                if deleted > 0 {
                    return Ok(deleted);
                }
                let fine = micros(cutoff.min(chrono::Utc::now() - chrono::Duration::days(8)));
                let day = day_number($crate::period::local_day(self.agg.tz, cutoff));
                let mut pruned = 0;
                for (sql, key) in [
                    (
                        "DELETE FROM agg_visitor_day WHERE day IN (SELECT DISTINCT day FROM \
                         agg_visitor_day WHERE day < $1 ORDER BY day LIMIT 1)",
                        day,
                    ),
                    (
                        "DELETE FROM agg_minute_page WHERE minute IN (SELECT DISTINCT minute FROM \
                         agg_minute_page WHERE minute < $1 ORDER BY minute LIMIT 60)",
                        minute_of(fine),
                    ),
                    (
                        "DELETE FROM agg_minute WHERE minute IN (SELECT minute FROM \
                         agg_minute WHERE minute < $1 ORDER BY minute LIMIT 1440)",
                        minute_of(fine),
                    ),
                    (
                        "DELETE FROM agg_heat WHERE level IN (0, 3) AND bucket IN (SELECT DISTINCT \
                         bucket FROM agg_heat WHERE level = 0 AND bucket < $1 ORDER BY bucket \
                         LIMIT 60)",
                        minute_of(fine),
                    ),
                    (
                        "DELETE FROM agg_heat WHERE level IN (1, 4) AND bucket IN (SELECT DISTINCT \
                         bucket FROM agg_heat WHERE level = 1 AND bucket < $1 ORDER BY bucket \
                         LIMIT 24)",
                        hour_of(fine),
                    ),
                ] {
                    pruned += sqlx::query(sql)
                        .bind(key)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
                sqlx::query(
                    "UPDATE agg_state SET retained_before = $1 WHERE id = 1 \
                     AND (retained_before IS NULL OR retained_before < $1)",
                )
                .bind(micros(cutoff))
                .execute(&self.pool)
                .await?;
                Ok(pruned)
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
                let written = match self.write_batch(&mut tx, events).await {
                    Ok(inserted) => self.count_batch(&mut tx, events, inserted).await,
                    Err(e) => Err(e),
                };
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
                self.raw_timeline(limit, offset, None).await
            }

            async fn timeline_before(
                &self,
                limit: u32,
                offset: u64,
                before: Option<$crate::store::TimelineCursor>,
            ) -> Result<Vec<$crate::domain::StoredEvent>, $crate::store::StoreError> {
                self.raw_timeline(limit, offset, before).await
            }

            async fn summary(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Summary, $crate::store::StoreError> {
                if self.agg_ready() {
                    self.agg_summary(from, to).await
                } else {
                    self.raw_summary(from, to).await
                }
            }

            async fn events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                if self.agg_ready() {
                    self.agg_events_per_minute(from, to).await
                } else {
                    self.raw_events_per_minute(from, to).await
                }
            }

            async fn pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                if self.agg_ready() {
                    self.agg_pages_since(from, limit).await
                } else {
                    self.raw_pages_since(from, limit).await
                }
            }

            async fn visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                if self.agg_ready() {
                    self.agg_visitors_since(from).await
                } else {
                    self.raw_visitors_since(from).await
                }
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
                if self.agg_ready() {
                    self.agg_top_themes(limit).await
                } else {
                    self.raw_top_themes(limit).await
                }
            }

            async fn heatmap(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                page_url: Option<&str>,
            ) -> Result<Vec<$crate::store::HeatCell>, $crate::store::StoreError> {
                if self.agg_ready() {
                    self.agg_heatmap(from, page_url).await
                } else {
                    let rows = self.raw_heat_rows(from, None, page_url).await?;
                    Ok($crate::store::heat_cells(rows))
                }
            }

            async fn letters(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
                tz: chrono_tz::Tz,
            ) -> Result<$crate::store::Letters, $crate::store::StoreError> {
                // maicivy's `generated_letters` rows are few (an index range of
                // them); the events' letters are aggregated per day of the store's
                // zone.
                if self.agg_ready() && !self.tables.generated_letters && tz == self.agg.tz {
                    self.agg_letters(from, to).await
                } else {
                    self.raw_letters(from, to, tz).await
                }
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

            async fn fold_step(&self) -> Result<$crate::store::FoldProgress, $crate::store::StoreError> {
                self.fold_once().await
            }

            async fn retention_step(
                &self,
                cutoff: chrono::DateTime<chrono::Utc>,
                batch: u32,
            ) -> Result<u64, $crate::store::StoreError> {
                self.retention_once(cutoff, batch).await
            }

            fn aggregates_ready(&self) -> bool {
                self.agg_ready()
            }

            fn timezone(&self) -> chrono_tz::Tz {
                self.agg.tz
            }

            fn set_raw_reads(&self, raw: bool) {
                self.agg
                    .raw_only
                    .store(raw, std::sync::atomic::Ordering::Release);
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
