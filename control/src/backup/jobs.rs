//! Backup and restore jobs. A backup is a durable row: `queued` until the host's queue
//! reaches it, `running` under its database's lock (no start, suspend or delete meanwhile),
//! then `completed` with its object's size and checksum, or `failed` with the reason. A row is
//! `completed` only once its object and manifest are stored in full; a control that stops
//! mid-backup finds it `running` at its next start and marks it failed.

use std::sync::Arc;

use dormouse_engines::backup::Format;
use dormouse_proxy::control::ControlEvent;
use object_store::ObjectStoreExt;
use serde_json::json;

use super::crypto::CryptoError;
use super::pipeline::{self, Expected, PipelineError, Progress};
use super::{manifest_path, object_path};
use crate::lifecycle::{Attempt, Held, LifecycleError, spec};
use crate::service::{ControlService, ServiceError, now, random_hex};
use crate::store::{
    BackupKind, BackupRecord, BackupStatus, Database, DatabaseStatus, StoreError, Tenant,
};
use dormouse_engines::InstanceState;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Refused(String),
}

impl From<BackupError> for ServiceError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store(e) => e.into(),
            BackupError::Pipeline(PipelineError::Checksum) => ServiceError::Corrupt(e.to_string()),
            BackupError::Pipeline(PipelineError::Io(ref io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                ServiceError::Corrupt(e.to_string())
            }
            BackupError::Refused(m) => ServiceError::RestoreFailed(m),
            other => ServiceError::Unavailable(other.to_string()),
        }
    }
}

/// Longest backup name.
const MAX_NAME: usize = 100;

impl ControlService {
    /// Queues a backup of the tenant's database `name`; it runs when the host's queue reaches
    /// it (see [`Self::spawn_backup`]).
    pub async fn request_backup(
        self: &Arc<Self>,
        tenant: &Tenant,
        name: &str,
        label: Option<String>,
        kind: BackupKind,
        incremental: bool,
    ) -> Result<BackupRecord, ServiceError> {
        if let Some(label) = &label
            && (label.chars().count() > MAX_NAME || label.chars().any(char::is_control))
        {
            return Err(ServiceError::Invalid {
                field: "name",
                message: format!(
                    "a backup's name is at most {MAX_NAME} characters, without control characters"
                ),
            });
        }
        let db = self.database(tenant, name).await?;
        if matches!(db.status, DatabaseStatus::Deleting) {
            return Err(ServiceError::Conflict(format!("database {name:?} is being deleted")));
        }
        // One at a time per database: a second would copy the same data again.
        let _checking = self.backups().requests.lock().await;
        let pending =
            self.store().list_backups(&tenant.id, Some(name)).await?.into_iter().find(|b| {
                b.database_id == db.id
                    && matches!(b.status, BackupStatus::Queued | BackupStatus::Running)
            });
        if let Some(pending) = pending {
            return Err(ServiceError::Conflict(format!(
                "backup {} of {name:?} is {}; a new one can be asked for once it has finished",
                pending.id, pending.status
            )));
        }
        let mut record = new_record(&db, label, kind, BackupStatus::Queued);
        if incremental {
            // On top of the newest backup it can build on; a full one if there is none (or if
            // the database is not running when the job starts).
            record.parent_id = self.incremental_parent(&db).await?.map(|p| p.id);
        }
        self.store().insert_backup(&record).await?;
        tracing::info!(db = %db.name, backup = %record.id, %kind, "backup queued");
        self.spawn_backup(record.id.clone());
        Ok(record)
    }

