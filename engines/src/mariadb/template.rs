//! One pre-initialised data directory per MariaDB version, made once with
//! `mariadb-install-db`; every new instance starts from a copy of it, which takes tens of
//! milliseconds instead of the installer's half second and more.

use std::path::{Path, PathBuf};

use tokio::sync::OnceCell;

use super::config::{TMP_DIR, common_settings};
use crate::confine::{Owner, owner, separate_users};
use crate::engine::EngineError;
use crate::process::log_tail;

pub struct Template {
    root: PathBuf,
    install_db: PathBuf,
    version: String,
    ready: OnceCell<PathBuf>,
}

impl Template {
    pub fn new(root: PathBuf, install_db: PathBuf, version: String) -> Self {
        Self { root, install_db, version, ready: OnceCell::new() }
    }

    /// The template's data directory, built on first use.
    pub async fn data_dir(&self) -> Result<PathBuf, EngineError> {
        self.ready.get_or_try_init(|| self.build()).await.cloned()
    }

    async fn build(&self) -> Result<PathBuf, EngineError> {
        let name: String = self
            .version
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
            .collect();
        let done = self.root.join(format!("mariadb-{name}"));
        if done.join("data").is_dir() {
            return Ok(done.join("data"));
        }
        // Several agents (or test processes) may share a template directory: each builds in a
        // scratch directory of its own, and the first to rename it into place wins.
        let scratch = self.root.join(format!(
            ".mariadb-{name}.building-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(EngineError::io(format!("creating {}", scratch.display())))?;
        let mut cnf = String::from("[mariadbd]\n");
        common_settings(&mut cnf);
        // The bootstrap's temporary tables stay in its own directory. With the shared /tmp,
        // about one install in ten failed while other servers were starting (tests that build
        // templates side by side): its temporary table's file was gone when it dropped it
        // (`Unknown table 'mysql.tmp_user_sys'`).
        let tmp = scratch.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(EngineError::io(format!("creating {}", tmp.display())))?;
        cnf.push_str(&format!("tmpdir={}\n", tmp.display()));
        let cnf_path = scratch.join("my.cnf");
        tokio::fs::write(&cnf_path, cnf)
            .await
            .map_err(EngineError::io("writing template my.cnf"))?;
        // Bootstrap runs with grant tables off: FLUSH PRIVILEGES loads them. Only root over the
        // unix socket (inside the instance's private directory) remains.
        let bootstrap = scratch.join("bootstrap.sql");
        tokio::fs::write(
            &bootstrap,
            "FLUSH PRIVILEGES;\nDELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';\n",
        )
        .await
        .map_err(EngineError::io("writing bootstrap.sql"))?;
        let log = scratch.join("install.log");
        let out = std::fs::File::create(&log).map_err(EngineError::io("creating install.log"))?;
        let err = out.try_clone().map_err(EngineError::io("creating install.log"))?;
        let mut cmd = tokio::process::Command::new(&self.install_db);
        cmd.arg(format!("--defaults-file={}", cnf_path.display()))
            .arg(format!("--datadir={}", scratch.join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .arg(format!("--extra-file={}", bootstrap.display()))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // The bootstrap reads nothing a tenant wrote, but no server needs root: under an
        // agent running as root it runs as a uid of its own, which must reach its directory.
        cmd.current_dir(&scratch);
        if separate_users() {
            let bootstrap_owner = Owner::template();
            owner::check_searchable(&scratch)
                .and_then(|()| owner::hand_over(&scratch, bootstrap_owner))
                .map_err(EngineError::io(format!("preparing {}", scratch.display())))?;
            cmd.uid(bootstrap_owner.uid).gid(bootstrap_owner.gid);
        }
        let started = std::time::Instant::now();
        let status = cmd.status().await.map_err(EngineError::io("running mariadb-install-db"))?;
        if !status.success() {
            return Err(EngineError::Failed(format!(
                "mariadb-install-db failed ({status}): {}",
                log_tail(&log, 500)
            )));
        }
        if let Err(e) = tokio::fs::rename(&scratch, &done).await {
            let _ = tokio::fs::remove_dir_all(&scratch).await;
            if !done.join("data").is_dir() {
                return Err(EngineError::io(format!("moving {} into place", done.display()))(e));
            }
        }
        tracing::info!(version = %self.version, ms = started.elapsed().as_millis() as u64, "built MariaDB template");
        Ok(done.join("data"))
    }
}

/// Copies a directory tree (the template into a new instance); files are small and few.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
