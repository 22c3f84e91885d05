//! Idle backend connections per database and protocol flavour (the format flags and collation
//! a client negotiated), so a new client session starts on a connection that skipped the
//! handshake. A connection goes back only after COM_RESET_CONNECTION and COM_INIT_DB succeeded
//! on it; one whose state is unknown is closed. A `Lease` returns its connection on drop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::backend::BackendConn;

/// Which idle connections can serve a client: tenant first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub tenant: String,
    pub database: String,
    pub host: String,
    pub port: u16,
    /// The internal user the connection is logged in as (read-write or read-only).
    pub user: String,
    /// The client's format flags (see `backend::FORMAT_CAPS`).
    pub caps: u32,
    pub collation: u8,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle connections kept per key.
    pub max_idle: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_idle: 32, idle_timeout: Duration::from_secs(300) }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Leases that ended with the connection kept for reuse.
    pub returned: AtomicU64,
    /// Leases that ended with the connection closed.
    pub discarded: AtomicU64,
    /// Idle connections found dead or too old when a client wanted one.
    pub expired: AtomicU64,
}

pub struct Pool {
    config: PoolConfig,
    idle: Mutex<HashMap<PoolKey, Vec<(Instant, BackendConn)>>>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self { config, idle: Mutex::new(HashMap::new()), stats: PoolStats::default() }
    }

    /// The most recently returned live connection for `key`, if any.
    pub fn take(&self, key: &PoolKey) -> Option<BackendConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((since, conn)) = list.pop() {
            if since.elapsed() < self.config.idle_timeout && conn.is_alive() {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Some(conn);
            }
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    pub fn record_miss(&self) {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Resets `conn` and keeps it for the next client, or closes it if that fails.
    pub async fn give_back(&self, key: PoolKey, mut conn: BackendConn) {
        if let Err(e) = conn.reset(&key.database).await {
            tracing::debug!(db = %key.database, error = %e, "backend reset failed; closing it");
            self.stats.discarded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < self.config.max_idle {
            list.push((Instant::now(), conn));
            self.stats.returned.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes connections idle for longer than the timeout.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.values_mut() {
            list.retain(|(since, _)| since.elapsed() < self.config.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Closes every idle connection of one database (when it is deleted or moved).
    pub fn forget(&self, tenant: &str, database: &str) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|k, _| !(k.tenant == tenant && k.database == database));
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }

    /// The maintenance loop: reaps expired connections every few seconds.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => self.reap(),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// A backend connection lent to one client session. Marked reusable only when the session
/// ended with the server idle; then dropping it resets the connection and returns it.
pub struct Lease {
    pool: Arc<Pool>,
    key: PoolKey,
    conn: Option<BackendConn>,
    reusable: bool,
}

impl Lease {
    pub fn new(pool: Arc<Pool>, key: PoolKey, conn: BackendConn) -> Self {
        Self { pool, key, conn: Some(conn), reusable: false }
    }

    pub fn conn(&mut self) -> Option<&mut BackendConn> {
        self.conn.as_mut()
    }

    /// The server finished every response: the connection can serve another client.
    pub fn set_reusable(&mut self, reusable: bool) {
        self.reusable = reusable;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.reusable {
            self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Resetting takes a round trip; the client is gone and need not wait for it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (pool, key) = (self.pool.clone(), self.key.clone());
            runtime.spawn(async move { pool.give_back(key, conn).await });
        }
    }
}
