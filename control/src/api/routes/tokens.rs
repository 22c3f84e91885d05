//! `/v1/tokens`: a tenant's admin mints tokens (optionally for one database, with a role and a
//! lifetime) and revokes them.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::StatusCode;
use dormouse_proxy::claims::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Json, Path, tenant_of};
use crate::api::routes::timestamp;
use crate::service::{Caller, DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    database: Option<String>,
    role: Option<String>,
    ttl_seconds: Option<i64>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateToken>,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    let tenant = tenant_of(&caller, true)?;
    let role: Role = match req.role.as_deref() {
        None => Role::Readwrite,
        Some(r) => r.parse().map_err(|m: String| ApiError::bad_request("invalid_role", m))?,
    };
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL);
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl_seconds",
            format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL}"),
        ));
    }
    if let Some(db) = &req.database {
        if role == Role::Admin {
            return Err(ApiError::bad_request(
                "invalid_role",
                "an admin token cannot be limited to one database",
            ));
        }
        state.service.database(tenant, db).await?;
    }
    let token = state.service.issue(Some(&tenant.id), req.database.as_deref(), role, ttl).await?;
    Ok((
        StatusCode::CREATED,
        JsonResponse(json!({
            "id": token.id,
            "token": token.token,
            "expires_at": timestamp(token.expires_at),
            "role": role,
            "database": req.database,
        })),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Caller::Tenant { .. } = caller {
        tenant_of(&caller, true)?;
    }
    state.service.revoke(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
