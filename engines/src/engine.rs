//! The `Engine` trait: what a datastore driver must do so the supervisor can run its server.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::backup::{Format, LogSegment, Position, Taken};
use crate::confine::{Owner, Resources};
use crate::spec::{EngineKind, InstanceSpec, Limits};

/// One instance as the engine sees it at a start: its spec, its directory and its port.
#[derive(Debug, Clone)]
pub struct Instance {
    pub spec: InstanceSpec,
    pub dir: PathBuf,
    pub port: u16,
}

/// How to start the server process. The process module adds logging and supervision.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{program} was not found; install the {package} package")]
    NotInstalled { program: &'static str, package: &'static str },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

impl EngineError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let context = context.into();
        move |source| EngineError::Io { context, source }
    }
}

/// Why a readiness probe did not pass. Every variant means "not ready yet": the supervisor
/// keeps probing until its deadline.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not accepting connections: {0}")]
    Connect(std::io::Error),
    #[error("still loading its data")]
    Loading,
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The server is up but refused the internal user's login: not ready yet, unless the
    /// server's own setup failed (see [`Engine::setup_failure`]).
    #[error("login refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
}

/// A datastore driver. Start and stop are generic (see [`crate::process`]); an engine says how
/// to lay out an instance's directory, how to launch its server and how to tell it is ready.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;

    /// Longest time from spawn to a passing probe before a start counts as failed.
    fn start_timeout(&self) -> Duration;

    /// Longest time from SIGTERM to exit before the process is killed.
    fn stop_timeout(&self) -> Duration;

    /// What the server may use at most (cgroup and rlimits): the plan's `limits` plus what
    /// the server itself needs beyond them. Never so tight that it fails to start.
    fn resources(&self, limits: &Limits) -> Resources;

    /// Fill a new, empty instance directory (first start only).
    async fn provision(&self, spec: &InstanceSpec, dir: &Path) -> Result<(), EngineError>;

    /// Write this start's configuration and say how to launch the server.
    async fn launch(&self, instance: &Instance) -> Result<Launch, EngineError>;

    /// One readiness probe: connect, authenticate as the internal user, ask something trivial.
    async fn probe(&self, instance: &Instance) -> Result<(), ProbeError>;

    /// Why the server's own setup failed, read from what this start wrote to its log, when the
    /// server answers a probe but the probe fails: a start that will never become ready fails
    /// at once with the server's reason instead of at its deadline.
    fn setup_failure(&self, _log: &str) -> Option<String> {
        None
    }

    /// Puts the internal accounts back as the instance needs them (password, privileges) on
    /// the running server, when the proxy could no longer log in with them.
    async fn repair_access(&self, _instance: &Instance) -> Result<(), EngineError> {
        Ok(())
    }

    /// Writes a consistent copy of the running server's data to `out` without stopping it,
    /// using `scratch` (an empty directory of `owner`'s, which the caller removes) for the
    /// tool's files. Tools run as `owner`, the server's own user: they read what the server
    /// could change (its configuration, links in its directory), and must not read as root.
    async fn hot_backup(
        &self,
        _instance: &Instance,
        _scratch: &Path,
        _owner: Option<Owner>,
        _out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, EngineError> {
        Err(EngineError::Failed(format!("{} cannot back up a running server", self.kind())))
    }

    /// An incremental hot backup: what changed after `since_lsn` (a parent backup's end).
    async fn hot_backup_since(
        &self,
        _instance: &Instance,
        _scratch: &Path,
        _owner: Option<Owner>,
        _since_lsn: u64,
        _out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, EngineError> {
        Err(EngineError::Failed(format!("{} has no incremental backups", self.kind())))
    }

    /// Unpacks an incremental backup from `input` into `dir` (made here), to be applied by
    /// [`Engine::apply_increment`] after the full backup under it is unpacked.
    async fn unpack_increment(
        &self,
        _input: &mut (dyn AsyncRead + Send + Unpin),
        _dir: &Path,
        _owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        Err(EngineError::Failed(format!("{} has no incremental backups", self.kind())))
    }

    /// Applies an unpacked incremental backup to the unpacked data directory `data`.
    async fn apply_increment(
        &self,
        _data: &Path,
        _increment: &Path,
        _owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        Err(EngineError::Failed(format!("{} has no incremental backups", self.kind())))
    }

    /// Fills `data` (not existing yet; its parent is an empty private directory owned by
    /// `owner`) from a backup in one of this engine's own hot formats read from `input` to its
    /// end. Tools run as `owner`.
    async fn unpack(
        &self,
        format: Format,
        _input: &mut (dyn AsyncRead + Send + Unpin),
        _data: &Path,
        _owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        Err(EngineError::Failed(format!(
            "a {} backup cannot be restored into a {} database",
            format.as_str(),
            self.kind()
        )))
    }

    /// Records, in the stopped instance's directory `dir`, that its data was just restored
    /// from a database named `source_name`, for what the next start must adjust.
    async fn restored(
        &self,
        _dir: &Path,
        _spec: &InstanceSpec,
        _source_name: &str,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// The running server's write position: the same while nothing is written, different
    /// after any write (see [`crate::HostAgent::data_version`]).
    async fn data_version(&self, _instance: &Instance) -> Result<String, EngineError> {
        Err(EngineError::Failed(format!("{} cannot tell its write position", self.kind())))
    }

    /// The change-log files (MariaDB's binary log) in the data directory `data`, oldest
    /// first; none for an engine without one.
    fn log_segments(&self, _data: &Path) -> std::io::Result<Vec<LogSegment>> {
        Ok(Vec::new())
    }

    /// Whether the newest change-log file may be archived while the server still writes it:
    /// true when it is only ever appended to (Redis's append-only file), so what it holds so
    /// far never changes and can be archived by byte ranges.
    fn archives_open_log(&self) -> bool {
        false
    }

    /// Opens the change-log file `name` (one [`Self::log_segments`] listed) in `data` for
    /// reading, following no link: the server's user could put one in its place.
    fn open_log(&self, data: &Path, name: &str) -> std::io::Result<std::fs::File> {
        crate::datadir::open_nofollow(&data.join(name))
    }

    /// Tells the running server that `archived` (names and the bytes of each now archived)
    /// are safely stored, so what it keeps only for the archive may go.
    async fn release_logs(
        &self,
        _instance: &Instance,
        _archived: &[LogSegment],
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Closes the running server's current change-log file if anything was written since
    /// `last` (what the previous call returned), so it can be archived; returns the new mark.
    async fn close_log(
        &self,
        _instance: &Instance,
        last: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        Ok(last.map(str::to_owned))
    }

    /// Applies staged change-log `files` (in `staged`, oldest first) to the running server,
    /// from `from` up to changes stamped `until` or later, moving a schema `rename.0` to
    /// `rename.1`.
    #[allow(clippy::too_many_arguments)]
    async fn replay_logs(
        &self,
        _instance: &Instance,
        _staged: &Path,
        _files: &[String],
        _from: &Position,
        _until: i64,
        _rename: Option<(&str, &str)>,
        _owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        Err(EngineError::Failed(format!("{} has no change log to replay", self.kind())))
    }

    /// The Unix socket the server in `dir` also listens on, if it has one; clients on the
    /// same host (the proxy) skip the TCP stack through it.
    fn socket(&self, dir: &Path) -> Option<PathBuf>;
}

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `dir/name` when it fits in a Unix socket address.
pub fn socket_path(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    (path.as_os_str().len() <= MAX_SOCKET_PATH).then_some(path)
}

/// Finds `program` on `PATH`, then in the sbin directories Debian puts servers in.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
