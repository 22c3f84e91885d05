//! The data plane. Stateless listeners speak each database's wire protocol to stock clients,
//! verify the token given as the password offline, route to the tenant's instance and relay.
//!
//! Reading order:
//! - [`config`]: listen addresses and limits.
//! - [`claims`]: what a token says (shared with control, which signs them).
//! - [`control`]: what the proxy asks of control (keys, routes, revocations), with the HTTP client.
//! - [`auth`]: token verification against the cached JWKS, and who may reach which database.
//! - [`allowlist`]: the client addresses a database accepts.
//! - [`routes`]: the route cache.
//! - [`listener`]: the accept loop: admission, task tracking, drain on shutdown.
//! - [`limits`]: admission (pending and logged-in connections, per address), client
//!   connections per database.
//! - [`throttle`]: failed logins and RSA work per address and database.
//! - [`tls`]: TLS for client connections (MySQL's SSLRequest; Redis by first byte or port).
//! - `upstream`: connections to the databases' servers (Unix socket or TCP).
//! - [`redis`]: the Redis front end: codec, commands, backend connections, the session relay.
//! - [`mysql`]: the MySQL front end: login, backend connections and their pool, the relay.
//! - `fuzzing` (feature `fuzzing`): fuzz harnesses for every decoder of network input.

pub mod allowlist;
pub mod auth;
mod buffers;
pub mod claims;
pub mod config;
pub mod control;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod mysql;
pub mod redis;
pub mod routes;
pub mod throttle;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;
pub use control::ControlPlane;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Rsa(#[from] mysql::rsa::RsaError),
    #[error("creating {0}: {1}")]
    KeysDir(String, std::io::Error),
}

/// A proxy whose listeners are bound (so their addresses are known) but not yet serving.
pub struct Proxy {
    redis: TcpListener,
    redis_tls: Option<TcpListener>,
    mysql: TcpListener,
    redis_front: Arc<redis::RedisFrontend>,
    mysql_front: Arc<mysql::MysqlFrontend>,
    throttle: Arc<throttle::Throttle>,
    admission: Arc<limits::Admission>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr).await.map_err(|source| ProxyError::Bind { addr, source })
}

impl Proxy {
    /// Loads or creates key material and binds the listeners named in `config`.
    pub async fn bind(
        config: ProxyConfig,
        control: Arc<dyn ControlPlane>,
    ) -> Result<Self, ProxyError> {
        std::fs::create_dir_all(&config.keys_dir)
            .map_err(|e| ProxyError::KeysDir(config.keys_dir.display().to_string(), e))?;
        let tls = tls::acceptor(&config.tls)?;
        let rsa = mysql::rsa::RsaKey::load_or_create(&config.keys_dir)?;
        let verifier = Arc::new(auth::TokenVerifier::new(control.clone()));
        let routes = Arc::new(
            routes::RouteCache::new(control.clone(), config.route_ttl, config.wake.clone())
                .with_caps(config.database_caps),
        );
        let redis = bind(config.redis_listen).await?;
        let redis_tls = match config.redis_tls_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mysql = bind(config.mysql_listen).await?;
        let throttle = Arc::new(throttle::Throttle::new(
            config.failed_logins_per_second,
            config.rsa_per_second,
        ));
        let redis_front = Arc::new(redis::RedisFrontend::new(
            config.redis.clone(),
            verifier.clone(),
            routes.clone(),
            Some(tls.clone()),
            throttle.clone(),
            control.clone(),
        ));
        let mysql_front = Arc::new(mysql::MysqlFrontend::new(
            config.mysql.clone(),
            verifier,
            routes.clone(),
            Some(tls),
            rsa,
            throttle.clone(),
            control.clone(),
        ));
        // Before a database's server stops or moves, its routes and idle pooled connections go.
        let pool = mysql_front.pool.clone();
        let redis_pools = redis_front.clone();
        control.watch(Arc::new(move |event: &control::ControlEvent| {
            use control::ControlEvent::*;
            match event {
                Suspending { tenant, database } | Deleted { tenant, database } => {
                    routes.invalidate(tenant, database);
                    pool.forget(tenant, database);
                    redis_pools.pools.forget(tenant, database);
                }
                Woke { tenant, database } | Changed { tenant, database } => {
                    routes.invalidate(tenant, database)
                }
            }
        }));
        Ok(Self {
            redis,
            redis_tls,
            mysql,
            redis_front,
            mysql_front,
            throttle,
            admission: limits::Admission::new(config.admission()),
        })
    }

    pub fn redis_addr(&self) -> std::io::Result<SocketAddr> {
        self.redis.local_addr()
    }

    /// The TLS-only Redis listener's address, if there is one.
    pub fn redis_tls_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.redis_tls.as_ref().map(TcpListener::local_addr).transpose()
    }

    pub fn mysql_addr(&self) -> std::io::Result<SocketAddr> {
        self.mysql.local_addr()
    }

    /// The MySQL backend pool (for its counters).
    pub fn mysql_pool(&self) -> Arc<mysql::pool::Pool> {
        self.mysql_front.pool.clone()
    }

    /// Serves until `shutdown`, then waits for open sessions to end.
    pub async fn run(self, shutdown: CancellationToken) {
        let pool = self.mysql_front.pool.clone();
        let throttle = self.throttle.clone();
        let forget = shutdown.clone();
        let limiter_cleanup = async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => throttle.forget_quiet(),
                    () = forget.cancelled() => return,
                }
            }
        };
        let tls_only = Arc::new(redis::RedisTlsOnly(self.redis_front.clone()));
        let admission = self.admission.clone();
        let redis_tls = async {
            if let Some(listener) = self.redis_tls {
                listener::serve(listener, admission, shutdown.clone(), tls_only).await;
            }
        };
        tokio::join!(
            listener::serve(self.redis, self.admission.clone(), shutdown.clone(), self.redis_front),
            redis_tls,
            listener::serve(self.mysql, self.admission.clone(), shutdown.clone(), self.mysql_front),
            pool.maintain(shutdown.clone()),
            limiter_cleanup,
        );
    }
}
