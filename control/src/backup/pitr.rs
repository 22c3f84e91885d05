//! Point-in-time recovery. The change log is archived (sealed like a backup) after each
//! backup and at every schedule pass, per database and timeline; its resolution is a second:
//! a restore to T keeps every change stamped T or earlier and none after.
//! - MySQL: closed binary log files, whole. A restore to a time restores the newest backup
//!   taken before it, then replays the archived log from the backup's position up to it.
//! - Redis: the append-only file, base files whole and increments by the bytes appended since
//!   the last pass. The archive is its own base: a restore to a time rebuilds the file from
//!   the newest archived base of that time or earlier and the increments after it, cut at
//!   it ([`dormouse_engines::redis::pitr`] says what a crash between passes loses).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use dormouse_engines::EngineKind;
use dormouse_engines::backup::{Format, LogSegment, Position};
use dormouse_engines::redis::pitr::{AofFile, AofHeader};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};

use super::crypto::DataKey;
use super::jobs::BackupError;
use super::pipeline::{self, Expected, PipelineError, Progress};
use crate::lifecycle::{Held, spec};
use crate::service::{ControlService, ServiceError, now};
use crate::store::{ArchivedLog, BackupKind, BackupRecord, BackupStatus, Database, Tenant};

/// Where an archived log file, or the range of one from `offset`, lives.
fn log_path(db: &Database, timeline: &str, name: &str, offset: u64) -> ObjectPath {
    let range = if offset == 0 { String::new() } else { format!("@{offset}") };
    ObjectPath::from(format!("{}/{}/logs/{timeline}/{name}{range}.zst.enc", db.tenant_id, db.id))
}

/// What seals a log file or range: bound to its database, timeline, name and offset.
fn log_object(database_id: &str, timeline: &str, name: &str, offset: u64) -> String {
    if offset == 0 {
        format!("{database_id}/{timeline}/{name}")
    } else {
        format!("{database_id}/{timeline}/{name}@{offset}")
    }
}

/// The id a Redis restore to a time reports in place of a backup's: it starts from the
/// archived log, not from a backup.
pub const ARCHIVED_LOG: &str = "archived-log";

