//! Live figures in Redis, in the key layout maicivy's Go `AnalyticsService` writes
//! (CONTRACT.md), so that every instance and the Go backend count into, and read
//! from, the same figures:
//!
//! | key | type |
//! |---|---|
//! | `analytics:realtime:visitors` | sorted set, visitor id → Unix seconds of last activity |
//! | `analytics:visitors:unique:day:<date>` | HyperLogLog of the day's visitors |
//! | `analytics:stats:day:<date>:total_events` | integer |
//! | `analytics:stats:day:<date>:letters_generated` | integer |
//!
//! Each operation is one round trip: a MULTI/EXEC pipeline (or one Lua script for
//! pruning), so that concurrent instances see each other's updates whole, and
//! "this visitor has just become active / has just left" is true on exactly one
//! instance.
//!
//! When Redis cannot be reached, the updates of ingested events are kept, merged,
//! in a bounded `Backlog` and replayed when it answers again (see `Backlog` for what
//! happens past the bound). The event store stays the record either way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Pipeline, RedisError, Script};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{LiveError, LiveStats};
use crate::broker::RedisConnection;
use crate::broker::is_transient;
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::metrics::Metrics;
use crate::period::local_day;

const VISITORS_KEY: &str = "analytics:realtime:visitors";
/// The contract's TTL of the active-visitors set, refreshed on every write.
const VISITORS_TTL_SECS: i64 = 10 * 60;
/// The contract's TTL of the day counters. The contract fixes no TTL for the day's
/// HyperLogLog; it gets the same, so that old days do not pile up (12 KB each).
const DAY_TTL_SECS: i64 = 90 * 24 * 60 * 60;
/// How long one operation may take before Redis counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// While Redis is unreachable, how often the backlog tries to reach it.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Most (visitor, day) and active-visitor entries the backlog holds; ~64 bytes each.
const BACKLOG_MAX_VISITORS: usize = 100_000;
/// Most visitors announced as gone per heartbeat; the rest wait for the next one.
const PRUNE_BATCH: usize = 1000;
/// Most members per PFADD / ZADD command of a replay.
const REPLAY_CHUNK: usize = 1000;

/// Removes the members whose last activity is at or before ARGV[1] and returns
/// them, at most ARGV[2] per call. A script, so that when several instances prune at
/// once each departure is returned (and announced) by exactly one of them.
const PRUNE_SCRIPT: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
end
return gone
";

fn unique_key(day: NaiveDate) -> String {
    format!("analytics:visitors:unique:day:{}", day.format("%Y-%m-%d"))
}

fn total_key(day: NaiveDate) -> String {
    format!(
        "analytics:stats:day:{}:total_events",
        day.format("%Y-%m-%d")
    )
}

fn letters_key(day: NaiveDate) -> String {
    format!(
        "analytics:stats:day:{}:letters_generated",
        day.format("%Y-%m-%d")
    )
}

/// Adds `events` and `letters` to the day's counters, each with its 90-day TTL, in
/// `p`: the same commands for a live event and for a replayed backlog.
fn count_day(p: &mut Pipeline, day: NaiveDate, events: u64, letters: u64) {
    for (key, n) in [(total_key(day), events), (letters_key(day), letters)] {
        if n > 0 {
            p.cmd("INCRBY").arg(&key).arg(n).ignore();
            p.cmd("EXPIRE").arg(key).arg(DAY_TTL_SECS).ignore();
        }
    }
}

pub struct RedisLive {
    con: ConnectionManager,
    tz: Tz,
    /// Seconds a visitor stays current after their last activity (300 in production).
    window: i64,
    addr: String,
    prune: Script,
    shared: Arc<Shared>,
    /// Stops the replay task when the figures go away without a server shutdown.
    _stop: DropGuard,
}

/// One update to the figures: an event (`events` = 1) or a ping (`events` = 0).
#[derive(Debug, Clone, Copy)]
struct Update {
    visitor: VisitorId,
    at: DateTime<Utc>,
    events: u64,
    letters: u64,
}

