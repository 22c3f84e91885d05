//! What the proxy asks: the public signing keys (public), and, with the operator's token, the
//! route to a database and the list of revoked tokens.

use axum::Json as JsonResponse;
use axum::extract::State;
use dormouse_proxy::control::{ControlError, Revocations, Route};
use jsonwebtoken::jwk::JwkSet;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::Path;
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

pub async fn route(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, database)): Path<(String, String)>,
) -> Result<JsonResponse<Route>, ApiError> {
    operator_only(&caller)?;
    match state.service.route(&tenant, &database).await {
        Ok(Some(route)) => Ok(JsonResponse(route)),
        Ok(None) => Err(ApiError::not_found("no such database")),
        Err(ControlError::NotRunning(m)) => {
            Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "not_running", m))
        }
        Err(ControlError::Unavailable(m)) => Err(crate::service::ServiceError::Internal(m).into()),
    }
}
