//! Redis outages: while it cannot be reached, the updates of ingested events merge
//! into a bounded `Backlog`, which a task replays, as the same commands, once Redis
//! answers again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Value};
use chrono::{Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

use super::commands::{Batch, query};
use super::keys::Scope;
use super::{Shared, Update};
use crate::broker::is_transient;
use crate::domain::VisitorId;
use crate::period::local_day;

/// While Redis is unreachable, how often the backlog tries to reach it.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Most (visitor, day) and active-visitor entries the backlog holds; ~64 bytes each.
const BACKLOG_MAX_VISITORS: usize = 100_000;
/// Most bytes of distinct theme names the backlog holds: themes come from clients,
/// so their number and length are theirs to choose.
const BACKLOG_MAX_THEME_BYTES: usize = 1 << 20;

impl Shared {
    fn backlog(&self) -> parking_lot::MutexGuard<'_, Backlog> {
        self.backlog.lock()
    }

    pub(super) fn defer(&self, tz: Tz, update: &Update) {
        let mut backlog = self.backlog();
        let dropped = backlog.add(tz, update);
        self.metrics.redis_pending_events.set(gauge(backlog.events));
        drop(backlog);
        if dropped > 0 {
            self.metrics.redis_backlog_dropped.inc_by(dropped);
        }
        self.wake.notify_one();
    }

    pub(super) fn mark_down(&self, addr: &str, e: &RedisError) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(%addr, error = %e,
                "Redis is unreachable; keeping the figures of new events until it is back");
            self.metrics.redis_commands_up.set(0);
        }
        self.wake.notify_one();
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The updates Redis has not taken yet, merged: counters per day, the set of each
/// day's visitors, each visitor's latest activity, and theme views. The week's and
/// month's keys are derived from the days when replayed, so they get the same
/// commands a live event gives them.
///
/// The counters are integers and never lost. The visitor entries are bounded by
/// `BACKLOG_MAX_VISITORS` and the theme names by `BACKLOG_MAX_THEME_BYTES`: past
/// them, new visitors of the outage are left out of the replayed unique and current
/// figures, and new themes out of `analytics:themes:top` (counted in
/// `maicivy_redis_backlog_dropped_total`), while `total_events` and letters stay
/// exact.
#[derive(Default)]
pub(super) struct Backlog {
    days: BTreeMap<NaiveDate, DayDelta>,
    active: HashMap<VisitorId, i64>,
    themes: HashMap<String, u64>,
    /// Entries in `active` and in every day's `visitors`.
    entries: usize,
    /// Bytes of the names in `themes`.
    theme_bytes: usize,
    /// Events whose figures are waiting.
    events: u64,
}

