//! Whether the aggregates answer, and the zone of their days: `agg_state`, read once
//! at connect (where a change of zone starts a rebuild), then the flag every read
//! consults. Apart from the aggregates' writes because it runs before any of them.

/// The queries of `agg_state`, for `sql_store_impl!`.
macro_rules! state_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
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
                let recorded_tz = recorded
                    .as_deref()
                    .and_then(|r| r.parse::<chrono_tz::Tz>().ok());
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

            /// Whether the aggregates can answer (the backfill is done).
            fn agg_ready(&self) -> bool {
                self.agg.ready.load(std::sync::atomic::Ordering::Acquire)
                    && !self.agg.raw_only.load(std::sync::atomic::Ordering::Acquire)
            }
        }
    };
}
pub(crate) use state_impl;
