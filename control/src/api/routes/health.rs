//! `/healthz`: 200 only when every part is up.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::api::AppState;

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.service.store().ping().await.is_ok();
    let proxy = !state.health.proxy_expected || state.health.proxy_ready.load(Ordering::SeqCst);
    let engines: Vec<&str> =
        state.service.lifecycle().agent().engines().iter().map(|e| e.as_str()).collect();
    let agent = !engines.is_empty();
    let up = |ok: bool| if ok { "up" } else { "down" };
    let all = store && proxy && agent;
    let status = if all { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if all { "ok" } else { "degraded" },
        "parts": {
            "api": "up",
            "store": up(store),
            "proxy": if state.health.proxy_expected { up(proxy) } else { "separate" },
            "agent": up(agent),
        },
        "engines": engines,
    });
    (status, Json(body))
}

/// `/metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.metrics().render(),
    )
}