#[derive(Default)]
struct DayDelta {
    events: u64,
    letters: u64,
    visitors: HashSet<VisitorId>,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.days.is_empty() && self.active.is_empty() && self.themes.is_empty()
    }

    /// Adds one update; returns how many visitor or theme entries did not fit.
    fn add(&mut self, tz: Tz, u: &Update) -> u64 {
        let mut dropped = 0;
        let day = self.days.entry(local_day(tz, u.at)).or_default();
        day.events += u.events;
        day.letters += u.letters;
        self.events += u.events;
        if !day.visitors.contains(&u.visitor) {
            if self.entries < BACKLOG_MAX_VISITORS {
                day.visitors.insert(u.visitor);
                self.entries += 1;
            } else {
                dropped += 1;
            }
        }
        let ts = u.at.timestamp();
        match self.active.get_mut(&u.visitor) {
            Some(last) => *last = (*last).max(ts),
            None if self.entries < BACKLOG_MAX_VISITORS => {
                self.active.insert(u.visitor, ts);
                self.entries += 1;
            }
            None => dropped += 1,
        }
        if let Some(theme) = &u.theme {
            match self.themes.get_mut(theme) {
                Some(n) => *n += 1,
                None if self.theme_bytes + theme.len() <= BACKLOG_MAX_THEME_BYTES => {
                    self.theme_bytes += theme.len();
                    self.themes.insert(theme.clone(), 1);
                }
                None => dropped += 1,
            }
        }
        dropped
    }

    /// Puts back a batch that could not be replayed, merged with what came since.
    fn merge(&mut self, other: Backlog) {
        for (date, delta) in other.days {
            let day = self.days.entry(date).or_default();
            day.events += delta.events;
            day.letters += delta.letters;
            for v in delta.visitors {
                if day.visitors.insert(v) {
                    self.entries += 1;
                }
            }
        }
        for (v, ts) in other.active {
            match self.active.get_mut(&v) {
                Some(last) => *last = (*last).max(ts),
                None => {
                    self.active.insert(v, ts);
                    self.entries += 1;
                }
            }
        }
        for (theme, n) in other.themes {
            match self.themes.get_mut(&theme) {
                Some(m) => *m += n,
                None => {
                    self.theme_bytes += theme.len();
                    self.themes.insert(theme, n);
                }
            }
        }
        self.events += other.events;
    }

    /// One MULTI/EXEC that applies the whole backlog with the commands live events
    /// use. Visitors whose activity has left the window are not re-added as current.
    fn batch(&self, cutoff: i64, window: i64, presence_ttl: i64) -> Batch {
        let mut b = Batch::atomic();
        // Go's week and month keys both follow the month: one sum per month.
        // Keyed by the month's first day, any day of which names its keys.
        let mut months: BTreeMap<NaiveDate, DayDelta> = BTreeMap::new();
        for (date, delta) in &self.days {
            b.count(Scope::Day, *date, delta.events, delta.letters);
            let visitors: Vec<String> = delta.visitors.iter().map(|v| v.to_string()).collect();
            b.unique(Scope::Day, *date, &visitors);
            let month = months.entry(date.with_day(1).unwrap_or(*date)).or_default();
            month.events += delta.events;
            month.letters += delta.letters;
            month.visitors.extend(delta.visitors.iter().copied());
        }
        for (date, month) in &months {
            let visitors: Vec<String> = month.visitors.iter().map(|v| v.to_string()).collect();
            for scope in [Scope::Week, Scope::Month] {
                b.count(scope, *date, month.events, month.letters);
                b.unique(scope, *date, &visitors);
            }
        }
        let current: Vec<(i64, String)> = self
            .active
            .iter()
            .filter(|&(_, &ts)| ts > cutoff)
            .map(|(v, &ts)| (ts, v.to_string()))
            .collect();
        let ids: Vec<String> = current.iter().map(|(_, v)| v.clone()).collect();
        b.active(&ids, window);
        b.presence(&current, presence_ttl);
        for (theme, views) in &self.themes {
            b.theme(theme, *views);
        }
        b
    }
}

/// Waits for Redis to fail, then tries every `RETRY_EVERY` to replay the backlog;
/// once a replay (or, with nothing to replay, a PING) succeeds, updates go to Redis
/// directly again. At `stop`, one last attempt.
pub(super) async fn replay_loop(
    con: ConnectionManager,
    addr: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let idle = shared.healthy.load(Ordering::Acquire) && shared.backlog().is_empty();
        tokio::select! {
            () = stop.cancelled() => {
                if !shared.backlog().is_empty() {
                    let _ = replay(&con, &addr, &shared).await;
                }
                return;
            }
            () = shared.wake.notified(), if idle => continue,
            () = tokio::time::sleep(RETRY_EVERY), if !idle => {}
        }
        let _ = replay(&con, &addr, &shared).await;
    }
}

