//! The analytics API: ingesting an event and the read routes.

use std::net::IpAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::client_ip::ClientIp;
use super::{ApiError, AppState, Params, clamped, read_failed};
use crate::domain::{NewEvent, VisitorId};
use crate::event_body;
use crate::ingest::IngestError;
use crate::period::Period;
use crate::store::TimelineCursor;

/// The answer when an event cannot be stored, whatever the cause (logged).
const NOT_RECORDED: &str =
    "The event could not be stored right now and was not recorded; please retry.";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/analytics/event", post(track_event))
        .route("/api/v1/analytics/realtime", get(realtime))
        .route("/api/v1/analytics/timeline", get(timeline))
        .route("/api/v1/analytics/stats", get(stats))
        .route("/api/v1/analytics/letters", get(letters))
        .route("/api/v1/analytics/themes", get(themes))
        .route("/api/v1/analytics/heatmap", get(heatmap))
}

async fn track_event(
    State(st): State<AppState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let metrics = &st.analytics.metrics;
    // Before the body is read: refusing a flood should cost as little as possible.
    if let Err(wait) = st.security.ingest.check(client) {
        metrics.ingestion_error("rate_limited");
        return Err(ApiError::TooManyRequests {
            message: "Too many events from your address; slow down and retry after the delay in Retry-After.".into(),
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        });
    }
    let event = match read_event(&st, client, &headers, body).await {
        Ok(event) => event,
        Err(e) => {
            metrics.ingestion_error(match e {
                ApiError::PayloadTooLarge(_) => "too_large",
                ApiError::UnsupportedMediaType => "unsupported_media_type",
                ApiError::Unavailable(_) => "unavailable",
                _ => "invalid",
            });
            return Err(e);
        }
    };
    st.analytics.ingest(event).await.map_err(|e| {
        metrics.ingestion_error(match e {
            IngestError::StoreFailed => "store_failed",
            IngestError::Rejected => "rejected",
            IngestError::Overloaded => "overloaded",
            IngestError::Stopping => "stopping",
        });
        match e {
            IngestError::Rejected => ApiError::Unprocessable(
                "The event store refused this event; it was not recorded, and sending it again will not help.",
            ),
            IngestError::StoreFailed => ApiError::Unavailable(NOT_RECORDED),
            IngestError::Overloaded => ApiError::Unavailable(
                "The server is receiving more events than it can store; please retry shortly.",
            ),
            IngestError::Stopping => {
                ApiError::Unavailable("The server is stopping; the event was not recorded.")
            }
        }
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "message": "Event tracked successfully"})),
    ))
}

/// Reads, parses and validates an event body into a `NewEvent`.
async fn read_event(
    st: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<NewEvent, ApiError> {
    check_content_type(headers)?;
    let limit = st.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest("The request body could not be read.".into())
        }
    })?;
    let body = event_body::parse(&bytes).map_err(ApiError::BadRequest)?;
    let now = Utc::now();
    // Who: the body's id, else the `visitor_id` cookie, else maicivy's session
    // cookie, else the cookieless id (CONTRACT.md, in that order).
    let visitor_id = match body.visitor_id {
        Some(id) => id,
        None => match cookie_visitor(headers) {
            Some(id) => id,
            None if let Some(session) = cookie(headers, SESSION_COOKIE) => {
                st.analytics.session_visitor(session).await.map_err(|e| {
                    tracing::error!(error = %e, "could not look up a maicivy session");
                    ApiError::Unavailable(NOT_RECORDED)
                })?
            }
            None => {
                let ua = headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                st.analytics
                    .cookieless_id(client, ua, now)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "could not read the daily salt");
                        ApiError::Unavailable(NOT_RECORDED)
                    })?
            }
        },
    };
    Ok(NewEvent {
        // Time-ordered (version 7): each batch's ids land at the end of the primary
        // key's index, a few pages per commit, where random (version 4) ids dirty a
        // page of the index per event once it outgrows the cache. Still a UUID for
        // maicivy's `id UUID` column (Go's own rows keep their version 4 ids).
        id: uuid::Uuid::now_v7(),
        event_type: body.event_type,
        visitor_id,
        event_data: body.event_data,
        page_url: body.page_url,
        referrer: headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        occurred_at: now,
    })
}

/// `application/json` and `text/plain` (what `sendBeacon` sends without a CORS
/// preflight) are accepted; no Content-Type at all is read as JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// maicivy's session cookie: its value is `visitors.session_id`.
const SESSION_COOKIE: &str = "maicivy_session";

/// The `visitor_id` cookie, when it holds a UUID.
fn cookie_visitor(headers: &HeaderMap) -> Option<VisitorId> {
    cookie(headers, "visitor_id").and_then(|value| VisitorId::parse(value).ok())
}

/// The value of the first cookie called `name` (quotes removed), if not empty.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

async fn realtime(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    // Figures that cannot be read now are a 503, never zeros or an old copy.
    match st.analytics.current_stats().await {
        (Some(stats), _) => Ok(Json(json!({"success": true, "data": stats}))),
        (None, _) => Err(ApiError::Unavailable(
            "The live figures cannot be read right now; please retry.",
        )),
    }
}

