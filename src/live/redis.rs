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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, Pipeline, RedisError, Script, ServerError, Value};
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{LiveError, LiveStats};
use crate::broker::RedisConnection;
use crate::broker::is_transient;
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::metrics::Metrics;
use crate::period::{Period, day_start, go_week_key, local_day, month_key};
use crate::store::{EventStore, Summary, ThemeViews};

const VISITORS_KEY: &str = "analytics:realtime:visitors";
const PRESENCE_KEY: &str = "maicivy-analytics:presence";
const THEMES_KEY: &str = "analytics:themes:top";
/// The event whose `event_data.theme` Go counts in `analytics:themes:top`.
const THEME_CHANGE: &str = "cv_theme_change";
/// Go's TTL of the day's `total_events`.
const DAY_TTL_SECS: i64 = 90 * 24 * 60 * 60;
/// Go's TTL of the week's and month's `total_events`.
const PERIOD_TTL_SECS: i64 = 365 * 24 * 60 * 60;
/// The presence set outlives the window, so that a heartbeat that comes late still
/// finds (and announces) the visitors who left; refreshed on every write.
const PRESENCE_MIN_TTL_SECS: i64 = 10 * 60;
/// How long one operation may take before Redis counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// While Redis is unreachable, how often the backlog tries to reach it.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Most (visitor, day) and active-visitor entries the backlog holds; ~64 bytes each.
const BACKLOG_MAX_VISITORS: usize = 100_000;
/// Most bytes of distinct theme names the backlog holds: themes come from clients,
/// so their number and length are theirs to choose.
const BACKLOG_MAX_THEME_BYTES: usize = 1 << 20;
/// Most visitors announced as gone per heartbeat; the rest wait for the next one.
const PRUNE_BATCH: usize = 1000;
/// Most members per PFADD / SADD / ZADD command of a replay.
const REPLAY_CHUNK: usize = 1000;
/// While a key stays of the wrong type, how often the log says so again (every
/// failed command is counted in the metric).
const WRONG_TYPE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Most keys of the wrong type remembered for `readiness()`; it names the first.
const MAX_BAD_KEYS: usize = 64;

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

/// What a key of the layout must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Set,
    Counter,
    Hll,
    SortedSet,
}

impl Kind {
    /// What `TYPE` answers for a key of this kind (a HyperLogLog is a string).
    fn type_name(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Counter | Self::Hll => "string",
            Self::SortedSet => "zset",
        }
    }

    /// A read that fails on a key of another type and succeeds on a missing one.
    fn probe(self, key: &str) -> Cmd {
        let name = match self {
            Self::Set => "SCARD",
            Self::Counter => "GET",
            Self::Hll => "PFCOUNT",
            Self::SortedSet => "ZCARD",
        };
        let mut c = ::redis::cmd(name);
        c.arg(key);
        c
    }

    fn needed(self) -> &'static str {
        match self {
            Self::Set => "the set",
            Self::Counter => "the integer",
            Self::Hll => "the HyperLogLog",
            Self::SortedSet => "the sorted set",
        }
    }
}

/// The period part of Go's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Day,
    Week,
    Month,
}

impl Scope {
    const ALL: [Self; 3] = [Self::Day, Self::Week, Self::Month];

    fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// The `<key>` of the period containing `day`, as Go formats it.
    fn key_of(self, day: NaiveDate) -> String {
        match self {
            Self::Day => day.format("%Y-%m-%d").to_string(),
            Self::Week => go_week_key(day),
            Self::Month => month_key(day),
        }
    }

    fn total_ttl(self) -> i64 {
        match self {
            Self::Day => DAY_TTL_SECS,
            Self::Week | Self::Month => PERIOD_TTL_SECS,
        }
    }
}

/// One key of the layout: its name, what it must hold, and its family, the
/// low-cardinality label of `maicivy_redis_wrong_type_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    name: String,
    kind: Kind,
    family: &'static str,
}

