//! The payloads this instance delivered to its own hub directly, remembered for a
//! while so that their echo through the subscription is dropped once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long, and how many, locally delivered payloads are remembered to drop their
/// possible echo through Redis.
const ECHO_TTL: Duration = Duration::from_secs(30);
const ECHO_MAX: usize = 1024;

/// Payloads handed to the local hub directly (Redis unreachable, or this instance
/// not subscribed) that Redis may still deliver through the subscription: a PUBLISH
/// whose answer was lost may have gone through, and a subscription confirmed just
/// after the check sees it too. Each is dropped once when it comes back, so no
/// client gets it twice. Event payloads carry a visitor id and a timestamp, so a
/// byte-identical but distinct payload within `ECHO_TTL` is practically impossible.
#[derive(Default)]
pub(super) struct Echoes {
    recent: VecDeque<(Instant, Bytes)>,
}

impl Echoes {
    pub(super) fn remember(&mut self, payload: Bytes) {
        self.expire();
        if self.recent.len() == ECHO_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((Instant::now(), payload));
    }

    pub(super) fn take(&mut self, payload: &[u8]) -> bool {
        if self.recent.is_empty() {
            return false;
        }
        self.expire();
        match self.recent.iter().position(|(_, p)| p[..] == *payload) {
            Some(i) => {
                self.recent.remove(i);
                true
            }
            None => false,
        }
    }

    fn expire(&mut self) {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| at.elapsed() > ECHO_TTL)
        {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_is_dropped_once() {
        let mut echoes = Echoes::default();
        echoes.remember(Bytes::from_static(b"a"));
        assert!(!echoes.take(b"b"));
        assert!(echoes.take(b"a"));
        assert!(!echoes.take(b"a"));
    }

    #[test]
    fn echoes_are_bounded() {
        let mut echoes = Echoes::default();
        for i in 0..(ECHO_MAX + 10) {
            echoes.remember(Bytes::from(i.to_string()));
        }
        assert_eq!(echoes.recent.len(), ECHO_MAX);
        assert!(!echoes.take(b"0"));
    }
}
