//! The commands on the layout: a `Batch` is a pipeline that knows what each answer
//! says about the types of its keys, with Go's writes (and our presence) as
//! builders; `query` sends one within `OP_TIMEOUT`.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, Pipeline, RedisError};
use chrono::NaiveDate;

use super::keys::{Key, PRESENCE_KEY, Scope, THEMES_KEY, VISITORS_KEY};

/// How long one operation may take before Redis counts as unreachable.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most members per PFADD / SADD / ZADD command of a replay.
const REPLAY_CHUNK: usize = 1000;

/// What a command's answer says about the types of its keys.
pub(super) enum Check {
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
pub(super) struct Batch {
    pub(super) pipe: Pipeline,
    pub(super) checks: Vec<Check>,
}

impl Batch {
    pub(super) fn atomic() -> Self {
        let mut pipe = ::redis::pipe();
        pipe.atomic().ignore_errors();
        Self {
            pipe,
            checks: Vec::new(),
        }
    }

    pub(super) fn plain() -> Self {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        Self {
            pipe,
            checks: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, cmd: Cmd, check: Check) -> usize {
        self.pipe.add_command(cmd);
        self.checks.push(check);
        self.checks.len() - 1
    }

    pub(super) fn typed(&mut self, cmd: Cmd, key: &Key) -> usize {
        self.push(cmd, Check::Typed(vec![key.clone()]))
    }

    fn untyped(&mut self, cmd: Cmd) -> usize {
        self.push(cmd, Check::Untyped)
    }

    /// `GET` of a counter.
    pub(super) fn counter(&mut self, key: Key) -> usize {
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
    pub(super) fn count(&mut self, scope: Scope, day: NaiveDate, events: u64, letters: u64) {
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
    pub(super) fn unique(&mut self, scope: Scope, day: NaiveDate, visitors: &[String]) {
        let key = Key::unique(scope, day);
        for chunk in visitors.chunks(REPLAY_CHUNK) {
            let mut c = ::redis::cmd("PFADD");
            c.arg(&key.name).arg(chunk);
            self.typed(c, &key);
        }
    }

    /// Marks `visitors` active in Go's set, whose whole key expires `window` seconds
    /// after the last write, as Go's middleware does.
    pub(super) fn active(&mut self, visitors: &[String], window: i64) {
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
    pub(super) fn presence(&mut self, seen: &[(i64, String)], ttl: i64) {
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

    pub(super) fn theme(&mut self, theme: &str, views: u64) {
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

pub(super) async fn query<T: ::redis::FromRedisValue>(
    con: &ConnectionManager,
    p: &Pipeline,
) -> Result<T, RedisError> {
    let mut con = con.clone();
    match tokio::time::timeout(OP_TIMEOUT, p.query_async::<T>(&mut con)).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error()),
    }
}

pub(super) fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer in time",
    ))
}
