//! One connection's watcher: hyper serves it while this loop enforces its phase
//! deadlines, the stop, and the shedding of idle connections near the open-file
//! ceiling.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::Serving;
use super::deadlines::{ConnState, Expiry};
use super::service::ConnService;
use super::socket::ConnIo;
use crate::http::limits::{ConnectionPermit, SocketPermit};

impl Serving {
    /// One connection, from its accept to its close or its upgrade to WebSocket.
    pub(super) async fn connection<F, S>(
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
            state: Some(Arc::clone(&state)),
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
