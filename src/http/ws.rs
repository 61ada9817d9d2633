//! The WebSocket endpoint: the upgrade, and one session task per client.
//!
//! A session joins the hub before it reads the figures for `initial_stats`, so no
//! event falls between the two. It then waits on four things at once: the hub (to
//! write broadcasts), the client (to answer its messages), its guard (pings, the
//! idle timeout, the token's expiry; see `limits`) and the stop signal. All
//! writes of a session happen in its own task, so a client that does not read only
//! ever blocks itself. The session decides how it ends (`Ending`: a `Disconnect`, which
//! fixes the close code and the metrics label, and the frame's per-session details);
//! `ws_close` then writes that frame so that it reaches the client even while the
//! client is still sending.
//!
//! The protocol extensions are per session (see `handshake` and `session`): the subprotocol picks
//! JSON or Protocol Buffers, `?events=` and `subscribe` set a filter, `?resume=` and
//! `resume` replay what the client missed, and yawc negotiates permessage-deflate when
//! the client offers it. A client that asks for none of it gets CONTRACT.md.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use yawc::{Frame, HttpWebSocket, IncomingUpgrade, OpCode, Options, WebSocketError};

use super::auth::Expiry;
use super::client_ip::ClientIp;
use super::handshake::{self, Connect, Format};
use super::limits::{Admission, Alarm, ConnectionPermit, ConnectionRefusal, SessionGuard};
use super::session::{Outgoing, Preferences};
use super::ws_close::{self, Ending};
use super::{ApiError, AppState};
use crate::disconnect::Disconnect;
use crate::envelope::Envelope;
use crate::hub::{Delivery, Member};
use crate::protocol::{self, ClientMessage, Resume, ServerMessage};
use crate::replay::{Cursor, Gap};

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
    uri: Uri,
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
    let connect = match Connect::from_uri(&uri) {
        Ok(connect) => connect,
        Err(sentence) => return ApiError::BadRequest(sentence).into_response(),
    };
    let (format, subprotocol) = handshake::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
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
    // Deflate only when the client offers it, above a size threshold (see `handshake`).
    let options = handshake::with_compression(Options::default())
        .with_max_payload_read(st.max_message_bytes + 1)
        .with_max_read_buffer(st.max_message_bytes + 1)
        .with_read_buffer_capacity(BUFFER_CAPACITY)
        .with_write_buffer_capacity(BUFFER_CAPACITY)
        .with_no_delay()
        .with_utf8();
    let (mut response, connecting) = match upgrade.upgrade(options) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "refused a WebSocket handshake");
            return ApiError::BadRequest("The WebSocket handshake was refused.".into())
                .into_response();
        }
    };
    if let Some(subprotocol) = subprotocol {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    let prefs = Preferences {
        format,
        filter: connect.filter,
        numbered: false,
        marks: Default::default(),
    };
    let resume = connect.resume;
    let sessions = st.sessions.clone();
    sessions.spawn(run(connecting, st, permit, expiry, prefs, resume));
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

/// One client, from the end of the handshake to the close. The socket is a local of
/// this one future (not handed from an outer future to an inner one), so that it is
/// stored once in the task: the task is most of what an idle client costs.
async fn run(
    connecting: yawc::UpgradeFut,
    st: AppState,
    permit: ConnectionPermit,
    expiry: Option<Expiry>,
    prefs: Preferences,
    resume: Option<Resume>,
) {
    let mut ws = match connecting.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "a WebSocket upgrade did not complete");
            return;
        }
    };
    let metrics = &st.analytics.metrics;
    metrics.connections_opened.inc();
    let mut member = st.analytics.hub.join();
    let (_, initial) = Box::pin(st.analytics.current_stats()).await;
    let guard = SessionGuard::new(st.security.session, expiry);
    let ending = session(&mut ws, &mut member, &st, initial, guard, prefs, resume).await;
    // Out of the hub and counted before the close handshake: the session is over,
    // what follows only lets the close frame reach the client.
    drop(member);
    metrics.connection_closed(ending.how);
    tracing::debug!(how = ?ending.how, "WebSocket session ended");
    if let Some(frame) = ending.into_frame() {
        // Boxed: the drain's state is then paid for by closing sessions only, not
        // reserved in every idle client's task.
        Box::pin(ws_close::finish(ws, frame)).await;
    }
    // The connection counts against the limits until its socket is gone.
    drop(permit);
}

