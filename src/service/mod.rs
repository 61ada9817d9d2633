//! The analytics service: what happens to an event between the HTTP layer and the
//! clients, and where the live figures come from.
//!
//! It ties the parts together but owns none of the protocols: it stores through the
//! `Ingestor` (group commit), counts through `LiveStats`, publishes through the
//! `Broker`, and broadcasts heartbeats into the local `Hub`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use tokio::sync::Mutex as AsyncMutex;

use crate::broker::Broker;
use crate::domain::{NewEvent, Stats, VisitorId};
use crate::envelope::Envelope;
use crate::hub::Hub;
use crate::ingest::{AfterCommit, IngestError, Ingestor};
use crate::live::LiveStats;
use crate::metrics::Metrics;
use crate::period::local_day;
use crate::protocol::{self, Presence, ServerMessage};
use crate::store::{EventStore, StoreError};

mod reads;

pub use reads::{LetterStats, PeriodStats, ReadError};

/// The shortest time between two computations of the figures for clients: an idle
/// server answers at once; a busy one makes a request wait at most this long for a
/// computation it shares with every request that arrived meanwhile.
const STATS_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Analytics {
    /// Private to the service: handlers ask `Analytics`, never the store.
    pub(crate) store: Arc<dyn EventStore>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    live: Arc<dyn LiveStats>,
    broker: Arc<dyn Broker>,
    ingestor: Ingestor,
    tz: Tz,
    /// The last computed figures and their `initial_stats` encoding. A Tokio mutex,
    /// held while computing, so that requests arriving during a computation wait
    /// for the next one and then share it, instead of each running their own.
    stats_cache: AsyncMutex<Option<CachedStats>>,
    /// Set when the heartbeat task ended by a panic: no heartbeat is sent any more.
    heartbeat_dead: Arc<std::sync::atomic::AtomicBool>,
    /// Today's salt for cookieless ids, read from the store once a day. An
    /// `ArcSwap`, not a lock: every cookieless event reads it (the hottest route),
    /// and a day change is rare; two requests that both see yesterday's salt both
    /// ask the store, which gives them the same one.
    salt: arc_swap::ArcSwapOption<(NaiveDate, Arc<[u8]>)>,
}

#[derive(Clone)]
struct CachedStats {
    /// When the computation began: its figures include everything that happened
    /// before this instant.
    started: Instant,
    /// The figures this computation read; `None` when they could not be read.
    fresh: Option<Stats>,
    /// The last figures read successfully (this computation's or an earlier one's),
    /// with their own timestamp: what clients get while the figures cannot be
    /// read, never zeros standing for "unknown".
    last_good: Option<Stats>,
    /// What a connecting client gets first: `initial_stats` of `last_good`, or an
    /// `error` sentence when no figures were ever read.
    initial: Arc<Envelope>,
}

/// Sent instead of figures that cannot be read (Redis unreachable, a key of the
/// wrong type) when none were read before.
const FIGURES_UNAVAILABLE: &str =
    "The live figures cannot be read right now; they will come with a later heartbeat.";

pub struct Parts {
    pub store: Arc<dyn EventStore>,
    pub live: Arc<dyn LiveStats>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub ingestor: Ingestor,
    pub metrics: Arc<Metrics>,
    pub tz: Tz,
}

