//! One task per instance: launch the server, poll its readiness against a deadline, watch for
//! an unexpected exit and restart with capped exponential backoff, stop it on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::confine::Sandbox;
use crate::engine::{Engine, EngineError, Instance, ProbeError};
use crate::ports;
use crate::process::{ManagedProcess, log_end, log_since, log_tail};
use crate::spec::{Endpoint, InstanceSpec};

/// How long after spawning readiness is probed at a fine interval.
const FAST_PROBING: Duration = Duration::from_millis(500);

/// File in the instance directory that receives the server's stdout and stderr.
pub const PROCESS_LOG: &str = "server.log";

/// Observed state of one instance's server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// Launched, not ready yet.
    Starting,
    /// Ready for clients; `boot` is how long it took from spawn to the first passing probe.
    Running { port: u16, pid: u32, boot: Duration },
    /// Exited unexpectedly or failed to start; another start is scheduled.
    Restarting { attempt: u32, reason: String },
    /// Stopped on request (or never started).
    Stopped,
    /// Could not be started before it was ever ready; the supervisor gave up.
    Failed { reason: String },
}

/// How hard the supervisor tries.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A server that ran this long resets the backoff.
    pub stable_after: Duration,
    /// Give up after this many failed starts in a row when the server was never ready.
    pub max_start_failures: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stable_after: Duration::from_secs(30),
            max_start_failures: 3,
        }
    }
}

impl RestartPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Handle to an instance's supervising task.
pub struct Supervisor {
    state: watch::Receiver<InstanceState>,
    stop: CancellationToken,
    /// The server's Unix socket, if its engine gives it one.
    socket: Option<PathBuf>,
    engine: Arc<dyn Engine>,
    spec: InstanceSpec,
    dir: PathBuf,
}

impl Supervisor {
    /// Starts supervising `spec` in `sandbox.dir` (which must already be provisioned).
    pub fn spawn(
        engine: Arc<dyn Engine>,
        spec: InstanceSpec,
        sandbox: Sandbox,
        policy: RestartPolicy,
    ) -> Self {
        let (tx, rx) = watch::channel(InstanceState::Starting);
        let stop = CancellationToken::new();
        let socket = engine.socket(&sandbox.dir);
        let dir = sandbox.dir.clone();
        let task = supervise(engine.clone(), spec.clone(), sandbox, policy, tx, stop.clone());
        tokio::spawn(task);
        Self { state: rx, stop, socket, engine, spec, dir }
    }

    /// Puts the internal accounts back on the running server (see [`Engine::repair_access`]).
    pub async fn repair_access(&self) -> Result<(), EngineError> {
        let InstanceState::Running { port, .. } = *self.state.borrow() else {
            return Err(EngineError::Failed("the server is not running".into()));
        };
        let instance = Instance { spec: self.spec.clone(), dir: self.dir.clone(), port };
        self.engine.repair_access(&instance).await
    }

    pub fn state(&self) -> InstanceState {
        self.state.borrow().clone()
    }

    /// Where the server listens while it is running.
    pub fn endpoint(&self) -> Option<Endpoint> {
        match *self.state.borrow() {
            InstanceState::Running { port, .. } => Some(self.endpoint_at(port)),
            _ => None,
        }
    }

    fn endpoint_at(&self, port: u16) -> Endpoint {
        Endpoint { host: "127.0.0.1".into(), port, socket: self.socket.clone() }
    }

    /// Waits until the server is ready and returns where it listens and its boot time, or why
    /// it will not be.
    pub async fn ready(&self) -> Result<(Endpoint, Duration), EngineError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| {
                matches!(
                    s,
                    InstanceState::Running { .. }
                        | InstanceState::Failed { .. }
                        | InstanceState::Stopped
                )
            })
            .await
            .map_err(|_| EngineError::Failed("supervisor ended".into()))?
            .clone();
        match state {
            InstanceState::Running { port, boot, .. } => Ok((self.endpoint_at(port), boot)),
            InstanceState::Failed { reason } => Err(EngineError::Failed(reason)),
            _ => Err(EngineError::Failed("stopped while starting".into())),
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after the engine's grace period) and waits.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut rx = self.state.clone();
        // An error means the task is gone, and with it the process (`kill_on_drop`).
        let _ = rx
            .wait_for(|s| matches!(s, InstanceState::Stopped | InstanceState::Failed { .. }))
            .await;
    }
}

