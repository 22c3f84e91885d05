//! The data plane. Stateless listeners speak each database's wire protocol to stock clients,
//! verify the token given as the password offline, route to the tenant's instance and relay.
//!
//! Reading order:
//! - [`config`]: listen addresses and limits.
//! - [`claims`]: what a token says (shared with control, which signs them).
//! - [`control`]: what the proxy asks of control (keys, routes, revocations), with the HTTP client.
//! - [`auth`]: token verification against the cached JWKS, and who may reach which database.
//! - [`routes`]: the route cache.
//! - [`listener`]: the accept loop: connection limit, task tracking, drain on shutdown.
//! - [`redis`]: the Redis front end: codec, commands, backend connections, the session relay.

pub mod auth;
pub mod claims;
pub mod config;
pub mod control;
pub mod listener;
pub mod redis;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;
pub use control::ControlPlane;

/// A proxy whose listeners are bound (so their addresses are known) but not yet serving.
pub struct Proxy {
    redis: TcpListener,
    redis_ctx: Arc<redis::RedisFrontend>,
    max_connections: usize,
}

impl Proxy {
    /// Binds the listeners named in `config`.
    pub async fn bind(
        config: ProxyConfig,
        control: Arc<dyn ControlPlane>,
    ) -> std::io::Result<Self> {
        let verifier = Arc::new(auth::TokenVerifier::new(control.clone()));
        let routes = Arc::new(routes::RouteCache::new(control, config.route_ttl));
        let redis = TcpListener::bind(config.redis_listen).await?;
        let redis_ctx = Arc::new(redis::RedisFrontend::new(
            config.redis.clone(),
            verifier,
            routes,
        ));
        Ok(Self {
            redis,
            redis_ctx,
            max_connections: config.max_client_connections,
        })
    }

    pub fn redis_addr(&self) -> std::io::Result<SocketAddr> {
        self.redis.local_addr()
    }

    /// Serves until `shutdown`, then waits for open sessions to end.
    pub async fn run(self, shutdown: CancellationToken) {
        listener::serve(self.redis, self.max_connections, shutdown, self.redis_ctx).await;
    }
}
