//! Who an instance's server runs as: a uid and gid of its own from a high range, recorded only
//! as the owner of its instance directory (no passwd entry), and the directory checks that let
//! such a user reach its directory and nothing else.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;

/// The first uid (and gid) handed to an instance. Far above what distributions allocate to
/// people and services (and above the 2^31 mark user namespaces usually map from), so no
/// file on the host belongs to one by accident.
pub const FIRST_UID: u32 = 2_100_000_000;
/// How many instance uids there are: one per instance directory on the host.
pub const UIDS: u32 = 1_000_000;
/// The MariaDB template's bootstrap runs as this uid, which is no instance's.
pub const TEMPLATE_UID: u32 = FIRST_UID - 1;

/// The uid and gid a server runs as (the gid is the uid's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn new(uid: u32) -> Self {
        Self { uid, gid: uid }
    }

    /// The template bootstrap's owner.
    pub fn template() -> Self {
        Self::new(TEMPLATE_UID)
    }

    fn is_instance_uid(uid: u32) -> bool {
        (FIRST_UID..FIRST_UID + UIDS).contains(&uid)
    }
}

/// The owner `dir` already has, if it is an instance uid: an instance keeps its uid for life.
pub fn recorded(dir: &Path) -> Option<Owner> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    (meta.is_dir() && Owner::is_instance_uid(meta.uid())).then(|| Owner::new(meta.uid()))
}

/// A random instance uid that owns no directory directly under `root`. Random rather than
/// the lowest free one because several agents may share a host (test clusters do), and only
/// its own directories tell an agent which uids it uses: counted from the bottom, every
/// agent's first instance would get the same uid. The caller holds a lock across this and
/// handing the directory over, so two new instances of one agent never get one uid.
pub fn free_uid(root: &Path) -> io::Result<Owner> {
    let mut taken = std::collections::HashSet::new();
    for entry in std::fs::read_dir(root)? {
        let Ok(meta) = entry?.metadata() else { continue };
        if Owner::is_instance_uid(meta.uid()) {
            taken.insert(meta.uid());
        }
    }
    // With at most a few thousand instances in a million uids, the first try nearly always
    // succeeds; the bound only keeps a full range from spinning.
    for _ in 0..1000 {
        let uid = FIRST_UID + rand::random_range(0..UIDS);
        if !taken.contains(&uid) {
            return Ok(Owner::new(uid));
        }
    }
    Err(io::Error::other(format!("no free instance uid for {}", root.display())))
}

/// Gives `dir` and everything in it to `owner` and makes `dir` 0700. Symbolic links are
/// changed themselves and never followed.
pub fn hand_over(dir: &Path, owner: Owner) -> io::Result<()> {
    fn walk(path: &Path, owner: Owner) -> io::Result<()> {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let path = entry.path();
            lchown(&path, Some(owner.uid), Some(owner.gid))?;
            if entry.file_type()?.is_dir() {
                walk(&path, owner)?;
            }
        }
        Ok(())
    }
    walk(dir, owner)?;
    lchown(dir, Some(owner.uid), Some(owner.gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Gives `owner` the entries directly in `dir` that the agent made for this start (its
/// configuration files, their directories). Links are left alone: the server could have made
/// them, and following one would hand it a file of the host.
pub fn hand_over_new_entries(dir: &Path, owner: Owner) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        let plain = meta.is_dir() || (meta.is_file() && meta.nlink() == 1);
        if plain && (meta.uid() != owner.uid || meta.gid() != owner.gid) {
            lchown(entry.path(), Some(owner.uid), Some(owner.gid))?;
        }
    }
    Ok(())
}

/// Fails, naming the directory, unless other users may search every ancestor of `dir`: a
/// server running as its own uid must pass through them to reach its instance directory.
pub fn check_searchable(dir: &Path) -> io::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} (mode {:o}) is not searchable by other users, and the database servers \
                     run as users of their own below it: run `chmod o+x {}` or choose a data \
                     directory elsewhere (for root the default is /var/lib/dormouse)",
                    ancestor.display(),
                    meta.permissions().mode() & 0o7777,
                    ancestor.display(),
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_no_directory_owns_is_chosen_and_a_directory_keeps_its_own() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let first = free_uid(root.path())?;
        assert!(Owner::is_instance_uid(first.uid) && first.gid == first.uid);
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        for (name, uid) in [("a", FIRST_UID), ("c", 0)] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir)?;
            lchown(&dir, Some(uid), Some(uid))?;
        }
        assert!((0..100).all(|_| free_uid(root.path()).is_ok_and(|o| o.uid != FIRST_UID)));
        assert_eq!(recorded(&root.path().join("a")), Some(Owner::new(FIRST_UID)));
        assert_eq!(recorded(&root.path().join("c")), None);
        Ok(())
    }

    #[test]
    fn an_ancestor_closed_to_others_is_named() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let closed = root.path().join("closed");
        std::fs::create_dir_all(closed.join("inner"))?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700))?;
        let err = check_searchable(&closed.join("inner").join("instances")).expect_err("closed");
        assert!(err.to_string().starts_with(&format!("{} (mode 700)", closed.display())), "{err}");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711))?;
        check_searchable(&closed.join("inner").join("instances"))
    }
}
