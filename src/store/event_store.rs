//! `EventStore` for a backend: which query answers each method, the aggregates' or
//! the raw one. The queries themselves are in the files named for what they read or
//! write; this one only routes, so that the choice is visible in one place.

/// The `EventStore` impl, for `sql_store_impl!`.
macro_rules! event_store_impl {
    ($store:ty, $db:ty, $d:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::EventStore for $store {
            async fn insert_batch(
                &self,
                events: &[$crate::domain::NewEvent],
            ) -> Result<(), $crate::store::StoreError> {
                self.commit_batch(events).await
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
                self.salt_of_day(day).await
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
                    let rows = self
                        .raw_heat_rows(from, $crate::store::end_of_time(), page_url)
                        .await?;
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
                self.maicivy_visitor_count(from).await
            }

            async fn maicivy_letters_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<u64>, $crate::store::StoreError> {
                self.maicivy_letter_count(from).await
            }

            async fn session_visitor(
                &self,
                session_id: &str,
            ) -> Result<Option<$crate::domain::VisitorId>, $crate::store::StoreError> {
                self.maicivy_session_visitor(session_id).await
            }

            async fn fold_step(
                &self,
            ) -> Result<$crate::store::FoldProgress, $crate::store::StoreError> {
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
pub(crate) use event_store_impl;
