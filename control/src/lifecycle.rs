//! Database lifecycle: every status change goes through [`Lifecycle::transition`], and every
//! start, suspend or destroy of an instance runs under that database's lock, after re-reading
//! its row, so the API, the reconciler, the idle suspender and wakes never act on a stale view of
//! each other's work. Concurrent starts of one database queue on the lock; the first starts
//! it and the rest find it running, which makes a wake single-flight.
//!
//! ```text
//!  creating ──▶ running ◀──▶ suspended      (lazy creation starts in suspended)
//!      │          ▲  │           │
//!      │          ▼  ▼           │
//!      │        failed           │
//!      └─────────┴──┴──▶ deleting ◀┘        (then the row is removed)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dormouse_engines::{AgentError, HostAgent, InstanceId, InstanceSpec, Started};

use crate::names;
use crate::store::{Database, DatabaseStatus, StartFailure, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("database {0} no longer exists")]
    Gone(InstanceId),
    #[error("database {id} cannot go from {from} to {to}")]
    BadTransition { id: InstanceId, from: DatabaseStatus, to: DatabaseStatus },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the server did not become ready in time")]
    Timeout,
    /// Its last start failed too recently to try again on a client's behalf.
    #[error("{}: not started again for {retry_in} s", failure.reason)]
    Cooling { failure: StartFailure, retry_in: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a start may run soon after the database's last one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Asked for by its owner (create, resume): start now.
    Now,
    /// On a client's behalf, or the reconciler's: not before the failure's retry time, so a
    /// server that cannot start is not restarted for every connection that finds it down.
    WhenDue,
}

/// Seconds after a failed start before clients' connections try again: 5, doubling with each
/// failure in a row, at most 5 minutes.
pub fn retry_after(failure: &StartFailure) -> i64 {
    let doublings = failure.attempts.saturating_sub(1).min(6);
    (5_i64 << doublings).min(300)
}

/// A start that happened (or found the server running), with its costs.
#[derive(Debug, Clone)]
pub struct Start {
    pub started: Started,
    /// Time spent waiting for the database's lock (another start, a suspend).
    pub queued: Duration,
    /// The status the database had before.
    pub was: DatabaseStatus,
}

