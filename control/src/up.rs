//! `dormouse up` (control, an in-process host agent and the proxy in one process) and
//! `dormouse control` (the same without the proxy). Start-up order: data directory, store,
//! signing key, admin token, agent, reconcile (so existing databases are back before clients
//! arrive), then the listeners.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dormouse_engines::engine::Engine;
use dormouse_engines::mariadb::MariaDbEngine;
use dormouse_engines::redis::RedisEngine;
use dormouse_engines::supervisor::RestartPolicy;
use dormouse_engines::{HostAgent, LocalAgent};
use dormouse_proxy::claims::Role;
use dormouse_proxy::{Proxy, ProxyConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::server::ApiLimits;
use crate::api::{AppState, Health, router};
use crate::keys::KeyRing;
use crate::local::LocalControl;
use crate::reconciler;
use crate::service::{ControlService, MAX_TOKEN_TTL, PublicEndpoints};
use crate::store::SqliteStore;

/// The operator's token, written on first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    /// `None` runs control without the proxy (`dormouse control`).
    pub proxy: Option<ProxyConfig>,
    /// Host name put in connection strings; defaults to the proxy's listen address (the API's
    /// without an in-process proxy).
    pub public_host: Option<String>,
    /// Ports put in connection strings, where clients reach the proxies' Redis and MySQL
    /// listeners; default to the in-process proxy's. Without an in-process proxy, they are
    /// where `dormouse proxy` (or a load balancer in front of several) listens.
    pub public_ports: Option<PublicPorts>,
    pub reconcile_every: Duration,
    /// Pre-initialised engine data directories (MariaDB), made once and copied per database.
    /// Safe to share between installations on one host.
    pub templates_dir: PathBuf,
    /// How often idle databases are looked for.
    pub idle_check_every: Duration,
    /// Provisioned, stopped instances kept ready per engine, so creating is as fast as waking.
    pub warm_pool: usize,
    /// Connection caps and timeouts of the API.
    pub api: ApiLimits,
    /// Where backups go and how many run at once.
    pub backup: crate::backup::BackupConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPorts {
    pub redis: u16,
    pub mysql: u16,
}

/// Where connection strings send clients: the configured host, else the address the nearest
/// listener is bound to (loopback when it is bound to every address).
fn public_endpoints(config: &UpConfig, bound: SocketAddr, ports: PublicPorts) -> PublicEndpoints {
    let host = config.public_host.clone().unwrap_or_else(|| match bound.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        ip => ip.to_string(),
    });
    PublicEndpoints { host, redis_port: Some(ports.redis), mysql_port: Some(ports.mysql) }
}

/// The proxy's key material (TLS certificate, MySQL RSA key) within the data directory.
pub fn proxy_keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("proxy")
}

impl UpConfig {
    /// Everything on loopback with kernel-chosen ports: for tests.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            proxy: Some(ProxyConfig::ephemeral(proxy_keys_dir(&data_dir))),
            templates_dir: data_dir.join("templates"),
            backup: crate::backup::BackupConfig::local(&data_dir),
            data_dir,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_host: None,
            public_ports: None,
            reconcile_every: Duration::from_secs(10),
            idle_check_every: Duration::from_secs(5),
            warm_pool: 1,
            api: ApiLimits::default(),
        }
    }
}

/// A running `dormouse up`.
pub struct Running {
    pub api_addr: SocketAddr,
    pub redis_addr: Option<SocketAddr>,
    /// The proxy's TLS-only Redis listener, if configured.
    pub redis_tls_addr: Option<SocketAddr>,
    pub mysql_addr: Option<SocketAddr>,
    /// The proxy's MySQL backend pool, for its counters.
    pub mysql_pool: Option<Arc<dormouse_proxy::mysql::pool::Pool>>,
    pub admin_token: String,
    pub admin_token_path: PathBuf,
    pub service: Arc<ControlService>,
    pub agent: Arc<LocalAgent>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// A token that cancels everything when triggered.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shut down (by [`Self::shutdown_token`]) and every server has stopped.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "dormouse task failed");
        }
    }

    /// Stops listeners, sessions and every database server, then returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Installs the process-wide TLS crypto provider (several dependencies bring their own; with
