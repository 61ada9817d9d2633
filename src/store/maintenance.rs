//! The store's background tasks, off the hot path: the fold (the backfill of the
//! aggregates, and on PostgreSQL the rows of other writers) and retention.
//!
//! Each runs a step at a time and checks for the stop between steps, so a step in
//! flight always commits or rolls back whole, and the next start resumes from the
//! position it committed. `Server::run_until` stops them after the writer has
//! finished and before the store closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EventStore;
use crate::metrics::Metrics;

/// Pause between fold steps while catching up: the writer gets the database
/// between two chunks.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(5);
/// How often the fold looks for new rows of other writers once caught up.
const FOLD_INTERVAL: Duration = Duration::from_secs(2);
/// After an error, before trying again.
const RETRY: Duration = Duration::from_secs(5);
/// How often progress is logged while catching up.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Events deleted per retention transaction, and the pause between two.
const RETENTION_BATCH: u32 = 1000;
const RETENTION_PAUSE: Duration = Duration::from_millis(20);
/// How often retention looks for expired events.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// The running tasks.
pub struct Maintenance {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the fold, and retention when `retention` is given (events older than
    /// it are deleted; the aggregates keep their figures).
    pub fn start(
        store: Arc<dyn EventStore>,
        retention: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(fold_loop(
            Arc::clone(&store),
            Arc::clone(&metrics),
            stop.clone(),
        ))];
        if let Some(keep) = retention {
            tasks.push(tokio::spawn(retention_loop(
                store,
                keep,
                metrics,
                stop.clone(),
            )));
        }
        Self { stop, tasks }
    }

    /// Stops the tasks between two steps and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Sleeps `d` unless stopped first; `false` when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn fold_loop(store: Arc<dyn EventStore>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut announced = store.aggregates_ready();
    metrics.aggregates_ready.set(i64::from(announced));
    if !announced {
        tracing::info!(
            "aggregates: backfill starting; the read routes query the events until it is done"
        );
    }
    let mut last_log = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        match store.fold_step().await {
            Ok(p) => {
                metrics.aggregates_backfilled.inc_by(p.folded);
                if p.caught_up {
                    if !announced {
                        announced = true;
                        metrics.aggregates_ready.set(1);
                        tracing::info!(
                            events = p.total_folded,
                            "aggregates: backfill done; the read routes read the aggregates"
                        );
                    }
                    if !p.continuous {
                        return;
                    }
                    if !pause(&stop, FOLD_INTERVAL).await {
                        return;
                    }
                } else {
                    if last_log.elapsed() >= PROGRESS_EVERY {
                        last_log = tokio::time::Instant::now();
                        tracing::info!(events = p.total_folded, "aggregates: backfill in progress");
                    }
                    if !pause(&stop, CATCH_UP_PAUSE).await {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "aggregates: a fold step failed; retrying");
                if !pause(&stop, RETRY).await {
                    return;
                }
            }
        }
    }
}

async fn retention_loop(
    store: Arc<dyn EventStore>,
    keep: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    loop {
        let cutoff = chrono::Utc::now() - keep;
        let mut deleted = 0u64;
        loop {
            if stop.is_cancelled() {
                return;
            }
            match store.retention_step(cutoff, RETENTION_BATCH).await {
                Ok(0) => break,
                Ok(n) => {
                    deleted += n;
                    metrics.retention_deleted.inc_by(n);
                    if !pause(&stop, RETENTION_PAUSE).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: a deletion failed; retrying later");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(rows = deleted, before = %cutoff, "retention: deleted expired rows");
        }
        // Until the backfill is done nothing is deleted: look again soon.
        let next = if store.aggregates_ready() {
            RETENTION_INTERVAL
        } else {
            RETRY
        };
        if !pause(&stop, next).await {
            return;
        }
    }
}
