//! PostgreSQL, for several instances sharing one event store, and for sharing
//! maicivy's own database with its Go backend.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::aggregates::{AggConfig, FoldRow, micros};
use super::{FoldProgress, MaicivyTables, StoreError, sql_store_impl, time_to_sql};

/// Rows the fold reads per transaction.
const FOLD_CHUNK: i64 = 2000;
/// The fold stays this far behind the clock, and behind the oldest transaction
/// still writing (at most `MAX_WAIT` of it): a row that another writer (maicivy's Go
/// backend) has inserted but not committed yet, with a `created_at` from before its
/// commit, must not fall behind the fold's position unseen.
const FOLD_LAG: &str = "2 seconds";
const MAX_WAIT: &str = "60 seconds";
/// `pg_advisory_xact_lock` key of the fold: one instance folds at a time.
const FOLD_LOCK: i64 = 0x6d61_6963_6976_7901;

/// Where this server records its applied PostgreSQL migrations. Not sqlx's default
/// `_sqlx_migrations`: earlier versions recorded a migration there that cannot run
/// on maicivy's database, and that table is left as it is (its checksums belong to
/// the deployments that applied it).
const MIGRATIONS_TABLE: &str = "maicivy_analytics_migrations";

pub struct PgStore {
    pool: PgPool,
    /// Whether maicivy's `visitors` / `generated_letters` are in this database.
    tables: MaicivyTables,
    /// Always true: a fresh connection has the same database.
    discard_failed_connections: bool,
    agg: AggConfig,
}

