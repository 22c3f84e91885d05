//! The Redis driver: one `redis-server` per database, from a config file rendered at every
//! start. The `default` user is disabled; the proxy's internal ACL users, whose password only
//! the proxy knows, are the only ones admitted; the file holds that password only as a hash.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod pitr;

use crate::backup::{Format, LogSegment, Position, Taken};
use crate::confine::{Owner, Resources};
use crate::datadir;
use crate::engine::{Engine, EngineError, Instance, Launch, ProbeError, find_program, socket_path};
use crate::spec::{EngineKind, InstanceSpec, Limits};
use crate::tool;

/// The ACL user the proxy authenticates as for read-write tokens.
pub const INTERNAL_USER: &str = "dormouse";
/// The ACL user for read-only tokens: the server itself refuses their writes, from Lua too.
pub const READONLY_USER: &str = "dormouse_ro";
/// The ACL user that may run `INFO` and nothing else. The other users may not, so that a
/// script cannot read what the proxy filters out of `INFO` (paths, ports, pids, the kernel).
pub const INFO_USER: &str = "dormouse_info";

/// The ACL user backups take their snapshot as, over the replication protocol (`SYNC`), which
/// no tenant user may speak: it could read every key at once, and `REPLCONF` changes what
/// the server sends.
pub const BACKUP_USER: &str = "dormouse_backup";

/// Commands no tenant session may run, from Lua either, beyond the `@admin` category. Mirrors
/// what the proxy refuses (`proxy/src/redis/commands.rs`), so a script cannot get round it.
/// Names only from Redis 7.0: an unknown name in an ACL rule stops the server from starting.
const DENIED: &[&str] = &[
    "acl",
    "bgrewriteaof",
    "bgsave",
    "config",
    "debug",
    "failover",
    "latency",
    // Opens connections to any address: a port scanner, and a way to copy keys out.
    "migrate",
    "module",
    "monitor",
    "move",
    "pfdebug",
    "pfselftest",
    "psync",
    "replconf",
    "replicaof",
    "save",
    "shutdown",
    "slaveof",
    "slowlog",
    "swapdb",
    "sync",
    "client|caching",
    "client|getredir",
    "client|kill",
    "client|list",
    "client|no-evict",
    "client|pause",
    "client|reply",
    "client|tracking",
    "client|trackinginfo",
    "client|unblock",
    "client|unpause",
    // The allocator's build and run-time settings, the host's CPU count.
    "memory|malloc-stats",
    // The Lua debugger: it takes over the connection, and with SYNC blocks the server.
    "script|debug",
    // Answered by the proxy through [`INFO_USER`], filtered.
    "info",
];

/// What a read-only session may not run beyond the `@write` category: scripts that may
/// write, publishing, and what changes or kills the scripts other sessions run.
const READONLY_DENIED: &[&str] = &[
    "eval",
    "evalsha",
    "fcall",
    "publish",
    "spublish",
    "script|flush",
    "script|load",
    "script|kill",
    "function|kill",
];
/// Rendered configuration, in the instance directory.
pub const CONFIG_FILE: &str = "redis.conf";
/// Data (append-only file) lives here, apart from config and logs.
pub const DATA_DIR: &str = "data";
/// The Unix socket in the instance directory (which only the agent's user can enter).
pub const SOCKET_FILE: &str = "redis.sock";

/// Runs `redis-server` processes.
#[derive(Debug, Clone)]
pub struct RedisEngine {
    server: PathBuf,
}

impl RedisEngine {
    /// Finds `redis-server` on this host.
    pub fn detect() -> Result<Self, EngineError> {
        find_program("redis-server")
            .map(|server| Self { server })
            .ok_or(EngineError::NotInstalled { program: "redis-server", package: "redis-server" })
    }

    /// Uses the given binary, e.g. a stand-in that fails in tests.
    pub fn with_binary(server: impl Into<PathBuf>) -> Self {
        Self { server: server.into() }
    }
}

