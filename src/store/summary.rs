//! Counts over a period (`/stats`, and today's figures at start): raw, or from the
//! day aggregates and their sketches with the edges of the period raw. Apart from
//! the live reads because a period spans days, and its unique visitors are a union of
//! sketches.

/// The period summary's queries, for `sql_store_impl!`.
macro_rules! summary_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
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
        }
    };
}
pub(crate) use summary_impl;
