//! The MySQL front end. The life of a connection:
//!
//! ```text
//!  accept ─▶ login: greeting (caching_sha2_password) ─▶ [SSLRequest ─▶ TLS] ─▶ handshake
//!            response ─▶ "perform full auth" ─▶ token in cleartext (TLS) or RSA-encrypted
//!         ─▶ authenticate: user = database, verify the token, authorize, route
//!         ─▶ backend: an idle pooled connection with the same format flags, or a new one
//!            (handshake as the internal user); OK to the client
//!         ─▶ relay: one command at a time, refused or forwarded unchanged, response relayed
//!            until the server is idle
//!         ─▶ end: an idle backend is reset (COM_RESET_CONNECTION) and pooled; any other is closed
//! ```
//!
//! Files: `packet` (framing), `errors` (ERR/OK), `login` (connection phase), `rsa`,
//! `backend` (server-side connections), `pool`, `response` (where responses end), `sql`
//! (statement inspection), `relay` (command phase).

pub mod backend;
pub mod errors;
pub mod login;
pub mod packet;
pub mod pool;
pub mod relay;
pub mod response;
pub mod rsa;
pub mod sql;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Identity, TokenVerifier, authorize};
use crate::config::MysqlConfig;
use crate::control::{ControlPlane, Protocol, Route, SessionGuard};
use crate::listener::Frontend;
use crate::routes::RouteCache;
use crate::throttle::Throttle;
use backend::{BackendConn, BackendError, FORMAT_CAPS};
use errors::MyError;
use login::Login;
use pool::{Lease, Pool, PoolKey};
use relay::Relay;
use rsa::RsaKey;

/// Shared state of the MySQL listener.
pub struct MysqlFrontend {
    config: MysqlConfig,
    verifier: Arc<TokenVerifier>,
    routes: Arc<RouteCache>,
    tls: Option<TlsAcceptor>,
    rsa: RsaKey,
    pub pool: Arc<Pool>,
    throttle: Arc<Throttle>,
    control: Arc<dyn ControlPlane>,
    /// Announced in greetings: the backends' version once one has been seen.
    version: RwLock<String>,
    next_id: AtomicU32,
}

impl MysqlFrontend {
    pub fn new(
        config: MysqlConfig,
        verifier: Arc<TokenVerifier>,
        routes: Arc<RouteCache>,
        tls: Option<TlsAcceptor>,
        rsa: RsaKey,
        throttle: Arc<Throttle>,
        control: Arc<dyn ControlPlane>,
    ) -> Self {
        Self {
            throttle,
            control,
            pool: Arc::new(Pool::new(config.pool.clone())),
            version: RwLock::new(config.default_version.clone()),
            next_id: AtomicU32::new(1),
            config,
            verifier,
            routes,
            tls,
            rsa,
        }
    }

