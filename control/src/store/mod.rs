//! Control's state: tenants, databases (intent plus last observed status) and tokens. Every
//! read and write goes through the `Store` trait, so a PostgreSQL store can sit beside SQLite
//! without touching handlers.

mod sqlite;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use dormouse_engines::backup::{Format, Position};
use dormouse_engines::{EngineKind, InstanceId, Secret};
use dormouse_proxy::allowlist::AllowList;
use dormouse_proxy::claims::Role;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// Lifecycle of a database. Every change goes through `lifecycle::transition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseStatus {
    /// Row written, instance being provisioned and started.
    Creating,
    /// Should be running; the agent's observed state says whether it is.
    Running,
    /// Its server could not be started; the reconciler keeps trying.
    Failed,
    /// Stopped while idle (or created lazily); its data stays on disk and the next client
    /// connection wakes it.
    Suspended,
    /// Being destroyed; the reconciler finishes the job after a crash.
    Deleting,
}

impl DatabaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseStatus::Creating => "creating",
            DatabaseStatus::Running => "running",
            DatabaseStatus::Failed => "failed",
            DatabaseStatus::Deleting => "deleting",
            DatabaseStatus::Suspended => "suspended",
        }
    }
}

impl fmt::Display for DatabaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatabaseStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "creating" => DatabaseStatus::Creating,
            "running" => DatabaseStatus::Running,
            "failed" => DatabaseStatus::Failed,
            "deleting" => DatabaseStatus::Deleting,
            "suspended" => DatabaseStatus::Suspended,
            other => return Err(format!("unknown database status {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub id: InstanceId,
    pub tenant_id: String,
    pub name: String,
    pub engine: EngineKind,
    pub plan: String,
    pub status: DatabaseStatus,
    pub port: u16,
    pub password: Secret,
    pub created_at: i64,
    /// Seconds without client connections before it is suspended; 0 = never.
    pub idle_timeout_seconds: u32,
    /// How long the last wake took, from request to ready.
    pub last_wake_ms: Option<u32>,
    /// Set while its starts fail, cleared by the next start that succeeds.
    pub start_failure: Option<StartFailure>,
    /// Client addresses it accepts; empty = any.
    pub allowed_cidrs: AllowList,
    /// When it is deleted (the safe way), if it was created with an expiry.
    pub expires_at: Option<i64>,
}

/// Why a database's last start failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// The server's own words where it gave any.
    pub reason: String,
    pub at: i64,
    /// Starts that failed in a row, this one included.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub tenant_id: Option<String>,
    pub database: Option<String>,
    pub role: Role,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// Where a backup is in its life. Only `completed` backups can be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// Asked for through the API.
    Manual,
    /// By the database's schedule.
    Scheduled,
    /// When the database was deleted, so it can be undeleted.
    Final,
    /// Of the data an in-place restore replaced, so the restore can be undone.
    PreRestore,
    /// Of the data an in-place restore put back: where the database's new timeline starts,
    /// for restores to a later time.
    PostRestore,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($ty))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(BackupStatus {
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
});

text_enum!(BackupKind {
    Manual => "manual",
    Scheduled => "scheduled",
    Final => "final",
    PreRestore => "pre_restore",
    PostRestore => "post_restore",
});

/// One backup of one database; kept after the database is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: String,
    pub tenant_id: String,
    pub database_id: InstanceId,
    pub database_name: String,
    pub engine: EngineKind,
    pub plan: String,
    pub name: Option<String>,
    pub kind: BackupKind,
    pub status: BackupStatus,
    /// Why it failed.
    pub reason: Option<String>,
    pub format: Option<Format>,
    pub hot: bool,
    pub parent_id: Option<String>,
    pub object_key: Option<String>,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: Option<String>,
    pub position: Option<Position>,
    pub data_version: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// Deleted at this time whatever the retention (a final backup's undo window).
    pub expires_at: Option<i64>,
}

/// A database's backup schedule and retention, and what the schedule last did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub database_id: InstanceId,
    /// An interval (`1d`, `6h`) or a cron expression (`0 3 * * *`, UTC).
    pub every: String,
    /// Scheduled backups kept whatever their age ...
    pub keep_count: u32,
    /// ... and those younger than this, whatever their number.
    pub keep_days: u32,
    pub last_run_at: Option<i64>,
    /// `queued`, `unchanged`, or why it could not run.
    pub last_result: Option<String>,
    pub last_backup_id: Option<String>,
}

