//! Serving HTTP/1.1: our own accept loop around hyper, so that every phase of a
//! connection has a deadline and every connection counts against a limit
//! (SECURITY.md, "Slow and hoarding clients").
//!
//! - **Headers**: a request's headers must all arrive within `--http-header-timeout`
//!   of the connection opening (the first request) or of the request's first byte
//!   (the later ones); otherwise the connection is cut.
//! - **Body**: within `--http-body-timeout` of the headers; otherwise the handler's
//!   read fails, and the answer is a 408 with a sentence and `Connection: close`.
//! - **Idle**: a keep-alive connection with no request for `--http-idle-timeout` is
//!   closed; so is one whose client stopped reading an answer for that long.
//! - **Per IP**: `--max-http-connections-per-ip` connections per client address (the
//!   TCP peer: nothing is read yet), except `--limits-exempt` and `--trusted-proxies`
//!   (a proxy carries many clients); more get a 429 and are closed at once. A
//!   connection that becomes a WebSocket session leaves this count for the
//!   WebSocket limits (`--max-connections-per-ip`), which already count it.
//! - **Open files**: `limits::Sockets` keeps every client socket (WebSocket sessions
//!   included) under the open-file limit, the last places for `--limits-exempt`;
//!   near the ceiling, connections with nothing in flight are closed; when `accept`
//!   fails for want of files, the loop backs off instead of spinning.
//! - **Hyper's own refusals** (400 for malformed HTTP, 414, 431), which hyper writes
//!   with an empty body before any handler runs, get the JSON sentence (`ConnIo`).
//!
//! Hyper's `header_read_timeout` is not used: its clock also runs while a
//! keep-alive connection waits for its next request, so it would cut idle
//! connections at the header timeout.
//!
//! The stop: no new connections; each connection is asked to finish (hyper's
//! graceful shutdown: the request in flight is answered, an idle one closes); those
//! still open at the drain deadline are cut.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use super::limits::{ConnectionLimiter, ConnectionPermit, SocketPermit, Sockets};
use super::{ApiError, error_json, status_sentence};
use crate::config::{Config, Networks};
use crate::metrics::Metrics;

/// The first pause after `accept` failed for want of files (or memory); it doubles
/// up to `ACCEPT_BACKOFF_MAX` while the failures last.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The serving settings and the limits shared by every listener of the process.
pub struct Serving {
    timeouts: Timeouts,
    sockets: Arc<Sockets>,
    /// HTTP connections per client IP (a per-IP count only: `max` is 0).
    per_ip: Arc<ConnectionLimiter>,
    /// `--limits-exempt`: may use the last places under the open-file limit.
    exempt: Networks,
    metrics: Arc<Metrics>,
    /// Hyper's HTTP/1.1 settings, the same for every connection.
    http: http1::Builder,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    body: Duration,
    idle: Duration,
}

