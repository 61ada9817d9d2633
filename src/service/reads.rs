//! The read side of `Analytics`: what the read routes ask for, answered from the
//! live figures where they keep it (Redis mode: Go's period keys and themes set)
//! and from the event store otherwise. Handlers call these; they never reach the
//! store or Redis themselves.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::Analytics;
use crate::domain::{StoredEvent, VisitorId};
use crate::live::LiveError;
use crate::period::{Period, Range, local_day};
use crate::store::{HeatCell, StoreError, Summary, ThemeViews, TimelineCursor};

/// Why a read could not be answered. Its text is for the log, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Live(#[from] LiveError),
}

/// The totals of the current day, ISO week or month.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodStats {
    pub period: Period,
    pub range: Range,
    pub summary: Summary,
}

impl PeriodStats {
    /// Letters per unique visitor, as a fraction (1 letter for 4 visitors is 0.25),
    /// as maicivy computes it: its page multiplies it by 100. 0 without visitors.
    pub fn conversion_rate(&self) -> f64 {
        if self.summary.unique_visitors == 0 {
            0.0
        } else {
            self.summary.letters_generated as f64 / self.summary.unique_visitors as f64
        }
    }
}

/// The `letters` route's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LetterStats {
    pub stats: PeriodStats,
    pub motivation: u64,
    pub anti_motivation: u64,
    /// One entry per day of the period that has letters; when none has, one zero
    /// entry per day of the last 1 / 7 / 30 days (maicivy's placeholder history).
    pub history: Vec<(NaiveDate, u64)>,
}

impl Analytics {
    /// The totals of the current `period`: Go's keys in Redis mode, the store
    /// otherwise.
    pub async fn period_stats(&self, period: Period) -> Result<PeriodStats, ReadError> {
        let now = Utc::now();
        let range = period.current(self.tz, now);
        let summary = match self.live.period_summary(period, now).await? {
            Some(summary) => summary,
            None => self.store.summary(range.from, range.to).await?,
        };
        Ok(PeriodStats {
            period,
            range,
            summary,
        })
    }

    pub async fn letter_stats(&self, period: Period) -> Result<LetterStats, ReadError> {
        let stats = self.period_stats(period).await?;
        let letters = self
            .store
            .letters(stats.range.from, stats.range.to, self.tz)
            .await?;
        let history = if letters.per_day.iter().any(|&(_, n)| n > 0) {
            letters.per_day
        } else {
            let days = match period {
                Period::Day => 1,
                Period::Week => 7,
                Period::Month => 30,
            };
            let today = local_day(self.tz, Utc::now());
            (0..days)
                .rev()
                .map(|back| (today - Duration::days(back), 0))
                .collect()
        };
        Ok(LetterStats {
            stats,
            motivation: letters.motivation,
            anti_motivation: letters.anti_motivation,
            history,
        })
    }

    /// The most viewed CV themes: `analytics:themes:top` in Redis mode, the store's
    /// `cv_theme_change` events otherwise.
    pub async fn top_themes(&self, limit: u32) -> Result<Vec<ThemeViews>, ReadError> {
        match self.live.top_themes(limit).await? {
            Some(themes) => Ok(themes),
            None => Ok(self.store.top_themes(limit).await?),
        }
    }

    /// Clicks per position over the last `hours`, for one page or all.
    pub async fn heatmap(
        &self,
        page_url: Option<&str>,
        hours: u32,
    ) -> Result<Vec<HeatCell>, ReadError> {
        let from = Utc::now() - Duration::hours(i64::from(hours));
        Ok(self.store.heatmap(from, page_url).await?)
    }

    /// The newest events first; after `before` (the last event of the previous
    /// page) when it is given, skipping `offset` more.
    pub async fn timeline(
        &self,
        limit: u32,
        offset: u64,
        before: Option<TimelineCursor>,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self.store.timeline_before(limit, offset, before).await?)
    }

    /// The visitor behind maicivy's `maicivy_session` cookie: the one maicivy's
    /// `visitors` table has for it, else a UUID derived from the cookie's value
    /// (stable for it, so one session counts as one visitor here too).
    pub async fn session_visitor(&self, session: &str) -> Result<VisitorId, StoreError> {
        if let Some(known) = self.store.session_visitor(session).await? {
            return Ok(known);
        }
        Ok(derived_session_visitor(session))
    }

    /// Events per minute with `from <= created_at < to`, for the dashboard.
    pub async fn events_per_minute(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<crate::store::MinuteCount>, ReadError> {
        Ok(self.store.events_per_minute(from, to).await?)
    }

    /// Pages viewed since `from`, for the dashboard.
    pub async fn pages_since(
        &self,
        from: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<crate::store::PageNow>, ReadError> {
        Ok(self.store.pages_since(from, limit).await?)
    }

    /// Whether the store answers, within `within`.
    pub async fn store_ready(&self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.store.ping()).await,
            Ok(Ok(()))
        )
    }

    /// `Err(sentence)` while the live figures cannot be trusted (e.g. a Redis key
    /// of the wrong type).
    pub fn live_readiness(&self) -> Result<(), String> {
        self.live.readiness()
    }
}

/// A UUID (version 5) of the session cookie's value in a namespace of our own.
fn derived_session_visitor(session: &str) -> VisitorId {
    const NAMESPACE: uuid::Uuid = uuid::uuid!("8c1f4a52-5a5e-4b7e-9d0e-6d6169636976");
    VisitorId::from_uuid(uuid::Uuid::new_v5(&NAMESPACE, session.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_always_gives_the_same_visitor_and_another_session_another() {
        let a = derived_session_visitor("s3ss10n-a");
        assert_eq!(a, derived_session_visitor("s3ss10n-a"));
        assert_ne!(a, derived_session_visitor("s3ss10n-b"));
    }
}
