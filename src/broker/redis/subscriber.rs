//! The subscription: one Pub/Sub connection kept alive by a background task that
//! forwards every payload into the hub and re-subscribes, after a short growing
//! pause, whenever it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::Client;
use ::redis::RedisError;
use ::redis::aio::PubSub;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{CONNECT_TIMEOUT, Link, RESPONSE_TIMEOUT, Shared, WARN_EVERY, failure_reason};
use crate::metrics::Metrics;

/// First and longest pause between subscription attempts. The longest is short: an
/// attempt costs one TCP connect, and clients wait for the channel to come back.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A subscribed connection only ever receives; a PING this often tells a silently
/// dead connection (a vanished host, a dropped NAT entry) from a quiet channel.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

async fn open_subscription(client: &Client, channel: &str) -> Result<PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Keeps one subscription alive until `stop`: subscribe, forward every payload into
/// the hub, and on any loss start again after a short, growing pause.
pub(super) async fn subscriber(
    client: Client,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut pause = RETRY_MIN;
    let mut ever_subscribed = false;
    // Set from the first failed attempt until a subscription succeeds.
    let mut outage: Option<(Instant, u32)> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT * 2, open_subscription(&client, &shared.channel)) => r,
        };
        let failure = match attempt {
            Ok(Ok(pubsub)) => {
                shared.set_link(Link::Subscribed);
                metrics.redis_subscribed.set(1);
                if ever_subscribed {
                    metrics.redis_reconnected("pubsub");
                }
                if ever_subscribed || outage.is_some() {
                    tracing::info!(addr = %shared.addr, channel = %shared.channel,
                        "subscribed to Redis again; fan-out across instances resumes");
                } else {
                    tracing::info!(addr = %shared.addr, channel = %shared.channel,
                        "subscribed to Redis");
                }
                ever_subscribed = true;
                outage = None;
                last_warning = None;
                pause = RETRY_MIN;
                match forward(pubsub, &shared, &stop).await {
                    Ended::Stopped => return,
                    Ended::Lost => {
                        metrics.redis_subscribed.set(0);
                        tracing::warn!(addr = %shared.addr, channel = %shared.channel,
                            "lost the Redis subscription; clients stay connected, re-subscribing");
                        "the connection was lost"
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "subscription attempt failed");
                failure_reason(&e)
            }
            Err(_) => "it did not answer in time",
        };
        let (since, attempts) = outage.get_or_insert((Instant::now(), 0));
        *attempts += 1;
        shared.set_link(Link::Down {
            since: *since,
            attempts: *attempts,
            why: failure,
        });
        if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(addr = %shared.addr, channel = %shared.channel, reason = failure,
                attempts = *attempts,
                "Redis is unreachable; retrying the subscription every {} ms at most",
                RETRY_MAX.as_millis());
            last_warning = Some(Instant::now());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

enum Ended {
    Stopped,
    Lost,
}

/// Forwards the subscription's payloads into the hub until the connection is lost or
/// `stop` is cancelled. The hub never blocks, so the client library's receive queue
/// is drained as fast as Redis fills it.
async fn forward(pubsub: PubSub, shared: &Shared, stop: &CancellationToken) -> Ended {
    let (mut sink, mut messages) = pubsub.split();
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_EVERY,
        KEEPALIVE_EVERY,
    );
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            msg = messages.next() => match msg {
                Some(msg) => shared.deliver(msg.get_payload_bytes()),
                None => return Ended::Lost,
            },
            _ = keepalive.tick() => {
                let pong = tokio::time::timeout(
                    RESPONSE_TIMEOUT,
                    sink.ping::<::redis::Value>(),
                ).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return Ended::Lost;
                }
            }
        }
    }
}