impl Key {
    fn visitors() -> Self {
        Self {
            name: VISITORS_KEY.to_owned(),
            kind: Kind::Set,
            family: "visitors",
        }
    }

    fn presence() -> Self {
        Self {
            name: PRESENCE_KEY.to_owned(),
            kind: Kind::SortedSet,
            family: "presence",
        }
    }

    fn themes() -> Self {
        Self {
            name: THEMES_KEY.to_owned(),
            kind: Kind::SortedSet,
            family: "themes",
        }
    }

    fn total(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:stats:{}:{}:total_events",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Counter,
            family: match scope {
                Scope::Day => "day_total",
                Scope::Week => "week_total",
                Scope::Month => "month_total",
            },
        }
    }

    fn letters(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:stats:{}:{}:letters_generated",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Counter,
            family: match scope {
                Scope::Day => "day_letters",
                Scope::Week => "week_letters",
                Scope::Month => "month_letters",
            },
        }
    }

    fn unique(scope: Scope, day: NaiveDate) -> Self {
        Self {
            name: format!(
                "analytics:visitors:unique:{}:{}",
                scope.name(),
                scope.key_of(day)
            ),
            kind: Kind::Hll,
            family: match scope {
                Scope::Day => "day_unique",
                Scope::Week => "week_unique",
                Scope::Month => "month_unique",
            },
        }
    }
}

/// The days Monday .. `today` of `today`'s ISO week.
fn week_days(today: NaiveDate) -> Vec<NaiveDate> {
    let monday = today - chrono::Duration::days(today.weekday().num_days_from_monday().into());
    monday.iter_days().take_while(|d| *d <= today).collect()
}

/// The keys whose type still matters at `now`: those this server writes today or
/// reads for today's figures and this week's, month's and themes' answers.
fn live_key_names(tz: Tz, now: DateTime<Utc>) -> HashSet<String> {
    let today = local_day(tz, now);
    let mut keys = vec![Key::visitors(), Key::presence(), Key::themes()];
    for scope in Scope::ALL {
        keys.extend([
            Key::total(scope, today),
            Key::letters(scope, today),
            Key::unique(scope, today),
        ]);
    }
    for day in week_days(today) {
        keys.extend([
            Key::total(Scope::Day, day),
            Key::letters(Scope::Day, day),
            Key::unique(Scope::Day, day),
        ]);
    }
    keys.into_iter().map(|k| k.name).collect()
}

/// What a key of the wrong type was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Another Redis type, as `TYPE` names it.
    Type(String),
    /// A string where an integer counter was expected.
    NotInteger,
    /// A string that is not a HyperLogLog.
    NotHll,
}

/// The `readiness()` sentence for one key (without its final period).
fn wrong_type_sentence(key: &Key, found: &Found) -> String {
    match found {
        Found::Type(t) => format!(
            "Redis key {} holds a {t}, not {} maicivy's layout needs",
            key.name,
            key.kind.needed()
        ),
        Found::NotInteger => format!(
            "Redis key {} holds a value that is not an integer, not the integer counter \
             maicivy's layout needs",
            key.name
        ),
        Found::NotHll => format!(
            "Redis key {} holds a string that is not a HyperLogLog, not the HyperLogLog \
             maicivy's layout needs",
            key.name
        ),
    }
}

/// What a command's answer says about the types of its keys.
enum Check {
    /// Nothing: `EXPIRE` works on a key of any type.
    Untyped,
    /// It fails on a key of another type and succeeding vouches for them.
    Typed(Vec<Key>),
    /// A `GET` of a counter: its answer must also be an integer.
    Counter(Key),
}

/// A pipeline and, per command, what its answer says about its keys. Errors are
/// answered per command (`ignore_errors`), so that one key of the wrong type is named
/// and the rest of a MULTI/EXEC (which Redis does not roll back) is known to have run.
struct Batch {
    pipe: Pipeline,
    checks: Vec<Check>,
}

