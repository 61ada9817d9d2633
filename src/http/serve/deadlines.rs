//! The deadlines of one connection: which phase it is in (headers, in flight,
//! idle, stalled writing), told by its socket and its requests, and when that
//! phase's time is up.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Timeouts;

/// Which deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Waiting for the rest of a request's headers.
    Header,
    /// A keep-alive connection waiting for its next request.
    Idle,
    /// The client stopped reading what the server writes.
    Stalled,
}

/// What the deadlines of one connection are computed from, told by its socket
/// (`ConnIo`) and its requests (`ConnService`).
pub(super) struct ConnState {
    phase: Mutex<Phase>,
    /// The deadline may have come closer: the watcher recomputes it.
    pub(super) changed: Notify,
    /// A 101 answer is leaving: the socket is about to be a WebSocket session's,
    /// and none of this applies any more.
    pub(super) upgraded: AtomicBool,
}

struct Phase {
    /// Requests whose answer has not all been handed to hyper.
    in_flight: usize,
    /// At least one request was read.
    served: bool,
    /// The connection opened, or its last request in flight finished.
    idle_since: Instant,
    /// The first byte read since `idle_since`, once a request has been served.
    head_since: Option<Instant>,
    write_blocked_since: Option<Instant>,
}

impl ConnState {
    pub(super) fn new() -> Self {
        Self {
            phase: Mutex::new(Phase {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                head_since: None,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
            upgraded: AtomicBool::new(false),
        }
    }

    pub(super) fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    pub(super) fn read(&self) {
        let mut p = self.phase.lock();
        if p.in_flight == 0 && p.served && p.head_since.is_none() {
            p.head_since = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    pub(super) fn write_blocked(&self) {
        let mut p = self.phase.lock();
        if p.write_blocked_since.is_none() {
            p.write_blocked_since = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    pub(super) fn wrote(&self) {
        self.phase.lock().write_blocked_since = None;
    }

    pub(super) fn request_began(&self) {
        let mut p = self.phase.lock();
        p.in_flight += 1;
        p.served = true;
        p.head_since = None;
    }

    pub(super) fn request_ended(&self) {
        let mut p = self.phase.lock();
        p.in_flight -= 1;
        if p.in_flight == 0 {
            p.idle_since = Instant::now();
            p.head_since = None;
            drop(p);
            self.changed.notify_one();
        }
    }

    /// No request in flight: what hyper writes now is its own.
    pub(super) fn between_requests(&self) -> bool {
        self.phase.lock().in_flight == 0
    }

    /// Nothing in flight, nothing waiting to be written, no upgrade under way:
    /// closing loses nothing.
    pub(super) fn is_idle(&self) -> bool {
        let p = self.phase.lock();
        p.in_flight == 0 && p.write_blocked_since.is_none() && !self.upgraded()
    }

    /// While an answer is stuck in the socket, only the stall counts: the
    /// connection is not idle, and no request can be read meanwhile.
    pub(super) fn next_deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        if self.upgraded() {
            // hyper hands the socket over at its next poll.
            return None;
        }
        let p = self.phase.lock();
        if let Some(at) = p.write_blocked_since {
            Some((at + t.idle, Expiry::Stalled))
        } else if p.in_flight > 0 {
            None
        } else if !p.served {
            Some((p.idle_since + t.header, Expiry::Header))
        } else if let Some(at) = p.head_since {
            Some((at + t.header, Expiry::Header))
        } else {
            Some((p.idle_since + t.idle, Expiry::Idle))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_connection_is_under_one_deadline_per_phase() {
        let t = Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let s = ConnState::new();
        let opened = s.phase.lock().idle_since;
        // The first request: its headers within the header timeout of the accept,
        // whatever arrives meanwhile.
        assert_eq!(
            s.next_deadline(&t),
            Some((opened + t.header, Expiry::Header))
        );
        s.read();
        assert_eq!(
            s.next_deadline(&t),
            Some((opened + t.header, Expiry::Header))
        );
        s.request_began();
        assert_eq!(s.next_deadline(&t), None);
        s.request_ended();
        let idle = s.phase.lock().idle_since;
        assert_eq!(s.next_deadline(&t), Some((idle + t.idle, Expiry::Idle)));
        // The next request's first byte starts its header clock.
        s.read();
        let head = s.phase.lock().head_since.unwrap();
        assert_eq!(s.next_deadline(&t), Some((head + t.header, Expiry::Header)));
        s.request_began();
        s.write_blocked();
        let blocked = s.phase.lock().write_blocked_since.unwrap();
        assert_eq!(
            s.next_deadline(&t),
            Some((blocked + t.idle, Expiry::Stalled))
        );
        assert!(!s.is_idle());
        s.wrote();
        s.request_ended();
        assert!(s.is_idle());
    }
}
