//! The idle suspender: every few seconds, each running database that has had no client
//! sessions for its idle timeout is suspended (its server stopped cleanly, its data kept).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::ControlService;
use crate::store::DatabaseStatus;

/// One pass: suspends every database idle for longer than its timeout.
pub async fn suspend_idle(service: &ControlService) {
    let databases = match service.store().all_databases().await {
        Ok(dbs) => dbs,
        Err(e) => {
            tracing::error!(error = %e, "idle suspender cannot read the store");
            return;
        }
    };
    for db in databases {
        if db.status != DatabaseStatus::Running || db.idle_timeout_seconds == 0 {
            continue;
        }
        let timeout = Duration::from_secs(u64::from(db.idle_timeout_seconds));
        let idle = service.activity().idle_for(&db.tenant_id, &db.name);
        if idle.is_some_and(|idle| idle >= timeout)
            && let Err(e) = service.suspend(&db, false).await
        {
            tracing::warn!(db = %db.name, error = %e, "suspending an idle database");
        }
    }
}

/// Checks every `period` until `shutdown`.
pub async fn run(service: Arc<ControlService>, period: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => suspend_idle(&service).await,
            () = shutdown.cancelled() => return,
        }
    }
}
