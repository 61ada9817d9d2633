//! The event store: where every ingested event is kept, and what the read routes
//! query.
//!
//! **Architecture Invariant:** nothing outside this module writes SQL. The rest of the
//! server sees the `EventStore` trait and the domain types.
//!
//! One type per backend (`SqliteStore`, `PgStore`), each owning its connection setup
//! and its migrations (`migrations/sqlite`, `migrations/postgres`: the same schema in
//! two dialects). The queries themselves are the same text for both backends, so they
//! are written once, in `sql_store_impl!`, and expanded for each concrete pool type
//! (concrete types keep sqlx's trait bounds out of sight).

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{NewEvent, StoredEvent, VisitorId};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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

/// Counts over a time range, for the `stats` route and for rebuilding today's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub total_events: u64,
    pub letters_generated: u64,
    pub unique_visitors: u64,
}

/// Events of one minute, for the dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinuteCount {
    /// Unix milliseconds of the minute's start (UTC minutes).
    pub minute_ms: i64,
    pub count: u64,
}

/// A page being viewed now, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PageNow {
    pub page_url: String,
    /// Visitors whose latest `page_view` in the window is this page: who is on it now.
    pub visitors: u64,
    /// `page_view` events of this page in the window.
    pub views: u64,
}

/// Views of one CV theme (`cv_theme_change` events whose `event_data.theme` is a
/// string), for the `themes` route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThemeViews {
    pub theme: String,
    pub views: u64,
}

/// Clicks at one rounded position, for the `heatmap` route.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeatCell {
    /// `event_data.x` and `.y` rounded to whole numbers (half to even, as maicivy's
    /// `%.0f`).
    pub x: f64,
    pub y: f64,
    pub count: u64,
}

/// The letters of a period, for the `letters` route: from maicivy's
/// `generated_letters` rows where that table exists, otherwise from the
/// `letter_generate` events' `event_data.letter_type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Letters {
    pub motivation: u64,
    pub anti_motivation: u64,
    /// Letters per local calendar day (in the `tz` asked for), oldest first; days
    /// without letters are left out.
    pub per_day: Vec<(NaiveDate, u64)>,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores the events in one transaction: all or none. Where maicivy's `visitors`
    /// table exists, a visitor it does not know gets a row there first (its
    /// `session_id` is `maicivy-analytics:<visitor id>`), in the same transaction.
    async fn insert_batch(&self, events: &[NewEvent]) -> Result<(), StoreError>;

    /// Newest first.
    async fn timeline(&self, limit: u32, offset: u64) -> Result<Vec<StoredEvent>, StoreError>;

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

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the pool once every write has finished.
    async fn close(&self);
}

/// Opens (and migrates) the store that `url` names.
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 32];
    rand::fill(&mut salt[..]);
    salt
}