    fn server_version(&self) -> String {
        self.version.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn next_connection_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks the token the client sent as its password. Every failure a client can cause is
    /// the same 1045, whether or not the database exists.
    /// The session counts as activity on the database from before the route lookup, so control
    /// never suspends a database a client is about to use.
    async fn authenticate(
        &self,
        login: &Login,
    ) -> Result<(Identity, Route, SessionGuard), MyError> {
        let denied = MyError::access_denied(&login.user, &login.peer.ip().to_string());
        for password in &login.passwords {
            let Ok(token) = std::str::from_utf8(password) else { continue };
            let claims = match self.verifier.verify(token).await {
                Ok(claims) => claims,
                Err(AuthError::Control(e)) => {
                    tracing::warn!(error = %e, "cannot verify a MySQL login");
                    return Err(MyError::unavailable(&login.user));
                }
                Err(_) => continue,
            };
            let Ok(identity) = authorize(&claims, Some(&login.user)) else {
                self.throttle.record_failure(login.peer.ip());
                return Err(denied);
            };
            let guard =
                SessionGuard::new(self.control.clone(), &identity.tenant, &identity.database);
            return match self.routes.resolve(&identity.tenant, &identity.database).await {
                Ok(Some(route)) if route.protocol == Protocol::Mysql => {
                    Ok((identity, route, guard))
                }
                Ok(Some(_)) => Err(MyError::new(
                    1045,
                    "28000",
                    format!("'{}' is not a MySQL database; use the Redis port", identity.database),
                )),
                Ok(None) => {
                    self.throttle.record_failure(login.peer.ip());
                    Err(denied)
                }
                Err(e) => {
                    tracing::warn!(db = %identity.database, error = %e, "no route");
                    Err(MyError::unavailable_because(&identity.database, &e.to_string()))
                }
            };
        }
        tracing::debug!(peer = %login.peer, user = %login.user, "mysql login refused");
        self.throttle.record_failure(login.peer.ip());
        Err(denied)
    }

    /// An idle pooled connection of the right flavour, or a new one. A refused connection or
    /// login means the route may be stale (the database was suspended, or moved), so the route
    /// is resolved again, waking the database if need be, and tried once more.
    async fn checkout(
        &self,
        identity: &Identity,
        route: Route,
        login: &Login,
    ) -> Result<Lease, MyError> {
        // Read-only tokens log in as the read-only internal user, so the server enforces it.
        let readonly = identity.role == crate::claims::Role::Readonly;
        let user_for = |route: &Route| -> Option<String> {
            if readonly { route.readonly_user.clone() } else { Some(route.user.clone()) }
        };
        let key = |route: &Route, user: &str| PoolKey {
            tenant: identity.tenant.clone(),
            database: identity.database.clone(),
            host: route.host.clone(),
            port: route.port,
            user: user.to_owned(),
            caps: (login.caps & FORMAT_CAPS).bits(),
            collation: login.collation,
        };
        let denied = || MyError::access_denied(&login.user, &login.peer.ip().to_string());
        let user = user_for(&route).ok_or_else(denied)?;
        if let Some(conn) = self.pool.take(&key(&route, &user)) {
            return Ok(Lease::new(self.pool.clone(), key(&route, &user), conn));
        }
        self.pool.record_miss();
        let connect = |route: Route| async move {
            let timeout = self.config.backend_connect_timeout;
            let user = user_for(&route).unwrap_or_default();
            backend::connect(
                &route,
                &user,
                &identity.database,
                login.caps,
                login.collation,
                timeout,
            )
            .await
            .map(|conn| (conn, route, user))
        };
        let connected = match connect(route).await {
            Err(e) if e.may_be_stale() => {
                self.routes.invalidate(&identity.tenant, &identity.database);
                match self.routes.resolve(&identity.tenant, &identity.database).await {
                    Ok(Some(fresh)) => connect(fresh).await,
                    _ => Err(e),
                }
            }
            other => other,
        };
        let (conn, route, user) = connected.map_err(|e| self.backend_error(identity, e))?;
        self.learn_version(&conn);
        Ok(Lease::new(self.pool.clone(), key(&route, &user), conn))
    }

    fn backend_error(&self, identity: &Identity, error: BackendError) -> MyError {
        match error {
            // The server's own refusals (too many connections, ...) pass through.
            BackendError::Refused(e) if e.code != 1045 => e,
            other => {
                tracing::warn!(db = %identity.database, error = %other, "backend unavailable");
                MyError::unavailable(&identity.database)
            }
        }
    }

    fn learn_version(&self, conn: &BackendConn) {
        let mut version = self.version.write().unwrap_or_else(|e| e.into_inner());
        if *version != conn.server_version {
            *version = conn.server_version.clone();
        }
    }

    /// A client that named another default schema at login gets it through COM_INIT_DB, or
    /// the server's refusal, told in the client's terms.
    async fn switch_schema(
        &self,
        conn: &mut BackendConn,
        login: &Login,
        schema: &str,
    ) -> Result<(), MyError> {
        let mut payload = vec![0x02];
        payload.extend_from_slice(schema.as_bytes());
        let lost = || MyError::unavailable(&login.user);
        conn.stream.send(0, &payload).await.map_err(|_| lost())?;
        let reply = conn.stream.read().await.map_err(|_| lost())?.ok_or_else(lost)?;
        match reply.payload().first() {
            Some(0x00) => Ok(()),
            Some(0xff) => {
                let e = backend::parse_err(reply.payload());
                Err(MyError::new(
                    e.code,
                    e.state,
                    format!(
                        "Access denied for user '{}'@'{}' to database '{schema}'",
                        login.user,
                        login.peer.ip()
                    ),
                ))
            }
            _ => Err(lost()),
        }
    }

    async fn session(&self, mut login: Login, shutdown: CancellationToken) {
        let (identity, route, _activity) = match self.authenticate(&login).await {
            Ok(found) => found,
            Err(e) => return login.fail(&e).await,
        };
        let mut lease = match self.checkout(&identity, route, &login).await {
            Ok(lease) => lease,
            Err(e) => return login.fail(&e).await,
        };
        let Some(conn) = lease.conn() else { return };
        if let Some(schema) = login.schema.clone().filter(|s| *s != identity.database)
            && let Err(e) = self.switch_schema(conn, &login, &schema).await
        {
            lease.set_reusable(true);
            return login.fail(&e).await;
        }
        if login.succeed().await.is_err() {
            lease.set_reusable(true);
            return;
        }
        tracing::debug!(peer = %login.peer, tenant = %identity.tenant, db = %identity.database, tls = login.tls, "mysql client authenticated");
        let own_thread = conn.thread_id;
        let mut relay = Relay {
            client: &mut login.client,
            backend: &mut conn.stream,
            caps: login.caps,
            own_thread,
            max_packet: self.config.max_packet,
            options_changed: false,
        };
        let end = relay.run(&shutdown).await;
        let clean = !relay.options_changed;
        let idle = end.backend_idle() && clean && !conn.stream.has_buffered_input();
        lease.set_reusable(idle);
        login.client.shutdown().await;
    }
}

#[async_trait]
impl Frontend for MysqlFrontend {
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        if let Some(login) = login::accept(&self, stream, peer).await {
            self.session(login, shutdown).await;
        }
    }

    async fn reject_busy(&self, mut stream: TcpStream) {
        // A full server sends ERR 1040 in place of its greeting.
        let mut out = bytes::BytesMut::new();
        packet::encode(&mut out, 0, &MyError::too_many_connections().payload());
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    }
}
