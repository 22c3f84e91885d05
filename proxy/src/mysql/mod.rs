//! The MySQL front end: transaction-level multiplexing of many client sessions over a few
//! backend connections per database. The life of a connection:
//!
//! ```text
//!  accept ─▶ login: greeting (caching_sha2_password) ─▶ [SSLRequest ─▶ TLS] ─▶ handshake
//!            response ─▶ "perform full auth" ─▶ token in cleartext (TLS) or RSA-encrypted
//!         ─▶ authenticate: user = database, verify the token, authorize, route, check the
//!            client's address against the database's allowlist, admit
//!         ─▶ session: per command, borrow a pooled connection of the same flavour, replay the
//!            client's schema and variables on it, forward (prepared statements under proxy
//!            ids, prepared lazily on the borrowed connection), relay the response, learn the
//!            new state from session tracking and the SQL, then give the connection back
//!            unless the client is pinned (transaction, lock, temporary table, …)
//!         ─▶ end: a connection holding client state is reset before it is pooled again
//! ```
//!
//! Files: `packet` (framing), `errors` (ERR/OK), `login` (connection phase), `rsa`,
//! `backend` (server-side connections), `pool` (leases, limits, waits), `response` (where
//! responses end), `ok` (OK packets and session tracking), `sql` (statement inspection),
//! `state` (what a client's session holds, pins), `statements` (proxy statement ids),
//! `prepared` (statements prepared on a backend connection),
//! `command` (what a command is), `policy` (statements refused), `relay` (one response), `session` (the command loop).

