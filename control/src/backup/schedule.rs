//! Scheduled backups, retention and scheduled deletion. One pass, [`tick`], does everything
//! due at the time it is given; [`run`] calls it every half minute with the clock's time, and
//! tests call it with the times they choose.
//!
//! Every database has a schedule (default: daily, keeping 7 days and at least 7 backups). A
//! pass queues a backup for each database whose schedule is due, unless its data has not
//! changed since its newest backup (then the schedule records `unchanged` and copies nothing);
//! the queue takes them one at a time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::spec;
use crate::service::{ControlService, ServiceError, now};
use crate::store::{BackupKind, BackupRecord, BackupStatus, Database, ScheduleRecord};

pub const DEFAULT_EVERY: &str = "1d";
pub const DEFAULT_KEEP_COUNT: u32 = 7;
pub const DEFAULT_KEEP_DAYS: u32 = 7;
/// The shortest interval a schedule may have.
const MIN_INTERVAL: i64 = 60;
/// The longest: a schedule that never fires is no schedule.
const MAX_INTERVAL: i64 = 366 * 86_400;

/// How often a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    /// Seconds after the previous run.
    Interval(i64),
    /// At the times a cron expression names (UTC).
    Cron(Box<Cron>),
}

impl Every {
    pub fn parse(text: &str) -> Result<Self, String> {
        let too_often = || format!("{text:?} is too often: at most one backup a minute");
        if let Ok(d) = humantime::parse_duration(text) {
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if secs < MIN_INTERVAL {
                return Err(too_often());
            }
            if secs > MAX_INTERVAL {
                return Err(format!("{text:?} is too rare: at least one backup a year"));
            }
            return Ok(Every::Interval(secs));
        }
        let cron = Cron::from_str(text).map_err(|e| {
            format!("{text:?} is neither an interval (\"6h\", \"1d\") nor a cron expression: {e}")
        })?;
        let every = Every::Cron(Box::new(cron));
        // A seconds field can fire every second; a date that never comes, never.
        let now = crate::service::now();
        let first = every.next_after(now).filter(|t| t - now <= MAX_INTERVAL);
        let second = first.and_then(|t| every.next_after(t));
        match (first, second) {
            (Some(a), Some(b)) if b - a < MIN_INTERVAL => Err(too_often()),
            (Some(_), Some(_)) => Ok(every),
            _ => Err(format!("{text:?} does not fire at least once a year")),
        }
    }

    /// The first time after `last` this fires.
    pub fn next_after(&self, last: i64) -> Option<i64> {
        match self {
            Every::Interval(secs) => last.checked_add(*secs),
            Every::Cron(cron) => {
                let from = chrono::DateTime::from_timestamp(last, 0)?;
                cron.find_next_occurrence(&from, false).ok().map(|t| t.timestamp())
            }
        }
    }
}

/// The database's schedule, or the default one.
pub fn schedule_or_default(db: &Database, stored: Option<ScheduleRecord>) -> ScheduleRecord {
    stored.unwrap_or_else(|| ScheduleRecord {
        database_id: db.id.clone(),
        every: DEFAULT_EVERY.into(),
        keep_count: DEFAULT_KEEP_COUNT,
        keep_days: DEFAULT_KEEP_DAYS,
        last_run_at: None,
        last_result: None,
        last_backup_id: None,
    })
}

/// When the schedule next fires: after its last run, or after the database was created.
pub fn next_run(db: &Database, schedule: &ScheduleRecord) -> Option<i64> {
    let every = Every::parse(&schedule.every).ok()?;
    every.next_after(schedule.last_run_at.unwrap_or(db.created_at))
}