impl ControlService {
    /// Archives what the database's log holds that is not archived yet (closed files, and
    /// what was appended to a Redis append-only file since the last pass), its lock being
    /// held, then tells the host what is archived. Returns how many objects it stored.
    pub async fn archive_logs_held(
        &self,
        _held: &Held,
        db: &Database,
    ) -> Result<usize, BackupError> {
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        let closed =
            agent.closed_logs(&spec).await.map_err(|e| BackupError::Refused(e.to_string()))?;
        if closed.segments.is_empty() {
            return Ok(0);
        }
        let archived = self.store().archived_logs(&db.id, &closed.timeline).await?;
        // MySQL: files before the oldest one kept were pruned as useless (see
        // [`Self::prune_archived_logs`]); the instance keeps them a while, but not for this.
        let order = |name: &str| (name.len(), name.to_owned());
        let floor = archived.first().filter(|_| db.engine == EngineKind::Mysql);
        let floor = floor.map(|l| order(&l.name));
        // Where each file's archive ends.
        let mut ends: HashMap<String, u64> = HashMap::new();
        for log in archived {
            let end = ends.entry(log.name).or_default();
            *end = (*end).max(log.offset.saturating_add(log.plain_bytes));
        }
        // Unsealed on the first file to store: most passes find nothing new.
        let mut key = None;
        let mut count = 0;
        for (i, segment) in closed.segments.iter().enumerate() {
            let offset = ends.get(&segment.name).copied().unwrap_or(0);
            if segment.size < offset {
                // The server cut a torn end off at a restart, after it was archived.
                tracing::warn!(db = %db.name, file = %segment.name, size = segment.size, archived = offset, "a log file shrank below its archive");
                continue;
            }
            let pruned = floor.as_ref().is_some_and(|f| order(&segment.name) <= *f);
            if segment.size == offset || (pruned && !ends.contains_key(&segment.name)) {
                continue;
            }
            let continued_by = match AofFile::parse(&segment.name) {
                Some(AofFile::Base(_)) if db.engine == EngineKind::Redis => {
                    match continuation(&closed.segments[i + 1..]) {
                        Some(next) => Some(next),
                        // A base a rewrite replaced before it was ever archived: superseded.
                        None => continue,
                    }
                }
                _ => None,
            };
            let len = segment.size - offset;
            let path = log_path(db, &closed.timeline, &segment.name, offset);
            let object = log_object(db.id.as_str(), &closed.timeline, &segment.name, offset);
            let name = segment.name.clone();
            let produce = |mut pipe| {
                let (agent, spec) = (agent.clone(), spec.clone());
                async move {
                    let read = agent.read_log(&spec, &name, offset, len, &mut pipe).await;
                    read.map_err(|e| e.to_string())
                }
            };
            let objects = self.backups().objects().clone();
            let progress = Progress::with_total(len);
            let seal = match &key {
                Some(key) => key,
                None => key.insert(self.backups().key(self.store().as_ref(), &db.id).await?),
            }
            .clone();
            let (_, stored) =
                pipeline::upload(objects, path.clone(), seal, object, progress, produce).await?;
            self.store()
                .insert_archived_log(&ArchivedLog {
                    database_id: db.id.clone(),
                    timeline: closed.timeline.clone(),
                    name: segment.name.clone(),
                    offset,
                    modified: segment.modified,
                    continued_by,
                    plain_bytes: stored.plain_bytes,

                    stored_bytes: stored.stored_bytes,
                    sha256: stored.sha256,
                    object_key: path.to_string(),
                    archived_at: now(),
                })
                .await?;
            ends.insert(segment.name.clone(), segment.size);
            count += 1;
        }
        if count > 0 {
            tracing::debug!(db = %db.name, count, "archived log files");
        }
        let archived: Vec<LogSegment> = closed
            .segments
            .iter()
            .filter_map(|s| {
                let size = *ends.get(&s.name)?;
                Some(LogSegment { name: s.name.clone(), size, modified: None })
            })
            .collect();
        if let Err(e) = agent.release_logs(&spec, &archived).await {
            tracing::warn!(db = %db.name, error = %e, "releasing archived log files");
        }
        Ok(count)
    }

