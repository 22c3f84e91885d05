//! The Landlock ruleset a server runs under: read-write to its own instance directory only,
//! read and execute on the system files a server needs, its own TCP port to listen on and no
//! outgoing TCP, no signals to processes outside it.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, path_beneath_rules,
};

/// The newest Landlock ABI whose rights we ask for; older kernels enforce what they know.
const ABI_USED: ABI = ABI::V6;

/// Read (and execute) only: the servers' binaries, libraries and shared files (`/usr`,
/// `/lib*`; `/bin` and `/sbin` are links into `/usr` on current distributions but not on all),
/// `/etc` for the time zone and the C library's configuration, and the random devices.
/// Not `/proc` or `/sys`: both servers start and run without them, and they would show every
/// other process's command line. (Redis then reports `used_memory_rss:0`; the instance's
/// cgroup has the real figure.)
pub const SYSTEM_READ_ONLY: &[&str] =
    &["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev/urandom", "/dev/random"];

/// Read-write besides the instance directory: `/dev/null` (as every program expects).
pub const SYSTEM_READ_WRITE: &[&str] = &["/dev/null"];

/// Builds the ruleset for a server in `dir` listening on `port`; the child enforces it with
/// `restrict_self` (which also sets `no_new_privs`) right before exec.
pub fn build(dir: &Path, port: u16) -> Result<RulesetCreated, RulesetError> {
    let all = AccessFs::from_all(ABI_USED);
    let read = AccessFs::from_read(ABI_USED);
    Ruleset::default()
        .handle_access(all)?
        .handle_access(AccessNet::from_all(ABI_USED))?
        .scope(Scope::from_all(ABI_USED))?
        .create()?
        .add_rules(path_beneath_rules(SYSTEM_READ_ONLY, read))?
        .add_rules(path_beneath_rules(
            SYSTEM_READ_WRITE,
            read | AccessFs::WriteFile | AccessFs::Truncate,
        ))?
        .add_rules(path_beneath_rules([dir], all))?
        .add_rule(NetPort::new(port, AccessNet::BindTcp))
}

/// Whether this kernel enforces Landlock: restricts a throw-away thread (Landlock and
/// `no_new_privs` are per thread) and reports how far the restriction went.
pub fn probe() -> RulesetStatus {
    let attempt = std::thread::spawn(|| {
        Ruleset::default()
            .handle_access(AccessFs::from_all(ABI_USED))?
            .create()?
            .restrict_self()
            .map(|status| status.ruleset)
    });
    match attempt.join() {
        Ok(Ok(status)) => status,
        _ => RulesetStatus::NotEnforced,
    }
}
