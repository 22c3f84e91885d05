//! The host agent: turns "run this instance" into a provisioned directory and a supervised
//! server process. `LocalAgent` runs in-process for `dormouse up`; a remote agent on each host
//! of a fleet will implement the same trait.
//!
//! A warm pool keeps a few provisioned, stopped instance directories per engine; a new
//! instance claims one by renaming it, so creating a database costs no more than waking one
//! (`warm`). Backups, restores and logs for point-in-time recovery are in `backups`.

mod backups;
mod warm;

use backups::{RESTORE_SCRATCH, Stopped, increments_dir, staged_increments, sweep_scratch};

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use rand::RngCore;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::backup::{ClosedLogs, Format, Position, Taken};
use crate::confine::{Confiner, ancestor_dir_mode};
use crate::datadir;
use crate::engine::{Engine, EngineError, Instance};
use crate::redis::write_private;
use crate::spec::{Endpoint, EngineKind, InstanceId, InstanceSpec};
use crate::supervisor::{InstanceState, RestartPolicy, Supervisor};

/// Every engine keeps its data in this subdirectory of the instance directory; backups copy
/// it and restores replace it, and nothing else.
pub const DATA_DIR: &str = "data";

/// Changed by every restore, in the instance directory: part of the data version, so data
/// restored from elsewhere never passes for data already backed up.
const GENERATION_FILE: &str = "generation";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this host cannot run {0} databases")]
    EngineUnavailable(EngineKind),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A started instance: where it listens and what the start cost.
#[derive(Debug, Clone)]
pub struct Started {
    pub endpoint: Endpoint,
    pub timing: StartTiming,
}

#[derive(Debug, Clone, Default)]
pub struct StartTiming {
    /// Making its directory: zero when it existed, short when the warm pool had one.
    pub provision: Duration,
    /// From spawning the server to its first passing readiness probe.
    pub boot: Duration,
    /// A warm-pool directory was claimed.
    pub warm: bool,
    /// It was already running; nothing was started.
    pub already_running: bool,
}

