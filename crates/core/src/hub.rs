//! The fan-out core: one broadcast ring that every local connection reads from.
//!
//! **Architecture Invariant:** the hub knows nothing of axum, WebSockets, Redis or SQL.
//! It moves already-encoded payloads (`Bytes`) from whoever publishes to every member.
//!
//! Why a `tokio::sync::broadcast` ring and not one queue per connection:
//! - a message is encoded once, and the ring holds one `Bytes` per message; members
//!   clone the handle (a reference count), never the bytes;
//! - publishing writes one slot and wakes the readers waiting on the ring: O(waiting
//!   readers), under the replay lock (so an idle hub of many members pays one wake-up
//!   per member per message, as any fan-out must). A member that does not read never
//!   delays anybody: nothing waits for it;
//! - each member's outbound queue is its unread backlog in the ring, bounded by the
//!   ring's capacity. A member that falls a whole ring behind is told so
//!   (`Delivery::Overflowed`) and the connection layer closes it as a slow consumer.
//!   Memory is bounded by `capacity × message size`, whatever the number of members:
//!   the ring holds at most `capacity` envelopes, each at most `--max-message-bytes`
//!   of JSON from a foreign publisher (our own are far smaller) plus its other
//!   encodings once built, about three times that in all. With the defaults (4,096 ×
//!   64 KiB) that worst case is about 768 MiB, reached only by a publisher on the
//!   shared channel sending maximal payloads; a tokio broadcast ring cannot be bounded
//!   in bytes. The replay buffer, which holds the same envelopes, is also bounded in
//!   bytes (`replay::DEFAULT_MAX_BYTES`), so catch-up never keeps more than that.
//!
//! What travels in the ring is an `Envelope`: the encoded bytes, the message kind read
//! once (for subscription filters), a sequence number for events, and the other
//! encodings built at most once per message. The hub numbers events and keeps the last
//! ones (`replay`) under one lock with the send, so numbering order is delivery order
//! and a member joining knows exactly where the stream stood (`Member::joined`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::envelope::Envelope;
use crate::replay::{self, Cursor, Gap, Replay};

/// The local fan-out point of one instance.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Envelope>>,
    /// Members currently joined; the seed's `GetConnectedClients`.
    members: AtomicUsize,
    /// The stream's numbering and its last events, for catch-up. A `std` mutex, never
    /// held across an `.await`; held around the send so that a joining member's cursor
    /// and the ring agree.
    replay: Mutex<Replay>,
}

/// What a member gets when it asks for the next message: the contract bytes
/// (`Member::next`) or the whole envelope (`Member::next_envelope`).
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<M = Bytes> {
    Message(M),
    /// The member fell more than a ring behind; `missed` messages are gone for it.
    Overflowed {
        missed: u64,
    },
    /// The hub is gone (the process is stopping).
    Closed,
}

impl Hub {
    /// `capacity` is the number of messages a member may fall behind before it is
    /// considered a slow consumer.
    ///
    /// The replay buffer keeps at least as many events as the ring: a member closed as
    /// a slow consumer can then still catch up. Both hold the same envelopes, so this
    /// costs a pointer per event, not a copy.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_replay(capacity, capacity.max(replay::DEFAULT_CAPACITY))
    }

    /// `replay_capacity` events are kept for clients that reconnect (see `replay`).
    pub fn with_replay(capacity: usize, replay_capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            tx,
            members: AtomicUsize::new(0),
            replay: Mutex::new(Replay::new(replay_capacity)),
        })
    }

    /// Hands `payload` to every member. Returns how many members will see it.
    pub fn broadcast(&self, payload: Bytes) -> usize {
        // Read the kind before taking the lock: the lock only covers numbering.
        self.publish(Envelope::new(payload))
    }

    /// Numbers `envelope` (if it is an event), keeps it for catch-up and hands it to
    /// every member. Returns how many members will see it.
    pub fn publish(&self, envelope: Envelope) -> usize {
        let mut replay = self.replay();
        let envelope = replay.record(envelope);
        // An error only means there is no member right now: nothing to do.
        self.tx.send(envelope).unwrap_or(0)
    }

    /// Joins the hub. Messages broadcast from now on reach the member; `joined` is the
    /// stream's position at that moment.
    pub fn join(self: &Arc<Self>) -> Member {
        let replay = self.replay();
        let rx = self.tx.subscribe();
        let joined = replay.cursor();
        drop(replay);
        self.members.fetch_add(1, Ordering::Relaxed);
        Member {
            rx,
            hub: Arc::clone(self),
            joined,
        }
    }

    /// The events after `last_seq` of `epoch`, up to `upto` (a member's `joined.seq`:
    /// later ones reach it through the ring), oldest first; or why they cannot be had.
    pub fn missed(&self, epoch: &str, last_seq: u64, upto: u64) -> Result<Vec<Arc<Envelope>>, Gap> {
        self.replay().missed(epoch, last_seq, upto)
    }

    fn replay(&self) -> parking_lot::MutexGuard<'_, Replay> {
        // Nothing under this lock can leave the buffer half-updated.
        self.replay.lock()
    }

    /// The number of members joined right now.
    pub fn connected_clients(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }
}

