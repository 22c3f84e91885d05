//! Backend connections per database. Each connection, lent or idle, holds one of the
//! database's slots (its backend connection limit); clients borrow one per statement, or for as
//! long as they are pinned, and wait in a bounded queue with a timeout when every slot is
//! taken. New connections open one at a time per database, so a burst of clients does not
//! become a burst of handshakes. A `Lease` closes its connection on drop unless it is given back.
//! A client idle with its warnings or `FOUND_ROWS()` still to be read sets its connection aside
//! after a moment: idle, and its client's again if still there, but taken by a client that
//! would otherwise wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::backend::{BackendConn, BackendState};
use super::state::PinReason;

/// One database's server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DbKey {
    pub tenant: String,
    pub database: String,
    /// [`Route::server`](crate::control::Route::server).
    pub server: String,
}

/// What a connection must match to serve a client: the internal user it is logged in as
/// (read-write or read-only), the client's format flags (see `backend::FORMAT_CAPS`) and its
/// collation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flavour {
    pub user: String,
    pub caps: u32,
    pub collation: u8,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
    /// How long a client waits for a connection when every slot is taken.
    pub wait: Duration,
    /// Clients that may wait at once per database; more are refused at once.
    pub max_waiting: usize,
    /// How long a client idle with only warnings or `FOUND_ROWS()` left to read keeps its
    /// connection before setting it aside for any client that would otherwise wait. Reads
    /// that follow at once (as drivers do) find them on any busy pool; later ones, unless the
    /// pool is short of connections.
    pub set_aside_after: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            wait: Duration::from_secs(5),
            max_waiting: 10_000,
            set_aside_after: Duration::from_millis(100),
        }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Leases served by an idle connection.
    pub hits: AtomicU64,
    /// Leases that opened a new connection.
    pub misses: AtomicU64,
    /// Leases that ended with the connection kept for reuse.
    pub returned: AtomicU64,
    /// Leases that ended with the connection closed.
    pub discarded: AtomicU64,
    /// Idle connections found dead or too old when a client wanted one.
    pub expired: AtomicU64,
    /// Clients that had to wait for a slot.
    pub waits: AtomicU64,
    /// Clients that waited in vain and got an error.
    pub timeouts: AtomicU64,
    /// Connections set aside by one client and taken by another that would have waited.
    pub taken_aside: AtomicU64,
    /// Times a client session was pinned to its connection, by reason.
    pub pins: [AtomicU64; PinReason::ALL.len()],
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError<E> {
    /// Opening a connection failed.
    #[error(transparent)]
    Open(E),
    #[error("every backend connection of the database is busy")]
    Exhausted { limit: usize, waited: Duration },
}

struct Idle {
    flavour: Flavour,
    since: Instant,
    conn: BackendConn,
    permit: OwnedSemaphorePermit,
    /// Set aside for the client holding this [`Reservation`].
    reserved: Option<u64>,
}

/// One database's slots and idle connections.
struct DbPool {
    slots: Arc<Semaphore>,
    limit: AtomicUsize,
    idle: Mutex<Vec<Idle>>,
    /// Signalled whenever a connection comes back.
    returned: Notify,
    opening: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

impl DbPool {
    fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            opening: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Follows a changed limit (the database was resized).
    fn set_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            self.slots.add_permits(limit - old);
        } else if limit < old {
            // Slots in use now are kept until they are given back; the rest go at once.
            self.slots.forget_permits(old - limit);
        }
    }

    /// A live idle connection of `flavour`, preferably one whose state is already `wanted`;
    /// otherwise the most recently returned one. Connections set aside for a client are taken
    /// only when `steal`ing.
    fn take(
        &self,
        flavour: &Flavour,
        wanted: &(dyn Fn(&BackendState) -> bool + Sync),
        steal: bool,
        timeout: Duration,
        stats: &PoolStats,
    ) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut best = None;
            for (i, entry) in idle.iter().enumerate().rev() {
                if entry.flavour != *flavour || (entry.reserved.is_some() && !steal) {
                    continue;
                }
                if wanted(&entry.conn.state) {
                    best = Some(i);
                    break;
                }
                best.get_or_insert(i);
            }
            let entry = idle.swap_remove(best?);
            if let Some(entry) = usable(entry, timeout, stats) {
                return Some(entry);
            }
        }
    }

    /// The connection set aside for reservation `id`, if no one took it and it is still good.
    fn reclaim(
        &self,
        id: u64,
        flavour: &Flavour,
        timeout: Duration,
        stats: &PoolStats,
    ) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle.iter().position(|e| e.reserved == Some(id) && e.flavour == *flavour)?;
        usable(idle.swap_remove(i), timeout, stats)
    }

    /// Closes the oldest idle connection of another flavour, freeing its slot.
    fn evict_other(&self, flavour: &Flavour) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = idle
            .iter()
            .enumerate()
            .filter(|(_, e)| e.flavour != *flavour)
            .min_by_key(|(_, e)| e.since)
            .map(|(i, _)| i);
        oldest.map(|i| drop(idle.swap_remove(i))).is_some()
    }
}

