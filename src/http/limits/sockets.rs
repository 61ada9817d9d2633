//! Headroom under the open-file limit: every client socket of the process is
//! counted, so that a flood of connections cannot take the files the store, Redis,
//! the listeners and the operator's health checks need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
