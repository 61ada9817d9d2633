//! The Redis broker: one Pub/Sub subscription per instance, shared by all of its
//! clients, so that a payload published by any instance (or by maicivy's Go backend,
//! or by `redis-cli PUBLISH`) reaches every client of every instance.
//!
//! Two connections per instance: the subscription, owned by a background task that
//! re-subscribes by itself whenever it is lost, and the command connection (a
//! `ConnectionManager`, shared with `RedisLive`) that PUBLISH goes through.
//!
//! Delivery is Redis Pub/Sub's: at most once, and only to instances subscribed at that
//! moment. While this instance is not subscribed, what it publishes is also handed to
//! its own hub directly, so its own clients never miss its own events; the few
//! payloads that could then come back through Redis as well are recognised and
//! dropped (see `Echoes`).
//!
//! Anyone may publish on the channel, and clients get payloads as WebSocket text
//! frames, which must be UTF-8: a browser closes the connection on one that is not.
//! So a payload that is not valid UTF-8 is dropped here, counted in
//! `maicivy_channel_payloads_dropped_total{reason="invalid_utf8"}`, and never reaches
//! the hub.

mod echoes;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RetryMethod};
use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::echoes::Echoes;
use self::subscriber::subscriber;
use super::{Broker, BrokerError};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long opening a connection may take before it counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its answer. Ingestion waits for PUBLISH, so a
/// Redis that stopped answering delays an event by at most this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// While Redis stays unreachable, the log repeats the warning this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The Redis server of one instance: its client (to open the subscription) and its
/// command connection, which reconnects by itself after a failed command.
#[derive(Clone)]
pub struct RedisConnection {
    client: Client,
    commands: ConnectionManager,
    /// `host:port`, for logs and the readiness sentence (never the password).
    addr: String,
}

impl RedisConnection {
    /// Checks the URL; connects lazily, so that a Redis that is down at start does
    /// not stop the server from starting.
    pub fn open(url: &str) -> Result<Self, String> {
        let client = Client::open(url)
            .map_err(|_| "the Redis URL is not valid (expected redis://host:port/db)".to_owned())?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // One attempt per failed command: while Redis is away, commands fail fast
            // and the callers' own recovery (backlog, local delivery) takes over.
            .set_number_of_retries(0);
        let commands = client
            .get_connection_manager_lazy(config)
            .map_err(|_| format!("could not set up the connection to Redis at {addr}"))?;
        Ok(Self {
            client,
            commands,
            addr,
        })
    }

    /// The shared command connection (cloning is cheap: one multiplexed socket).
    pub fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Whether `e` means "Redis is unreachable right now" (try again later), rather than
/// "Redis refused this command" (trying again would fail the same way).
pub(crate) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || !matches!(e.retry_method(), RetryMethod::NoRetry)
}

/// Why a connection attempt failed, as the end of a sentence.
fn failure_reason(e: &RedisError) -> &'static str {
    if e.is_connection_refusal() {
        "the connection was refused"
    } else if e.is_timeout() {
        "it did not answer in time"
    } else if e.kind() == ::redis::ErrorKind::AuthenticationFailed {
        "it refused the credentials"
    } else {
        "the connection failed"
    }
}

pub struct RedisBroker {
    commands: ConnectionManager,
    shared: Arc<Shared>,
    /// Stops the subscriber when the broker goes away without a server shutdown.
    _stop: DropGuard,
}

/// What the broker and its subscriber task share.
struct Shared {
    hub: Arc<Hub>,
    channel: String,
    addr: String,
    /// Set while the subscription is confirmed and alive; read on every publish.
    subscribed: AtomicBool,
    link: Mutex<Link>,
    echoes: Mutex<Echoes>,
    metrics: Arc<Metrics>,
    /// Invalid payloads since the last warning: a publisher that sends them in a loop
    /// gets one log line per `WARN_EVERY`, not one per payload.
    invalid: Mutex<Dropped>,
}

#[derive(Default)]
struct Dropped {
    since_warning: u64,
    last_warning: Option<Instant>,
}

/// The subscription's state, for `/readyz`.
enum Link {
    Starting,
    Subscribed,
    Down {
        since: Instant,
        attempts: u32,
        why: &'static str,
    },
}