#[derive(Deserialize)]
struct TimelineParams {
    limit: Option<String>,
    offset: Option<String>,
    /// `meta.next` of the previous page: the page after it, at the cost of the first.
    before: Option<String>,
}

async fn timeline(
    State(st): State<AppState>,
    Params(params): Params<TimelineParams>,
) -> Result<Json<Value>, ApiError> {
    // maicivy's rules: a limit outside 1–100 means 50, a negative offset means 0
    // (and, as Fiber's QueryInt, a value that is not a number means the default).
    let limit = clamped(params.limit.as_deref(), 50, 1..=100);
    let offset = params
        .offset
        .as_deref()
        .and_then(|raw| raw.trim().parse::<i64>().ok())
        .map_or(0, |n| n.max(0) as u64);
    let before = match params.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(raw) => Some(TimelineCursor::parse(raw).ok_or_else(|| {
            ApiError::BadRequest(
                "before must be the meta.next value of a previous timeline page.".into(),
            )
        })?),
    };
    let events = st
        .analytics
        .timeline(limit, offset, before)
        .await
        .map_err(|e| read_failed(e, "timeline"))?;
    let count = events.len();
    // A full page may have a next one: its cursor is this page's last event.
    let next = (count == limit as usize)
        .then(|| events.last().map(|e| TimelineCursor::after(e).encode()))
        .flatten();
    Ok(Json(json!({
        "success": true,
        "data": events,
        "meta": {"limit": limit, "offset": offset, "count": count, "next": next},
    })))
}

#[derive(Deserialize)]
struct PeriodParams {
    period: Option<String>,
}

async fn stats(
    State(st): State<AppState>,
    Params(params): Params<PeriodParams>,
) -> Result<Json<Value>, ApiError> {
    let period = Period::parse(params.period.as_deref()).map_err(ApiError::BadRequest)?;
    let stats = st
        .analytics
        .period_stats(period)
        .await
        .map_err(|e| read_failed(e, "stats"))?;
    Ok(Json(json!({
        "success": true,
        "data": {
            "period": period.as_str(),
            "period_key": stats.range.key,
            "total_events": stats.summary.total_events,
            "letters_generated": stats.summary.letters_generated,
            "unique_visitors": stats.summary.unique_visitors,
            "conversion_rate": stats.conversion_rate(),
        }
    })))
}

async fn letters(
    State(st): State<AppState>,
    Params(params): Params<PeriodParams>,
) -> Result<Json<Value>, ApiError> {
    let period = Period::parse(params.period.as_deref()).map_err(ApiError::BadRequest)?;
    let letters = st
        .analytics
        .letter_stats(period)
        .await
        .map_err(|e| read_failed(e, "letters"))?;
    let history: Vec<Value> = letters
        .history
        .iter()
        .map(|(day, count)| json!({"date": day.format("%Y-%m-%d").to_string(), "count": count}))
        .collect();
    Ok(Json(json!({
        "success": true,
        "data": {
            "period": period.as_str(),
            "total": letters.stats.summary.letters_generated,
            "motivation": letters.motivation,
            "anti_motivation": letters.anti_motivation,
            "unique_visitors": letters.stats.summary.unique_visitors,
            "conversion_rate": letters.stats.conversion_rate(),
            "history": history,
        }
    })))
}

#[derive(Deserialize)]
struct ThemesParams {
    limit: Option<String>,
}

async fn themes(
    State(st): State<AppState>,
    Params(params): Params<ThemesParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = clamped(params.limit.as_deref(), 5, 1..=20);
    let themes = st
        .analytics
        .top_themes(limit)
        .await
        .map_err(|e| read_failed(e, "themes"))?;
    Ok(Json(json!({"success": true, "data": themes})))
}

#[derive(Deserialize)]
struct HeatmapParams {
    page_url: Option<String>,
    hours: Option<String>,
}

async fn heatmap(
    State(st): State<AppState>,
    Params(params): Params<HeatmapParams>,
) -> Result<Json<Value>, ApiError> {
    let hours = clamped(params.hours.as_deref(), 24, 1..=168);
    let page_url = params.page_url.unwrap_or_default();
    let cells = st
        .analytics
        .heatmap(Some(page_url.as_str()).filter(|p| !p.is_empty()), hours)
        .await
        .map_err(|e| read_failed(e, "heatmap"))?;
    // `intensity` repeats `count`, as maicivy sends it (its widget reads either).
    let data: Vec<Value> = cells
        .iter()
        .map(|c| json!({"x": whole(c.x), "y": whole(c.y), "count": c.count, "intensity": c.count}))
        .collect();
    Ok(Json(json!({
        "success": true,
        "data": data,
        "meta": {"page_url": page_url, "hours": hours, "count": data.len()},
    })))
}

/// A rounded coordinate as JSON: `450`, not `450.0`, as Go writes a whole float.
fn whole(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}
