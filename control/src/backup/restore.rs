//! Restoring into a new database (a branch of another's data) and undeleting a deleted one,
//! which is a restore of its final backup under its own name.

use crate::service::{
    ControlService, IssuedToken, NewDatabase, RestoreFrom, ServiceError, UNDO_WINDOW, now,
    parse_time,
};
use crate::store::{BackupKind, BackupRecord, BackupStatus, Database, Tenant};

impl ControlService {
    /// The backup a new database is restored from.
    pub(crate) async fn restore_source(
        &self,
        tenant: &Tenant,
        from: &RestoreFrom,
    ) -> Result<(BackupRecord, Option<i64>), ServiceError> {
        let invalid = |message: String| ServiceError::Invalid { field: "restore", message };
        match (from.backup.as_deref(), from.database.as_deref(), from.time.as_deref()) {
            (Some(id), None, None) => Ok((self.restorable(tenant, id, None).await?, None)),
            (None, Some(name), Some(time)) => {
                let until = parse_time(time).map_err(invalid)?;
                Ok((self.pitr_base(tenant, name, until).await?, Some(until)))
            }
            (None, Some(name), None) => {
                let backups = self.store().list_backups(&tenant.id, Some(name)).await?;
                let newest = backups
                    .into_iter()
                    .find(|b| b.status == BackupStatus::Completed)
                    .ok_or_else(|| {
                        ServiceError::NotFound(format!(
                            "database {name:?} has no completed backup to restore"
                        ))
                    })?;
                Ok((newest, None))
            }
            _ => Err(invalid(
                "restore takes {\"backup\": id} or {\"database\": name} (with \"time\" for a \
                 point in time)"
                    .into(),
            )),
        }
    }

    /// Fills a new database's instance from a backup before its first start.
    pub(crate) async fn restore_new(
        &self,
        db: &Database,
        backup: &BackupRecord,
        until: Option<i64>,
    ) -> Result<(), ServiceError> {
        let (held, db) = self.lifecycle().hold(db).await.map_err(|e| {
            ServiceError::Internal(format!("holding a new database for its restore: {e}"))
        })?;
        self.restore_to_held(&held, &db, backup, until).await?;
        Ok(())
    }

    /// Brings back a database deleted within [`UNDO_WINDOW`] from its final backup, suspended:
    /// no compute runs until a client connects. Returns it with a new token scoped to it (the
    /// deletion revoked the old ones).
    pub async fn undelete_database(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<(Database, IssuedToken), ServiceError> {
        if self.store().database(&tenant.id, name).await?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "a database named {name:?} exists; only a deleted one can be undeleted"
            )));
        }
        let at = now();
        let kept = self
            .store()
            .list_backups(&tenant.id, Some(name))
            .await?
            .into_iter()
            .find(|b| {
                b.kind == BackupKind::Final
                    && b.status == BackupStatus::Completed
                    && b.expires_at.is_some_and(|t| t > at)
            })
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no deleted database named {name:?} can be undeleted (deleted databases are \
                     kept {} days, unless deleted with now=true)",
                    UNDO_WINDOW / 86_400
                ))
            })?;
        let req = NewDatabase {
            name: name.into(),
            lazy: true,
            restore: Some(RestoreFrom { backup: Some(kept.id.clone()), ..RestoreFrom::default() }),
            ..NewDatabase::default()
        };
        let (db, token) = self.create_database(tenant, &req).await?;
        // Used: the database holds its data again, and a later deletion keeps its own. The
        // backup stays, as an ordinary one its tenant deletes when they wish.
        let mut used = kept;
        used.expires_at = None;
        self.store().update_backup(&used).await?;
        tracing::info!(tenant = %tenant.name, db = %name, backup = %used.id, "database undeleted");
        Ok((db, token))
    }
}
