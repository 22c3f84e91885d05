//! Servers run confined: each as a uid of its own in a private directory, under Landlock (even
//! a server user with every privilege cannot write outside its directory), no_new_privs,
//! cgroup limits from the plan and rlimits. Needs root, as CI and these machines run tests.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::searchable_tempdir;

use async_trait::async_trait;
use dormouse_engines::confine::{Resources, cgroup, owner};
use dormouse_engines::engine::{Engine, EngineError, Instance, Launch, ProbeError};
use dormouse_engines::mariadb::MariaDbEngine;
use dormouse_engines::redis::RedisEngine;
use dormouse_engines::supervisor::RestartPolicy;
use dormouse_engines::{
    EngineKind, HostAgent, InstanceId, InstanceSpec, InstanceState, Limits, LocalAgent, Secret,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn spec(engine: EngineKind) -> InstanceSpec {
    InstanceSpec {
        id: InstanceId::generate(),
        name: "app".into(),
        engine,
        limits: Limits { memory_mb: 16, max_connections: 20 },
        password: Secret::generate(),
        port: 0,
    }
}

fn running_pid(agent: &LocalAgent, id: &InstanceId) -> anyhow::Result<u32> {
    match agent.state(id) {
        InstanceState::Running { pid, .. } => Ok(pid),
        other => anyhow::bail!("not running: {other:?}"),
    }
}

/// A `Name:\tvalue` line of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))
}

/// The real, effective, saved and filesystem uids of a process.
fn uids(pid: u32) -> anyhow::Result<Vec<u32>> {
    Ok(status_field(pid, "Uid")?.split_whitespace().map(str::parse).collect::<Result<_, _>>()?)
}

/// The soft and hard limit of one line of /proc/PID/limits.
fn rlimit(pid: u32, name: &str) -> anyhow::Result<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_default();
    let mut values = line[name.len()..].split_whitespace();
    Ok((values.next().unwrap_or("").into(), values.next().unwrap_or("").into()))
}

#[tokio::test]
async fn each_server_runs_as_a_uid_of_its_own_in_a_private_directory() -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect()?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![redis], RestartPolicy::default())?;
    let (a, b) = (spec(EngineKind::Redis), spec(EngineKind::Redis));
    agent.start(&a).await?;
    agent.start(&b).await?;
    let (pa, pb) = (running_pid(&agent, &a.id)?, running_pid(&agent, &b.id)?);
    let (ua, ub) = (uids(pa)?, uids(pb)?);
    assert!(ua.iter().all(|&u| u == ua[0] && u >= owner::FIRST_UID), "{ua:?}");
    assert!(ub.iter().all(|&u| u == ub[0] && u >= owner::FIRST_UID), "{ub:?}");
    assert_ne!(ua[0], ub[0], "two instances share a uid");
    assert_eq!(status_field(pa, "Gid")?.split_whitespace().next(), Some(&*ua[0].to_string()));
    assert_eq!(status_field(pa, "Groups")?, "", "supplementary groups are dropped");
    assert_eq!(status_field(pa, "NoNewPrivs")?, "1");

    for (spec, uid) in [(&a, ua[0]), (&b, ub[0])] {
        let meta = std::fs::metadata(agent.instance_dir(&spec.id))?;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), uid);
        // Files the agent writes at every start are the server's too.
        assert_eq!(std::fs::metadata(agent.instance_dir(&spec.id).join("redis.conf"))?.uid(), uid);
    }
    let root_mode = std::fs::metadata(tmp.path().join("instances"))?.permissions().mode();
    assert_eq!(root_mode & 0o777, 0o711, "searchable, not listable");

    // An instance keeps its uid across restarts.
    agent.stop(&a.id).await?;
    agent.start(&a).await?;
    assert_eq!(uids(running_pid(&agent, &a.id)?)?[0], ua[0]);
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_agent_below_a_directory_closed_to_others_refuses_to_start() -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&closed)?;
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700))?;
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect()?);
    let Err(err) = LocalAgent::new(closed.join("instances"), vec![redis], RestartPolicy::default())
    else {
        anyhow::bail!("started below a 0700 directory")
    };
    let text = err.to_string();
    assert!(text.contains(&format!("{} (mode 700)", closed.display())), "{text}");
    assert!(text.contains("chmod o+x"), "{text}");
    Ok(())
}

