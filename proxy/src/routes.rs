//! The route cache: `(tenant, database)` to backend address and credentials, trusted for a short
//! TTL and dropped at once when a backend refuses a connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::control::{ControlError, ControlPlane, Route};

pub struct RouteCache {
    control: Arc<dyn ControlPlane>,
    ttl: Duration,
    entries: DashMap<(String, String), (Instant, Route)>,
}

impl RouteCache {
    pub fn new(control: Arc<dyn ControlPlane>, ttl: Duration) -> Self {
        Self { control, ttl, entries: DashMap::new() }
    }

    /// The route, from the cache if fresh, else from control.
    pub async fn get(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        let key = (tenant.to_owned(), database.to_owned());
        if let Some(entry) = self.entries.get(&key)
            && entry.0.elapsed() < self.ttl
        {
            return Ok(Some(entry.1.clone()));
        }
        let route = self.control.route(tenant, database).await?;
        match &route {
            Some(r) => {
                self.entries.insert(key, (Instant::now(), r.clone()));
            }
            None => {
                self.entries.remove(&key);
            }
        }
        Ok(route)
    }

    /// Forgets a route that turned out to be wrong.
    pub fn invalidate(&self, tenant: &str, database: &str) {
        self.entries.remove(&(tenant.to_owned(), database.to_owned()));
    }
}
