//! Database lifecycle: every status change goes through [`Lifecycle::transition`], and every
//! start or destroy of an instance runs under that database's lock, after re-reading its row,
//! so the API and the reconciler never act on a stale view of each other's work.
//!
//! ```text
//!  creating ──▶ running ◀──▶ failed
//!      │           │            │
//!      └───────────┴──▶ deleting ◀┘   (then the row is removed)
//! ```

use std::sync::Arc;

use dashmap::DashMap;
use dormouse_engines::{AgentError, Endpoint, HostAgent, InstanceId, InstanceSpec};

use crate::names;
use crate::store::{Database, DatabaseStatus, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("database {0} no longer exists")]
    Gone(InstanceId),
    #[error("database {id} cannot go from {from} to {to}")]
    BadTransition { id: InstanceId, from: DatabaseStatus, to: DatabaseStatus },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Lifecycle {
    store: Arc<dyn Store>,
    agent: Arc<dyn HostAgent>,
    locks: DashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
}

/// Which status changes are allowed.
fn allowed(from: DatabaseStatus, to: DatabaseStatus) -> bool {
    use DatabaseStatus::*;
    matches!(
        (from, to),
        (Creating, Running | Failed | Deleting)
            | (Running, Running | Failed | Deleting)
            | (Failed, Running | Failed | Deleting)
            | (Deleting, Deleting)
    )
}

/// What the agent needs to run a database's instance.
pub fn spec(db: &Database) -> InstanceSpec {
    let plan = names::plan(&db.plan).or_else(|| names::plan(names::DEFAULT_PLAN));
    InstanceSpec {
        id: db.id.clone(),
        name: db.name.clone(),
        engine: db.engine,
        limits: plan.map(|p| p.limits).unwrap_or(names::PLANS[0].limits),
        password: db.password.clone(),
        port: db.port,
    }
}

impl Lifecycle {
    pub fn new(store: Arc<dyn Store>, agent: Arc<dyn HostAgent>) -> Self {
        Self { store, agent, locks: DashMap::new() }
    }

    pub fn agent(&self) -> &Arc<dyn HostAgent> {
        &self.agent
    }

    fn lock(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(id.clone()).or_default().clone()
    }

    /// The one place a database's status changes.
    async fn transition(
        &self,
        db: &Database,
        to: DatabaseStatus,
        port: Option<u16>,
    ) -> Result<(), LifecycleError> {
        if !allowed(db.status, to) {
            return Err(LifecycleError::BadTransition { id: db.id.clone(), from: db.status, to });
        }
        self.store.update_database_status(&db.id, to, port).await?;
        if db.status != to {
            tracing::info!(db = %db.name, instance = %db.id, from = %db.status, %to, "database status");
        }
        Ok(())
    }

    async fn reread(&self, db: &Database) -> Result<Database, LifecycleError> {
        self.store
            .database(&db.tenant_id, &db.name)
            .await?
            .filter(|d| d.id == db.id)
            .ok_or_else(|| LifecycleError::Gone(db.id.clone()))
    }

    /// Starts the database's instance (provisioning it on first start) and waits until it is
    /// ready; records `running` with its port, or `failed`.
    pub async fn start(&self, db: &Database) -> Result<Endpoint, LifecycleError> {
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let db = self.reread(db).await?;
        if db.status == DatabaseStatus::Deleting {
            return Err(LifecycleError::BadTransition {
                id: db.id,
                from: DatabaseStatus::Deleting,
                to: DatabaseStatus::Running,
            });
        }
        match self.agent.start(&spec(&db)).await {
            Ok(endpoint) => {
                self.transition(&db, DatabaseStatus::Running, Some(endpoint.port)).await?;
                Ok(endpoint)
            }
            Err(e) => {
                tracing::warn!(db = %db.name, instance = %db.id, error = %e, "database failed to start");
                self.transition(&db, DatabaseStatus::Failed, None).await?;
                Err(e.into())
            }
        }
    }

    /// Marks the database `deleting`, destroys its instance and data, revokes the tokens
    /// scoped to it and removes its row. Safe to repeat after a crash at any step.
    pub async fn destroy(&self, db: &Database) -> Result<(), LifecycleError> {
        let lock = self.lock(&db.id);
        let guard = lock.lock().await;
        let db = match self.reread(db).await {
            Ok(db) => db,
            Err(LifecycleError::Gone(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.transition(&db, DatabaseStatus::Deleting, None).await?;
        self.agent.destroy(&db.id).await?;
        let now = crate::service::now();
        self.store.revoke_database_tokens(&db.tenant_id, &db.name, now).await?;
        self.store.delete_database(&db.id).await?;
        drop(guard);
        self.locks.remove(&db.id);
        tracing::info!(db = %db.name, instance = %db.id, "database deleted");
        Ok(())
    }

    /// Records a port the supervisor moved the instance to.
    pub async fn observe_port(&self, db: &Database, port: u16) -> Result<(), LifecycleError> {
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let db = self.reread(db).await?;
        if db.status == DatabaseStatus::Running && db.port != port {
            self.transition(&db, DatabaseStatus::Running, Some(port)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleting_database_never_comes_back() {
        use DatabaseStatus::*;
        for to in [Creating, Running, Failed] {
            assert!(!allowed(Deleting, to));
        }
        assert!(allowed(Creating, Running));
        assert!(allowed(Failed, Running));
        assert!(!allowed(Running, Creating));
    }
}
