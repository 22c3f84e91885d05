//! A stopped instance's data directory as the agent handles it for backups, whatever the
//! engine: its size, a fingerprint of its files, a tar of it written out, and a tar read back
//! strictly (nothing may land outside the directory being filled).

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::SyncIoBridge;

use crate::engine::EngineError;

/// The top directory every entry of a cold backup lies under.
pub const TAR_ROOT: &str = "data";

/// Bytes of the pipe between the async side and the thread that builds or reads a tar.
const PIPE: usize = 256 * 1024;

/// One file, directory or link under a data directory, relative to it.
struct Entry {
    path: PathBuf,
    meta: std::fs::Metadata,
}

/// Every entry under `dir`, sorted by path, links not followed. A missing `dir` has none.
fn walk(dir: &Path) -> io::Result<Vec<Entry>> {
    fn visit(root: &Path, rel: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(root.join(&path))?;
            let is_dir = meta.is_dir();
            out.push(Entry { path: path.clone(), meta });
            if is_dir {
                visit(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    match visit(dir, Path::new(""), &mut out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {}
        other => other?,
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Bytes the files under `dir` take (0 when it does not exist).
pub fn size(dir: &Path) -> io::Result<u64> {
    Ok(walk(dir)?.iter().filter(|e| e.meta.is_file()).map(|e| e.meta.len()).sum())
}

/// The newest modification time under `dir`, in seconds since the epoch.
pub fn newest_mtime(dir: &Path) -> io::Result<Option<i64>> {
    Ok(walk(dir)?.iter().map(|e| e.meta.mtime()).max())
}

/// A hash of every entry's name, kind, size and modification time under `dir`: a server
/// that wrote anything changed at least one of them.
pub fn fingerprint(dir: &Path) -> io::Result<String> {
    let mut hash = Sha256::new();
    for e in walk(dir)? {
        let kind = if e.meta.is_dir() {
            'd'
        } else if e.meta.is_file() {
            'f'
        } else {
            'o'
        };
        hash.update(e.path.as_os_str().as_encoded_bytes());
        hash.update(format!(
            "\0{kind}\0{}\0{}.{}\n",
            e.meta.len(),
            e.meta.mtime(),
            e.meta.mtime_nsec()
        ));
    }
    Ok(hex::encode(hash.finalize()))
}

/// Writes a tar of `dir` (entries under [`TAR_ROOT`]) to `out`; returns the bytes written.
/// Regular files, directories and links are kept, links as links; sockets and other special
/// files are left out.
pub async fn tar_out(
    dir: &Path,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<u64, EngineError> {
    let (writer, mut reader) = tokio::io::duplex(PIPE);
    let bridge = SyncIoBridge::new(writer);
    let context = format!("reading {}", dir.display());
    let dir = dir.to_owned();
    let build = tokio::task::spawn_blocking(move || -> io::Result<()> {
        // The directory is the server's user's: a link in its place is not followed.
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        let mut tar = tar::Builder::new(bridge);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        tar.append_dir(TAR_ROOT, &dir)?;
        for e in walk(&dir)? {
            let name = Path::new(TAR_ROOT).join(&e.path);
            let kind = e.meta.file_type();
            if kind.is_dir() || kind.is_symlink() {
                tar.append_path_with_name(dir.join(&e.path), &name)?;
            } else if kind.is_file() {
                let mut file = open_nofollow(&dir.join(&e.path))?;
                tar.append_file(&name, &mut file)?;
            }
        }
        let mut bridge = tar.into_inner()?;
        io::Write::flush(&mut bridge)?;
        bridge.shutdown()
    });
    let copy = tokio::io::copy(&mut reader, out).await;
    // A failed copy drops the reader, so the thread's next write fails and it ends.
    drop(reader);
    let built = build.await.map_err(|e| EngineError::Failed(format!("writing the tar: {e}")))?;
    let bytes = copy.map_err(EngineError::io("writing the backup"))?;
    built.map_err(EngineError::io(context))?;
    out.flush().await.map_err(EngineError::io("writing the backup"))?;
    Ok(bytes)
}

/// Bytes moved at a time between a file and a stream: tokio runs every file read and write
/// on its blocking pool, and its copies move 8 KiB, so a 500 MB Redis snapshot took some
/// 61,000 thread hand-offs and a third of its backup's CPU (benches/README.md).
const FILE_BUFFER: usize = 1 << 20;

/// Copies a file (or part of one) into `out` a megabyte at a time.
pub async fn copy_from_file<R>(
    file: R,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut reader = tokio::io::BufReader::with_capacity(FILE_BUFFER, file);
    tokio::io::copy_buf(&mut reader, out).await
}

/// Copies `input` to its end into `file` a megabyte at a time; returns the bytes and the file.
pub async fn copy_into_file<R>(
    input: &mut R,
    file: tokio::fs::File,
) -> io::Result<(u64, tokio::fs::File)>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    let mut writer = tokio::io::BufWriter::with_capacity(FILE_BUFFER, file);
    let copied = tokio::io::copy(input, &mut writer).await?;
    tokio::io::AsyncWriteExt::flush(&mut writer).await?;
    Ok((copied, writer.into_inner()))
}

pub fn open_nofollow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Unpacks a tar read from `input` into `scratch`, which must be empty, so that its
/// [`TAR_ROOT`] becomes `scratch/data`. Reads `input` to its end; fails on any read error, on
/// an entry outside [`TAR_ROOT`], with `..` or an absolute path, on a hard link, device or
/// fifo, and on a symbolic link whose target is absolute or climbs with `..`.
pub async fn untar_in(
    scratch: &Path,
    input: &mut (dyn AsyncRead + Send + Unpin),
) -> Result<(), EngineError> {
    let (mut writer, reader) = tokio::io::duplex(PIPE);
    let bridge = SyncIoBridge::new(reader);
    let scratch = scratch.to_owned();
    let unpack = tokio::task::spawn_blocking(move || unpack(&scratch, bridge));
    // Owns the writer, so the unpacker sees the end of its input when this ends, however.
    let copy = async move {
        tokio::io::copy(input, &mut writer).await?;
        writer.shutdown().await
    };
    let copied = copy.await;
    let unpacked =
        unpack.await.map_err(|e| EngineError::Failed(format!("unpacking the tar: {e}")))?;
    match (copied, unpacked) {
        // A closed pipe means the unpacker stopped reading; its own error says why.
        (Err(e), _) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(EngineError::Failed(format!("reading the backup: {e}")))
        }
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(EngineError::Failed(format!("reading the backup: {e}"))),
        (Ok(()), Ok(())) => Ok(()),
    }
}

fn unpack(scratch: &Path, reader: impl Read) -> Result<(), EngineError> {
    let failed = |what: String| EngineError::Failed(format!("unpacking the tar: {what}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    {
        let entries = archive.entries().map_err(|e| failed(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| failed(e.to_string()))?;
            let path = entry.path().map_err(|e| failed(e.to_string()))?.into_owned();
            check_entry(&path, &entry).map_err(failed)?;
            let done =
                entry.unpack_in(scratch).map_err(|e| failed(format!("{}: {e}", path.display())))?;
            if !done {
                return Err(failed(format!("{} would land outside", path.display())));
            }
        }
    }
    // Trailing padding after the end-of-archive blocks: read it, so the writer sees the input
    // consumed to its end rather than a closed pipe.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| failed(e.to_string()))?;
    if !scratch.join(TAR_ROOT).is_dir() {
        return Err(failed(format!("no {TAR_ROOT}/ directory in the archive")));
    }
    Ok(())
}

fn check_entry<R: Read>(path: &Path, entry: &tar::Entry<R>) -> Result<(), String> {
    let mut components = path.components();
    if components.next() != Some(Component::Normal(TAR_ROOT.as_ref())) {
        return Err(format!("{} is outside {TAR_ROOT}/", path.display()));
    }
    if !components.all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{} is not a plain relative path", path.display()));
    }
    let kind = entry.header().entry_type();
    match kind {
        tar::EntryType::Regular | tar::EntryType::Directory => Ok(()),
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{}: a link without a target", path.display()))?;
            // Only downward links: each stays below its own directory, which is inside.
            if target.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
                Ok(())
            } else {
                Err(format!("{} links outside ({})", path.display(), target.display()))
            }
        }
        other => Err(format!("{}: entries of type {other:?} are not restored", path.display())),
    }
}

/// A small file (at most 4 KiB are read) in a directory a server's user can write, such as a
/// marker the agent left in an instance directory, read without following a link the server
/// may have put in its place: `None` when it does not exist.
pub fn read_marker(path: &Path) -> io::Result<Option<String>> {
    const MAX: u64 = 4096;
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(MAX).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tar_round_trips_and_the_fingerprint_follows_changes() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub"))?;
        std::fs::write(data.join("sub/f"), b"hello")?;
        std::os::unix::fs::symlink("sub/f", data.join("link"))?;
        let before = fingerprint(&data)?;
        assert_eq!(before, fingerprint(&data)?);
        assert_eq!(size(&data)?, 5);

        let mut bytes = Vec::new();
        let n = tar_out(&data, &mut bytes).await?;
        assert_eq!(n, bytes.len() as u64);
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch)?;
        untar_in(&scratch, &mut &bytes[..]).await?;
        assert_eq!(std::fs::read(scratch.join("data/sub/f"))?, b"hello");
        assert_eq!(std::fs::read_link(scratch.join("data/link"))?, Path::new("sub/f"));

        std::fs::write(data.join("sub/f"), b"hello!")?;
        assert_ne!(before, fingerprint(&data)?);
        assert_eq!(size(&tmp.path().join("absent"))?, 0);
        Ok(())
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_size(0);
        b.append_data(&mut dir, "data", io::empty()).expect("dir");
        build(&mut b).expect("entry");
        b.into_inner().expect("tar")
    }

    #[tokio::test]
    async fn entries_that_would_leave_the_directory_are_refused() -> anyhow::Result<()> {
        let link = |target: &'static str| {
            tar_with(move |b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, "data/l", target)
            })
        };
        let outside = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o600);
            // Written raw: the builder itself refuses `..`.
            h.as_old_mut().name[..11].copy_from_slice(b"data/../../");
            h.as_old_mut().name[11..12].copy_from_slice(b"x");
            h.set_cksum();
            b.append(&h, &b"x"[..])
        });
        let other_root = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o600);
            b.append_data(&mut h, "elsewhere/x", &b"x"[..])
        });
        for (bytes, why) in [
            (link("/etc/passwd"), "links outside"),
            (link("../../x"), "links outside"),
            (outside, "not a plain relative path"),
            (other_root, "is outside data/"),
        ] {
            let scratch = tempfile::tempdir()?;
            let result = untar_in(scratch.path(), &mut &bytes[..]).await;
            assert!(result.as_ref().is_err_and(|e| e.to_string().contains(why)), "{result:?}");
            assert!(!scratch.path().join("x").exists());
        }
        Ok(())
    }
}