/// two compiled in, rustls cannot pick one and panics at first use).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Worker threads for a server process when none are asked for: half the cores, at least one.
/// The database servers run on the same host and need the rest; and a proxy relays each
/// command from one task to another, so every extra worker that sits idle turns those
/// hand-offs into cross-thread wake-ups (on 2 cores, a worker per core cost a third more CPU
/// per proxied command than one; see benches/README.md).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The runtime a server process (`up`, `control`, `proxy`) runs on. With one worker it is
/// tokio's current-thread scheduler: everything then runs on the thread that started it,
/// where a one-worker multi-thread runtime would hand each connection's tasks from the main
/// thread to its worker and keep the work-stealing bookkeeping for nobody to steal. Measured
/// on 2 cores, pipelined Redis through the proxy took about a tenth less proxy CPU per command
/// that way (benches/README.md).
pub fn server_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads.unwrap_or_else(default_threads).max(1);
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
}

/// Descriptors a proxy may hold at its caps: a client connection each, a backend connection
/// for every few clients, and room for everything else (database servers' pipes, the store).
pub fn descriptors_needed(proxy: &ProxyConfig) -> u64 {
    let clients = (proxy.max_client_connections + proxy.max_pending_connections) as u64;
    clients + clients / 4 + 1024
}

/// Raises the open-files limit to its hard maximum: every client connection the proxy and the
/// API hold is a descriptor, and the usual soft limit (1024) would cap a pooler at a few
/// hundred clients. Warns when even the hard limit is below `wanted`, as the caps then cannot
/// all be reached (accept fails instead). Returns the limit now in force.
pub fn raise_open_files_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-files limit");
            return 0;
        }
    };
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the open-files limit is low for the configured connection caps; raise it \
             (ulimit -n, or LimitNOFILE= in a systemd unit) or lower the caps"
        );
    } else {
        tracing::debug!(limit, "open-files limit");
    }
    limit
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// The store, in the data directory.
const STORE_FILE: &str = "control.db";