impl Analytics {
    pub fn new(parts: Parts) -> Self {
        Self {
            store: parts.store,
            hub: parts.hub,
            metrics: parts.metrics,
            live: parts.live,
            broker: parts.broker,
            ingestor: parts.ingestor,
            tz: parts.tz,
            stats_cache: AsyncMutex::new(None),
            heartbeat_dead: Default::default(),
            salt: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    /// Hands the event to the ingestion pipeline; returns once it is committed,
    /// counted and published (an error means it was not stored, or, for
    /// `Rejected`, that the store refused it for good).
    pub async fn ingest(&self, event: NewEvent) -> Result<(), IngestError> {
        self.ingestor.store(event).await
    }

    /// `Err(sentence)` while events cannot be ingested or no heartbeat is sent.
    pub fn ingest_readiness(&self) -> Result<(), String> {
        if self
            .heartbeat_dead
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err("The heartbeat task has stopped; clients get no figures.".into());
        }
        self.ingestor.readiness()
    }

    /// Held by the heartbeat task: marks it dead if it ends by a panic.
    pub fn heartbeat_watch(&self) -> impl Drop + use<> {
        struct Watch(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Watch {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, std::sync::atomic::Ordering::Release);
                    tracing::error!("the heartbeat task panicked: no more heartbeats");
                }
            }
        }
        Watch(Arc::clone(&self.heartbeat_dead))
    }

    /// A client `ping` carrying a visitor id: the visitor is active.
    pub async fn touch(&self, visitor: VisitorId) {
        let now = Utc::now();
        match self.live.touch(visitor, now).await {
            Ok(true) => {
                self.publish(protocol::presence(
                    Presence::Connected,
                    visitor,
                    now.timestamp(),
                ))
                .await
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not mark a visitor active"),
        }
    }

    async fn publish(&self, payload: Bytes) {
        publish(&*self.broker, &self.metrics, payload).await;
    }

    /// The figures and their `initial_stats` message, read after this call began:
    /// never a copy older than the request (CONTRACT.md), so a client that just sent
    /// an event or a ping sees it. Requests that arrive while a computation runs
    /// share the next one, and computations are at least `STATS_MIN_GAP` apart: a
    /// thousand connects cost a handful of reads.
    ///
    /// `None` when the figures cannot be read now; the message is then the last
    /// figures read (their `timestamp` says when), or an `error` sentence.
    pub async fn current_stats(&self) -> (Option<Stats>, Arc<Envelope>) {
        let arrived = Instant::now();
        let mut cache = self.stats_cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.started >= arrived {
                return (c.fresh, c.initial.clone());
            }
            // Under a burst (a thousand dashboards reconnecting), at most one
            // computation per `STATS_MIN_GAP`: wait out the gap holding the lock, so
            // that everyone arriving meanwhile shares the computation that follows.
            tokio::time::sleep_until((c.started + STATS_MIN_GAP).into()).await;
        }
        let c = self.refresh(cache.take()).await;
        let out = (c.fresh, c.initial.clone());
        *cache = Some(c);
        out
    }

    /// Reads the figures and builds what clients get, for the cache.
    async fn refresh(&self, last: Option<CachedStats>) -> CachedStats {
        let started = Instant::now();
        self.metrics.stats_computations.inc();
        let fresh = match self.live.snapshot(Utc::now()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the live figures");
                None
            }
        };
        let last_good = fresh.or(last.and_then(|c| c.last_good));
        CachedStats {
            started,
            fresh,
            last_good,
            initial: match &last_good {
                Some(stats) => Arc::new(Envelope::message(ServerMessage::InitialStats(*stats))),
                None => Arc::new(Envelope::message(ServerMessage::error(FIGURES_UNAVAILABLE))),
            },
        }
    }

    /// One heartbeat: visitors who left are announced, the figures are computed once
    /// and the same bytes go to every local client.
    pub async fn tick(&self) {
        let now = Utc::now();
        match self.live.prune(now).await {
            Ok(gone) => {
                for visitor in gone {
                    self.publish(protocol::presence(
                        Presence::Disconnected,
                        visitor,
                        now.timestamp(),
                    ))
                    .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not prune inactive visitors"),
        }
        let mut cache = self.stats_cache.lock().await;
        let fresh = self.refresh(cache.take()).await;
        let stats = fresh.last_good;
        *cache = Some(fresh);
        drop(cache);
        // While the figures cannot be read, the last ones read (with their own,
        // older timestamp): clients keep their heartbeat, and can see its age. Never
        // zeros that mean "unknown".
        if let Some(stats) = stats {
            self.hub
                .publish(Envelope::message(ServerMessage::Heartbeat(stats)));
        }
    }

    /// The cookieless id of a visitor at `ip` with `user_agent` (see `visitor`).
    pub async fn cookieless_id(
        &self,
        ip: IpAddr,
        user_agent: &str,
        now: DateTime<Utc>,
    ) -> Result<VisitorId, StoreError> {
        let today = local_day(self.tz, now);
        let salt = match self.salt.load().as_deref() {
            Some((day, salt)) if *day == today => Arc::clone(salt),
            _ => {
                let salt: Arc<[u8]> = self.store.daily_salt(today).await?.into();
                self.salt.store(Some(Arc::new((today, Arc::clone(&salt)))));
                salt
            }
        };
        Ok(crate::visitor::cookieless_id(&salt, ip, user_agent))
    }
}

async fn publish(broker: &dyn Broker, metrics: &Metrics, payload: Bytes) {
    if let Err(e) = broker.publish(payload).await {
        metrics.broker_publish_errors.inc();
        tracing::warn!(error = %e, "could not publish a message");
    }
}

/// What follows each commit, run by the ingestion pipeline in commit order: the
/// events are counted, then published (with `visitor_connected` when a visitor has
/// just become active).
pub struct Announcer {
    pub live: Arc<dyn LiveStats>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl AfterCommit for Announcer {
    async fn committed(&self, events: &[NewEvent]) {
        for event in events {
            self.metrics.events_ingested.inc();
            let became_active = match self.live.record_event(event).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "could not count an event in the live figures");
                    false
                }
            };
            publish(&*self.broker, &self.metrics, protocol::event(event)).await;
            if became_active {
                let presence = protocol::presence(
                    Presence::Connected,
                    event.visitor_id,
                    event.occurred_at.timestamp(),
                );
                publish(&*self.broker, &self.metrics, presence).await;
            }
        }
    }
}