/// A change-log file, or a range of one, archived for point-in-time recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedLog {
    pub database_id: InstanceId,
    pub timeline: String,
    pub name: String,
    /// Where in the file the range starts: 0 for a whole file.
    pub offset: u64,
    /// When the file last changed, as the host saw it (a Redis base file: its data's time).
    pub modified: Option<i64>,
    /// A Redis base file: the first increment that continues it.
    pub continued_by: Option<String>,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    pub object_key: String,
    pub archived_at: i64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap liveness check for `/healthz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    async fn insert_database(&self, db: &Database) -> Result<(), StoreError>;
    async fn database(&self, tenant_id: &str, name: &str) -> Result<Option<Database>, StoreError>;
    async fn list_databases(&self, tenant_id: &str) -> Result<Vec<Database>, StoreError>;
    async fn all_databases(&self) -> Result<Vec<Database>, StoreError>;
    async fn update_database_status(
        &self,
        id: &InstanceId,
        status: DatabaseStatus,
        port: Option<u16>,
    ) -> Result<(), StoreError>;
    async fn delete_database(&self, id: &InstanceId) -> Result<(), StoreError>;
    async fn set_idle_timeout(&self, id: &InstanceId, seconds: u32) -> Result<(), StoreError>;
    async fn set_last_wake(&self, id: &InstanceId, ms: u32) -> Result<(), StoreError>;
    async fn set_allowed_cidrs(&self, id: &InstanceId, cidrs: &AllowList)
    -> Result<(), StoreError>;
    /// Records a failed start (`Some(reason, at)`, counting it) or a successful one (`None`).
    async fn record_start(
        &self,
        id: &InstanceId,
        failure: Option<(&str, i64)>,
    ) -> Result<(), StoreError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Marks a token revoked; false if it does not exist.
    async fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Revokes every token scoped to a database (when it is deleted, so a later database of the
    /// same name is not reachable with them); returns their ids.
    async fn revoke_database_tokens(
        &self,
        tenant_id: &str,
        database: &str,
        at: i64,
    ) -> Result<Vec<String>, StoreError>;
    /// Ids of revoked tokens that have not expired by `now`.
    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StoreError>;

    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError>;
    /// Writes every field of an existing backup.
    async fn update_backup(&self, backup: &BackupRecord) -> Result<(), StoreError>;
    async fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError>;
    /// A tenant's backups, of one database name if given, newest first.
    async fn list_backups(
        &self,
        tenant_id: &str,
        database_name: Option<&str>,
    ) -> Result<Vec<BackupRecord>, StoreError>;
    /// Every backup in `status`, oldest first (the queue, and recovery after a restart).
    async fn backups_with_status(
        &self,
        status: BackupStatus,
    ) -> Result<Vec<BackupRecord>, StoreError>;
    async fn delete_backup(&self, id: &str) -> Result<(), StoreError>;
    /// The database's schedule, if it was ever set or ran.
    async fn schedule(
        &self,
        database_id: &InstanceId,
    ) -> Result<Option<ScheduleRecord>, StoreError>;
    async fn put_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StoreError>;
    async fn insert_archived_log(&self, log: &ArchivedLog) -> Result<(), StoreError>;
    /// A database's archived log files of one timeline, oldest first, each file's ranges in
    /// order.
    async fn archived_logs(
        &self,
        database_id: &InstanceId,
        timeline: &str,
    ) -> Result<Vec<ArchivedLog>, StoreError>;
    /// Every database that has archived log files.
    async fn archived_log_databases(&self) -> Result<Vec<InstanceId>, StoreError>;
    /// A database's archived log files, every timeline.
    async fn all_archived_logs(
        &self,
        database_id: &InstanceId,
    ) -> Result<Vec<ArchivedLog>, StoreError>;
    async fn delete_archived_log(&self, log: &ArchivedLog) -> Result<(), StoreError>;
    /// The database's sealed backup key, if it has one.
    async fn backup_key(&self, database_id: &InstanceId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records the database's sealed key unless it has one already; returns the one it has.
    async fn ensure_backup_key(
        &self,
        database_id: &InstanceId,
        wrapped: &[u8],
        at: i64,
    ) -> Result<Vec<u8>, StoreError>;
}
