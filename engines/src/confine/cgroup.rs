//! Memory and pids limits for one server through cgroups, v1 or v2 (found in
//! /proc/self/mountinfo): a cgroup per instance under a `dormouse` parent at the root of each
//! hierarchy, never under the agent's own cgroup (which may have a memory limit of its own).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::Resources;

/// The cgroup every instance's cgroup sits under, in each hierarchy.
pub const PARENT: &str = "dormouse";

/// Where the memory and pids controllers are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount: PathBuf,
    v2: bool,
}

impl Layout {
    /// The controllers this host has mounted; `None` when it has neither.
    pub fn detect() -> Option<Layout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let layout = Self::parse(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        });
        (layout.memory.is_some() || layout.pids.is_some()).then_some(layout)
    }

    /// A controller mounted as a v1 hierarchy is not available in v2, so a v1 mount wins;
    /// otherwise the v2 mount has it if its `cgroup.controllers` lists it.
    fn parse(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Layout {
        let mut layout = Layout { memory: None, pids: None };
        let mut unified = None;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
            let (Some(mount), Some(fstype), Some(options)) =
                (fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
            else {
                continue;
            };
            // Only the hierarchy's root, not a bind mount of a part of it.
            if fields.get(3) != Some(&"/") {
                continue;
            }
            let hierarchy = Hierarchy { mount: PathBuf::from(mount), v2: *fstype == "cgroup2" };
            match *fstype {
                "cgroup2" => unified = Some(hierarchy),
                "cgroup" => {
                    let has = |c: &str| options.split(',').any(|o| o == c);
                    if has("memory") {
                        layout.memory = Some(hierarchy.clone());
                    }
                    if has("pids") {
                        layout.pids = Some(hierarchy);
                    }
                }
                _ => {}
            }
        }
        if let Some(unified) = unified {
            let controllers = v2_controllers(&unified.mount);
            let has = |c: &str| controllers.split_whitespace().any(|o| o == c);
            if layout.memory.is_none() && has("memory") {
                layout.memory = Some(unified.clone());
            }
            if layout.pids.is_none() && has("pids") {
                layout.pids = Some(unified);
            }
        }
        layout
    }

    /// Removes instance cgroups left behind by agents that ended without stopping their
    /// servers. Only empty ones can go (the kernel refuses the rest), and only those older
    /// than a minute: another agent's new cgroup is empty until its child joins it.
    pub fn sweep(&self) -> usize {
        let stale_after = std::time::Duration::from_secs(60);
        let mut removed = 0;
        for hierarchy in [&self.memory, &self.pids].into_iter().flatten() {
            let Ok(entries) = std::fs::read_dir(hierarchy.mount.join(PARENT)) else { continue };
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > stale_after));
                if old && entry.path().is_dir() && std::fs::remove_dir(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Makes (or reuses) the cgroup `name` in each hierarchy with `resources` as its limits,
    /// and opens each one's `cgroup.procs` to move the server in (see [`join`]).
    pub fn create(&self, name: &str, resources: &Resources) -> io::Result<Cgroup> {
        let mut cgroup = Cgroup { dirs: Vec::new(), procs: Vec::new() };
        // Half-made cgroups are removed, not left behind for nothing.
        self.fill(&mut cgroup, name, resources).inspect_err(|_| {
            let _ = cgroup.remove();
        })?;
        Ok(cgroup)
    }

    fn fill(&self, cgroup: &mut Cgroup, name: &str, resources: &Resources) -> io::Result<()> {
        let mut limits: Vec<(&Hierarchy, &str, u64)> = Vec::new();
        if let Some(h) = &self.memory {
            let file = if h.v2 { "memory.max" } else { "memory.limit_in_bytes" };
            limits.push((h, file, resources.memory_bytes));
        }
        if let Some(h) = &self.pids {
            limits.push((h, "pids.max", resources.pids));
        }
        for (hierarchy, file, value) in limits {
            let dir = hierarchy.mount.join(PARENT).join(name);
            if !cgroup.dirs.contains(&dir) {
                if hierarchy.v2 {
                    enable_v2_controllers(&hierarchy.mount)?;
                }
                std::fs::create_dir_all(&dir)?;
                cgroup.procs.push(OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?);
                cgroup.dirs.push(dir.clone());
            }
            std::fs::write(dir.join(file), value.to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("writing {file}: {e}")))?;
        }
        Ok(())
    }
}

