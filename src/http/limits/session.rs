//! The per-connection checks of a WebSocket session: its message rate, with a
//! tolerance for bursts before it counts as abuse, its idle timeout at the pings,
//! and its token's expiry.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::http::auth::Expiry;

/// Refused messages tolerated in a burst before a connection counts as abusive
/// (close 1008); the allowance comes back at one a second.
pub const ABUSE_BURST: u32 = 10;

/// What a session should do about the frame it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Over the rate: answer with an `error` message, ignore the frame.
    Refuse,
    /// Over the rate for too long: close with 1008.
    Abuse,
}

/// What a session's guard woke up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Time to send a ping frame.
    Ping,
    /// Nothing came from the client within the idle timeout.
    Idle,
    /// The client's token has expired.
    TokenExpired,
}

/// The settings every session's guard is made from.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub messages: Quota,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// The per-connection checks of one WebSocket session: message rate, idle
/// timeout, token expiry.
pub struct SessionGuard {
    policy: SessionPolicy,
    /// Made at the first client message: most connections never send one, and the
    /// limiters are the bulk of the guard's memory.
    limiters: Option<Box<(DefaultDirectRateLimiter, DefaultDirectRateLimiter)>>,
    last_heard: tokio::time::Instant,
    ping: tokio::time::Interval,
    expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl SessionGuard {
    pub fn new(policy: SessionPolicy, expiry: Option<Expiry>) -> Self {
        let now = tokio::time::Instant::now();
        let mut ping = tokio::time::interval_at(now + policy.ping_interval, policy.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            policy,
            limiters: None,
            last_heard: now,
            ping,
            expiry: expiry.map(|e| Box::pin(tokio::time::sleep(e.remaining()))),
        }
    }

    /// Waits for the next ping time, idle timeout or token expiry. Cancel-safe:
    /// meant for one branch of the session's `select!`.
    pub async fn alarm(&mut self) -> Alarm {
        let expiry = async {
            match self.expiry.as_mut() {
                Some(sleep) => sleep.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expiry => Alarm::TokenExpired,
            _ = self.ping.tick() => {
                if self.last_heard.elapsed() >= self.policy.idle_timeout {
                    Alarm::Idle
                } else {
                    Alarm::Ping
                }
            }
        }
    }

    /// A frame came from the client: it is alive. Returns whether the frame is
    /// within the message rate. Pongs are not counted: they answer our own pings,
    /// and the server writes nothing back for them.
    pub fn admit(&mut self, is_pong: bool) -> Admission {
        self.last_heard = tokio::time::Instant::now();
        if is_pong {
            return Admission::Accept;
        }
        let policy = &self.policy;
        let limiters = self.limiters.get_or_insert_with(|| {
            Box::new((
                RateLimiter::direct(policy.messages),
                RateLimiter::direct(
                    Quota::per_second(NonZeroU32::MIN)
                        .allow_burst(NonZeroU32::new(ABUSE_BURST).expect("non-zero")),
                ),
            ))
        });
        if limiters.0.check().is_ok() {
            Admission::Accept
        } else if limiters.1.check().is_ok() {
            Admission::Refuse
        } else {
            Admission::Abuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_refused_then_closed_for_abuse() {
        let policy = SessionPolicy {
            messages: Quota::per_second(NonZeroU32::new(1).unwrap())
                .allow_burst(NonZeroU32::new(2).unwrap()),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        };
        let mut g = SessionGuard::new(policy, None);
        assert_eq!(g.admit(false), Admission::Accept);
        assert_eq!(g.admit(false), Admission::Accept);
        for _ in 0..ABUSE_BURST {
            assert_eq!(g.admit(false), Admission::Refuse);
        }
        assert_eq!(g.admit(false), Admission::Abuse);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_idle_at_the_first_ping_after_the_timeout() {
        let policy = SessionPolicy {
            messages: Quota::per_second(NonZeroU32::new(1).unwrap()),
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
        };
        let mut g = SessionGuard::new(policy, None);
        assert_eq!(g.alarm().await, Alarm::Ping);
        assert_eq!(g.alarm().await, Alarm::Idle);
        let mut g = SessionGuard::new(policy, None);
        assert_eq!(g.alarm().await, Alarm::Ping);
        g.admit(true);
        assert_eq!(g.alarm().await, Alarm::Ping);
    }
}
