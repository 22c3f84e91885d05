//! The idle suspender: every few seconds, each running database that has had no client
//! sessions for its idle timeout is suspended (its server stopped cleanly, its data kept),
//! after a drain long enough for remote proxies to report sessions opened on cached routes.

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
    let activity = service.activity();
    // The same for every database in this pass: which remote proxies report is per proxy.
    let quiet_period = activity.quiet_period();
    for db in databases {
        if db.status != DatabaseStatus::Running || db.idle_timeout_seconds == 0 {
            continue;
        }
        let (tenant, name) = (db.tenant_id.as_str(), db.name.as_str());
        let timeout = Duration::from_secs(u64::from(db.idle_timeout_seconds));
        if activity.idle_for(tenant, name).is_none_or(|idle| idle < timeout) {
            // In use again (a remote proxy reported a session): a drain, if any, ends.
            activity.stop_draining(tenant, name);
            continue;
        }
        // A remote proxy may still hold a cached route and open sessions on it that control
        // has not heard of yet. New clients are sent to a wake (which ends the drain) while
        // control waits for those cached routes to expire and for the reports after them.
        if let Some(quiet) = quiet_period {
            match activity.drain(tenant, name) {
                None => {
                    tracing::debug!(db = %db.name, ?quiet, "draining an idle database");
                    continue;
                }
                Some(draining) if draining < quiet => continue,
                Some(_) => {}
            }
        }
        if let Err(e) = service.suspend(&db, false).await {
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
