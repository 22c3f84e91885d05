//! The Redis front end. The life of a connection:
//!
//! ```text
//!  accept ──▶ [TLS handshake: on the TLS-only port, or when the first byte opens one]
//!        ──▶ pre-auth: only AUTH / HELLO [AUTH] / PING / QUIT / RESET (else -NOAUTH),
//!             small request limits, one deadline
//!        ──▶ authenticate: verify the token offline, authorize the database, look up the route,
//!             check the client's address against the database's allowlist
//!        ──▶ link: the database's pool for the client's RESP version, one of its shared
//!             connections (HELLO <proto> AUTH <internal user>); the COMMAND table, once
//!        ──▶ relay: classify each command (refuse / answer locally / forward); forward bytes
//!             unchanged on the shared connection, or on one of the client's own while it holds
//!             a transaction, a blocking call or subscriptions; every reply in request order
//!        ──▶ heal: a backend connection that dies (its server crashed or restarted) fails the
//!             replies it owed; an idle client's next command links afresh to the restarted
//!             server, unless the client had state there (a transaction, subscriptions)
//! ```
//!
//! Files: `codec` (bytes ↔ frames), `commands` (classification), `backend` (server-side
//! connections), `shared` (a multiplexed connection's task), `pool` (a database's connections
//! and their limits), `info` (INFO, filtered), `session` (the relay state machine).

pub mod backend;
pub mod codec;
pub mod commands;
pub mod info;
pub mod pool;
mod session;
pub mod shared;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, LoginRefused, TokenVerifier, route_for};
use crate::config::RedisConfig;
use crate::control::{ControlError, ControlPlane, Protocol, Route, SessionGuard};
use crate::limits::{ClientCounts, Ticket};
use crate::listener::Frontend;
use crate::routes::RouteCache;
use crate::throttle::Throttle;
use crate::tls::{self, ClientStream};
use backend::BackendError;
use commands::CommandTable;
use pool::{PoolLimits, RedisPool, RedisPools};
use shared::SharedConn;

/// Shared state of the Redis listener.
pub struct RedisFrontend {
    config: RedisConfig,
    pub(crate) verifier: Arc<TokenVerifier>,
    routes: Arc<RouteCache>,
    /// Accepts `rediss://` clients; without it every client speaks plaintext.
    tls: Option<TlsAcceptor>,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) control: Arc<dyn ControlPlane>,
    /// Built from the first backend's `COMMAND` reply; every instance runs the same server.
    table: OnceCell<Arc<CommandTable>>,
    pub pools: RedisPools,
    pool_limits: PoolLimits,
    pub(crate) clients: ClientCounts,
    next_id: AtomicU64,
}

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    #[error(transparent)]
    Refused(#[from] LoginRefused),
    /// A valid token for a database that does not exist: refused like a wrong token.
    #[error("no database {0:?}")]
    NoSuchDatabase(String),
    #[error("database {0:?} is not a Redis database")]
    WrongProtocol(String),
    /// The database could not be reached or woken.
    #[error("database {database:?} is unavailable: {error}")]
    Unavailable { database: String, error: ControlError },
}