/// The configuration for one start. Choices a tenant would ask about:
/// - persistence: append-only file, fsync every second (at most a second of writes is lost
///   on a host crash; a clean stop loses nothing); no RDB snapshots (backups take their own);
/// - eviction: `noeviction`: this is a database, not a cache, so when `maxmemory` is reached
///   writes fail with an `OOM` error instead of silently dropping keys;
/// - access: loopback TCP and a Unix socket only its owner can open (mode 700, inside the
///   instance directory), `default` user off, the proxy's users as [`acl_users`] says;
/// - one numbered database (`databases 1`): a Dormouse database is its own server, so
///   `SELECT`, `MOVE`, `SWAPDB` and `COPY … DB` cannot reach data the proxy does not show;
/// - no `DEBUG` or `MODULE` commands, and `RESTORE` payloads checked before they are loaded;
/// - a backup's snapshot starts at once (`repl-diskless-sync-delay 0`) instead of waiting
///   5 s for more replicas that never come;
/// - point-in-time recovery (see [`pitr`]): a time mark in the append-only file every second,
///   rewrites started by the agent only, and replaced files kept until they are archived.
pub fn render_config(instance: &Instance) -> String {
    let dir = instance.dir.display();
    let limits = instance.spec.limits;
    let hash = hex_sha256(instance.spec.password.expose());
    let mut conf = String::new();
    let _ = write!(
        conf,
        "# Rendered by Dormouse at every start of instance {id}; edits are overwritten.\n\
         port {port}\n\
         bind 127.0.0.1\n\
         protected-mode yes\n\
         daemonize no\n\
         supervised no\n\
         pidfile {dir}/redis.pid\n\
         logfile \"\"\n\
         dir {dir}/{DATA_DIR}\n\
         save \"\"\n\
         appendonly yes\n\
         appendfsync everysec\n\
         aof-timestamp-enabled yes\n\
         auto-aof-rewrite-percentage 0\n\
         aof-disable-auto-gc yes\n\
         maxmemory {mem}mb\n\
         maxmemory-policy noeviction\n\
         maxclients {maxclients}\n\
         tcp-keepalive 60\n\
         databases 1\n\
         enable-debug-command no\n\
         enable-module-command no\n\
         enable-protected-configs no\n\
         sanitize-dump-payload yes\n\
         repl-diskless-sync-delay 0\n\
         {users}",
        id = instance.spec.id,
        users =
            acl_users(&hash, &hex_sha256(&pitr::admin_password(instance.spec.password.expose()))),
        port = instance.port,
        mem = limits.memory_mb,
        maxclients = limits.max_connections,
    );
    if let Some(socket) = socket_path(&instance.dir, SOCKET_FILE) {
        let _ = write!(conf, "unixsocket {}\nunixsocketperm 700\n", socket.display());
    }
    conf
}

/// The ACL, re-asserted at every start with the rest of the file (there is no ACL file, and
/// no session may run `ACL` or `CONFIG`, so nothing else can change it):
/// - `default`: off;
/// - [`INTERNAL_USER`]: every command but `@admin` and [`DENIED`];
/// - [`READONLY_USER`]: the same without `@write` and [`READONLY_DENIED`];
/// - [`INFO_USER`]: `INFO` only, and no keys or channels;
/// - [`BACKUP_USER`]: what `redis-cli --rdb` sends (`SYNC` and `REPLCONF`, `PSYNC`, `PING`);
/// - [`pitr::ADMIN_USER`]: `BGREWRITEAOF` and `CONFIG SET`, for the agent alone.
///
/// The first four share the instance's password (stored as its SHA-256 `hash`); the admin
/// user has its own (`admin_hash`). Rules apply to commands called from Lua and functions as
/// well, which the proxy cannot see.
pub fn acl_users(hash: &str, admin_hash: &str) -> String {
    let denied: String = DENIED.iter().map(|c| format!(" -{c}")).collect();
    let readonly: String = READONLY_DENIED.iter().map(|c| format!(" -{c}")).collect();
    format!(
        "user default off\n\
         user {INTERNAL_USER} on #{hash} ~* &* +@all -@admin{denied}\n\
         user {READONLY_USER} on #{hash} ~* &* +@all -@admin{denied} -@write{readonly}\n\
         user {INFO_USER} on #{hash} resetchannels -@all +info\n\
         user {BACKUP_USER} on #{hash} resetchannels -@all +sync +psync +replconf +ping\n\
         user {ADMIN_USER} on #{admin_hash} resetchannels -@all +bgrewriteaof +config|set +ping\n",
        ADMIN_USER = pitr::ADMIN_USER,
    )
}

