//! Live figures in process memory, for the embedded mode.
//!
//! What it keeps is bounded whatever the visitor ids clients send: the day's
//! visitors are an exact set up to `EXACT_VISITORS`, then a HyperLogLog sketch
//! (`DayVisitors`); the active visitors are those of the last window, pruned by the
//! heartbeat.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::{LiveError, LiveStats};
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::period::{day_start, local_day};
use crate::store::aggregates::{Sketch, visitor_hash};
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
    /// Today's visitors: exact, then estimated past `EXACT_VISITORS`.
    unique: DayVisitors,
    total_events: u64,
    letters: u64,
}

/// Visitors counted exactly in a day before the count becomes an estimate: about
/// 4 MiB of set (16 bytes of id and the table's overhead each). Any visitor id a client
/// sends (an event, a ping) lands here, so without a bound a client inventing ids could
/// grow the process until the end of the day.
pub(crate) const EXACT_VISITORS: usize = 100_000;
/// The distinct visitors of one day: an exact set while they are few, a
/// HyperLogLog sketch of every one of them once they are more than
/// `EXACT_VISITORS` (the set is then dropped). The store's `/stats` count of a day
/// stays exact; only this live figure becomes an estimate, past the bound.
enum DayVisitors {
    Exact(HashSet<VisitorId>),
    /// The store's sketch (precision 14, 16 KiB, standard error 0.81%), fed the same
    /// stable hash of the visitor as the store's day sketches.
    Sketch(Box<Sketch>),
}

impl DayVisitors {
    fn new() -> Self {
        Self::Exact(HashSet::new())
    }

    fn insert(&mut self, visitor: VisitorId) {
        match self {
            Self::Exact(set) => {
                if set.insert(visitor) && set.len() > EXACT_VISITORS {
                    let mut sketch = Sketch::new();
                    for v in set.iter() {
                        sketch.insert_hash(visitor_hash(&v.to_string()));
                    }
                    *self = Self::Sketch(Box::new(sketch));
                }
            }
            Self::Sketch(sketch) => sketch.insert_hash(visitor_hash(&visitor.to_string())),
        }
    }

    fn count(&self) -> u64 {
        match self {
            Self::Exact(set) => set.len() as u64,
            Self::Sketch(sketch) => sketch.estimate(),
        }
    }

    #[cfg(test)]
    fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }
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
            self.unique = DayVisitors::new();
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
            unique: DayVisitors::new(),
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
            unique_today: inner.unique.count(),
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
                unique: DayVisitors::new(),
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

#[cfg(test)]
mod day_visitors {
    use super::*;

    fn visitor(i: u64) -> VisitorId {
        VisitorId::from_uuid(uuid::Uuid::from_u64_pair(0x1234, i))
    }

    #[test]
    fn exact_up_to_the_bound_then_an_estimate_within_three_standard_errors() {
        let mut day = DayVisitors::new();
        for i in 0..EXACT_VISITORS as u64 {
            day.insert(visitor(i));
            // Seen twice: still one visitor.
            day.insert(visitor(i));
        }
        assert!(day.is_exact());
        assert_eq!(day.count(), EXACT_VISITORS as u64);
        let total = 3 * EXACT_VISITORS as u64;
        for i in 0..total {
            day.insert(visitor(i));
        }
        assert!(!day.is_exact(), "past the bound the set is dropped");
        let error = (day.count() as f64 - total as f64).abs() / total as f64;
        assert!(
            error < 3.0 * 0.0081,
            "estimate {} of {total} visitors: error {error:.4}",
            day.count()
        );
    }

    #[test]
    fn a_new_day_starts_exact_again() {
        let mut inner = Inner {
            day: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
            active: HashMap::new(),
            unique: DayVisitors::new(),
            total_events: 0,
            letters: 0,
        };
        for i in 0..=EXACT_VISITORS as u64 {
            inner.unique.insert(visitor(i));
        }
        assert!(!inner.unique.is_exact());
        let next = DateTime::parse_from_rfc3339("2026-12-02T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(inner.roll_over(chrono_tz::UTC, next));
        inner.unique.insert(visitor(7));
        assert!(inner.unique.is_exact());
        assert_eq!(inner.unique.count(), 1);
    }
}
