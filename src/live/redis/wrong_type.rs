//! Wrong-type detection: a key of the layout that holds another type (or a counter
//! that is not an integer) is found from the answers of a batch, diagnosed with
//! `TYPE` and a probe, logged, counted and kept for `readiness()` until a command on
//! it succeeds or it no longer matters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, RedisError, ServerError, Value};
use chrono::{DateTime, Utc};

use super::answers::{as_text, integer};
use super::commands::{Batch, Check, query};
use super::keys::{Key, Kind, live_key_names};
use super::{LiveError, RedisLive, Shared};

/// While a key stays of the wrong type, how often the log says so again (every
/// failed command is counted in the metric).
const WRONG_TYPE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Most keys of the wrong type remembered for `readiness()`; it names the first.
const MAX_BAD_KEYS: usize = 64;

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

/// What a key of the wrong type was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// Another Redis type, as `TYPE` names it.
    Type(String),
    /// A string where an integer counter was expected.
    NotInteger,
    /// A string that is not a HyperLogLog.
    NotHll,
}

/// The `readiness()` sentence for one key (without its final period).
pub(super) fn wrong_type_sentence(key: &Key, found: &Found) -> String {
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

/// Whether a failed command says its key holds the wrong type (or, for `INCR`, a
/// value that is not an integer), rather than refusing the command itself.
fn is_type_error(e: &ServerError) -> bool {
    e.code() == "WRONGTYPE"
        || (e.code() == "ERR" && e.details().is_some_and(|d| d.contains("not an integer")))
}

/// For each key, whether (and how) it holds the wrong type: `TYPE` and the kind's
/// probe, in one round trip.
pub(super) async fn diagnose(
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

/// A key found of the wrong type, until a command on it succeeds.
pub(super) struct BadKey {
    pub(super) key: Key,
    pub(super) found: Found,
    logged: Instant,
}

/// The answers of a batch, once checked: `error` is the first failure (a key of the
/// wrong type first), the answers of failed commands are `Value::ServerError`.
pub(super) struct Answers {
    pub(super) values: Vec<Value>,
    pub(super) error: Option<LiveError>,
}

impl Shared {
    pub(super) fn bad(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, BadKey>> {
        self.bad.lock()
    }

    /// Remembers a key of the wrong type; `failed` when a command failed on it (it
    /// is counted), not when a re-check found it still wrong.
    pub(super) fn record(&self, key: &Key, found: Found, failed: bool) {
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

    pub(super) fn clear<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
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
    pub(super) async fn verify(
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

impl RedisLive {
    /// Looks again at the keys of the wrong type, so that `readiness()` clears once
    /// they are right (or removed) and names what they hold now, and forgets those no
    /// longer used (yesterday's, last month's). Costs a round trip only while some
    /// key is wrong.
    pub(super) async fn recheck(&self, now: DateTime<Utc>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentence_names_the_key_and_what_it_holds() {
        let s = wrong_type_sentence(&Key::visitors(), &Found::Type("zset".to_owned()));
        assert_eq!(
            s,
            "Redis key analytics:realtime:visitors holds a zset, not the set maicivy's layout needs"
        );
    }
}