fn hex_sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `AUTH user password` then `PING`, pipelined, as RESP arrays.
fn probe_request(password: &str) -> Vec<u8> {
    let mut req = Vec::new();
    for args in [&["AUTH", INTERNAL_USER, password][..], &["PING"][..]] {
        let _ = write!(ByteWriter(&mut req), "*{}\r\n", args.len());
        for a in args {
            let _ = write!(ByteWriter(&mut req), "${}\r\n{a}\r\n", a.len());
        }
    }
    req
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Reads the two replies to the probe. While loading its data Redis accepts connections and
/// answers `-LOADING`, so both replies must be read, or the probe would wait for its timeout.
async fn read_probe_replies(stream: &mut TcpStream) -> Result<(), ProbeError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        if lines.len() > 2 {
            let (auth, ping) = (lines[0].trim_ascii_end(), lines[1].trim_ascii_end());
            return match (auth, ping) {
                (b"+OK", b"+PONG") => Ok(()),
                (a, p) if a.starts_with(b"-LOADING") || p.starts_with(b"-LOADING") => {
                    Err(ProbeError::Loading)
                }
                (a, p) => Err(ProbeError::Unexpected(format!(
                    "{} / {}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(p)
                ))),
            };
        }
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Connect)?;
        if n == 0 {
            return Err(ProbeError::Unexpected("connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 4096 {
            return Err(ProbeError::Unexpected("oversized reply".into()));
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Redis
    }

    fn start_timeout(&self) -> Duration {
        // Loading a large append-only file is the slow part of a start.
        Duration::from_secs(60)
    }

    fn stop_timeout(&self) -> Duration {
        // Redis acts on SIGTERM at its next cron tick (100 ms) and then rewrites nothing
        // with AOF-only persistence; a long wait means it is stuck.
        Duration::from_secs(10)
    }

    /// Memory: `maxmemory` counts the data only; client and AOF buffers come on top, and an
    /// AOF rewrite forks a child whose copied pages count too (every page, at worst): twice
    /// the plan plus 64 MiB for the server itself (about 12 MiB resident when idle).
    /// Threads: the main one, three background ones and a forked rewrite; files: one per
    /// client plus the 32 Redis keeps for itself.
    fn resources(&self, limits: &Limits) -> Resources {
        const MIB: u64 = 1 << 20;
        Resources {
            memory_bytes: (2 * u64::from(limits.memory_mb) + 64) * MIB,
            pids: 64,
            open_files: u64::from(limits.max_connections) + 128,
        }
    }

    async fn provision(&self, _spec: &InstanceSpec, dir: &Path) -> Result<(), EngineError> {
        let data = dir.join(DATA_DIR);
        tokio::fs::create_dir_all(&data)
            .await
            .map_err(EngineError::io(format!("creating {}", data.display())))
    }

    fn socket(&self, dir: &Path) -> Option<PathBuf> {
        socket_path(dir, SOCKET_FILE)
    }

    async fn launch(&self, instance: &Instance) -> Result<Launch, EngineError> {
        let path = instance.dir.join(CONFIG_FILE);
        write_private(&path, render_config(instance).as_bytes())
            .await
            .map_err(EngineError::io(format!("writing {}", path.display())))?;
        Ok(Launch { program: self.server.clone(), args: vec![path.into_os_string()] })
    }

    async fn hot_backup(
        &self,
        instance: &Instance,
        scratch: &Path,
        owner: Option<Owner>,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<Taken, EngineError> {
        hot_backup(instance, scratch, owner, out).await
    }

    async fn unpack(
        &self,
        format: Format,
        input: &mut (dyn AsyncRead + Send + Unpin),
        data: &Path,
        owner: Option<Owner>,
    ) -> Result<(), EngineError> {
        match format {
            Format::Rdb => unpack_rdb(input, data, owner).await,
            Format::Aof => pitr::unpack(input, data, owner).await,
            Format::Xbstream | Format::Tar => Err(EngineError::Failed(format!(
                "a {} backup cannot be restored into a Redis database",
                format.as_str()
            ))),
        }
    }

    fn archives_open_log(&self) -> bool {
        true
    }

    fn log_segments(&self, data: &Path) -> std::io::Result<Vec<LogSegment>> {
        pitr::segments(data)
    }

    fn open_log(&self, data: &Path, name: &str) -> std::io::Result<std::fs::File> {
        pitr::open(data, name)
    }

    async fn release_logs(
        &self,
        instance: &Instance,
        archived: &[LogSegment],
    ) -> Result<(), EngineError> {
        pitr::release(instance, archived).await
    }

    async fn data_version(&self, instance: &Instance) -> Result<String, EngineError> {
        data_version(instance).await
    }

    async fn probe(&self, instance: &Instance) -> Result<(), ProbeError> {
        let attempt = async {
            let mut stream = TcpStream::connect(("127.0.0.1", instance.port))
                .await
                .map_err(ProbeError::Connect)?;
            stream
                .write_all(&probe_request(instance.spec.password.expose()))
                .await
                .map_err(ProbeError::Connect)?;
            read_probe_replies(&mut stream).await
        };
        tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .unwrap_or(Err(ProbeError::Timeout))
    }
}

/// Points a `redis-cli` command at the server on `port` as `user`, with the password in its
/// environment (never on its command line, which other users can read).
pub(crate) fn connect_cli<'a>(
    cmd: &'a mut tokio::process::Command,
    user: &str,
    instance: &Instance,
) -> &'a mut tokio::process::Command {
    cmd.env("REDISCLI_AUTH", instance.spec.password.expose())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(instance.port.to_string())
        .args(["--user", user])
}

