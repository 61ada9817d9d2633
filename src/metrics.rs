//! Prometheus metrics. Each server owns its own registry (no global recorder), so
//! several servers in one process, as in the tests, each report their own figures.
//!
//! Labels stay low-cardinality: a reason, never a visitor, a connection or an event
//! type (event types are open-ended).

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::disconnect::Disconnect;

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_opened: IntCounter,
    connections_closed: IntCounterVec,
    pub messages_sent: IntCounter,
    pub messages_dropped: IntCounter,
    pub client_messages_invalid: IntCounter,
    pub events_ingested: IntCounter,
    ingestion_errors: IntCounterVec,
    pub stats_computations: IntCounter,
    pub broker_publish_errors: IntCounter,
    redis_reconnects: IntCounterVec,
    /// 1 while this instance's Redis subscription is alive.
    pub redis_subscribed: IntGauge,
    /// 1 while the live figures go to Redis directly (0: kept in the backlog).
    pub redis_commands_up: IntGauge,
    /// Events whose figures wait in the backlog for Redis to come back.
    pub redis_pending_events: IntGauge,
    pub redis_backlog_dropped: IntCounter,
    /// Commands on a Redis key of maicivy's layout (or of ours) that holds another
    /// type or a value that is not an integer, by key family.
    redis_wrong_type: IntCounterVec,
    /// Payloads from the Redis channel not handed to the hub, by reason.
    channel_payloads_dropped: IntCounterVec,
    /// Requests the security layer refused before any handler ran, by reason.
    requests_refused: IntCounterVec,
    /// Client WebSocket messages over the per-connection rate, answered with an error.
    pub websocket_messages_rate_limited: IntCounter,
    /// Events folded into the aggregates by the backfill (and, on PostgreSQL, the
    /// rows of other writers).
    pub aggregates_backfilled: IntCounter,
    /// 1 once the aggregates answer the read routes (the backfill is done).
    pub aggregates_ready: IntGauge,
    /// Rows deleted by `--retention` (expired events, then short-window aggregates).
    pub retention_deleted: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections = IntGauge::new(
            "maicivy_websocket_connections",
            "WebSocket clients connected to this instance right now.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        {
            // Resident memory, CPU time and open files of the process: what an
            // operator checks first when connections pile up.
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Self {
            connections_opened: counter(
                &registry,
                "maicivy_websocket_connections_opened_total",
                "WebSocket connections accepted.",
            ),
            connections_closed: counter_vec(
                &registry,
                "maicivy_websocket_connections_closed_total",
                "WebSocket connections ended, by reason.",
                "reason",
            ),
            messages_sent: counter(
                &registry,
                "maicivy_websocket_messages_sent_total",
                "Messages written to WebSocket clients.",
            ),
            messages_dropped: counter(
                &registry,
                "maicivy_websocket_messages_dropped_total",
                "Messages a slow client missed before it was closed.",
            ),
            client_messages_invalid: counter(
                &registry,
                "maicivy_websocket_invalid_messages_total",
                "Client messages answered with an error.",
            ),
            events_ingested: counter(
                &registry,
                "maicivy_events_ingested_total",
                "Events stored and broadcast.",
            ),
            ingestion_errors: counter_vec(
                &registry,
                "maicivy_ingestion_errors_total",
                "Event submissions refused, by reason.",
                "reason",
            ),
            stats_computations: counter(
                &registry,
                "maicivy_stats_computations_total",
                "Times the live figures were computed (heartbeats and cache misses).",
            ),
            broker_publish_errors: counter(
                &registry,
                "maicivy_broker_publish_errors_total",
                "Messages the broker failed to publish.",
            ),
            redis_reconnects: counter_vec(
                &registry,
                "maicivy_redis_reconnects_total",
                "Redis connections re-established after a loss, by link (pubsub, commands).",
                "link",
            ),
            redis_subscribed: gauge(
                &registry,
                "maicivy_redis_subscribed",
                "1 while the Redis Pub/Sub subscription of this instance is alive.",
            ),
            redis_commands_up: gauge(
                &registry,
                "maicivy_redis_commands_up",
                "1 while the live figures are written to Redis directly, 0 while they wait in the backlog.",
            ),
            redis_pending_events: gauge(
                &registry,
                "maicivy_redis_pending_events",
                "Events whose figures wait for Redis to come back.",
            ),
            redis_backlog_dropped: counter(
                &registry,
                "maicivy_redis_backlog_dropped_total",
                "Visitor or theme entries left out of a full Redis backlog (their unique, current and theme counts are lost; event counts are not).",
            ),
            redis_wrong_type: counter_vec(
                &registry,
                "maicivy_redis_wrong_type_total",
                "Redis commands that failed on a key of another type (or a counter that is not an integer), by key family.",
                "key",
            ),
            channel_payloads_dropped: counter_vec(
                &registry,
                "maicivy_channel_payloads_dropped_total",
                "Payloads received on the Redis channel and not sent to clients, by reason.",
                "reason",
            ),
            requests_refused: counter_vec(
                &registry,
                "maicivy_requests_refused_total",
                "Requests refused by authentication, the origin check or a connection limit, by reason.",
                "reason",
            ),
            websocket_messages_rate_limited: counter(
                &registry,
                "maicivy_websocket_messages_rate_limited_total",
                "Client WebSocket messages over the per-connection rate, answered with an error.",
            ),
            aggregates_backfilled: counter(
                &registry,
                "maicivy_aggregates_backfill_events_total",
                "Events the backfill has folded into the aggregates (on PostgreSQL also the rows of other writers).",
            ),
            aggregates_ready: gauge(
                &registry,
                "maicivy_aggregates_ready",
                "1 once the read routes are answered from the aggregates (the backfill is done), 0 while they query the events.",
            ),
            retention_deleted: counter(
                &registry,
                "maicivy_retention_deleted_total",
                "Rows deleted by --retention: expired events, then aggregates only short windows read.",
            ),
            connections,
            registry,
        }
    }

    /// The label comes from `Disconnect`, so it is always one of the published words.
    pub fn connection_closed(&self, how: Disconnect) {
        self.connections_closed
            .with_label_values(&[how.metric_label()])
            .inc();
    }

    /// `reason` is one of a fixed set of words chosen by the HTTP layer.
    pub fn ingestion_error(&self, reason: &'static str) {
        self.ingestion_errors.with_label_values(&[reason]).inc();
    }

    /// `reason` is one of a fixed set of words chosen by the HTTP layer (SECURITY.md
    /// lists them).
    pub fn request_refused(&self, reason: &'static str) {
        self.requests_refused.with_label_values(&[reason]).inc();
    }

    /// `link` is `"pubsub"` or `"commands"`.
    pub fn redis_reconnected(&self, link: &'static str) {
        self.redis_reconnects.with_label_values(&[link]).inc();
    }

    /// `family` names a kind of key (`visitors`, `day_total`, …), never a key itself:
    /// day keys would make one series per day.
    pub fn redis_wrong_type(&self, family: &'static str) {
        self.redis_wrong_type.with_label_values(&[family]).inc();
    }

    /// `reason` is one of a fixed set of words chosen by the broker (`invalid_utf8`).
    pub fn channel_payload_dropped(&self, reason: &'static str) {
        self.channel_payloads_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into memory");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
