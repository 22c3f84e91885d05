//! The Redis front end. The life of a connection:
//!
//! ```text
//!  accept ──▶ pre-auth: only AUTH / HELLO [AUTH] / PING / QUIT / RESET (else -NOAUTH),
//!             small request limits, one deadline
//!        ──▶ authenticate: verify the token offline, authorize the database, look up the route
//!        ──▶ connect backend: HELLO <proto> AUTH <internal user>; load the COMMAND table once
//!        ──▶ relay: classify each command (refuse / answer locally / forward), forward bytes
//!             unchanged, return every reply in request order; pub/sub frames pass through
//! ```
//!
//! Files: `codec` (bytes ↔ frames), `commands` (classification), `backend` (server-side
//! connections), `session` (the relay state machine).

pub mod backend;
pub mod codec;
pub mod commands;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Identity, TokenVerifier, authorize};
use crate::config::RedisConfig;
use crate::control::{ControlError, ControlPlane, Protocol, Route, SessionGuard};
use crate::listener::Frontend;
use crate::routes::RouteCache;
use crate::throttle::Throttle;
use backend::{BackendConn, BackendError};
use commands::CommandTable;

/// Shared state of the Redis listener.
pub struct RedisFrontend {
    config: RedisConfig,
    verifier: Arc<TokenVerifier>,
    routes: Arc<RouteCache>,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) control: Arc<dyn ControlPlane>,
    /// Built from the first backend's `COMMAND` reply; every instance runs the same server.
    table: OnceCell<Arc<CommandTable>>,
}

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    #[error(transparent)]
    Auth(#[from] AuthError),
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
        throttle: Arc<Throttle>,
        control: Arc<dyn ControlPlane>,
    ) -> Self {
        Self { config, verifier, routes, throttle, control, table: OnceCell::new() }
    }

    /// Verifies `token`, decides the database, and finds its route (waking the database if it
    /// sleeps). The session counts as activity on the database from before the route lookup,
    /// so control never suspends a database a client is about to use.
    pub(crate) async fn authenticate(
        &self,
        user: Option<&str>,
        token: &str,
    ) -> Result<(Identity, Route, SessionGuard), LoginError> {
        let claims = self.verifier.verify(token).await?;
        let identity = authorize(&claims, user)?;
        let guard = SessionGuard::new(self.control.clone(), &identity.tenant, &identity.database);
        let route = match self.routes.resolve(&identity.tenant, &identity.database).await {
            Ok(Some(route)) => route,
            Ok(None) => return Err(AuthError::Refused("no such database").into()),
            Err(error) => {
                return Err(LoginError::Unavailable { database: identity.database, error });
            }
        };
        if route.protocol != Protocol::Redis {
            return Err(LoginError::WrongProtocol(identity.database));
        }
        Ok((identity, route, guard))
    }

    /// Opens an authenticated backend connection. A refused connection or login means the
    /// route may be stale (the database was suspended, or moved), so the route is resolved
    /// again, waking the database if need be, and tried once more.
    pub(crate) async fn open_backend(
        &self,
        identity: &Identity,
        route: Route,
        resp3: bool,
        setname: Option<&[u8]>,
    ) -> Result<(BackendConn, Arc<CommandTable>), BackendError> {
        let timeout = self.config.backend_connect_timeout;
        let (conn, route) = match backend::connect(&route, resp3, setname, timeout).await {
            Err(e) if e.may_be_stale() => {
                self.routes.invalidate(&identity.tenant, &identity.database);
                let fresh = match self.routes.resolve(&identity.tenant, &identity.database).await {
                    Ok(Some(fresh)) => fresh,
                    _ => return Err(e),
                };
                (backend::connect(&fresh, resp3, setname, timeout).await?, fresh)
            }
            other => (other?, route),
        };
        let table = self
            .table
            .get_or_try_init(|| async {
                backend::fetch_command_table(&route, timeout).await.map(Arc::new)
            })
            .await?
            .clone();
        Ok((conn, table))
    }
}

impl From<ControlError> for LoginError {
    fn from(e: ControlError) -> Self {
        LoginError::Auth(AuthError::Control(e))
    }
}

#[async_trait]
impl Frontend for RedisFrontend {
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        if let Err(e) = session::Session::new(self, peer).run(stream, shutdown).await {
            tracing::debug!(%peer, error = %e, "redis session ended with an error");
        }
    }

    async fn reject_busy(&self, mut stream: TcpStream) {
        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
        let _ = stream.shutdown().await;
    }
}
