//! The WebSocket endpoint: the upgrade, and one session task per client.
//!
//! A session joins the hub before it reads the figures for `initial_stats`, so no
//! event falls between the two. It then waits on four things at once: the hub (to
//! write broadcasts), the client (to answer its messages), its guard (pings, the
//! idle timeout, the token's expiry; see `limits`) and the stop signal. All
//! writes of a session happen in its own task, so a client that does not read only
//! ever blocks itself.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use yawc::close::CloseCode;
use yawc::{Frame, HttpWebSocket, IncomingUpgrade, OpCode, Options, WebSocketError};

use super::auth::Expiry;
use super::client_ip::ClientIp;
use super::limits::{Admission, Alarm, ConnectionPermit, ConnectionRefusal, SessionGuard};
use super::{ApiError, AppState};
use crate::hub::{Delivery, Member};
use crate::metrics::CloseReason;
use crate::protocol::{self, ClientMessage};

/// The close codes this server sends, and what a client should do about them.
pub mod close_codes {
    /// The server is stopping or restarting: reconnect after a short, jittered delay.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent a message over `--max-message-bytes`: fix the client; do not
    /// resend the same message.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client kept sending messages faster than `--ws-messages-per-second` after
    /// being told so: fix the client before reconnecting.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client read too slowly and fell `--client-queue` messages behind; the
    /// messages it missed are gone. Reconnect (and refresh the figures).
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The token the connection was opened with has expired: fetch a new token and
    /// reconnect with it.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing came from the client (not even a pong to the server's pings) within
    /// `--ws-idle-timeout`: reconnect when the network is back.
    pub const IDLE_TIMEOUT: u16 = 4002;
}

/// Broadcasts waiting in the ring are written in bursts of up to this many frames per
/// flush: one system call for many messages when a client is behind.
const MAX_BURST: usize = 64;
/// Small buffers: most connections are idle and messages are a few hundred bytes.
/// They grow for a large frame and shrink back afterwards.
const BUFFER_CAPACITY: usize = 256;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/analytics", get(upgrade))
}

async fn upgrade(
    State(st): State<AppState>,
    ClientIp(client): ClientIp,
    expiry: Option<axum::Extension<Expiry>>,
    headers: HeaderMap,
    upgrade: Result<IncomingUpgrade, axum::http::StatusCode>,
) -> Response {
    if !wants_websocket(&headers) {
        return ApiError::UpgradeRequired.into_response();
    }
    let Ok(upgrade) = upgrade else {
        return ApiError::BadRequest(
            "The WebSocket handshake is incomplete (Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required).".into(),
        )
        .into_response();
    };
    if st.shutdown.is_cancelled() {
        return ApiError::Unavailable("The server is stopping.").into_response();
    }
    let permit = match st.security.connections.acquire(client) {
        Ok(permit) => permit,
        Err(refusal) => {
            st.analytics.metrics.request_refused(refusal.label());
            return match refusal {
                ConnectionRefusal::InstanceFull => ApiError::Unavailable(
                    "This server has reached its connection limit; retry later.",
                ),
                ConnectionRefusal::IpFull => ApiError::TooManyRequests {
                    message:
                        "Too many connections from your address; close one before opening another."
                            .into(),
                    retry_after: 5,
                },
            }
            .into_response();
        }
    };
    let expiry = expiry.map(|e| e.0);
    let options = Options::default()
        .with_max_payload_read(st.max_message_bytes + 1)
        .with_max_read_buffer(st.max_message_bytes + 1)
        .with_read_buffer_capacity(BUFFER_CAPACITY)
        .with_write_buffer_capacity(BUFFER_CAPACITY)
        .with_no_delay()
        .with_utf8();
    let (response, connecting) = match upgrade.upgrade(options) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "refused a WebSocket handshake");
            return ApiError::BadRequest("The WebSocket handshake was refused.".into())
                .into_response();
        }
    };
    let sessions = st.sessions.clone();
    sessions.spawn(async move {
        match connecting.await {
            Ok(ws) => run(ws, st, permit, expiry).await,
            Err(e) => tracing::debug!(error = %e, "a WebSocket upgrade did not complete"),
        }
    });
    response.map(axum::body::Body::new)
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

async fn run(
    mut ws: HttpWebSocket,
    st: AppState,
    permit: ConnectionPermit,
    expiry: Option<Expiry>,
) {
    let metrics = &st.analytics.metrics;
    metrics.connections_opened.inc();
    let mut member = st.analytics.hub.join();
    let (_, initial) = st.analytics.current_stats().await;
    let guard = SessionGuard::new(st.security.session, expiry);
    let reason = session(&mut ws, &mut member, &st, initial, guard).await;
    drop(member);
    drop(permit);
    metrics.connection_closed(reason);
    tracing::debug!(?reason, "WebSocket session ended");
}

/// What woke the session up.
enum Step {
    Stop,
    Hub(Delivery),
    Client(Result<Frame, WebSocketError>),
    Guard(Alarm),
}

