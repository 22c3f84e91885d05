//! Backend connections of one Redis database, per RESP version: a few shared (multiplexed)
//! connections every client of the database uses, and connections lent to one client at a time
//! for what needs a connection of its own (transactions, blocking calls, subscriptions). The
//! total is capped; a client that needs its own connection when none is left waits in a bounded
//! queue with a timeout. New connections are opened one at a time, so a burst of clients does
//! not become a burst of backend handshakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::backend::{self, BackendConn, BackendError};
use super::info::{InfoLink, InfoReply};
use super::shared::SharedConn;
use crate::control::Route;

/// Limits on one database's backend connections.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    /// Shared connections per database and RESP version.
    pub shared: usize,
    /// How long a client waits for a connection of its own before it is told to retry.
    pub wait: Duration,
    /// Clients that may wait at once; more are refused at once.
    pub max_waiting: usize,
    pub connect_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            shared: 2,
            wait: Duration::from_secs(5),
            max_waiting: 1000,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "every connection of this database is busy (transactions, blocking calls or subscriptions)"
    )]
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tenant: String,
    database: String,
    /// [`Route::server`].
    server: String,
    /// The backend user: read-only tokens have their own.
    user: String,
    resp3: bool,
}

/// Every database's pools.
#[derive(Default)]
pub struct RedisPools {
    pools: DashMap<PoolKey, Arc<RedisPool>>,
}

impl RedisPools {
    /// The pool for a database at `route`, in `resp3` or RESP2. `max_backend` caps the
    /// database's backend connections of this RESP version.
    pub fn get(
        &self,
        tenant: &str,
        database: &str,
        route: &Route,
        resp3: bool,
        limits: &PoolLimits,
    ) -> Arc<RedisPool> {
        let key = PoolKey {
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            server: route.server(),
            user: route.user.clone(),
            resp3,
        };
        self.pools
            .entry(key)
            .or_insert_with(|| Arc::new(RedisPool::new(route.clone(), resp3, limits.clone())))
            .clone()
    }

    /// Drops a database's pools (it is being suspended or deleted); open sessions keep the
    /// connections they hold until they end.
    pub fn forget(&self, tenant: &str, database: &str) {
        self.pools.retain(|k, _| !(k.tenant == tenant && k.database == database));
    }
}

pub struct RedisPool {
    route: Route,
    resp3: bool,
    limits: PoolLimits,
    shared: Vec<tokio::sync::Mutex<Option<SharedConn>>>,
    next_shared: AtomicUsize,
    /// Connections lent out or idle, beyond the shared ones.
    own: Arc<Semaphore>,
    idle: std::sync::Mutex<Vec<BackendConn>>,
    waiting: AtomicUsize,
    /// One new backend connection at a time.
    opening: tokio::sync::Mutex<()>,
    /// The server's reply to HELLO, answered to clients' HELLO without asking the server.
    hello: std::sync::Mutex<Option<Bytes>>,
    /// Where clients' INFO is asked.
    info: InfoLink,
}

/// A backend connection lent to one client; return it with [`OwnSlot::give_back`] when it is
/// clean, or drop it (and the slot) to close it.
pub struct OwnSlot {
    pool: Arc<RedisPool>,
    _permit: OwnedSemaphorePermit,
}

impl OwnSlot {
    /// Keeps a clean connection for the next client that needs one.
    pub fn give_back(self, conn: BackendConn) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(conn);
    }
}

impl RedisPool {
    fn new(route: Route, resp3: bool, limits: PoolLimits) -> Self {
        let shared_slots = limits.shared.max(1);
        let own = route.limits.max_backend.saturating_sub(shared_slots as u32).max(1) as usize;
        Self {
            route,
            resp3,
            shared: (0..shared_slots).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next_shared: AtomicUsize::new(0),
            own: Arc::new(Semaphore::new(own)),
            idle: std::sync::Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            opening: tokio::sync::Mutex::new(()),
            hello: std::sync::Mutex::new(None),
            info: InfoLink::default(),
            limits,
        }
    }

    async fn open(&self) -> Result<BackendConn, BackendError> {
        let _one_at_a_time = self.opening.lock().await;
        let conn =
            backend::connect(&self.route, self.resp3, None, self.limits.connect_timeout).await?;
        let mut hello = self.hello.lock().unwrap_or_else(|e| e.into_inner());
        if hello.is_none() {
            *hello = Some(conn.hello.clone());
        }
        Ok(conn)
    }

    /// A shared connection (round robin over the slots), opened if its slot is empty or dead.
    pub async fn shared(&self) -> Result<SharedConn, BackendError> {
        let slot = self.next_shared.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        let mut slot = self.shared[slot].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(conn.clone());
        }
        let conn = SharedConn::spawn(self.open().await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A connection of the client's own, idle or new, once one of the database's slots is
    /// free; waits at most the pool's wait time.
    pub async fn own(self: &Arc<Self>) -> Result<(BackendConn, OwnSlot), PoolError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Exhausted);
        }
        let permit = tokio::time::timeout(self.limits.wait, self.own.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            _ => return Err(PoolError::Exhausted),
        };
        let slot = OwnSlot { pool: self.clone(), _permit: permit };
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| c.is_alive())
        };
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        Ok((conn, slot))
    }

    /// The server's HELLO reply, once any connection has been opened.
    pub fn hello(&self) -> Option<Bytes> {
        self.hello.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `INFO [section …]` from the server, filtered for tenants.
    pub async fn info(&self, args: &[Bytes]) -> Result<InfoReply, BackendError> {
        self.info.fetch(&self.route, args, self.limits.connect_timeout).await
    }

    pub fn resp3(&self) -> bool {
        self.resp3
    }
}
