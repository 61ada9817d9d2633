//! The ingestion pipeline: validate (the HTTP layer) → queue → commit → count and
//! publish, in commit order → acknowledge.
//!
//! One writer task stores the events of every concurrent request in one
//! transaction (group commit: the cost of a durable commit is shared by a batch).
//! Committed batches go, in order, to one announcer task that hands them to
//! `AfterCommit` (the live figures and the broker) and only then acknowledges each
//! request. Nothing after the queue depends on the request staying alive: a client
//! that hangs up after sending still gets its event stored, counted and broadcast,
//! and the broadcast order is the commit order.
//!
//! A batch that fails is retried one event at a time, so that one event the store
//! refuses fails alone; an event that fails alone while others commit is refused
//! for good (`IngestError::Rejected`), not "retry".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
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
/// Committed batches that may wait for the announcer: the writer commits the next
/// batch while the previous one is counted and published, and no further ahead.
const ANNOUNCE_QUEUE: usize = 4;
/// How long one commit may take. Past it the transaction is abandoned (rolled
/// back) and its events answered 503, instead of requests hanging on a locked
/// table for as long as their clients wait.
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<(), IngestError>>;

/// Why an event was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The store failed (or took longer than `COMMIT_DEADLINE`): worth a retry.
    #[error("the event store failed to commit")]
    StoreFailed,
    /// The store refused this event while it committed others: a retry would fail
    /// the same way.
    #[error("the event store refused this event")]
    Rejected,
    #[error("the writer queue is full")]
    Overloaded,
    #[error("the server is stopping")]
    Stopping,
}

/// What must follow every commit, in commit order, before the events are
/// acknowledged: counting them in the live figures and publishing them.
#[async_trait]
pub trait AfterCommit: Send + Sync + 'static {
    async fn committed(&self, events: &[NewEvent]);
}

/// The handle request handlers use; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<(NewEvent, Reply)>,
    health: Arc<Health>,
}

/// What `/readyz` needs to know of the pipeline.
#[derive(Default)]
struct Health {
    /// The last commit failed (the store refuses or hangs); cleared by the next
    /// commit that succeeds.
    failing: AtomicBool,
    /// A pipeline task ended before the stop (it panicked): nothing is ingested.
    dead: AtomicBool,
}

/// The pipeline's tasks; `finish` waits until every queued event is committed and
/// announced.
pub struct Writer {
    writer: JoinHandle<()>,
    announcer: JoinHandle<()>,
    stop: CancellationToken,
}

impl Ingestor {
    pub fn start(store: Arc<dyn EventStore>, after: Arc<dyn AfterCommit>) -> (Self, Writer) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (committed_tx, committed_rx) = mpsc::channel(ANNOUNCE_QUEUE);
        let stop = CancellationToken::new();
        let health = Arc::new(Health::default());
        let writer = tokio::spawn(write_loop(
            store,
            rx,
            committed_tx,
            stop.clone(),
            Arc::clone(&health),
        ));
        let announcer = tokio::spawn(announce_loop(after, committed_rx, Arc::clone(&health)));
        (
            Self { tx, health },
            Writer {
                writer,
                announcer,
                stop,
            },
        )
    }

    /// Stores one event; returns once it is committed, counted and published.
    pub async fn store(&self, event: NewEvent) -> Result<(), IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((event, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IngestError::Stopping,
        })?;
        answer.await.unwrap_or(Err(IngestError::Stopping))
    }

    /// `Err(sentence)` while events cannot be ingested, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.health.dead.load(Ordering::Acquire) {
            return Err("The event writer has stopped; events cannot be ingested.".into());
        }
        if self.health.failing.load(Ordering::Acquire) {
            return Err(
                "The event store is refusing commits; events are not being recorded.".into(),
            );
        }
        Ok(())
    }
}

