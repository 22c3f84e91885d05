//! Confining database servers: each instance's server runs as a uid of its own, under
//! Landlock, `no_new_privs`, cgroup memory and pids limits and rlimits. The agent prepares
//! everything in the parent; the forked child only makes system calls before exec.
//!
//! - [`owner`]: instance uids, handing directories over, the ancestors check.
//! - [`ruleset`]: the Landlock ruleset and which system paths it allows.
//! - [`cgroup`]: memory and pids cgroups, v1 or v2.

pub mod cgroup;
pub mod owner;
pub mod ruleset;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{RulesetCreated, RulesetStatus};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::process::Command;

pub use cgroup::Cgroup;
pub use owner::Owner;

/// What one server may use, from its plan (see `Engine::resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// The cgroup memory limit: the plan's memory plus the server's own overhead.
    pub memory_bytes: u64,
    /// Processes and threads (cgroup `pids.max`, and `RLIMIT_NPROC` under a uid of its own).
    pub pids: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
}

/// Mode for the directories above instance directories (the agent's data and instances
/// directories): searchable by the servers' uids, never listable, when they run as users of
/// their own; private otherwise.
pub fn ancestor_dir_mode() -> u32 {
    if separate_users() { 0o711 } else { 0o700 }
}

/// Servers run as users of their own only when the agent can switch users (it is root).
pub fn separate_users() -> bool {
    nix::unistd::geteuid().is_root()
}

/// How this host confines servers, found once per agent; says once what it cannot do.
#[derive(Debug)]
pub struct Confiner {
    separate_users: bool,
    landlock: bool,
    cgroups: Option<cgroup::Layout>,
    cgroups_failed: AtomicBool,
    /// Held while an instance is given a uid, so two new instances never get the same one.
    assigning: tokio::sync::Mutex<()>,
}

