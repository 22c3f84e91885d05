//! Proxy configuration: where to listen and the limits that bound what clients can cost.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::control::RouteLimits;
use crate::mysql::pool::PoolConfig;
use crate::routes::WakePolicy;
use crate::tls::TlsSource;

/// How long a client has to log in unless configured otherwise: a login takes a few round
/// trips, and every connection still waiting holds a pending place.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a route stays cached unless a proxy is told otherwise.
pub const DEFAULT_ROUTE_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where Redis clients connect, in plaintext or TLS (told apart by the first byte).
    pub redis_listen: SocketAddr,
    /// A second Redis listener that accepts only TLS, for clients or load balancers that want
    /// a port of its own for `rediss://`.
    pub redis_tls_listen: Option<SocketAddr>,
    pub mysql_listen: SocketAddr,
    /// Where the proxy keeps key material it generates: the MySQL RSA key, and the
    /// self-signed TLS certificate unless `tls` names files.
    pub keys_dir: PathBuf,
    pub tls: TlsSource,
    /// Logged-in client connections over all listeners; a login past it is answered with a
    /// "too many connections" error.
    pub max_client_connections: usize,
    /// Connections not yet logged in, over all listeners and addresses.
    pub max_pending_connections: usize,
    /// Connections not yet logged in from one client address (an IPv6 /64): idle sockets
    /// from one place cannot crowd out everyone else's logins.
    pub max_pending_per_address: usize,
    /// Failed logins per second per client address and database before that address is told
    /// to slow down (its valid tokens still log in).
    pub failed_logins_per_second: u32,
    /// RSA decryptions (the expensive pre-authentication step) per second per address and
    /// database; an address gets four times that over all databases.
    pub rsa_per_second: u32,
    /// How long a cached route is trusted before control is asked again.
    pub route_ttl: Duration,
    /// How hard a sleeping database is woken before its clients get an error.
    pub wake: WakePolicy,
    /// Caps on every database's client and backend connections, below what plans allow.
    pub database_caps: Option<RouteLimits>,
    pub redis: RedisConfig,
    pub mysql: MysqlConfig,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Largest request (one command with its arguments) a client may send.
    pub max_request_bytes: usize,
    /// Time a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// Time to open and authenticate a backend connection.
    pub backend_connect_timeout: Duration,
    /// Shared (multiplexed) backend connections per database and RESP version.
    pub shared_connections: usize,
    /// How long a client waits for a connection of its own (transaction, blocking call,
    /// subscription) when the database has none left, before it gets an error.
    pub pool_wait: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 32 * 1024 * 1024,
            auth_timeout: DEFAULT_LOGIN_TIMEOUT,
            backend_connect_timeout: Duration::from_secs(5),
            shared_connections: 2,
            pool_wait: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MysqlConfig {
    /// Time a new connection has to complete its login.
    pub handshake_timeout: Duration,
    /// Largest command a client may send (the backends accept 64 MiB).
    pub max_packet: usize,
    pub backend_connect_timeout: Duration,
    pub pool: PoolConfig,
    /// Version announced before any backend has been seen.
    pub default_version: String,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_LOGIN_TIMEOUT,
            max_packet: 64 * 1024 * 1024,
            backend_connect_timeout: Duration::from_secs(5),
            pool: PoolConfig::default(),
            default_version: "5.5.5-10.11.19-MariaDB".into(),
        }
    }
}

impl ProxyConfig {
    /// The caps the shared admission enforces.
    pub fn admission(&self) -> crate::limits::AdmissionLimits {
        crate::limits::AdmissionLimits {
            max_pending: self.max_pending_connections,
            max_pending_per_address: self.max_pending_per_address,
            max_clients: self.max_client_connections,
        }
    }

    /// Sets how long a client has to log in, on every protocol.
    pub fn set_login_timeout(&mut self, timeout: Duration) {
        self.redis.auth_timeout = timeout;
        self.mysql.handshake_timeout = timeout;
    }

    /// Loopback listeners on kernel-chosen ports, default limits, a self-signed certificate
    /// in `keys_dir`: for tests and embedding.
    pub fn ephemeral(keys_dir: impl Into<PathBuf>) -> Self {
        let keys_dir = keys_dir.into();
        Self {
            redis_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            redis_tls_listen: None,
            mysql_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: TlsSource::SelfSigned { dir: keys_dir.clone() },
            keys_dir,
            max_client_connections: 10_000,
            max_pending_connections: 2_048,
            max_pending_per_address: 128,
            failed_logins_per_second: 20,
            rsa_per_second: 100,
            route_ttl: DEFAULT_ROUTE_TTL,
            wake: WakePolicy::default(),
            database_caps: None,
            redis: RedisConfig::default(),
            mysql: MysqlConfig::default(),
        }
    }
}