impl Writer {
    /// Refuses new events, commits and announces every queued one, and returns.
    /// Called once the HTTP server has stopped taking requests.
    pub async fn finish(self) {
        self.stop.cancel();
        for (task, name) in [(self.writer, "writer"), (self.announcer, "announcer")] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, task = name, "an ingestion task failed");
            }
        }
    }
}

/// Marks the pipeline dead if its task ends by a panic (a normal end is the stop).
struct DeathWatch {
    health: Arc<Health>,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.dead.store(true, Ordering::Release);
            tracing::error!("an ingestion task panicked: events can no longer be ingested");
        }
    }
}

async fn write_loop(
    store: Arc<dyn EventStore>,
    mut rx: mpsc::Receiver<(NewEvent, Reply)>,
    committed: mpsc::Sender<Vec<(NewEvent, Reply)>>,
    stop: CancellationToken,
    health: Arc<Health>,
) {
    let _watch = DeathWatch {
        health: Arc::clone(&health),
    };
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
        let stored = commit(&*store, std::mem::take(&mut batch), &health).await;
        batch.reserve(MAX_BATCH);
        if !stored.is_empty() && committed.send(stored).await.is_err() {
            // The announcer is gone (it panicked): the replies are dropped, which
            // answers "stopping"; `dead` is already set.
            break;
        }
    }
}

/// Commits `batch`, answering the events that failed; returns the committed ones.
async fn commit(
    store: &dyn EventStore,
    batch: Vec<(NewEvent, Reply)>,
    health: &Health,
) -> Vec<(NewEvent, Reply)> {
    let (events, replies): (Vec<NewEvent>, Vec<Reply>) = batch.into_iter().unzip();
    if insert(store, &events).await {
        health.failing.store(false, Ordering::Release);
        return events.into_iter().zip(replies).collect();
    }
    if events.len() == 1 {
        health.failing.store(true, Ordering::Release);
        for reply in replies {
            let _ = reply.send(Err(IngestError::StoreFailed));
        }
        return Vec::new();
    }
    // One at a time, so that an event the store cannot take fails alone.
    let mut stored = Vec::with_capacity(events.len());
    let mut refused = Vec::new();
    for (event, reply) in events.into_iter().zip(replies) {
        if insert(store, std::slice::from_ref(&event)).await {
            stored.push((event, reply));
        } else {
            refused.push(reply);
        }
    }
    // If some committed, the store works and the others were refused for what they
    // are; if none did, the store is failing and each may be retried.
    let verdict = if stored.is_empty() {
        IngestError::StoreFailed
    } else {
        IngestError::Rejected
    };
    health.failing.store(stored.is_empty(), Ordering::Release);
    if verdict == IngestError::Rejected {
        tracing::warn!(
            refused = refused.len(),
            "the event store refused events that failed alone"
        );
    }
    for reply in refused {
        let _ = reply.send(Err(verdict));
    }
    stored
}

/// One transaction within `COMMIT_DEADLINE`; logs why it failed.
async fn insert(store: &dyn EventStore, events: &[NewEvent]) -> bool {
    match tokio::time::timeout(COMMIT_DEADLINE, store.insert_batch(events)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, events = events.len(), "could not store events");
            false
        }
        Err(_) => {
            tracing::error!(
                events = events.len(),
                deadline = ?COMMIT_DEADLINE,
                "a commit took too long; abandoned"
            );
            false
        }
    }
}

async fn announce_loop(
    after: Arc<dyn AfterCommit>,
    mut committed: mpsc::Receiver<Vec<(NewEvent, Reply)>>,
    health: Arc<Health>,
) {
    let _watch = DeathWatch { health };
    let mut events = Vec::with_capacity(MAX_BATCH);
    // Ends when the writer has ended and every committed batch is announced.
    while let Some(batch) = committed.recv().await {
        let mut replies = Vec::with_capacity(batch.len());
        for (event, reply) in batch {
            events.push(event);
            replies.push(reply);
        }
        after.committed(&events).await;
        for reply in replies {
            let _ = reply.send(Ok(()));
        }
        events.clear();
    }
}

#[cfg(test)]
mod tests;
