//! The limits that keep one client from taking the hub for itself: connections per
//! instance and per client IP, messages per second per connection, events per second
//! per client IP, and the idle-connection reaper of a session.
//!
//! Per-IP limits key an IPv6 client by its /64 (one subscriber usually holds a whole
//! /64) and leave `--limits-exempt` alone. Nothing here logs an address.

mod session;
mod sockets;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub use self::session::{Admission, Alarm, SessionGuard, SessionPolicy};
pub use self::sockets::{SocketPermit, Sockets};
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
}
