//! Tenants are kept from the host and from each other by how their servers run: each as a uid
//! of its own, in a private directory, under Landlock and its plan's cgroup limits. Even a
//! MySQL tenant that somehow holds every privilege (hole 1 of issue 17) cannot write a file
//! outside its instance directory or read another instance's files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dormouse_control::names::{DEFAULT_PLAN, plan};
use dormouse_engines::confine::cgroup;
use dormouse_engines::{HostAgent, InstanceId, InstanceState};
use dormouse_tests::Cluster;
use mysql_async::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The instance directory of a database: its server's socket lives in it.
async fn instance_dir(cluster: &Cluster, tenant_id: &str, db: &str) -> anyhow::Result<PathBuf> {
    let route = cluster.backend(tenant_id, db).await?;
    let socket = route.socket.ok_or_else(|| anyhow::anyhow!("{db} has no socket"))?;
    Ok(socket.parent().unwrap_or(Path::new("/")).to_owned())
}

/// The pid of the server running in `dir`.
fn server_pid(cluster: &Cluster, dir: &Path) -> anyhow::Result<u32> {
    let id = InstanceId::new(dir.file_name().unwrap_or_default().to_string_lossy())?;
    match cluster.running().agent.state(&id) {
        InstanceState::Running { pid, .. } => Ok(pid),
        other => anyhow::bail!("{id} is not running: {other:?}"),
    }
}

fn uid_of(pid: u32) -> anyhow::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    let uids: Vec<u32> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    anyhow::ensure!(uids.len() == 4 && uids.iter().all(|&u| u == uids[0]), "uids {uids:?}");
    Ok(uids[0])
}

/// Runs SQL as MariaDB's root over the server's Unix socket (root@localhost has no password
/// and only the socket reaches it).
async fn root_sql(dir: &Path, statement: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("mariadb")
        .args(["--no-defaults", "--batch", "--skip-column-names", "-u", "root", "-S"])
        .arg(dir.join("mysqld.sock"))
        .args(["-e", statement])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn servers_run_unprivileged_apart_and_within_their_plan() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    for (name, engine) in [("shop", "mysql"), ("stock", "mysql"), ("cache", "redis")] {
        cluster.database(&admin, name, engine).await?;
    }
    let limits = plan(DEFAULT_PLAN).ok_or_else(|| anyhow::anyhow!("no default plan"))?.limits;
    let mut uids = Vec::new();
    for db in ["shop", "stock", "cache"] {
        let dir = instance_dir(&cluster, &tenant_id, db).await?;
        let pid = server_pid(&cluster, &dir)?;
        let uid = uid_of(pid)?;
        assert_ne!(uid, 0, "{db} runs as root");
        let meta = std::fs::metadata(&dir)?;
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (uid, 0o700), "{db}");
        let (memory, pids) = cgroup::limits_of(pid)?;
        let memory = memory.ok_or_else(|| anyhow::anyhow!("{db} has no memory limit"))?;
        let plan_bytes = u64::from(limits.memory_mb) << 20;
        assert!(
            memory > plan_bytes + (32 << 20) && memory < 4 * plan_bytes + (512 << 20),
            "{db}: {memory}"
        );
        let pids = pids.ok_or_else(|| anyhow::anyhow!("{db} has no pids limit"))?;
        assert!((32..=u64::from(limits.max_connections) + 256).contains(&pids), "{db}: {pids}");
        uids.push(uid);
    }
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 3, "every server has a uid of its own");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_mysql_tenant_with_every_privilege_cannot_write_outside_its_directory()
-> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    let token = cluster.database(&admin, "shop", "mysql").await?["token"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cluster.database(&admin, "other", "mysql").await?;
    let dir = instance_dir(&cluster, &tenant_id, "shop").await?;
    let other = instance_dir(&cluster, &tenant_id, "other").await?;
    // What hole 1 gave a tenant: every privilege on every schema, FILE and SUPER included.
    root_sql(
        &dir,
        "GRANT ALL PRIVILEGES ON *.* TO 'dormouse'@'127.0.0.1', 'dormouse'@'localhost' \
         WITH GRANT OPTION",
    )
    .await?;

    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &token, false)).await?;
    let held: Vec<String> =
        conn.query("SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES").await?;
    assert!(held.iter().any(|p| p == "FILE") && held.iter().any(|p| p == "SUPER"), "{held:?}");

    // World-writable, so only the server's confinement stands in the way.
    let outside = tempfile::tempdir()?;
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o1777))?;
    let (out, other_path) = (outside.path().display(), other.display());
    let attempts = [
        format!("SELECT 'x' INTO OUTFILE '{out}/outfile'"),
        format!("SELECT 'x' INTO DUMPFILE '{other_path}/files/dumpfile'"),
        format!("SET GLOBAL general_log_file = '{out}/general.log'"),
        "SET GLOBAL general_log_file = '/etc/dormouse-general.log'".into(),
        "SET GLOBAL general_log = ON".into(),
        format!("SET GLOBAL slow_query_log_file = '{out}/slow.log'"),
        format!("SET GLOBAL slow_query_log_file = '{other_path}/slow.log'"),
        "SET GLOBAL slow_query_log = ON".into(),
        "SELECT SLEEP(0)".into(),
    ];
    for attempt in &attempts {
        // Each may fail or seem to work; what matters is that no file appears.
        let _ = conn.query_drop(attempt).await;
    }
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "a file appeared outside");
    assert!(!Path::new("/etc/dormouse-general.log").exists());
    assert!(!other.join("slow.log").exists() && !other.join("files/dumpfile").exists());

    for file in [other.join("my.cnf"), other.join("init.sql"), "/etc/shadow".into()] {
        let read: Option<Option<Vec<u8>>> =
            conn.query_first(format!("SELECT LOAD_FILE('{}')", file.display())).await?;
        assert_eq!(read, Some(None), "LOAD_FILE({}) read it", file.display());
    }
    drop(conn);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn redis_cannot_be_told_to_save_outside_its_directory() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    cluster.database(&admin, "cache", "redis").await?;
    let route = cluster.backend(&tenant_id, "cache").await?;
    let outside = tempfile::tempdir()?;
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o1777))?;

    // Straight to the server with the internal user's password, past the proxy.
    let stream = tokio::net::TcpStream::connect((route.host.as_str(), route.port)).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("AUTH {} {}\r\n", route.user, route.password.0).as_bytes()).await?;
    assert_eq!(lines.next_line().await?.as_deref(), Some("+OK"));
    for command in [format!("CONFIG SET dir {}", outside.path().display()), "SAVE".into()] {
        w.write_all(format!("{command}\r\n").as_bytes()).await?;
        let reply = lines.next_line().await?.unwrap_or_default();
        assert!(reply.starts_with('-'), "{command}: {reply}");
    }
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "a file appeared outside");
    cluster.stop().await;
    Ok(())
}