impl Serving {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut not_limited = config.limits_exempt.clone();
        not_limited
            .0
            .extend(config.trusted_proxies.0.iter().copied());
        let mut http = http1::Builder::new();
        // One buffer per write, so that `ConnIo` sees hyper's own answers whole.
        http.writev(false).header_read_timeout(None);
        Arc::new(Self {
            timeouts: Timeouts {
                header: config.http_header_timeout,
                body: config.http_body_timeout,
                idle: config.http_idle_timeout,
            },
            sockets: Sockets::for_this_process(),
            per_ip: ConnectionLimiter::new(0, config.max_http_connections_per_ip, not_limited),
            exempt: config.limits_exempt.clone(),
            metrics,
            http,
        })
    }

    /// Serves `listener` until `stop` completes, then stops as the module doc says.
    /// `false` when connections were still open at the `drain` deadline and were cut.
    /// Dropping the future cuts every connection it serves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut app: IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
        stop: impl Future<Output = ()>,
        drain: Duration,
    ) -> bool {
        let connections = TaskTracker::new();
        let stopping = CancellationToken::new();
        let cut = CancellationToken::new();
        let _cut_when_dropped = cut.clone().drop_guard();
        let mut stop = std::pin::pin!(stop);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Some(permits) = self.admit(&stream, peer) else {
                        continue;
                    };
                    let service = app.call(Peer(peer));
                    connections.spawn(Arc::clone(&self).connection(
                        stream,
                        service,
                        permits,
                        stopping.clone(),
                        cut.clone(),
                    ));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        pause = ?backoff,
                        open_sockets = self.sockets.open(),
                        "could not accept a connection; pausing, and closing idle ones"
                    );
                    self.sockets.shed();
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        drop(listener);
        stopping.cancel();
        connections.close();
        if tokio::time::timeout(drain, connections.wait())
            .await
            .is_ok()
        {
            return true;
        }
        cut.cancel();
        connections.wait().await;
        false
    }

    /// The places a new connection takes, or its refusal written and `None`.
    fn admit(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Option<(SocketPermit, ConnectionPermit)> {
        let ip = peer.ip().to_canonical();
        let Some(socket) = self.sockets.acquire(self.exempt.contains(&ip)) else {
            self.metrics.request_refused("http_connections_instance");
            refuse(
                stream,
                &ApiError::Unavailable(
                    "This server has reached its connection limit; retry later.",
                ),
            );
            return None;
        };
        match self.per_ip.acquire(ip) {
            Ok(permit) => Some((socket, permit)),
            Err(_) => {
                self.metrics.request_refused("http_connections_per_ip");
                refuse(
                    stream,
                    &ApiError::TooManyRequests {
                        message: "Too many connections from your address; close one before opening another.".into(),
                        retry_after: 5,
                    },
                );
                None
            }
        }
    }

    /// One connection, from its accept to its close or its upgrade to WebSocket.
    async fn connection<F, S>(
        self: Arc<Self>,
        stream: TcpStream,
        service: F,
        (socket, per_ip): (SocketPermit, ConnectionPermit),
        stopping: CancellationToken,
        cut: CancellationToken,
    ) where
        F: Future<Output = Result<S, Infallible>>,
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let service = service.await.unwrap_or_else(|e| match e {});
        let state = Arc::new(ConnState::new());
        let io = TokioIo::new(ConnIo {
            stream,
            state: Arc::clone(&state),
            _socket: socket,
            rewritten: None,
        });
        let service = ConnService {
            inner: service,
            state: Arc::clone(&state),
            body_timeout: self.timeouts.body,
            metrics: Arc::clone(&self.metrics),
        };
        let conn = self.http.serve_connection(io, service).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut shutting_down = false;
        // Asked to close because it was idle: by then it should be gone.
        let mut closing: Option<Instant> = None;
        loop {
            let due = |state: &ConnState| {
                state
                    .next_deadline(&self.timeouts)
                    .filter(|&(_, why)| !(closing.is_some() && why == Expiry::Idle))
            };
            let wake = match (due(&state).map(|(at, _)| at), closing) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                () = cut.cancelled() => break,
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "an HTTP connection ended with an error");
                    }
                    break;
                }
                () = state.changed.notified() => {}
                () = stopping.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = self.sockets.shed_requested(), if state.is_idle() => {
                    if state.is_idle() {
                        break;
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {
                    let now = Instant::now();
                    if closing.is_some_and(|at| at <= now) {
                        break;
                    }
                    match due(&state) {
                        Some((at, Expiry::Header)) if at <= now => {
                            self.metrics.request_refused("http_header_timeout");
                            break;
                        }
                        Some((at, Expiry::Stalled)) if at <= now => {
                            self.metrics.request_refused("http_write_timeout");
                            break;
                        }
                        Some((at, Expiry::Idle)) if at <= now => {
                            // Gracefully: a request that came in the same instant is
                            // still answered.
                            shutting_down = true;
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now + self.timeouts.header);
                        }
                        _ => {}
                    }
                }
            }
        }
        // Closed, or a WebSocket session now: no longer an HTTP connection of this
        // IP. (The socket's own place went, or goes, with the socket.)
        drop(per_ip);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection refused at its accept and closes it, without waiting: the
/// answer goes into the socket's buffer or not at all. Reading the request first
/// would let a flood hold what the refusal is meant to free.
fn refuse(stream: &TcpStream, error: &ApiError) {
    let answer = raw_answer(error.status(), &error.to_string(), "retry-after: 5\r\n");
    let _ = stream.try_write(&answer);
}

/// An HTTP/1.1 answer with the JSON sentence, written by hand (no request to
/// answer through hyper). `extra`: header lines, each ending with CRLF.
fn raw_answer(status: StatusCode, sentence: &str, extra: &str) -> Vec<u8> {
    let body = error_json(sentence);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

/// What the accept loop knows of a connection: the `ConnectInfo<SocketAddr>` of its
/// requests, as `into_make_service_with_connect_info::<SocketAddr>` gives them.
pub struct Peer(SocketAddr);

impl Connected<Peer> for SocketAddr {
    fn connect_info(peer: Peer) -> Self {
        peer.0
    }
}

/// Which deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Waiting for the rest of a request's headers.
    Header,
    /// A keep-alive connection waiting for its next request.
    Idle,
    /// The client stopped reading what the server writes.
    Stalled,
}

/// What the deadlines of one connection are computed from, told by its socket
/// (`ConnIo`) and its requests (`ConnService`).
struct ConnState {
    phase: Mutex<Phase>,
    /// The deadline may have come closer: the watcher recomputes it.
    changed: Notify,
    /// A 101 answer is leaving: the socket is about to be a WebSocket session's,
    /// and none of this applies any more.
    upgraded: AtomicBool,
}

