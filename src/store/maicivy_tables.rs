//! maicivy's own tables (`visitors`, `generated_letters`): whether this database has
//! them, found once at connect, and the reads the routes make of them (Go's fallback
//! counts, the session lookup). Apart from the event queries because every one of
//! them depends on a table this server does not own and may not find.

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
    pub(super) fn from_columns(visitors: &[String], letters: &[String]) -> Self {
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

/// The queries of maicivy's tables, for `sql_store_impl!`.
macro_rules! maicivy_tables_impl {
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
                let tables = $crate::store::MaicivyTables::from_columns(&columns[0], &columns[1]);
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

            /// `EventStore::maicivy_visitors_since`.
            async fn maicivy_visitor_count(
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

            /// `EventStore::maicivy_letters_since`.
            async fn maicivy_letter_count(
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

            /// `EventStore::session_visitor`.
            async fn maicivy_session_visitor(
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
        }
    };
}
pub(crate) use maicivy_tables_impl;