/// The memory and pids limits of the cgroups process `pid` is in (`None` for a controller
/// this host lacks; `u64::MAX` for "max"), read back from the hierarchies.
pub fn limits_of(pid: u32) -> io::Result<(Option<u64>, Option<u64>)> {
    let layout = Layout::detect().unwrap_or(Layout { memory: None, pids: None });
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let read = |hierarchy: &Option<Hierarchy>, v1_controller: &str, file: &str| -> io::Result<_> {
        let Some(h) = hierarchy else { return Ok(None) };
        let path = membership.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if h.v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == v1_controller)
            };
            wanted.then(|| path.trim_start_matches('/').to_owned())
        });
        let Some(path) = path else { return Ok(None) };
        let value = std::fs::read_to_string(h.mount.join(path).join(file))?;
        Ok(Some(value.trim().parse().unwrap_or(u64::MAX)))
    };
    let memory = read(
        &layout.memory,
        "memory",
        if layout.memory.as_ref().is_some_and(|h| h.v2) {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        },
    )?;
    let pids = read(&layout.pids, "pids", "pids.max")?;
    Ok((memory, pids))
}

/// In v2 a cgroup's children get a controller only if its `cgroup.subtree_control` enables it.
fn enable_v2_controllers(mount: &Path) -> io::Result<()> {
    let available = std::fs::read_to_string(mount.join("cgroup.controllers"))?;
    let wanted: Vec<&str> =
        available.split_whitespace().filter(|c| matches!(*c, "memory" | "pids")).collect();
    let enable = wanted.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    let parent = mount.join(PARENT);
    std::fs::write(mount.join("cgroup.subtree_control"), &enable)?;
    std::fs::create_dir_all(&parent)?;
    std::fs::write(parent.join("cgroup.subtree_control"), &enable)
}

/// Moves process `pid` (all its threads) into the cgroups whose `cgroup.procs` files are
/// `procs`. The agent does it right after spawning, beside the server's start, rather than
/// the child before exec: a move waits for an RCU grace period unless another move happened
/// just before (7 to 19 ms each on these hosts when moves are 20 ms or more apart, as wakes
/// are), which would add as much to every wake. The price: what the server touches in those
/// milliseconds stays charged to the agent's cgroup.
pub fn join(procs: Vec<File>, pid: u32) -> io::Result<()> {
    for mut file in procs {
        file.write_all(pid.to_string().as_bytes())?;
    }
    Ok(())
}

/// One server's cgroups: their directories, and their `cgroup.procs` files until the
/// server has been moved in.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
}

impl Cgroup {
    /// The open `cgroup.procs` files, for [`join`].
    pub fn take_procs(&mut self) -> Vec<File> {
        std::mem::take(&mut self.procs)
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroups; only possible once the process has been reaped.
    pub fn remove(&self) -> io::Result<()> {
        let mut result = Ok(());
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => result = Err(e),
                _ => {}
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_controllers_are_found_beside_a_hybrid_unified_mount() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let layout = Layout::parse(mountinfo, |_| "hugetlb\n".into());
        let v1 = |m: &str| Some(Hierarchy { mount: m.into(), v2: false });
        assert_eq!(
            layout,
            Layout { memory: v1("/sys/fs/cgroup/memory"), pids: v1("/sys/fs/cgroup/pids") }
        );
    }

    #[test]
    fn only_cgroups_older_than_a_minute_are_swept() -> io::Result<()> {
        let mount = tempfile::tempdir()?;
        let (old, new) =
            (mount.path().join(PARENT).join("i-old"), mount.path().join(PARENT).join("i-new"));
        std::fs::create_dir_all(&old)?;
        std::fs::create_dir_all(&new)?;
        let two_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        File::open(&old)?.set_modified(two_minutes_ago)?;
        let hierarchy = Some(Hierarchy { mount: mount.path().into(), v2: false });
        let layout = Layout { memory: hierarchy.clone(), pids: hierarchy };
        assert_eq!(layout.sweep(), 1);
        assert!(!old.exists() && new.exists());
        Ok(())
    }

    #[test]
    fn a_v2_host_uses_the_unified_hierarchy() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::parse(mountinfo, |_| "cpuset cpu io memory pids\n".into());
        let v2 = Some(Hierarchy { mount: "/sys/fs/cgroup".into(), v2: true });
        assert_eq!(layout, Layout { memory: v2.clone(), pids: v2 });
        let bare = Layout::parse(mountinfo, |_| String::new());
        assert_eq!(bare, Layout { memory: None, pids: None });
    }
}