/// An idle connection taken from the list, if it is neither too old nor dead; counted as
/// expired (and closed) otherwise.
fn usable(entry: Idle, timeout: Duration, stats: &PoolStats) -> Option<Idle> {
    if entry.since.elapsed() < timeout && entry.conn.is_alive() {
        return Some(entry);
    }
    stats.expired.fetch_add(1, Ordering::Relaxed);
    None
}

/// Every database's connections.
pub struct Pool {
    config: PoolConfig,
    dbs: DashMap<DbKey, Arc<DbPool>>,
    next_reservation: AtomicU64,
    pub stats: PoolStats,
}

/// A client's claim on the connection it set aside ([`Lease::set_aside`]); dropping it makes
/// the connection an ordinary idle one.
pub struct Reservation {
    db: Arc<DbPool>,
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut idle = self.db.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = idle.iter_mut().find(|e| e.reserved == Some(self.id)) {
            entry.reserved = None;
        }
    }
}

/// Counts a waiting client for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            dbs: DashMap::new(),
            next_reservation: AtomicU64::new(1),
            stats: PoolStats::default(),
        }
    }

    fn db(&self, key: &DbKey, limit: usize) -> Arc<DbPool> {
        // A shared lookup first: every statement borrows, a database is added once.
        let known = self.dbs.get(key).map(|db| db.clone());
        let db = known.unwrap_or_else(|| {
            self.dbs.entry(key.clone()).or_insert_with(|| Arc::new(DbPool::new(limit))).clone()
        });
        if db.limit.load(Ordering::Acquire) != limit {
            db.set_limit(limit);
        }
        db
    }

    /// A connection of `flavour` to the database at `key`: an idle one (preferring one whose
    /// state is `wanted`), or a new one from `open` while the database has fewer than `limit`.
    /// The connection the caller set aside comes first, if it is still there. When every slot
    /// is taken, idle connections of other flavours are closed to make room, then connections
    /// set aside by other clients are taken, and then the caller waits, at most the configured
    /// time.
    pub async fn acquire<E, F, Fut>(
        self: &Arc<Self>,
        key: &DbKey,
        flavour: &Flavour,
        limit: usize,
        wanted: &(dyn Fn(&BackendState) -> bool + Sync),
        reserved: Option<Reservation>,
        open: F,
    ) -> Result<Lease, PoolError<E>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<BackendConn, E>>,
    {
        let db = self.db(key, limit.max(1));
        if let Some(reservation) = reserved
            && Arc::ptr_eq(&reservation.db, &db)
            && let Some(idle) =
                db.reclaim(reservation.id, flavour, self.config.idle_timeout, &self.stats)
        {
            return Ok(self.lease(&db, flavour, idle, true));
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.wait;
        let mut waiting = None;
        loop {
            let returned = db.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(idle) = self.take(&db, flavour, wanted, false) {
                return Ok(self.lease(&db, flavour, idle, false));
            }
            if let Ok(permit) = db.slots.clone().try_acquire_owned() {
                return self.open(&db, flavour, wanted, permit, &open).await;
            }
            if db.evict_other(flavour) {
                self.stats.discarded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(idle) = self.take(&db, flavour, wanted, true) {
                self.stats.taken_aside.fetch_add(1, Ordering::Relaxed);
                return Ok(self.lease(&db, flavour, idle, false));
            }
            if waiting.is_none() {
                if db.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting {
                    db.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.exhausted(&db, started));
                }
                waiting = Some(Waiting(&db.waiting));
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                () = &mut returned => {}
                permit = db.slots.clone().acquire_owned() => {
                    if let Ok(permit) = permit {
                        return self.open(&db, flavour, wanted, permit, &open).await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(self.exhausted(&db, started)),
            }
        }
    }

    fn exhausted<E>(&self, db: &DbPool, started: Instant) -> PoolError<E> {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        PoolError::Exhausted { limit: db.limit.load(Ordering::Acquire), waited: started.elapsed() }
    }

    fn take(
        &self,
        db: &DbPool,
        flavour: &Flavour,
        wanted: &(dyn Fn(&BackendState) -> bool + Sync),
        steal: bool,
    ) -> Option<Idle> {
        db.take(flavour, wanted, steal, self.config.idle_timeout, &self.stats)
    }

    /// Opens a connection in the slot `permit`, one at a time per database; a connection
    /// given back while this one waited for its turn is taken instead.
    async fn open<E, F, Fut>(
        self: &Arc<Self>,
        db: &Arc<DbPool>,
        flavour: &Flavour,
        wanted: &(dyn Fn(&BackendState) -> bool + Sync),
        permit: OwnedSemaphorePermit,
        open: &F,
    ) -> Result<Lease, PoolError<E>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<BackendConn, E>>,
    {
        let _turn = db.opening.lock().await;
        if let Some(idle) = self.take(db, flavour, wanted, false) {
            drop(permit);
            return Ok(self.lease(db, flavour, idle, false));
        }
        let conn = open().await.map_err(PoolError::Open)?;
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(self.lend(db, flavour, conn, permit, false))
    }

    /// Lends an idle connection (a pool hit); `reclaimed` when its client had set it aside.
    fn lease(
        self: &Arc<Self>,
        db: &Arc<DbPool>,
        flavour: &Flavour,
        idle: Idle,
        reclaimed: bool,
    ) -> Lease {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.lend(db, flavour, idle.conn, idle.permit, reclaimed)
    }

    fn lend(
        self: &Arc<Self>,
        db: &Arc<DbPool>,
        flavour: &Flavour,
        conn: BackendConn,
        permit: OwnedSemaphorePermit,
        reclaimed: bool,
    ) -> Lease {
        Lease {
            pool: self.clone(),
            db: db.clone(),
            flavour: flavour.clone(),
            conn: Some(conn),
            permit: Some(permit),
            reclaimed,
        }
    }

    /// Counts a pin, for the metrics.
    pub fn record_pin(&self, reason: PinReason) {
        self.stats.pins[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Closes connections idle for longer than the timeout.
    pub fn reap(&self) {
        for db in self.dbs.iter() {
            let mut idle = db.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|e| e.since.elapsed() < self.config.idle_timeout);
        }
    }

    /// Closes every idle connection of one database (when it is suspended, deleted or moved).
    /// Lent connections close when their leases end.
    pub fn forget(&self, tenant: &str, database: &str) {
        self.dbs.retain(|k, db| {
            let keep = !(k.tenant == tenant && k.database == database);
            if !keep {
                // A client's reservation may still hold the pool; its connections go now.
                db.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            keep
        });
    }

    pub fn idle_count(&self) -> usize {
        self.dbs.iter().map(|db| db.idle.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
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

/// How a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// The server is idle and the proxy knows the session state: reuse as is.
    Keep,
    /// The server is idle but the session holds state the proxy cannot describe: reset it
    /// (COM_RESET_CONNECTION and COM_INIT_DB) first.
    Reset,
    /// Close it.
    Close,
}

/// A backend connection lent to one client session; dropping it closes the connection.
pub struct Lease {
    pool: Arc<Pool>,
    db: Arc<DbPool>,
    flavour: Flavour,
    conn: Option<BackendConn>,
    permit: Option<OwnedSemaphorePermit>,
    /// The connection is the one its client set aside, back with what it left on it.
    reclaimed: bool,
}

impl Lease {
    /// Whether the client got back the connection it set aside.
    pub fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    pub fn conn(&mut self) -> &mut BackendConn {
        // Present until the lease is given back, which consumes it.
        self.conn.as_mut().expect("a lease holds its connection until it ends")
    }

    pub fn conn_ref(&self) -> &BackendConn {
        self.conn.as_ref().expect("a lease holds its connection until it ends")
    }

    /// The flavour changed under the connection (COM_SET_OPTION switched multi-statements).
    pub fn set_flavour(&mut self, flavour: Flavour) {
        self.flavour = flavour;
    }

    /// Ends the lease; `schema` is the database's own, restored by a reset.
    pub fn give_back(mut self, how: Return, schema: &str) {
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else { return };
        match how {
            Return::Close => {
                self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            Return::Keep if conn.stream.has_buffered_input() => {
                self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            Return::Keep => self.keep(conn, permit),
            Return::Reset => {
                // A reset takes a round trip that no client needs to wait for.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
                let schema = schema.to_owned();
                runtime.spawn(async move {
                    let mut conn = conn;
                    match conn.reset(&schema).await {
                        Ok(()) => self.keep(conn, permit),
                        Err(e) => {
                            tracing::debug!(error = %e, "backend reset failed; closing it");
                            self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }

    /// Ends the lease but sets the connection aside for its client, which may take it back
    /// with the returned reservation while no one else has needed it. A connection with
    /// unread input is closed instead.
    pub fn set_aside(mut self) -> Option<Reservation> {
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return None;
        };
        if conn.stream.has_buffered_input() {
            self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.pool.next_reservation.fetch_add(1, Ordering::Relaxed);
        self.keep_for(conn, permit, Some(id));
        Some(Reservation { db: self.db.clone(), id })
    }

    fn keep(&self, conn: BackendConn, permit: OwnedSemaphorePermit) {
        self.keep_for(conn, permit, None);
    }

    fn keep_for(&self, conn: BackendConn, permit: OwnedSemaphorePermit, reserved: Option<u64>) {
        {
            let mut idle = self.db.idle.lock().unwrap_or_else(|e| e.into_inner());
            let flavour = self.flavour.clone();
            idle.push(Idle { flavour, since: Instant::now(), conn, permit, reserved });
        }
        self.pool.stats.returned.fetch_add(1, Ordering::Relaxed);
        self.db.returned.notify_waiters();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
