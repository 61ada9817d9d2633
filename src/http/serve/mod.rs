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

mod admit;
mod connection;
mod deadlines;
mod rewrite;
mod service;
mod socket;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use super::limits::{ConnectionLimiter, Sockets};
use crate::config::{Config, Networks};
use crate::metrics::Metrics;

/// The first pause after `accept` failed for want of files (or memory); it doubles
/// up to `ACCEPT_BACKOFF_MAX` while the failures last.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What the accept loop knows of a connection: the `ConnectInfo<SocketAddr>` of its
/// requests, as `into_make_service_with_connect_info::<SocketAddr>` gives them.
pub struct Peer(SocketAddr);

impl Connected<Peer> for SocketAddr {
    fn connect_info(peer: Peer) -> Self {
        peer.0
    }
}
