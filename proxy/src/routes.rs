//! Routes to databases: `(tenant, database)` to backend address and credentials, cached for a
//! short TTL and dropped at once when a backend refuses a connection or control says the
//! database moved. A sleeping database is woken here: one wake per database however many
//! clients arrive, retried with bounded backoff when the failure can pass, and never for a
//! client its address allowlist refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::allowlist::AllowList;
use crate::control::{ControlError, ControlPlane, Route, RouteLimits};

/// How hard a wake is tried before the waiting clients get an error.
#[derive(Debug, Clone)]
pub struct WakePolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    /// The whole wake, retries included, ends by then.
    pub deadline: Duration,
}

impl Default for WakePolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            first_backoff: Duration::from_millis(100),
            deadline: Duration::from_secs(20),
        }
    }
}

type Key = (String, String);
type WakeResult = Result<Option<Route>, ControlError>;

pub struct RouteCache {
    control: Arc<dyn ControlPlane>,
    ttl: Duration,
    wake: WakePolicy,
    /// The operator's caps on every database's limits.
    caps: Option<RouteLimits>,
    entries: DashMap<Key, (Instant, Route)>,
    waking: Mutex<HashMap<Key, Shared<BoxFuture<'static, WakeResult>>>>,
}

impl RouteCache {
    pub fn new(control: Arc<dyn ControlPlane>, ttl: Duration, wake: WakePolicy) -> Self {
        Self {
            control,
            ttl,
            wake,
            caps: None,
            entries: DashMap::new(),
            waking: Mutex::new(HashMap::new()),
        }
    }

    /// Caps every route's limits (the operator's ceiling over what plans allow).
    pub fn with_caps(mut self, caps: Option<RouteLimits>) -> Self {
        self.caps = caps;
        self
    }

    /// The route, from the cache if fresh, else from control, waking the database if it sleeps.
    pub async fn resolve(&self, tenant: &str, database: &str) -> WakeResult {
        self.resolve_admitting(tenant, database, &|_| true).await
    }

    /// [`Self::resolve`] for a client logging in: `admit` judges the database's allowlist
    /// before a sleeping database is woken (a client it would refuse does not start it) and on
    /// the route found. A client refused gets `Ok(None)`, as for a database that does not exist.
    pub async fn resolve_admitting(
        &self,
        tenant: &str,
        database: &str,
        admit: &(dyn Fn(&AllowList) -> bool + Sync),
    ) -> WakeResult {
        let route = self.lookup(tenant, database, admit).await;
        match route {
            Ok(Some(r)) if !admit(&r.allowed_cidrs) => Ok(None),
            other => other,
        }
    }

    async fn lookup(
        &self,
        tenant: &str,
        database: &str,
        admit: &(dyn Fn(&AllowList) -> bool + Sync),
    ) -> WakeResult {
        let key = (tenant.to_owned(), database.to_owned());
        if let Some(entry) = self.entries.get(&key)
            && entry.0.elapsed() < self.ttl
        {
            return Ok(Some(entry.1.clone()));
        }
        let mut route = match self.control.route(tenant, database).await {
            Err(ControlError::Asleep) => {
                // Control's failure to say is no refusal: the woken route's list decides.
                if let Ok(Some(allowed)) = self.control.allowlist(tenant, database).await
                    && !admit(&allowed)
                {
                    return Ok(None);
                }
                self.wake(key.clone()).await
            }
            other => other,
        };
        if let (Ok(Some(r)), Some(caps)) = (&mut route, self.caps) {
            r.limits.max_clients = r.limits.max_clients.min(caps.max_clients);
            r.limits.max_backend = r.limits.max_backend.min(caps.max_backend);
        }
        match &route {
            Ok(Some(r)) => {
                self.entries.insert(key, (Instant::now(), r.clone()));
            }
            _ => {
                self.entries.remove(&key);
            }
        }
        route
    }

    /// Forgets a route that turned out to be wrong (or is about to be).
    pub fn invalidate(&self, tenant: &str, database: &str) {
        self.entries.remove(&(tenant.to_owned(), database.to_owned()));
    }

