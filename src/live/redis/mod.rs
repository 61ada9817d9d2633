//! Live figures in Redis, in exactly the key layout maicivy's Go `AnalyticsService`
//! writes and reads (CONTRACT.md), so that every instance and the Go backend count
//! into, and read from, the same figures:
//!
//! | key | type | written on | read for |
//! |---|---|---|---|
//! | `analytics:realtime:visitors` | set of visitor ids; `EXPIRE` of the active window (300 s, Go's) on every write | every event and ping | `current_visitors` (`SCARD`) |
//! | `analytics:stats:day:<YYYY-MM-DD>:total_events` | integer, `EXPIRE` 90 days | every event | `total_events`, `/stats` day, the week's sum |
//! | `analytics:stats:{week,month}:<key>:total_events` | integer, `EXPIRE` 365 days | every event | `/stats` month (Go reads week) |
//! | `analytics:stats:{day,week,month}:<key>:letters_generated` | integer, no expiry | `letter_generate` | `letters_today`, `/stats` |
//! | `analytics:visitors:unique:{day,week,month}:<key>` | HyperLogLog, no expiry | every event and ping | `unique_today`, `/stats` |
//! | `analytics:themes:top` | sorted set, theme → views | `cv_theme_change` with a string `theme` | `/themes` |
//! | `maicivy-analytics:presence` | sorted set, visitor id → Unix seconds of last activity (ours) | every event and ping | `visitor_connected` / `visitor_disconnected` |
//!
//! `<key>` is the date for `day`, `YYYY-MM` for `month`, and for `week` Go's
//! `2006-W01` layout, which is the year and the *month* (`period::go_week_key`); this
//! server's own week (`/stats?period=week`) is the ISO week, summed from its day keys.
//! Dates are in the configured time zone.
//!
//! Go's set cannot say *when* a visitor was last active (the whole key expires), so
//! presence lives in a sorted set of our own: a key of Go's is never written with
//! another type. (An earlier version of this server kept a sorted set at
//! `analytics:realtime:visitors`; such a key is reported as of the wrong type.)
//!
//! Each write is one MULTI/EXEC, so that concurrent instances see each other's
//! updates whole and "this visitor has just become active / has just left" is true on
//! exactly one instance (the presence `ZSCORE` + `ZADD GT`, and the pruning script).
//!
//! A key of the wrong type (WRONGTYPE, or a counter that is not an integer) is never
//! read as zero: the read fails, the key is logged, counted in
//! `maicivy_redis_wrong_type_total{key=<family>}`, and named by `readiness()` until a
//! later command on it succeeds (or its period is over).
//!
//! When Redis cannot be reached, the updates of ingested events are kept, merged, in
//! a bounded `Backlog` and replayed, as the same commands, when it answers again (see
//! `Backlog` for what happens past the bound). The event store stays the record.

mod answers;
mod backlog;
mod commands;
mod count;
mod keys;
mod reads;
mod wrong_type;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::answers::{int_at, themes_answer};
use self::backlog::{Backlog, replay_loop};
use self::commands::{Batch, Check, OP_TIMEOUT, timeout_error};
use self::keys::{
    Key, PRESENCE_KEY, PRESENCE_MIN_TTL_SECS, Scope, THEME_CHANGE, THEMES_KEY, VISITORS_KEY,
    week_days,
};
use self::wrong_type::{BadKey, diagnose, wrong_type_sentence};
use super::{LiveError, LiveStats};
use crate::broker::RedisConnection;
use crate::broker::is_transient;
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::metrics::Metrics;
use crate::period::{Period, day_start, local_day};
use crate::store::{EventStore, Summary, ThemeViews};

/// Most visitors announced as gone per heartbeat; the rest wait for the next one.
const PRUNE_BATCH: usize = 1000;

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

pub struct RedisLive {
    con: ConnectionManager,
    tz: Tz,
    addr: String,
    prune: Script,
    /// Go's fallbacks: maicivy's `visitors` and `generated_letters` rows when Redis
    /// has no unique visitors or no letters for a period.
    store: Arc<dyn EventStore>,
    shared: Arc<Shared>,
    /// Stops the replay task when the figures go away without a server shutdown.
    _stop: DropGuard,
}

