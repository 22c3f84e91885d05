//! Processes a benchmark starts (peers, servers, the Dormouse under test): free ports, readiness
//! by connecting, cleanup on drop, the resident memory and CPU time of a process, and which
//! process listens on a port.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;

/// A port nothing listens on now (bind to port 0, read it back, release it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A child process killed and reaped when dropped, so an early error leaves nothing behind.
pub struct Guard {
    pub name: &'static str,
    pub child: Child,
}

impl Guard {
    pub fn new(name: &'static str, child: Child) -> Self {
        Self { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a bad config, a port taken).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `probe` succeeds against the process's port, failing early if it exits.
pub async fn wait_ready<F, Fut>(guard: &mut Guard, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        guard.check_alive()?;
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("{} never became ready", guard.name));
            }
            // Not listening yet: the process is still starting; ask again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Resident memory of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// CPU time a process has used so far, user and system, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime and stime the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short stat line")?.parse()?)
    };
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no clock tick rate")?;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second as f64)
}

/// Whether a program is on `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(program).is_file())
}

/// The program's full path, looking in the sbin directories too (haproxy and nutcracker live
/// there, outside a normal user's `PATH`).
pub fn program(name: &str) -> String {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .map_or_else(|| name.to_owned(), |p| p.display().to_string())
}

/// CPU time, user and system, of this process's children that have exited and been waited
/// for (`RUSAGE_CHILDREN`), in seconds: a load generator's, read before and after running it.
pub fn children_cpu_seconds() -> anyhow::Result<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}

/// The process listening on TCP `port` of the loopback or any address: the server behind an
/// endpoint, found through its listening socket's inode (`/proc/net/tcp*`, `/proc/*/fd`).
pub fn pid_listening_on(port: u16) -> anyhow::Result<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .find_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = fields.get(3) == Some(&"0A");
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9).map(|i| (*i).to_owned()))
                .flatten()
        })
        .with_context(|| format!("nothing listens on port {port}"))?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        });
        if owns {
            return Ok(pid);
        }
    }
    anyhow::bail!("no process holds the socket listening on port {port}")
}