impl Drop for Supervisor {
    /// A forgotten supervisor still stops its server.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

enum StartError {
    Stopped,
    Failed(String),
    /// Failed in a way another start cannot mend (the server's own setup failed).
    Fatal(String),
}

async fn supervise(
    engine: Arc<dyn Engine>,
    spec: InstanceSpec,
    sandbox: Sandbox,
    policy: RestartPolicy,
    state: watch::Sender<InstanceState>,
    stop: CancellationToken,
) {
    let id = spec.id.clone();
    let dir = sandbox.dir.clone();
    let log = dir.join(PROCESS_LOG);
    let mut port = spec.port;
    let mut attempt = 0u32;
    let mut failed_starts = 0u32;
    let mut ever_ready = false;
    loop {
        port = match ports::pick(port) {
            Ok(p) => p,
            Err(e) => {
                state.send_replace(InstanceState::Failed { reason: format!("no free port: {e}") });
                return;
            }
        };
        let instance = Instance { spec: spec.clone(), dir: dir.clone(), port };
        let spawned = Instant::now();
        let reason = match start_once(engine.as_ref(), &instance, &sandbox, &log, &stop).await {
            Ok(mut process) => {
                let pid = process.pid().unwrap_or_default();
                let boot = spawned.elapsed();
                tracing::info!(instance = %id, port, pid, boot_ms = boot.as_millis() as u64, "server ready");
                state.send_replace(InstanceState::Running { port, pid, boot });
                ever_ready = true;
                failed_starts = 0;
                let started = Instant::now();
                tokio::select! {
                    status = process.wait() => {
                        if started.elapsed() >= policy.stable_after {
                            attempt = 0;
                        }
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        format!("server exited unexpectedly ({status}): {}", log_tail(&log, 300))
                    }
                    () = stop.cancelled() => {
                        if let Err(e) = process.stop(engine.stop_timeout()).await {
                            tracing::warn!(instance = %id, error = %e, "stopping server");
                        }
                        tracing::info!(instance = %id, "server stopped");
                        state.send_replace(InstanceState::Stopped);
                        return;
                    }
                }
            }
            Err(StartError::Stopped) => {
                state.send_replace(InstanceState::Stopped);
                return;
            }
            Err(StartError::Fatal(reason)) => {
                tracing::error!(instance = %id, %reason, "server setup failed; not restarting it");
                state.send_replace(InstanceState::Failed { reason });
                return;
            }
            Err(StartError::Failed(reason)) => {
                failed_starts += 1;
                if !ever_ready && failed_starts >= policy.max_start_failures {
                    tracing::error!(instance = %id, %reason, "server failed to start; giving up");
                    state.send_replace(InstanceState::Failed { reason });
                    return;
                }
                reason
            }
        };
        attempt += 1;
        let backoff = policy.backoff(attempt);
        tracing::warn!(instance = %id, attempt, ?backoff, %reason, "restarting server");
        state.send_replace(InstanceState::Restarting { attempt, reason });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {
                state.send_replace(InstanceState::Stopped);
                return;
            }
        }
    }
}

/// How much of a failed start's log its error carries.
const START_LOG: usize = 2000;

/// How much of a start's log is searched for the server's setup failure (the start's own
/// lines, uncut: the failure sits among the start-up notes).
const SETUP_LOG: usize = 256 * 1024;

/// Launches the server and polls its readiness until the engine's start deadline.
async fn start_once(
    engine: &dyn Engine,
    instance: &Instance,
    sandbox: &Sandbox,
    log: &std::path::Path,
    stop: &CancellationToken,
) -> Result<ManagedProcess, StartError> {
    let launch = engine.launch(instance).await.map_err(|e| StartError::Failed(e.to_string()))?;
    let jail = sandbox
        .hand_over_new_files()
        .and_then(|()| sandbox.jail(instance.port))
        .map_err(|e| StartError::Failed(format!("confining the server: {e}")))?;
    // What this start writes to the log explains its failure, earlier starts' lines do not.
    let from = log_end(log);
    let mut process = ManagedProcess::spawn(&launch, log, Some(jail))
        .map_err(|e| StartError::Failed(format!("spawning {}: {e}", launch.program.display())))?;
    let deadline = Instant::now() + engine.start_timeout();
    let spawned = Instant::now();
    loop {
        // Probe every 2 ms while a normal start would finish (a refused connect costs next to
        // nothing, and each millisecond here is a millisecond a waking client waits), then
        // back off for slow starts such as crash recovery.
        let interval = if spawned.elapsed() < FAST_PROBING {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(50)
        };
        let last = match engine.probe(instance).await {
            Ok(()) => {
                // Ready only once its limits apply (the move runs beside the start).
                process.joined_cgroup().await;
                return Ok(process);
            }
            Err(e) => e,
        };
        // The server answered (its setup has run by then): did the setup fail?
        if !matches!(last, ProbeError::Connect(_) | ProbeError::Timeout)
            && let Some(reason) = engine.setup_failure(&log_since(log, from, SETUP_LOG))
        {
            let _ = process.stop(engine.stop_timeout()).await;
            return Err(StartError::Fatal(reason));
        }
        if Instant::now() >= deadline {
            let _ = process.stop(engine.stop_timeout()).await;
            return Err(StartError::Failed(format!(
                "not ready after {:?} (last probe: {last}): {}",
                engine.start_timeout(),
                log_since(log, from, START_LOG)
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            status = process.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(StartError::Failed(format!(
                    "server exited during start ({status}): {}",
                    log_since(log, from, START_LOG)
                )));
            }
            () = stop.cancelled() => {
                let _ = process.stop(engine.stop_timeout()).await;
                return Err(StartError::Stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RestartPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(5), Duration::from_millis(1600));
        assert_eq!(p.backoff(40), Duration::from_secs(10));
    }
}