impl RedisFrontend {
    pub fn new(
        config: RedisConfig,
        verifier: Arc<TokenVerifier>,
        routes: Arc<RouteCache>,
        tls: Option<TlsAcceptor>,
        throttle: Arc<Throttle>,
        control: Arc<dyn ControlPlane>,
    ) -> Self {
        let pool_limits = PoolLimits {
            shared: config.shared_connections,
            connect_timeout: config.backend_connect_timeout,
            wait: config.pool_wait,
            ..PoolLimits::default()
        };
        Self {
            config,
            verifier,
            routes,
            tls,
            throttle,
            control,
            table: OnceCell::new(),
            pools: RedisPools::default(),
            pool_limits,
            clients: ClientCounts::default(),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The route to a logged-in client's database, waking it if it sleeps, if `peer` may
    /// reach it (its allowlist). The session counts
    /// as activity on the database from before the route lookup, so control never suspends a
    /// database a client is about to use.
    pub(crate) async fn route_login(
        &self,
        identity: &Identity,
        peer: IpAddr,
    ) -> Result<(Route, SessionGuard), LoginError> {
        let guard = SessionGuard::new(self.control.clone(), &identity.tenant, &identity.database);
        let route = match route_for(&self.routes, identity, peer).await {
            Ok(Some(route)) => route,
            Ok(None) => return Err(LoginError::NoSuchDatabase(identity.database.clone())),
            Err(error) => {
                let database = identity.database.clone();
                return Err(LoginError::Unavailable { database, error });
            }
        };
        if route.protocol != Protocol::Redis {
            return Err(LoginError::WrongProtocol(identity.database.clone()));
        }
        Ok((route, guard))
    }

    /// Links a client to its database: the pool for its role's backend user and its RESP
    /// version, a shared connection in it and the command table. The route returned is the
    /// database's, whatever the role. A refused connection or login means the route may be stale
    /// (the database was suspended, or moved), so it is resolved again, waking the database if
    /// need be, and tried once more.
    pub(crate) async fn link(
        &self,
        identity: &Identity,
        route: Route,
        resp3: bool,
    ) -> Result<(Arc<RedisPool>, SharedConn, Arc<CommandTable>, Route), BackendError> {
        let (tenant, db) = (&identity.tenant, &identity.database);
        let login_route = as_role(&route, identity.role);
        let pool = self.pools.get(tenant, db, &login_route, resp3, &self.pool_limits);
        let (pool, shared, route) = match pool.shared().await {
            Ok(shared) => (pool, shared, route),
            Err(e) if e.may_be_stale() => {
                self.routes.invalidate(tenant, db);
                let Ok(Some(fresh)) = self.routes.resolve(tenant, db).await else { return Err(e) };
                let login_route = as_role(&fresh, identity.role);
                let pool = self.pools.get(tenant, db, &login_route, resp3, &self.pool_limits);
                let shared = pool.shared().await?;
                (pool, shared, fresh)
            }
            Err(e) => return Err(e),
        };
        let timeout = self.config.backend_connect_timeout;
        let table = self
            .table
            .get_or_try_init(|| async {
                backend::fetch_command_table(&route, timeout).await.map(Arc::new)
            })
            .await?
            .clone();
        Ok((pool, shared, table, route))
    }
}

/// `route` as the backend user for `role`: read-only tokens log in as the database's read-only
/// user where it has one, so the server itself refuses their writes, from Lua too.
fn as_role(route: &Route, role: crate::claims::Role) -> Route {
    let mut route = route.clone();
    if !role.can_write()
        && let Some(user) = &route.readonly_user
    {
        route.user = user.clone();
    }
    route
}

/// How a listener's clients may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// TLS when the client's first byte opens a handshake, plaintext otherwise.
    Either,
    /// Only TLS (the TLS-only port).
    TlsOnly,
}

impl RedisFrontend {
    /// Runs a client's session, after the TLS handshake if the client starts one. The
    /// handshake counts against the login deadline.
    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        transport: Transport,
        shutdown: CancellationToken,
    ) {
        let deadline = Instant::now() + self.config.auth_timeout;
        let stream = match (&self.tls, transport) {
            (Some(acceptor), Transport::TlsOnly) => tls::accept(acceptor, tcp, deadline).await,
            (Some(acceptor), Transport::Either) => {
                match timeout_at(deadline, tls::opens_with_handshake(&tcp)).await {
                    Ok(Ok(true)) => tls::accept(acceptor, tcp, deadline).await,
                    // Silent until the deadline: the session tells it so, in plaintext.
                    Ok(Ok(false)) | Err(_) => Some(ClientStream::Plain(tcp)),
                    Ok(Err(_)) => None,
                }
            }
            (None, Transport::TlsOnly) => None,
            (None, Transport::Either) => Some(ClientStream::Plain(tcp)),
        };
        let Some(stream) = stream else { return };
        let tls = stream.is_tls();
        let session = session::Session::new(self, peer, ticket, deadline);
        if let Err(e) = session.run(stream, shutdown).await {
            tracing::debug!(%peer, tls, error = %e, "redis session ended with an error");
        }
    }
}

#[async_trait]
impl Frontend for RedisFrontend {
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        shutdown: CancellationToken,
    ) {
        self.serve(stream, peer, ticket, Transport::Either, shutdown).await;
    }

    async fn reject_busy(&self, mut stream: TcpStream) {
        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
        let _ = stream.shutdown().await;
    }
}

/// The Redis front end on a port that accepts only TLS.
pub struct RedisTlsOnly(pub Arc<RedisFrontend>);

#[async_trait]
impl Frontend for RedisTlsOnly {
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        shutdown: CancellationToken,
    ) {
        self.0.clone().serve(stream, peer, ticket, Transport::TlsOnly, shutdown).await;
    }

    async fn reject_busy(&self, mut stream: TcpStream) {
        // The client expects a TLS handshake: plaintext would be noise to it.
        let _ = stream.shutdown().await;
    }
}
