//! The agent's side of backups and restores: hot copies from a running server in a scratch
//! directory of their own, restores unpacked beside the instance and swapped in whole, staged
//! incremental backups and log files, and the data's timeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{AgentError, DATA_DIR, GENERATION_FILE, LocalAgent, StartTiming, create_private_dir};
use crate::backup::{Format, Taken};
use crate::confine::Owner;
use crate::datadir;
use crate::engine::{Engine, EngineError, Instance};
use crate::spec::{InstanceId, InstanceSpec};

/// A stopped instance held for a restore: no start meanwhile.
pub(super) struct Stopped {
    pub engine: Arc<dyn Engine>,
    pub _guard: tokio::sync::OwnedMutexGuard<()>,
    pub dir: PathBuf,
    pub owner: Option<Owner>,
}

impl LocalAgent {
    /// Holds the instance's lock, checks that no server of it runs, and gives it a directory
    /// (provisioned on first use) and its server's user, for data to be written into.
    pub(super) async fn stopped(&self, spec: &InstanceSpec) -> Result<Stopped, AgentError> {
        let engine = self.engine(spec.engine)?.clone();
        let guard = self.lock(&spec.id).lock_owned().await;
        self.check_not_live(&spec.id)?;
        let dir = self.provision(engine.as_ref(), spec, &mut StartTiming::default()).await?;
        let owner = self
            .confiner
            .owner_for(&self.root, &dir)
            .await
            .map_err(EngineError::io(format!("giving {} to its server's user", dir.display())))?;
        Ok(Stopped { engine, _guard: guard, dir, owner })
    }
    pub(super) async fn hot_backup(
        &self,
        engine: &dyn Engine,
        instance: &Instance,
        since_lsn: Option<u64>,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, AgentError> {
        // Its own name: a second backup of the same instance may run meanwhile.
        let mut suffix = [0u8; 6];
        rand::rng().fill_bytes(&mut suffix);
        let name = format!(".{}{BACKUP_SCRATCH}{}", instance.spec.id, hex::encode(suffix));
        let scratch = self.root.join(name);
        let owner =
            self.confiner.owner_for(&self.root, &instance.dir).await.map_err(EngineError::io(
                format!("finding the user of {}", instance.dir.display()),
            ))?;
        let taken = async {
            create_private_dir(&scratch)
                .map_err(EngineError::io(format!("creating {}", scratch.display())))?;
            if let Some(owner) = owner {
                std::os::unix::fs::chown(&scratch, Some(owner.uid), Some(owner.gid))
                    .map_err(EngineError::io(format!("giving {} away", scratch.display())))?;
            }
            match since_lsn {
                Some(lsn) => engine.hot_backup_since(instance, &scratch, owner, lsn, out).await,
                None => engine.hot_backup(instance, &scratch, owner, out).await,
            }
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let mut taken = taken?;
        taken.position.timeline = Some(self.timeline(&instance.spec.id)?);
        Ok(taken)
    }

    /// Unpacks a backup into `scratch/data` and, once that worked and `input` has ended, puts
    /// it in place of `dir/data` and gives it to `owner`. The old data is kept until then.
    pub(super) async fn unpack_and_swap(
        &self,
        engine: &dyn Engine,
        dir: &Path,
        scratch: &Path,
        owner: Option<Owner>,
        format: Format,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError> {
        let _ = tokio::fs::remove_dir_all(scratch).await;
        create_private_dir(scratch)
            .map_err(EngineError::io(format!("creating {}", scratch.display())))?;
        if let Some(owner) = owner {
            // The restore's tools run as the instance's user and write here.
            std::os::unix::fs::chown(scratch, Some(owner.uid), Some(owner.gid))
                .map_err(EngineError::io(format!("giving {} away", scratch.display())))?;
        }
        let fresh = scratch.join(DATA_DIR);
        match format {
            Format::Tar => datadir::untar_in(scratch, input).await?,
            Format::Xbstream | Format::Rdb | Format::Aof => {
                engine.unpack(format, input, &fresh, owner).await?;
            }
        }
        // Incremental backups staged for this restore go on top, oldest first.
        for increment in staged_increments(&increments_dir(&self.root, dir)) {
            engine.apply_increment(&fresh, &increment, owner).await?;
        }
        let live = dir.join(DATA_DIR);
        let old = scratch.join("replaced");
        match tokio::fs::rename(&live, &old).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::io(format!("moving {} away", live.display()))(e).into());
            }
        }
        if let Err(e) = tokio::fs::rename(&fresh, &live).await {
            let _ = tokio::fs::rename(&old, &live).await;
            return Err(
                EngineError::io(format!("moving the restored data to {}", live.display()))(e)
                    .into(),
            );
        }
        if let Some(owner) = owner {
            let context = format!("giving {} to its server's user", live.display());
            tokio::task::spawn_blocking(move || crate::confine::owner::hand_over(&live, owner))
                .await
                .map_err(|e| EngineError::Failed(format!("handing the data over: {e}")))?
                .map_err(EngineError::io(context))?;
        }
        Ok(())
    }

    /// The instance's data timeline: its generation, which every restore renews (`0` for
    /// data never restored).
    pub(super) fn timeline(&self, id: &InstanceId) -> Result<String, AgentError> {
        let generation = datadir::read_marker(&self.instance_dir(id).join(GENERATION_FILE))
            .map_err(EngineError::io("reading the data generation"))?;
        Ok(generation.map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).unwrap_or("0".into()))
    }

    /// Where staged log files wait for a replay.
    pub(super) fn staged_logs(&self, id: &InstanceId) -> PathBuf {
        self.instance_dir(id).join(STAGED_LOGS)
    }
}

/// Scratch directories under the agent's root, `.{instance}` followed by these: a backup's
/// tool files, a restore's unpacked data until it is swapped in.
pub(super) const BACKUP_SCRATCH: &str = ".backup-";
pub(super) const RESTORE_SCRATCH: &str = ".restoring";
/// Incremental backups unpacked for the next restore, one directory each (`0000`, `0001`, …).
pub(super) const INCREMENTS_SCRATCH: &str = ".increments";

pub(super) fn increments_dir(root: &Path, instance_dir: &Path) -> PathBuf {
    let id = instance_dir.file_name().unwrap_or_default().to_string_lossy();
    root.join(format!(".{id}{INCREMENTS_SCRATCH}"))
}

/// The staged increments in `dir`, in the order they were staged.
pub(super) fn staged_increments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}
/// In the instance directory: archived log files put back for a replay.
pub(super) const STAGED_LOGS: &str = "replay";

/// Removes the scratch directories of backups and restores an earlier run of the agent left
/// behind when it stopped midway (a backup's are otherwise removed when it ends).
pub(super) fn sweep_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let scratch = name.starts_with('.')
            && (name.contains(BACKUP_SCRATCH)
                || name.ends_with(RESTORE_SCRATCH)
                || name.ends_with(INCREMENTS_SCRATCH));
        if scratch && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "removing a stale scratch directory");
        }
    }
}