/// Proof that a database's lock is held (see [`Lifecycle::hold`]); dropping it releases it.
pub struct Held(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

pub struct Lifecycle {
    store: Arc<dyn Store>,
    agent: Arc<dyn HostAgent>,
    locks: DashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
    /// Upper bound on one start, so a server that crash-loops cannot hold the lock forever.
    start_deadline: Duration,
}

/// Which status changes are allowed.
fn allowed(from: DatabaseStatus, to: DatabaseStatus) -> bool {
    use DatabaseStatus::*;
    matches!(
        (from, to),
        (Creating, Running | Failed | Suspended | Deleting)
            | (Running, Running | Failed | Suspended | Deleting)
            | (Failed, Running | Failed | Suspended | Deleting)
            | (Suspended, Running | Suspended | Deleting)
            | (Deleting, Deleting)
    )
}

/// The longest start-failure reason kept, in characters.
const REASON_CHARS: usize = 300;

/// Why a start failed, for the tenant: the first errors the server logged during that start,
/// without timestamps, or the failure itself when the server said nothing.
pub fn failure_reason(error: &LifecycleError) -> String {
    let text = error.to_string();
    let said = |marker: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.split_once(marker).map(|(_, said)| said.trim()))
            .filter(|said| !said.is_empty() && *said != "Aborting")
            .collect()
    };
    // MariaDB: "2026-11-24 20:01:32 0 [ERROR] What went wrong". Its first errors name the
    // cause; the rest are consequences.
    let errors = said("[ERROR] ");
    // Redis: "1234:M 24 Nov 2026 20:01:32.123 # What went wrong". Its startup banner is at
    // the same level; it logs what stops it last.
    let warnings = said(" # ");
    let reason = if !errors.is_empty() {
        errors[..errors.len().min(3)].join("; ")
    } else if !warnings.is_empty() {
        warnings[warnings.len().saturating_sub(2)..].join("; ")
    } else {
        text.lines().next().unwrap_or_default().trim_end_matches([':', ' ']).to_owned()
    };
    // Clients built on libmysqlclient show at most 512 bytes of an error message, and the
    // reason comes after "Dormouse: database '…' could not be started: ".
    match reason.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason,
    }
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
        Self { store, agent, locks: DashMap::new(), start_deadline: Duration::from_secs(180) }
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
    /// ready; records `running` with its port. A failed start leaves a suspended database
    /// suspended (the next client tries again) and marks any other `failed`.
    pub async fn start(&self, db: &Database, attempt: Attempt) -> Result<Start, LifecycleError> {
        let queued_at = Instant::now();
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let queued = queued_at.elapsed();
        let db = self.reread(db).await?;
        if db.status == DatabaseStatus::Deleting {
            return Err(LifecycleError::Gone(db.id));
        }
        if attempt == Attempt::WhenDue
            && db.status != DatabaseStatus::Running
            && let Some(failure) = &db.start_failure
        {
            let retry_in = failure.at + retry_after(failure) - crate::service::now();
            if retry_in > 0 {
                return Err(LifecycleError::Cooling { failure: failure.clone(), retry_in });
            }
        }
        let attempt = tokio::time::timeout(self.start_deadline, self.agent.start(&spec(&db))).await;
        match attempt {
            Ok(Ok(started)) => {
                self.transition(&db, DatabaseStatus::Running, Some(started.endpoint.port)).await?;
                if db.start_failure.is_some() {
                    self.store.record_start(&db.id, None).await?;
                }
                Ok(Start { started, queued, was: db.status })
            }
            failure => {
                let error = match failure {
                    Ok(Err(e)) => LifecycleError::Agent(e),
                    _ => {
                        let _ = self.agent.stop(&db.id).await;
                        LifecycleError::Timeout
                    }
                };
                tracing::warn!(db = %db.name, instance = %db.id, %error, "database failed to start");
                let reason = failure_reason(&error);
                self.store.record_start(&db.id, Some((&reason, crate::service::now()))).await?;
                if db.status != DatabaseStatus::Suspended {
                    self.transition(&db, DatabaseStatus::Failed, None).await?;
                }
                Err(error)
            }
        }
    }

    /// Stops the database's server and marks it `suspended`, if `still_idle` holds once the lock
    /// is held; `before_stop` runs just before the server stops (to drop proxy routes and pooled
    /// connections). Returns whether it was suspended.
    pub async fn suspend(
        &self,
        db: &Database,
        still_idle: impl FnOnce() -> bool,
        before_stop: impl FnOnce(),
    ) -> Result<bool, LifecycleError> {
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let db = self.reread(db).await?;
        if db.status == DatabaseStatus::Suspended {
            return Ok(false);
        }
        if db.status == DatabaseStatus::Deleting || !still_idle() {
            return Ok(false);
        }
        before_stop();
        self.agent.stop(&db.id).await?;
        self.transition(&db, DatabaseStatus::Suspended, None).await?;
        Ok(true)
    }

    /// Holds the database's lock (no start, suspend or destroy of it meanwhile) and returns its
    /// row as it is now: for work that must see its instance stay as it is (a backup, a
    /// restore). Release it before calling the other methods, which take it themselves.
    pub async fn hold(&self, db: &Database) -> Result<(Held, Database), LifecycleError> {
        let guard = self.lock(&db.id).lock_owned().await;
        let db = self.reread(db).await?;
        Ok((Held(guard), db))
    }

    /// Stops the server of a database whose lock `_held` is held and marks it `suspended`;
    /// `before_stop` runs first (to drop proxy routes and pooled connections).
    pub async fn suspend_held(
        &self,
        _held: &Held,
        db: &Database,
        before_stop: impl FnOnce(),
    ) -> Result<Database, LifecycleError> {
        before_stop();
        self.agent.stop(&db.id).await?;
        if db.status != DatabaseStatus::Suspended {
            self.transition(db, DatabaseStatus::Suspended, None).await?;
        }
        self.reread(db).await
    }

    /// Marks a new database `suspended` without starting it (lazy creation: the first client
    /// provisions and starts it).
    pub async fn defer(&self, db: &Database) -> Result<(), LifecycleError> {
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let db = self.reread(db).await?;
        self.transition(&db, DatabaseStatus::Suspended, None).await
    }

    /// Marks the database `deleting`, destroys its instance and data, revokes the tokens
    /// scoped to it and removes its row. Safe to repeat after a crash at any step. Returns the
    /// ids of the tokens it revoked.
    pub async fn destroy(&self, db: &Database) -> Result<Vec<String>, LifecycleError> {
        let (held, db) = match self.hold(db).await {
            Ok(held) => held,
            Err(LifecycleError::Gone(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        self.destroy_held(held, &db).await
    }

    /// [`Self::destroy`] of a database whose lock is held (and released here).
    pub async fn destroy_held(
        &self,
        held: Held,
        db: &Database,
    ) -> Result<Vec<String>, LifecycleError> {
        self.transition(db, DatabaseStatus::Deleting, None).await?;
        self.agent.destroy(&db.id).await?;
        let now = crate::service::now();
        let revoked = self.store.revoke_database_tokens(&db.tenant_id, &db.name, now).await?;
        self.store.delete_database(&db.id).await?;
        drop(held);
        self.locks.remove(&db.id);
        tracing::info!(db = %db.name, instance = %db.id, "database deleted");
        Ok(revoked)
    }

    /// Stops a server that runs although its database is suspended (after a crash mid-suspend).
    pub async fn enforce_suspended(&self, db: &Database) -> Result<(), LifecycleError> {
        let lock = self.lock(&db.id);
        let _guard = lock.lock().await;
        let db = self.reread(db).await?;
        if db.status == DatabaseStatus::Suspended {
            self.agent.stop(&db.id).await?;
        }
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
        for to in [Creating, Running, Failed, Suspended] {
            assert!(!allowed(Deleting, to));
        }
        assert!(allowed(Creating, Running));
        assert!(allowed(Failed, Running));
        assert!(allowed(Suspended, Running));
        assert!(allowed(Running, Suspended));
        assert!(!allowed(Suspended, Failed), "a failed wake leaves it suspended");
        assert!(!allowed(Running, Creating));
    }

    fn failed(text: &str) -> LifecycleError {
        LifecycleError::Agent(AgentError::Engine(dormouse_engines::EngineError::Failed(
            text.into(),
        )))
    }

    #[test]
    fn failure_reasons_are_the_servers_own_errors() {
        let mariadb = failed(
            "server exited during start (exit status: 1): 2026-11-24 20:01:32 0 [Note] Plugin \
             'FEEDBACK' is disabled.\n2026-11-24 20:01:32 0 [ERROR] Unknown/unsupported \
             storage engine: InnoDB\n2026-11-24 20:01:32 0 [ERROR] Aborting\n",
        );
        assert_eq!(failure_reason(&mariadb), "Unknown/unsupported storage engine: InnoDB");
        let redis = failed(
            "server exited during start (exit status: 1): 7:C 24 Nov 2026 20:01:32.100 # \
             oO0OoO0OoO0Oo Redis is starting\n7:C 24 Nov 2026 20:01:32.100 # Configuration \
             loaded\n7:M 24 Nov 2026 20:01:32.110 * Running mode=standalone\n7:M 24 Nov 2026 \
             20:01:32.123 # Bad file format reading the append only file\n7:M 24 Nov 2026 \
             20:01:32.123 # Exiting.",
        );
        assert_eq!(
            failure_reason(&redis),
            "Bad file format reading the append only file; Exiting."
        );
        let silent = failed("server exited during start (signal: 9): \nsomething");
        assert_eq!(failure_reason(&silent), "server exited during start (signal: 9)");
        assert_eq!(
            failure_reason(&LifecycleError::Timeout),
            "the server did not become ready in time"
        );
        let long = failed(&format!("x [ERROR] {}", "é".repeat(500)));
        assert_eq!(
            failure_reason(&long).chars().count(),
            REASON_CHARS + 1,
            "cut, with an ellipsis"
        );
    }
}