/// What woke the session up.
enum Step {
    Stop,
    Hub(Delivery<Arc<Envelope>>),
    Client(Result<Frame, WebSocketError>),
    Guard(Alarm),
}

async fn session(
    ws: &mut HttpWebSocket,
    member: &mut Member,
    st: &AppState,
    initial: Arc<Envelope>,
    mut guard: SessionGuard,
    mut prefs: Preferences,
    resume: Option<Resume>,
) -> Ending {
    let metrics = &st.analytics.metrics;
    let mut first = vec![prefs.send(&initial)];
    if let Some(request) = resume {
        // Right after `initial_stats`, before any live event: the missed ones come
        // first, in order.
        let joined = member.joined();
        first.extend(prefs.resume(&request, joined, missed_since(st, joined)));
    }
    let n = first.len() as u64;
    if let Err(reason) = write(ws, st.write_timeout, first).await {
        return reason;
    }
    metrics.messages_sent.inc_by(n);
    // Made once: a fresh `cancelled()` every turn would add and remove a waiter in
    // the token's shared list for every message of every client.
    let stopping = st.shutdown.cancelled();
    tokio::pin!(stopping);
    loop {
        let step = tokio::select! {
            () = &mut stopping => Step::Stop,
            d = member.next_envelope() => Step::Hub(d),
            f = ws.next_frame() => Step::Client(f),
            a = guard.alarm() => Step::Guard(a),
        };
        match step {
            Step::Stop | Step::Hub(Delivery::Closed) => {
                return Ending::new(Disconnect::GoingAway);
            }
            Step::Hub(Delivery::Overflowed { missed }) => {
                return slow_consumer(st, missed);
            }
            Step::Hub(Delivery::Message(first)) => {
                // Take what else is already waiting and write it with one flush. The
                // filter and the format pick among encodings made once per message.
                let mut burst: Vec<Outgoing> = prefs.broadcast(&first).into_iter().collect();
                let mut taken = 1;
                let mut overflow = None;
                while taken < MAX_BURST {
                    taken += 1;
                    match member.try_next_envelope() {
                        Some(Delivery::Message(m)) => burst.extend(prefs.broadcast(&m)),
                        Some(Delivery::Overflowed { missed }) => {
                            overflow = Some(missed);
                            break;
                        }
                        Some(Delivery::Closed) | None => break,
                    }
                }
                let n = burst.len() as u64;
                if n > 0 {
                    if let Err(reason) = write(ws, st.write_timeout, burst).await {
                        return reason;
                    }
                    metrics.messages_sent.inc_by(n);
                }
                if let Some(missed) = overflow {
                    return slow_consumer(st, missed);
                }
            }
            Step::Client(Ok(frame)) => {
                if frame.opcode() == OpCode::Close {
                    return Ending::answer(frame.payload());
                }
                let reply = match guard.admit(frame.opcode() == OpCode::Pong) {
                    // Boxed: a rare path whose state would otherwise be reserved
                    // in every idle client's task.
                    Admission::Accept => Box::pin(answer(frame, st, &mut prefs, member)).await,
                    Admission::Refuse => {
                        metrics.websocket_messages_rate_limited.inc();
                        vec![prefs.reply(ServerMessage::error(
                            "you are sending messages too fast; this one was ignored.",
                        ))]
                    }
                    Admission::Abuse => {
                        metrics.websocket_messages_rate_limited.inc();
                        return Ending::new(Disconnect::RateLimited);
                    }
                };
                if !reply.is_empty()
                    && let Err(reason) = write(ws, st.write_timeout, reply).await
                {
                    return reason;
                }
            }
            Step::Guard(Alarm::Ping) => {
                let ping = ws.send(Frame::ping(bytes::Bytes::new()));
                match tokio::time::timeout(st.write_timeout, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ending::new(Disconnect::ClientClosed),
                    Err(_) => return Ending::new(Disconnect::StoppedReading),
                }
            }
            Step::Guard(Alarm::Idle) => {
                return Ending::new(Disconnect::IdleTimeout);
            }
            Step::Guard(Alarm::TokenExpired) => {
                return Ending::new(Disconnect::TokenExpired);
            }
            // 1009 for a message over the limit, 1007 for text that is not UTF-8, 1002
            // for other protocol errors; nothing when the client is gone.
            Step::Client(Err(e)) => return Ending::read_failed(&e),
        }
    }
}

