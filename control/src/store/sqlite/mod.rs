//! The SQLite store: one file in the data directory, WAL mode, migrations embedded in the binary.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use dormouse_engines::{EngineKind, InstanceId, Secret};
use dormouse_proxy::allowlist::AllowList;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    ArchivedLog, BackupRecord, BackupStatus, Database, DatabaseStatus, ScheduleRecord,
    StartFailure, Store, StoreError, Tenant, TokenRecord,
};

pub struct SqliteStore {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

fn conflict_or(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Db(e),
    }
}

fn parse<T: FromStr>(value: String, what: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt(format!("{what} {value:?}")))
}

fn tenant_row(row: sqlx::sqlite::SqliteRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn database_row(row: sqlx::sqlite::SqliteRow) -> Result<Database, StoreError> {
    let id: String = row.try_get("id")?;
    let port: i64 = row.try_get("port")?;
    Ok(Database {
        id: InstanceId::new(id.clone())
            .map_err(|_| StoreError::Corrupt(format!("instance id {id:?}")))?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        engine: parse::<EngineKind>(row.try_get("engine")?, "engine")?,
        plan: row.try_get("plan")?,
        status: parse::<DatabaseStatus>(row.try_get("status")?, "status")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt(format!("port {port}")))?,
        password: Secret::new(row.try_get::<String, _>("password")?),
        created_at: row.try_get("created_at")?,
        idle_timeout_seconds: u32::try_from(row.try_get::<i64, _>("idle_timeout_seconds")?)
            .map_err(|_| StoreError::Corrupt("idle timeout".into()))?,
        last_wake_ms: row
            .try_get::<Option<i64>, _>("last_wake_ms")?
            .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX)),
        start_failure: match row.try_get::<Option<String>, _>("last_error")? {
            Some(reason) => Some(StartFailure {
                reason,
                at: row.try_get::<Option<i64>, _>("last_error_at")?.unwrap_or_default(),
                attempts: u32::try_from(row.try_get::<i64, _>("failed_starts")?).unwrap_or(1),
            }),
            None => None,
        },
        allowed_cidrs: allowed_cidrs(row.try_get("allowed_cidrs")?)?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The stored form of an allowlist: `NULL` for any address, else its comma-separated CIDRs.
fn stored_cidrs(list: &AllowList) -> Option<String> {
    (!list.is_empty()).then(|| list.to_string())
}

fn allowed_cidrs(stored: Option<String>) -> Result<AllowList, StoreError> {
    let Some(text) = stored.filter(|t| !t.is_empty()) else { return Ok(AllowList::default()) };
    let entries: Vec<&str> = text.split(',').collect();
    AllowList::parse(&entries).map_err(|e| StoreError::Corrupt(format!("allowed_cidrs: {e}")))
}

fn token_row(row: sqlx::sqlite::SqliteRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        database: row.try_get("database")?,
        role: parse(row.try_get("role")?, "role")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn backup_row(row: sqlx::sqlite::SqliteRow) -> Result<BackupRecord, StoreError> {
    let database_id: String = row.try_get("database_id")?;
    let count = |name: &str| -> Result<u64, StoreError> {
        u64::try_from(row.try_get::<i64, _>(name)?)
            .map_err(|_| StoreError::Corrupt(format!("{name} below zero")))
    };
    Ok(BackupRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        database_id: InstanceId::new(database_id.clone())
            .map_err(|_| StoreError::Corrupt(format!("instance id {database_id:?}")))?,
        database_name: row.try_get("database_name")?,
        engine: parse(row.try_get("engine")?, "engine")?,
        plan: row.try_get("plan")?,
        name: row.try_get("name")?,
        kind: parse(row.try_get("kind")?, "backup kind")?,
        status: parse(row.try_get("status")?, "backup status")?,
        reason: row.try_get("reason")?,
        format: row
            .try_get::<Option<String>, _>("format")?
            .map(|f| parse(f, "backup format"))
            .transpose()?,
        hot: row.try_get::<i64, _>("hot")? != 0,
        parent_id: row.try_get("parent_id")?,
        object_key: row.try_get("object_key")?,
        plain_bytes: count("plain_bytes")?,
        stored_bytes: count("stored_bytes")?,
        sha256: row.try_get("sha256")?,
        position: row
            .try_get::<Option<String>, _>("position")?
            .map(|p| {
                serde_json::from_str(&p).map_err(|e| StoreError::Corrupt(format!("position: {e}")))
            })
            .transpose()?,
        data_version: row.try_get("data_version")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

macro_rules! backup_columns {
    () => {
        "id, tenant_id, database_id, database_name, engine, plan, name, kind, status, reason, \
         format, hot, parent_id, object_key, plain_bytes, stored_bytes, sha256, position, \
         data_version, created_at, started_at, completed_at, expires_at"
    };
}

/// Binds every backup column but `id`, in [`backup_columns`] order.
fn bind_backup<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    b: &'q BackupRecord,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(&b.tenant_id)
        .bind(b.database_id.as_str())
        .bind(&b.database_name)
        .bind(b.engine.as_str())
        .bind(&b.plan)
        .bind(&b.name)
        .bind(b.kind.as_str())
        .bind(b.status.as_str())
        .bind(&b.reason)
        .bind(b.format.map(|f| f.as_str()))
        .bind(i64::from(b.hot))
        .bind(&b.parent_id)
        .bind(&b.object_key)
        .bind(i64::try_from(b.plain_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(b.stored_bytes).unwrap_or(i64::MAX))
        .bind(&b.sha256)
        .bind(b.position.as_ref().and_then(|p| serde_json::to_string(p).ok()))
        .bind(&b.data_version)
        .bind(b.created_at)
        .bind(b.started_at)
        .bind(b.completed_at)
        .bind(b.expires_at)
}

/// The `databases` columns, as a literal so queries stay static strings.
macro_rules! database_columns {
    () => {
        "id, tenant_id, name, engine, plan, status, port, password, created_at, \
         idle_timeout_seconds, last_wake_ms, last_error, last_error_at, failed_starts, \
         allowed_cidrs, expires_at"
    };
}

/// The columns [`archived_log`] reads, as a literal for `concat!`.
macro_rules! archived_log_columns {
    () => {
        "SELECT timeline, name, \"offset\", plain_bytes, stored_bytes, sha256, object_key, \
         archived_at, modified, continued_by FROM log_archive"
    };
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map_err(conflict_or)?;
        Ok(())
    }

    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(tenant_row)
            .transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(tenant_row)
            .collect()
    }

    async fn insert_database(&self, d: &Database) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO databases (id, tenant_id, name, engine, plan, status, port, password, \
             created_at, idle_timeout_seconds, allowed_cidrs, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(d.id.as_str())
        .bind(&d.tenant_id)
        .bind(&d.name)
        .bind(d.engine.as_str())
        .bind(&d.plan)
        .bind(d.status.as_str())
        .bind(i64::from(d.port))
        .bind(d.password.expose())
        .bind(d.created_at)
        .bind(i64::from(d.idle_timeout_seconds))
        .bind(stored_cidrs(&d.allowed_cidrs))
        .bind(d.expires_at)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn database(&self, tenant_id: &str, name: &str) -> Result<Option<Database>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            database_columns!(),
            " FROM databases WHERE tenant_id = ? AND name = ?"
        ))
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(database_row)
        .transpose()
    }

    async fn list_databases(&self, tenant_id: &str) -> Result<Vec<Database>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            database_columns!(),
            " FROM databases WHERE tenant_id = ? ORDER BY name"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(database_row)
        .collect()
    }

    async fn all_databases(&self) -> Result<Vec<Database>, StoreError> {
        sqlx::query(concat!("SELECT ", database_columns!(), " FROM databases ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(database_row)
            .collect()
    }

    async fn update_database_status(
        &self,
        id: &InstanceId,
        status: DatabaseStatus,
        port: Option<u16>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE databases SET status = ?, port = COALESCE(?, port) WHERE id = ?")
            .bind(status.as_str())
            .bind(port.map(i64::from))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_database(&self, id: &InstanceId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM backup_schedules WHERE database_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM databases WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_idle_timeout(&self, id: &InstanceId, seconds: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE databases SET idle_timeout_seconds = ? WHERE id = ?")
            .bind(i64::from(seconds))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_last_wake(&self, id: &InstanceId, ms: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE databases SET last_wake_ms = ? WHERE id = ?")
            .bind(i64::from(ms))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_allowed_cidrs(
        &self,
        id: &InstanceId,
        cidrs: &AllowList,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE databases SET allowed_cidrs = ? WHERE id = ?")
            .bind(stored_cidrs(cidrs))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_start(
        &self,
        id: &InstanceId,
        failure: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let query = match failure {
            Some((reason, at)) => sqlx::query(
                "UPDATE databases SET last_error = ?, last_error_at = ?, \
                 failed_starts = failed_starts + 1 WHERE id = ?",
            )
            .bind(reason)
            .bind(at),
            None => sqlx::query(
                "UPDATE databases SET last_error = NULL, last_error_at = NULL, failed_starts = 0 \
                 WHERE id = ?",
            ),
        };
        query.bind(id.as_str()).execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, tenant_id, database, role, expires_at, revoked_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.tenant_id)
        .bind(&t.database)
        .bind(t.role.as_str())
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(
            "SELECT id, tenant_id, database, role, expires_at, revoked_at, created_at FROM tokens WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(token_row)
        .transpose()
    }

    async fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_database_tokens(
        &self,
        tenant_id: &str,
        database: &str,
        at: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "UPDATE tokens SET revoked_at = ? WHERE tenant_id = ? AND database = ? \
             AND revoked_at IS NULL RETURNING id",
        )
        .bind(at)
        .bind(tenant_id)
        .bind(database)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > ?")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }

    async fn insert_backup(&self, b: &BackupRecord) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO backups (tenant_id, database_id, database_name, engine, plan, name, kind, \
             status, reason, format, hot, parent_id, object_key, plain_bytes, stored_bytes, sha256, \
             position, data_version, created_at, started_at, completed_at, expires_at, id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        bind_backup(query, b).bind(&b.id).execute(&self.pool).await.map_err(conflict_or)?;
        Ok(())
    }

    async fn update_backup(&self, b: &BackupRecord) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE backups SET tenant_id = ?, database_id = ?, database_name = ?, engine = ?, \
             plan = ?, name = ?, kind = ?, status = ?, reason = ?, format = ?, hot = ?, \
             parent_id = ?, object_key = ?, plain_bytes = ?, stored_bytes = ?, sha256 = ?, \
             position = ?, data_version = ?, created_at = ?, started_at = ?, completed_at = ?, \
             expires_at = ? WHERE id = ?",
        );
        bind_backup(query, b).bind(&b.id).execute(&self.pool).await?;
        Ok(())
    }

    async fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        sqlx::query(concat!("SELECT ", backup_columns!(), " FROM backups WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(backup_row)
            .transpose()
    }

    async fn list_backups(
        &self,
        tenant_id: &str,
        database_name: Option<&str>,
    ) -> Result<Vec<BackupRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            backup_columns!(),
            " FROM backups WHERE tenant_id = ? AND (? IS NULL OR database_name = ?) \
             ORDER BY created_at DESC, rowid DESC"
        ))
        .bind(tenant_id)
        .bind(database_name)
        .bind(database_name)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(backup_row)
        .collect()
    }

    async fn backups_with_status(
        &self,
        status: BackupStatus,
    ) -> Result<Vec<BackupRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            backup_columns!(),
            " FROM backups WHERE status = ? ORDER BY created_at, rowid"
        ))
        .bind(status.as_str())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(backup_row)
        .collect()
    }

    async fn delete_backup(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM backups WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn schedule(
        &self,
        database_id: &InstanceId,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT every, keep_count, keep_days, last_run_at, last_result, last_backup_id \
             FROM backup_schedules WHERE database_id = ?",
        )
        .bind(database_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let small = |name: &str| -> Result<u32, StoreError> {
            u32::try_from(row.try_get::<i64, _>(name)?)
                .map_err(|_| StoreError::Corrupt(format!("schedule {name}")))
        };
        Ok(Some(ScheduleRecord {
            database_id: database_id.clone(),
            every: row.try_get("every")?,
            keep_count: small("keep_count")?,
            keep_days: small("keep_days")?,
            last_run_at: row.try_get("last_run_at")?,
            last_result: row.try_get("last_result")?,
            last_backup_id: row.try_get("last_backup_id")?,
        }))
    }

    async fn put_schedule(&self, s: &ScheduleRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO backup_schedules (database_id, every, keep_count, keep_days, last_run_at, \
             last_result, last_backup_id) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (database_id) DO UPDATE SET every = excluded.every, \
             keep_count = excluded.keep_count, keep_days = excluded.keep_days, \
             last_run_at = excluded.last_run_at, last_result = excluded.last_result, \
             last_backup_id = excluded.last_backup_id",
        )
        .bind(s.database_id.as_str())
        .bind(&s.every)
        .bind(i64::from(s.keep_count))
        .bind(i64::from(s.keep_days))
        .bind(s.last_run_at)
        .bind(&s.last_result)
        .bind(&s.last_backup_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_archived_log(&self, log: &ArchivedLog) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO log_archive (database_id, timeline, name, \"offset\", plain_bytes, \
             stored_bytes, sha256, object_key, archived_at, modified, continued_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(log.database_id.as_str())
        .bind(&log.timeline)
        .bind(&log.name)
        .bind(i64::try_from(log.offset).unwrap_or(i64::MAX))
        .bind(i64::try_from(log.plain_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(log.stored_bytes).unwrap_or(i64::MAX))
        .bind(&log.sha256)
        .bind(&log.object_key)
        .bind(log.archived_at)
        .bind(log.modified)
        .bind(&log.continued_by)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn archived_logs(
        &self,
        database_id: &InstanceId,
        timeline: &str,
    ) -> Result<Vec<ArchivedLog>, StoreError> {
        let all = self.all_archived_logs(database_id).await?;
        Ok(all.into_iter().filter(|l| l.timeline == timeline).collect())
    }

    async fn archived_log_databases(&self) -> Result<Vec<InstanceId>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT database_id FROM log_archive")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.try_get("database_id")?;
                InstanceId::new(id.clone())
                    .map_err(|_| StoreError::Corrupt(format!("instance id {id:?}")))
            })
            .collect()
    }

    async fn delete_archived_log(&self, log: &ArchivedLog) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM log_archive WHERE database_id = ? AND timeline = ? AND name = ? \
             AND \"offset\" = ?",
        )
        .bind(log.database_id.as_str())
        .bind(&log.timeline)
        .bind(&log.name)
        .bind(i64::try_from(log.offset).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn all_archived_logs(
        &self,
        database_id: &InstanceId,
    ) -> Result<Vec<ArchivedLog>, StoreError> {
        let rows = sqlx::query(concat!(
            archived_log_columns!(),
            " WHERE database_id = ? ORDER BY timeline, length(name), name, \"offset\""
        ))
        .bind(database_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| archived_log(database_id, row)).collect()
    }

    async fn backup_key(&self, database_id: &InstanceId) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT wrapped FROM backup_keys WHERE database_id = ?")
            .bind(database_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("wrapped").map_err(StoreError::from)).transpose()
    }

    async fn ensure_backup_key(
        &self,
        database_id: &InstanceId,
        wrapped: &[u8],
        at: i64,
    ) -> Result<Vec<u8>, StoreError> {
        sqlx::query(
            "INSERT INTO backup_keys (database_id, wrapped, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (database_id) DO NOTHING",
        )
        .bind(database_id.as_str())
        .bind(wrapped)
        .bind(at)
        .execute(&self.pool)
        .await?;
        self.backup_key(database_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("backup key vanished".into()))
    }
}

fn archived_log(
    database_id: &InstanceId,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<ArchivedLog, StoreError> {
    let count = |name: &str| -> Result<u64, StoreError> {
        u64::try_from(row.try_get::<i64, _>(name)?)
            .map_err(|_| StoreError::Corrupt(format!("log {name}")))
    };
    Ok(ArchivedLog {
        database_id: database_id.clone(),
        timeline: row.try_get("timeline")?,
        name: row.try_get("name")?,
        offset: count("offset")?,
        modified: row.try_get("modified")?,
        continued_by: row.try_get("continued_by")?,
        plain_bytes: count("plain_bytes")?,
        stored_bytes: count("stored_bytes")?,
        sha256: row.try_get("sha256")?,
        object_key: row.try_get("object_key")?,
        archived_at: row.try_get("archived_at")?,
    })
}

#[cfg(test)]
mod tests;