pub(crate) fn redis_cli() -> Result<PathBuf, EngineError> {
    tool::require("redis-cli", "redis-tools")
}

/// An RDB snapshot over the replication protocol into a file of `scratch` (to stdout,
/// `redis-cli` 7.0 leaves the 40-byte end marker of a diskless transfer at the end), then
/// copied to `out`.
async fn hot_backup(
    instance: &Instance,
    scratch: &Path,
    owner: Option<Owner>,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<Taken, EngineError> {
    let file = scratch.join("dump.rdb");
    let log = scratch.join("redis-cli.log");
    let mut cmd = tool::command(&redis_cli()?, &log, owner)?;
    connect_cli(&mut cmd, BACKUP_USER, instance).arg("--rdb").arg(&file);
    tool::run(cmd, "redis-cli --rdb", &log).await?;
    let time = datadir::now();
    // Not following a link: the directory is the server's user's, like the tool's.
    let mut snapshot = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&file)
        .await
        .map_err(EngineError::io(format!("opening {}", file.display())))?;
    let bytes = datadir::copy_from_file(&mut snapshot, out)
        .await
        .map_err(EngineError::io("writing the backup"))?;
    out.flush().await.map_err(EngineError::io("writing the backup"))?;
    let position = Position { time, ..Position::default() };
    Ok(Taken { format: Format::Rdb, position, bytes, hot: true })
}

/// The one file of a restored append-only file: its base.
const AOF_BASE: &str = "appendonly.aof.1.base.rdb";
use pitr::{AOF_DIR, MANIFEST as AOF_MANIFEST};

/// Makes `data` a data directory holding the RDB read from `input` as the base of the
/// append-only file: with `appendonly yes`, a `dump.rdb` would be ignored and the server would
/// start empty. The file is checked with `redis-check-rdb` (as `owner`) when it is installed.
async fn unpack_rdb(
    input: &mut (dyn AsyncRead + Send + Unpin),
    data: &Path,
    owner: Option<Owner>,
) -> Result<(), EngineError> {
    let aof = data.join(AOF_DIR);
    tokio::fs::create_dir_all(&aof)
        .await
        .map_err(EngineError::io(format!("creating {}", aof.display())))?;
    let base = aof.join(AOF_BASE);
    let file = tokio::fs::File::create_new(&base)
        .await
        .map_err(EngineError::io(format!("creating {}", base.display())))?;
    let (_, file) = datadir::copy_into_file(input, file)
        .await
        .map_err(|e| EngineError::Failed(format!("reading the backup: {e}")))?;
    file.sync_all().await.map_err(EngineError::io(format!("writing {}", base.display())))?;
    let manifest = format!("file {AOF_BASE} seq 1 type b\n");
    tokio::fs::write(aof.join(AOF_MANIFEST), manifest)
        .await
        .map_err(EngineError::io("writing the append-only file's manifest"))?;
    if let Some(owner) = owner {
        let data = data.to_owned();
        tokio::task::spawn_blocking(move || crate::confine::owner::hand_over(&data, owner))
            .await
            .map_err(|e| EngineError::Failed(format!("handing the data over: {e}")))?
            .map_err(EngineError::io("giving the restored data to its server's user"))?;
    }
    if let Some(check) = find_program("redis-check-rdb") {
        let log = data.parent().unwrap_or(data).join("redis-check-rdb.log");
        let mut cmd = tool::command(&check, &log, owner)?;
        cmd.arg(&base);
        tool::run(cmd, "redis-check-rdb", &log).await?;
    }
    Ok(())
}

/// The server's run id (a restart may reset the counters) and the counters that move with
/// every write: changes since the last save and the append-only file's sizes.
async fn data_version(instance: &Instance) -> Result<String, EngineError> {
    let mut cmd = tokio::process::Command::new(redis_cli()?);
    connect_cli(&mut cmd, INFO_USER, instance).arg("INFO");
    let text = tool::output(cmd, "redis-cli INFO", None).await?;
    let fields = ["run_id", "rdb_changes_since_last_save", "aof_current_size", "aof_base_size"];
    let values: Vec<&str> = fields
        .iter()
        .map(|f| {
            text.lines()
                .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or("")
        })
        .collect();
    if values[0].is_empty() {
        return Err(EngineError::Failed(format!("unexpected INFO reply: {}", text.trim())));
    }
    Ok(values.join("/"))
}

