//! `/v1/tenants`: the operator creates and lists tenants.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::Json;
use crate::api::routes::timestamp;
use crate::service::Caller;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Tenant { .. } => {
            Err(ApiError::forbidden("only the operator's token manages tenants"))
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateTenant>,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    operator_only(&caller)?;
    let (tenant, token) = state.service.create_tenant(&req.name).await?;
    Ok((
        StatusCode::CREATED,
        JsonResponse(json!({
            "id": tenant.id,
            "name": tenant.name,
            "created_at": timestamp(tenant.created_at),
            "token": token.token,
            "token_id": token.id,
            "token_expires_at": timestamp(token.expires_at),
        })),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<JsonResponse<Value>, ApiError> {
    operator_only(&caller)?;
    let tenants =
        state.service.store().list_tenants().await.map_err(crate::service::ServiceError::from)?;
    let tenants: Vec<Value> = tenants
        .iter()
        .map(|t| json!({ "id": t.id, "name": t.name, "created_at": timestamp(t.created_at) }))
        .collect();
    Ok(JsonResponse(json!({ "tenants": tenants })))
}
