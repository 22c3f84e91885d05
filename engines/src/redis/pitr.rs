//! Point-in-time recovery for Redis: the files of the multi-part append-only file, which
//! control archives as they grow, and a restore that puts an archived base file and the
//! increments after it back together and cuts them at a second.
//!
//! The server writes `#TS:<unix seconds>` before the first command of every second
//! (`aof-timestamp-enabled yes`), and `redis-check-aof --truncate-to-timestamp T` cuts the
//! increment at the first mark after T: a restore to T keeps every command run in second T or
//! earlier and none after (1 s resolution). What reaches the archive is what the server had
//! written when an archive pass (every 30 s) read it, synced to disk first; a host lost
//! before the next pass loses those last seconds (up to 30 s) from the archive too. Nothing
//! is lost to rewrites: the server keeps the files a rewrite replaces
//! (`aof-disable-auto-gc yes`) until control has archived them ([`release`]), and only the
//! agent starts rewrites (`auto-aof-rewrite-percentage 0`).

use std::fmt::Write as _;
use std::io::{self, BufRead, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{DATA_DIR, INFO_USER, connect_cli, redis_cli};
use crate::backup::LogSegment;
use crate::confine::Owner;
use crate::datadir;
use crate::engine::{EngineError, Instance};
use crate::tool;

/// Where the append-only files live in the data directory, and their manifest, as Redis 7
/// names them.
pub const AOF_DIR: &str = "appendonlydir";
pub const MANIFEST: &str = "appendonly.aof.manifest";
const PREFIX: &str = "appendonly.aof.";
const BASE_SUFFIX: &str = ".base.rdb";
const INCR_SUFFIX: &str = ".incr.aof";
/// A manifest larger than this is not one the server wrote.
const MAX_MANIFEST: u64 = 1 << 20;
/// The agent starts a rewrite once the increments are as large as the base and the whole
/// file at least this large: Redis's own defaults (`auto-aof-rewrite-percentage 100`,
/// `auto-aof-rewrite-min-size 64mb`), which this replaces.
const REWRITE_MIN: u64 = 64 << 20;

/// The ACL user the agent runs its few administrative commands as: `BGREWRITEAOF`, and
/// `CONFIG SET` to let the server delete archived files. Its password is derived from the
/// instance's (see [`admin_password`]), which the proxy holds but never uses for it; tenants
/// have neither.
pub const ADMIN_USER: &str = "dormouse_admin";

/// A file of the append-only file, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AofFile {
    /// `appendonly.aof.N.base.rdb`: a snapshot (RDB); never changes once written.
    Base(u64),
    /// `appendonly.aof.N.incr.aof`: the commands after a base; only ever appended to.
    Incr(u64),
}

impl AofFile {
    /// The file a name stands for, and nothing a name could smuggle in: digits without a
    /// leading zero, the two suffixes Redis writes with `aof-use-rdb-preamble yes`.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?;
        let (digits, base) = match rest.strip_suffix(BASE_SUFFIX) {
            Some(d) => (d, true),
            None => (rest.strip_suffix(INCR_SUFFIX)?, false),
        };
        let valid = !digits.is_empty()
            && digits.len() <= 18
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit());
        let seq = digits.parse().ok().filter(|_| valid)?;
        Some(if base { AofFile::Base(seq) } else { AofFile::Incr(seq) })
    }

    pub fn name(self) -> String {
        match self {
            AofFile::Base(n) => format!("{PREFIX}{n}{BASE_SUFFIX}"),
            AofFile::Incr(n) => format!("{PREFIX}{n}{INCR_SUFFIX}"),
        }
    }
}

/// What the manifest says a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The current base.
    Base,
    /// The increments after it, oldest first; the last one is being written.
    Incr,
    /// Replaced by a rewrite; kept until archived.
    History,
}

/// One line of the manifest: `file <name> seq <n> type <b|i|h>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub file: AofFile,
    pub role: Role,
}

