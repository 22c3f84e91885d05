//! The reconciler moves observed state toward intent: every database that should run and is
//! not running on its host gets started, a moved port is recorded, and a delete interrupted by
//! a crash is finished. It runs once at start-up (all databases in parallel) and then on a timer.

use std::sync::Arc;
use std::time::Duration;

use dormouse_engines::InstanceState;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Attempt, LifecycleError};
use crate::service::ControlService;
use crate::store::{Database, DatabaseStatus};

/// One pass over every database.
pub async fn reconcile_once(service: &ControlService) {
    let databases = match service.store().all_databases().await {
        Ok(dbs) => dbs,
        Err(e) => {
            tracing::error!(error = %e, "reconciler cannot read the store");
            return;
        }
    };
    futures::future::join_all(databases.iter().map(|db| reconcile(service, db))).await;
}

async fn reconcile(service: &ControlService, db: &Database) {
    let lifecycle = service.lifecycle();
    let result = match db.status {
        DatabaseStatus::Deleting => lifecycle.destroy(db).await.map(|_| ()),
        // Asleep by intent: only make sure no server runs (a crash mid-suspend).
        DatabaseStatus::Suspended => match lifecycle.agent().state(&db.id) {
            InstanceState::Stopped | InstanceState::Failed { .. } => Ok(()),
            _ => lifecycle.enforce_suspended(db).await,
        },
        DatabaseStatus::Creating | DatabaseStatus::Running | DatabaseStatus::Failed => {
            match lifecycle.agent().state(&db.id) {
                InstanceState::Running { port, .. } if port != db.port => {
                    lifecycle.observe_port(db, port).await
                }
                InstanceState::Running { .. }
                | InstanceState::Starting
                | InstanceState::Restarting { .. } => Ok(()),
                InstanceState::Stopped | InstanceState::Failed { .. } => {
                    let started = match lifecycle.start(db, Attempt::WhenDue).await {
                        Ok(_) | Err(LifecycleError::Cooling { .. }) => Ok(()),
                        Err(e) => Err(e),
                    };
                    service.activity().touch(&db.tenant_id, &db.name);
                    started
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(db = %db.name, instance = %db.id, error = %e, "reconcile");
    }
}

/// Reconciles every `period` until `shutdown`.
pub async fn run(service: Arc<ControlService>, period: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => reconcile_once(&service).await,
            () = shutdown.cancelled() => return,
        }
    }
}
