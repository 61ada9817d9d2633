//! Live figures in process memory, for the embedded mode.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::{LiveError, LiveStats};
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::period::{day_start, local_day};
use crate::store::{EventStore, StoreError};

/// A `std::sync::Mutex`, not a Tokio one: it is never held across an `.await`, and
/// each critical section is a few hash operations.
pub struct MemoryLive {
    tz: Tz,
    /// Seconds a visitor stays current after their last activity (300 in production).
    window: i64,
    inner: Mutex<Inner>,
}

struct Inner {
    day: NaiveDate,
    /// Last activity, in Unix seconds, of visitors active in the window.
    active: HashMap<VisitorId, i64>,
    /// Exact set of today's visitors (16 bytes each; a million visitors is ~40 MB).
    unique: HashSet<VisitorId>,
    total_events: u64,
    letters: u64,
}

impl Inner {
    /// Moves to the day of `at` if it is a later one. `false` when `at` belongs to
    /// an earlier day: an event committed just after midnight that happened just
    /// before it. Its figures belong to yesterday, and it must neither roll the
    /// figures back nor count in today's.
    fn roll_over(&mut self, tz: Tz, at: DateTime<Utc>) -> bool {
        let day = local_day(tz, at);
        if day > self.day {
            self.day = day;
            self.unique.clear();
            self.total_events = 0;
            self.letters = 0;
        }
        day == self.day
    }

    /// Marks `visitor` active at `at` (and one of today's visitors when `today`);
    /// `true` if they were not active.
    fn touch(&mut self, visitor: VisitorId, at: i64, today: bool) -> bool {
        if today {
            self.unique.insert(visitor);
        }
        match self.active.insert(visitor, at) {
            Some(prev) => {
                if prev > at {
                    self.active.insert(visitor, prev);
                }
                false
            }
            None => true,
        }
    }
}

impl MemoryLive {
    /// Today's figures, rebuilt from the store so that a restart keeps them.
    pub async fn restore(
        store: &dyn EventStore,
        tz: Tz,
        window: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        let today = local_day(tz, now);
        let from = day_start(tz, today);
        let summary = store.summary(from, now + chrono::Duration::days(1)).await?;
        let visitors = store.visitors_since(from).await?;
        let window_start = now.timestamp() - window;
        let mut inner = Inner {
            day: today,
            active: HashMap::new(),
            unique: HashSet::with_capacity(visitors.len()),
            total_events: summary.total_events,
            letters: summary.letters_generated,
        };
        for (visitor, last_seen) in visitors {
            inner.unique.insert(visitor);
            if last_seen.timestamp() > window_start {
                inner.active.insert(visitor, last_seen.timestamp());
            }
        }
        Ok(Self {
            tz,
            window,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }
}

#[async_trait]
impl LiveStats for MemoryLive {
    async fn record_event(&self, event: &NewEvent) -> Result<bool, LiveError> {
        let mut inner = self.lock();
        let today = inner.roll_over(self.tz, event.occurred_at);
        if today {
            inner.total_events += 1;
            if event.event_type.is_letter() {
                inner.letters += 1;
            }
        }
        Ok(inner.touch(event.visitor_id, event.occurred_at.timestamp(), today))
    }

    async fn touch(&self, visitor: VisitorId, at: DateTime<Utc>) -> Result<bool, LiveError> {
        let mut inner = self.lock();
        let today = inner.roll_over(self.tz, at);
        Ok(inner.touch(visitor, at.timestamp(), today))
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<Vec<VisitorId>, LiveError> {
        let cutoff = now.timestamp() - self.window;
        let mut inner = self.lock();
        let mut gone = Vec::new();
        inner.active.retain(|visitor, last| {
            let keep = *last > cutoff;
            if !keep {
                gone.push(*visitor);
            }
            keep
        });
        Ok(gone)
    }

    async fn period_summary(
        &self,
        _period: crate::period::Period,
        _now: DateTime<Utc>,
    ) -> Result<Option<crate::store::Summary>, LiveError> {
        // Period figures come from the event store in the embedded mode.
        Ok(None)
    }

    async fn top_themes(
        &self,
        _limit: u32,
    ) -> Result<Option<Vec<crate::store::ThemeViews>>, LiveError> {
        Ok(None)
    }

    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    async fn snapshot(&self, now: DateTime<Utc>) -> Result<Stats, LiveError> {
        let cutoff = now.timestamp() - self.window;
        let mut inner = self.lock();
        inner.roll_over(self.tz, now);
        Ok(Stats {
            current_visitors: inner.active.values().filter(|&&t| t > cutoff).count() as u64,
            unique_today: inner.unique.len() as u64,
            total_events: inner.total_events,
            letters_today: inner.letters,
            timestamp: now.timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventType;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn event(kind: &str, when: &str) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: EventType::parse(kind).unwrap(),
            visitor_id: VisitorId::from_uuid(uuid::Uuid::new_v4()),
            event_data: Default::default(),
            page_url: None,
            referrer: None,
            occurred_at: at(when),
        }
    }

    #[tokio::test]
    async fn a_late_event_of_yesterday_neither_rolls_back_nor_counts_today() {
        let live = MemoryLive {
            tz: chrono_tz::UTC,
            window: 300,
            inner: Mutex::new(Inner {
                day: at("2026-12-01T12:00:00Z").date_naive(),
                active: HashMap::new(),
                unique: HashSet::new(),
                total_events: 0,
                letters: 0,
            }),
        };
        live.record_event(&event("letter_generate", "2026-12-01T23:59:59Z"))
            .await
            .unwrap();
        live.record_event(&event("page_view", "2026-12-02T00:00:01Z"))
            .await
            .unwrap();
        // Committed after midnight, but it happened before.
        live.record_event(&event("letter_generate", "2026-12-01T23:59:59.900Z"))
            .await
            .unwrap();
        let s = live.snapshot(at("2026-12-02T00:00:02Z")).await.unwrap();
        assert_eq!(
            (s.total_events, s.letters_today, s.unique_today),
            (1, 0, 1),
            "today's figures kept, yesterday's event not in them"
        );
    }
}
