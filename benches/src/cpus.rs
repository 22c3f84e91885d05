//! Where the benchmark's processes run. By default everything shares every core; the split
//! layout gives the proxies (Dormouse and its peers) their own cores and the load generators
//! and servers the rest, as on a host where the proxy tier does not take the database's CPU.

use anyhow::Context;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Which CPUs the benchmark's processes may use.
pub enum Layout {
    /// Every process may run on every core.
    Shared,
    /// Load generators and database servers (and the benchmark process itself) on `near`;
    /// Dormouse, haproxy and nutcracker on `proxies`.
    Split { near: Vec<usize>, proxies: Vec<usize> },
}

impl Layout {
    /// From `LAYOUT`: `shared` (the default) or `split`, which halves the CPUs this process
    /// may use: the lower half near, the upper half (the odd one out, if any) for the proxies.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("LAYOUT").as_deref() {
            Err(_) | Ok("shared") => Ok(Self::Shared),
            Ok("split") => {
                let cpus = cpus_of(&sched_getaffinity(Pid::from_raw(0)).context("own CPUs")?);
                anyhow::ensure!(
                    cpus.len() >= 2,
                    "LAYOUT=split needs two CPUs, this process has one"
                );
                let (near, proxies) = cpus.split_at(cpus.len() / 2);
                Ok(Self::Split { near: near.to_vec(), proxies: proxies.to_vec() })
            }
            Ok(other) => anyhow::bail!("LAYOUT={other}: expected shared or split"),
        }
    }

    /// Moves this process (every thread it has now) to the near side and says so. Processes it
    /// starts from now on begin there too.
    pub fn enter_near(&self) -> anyhow::Result<()> {
        let Self::Split { near, proxies } = self else { return Ok(()) };
        println!(
            "layout: proxies on CPUs {proxies:?}; load generators and servers on CPUs {near:?}"
        );
        pin(std::process::id(), near)
    }

    /// Moves a proxy (every thread it has now) to the proxies' side. The threads it starts
    /// later inherit that; the servers it already started stay where they are.
    pub fn place_proxy(&self, pid: u32) -> anyhow::Result<()> {
        match self {
            Self::Shared => Ok(()),
            Self::Split { proxies, .. } => pin(pid, proxies),
        }
    }
}

/// The CPUs in `set`, in order.
fn cpus_of(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect()
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
        let mine = cpus_of(&sched_getaffinity(Pid::from_raw(0)).expect("own affinity"));
        let cpu = *mine.first().expect("no CPU at all");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let pinned = pin(pid, &[cpu]);
        let seen = sched_getaffinity(Pid::from_raw(pid as i32));
        let _ = child.kill();
        let _ = child.wait();
        pinned.expect("pin");
        assert_eq!(cpus_of(&seen.expect("child's affinity")), vec![cpu]);
    }
}