/// What `RedisLive` and its replay task share.
struct Shared {
    /// `false` from a failed operation until the backlog has been replayed: in
    /// between, updates go straight to the backlog and reads fail fast, instead of
    /// each waiting for a connection attempt.
    healthy: AtomicBool,
    backlog: Mutex<Backlog>,
    /// Wakes the replay task: Redis failed, or an update was added to the backlog.
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        // Plain counters and sets behind the lock: still consistent after a panic.
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn defer(&self, tz: Tz, update: Update) {
        let mut backlog = self.backlog();
        let dropped = backlog.add(tz, update);
        self.metrics.redis_pending_events.set(gauge(backlog.events));
        drop(backlog);
        if dropped > 0 {
            self.metrics.redis_backlog_dropped.inc_by(dropped);
        }
        self.wake.notify_one();
    }

    fn mark_down(&self, addr: &str, e: &RedisError) {
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
/// day's visitors, and each visitor's latest activity.
///
/// The counters are integers and never lost. The visitor entries are bounded by
/// `BACKLOG_MAX_VISITORS`: past it, new visitors of the outage are left out of the
/// replayed `unique_today` and `current_visitors` (counted in
/// `maicivy_redis_backlog_dropped_total`), while `total_events` and `letters_today`
/// stay exact.
#[derive(Default)]
struct Backlog {
    days: BTreeMap<NaiveDate, DayDelta>,
    active: HashMap<VisitorId, i64>,
    /// Entries in `active` and in every day's `visitors`.
    entries: usize,
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
        self.days.is_empty() && self.active.is_empty()
    }

    /// Adds one update; returns how many visitor entries did not fit.
    fn add(&mut self, tz: Tz, u: Update) -> u64 {
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
        self.events += other.events;
    }

    /// One MULTI/EXEC that applies the whole backlog: all of it or none of it.
    /// Visitors whose activity has left the window are not re-added as current.
    fn pipeline(&self, cutoff: i64) -> Pipeline {
        let mut p = ::redis::pipe();
        p.atomic();
        for (date, delta) in &self.days {
            count_day(&mut p, *date, delta.events, delta.letters);
            if !delta.visitors.is_empty() {
                let key = unique_key(*date);
                let visitors: Vec<String> = delta.visitors.iter().map(|v| v.to_string()).collect();
                for chunk in visitors.chunks(REPLAY_CHUNK) {
                    p.cmd("PFADD").arg(&key).arg(chunk).ignore();
                }
                p.cmd("EXPIRE").arg(&key).arg(DAY_TTL_SECS).ignore();
            }
        }
        let current: Vec<(i64, String)> = self
            .active
            .iter()
            .filter(|&(_, &ts)| ts > cutoff)
            .map(|(v, &ts)| (ts, v.to_string()))
            .collect();
        if !current.is_empty() {
            for chunk in current.chunks(REPLAY_CHUNK) {
                let mut zadd = ::redis::cmd("ZADD");
                zadd.arg(VISITORS_KEY).arg("GT");
                for (ts, v) in chunk {
                    zadd.arg(ts).arg(v);
                }
                p.add_command(zadd).ignore();
            }
            p.cmd("EXPIRE")
                .arg(VISITORS_KEY)
                .arg(VISITORS_TTL_SECS)
                .ignore();
        }
        p
    }
}

impl RedisLive {
    /// Starts the replay task; it runs until `stop` is cancelled or the figures are
    /// dropped. Connects lazily: a Redis that is down now is tried on first use.
    pub fn start(
        redis: &RedisConnection,
        tz: Tz,
        window: Duration,
        metrics: Arc<Metrics>,
        // Go's fallbacks (maicivy's `visitors` and `generated_letters` rows).
        _store: Arc<dyn crate::store::EventStore>,
        stop: CancellationToken,
    ) -> Self {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
            metrics,
        });
        shared.metrics.redis_commands_up.set(1);
        let stop = stop.child_token();
        tokio::spawn(replay_loop(
            redis.commands(),
            redis.addr().to_owned(),
            window,
            Arc::clone(&shared),
            stop.clone(),
        ));
        Self {
            con: redis.commands(),
            tz,
            window,
            addr: redis.addr().to_owned(),
            prune: Script::new(PRUNE_SCRIPT),
            shared,
            _stop: stop.drop_guard(),
        }
    }

    fn unavailable(&self) -> LiveError {
        LiveError::Unavailable(format!("Redis at {} is unreachable", self.addr))
    }

    /// Sorts a failure: an outage marks Redis down (the replay task takes over),
    /// anything else is an error of this operation only.
    fn failed(&self, e: &RedisError) -> LiveError {
        if is_transient(e) {
            self.shared.mark_down(&self.addr, e);
            self.unavailable()
        } else {
            tracing::error!(addr = %self.addr, error = %e, "Redis refused a command on the figures");
            LiveError::Unavailable(format!(
                "Redis at {} refused a command on the figures (see the log)",
                self.addr
            ))
        }
    }

    /// Applies one update in one MULTI/EXEC; `true` when the visitor was not current
    /// before it. While Redis is unreachable the update waits in the backlog and no
    /// arrival is announced.
    async fn apply(&self, u: Update) -> Result<bool, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            self.shared.defer(self.tz, u);
            return Ok(false);
        }
        let day = local_day(self.tz, u.at);
        let ts = u.at.timestamp();
        let visitor = u.visitor.to_string();
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("ZSCORE")
            .arg(VISITORS_KEY)
            .arg(&visitor)
            // GT: an update that arrives late never moves a visitor's activity back.
            .cmd("ZADD")
            .arg(VISITORS_KEY)
            .arg("GT")
            .arg(ts)
            .arg(&visitor)
            .ignore()
            .cmd("EXPIRE")
            .arg(VISITORS_KEY)
            .arg(VISITORS_TTL_SECS)
            .ignore()
            .cmd("PFADD")
            .arg(unique_key(day))
            .arg(&visitor)
            .ignore()
            .cmd("EXPIRE")
            .arg(unique_key(day))
            .arg(DAY_TTL_SECS)
            .ignore();
        count_day(&mut p, day, u.events, u.letters);
        let mut con = self.con.clone();
        let outcome = tokio::time::timeout(OP_TIMEOUT, p.query_async::<(Option<f64>,)>(&mut con));
        match outcome.await {
            Ok(Ok((previous,))) => {
                let stale = (ts - self.window) as f64;
                Ok(previous.is_none_or(|last| last <= stale))
            }
            Ok(Err(e)) if is_transient(&e) => {
                self.shared.mark_down(&self.addr, &e);
                self.shared.defer(self.tz, u);
                Ok(false)
            }
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => {
                self.shared.mark_down(&self.addr, &timeout_error());
                self.shared.defer(self.tz, u);
                Ok(false)
            }
        }
    }
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer in time",
    ))
}