struct Phase {
    /// Requests whose answer has not all been handed to hyper.
    in_flight: usize,
    /// At least one request was read.
    served: bool,
    /// The connection opened, or its last request in flight finished.
    idle_since: Instant,
    /// The first byte read since `idle_since`, once a request has been served.
    head_since: Option<Instant>,
    write_blocked_since: Option<Instant>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                head_since: None,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
            upgraded: AtomicBool::new(false),
        }
    }

    fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    fn read(&self) {
        let mut p = self.phase.lock();
        if p.in_flight == 0 && p.served && p.head_since.is_none() {
            p.head_since = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    fn write_blocked(&self) {
        let mut p = self.phase.lock();
        if p.write_blocked_since.is_none() {
            p.write_blocked_since = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.phase.lock().write_blocked_since = None;
    }

    fn request_began(&self) {
        let mut p = self.phase.lock();
        p.in_flight += 1;
        p.served = true;
        p.head_since = None;
    }

    fn request_ended(&self) {
        let mut p = self.phase.lock();
        p.in_flight -= 1;
        if p.in_flight == 0 {
            p.idle_since = Instant::now();
            p.head_since = None;
            drop(p);
            self.changed.notify_one();
        }
    }

    /// No request in flight: what hyper writes now is its own.
    fn between_requests(&self) -> bool {
        self.phase.lock().in_flight == 0
    }

    /// Nothing in flight, nothing waiting to be written, no upgrade under way:
    /// closing loses nothing.
    fn is_idle(&self) -> bool {
        let p = self.phase.lock();
        p.in_flight == 0 && p.write_blocked_since.is_none() && !self.upgraded()
    }

    /// While an answer is stuck in the socket, only the stall counts: the
    /// connection is not idle, and no request can be read meanwhile.
    fn next_deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        if self.upgraded() {
            // hyper hands the socket over at its next poll.
            return None;
        }
        let p = self.phase.lock();
        if let Some(at) = p.write_blocked_since {
            Some((at + t.idle, Expiry::Stalled))
        } else if p.in_flight > 0 {
            None
        } else if !p.served {
            Some((p.idle_since + t.header, Expiry::Header))
        } else if let Some(at) = p.head_since {
            Some((at + t.header, Expiry::Header))
        } else {
            Some((p.idle_since + t.idle, Expiry::Idle))
        }
    }
}

/// One request in flight, until hyper drops its answer's body (all written).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn begin(state: &Arc<ConnState>) -> Self {
        state.request_began();
        Self(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The app, as hyper calls it: each request's body under its deadline, each
/// request counted in flight until its answer is written.
struct ConnService<S> {
    inner: S,
    state: Arc<ConnState>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(&self.state);
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.body_timeout;
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline,
                sleep: None,
                timed_out: Arc::clone(&timed_out),
            })
        });
        let answer = self.inner.clone().oneshot(request);
        let metrics = Arc::clone(&self.metrics);
        let limit = self.body_timeout;
        Box::pin(async move {
            let mut response = answer.await.unwrap_or_else(|e| match e {});
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.upgraded.store(true, Ordering::Release);
            }
            if timed_out.load(Ordering::Acquire) {
                metrics.request_refused("http_body_timeout");
                response = body_timed_out(&response, limit);
            }
            Ok(response.map(|body| Answer {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// The 408 that replaces whatever the handler answered to a body that did not
/// arrive in time (its read failed), keeping the CORS headers it was given.
fn body_timed_out(answered: &Response<Body>, limit: Duration) -> Response<Body> {
    let mut response =
        ApiError::RequestTimeout(humantime::format_duration(limit).to_string()).into_response();
    for (name, value) in answered.headers() {
        if name.as_str().starts_with("access-control-") || name == header::VARY {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// An answer's body, holding its request in flight until hyper has taken it all.
struct Answer {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes with data still missing.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made at the first wait: most bodies arrive with their headers.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err("the request body did not arrive in time".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket: tells `ConnState` what moves, holds the connection's
/// place under the open-file limit for as long as the socket lives (through a
/// WebSocket upgrade), and gives hyper's own refusals their JSON sentence.
struct ConnIo {
    stream: TcpStream,
    state: Arc<ConnState>,
    _socket: SocketPermit,
    /// Our version of hyper's refusal, and how much of it is written.
    rewritten: Option<(Vec<u8>, usize)>,
}

impl ConnIo {
    fn poll_write_through(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Pending => {
                self.state.write_blocked();
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                self.state.wrote();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.rewritten.take() {
            match self.poll_write_through(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) if written + n < bytes.len() => {
                    self.rewritten = Some((bytes, written + n));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.rewritten = Some((bytes, written));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before && !this.state.upgraded() {
            this.state.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.upgraded() {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        ready!(this.poll_rewritten(cx))?;
        if this.state.between_requests()
            && let Some((at, len)) = hyper_refusal(buf)
        {
            if at > 0 {
                // What comes before it first (the end of an earlier answer).
                return this.poll_write_through(cx, &buf[..at]);
            }
            this.rewritten = Some((with_sentence(&buf[..len]), 0));
            // Hyper's bytes are taken; ours leave now, or at the flush.
            if let Poll::Ready(Err(e)) = this.poll_rewritten(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(len));
        }
        this.poll_write_through(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.upgraded() {
            return Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        }
        let buf = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        self.state.upgraded() && self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Where hyper's own answer to a request it could not read starts in `buf`, and its
/// length: `HTTP/1.1 4xx …` then `connection: close` and `content-length: 0`, the
/// only answer with an error status and no body (`json_error_bodies` gives each
/// of the app's a body). Hyper writes it whole, in one buffer, and closes.
fn hyper_refusal(buf: &[u8]) -> Option<(usize, usize)> {
    const AFTER_STATUS_LINE: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";
    let mut from = 0;
    while let Some(i) = find(&buf[from..], b"HTTP/1.1 ") {
        let at = from + i;
        let head = &buf[at..];
        let is_error_status = head.len() > 13
            && matches!(head[9], b'4' | b'5')
            && head[10].is_ascii_digit()
            && head[11].is_ascii_digit()
            && head[12] == b' ';
        if is_error_status
            && let Some(line) = find(head, b"\r\n")
            && head[line..].starts_with(AFTER_STATUS_LINE)
            && let Some(end) = find(head, b"\r\n\r\n")
        {
            return Some((at, end + 4));
        }
        from = at + 1;
    }
    None
}

/// Hyper's refusal `head`, with the JSON sentence of its status.
fn with_sentence(head: &[u8]) -> Vec<u8> {
    let status = head
        .get(9..12)
        .and_then(|code| StatusCode::from_bytes(code).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let date = find(head, b"\r\ndate: ").map(|at| {
        let line = &head[at + 2..];
        let end = find(line, b"\r\n").unwrap_or(line.len());
        format!("{}\r\n", String::from_utf8_lossy(&line[..end]))
    });
    raw_answer(
        status,
        &status_sentence(status),
        date.as_deref().unwrap_or(""),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSAL: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 11:00:01 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hypers_refusal_is_found_after_an_earlier_answer_and_given_a_sentence() {
        assert_eq!(hyper_refusal(REFUSAL), Some((0, REFUSAL.len())));
        let earlier = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let both = [&earlier[..], REFUSAL].concat();
        assert_eq!(hyper_refusal(&both), Some((earlier.len(), REFUSAL.len())));
        let (head, body) = split(&with_sentence(REFUSAL));
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains("\r\ndate: Tue, 01 Dec 2026 11:00:01 GMT"),
            "{head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.to_string().len());
        assert_eq!(body["success"], false);
        assert!(body["error"].as_str().unwrap().ends_with('.'));
    }

    #[test]
    fn the_apps_own_answers_are_left_alone() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 60\r\n\r\n",
            // Not whole: never taken apart.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 4",
            b"",
        ] {
            assert_eq!(hyper_refusal(answer), None, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn a_connection_is_under_one_deadline_per_phase() {
        let t = Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let s = ConnState::new();
        let opened = s.phase.lock().idle_since;
        // The first request: its headers within the header timeout of the accept,
        // whatever arrives meanwhile.
        assert_eq!(
            s.next_deadline(&t),
            Some((opened + t.header, Expiry::Header))
        );
        s.read();
        assert_eq!(
            s.next_deadline(&t),
            Some((opened + t.header, Expiry::Header))
        );
        s.request_began();
        assert_eq!(s.next_deadline(&t), None);
        s.request_ended();
        let idle = s.phase.lock().idle_since;
        assert_eq!(s.next_deadline(&t), Some((idle + t.idle, Expiry::Idle)));
        // The next request's first byte starts its header clock.
        s.read();
        let head = s.phase.lock().head_since.unwrap();
        assert_eq!(s.next_deadline(&t), Some((head + t.header, Expiry::Header)));
        s.request_began();
        s.write_blocked();
        let blocked = s.phase.lock().write_blocked_since.unwrap();
        assert_eq!(
            s.next_deadline(&t),
            Some((blocked + t.idle, Expiry::Stalled))
        );
        assert!(!s.is_idle());
        s.wrote();
        s.request_ended();
        assert!(s.is_idle());
    }
}