/// Parses a manifest, strictly: every line names a file of [`AofFile`]'s form whose number is
/// its `seq`, and there is one base at most.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [file_, name, seq_, seq, type_, kind] = fields.as_slice() else {
            return Err(format!("unexpected manifest line {line:?}"));
        };
        let file = AofFile::parse(name)
            .filter(|_| (*file_, *seq_, *type_) == ("file", "seq", "type") && !line.contains('"'));
        let Some(file) = file else { return Err(format!("unexpected manifest line {line:?}")) };
        let number = match file {
            AofFile::Base(n) | AofFile::Incr(n) => n,
        };
        let role = match (*kind, file) {
            ("b", AofFile::Base(_)) => Role::Base,
            ("i", AofFile::Incr(_)) => Role::Incr,
            ("h", _) => Role::History,
            _ => return Err(format!("unexpected manifest line {line:?}")),
        };
        if seq.parse::<u64>().ok() != Some(number) {
            return Err(format!("unexpected manifest line {line:?}"));
        }
        entries.push(ManifestEntry { file, role });
    }
    if entries.iter().filter(|e| e.role == Role::Base).count() > 1 {
        return Err("the manifest names two bases".into());
    }
    Ok(entries)
}

/// The append-only directory of `data`, opened without following a link at either level:
/// the server's user could replace either with one to another instance's files.
fn open_aof_dir(data: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let data = nix::fcntl::open(data, flags, Mode::empty()).map_err(io::Error::from)?;
    openat(&data, AOF_DIR, flags, Mode::empty()).map_err(io::Error::from)
}

/// Opens `name` in the append-only directory: a regular file, not a link.
fn open_in(dir: &OwnedFd, name: &str) -> io::Result<std::fs::File> {
    // Non-blocking: opening a fifo left in a file's place must not hang the agent.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let file = std::fs::File::from(openat(dir, name, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{name} is not a file")));
    }
    Ok(file)
}

fn read_manifest(dir: &OwnedFd) -> io::Result<Vec<ManifestEntry>> {
    let mut text = String::new();
    open_in(dir, MANIFEST)?.take(MAX_MANIFEST).read_to_string(&mut text)?;
    parse_manifest(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The files of the append-only file in `data` to archive, in the order a restore reads
/// them: increments a rewrite replaced first, then the base, then its increments; with their
/// sizes and change times. The last increment is still being written while the server runs.
/// A base a rewrite replaced is left out: it was archived while it was the base, or never
/// will be of use (nothing archived continues it).
pub fn segments(data: &Path) -> io::Result<Vec<LogSegment>> {
    let files = files(data)?.into_iter();
    let wanted = |(role, s): &(Role, LogSegment)| {
        *role != Role::History || matches!(AofFile::parse(&s.name), Some(AofFile::Incr(_)))
    };
    Ok(files.filter(wanted).map(|(_, segment)| segment).collect())
}

/// [`segments`], with what the manifest says each is.
fn files(data: &Path) -> io::Result<Vec<(Role, LogSegment)>> {
    let dir = open_aof_dir(data)?;
    let mut entries = read_manifest(&dir)?;
    let rank = |e: &ManifestEntry| match e.role {
        Role::History => 0,
        Role::Base => 1,
        Role::Incr => 2,
    };
    // Stable: history and increments keep the manifest's order.
    entries.sort_by_key(rank);
    let mut found = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.file.name();
        let meta = open_in(&dir, &name)?.metadata()?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        found.push((entry.role, LogSegment { name, size: meta.len(), modified }));
    }
    Ok(found)
}

/// Opens the archived file `name` of `data` for reading.
pub fn open(data: &Path, name: &str) -> io::Result<std::fs::File> {
    if AofFile::parse(name).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is no AOF file"),
        ));
    }
    open_in(&open_aof_dir(data)?, name)
}

/// Whether the agent should start a rewrite: the increments have grown as large as the base,
/// and the whole file past [`REWRITE_MIN`].
pub fn rewrite_due(base: u64, incr: u64) -> bool {
    incr >= base && base.saturating_add(incr) >= REWRITE_MIN
}