impl Shared {
    fn set_link(&self, link: Link) {
        self.subscribed
            .store(matches!(link, Link::Subscribed), Ordering::Release);
        *self.link.lock() = link;
    }

    fn deliver(&self, payload: &[u8]) {
        if std::str::from_utf8(payload).is_err() {
            self.drop_invalid(payload.len());
            return;
        }
        if self.echoes().take(payload) {
            return;
        }
        self.hub.broadcast(Bytes::copy_from_slice(payload));
    }

    fn drop_invalid(&self, bytes: usize) {
        self.metrics.channel_payload_dropped("invalid_utf8");
        let mut log = self.invalid.lock();
        log.since_warning += 1;
        if log.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(channel = %self.channel, bytes, dropped = log.since_warning,
                "dropped a payload of the Redis channel that is not valid UTF-8 \
                 (browsers close the connection on such a text frame)");
            log.since_warning = 0;
            log.last_warning = Some(Instant::now());
        }
    }

    fn echoes(&self) -> parking_lot::MutexGuard<'_, Echoes> {
        // Plain data behind the lock: still consistent after a panic elsewhere.
        self.echoes.lock()
    }
}

impl RedisBroker {
    /// Starts the subscriber task; it runs until `stop` is cancelled or the broker is
    /// dropped, reconnecting as long as it takes.
    pub fn start(
        redis: &RedisConnection,
        channel: String,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            hub,
            channel,
            addr: redis.addr.clone(),
            subscribed: AtomicBool::new(false),
            link: Mutex::new(Link::Starting),
            echoes: Mutex::new(Echoes::default()),
            metrics: Arc::clone(&metrics),
            invalid: Mutex::new(Dropped::default()),
        });
        let stop = stop.child_token();
        tokio::spawn(subscriber(
            redis.client.clone(),
            Arc::clone(&shared),
            metrics,
            stop.clone(),
        ));
        Self {
            commands: redis.commands(),
            shared,
            _stop: stop.drop_guard(),
        }
    }

    fn deliver_locally(&self, payload: Bytes) {
        self.shared.echoes().remember(payload.clone());
        self.shared.hub.broadcast(payload);
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, payload: Bytes) -> Result<(), BrokerError> {
        // Read before publishing: if the subscription is down now, Redis will not
        // bring this payload back to our own clients.
        let subscribed = self.shared.subscribed.load(Ordering::Acquire);
        let mut con = self.commands.clone();
        let publish = ::redis::cmd("PUBLISH")
            .arg(&self.shared.channel)
            .arg(&payload[..])
            .to_owned();
        let mut sent = publish.query_async::<i64>(&mut con).await;
        // After an outage the command connection answers the first command with the
        // failure of its last attempt, then reconnects: one retry, and only when the
        // command cannot have reached Redis, so that nobody gets it twice.
        if let Err(e) = &sent
            && (e.is_connection_refusal() || e.is_connection_dropped())
        {
            sent = publish.query_async::<i64>(&mut con).await;
        }
        match sent {
            Ok(_) if subscribed => Ok(()),
            Ok(_) => {
                self.deliver_locally(payload);
                Ok(())
            }
            Err(e) => {
                self.deliver_locally(payload);
                tracing::debug!(error = %e, "PUBLISH failed");
                Err(BrokerError::Unavailable(format!(
                    "Redis at {} did not take the message ({}); only this instance's clients got it",
                    self.shared.addr,
                    failure_reason(&e)
                )))
            }
        }
    }

    fn readiness(&self) -> Result<(), String> {
        let link = self.shared.link.lock();
        match &*link {
            Link::Subscribed => Ok(()),
            Link::Starting => Err(format!(
                "Still subscribing to the channel {} on Redis at {}.",
                self.shared.channel, self.shared.addr
            )),
            Link::Down {
                since,
                attempts,
                why,
            } => Err(format!(
                "Not subscribed to the channel {} on Redis at {}: {why}; retrying \
                 ({attempts} attempts in the last {} s).",
                self.shared.channel,
                self.shared.addr,
                since.elapsed().as_secs()
            )),
        }
    }
}