    /// Reads an archived log file (or range) back, checked like a backup, into `consume`.
    async fn download_log<T, F, Fut>(
        &self,
        log: &ArchivedLog,
        key: &DataKey,
        consume: F,
    ) -> Result<T, PipelineError>
    where
        F: FnOnce(pipeline::Verified) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let object = log_object(log.database_id.as_str(), &log.timeline, &log.name, log.offset);
        let expected = Expected { stored_bytes: log.stored_bytes, sha256: log.sha256.clone() };
        pipeline::download(
            self.backups().objects().clone(),
            ObjectPath::from(log.object_key.as_str()),
            key.clone(),
            object,
            expected,
            Progress::with_total(log.stored_bytes),
            consume,
        )
        .await
    }

    /// [`Self::archive_logs_held`], taking the database's lock.
    pub async fn archive_logs(&self, db: &Database) -> Result<usize, BackupError> {
        let (held, db) = self.lifecycle().hold(db).await?;
        self.archive_logs_held(&held, &db).await
    }

    /// Deletes archived log files no restore can use any more: those archived before the
    /// oldest remaining backup of their database was taken (every change in them is older than
    /// any backup a replay could start from), and all of a database with no backup left.
    pub async fn prune_archived_logs(&self) -> Result<usize, ServiceError> {
        let mut pruned = 0;
        for database_id in self.store().archived_log_databases().await? {
            let logs = self.store().all_archived_logs(&database_id).await?;
            let Some(first) = logs.first() else { continue };
            // The tenant is in the object key; backups are listed per tenant.
            let tenant_id = first.object_key.split('/').next().unwrap_or_default().to_owned();
            let oldest = self
                .store()
                .list_backups(&tenant_id, None)
                .await?
                .into_iter()
                .filter(|b| b.database_id == database_id && b.status == BackupStatus::Completed)
                .map(|b| b.created_at)
                .min();
            // A live database without a backup yet keeps its files for its first one (and
            // so they are not archived again and again).
            let live =
                self.store().list_databases(&tenant_id).await?.iter().any(|d| d.id == database_id);
            // Redis: the base and increments a restore to that backup's time reads stay, with
            // everything after (the archive is Redis's own base).
            let needed = match oldest {
                Some(t) if logs.iter().any(|l| AofFile::parse(&l.name).is_some()) => {
                    Some(aof_needed(&logs, t))
                }
                _ => None,
            };
            let prunable = |l: &&ArchivedLog| match (oldest, &needed) {
                (Some(t), Some(needed)) => l.archived_at < t && !needed(l),
                (Some(t), None) => l.archived_at < t,
                (None, _) => !live,
            };
            for log in logs.iter().filter(prunable) {
                let path = ObjectPath::from(log.object_key.as_str());
                match self.backups().objects().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting an archived log file");
                        continue;
                    }
                }
                self.store().delete_archived_log(log).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// The backup a restore of the tenant's database `name` to `until` starts from: the
    /// newest completed one taken at or before it, of a MySQL database; for a Redis database,
    /// a record standing for its archived log (see [`ARCHIVED_LOG`]). A database that still
    /// exists has its log archived first, so changes up to now can be restored.
    pub async fn pitr_base(
        &self,
        tenant: &Tenant,
        name: &str,
        until: i64,
    ) -> Result<BackupRecord, ServiceError> {
        let invalid = |message: String| ServiceError::Invalid { field: "restore", message };
        if until > now() {
            return Err(invalid("the time to restore to is in the future".into()));
        }
        let existing = self.store().database(&tenant.id, name).await?;
        if let Some(db) = &existing {
            self.archive_logs(db).await.map_err(ServiceError::from)?;
        }
        let backups = self.store().list_backups(&tenant.id, Some(name)).await?;
        // A deleted database is known by its backups (its final one, at least).
        let source = existing
            .map(|db| (db.engine, db.id, db.plan))
            .or_else(|| backups.first().map(|b| (b.engine, b.database_id.clone(), b.plan.clone())));
        if let Some((EngineKind::Redis, id, plan)) = source {
            return self.aof_base(tenant, name, id, plan, until).await;
        }
        let completed = || {
            backups
                .iter()
                .filter(|b| b.status == BackupStatus::Completed && b.engine == EngineKind::Mysql)
        };
        let at = |b: &BackupRecord| b.position.as_ref().map_or(b.created_at, |p| p.time);
        match completed().find(|b| at(b) <= until) {
            Some(base) => Ok(base.clone()),
            None => match completed().next_back() {
                Some(oldest) => Err(invalid(format!(
                    "{name:?} cannot be restored to a time before its oldest backup ({})",
                    crate::api::routes::timestamp(at(oldest))
                ))),
                None => Err(ServiceError::NotFound(format!(
                    "database {name:?} has no completed backup to restore"
                ))),
            },
        }
    }

    /// Restores `base` into the stopped `db` (its lock held) and, for a MySQL backup, replays
    /// the archived log from the backup's position up to `until`: the server runs meanwhile,
    /// unreachable to clients (the database is held), and stops again after. A Redis database
    /// is rebuilt from its archived log instead (see [`Self::pitr_base`]).
    pub async fn restore_to_held(
        &self,
        held: &Held,
        db: &Database,
        base: &BackupRecord,
        until: Option<i64>,
    ) -> Result<(), BackupError> {
        if base.engine == EngineKind::Redis {
            match until {
                Some(until) => self.restore_aof_held(db, base, until).await?,
                None => self.restore_held(held, db, base).await?,
            }
            // The new timeline's base is archived at once, with the restore's time.
            if let Err(e) = self.archive_logs_held(held, db).await {
                tracing::warn!(db = %db.name, error = %e, "archiving the log after a restore");
            }
            return Ok(());
        }
        self.restore_held(held, db, base).await?;
        let (Some(until), Some(position)) = (until, base.position.as_ref()) else { return Ok(()) };
        if base.engine != EngineKind::Mysql {
            return Ok(());
        }
        let timeline = position.timeline.clone().unwrap_or_else(|| "0".into());
        let first = position.binlog_file.clone().unwrap_or_default();
        let logs: Vec<ArchivedLog> = self
            .store()
            .archived_logs(&base.database_id, &timeline)
            .await?
            .into_iter()
            .filter(|l| (l.name.len(), &l.name) >= (first.len(), &first))
            .collect();
        if logs.is_empty() {
            return Ok(());
        }
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        agent.start(&spec).await.map_err(|e| BackupError::Refused(e.to_string()))?;
        let replayed = async {
            let key = self.backups().key(self.store().as_ref(), &base.database_id).await?;
            for log in &logs {
                let name = log.name.clone();
                let consume = |mut input| {
                    let (agent, spec) = (agent.clone(), spec.clone());
                    async move {
                        agent.stage_log(&spec, &name, &mut input).await.map_err(|e| e.to_string())
                    }
                };
                self.download_log(log, &key, consume).await?;
            }
            agent
                .replay_logs(&spec, position, until, &base.database_name)
                .await
                .map_err(|e| BackupError::Refused(e.to_string()))
        }
        .await;
        if let Err(e) = agent.stop(&db.id).await {
            tracing::warn!(db = %db.name, error = %e, "stopping a server after its log replay");
        }
        replayed?;
        tracing::info!(db = %db.name, base = %base.id, files = logs.len(), until, "replayed to a point in time");
        Ok(())
    }

    /// The record a Redis restore of `name` (database `id`) to `until` starts from: it stands
    /// for the database's archived log, which must hold a base file of that time or earlier.
    async fn aof_base(
        &self,
        tenant: &Tenant,
        name: &str,
        id: dormouse_engines::InstanceId,
        plan: String,
        until: i64,
    ) -> Result<BackupRecord, ServiceError> {
        let logs = self.store().all_archived_logs(&id).await?;
        let base = match plan_aof(&logs, until) {
            Ok(plan) => plan.base,
            Err(AofGap::Before(Some(oldest))) => {
                return Err(ServiceError::Invalid {
                    field: "restore",
                    message: format!(
                        "{name:?} cannot be restored to a time before its oldest archived log \
                         ({})",
                        crate::api::routes::timestamp(oldest)
                    ),
                });
            }
            Err(AofGap::Before(None)) => {
                return Err(ServiceError::NotFound(format!(
                    "database {name:?} has no archived log to restore to a point in time"
                )));
            }
            Err(e @ AofGap::Missing(_)) => return Err(ServiceError::Corrupt(e.to_string())),
        };
        let time = base_time(&base);
        Ok(BackupRecord {
            id: ARCHIVED_LOG.into(),
            tenant_id: tenant.id.clone(),
            database_id: id,
            database_name: name.into(),
            engine: EngineKind::Redis,
            plan,
            name: None,
            kind: BackupKind::Manual,
            status: BackupStatus::Completed,
            reason: None,
            format: Some(Format::Aof),
            hot: false,
            parent_id: None,
            object_key: None,
            plain_bytes: 0,
            stored_bytes: 0,
            sha256: None,
            position: Some(Position {
                time,
                timeline: Some(base.timeline.clone()),
                ..Position::default()
            }),
            data_version: None,
            created_at: time,
            started_at: None,
            completed_at: None,
            expires_at: None,
        })
    }

    /// Replaces the stopped Redis `db`'s data with the append-only file rebuilt from the
    /// archived log of `base`'s database, cut at `until`: the archived base and increments
    /// are streamed, each checked and opened, one after another into the agent's restore.
    async fn restore_aof_held(
        &self,
        db: &Database,
        base: &BackupRecord,
        until: i64,
    ) -> Result<(), BackupError> {
        let logs = self.store().all_archived_logs(&base.database_id).await?;
        let plan = plan_aof(&logs, until).map_err(|e| BackupError::Refused(e.to_string()))?;
        let key = self.backups().key(self.store().as_ref(), &base.database_id).await?;
        let header = AofHeader { until, base_bytes: plan.base.plain_bytes };
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let whole = Arc::new(AtomicBool::new(false));
        let mut input = Whole { inner: reader, whole: whole.clone() };
        let parts: Vec<&ArchivedLog> =
            std::iter::once(&plan.base).chain(plan.increments.iter()).collect();
        let feed = async {
            writer.write_all(header.line().as_bytes()).await.map_err(PipelineError::Io)?;
            for log in &parts {
                let consume = |mut part| async move {
                    tokio::io::copy(&mut part, &mut writer).await.map_err(|e| e.to_string())?;
                    Ok(writer)
                };
                writer = self.download_log(log, &key, consume).await?;
            }
            whole.store(true, Ordering::Release);
            writer.shutdown().await.map_err(PipelineError::Io)
        };
        let agent = self.lifecycle().agent().clone();
        let spec = spec(db);
        let source = base.database_name.clone();
        let restore = async {
            let restored = agent.restore(&spec, Format::Aof, &source, &mut input).await;
            // However it ended, the feed must not wait on a reader that is gone.
            drop(input);
            restored
        };
        let (fed, restored) = tokio::join!(feed, restore);
        match (fed, restored) {
            (Ok(()), Ok(())) => {}
            // A bad object names the cause; the agent only saw its input fail.
            (Err(e @ (PipelineError::Checksum | PipelineError::Store(_))), _) => {
                return Err(e.into());
            }
            (Err(PipelineError::Io(e)), _) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(PipelineError::Io(e).into());
            }
            // An agent that failed first broke the feed's pipe.
            (_, Err(e)) => return Err(PipelineError::Producer(e.to_string()).into()),
            (Err(e), Ok(())) => return Err(e.into()),
        }
        tracing::info!(
            db = %db.name,
            base = %plan.base.name,
            ranges = plan.increments.len(),
            until,
            "restored to a point in time from the archived log"
        );
        Ok(())
    }
}