#[tokio::test]
async fn cgroup_and_rlimits_follow_the_plan_and_the_cgroup_goes_with_the_server()
-> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let redis = RedisEngine::detect()?;
    let limits = Limits { memory_mb: 16, max_connections: 20 };
    let want = redis.resources(&limits);
    let agent = LocalAgent::new(tmp.path(), vec![Arc::new(redis)], RestartPolicy::default())?;
    let spec = InstanceSpec { limits, ..spec(EngineKind::Redis) };
    agent.start(&spec).await?;
    let pid = running_pid(&agent, &spec.id)?;

    let (memory, pids) = cgroup::limits_of(pid)?;
    assert_eq!(memory, Some(want.memory_bytes));
    assert_eq!(pids, Some(want.pids));
    assert_eq!(want.memory_bytes, (2 * 16 + 64) << 20);
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let ours = format!("/{}/{}", cgroup::PARENT, spec.id);
    assert!(membership.lines().filter(|l| l.ends_with(&ours)).count() >= 1, "{membership}");
    let files = want.open_files.to_string();
    assert_eq!(rlimit(pid, "Max open files")?, (files.clone(), files));
    assert_eq!(rlimit(pid, "Max processes")?.0, want.pids.to_string());

    agent.stop(&spec.id).await?;
    let leftover: Vec<PathBuf> = ["memory", "pids", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join(cgroup::PARENT).join(spec.id.as_str()))
        .filter(|p| p.exists())
        .collect();
    assert!(leftover.is_empty(), "cgroups left behind: {leftover:?}");
    Ok(())
}

/// Redis with an extra user holding every command, and protected configs (`dir`) settable:
/// what a tenant would have if it ever got past the internal user's ACL.
struct AdminRedis(RedisEngine);

const ADMIN_PASSWORD: &str = "admin-password-for-this-test";

#[async_trait]
impl Engine for AdminRedis {
    fn kind(&self) -> EngineKind {
        EngineKind::Redis
    }
    fn start_timeout(&self) -> Duration {
        self.0.start_timeout()
    }
    fn stop_timeout(&self) -> Duration {
        self.0.stop_timeout()
    }
    fn resources(&self, limits: &Limits) -> Resources {
        self.0.resources(limits)
    }
    async fn provision(&self, spec: &InstanceSpec, dir: &Path) -> Result<(), EngineError> {
        self.0.provision(spec, dir).await
    }
    async fn launch(&self, instance: &Instance) -> Result<Launch, EngineError> {
        let mut launch = self.0.launch(instance).await?;
        launch.args.extend(
            ["--enable-protected-configs", "yes", "--user", "admin", "on"]
                .into_iter()
                .chain([&*format!(">{ADMIN_PASSWORD}"), "~*", "&*", "+@all"])
                .map(Into::into),
        );
        Ok(launch)
    }
    async fn probe(&self, instance: &Instance) -> Result<(), ProbeError> {
        self.0.probe(instance).await
    }
    fn socket(&self, dir: &Path) -> Option<PathBuf> {
        self.0.socket(dir)
    }
}

/// Sends inline commands after `AUTH user password`; returns one reply line per command.
async fn redis(
    port: u16,
    user: &str,
    password: &str,
    commands: &[&str],
) -> anyhow::Result<Vec<String>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("AUTH {user} {password}\r\n").as_bytes()).await?;
    anyhow::ensure!(lines.next_line().await?.as_deref() == Some("+OK"), "AUTH failed");
    let mut out = Vec::new();
    for c in commands {
        w.write_all(format!("{c}\r\n").as_bytes()).await?;
        out.push(lines.next_line().await?.unwrap_or_default());
    }
    Ok(out)
}

#[tokio::test]
async fn a_redis_server_with_every_command_cannot_save_outside_its_directory() -> anyhow::Result<()>
{
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let engine: Arc<dyn Engine> = Arc::new(AdminRedis(RedisEngine::detect()?));
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![engine], RestartPolicy::default())?;
    let (a, b) = (spec(EngineKind::Redis), spec(EngineKind::Redis));
    let port = agent.start(&a).await?.endpoint.port;
    agent.start(&b).await?;
    // World-writable, so only the confinement stops the server.
    let outside = tempfile::tempdir()?;
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o1777))?;

    let replies = redis(
        port,
        "admin",
        ADMIN_PASSWORD,
        &["SET k v", &format!("CONFIG SET dir {}", outside.path().display()), "SAVE"],
    )
    .await?;
    assert_eq!(replies[0], "+OK");
    assert_eq!(replies[1], "+OK", "changing directory is not writing");
    assert!(replies[2].starts_with("-ERR"), "SAVE outside its directory: {replies:?}");
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "a file appeared outside");

    // Another instance's directory is not even reachable.
    let other = agent.instance_dir(&b.id).join("data");
    let replies =
        redis(port, "admin", ADMIN_PASSWORD, &[&format!("CONFIG SET dir {}", other.display())])
            .await?;
    assert!(replies[0].starts_with("-ERR"), "{replies:?}");
    agent.shutdown().await;
    Ok(())
}

