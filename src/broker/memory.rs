//! The embedded broker: one process, so publishing is handing to the local hub.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Broker, BrokerError};
use crate::hub::Hub;

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, payload: Bytes) -> Result<(), BrokerError> {
        self.hub.broadcast(payload);
        Ok(())
    }

    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
}
