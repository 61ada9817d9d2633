//! The broker: how a message published on one instance reaches the clients of every
//! instance. In-process (`MemoryBroker`) by default; Redis Pub/Sub for several
//! instances.
//!
//! **Architecture Invariant:** a broker delivers payloads into the local `Hub`; it
//! never touches a connection, and it forwards payloads byte for byte.

mod memory;
mod redis;

use async_trait::async_trait;
use bytes::Bytes;

pub(crate) use self::redis::is_transient;
pub use self::redis::{RedisBroker, RedisConnection};
pub use memory::MemoryBroker;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is unreachable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers `payload` to every client of every instance, this one included.
    async fn publish(&self, payload: Bytes) -> Result<(), BrokerError>;

    /// `Err` with a sentence when the broker cannot deliver right now (`/readyz`).
    fn readiness(&self) -> Result<(), String>;
}