impl Batch {
    fn atomic() -> Self {
        let mut pipe = ::redis::pipe();
        pipe.atomic().ignore_errors();
        Self {
            pipe,
            checks: Vec::new(),
        }
    }

    fn plain() -> Self {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        Self {
            pipe,
            checks: Vec::new(),
        }
    }

    fn push(&mut self, cmd: Cmd, check: Check) -> usize {
        self.pipe.add_command(cmd);
        self.checks.push(check);
        self.checks.len() - 1
    }

    fn typed(&mut self, cmd: Cmd, key: &Key) -> usize {
        self.push(cmd, Check::Typed(vec![key.clone()]))
    }

    fn untyped(&mut self, cmd: Cmd) -> usize {
        self.push(cmd, Check::Untyped)
    }

    /// `GET` of a counter.
    fn counter(&mut self, key: Key) -> usize {
        let mut c = ::redis::cmd("GET");
        c.arg(&key.name);
        self.push(c, Check::Counter(key))
    }

    fn expire(&mut self, key: &str, secs: i64) {
        let mut c = ::redis::cmd("EXPIRE");
        c.arg(key).arg(secs);
        self.untyped(c);
    }

    /// Adds `events` and `letters` to the period's counters, as Go does: `INCR` (here
    /// `INCRBY` for a replayed sum) and Go's TTL on `total_events`, none on letters.
    fn count(&mut self, scope: Scope, day: NaiveDate, events: u64, letters: u64) {
        if events > 0 {
            let key = Key::total(scope, day);
            self.typed(incr(&key.name, events), &key);
            self.expire(&key.name, scope.total_ttl());
        }
        if letters > 0 {
            let key = Key::letters(scope, day);
            self.typed(incr(&key.name, letters), &key);
        }
    }

    /// `PFADD`s `visitors` into the period's HyperLogLog (no expiry, as Go).
    fn unique(&mut self, scope: Scope, day: NaiveDate, visitors: &[String]) {
        let key = Key::unique(scope, day);
        for chunk in visitors.chunks(REPLAY_CHUNK) {
            let mut c = ::redis::cmd("PFADD");
            c.arg(&key.name).arg(chunk);
            self.typed(c, &key);
        }
    }

    /// Marks `visitors` active in Go's set, whose whole key expires `window` seconds
    /// after the last write, as Go's middleware does.
    fn active(&mut self, visitors: &[String], window: i64) {
        if visitors.is_empty() {
            return;
        }
        let key = Key::visitors();
        for chunk in visitors.chunks(REPLAY_CHUNK) {
            let mut c = ::redis::cmd("SADD");
            c.arg(VISITORS_KEY).arg(chunk);
            self.typed(c, &key);
        }
        self.expire(VISITORS_KEY, window);
    }

    /// Records each visitor's last activity in our presence set. GT: an update that
    /// arrives late never moves a visitor's activity back.
    fn presence(&mut self, seen: &[(i64, String)], ttl: i64) {
        if seen.is_empty() {
            return;
        }
        let key = Key::presence();
        for chunk in seen.chunks(REPLAY_CHUNK) {
            let mut c = ::redis::cmd("ZADD");
            c.arg(PRESENCE_KEY).arg("GT");
            for (ts, v) in chunk {
                c.arg(ts).arg(v);
            }
            self.typed(c, &key);
        }
        self.expire(PRESENCE_KEY, ttl);
    }

    fn theme(&mut self, theme: &str, views: u64) {
        let mut c = ::redis::cmd("ZINCRBY");
        c.arg(THEMES_KEY).arg(views).arg(theme);
        self.typed(c, &Key::themes());
    }
}

/// Go's `INCR` for one event; `INCRBY` for a replayed sum.
fn incr(key: &str, n: u64) -> Cmd {
    let mut c = ::redis::cmd(if n == 1 { "INCR" } else { "INCRBY" });
    c.arg(key);
    if n != 1 {
        c.arg(n);
    }
    c
}

