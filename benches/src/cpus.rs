//! Where the benchmark's processes run. By default everything shares every core; the split
//! layout gives the proxies (Dormouse and its peers) their own cores and the load generators
//! and servers the rest, as on a host where the proxy tier does not take the database's CPU.

use anyhow::Context;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs of the two sides of the split layout.
pub struct Split {
    /// Load generators and database servers (and the benchmark process itself).
    pub near: Vec<usize>,
    /// Dormouse, haproxy and nutcracker.
    pub proxies: Vec<usize>,
}

impl Split {
    /// Halves the CPUs this process may use: the lower half for the load generators and
    /// servers, the upper half (the odd one out, if any) for the proxies.
    pub fn halves() -> anyhow::Result<Self> {
        let mine = sched_getaffinity(Pid::from_raw(0)).context("reading this process's CPUs")?;
        let cpus: Vec<usize> =
            (0..CpuSet::count()).filter(|&cpu| mine.is_set(cpu).unwrap_or(false)).collect();
        anyhow::ensure!(cpus.len() >= 2, "the split layout needs two CPUs, this process has one");
        let (near, proxies) = cpus.split_at(cpus.len() / 2);
        Ok(Self { near: near.to_vec(), proxies: proxies.to_vec() })
    }

    /// Moves this process (every thread it has now) to the near side. Processes it starts from
    /// now on begin there too.
    pub fn enter_near(&self) -> anyhow::Result<()> {
        pin(std::process::id(), &self.near)
    }

    /// Moves a proxy (every thread it has now) to the proxies' side. The threads it starts
    /// later inherit that; the servers it already started stay where they are.
    pub fn move_proxy(&self, pid: u32) -> anyhow::Result<()> {
        pin(pid, &self.proxies)
    }
}

/// Sets the CPUs of every thread of `pid`: affinity belongs to threads, not processes.
fn pin(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of process {pid}"))?;
    for task in tasks {
        let name = task?.file_name();
        let Some(tid) = name.to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        // A thread may end between the listing and this call; that is no failure.
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("pinning thread {tid} of {pid}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_process_runs_only_where_it_was_put() {
        let mine = sched_getaffinity(Pid::from_raw(0)).expect("own affinity");
        let Some(cpu) = (0..CpuSet::count()).find(|&c| mine.is_set(c).unwrap_or(false)) else {
            panic!("no CPU at all");
        };
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let pinned = pin(pid, &[cpu]);
        let seen = sched_getaffinity(Pid::from_raw(pid as i32));
        let _ = child.kill();
        let _ = child.wait();
        pinned.expect("pin");
        let seen = seen.expect("child's affinity");
        let on: Vec<usize> =
            (0..CpuSet::count()).filter(|&c| seen.is_set(c).unwrap_or(false)).collect();
        assert_eq!(on, vec![cpu]);
    }
}