    /// Joins the wake in flight for `key`, or starts one.
    async fn wake(&self, key: Key) -> WakeResult {
        let shared = {
            let mut waking = self.waking.lock().unwrap_or_else(|e| e.into_inner());
            waking
                .entry(key.clone())
                .or_insert_with(|| {
                    wake_with_retries(self.control.clone(), key.clone(), self.wake.clone())
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = shared.clone().await;
        let mut waking = self.waking.lock().unwrap_or_else(|e| e.into_inner());
        if waking.get(&key).is_some_and(|w| w.ptr_eq(&shared)) {
            waking.remove(&key);
        }
        result
    }
}

async fn wake_with_retries(
    control: Arc<dyn ControlPlane>,
    (tenant, database): Key,
    policy: WakePolicy,
) -> WakeResult {
    let started = Instant::now();
    let attempt_all = async {
        let mut backoff = policy.first_backoff;
        let mut attempt = 1;
        loop {
            match control.wake(&tenant, &database).await {
                Err(e) if e.is_retryable() && attempt < policy.attempts => {
                    tracing::warn!(%tenant, db = %database, attempt, error = %e, "wake failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    };
    let result = tokio::time::timeout(policy.deadline, attempt_all).await.unwrap_or_else(|_| {
        Err(ControlError::WakeFailed { message: "timed out".into(), retryable: true })
    });
    match &result {
        Ok(_) => {
            tracing::debug!(%tenant, db = %database, ms = started.elapsed().as_millis() as u64, "woke")
        }
        Err(e) => tracing::warn!(%tenant, db = %database, error = %e, "wake failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BackendSecret, Protocol};
    use async_trait::async_trait;
    use jsonwebtoken::jwk::JwkSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A control plane whose database sleeps until woken; wakes fail a scripted number of times.
    struct Scripted {
        awake: std::sync::atomic::AtomicBool,
        wakes: AtomicU32,
        failures: AtomicU32,
        retryable: bool,
        allowed: AllowList,
    }

    impl Scripted {
        fn route(&self) -> Route {
            Route { allowed_cidrs: self.allowed.clone(), ..route() }
        }
    }

    fn route() -> Route {
        Route {
            protocol: Protocol::Redis,
            host: "127.0.0.1".into(),
            port: 1,
            socket: None,
            user: "u".into(),
            readonly_user: None,
            info_user: None,
            password: BackendSecret("p".into()),
            limits: Default::default(),
            allowed_cidrs: Default::default(),
        }
    }

    #[async_trait]
    impl ControlPlane for Scripted {
        async fn jwks(&self) -> Result<JwkSet, ControlError> {
            Ok(JwkSet::default())
        }
        async fn is_revoked(&self, _: &str) -> Result<bool, ControlError> {
            Ok(false)
        }
        async fn route(&self, _: &str, _: &str) -> WakeResult {
            if self.awake.load(Ordering::SeqCst) {
                Ok(Some(self.route()))
            } else {
                Err(ControlError::Asleep)
            }
        }
        async fn wake(&self, _: &str, _: &str) -> WakeResult {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(ControlError::WakeFailed {
                    message: "no".into(),
                    retryable: self.retryable,
                });
            }
            self.awake.store(true, Ordering::SeqCst);
            Ok(Some(self.route()))
        }
        async fn allowlist(&self, _: &str, _: &str) -> Result<Option<AllowList>, ControlError> {
            Ok(Some(self.allowed.clone()))
        }
        fn session_opened(&self, _: &str, _: &str) {}
        fn session_closed(&self, _: &str, _: &str) {}
    }

    fn cache(failures: u32, retryable: bool) -> (Arc<Scripted>, Arc<RouteCache>) {
        cache_allowing(failures, retryable, AllowList::default())
    }

    fn cache_allowing(
        failures: u32,
        retryable: bool,
        allowed: AllowList,
    ) -> (Arc<Scripted>, Arc<RouteCache>) {
        let control = Arc::new(Scripted {
            awake: Default::default(),
            wakes: AtomicU32::new(0),
            failures: AtomicU32::new(failures),
            retryable,
            allowed,
        });
        let cache = Arc::new(RouteCache::new(
            control.clone(),
            Duration::from_secs(2),
            WakePolicy::default(),
        ));
        (control, cache)
    }

    #[tokio::test(start_paused = true)]
    async fn many_clients_share_one_wake() {
        let (control, cache) = cache(0, true);
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.resolve("t", "db").await })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.ok().and_then(|r| r.ok()).flatten(), Some(route()));
        }
        assert_eq!(control.wakes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_with_backoff() {
        let (control, cache) = cache(2, true);
        assert_eq!(cache.resolve("t", "db").await, Ok(Some(route())));
        assert_eq!(control.wakes.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_failure_reaches_every_waiter_and_the_next_client_tries_again() {
        let (control, cache) = cache(1, false);
        let (a, b) = tokio::join!(cache.resolve("t", "db"), cache.resolve("t", "db"));
        assert!(matches!(a, Err(ControlError::WakeFailed { retryable: false, .. })));
        assert_eq!(a, b);
        assert_eq!(control.wakes.load(Ordering::SeqCst), 1, "not retried");
        assert_eq!(cache.resolve("t", "db").await, Ok(Some(route())), "a new wake");
        assert_eq!(control.wakes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_the_allowlist_refuses_neither_wakes_the_database_nor_gets_its_route()
    -> Result<(), Box<dyn std::error::Error>> {
        let only = AllowList::parse(&["127.0.0.2/32"])?;
        let (control, cache) = cache_allowing(0, true, only);
        let (inside, outside) = ("127.0.0.2".parse()?, "127.0.0.3".parse()?);
        let admit = |peer| move |allowed: &AllowList| allowed.permits(peer);
        assert_eq!(cache.resolve_admitting("t", "db", &admit(outside)).await, Ok(None));
        assert_eq!(control.wakes.load(Ordering::SeqCst), 0, "still asleep");
        let woken = cache.resolve_admitting("t", "db", &admit(inside)).await?;
        assert_eq!(woken.map(|r| r.allowed_cidrs.is_empty()), Some(false));
        assert_eq!(control.wakes.load(Ordering::SeqCst), 1);
        // Awake now, with the route cached: still refused.
        assert_eq!(cache.resolve_admitting("t", "db", &admit(outside)).await, Ok(None));
        assert!(cache.resolve("t", "db").await?.is_some(), "mid-session lookups are not judged");
        Ok(())
    }
}
