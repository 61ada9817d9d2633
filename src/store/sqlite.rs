//! The embedded default: a SQLite file (or memory), created and migrated on start.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::{MaicivyTables, StoreError, sql_store_impl};

pub struct SqliteStore {
    pool: SqlitePool,
    /// Whether maicivy's tables are in this file (only if someone put them there).
    tables: MaicivyTables,
    /// False for `sqlite::memory:`: its one connection is the whole database.
    discard_failed_connections: bool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL lets the read routes run while the writer commits; FULL makes
            // every commit durable before the event is acknowledged (the writer
            // groups events, so the cost of the sync is shared by a batch).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
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
        Ok(Self {
            pool,
            tables,
            discard_failed_connections: !in_memory,
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
}

sql_store_impl!(SqliteStore, Sqlite, sqlite_sql);
