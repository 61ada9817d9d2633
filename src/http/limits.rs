//! The limits that keep one client from taking the hub for itself: connections per
//! instance and per client IP, messages per second per connection, events per second
//! per client IP, and the idle-connection reaper of a session.
//!
//! Per-IP limits key an IPv6 client by its /64 (one subscriber usually holds a whole
//! /64) and leave `--limits-exempt` alone. Nothing here logs an address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::auth::Expiry;
use crate::config::Networks;

/// The key of a client IP in the per-IP limits.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Why a WebSocket connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `--max-connections` reached: 503.
    InstanceFull,
    /// `--max-connections-per-ip` reached: 429.
    IpFull,
}

impl ConnectionRefusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::InstanceFull => "connections_instance",
            Self::IpFull => "connections_per_ip",
        }
    }
}

/// Counts the open WebSocket connections, in total and per client IP.
pub struct ConnectionLimiter {
    /// 0: no limit.
    max: usize,
    /// 0: no limit.
    per_ip: usize,
    exempt: Networks,
    total: AtomicUsize,
    /// Only IPs with at least one connection, so it is bounded by the connections.
    /// A std mutex: held for one map operation, never across an `.await`.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it gives the place back.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: Option<IpAddr>,
}

impl ConnectionLimiter {
    pub fn new(max: usize, per_ip: usize, exempt: Networks) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip,
            exempt,
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn acquire(
        self: &Arc<Self>,
        client: IpAddr,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max != 0 && total > self.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnectionRefusal::InstanceFull);
        }
        let mut key = None;
        if self.per_ip != 0 && !self.exempt.contains(&client) {
            let k = limit_key(client);
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(k).or_insert(0);
            if *n >= self.per_ip {
                drop(by_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(ConnectionRefusal::IpFull);
            }
            *n += 1;
            key = Some(k);
        }
        Ok(ConnectionPermit {
            limiter: Arc::clone(self),
            key,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut by_ip = self.limiter.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = by_ip.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&k);
                }
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The client sockets of this process (HTTP connections, and the WebSocket sessions
/// some of them became), kept under the open-file limit with room to spare: the
/// store, Redis and the listeners need files too, and the last places are kept for
/// `--limits-exempt` (the operator's health checks), so that a flood of connections
/// cannot lock them out. Near the ceiling, connections with nothing in flight are
/// asked to close (`shed_requested`) to make room for new clients.
pub struct Sockets {
    open: AtomicUsize,
    /// Sockets any client may take.
    public: usize,
    /// Sockets in all; those above `public` are for `--limits-exempt` only.
    max: usize,
    /// From this many open sockets on, idle connections are asked to close.
    shed_at: usize,
    shed: tokio::sync::Notify,
}

/// One counted socket; dropping it (with the socket) gives the place back.
pub struct SocketPermit {
    sockets: Arc<Sockets>,
}

impl Sockets {
    /// Files left for everything but client sockets, at least.
    const RESERVED_FILES: u64 = 64;

    /// The ceilings for a process allowed `open_files` files (`RLIMIT_NOFILE`).
    pub fn for_open_file_limit(open_files: u64) -> Arc<Self> {
        let reserved = (open_files / 20).clamp(Self::RESERVED_FILES, 4096);
        let max = usize::try_from(open_files.saturating_sub(reserved))
            .unwrap_or(usize::MAX)
            .max(2);
        let exempt_only = (max / 20).clamp(1, 256);
        let public = max - exempt_only;
        Arc::new(Self {
            open: AtomicUsize::new(0),
            public,
            max,
            shed_at: public - public / 10,
            shed: tokio::sync::Notify::new(),
        })
    }

    /// The ceilings for this process's open-file limit (its soft `RLIMIT_NOFILE`).
    pub fn for_this_process() -> Arc<Self> {
        #[cfg(unix)]
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        #[cfg(not(unix))]
        let limit = 8192;
        Self::for_open_file_limit(limit)
    }

    /// A place for a new socket; `None` when the ceiling of this kind of client
    /// (`exempt`: `--limits-exempt`) is reached.
    pub fn acquire(self: &Arc<Self>, exempt: bool) -> Option<SocketPermit> {
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let ceiling = if exempt { self.max } else { self.public };
        if n >= self.shed_at {
            self.shed.notify_waiters();
        }
        if n > ceiling {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SocketPermit {
            sockets: Arc::clone(self),
        })
    }

    /// Asks every connection with nothing in flight to close (near the ceiling, or
    /// when the process is out of files).
    pub fn shed(&self) {
        self.shed.notify_waiters();
    }

    /// Completes at the next `shed`.
    pub async fn shed_requested(&self) {
        self.shed.notified().await;
    }

    /// Open client sockets (for tests and debugging).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// (any client, `--limits-exempt` only, idle ones asked to close from).
    #[cfg(test)]
    pub fn ceilings(&self) -> (usize, usize, usize) {
        (self.public, self.max, self.shed_at)
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often the ingestion limiter forgets the IPs whose bucket is full again.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Events per second per client IP on the ingestion route.
pub struct IngestLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    exempt: Networks,
    started: Instant,
    /// Milliseconds after `started` of the last sweep.
    last_sweep: AtomicU64,
}

impl IngestLimiter {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, exempt: Networks) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            exempt,
            started: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// `Err(retry_after)` when this client is over its rate.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.exempt.contains(&client) {
            return Ok(());
        }
        self.sweep();
        self.limiter
            .check_key(&limit_key(client))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// The keyed store holds one entry per IP ever seen; forgetting those whose
    /// bucket has refilled keeps it as small as the IPs active in the last seconds.
    /// Done on the request path by whichever request comes first after
    /// `SWEEP_EVERY`, so no background task is needed.
    fn sweep(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep.load(Ordering::Relaxed);
        let every = u64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many IPs the limiter remembers (for tests and debugging).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn connections_are_counted_and_given_back() {
        let exempt = Networks(vec!["127.0.0.0/8".parse().unwrap()]);
        let l = ConnectionLimiter::new(3, 2, exempt);
        let a1 = l.acquire(ip("192.0.2.1")).unwrap();
        let _a2 = l.acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(
            l.acquire(ip("192.0.2.1")).err(),
            Some(ConnectionRefusal::IpFull)
        );
        let _local = l.acquire(ip("127.0.0.1")).unwrap();
        assert_eq!(
            l.acquire(ip("192.0.2.2")).err(),
            Some(ConnectionRefusal::InstanceFull)
        );
        drop(a1);
        let _b = l.acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(l.total.load(Ordering::Relaxed), 3);
        drop(_b);
        assert!(!l.by_ip.lock().unwrap().contains_key(&ip("192.0.2.2")));
    }

    #[test]
    fn sockets_stay_under_the_open_file_limit_with_places_for_the_exempt() {
        let s = Sockets::for_open_file_limit(600);
        let (public, max, shed_at) = s.ceilings();
        assert!(
            max <= 600 - 64 && public < max && shed_at < public,
            "{:?}",
            s.ceilings()
        );
        let mut held: Vec<_> = (0..public).map(|_| s.acquire(false).unwrap()).collect();
        assert!(
            s.acquire(false).is_none(),
            "a public client over the ceiling"
        );
        assert_eq!(s.open(), public);
        // The exempt keep their places above the public ceiling.
        for _ in public..max {
            held.push(s.acquire(true).unwrap());
        }
        assert!(s.acquire(true).is_none());
        drop(held.pop());
        drop(held.pop());
        assert_eq!(s.open(), max - 2);
        assert!(s.acquire(true).is_some());
        held.clear();
        assert_eq!(s.open(), 0);
        // A huge limit leaves a bounded reserve.
        let (_, max, _) = Sockets::for_open_file_limit(1 << 20).ceilings();
        assert_eq!(max, (1 << 20) - 4096);
    }

    #[tokio::test]
    async fn near_the_ceiling_idle_connections_are_asked_to_close() {
        let s = Sockets::for_open_file_limit(200);
        let (_, _, shed_at) = s.ceilings();
        let mut asked = std::pin::pin!(s.shed_requested());
        assert!(futures_util::poll!(asked.as_mut()).is_pending());
        let mut held: Vec<_> = (1..shed_at).map(|_| s.acquire(false).unwrap()).collect();
        assert!(futures_util::poll!(asked.as_mut()).is_pending());
        held.push(s.acquire(false).unwrap());
        assert!(futures_util::poll!(asked.as_mut()).is_ready());
    }

    #[test]
    fn ingestion_is_limited_per_ip_with_a_retry_time() {
        let one = NonZeroU32::new(1).unwrap();
        let l = IngestLimiter::new(one, NonZeroU32::new(2).unwrap(), Networks::default());
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert!(l.check(ip("192.0.2.1")).is_ok());
        let wait = l.check(ip("192.0.2.1")).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Another client has its own bucket.
        assert!(l.check(ip("192.0.2.2")).is_ok());
        assert_eq!(l.tracked(), 2);
    }

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
