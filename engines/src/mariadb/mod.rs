//! The MariaDB driver: one `mariadbd` per database, started from a copy of a template data
//! directory, with a schema named after the database and one internal user that holds every
//! privilege on that schema only. Readiness means that user can log in.

mod config;
mod probe;
mod template;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

pub use config::{INTERNAL_USER, READONLY_USER, SOCKET_FILE, native_password_hash, quote_ident};
use config::{TMP_DIR, render_init_sql, render_my_cnf, running_as_root};
use template::{Template, copy_tree};

use crate::engine::{Engine, EngineError, Instance, Launch, ProbeError, find_program, socket_path};
use crate::redis::write_private;
use crate::spec::{EngineKind, InstanceSpec};

/// Runs `mariadbd` processes.
pub struct MariaDbEngine {
    server: PathBuf,
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
        Ok(Self { server, template: Template::new(root, install_db, version) })
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
        write_private(&cnf, render_my_cnf(instance, running_as_root()).as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", cnf.display())))?;
        let init = instance.dir.join("init.sql");
        write_private(&init, render_init_sql(instance).as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", init.display())))?;
        // --defaults-file must come first, and keeps /etc/mysql out.
        Ok(Launch {
            program: self.server.clone(),
            args: vec![format!("--defaults-file={}", cnf.display()).into()],
        })
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