/// The replies to one client frame, if it deserves any. Bad input gets an `error`
/// message and the session goes on. A `resume` is answered with the events missed.
async fn answer(
    frame: Frame,
    st: &AppState,
    prefs: &mut Preferences,
    member: &Member,
) -> Vec<Outgoing> {
    let metrics = &st.analytics.metrics;
    let request = match frame.opcode() {
        OpCode::Text => protocol::parse_text(frame.as_str()),
        // Protocol Buffers clients send `ClientMessage`s; JSON clients get a sentence.
        OpCode::Binary if prefs.format == Format::Proto => protocol::parse_binary(frame.payload()),
        OpCode::Binary => Err(handshake::BINARY_WITHOUT_PROTO.to_owned()),
        // Ping frames are answered with pong frames by yawc itself.
        _ => return Vec::new(),
    };
    match request {
        Ok(ClientMessage::RefreshStats) => {
            vec![prefs.send(&st.analytics.current_stats().await.1)]
        }
        Ok(ClientMessage::Ping { visitor_id }) => {
            // Limited per connection (see `PresenceMarks`); the pong is always sent.
            if let Some(visitor) = visitor_id
                && prefs.marks.admit(visitor)
            {
                st.analytics.touch(visitor).await;
            }
            vec![prefs.reply(ServerMessage::Pong {
                time: chrono::Utc::now().timestamp(),
            })]
        }
        Ok(ClientMessage::Subscribe(names)) => vec![prefs.change_subscription(true, names)],
        Ok(ClientMessage::Unsubscribe(names)) => vec![prefs.change_subscription(false, names)],
        Ok(ClientMessage::Resume(request)) => {
            let joined = member.joined();
            prefs.resume(&request, joined, missed_since(st, joined))
        }
        Err(sentence) => {
            metrics.client_messages_invalid.inc();
            vec![prefs.reply(ServerMessage::error(sentence))]
        }
    }
}

/// The events a member that joined at `joined` missed after `seq` of `epoch`: later
/// ones reach it through the ring, so nothing arrives twice.
fn missed_since<'a>(
    st: &'a AppState,
    joined: &'a Cursor,
) -> impl FnOnce(&str, u64) -> Result<Vec<Arc<Envelope>>, Gap> + 'a {
    move |epoch, seq| st.analytics.hub.missed(epoch, seq, joined.seq)
}

/// Writes frames and flushes once, within `timeout`: a write that blocks longer
/// means the client stopped reading and its socket buffers are full.
async fn write(
    ws: &mut HttpWebSocket,
    timeout: Duration,
    frames: impl IntoIterator<Item = Outgoing>,
) -> Result<(), Ending> {
    let result = tokio::time::timeout(timeout, async {
        for frame in frames {
            ws.feed(frame.into_frame()).await?;
        }
        ws.flush().await
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::new(Disconnect::ClientClosed)),
        // The client stopped reading long ago; its buffers are full, so a close
        // frame could not be written either.
        Err(_) => Err(Ending::new(Disconnect::StoppedReading)),
    }
}

fn slow_consumer(st: &AppState, missed: u64) -> Ending {
    st.analytics.metrics.messages_dropped.inc_by(missed);
    tracing::info!(missed, "closing a slow WebSocket client");
    Ending::new(Disconnect::SlowConsumer)
}
