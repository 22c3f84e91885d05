//! Test support for end-to-end tests: a whole Dormouse (control, local agent, proxy) started
//! in-process on loopback ports chosen by the kernel, in its own temporary data directory,
//! driven through its REST API and real clients.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use dormouse_control::up::{self, Running, UpConfig};
use dormouse_proxy::control::Route;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub mod resp;
pub mod s3;
pub mod scripted;

/// A running Dormouse in a temporary directory; everything stops when it is dropped.
pub struct Cluster {
    running: Option<Running>,
    /// The data directory: `_dir` itself, or a directory inside it.
    data: std::path::PathBuf,
    /// Where backups go: kept across restarts.
    backup: dormouse_control::backup::BackupConfig,
    _dir: TempDir,
    http: reqwest::Client,
}

/// A response from the API: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiResponse {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with a configuration adjusted by `configure` (smaller limits, shorter timeouts).
    pub async fn start_with(configure: impl FnOnce(&mut UpConfig)) -> anyhow::Result<Self> {
        Self::start_in("", configure).await
    }

    /// Starts with its data directory at `subdir` of a temporary directory (a deep path).
    pub async fn start_in(
        subdir: &str,
        configure: impl FnOnce(&mut UpConfig),
    ) -> anyhow::Result<Self> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        // The database servers run as users of their own and pass through it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let data = dir.path().join(subdir);
        std::fs::create_dir_all(&data)?;
        let config = Self::config(&data, configure)?;
        let backup = config.backup.clone();
        let running = up::start(config, CancellationToken::new()).await?;
        Ok(Self { running: Some(running), data, backup, _dir: dir, http: reqwest::Client::new() })
    }

    /// Test configuration: what a user gets, except that every test cluster shares one MariaDB
    /// template and one RSA key, each made once per machine (both cost a second of CPU).
    fn config(
        dir: &std::path::Path,
        configure: impl FnOnce(&mut UpConfig),
    ) -> anyhow::Result<UpConfig> {
        let uid = nix::unistd::geteuid();
        let shared = std::env::temp_dir().join(format!("dormouse-tests-shared-{uid}"));
        std::fs::create_dir_all(&shared)?;
        let mut config = UpConfig::ephemeral(dir);
        config.templates_dir = shared.join("templates");
        let keys = up::proxy_keys_dir(dir);
        std::fs::create_dir_all(&keys)?;
        std::fs::copy(shared_rsa_key(&shared)?, keys.join(dormouse_proxy::mysql::rsa::KEY_FILE))?;
        configure(&mut config);
        Ok(config)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("cluster is running")
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    pub fn admin_token(&self) -> String {
        self.running().admin_token.clone()
    }

    pub fn redis_port(&self) -> u16 {
        self.running().redis_addr.map(|a| a.port()).unwrap_or_default()
    }

    pub fn mysql_port(&self) -> u16 {
        self.running().mysql_addr.map(|a| a.port()).unwrap_or_default()
    }

    /// The proxy's self-signed certificate, for clients that verify it.
    pub fn tls_cert(&self) -> std::path::PathBuf {
        up::proxy_keys_dir(self.data_dir()).join("tls-cert.pem")
    }

    /// `mysql_async` options for logging in as `database` with `token`, over TLS or not.
    pub fn mysql_opts(&self, database: &str, token: &str, tls: bool) -> mysql_async::Opts {
        let mut opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.mysql_port())
            .user(Some(database))
            .pass(Some(token))
            .db_name(Some(database))
            // By default mysql_async, connected to 127.0.0.1, also tries the server's unix
            // socket (from `@@socket`): the backend's, which refuses the tenant's user. That
            // costs nothing but a refused login on the backend, which would skew the counts
            // tests make of backend connections.
            .prefer_socket(false);
        if tls {
            let ssl = mysql_async::SslOpts::default().with_root_certs(vec![self.tls_cert().into()]);
            opts = opts.ssl_opts(ssl);
        }
        opts.into()
    }

    /// Runs the real `mariadb` client against the proxy with `args` after the connection options.
    pub async fn mariadb(&self, user: &str, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        let port = self.mysql_port().to_string();
        let password = format!("-p{token}");
        let mut cmd = tokio::process::Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &port,
            "-u",
            user,
            &password,
            "--batch",
        ]);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.args(args).output())
            .await
            .context("mariadb timed out")??;
        Ok(out)
    }

    /// Stops everything cleanly and starts again on the same data directory (new ports).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let backup = self.backup.clone();
        let config = Self::config(&self.data, |c| c.backup = backup)?;
        self.running = Some(up::start(config, CancellationToken::new()).await?);
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    pub async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<ApiResponse> {
        let url = format!("{}{path}", self.running().api_url());
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
        Ok(ApiResponse { status, body })
    }

    /// Creates a tenant; returns its admin token.
    pub async fn tenant(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.tenant_with_id(name).await?.0)
    }

    /// Creates a tenant; returns its admin token and its id.
    pub async fn tenant_with_id(&self, name: &str) -> anyhow::Result<(String, String)> {
        let admin = self.admin_token();
        let r = self
            .api(Method::POST, "/v1/tenants", Some(&admin), Some(json!({ "name": name })))
            .await?;
        if r.status != StatusCode::CREATED {
            bail!("creating tenant {name}: {r:?}");
        }
        let token = r.body["token"].as_str().context("token")?.to_owned();
        Ok((token, r.body["id"].as_str().context("tenant id")?.to_owned()))
    }

    /// Where the proxy sends a database's clients, with the internal credentials it logs in
    /// with: for tests that compare the proxy with the server itself.
    pub async fn backend(&self, tenant_id: &str, database: &str) -> anyhow::Result<Route> {
        self.running()
            .service
            .wake(tenant_id, database)
            .await
            .map_err(|e| anyhow::anyhow!("waking {database}: {e}"))?
            .context("no such database")
    }

    /// Creates a database; returns the API's answer (with a database-scoped token).
    pub async fn database(&self, token: &str, name: &str, engine: &str) -> anyhow::Result<Value> {
        let body = json!({ "name": name, "engine": engine });
        let r = self.api(Method::POST, "/v1/databases", Some(token), Some(body)).await?;
        if r.status != StatusCode::CREATED {
            bail!("creating database {name}: {r:?}");
        }
        Ok(r.body)
    }

    /// Mints a token through the API.
    pub async fn token(&self, admin: &str, body: Value) -> anyhow::Result<(String, String)> {
        let r = self.api(Method::POST, "/v1/tokens", Some(admin), Some(body)).await?;
        if r.status != StatusCode::CREATED {
            bail!("creating token: {r:?}");
        }
        Ok((
            r.body["id"].as_str().unwrap_or_default().into(),
            r.body["token"].as_str().unwrap_or_default().into(),
        ))
    }

    /// A `redis://` URL for the `redis` crate.
    pub fn redis_url(&self, user: &str, token: &str) -> String {
        format!("redis://{user}:{token}@127.0.0.1:{}/", self.redis_port())
    }

    /// Runs the real `redis-cli` against the proxy with `args` after the connection options.
    pub async fn redis_cli(
        &self,
        user: Option<&str>,
        token: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let port = self.redis_port().to_string();
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"]);
        if let Some(u) = user {
            cmd.args(["--user", u]);
        }
        if let Some(t) = token {
            cmd.args(["--pass", t]);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.args(args).output())
            .await
            .context("redis-cli timed out")??;
        Ok(out)
    }
}