/// One reader of the hub; leaving is dropping it.
#[derive(Debug)]
pub struct Member {
    rx: broadcast::Receiver<Arc<Envelope>>,
    hub: Arc<Hub>,
    joined: Cursor,
}

impl Member {
    /// Waits for the next message. Cancel-safe: usable in `tokio::select!`.
    pub async fn next(&mut self) -> Delivery {
        self.next_envelope().await.map(|e| e.json().clone())
    }

    /// The next message if one is already waiting, so that a burst can be written
    /// with one flush.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.try_next_envelope()
            .map(|d| d.map(|e| e.json().clone()))
    }

    /// `next`, with the whole envelope (kind, sequence number, other encodings).
    pub async fn next_envelope(&mut self) -> Delivery<Arc<Envelope>> {
        match self.rx.recv().await {
            Ok(envelope) => Delivery::Message(envelope),
            Err(RecvError::Lagged(missed)) => Delivery::Overflowed { missed },
            Err(RecvError::Closed) => Delivery::Closed,
        }
    }

    /// `try_next`, with the whole envelope.
    pub fn try_next_envelope(&mut self) -> Option<Delivery<Arc<Envelope>>> {
        match self.rx.try_recv() {
            Ok(envelope) => Some(Delivery::Message(envelope)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Lagged(missed)) => Some(Delivery::Overflowed { missed }),
            Err(TryRecvError::Closed) => Some(Delivery::Closed),
        }
    }

    /// The stream's position when this member joined: events numbered after it reach
    /// the member through the ring; those up to it, only from `Hub::missed`.
    pub fn joined(&self) -> &Cursor {
        &self.joined
    }
}

impl<M> Delivery<M> {
    fn map<N>(self, f: impl FnOnce(M) -> N) -> Delivery<N> {
        match self {
            Delivery::Message(m) => Delivery::Message(f(m)),
            Delivery::Overflowed { missed } => Delivery::Overflowed { missed },
            Delivery::Closed => Delivery::Closed,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.members.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_member_gets_the_same_bytes() {
        let hub = Hub::new(8);
        let mut a = hub.join();
        let mut b = hub.join();
        assert_eq!(hub.connected_clients(), 2);
        assert_eq!(hub.broadcast(Bytes::from_static(b"x")), 2);
        let (Delivery::Message(ma), Delivery::Message(mb)) = (a.next().await, b.next().await)
        else {
            panic!("expected messages");
        };
        // Same allocation: encoded once, shared by all.
        assert_eq!(ma.as_ptr(), mb.as_ptr());
        drop(a);
        assert_eq!(hub.connected_clients(), 1);
    }

    #[tokio::test]
    async fn a_member_that_never_reads_overflows_without_blocking_others() {
        let hub = Hub::new(4);
        let mut slow = hub.join();
        let mut fast = hub.join();
        for i in 0..10u8 {
            hub.broadcast(Bytes::from(vec![i]));
            assert_eq!(fast.next().await, Delivery::Message(Bytes::from(vec![i])));
        }
        assert_eq!(slow.next().await, Delivery::Overflowed { missed: 6 });
    }

    #[tokio::test]
    async fn events_are_numbered_in_delivery_order_and_kept_for_catch_up() {
        let hub = Hub::with_replay(8, 4);
        hub.broadcast(Bytes::from_static(br#"{"type":"a"}"#));
        let mut m = hub.join();
        assert_eq!(m.joined().seq, 1);
        hub.broadcast(Bytes::from_static(br#"{"type":"heartbeat","data":{}}"#));
        hub.broadcast(Bytes::from_static(br#"{"type":"b"}"#));
        let Delivery::Message(hb) = m.next_envelope().await else {
            panic!("a heartbeat")
        };
        assert_eq!((hb.kind(), hb.seq()), ("heartbeat", None));
        let Delivery::Message(b) = m.next_envelope().await else {
            panic!("an event")
        };
        assert_eq!((b.kind(), b.seq()), ("b", Some(2)));
        // What a member that joined now would have missed since seq 0: only what
        // came before its cursor, so nothing arrives twice.
        let epoch = m.joined().epoch.clone();
        let missed = hub.missed(&epoch, 0, m.joined().seq).unwrap();
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].kind(), "a");
        assert_eq!(hub.join().joined().seq, 2);
    }
}
