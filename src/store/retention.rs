//! Retention: expired events deleted in batches, then the aggregates that only short
//! windows read pruned. Apart from the writer's statements because it runs in the
//! background (`Maintenance`), never in a batch's transaction.

/// Retention's queries, for `sql_store_impl!`.
macro_rules! retention_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
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
    };
}
pub(crate) use retention_impl;
