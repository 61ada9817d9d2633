//! maicivy-analytics: a self-hosted real-time analytics hub.
//!
//! Sites send events over HTTP; the hub stores them, keeps the live figures, and
//! pushes every event and a heartbeat of figures to every open WebSocket client.
//!
//! # Layout
//!
//! The domain, the protocol and the hub live in the `maicivy-core` crate
//! (`crates/core`), which cannot depend on axum, yawc, Redis or SQL; they are
//! re-exported here under their module names. This crate adds the parts that touch
//! the outside world:
//!
//! - `config`: the flags (and their environment variables).
//! - `extensions`: what a WebSocket session asked for (format, filter, catch-up,
//!   compression) and the replies that depend on it.
//! - `broker`: how a published message reaches every instance's hub (in process, or
//!   over Redis Pub/Sub).
//! - `store`: where events are kept (SQLite, PostgreSQL), behind `EventStore`.
//! - `ingest`: the pipeline: group commit, then counting and publishing in commit
//!   order, then the acknowledgement.
//! - `live`: the live figures (current visitors, today's counts), behind `LiveStats`.
//! - `service`: `Analytics`, which ties the above together for the HTTP layer.
//! - `http`: the routes, the WebSocket sessions and the error answers.
//! - `metrics`: the Prometheus registry of one server.
//!
//! `Server` below builds all of it from a `Config`, serves, and stops gracefully.

// The core crate's modules, under their old paths: `crate::hub` and
// `maicivy_analytics::domain` keep working.
pub use maicivy_core::{
    disconnect, domain, envelope, event_body, hub, period, proto, protocol, replay, subscriptions,
    visitor,
};

pub mod broker;
pub mod config;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::broker::{Broker, MemoryBroker, RedisBroker, RedisConnection};
use crate::http::AppState;
use crate::hub::Hub;
use crate::ingest::{Ingestor, Writer};
use crate::live::{LiveStats, MemoryLive, RedisLive};
use crate::metrics::Metrics;
use crate::service::{Analytics, Parts};

