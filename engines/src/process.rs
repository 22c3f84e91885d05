//! Spawning a server process with its output captured to a log file, and stopping it with
//! SIGTERM, then SIGKILL after a grace period. Signals go only to a child we have not reaped,
//! so a recycled pid is never hit.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::confine::{self, Cgroup, Jail};
use crate::engine::Launch;

/// A running server process that we own.
#[derive(Debug)]
pub struct ManagedProcess {
    child: Child,
    /// Its cgroup, removed once the process has been reaped.
    cgroup: Option<Cgroup>,
    /// Moving the process into its cgroup, under way beside its start; settled before the
    /// process is reaped, so its pid cannot have been reused.
    joining: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl ManagedProcess {
    /// Starts `launch` with stdout and stderr appended to `log`, confined by `jail` if given.
    ///
    /// The child gets its own process group (a Ctrl-C in the terminal reaches Dormouse, which
    /// then stops its servers cleanly) and SIGKILL when the thread that spawned it dies, so no
    /// server outlives a crashed agent. Spawn only from runtime worker threads: blocking-pool
    /// threads exit when idle and would take the child with them.
    pub fn spawn(launch: &Launch, log: &Path, jail: Option<Jail>) -> std::io::Result<Self> {
        // The log sits in a directory the server owns: a link it put there is replaced, not
        // followed (the agent opens the log as root).
        if std::fs::symlink_metadata(log).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(log)?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        let mut cgroup = jail.and_then(|jail| jail.apply(&mut cmd));
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    let _ = cgroup.remove();
                }
                return Err(e);
            }
        };
        let joining = match (cgroup.as_mut(), child.id()) {
            (Some(cgroup), Some(pid)) => {
                let procs = cgroup.take_procs();
                Some(tokio::task::spawn_blocking(move || confine::cgroup::join(procs, pid)))
            }
            _ => None,
        };
        Ok(Self { child, cgroup, joining })
    }

    /// Waits until the process is in its cgroup (cancel-safe). A failure is logged: the
    /// server runs on without the cgroup's limits.
    pub async fn joined_cgroup(&mut self) {
        let Some(joining) = self.joining.as_mut() else { return };
        let result = joining.await;
        self.joining = None;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(pid = ?self.pid(), %error, "moving a server into its cgroup");
    }

    /// Removes the process's cgroup once it has been reaped.
    fn reaped(&mut self) {
        if let Some(cgroup) = self.cgroup.take()
            && let Err(e) = cgroup.remove()
        {
            tracing::warn!(dirs = ?cgroup.dirs(), error = %e, "removing a server's cgroup");
        }
    }

    /// The pid while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting (none while it is being
    /// moved into its cgroup).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.joining.as_ref().is_some_and(|j| !j.is_finished()) {
            return Ok(None);
        }
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped();
        }
        Ok(status)
    }

    /// Waits for the process to exit (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.joined_cgroup().await;
        let status = self.child.wait().await?;
        self.reaped();
        Ok(status)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how the process ended.
    pub async fn stop(mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        self.joined_cgroup().await;
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(pid = ?self.pid(), ?grace, "server ignored SIGTERM; killing it");
                self.child.start_kill()?;
                self.wait().await
            }
        }
    }

    fn signal(&self, signal: Signal) {
        // `id()` is None once the child was reaped, so the pid cannot have been recycled.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok())
            && let Err(e) = kill(Pid::from_raw(pid), signal)
        {
            tracing::debug!(pid, %signal, error = %e, "signal not delivered");
        }
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// The last `max` bytes of a log file, for error messages about failed starts.
pub fn log_tail(log: &Path, max: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    text(&bytes[bytes.len().saturating_sub(max)..])
}

/// The log's length now: where what a process started next writes begins.
pub fn log_end(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// What was written to a log from `from` (see [`log_end`]) on: one start's own words, not an
/// earlier one's. A log that shrank meanwhile is read whole. Longer than `max` bytes, it is
/// cut in the middle: a server says what went wrong first and what it did about it last.
pub fn log_since(log: &Path, from: u64, max: usize) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).ok().filter(|&f| f <= bytes.len()).unwrap_or(0);
    let said = &bytes[from..];
    if said.len() <= max {
        return text(said);
    }
    let half = max / 2;
    // Whole lines on both sides of the cut where there are any.
    let head = &said[..half];
    let head = head.iter().rposition(|&b| b == b'\n').map_or(head, |end| &head[..end]);
    let tail = &said[said.len() - half..];
    let tail = tail.iter().position(|&b| b == b'\n').map_or(tail, |start| &tail[start + 1..]);
    format!("{}\n…\n{}", text(head), text(tail))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_terminates_and_reaps() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let launch = Launch { program: "sleep".into(), args: vec!["30".into()] };
        let proc = ManagedProcess::spawn(&launch, &dir.path().join("log"), None)?;
        assert!(proc.pid().is_some());
        let status = proc.stop(Duration::from_secs(5)).await?;
        assert!(!status.success());
        Ok(())
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_killed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let launch = Launch {
            program: "sh".into(),
            // An ignored signal stays ignored across exec, so `sleep` ignores SIGTERM too.
            args: vec!["-c".into(), "trap '' TERM; echo ready; exec sleep 30".into()],
        };
        let log = dir.path().join("log");
        let proc = ManagedProcess::spawn(&launch, &log, None)?;
        while !log_tail(&log, 64).contains("ready") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let status = proc.stop(Duration::from_millis(200)).await?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        Ok(())
    }

    #[test]
    fn logs_are_read_to_their_end_from_the_start_asked_for() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log");
        std::fs::write(&log, "first line\nlast line\n")?;
        assert_eq!(log_tail(&log, 10), "last line");
        assert_eq!(log_tail(&dir.path().join("missing"), 10), "");
        let from = log_end(&log);
        std::fs::write(&log, format!("{}next start\n", std::fs::read_to_string(&log)?))?;
        assert_eq!(log_since(&log, from, 1000), "next start");
        assert_eq!(log_since(&log, 1 << 40, 1000).lines().last(), Some("next start"));
        let long = format!("[ERROR] the cause\n{}[ERROR] Aborting\n", "[Note] noise\n".repeat(50));
        std::fs::write(&log, &long)?;
        let cut = log_since(&log, 0, 60);
        assert_eq!(cut.lines().next(), Some("[ERROR] the cause"), "{cut}");
        assert_eq!(cut.lines().last(), Some("[ERROR] Aborting"), "{cut}");
        assert!(cut.contains('…') && cut.len() < 80, "{cut}");
        Ok(())
    }
}