/// For a Redis base file: the increment after it in `rest` (what follows it in the list the
/// host gave), or increment 1 when nothing does (a restored base, before the server started
/// and opened its first increment); `None` when a file other than an increment follows (a
/// base replaced by a rewrite).
fn continuation(rest: &[LogSegment]) -> Option<String> {
    match rest.first().map(|s| AofFile::parse(&s.name)) {
        None => Some(AofFile::Incr(1).name()),
        Some(Some(AofFile::Incr(_))) => rest.first().map(|s| s.name.clone()),
        Some(_) => None,
    }
}

/// Whether a Redis restore to `since` or later may read an archived range: every range when
/// no base is that old, else those of the restore to `since` and those archived after it.
fn aof_needed(logs: &[ArchivedLog], since: i64) -> impl Fn(&ArchivedLog) -> bool + use<> {
    let key = |l: &ArchivedLog| (l.timeline.clone(), l.name.clone(), l.offset);
    let plan = plan_aof(logs, since).ok();
    let read: std::collections::HashSet<_> =
        plan.iter().flat_map(|p| std::iter::once(&p.base).chain(&p.increments)).map(key).collect();
    let all = plan.is_none();
    move |l: &ArchivedLog| all || l.archived_at >= since || read.contains(&key(l))
}

/// The time a Redis base file's data is of: when it was written (or its timeline restored).
fn base_time(log: &ArchivedLog) -> i64 {
    log.modified.unwrap_or(log.archived_at)
}