/// The RSA key every test cluster uses, generated on first use. Test binaries run in parallel,
/// so it is made in a scratch directory and renamed into place.
fn shared_rsa_key(shared: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = shared.join(dormouse_proxy::mysql::rsa::KEY_FILE);
    if !path.exists() {
        let scratch = tempfile::tempdir_in(shared)?;
        dormouse_proxy::mysql::rsa::RsaKey::load_or_create(scratch.path())?;
        let made = scratch.path().join(dormouse_proxy::mysql::rsa::KEY_FILE);
        if std::fs::rename(&made, &path).is_err() && !path.exists() {
            anyhow::bail!("could not place the shared RSA key at {}", path.display());
        }
    }
    Ok(path)
}

/// Open connections on Unix sockets named `name` under `dir`, as the kernel lists them: an
/// accepted connection carries its listener's path (and state 03, connected).
pub fn unix_socket_connections(dir: &std::path::Path, name: &str) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let suffix = format!("/{name}");
    let under = dir.to_string_lossy();
    Ok(table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| {
            f.get(5) == Some(&"03")
                && f.get(7).is_some_and(|p| p.starts_with(under.as_ref()) && p.ends_with(&suffix))
        })
        .count())
}

/// Trimmed stdout of a finished command.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Clients that keep a database busy in the background while a test runs: each runs until
/// [`Background::finish`] and returns how many rounds it did, having checked each itself.
#[derive(Default)]
pub struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
}

impl Background {
    /// Starts a client: `client(stop)` runs rounds until `stop` is set.
    pub fn spawn<F, Fut>(&mut self, client: F)
    where
        F: FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(client(self.stop.clone())));
    }

    /// Stops every client; fails if one failed, and asserts each did at least one round.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let rounds = task.await??;
            assert!(rounds > 0, "a load client never ran");
        }
        Ok(())
    }
}

/// Where a transcript from the proxy first differs from the server's, for the failure message.
pub fn first_difference(name: &str, server: &[String], proxy: &[String]) -> Option<String> {
    (server != proxy).then(|| {
        let at = server.iter().zip(proxy).take_while(|(s, p)| s == p).count();
        format!(
            "{name}, first difference:\n  server: {:?}\n  proxy:  {:?}",
            server.get(at),
            proxy.get(at)
        )
    })
}

/// Polls `check` every 10 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
