//! The MariaDB driver: one `mariadbd` per database, started from a copy of a template data
//! directory, with a schema named after the database and one internal user that holds every
//! privilege on that schema only. Readiness means that user can log in.

pub mod backup;
mod config;
pub mod pitr;
mod probe;
mod template;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub use config::{
    INTERNAL_USER, READONLY_USER, SOCKET_FILE, grant_pattern, native_password_hash, quote_ident,
};
use config::{TMP_DIR, render_accounts_sql, render_init_sql, render_my_cnf};
use template::{Template, copy_tree};

use crate::agent::DATA_DIR;
use crate::backup::{Format, LogSegment, Position, Taken};
use crate::confine::{Owner, Resources};
use crate::datadir;
use crate::engine::{Engine, EngineError, Instance, Launch, ProbeError, find_program, socket_path};
use crate::redis::write_private;
use crate::spec::{EngineKind, InstanceSpec, Limits};
use crate::tool;

/// Runs `mariadbd` processes.
pub struct MariaDbEngine {
    server: PathBuf,
    /// The `mariadb` client, which repairs the internal accounts as root over the socket.
    client: Option<PathBuf>,
    template: Template,
}

impl MariaDbEngine {
    /// Finds `mariadbd` and `mariadb-install-db`; templates are kept under `template_root`.
    pub fn detect(template_root: impl Into<PathBuf>) -> Result<Self, EngineError> {
        let missing = |program| EngineError::NotInstalled { program, package: "mariadb-server" };
        let server = find_program("mariadbd").ok_or_else(|| missing("mariadbd"))?;
        let install_db =
            find_program("mariadb-install-db").ok_or_else(|| missing("mariadb-install-db"))?;
        let version = std::process::Command::new(&server)
            .arg("--version")
            .output()
            .map_err(EngineError::io("running mariadbd --version"))?;
        let version = String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "Ver")
            .nth(1)
            .unwrap_or("unknown")
            .to_owned();
        // Absolute, as the bootstrap's paths are read after it changes directory.
        let root = std::path::absolute(template_root.into())
            .map_err(EngineError::io("resolving the template directory"))?;
        let client = find_program("mariadb");
        Ok(Self { server, client, template: Template::new(root, install_db, version) })
    }

    /// Runs `sql` as root over the Unix socket and returns what it printed (tab-separated,
    /// no column names). Root exists only at `localhost`, which is the socket, inside the
    /// instance's private directory. The socket is named relative to the instance directory
    /// so a deep path still fits, and the statements go through stdin, never the command line
    /// other users can read.
    async fn root_sql(&self, dir: &Path, sql: &str) -> Result<String, EngineError> {
        let client = self
            .client
            .as_ref()
            .ok_or(EngineError::NotInstalled { program: "mariadb", package: "mariadb-client" })?;
        let mut cmd = tokio::process::Command::new(client);
        cmd.args(["--no-defaults", "--user=root", "--batch", "--silent", "--skip-column-names"])
            .arg(format!("--socket={SOCKET_FILE}"))
            .current_dir(dir);
        tool::output(cmd, "mariadb", Some(sql.as_bytes())).await
    }

    /// Builds the template now rather than at the first create.
    pub async fn prepare(&self) -> Result<(), EngineError> {
        self.template.data_dir().await.map(|_| ())
    }
}