/// How long a stop waits for WebSocket clients to receive their close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for HTTP requests in flight.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not open the event store: {0}")]
    Store(#[from] store::StoreError),
    #[error("could not use Redis: {0}")]
    Redis(String),
    #[error("the security settings cannot be used: {0}")]
    Security(String),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built server, bound to its address, not yet serving.
pub struct Server {
    listener: TcpListener,
    /// `--metrics-listen`: `/metrics` (and the health checks) on their own address.
    metrics_listener: Option<TcpListener>,
    /// The HTTP connections' deadlines and limits, for both listeners.
    serving: Arc<http::Serving>,
    state: AppState,
    writer: Writer,
    /// Stops the Redis tasks, once everything that publishes has stopped.
    background: CancellationToken,
    heartbeat_interval: Duration,
    /// `--retention`, for the store's background tasks.
    retention: Option<Duration>,
}

impl Server {
    /// Opens the store, restores today's figures and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        // First: a key file that cannot be read should not wait for the store.
        let security =
            Arc::new(http::Security::from_config(&config).map_err(StartError::Security)?);
        let store = store::connect_in(&config.database_url, config.timezone).await?;
        let hub = Hub::new(config.client_queue);
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        // The Redis tasks stop last, after the writer has drained: the events it
        // commits during the stop must still be counted and published.
        let background = CancellationToken::new();
        let (live, broker): (Arc<dyn LiveStats>, Arc<dyn Broker>) = match &config.redis_url {
            // Redis down now is no reason not to start: both reconnect by themselves.
            Some(url) => {
                let redis = RedisConnection::open(url).map_err(StartError::Redis)?;
                let live = RedisLive::start(
                    &redis,
                    config.timezone,
                    config.active_window,
                    Arc::clone(&metrics),
                    Arc::clone(&store),
                    background.clone(),
                );
                let broker = RedisBroker::start(
                    &redis,
                    config.channel.clone(),
                    Arc::clone(&hub),
                    Arc::clone(&metrics),
                    background.clone(),
                );
                (Arc::new(live), Arc::new(broker))
            }
            None => {
                let live = MemoryLive::restore(
                    &*store,
                    config.timezone,
                    config.active_window,
                    chrono::Utc::now(),
                )
                .await?;
                (
                    Arc::new(live),
                    Arc::new(MemoryBroker::new(Arc::clone(&hub))),
                )
            }
        };
        let announcer = Arc::new(service::Announcer {
            live: Arc::clone(&live),
            broker: Arc::clone(&broker),
            metrics: Arc::clone(&metrics),
        });
        let (ingestor, writer) = Ingestor::start(Arc::clone(&store), announcer);
        let analytics = Arc::new(Analytics::new(Parts {
            store,
            live,
            broker,
            hub,
            ingestor,
            metrics,
            tz: config.timezone,
        }));
        let listener = listen(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let serving = http::Serving::new(&config, Arc::clone(&analytics.metrics));
        Ok(Self {
            listener,
            metrics_listener,
            serving,
            state: AppState::new(http::AppShared {
                analytics,
                max_body_bytes: config.max_body_bytes,
                max_message_bytes: config.max_message_bytes,
                write_timeout: config.write_timeout,
                shutdown,
                sessions: TaskTracker::new(),
                security,
            }),
            writer,
            background,
            heartbeat_interval: config.heartbeat_interval,
            retention: config.retention,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The service, e.g. to ask how many clients are connected
    /// (`analytics().hub.connected_clients()`, the seed's `GetConnectedClients`).
    pub fn analytics(&self) -> Arc<Analytics> {
        Arc::clone(&self.state.analytics)
    }

    /// Serves until `stop` completes, then stops gracefully: no new connections,
    /// a 1001 close frame to every WebSocket client, every acknowledged event
    /// committed, the store closed.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) {
        let Self {
            listener,
            metrics_listener,
            serving,
            state,
            writer,
            background,
            heartbeat_interval,
            retention,
        } = self;
        // The aggregates' backfill and retention, while the server serves.
        let maintenance = store::Maintenance::start(
            Arc::clone(&state.analytics.store),
            retention,
            Arc::clone(&state.analytics.metrics),
        );
        let shutdown = state.shutdown.clone();
        let heartbeat = tokio::spawn(heartbeat_loop(
            Arc::clone(&state.analytics),
            heartbeat_interval,
            shutdown.clone(),
        ));
        let sessions = state.sessions.clone();
        let analytics = Arc::clone(&state.analytics);
        let metrics_server = metrics_listener.map(|l| {
            let app =
                http::ops_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(Arc::clone(&serving).serve(
                l,
                app,
                shutdown.clone().cancelled_owned(),
                HTTP_DRAIN,
            ))
        });
        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                stop.await;
                tracing::info!("stopping: closing WebSocket sessions and finishing requests");
                shutdown.cancel();
            }
        };
        // Requests in flight get `HTTP_DRAIN` to finish once the stop begins; a
        // client that never finishes its request must not hold the stop forever.
        if !serving.serve(listener, app, signal, HTTP_DRAIN).await {
            tracing::warn!(deadline = ?HTTP_DRAIN, "requests still running at the drain deadline were cut");
        }
        shutdown.cancel();
        sessions.close();
        if tokio::time::timeout(CLOSE_GRACE, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSocket clients did not take their close frame in time");
        }
        let _ = heartbeat.await;
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        // Requests have all been answered: commit whatever the writer still holds,
        // count and publish it; only then may the Redis tasks and the store go.
        writer.finish().await;
        background.cancel();
        // Between two steps: what they folded or deleted is committed.
        maintenance.stop().await;
        analytics.store.close().await;
        tracing::info!("stopped");
    }
}

async fn heartbeat_loop(analytics: Arc<Analytics>, every: Duration, stop: CancellationToken) {
    // A panic in a tick would end the heartbeat silently: say so in `/readyz`.
    let _watch = analytics.heartbeat_watch();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // After a stall, one heartbeat, not a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => analytics.tick().await,
        }
    }
}

/// Binds with a deep accept backlog: when thousands of dashboards reconnect at once
/// (after a deploy), the default of 128 overflows and the kernel makes the rest retry
/// a SYN a whole second later.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