pub mod backend;
pub mod command;
pub mod errors;
pub mod fastauth;
pub mod login;
pub mod ok;
pub mod packet;
pub mod policy;
pub mod pool;
pub mod prepared;
pub mod relay;
pub mod response;
pub mod rsa;
pub mod session;
pub mod sql;
pub mod state;
pub mod statements;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, LoginRefused, TokenVerifier, log_in, route_for};
use crate::config::MysqlConfig;
use crate::control::{ControlPlane, Protocol, Route, SessionGuard};
use crate::limits::{ClientCounts, Ticket};
use crate::listener::Frontend;
use crate::routes::RouteCache;
use crate::throttle::Throttle;
use backend::{BackendConn, BackendError, BackendState, FORMAT_CAPS};
use errors::MyError;
use fastauth::FastAuth;
use login::Login;
use mysql_common::constants::CapabilityFlags;
use pool::{DbKey, Flavour, Lease, Pool, PoolError, Reservation, Return};
use rsa::RsaKey;
use session::Session;
use state::{ClientState, SessionVars};
use statements::Statements;

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
    clients: ClientCounts,
    /// Tokens that logged in before, for `caching_sha2_password`'s fast path.
    fast_auth: FastAuth,
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
            fast_auth: FastAuth::new(100_000),
            clients: ClientCounts::default(),
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

    /// Checks the token the client sent as its password (through the login step every front
    /// end shares), logging the connection in. Every failure a client can cause is the same
    /// 1045, whether or not the database exists, unless its address is told to slow down.
    async fn verify_login(
        &self,
        ticket: &mut Ticket,
        user: &str,
        peer: SocketAddr,
        passwords: &[Vec<u8>],
    ) -> Result<Identity, MyError> {
        let tokens: Vec<&str> =
            passwords.iter().filter_map(|p| std::str::from_utf8(p).ok()).collect();
        match log_in(&self.verifier, &self.throttle, ticket, Some(user), &tokens).await {
            Ok((identity, i)) => {
                self.fast_auth.remember(user, tokens[i]);
                Ok(identity)
            }
            Err(LoginRefused::Control(e)) => {
                tracing::warn!(error = %e, "cannot verify a MySQL login");
                Err(MyError::unavailable(user))
            }
            Err(LoginRefused::Busy(_)) => Err(MyError::too_many_connections()),
            Err(LoginRefused::Denied { throttled }) => {
                tracing::debug!(peer = %peer, user = %user, "mysql login refused");
                for token in &tokens {
                    self.fast_auth.forget(user, token);
                }
                if throttled {
                    return Err(MyError::rate_limited());
                }
                Err(MyError::access_denied(user, &peer.ip().to_string()))
            }
            // A MySQL login always names its database (the user).
            Err(LoginRefused::NeedsDatabase) => {
                Err(MyError::access_denied(user, &peer.ip().to_string()))
            }
        }
    }

    /// The route to a logged-in client's database, waking it if it sleeps. The session counts
    /// as activity on the database from before the route lookup, so control never suspends a
    /// database a client is about to use.
    async fn route_login(
        &self,
        identity: &Identity,
        peer: SocketAddr,
    ) -> Result<(Route, SessionGuard), MyError> {
        let guard = SessionGuard::new(self.control.clone(), &identity.tenant, &identity.database);
        match route_for(&self.routes, identity, peer.ip()).await {
            Ok(Some(route)) if route.protocol == Protocol::Mysql => Ok((route, guard)),
            Ok(Some(_)) => Err(MyError::new(
                1045,
                "28000",
                format!("'{}' is not a MySQL database; use the Redis port", identity.database),
            )),
            Ok(None) => {
                let throttled = self.throttle.record_failure(peer.ip(), &identity.database);
                if throttled {
                    return Err(MyError::rate_limited());
                }
                Err(MyError::access_denied(&identity.database, &peer.ip().to_string()))
            }
            Err(e) => {
                tracing::warn!(db = %identity.database, error = %e, "no route");
                Err(MyError::new(1105, "HY000", e.for_client(&identity.database)))
            }
        }
    }

    /// A connection to the client's database brought to the client's session state `vars`:
    /// an idle pooled one of the right flavour (preferably already in that state), or a new
    /// one. A refused connection or login means the route may be stale (the database was
    /// suspended, or moved), so the route is resolved again, waking the database if need be,
    /// and tried once more.
    pub(crate) async fn borrow(
        &self,
        identity: &Identity,
        route: &mut Route,
        flavour: &Flavour,
        vars: &SessionVars,
        insert_id: bool,
        aside: Option<Reservation>,
    ) -> Result<Lease, MyError> {
        let key = DbKey {
            tenant: identity.tenant.clone(),
            database: identity.database.clone(),
            server: route.server(),
        };
        let limit = route.limits.max_backend as usize;
        // A route resolved afresh while opening (the old one was stale) replaces the
        // session's once the borrow is done; the common case clones nothing.
        let refreshed: std::sync::Mutex<Option<Route>> = std::sync::Mutex::new(None);
        let known: &Route = route;
        let open = || async {
            let fresher = refreshed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut conn =
                match self.connect(fresher.as_ref().unwrap_or(known), identity, flavour).await {
                    Err(e) if e.may_be_stale() => {
                        self.routes.invalidate(&identity.tenant, &identity.database);
                        match self.routes.resolve(&identity.tenant, &identity.database).await {
                            Ok(Some(fresh)) => {
                                let conn = self.connect(&fresh, identity, flavour).await;
                                *refreshed.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                                conn
                            }
                            _ => Err(e),
                        }
                    }
                    other => other,
                };
            // Refused on a fresh route too: a session changed the internal account (its own
            // password, which the server lets any account change). Control puts it back.
            if matches!(&conn, Err(e) if e.is_login_refused()) {
                match self.control.repair_access(&identity.tenant, &identity.database).await {
                    Ok(()) => {
                        let fresher = refreshed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let route = fresher.as_ref().unwrap_or(known);
                        conn = self.connect(route, identity, flavour).await;
                    }
                    Err(e) => tracing::warn!(db = %identity.database, error = %e, "account repair"),
                }
            }
            if let Ok(conn) = &conn {
                self.learn_version(conn);
            }
            conn
        };
        let wanted = |state: &BackendState| state.vars == *vars;
        let acquired = self.pool.acquire(&key, flavour, limit, &wanted, aside, open).await;
        if let Some(fresh) = refreshed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            *route = fresh;
        }
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(PoolError::Open(e)) => return Err(self.backend_error(identity, e)),
            Err(PoolError::Exhausted { limit, waited }) => {
                return Err(MyError::pool_exhausted(&identity.database, limit, waited));
            }
        };
        let home = &identity.database;
        let reclaimed = lease.reclaimed();
        let conn = lease.conn();
        let mut plan = state::plan(&conn.state.vars, vars, home, insert_id);
        plan.clear_diagnostics = conn.state.diagnostics && !reclaimed;
        match conn.sync(&plan, home, vars).await {
            Ok(()) => Ok(lease),
            Err(BackendError::Refused(e)) => {
                lease.give_back(Return::Reset, home);
                Err(e.in_clients_terms(&flavour.user, &identity.database))
            }
            Err(e) => {
                tracing::debug!(db = %identity.database, error = %e, "restoring a session failed");
                Err(relay::lost())
            }
        }
    }

    /// A new backend connection for `identity`'s database at `route`, in `flavour`.
    async fn connect(
        &self,
        route: &Route,
        identity: &Identity,
        flavour: &Flavour,
    ) -> Result<BackendConn, BackendError> {
        let caps = CapabilityFlags::from_bits_truncate(flavour.caps);
        let timeout = self.config.backend_connect_timeout;
        backend::connect(route, &flavour.user, &identity.database, caps, flavour.collation, timeout)
            .await
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

    async fn session(&self, mut login: Login, mut ticket: Ticket, shutdown: CancellationToken) {
        let verified = self.verify_login(&mut ticket, &login.user, login.peer, &login.passwords);
        let identity = match verified.await {
            Ok(identity) => identity,
            Err(e) => return login.fail(&e).await,
        };
        let (mut route, _activity) = match self.route_login(&identity, login.peer).await {
            Ok(found) => found,
            Err(e) => return login.fail(&e).await,
        };
        let max_clients = route.limits.max_clients;
        let Some(_slot) = self.clients.admit(&identity.tenant, &identity.database, max_clients)
        else {
            let e = MyError::database_full(&identity.database, max_clients);
            return login.fail(&e).await;
        };
        let Some(user) = internal_user(&identity, &route) else {
            let e = MyError::access_denied(&login.user, &login.peer.ip().to_string());
            return login.fail(&e).await;
        };
        let flavour =
            Flavour { user, caps: (login.caps & FORMAT_CAPS).bits(), collation: login.collation };
        let mut state = ClientState::new(&identity.database);
        if let Some(schema) = login.schema.clone().filter(|s| !s.is_empty()) {
            state.vars.schema = schema;
        }
        // The first command's connection, borrowed now: it wakes the database and checks the
        // schema the client named before the login succeeds.
        let borrowed = self.borrow(&identity, &mut route, &flavour, &state.vars, false, None);
        let lease = match borrowed.await {
            Ok(lease) => lease,
            Err(e) => return login.fail(&e).await,
        };
        if login.succeed().await.is_err() {
            lease.give_back(Return::Keep, &identity.database);
            return;
        }
        tracing::debug!(peer = %login.peer, tenant = %identity.tenant, db = %identity.database, tls = login.tls, "mysql client authenticated");
        let session = Session {
            front: self,
            client: &mut login.client,
            peer: login.peer,
            nonce: login.nonce,
            identity,
            route,
            flavour,
            session_track: login.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK),
            state,
            stmts: Statements::default(),
            lease: Some(lease),
            aside: None,
            ticket,
        };
        session.run(&shutdown).await;
        login.client.shutdown().await;
    }
}

/// The internal account a client's sessions log in as: read-only tokens get the read-only
/// one, so the server enforces it. `None` when the database has no such account.
fn internal_user(identity: &Identity, route: &Route) -> Option<String> {
    match identity.role {
        crate::claims::Role::Readonly => route.readonly_user.clone(),
        _ => Some(route.user.clone()),
    }
}

#[async_trait]
impl Frontend for MysqlFrontend {
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        shutdown: CancellationToken,
    ) {
        if let Some(login) = login::accept(&self, stream, peer).await {
            self.session(login, ticket, shutdown).await;
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
