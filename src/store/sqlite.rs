//! The embedded default: a SQLite file (or memory), created and migrated on start.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::aggregates::{AggConfig, FoldRow};
use super::{FoldProgress, MaicivyTables, StoreError, sql_store_impl};

/// Rows the backfill folds per transaction: short enough not to hold the writer
/// back for long.
const FOLD_CHUNK: i64 = 2000;

pub struct SqliteStore {
    pool: SqlitePool,
    /// Whether maicivy's tables are in this file (only if someone put them there).
    tables: MaicivyTables,
    /// False for `sqlite::memory:`: its one connection is the whole database.
    discard_failed_connections: bool,
    agg: AggConfig,
}

impl SqliteStore {
    /// Opens `url`, its aggregates in the zone they were built for (UTC if new).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None).await
    }

    /// Opens `url`, its aggregates counting the days of `tz` (rebuilt if they
    /// counted another zone's); `None`: the recorded zone.
    pub async fn open(url: &str, tz: Option<chrono_tz::Tz>) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL lets the read routes run while the writer commits; FULL makes
            // every commit durable before the event is acknowledged (the writer
            // groups events, so the cost of the sync is shared by a batch).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // 32 MiB of page cache per connection (the default is 2 MiB): the
            // indexes of millions of events and their aggregates stay in memory.
            .pragma("cache_size", "-32768")
            .statement_cache_capacity(super::STATEMENT_CACHE)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            // Each connection to `sqlite::memory:` is a database of its own, so an
            // in-memory store keeps exactly one connection, forever.
            .max_connections(if in_memory { 1 } else { 4 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        // 0001 is the earlier layout, kept byte for byte (sqlx checks the checksums
        // of applied migrations); 0002 moves its rows to maicivy's layout.
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let tables = Self::find_maicivy_tables(&pool).await?;
        let agg = Self::init_aggregates(&pool, tz).await?;
        Ok(Self {
            pool,
            tables,
            discard_failed_connections: !in_memory,
            agg,
        })
    }

    /// The backfill: the rows that were there before the aggregates (rowid up to
    /// `agg_state.boundary`), folded in rowid order, a chunk per transaction; the
    /// writer counted every later row itself. Done once the boundary is reached.
    async fn fold_once(&self) -> Result<FoldProgress, StoreError> {
        use std::sync::atomic::Ordering;
        let (ready, boundary, cursor, folded): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT ready, boundary, cursor_rowid, folded FROM agg_state WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        if ready != 0 {
            self.agg.ready.store(true, Ordering::Release);
            return Ok(FoldProgress {
                folded: 0,
                total_folded: folded.max(0) as u64,
                caught_up: true,
                continuous: false,
            });
        }
        // Read outside the write transaction: SQLite cannot turn a read snapshot
        // into a write once the writer has committed since.
        type Row = (
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            bool,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT rowid, id, visitor_id, event_type, event_data, page_url, created_at, \
             deleted_at IS NOT NULL FROM analytics_events \
             WHERE rowid > $1 AND rowid <= $2 ORDER BY rowid LIMIT $3",
        )
        .bind(cursor)
        .bind(boundary)
        .bind(FOLD_CHUNK)
        .fetch_all(&self.pool)
        .await?;
        let last = rows.last().map_or(boundary, |r| r.0);
        let done = (rows.len() as i64) < FOLD_CHUNK || last >= boundary;
        let rows: Vec<FoldRow> = rows
            .into_iter()
            .map(
                |(_, id, visitor, event_type, data, page_url, at, deleted)| FoldRow {
                    id,
                    visitor,
                    event_type,
                    data,
                    page_url,
                    at,
                    deleted,
                    own: false,
                },
            )
            .collect();
        let mut tx = self.pool.begin().await?;
        let n = self.fold_rows(&mut tx, &rows).await?;
        let moved = sqlx::query(
            "UPDATE agg_state SET cursor_rowid = $1, folded = folded + $2, ready = $3 \
             WHERE id = 1 AND cursor_rowid = $4",
        )
        .bind(last)
        .bind(rows.len() as i64)
        .bind(i64::from(done))
        .bind(cursor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            // Another process folded the same rows: give up this chunk.
            tx.rollback().await?;
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "the backfill position moved under this step".into(),
            )));
        }
        tx.commit().await?;
        if done {
            self.agg.ready.store(true, Ordering::Release);
        }
        let _ = n;
        Ok(FoldProgress {
            folded: rows.len() as u64,
            total_folded: (folded + rows.len() as i64).max(0) as u64,
            caught_up: done,
            continuous: false,
        })
    }
}

/// SQLite's fragments for `sql_store_impl!`. Times are `TIME_FORMAT` text already,
/// UUIDs hyphenated text, `event_data` JSON text.
macro_rules! sqlite_sql {
    (uuid) => {
        "TEXT"
    };
    (time) => {
        "TEXT"
    };
    (time_text $e:literal) => {
        $e
    };
    (minute_text $e:literal) => {
        concat!("substr(", $e, ", 1, 16)")
    };
    (json_text $k:literal) => {
        concat!("json_extract(event_data, '$.", $k, "')")
    };
    (json_is_string $k:literal) => {
        concat!("json_type(event_data, '$.", $k, "') = 'text'")
    };
    (json_is_number $k:literal) => {
        concat!("json_type(event_data, '$.", $k, "') IN ('integer', 'real')")
    };
    (json_raw $k:literal) => {
        concat!("(event_data -> '$.", $k, "')")
    };
    (binary_order) => {
        ""
    };
    (columns_of_table) => {
        "SELECT name FROM pragma_table_info($1)"
    };
    (for_update) => {
        ""
    };
    // The writer's rows are known by rowid: nothing to record.
    (record_own_xact) => {
        ""
    };
    (forget_own_xacts) => {
        ""
    };
    // A rebuild folds every row there is now; later ones are the writer's.
    (rebuild_state) => {
        "UPDATE agg_state SET timezone = $1, \
         ready = (SELECT CASE WHEN MAX(rowid) IS NULL THEN 1 ELSE 0 END FROM analytics_events), \
         boundary = (SELECT COALESCE(MAX(rowid), 0) FROM analytics_events), \
         cursor_rowid = 0, cursor_at = NULL, cursor_id = NULL, folded = 0 WHERE id = 1"
    };
}

sql_store_impl!(SqliteStore, Sqlite, sqlite_sql);
