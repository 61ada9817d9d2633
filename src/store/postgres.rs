//! PostgreSQL, for several instances sharing one event store, and for sharing
//! maicivy's own database with its Go backend.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::{MaicivyTables, StoreError, sql_store_impl};

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
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // maicivy's columns may be `TIMESTAMP` (UTC wall-clock times) or, made by
        // its ORM, `TIMESTAMPTZ`. The store writes and compares times as UTC
        // `TIMESTAMP`s, and converting between the two types uses the session's
        // time zone: it must be UTC, whatever the server, role or URL says
        // (startup options override all of them).
        let options = PgConnectOptions::from_str(url)?.options([("timezone", "UTC")]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/postgres_maicivy");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        let tables = Self::find_maicivy_tables(&pool).await?;
        Ok(Self {
            pool,
            tables,
            discard_failed_connections: true,
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
}

sql_store_impl!(PgStore, Postgres, pg_sql);
