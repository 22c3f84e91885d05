//! `/v1/databases`: create (with a ready-to-paste connection), list, show, change, delete.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::StatusCode;
use dormouse_engines::{EngineKind, InstanceState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Json, Path, Query, tenant_of};
use crate::api::routes::timestamp;
use crate::lifecycle::Attempt;
use crate::service::{Caller, ControlService, NewDatabase, PublicEndpoints, validate_allowlist};
use crate::store::{Database, DatabaseStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDatabase {
    idle_timeout_seconds: Option<u32>,
    /// Absent: unchanged; `null` or `[]`: any address; else the CIDRs that may connect.
    #[serde(default, deserialize_with = "present")]
    allowed_cidrs: Option<Option<Vec<String>>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// How a client connects: host, port, user, and a command line and URI to paste (for Redis also
/// a `rediss://` one: the same port takes TLS). `token` fills the password; without one, a
/// `<token>` placeholder shows where it goes.
pub fn connection(endpoints: &PublicEndpoints, db: &Database, token: Option<&str>) -> Value {
    let host = &endpoints.host;
    let name = &db.name;
    let secret = token.unwrap_or("<token>");
    match db.engine {
        EngineKind::Redis => {
            let port = endpoints.redis_port.unwrap_or_default();
            json!({
                "host": host, "port": port, "user": name,
                "command": format!("redis-cli -h {host} -p {port} --user {name} --pass {secret} --no-auth-warning"),
                "uri": format!("redis://{name}:{secret}@{host}:{port}"),
                "tls_uri": format!("rediss://{name}:{secret}@{host}:{port}"),
            })
        }
        EngineKind::Mysql => {
            let port = endpoints.mysql_port.unwrap_or_default();
            json!({
                "host": host, "port": port, "user": name,
                "command": format!("mariadb -h {host} -P {port} -u {name} -p{secret}"),
                "uri": format!("mysql://{name}:{secret}@{host}:{port}/{name}"),
            })
        }
    }
}

/// The status a user sees: the stored lifecycle status, refined by what the host observes.
fn observed_status(service: &ControlService, db: &Database) -> &'static str {
    if db.status != DatabaseStatus::Running {
        return db.status.as_str();
    }
    match service.lifecycle().agent().state(&db.id) {
        InstanceState::Running { .. } => "running",
        InstanceState::Starting => "starting",
        InstanceState::Restarting { .. } => "restarting",
        InstanceState::Stopped => "stopped",
        InstanceState::Failed { .. } => "failed",
    }
}

pub fn view(service: &ControlService, db: &Database, token: Option<&str>) -> Value {
    json!({
        "name": db.name,
        "engine": db.engine,
        "plan": db.plan,
        "status": observed_status(service, db),
        "created_at": timestamp(db.created_at),
        "idle_timeout_seconds": db.idle_timeout_seconds,
        // Empty: any address.
        "allowed_cidrs": db.allowed_cidrs,
        "expires_at": db.expires_at.map(timestamp),
        "last_wake_ms": db.last_wake_ms,
        "last_error": db.start_failure.as_ref().map(|f| json!({
            "reason": f.reason,
            "at": timestamp(f.at),
            "failed_starts": f.attempts,
        })).or_else(|| service.access_repairs().last(&db.id).map(|r| json!({
            "reason": r.reason,
            "at": timestamp(r.at),
            "failed_starts": 0,
        }))),
        "connection": connection(&service.endpoints(), db, token),
        // While a backup is being restored into it.
        "restore_progress": service
            .backups()
            .progress(&crate::backup::jobs::restore_progress_key(db))
            .map(|(done, total, percent)| json!({
                "bytes_done": done, "bytes_total": total, "percent": percent,
            })),
    })
}

/// A database-scoped token may only see its own database.
pub fn visible(caller: &Caller, name: &str) -> bool {
    match caller {
        Caller::Tenant { database: Some(scope), .. } => scope == name,
        _ => true,
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<NewDatabase>,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    let tenant = tenant_of(&caller, true)?;
    if let Some(from) = &req.restore {
        // A token limited to one database never reads another's backup.
        let source = match (&from.backup, &from.database) {
            (Some(id), _) => Some(state.service.backup_of(tenant, id).await?.database_name),
            (None, database) => database.clone(),
        };
        if source.is_some_and(|name| !visible(&caller, &name)) {
            return Err(ApiError::not_found("no such backup"));
        }
    }
    let (db, token) = state.service.create_database(tenant, &req).await?;
    let mut body = view(&state.service, &db, Some(&token.token));
    body["token"] =
        json!({ "id": token.id, "token": token.token, "expires_at": timestamp(token.expires_at) });
    Ok((StatusCode::CREATED, JsonResponse(body)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, false)?;
    let dbs = state
        .service
        .store()
        .list_databases(&tenant.id)
        .await
        .map_err(crate::service::ServiceError::from)?;
    let dbs: Vec<Value> = dbs
        .iter()
        .filter(|db| visible(&caller, &db.name))
        .map(|db| view(&state.service, db, None))
        .collect();
    Ok(JsonResponse(json!({ "databases": dbs })))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, false)?;
    if !visible(&caller, &name) {
        return Err(ApiError::not_found(format!("no database named {name:?}")));
    }
    let db = state.service.database(tenant, &name).await?;
    Ok(JsonResponse(view(&state.service, &db, None)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Skip the final backup: the data is gone at once and cannot be undeleted.
    #[serde(default)]
    now: bool,
}

/// `DELETE /v1/databases/{name}[?now=true]`: deletes it, keeping a final backup that
/// `POST /v1/databases/{name}/undelete` restores within the undo window.
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    state.service.delete_database(tenant, &name, query.now).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/databases/{name}/undelete`: brings back a database deleted within the undo
/// window, suspended, with a new token scoped to it.
pub async fn undelete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    let tenant = tenant_of(&caller, true)?;
    let (db, token) = state.service.undelete_database(tenant, &name).await?;
    let mut body = view(&state.service, &db, Some(&token.token));
    body["token"] =
        json!({ "id": token.id, "token": token.token, "expires_at": timestamp(token.expires_at) });
    Ok((StatusCode::CREATED, JsonResponse(body)))
}

/// `PATCH /v1/databases/{name}`: change the idle timeout or the address allowlist. Every
/// field is checked before any is changed.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<UpdateDatabase>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    let mut db = state.service.database(tenant, &name).await?;
    if let Some(cidrs) = &req.allowed_cidrs {
        validate_allowlist(cidrs.as_deref())?;
    }
    if let Some(seconds) = req.idle_timeout_seconds {
        db = state.service.set_idle_timeout(tenant, &name, seconds).await?;
    }
    if let Some(cidrs) = &req.allowed_cidrs {
        db = state.service.set_allowed_cidrs(tenant, &name, cidrs.as_deref()).await?;
    }
    Ok(JsonResponse(view(&state.service, &db, None)))
}

/// `POST /v1/databases/{name}/suspend`: stop it now, whoever is connected.
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    let db = state.service.database(tenant, &name).await?;
    match db.status {
        DatabaseStatus::Suspended => {}
        DatabaseStatus::Running | DatabaseStatus::Failed => {
            state.service.suspend(&db, true).await?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_state",
                format!("a {other} database cannot be suspended"),
            ));
        }
    }
    let db = state.service.database(tenant, &name).await?;
    Ok(JsonResponse(view(&state.service, &db, None)))
}

/// `POST /v1/databases/{name}/resume`: start it now, as a client connection would.
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    state.service.database(tenant, &name).await?;
    match state.service.wake_with(&tenant.id, &name, Attempt::Now).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::not_found(format!("no database named {name:?}"))),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ));
        }
    }
    let db = state.service.database(tenant, &name).await?;
    Ok(JsonResponse(view(&state.service, &db, None)))
}