/// Runs [`tick`] every half minute until `shutdown`.
pub async fn run(service: Arc<ControlService>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = tick(&service, now()).await {
            tracing::warn!(error = %e, "backup schedule pass");
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Backups queued by schedules.
    pub queued: Vec<String>,
    /// Databases whose schedule found nothing new to copy.
    pub unchanged: Vec<String>,
    /// Backups deleted by retention or expiry.
    pub deleted: Vec<String>,
    /// Databases deleted at their expiry.
    pub expired: Vec<String>,
}

/// Everything due at `at`: expired databases deleted (the safe way), scheduled backups
/// queued, backups past their retention deleted.
pub async fn tick(service: &Arc<ControlService>, at: i64) -> Result<Pass, ServiceError> {
    let mut pass = Pass::default();
    for db in service.store().all_databases().await? {
        if db.expires_at.is_some_and(|t| t <= at) {
            let Some(tenant) = service.store().tenant(&db.tenant_id).await? else { continue };
            match service.delete_database(&tenant, &db.name, false).await {
                Ok(_) => pass.expired.push(db.name.clone()),
                Err(e) => tracing::warn!(db = %db.name, error = %e, "deleting an expired database"),
            }
            continue;
        }
        if matches!(
            db.status,
            crate::store::DatabaseStatus::Running | crate::store::DatabaseStatus::Suspended
        ) && let Err(e) = service.archive_logs(&db).await
        {
            tracing::warn!(db = %db.name, error = %e, "archiving the log");
        }
        let schedule = schedule_or_default(&db, service.store().schedule(&db.id).await?);
        if next_run(&db, &schedule).is_some_and(|t| t <= at) {
            run_schedule(service, &db, schedule, at, &mut pass).await?;
        }
    }
    retain(service, at, &mut pass).await?;
    Ok(pass)
}

async fn run_schedule(
    service: &Arc<ControlService>,
    db: &Database,
    mut schedule: ScheduleRecord,
    at: i64,
    pass: &mut Pass,
) -> Result<(), ServiceError> {
    schedule.last_run_at = Some(at);
    let backups = service.store().list_backups(&db.tenant_id, Some(&db.name)).await?;
    let ours = |b: &&BackupRecord| b.database_id == db.id;
    if backups
        .iter()
        .filter(ours)
        .any(|b| matches!(b.status, BackupStatus::Queued | BackupStatus::Running))
    {
        schedule.last_result = Some("skipped: a backup was already under way".into());
        service.store().put_schedule(&schedule).await?;
        return Ok(());
    }
    let newest = backups.iter().filter(ours).find(|b| b.status == BackupStatus::Completed);
    let version = service.lifecycle().agent().data_version(&spec(db)).await.ok();
    if let (Some(newest), Some(version)) = (newest, &version)
        && newest.data_version.as_ref() == Some(version)
    {
        schedule.last_result = Some("unchanged".into());
        schedule.last_backup_id = Some(newest.id.clone());
        service.store().put_schedule(&schedule).await?;
        pass.unchanged.push(db.name.clone());
        return Ok(());
    }
    let Some(tenant) = service.store().tenant(&db.tenant_id).await? else { return Ok(()) };
    match service.request_backup(&tenant, &db.name, None, BackupKind::Scheduled, false).await {
        Ok(backup) => {
            schedule.last_result = Some("queued".into());
            schedule.last_backup_id = Some(backup.id.clone());
            pass.queued.push(backup.id);
        }
        Err(e) => schedule.last_result = Some(format!("failed: {e}")),
    }
    service.store().put_schedule(&schedule).await?;
    Ok(())
}

/// Deletes what is no longer kept: backups past their own expiry (a final backup after its
/// undo window), and scheduled ones beyond their database's retention (older than its
/// `keep_days` with at least `keep_count` newer). Never one that another backup builds on.
async fn retain(
    service: &Arc<ControlService>,
    at: i64,
    pass: &mut Pass,
) -> Result<(), ServiceError> {
    let mut doomed: Vec<BackupRecord> = Vec::new();
    for tenant in service.store().list_tenants().await? {
        let backups = service.store().list_backups(&tenant.id, None).await?;
        let databases = service.store().list_databases(&tenant.id).await?;
        let mut kept_scheduled: std::collections::HashMap<String, u32> = Default::default();
        // Newest first, so the count of newer scheduled backups grows as we go.
        for b in &backups {
            if matches!(b.status, BackupStatus::Queued | BackupStatus::Running) {
                continue;
            }
            if b.expires_at.is_some_and(|t| t <= at) {
                doomed.push(b.clone());
                continue;
            }
            if b.kind != BackupKind::Scheduled {
                continue;
            }
            let (keep_count, keep_days) = match databases.iter().find(|d| d.id == b.database_id) {
                Some(db) => {
                    let s = schedule_or_default(db, service.store().schedule(&db.id).await?);
                    (s.keep_count, s.keep_days)
                }
                // A deleted database's scheduled backups go by the default retention.
                None => (DEFAULT_KEEP_COUNT, DEFAULT_KEEP_DAYS),
            };
            let newer = kept_scheduled.entry(b.database_id.to_string()).or_default();
            let young = at - b.created_at < i64::from(keep_days) * 86_400;
            if *newer < keep_count || young {
                if b.status == BackupStatus::Completed {
                    *newer += 1;
                }
                continue;
            }
            doomed.push(b.clone());
        }
        doomed.retain(|d| !backups.iter().any(|b| b.parent_id.as_deref() == Some(&d.id)));
    }
    for b in doomed {
        let Some(tenant) = service.store().tenant(&b.tenant_id).await? else { continue };
        match service.delete_backup(&tenant, &b.id).await {
            Ok(()) => pass.deleted.push(b.id),
            Err(e) => {
                tracing::warn!(backup = %b.id, error = %e, "deleting a backup past its retention")
            }
        }
    }
    service.prune_archived_logs().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron_expressions_name_the_next_run() {
        let day = Every::parse("1d").expect("an interval");
        assert_eq!(day.next_after(1_000), Some(1_000 + 86_400));
        // 2026-12-06 10:00:00 UTC; the next 03:00 is the following day.
        let at_three = Every::parse("0 3 * * *").expect("a cron expression");
        assert_eq!(at_three.next_after(1_796_551_200), Some(1_796_612_400));
        assert!(Every::parse("10s").is_err(), "too often");
        assert!(Every::parse("* * * * * *").is_err(), "every second");
        assert!(Every::parse("18446744073709551615s").is_err(), "never");
        assert!(Every::parse("0 0 31 2 *").is_err(), "31 February");
        assert!(Every::parse("*/5 * * * *").is_ok());
        assert!(Every::parse("every tuesday").is_err());
    }
}
