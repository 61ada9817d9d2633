//! What operators and load balancers call: `/metrics`, `/healthz`, `/readyz`.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let m = &st.analytics.metrics;
    // The gauge is read from the hub at scrape time: one source of truth.
    m.connections
        .set(i64::try_from(st.analytics.hub.connected_clients()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

/// The process is up and serving.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"success": true, "status": "ok"}))
}

/// Ready to take traffic: the store answers, and the broker (Redis) when configured.
async fn readyz(State(st): State<AppState>) -> Result<axum::response::Response, ApiError> {
    if st.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("The server is stopping."));
    }
    if !st.analytics.store_ready(Duration::from_secs(2)).await {
        return Err(ApiError::Unavailable("The event store is not reachable."));
    }
    let not_ready = st
        .analytics
        .broker()
        .readiness()
        .and_then(|()| st.analytics.live_readiness())
        .and_then(|()| st.analytics.ingest_readiness());
    if let Err(why) = not_ready {
        // The sentence says what is retrying or wrong and why (Redis unreachable, a
        // key of the wrong type): what an operator at a failing check wants to read.
        return Ok((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(serde_json::json!({"success": false, "error": why})),
        )
            .into_response());
    }
    Ok(Json(serde_json::json!({"success": true, "status": "ready"})).into_response())
}