/// Writes a file readable by its owner only, as a new file: the directory belongs to the
/// server, and a link it left in the file's place must not lead the agent to write elsewhere.
pub(crate) async fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_owned();
    let contents = contents.to_vec();
    tokio::task::spawn_blocking(move || {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        std::io::Write::write_all(&mut file, &contents)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{InstanceId, Limits, Secret};

    fn instance() -> Instance {
        Instance {
            spec: InstanceSpec {
                id: InstanceId::new("i-test").expect("valid id"),
                name: "test".into(),
                engine: EngineKind::Redis,
                limits: Limits { memory_mb: 64, max_connections: 50 },
                password: Secret::new("hunter2"),
                port: 0,
            },
            dir: PathBuf::from("/tmp/inst"),
            port: 7001,
        }
    }

    #[test]
    fn config_hides_the_password_and_locks_down_access() {
        let conf = render_config(&instance());
        assert!(!conf.contains("hunter2"));
        assert!(conf.contains(&format!("#{}", hex_sha256("hunter2"))));
        assert!(conf.contains("user default off\n"));
        assert!(conf.contains("databases 1\n"));
        assert!(conf.contains("sanitize-dump-payload yes\n"));
        // The ACL lives in this file, rendered at every start; no ACL file could outlive it.
        assert!(!conf.contains("aclfile"));
        assert!(conf.contains("-@admin"));
        assert!(conf.contains("port 7001\n"));
        assert!(conf.contains("bind 127.0.0.1\n"));
        assert!(conf.contains("maxmemory 64mb\n"));
        assert!(conf.contains("maxmemory-policy noeviction\n"));
        assert!(conf.contains("appendonly yes\n"));
        assert!(conf.contains("aof-timestamp-enabled yes\n"));
        assert!(conf.contains("aof-disable-auto-gc yes\n"));
        assert!(conf.contains("auto-aof-rewrite-percentage 0\n"));
        assert!(conf.contains("unixsocket /tmp/inst/redis.sock\nunixsocketperm 700\n"));
    }

    #[test]
    fn each_user_has_its_own_rules_and_the_same_hashed_password() {
        let users = acl_users("abc", "def");
        let line = |user: &str| {
            users
                .lines()
                .find(|l| l.starts_with(&format!("user {user} ")))
                .unwrap_or_default()
                .to_owned()
        };
        let (rw, ro, info) = (line(INTERNAL_USER), line(READONLY_USER), line(INFO_USER));
        for l in [&rw, &ro, &info] {
            assert!(l.contains(" on #abc "), "{l}");
        }
        for rule in [" -@admin", " -swapdb", " -move", " -migrate", " -info", " -client|kill"] {
            assert!(rw.contains(rule) && ro.contains(rule), "{rule}");
        }
        assert!(!rw.contains("-@write") && ro.contains(" -@write"));
        assert!(ro.contains(" -script|flush") && ro.contains(" -eval ") && !rw.contains("-eval"));
        assert!(info.ends_with(" resetchannels -@all +info"), "{info}");
        let backup = line(BACKUP_USER);
        assert!(backup.contains(" on #abc "), "{backup}");
        assert!(backup.ends_with(" resetchannels -@all +sync +psync +replconf +ping"), "{backup}");
        let admin = line(pitr::ADMIN_USER);
        assert!(admin.contains(" on #def ") && !admin.contains("#abc"), "{admin}");
        assert!(admin.ends_with(" -@all +bgrewriteaof +config|set +ping"), "{admin}");
        // Replication stays closed to the tenants' users.
        for rule in [" -sync", " -psync", " -replconf"] {
            assert!(rw.contains(rule) && ro.contains(rule), "{rule}");
        }
    }

    #[test]
    fn a_directory_too_deep_for_a_socket_gets_none() {
        let mut deep = instance();
        deep.dir = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
        assert!(!render_config(&deep).contains("unixsocket"));
        assert_eq!(RedisEngine { server: "x".into() }.socket(&deep.dir), None);
        assert!(RedisEngine { server: "x".into() }.socket(&instance().dir).is_some());
    }

    #[test]
    fn probe_is_two_resp_commands() {
        assert_eq!(
            probe_request("pw"),
            b"*3\r\n$4\r\nAUTH\r\n$8\r\ndormouse\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n"
        );
    }
}
