//! The security layer: what it holds (built once from the flags) and the middleware
//! that runs before every route. SECURITY.md explains each control to operators.
//!
//! | route | origin check | token (when configured) |
//! |---|---|---|
//! | `GET /ws/analytics` | yes | yes |
//! | `POST /api/v1/analytics/event` | yes | no: sites send events anonymously |
//! | other `/api/v1/analytics/…` | no (no CORS: browsers cannot read them cross-site) | yes |
//! | `/healthz`, `/readyz`, the dashboard's files | no | no |
//! | `/metrics` | no | no; 404 here when `--metrics-listen` serves it elsewhere |
//!
//! The per-IP and per-connection limits are applied where their state lives: the
//! WebSocket upgrade and session (`ws`) and the ingestion handler (`api`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::Quota;

use super::auth::{AllowedOrigins, Authenticator};
use super::limits::{ConnectionLimiter, IngestLimiter, SessionPolicy};
use super::{ApiError, AppState};
use crate::config::{Config, Networks};

const WEBSOCKET_PATH: &str = "/ws/analytics";
/// The ingestion route: open to every page (rate-limited), origin-checked.
const INGESTION_PATH: &str = "/api/v1/analytics/event";
const READ_API_PREFIX: &str = "/api/v1/analytics/";

/// Everything the security controls need, shared by every request.
pub struct Security {
    /// `None`: the feed is open (no `--jwt-secret` nor `--jwt-public-key`).
    pub auth: Option<Authenticator>,
    pub origins: AllowedOrigins,
    pub trusted_proxies: Networks,
    pub connections: Arc<ConnectionLimiter>,
    pub ingest: IngestLimiter,
    pub session: SessionPolicy,
    /// `/metrics` is served on `--metrics-listen`, not on the main address.
    pub metrics_elsewhere: bool,
}

impl Security {
    /// Fails with a sentence for the operator when a flag cannot be used (a key
    /// file that cannot be read, an origin that is not one).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        if config.ws_idle_timeout < config.ws_ping_interval {
            return Err(
                "--ws-idle-timeout must be at least --ws-ping-interval (it is checked at each ping)"
                    .into(),
            );
        }
        Ok(Self {
            auth: Authenticator::from_config(config)?,
            origins: AllowedOrigins::new(&config.allowed_origins)?,
            trusted_proxies: config.trusted_proxies.clone(),
            connections: ConnectionLimiter::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.limits_exempt.clone(),
            ),
            ingest: IngestLimiter::new(
                config.ingest_events_per_second,
                config.ingest_burst,
                config.limits_exempt.clone(),
            ),
            session: SessionPolicy {
                messages: Quota::per_second(config.ws_messages_per_second)
                    .allow_burst(config.ws_message_burst),
                ping_interval: config.ws_ping_interval,
                idle_timeout: config.ws_idle_timeout,
            },
            metrics_elsewhere: config.metrics_listen.is_some(),
        })
    }
}

/// The origin check and the token check, before any handler (see the module doc).
/// A verified token's `Expiry` is left in the request's extensions for the
/// WebSocket session.
pub async fn guard(State(st): State<AppState>, mut request: Request, next: Next) -> Response {
    let security = &st.security;
    let metrics = &st.analytics.metrics;
    let path = request.uri().path();
    if path == "/metrics" && security.metrics_elsewhere {
        return ApiError::NotFound.into_response();
    }
    // A plain GET gets its 426 from the handler: it can read nothing either way.
    let websocket =
        path == WEBSOCKET_PATH && request.headers().contains_key(axum::http::header::UPGRADE);
    let ingestion = path == INGESTION_PATH;
    let read = !ingestion && path.starts_with(READ_API_PREFIX);
    // A preflight is CORS's business: the browser enforces its answer.
    let checks_origin = websocket || (ingestion && request.method() != Method::OPTIONS);
    if checks_origin && !security.origins.allows(request.headers()) {
        metrics.request_refused("origin_forbidden");
        tracing::debug!(path, "refused a request from a foreign origin");
        return ApiError::Forbidden("Pages from this origin may not use this server.")
            .into_response();
    }
    if (websocket || read)
        && let Some(auth) = &security.auth
    {
        match auth.authenticate(request.uri(), request.headers()) {
            Ok(expiry) => {
                request.extensions_mut().insert(expiry);
            }
            Err(e) => {
                metrics.request_refused(e.label());
                tracing::debug!(
                    path,
                    reason = e.label(),
                    "refused a request without a valid token"
                );
                return ApiError::Unauthorized(e.sentence()).into_response();
            }
        }
    }
    next.run(request).await
}
