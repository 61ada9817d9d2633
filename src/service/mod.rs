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
use crate::hub::Hub;
use crate::ingest::{IngestError, Ingestor};
use crate::live::LiveStats;
use crate::metrics::Metrics;
use crate::period::local_day;
use crate::protocol::{self, Presence};
use crate::store::{EventStore, StoreError};

mod reads;

pub use reads::{LetterStats, PeriodStats, ReadError};


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
    /// Today's salt for cookieless ids, read from the store once a day.
    salt: AsyncMutex<Option<(NaiveDate, Arc<[u8]>)>>,
}

#[derive(Clone)]
struct CachedStats {
    /// When the computation began: its figures include everything that happened
    /// before this instant.
    started: Instant,
    stats: Stats,
    initial: Bytes,
}

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
            salt: AsyncMutex::new(None),
        }
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    /// Stores the event, then counts and broadcasts it. Returns once it is committed:
    /// an error means it was not stored.
    pub async fn ingest(&self, event: NewEvent) -> Result<(), IngestError> {
        let event = self.ingestor.store(event).await?;
        self.metrics.events_ingested.inc();
        let became_active = match self.live.record_event(&event).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not count an event in the live figures");
                false
            }
        };
        self.publish(protocol::event(&event)).await;
        if became_active {
            self.publish(protocol::presence(
                Presence::Connected,
                event.visitor_id,
                event.occurred_at.timestamp(),
            ))
            .await;
        }
        Ok(())
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
        if let Err(e) = self.broker.publish(payload).await {
            self.metrics.broker_publish_errors.inc();
            tracing::warn!(error = %e, "could not publish a message");
        }
    }

    /// The figures and their `initial_stats` message, read after this call began:
    /// never a copy older than the request (CONTRACT.md), so a client that just sent
    /// an event or a ping sees it. Requests that arrive while a computation runs
    /// share the next one: a thousand connects cost two or three reads.
    pub async fn current_stats(&self) -> (Stats, Bytes) {
        let arrived = Instant::now();
        let mut cache = self.stats_cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.started >= arrived
        {
            return (c.stats, c.initial.clone());
        }
        let c = self.refresh(cache.take()).await;
        let out = (c.stats, c.initial.clone());
        *cache = Some(c);
        out
    }

    /// Computes the figures and their `initial_stats` encoding, for the cache.
    async fn refresh(&self, last: Option<CachedStats>) -> CachedStats {
        let started = Instant::now();
        let stats = self.compute_stats(last.map(|c| c.stats)).await;
        CachedStats {
            started,
            stats,
            initial: protocol::initial_stats(&stats),
        }
    }

    /// Computes the figures; if they cannot be read, the last known ones (or zeros)
    /// with a fresh timestamp, so that clients keep a heartbeat.
    async fn compute_stats(&self, last: Option<Stats>) -> Stats {
        self.metrics.stats_computations.inc();
        let now = Utc::now();
        match self.live.snapshot(now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the live figures; sending the last known");
                Stats {
                    timestamp: now.timestamp(),
                    ..last.unwrap_or_default()
                }
            }
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
        let stats = fresh.stats;
        *cache = Some(fresh);
        drop(cache);
        self.hub.broadcast(protocol::heartbeat(&stats));
    }

    /// The cookieless id of a visitor at `ip` with `user_agent` (see `visitor`).
    pub async fn cookieless_id(
        &self,
        ip: IpAddr,
        user_agent: &str,
        now: DateTime<Utc>,
    ) -> Result<VisitorId, StoreError> {
        let today = local_day(self.tz, now);
        let mut slot = self.salt.lock().await;
        let salt = match slot.as_ref() {
            Some((day, salt)) if *day == today => Arc::clone(salt),
            _ => {
                let salt: Arc<[u8]> = self.store.daily_salt(today).await?.into();
                *slot = Some((today, Arc::clone(&salt)));
                salt
            }
        };
        drop(slot);
        Ok(crate::visitor::cookieless_id(&salt, ip, user_agent))
    }
}