/// What a Redis restore to a time reads: a base and the increments after it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AofPlan {
    pub base: ArchivedLog,
    pub increments: Vec<ArchivedLog>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AofGap {
    /// No archived base is that old; the oldest's time, if there is one.
    #[error("no archived base file is that old")]
    Before(Option<i64>),
    #[error("the archived log is missing part of {0}")]
    Missing(String),
}

/// Picks, from a Redis database's archived log of every timeline, the newest base file whose
/// data is of `until` or earlier, and every increment after it on its timeline, each file's
/// ranges in order and without a gap. Timelines need no choosing: a restored timeline's files
/// are no older than its restore, and another timeline's files no newer than its own.
pub fn plan_aof(logs: &[ArchivedLog], until: i64) -> Result<AofPlan, AofGap> {
    let bases = || {
        logs.iter().filter(|l| {
            l.offset == 0
                && matches!(AofFile::parse(&l.name), Some(AofFile::Base(_)))
                && l.continued_by.as_deref().and_then(AofFile::parse).is_some()
        })
    };
    let Some(base) =
        bases().filter(|b| base_time(b) <= until).max_by_key(|b| (base_time(b), b.archived_at))
    else {
        return Err(AofGap::Before(bases().map(base_time).min()));
    };
    let first = match base.continued_by.as_deref().and_then(AofFile::parse) {
        Some(AofFile::Incr(n)) => n,
        _ => return Err(AofGap::Missing(base.name.clone())),
    };
    let mut increments: Vec<(u64, &ArchivedLog)> = logs
        .iter()
        .filter(|l| l.timeline == base.timeline)
        .filter_map(|l| match AofFile::parse(&l.name) {
            Some(AofFile::Incr(n)) if n >= first => Some((n, l)),
            _ => None,
        })
        .collect();
    increments.sort_by_key(|(n, l)| (*n, l.offset));
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for (n, log) in &increments {
        let end = expected.entry(*n).or_default();
        if log.offset != *end {
            return Err(AofGap::Missing(log.name.clone()));
        }
        *end = log.offset.saturating_add(log.plain_bytes);
    }
    Ok(AofPlan {
        base: base.clone(),
        increments: increments.into_iter().map(|(_, l)| l.clone()).collect(),
    })
}