/// Applies the whole backlog in one MULTI/EXEC. On failure it is put back, merged
/// with what arrived meanwhile. A transaction whose answer is lost after Redis ran
/// it is replayed again: in that rare case the counters of those events count twice.
async fn replay(con: &ConnectionManager, addr: &str, shared: &Shared) -> Result<(), ()> {
    let batch = std::mem::take(&mut *shared.backlog());
    let events = batch.events;
    let result = if batch.is_empty() {
        let mut ping = ::redis::pipe();
        ping.cmd("PING");
        query::<Vec<Value>>(con, &ping).await.map(|_| None)
    } else {
        let cutoff = Utc::now().timestamp() - shared.window;
        let b = batch.batch(cutoff, shared.window, shared.presence_ttl);
        query::<Vec<Value>>(con, &b.pipe)
            .await
            .map(|v| Some((b, v)))
    };
    match result {
        Ok(answers) => {
            if let Some((b, values)) = answers {
                // Keys of the wrong type are recorded; the rest of the transaction
                // has been applied, so the batch is done either way.
                let _ = shared.verify(con, addr, &b, values).await;
            }
            let left = shared.backlog().events;
            shared.metrics.redis_pending_events.set(gauge(left));
            if !shared.healthy.swap(true, Ordering::AcqRel) {
                shared.metrics.redis_commands_up.set(1);
                shared.metrics.redis_reconnected("commands");
                tracing::info!(%addr, replayed_events = events,
                    "Redis answers again; the figures of events ingested meanwhile are replayed");
            }
            Ok(())
        }
        Err(e) if !is_transient(&e) => {
            // Redis refuses the batch itself: trying again would fail forever and
            // hold up every later update.
            tracing::error!(%addr, error = %e, dropped_events = events,
                "Redis refused the replay of the pending figures; dropping them");
            let left = shared.backlog().events;
            shared.metrics.redis_pending_events.set(gauge(left));
            shared.healthy.store(true, Ordering::Release);
            shared.metrics.redis_commands_up.set(1);
            Err(())
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "Redis still unreachable");
            shared.backlog().merge(batch);
            shared.healthy.store(false, Ordering::Release);
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    use crate::live::redis::keys::Key;

    fn update(v: VisitorId, at: &str, events: u64) -> Update {
        Update {
            visitor: v,
            at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            events,
            letters: 0,
            theme: None,
        }
    }

    #[test]
    fn the_backlog_merges_and_keeps_counters_past_its_bound() {
        let tz = chrono_tz::UTC;
        let mut b = Backlog::default();
        let v = VisitorId::from_uuid(uuid::Uuid::new_v4());
        b.add(tz, &update(v, "2025-12-08T23:59:00Z", 1));
        b.add(tz, &update(v, "2025-12-09T00:01:00Z", 1));
        assert_eq!(b.days.len(), 2);
        assert_eq!(b.events, 2);
        // One entry per day for the unique sets, one for the active set.
        assert_eq!(b.entries, 3);
        assert_eq!(b.active[&v], 1_765_238_460);

        let mut full = Backlog {
            entries: BACKLOG_MAX_VISITORS,
            theme_bytes: BACKLOG_MAX_THEME_BYTES,
            ..Backlog::default()
        };
        let mut themed = update(v, "2025-12-09T00:01:00Z", 1);
        themed.theme = Some("backend".to_owned());
        let dropped = full.add(tz, &themed);
        assert_eq!(dropped, 3);
        assert_eq!(full.events, 1);

        let mut into = Backlog::default();
        into.add(tz, &themed);
        into.add(tz, &update(v, "2025-12-09T00:02:00Z", 1));
        into.merge(b);
        assert_eq!(into.events, 4);
        assert_eq!(into.entries, 3);
        assert_eq!(into.active[&v], 1_765_238_520);
        assert_eq!(into.themes["backend"], 1);
    }

    #[test]
    fn a_replay_writes_go_week_and_month_keys_once_per_month() {
        let tz = chrono_tz::UTC;
        let mut b = Backlog::default();
        let v = VisitorId::from_uuid(uuid::Uuid::new_v4());
        let mut letter = update(v, "2026-11-30T23:59:00Z", 1);
        letter.letters = 1;
        b.add(tz, &letter);
        b.add(tz, &update(v, "2026-12-01T00:01:00Z", 1));
        b.add(tz, &update(v, "2026-12-02T00:01:00Z", 1));
        let batch = b.batch(0, 300, 600);
        let packed = String::from_utf8_lossy(&batch.pipe.get_packed_pipeline()).into_owned();
        for key in [
            "analytics:stats:week:2026-W11:total_events",
            "analytics:stats:week:2026-W12:total_events",
            "analytics:stats:month:2026-12:total_events",
            "analytics:stats:month:2026-11:letters_generated",
            "analytics:visitors:unique:week:2026-W12",
            "analytics:visitors:unique:day:2026-12-02",
        ] {
            assert!(packed.contains(key), "{key} missing from the replay");
        }
        // December's two days: one INCRBY 2 on each of its period keys.
        let week = Key::total(Scope::Week, NaiveDate::from_ymd_opt(2026, 12, 5).unwrap());
        assert_eq!(packed.matches(&week.name).count(), 2, "INCRBY and EXPIRE");
    }
}
