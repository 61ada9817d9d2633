//! Catch-up after a reconnect: the stream's numbering and its recent past.
//!
//! Every event broadcast by the hub gets the next sequence number of the stream; the
//! stream has an epoch, a random id drawn when the hub is made (so once per process
//! start). The last `capacity` events are kept here, so that a client that lost its
//! connection and comes back with the epoch and the last number it saw can be sent
//! what it missed, in order — or told plainly that it cannot.
//!
//! Figures (`initial_stats`, `heartbeat`) are neither numbered nor kept: the fresh
//! ones a reconnecting client gets supersede the old ones.
//!
//! The buffer lives in process memory. With several instances behind a load balancer
//! each has its own epoch and numbering, so a client that comes back to another
//! instance is told the gap cannot be filled (see the README: a Redis stream shared
//! by the instances is the way to lift that, left for later).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::envelope::Envelope;

/// The fewest events kept for catch-up (the hub keeps as many as its ring,
/// `--client-queue`, if that is more): about a minute of a busy site, under a megabyte
/// of memory for typical events.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The most bytes the buffer keeps, whatever its capacity in events: 4,096 events of
/// `--max-message-bytes` each, in three encodings, would be three quarters of a
/// gigabyte; this keeps the catch-up buffer at a fixed ceiling and lets the oldest go.
pub const DEFAULT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// A position in the stream: the epoch, and the last sequence number assigned when the
/// cursor was taken (0 before the first event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Arc<str>,
    pub seq: u64,
}

/// The numbering of the stream and its last events. Not synchronised: the hub holds
/// it under the same lock as it sends into its ring, so that numbering order and
/// delivery order are one.
#[derive(Debug)]
pub struct Replay {
    epoch: Arc<str>,
    capacity: usize,
    /// The ceiling of `bytes` (see `Envelope::retained_bytes`).
    max_bytes: usize,
    /// What the kept events weigh.
    bytes: usize,
    last_seq: u64,
    /// Events with consecutive numbers, oldest first.
    buffer: VecDeque<Arc<Envelope>>,
}

/// Why the events a client missed cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// The client's epoch is not this stream's: the server restarted (or the client
    /// reached another instance), and the numbers do not compare.
    OtherEpoch,
    /// Some of the events after the client's number are no longer kept.
    TooOld { lost: u64 },
    /// The client claims a number this stream has not reached.
    Ahead,
}

impl Gap {
    /// What to tell the client, as a sentence.
    pub fn sentence(&self) -> String {
        match self {
            Gap::OtherEpoch => "the server restarted (or this is another server) since your last connection, so the events you missed cannot be replayed; refresh your figures.".to_owned(),
            Gap::TooOld { lost } => format!(
                "you were away too long: {lost} of the events you missed are no longer kept, so they cannot be replayed; refresh your figures."
            ),
            Gap::Ahead => "your last_seq is ahead of this server's stream, so nothing can be replayed; start again from the current position.".to_owned(),
        }
    }
}

impl Replay {
    /// A stream with a fresh random epoch.
    pub fn new(capacity: usize) -> Self {
        Self::with_epoch(new_epoch(), capacity)
    }

    pub fn with_epoch(epoch: impl Into<Arc<str>>, capacity: usize) -> Self {
        Self {
            epoch: epoch.into(),
            capacity,
            max_bytes: DEFAULT_MAX_BYTES,
            bytes: 0,
            last_seq: 0,
            buffer: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
        }
    }

    /// Keeps at most `max_bytes` of events (the oldest go first).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// What the kept events weigh, in bytes (see `Envelope::retained_bytes`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: Arc::clone(&self.epoch),
            seq: self.last_seq,
        }
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Numbers an event and keeps it (dropping the oldest beyond the capacity in
    /// events or in bytes; an event heavier than the whole ceiling is not kept).
    /// Figures pass through unnumbered.
    pub fn record(&mut self, envelope: Envelope) -> Arc<Envelope> {
        if envelope.is_stats() {
            return Arc::new(envelope);
        }
        self.last_seq += 1;
        let envelope = Arc::new(envelope.with_seq(self.last_seq));
        if self.capacity > 0 {
            if self.buffer.len() == self.capacity {
                self.pop_oldest();
            }
            self.bytes += envelope.retained_bytes();
            self.buffer.push_back(Arc::clone(&envelope));
            while self.bytes > self.max_bytes {
                self.pop_oldest();
            }
        }
        envelope
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.buffer.pop_front() {
            self.bytes -= old.retained_bytes();
        }
    }

    /// The events numbered after `last_seq`, up to `upto` included (the cursor of the
    /// session's join: later ones reach it through the ring), oldest first.
    pub fn missed(&self, epoch: &str, last_seq: u64, upto: u64) -> Result<Vec<Arc<Envelope>>, Gap> {
        if epoch != &*self.epoch {
            return Err(Gap::OtherEpoch);
        }
        if last_seq > self.last_seq {
            return Err(Gap::Ahead);
        }
        if last_seq >= upto {
            return Ok(Vec::new());
        }
        let first_wanted = last_seq + 1;
        let oldest = match self.buffer.front().and_then(|e| e.seq()) {
            Some(oldest) if oldest <= first_wanted => oldest,
            Some(oldest) => {
                return Err(Gap::TooOld {
                    lost: oldest - first_wanted,
                });
            }
            None => {
                return Err(Gap::TooOld {
                    lost: upto - last_seq,
                });
            }
        };
        let from = (first_wanted - oldest) as usize;
        let to = (upto - oldest + 1) as usize;
        Ok(self
            .buffer
            .range(from..to.min(self.buffer.len()))
            .cloned()
            .collect())
    }
}