/// An integer answer (`GET` of a counter, `SCARD`, `PFCOUNT`); a missing key is 0.
/// `None` when it is not an integer.
fn integer(v: &Value) -> Option<u64> {
    let n = match v {
        Value::Nil => 0,
        Value::Int(n) => *n,
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::SimpleString(s) => s.parse().ok()?,
        _ => return None,
    };
    // A counter that someone decremented below zero counts as none.
    Some(u64::try_from(n).unwrap_or(0))
}

/// Whether a failed command says its key holds the wrong type (or, for `INCR`, a
/// value that is not an integer), rather than refusing the command itself.
fn is_type_error(e: &ServerError) -> bool {
    e.code() == "WRONGTYPE"
        || (e.code() == "ERR" && e.details().is_some_and(|d| d.contains("not an integer")))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::SimpleString(s) => Some(s.clone()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

fn score(v: &Value) -> Option<f64> {
    match v {
        Value::Double(f) => Some(*f),
        Value::Int(n) => Some(*n as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `ZREVRANGE … WITHSCORES`: a flat list (RESP2) or a list of pairs (RESP3).
fn themes_answer(v: &Value) -> Option<Vec<ThemeViews>> {
    let Value::Array(items) = v else {
        return None;
    };
    let pair = |member: &Value, s: &Value| {
        Some(ThemeViews {
            theme: as_text(member)?,
            // As Go's `int64(score)`; a negative score (someone's ZINCRBY -1) is 0.
            views: score(s)?.max(0.0) as u64,
        })
    };
    if items
        .iter()
        .all(|i| matches!(i, Value::Array(p) if p.len() == 2))
    {
        items
            .iter()
            .map(|i| match i {
                Value::Array(p) => pair(&p[0], &p[1]),
                _ => None,
            })
            .collect()
    } else if items.len() % 2 == 0 {
        items.chunks(2).map(|p| pair(&p[0], &p[1])).collect()
    } else {
        None
    }
}

/// For each key, whether (and how) it holds the wrong type: `TYPE` and the kind's
/// probe, in one round trip.
async fn diagnose(
    con: &ConnectionManager,
    keys: &[Key],
) -> Result<Vec<(Key, Option<Found>)>, RedisError> {
    let mut p = ::redis::pipe();
    p.ignore_errors();
    for key in keys {
        p.cmd("TYPE").arg(&key.name);
        p.add_command(key.kind.probe(&key.name));
    }
    let values: Vec<Value> = query(con, &p).await?;
    Ok(keys
        .iter()
        .zip(values.chunks(2))
        .map(|(key, answers)| {
            let actual = answers.first().and_then(as_text).unwrap_or_default();
            let probe_ok = match answers.get(1) {
                Some(Value::ServerError(_)) | None => false,
                Some(v) if key.kind == Kind::Counter => integer(v).is_some(),
                Some(_) => true,
            };
            let found = if actual != "none" && !actual.is_empty() && actual != key.kind.type_name()
            {
                Some(Found::Type(actual))
            } else if probe_ok {
                None
            } else {
                match key.kind {
                    Kind::Counter => Some(Found::NotInteger),
                    Kind::Hll => Some(Found::NotHll),
                    // The probe failed on a key of the right type: it changed in
                    // between; the next command tells.
                    Kind::Set | Kind::SortedSet => None,
                }
            };
            (key.clone(), found)
        })
        .collect())
}

async fn query<T: ::redis::FromRedisValue>(
    con: &ConnectionManager,
    p: &Pipeline,
) -> Result<T, RedisError> {
    let mut con = con.clone();
    match tokio::time::timeout(OP_TIMEOUT, p.query_async::<T>(&mut con)).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error()),
    }
}

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

/// A key found of the wrong type, until a command on it succeeds.
struct BadKey {
    key: Key,
    found: Found,
    logged: Instant,
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

/// The answers of a batch, once checked: `error` is the first failure (a key of the
/// wrong type first), the answers of failed commands are `Value::ServerError`.
struct Answers {
    values: Vec<Value>,
    error: Option<LiveError>,
}

impl Shared {
    fn backlog(&self) -> parking_lot::MutexGuard<'_, Backlog> {
        self.backlog.lock()
    }

    fn bad(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, BadKey>> {
        self.bad.lock()
    }

    fn defer(&self, tz: Tz, update: &Update) {
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

    /// Remembers a key of the wrong type; `failed` when a command failed on it (it
    /// is counted), not when a re-check found it still wrong.
    fn record(&self, key: &Key, found: Found, failed: bool) {
        if failed {
            self.metrics.redis_wrong_type(key.family);
        }
        let mut bad = self.bad();
        let room = bad.len() < MAX_BAD_KEYS;
        let log = match bad.get_mut(&key.name) {
            Some(b) => {
                b.found = found.clone();
                let due = b.logged.elapsed() >= WRONG_TYPE_LOG_EVERY;
                if due {
                    b.logged = Instant::now();
                }
                due
            }
            None if room => {
                bad.insert(
                    key.name.clone(),
                    BadKey {
                        key: key.clone(),
                        found: found.clone(),
                        logged: Instant::now(),
                    },
                );
                true
            }
            None => false,
        };
        drop(bad);
        if log {
            tracing::error!(key = %key.name, family = key.family,
                "{}; what it carries is not counted and the figures that read it fail \
                 until it holds the right type or is removed",
                wrong_type_sentence(key, &found));
        }
    }

    fn clear<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut bad = self.bad();
        if bad.is_empty() {
            return;
        }
        for name in names {
            if bad.remove(name).is_some() {
                tracing::info!(key = %name, "Redis key holds the type maicivy's layout needs again");
            }
        }
    }

    /// Checks a batch's answers: clears the keys they vouch for, diagnoses and
    /// records those of the wrong type (one more round trip, only then).
    async fn verify(
        &self,
        con: &ConnectionManager,
        addr: &str,
        b: &Batch,
        values: Vec<Value>,
    ) -> Answers {
        let mut suspects: Vec<Key> = Vec::new();
        let mut sound: Vec<&str> = Vec::new();
        let mut refused: Option<String> = None;
        if values.len() != b.checks.len() {
            refused = Some(format!(
                "{} answers to {} commands",
                values.len(),
                b.checks.len()
            ));
        }
        for (check, value) in b.checks.iter().zip(&values) {
            match (check, value) {
                (Check::Untyped, Value::ServerError(e)) => {
                    refused.get_or_insert_with(|| e.to_string());
                }
                (Check::Untyped, _) => {}
                (Check::Typed(keys), Value::ServerError(e)) if is_type_error(e) => {
                    suspects.extend(keys.iter().cloned());
                }
                (Check::Counter(key), Value::ServerError(e)) if is_type_error(e) => {
                    suspects.push(key.clone());
                }
                (Check::Typed(_) | Check::Counter(_), Value::ServerError(e)) => {
                    refused.get_or_insert_with(|| e.to_string());
                }
                (Check::Typed(keys), _) => sound.extend(keys.iter().map(|k| k.name.as_str())),
                (Check::Counter(key), v) => match integer(v) {
                    Some(_) => sound.push(&key.name),
                    None => suspects.push(key.clone()),
                },
            }
        }
        self.clear(sound);
        let mut error = None;
        if !suspects.is_empty() {
            suspects.sort_by(|a, b| a.name.cmp(&b.name));
            suspects.dedup_by(|a, b| a.name == b.name);
            // A key already known wrong is not looked at again on every event
            // (the next read's re-check notices if it changed): a misconfigured
            // Redis costs no extra round trip per command.
            let mut found: Vec<(Key, Option<Found>)> = Vec::new();
            let unknown: Vec<Key> = {
                let bad = self.bad();
                suspects
                    .into_iter()
                    .filter(|key| match bad.get(&key.name) {
                        Some(b) => {
                            found.push((key.clone(), Some(b.found.clone())));
                            false
                        }
                        None => true,
                    })
                    .collect()
            };
            if !unknown.is_empty() {
                match diagnose(con, &unknown).await {
                    Ok(more) => found.extend(more),
                    Err(e) => tracing::debug!(error = %e, "could not diagnose Redis keys"),
                }
            }
            for (key, found) in found {
                if let Some(found) = found {
                    if error.is_none() {
                        error = Some(LiveError::Unavailable(format!(
                            "{}.",
                            wrong_type_sentence(&key, &found)
                        )));
                    }
                    self.record(&key, found, true);
                }
            }
            if error.is_none() {
                // Failed on a type, yet right when looked at: changed in between.
                error = Some(LiveError::Unavailable(
                    "a Redis key of the figures changed type while being read".to_owned(),
                ));
            }
        }
        if error.is_none()
            && let Some(why) = refused
        {
            tracing::error!(%addr, error = %why, "Redis refused a command on the figures");
            error = Some(LiveError::Unavailable(format!(
                "Redis at {addr} refused a command on the figures (see the log)"
            )));
        }
        Answers { values, error }
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
struct Backlog {
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

    /// Runs a read batch; every answer is checked, so that a key of the wrong type
    /// fails the read instead of reading as zero.
    async fn read(&self, now: DateTime<Utc>, b: &Batch) -> Result<Vec<Value>, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let values = match query::<Vec<Value>>(&self.con, &b.pipe).await {
            Ok(v) => v,
            Err(e) => return Err(self.failed(&e)),
        };
        let answers = self.shared.verify(&self.con, &self.addr, b, values).await;
        self.recheck(now).await;
        match answers.error {
            Some(e) => Err(e),
            None => Ok(answers.values),
        }
    }

    /// Looks again at the keys of the wrong type, so that `readiness()` clears once
    /// they are right (or removed) and names what they hold now, and forgets those no
    /// longer used (yesterday's, last month's). Costs a round trip only while some
    /// key is wrong.
    async fn recheck(&self, now: DateTime<Utc>) {
        let pending: Vec<Key> = {
            let mut bad = self.shared.bad();
            if bad.is_empty() {
                return;
            }
            let live = live_key_names(self.tz, now);
            bad.retain(|name, _| live.contains(name));
            bad.values().map(|b| b.key.clone()).collect()
        };
        if pending.is_empty() {
            return;
        }
        if let Ok(found) = diagnose(&self.con, &pending).await {
            for (key, found) in found {
                match found {
                    Some(found) => self.shared.record(&key, found, false),
                    None => self.shared.clear([key.name.as_str()]),
                }
            }
        }
    }

    /// The commands of one update, as Go writes them (plus our presence).
    fn update_batch(&self, u: &Update) -> (Batch, usize) {
        let day = local_day(self.tz, u.at);
        let visitor = u.visitor.to_string();
        let mut b = Batch::atomic();
        b.active(std::slice::from_ref(&visitor), self.shared.window);
        let mut zscore = ::redis::cmd("ZSCORE");
        zscore.arg(PRESENCE_KEY).arg(&visitor);
        let seen = b.typed(zscore, &Key::presence());
        b.presence(
            &[(u.at.timestamp(), visitor.clone())],
            self.shared.presence_ttl,
        );
        for scope in Scope::ALL {
            b.count(scope, day, u.events, u.letters);
            b.unique(scope, day, std::slice::from_ref(&visitor));
        }
        if let Some(theme) = &u.theme {
            b.theme(theme, 1);
        }
        (b, seen)
    }

    /// Applies one update in one MULTI/EXEC; `true` when the visitor was not present
    /// before it. While Redis is unreachable the update waits in the backlog and no
    /// arrival is announced. A key of Go's of the wrong type is recorded (log, metric,
    /// `readiness()`) and does not stop the rest of the update, which Redis has
    /// applied anyway: only a failure of the presence answer is an error here.
    async fn apply(&self, u: Update) -> Result<bool, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            self.shared.defer(self.tz, &u);
            return Ok(false);
        }
        let (b, seen) = self.update_batch(&u);
        let values = match query::<Vec<Value>>(&self.con, &b.pipe).await {
            Ok(v) => v,
            Err(e) if is_transient(&e) => {
                self.shared.mark_down(&self.addr, &e);
                self.shared.defer(self.tz, &u);
                return Ok(false);
            }
            Err(e) => return Err(self.failed(&e)),
        };
        let answers = self.shared.verify(&self.con, &self.addr, &b, values).await;
        match answers.values.get(seen) {
            Some(Value::ServerError(_)) | None => Err(answers.error.unwrap_or_else(|| {
                LiveError::Unavailable("Redis did not answer the presence check".to_owned())
            })),
            Some(previous) => {
                let stale = (u.at.timestamp() - self.shared.window) as f64;
                Ok(score(previous).is_none_or(|last| last <= stale))
            }
        }
    }

    /// Go's fallbacks for a period that began at `from`: maicivy's `visitors` rows
    /// when Redis counts no unique visitor, its `generated_letters` rows when it
    /// counts no letter. Best effort, as in Go: a failing store leaves Redis's 0.
    async fn with_fallbacks(&self, from: DateTime<Utc>, unique: u64, letters: u64) -> (u64, u64) {
        let unique = if unique == 0 {
            match self.store.maicivy_visitors_since(from).await {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count maicivy's visitors for the fallback");
                    0
                }
            }
        } else {
            unique
        };
        let letters = if letters == 0 {
            match self.store.maicivy_letters_since(from).await {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count maicivy's letters for the fallback");
                    0
                }
            }
        } else {
            letters
        };
        (unique, letters)
    }
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer in time",
    ))
}

