//! Point-in-time recovery for MySQL databases: every closed binary log file is archived
//! (sealed like a backup) after each backup and at every schedule pass, and a restore to a
//! time restores the newest backup taken before it, then replays the archived log from the
//! backup's position up to that time. The log's resolution is a second: a restore to T keeps
//! every change stamped T or earlier and none after.

use std::collections::HashSet;

use dormouse_engines::EngineKind;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::jobs::BackupError;
use super::pipeline::{self, Expected, Progress};
use crate::lifecycle::{Held, spec};
use crate::service::{ControlService, ServiceError, now};
use crate::store::{ArchivedLog, BackupRecord, BackupStatus, Database, Tenant};

/// Where an archived log file lives.
fn log_path(db: &Database, timeline: &str, name: &str) -> ObjectPath {
    ObjectPath::from(format!("{}/{}/logs/{timeline}/{name}.zst.enc", db.tenant_id, db.id))
}

/// What seals a log file: bound to its database, timeline and name.
fn log_object(database_id: &str, timeline: &str, name: &str) -> String {
    format!("{database_id}/{timeline}/{name}")
}

impl ControlService {
    /// Archives the database's closed log files not archived yet, its lock being held.
    /// Returns how many it archived.
    pub async fn archive_logs_held(
        &self,
        _held: &Held,
        db: &Database,
    ) -> Result<usize, BackupError> {
        if db.engine != EngineKind::Mysql {
            return Ok(0);
        }
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        let closed =
            agent.closed_logs(&spec).await.map_err(|e| BackupError::Refused(e.to_string()))?;
        let archived = self.store().archived_logs(&db.id, &closed.timeline).await?;
        // Files before the oldest one kept were pruned as useless (see
        // [`Self::prune_archived_logs`]); the instance keeps them a while, but not for this.
        let order = |name: &str| (name.len(), name.to_owned());
        let floor = archived.first().map(|l| order(&l.name));
        let archived: HashSet<String> = archived.into_iter().map(|l| l.name).collect();
        let key = self.backups().key(self.store().as_ref(), &db.id).await?;
        let mut count = 0;
        let wanted = |s: &&dormouse_engines::backup::LogSegment| {
            !archived.contains(&s.name) && floor.as_ref().is_none_or(|f| order(&s.name) > *f)
        };
        for segment in closed.segments.iter().filter(wanted) {
            let path = log_path(db, &closed.timeline, &segment.name);
            let object = log_object(db.id.as_str(), &closed.timeline, &segment.name);
            let name = segment.name.clone();
            let produce = |mut pipe| {
                let (agent, spec) = (agent.clone(), spec.clone());
                async move { agent.read_log(&spec, &name, &mut pipe).await.map_err(|e| e.to_string()) }
            };
            let objects = self.backups().objects().clone();
            let progress = Progress::with_total(segment.size);
            let (_, stored) =
                pipeline::upload(objects, path.clone(), key.clone(), object, progress, produce)
                    .await?;
            self.store()
                .insert_archived_log(&ArchivedLog {
                    database_id: db.id.clone(),
                    timeline: closed.timeline.clone(),
                    name: segment.name.clone(),
                    plain_bytes: stored.plain_bytes,
                    stored_bytes: stored.stored_bytes,
                    sha256: stored.sha256,
                    object_key: path.to_string(),
                    archived_at: now(),
                })
                .await?;
            count += 1;
        }
        if count > 0 {
            tracing::debug!(db = %db.name, count, "archived log files");
        }
        Ok(count)
    }

    /// [`Self::archive_logs_held`], taking the database's lock.
    pub async fn archive_logs(&self, db: &Database) -> Result<usize, BackupError> {
        let (held, db) = self.lifecycle().hold(db).await?;
        self.archive_logs_held(&held, &db).await
    }