async fn session(
    ws: &mut HttpWebSocket,
    member: &mut Member,
    st: &AppState,
    initial: bytes::Bytes,
    mut guard: SessionGuard,
) -> CloseReason {
    let metrics = &st.analytics.metrics;
    if let Err(reason) = write(ws, st.write_timeout, [initial]).await {
        return reason;
    }
    metrics.messages_sent.inc();
    // Made once: a fresh `cancelled()` every turn would add and remove a waiter in
    // the token's shared list for every message of every client.
    let stopping = st.shutdown.cancelled();
    tokio::pin!(stopping);
    loop {
        let step = tokio::select! {
            () = &mut stopping => Step::Stop,
            d = member.next() => Step::Hub(d),
            f = ws.next_frame() => Step::Client(f),
            a = guard.alarm() => Step::Guard(a),
        };
        match step {
            Step::Stop | Step::Hub(Delivery::Closed) => {
                close(ws, close_codes::GOING_AWAY, "server shutting down").await;
                return CloseReason::Shutdown;
            }
            Step::Hub(Delivery::Overflowed { missed }) => {
                return slow_consumer(ws, st, missed).await;
            }
            Step::Hub(Delivery::Message(first)) => {
                // Take what else is already waiting and write it with one flush.
                let mut burst = vec![first];
                let mut overflow = None;
                while burst.len() < MAX_BURST {
                    match member.try_next() {
                        Some(Delivery::Message(m)) => burst.push(m),
                        Some(Delivery::Overflowed { missed }) => {
                            overflow = Some(missed);
                            break;
                        }
                        Some(Delivery::Closed) | None => break,
                    }
                }
                let n = burst.len() as u64;
                if let Err(reason) = write(ws, st.write_timeout, burst).await {
                    return reason;
                }
                metrics.messages_sent.inc_by(n);
                if let Some(missed) = overflow {
                    return slow_consumer(ws, st, missed).await;
                }
            }
            Step::Client(Ok(frame)) => {
                if frame.opcode() == OpCode::Close {
                    return CloseReason::Client;
                }
                let reply = match guard.admit(frame.opcode() == OpCode::Pong) {
                    Admission::Accept => answer(frame, st).await,
                    Admission::Refuse => {
                        metrics.websocket_messages_rate_limited.inc();
                        Some(protocol::error(
                            "you are sending messages too fast; this one was ignored.",
                        ))
                    }
                    Admission::Abuse => {
                        metrics.websocket_messages_rate_limited.inc();
                        close(
                            ws,
                            close_codes::POLICY_VIOLATION,
                            "message rate limit exceeded",
                        )
                        .await;
                        return CloseReason::RateLimited;
                    }
                };
                if let Some(reply) = reply
                    && let Err(reason) = write(ws, st.write_timeout, [reply]).await
                {
                    return reason;
                }
            }
            Step::Guard(Alarm::Ping) => {
                let ping = ws.send(Frame::ping(bytes::Bytes::new()));
                match tokio::time::timeout(st.write_timeout, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return CloseReason::Client,
                    Err(_) => return CloseReason::SlowConsumer,
                }
            }
            Step::Guard(Alarm::Idle) => {
                close(ws, close_codes::IDLE_TIMEOUT, "idle: no answer to ping").await;
                return CloseReason::IdleTimeout;
            }
            Step::Guard(Alarm::TokenExpired) => {
                close(ws, close_codes::TOKEN_EXPIRED, "token expired").await;
                return CloseReason::TokenExpired;
            }
            Step::Client(Err(e)) => {
                // yawc has queued the fitting close frame (1009 for a frame over the
                // limit, 1002/1007 for protocol violations): make sure it leaves.
                // (`poll_ready` is what writes yawc's pending control frames.)
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
                    ws.flush().await
                })
                .await;
                return match e {
                    WebSocketError::ConnectionClosed | WebSocketError::IoError(_) => {
                        CloseReason::Client
                    }
                    WebSocketError::FrameTooLarge => CloseReason::MessageTooBig,
                    _ => CloseReason::ProtocolError,
                };
            }
        }
    }
}

/// The reply to one client frame, if it deserves one. Bad input gets an `error`
/// message and the session goes on.
async fn answer(frame: Frame, st: &AppState) -> Option<bytes::Bytes> {
    let metrics = &st.analytics.metrics;
    match frame.opcode() {
        OpCode::Text => match protocol::parse_client_message(frame.as_str()) {
            Ok(ClientMessage::RefreshStats) => Some(st.analytics.current_stats().await.1),
            Ok(ClientMessage::Ping { visitor_id }) => {
                if let Some(visitor) = visitor_id {
                    st.analytics.touch(visitor).await;
                }
                Some(protocol::pong(chrono::Utc::now().timestamp()))
            }
            Err(sentence) => {
                metrics.client_messages_invalid.inc();
                Some(protocol::error(&sentence))
            }
        },
        OpCode::Binary => {
            metrics.client_messages_invalid.inc();
            Some(protocol::error(
                "binary messages are not supported; send JSON text such as {\"type\":\"ping\"}.",
            ))
        }
        // Ping frames are answered with pong frames by yawc itself.
        _ => None,
    }
}

/// Writes frames and flushes once, within `timeout`: a write that blocks longer
/// means the client stopped reading and its socket buffers are full.
async fn write(
    ws: &mut HttpWebSocket,
    timeout: Duration,
    payloads: impl IntoIterator<Item = bytes::Bytes>,
) -> Result<(), CloseReason> {
    let result = tokio::time::timeout(timeout, async {
        for payload in payloads {
            ws.feed(Frame::text(payload)).await?;
        }
        ws.flush().await
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(CloseReason::Client),
        // The client stopped reading long ago; its buffers are full, so a close
        // frame could not be written either.
        Err(_) => Err(CloseReason::SlowConsumer),
    }
}

async fn slow_consumer(ws: &mut HttpWebSocket, st: &AppState, missed: u64) -> CloseReason {
    st.analytics.metrics.messages_dropped.inc_by(missed);
    tracing::info!(missed, "closing a slow WebSocket client");
    close(
        ws,
        close_codes::SLOW_CONSUMER,
        "slow consumer: too many messages waiting",
    )
    .await;
    CloseReason::SlowConsumer
}

async fn close(ws: &mut HttpWebSocket, code: u16, reason: &str) {
    let frame = Frame::close(CloseCode::from(code), reason);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        ws.send(frame).await?;
        ws.close().await
    })
    .await;
}