impl PgStore {
    /// Opens `url`, its aggregates in the zone they were built for (UTC if new).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None).await
    }

    /// Opens `url`, its aggregates counting the days of `tz` (rebuilt if they
    /// counted another zone's); `None`: the recorded zone.
    pub async fn open(url: &str, tz: Option<chrono_tz::Tz>) -> Result<Self, StoreError> {
        // maicivy's columns may be `TIMESTAMP` (UTC wall-clock times) or, made by
        // its ORM, `TIMESTAMPTZ`. The store writes and compares times as UTC
        // `TIMESTAMP`s, and converting between the two types uses the session's
        // time zone: it must be UTC, whatever the server, role or URL says
        // (startup options override all of them).
        // Custom plans for every execution: sqlx prepares its statements, and after
        // five runs PostgreSQL may switch to a generic plan that cannot use a
        // partial index or a row comparison's bound (the timeline cursor, who is on
        // which page now), hundreds of milliseconds where the custom plan takes one.
        let options = PgConnectOptions::from_str(url)?
            .options([
                ("timezone", "UTC"),
                ("plan_cache_mode", "force_custom_plan"),
            ])
            .statement_cache_capacity(super::STATEMENT_CACHE);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/postgres_maicivy");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        let tables = Self::find_maicivy_tables(&pool).await?;
        let agg = Self::init_aggregates(&pool, tz).await?;
        Ok(Self {
            pool,
            tables,
            discard_failed_connections: true,
            agg,
        })
    }

    /// The fold: every row the writer did not count (rows from before the
    /// aggregates, maicivy's Go rows, rows of an earlier version of this server) is
    /// folded in `(created_at, id)` order, a chunk per transaction, up to a horizon
    /// a little behind the clock. The writer's own rows are known by `xmin`: each
    /// batch records its transaction in `agg_own_xacts`, in the same transaction.
    /// One instance folds at a time (an advisory lock); the position moves in the
    /// transaction that folds.
    async fn fold_once(&self) -> Result<FoldProgress, StoreError> {
        use std::sync::atomic::Ordering;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FOLD_LOCK)
            .execute(&mut *tx)
            .await?;
        let (ready, cursor_at, cursor_id, folded): (i64, Option<i64>, Option<String>, i64) =
            sqlx::query_as(
                "SELECT ready, cursor_at, cursor_id, folded FROM agg_state WHERE id = 1 FOR UPDATE",
            )
            .fetch_one(&mut *tx)
            .await?;
        let horizon: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_char(LEAST(CAST(now() AS TIMESTAMPTZ) - INTERVAL '{FOLD_LAG}', \
               GREATEST(COALESCE((SELECT MIN(xact_start) FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()), now()), \
                 now() - INTERVAL '{MAX_WAIT}')) AT TIME ZONE 'UTC', \
               'YYYY-MM-DD HH24:MI:SS.US')"
        )))
        .fetch_one(&mut *tx)
        .await?;
        let from_at = cursor_at.map_or_else(
            || "0001-01-01 00:00:00.000000".to_owned(),
            |us| time_to_sql(super::aggregates::from_micros(us)),
        );
        let from_id = cursor_id.unwrap_or_else(|| uuid::Uuid::nil().hyphenated().to_string());
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            bool,
            bool,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT CAST(e.id AS TEXT), CAST(e.visitor_id AS TEXT), e.event_type, \
             CASE WHEN o.xid IS NULL THEN CAST(e.event_data AS TEXT) END, e.page_url, \
             to_char(CAST(e.created_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
             e.deleted_at IS NOT NULL, o.xid IS NOT NULL \
             FROM analytics_events e \
             LEFT JOIN agg_own_xacts o ON o.xid = CAST(CAST(e.xmin AS TEXT) AS BIGINT) \
             WHERE (e.created_at, e.id) > (CAST($1 AS TIMESTAMP), CAST($2 AS UUID)) \
             AND e.created_at <= CAST($3 AS TIMESTAMP) \
             ORDER BY e.created_at, e.id LIMIT $4",
        )
        .bind(&from_at)
        .bind(&from_id)
        .bind(&horizon)
        .bind(FOLD_CHUNK)
        .fetch_all(&mut *tx)
        .await?;
        let done = (rows.len() as i64) < FOLD_CHUNK;
        let scanned = rows.len() as i64;
        let rows: Vec<FoldRow> = rows
            .into_iter()
            .map(
                |(id, visitor, event_type, data, page_url, at, deleted, own)| FoldRow {
                    id,
                    visitor,
                    event_type,
                    data,
                    page_url,
                    at,
                    deleted,
                    own,
                },
            )
            .collect();
        let n = self.fold_rows(&mut tx, &rows).await?;
        if let Some(last) = rows.last() {
            let at = micros(super::time_from_sql(&last.at)?);
            sqlx::query(
                "UPDATE agg_state SET cursor_at = $1, cursor_id = $2, folded = folded + $3 \
                 WHERE id = 1",
            )
            .bind(at)
            .bind(&last.id)
            .bind(scanned)
            .execute(&mut *tx)
            .await?;
            // The rows of these transactions are all behind the fold now.
            sqlx::query("DELETE FROM agg_own_xacts WHERE at < $1")
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        if done && ready == 0 {
            sqlx::query("UPDATE agg_state SET ready = 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if done {
            self.agg.ready.store(true, Ordering::Release);
        }
        let _ = n;
        Ok(FoldProgress {
            folded: scanned.max(0) as u64,
            total_folded: (folded + scanned).max(0) as u64,
            caught_up: done,
            continuous: true,
        })
    }
}

/// PostgreSQL's fragments for `sql_store_impl!`. `CAST(… AS TIMESTAMPTZ)` reads a
/// `TIMESTAMP` column as UTC (the session's zone) and leaves a `TIMESTAMPTZ` one
/// alone; `AT TIME ZONE 'UTC'` then gives the UTC wall clock for both.
macro_rules! pg_sql {
    (uuid) => {
        "UUID"
    };
    (time) => {
        "TIMESTAMP"
    };
    (time_text $e:literal) => {
        concat!(
            "to_char(CAST(",
            $e,
            " AS TIMESTAMPTZ) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        )
    };
    (minute_text $e:literal) => {
        concat!(
            "to_char(CAST(",
            $e,
            " AS TIMESTAMPTZ) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
        )
    };
    (json_text $k:literal) => {
        concat!("(event_data ->> '", $k, "')")
    };
    (json_is_string $k:literal) => {
        concat!("jsonb_typeof(event_data -> '", $k, "') = 'string'")
    };
    (json_is_number $k:literal) => {
        concat!("jsonb_typeof(event_data -> '", $k, "') = 'number'")
    };
    (json_raw $k:literal) => {
        concat!("(event_data ->> '", $k, "')")
    };
    (binary_order) => {
        " COLLATE \"C\""
    };
    (columns_of_table) => {
        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1"
    };
    (for_update) => {
        " FOR UPDATE"
    };
    // The fold knows the writer's rows by their `xmin` (32 bits of the transaction
    // id); `$1`: the latest `created_at` of the batch, in microseconds.
    (record_own_xact) => {
        "INSERT INTO agg_own_xacts (xid, at) \
         VALUES (CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT) % 4294967296, $1) \
         ON CONFLICT (xid) DO UPDATE SET at = GREATEST(agg_own_xacts.at, excluded.at)"
    };
    (forget_own_xacts) => {
        "DELETE FROM agg_own_xacts"
    };
    // A rebuild folds every row from the start again.
    (rebuild_state) => {
        "UPDATE agg_state SET timezone = $1, ready = 0, boundary = 0, cursor_rowid = 0, \
         cursor_at = NULL, cursor_id = NULL, folded = 0 WHERE id = 1"
    };
}

sql_store_impl!(PgStore, Postgres, pg_sql);