/// Lets the server delete the files a rewrite replaced once `archived` holds all of each, and
/// starts a rewrite when one is due and none is waiting to be archived. Only a server with no
/// rewrite under way is touched: one finishing meanwhile would replace files not archived yet.
pub async fn release(instance: &Instance, archived: &[LogSegment]) -> Result<(), EngineError> {
    let data = instance.dir.join(DATA_DIR);
    let files = tokio::task::spawn_blocking(move || files(&data))
        .await
        .map_err(|e| EngineError::Failed(format!("listing the append-only file: {e}")))?
        .map_err(EngineError::io("listing the append-only file"))?;
    let history: Vec<&LogSegment> =
        files.iter().filter(|(role, _)| *role == Role::History).map(|(_, f)| f).collect();
    // Replaced bases need no archiving (see [`segments`]); replaced increments, all of them.
    let all_archived = history.iter().all(|h| {
        matches!(AofFile::parse(&h.name), Some(AofFile::Base(_)))
            || archived.iter().any(|a| a.name == h.name && a.size == h.size)
    });
    if !all_archived {
        return Ok(());
    }
    let size_of =
        |role: Role| -> u64 { files.iter().filter(|(r, _)| *r == role).map(|(_, f)| f.size).sum() };
    let rewrite = rewrite_due(size_of(Role::Base), size_of(Role::Incr));
    if history.is_empty() && !rewrite {
        return Ok(());
    }
    if rewriting(instance).await? {
        return Ok(());
    }
    if !history.is_empty() {
        admin(instance, &["CONFIG", "SET", "aof-disable-auto-gc", "no"], "OK").await?;
        admin(instance, &["CONFIG", "SET", "aof-disable-auto-gc", "yes"], "OK").await?;
        tracing::debug!(instance = %instance.spec.id, files = history.len(), "archived AOF files released");
    }
    if rewrite {
        admin(instance, &["BGREWRITEAOF"], "Background append only file rewriting").await?;
        tracing::debug!(instance = %instance.spec.id, "AOF rewrite started");
    }
    Ok(())
}

/// Whether a rewrite is running or scheduled, from `INFO persistence`.
async fn rewriting(instance: &Instance) -> Result<bool, EngineError> {
    let password = instance.spec.password.expose();
    let text = cli(instance, INFO_USER, password, &["INFO", "persistence"]).await?;
    let field = |f: &str| text.lines().find_map(|l| l.strip_prefix(f)?.strip_prefix(':'));
    match (field("aof_rewrite_in_progress"), field("aof_rewrite_scheduled")) {
        (Some(a), Some(b)) => Ok(a.trim() != "0" || b.trim() != "0"),
        _ => Err(EngineError::Failed(format!("unexpected INFO reply: {}", text.trim()))),
    }
}

/// Runs one command as [`ADMIN_USER`]; its reply must start with `expected`.
async fn admin(instance: &Instance, args: &[&str], expected: &str) -> Result<(), EngineError> {
    let password = admin_password(instance.spec.password.expose());
    let reply = cli(instance, ADMIN_USER, &password, args).await?;
    if !reply.trim_start().starts_with(expected) {
        return Err(EngineError::Failed(format!("{}: {}", args.join(" "), reply.trim())));
    }
    Ok(())
}

async fn cli(
    instance: &Instance,
    user: &str,
    password: &str,
    args: &[&str],
) -> Result<String, EngineError> {
    let mut cmd = tokio::process::Command::new(redis_cli()?);
    connect_cli(&mut cmd, user, instance).env("REDISCLI_AUTH", password).args(args);
    tool::output(cmd, &format!("redis-cli {}", args.first().unwrap_or(&"")), None).await
}

/// [`ADMIN_USER`]'s password: derived from the instance's, so nothing more is stored, but
/// not the one the proxy logs in with.
pub fn admin_password(password: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("dormouse-admin\0{password}").as_bytes()))
}

/// The first line of a [`crate::backup::Format::Aof`] stream: the second to cut at and the
/// length of the base file that follows it; the increments come after, to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AofHeader {
    pub until: i64,
    pub base_bytes: u64,
}

const HEADER_TAG: &str = "dormouse-aof 1";
const MAX_HEADER: usize = 128;

impl AofHeader {
    pub fn line(&self) -> String {
        format!("{HEADER_TAG} {} {}\n", self.until, self.base_bytes)
    }

    pub fn parse(line: &str) -> Result<Self, String> {
        let bad = || format!("not an archived append-only file: {:?}", line.trim_end());
        let rest = line.strip_suffix('\n').and_then(|l| l.strip_prefix(HEADER_TAG));
        let mut fields = rest.ok_or_else(bad)?.strip_prefix(' ').ok_or_else(bad)?.split(' ');
        let (Some(until), Some(base), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad());
        };
        Ok(Self {
            until: until.parse().map_err(|_| bad())?,
            base_bytes: base.parse().map_err(|_| bad())?,
        })
    }
}

/// How far an increment holds whole commands, and its first time mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// Bytes up to the end of the last whole command or mark; what follows was cut short
    /// (the archive read the file while the server wrote it).
    pub complete: u64,
    /// The first `#TS:` mark: where it starts and its second.
    pub first_mark: Option<(u64, i64)>,
}