#[async_trait]
impl LiveStats for RedisLive {
    async fn record_event(&self, event: &NewEvent) -> Result<bool, LiveError> {
        self.apply(Update {
            visitor: event.visitor_id,
            at: event.occurred_at,
            events: 1,
            letters: u64::from(event.event_type.is_letter()),
        })
        .await
    }

    async fn touch(&self, visitor: VisitorId, at: DateTime<Utc>) -> Result<bool, LiveError> {
        self.apply(Update {
            visitor,
            at,
            events: 0,
            letters: 0,
        })
        .await
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<Vec<VisitorId>, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let cutoff = now.timestamp() - self.window;
        let mut con = self.con.clone();
        let mut call = self.prune.key(VISITORS_KEY);
        call.arg(cutoff).arg(PRUNE_BATCH);
        let gone = match tokio::time::timeout(
            OP_TIMEOUT,
            call.invoke_async::<Vec<String>>(&mut con),
        )
        .await
        {
            Ok(Ok(gone)) => gone,
            Ok(Err(e)) => return Err(self.failed(&e)),
            Err(_) => return Err(self.failed(&timeout_error())),
        };
        // Another writer (the Go backend) may use ids that are not UUIDs: they are
        // pruned all the same, but cannot be announced in our protocol.
        Ok(gone
            .iter()
            .filter_map(|id| VisitorId::parse(id).ok())
            .collect())
    }

    // STUBS, replaced by the Redis layout rewrite.
    async fn period_summary(
        &self,
        _period: crate::period::Period,
        _now: DateTime<Utc>,
    ) -> Result<Option<crate::store::Summary>, LiveError> {
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
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let day = local_day(self.tz, now);
        let cutoff = now.timestamp() - self.window;
        let mut p = ::redis::pipe();
        // Counted, not pruned: the figure is right even if nobody has pruned lately.
        p.cmd("ZCOUNT")
            .arg(VISITORS_KEY)
            .arg(format!("({cutoff}"))
            .arg("+inf")
            .cmd("PFCOUNT")
            .arg(unique_key(day))
            .cmd("GET")
            .arg(total_key(day))
            .cmd("GET")
            .arg(letters_key(day));
        let mut con = self.con.clone();
        let read = tokio::time::timeout(
            OP_TIMEOUT,
            p.query_async::<(u64, u64, Option<u64>, Option<u64>)>(&mut con),
        );
        match read.await {
            Ok(Ok((current, unique, total, letters))) => Ok(Stats {
                current_visitors: current,
                unique_today: unique,
                total_events: total.unwrap_or(0),
                letters_today: letters.unwrap_or(0),
                timestamp: now.timestamp(),
            }),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.failed(&timeout_error())),
        }
    }
}