    /// Deletes archived log files no restore can use any more: those archived before the
    /// oldest remaining backup of their database was taken (every change in them is older than
    /// any backup a replay could start from), and all of a database with no backup left.
    pub async fn prune_archived_logs(&self) -> Result<usize, ServiceError> {
        let mut pruned = 0;
        for database_id in self.store().archived_log_databases().await? {
            let logs = self.store().all_archived_logs(&database_id).await?;
            let Some(first) = logs.first() else { continue };
            // The tenant is in the object key; backups are listed per tenant.
            let tenant_id = first.object_key.split('/').next().unwrap_or_default().to_owned();
            let oldest = self
                .store()
                .list_backups(&tenant_id, None)
                .await?
                .into_iter()
                .filter(|b| b.database_id == database_id && b.status == BackupStatus::Completed)
                .map(|b| b.created_at)
                .min();
            // A live database without a backup yet keeps its files for its first one (and
            // so they are not archived again and again).
            let live =
                self.store().list_databases(&tenant_id).await?.iter().any(|d| d.id == database_id);
            let prunable = |l: &&ArchivedLog| match oldest {
                Some(t) => l.archived_at < t,
                None => !live,
            };
            for log in logs.iter().filter(prunable) {
                let path = ObjectPath::from(log.object_key.as_str());
                match self.backups().objects().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting an archived log file");
                        continue;
                    }
                }
                self.store().delete_archived_log(log).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// The backup a restore of the tenant's database `name` to `until` starts from: the
    /// newest completed one taken at or before it, of a MySQL database. A database that still
    /// exists has its log archived first, so changes up to now can be replayed.
    pub async fn pitr_base(
        &self,
        tenant: &Tenant,
        name: &str,
        until: i64,
    ) -> Result<BackupRecord, ServiceError> {
        let invalid = |message: String| ServiceError::Invalid { field: "restore", message };
        if until > now() {
            return Err(invalid("the time to restore to is in the future".into()));
        }
        if let Some(db) = self.store().database(&tenant.id, name).await? {
            if db.engine != EngineKind::Mysql {
                return Err(invalid(format!(
                    "point-in-time recovery is for MySQL databases; {name:?} is {}: restore one \
                     of its backups",
                    db.engine
                )));
            }
            self.archive_logs(&db).await.map_err(ServiceError::from)?;
        }
        let backups = self.store().list_backups(&tenant.id, Some(name)).await?;
        let completed = || backups.iter().filter(|b| b.status == BackupStatus::Completed);
        if let Some(b) = completed().find(|b| b.engine != EngineKind::Mysql) {
            return Err(invalid(format!(
                "point-in-time recovery is for MySQL databases; {name:?} is {}: restore one of \
                 its backups",
                b.engine
            )));
        }
        let at = |b: &BackupRecord| b.position.as_ref().map_or(b.created_at, |p| p.time);
        match completed().find(|b| at(b) <= until) {
            Some(base) => Ok(base.clone()),
            None => match completed().next_back() {
                Some(oldest) => Err(invalid(format!(
                    "{name:?} cannot be restored to a time before its oldest backup ({})",
                    crate::api::routes::timestamp(at(oldest))
                ))),
                None => Err(ServiceError::NotFound(format!(
                    "database {name:?} has no completed backup to restore"
                ))),
            },
        }
    }

    /// Restores `base` into the stopped `db` (its lock held) and, for a MySQL backup, replays
    /// the archived log from the backup's position up to `until`: the server runs meanwhile,
    /// unreachable to clients (the database is held), and stops again after.
    pub async fn restore_to_held(
        &self,
        held: &Held,
        db: &Database,
        base: &BackupRecord,
        until: Option<i64>,
    ) -> Result<(), BackupError> {
        self.restore_held(held, db, base).await?;
        let (Some(until), Some(position)) = (until, base.position.as_ref()) else { return Ok(()) };
        if base.engine != EngineKind::Mysql {
            return Ok(());
        }
        let timeline = position.timeline.clone().unwrap_or_else(|| "0".into());
        let first = position.binlog_file.clone().unwrap_or_default();
        let logs: Vec<ArchivedLog> = self
            .store()
            .archived_logs(&base.database_id, &timeline)
            .await?
            .into_iter()
            .filter(|l| (l.name.len(), &l.name) >= (first.len(), &first))
            .collect();
        if logs.is_empty() {
            return Ok(());
        }
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        agent.start(&spec).await.map_err(|e| BackupError::Refused(e.to_string()))?;
        let replayed = async {
            let key = self.backups().key(self.store().as_ref(), &base.database_id).await?;
            for log in &logs {
                let expected =
                    Expected { stored_bytes: log.stored_bytes, sha256: log.sha256.clone() };
                let name = log.name.clone();
                let consume = |mut input| {
                    let (agent, spec) = (agent.clone(), spec.clone());
                    async move {
                        agent.stage_log(&spec, &name, &mut input).await.map_err(|e| e.to_string())
                    }
                };
                let object = log_object(base.database_id.as_str(), &timeline, &log.name);
                pipeline::download(
                    self.backups().objects().clone(),
                    ObjectPath::from(log.object_key.as_str()),
                    key.clone(),
                    object,
                    expected,
                    Progress::with_total(log.stored_bytes),
                    consume,
                )
                .await?;
            }
            agent
                .replay_logs(&spec, position, until, &base.database_name)
                .await
                .map_err(|e| BackupError::Refused(e.to_string()))
        }
        .await;
        if let Err(e) = agent.stop(&db.id).await {
            tracing::warn!(db = %db.name, error = %e, "stopping a server after its log replay");
        }
        replayed?;
        tracing::info!(db = %db.name, base = %base.id, files = logs.len(), until, "replayed to a point in time");
        Ok(())
    }
}
