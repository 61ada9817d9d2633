//! Group commit: one writer task stores the events of every concurrent request in
//! one transaction, so that the cost of a durable commit is shared by a batch and
//! each request is acknowledged only once its event is on disk.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::NewEvent;
use crate::store::EventStore;

/// The most events committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Requests that may wait for the writer; beyond, ingestion answers 503 at once
/// instead of queueing without bound.
const QUEUE: usize = 16 * 1024;

/// The committed event goes back to its caller (who still has to count and publish
/// it), so that nobody needs to keep a copy while it waits for the commit.
type Reply = oneshot::Sender<Result<NewEvent, ()>>;

/// Why an event was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the event store failed to commit")]
    StoreFailed,
    #[error("the writer queue is full")]
    Overloaded,
    #[error("the server is stopping")]
    Stopping,
}

/// The handle request handlers use; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<(NewEvent, Reply)>,
}

/// The writer task; `finish` waits until every queued event is committed.
pub struct Writer {
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl Ingestor {
    pub fn start(store: Arc<dyn EventStore>) -> (Self, Writer) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(write_loop(store, rx, stop.clone()));
        (Self { tx }, Writer { handle, stop })
    }

    /// Stores one event; gives it back once committed.
    pub async fn store(&self, event: NewEvent) -> Result<NewEvent, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((event, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IngestError::Stopping,
        })?;
        match answer.await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(())) => Err(IngestError::StoreFailed),
            Err(_) => Err(IngestError::Stopping),
        }
    }
}

impl Writer {
    /// Refuses new events, commits every queued one, and returns. Called once the
    /// HTTP server has stopped taking requests.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "the event writer task failed");
        }
    }
}

async fn write_loop(
    store: Arc<dyn EventStore>,
    mut rx: mpsc::Receiver<(NewEvent, Reply)>,
    stop: CancellationToken,
) {
    let mut events = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closed = false;
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            // On stop, refuse new events but keep going: `recv_many` returns 0 only
            // once the closed channel is drained, so every accepted event is committed.
            () = stop.cancelled(), if !closed => {
                rx.close();
                closed = true;
                continue;
            }
        };
        if received == 0 {
            break;
        }
        for (event, reply) in batch.drain(..) {
            events.push(event);
            replies.push(reply);
        }
        match store.insert_batch(&events).await {
            Ok(_) => {
                for (reply, event) in replies.drain(..).zip(events.drain(..)) {
                    let _ = reply.send(Ok(event));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "could not store a batch of events");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(()));
                }
            }
        }
        events.clear();
    }
}
