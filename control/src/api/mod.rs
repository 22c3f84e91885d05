//! The REST API (axum): `fn router(state)` apart from serving (`server`: connection caps and
//! timeouts); handlers per resource in `routes/`; one error type; extractors that keep bad
//! input in our error format.

pub mod error;
pub mod extract;
pub mod routes;
pub mod server;
mod write_deadline;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::{delete, get, post};
use dormouse_proxy::control::paths;

use crate::service::ControlService;
use error::ApiError;

/// Readiness of the parts `/healthz` reports on, beyond the store.
#[derive(Debug, Default)]
pub struct Health {
    /// False when this process runs control without the proxy (`dormouse control`).
    pub proxy_expected: bool,
    pub proxy_ready: AtomicBool,
}

impl Health {
    pub fn set_proxy_ready(&self, ready: bool) {
        self.proxy_ready.store(ready, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<ControlService>,
    pub health: Arc<Health>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/tenants", post(routes::tenants::create).get(routes::tenants::list))
        .route("/v1/databases", post(routes::databases::create).get(routes::databases::list))
        .route(
            "/v1/databases/{name}",
            get(routes::databases::show)
                .patch(routes::databases::update)
                .delete(routes::databases::remove),
        )
        .route("/v1/databases/{name}/suspend", post(routes::databases::suspend))
        .route("/v1/databases/{name}/resume", post(routes::databases::resume))
        .route("/v1/databases/{name}/restore", post(routes::backups::restore))
        .route("/v1/databases/{name}/undelete", post(routes::databases::undelete))
        .route(
            "/v1/databases/{name}/backups",
            post(routes::backups::create).get(routes::backups::list_for_database),
        )
        .route(
            "/v1/databases/{name}/backup-schedule",
            get(routes::backups::show_schedule).patch(routes::backups::change_schedule),
        )
        .route("/v1/backups", get(routes::backups::list))
        .route("/v1/backups/{id}", get(routes::backups::show).delete(routes::backups::remove))
        .route("/v1/tokens", post(routes::tokens::create))
        .route("/v1/tokens/{id}", delete(routes::tokens::revoke))
        .route("/healthz", get(routes::health::healthz))
        .route("/metrics", get(routes::health::metrics))
        .route(paths::JWKS, get(routes::internal::jwks))
        .route(paths::REVOCATIONS, get(routes::internal::revocations))
        .route(&format!("{}/{{tenant}}/{{database}}", paths::ROUTES), get(routes::internal::route))
        .route(
            &format!("{}/{{tenant}}/{{database}}/wake", paths::ROUTES),
            post(routes::internal::wake),
        )
        .route(
            &format!("{}/{{tenant}}/{{database}}/repair", paths::ROUTES),
            post(routes::internal::repair),
        )
        .route(
            &format!("{}/{{tenant}}/{{database}}/allowlist", paths::ROUTES),
            get(routes::internal::allowlist),
        )
        .route(paths::ACTIVITY, post(routes::internal::activity))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not support that method",
            )
        })
        .with_state(state)
}