    /// Runs a queued backup in the background, when the host's queue has room.
    pub fn spawn_backup(self: &Arc<Self>, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.run_backup(&id).await {
                tracing::error!(backup = %id, error = %e, "backup job");
            }
        });
    }

    /// Takes the queued backup `id` once the queue lets it; returns its final row.
    pub async fn run_backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        let queue = self.backups().queue.clone();
        let Ok(_permit) = queue.acquire_owned().await else { return Ok(None) };
        let Some(mut record) = self.store().backup(id).await? else { return Ok(None) };
        if record.status != BackupStatus::Queued {
            return Ok(Some(record));
        }
        let result = self.take_backup(&mut record).await;
        self.finish(&mut record, result).await?;
        Ok(Some(record))
    }

    /// Marks a backup `running`, runs it, and records how it ended.
    async fn take_backup(&self, record: &mut BackupRecord) -> Result<(), BackupError> {
        let db = self
            .store()
            .database(&record.tenant_id, &record.database_name)
            .await?
            .filter(|db| db.id == record.database_id)
            .ok_or_else(|| BackupError::Refused("the database was deleted".into()))?;
        let (held, db) = self.lifecycle().hold(&db).await?;
        if matches!(db.status, DatabaseStatus::Deleting) {
            return Err(BackupError::Refused("the database is being deleted".into()));
        }
        self.take_backup_held(&held, &db, record).await
    }

    /// Takes a backup of `db`, whose lock is held, into `record`: hot when its server runs,
    /// else cold from its stopped directory (no server is started).
    async fn take_backup_held(
        &self,
        _held: &Held,
        db: &Database,
        record: &mut BackupRecord,
    ) -> Result<(), BackupError> {
        record.status = BackupStatus::Running;
        record.started_at = Some(now());
        self.store().update_backup(record).await?;
        let agent = self.lifecycle().agent().clone();
        let progress = Progress::with_total(agent.data_size(&db.id).await);
        self.backups().progress.insert(record.id.clone(), progress.clone());
        let spec = spec(db);
        // An incremental backup needs its parent still there and the server running.
        let since = match &record.parent_id {
            Some(_) if !matches!(agent.state(&db.id), InstanceState::Running { .. }) => None,
            Some(parent) => self
                .incremental_parent(db)
                .await?
                .filter(|p| &p.id == parent)
                .and_then(|p| p.position.and_then(|pos| pos.lsn)),
            None => None,
        };
        if since.is_none() {
            record.parent_id = None;
        }
        let result = async {
            record.data_version = agent.data_version(&spec).await.ok();
            let key = self.backups().key(self.store().as_ref(), &db.id).await?;
            let path = object_path(record);
            let produce = |mut pipe| {
                let (agent, spec) = (agent.clone(), spec.clone());
                async move {
                    let taken = match since {
                        Some(lsn) => agent.backup_incremental(&spec, lsn, &mut pipe).await,
                        None => agent.backup(&spec, &mut pipe).await,
                    };
                    taken.map_err(|e| e.to_string())
                }
            };
            let objects = self.backups().objects().clone();
            let (taken, stored) =
                pipeline::upload(objects, path.clone(), key, record.id.clone(), progress, produce)
                    .await?;
            record.format = Some(taken.format);
            record.hot = taken.hot;
            record.position = Some(taken.position);
            record.object_key = Some(path.to_string());
            record.plain_bytes = stored.plain_bytes;
            record.stored_bytes = stored.stored_bytes;
            record.sha256 = Some(stored.sha256);
            self.put_manifest(record).await
        }
        .await;
        self.backups().progress.remove(&record.id);
        result
    }

    /// The backup an incremental backup of `db` builds on: its newest completed hot MariaDB
    /// backup with a log sequence number, taken since its data was last replaced by a restore
    /// (a restored server's log sequence numbers are another history's).
    async fn incremental_parent(&self, db: &Database) -> Result<Option<BackupRecord>, StoreError> {
        if db.engine != dormouse_engines::EngineKind::Mysql {
            return Ok(None);
        }
        let backups = self.store().list_backups(&db.tenant_id, Some(&db.name)).await?;
        Ok(backups
            .into_iter()
            .filter(|b| b.database_id == db.id)
            .take_while(|b| b.kind != BackupKind::PreRestore)
            .find(|b| {
                b.status == BackupStatus::Completed
                    && b.format == Some(Format::Xbstream)
                    && b.position.as_ref().is_some_and(|p| p.lsn.is_some())
            }))
    }

    /// `backup` and the backups it builds on, the full one first.
    async fn chain(&self, backup: &BackupRecord) -> Result<Vec<BackupRecord>, BackupError> {
        let mut chain = vec![backup.clone()];
        while let Some(parent) = chain.last().and_then(|b| b.parent_id.clone()) {
            let found = self.store().backup(&parent).await?;
            let parent =
                found.filter(|p| p.status == BackupStatus::Completed).ok_or_else(|| {
                    BackupError::Refused(format!(
                        "backup {} builds on backup {parent}, which is gone or incomplete",
                        backup.id
                    ))
                })?;
            if chain.len() > 1000 || chain.iter().any(|b| b.id == parent.id) {
                return Err(BackupError::Refused(format!("backup {}'s chain loops", backup.id)));
            }
            chain.push(parent);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Writes the manifest beside the data: what it is, and the SHA-256 it must have.
    async fn put_manifest(&self, record: &BackupRecord) -> Result<(), BackupError> {
        let manifest = json!({
            "version": 1,
            "id": record.id,
            "database": record.database_name,
            "database_id": record.database_id,
            "engine": record.engine,
            "format": record.format,
            "hot": record.hot,
            "parent": record.parent_id,
            "position": record.position,
            "encryption": "aes-256-gcm, 1 MiB chunks, per-database key",
            "compression": "zstd",
            "objects": [{
                "key": record.object_key,
                "size": record.stored_bytes,
                "sha256": record.sha256,
                "plain_bytes": record.plain_bytes,
            }],
        });
        let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let objects = self.backups().objects();
        if let Err(e) = objects.put(&manifest_path(record), body.into()).await {
            tracing::warn!(error = %e, "writing a backup's manifest");
            let _ = objects.delete(&object_path(record)).await;
            return Err(PipelineError::StoreWrite(std::io::Error::other(e)).into());
        }
        Ok(())
    }

    /// Records how a backup ended.
    async fn finish(
        &self,
        record: &mut BackupRecord,
        result: Result<(), BackupError>,
    ) -> Result<(), StoreError> {
        record.completed_at = Some(now());
        match result {
            Ok(()) => {
                record.status = BackupStatus::Completed;
                record.reason = None;
                tracing::info!(
                    db = %record.database_name,
                    backup = %record.id,
                    hot = record.hot,
                    bytes = record.plain_bytes,
                    stored = record.stored_bytes,
                    "backup completed"
                );
            }
            Err(e) => {
                record.status = BackupStatus::Failed;
                record.reason = Some(e.to_string());
                tracing::warn!(db = %record.database_name, backup = %record.id, error = %e, "backup failed");
            }
        }
        self.store().update_backup(record).await
    }

    /// Takes a backup of `db` now, under its held lock, outside the queue (the final backup
    /// of a deletion, the copy an in-place restore keeps): the job waits for nothing else.
    pub async fn backup_now(
        &self,
        held: &Held,
        db: &Database,
        kind: BackupKind,
    ) -> Result<BackupRecord, ServiceError> {
        let mut record = new_record(db, None, kind, BackupStatus::Running);
        self.store().insert_backup(&record).await?;
        let result = self.take_backup_held(held, db, &mut record).await;
        // The database stops changing here (it is deleted, or its data replaced): what its log
        // holds since the last archive pass is archived now, for restores up to this moment.
        // A backup in the queue leaves that to the next pass, within 30 s.
        if result.is_ok()
            && let Err(e) = self.archive_logs_held(held, db).await
        {
            tracing::warn!(db = %db.name, error = %e, "archiving the log");
        }
        let failed = result.as_ref().err().map(ToString::to_string);
        self.finish(&mut record, result).await?;
        match failed {
            None => Ok(record),
            Some(reason) => Err(ServiceError::Unavailable(format!("the backup failed: {reason}"))),
        }
    }

    /// A tenant's backup by id; another tenant's is "not found", as if it did not exist.
    pub async fn backup_of(&self, tenant: &Tenant, id: &str) -> Result<BackupRecord, ServiceError> {
        self.store()
            .backup(id)
            .await?
            .filter(|b| b.tenant_id == tenant.id)
            .ok_or_else(|| ServiceError::NotFound(format!("no backup with id {id:?}")))
    }

    /// Deletes a finished backup and its objects. A queued or running one is refused.
    pub async fn delete_backup(&self, tenant: &Tenant, id: &str) -> Result<(), ServiceError> {
        let backup = self.backup_of(tenant, id).await?;
        if matches!(backup.status, BackupStatus::Queued | BackupStatus::Running) {
            return Err(ServiceError::Conflict(format!(
                "backup {id} is {}; delete it once it has finished",
                backup.status
            )));
        }
        let children: Vec<String> = self
            .store()
            .list_backups(&tenant.id, Some(&backup.database_name))
            .await?
            .into_iter()
            .filter(|b| b.parent_id.as_deref() == Some(id))
            .map(|b| b.id)
            .collect();
        if !children.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "incremental backups build on backup {id} ({}); delete them first",
                children.join(", ")
            )));
        }
        self.remove_backup_objects(&backup).await?;
        self.store().delete_backup(id).await?;
        tracing::info!(backup = %id, db = %backup.database_name, "backup deleted");
        Ok(())
    }

    async fn remove_backup_objects(&self, backup: &BackupRecord) -> Result<(), ServiceError> {
        let objects = self.backups().objects();
        for path in [object_path(backup), manifest_path(backup)] {
            match objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%path, error = %e, "deleting from the backup store");
                    return Err(ServiceError::Unavailable(
                        "the backup object store could not delete the backup (details in the \
                         control log)"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// After a restart: a backup that was running when control stopped is failed (its partial
    /// objects removed); queued ones are queued again.
    pub async fn recover_backups(self: &Arc<Self>) -> Result<(), ServiceError> {
        for mut backup in self.store().backups_with_status(BackupStatus::Running).await? {
            let _ = self.remove_backup_objects(&backup).await;
            let reason = "control stopped while the backup was running; nothing of it was kept";
            self.finish(&mut backup, Err(BackupError::Refused(reason.into()))).await?;
        }
        for backup in self.store().backups_with_status(BackupStatus::Queued).await? {
            self.spawn_backup(backup.id);
        }
        Ok(())
    }

    /// The backup a restore for `tenant` reads, checked to be complete and of `engine`.
    pub async fn restorable(
        &self,
        tenant: &Tenant,
        id: &str,
        engine: Option<dormouse_engines::EngineKind>,
    ) -> Result<BackupRecord, ServiceError> {
        let backup = self.backup_of(tenant, id).await?;
        if backup.status != BackupStatus::Completed {
            return Err(ServiceError::Conflict(format!(
                "backup {id} is {}; only a completed backup can be restored",
                backup.status
            )));
        }
        if let Some(engine) = engine
            && engine != backup.engine
        {
            return Err(ServiceError::Invalid {
                field: "restore",
                message: format!(
                    "backup {id} is of a {} database; it cannot be restored into a {engine} database",
                    backup.engine
                ),
            });
        }
        Ok(backup)
    }

    /// Replaces the stopped instance's data with `backup`'s, `db`'s lock being held. The data
    /// is checked as it streams; the old data stays unless the whole backup was good.
    pub async fn restore_held(
        &self,
        _held: &Held,
        db: &Database,
        backup: &BackupRecord,
    ) -> Result<(), BackupError> {
        let mut chain = self.chain(backup).await?;
        let total = chain.iter().map(|b| b.stored_bytes).sum();
        let progress = Progress::with_total(total);
        let tracked = restore_progress_key(db);
        self.backups().progress.insert(tracked.clone(), progress.clone());
        let result = self.restore_chain(db, &mut chain, progress).await;
        self.backups().progress.remove(&tracked);
        result
    }

    async fn restore_chain(
        &self,
        db: &Database,
        chain: &mut Vec<BackupRecord>,
        progress: Arc<Progress>,
    ) -> Result<(), BackupError> {
        let full = chain.remove(0);
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        let key = self.backups().key(self.store().as_ref(), &full.database_id).await?;
        // Incremental backups are unpacked first; the restore of the full one applies them.
        for increment in chain.iter() {
            let consume = |mut input| {
                let (agent, spec) = (agent.clone(), spec.clone());
                async move { agent.stage_increment(&spec, &mut input).await.map_err(|e| e.to_string()) }
            };
            let sha256 = increment.sha256.clone().unwrap_or_default();
            let expected = Expected { stored_bytes: increment.stored_bytes, sha256 };
            pipeline::download(
                self.backups().objects().clone(),
                object_path(increment),
                key.clone(),
                increment.id.clone(),
                expected,
                progress.clone(),
                consume,
            )
            .await?;
        }
        let backup = &full;
        let (Some(format), Some(sha256)) = (backup.format, backup.sha256.clone()) else {
            return Err(BackupError::Refused(format!("backup {} holds no data", backup.id)));
        };
        let expected = Expected { stored_bytes: backup.stored_bytes, sha256 };
        let source = backup.database_name.clone();
        let consume = |mut input| async move {
            agent.restore(&spec, format, &source, &mut input).await.map_err(|e| e.to_string())
        };
        let objects = self.backups().objects().clone();
        pipeline::download(
            objects,
            object_path(backup),
            key,
            backup.id.clone(),
            expected,
            progress,
            consume,
        )
        .await?;
        tracing::info!(db = %db.name, backup = %backup.id, format = format.as_str(), "restored");
        Ok(())
    }

    /// Restores `backup` over the tenant's database `name`. What it held is first kept as a
    /// backup (so the restore can itself be undone); a running database is stopped for it
    /// and started again after, a suspended one stays suspended.
    pub async fn restore_in_place(
        &self,
        tenant: &Tenant,
        name: &str,
        point: RestorePoint<'_>,
    ) -> Result<(Database, Option<BackupRecord>), ServiceError> {
        let db = self.database(tenant, name).await?;
        let (backup, until) = match point {
            RestorePoint::Backup(id) => (self.restorable(tenant, id, Some(db.engine)).await?, None),
            RestorePoint::Time(until) => (self.pitr_base(tenant, name, until).await?, Some(until)),
        };
        let backup_id = backup.id.clone();
        let (held, db) = self.lifecycle().hold(&db).await.map_err(lifecycle_error)?;
        if matches!(db.status, DatabaseStatus::Deleting | DatabaseStatus::Creating) {
            return Err(ServiceError::Conflict(format!(
                "database {name:?} is {}; it cannot be restored now",
                db.status
            )));
        }
        let was_running = db.status == DatabaseStatus::Running;
        let event = |database: &str| ControlEvent::Suspending {
            tenant: tenant.id.clone(),
            database: database.into(),
        };
        let db = self
            .lifecycle()
            .suspend_held(&held, &db, || self.emit(&event(name)))
            .await
            .map_err(lifecycle_error)?;
        // A database created lazily and never started holds nothing to keep.
        let provisioned = self.lifecycle().agent().data_size(&db.id).await > 0;
        let outcome = async {
            let kept = match provisioned {
                true => Some(self.backup_now(&held, &db, BackupKind::PreRestore).await?),
                false => None,
            };
            if let Err(e) = self.restore_to_held(&held, &db, &backup, until).await {
                // Put back what it held: a restore that fails changes nothing.
                if let Some(kept) = &kept
                    && let Err(undo) = self.restore_held(&held, &db, kept).await
                {
                    tracing::error!(db = %name, kept = %kept.id, error = %undo, "undoing a failed restore");
                }
                return Err(e.into());
            }
            // A MySQL server restored from a backup starts its binary log again: a restore to a
            // later time starts from a copy of this data, not from one of the old timeline.
            if db.engine == dormouse_engines::EngineKind::Mysql {
                self.backup_now(&held, &db, BackupKind::PostRestore).await?;
            }
            Ok::<_, ServiceError>(kept)
        }
        .await;
        drop(held);
        self.emit(&ControlEvent::Changed { tenant: tenant.id.clone(), database: name.into() });
        if was_running && let Err(e) = self.lifecycle().start(&db, Attempt::Now).await {
            tracing::warn!(db = %name, error = %e, "starting a database after its restore");
        }
        let kept = outcome?;
        let kept_id = kept.as_ref().map(|k| k.id.as_str()).unwrap_or("none");
        tracing::info!(db = %name, backup = %backup_id, kept = kept_id, "restored in place");
        Ok((self.database(tenant, name).await?, kept))
    }
}

/// What an in-place restore goes back to.
#[derive(Debug, Clone, Copy)]
pub enum RestorePoint<'a> {
    /// A backup, by id.
    Backup(&'a str),
    /// A second in the database's past (MySQL: a backup, then its log up to then; Redis: its
    /// archived append-only file, cut then).
    Time(i64),
}

/// Under which key a restore into `db` reports its progress.
pub fn restore_progress_key(db: &Database) -> String {
    format!("restore:{}", db.id)
}

fn lifecycle_error(e: LifecycleError) -> ServiceError {
    match e {
        LifecycleError::Gone(_) => ServiceError::NotFound("the database no longer exists".into()),
        other => ServiceError::Internal(other.to_string()),
    }
}

/// A new backup row of `db`.
fn new_record(
    db: &Database,
    name: Option<String>,
    kind: BackupKind,
    status: BackupStatus,
) -> BackupRecord {
    BackupRecord {
        id: format!("b-{}", random_hex(8)),
        tenant_id: db.tenant_id.clone(),
        database_id: db.id.clone(),
        database_name: db.name.clone(),
        engine: db.engine,
        plan: db.plan.clone(),
        name,
        kind,
        status,
        reason: None,
        format: None::<Format>,
        hot: false,
        parent_id: None,
        object_key: None,
        plain_bytes: 0,
        stored_bytes: 0,
        sha256: None,
        position: None,
        data_version: None,
        created_at: now(),
        started_at: None,
        completed_at: None,
        expires_at: None,
    }
}
