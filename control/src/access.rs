//! Repairing a database's internal accounts when the proxy can no longer log in with them:
//! a tenant session can change its own account's password (`SET PASSWORD` cannot be denied
//! by the server), which would lock every other client out. Control has the agent put the
//! accounts back, at most once a second per database, and keeps a note for `last_error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dormouse_engines::InstanceId;
use dormouse_proxy::control::ControlError;

use crate::service::{ControlService, now};

/// How often one database's accounts are repaired at most: a client retrying in a loop
/// must not turn into a loop of repairs.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What was repaired last, per database.
#[derive(Default)]
pub struct AccessRepairs {
    last: DashMap<InstanceId, Repair>,
    /// One repair of a database at a time: a caller that finds one under way waits for it
    /// rather than retrying its login before the account is back.
    running: DashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
}

/// A repair of a database's accounts, as `last_error` shows it.
#[derive(Debug, Clone)]
pub struct Repair {
    pub at: i64,
    pub reason: String,
    when: Instant,
}

impl AccessRepairs {
    /// The last repair of the database's accounts, if any since control started.
    pub fn last(&self, id: &InstanceId) -> Option<Repair> {
        self.last.get(id).map(|r| r.clone())
    }

    pub fn forget(&self, id: &InstanceId) {
        self.last.remove(id);
        self.running.remove(id);
    }
}

impl ControlService {
    /// The proxy's internal account was refused by `tenant`'s database `name`: puts the
    /// accounts back. `Ok(false)` when there is no such running database.
    pub async fn repair_access(&self, tenant: &str, name: &str) -> Result<bool, ControlError> {
        let db = self
            .store()
            .database(tenant, name)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let Some(db) = db else { return Ok(false) };
        let repairs = self.access_repairs();
        let lock = repairs.running.entry(db.id.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        if repairs.last(&db.id).is_some_and(|r| r.when.elapsed() < MIN_INTERVAL) {
            return Ok(true);
        }
        let reason = "the proxy's login to the server was refused (a session changed the \
                      internal account); Dormouse restored the account"
            .to_owned();
        repairs.last.insert(db.id.clone(), Repair { at: now(), reason, when: Instant::now() });
        tracing::warn!(db = %db.name, %tenant, "backend login refused; repairing internal accounts");
        match self.lifecycle().agent().repair_access(&db.id).await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!(db = %db.name, error = %e, "repairing internal accounts failed");
                Err(ControlError::Unavailable(format!("repairing the database's accounts: {e}")))
            }
        }
    }
}
