//! The live dashboard and the browser scripts, shipped inside the binary, and the
//! two read routes the dashboard needs beyond CONTRACT.md.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard (HTML; its CSS and JS under `/assets/`) |
//! | `GET /client.js` | the WebSocket client library (`MaicivyLive`), see its header |
//! | `GET /script.js` | the tracking snippet for sites, see its header |
//! | `GET /assets/vendor/uplot/…` | uPlot (MIT, vendored from npm with its LICENSE) |
//! | `GET /api/v1/analytics/events-per-minute?minutes=30` | events per UTC minute, oldest first, the current minute last, minutes without events as 0; `minutes` 1–1440 |
//! | `GET /api/v1/analytics/pages-now?minutes=5&limit=10` | the pages of `page_view` events in the last `minutes` (1–60): `visitors` on the page now (their latest page view), `views` in the window; `limit` 1–100 |
//!
//! Nothing here needs the network at run time: no CDN, no web font.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Duration, DurationRound, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Params, bounded, read_failed};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { asset("index.html", &h) }),
        )
        .route(
            "/client.js",
            get(|h: HeaderMap| async move { asset("client.js", &h) }),
        )
        .route(
            "/script.js",
            get(|h: HeaderMap| async move { asset("script.js", &h) }),
        )
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>, h: HeaderMap| async move { asset(&path, &h) }),
        )
        .route(
            "/api/v1/analytics/events-per-minute",
            get(events_per_minute),
        )
        .route("/api/v1/analytics/pages-now", get(pages_now))
}

/// `assets/`, compiled into the release binary (rust-embed; a debug build reads the
/// folder, so an edited page shows without a rebuild).
#[derive(rust_embed::RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// Scripts and pages change with the binary: revalidate them (their ETag makes that
/// a 304). The snippet is fetched by every page view of every site, so it may be
/// cached a little; vendored files only change with their version.
fn cache_control(path: &str) -> &'static str {
    match path {
        "script.js" => "public, max-age=300",
        p if p.starts_with("vendor/") || p == "favicon.svg" => "public, max-age=86400",
        _ => "no-cache",
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    }
}

/// One embedded file, with its ETag (the content's SHA-256): a client that has it
/// gets 304 Not Modified.
fn asset(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::NotFound.into_response();
    };
    let hash = file.metadata.sha256_hash();
    let etag = format!("\"{}\"", hex(&hash[..16]));
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control(path)),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        ),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, file.data.into_owned()).into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
struct PerMinuteParams {
    minutes: Option<String>,
}

/// `data`: `[{"minute": <Unix seconds of the minute's start>, "count": n}, …]`, one
/// entry per minute, so that a chart can draw it as it is.
async fn events_per_minute(
    State(st): State<AppState>,
    Params(params): Params<PerMinuteParams>,
) -> Result<Json<Value>, ApiError> {
    let minutes = bounded(params.minutes.as_deref(), "minutes", 30, 1..=1440)?;
    let now = Utc::now();
    let current = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    let from = current - Duration::minutes(i64::from(minutes) - 1);
    let to = current + Duration::minutes(1);
    let counts = st
        .analytics
        .events_per_minute(from, to)
        .await
        .map_err(|e| read_failed(e, "events per minute"))?;
    let mut counts = counts.into_iter().peekable();
    let series: Vec<Value> = (0..i64::from(minutes))
        .map(|i| {
            let minute_ms = (from + Duration::minutes(i)).timestamp_millis();
            // Both sides ascend: skip anything before this minute, take it if equal.
            while counts.next_if(|c| c.minute_ms < minute_ms).is_some() {}
            let count = counts
                .next_if(|c| c.minute_ms == minute_ms)
                .map_or(0, |c| c.count);
            json!({"minute": minute_ms / 1000, "count": count})
        })
        .collect();
    Ok(Json(json!({"success": true, "data": series})))
}

#[derive(Deserialize)]
struct PagesNowParams {
    minutes: Option<String>,
    limit: Option<String>,
}

/// `data`: `[{"page_url": "/cv", "visitors": 2, "views": 5}, …]`, most visitors first.
async fn pages_now(
    State(st): State<AppState>,
    Params(params): Params<PagesNowParams>,
) -> Result<Json<Value>, ApiError> {
    let minutes = bounded(params.minutes.as_deref(), "minutes", 5, 1..=60)?;
    let limit = bounded(params.limit.as_deref(), "limit", 10, 1..=100)?;
    let from = Utc::now() - Duration::minutes(i64::from(minutes));
    let pages = st
        .analytics
        .pages_since(from, limit)
        .await
        .map_err(|e| read_failed(e, "pages now"))?;
    Ok(Json(json!({"success": true, "data": pages})))
}