/// The restore's input: the fed bytes, which end in an error rather than a clean end unless
/// every part arrived whole, so a failed download never passes for a shorter log.
struct Whole {
    inner: DuplexStream,
    whole: Arc<AtomicBool>,
}

impl AsyncRead for Whole {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                if this.whole.load(Ordering::Acquire) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the archived log did not arrive whole",
                    )))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(timeline: &str, name: &str, offset: u64, bytes: u64, modified: i64) -> ArchivedLog {
        let continued_by = match AofFile::parse(name) {
            Some(AofFile::Base(n)) => Some(AofFile::Incr(n).name()),
            _ => None,
        };
        ArchivedLog {
            database_id: dormouse_engines::InstanceId::new("i-a").expect("id"),
            timeline: timeline.into(),
            name: name.into(),
            offset,
            modified: Some(modified),
            continued_by,
            plain_bytes: bytes,
            stored_bytes: bytes,
            sha256: String::new(),
            object_key: String::new(),
            archived_at: modified + 30,
        }
    }

    fn names(plan: &AofPlan) -> Vec<(String, u64)> {
        plan.increments.iter().map(|l| (l.name.clone(), l.offset)).collect()
    }

    #[test]
    fn the_newest_base_of_the_time_comes_with_every_increment_after_it() {
        let logs = [
            log("0", "appendonly.aof.1.base.rdb", 0, 10, 100),
            log("0", "appendonly.aof.1.incr.aof", 0, 5, 110),
            log("0", "appendonly.aof.1.incr.aof", 5, 5, 140),
            log("0", "appendonly.aof.2.incr.aof", 0, 7, 200),
            log("0", "appendonly.aof.2.base.rdb", 0, 12, 200),
            log("0", "appendonly.aof.2.incr.aof", 7, 3, 230),
        ];
        let plan = plan_aof(&logs, 150).expect("a plan");
        assert_eq!(plan.base.name, "appendonly.aof.1.base.rdb");
        assert_eq!(
            names(&plan),
            [
                ("appendonly.aof.1.incr.aof".into(), 0),
                ("appendonly.aof.1.incr.aof".into(), 5),
                ("appendonly.aof.2.incr.aof".into(), 0),
                ("appendonly.aof.2.incr.aof".into(), 7),
            ]
        );
        let plan = plan_aof(&logs, 200).expect("a plan");
        assert_eq!(plan.base.name, "appendonly.aof.2.base.rdb");
        assert_eq!(names(&plan).len(), 2, "{plan:?}");
        assert_eq!(plan_aof(&logs, 99), Err(AofGap::Before(Some(100))));
        assert_eq!(plan_aof(&[], 99), Err(AofGap::Before(None)));
        // A range lost from the middle is refused, never skipped.
        let gap = [logs[0].clone(), logs[2].clone()];
        assert_eq!(plan_aof(&gap, 150), Err(AofGap::Missing("appendonly.aof.1.incr.aof".into())));
    }

    #[test]
    fn a_restored_timeline_takes_over_from_its_restore_on() {
        let logs = [
            log("0", "appendonly.aof.1.base.rdb", 0, 10, 100),
            log("0", "appendonly.aof.1.incr.aof", 0, 5, 110),
            // Restored at 300: its base is of then, whatever it holds.
            log("g1", "appendonly.aof.1.base.rdb", 0, 10, 300),
            log("g1", "appendonly.aof.1.incr.aof", 0, 9, 300),
        ];
        assert_eq!(plan_aof(&logs, 250).expect("a plan").base.timeline, "0");
        let plan = plan_aof(&logs, 300).expect("a plan");
        assert_eq!((plan.base.timeline.as_str(), plan.increments.len()), ("g1", 1));
        assert_eq!(plan.increments[0].timeline, "g1");
    }

    #[test]
    fn pruning_keeps_what_a_restore_to_the_oldest_backup_reads() {
        let logs = [
            log("0", "appendonly.aof.1.base.rdb", 0, 10, 100),
            log("0", "appendonly.aof.1.incr.aof", 0, 5, 110),
            log("0", "appendonly.aof.2.base.rdb", 0, 12, 200),
            log("0", "appendonly.aof.2.incr.aof", 0, 7, 200),
            log("0", "appendonly.aof.2.incr.aof", 7, 3, 300),
        ];
        let needed = aof_needed(&logs, 250);
        let kept: Vec<bool> = logs.iter().map(&needed).collect();
        assert_eq!(kept, [false, false, true, true, true]);
        assert!(logs.iter().all(aof_needed(&logs, 50)), "no base that old: all stay");
    }

    #[test]
    fn a_base_is_continued_by_the_increment_listed_after_it() {
        let seg = |name: &str| LogSegment { name: name.into(), size: 1, modified: None };
        let incr = seg("appendonly.aof.4.incr.aof");
        assert_eq!(
            continuation(std::slice::from_ref(&incr)),
            Some("appendonly.aof.4.incr.aof".into())
        );
        assert_eq!(continuation(&[]), Some("appendonly.aof.1.incr.aof".into()));
        assert_eq!(continuation(&[seg("appendonly.aof.2.base.rdb"), incr]), None);
    }

    #[test]
    fn ranges_are_stored_apart_and_whole_files_where_they_were() {
        assert_eq!(log_object("i-a", "0", "binlog.000001", 0), "i-a/0/binlog.000001");
        assert_eq!(
            log_object("i-a", "0", "appendonly.aof.1.incr.aof", 99),
            "i-a/0/appendonly.aof.1.incr.aof@99"
        );
    }
}