/// The data directory: private, except that database servers running as users of their own
/// pass through it to their instance directories, so it is then searchable but not listable
/// (0711, see `dormouse_engines::confine`). The store is made 0600 before SQLite opens it:
/// SQLite gives its journal files the database file's mode.
fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = dormouse_engines::confine::ancestor_dir_mode();
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    let store = dir.join(STORE_FILE);
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&store)?;
    for file in [store.clone(), store.with_extension("db-wal"), store.with_extension("db-shm")] {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The engines this host can run. The MariaDB template is built in the background right
/// away, so the first MySQL database is created as fast as the rest.
fn detect_engines(templates_dir: &Path) -> Vec<Arc<dyn Engine>> {
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    match RedisEngine::detect() {
        Ok(redis) => engines.push(Arc::new(redis)),
        Err(e) => tracing::warn!(error = %e, "redis databases unavailable"),
    }
    match MariaDbEngine::detect(templates_dir) {
        Ok(mariadb) => {
            let mariadb = Arc::new(mariadb);
            let preparing = mariadb.clone();
            tokio::spawn(async move {
                if let Err(e) = preparing.prepare().await {
                    tracing::error!(error = %e, "building the MariaDB template");
                }
            });
            engines.push(mariadb);
        }
        Err(e) => tracing::warn!(error = %e, "mysql databases unavailable"),
    }
    engines
}

/// Starts everything; it all stops when `shutdown` is cancelled (see [`Running::wait`]).
pub async fn start(config: UpConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    install_crypto_provider();
    let proxy_needs = config.proxy.as_ref().map_or(0, descriptors_needed);
    raise_open_files_limit(proxy_needs + config.api.max_connections as u64);
    let dir = &config.data_dir;
    create_data_dir(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let store =
        Arc::new(SqliteStore::open(&dir.join(STORE_FILE)).await.context("opening the store")?);
    let keys = KeyRing::load_or_create(dir)?;
    let agent = Arc::new(
        LocalAgent::new(
            dir.join("instances"),
            detect_engines(&config.templates_dir),
            RestartPolicy::default(),
        )?
        .with_warm_pool(config.warm_pool),
    );
    let backups = crate::backup::Backups::open(&config.backup, dir)?;
    let service = Arc::new(
        ControlService::new(store, keys, agent.clone() as Arc<dyn HostAgent>, backups).await?,
    );
    let (admin_token, admin_token_path) = ensure_admin_token(&service, dir).await?;

    reconciler::reconcile_once(&service).await;
    service.recover_backups().await?;

    let health = Arc::new(Health { proxy_expected: config.proxy.is_some(), ..Health::default() });
    let api = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", config.api_listen))?;
    let api_addr = api.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();

    let (mut redis_addr, mut redis_tls_addr, mut mysql_addr, mut mysql_pool) =
        (None, None, None, None);
    if let Some(proxy_config) = config.proxy.clone() {
        let proxy = Proxy::bind(proxy_config, Arc::new(LocalControl(service.clone())))
            .await
            .context("starting the proxy")?;
        let (redis, mysql) = (proxy.redis_addr()?, proxy.mysql_addr()?);
        redis_addr = Some(redis);
        redis_tls_addr = proxy.redis_tls_addr()?;
        mysql_addr = Some(mysql);
        mysql_pool = Some(proxy.mysql_pool());
        service.metrics().add_backend_pool(proxy.mysql_pool());
        let ports =
            config.public_ports.unwrap_or(PublicPorts { redis: redis.port(), mysql: mysql.port() });
        service.set_endpoints(public_endpoints(&config, redis, ports));
        health.set_proxy_ready(true);
        tasks.spawn(proxy.run(shutdown.clone()));
    } else if let Some(ports) = config.public_ports {
        service.set_endpoints(public_endpoints(&config, api_addr, ports));
    }

    let app = router(AppState { service: service.clone(), health });
    tasks.spawn(crate::api::server::serve(api, app, config.api, shutdown.clone()));
    tasks.spawn(reconciler::run(service.clone(), config.reconcile_every, shutdown.clone()));
    tasks.spawn(crate::suspender::run(service.clone(), config.idle_check_every, shutdown.clone()));
    tasks.spawn(crate::backup::schedule::run(service.clone(), shutdown.clone()));
    tasks.spawn(agent.clone().run_warm_pool(shutdown.clone()));

    let stopping = agent.clone();
    let task = tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        stopping.shutdown().await;
        tracing::info!("all database servers stopped");
    });
    Ok(Running {
        api_addr,
        redis_addr,
        redis_tls_addr,
        mysql_addr,
        mysql_pool,
        admin_token,
        admin_token_path,
        service,
        agent,
        shutdown,
        task,
    })
}

/// Reuses the operator token in `admin.token` while it is valid; otherwise writes a new one.
async fn ensure_admin_token(
    service: &ControlService,
    dir: &Path,
) -> anyhow::Result<(String, PathBuf)> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if matches!(service.caller(&existing).await, Ok(crate::service::Caller::Operator)) {
            return Ok((existing, path));
        }
        tracing::warn!(path = %path.display(), "admin token is invalid or revoked; writing a new one");
        std::fs::remove_file(&path).ok();
    }
    let issued = service.issue(None, None, Role::Admin, MAX_TOKEN_TTL).await?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", issued.token)?;
    tracing::info!(path = %path.display(), "wrote the operator's admin token");
    Ok((issued.token, path))
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::server_runtime;

    #[test]
    fn one_worker_runs_on_the_current_thread_and_more_share_work() -> std::io::Result<()> {
        let one = server_runtime(Some(1))?;
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Tasks spawned on it run while `block_on` drives it.
        assert_eq!(one.block_on(async { tokio::spawn(async { 7 }).await.ok() }), Some(7));
        let two = server_runtime(Some(2))?;
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
        Ok(())
    }
}
