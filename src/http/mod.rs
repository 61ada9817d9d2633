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
pub mod handshake;
mod limits;
mod ops;
mod security;
mod serve;
pub mod session;
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
pub use serve::Serving;

/// What every handler can reach: one `Arc`, because axum clones the state for every
/// request (the security guard's `from_fn_with_state`, each `State` extractor), and
/// cloning a `CancellationToken` or a `TaskTracker` field by field takes locks and
/// atomics on the hottest route.
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl AppState {
    pub fn new(shared: AppShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

pub struct AppShared {
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
        .layer(axum::middleware::map_response(json_error_bodies))
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
        .layer(axum::middleware::map_response(json_error_bodies))
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
    /// The request body did not all arrive within `--http-body-timeout`.
    #[error("The request body did not arrive within {0}; send it in one go.")]
    RequestTimeout(String),
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
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
            Self::RequestTimeout(_) => {
                // The rest of the body may still come: this connection cannot carry
                // another request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// The JSON answer of every refusal: `{"success":false,"error":"<sentence>"}`.
fn error_json(sentence: &str) -> String {
    serde_json::json!({"success": false, "error": sentence}).to_string()
}

/// The sentence of an error status that nobody worded (hyper's own refusals, an
/// extractor's rejection): each error the server emits says something.
fn status_sentence(status: StatusCode) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow::{Borrowed, Owned};
    match status {
        StatusCode::BAD_REQUEST => {
            Borrowed("The request could not be read: it is not well-formed HTTP/1.1.")
        }
        StatusCode::NOT_FOUND => Borrowed("There is nothing at this address."),
        StatusCode::METHOD_NOT_ALLOWED => Borrowed("This method is not allowed here."),
        StatusCode::REQUEST_TIMEOUT => Borrowed("The request did not arrive in time."),
        StatusCode::PAYLOAD_TOO_LARGE => {
            Borrowed("The request body is larger than this server accepts.")
        }
        StatusCode::URI_TOO_LONG => {
            Borrowed("The address (URI) of the request is longer than this server accepts.")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Borrowed("Send the event as application/json or text/plain.")
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            Borrowed("The request's headers are larger or more numerous than this server accepts.")
        }
        s if s.is_server_error() => Owned(format!(
            "The server could not answer this request ({} {}); please retry.",
            s.as_u16(),
            s.canonical_reason().unwrap_or("error")
        )),
        s => Owned(format!(
            "The request was refused ({} {}).",
            s.as_u16(),
            s.canonical_reason().unwrap_or("error")
        )),
    }
}

/// Inside the CORS layer: an error answer without a JSON body (an extractor's
/// rejection, a library's own answer) gets the sentence of its status, keeping its
/// other headers.
async fn json_error_bodies(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(
        parts,
        axum::body::Body::from(error_json(&status_sentence(status))),
    )
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
