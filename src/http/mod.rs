//! The HTTP surface: the routes of CONTRACT.md, the WebSocket upgrade, and the one
//! error type every route answers with.
//!
//! **Architecture Invariant:** handlers parse and validate, then call `Analytics`;
//! they never touch SQL, Redis or the hub directly (the WebSocket session reads the
//! hub, which is its job).

mod api;
mod auth;
mod client_ip;
mod dashboard;
mod limits;
mod ops;
mod security;
mod ws;
mod ws_close;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::Analytics;

pub use security::Security;
pub use ws::close_codes;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub analytics: Arc<Analytics>,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    /// See `Config::write_timeout`.
    pub write_timeout: std::time::Duration,
    /// Cancelled when the server starts stopping: WebSocket sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Every WebSocket session, so that the stop can wait for their close frames.
    pub sessions: TaskTracker,
    /// Authentication, the origin check and the limits (SECURITY.md).
    pub security: Arc<Security>,
}

pub fn router(state: AppState) -> Router {
    let cors = cors(&state.security.origins);
    Router::new()
        .merge(api::router())
        .merge(ops::router())
        .merge(ws::router())
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        // Outermost: a preflight is answered before the security guard (which would
        // ask it for a token), and refusals carry the CORS headers too, so that a
        // cross-origin page can read their sentence.
        .layer(cors)
        .with_state(state)
}

/// `/metrics`, `/healthz` and `/readyz` alone, for `--metrics-listen`: an address
/// meant to stay private, so no security guard.
pub fn ops_router(state: AppState) -> Router {
    ops::router()
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// CORS on every route, as maicivy's backend does (CONTRACT.md): its dashboard
/// fetches the read routes from another origin with `credentials: 'include'`, so
/// the allowed origin is reflected (never `*`) with credentials allowed. Cookies
/// carry no authority here (a token does), so reflecting opens nothing.
/// `--allowed-origins` narrows it to a list.
fn cors(origins: &auth::AllowedOrigins) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow_origin = if origins.is_any() {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.header_values())
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::ORIGIN,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(std::time::Duration::from_secs(24 * 60 * 60))
        .vary([header::ORIGIN])
}

/// Every refusal the HTTP layer gives. Each message is a sentence for a person; the
/// cause of a 503 is logged where it happens, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("There is nothing at this address.")]
    NotFound,
    #[error("This method is not allowed here.")]
    MethodNotAllowed,
    #[error("The request body is larger than the limit of {0} bytes.")]
    PayloadTooLarge(usize),
    #[error("Send the event as application/json or text/plain.")]
    UnsupportedMediaType,
    #[error("This address speaks WebSocket: connect with a WebSocket client (Upgrade: websocket).")]
    UpgradeRequired,
    #[error("{0}")]
    Unavailable(&'static str),
    /// Well-formed, but the store cannot hold it: a retry would fail the same way.
    #[error("{0}")]
    Unprocessable(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        /// Whole seconds, at least 1: the `Retry-After` header.
        retry_after: u64,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({"success": false, "error": self.to_string()}));
        let mut response = (self.status(), body).into_response();
        match self {
            Self::UpgradeRequired => {
                response
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Self::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

/// The query parameters of a read route. A query string that cannot be read is a
/// 400 with a sentence, like every other refusal (axum's own rejection is plain text).
pub(super) struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(t)| Params(t))
            .map_err(|_| ApiError::BadRequest("The query string could not be read.".into()))
    }
}

/// An optional whole number within `range` (`default` when absent), or a sentence
/// saying what is expected.
pub(super) fn bounded(
    raw: Option<&str>,
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    match raw {
        None | Some("") => Ok(default),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} must be a whole number from {} to {}.",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// An optional whole number, maicivy's way: absent, not a number, or outside
/// `range` means `default` (Fiber's `QueryInt` and a range check).
pub(super) fn clamped(
    raw: Option<&str>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> u32 {
    raw.and_then(|raw| raw.trim().parse::<u32>().ok())
        .filter(|n| range.contains(n))
        .unwrap_or(default)
}

/// A read that failed: logged with its cause, answered with a sentence.
pub(super) fn read_failed(e: impl std::fmt::Display, what: &str) -> ApiError {
    tracing::error!(error = %e, "{what} query failed");
    ApiError::Unavailable("The figures cannot be read right now; please retry.")
}