#[async_trait]
impl Engine for MariaDbEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Mysql
    }

    fn start_timeout(&self) -> Duration {
        // InnoDB crash recovery after a hard stop is the slow case.
        Duration::from_secs(120)
    }

    fn stop_timeout(&self) -> Duration {
        // A clean shutdown flushes dirty pages; small buffer pools make that quick.
        Duration::from_secs(60)
    }

    /// Memory: the buffer pool plus what the server needs beside it, about 55 MiB resident
    /// when idle (dictionary, log buffers, the binary's pages) and up to a few MiB per busy
    /// connection (sort, join and temporary-table buffers): 128 MiB plus 1 MiB per two
    /// connections (measured: 33 MiB at most with a 16 MiB pool under a bulk insert and
    /// sort). Threads: about 15 of its own plus one per connection. Files: at least what
    /// `mariadbd` asks for by itself (about 3,300 with 20 connections, five more per
    /// connection), so it never shrinks its table caches to fit.
    fn resources(&self, limits: &Limits) -> Resources {
        const MIB: u64 = 1 << 20;
        let connections = u64::from(limits.max_connections);
        Resources {
            memory_bytes: (u64::from(limits.memory_mb.max(8)) + 128 + connections / 2) * MIB,
            pids: connections + 64,
            open_files: 5 * connections + 4096,
        }
    }

    async fn provision(&self, _spec: &InstanceSpec, dir: &Path) -> Result<(), EngineError> {
        let template = self.template.data_dir().await?;
        let data = dir.join("data");
        let files = dir.join("files");
        tokio::task::spawn_blocking(move || {
            copy_tree(&template, &data)?;
            std::fs::create_dir_all(files)
        })
        .await
        .map_err(|e| EngineError::Failed(format!("copying the template: {e}")))?
        .map_err(EngineError::io("copying the template data directory"))
    }

    async fn launch(&self, instance: &Instance) -> Result<Launch, EngineError> {
        // Made at every start: directories provisioned by earlier versions lack it.
        let tmp = instance.dir.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(EngineError::io(format!("creating {}", tmp.display())))?;
        let cnf = instance.dir.join("my.cnf");
        write_private(&cnf, render_my_cnf(instance).as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", cnf.display())))?;
        let rename_from = datadir::read_marker(&instance.dir.join(backup::RENAME_FROM_FILE))
            .map_err(EngineError::io("reading the restore's rename marker"))?;
        let init = instance.dir.join("init.sql");
        write_private(&init, render_init_sql(instance, rename_from.as_deref()).as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", init.display())))?;
        // --defaults-file must come first, and keeps /etc/mysql out.
        Ok(Launch {
            program: self.server.clone(),
            args: vec![format!("--defaults-file={}", cnf.display()).into()],
        })
    }

    /// An `init.sql` statement that fails stops the file there, and the server logs it as
    /// `ERROR: <code>  <message>` and goes on without the internal users: no probe would pass.
    fn setup_failure(&self, log: &str) -> Option<String> {
        let line = log.lines().find(|l| l.starts_with("ERROR: "))?;
        Some(format!("the database's setup failed: {}", line.trim()))
    }

    /// Runs the account statements of `init.sql` as root over the Unix socket (see
    /// [`MariaDbEngine::root_sql`]).
    async fn repair_access(&self, instance: &Instance) -> Result<(), EngineError> {
        self.root_sql(&instance.dir, &render_accounts_sql(instance))
            .await
            .map(drop)
            .map_err(|e| EngineError::Failed(format!("repairing the internal accounts: {e}")))
    }

    async fn hot_backup(
        &self,
        instance: &Instance,
        scratch: &Path,
        owner: Option<Owner>,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, EngineError> {
        backup::hot_backup(instance, scratch, owner, None, out).await
    }

    async fn hot_backup_since(
        &self,
        instance: &Instance,
        scratch: &Path,
        owner: Option<Owner>,
        since_lsn: u64,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, EngineError> {
        backup::hot_backup(instance, scratch, owner, Some(since_lsn), out).await
    }

    async fn unpack_increment(
        &self,
        input: &mut (dyn AsyncRead + Send + Unpin),
        dir: &Path,
        owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        backup::unpack_increment(input, dir, owner).await
    }

    async fn apply_increment(
        &self,
        data: &Path,
        increment: &Path,
        owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        backup::apply_increment(data, increment, owner).await
    }

    async fn unpack(
        &self,
        format: Format,
        input: &mut (dyn AsyncRead + Send + Unpin),
        data: &Path,
        owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        if format != Format::Xbstream {
            return Err(EngineError::Failed(format!(
                "a {} backup cannot be restored into a MariaDB database",
                format.as_str()
            )));
        }
        backup::unpack(input, data, owner).await
    }

    /// Data restored from a database of another name has its tables in that name's schema:
    /// the next start moves them (see [`backup::rename_sql`]). A restore of a database's own
    /// backup removes what an earlier restore asked for.
    async fn restored(
        &self,
        dir: &Path,
        spec: &InstanceSpec,
        source_name: &str,
    ) -> Result<(), EngineError> {
        let marker = dir.join(backup::RENAME_FROM_FILE);
        if source_name == spec.name {
            return match tokio::fs::remove_file(&marker).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(EngineError::io(format!("removing {}", marker.display()))(e))
                }
                _ => Ok(()),
            };
        }
        if backup::is_system_schema(source_name) || source_name.is_empty() {
            return Err(EngineError::Failed(format!(
                "cannot move tables out of the schema {source_name:?}"
            )));
        }
        write_private(&marker, source_name.as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", marker.display())))
    }

    /// The GTID of the last binary-logged transaction and InnoDB's current log sequence
    /// number, which moves with every change to an InnoDB table, logged or not.
    async fn data_version(&self, instance: &Instance) -> Result<String, EngineError> {
        let out = self
            .root_sql(
                &instance.dir,
                "SELECT @@gtid_binlog_pos, variable_value FROM information_schema.global_status \
                 WHERE variable_name = 'INNODB_LSN_CURRENT';\n",
            )
            .await?;
        let version = out.trim().replace('\t', "/");
        if version.is_empty() {
            return Err(EngineError::Failed("the server did not tell its log position".into()));
        }
        Ok(version)
    }

    fn log_segments(&self, data: &Path) -> std::io::Result<Vec<LogSegment>> {
        pitr::segments(data)
    }

    /// `FLUSH BINARY LOGS` when the server wrote to its log since `last` (its newest file and
    /// size then), so an idle database does not pile up empty files.
    async fn close_log(
        &self,
        instance: &Instance,
        last: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        // The newest file grows with every write: unchanged, there is nothing to close, and no
        // client need run (this is asked of every database every 30 s).
        let data = instance.dir.join(DATA_DIR);
        let newest = || -> Result<Option<String>, EngineError> {
            let mut files = pitr::segments(&data).map_err(EngineError::io("listing the log"))?;
            Ok(files.pop().map(|f| format!("{}:{}", f.name, f.size)))
        };
        let now = newest()?;
        if now.is_none() || now.as_deref() == last {
            return Ok(now);
        }
        self.root_sql(&instance.dir, "FLUSH BINARY LOGS;\n").await?;
        newest()
    }

    async fn replay_logs(
        &self,
        instance: &Instance,
        staged: &Path,
        files: &[String],
        from: &Position,
        until: i64,
        rename: Option<(&str, &str)>,
        owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        pitr::replay(instance, staged, files, from, until, rename, owner).await
    }

    fn socket(&self, dir: &Path) -> Option<PathBuf> {
        socket_path(dir, SOCKET_FILE)
    }

    async fn probe(&self, instance: &Instance) -> Result<(), ProbeError> {
        let attempt = probe::login(
            instance.port,
            INTERNAL_USER,
            instance.spec.password.expose(),
            &instance.spec.name,
        );
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .unwrap_or(Err(ProbeError::Timeout))
    }
}
