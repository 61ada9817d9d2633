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
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Duration, DurationRound, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Params, bounded, read_failed};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset(&INDEX) }))
        .route("/client.js", get(|| async { asset(&CLIENT_JS) }))
        .route("/script.js", get(|| async { asset(&SCRIPT_JS) }))
        .route(
            "/assets/dashboard.js",
            get(|| async { asset(&DASHBOARD_JS) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|| async { asset(&DASHBOARD_CSS) }),
        )
        .route("/assets/favicon.svg", get(|| async { asset(&FAVICON) }))
        .route(
            "/assets/vendor/uplot/uPlot.iife.min.js",
            get(|| async { asset(&UPLOT_JS) }),
        )
        .route(
            "/assets/vendor/uplot/uPlot.min.css",
            get(|| async { asset(&UPLOT_CSS) }),
        )
        .route(
            "/assets/vendor/uplot/LICENSE",
            get(|| async { asset(&UPLOT_LICENSE) }),
        )
        .route(
            "/api/v1/analytics/events-per-minute",
            get(events_per_minute),
        )
        .route("/api/v1/analytics/pages-now", get(pages_now))
}

/// A file compiled into the binary.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
}

/// Scripts and pages change with the binary: revalidate them. The snippet is
/// fetched by every page view of every site, so it may be cached a little.
const REVALIDATE: &str = "no-cache";
const SNIPPET_CACHE: &str = "public, max-age=300";
const VENDOR_CACHE: &str = "public, max-age=86400";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: Asset = Asset {
    body: include_str!("../../assets/index.html"),
    content_type: "text/html; charset=utf-8",
    cache_control: REVALIDATE,
};
const CLIENT_JS: Asset = Asset {
    body: include_str!("../../assets/client.js"),
    content_type: JS,
    cache_control: REVALIDATE,
};
const SCRIPT_JS: Asset = Asset {
    body: include_str!("../../assets/script.js"),
    content_type: JS,
    cache_control: SNIPPET_CACHE,
};
const DASHBOARD_JS: Asset = Asset {
    body: include_str!("../../assets/dashboard.js"),
    content_type: JS,
    cache_control: REVALIDATE,
};
const DASHBOARD_CSS: Asset = Asset {
    body: include_str!("../../assets/dashboard.css"),
    content_type: CSS,
    cache_control: REVALIDATE,
};
const FAVICON: Asset = Asset {
    body: include_str!("../../assets/favicon.svg"),
    content_type: "image/svg+xml",
    cache_control: VENDOR_CACHE,
};
const UPLOT_JS: Asset = Asset {
    body: include_str!("../../assets/vendor/uplot/uPlot.iife.min.js"),
    content_type: JS,
    cache_control: VENDOR_CACHE,
};
const UPLOT_CSS: Asset = Asset {
    body: include_str!("../../assets/vendor/uplot/uPlot.min.css"),
    content_type: CSS,
    cache_control: VENDOR_CACHE,
};
const UPLOT_LICENSE: Asset = Asset {
    body: include_str!("../../assets/vendor/uplot/LICENSE"),
    content_type: "text/plain; charset=utf-8",
    cache_control: VENDOR_CACHE,
};

fn asset(a: &Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(a.cache_control),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        a.body,
    )
        .into_response()
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