/// The integer at `i` of checked answers (checked, so never an error there).
fn int_at(values: &[Value], i: usize) -> u64 {
    values.get(i).and_then(integer).unwrap_or(0)
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

/// Waits for Redis to fail, then tries every `RETRY_EVERY` to replay the backlog;
/// once a replay (or, with nothing to replay, a PING) succeeds, updates go to Redis
/// directly again. At `stop`, one last attempt.
async fn replay_loop(
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

    #[test]
    fn counters_read_as_integers_or_not_at_all() {
        assert_eq!(integer(&Value::Nil), Some(0));
        assert_eq!(integer(&Value::BulkString(b"42".to_vec())), Some(42));
        assert_eq!(integer(&Value::Int(7)), Some(7));
        assert_eq!(integer(&Value::BulkString(b"abc".to_vec())), None);
        assert_eq!(integer(&Value::Array(vec![])), None);
    }

    #[test]
    fn themes_are_read_from_flat_and_paired_answers() {
        let flat = Value::Array(vec![
            Value::BulkString(b"backend".to_vec()),
            Value::BulkString(b"12".to_vec()),
            Value::BulkString(b"devops".to_vec()),
            Value::BulkString(b"3".to_vec()),
        ]);
        let paired = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"backend".to_vec()),
            Value::Double(12.0),
        ])]);
        let got = themes_answer(&flat).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].theme.as_str(), got[0].views), ("backend", 12));
        assert_eq!(themes_answer(&paired).unwrap()[0].views, 12);
    }

    #[test]
    fn the_sentence_names_the_key_and_what_it_holds() {
        let s = wrong_type_sentence(&Key::visitors(), &Found::Type("zset".to_owned()));
        assert_eq!(
            s,
            "Redis key analytics:realtime:visitors holds a zset, not the set maicivy's layout needs"
        );
    }

    #[test]
    fn the_live_keys_cover_the_iso_week() {
        let tz = chrono_tz::UTC;
        // A Wednesday: Monday's day keys still matter for the week.
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let live = live_key_names(tz, now);
        assert!(live.contains("analytics:stats:day:2026-11-30:total_events"));
        assert!(live.contains("analytics:stats:week:2026-W12:total_events"));
        assert!(!live.contains("analytics:stats:day:2026-11-29:total_events"));
    }
}
