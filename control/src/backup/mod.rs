//! Backups and restores of tenants' databases: where they are stored, how they are sealed,
//! and the jobs that take and restore them.
//!
//! Reading order:
//! - [`storage`]: the object store (the data directory's `backups/`, or an S3 bucket).
//! - [`crypto`]: per-database keys and the encrypted stream format.
//! - [`pipeline`]: agent bytes → zstd → encryption → SHA-256 → object store, and back.
//! - [`jobs`]: the backup queue, durable states, restore into a new database and in place.
//! - [`restore`]: restoring into a new database, undeleting.
//! - [`pitr`]: archiving the change log (MySQL's binary log, Redis's append-only file) and
//!   restoring to a point in time.
//! - [`schedule`]: scheduled backups, retention, scheduled deletion.

pub mod crypto;
pub mod jobs;
pub mod pipeline;
pub mod pitr;
pub mod restore;
pub mod schedule;
pub mod storage;

use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use dormouse_engines::InstanceId;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio::sync::Semaphore;

use crate::store::{BackupRecord, Store};
use crypto::DataKey;
use pipeline::Progress;
pub use storage::{S3Config, StorageConfig};

/// The master key that seals every database's backup key, in the data directory.
pub const MASTER_KEY_FILE: &str = "backup.key";

/// How backups are kept and run.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub storage: StorageConfig,
    /// Backups that run at once on this host; the rest wait in the queue.
    pub concurrency: usize,
}

impl BackupConfig {
    /// Backups in the data directory's `backups/`, one at a time.
    pub fn local(data_dir: &Path) -> Self {
        Self { storage: StorageConfig::Local { dir: data_dir.join("backups") }, concurrency: 1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupSetupError {
    #[error("opening the backup store {where_}: {source}")]
    Store { where_: String, source: object_store::Error },
    #[error("reading the backup master key {path}: {source}")]
    MasterKey { path: String, source: std::io::Error },
}

/// Control's handle on backups: the store they go to, the master key, the queue, and the
/// progress of the jobs running now.
pub struct Backups {
    objects: Arc<dyn ObjectStore>,
    describe: String,
    master: DataKey,
    queue: Arc<Semaphore>,
    progress: DashMap<String, Arc<Progress>>,
    /// Held from a request's check for a pending backup to its insert, so two requests at
    /// once cannot both pass the check.
    requests: tokio::sync::Mutex<()>,
}

impl Backups {
    pub fn open(config: &BackupConfig, data_dir: &Path) -> Result<Self, BackupSetupError> {
        let describe = config.storage.describe();
        let objects = config
            .storage
            .open()
            .map_err(|source| BackupSetupError::Store { where_: describe.clone(), source })?;
        let path = data_dir.join(MASTER_KEY_FILE);
        let master = DataKey::load_or_create(&path).map_err(|source| {
            BackupSetupError::MasterKey { path: path.display().to_string(), source }
        })?;
        tracing::info!(store = %describe, "backups");
        Ok(Self {
            objects,
            describe,
            master,
            queue: Arc::new(Semaphore::new(config.concurrency.max(1))),
            progress: DashMap::new(),
            requests: tokio::sync::Mutex::new(()),
        })
    }

    /// Where backups are kept, for logs and the operator.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Bytes done, expected total and percent of a job under way.
    pub fn progress(&self, id: &str) -> Option<(u64, u64, u8)> {
        self.progress.get(id).map(|p| p.snapshot())
    }

    /// The database's backup key, made on its first backup.
    async fn key(
        &self,
        store: &dyn Store,
        database_id: &InstanceId,
    ) -> Result<DataKey, jobs::BackupError> {
        let wrapped = match store.backup_key(database_id).await? {
            Some(wrapped) => wrapped,
            None => {
                let fresh = DataKey::generate().wrap(&self.master, database_id.as_str());
                store.ensure_backup_key(database_id, &fresh, crate::service::now()).await?
            }
        };
        Ok(DataKey::unwrap_with(&wrapped, &self.master, database_id.as_str())?)
    }
}

/// Where a backup's data lives in the object store.
pub fn object_path(backup: &BackupRecord) -> ObjectPath {
    ObjectPath::from(format!(
        "{}/{}/{}.data.zst.enc",
        backup.tenant_id, backup.database_id, backup.id
    ))
}

/// Where a backup's manifest lives: beside its data, readable without control's store.
pub fn manifest_path(backup: &BackupRecord) -> ObjectPath {
    ObjectPath::from(format!(
        "{}/{}/{}.manifest.json",
        backup.tenant_id, backup.database_id, backup.id
    ))
}
