//! The live figures (STATS): who is active in the last five minutes, who came today,
//! how many events and letters today. In process memory by default; in Redis, in the
//! key layout of maicivy's Go backend, for several instances.
//!
//! **Architecture Invariant:** the live figures are derived state. The event store is
//! the record; the embedded implementation is rebuilt from it at start.

mod memory;
mod redis;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{NewEvent, Stats, VisitorId};
use crate::period::Period;
use crate::store::{Summary, ThemeViews};

pub use self::redis::RedisLive;
pub use memory::MemoryLive;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("the live figures are unreachable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait LiveStats: Send + Sync + 'static {
    /// Counts an ingested event. `true` when its visitor has just become active.
    async fn record_event(&self, event: &NewEvent) -> Result<bool, LiveError>;

    /// Marks a visitor active (a client `ping` carrying a `visitor_id`). `true` when
    /// they have just become active.
    async fn touch(&self, visitor: VisitorId, at: DateTime<Utc>) -> Result<bool, LiveError>;

    /// Forgets visitors inactive for the active window; returns them.
    async fn prune(&self, now: DateTime<Utc>) -> Result<Vec<VisitorId>, LiveError>;

    /// The figures as of `now`.
    async fn snapshot(&self, now: DateTime<Utc>) -> Result<Stats, LiveError>;

    /// The totals of the `period` that contains `now`, when this implementation
    /// keeps them (Redis mode: Go's period keys, with Go's fallbacks); `None` means
    /// "ask the event store".
    async fn period_summary(
        &self,
        period: Period,
        now: DateTime<Utc>,
    ) -> Result<Option<Summary>, LiveError>;

    /// The most viewed CV themes, when this implementation keeps them (Redis mode:
    /// `analytics:themes:top`); `None` means "ask the event store".
    async fn top_themes(&self, limit: u32) -> Result<Option<Vec<ThemeViews>>, LiveError>;

    /// `Err(sentence)` while the figures cannot be trusted (e.g. a key of the wrong
    /// type in Redis), for `/readyz`.
    fn readiness(&self) -> Result<(), String>;
}
