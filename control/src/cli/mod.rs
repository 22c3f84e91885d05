//! The `dormouse` command line: server commands (`up`, `control`, `proxy`) and client commands
//! that call the REST API (`tenant`, `db`, `token`).

mod client;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dormouse", version, about = "Databases that sleep until you connect")]
pub struct Cli {
    /// Control API base URL (client commands).
    #[arg(long, global = true, env = "DORMOUSE_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// Token for client commands; defaults to the admin token in the data directory.
    #[arg(long, global = true, env = "DORMOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Data directory: store, signing key, admin token, instances.
    #[arg(long, global = true, env = "DORMOUSE_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Worker threads of a server command (default: half the cores, at least one).
    #[arg(long, global = true, env = "DORMOUSE_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run control, a local host agent and the proxy in one process.
    Up(UpArgs),
    /// Run control and a local host agent, without the proxy.
    Control(ControlArgs),
    /// Run the proxy alone against a control plane.
    Proxy(ProxyArgs),
    /// Manage tenants (operator).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage databases.
    #[command(subcommand)]
    Db(DbCommand),
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Take, list and delete backups.
    #[command(subcommand)]
    Backup(BackupCommand),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a database now (hot if it runs; a suspended one is not woken).
    Create {
        database: String,
        /// A name to remember it by.
        #[arg(long)]
        name: Option<String>,
        /// Wait until it has finished, showing progress.
        #[arg(long)]
        wait: bool,
        /// Only what changed since the newest backup it can build on (MySQL, while it runs;
        /// otherwise a full one).
        #[arg(long)]
        incremental: bool,
    },
    /// List backups, newest first.
    List {
        /// Only this database's.
        #[arg(long)]
        database: Option<String>,
    },
    /// Show one backup.
    Show { id: String },
    /// Delete a backup.
    Delete { id: String },
    /// Show a database's backup schedule, or change it.
    Schedule {
        database: String,
        /// How often: an interval (6h, 1d) or a cron expression ("0 3 * * *", UTC).
        #[arg(long)]
        every: Option<String>,
        /// Scheduled backups kept whatever their age.
        #[arg(long)]
        keep: Option<u32>,
        /// Scheduled backups younger than this many days are kept too.
        #[arg(long)]
        keep_days: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Where the REST API listens.
    #[arg(long, env = "DORMOUSE_API_LISTEN", default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// Host name clients should use in connection strings (default: the listen address).
    #[arg(long, env = "DORMOUSE_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Provisioned, stopped instances kept ready per engine, so creating is as fast as waking.
    #[arg(long, env = "DORMOUSE_WARM_POOL", default_value_t = 1)]
    pub warm_pool: usize,
    /// Open API connections; one more is answered 503 and closed.
    #[arg(long, env = "DORMOUSE_API_MAX_CONNECTIONS", default_value_t = 2_048)]
    pub api_max_connections: usize,
    /// Open API connections from one client address (an IPv6 /64); keep it above what one
    /// `dormouse proxy` host asks at once.
    #[arg(long, env = "DORMOUSE_API_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub api_max_connections_per_address: usize,
    /// Time an API client has to send a request's headers; also how long a kept-alive
    /// connection may sit idle.
    #[arg(long, env = "DORMOUSE_API_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_header_timeout: Duration,
    /// Time an API client has to send a request's body.
    #[arg(long, env = "DORMOUSE_API_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_body_timeout: Duration,
    /// Largest API request body, in bytes.
    #[arg(long, env = "DORMOUSE_API_MAX_BODY", default_value_t = 64 * 1024)]
    pub api_max_body: usize,
    #[command(flatten)]
    pub backup: BackupArgs,
}

/// Where backups are kept.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// `local` (the data directory's backups/) or `s3://bucket/prefix` for any S3-compatible
    /// store.
    #[arg(long, env = "DORMOUSE_BACKUP_STORE", default_value = "local", value_parser = check_store)]
    pub backup_store: String,
    /// The S3 endpoint, for stores other than AWS (`http://` is allowed only when given here).
    #[arg(long, env = "DORMOUSE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "DORMOUSE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Default: AWS_ACCESS_KEY_ID.
    #[arg(long, env = "DORMOUSE_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// Default: AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "DORMOUSE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Backups that run at once on this host; the rest wait in a queue.
    #[arg(long, env = "DORMOUSE_BACKUP_CONCURRENCY", default_value_t = 1)]
    pub backup_concurrency: usize,
}

