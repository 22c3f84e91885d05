//! `/v1/backups` and `/v1/databases/{name}/backups`: take, list, show and delete backups, and
//! `/v1/databases/{name}/restore`: restore one over its database.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{Json, Path, Query, tenant_of};
use crate::api::routes::databases::{view as database_view, visible};
use crate::api::routes::timestamp;
use crate::backup::jobs::RestorePoint;
use crate::backup::schedule;
use crate::service::{Caller, ControlService, ServiceError, parse_time};
use crate::store::{BackupKind, BackupRecord};

/// A token limited to one database reaches that database alone; others are "not found".
fn reachable_database(caller: &Caller, name: &str) -> Result<(), ApiError> {
    if visible(caller, name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no database named {name:?}")))
    }
}

/// A token limited to one database reaches that database's backups alone.
fn reachable_backup(caller: &Caller, backup: &BackupRecord) -> Result<(), ApiError> {
    if visible(caller, &backup.database_name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no backup with id {:?}", backup.id)))
    }
}

/// A backup as tenants see it.
pub fn view(service: &ControlService, b: &BackupRecord) -> Value {
    let progress = service.backups().progress(&b.id).map(|(done, total, percent)| {
        json!({ "bytes_done": done, "bytes_total": total, "percent": percent })
    });
    json!({
        "id": b.id,
        "name": b.name,
        "database": b.database_name,
        "engine": b.engine,
        "kind": b.kind.as_str(),
        "status": b.status.as_str(),
        "reason": b.reason,
        "format": b.format,
        "hot": b.hot,
        "parent_id": b.parent_id,
        "size_bytes": b.plain_bytes,
        "stored_bytes": b.stored_bytes,
        "sha256": b.sha256,
        "position": b.position.as_ref().map(|p| json!({
            "time": timestamp(p.time),
            "binlog_file": p.binlog_file,
            "binlog_position": p.binlog_position,
            "gtid": p.gtid,
        })),
        "created_at": timestamp(b.created_at),
        "started_at": b.started_at.map(timestamp),
        "completed_at": b.completed_at.map(timestamp),
        "progress": progress,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    name: Option<String>,
    /// Only what changed since the newest backup it can build on (MySQL, while running).
    #[serde(default)]
    incremental: bool,
}

/// `POST /v1/databases/{name}/backups`: queue a backup; 202 with its row.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, JsonResponse<Value>), ApiError> {
    // The body is optional: no body is a backup without a name.
    let req: NewBackup = if body.iter().all(u8::is_ascii_whitespace) {
        NewBackup::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid body: {e}")))?
    };
    let tenant = tenant_of(&caller, true)?;
    reachable_database(&caller, &name)?;
    let label = req.name;
    let backup = state
        .service
        .request_backup(tenant, &name, label, BackupKind::Manual, req.incremental)
        .await?;
    Ok((StatusCode::ACCEPTED, JsonResponse(view(&state.service, &backup))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    database: Option<String>,
}

/// `GET /v1/backups[?database=name]`, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, false)?;
    let backups = state
        .service
        .store()
        .list_backups(&tenant.id, query.database.as_deref())
        .await
        .map_err(ServiceError::from)?;
    let backups: Vec<Value> = backups
        .iter()
        .filter(|b| visible(&caller, &b.database_name))
        .map(|b| view(&state.service, b))
        .collect();
    Ok(JsonResponse(json!({ "backups": backups })))
}

/// `GET /v1/backups/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, false)?;
    let backup = state.service.backup_of(tenant, &id).await?;
    reachable_backup(&caller, &backup)?;
    Ok(JsonResponse(view(&state.service, &backup)))
}

/// `DELETE /v1/backups/{id}`.
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    let backup = state.service.backup_of(tenant, &id).await?;
    reachable_backup(&caller, &backup)?;
    state.service.delete_backup(tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A backup by id, or a time in the database's past.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    backup: Option<String>,
    time: Option<String>,
}

/// `POST /v1/databases/{name}/restore {"backup": id}`: replace its data with the backup's,
/// keeping what it held as a new backup.
pub async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<RestoreRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    reachable_database(&caller, &name)?;
    let point = match (&req.backup, &req.time) {
        (Some(id), None) => {
            // A token limited to one database never reads another's backup into it.
            reachable_backup(&caller, &state.service.backup_of(tenant, id).await?)?;
            RestorePoint::Backup(id)
        }
        (None, Some(time)) => RestorePoint::Time(
            parse_time(time).map_err(|m| ApiError::bad_request("invalid_restore", m))?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_restore",
                "restore takes {\"backup\": id} or {\"time\": RFC 3339}",
            ));
        }
    };
    let (db, kept) = state.service.restore_in_place(tenant, &name, point).await?;
    Ok(JsonResponse(json!({
        "database": database_view(&state.service, &db, None),
        "restored_from": req.backup,
        "restored_to": req.time,
        // Null when it held nothing (created lazily and never started).
        "previous_data": kept.as_ref().map(|k| view(&state.service, k)),
    })))
}

/// `GET /v1/databases/{name}/backups`: one database's backups, newest first.
pub async fn list_for_database(
    state: State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    list(state, caller, Query(ListQuery { database: Some(name) })).await
}

/// A schedule as tenants see it.
fn schedule_view(db: &crate::store::Database, s: &crate::store::ScheduleRecord) -> Value {
    json!({
        "database": db.name,
        "every": s.every,
        "keep_count": s.keep_count,
        "keep_days": s.keep_days,
        "last_run_at": s.last_run_at.map(timestamp),
        "last_result": s.last_result,
        "last_backup": s.last_backup_id,
        "next_run_at": schedule::next_run(db, s).map(timestamp),
    })
}

/// `GET /v1/databases/{name}/backup-schedule`.
pub async fn show_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, false)?;
    reachable_database(&caller, &name)?;
    let db = state.service.database(tenant, &name).await?;
    let stored = state.service.store().schedule(&db.id).await.map_err(ServiceError::from)?;
    Ok(JsonResponse(schedule_view(&db, &schedule::schedule_or_default(&db, stored))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChange {
    every: Option<String>,
    keep_count: Option<u32>,
    keep_days: Option<u32>,
}

/// `PATCH /v1/databases/{name}/backup-schedule`: change how often and how long.
pub async fn change_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<ScheduleChange>,
) -> Result<JsonResponse<Value>, ApiError> {
    let tenant = tenant_of(&caller, true)?;
    reachable_database(&caller, &name)?;
    let db = state.service.database(tenant, &name).await?;
    let stored = state.service.store().schedule(&db.id).await.map_err(ServiceError::from)?;
    let mut s = schedule::schedule_or_default(&db, stored);
    if let Some(every) = req.every {
        schedule::Every::parse(&every).map_err(|m| ApiError::bad_request("invalid_every", m))?;
        s.every = every;
    }
    if let Some(count) = req.keep_count {
        if !(1..=1000).contains(&count) {
            return Err(ApiError::bad_request("invalid_keep_count", "keep_count is 1 to 1000"));
        }
        s.keep_count = count;
    }
    if let Some(days) = req.keep_days {
        if !(1..=3650).contains(&days) {
            return Err(ApiError::bad_request("invalid_keep_days", "keep_days is 1 to 3650"));
        }
        s.keep_days = days;
    }
    state.service.store().put_schedule(&s).await.map_err(ServiceError::from)?;
    Ok(JsonResponse(schedule_view(&db, &s)))
}
