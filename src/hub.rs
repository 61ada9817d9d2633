//! The fan-out core: one broadcast ring that every local connection reads from.
//!
//! **Architecture Invariant:** the hub knows nothing of axum, WebSockets, Redis or SQL.
//! It moves already-encoded payloads (`Bytes`) from whoever publishes to every member.
//!
//! Why a `tokio::sync::broadcast` ring and not one queue per connection:
//! - a message is encoded once, and the ring holds one `Bytes` per message; members
//!   clone the handle (a reference count), never the bytes;
//! - publishing is O(1) in the number of members: it writes one slot and wakes the
//!   waiting readers. A member that does not read never delays anybody: nothing
//!   waits for it;
//! - each member's outbound queue is its unread backlog in the ring, bounded by the
//!   ring's capacity. A member that falls a whole ring behind is told so
//!   (`Delivery::Overflowed`) and the connection layer closes it as a slow consumer.
//!   Memory is bounded by `capacity × message size`, whatever the number of members.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// The local fan-out point of one instance.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Bytes>,
    /// Members currently joined; the seed's `GetConnectedClients`.
    members: AtomicUsize,
}

/// What a member gets when it asks for the next message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Message(Bytes),
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
    pub fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Arc::new(Self {
            tx,
            members: AtomicUsize::new(0),
        })
    }

    /// Hands `payload` to every member. Returns how many members will see it.
    pub fn broadcast(&self, payload: Bytes) -> usize {
        // An error only means there is no member right now: nothing to do.
        self.tx.send(payload).unwrap_or(0)
    }

    /// Joins the hub. Messages broadcast from now on reach the member.
    pub fn join(self: &Arc<Self>) -> Member {
        self.members.fetch_add(1, Ordering::Relaxed);
        Member {
            rx: self.tx.subscribe(),
            hub: Arc::clone(self),
        }
    }

    /// The number of members joined right now.
    pub fn connected_clients(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }
}

/// One reader of the hub; leaving is dropping it.
#[derive(Debug)]
pub struct Member {
    rx: broadcast::Receiver<Bytes>,
    hub: Arc<Hub>,
}

impl Member {
    /// Waits for the next message. Cancel-safe: usable in `tokio::select!`.
    pub async fn next(&mut self) -> Delivery {
        match self.rx.recv().await {
            Ok(payload) => Delivery::Message(payload),
            Err(RecvError::Lagged(missed)) => Delivery::Overflowed { missed },
            Err(RecvError::Closed) => Delivery::Closed,
        }
    }

    /// The next message if one is already waiting, so that a burst can be written
    /// with one flush.
    pub fn try_next(&mut self) -> Option<Delivery> {
        match self.rx.try_recv() {
            Ok(payload) => Some(Delivery::Message(payload)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Lagged(missed)) => Some(Delivery::Overflowed { missed }),
            Err(TryRecvError::Closed) => Some(Delivery::Closed),
        }
    }

    /// How many messages wait unread for this member.
    pub fn backlog(&self) -> usize {
        self.rx.len()
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
}
