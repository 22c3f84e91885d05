//! What the proxy asks: the public signing keys (public), and, with the operator's token, the
//! route to a database (or, while it sleeps, its address allowlist) and the list of revoked
//! tokens.

use axum::Json as JsonResponse;
use axum::extract::State;
use dormouse_proxy::allowlist::AllowList;
use dormouse_proxy::control::{ActivityReport, ControlError, Revocations, Route, WakeFailure};
use jsonwebtoken::jwk::JwkSet;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Json, Path};
use crate::service::Caller;

fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant { .. } => Err(ApiError::forbidden("internal endpoint")),
    }
}

pub async fn jwks(State(state): State<AppState>) -> JsonResponse<JwkSet> {
    JsonResponse(state.service.keys().jwks().clone())
}

pub async fn revocations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<JsonResponse<Revocations>, ApiError> {
    operator_only(&caller)?;
    Ok(JsonResponse(Revocations { revoked: state.service.revoked_ids() }))
}

/// Names in internal paths follow the same rule as everywhere (defence in depth: the proxy
/// checks them before asking).
fn valid_names(tenant: &str, database: &str) -> Result<(), ApiError> {
    if crate::names::valid_name(tenant) && crate::names::valid_name(database) {
        Ok(())
    } else {
        Err(ApiError::not_found("no such database"))
    }
}

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::Asleep => {
            ApiError::new(axum::http::StatusCode::CONFLICT, "asleep", "the database is suspended")
        }
        ControlError::WakeFailed { message, retryable } => {
            let body = WakeFailure { message, retryable };
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "wake_failed",
                serde_json::to_string(&body).unwrap_or_default(),
            )
        }
        ControlError::Unavailable(m) => crate::service::ServiceError::Internal(m).into(),
    }
}

pub async fn route(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, database)): Path<(String, String)>,
) -> Result<JsonResponse<Route>, ApiError> {
    operator_only(&caller)?;
    valid_names(&tenant, &database)?;
    match state.service.route(&tenant, &database).await {
        Ok(Some(route)) => Ok(JsonResponse(route)),
        Ok(None) => Err(ApiError::not_found("no such database")),
        Err(e) => Err(control_error(e)),
    }
}

/// The addresses a database accepts, asked before waking it for a client.
pub async fn allowlist(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, database)): Path<(String, String)>,
) -> Result<JsonResponse<AllowList>, ApiError> {
    operator_only(&caller)?;
    valid_names(&tenant, &database)?;
    match state.service.allowlist(&tenant, &database).await {
        Ok(Some(allowed)) => Ok(JsonResponse(allowed)),
        Ok(None) => Err(ApiError::not_found("no such database")),
        Err(e) => Err(control_error(e)),
    }
}

pub async fn wake(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, database)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    operator_only(&caller)?;
    valid_names(&tenant, &database)?;
    match state.service.wake(&tenant, &database).await {
        Ok(Some(route)) => Ok(JsonResponse(route).into_response()),
        Ok(None) => Err(ApiError::not_found("no such database")),
        // The proxy reads a failed wake as this body, so it can tell retryable failures apart.
        Err(ControlError::WakeFailed { message, retryable }) => Ok((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            JsonResponse(WakeFailure { message, retryable }),
        )
            .into_response()),
        Err(e) => Err(control_error(e)),
    }
}

/// The proxy's login as the internal account was refused: the account is put back.
pub async fn repair(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, database)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    operator_only(&caller)?;
    valid_names(&tenant, &database)?;
    match state.service.repair_access(&tenant, &database).await {
        Ok(true) => Ok(axum::http::StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("no such database")),
        Err(e) => Err(control_error(e)),
    }
}

pub async fn activity(
    State(state): State<AppState>,
    caller: Caller,
    Json(report): Json<ActivityReport>,
) -> Result<axum::http::StatusCode, ApiError> {
    operator_only(&caller)?;
    state.service.activity().report(&report);
    Ok(axum::http::StatusCode::NO_CONTENT)
}