/// What control asks of a host.
#[async_trait]
pub trait HostAgent: Send + Sync {
    /// Provisions the instance on first use, starts its server unless it is already running,
    /// and waits until it is ready.
    async fn start(&self, spec: &InstanceSpec) -> Result<Started, AgentError>;
    /// Stops the server cleanly; its data stays on disk.
    async fn stop(&self, id: &InstanceId) -> Result<(), AgentError>;
    /// Stops the server and deletes its data.
    async fn destroy(&self, id: &InstanceId) -> Result<(), AgentError>;
    /// Puts the internal accounts of a running instance back as they must be, when a session
    /// changed them (a tenant's `SET PASSWORD`) and the proxy can no longer log in.
    async fn repair_access(&self, id: &InstanceId) -> Result<(), AgentError>;
    /// Bytes the instance's data takes on disk: what a backup of it will roughly read, for
    /// progress. Zero when it has no directory.
    async fn data_size(&self, id: &InstanceId) -> u64;
    /// A fingerprint of the instance's data that changes whenever the data may have changed
    /// (a running server's write position, a stopped directory's file sizes and times): a
    /// backup whose fingerprint equals the last one's need not be copied again.
    async fn data_version(&self, spec: &InstanceSpec) -> Result<String, AgentError>;
    /// Writes a consistent copy of the instance's data to `out`: from the running server
    /// without stopping it (clients keep working), else from its stopped directory without
    /// starting a server. The caller keeps the instance from starting or stopping meanwhile.
    /// A failure (the tool died, `out` refused bytes) is an error, never a short copy.
    async fn backup(
        &self,
        spec: &InstanceSpec,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, AgentError>;
    /// An incremental hot backup of the running server: what changed after `since_lsn` (its
    /// parent's [`Position::lsn`]). Fails when the server does not run or its engine has none.
    async fn backup_incremental(
        &self,
        spec: &InstanceSpec,
        since_lsn: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, AgentError>;
    /// Unpacks the incremental backup read from `input` beside the stopped instance, for the
    /// next [`Self::restore`] to apply on top of its full backup; called oldest first.
    async fn stage_increment(
        &self,
        spec: &InstanceSpec,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError>;
    /// Replaces the data of the stopped instance `spec` (provisioned first if it has no
    /// directory) with a backup in `format` read from `input`, taken from a database whose name
    /// was `source_name`. The new data is unpacked beside the old and swapped in only once
    /// `input` has ended without an error; otherwise the old data stays as it was.
    async fn restore(
        &self,
        spec: &InstanceSpec,
        format: Format,
        source_name: &str,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError>;
    /// Closes the running server's current change-log file if it logged anything since the
    /// last call, and lists the instance's closed log files (MariaDB's binary log), oldest
    /// first, with their timeline: what control archives for point-in-time recovery. An
    /// engine whose log is only appended to (Redis) lists its open file too.
    async fn closed_logs(&self, spec: &InstanceSpec) -> Result<ClosedLogs, AgentError>;
    /// Copies `len` bytes of the log file `name` from `offset` into `out`; returns the bytes
    /// copied. A file shorter than that is an error, never a short copy.
    async fn read_log(
        &self,
        spec: &InstanceSpec,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64, AgentError>;
    /// Tells a running instance that `archived` (each file's name and the bytes of it now
    /// archived) is stored, so log files kept only for the archive may go.
    async fn release_logs(
        &self,
        spec: &InstanceSpec,
        archived: &[crate::backup::LogSegment],
    ) -> Result<(), AgentError>;
    /// Puts an archived log file beside the instance, for [`Self::replay_logs`].
    async fn stage_log(
        &self,
        spec: &InstanceSpec,
        name: &str,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError>;
    /// Applies the staged log files to the running instance, from `from` (a backup's position)
    /// up to changes stamped `until` or later (seconds), then removes them. `source_name` is
    /// the database the log was written for, when it had another name.
    async fn replay_logs(
        &self,
        spec: &InstanceSpec,
        from: &Position,
        until: i64,
        source_name: &str,
    ) -> Result<(), AgentError>;
    /// Observed state of the instance's server.
    fn state(&self, id: &InstanceId) -> InstanceState;
    /// Where the instance listens while it is running.
    fn endpoint(&self, id: &InstanceId) -> Option<Endpoint>;
    /// The engines this host can run.
    fn engines(&self) -> Vec<EngineKind>;
    /// Stops every server (on shutdown).
    async fn shutdown(&self);
}

/// Runs instances as child processes of this process, under `root/<instance id>/`, each
/// confined (see [`crate::confine`]).
pub struct LocalAgent {
    root: PathBuf,
    confiner: Arc<Confiner>,
    engines: HashMap<EngineKind, Arc<dyn Engine>>,
    policy: RestartPolicy,
    /// Warm directories kept per engine.
    warm_size: usize,
    warm_wanted: tokio::sync::Notify,
    /// Serialises start/stop/destroy of one instance; readers never take it.
    locks: DashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
    supervisors: DashMap<InstanceId, Arc<Supervisor>>,
    /// Per running instance, its change log's position when its last file was closed.
    log_marks: DashMap<InstanceId, String>,
}

impl LocalAgent {
    pub fn new(
        root: impl Into<PathBuf>,
        engines: Vec<Arc<dyn Engine>>,
        policy: RestartPolicy,
    ) -> std::io::Result<Self> {
        // Absolute, because servers change their working directory while reading their
        // configuration, and a relative socket or data path would then point elsewhere.
        let root = std::path::absolute(root.into())?;
        // Servers running as users of their own pass through it to their directories.
        let mode = ancestor_dir_mode();
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode))?;
        let confiner = Arc::new(Confiner::detect());
        confiner.check_root(&root)?;
        sweep_scratch(&root);
        Ok(Self {
            root,
            confiner,
            engines: engines.into_iter().map(|e| (e.kind(), e)).collect(),
            policy,
            warm_size: 0,
            warm_wanted: tokio::sync::Notify::new(),
            locks: DashMap::new(),
            supervisors: DashMap::new(),
            log_marks: DashMap::new(),
        })
    }

    /// Keeps `size` provisioned, stopped instance directories per engine (see [`Self::run_warm_pool`]).
    pub fn with_warm_pool(mut self, size: usize) -> Self {
        self.warm_size = size;
        self
    }

    pub fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn warm_dir(&self, engine: EngineKind) -> PathBuf {
        self.root.join(".warm").join(engine.as_str())
    }

    fn lock(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(id.clone()).or_default().clone()
    }

    fn engine(&self, kind: EngineKind) -> Result<&Arc<dyn Engine>, AgentError> {
        self.engines.get(&kind).ok_or(AgentError::EngineUnavailable(kind))
    }

    /// The instance as its running server sees it; `None` unless it is running.
    fn running(&self, spec: &InstanceSpec) -> Option<Instance> {
        match self.state(&spec.id) {
            InstanceState::Running { port, .. } => {
                Some(Instance { spec: spec.clone(), dir: self.instance_dir(&spec.id), port })
            }
            _ => None,
        }
    }

    /// Fails when a server of the instance is starting, running or about to be restarted.
    fn check_not_live(&self, id: &InstanceId) -> Result<(), AgentError> {
        match self.state(id) {
            InstanceState::Stopped | InstanceState::Failed { .. } => Ok(()),
            state => Err(EngineError::Failed(format!(
                "instance {id} has a server ({state:?}); stop it first"
            ))
            .into()),
        }
    }

    async fn stop_locked(&self, id: &InstanceId) {
        if let Some((_, supervisor)) = self.supervisors.remove(id) {
            supervisor.stop().await;
        }
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[async_trait]
impl HostAgent for LocalAgent {
    async fn start(&self, spec: &InstanceSpec) -> Result<Started, AgentError> {
        let engine =
            self.engines.get(&spec.engine).ok_or(AgentError::EngineUnavailable(spec.engine))?;
        let mut timing = StartTiming::default();
        let supervisor = {
            let lock = self.lock(&spec.id);
            let _guard = lock.lock().await;
            let live = self.supervisors.get(&spec.id).map(|s| s.clone()).filter(|s| {
                !matches!(s.state(), InstanceState::Stopped | InstanceState::Failed { .. })
            });
            match live {
                Some(s) => {
                    timing.already_running = matches!(s.state(), InstanceState::Running { .. });
                    s
                }
                None => {
                    let dir = self.provision(engine.as_ref(), spec, &mut timing).await?;
                    let owner = self.confiner.owner_for(&self.root, &dir).await.map_err(
                        EngineError::io(format!("giving {} to its server's user", dir.display())),
                    )?;
                    let sandbox = self.confiner.sandbox(
                        spec.id.as_str(),
                        dir,
                        owner,
                        engine.resources(&spec.limits),
                    );
                    let s = Arc::new(Supervisor::spawn(
                        engine.clone(),
                        spec.clone(),
                        sandbox,
                        self.policy.clone(),
                    ));
                    self.supervisors.insert(spec.id.clone(), s.clone());
                    s
                }
            }
        };
        match supervisor.ready().await {
            Ok((endpoint, boot)) => {
                if !timing.already_running {
                    timing.boot = boot;
                }
                Ok(Started { endpoint, timing })
            }
            Err(e) => {
                let lock = self.lock(&spec.id);
                let _guard = lock.lock().await;
                self.supervisors.remove_if(&spec.id, |_, s| Arc::ptr_eq(s, &supervisor));
                supervisor.stop().await;
                Err(e.into())
            }
        }
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), AgentError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id).await;
        Ok(())
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), AgentError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id).await;
        let dir = self.instance_dir(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io(format!("removing {}", dir.display()))(e).into()),
        }
        drop(_guard);
        self.locks.remove(id);
        Ok(())
    }

    async fn repair_access(&self, id: &InstanceId) -> Result<(), AgentError> {
        let supervisor = self.supervisors.get(id).map(|s| s.clone());
        let supervisor =
            supervisor.ok_or_else(|| EngineError::Failed("the server is not running".into()))?;
        Ok(supervisor.repair_access().await?)
    }

    async fn data_size(&self, id: &InstanceId) -> u64 {
        let data = self.instance_dir(id).join(DATA_DIR);
        tokio::task::spawn_blocking(move || datadir::size(&data).unwrap_or(0)).await.unwrap_or(0)
    }

    async fn data_version(&self, spec: &InstanceSpec) -> Result<String, AgentError> {
        let engine = self.engine(spec.engine)?;
        let dir = self.instance_dir(&spec.id);
        let generation = datadir::read_marker(&dir.join(GENERATION_FILE))
            .map_err(EngineError::io("reading the data generation"))?
            .unwrap_or_default();
        if let Some(instance) = self.running(spec) {
            let position = engine.data_version(&instance).await?;
            return Ok(format!("{}:running:{position}", generation.trim()));
        }
        self.check_not_live(&spec.id)?;
        let data = dir.join(DATA_DIR);
        let files = tokio::task::spawn_blocking(move || datadir::fingerprint(&data))
            .await
            .map_err(|e| EngineError::Failed(format!("reading the data directory: {e}")))?
            .map_err(EngineError::io("reading the data directory"))?;
        Ok(format!("{}:files:{files}", generation.trim()))
    }

    async fn backup(
        &self,
        spec: &InstanceSpec,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, AgentError> {
        let engine = self.engine(spec.engine)?.clone();
        let lock = self.lock(&spec.id);
        let guard = lock.lock().await;
        if let Some(instance) = self.running(spec) {
            // Not held while copying: a wake of the running server must not wait for a backup.
            drop(guard);
            return self.hot_backup(engine.as_ref(), &instance, None, out).await;
        }
        self.check_not_live(&spec.id)?;
        // Held: no server starts on the directory while it is read.
        let data = self.instance_dir(&spec.id).join(DATA_DIR);
        if !data.is_dir() {
            return Err(EngineError::Failed(format!(
                "instance {} has no data directory to back up",
                spec.id
            ))
            .into());
        }
        let bytes = datadir::tar_out(&data, out).await?;
        let newest = tokio::task::spawn_blocking(move || datadir::newest_mtime(&data))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let data = self.instance_dir(&spec.id).join(DATA_DIR);
        // A copy of the whole directory holds every log file: a replay goes on after them.
        let end = engine.log_segments(&data).ok().and_then(|mut s| s.pop());
        let position = Position {
            time: newest.unwrap_or_else(datadir::now),
            binlog_file: end.as_ref().map(|s| s.name.clone()),
            binlog_position: end.map(|s| s.size),
            timeline: Some(self.timeline(&spec.id)?),
            ..Position::default()
        };
        Ok(Taken { format: Format::Tar, position, bytes, hot: false })
    }

    async fn restore(
        &self,
        spec: &InstanceSpec,
        format: Format,
        source_name: &str,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError> {
        let Stopped { engine, _guard, dir, owner } = self.stopped(spec).await?;
        let scratch = self.root.join(format!(".{}{RESTORE_SCRATCH}", spec.id));
        let swapped = self.unpack_and_swap(engine.as_ref(), &dir, &scratch, owner, format, input);
        let result = swapped.await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let _ = tokio::fs::remove_dir_all(increments_dir(&self.root, &dir)).await;
        result?;
        engine.restored(&dir, spec, source_name).await?;
        let mut generation = [0u8; 8];
        rand::rng().fill_bytes(&mut generation);
        write_private(&dir.join(GENERATION_FILE), hex::encode(generation).as_bytes())
            .await
            .map_err(EngineError::io("recording the data generation"))?;
        Ok(())
    }

    async fn backup_incremental(
        &self,
        spec: &InstanceSpec,
        since_lsn: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, AgentError> {
        let engine = self.engine(spec.engine)?.clone();
        let instance = self.running(spec).ok_or_else(|| {
            EngineError::Failed("an incremental backup is taken from a running server".into())
        })?;
        self.hot_backup(engine.as_ref(), &instance, Some(since_lsn), out).await
    }

    async fn stage_increment(
        &self,
        spec: &InstanceSpec,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError> {
        let Stopped { engine, _guard, dir, owner } = self.stopped(spec).await?;
        let staged = increments_dir(&self.root, &dir);
        create_private_dir(&staged)
            .map_err(EngineError::io(format!("creating {}", staged.display())))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(&staged, Some(owner.uid), Some(owner.gid))
                .map_err(EngineError::io(format!("giving {} away", staged.display())))?;
        }
        let next = staged.join(format!("{:04}", staged_increments(&staged).len()));
        let unpacked = engine.unpack_increment(input, &next, owner).await;
        if unpacked.is_err() {
            let _ = tokio::fs::remove_dir_all(&staged).await;
        }
        Ok(unpacked?)
    }

    async fn closed_logs(&self, spec: &InstanceSpec) -> Result<ClosedLogs, AgentError> {
        let engine = self.engine(spec.engine)?.clone();
        if let Some(instance) = self.running(spec) {
            let last = self.log_marks.get(&spec.id).map(|m| m.clone());
            match engine.close_log(&instance, last.as_deref()).await? {
                Some(mark) => self.log_marks.insert(spec.id.clone(), mark),
                None => self.log_marks.remove(&spec.id).map(|(_, m)| m),
            };
        }
        let data = self.instance_dir(&spec.id).join(DATA_DIR);
        let listing = engine.clone();
        let mut segments = tokio::task::spawn_blocking(move || listing.log_segments(&data))
            .await
            .map_err(|e| EngineError::Failed(format!("listing the log: {e}")))?
            .or_else(
                |e| if e.kind() == std::io::ErrorKind::NotFound { Ok(Vec::new()) } else { Err(e) },
            )
            .map_err(EngineError::io("listing the log"))?;
        // While a server runs, its newest file is still being written.
        let live =
            !matches!(self.state(&spec.id), InstanceState::Stopped | InstanceState::Failed { .. });
        if live && !engine.archives_open_log() {
            segments.pop();
        }
        // A file restored with an older time holds this timeline's data only since the restore.
        let since = datadir::open_nofollow(&self.instance_dir(&spec.id).join(GENERATION_FILE))
            .and_then(|f| f.metadata()?.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        for segment in &mut segments {
            segment.modified = segment.modified.map(|m| since.map_or(m, |s| m.max(s)));
        }
        Ok(ClosedLogs { timeline: self.timeline(&spec.id)?, segments })
    }

    async fn read_log(
        &self,
        spec: &InstanceSpec,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<u64, AgentError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let engine = self.engine(spec.engine)?;
        let data = self.instance_dir(&spec.id).join(DATA_DIR);
        let known = engine.log_segments(&data).map_err(EngineError::io("listing the log"))?;
        if !known.iter().any(|s| s.name == name) {
            return Err(EngineError::Failed(format!("no log file {name:?}")).into());
        }
        // The server's user could put a link in the file's place.
        let (opener, path) = (engine.clone(), name.to_owned());
        let file = tokio::task::spawn_blocking(move || {
            let file = opener.open_log(&data, &path)?;
            // On disk before it is archived: a host crash could otherwise lose from the file
            // what the archive holds, and the file then grow again with other bytes there.
            file.sync_data()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| EngineError::Failed(format!("opening {name}: {e}")))?
        .map_err(EngineError::io(format!("opening {name}")))?;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(EngineError::io(format!("reading {name}")))?;
        let copied = datadir::copy_from_file(file.take(len), out)
            .await
            .map_err(EngineError::io(format!("copying {name}")))?;
        if copied != len {
            return Err(EngineError::Failed(format!(
                "{name} ended {copied} bytes after offset {offset}, before the {len} asked for"
            ))
            .into());
        }
        tokio::io::AsyncWriteExt::flush(out).await.map_err(EngineError::io("writing the log"))?;
        Ok(copied)
    }

    async fn release_logs(
        &self,
        spec: &InstanceSpec,
        archived: &[crate::backup::LogSegment],
    ) -> Result<(), AgentError> {
        let engine = self.engine(spec.engine)?;
        match self.running(spec) {
            Some(instance) => Ok(engine.release_logs(&instance, archived).await?),
            // Kept until the server runs again: only it may change its files.
            None => Ok(()),
        }
    }

    async fn stage_log(
        &self,
        spec: &InstanceSpec,
        name: &str,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), AgentError> {
        if !crate::mariadb::pitr::is_binlog(name) {
            return Err(EngineError::Failed(format!("{name:?} is not a log file name")).into());
        }
        let staged = self.staged_logs(&spec.id);
        create_private_dir(&staged)
            .map_err(EngineError::io(format!("creating {}", staged.display())))?;
        let path = staged.join(name);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(EngineError::io(format!("creating {}", path.display())))?;
        datadir::copy_into_file(input, file)
            .await
            .map_err(EngineError::io(format!("writing {}", path.display())))?;
        Ok(())
    }

    async fn replay_logs(
        &self,
        spec: &InstanceSpec,
        from: &Position,
        until: i64,
        source_name: &str,
    ) -> Result<(), AgentError> {
        let engine = self.engine(spec.engine)?.clone();
        let staged = self.staged_logs(&spec.id);
        let result = async {
            let instance = self.running(spec).ok_or_else(|| {
                EngineError::Failed("the server must run for its log to be replayed".into())
            })?;
            let mut files: Vec<String> = std::fs::read_dir(&staged)
                .map_err(EngineError::io(format!("reading {}", staged.display())))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| crate::mariadb::pitr::is_binlog(n))
                .collect();
            files.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
            let owner = self
                .confiner
                .owner_for(&self.root, &instance.dir)
                .await
                .map_err(EngineError::io("finding the instance's user"))?;
            if let Some(owner) = owner {
                crate::confine::owner::hand_over(&staged, owner)
                    .map_err(EngineError::io("handing the staged log over"))?;
            }
            let rename = (source_name != spec.name).then_some((source_name, spec.name.as_str()));
            engine.replay_logs(&instance, &staged, &files, from, until, rename, owner).await
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staged).await;
        Ok(result?)
    }

    fn state(&self, id: &InstanceId) -> InstanceState {
        self.supervisors.get(id).map_or(InstanceState::Stopped, |s| s.state())
    }

    fn endpoint(&self, id: &InstanceId) -> Option<Endpoint> {
        self.supervisors.get(id)?.endpoint()
    }

    fn engines(&self) -> Vec<EngineKind> {
        let mut kinds: Vec<_> = self.engines.keys().copied().collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds
    }

    async fn shutdown(&self) {
        let ids: Vec<InstanceId> = self.supervisors.iter().map(|e| e.key().clone()).collect();
        let stops = ids.iter().map(|id| self.stop(id));
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "stopping an instance at shutdown");
            }
        }
    }
}