/// 16 hex digits: unique enough to tell two process starts apart, and free of `:` so
/// that `EPOCH:SEQ` splits unambiguously.
fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(n: u32) -> Envelope {
        Envelope::new(Bytes::from(format!(r#"{{"type":"e","n":{n}}}"#)))
    }

    fn seqs(v: &[Arc<Envelope>]) -> Vec<u64> {
        v.iter().map(|e| e.seq().unwrap()).collect()
    }

    #[test]
    fn events_are_numbered_and_figures_are_not() {
        let mut r = Replay::with_epoch("ep", 4);
        assert_eq!(r.record(event(1)).seq(), Some(1));
        let hb = r.record(Envelope::new(Bytes::from_static(
            br#"{"type":"heartbeat","data":{}}"#,
        )));
        assert_eq!(hb.seq(), None);
        assert_eq!(r.record(event(2)).seq(), Some(2));
        assert_eq!(
            r.cursor(),
            Cursor {
                epoch: "ep".into(),
                seq: 2
            }
        );
    }

    #[test]
    fn what_was_missed_comes_back_in_order_or_the_gap_is_named() {
        let mut r = Replay::with_epoch("ep", 4);
        for n in 1..=6 {
            r.record(event(n));
        }
        // Kept: 3, 4, 5, 6.
        assert_eq!(seqs(&r.missed("ep", 2, 6).unwrap()), vec![3, 4, 5, 6]);
        assert_eq!(seqs(&r.missed("ep", 4, 5).unwrap()), vec![5]);
        assert_eq!(r.missed("ep", 6, 6).unwrap().len(), 0);
        // Already past the join cursor: nothing from the buffer.
        assert_eq!(r.missed("ep", 6, 4).unwrap().len(), 0);
        assert_eq!(r.missed("ep", 1, 6).unwrap_err(), Gap::TooOld { lost: 1 });
        assert_eq!(r.missed("ep", 0, 6).unwrap_err(), Gap::TooOld { lost: 2 });
        assert_eq!(r.missed("other", 5, 6).unwrap_err(), Gap::OtherEpoch);
        assert_eq!(r.missed("ep", 7, 6).unwrap_err(), Gap::Ahead);
        for gap in [Gap::OtherEpoch, Gap::TooOld { lost: 1 }, Gap::Ahead] {
            assert!(gap.sentence().ends_with('.'));
        }
    }

    #[test]
    fn without_a_buffer_any_gap_is_reported() {
        let mut r = Replay::with_epoch("ep", 0);
        r.record(event(1));
        assert_eq!(r.missed("ep", 0, 1).unwrap_err(), Gap::TooOld { lost: 1 });
        assert_eq!(r.missed("ep", 1, 1).unwrap().len(), 0);
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_too() {
        let weight = event(1).retained_bytes();
        // Room for 100 events by count, for 3 by weight.
        let mut r = Replay::with_epoch("ep", 100).with_max_bytes(3 * weight);
        for n in 1..=9 {
            r.record(event(n));
            assert!(r.bytes() <= 3 * weight, "{} bytes kept", r.bytes());
        }
        assert_eq!(r.bytes(), 3 * weight);
        assert_eq!(seqs(&r.missed("ep", 6, 9).unwrap()), vec![7, 8, 9]);
        assert_eq!(r.missed("ep", 5, 9).unwrap_err(), Gap::TooOld { lost: 1 });
        // An event heavier than the ceiling evicts everything, itself included.
        let big = Envelope::new(Bytes::from(format!(
            r#"{{"type":"e","pad":"{}"}}"#,
            "x".repeat(3 * weight)
        )));
        assert_eq!(r.record(big).seq(), Some(10));
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.missed("ep", 9, 10).unwrap_err(), Gap::TooOld { lost: 1 });
        r.record(event(11));
        assert_eq!(seqs(&r.missed("ep", 10, 11).unwrap()), vec![11]);
    }

    #[test]
    fn epochs_differ_between_streams() {
        let (a, b) = (Replay::new(1), Replay::new(1));
        assert_ne!(a.epoch(), b.epoch());
        assert_eq!(a.epoch().len(), 16);
        assert!(!a.epoch().contains(':'));
    }
}