impl BackupArgs {
    pub fn config(&self, data_dir: &std::path::Path) -> crate::backup::BackupConfig {
        let mut config = crate::backup::BackupConfig::local(data_dir);
        config.concurrency = self.backup_concurrency.max(1);
        // Checked when parsed: anything but `local` is a valid `s3://` address.
        if let Ok(mut s3) = crate::backup::S3Config::from_url(&self.backup_store) {
            s3.endpoint = self.s3_endpoint.clone();
            s3.region = self.s3_region.clone();
            s3.access_key_id = self.s3_access_key_id.clone();
            s3.secret_access_key = self.s3_secret_access_key.clone();
            config.storage = crate::backup::StorageConfig::S3(s3);
        }
        config
    }
}

/// `local`, or an `s3://` address.
fn check_store(value: &str) -> Result<String, String> {
    if value != "local" {
        crate::backup::S3Config::from_url(value)?;
    }
    Ok(value.to_owned())
}

#[derive(Debug, Args)]
pub struct ProxyListenArgs {
    /// Where the Redis listener listens.
    #[arg(long, env = "DORMOUSE_REDIS_LISTEN", default_value = "127.0.0.1:6380")]
    pub redis_listen: SocketAddr,
    /// A port for Redis clients that only accepts TLS (`rediss://`). The Redis listener above
    /// accepts TLS too, told apart from plaintext by the client's first byte.
    #[arg(long, env = "DORMOUSE_REDIS_TLS_LISTEN")]
    pub redis_tls_listen: Option<SocketAddr>,
    /// Where the MySQL listener listens.
    #[arg(long, env = "DORMOUSE_MYSQL_LISTEN", default_value = "127.0.0.1:3307")]
    pub mysql_listen: SocketAddr,
    /// TLS certificate (PEM) for client connections; default: a self-signed one in the data
    /// directory's `proxy/`.
    #[arg(long, env = "DORMOUSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "DORMOUSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest Redis request a client may send, in bytes.
    #[arg(long, env = "DORMOUSE_REDIS_MAX_REQUEST", default_value_t = 32 * 1024 * 1024)]
    pub redis_max_request: usize,
    /// Logged-in client connections over both listeners.
    #[arg(long, env = "DORMOUSE_MAX_CLIENT_CONNECTIONS", default_value_t = 10_000)]
    pub max_client_connections: usize,
    /// Connections that have not logged in yet, over both listeners.
    #[arg(long, env = "DORMOUSE_MAX_PENDING_CONNECTIONS", default_value_t = 2_048)]
    pub max_pending_connections: usize,
    /// Connections that have not logged in yet from one client address (an IPv6 /64); keep
    /// it above the connections one application host (or NAT) opens at once.
    #[arg(long, env = "DORMOUSE_MAX_PENDING_PER_ADDRESS", default_value_t = 128)]
    pub max_pending_per_address: usize,
    /// Time a new connection has to log in (MySQL handshake, Redis AUTH/HELLO).
    #[arg(long, env = "DORMOUSE_LOGIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub login_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub proxy: ProxyListenArgs,
    /// On first start, create a tenant `demo` with databases `demo-redis` and `demo-mysql`.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Port clients reach the proxies' Redis listener on, for connection strings (where
    /// `dormouse proxy` listens, or the load balancer in front of several).
    #[arg(long, env = "DORMOUSE_PUBLIC_REDIS_PORT", default_value_t = 6380)]
    pub public_redis_port: u16,
    /// Port clients reach the proxies' MySQL listener on, for connection strings.
    #[arg(long, env = "DORMOUSE_PUBLIC_MYSQL_PORT", default_value_t = 3307)]
    pub public_mysql_port: u16,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub proxy: ProxyListenArgs,
    /// Control API base URL; the proxy authenticates to it with `--token` (the operator's).
    #[arg(long, env = "DORMOUSE_CONTROL", default_value = "http://127.0.0.1:7070")]
    pub control: String,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its admin token.
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create a database and print how to connect.
    Create {
        name: String,
        /// mysql or redis (may be left out with --from-backup or --from-database).
        #[arg(long, default_value = "")]
        engine: String,
        /// micro, small or medium.
        #[arg(long)]
        plan: Option<String>,
        /// Suspend after this long without client connections (e.g. 5m; 0 = never).
        #[arg(long, value_parser = parse_idle)]
        idle_timeout: Option<u32>,
        /// Provision it when the first client connects instead of now.
        #[arg(long)]
        lazy: bool,
        /// Accept clients only from this network (CIDR or address; repeat for more).
        /// Default: any address.
        #[arg(long = "allow", value_name = "CIDR")]
        allow: Vec<String>,
        /// Start from this backup's data (a branch); the engine may then be left out.
        #[arg(long, value_name = "BACKUP_ID", conflicts_with = "from_database")]
        from_backup: Option<String>,
        /// Start from the newest backup of this database (a deleted one too).
        #[arg(long, value_name = "DATABASE")]
        from_database: Option<String>,
        /// With --from-database (MySQL): its state at this time (RFC 3339).
        #[arg(long, requires = "from_database")]
        at: Option<String>,
        /// Delete it (the safe way) after this long, e.g. 2h, 7d: for previews and tests.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Replace a database's data with a backup's; what it held is kept as a new backup.
    Restore {
        name: String,
        #[arg(long, value_name = "BACKUP_ID", required_unless_present = "time")]
        backup: Option<String>,
        /// MySQL: the state it had at this time (RFC 3339, e.g. 2026-12-06T10:15:00Z).
        #[arg(long, conflicts_with = "backup")]
        time: Option<String>,
    },
    /// Change a database's settings.
    Set {
        name: String,
        /// Suspend after this long without client connections (e.g. 5m; 0 = never).
        #[arg(long, value_parser = parse_idle)]
        idle_timeout: Option<u32>,
        /// Accept clients only from these networks (CIDR or address; repeat for more),
        /// replacing the current list.
        #[arg(long = "allow", value_name = "CIDR", conflicts_with = "allow_any")]
        allow: Vec<String>,
        /// Accept clients from any address again.
        #[arg(long)]
        allow_any: bool,
    },
    /// Suspend a database now; the next client connection wakes it.
    Suspend { name: String },
    /// Start a suspended database now.
    Resume { name: String },
    /// List databases.
    List,
    /// Show one database.
    Show { name: String },
    /// Delete a database. Its data is kept as a final backup for 7 days (see `undelete`),
    /// unless --now.
    Delete {
        name: String,
        /// Do not ask for the name to be typed.
        #[arg(long)]
        yes: bool,
        /// Skip the final backup: it cannot be undeleted.
        #[arg(long)]
        now: bool,
    },
    /// Bring back a database deleted in the last 7 days (it comes back suspended).
    Undelete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token.
    Create {
        /// Limit the token to one database.
        #[arg(long)]
        database: Option<String>,
        /// admin, readwrite (default) or readonly.
        #[arg(long)]
        role: Option<String>,
        /// Lifetime, e.g. 1h, 30d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

/// An idle timeout in seconds from `0`, `90`, `5m`, `1h` and the like.
fn parse_idle(value: &str) -> Result<u32, String> {
    if let Ok(seconds) = value.parse::<u32>() {
        return Ok(seconds);
    }
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    u32::try_from(d.as_secs()).map_err(|_| "too long".to_owned())
}

/// `/var/lib/dormouse` for root (the database servers, running as users of their own, could
/// not pass through root's 0700 home), else the user's XDG data directory.
fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/dormouse");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("dormouse");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/dormouse"),
        None => PathBuf::from(".dormouse"),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Up(args) => serve::up(&cli, args).await,
        Command::Control(args) => serve::control(&cli, args).await,
        Command::Proxy(args) => serve::proxy(&cli, args).await,
        Command::Tenant(cmd) => client::tenant(&cli, cmd).await,
        Command::Db(cmd) => client::db(&cli, cmd).await,
        Command::Token(cmd) => client::token(&cli, cmd).await,
        Command::Backup(cmd) => client::backup(&cli, cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::StorageConfig;

    fn backup_config(args: &[&str]) -> Result<crate::backup::BackupConfig, clap::Error> {
        let cli =
            Cli::try_parse_from(["dormouse", "--data-dir", "/d", "control"].iter().chain(args))?;
        let Command::Control(control) = &cli.command else { panic!("parsed as control") };
        Ok(control.listen.backup.config(&cli.data_dir))
    }

    #[test]
    fn backups_go_to_the_data_directory_or_the_s3_store_named() -> Result<(), clap::Error> {
        let local = backup_config(&[])?;
        assert_eq!(local.storage, StorageConfig::Local { dir: "/d/backups".into() });
        let s3 = backup_config(&[
            "--backup-store",
            "s3://bucket/some/prefix",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--backup-concurrency",
            "2",
        ])?;
        let StorageConfig::S3(s3_config) = &s3.storage else { panic!("s3: {s3:?}") };
        assert_eq!(s3_config.bucket, "bucket");
        assert_eq!(s3_config.prefix, "some/prefix");
        assert_eq!(s3_config.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.concurrency, 2);
        assert!(backup_config(&["--backup-store", "ftp://x"]).is_err());
        Ok(())
    }
}