impl Confiner {
    pub fn detect() -> Self {
        let separate_users = separate_users();
        if !separate_users {
            tracing::warn!(
                "not running as root: database servers run as this user, not as users of \
                 their own, so they are not kept from each other's files by the uid"
            );
        }
        let landlock = match ruleset::probe() {
            RulesetStatus::FullyEnforced => true,
            RulesetStatus::PartiallyEnforced => {
                tracing::info!("this kernel's Landlock is older: servers are partly confined");
                true
            }
            RulesetStatus::NotEnforced => {
                tracing::warn!(
                    "Landlock is unavailable: servers are not confined to their directories"
                );
                false
            }
        };
        let cgroups = cgroup::Layout::detect();
        match &cgroups {
            Some(layout) => {
                let removed = layout.sweep();
                if removed > 0 {
                    tracing::info!(removed, "removed cgroups of servers that are gone");
                }
            }
            None => tracing::warn!(
                "no memory or pids cgroup controller: servers run without cgroup limits"
            ),
        }
        Self {
            separate_users,
            landlock,
            cgroups,
            cgroups_failed: AtomicBool::new(false),
            assigning: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks that servers can reach directories below `root` (see [`owner::check_searchable`]).
    pub fn check_root(&self, root: &Path) -> io::Result<()> {
        if self.separate_users { owner::check_searchable(root) } else { Ok(()) }
    }

    /// The uid the server of the instance in `dir` (directly under `root`) runs as: the one
    /// its directory already has, else a free one (see [`owner::free_uid`]), given to the
    /// directory and all it holds. `None` when servers run as the agent's user.
    pub async fn owner_for(&self, root: &Path, dir: &Path) -> io::Result<Option<Owner>> {
        if !self.separate_users {
            return Ok(None);
        }
        if let Some(owner) = owner::recorded(dir) {
            return Ok(Some(owner));
        }
        let _assigning = self.assigning.lock().await;
        let (root, dir) = (root.to_owned(), dir.to_owned());
        tokio::task::spawn_blocking(move || {
            let owner = owner::free_uid(&root)?;
            owner::hand_over(&dir, owner)?;
            Ok(Some(owner))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Everything needed to confine the server of instance `name` in `dir`.
    pub fn sandbox(
        self: &Arc<Self>,
        name: &str,
        dir: PathBuf,
        owner: Option<Owner>,
        resources: Resources,
    ) -> Sandbox {
        Sandbox { confiner: self.clone(), name: name.to_owned(), dir, owner, resources }
    }
}

/// How one instance's server is confined, whatever the start.
#[derive(Debug, Clone)]
pub struct Sandbox {
    confiner: Arc<Confiner>,
    name: String,
    pub dir: PathBuf,
    pub owner: Option<Owner>,
    pub resources: Resources,
}

impl Sandbox {
    /// Gives the server the files the agent has just written into its directory.
    pub fn hand_over_new_files(&self) -> io::Result<()> {
        match self.owner {
            Some(owner) => owner::hand_over_new_entries(&self.dir, owner),
            None => Ok(()),
        }
    }

    /// Prepares one start of the server listening on `port`: its Landlock ruleset, its
    /// cgroups and its rlimits. A ruleset the kernel should enforce but that cannot be built
    /// fails the start; cgroups that cannot be made are reported once and done without.
    pub fn jail(&self, port: u16) -> io::Result<Jail> {
        let ruleset = if self.confiner.landlock {
            Some(
                ruleset::build(&self.dir, port)
                    .map_err(|e| io::Error::other(format!("building the Landlock ruleset: {e}")))?,
            )
        } else {
            None
        };
        let cgroup = self.confiner.cgroups.as_ref().and_then(|layout| {
            layout
                .create(&self.name, &self.resources)
                .inspect_err(|e| {
                    if !self.confiner.cgroups_failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot make cgroups: servers run without cgroup limits");
                    }
                })
                .ok()
        });
        let mut rlimits = vec![(Resource::RLIMIT_NOFILE, self.resources.open_files)];
        // RLIMIT_NPROC counts every process of the real uid: only a uid of its own makes it
        // a limit on this server alone.
        if self.owner.is_some() {
            rlimits.push((Resource::RLIMIT_NPROC, self.resources.pids));
        }
        // Unprivileged after setuid, the child can only lower its hard limits.
        let rlimits = rlimits
            .into_iter()
            .map(|(resource, want)| {
                let hard = getrlimit(resource).map_or(want, |(_, hard)| hard);
                (resource, want.min(hard))
            })
            .collect();
        Ok(Jail { dir: self.dir.clone(), owner: self.owner, ruleset, cgroup, rlimits })
    }
}

/// One start's confinement, ready to be applied to the server's command.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    owner: Option<Owner>,
    ruleset: Option<RulesetCreated>,
    cgroup: Option<Cgroup>,
    rlimits: Vec<(Resource, u64)>,
}

impl Jail {
    /// Sets the command's uid and gid (the standard library then drops supplementary
    /// groups), working directory and environment, and, after its own setuid in the child,
    /// sets the rlimits and `no_new_privs` and enforces the ruleset. Returns the cgroup for
    /// the agent to move the process into right after spawning it (see
    /// [`cgroup::join`]) and to remove once the process has been reaped.
    pub fn apply(mut self, cmd: &mut Command) -> Option<Cgroup> {
        if let Some(owner) = self.owner {
            cmd.uid(owner.uid).gid(owner.gid);
        }
        // Nothing of the agent's environment (its flags, its secrets) reaches a server.
        cmd.current_dir(&self.dir).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let mut ruleset = self.ruleset.take();
        let rlimits = std::mem::take(&mut self.rlimits);
        let child_setup = move || -> io::Result<()> {
            for &(resource, limit) in &rlimits {
                setrlimit(resource, limit, limit)?;
            }
            nix::sys::prctl::set_no_new_privs()?;
            if let Some(ruleset) = ruleset.take() {
                ruleset.restrict_self().map_err(|_| io::Error::last_os_error())?;
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec. It allocates nothing and
        // takes no lock: it calls setrlimit(2), prctl(2) and landlock_restrict_self(2) on
        // values prepared in the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(child_setup);
        }
        self.cgroup
    }
}