/// One update to the figures: an event (`events` = 1) or a ping (`events` = 0).
#[derive(Debug, Clone)]
struct Update {
    visitor: VisitorId,
    at: DateTime<Utc>,
    events: u64,
    letters: u64,
    /// The `event_data.theme` of a `cv_theme_change`, when it is a string.
    theme: Option<String>,
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
    /// Keys of the wrong type, by name, for `readiness()`.
    bad: Mutex<BTreeMap<String, BadKey>>,
    metrics: Arc<Metrics>,
    /// Seconds a visitor stays current after their last activity (300 by default,
    /// Go's): also the `EXPIRE` of Go's visitors set.
    window: i64,
    /// Seconds of the presence set's TTL.
    presence_ttl: i64,
}

impl RedisLive {
    /// Starts the replay task; it runs until `stop` is cancelled or the figures are
    /// dropped. Connects lazily: a Redis that is down now is tried on first use.
    pub fn start(
        redis: &RedisConnection,
        tz: Tz,
        window: Duration,
        metrics: Arc<Metrics>,
        store: Arc<dyn EventStore>,
        stop: CancellationToken,
    ) -> Self {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1);
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
            bad: Mutex::new(BTreeMap::new()),
            metrics,
            window,
            presence_ttl: window.saturating_mul(2).max(PRESENCE_MIN_TTL_SECS),
        });
        shared.metrics.redis_commands_up.set(1);
        let stop = stop.child_token();
        tokio::spawn(replay_loop(
            redis.commands(),
            redis.addr().to_owned(),
            Arc::clone(&shared),
            stop.clone(),
        ));
        Self {
            con: redis.commands(),
            tz,
            addr: redis.addr().to_owned(),
            prune: Script::new(PRUNE_SCRIPT),
            store,
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
}

#[async_trait]
impl LiveStats for RedisLive {
    async fn record_event(&self, event: &NewEvent) -> Result<bool, LiveError> {
        let theme = (event.event_type.as_str() == THEME_CHANGE)
            .then(|| event.event_data.get("theme")?.as_str().map(str::to_owned))
            .flatten();
        self.apply(Update {
            visitor: event.visitor_id,
            at: event.occurred_at,
            events: 1,
            letters: u64::from(event.event_type.is_letter()),
            theme,
        })
        .await
    }