/// Waits for Redis to fail, then tries every `RETRY_EVERY` to replay the backlog;
/// once a replay (or, with nothing to replay, a PING) succeeds, updates go to Redis
/// directly again. At `stop`, one last attempt.
async fn replay_loop(
    con: ConnectionManager,
    addr: String,
    window: i64,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let idle = shared.healthy.load(Ordering::Acquire) && shared.backlog().is_empty();
        tokio::select! {
            () = stop.cancelled() => {
                if !shared.backlog().is_empty() {
                    let _ = replay(&con, &addr, window, &shared).await;
                }
                return;
            }
            () = shared.wake.notified(), if idle => continue,
            () = tokio::time::sleep(RETRY_EVERY), if !idle => {}
        }
        let _ = replay(&con, &addr, window, &shared).await;
    }
}

/// Applies the whole backlog in one MULTI/EXEC. On failure it is put back, merged
/// with what arrived meanwhile. A transaction whose answer is lost after Redis ran
/// it is replayed again: in that rare case the counters of those events count twice.
async fn replay(
    con: &ConnectionManager,
    addr: &str,
    window: i64,
    shared: &Shared,
) -> Result<(), ()> {
    let batch = std::mem::take(&mut *shared.backlog());
    let events = batch.events;
    let mut con = con.clone();
    let result = if batch.is_empty() {
        tokio::time::timeout(
            OP_TIMEOUT,
            ::redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await
        .map(|r| r.map(drop))
    } else {
        let cutoff = Utc::now().timestamp() - window;
        tokio::time::timeout(
            OP_TIMEOUT,
            batch.pipeline(cutoff).query_async::<()>(&mut con),
        )
        .await
    };
    match result {
        Ok(Ok(())) => {
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
        Ok(Err(e)) if !is_transient(&e) => {
            // Redis refuses the batch itself (a key of the wrong type, say): trying
            // again would fail forever and hold up every later update.
            tracing::error!(%addr, error = %e, dropped_events = events,
                "Redis refused the replay of the pending figures; dropping them");
            let left = shared.backlog().events;
            shared.metrics.redis_pending_events.set(gauge(left));
            shared.healthy.store(true, Ordering::Release);
            shared.metrics.redis_commands_up.set(1);
            Err(())
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "Redis still unreachable");
            shared.backlog().merge(batch);
            shared.healthy.store(false, Ordering::Release);
            Err(())
        }
        Err(_) => {
            tracing::debug!(%addr, "Redis did not answer the replay in time");
            shared.backlog().merge(batch);
            shared.healthy.store(false, Ordering::Release);
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(v: VisitorId, at: &str, events: u64) -> Update {
        Update {
            visitor: v,
            at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            events,
            letters: 0,
        }
    }

    #[test]
    fn the_backlog_merges_and_keeps_counters_past_its_bound() {
        let tz = chrono_tz::UTC;
        let mut b = Backlog::default();
        let v = VisitorId::from_uuid(uuid::Uuid::new_v4());
        b.add(tz, update(v, "2025-12-08T23:59:00Z", 1));
        b.add(tz, update(v, "2025-12-09T00:01:00Z", 1));
        assert_eq!(b.days.len(), 2);
        assert_eq!(b.events, 2);
        // One entry per day for the unique sets, one for the active set.
        assert_eq!(b.entries, 3);
        assert_eq!(b.active[&v], 1_765_238_460);

        let mut full = Backlog {
            entries: BACKLOG_MAX_VISITORS,
            ..Backlog::default()
        };
        let dropped = full.add(tz, update(v, "2025-12-09T00:01:00Z", 1));
        assert_eq!(dropped, 2);
        assert_eq!(full.events, 1);

        let mut into = Backlog::default();
        into.add(tz, update(v, "2025-12-09T00:02:00Z", 1));
        into.merge(b);
        assert_eq!(into.events, 3);
        assert_eq!(into.entries, 3);
        assert_eq!(into.active[&v], 1_765_238_520);
    }
}
