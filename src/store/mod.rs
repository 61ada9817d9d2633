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
mod codec;
mod event_store;
mod live_reads;
mod maicivy_reads;
mod maicivy_tables;
mod maintenance;
mod postgres;
mod retention;
mod salt;
mod sqlite;
mod summary;
mod timeline;
mod types;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{NewEvent, StoredEvent, VisitorId};

pub use maintenance::Maintenance;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use timeline::TimelineCursor;
pub use types::{FoldProgress, HeatCell, Letters, MinuteCount, PageNow, Summary, ThemeViews};

// The helpers of the queries, under the one path (`$crate::store::…`) by which the
// query macros name them, whichever file they live in.
use codec::{count, end_of_time, minute_from_sql, time_from_sql, time_to_sql, uuid_from_sql};
use maicivy_reads::{heat_cells, letters_by_day};
use maicivy_tables::MaicivyTables;
use salt::new_salt;
use writes::{
    MAX_URL_CHARS, STATEMENT_CACHE, batch_visitors, session_id_for, shaped_chunks, truncate_chars,
};

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
/// - `$d!(columns_of_table)`: a query listing the columns of table `$1`;
/// - `$d!(for_update)`, `$d!(record_own_xact)`, `$d!(forget_own_xacts)`,
///   `$d!(rebuild_state)`: the aggregates' row locks and bookkeeping, which differ
///   per backend (see each dialect macro).
///
/// The store type has `pool`, `tables: MaicivyTables` and
/// `discard_failed_connections: bool`.
///
/// Each part is a macro of its own, in the file named for what it reads or writes;
/// each expands to an inherent `impl` of the store type, and `event_store_impl!`
/// routes the trait's methods to them.
macro_rules! sql_store_impl {
    ($store:ty, $db:ty, $d:ident) => {
        $crate::store::maicivy_tables::maicivy_tables_impl!($store, $db, $d);
        $crate::store::aggregates::state_impl!($store, $db, $d);
        $crate::store::writes::writes_impl!($store, $db, $d);
        $crate::store::aggregates::apply_impl!($store, $db, $d);
        $crate::store::timeline::timeline_impl!($store, $db, $d);
        $crate::store::summary::summary_impl!($store, $db, $d);
        $crate::store::live_reads::live_reads_impl!($store, $db, $d);
        $crate::store::maicivy_reads::maicivy_reads_impl!($store, $db, $d);
        $crate::store::retention::retention_impl!($store, $db, $d);
        $crate::store::salt::salt_impl!($store, $db, $d);
        $crate::store::event_store::event_store_impl!($store, $db, $d);
    };
}
pub(crate) use sql_store_impl;
