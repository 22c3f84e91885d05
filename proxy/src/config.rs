//! Proxy configuration: where to listen and the limits that bound what clients can cost.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub redis_listen: SocketAddr,
    /// Client connections per listener; one more is answered with a "too many" error.
    pub max_client_connections: usize,
    /// How long a cached route is trusted before control is asked again.
    pub route_ttl: Duration,
    pub redis: RedisConfig,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Largest request (one command with its arguments) a client may send.
    pub max_request_bytes: usize,
    /// Time a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// Time to open and authenticate a backend connection.
    pub backend_connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 32 * 1024 * 1024,
            auth_timeout: Duration::from_secs(60),
            backend_connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyConfig {
    /// Loopback listeners on kernel-chosen ports, default limits: for tests and embedding.
    pub fn ephemeral() -> Self {
        Self {
            redis_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_client_connections: 10_000,
            route_ttl: Duration::from_secs(2),
            redis: RedisConfig::default(),
        }
    }
}