/// Longest line a command's header or a mark takes.
const MAX_LINE: u64 = 64;

/// Reads an increment (RESP arrays of bulk strings, and `#` annotation lines) to its end.
/// Anything that is neither is an error; an entry cut short at the end is not.
pub fn scan(mut input: impl BufRead) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut at = 0u64;
    let invalid = |at: u64, what: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("offset {at}: {what}"))
    };
    loop {
        let start = at;
        let Some(line) = read_line(&mut input, &mut at)? else { return Ok(scan) };
        if let Some(note) = line.strip_prefix(b"#") {
            if let Some(ts) = note.strip_prefix(b"TS:") {
                let ts = std::str::from_utf8(ts)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| invalid(start, "a bad time mark"))?;
                scan.first_mark.get_or_insert((start, ts));
            }
            scan.complete = at;
            continue;
        }
        let count = count_after(&line, b'*').ok_or_else(|| invalid(start, "not a command"))?;
        for _ in 0..count {
            let Some(header) = read_line(&mut input, &mut at)? else { return Ok(scan) };
            let len = count_after(&header, b'$').ok_or_else(|| invalid(start, "not a string"))?;
            let want = len + 2;
            let got = io::copy(&mut (&mut input).take(want), &mut io::sink())?;
            at += got;
            if got < want {
                return Ok(scan);
            }
        }
        scan.complete = at;
    }
}

/// One `\r\n`-ended line without its end; `None` at the end of the input or when the line
/// was cut short.
fn read_line(input: &mut impl BufRead, at: &mut u64) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = input.take(MAX_LINE).read_until(b'\n', &mut line)?;
    *at += n as u64;
    match line.strip_suffix(b"\r\n") {
        Some(body) => Ok(Some(body.to_vec())),
        None if n as u64 == MAX_LINE => {
            Err(io::Error::new(io::ErrorKind::InvalidData, "an overlong line"))
        }
        None => Ok(None),
    }
}

/// The number after `tag` in a `*3` or `$5` line.
fn count_after(line: &[u8], tag: u8) -> Option<u64> {
    let digits = line.strip_prefix(&[tag])?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Where to cut an increment before `redis-check-aof` cuts it at `until`: after its last
/// whole entry (the tool refuses a torn one); at its start when its very first mark is after
/// `until` (the tool refuses to cut a file down to nothing).
pub fn precut(scan: &Scan, until: i64) -> u64 {
    match scan.first_mark {
        Some((0, ts)) if ts > until => 0,
        _ => scan.complete,
    }
}

/// Makes `data` (not existing yet) a data directory holding the append-only file read from a
/// [`crate::backup::Format::Aof`] stream, cut at the header's second: the base and the
/// increments as files of sequence 1 with their manifest, given to `owner`, then cut by
/// `redis-check-aof --truncate-to-timestamp` run as `owner`.
pub async fn unpack(
    input: &mut (dyn AsyncRead + Send + Unpin),
    data: &Path,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let check = tool::require("redis-check-aof", "redis-tools")?;
    let header = read_header(input).await?;
    let aof = data.join(AOF_DIR);
    tokio::fs::create_dir_all(&aof)
        .await
        .map_err(EngineError::io(format!("creating {}", aof.display())))?;
    let (base, incr) = (AofFile::Base(1).name(), AofFile::Incr(1).name());
    let file = create(&aof.join(&base)).await?;
    let (copied, file) = datadir::copy_into_file(&mut (&mut *input).take(header.base_bytes), file)
        .await
        .map_err(|e| EngineError::Failed(format!("reading the archive: {e}")))?;
    if copied != header.base_bytes {
        return Err(EngineError::Failed("the archive ended inside its base file".into()));
    }
    file.sync_all().await.map_err(EngineError::io(format!("writing {base}")))?;
    let file = create(&aof.join(&incr)).await?;
    let (_, file) = datadir::copy_into_file(input, file)
        .await
        .map_err(|e| EngineError::Failed(format!("reading the archive: {e}")))?;
    file.sync_all().await.map_err(EngineError::io(format!("writing {incr}")))?;
    drop(file);
    let incr_path = aof.join(&incr);
    let until = header.until;
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&incr_path)?;
        let cut = precut(&scan(io::BufReader::new(&file))?, until);
        if cut < file.metadata()?.len() {
            file.set_len(cut)?;
        }
        file.sync_all()
    })
    .await
    .map_err(|e| EngineError::Failed(format!("reading the increments: {e}")))?
    .map_err(EngineError::io("reading the archived increments"))?;
    let mut manifest = String::new();
    let _ = write!(manifest, "file {base} seq 1 type b\nfile {incr} seq 1 type i\n");
    let mut file = create(&aof.join(MANIFEST)).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, manifest.as_bytes())
        .await
        .map_err(EngineError::io("writing the append-only file's manifest"))?;
    file.sync_all().await.map_err(EngineError::io("writing the append-only file's manifest"))?;
    if let Some(owner) = owner {
        let data = data.to_owned();
        tokio::task::spawn_blocking(move || crate::confine::owner::hand_over(&data, owner))
            .await
            .map_err(|e| EngineError::Failed(format!("handing the data over: {e}")))?
            .map_err(EngineError::io("giving the restored data to its server's user"))?;
    }
    let log = data.parent().unwrap_or(data).join("redis-check-aof.log");
    let mut cmd = tool::command(&check, &log, owner)?;
    // It reports on stdout.
    let report = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map_err(EngineError::io(format!("opening {}", log.display())))?;
    cmd.stdout(report)
        .arg("--truncate-to-timestamp")
        .arg(until.to_string())
        .arg(aof.join(MANIFEST));
    tool::run(cmd, "redis-check-aof", &log).await
}