/// The queries, written once for both backends (`$N` placeholders work in both).
macro_rules! sql_store_impl {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::EventStore for $store {
            async fn insert_batch(
                &self,
                events: &[$crate::domain::NewEvent],
            ) -> Result<(), $crate::store::StoreError> {
                use sqlx::Row;
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await?;
                let mut ids = Vec::with_capacity(events.len());
                // Bind parameters are limited per statement (SQLite: 32,766), so
                // large batches go in chunks, still inside the one transaction.
                for chunk in events.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO analytics_events \
                         (event_type, visitor_id, event_data, page_url, created_at_ms) ",
                    );
                    q.push_values(chunk, |mut row, e| {
                        row.push_bind(e.event_type.as_str().to_owned())
                            .push_bind(e.visitor_id.to_string())
                            .push_bind(sqlx::types::Json(e.event_data.clone()))
                            .push_bind(e.page_url.clone())
                            .push_bind(e.occurred_at.timestamp_millis());
                    });
                    q.push(" RETURNING id");
                    let rows = q.build().fetch_all(&mut *tx).await?;
                    ids.extend(rows.iter().map(|r| r.get::<i64, _>(0)));
                }
                tx.commit().await?;
                let _ = ids;
                Ok(())
            }

            async fn timeline(
                &self,
                limit: u32,
                offset: u64,
            ) -> Result<Vec<$crate::domain::StoredEvent>, $crate::store::StoreError> {
                let rows: Vec<(
                    i64,
                    String,
                    String,
                    sqlx::types::Json<serde_json::Value>,
                    Option<String>,
                    i64,
                )> = sqlx::query_as(
                    "SELECT id, event_type, visitor_id, event_data, page_url, created_at_ms \
                     FROM analytics_events ORDER BY id DESC LIMIT $1 OFFSET $2",
                )
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, event_type, visitor_id, data, page_url, at)| {
                        $crate::domain::StoredEvent {
                            id: uuid::Uuid::from_u64_pair(0, id as u64), // STUB
                            event_type,
                            visitor_id,
                            event_data: data.0,
                            page_url,
                            referrer: None,
                            created_at: $crate::store::millis_to_time(at),
                        }
                    })
                    .collect())
            }

            async fn summary(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::Summary, $crate::store::StoreError> {
                let (total, letters, unique): (i64, i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), \
                     COALESCE(SUM(CASE WHEN event_type = 'letter_generate' THEN 1 ELSE 0 END), 0), \
                     COUNT(DISTINCT visitor_id) \
                     FROM analytics_events WHERE created_at_ms >= $1 AND created_at_ms < $2",
                )
                .bind(from.timestamp_millis())
                .bind(to.timestamp_millis())
                .fetch_one(&self.pool)
                .await?;
                Ok($crate::store::Summary {
                    total_events: total.max(0) as u64,
                    letters_generated: letters.max(0) as u64,
                    unique_visitors: unique.max(0) as u64,
                })
            }

            async fn events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                // Integer division on both backends (BIGINT / INTEGER).
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT created_at_ms / 60000, COUNT(*) FROM analytics_events \
                     WHERE created_at_ms >= $1 AND created_at_ms < $2 \
                     GROUP BY created_at_ms / 60000 ORDER BY 1",
                )
                .bind(from.timestamp_millis())
                .bind(to.timestamp_millis())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(minute, count)| $crate::store::MinuteCount {
                        minute_ms: minute * 60_000,
                        count: count.max(0) as u64,
                    })
                    .collect())
            }

            async fn pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                // `latest`: each visitor's last page_view in the window (by id, the
                // order of commit), so a visitor who moved on counts on the new page.
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT e.page_url, \
                     SUM(CASE WHEN e.id = latest.last_id THEN 1 ELSE 0 END) AS visitors, \
                     COUNT(*) AS views \
                     FROM analytics_events e \
                     JOIN (SELECT visitor_id, MAX(id) AS last_id FROM analytics_events \
                           WHERE event_type = 'page_view' AND created_at_ms >= $1 \
                           GROUP BY visitor_id) latest ON latest.visitor_id = e.visitor_id \
                     WHERE e.event_type = 'page_view' AND e.created_at_ms >= $1 \
                     AND e.page_url IS NOT NULL \
                     GROUP BY e.page_url \
                     ORDER BY visitors DESC, views DESC, e.page_url LIMIT $2",
                )
                .bind(from.timestamp_millis())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(page_url, visitors, views)| $crate::store::PageNow {
                        page_url,
                        visitors: visitors.max(0) as u64,
                        views: views.max(0) as u64,
                    })
                    .collect())
            }

            async fn visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT visitor_id, MAX(created_at_ms) FROM analytics_events \
                     WHERE created_at_ms >= $1 GROUP BY visitor_id",
                )
                .bind(from.timestamp_millis())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(id, at)| {
                        let id = $crate::domain::VisitorId::parse(&id).ok()?;
                        Some((id, $crate::store::millis_to_time(at)))
                    })
                    .collect())
            }

            async fn daily_salt(
                &self,
                day: chrono::NaiveDate,
            ) -> Result<Vec<u8>, $crate::store::StoreError> {
                let day = day.format("%Y-%m-%d").to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM visitor_salts WHERE day < $1")
                    .bind(&day)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO visitor_salts (day, salt) VALUES ($1, $2) \
                     ON CONFLICT (day) DO NOTHING",
                )
                .bind(&day)
                .bind($crate::store::new_salt())
                .execute(&mut *tx)
                .await?;
                let (salt,): (Vec<u8>,) =
                    sqlx::query_as("SELECT salt FROM visitor_salts WHERE day = $1")
                        .bind(&day)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(salt)
            }

            // STUBS, replaced by the store rewrite.
            async fn top_themes(&self, _limit: u32) -> Result<Vec<$crate::store::ThemeViews>, $crate::store::StoreError> { Ok(Vec::new()) }
            async fn heatmap(&self, _from: chrono::DateTime<chrono::Utc>, _page_url: Option<&str>) -> Result<Vec<$crate::store::HeatCell>, $crate::store::StoreError> { Ok(Vec::new()) }
            async fn letters(&self, _from: chrono::DateTime<chrono::Utc>, _to: chrono::DateTime<chrono::Utc>, _tz: chrono_tz::Tz) -> Result<$crate::store::Letters, $crate::store::StoreError> { Ok(Default::default()) }
            async fn maicivy_visitors_since(&self, _from: chrono::DateTime<chrono::Utc>) -> Result<Option<u64>, $crate::store::StoreError> { Ok(None) }
            async fn maicivy_letters_since(&self, _from: chrono::DateTime<chrono::Utc>) -> Result<Option<u64>, $crate::store::StoreError> { Ok(None) }
            async fn session_visitor(&self, _session_id: &str) -> Result<Option<$crate::domain::VisitorId>, $crate::store::StoreError> { Ok(None) }

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
pub(crate) use sql_store_impl;