/// Runs SQL as MariaDB's root over the instance's Unix socket (root@localhost has every
/// privilege and no password, and only the socket reaches it); returns stdout or the error.
async fn root_sql(socket: &Path, statement: &str) -> anyhow::Result<Result<String, String>> {
    let out = tokio::process::Command::new("mariadb")
        .args(["--no-defaults", "--batch", "--skip-column-names", "-u", "root", "-S"])
        .arg(socket)
        .args(["-e", statement])
        .output()
        .await?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    })
}

#[tokio::test]
async fn mariadb_root_cannot_write_outside_its_directory_or_read_another_instance()
-> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let engine: Arc<dyn Engine> = Arc::new(MariaDbEngine::detect(tmp.path().join("templates"))?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![engine], RestartPolicy::default())?;
    let (a, b) = (spec(EngineKind::Mysql), spec(EngineKind::Mysql));
    let socket = agent.start(&a).await?.endpoint.socket.expect("socket");
    agent.start(&b).await?;
    let (pa, pb) = (running_pid(&agent, &a.id)?, running_pid(&agent, &b.id)?);
    assert!(uids(pa)?[0] >= owner::FIRST_UID && uids(pa)?[0] != uids(pb)?[0]);
    let privileges = root_sql(&socket, "SHOW GRANTS").await?.map_err(anyhow::Error::msg)?;
    assert!(privileges.contains("ALL PRIVILEGES ON *.*"), "{privileges}");

    let outside = tempfile::tempdir()?;
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o1777))?;
    let out = outside.path().display().to_string();
    let other_dir = agent.instance_dir(&b.id);
    let other = other_dir.display().to_string();
    let attempts = [
        format!("SELECT 'x' INTO OUTFILE '{out}/outfile'"),
        format!("SELECT 'x' INTO OUTFILE '{other}/files/outfile'"),
        format!("SET GLOBAL general_log_file='{out}/general.log'; SET GLOBAL general_log=ON"),
        "SET GLOBAL general_log_file='/etc/dormouse-general.log'; SET GLOBAL general_log=ON".into(),
        format!("SET GLOBAL slow_query_log_file='{out}/slow.log'; SET GLOBAL slow_query_log=ON"),
        format!("SET GLOBAL slow_query_log_file='{other}/slow.log'; SET GLOBAL slow_query_log=ON"),
    ];
    for attempt in &attempts {
        let result = root_sql(&socket, attempt).await?;
        let on = root_sql(&socket, "SELECT @@general_log, @@slow_query_log").await?;
        assert!(result.is_err() || on == Ok("0\t0".into()), "{attempt}: {result:?}, {on:?}");
        root_sql(&socket, "SET GLOBAL general_log=OFF; SET GLOBAL slow_query_log=OFF").await?.ok();
    }
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "a file appeared outside");
    assert!(!Path::new("/etc/dormouse-general.log").exists());
    assert!(!other_dir.join("slow.log").exists() && !other_dir.join("files/outfile").exists());

    for file in [other_dir.join("my.cnf"), other_dir.join("data/ibdata1"), "/etc/passwd".into()] {
        let read = root_sql(&socket, &format!("SELECT LOAD_FILE('{}') IS NULL", file.display()))
            .await?
            .map_err(anyhow::Error::msg)?;
        assert_eq!(read, "1", "LOAD_FILE({}) returned data", file.display());
    }
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn links_a_server_left_in_its_directory_are_neither_followed_nor_handed_over()
-> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "these tests run as root");
    let tmp = searchable_tempdir()?;
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect()?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![redis], RestartPolicy::default())?;
    let spec = spec(EngineKind::Redis);
    agent.start(&spec).await?;
    agent.stop(&spec.id).await?;

    // What a subverted server could leave behind for the agent, which writes here as root.
    let host = tmp.path().join("host-files");
    std::fs::create_dir(&host)?;
    let (config, log, linked) = (host.join("config"), host.join("log"), host.join("linked"));
    for file in [&config, &log, &linked] {
        std::fs::write(file, "the host's\n")?;
    }
    let dir = agent.instance_dir(&spec.id);
    std::fs::remove_file(dir.join("redis.conf"))?;
    std::os::unix::fs::symlink(&config, dir.join("redis.conf"))?;
    std::fs::remove_file(dir.join("server.log"))?;
    std::os::unix::fs::symlink(&log, dir.join("server.log"))?;
    std::fs::hard_link(&linked, dir.join("extra"))?;

    agent.start(&spec).await?;
    for file in [&config, &log, &linked] {
        assert_eq!(std::fs::read_to_string(file)?, "the host's\n", "{}", file.display());
        assert_eq!(std::fs::metadata(file)?.uid(), 0, "{} was handed over", file.display());
    }
    assert!(std::fs::symlink_metadata(dir.join("redis.conf"))?.is_file());
    agent.shutdown().await;
    Ok(())
}