async fn read_header(input: &mut (dyn AsyncRead + Send + Unpin)) -> Result<AofHeader, EngineError> {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") && line.len() < MAX_HEADER {
        let byte = input
            .read_u8()
            .await
            .map_err(|e| EngineError::Failed(format!("reading the archive: {e}")))?;
        line.push(byte);
    }
    AofHeader::parse(&String::from_utf8_lossy(&line)).map_err(EngineError::Failed)
}

/// A new file the agent writes: never one already there, or a link.
async fn create(path: &Path) -> Result<tokio::fs::File, EngineError> {
    tokio::fs::File::create_new(path)
        .await
        .map_err(EngineError::io(format!("creating {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_redis_writes_are_aof_files() {
        assert_eq!(AofFile::parse("appendonly.aof.1.base.rdb"), Some(AofFile::Base(1)));
        assert_eq!(AofFile::parse("appendonly.aof.27.incr.aof"), Some(AofFile::Incr(27)));
        for name in [
            "appendonly.aof.manifest",
            "appendonly.aof.01.incr.aof",
            "appendonly.aof..incr.aof",
            "appendonly.aof.1.base.aof",
            "appendonly.aof.1.incr.aof/../x",
            "temp-rewriteaof-bg-12.aof",
            "appendonly.aof.-1.incr.aof",
            "appendonly.aof.1234567890123456789.incr.aof",
        ] {
            assert_eq!(AofFile::parse(name), None, "{name}");
        }
        assert_eq!(AofFile::Incr(3).name(), "appendonly.aof.3.incr.aof");
    }

    #[test]
    fn the_manifest_says_which_file_is_base_increment_or_history() {
        let text = "file appendonly.aof.2.base.rdb seq 2 type b\n\
                    file appendonly.aof.1.incr.aof seq 1 type h\n\
                    file appendonly.aof.1.base.rdb seq 1 type h\n\
                    file appendonly.aof.2.incr.aof seq 2 type i\n";
        let entries = parse_manifest(text).expect("a manifest");
        let roles: Vec<_> = entries.iter().map(|e| (e.file, e.role)).collect();
        assert_eq!(
            roles,
            [
                (AofFile::Base(2), Role::Base),
                (AofFile::Incr(1), Role::History),
                (AofFile::Base(1), Role::History),
                (AofFile::Incr(2), Role::Incr),
            ]
        );
        for bad in [
            "file appendonly.aof.2.base.rdb seq 3 type b\n",
            "file appendonly.aof.2.incr.aof seq 2 type b\n",
            "file ../../etc/passwd seq 1 type i\n",
            "file \"appendonly.aof.1.incr.aof\" seq 1 type i\n",
            "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.2.base.rdb seq 2 type b\n",
        ] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_list_history_then_base_then_increments_and_refuse_links() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let aof = tmp.path().join(AOF_DIR);
        std::fs::create_dir(&aof)?;
        std::fs::write(
            aof.join(MANIFEST),
            "file appendonly.aof.2.base.rdb seq 2 type b\n\
             file appendonly.aof.1.incr.aof seq 1 type h\n\
             file appendonly.aof.2.incr.aof seq 2 type i\n",
        )?;
        std::fs::write(aof.join("appendonly.aof.2.base.rdb"), b"REDIS")?;
        std::fs::write(aof.join("appendonly.aof.1.incr.aof"), b"abc")?;
        std::fs::write(aof.join("appendonly.aof.2.incr.aof"), b"")?;
        let listed: Vec<(String, u64)> =
            segments(tmp.path())?.into_iter().map(|s| (s.name, s.size)).collect();
        assert_eq!(
            listed,
            [
                ("appendonly.aof.1.incr.aof".into(), 3),
                ("appendonly.aof.2.base.rdb".into(), 5),
                ("appendonly.aof.2.incr.aof".into(), 0),
            ]
        );
        std::fs::remove_file(aof.join("appendonly.aof.1.incr.aof"))?;
        std::os::unix::fs::symlink("/etc/passwd", aof.join("appendonly.aof.1.incr.aof"))?;
        assert!(segments(tmp.path()).is_err(), "a link in a file's place");
        assert!(open(tmp.path(), "appendonly.aof.1.incr.aof").is_err());
        assert!(open(tmp.path(), "../appendonlydir/appendonly.aof.2.base.rdb").is_err());

        // The directory itself replaced by a link to another instance's.
        let other = tempfile::tempdir()?;
        std::fs::rename(&aof, other.path().join(AOF_DIR))?;
        std::os::unix::fs::symlink(other.path().join(AOF_DIR), &aof)?;
        assert!(open(tmp.path(), "appendonly.aof.2.base.rdb").is_err());
        Ok(())
    }

    #[test]
    fn a_scan_finds_the_first_mark_and_the_end_of_the_last_whole_entry() -> io::Result<()> {
        let set = |k: &str| format!("*3\r\n$3\r\nset\r\n${}\r\n{k}\r\n$1\r\nv\r\n", k.len());
        let whole = format!("#TS:100\r\n{}#TS:102\r\n{}", set("a"), set("bb"));
        let scan_of = |s: &str| scan(io::Cursor::new(s.as_bytes().to_vec()));
        assert_eq!(
            scan_of(&whole)?,
            Scan { complete: whole.len() as u64, first_mark: Some((0, 100)) }
        );
        // Cut anywhere inside the last command: the whole ones before it stand.
        let before_last = whole.len() - set("bb").len();
        for cut in before_last..whole.len() {
            assert_eq!(scan_of(&whole[..cut])?.complete, before_last as u64, "cut at {cut}");
        }
        // A value holding what looks like a mark is data, not a mark.
        let tricky = format!("{}{}", set("#TS:1"), "#TS:200\r\n");
        assert_eq!(scan_of(&tricky)?.first_mark, Some((set("#TS:1").len() as u64, 200)));
        assert!(scan_of("hello\r\n").is_err());
        assert_eq!(scan_of("")?, Scan::default());
        Ok(())
    }

    #[test]
    fn an_increment_that_starts_after_the_time_is_cut_to_nothing() {
        let scan = Scan { complete: 90, first_mark: Some((0, 105)) };
        assert_eq!(precut(&scan, 104), 0);
        assert_eq!(precut(&scan, 105), 90);
        let later = Scan { complete: 90, first_mark: Some((40, 105)) };
        assert_eq!(precut(&later, 104), 90, "the tool cuts at the mark itself");
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let header = AofHeader { until: 1_796_531_782, base_bytes: 108 };
        assert_eq!(AofHeader::parse(&header.line()), Ok(header));
        for bad in ["", "dormouse-aof 1 1 2", "dormouse-aof 2 1 2\n", "dormouse-aof 1 x 2\n"] {
            assert!(AofHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rewrites_follow_redis_defaults() {
        assert!(!rewrite_due(10, 20), "too small");
        assert!(rewrite_due(40 << 20, 40 << 20));
        assert!(!rewrite_due(100 << 20, 40 << 20), "increments smaller than the base");
    }

    #[test]
    fn the_admin_password_is_not_the_instances() {
        let derived = admin_password("hunter2");
        assert_eq!(derived.len(), 64);
        assert_ne!(derived, "hunter2");
        assert_eq!(derived, admin_password("hunter2"));
    }
}