    async fn touch(&self, visitor: VisitorId, at: DateTime<Utc>) -> Result<bool, LiveError> {
        self.apply(Update {
            visitor,
            at,
            events: 0,
            letters: 0,
            theme: None,
        })
        .await
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<Vec<VisitorId>, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let cutoff = now.timestamp() - self.shared.window;
        let mut con = self.con.clone();
        let mut call = self.prune.key(PRESENCE_KEY);
        call.arg(cutoff).arg(PRUNE_BATCH);
        let gone = match tokio::time::timeout(
            OP_TIMEOUT,
            call.invoke_async::<Vec<String>>(&mut con),
        )
        .await
        {
            Ok(Ok(gone)) => gone,
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") => {
                let key = Key::presence();
                if let Ok(found) = diagnose(&self.con, std::slice::from_ref(&key)).await
                    && let Some((_, Some(found))) = found.into_iter().next()
                {
                    let why = wrong_type_sentence(&key, &found);
                    self.shared.record(&key, found, true);
                    return Err(LiveError::Unavailable(format!("{why}.")));
                }
                return Err(self.failed(&e));
            }
            Ok(Err(e)) => return Err(self.failed(&e)),
            Err(_) => return Err(self.failed(&timeout_error())),
        };
        self.shared.clear([PRESENCE_KEY]);
        // Another writer may use ids that are not UUIDs: they are pruned all the
        // same, but cannot be announced in our protocol.
        Ok(gone
            .iter()
            .filter_map(|id| VisitorId::parse(id).ok())
            .collect())
    }

    async fn snapshot(&self, now: DateTime<Utc>) -> Result<Stats, LiveError> {
        let day = local_day(self.tz, now);
        let mut b = Batch::plain();
        let mut scard = ::redis::cmd("SCARD");
        scard.arg(VISITORS_KEY);
        let current = b.typed(scard, &Key::visitors());
        let unique_key = Key::unique(Scope::Day, day);
        let mut pfcount = ::redis::cmd("PFCOUNT");
        pfcount.arg(&unique_key.name);
        let unique = b.typed(pfcount, &unique_key);
        let total = b.counter(Key::total(Scope::Day, day));
        let letters = b.counter(Key::letters(Scope::Day, day));
        let values = self.read(now, &b).await?;
        let (unique_today, letters_today) = self
            .with_fallbacks(
                day_start(self.tz, day),
                int_at(&values, unique),
                int_at(&values, letters),
            )
            .await;
        Ok(Stats {
            current_visitors: int_at(&values, current),
            unique_today,
            total_events: int_at(&values, total),
            letters_today,
            timestamp: now.timestamp(),
        })
    }

    async fn period_summary(
        &self,
        period: Period,
        now: DateTime<Utc>,
    ) -> Result<Option<Summary>, LiveError> {
        let today = local_day(self.tz, now);
        let range = period.current(self.tz, now);
        let mut b = Batch::plain();
        let mut totals = Vec::new();
        let mut letters = Vec::new();
        let unique_keys: Vec<Key> = match period {
            Period::Day | Period::Month => {
                let scope = if period == Period::Day {
                    Scope::Day
                } else {
                    Scope::Month
                };
                totals.push(b.counter(Key::total(scope, today)));
                letters.push(b.counter(Key::letters(scope, today)));
                vec![Key::unique(scope, today)]
            }
            // The ISO week, from its day keys: Go's week keys follow the month. One
            // GET per key rather than MGET, which reads a key of another type as
            // nil, i.e. as zero.
            Period::Week => {
                let days = week_days(today);
                for day in &days {
                    totals.push(b.counter(Key::total(Scope::Day, *day)));
                    letters.push(b.counter(Key::letters(Scope::Day, *day)));
                }
                days.iter().map(|d| Key::unique(Scope::Day, *d)).collect()
            }
        };
        // Several keys in one PFCOUNT count their union.
        let mut pfcount = ::redis::cmd("PFCOUNT");
        for key in &unique_keys {
            pfcount.arg(&key.name);
        }
        let unique = b.push(pfcount, Check::Typed(unique_keys));
        let values = self.read(now, &b).await?;
        let total: u64 = totals.iter().map(|&i| int_at(&values, i)).sum();
        let letters: u64 = letters.iter().map(|&i| int_at(&values, i)).sum();
        let (unique_visitors, letters_generated) = self
            .with_fallbacks(range.from, int_at(&values, unique), letters)
            .await;
        Ok(Some(Summary {
            total_events: total,
            letters_generated,
            unique_visitors,
        }))
    }

    async fn top_themes(&self, limit: u32) -> Result<Option<Vec<ThemeViews>>, LiveError> {
        if limit == 0 {
            // ZREVRANGE 0 -1 would be every theme.
            return Ok(Some(Vec::new()));
        }
        let mut b = Batch::plain();
        let mut range = ::redis::cmd("ZREVRANGE");
        range
            .arg(THEMES_KEY)
            .arg(0)
            .arg(i64::from(limit) - 1)
            .arg("WITHSCORES");
        let i = b.typed(range, &Key::themes());
        let values = self.read(Utc::now(), &b).await?;
        match values.get(i).and_then(themes_answer) {
            Some(themes) => Ok(Some(themes)),
            None => Err(LiveError::Unavailable(format!(
                "Redis at {} gave an answer for {THEMES_KEY} that is not a list of themes",
                self.addr
            ))),
        }
    }

    fn readiness(&self) -> Result<(), String> {
        let bad = self.shared.bad();
        let Some(first) = bad.values().next() else {
            return Ok(());
        };
        let sentence = wrong_type_sentence(&first.key, &first.found);
        Err(match bad.len() - 1 {
            0 => format!("{sentence}."),
            1 => format!("{sentence} (and 1 more key of the wrong type)."),
            n => format!("{sentence} (and {n} more keys of the wrong type)."),
        })
    }
}
