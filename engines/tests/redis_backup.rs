//! Backups of real `redis-server` instances through the local agent: a hot RDB snapshot and a
//! cold tar restore into other instances with their keys; a restore whose input breaks leaves
//! the old data; the data version moves only with writes.

mod support;

use std::sync::Arc;
use support::{BreaksAfter, FailsAfter, searchable_tempdir};

use dormouse_engines::backup::{Format, LogSegment};
use dormouse_engines::engine::Engine;
use dormouse_engines::redis::{INTERNAL_USER, RedisEngine};
use dormouse_engines::supervisor::RestartPolicy;
use dormouse_engines::{
    EngineKind, HostAgent, InstanceId, InstanceSpec, InstanceState, Limits, LocalAgent, Secret,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn spec() -> InstanceSpec {
    InstanceSpec {
        id: InstanceId::generate(),
        name: "cache".into(),
        engine: EngineKind::Redis,
        limits: Limits { memory_mb: 32, max_connections: 20 },
        password: Secret::generate(),
        port: 0,
    }
}

fn agent(root: &std::path::Path) -> anyhow::Result<LocalAgent> {
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect()?);
    Ok(LocalAgent::new(root, vec![redis], RestartPolicy::default())?)
}

/// Sends inline commands as the internal user and returns one reply line per command.
async fn run(
    agent: &LocalAgent,
    spec: &InstanceSpec,
    commands: &[&str],
) -> anyhow::Result<Vec<String>> {
    let port = agent.endpoint(&spec.id).ok_or_else(|| anyhow::anyhow!("not running"))?.port;
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("AUTH {INTERNAL_USER} {}\r\n", spec.password.expose()).as_bytes()).await?;
    anyhow::ensure!(lines.next_line().await?.as_deref() == Some("+OK"), "AUTH refused");
    let mut out = Vec::new();
    for c in commands {
        w.write_all(format!("{c}\r\n").as_bytes()).await?;
        let mut line = lines.next_line().await?.unwrap_or_default();
        if line.starts_with('$') && line != "$-1" {
            line = lines.next_line().await?.unwrap_or_default();
        }
        out.push(line);
    }
    Ok(out)
}

#[tokio::test]
async fn a_hot_redis_snapshot_restores_its_keys_into_another_instance() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (a, b) = (spec(), spec());
    agent.start(&a).await?;
    run(&agent, &a, &["SET k1 v1", "RPUSH list x y z", "SET k2 v2"]).await?;

    let mut bytes = Vec::new();
    let taken = agent.backup(&a, &mut bytes).await?;
    assert!(taken.hot && taken.format == Format::Rdb, "{taken:?}");
    assert_eq!(taken.bytes, bytes.len() as u64);
    assert!(bytes.starts_with(b"REDIS"), "an RDB file");
    let left: Vec<_> = std::fs::read_dir(tmp.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".backup"))
        .collect();
    assert!(left.is_empty(), "the backup's scratch directory is removed: {left:?}");
    // The server kept serving.
    assert_eq!(run(&agent, &a, &["GET k1"]).await?, ["v1"]);

    agent.restore(&b, Format::Rdb, &a.name, &mut &bytes[..]).await?;
    agent.start(&b).await?;
    assert_eq!(run(&agent, &b, &["GET k1", "GET k2", "LLEN list"]).await?, ["v1", "v2", ":3"]);
    // The restored data is the new instance's own: it survives a restart.
    run(&agent, &b, &["SET k3 v3"]).await?;
    agent.stop(&b.id).await?;
    agent.start(&b).await?;
    assert_eq!(run(&agent, &b, &["GET k3", "GET k1"]).await?, ["v3", "v1"]);
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_cold_redis_backup_reads_the_stopped_directory_without_starting_it() -> anyhow::Result<()>
{
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (a, b) = (spec(), spec());
    agent.start(&a).await?;
    run(&agent, &a, &["SET k v"]).await?;
    agent.stop(&a.id).await?;

    let mut bytes = Vec::new();
    let taken = agent.backup(&a, &mut bytes).await?;
    assert!(!taken.hot && taken.format == Format::Tar, "{taken:?}");
    assert_eq!(agent.state(&a.id), InstanceState::Stopped);
    assert!(taken.position.time > 0);
    assert!(agent.data_size(&a.id).await > 0);

    agent.restore(&b, Format::Tar, &a.name, &mut &bytes[..]).await?;
    assert_eq!(agent.state(&b.id), InstanceState::Stopped);
    agent.start(&b).await?;
    assert_eq!(run(&agent, &b, &["GET k"]).await?, ["v"]);
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_restore_whose_input_breaks_leaves_the_old_data() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (a, b) = (spec(), spec());
    agent.start(&a).await?;
    // Large enough that half a backup ends inside the data, not in a header.
    let big = format!("SET big {}", "x".repeat(32 * 1024));
    run(&agent, &a, &["SET k from-a", &big]).await?;
    agent.stop(&a.id).await?;
    let mut backup = Vec::new();
    agent.backup(&a, &mut backup).await?;

    agent.start(&b).await?;
    run(&agent, &b, &["SET k from-b"]).await?;
    let refused = agent.restore(&b, Format::Tar, &a.name, &mut &backup[..]).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("stop it first")));
    agent.stop(&b.id).await?;

    for format in [Format::Tar, Format::Rdb] {
        let limit = backup.len() / 2;
        let mut broken = BreaksAfter { data: backup.clone(), at: 0, limit };
        let err = agent.restore(&b, format, &a.name, &mut broken).await.expect_err("broken input");
        assert!(err.to_string().contains("connection reset"), "{format:?}: {err}");
    }
    let restoring = tmp.path().join(format!(".{}.restoring", b.id));
    assert!(!restoring.exists(), "the scratch directory is removed");
    agent.start(&b).await?;
    assert_eq!(run(&agent, &b, &["GET k"]).await?, ["from-b"]);
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_backup_whose_output_fails_is_an_error_not_a_short_copy() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let a = spec();
    agent.start(&a).await?;
    let big = format!("SET big {}", "x".repeat(32 * 1024));
    run(&agent, &a, &[&big]).await?;
    // (The snapshot compresses the value to a few hundred bytes.)
    let hot = agent.backup(&a, &mut FailsAfter { room: 100 }).await;
    assert!(hot.is_err_and(|e| e.to_string().contains("no space left")));
    // The server is none the worse.
    assert_eq!(run(&agent, &a, &["STRLEN big"]).await?, [":32768"]);
    agent.stop(&a.id).await?;
    let cold = agent.backup(&a, &mut FailsAfter { room: 100 }).await;
    assert!(cold.is_err_and(|e| e.to_string().contains("no space left")));
    assert_eq!(agent.state(&a.id), InstanceState::Stopped);
    Ok(())
}

#[tokio::test]
async fn the_redis_data_version_moves_with_writes_only() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let a = spec();
    agent.start(&a).await?;
    run(&agent, &a, &["SET k 1"]).await?;
    let before = agent.data_version(&a).await?;
    run(&agent, &a, &["GET k", "EXISTS k"]).await?;
    assert_eq!(agent.data_version(&a).await?, before, "reads change nothing");
    run(&agent, &a, &["SET k 2"]).await?;
    let after = agent.data_version(&a).await?;
    assert_ne!(after, before, "a write moves it");

    agent.stop(&a.id).await?;
    let stopped = agent.data_version(&a).await?;
    assert_eq!(agent.data_version(&a).await?, stopped);
    agent.start(&a).await?;
    run(&agent, &a, &["SET k 3"]).await?;
    agent.stop(&a.id).await?;
    assert_ne!(agent.data_version(&a).await?, stopped, "written while it ran");
    Ok(())
}

/// Sends one command as the agent's admin user and returns its reply line.
async fn admin(agent: &LocalAgent, spec: &InstanceSpec, command: &str) -> anyhow::Result<String> {
    use dormouse_engines::redis::pitr::{ADMIN_USER, admin_password};
    let port = agent.endpoint(&spec.id).ok_or_else(|| anyhow::anyhow!("not running"))?.port;
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let password = admin_password(spec.password.expose());
    w.write_all(format!("AUTH {ADMIN_USER} {password}\r\n{command}\r\n").as_bytes()).await?;
    anyhow::ensure!(lines.next_line().await?.as_deref() == Some("+OK"), "AUTH refused");
    Ok(lines.next_line().await?.unwrap_or_default())
}

/// Polls the agent's listing of the instance's log until `done` holds.
async fn listed_until(
    agent: &LocalAgent,
    spec: &InstanceSpec,
    done: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Vec<LogSegment>> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let segments = agent.closed_logs(spec).await?.segments;
        let names: Vec<String> = segments.iter().map(|s| s.name.clone()).collect();
        if done(&names) {
            return Ok(segments);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still listed: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_append_only_file_is_read_by_ranges_and_rewritten_files_stay_until_released()
-> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let a = spec();
    agent.start(&a).await?;
    run(&agent, &a, &["SET k1 v1"]).await?;
    // The increment being written is listed too: it is only ever appended to.
    let listed = listed_until(&agent, &a, |n| n.len() == 2).await?;
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["appendonly.aof.1.base.rdb", "appendonly.aof.1.incr.aof"]);
    assert!(listed.iter().all(|s| s.modified.is_some()), "{listed:?}");
    let first = listed[1].size;
    run(&agent, &a, &["SET k2 v2"]).await?;
    let grown = listed_until(&agent, &a, |_| true).await?[1].size;
    assert!(grown > first);
    let mut tail = Vec::new();
    agent.read_log(&a, "appendonly.aof.1.incr.aof", first, grown - first, &mut tail).await?;
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.contains("k2") && !tail.contains("k1"), "only the new bytes: {tail}");
    let mut whole = Vec::new();
    agent.read_log(&a, "appendonly.aof.1.incr.aof", 0, grown, &mut whole).await?;
    assert!(whole.starts_with(b"#TS:"), "stamped with its second");
    let short = agent.read_log(&a, "appendonly.aof.1.incr.aof", grown, 1, &mut Vec::new()).await;
    assert!(short.is_err(), "past the end is an error, not a short copy");
    let outside = agent.read_log(&a, "../redis.conf", 0, 1, &mut Vec::new()).await;
    assert!(outside.is_err());

    // A rewrite replaces base and increment; the server keeps them until they are archived.
    assert_eq!(
        admin(&agent, &a, "BGREWRITEAOF").await?,
        "+Background append only file rewriting started"
    );
    let listed = listed_until(&agent, &a, |n| n.iter().any(|n| n.contains(".2.base"))).await?;
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    // The replaced base was archived while it was the base: only its increment is listed.
    assert_eq!(
        names,
        ["appendonly.aof.1.incr.aof", "appendonly.aof.2.base.rdb", "appendonly.aof.2.incr.aof"]
    );
    let aof = tmp.path().join(a.id.as_str()).join("data/appendonlydir");
    let replaced = [aof.join("appendonly.aof.1.base.rdb"), aof.join("appendonly.aof.1.incr.aof")];
    // Half archived: kept.
    let mut partly = vec![listed[0].clone()];
    partly[0].size -= 1;
    agent.release_logs(&a, &partly).await?;
    assert_eq!(agent.closed_logs(&a).await?.segments.len(), 3);
    assert!(replaced.iter().all(|f| f.exists()));
    agent.release_logs(&a, &listed[..1]).await?;
    let left = listed_until(&agent, &a, |n| n.len() == 2).await?;
    assert!(left.iter().all(|s| s.name.contains(".2.")), "{left:?}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while replaced.iter().any(|f| f.exists()) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the replaced files stay");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(run(&agent, &a, &["GET k1", "GET k2"]).await?, ["v1", "v2"]);
    // Tenants cannot reach the admin user's commands.
    assert!(run(&agent, &a, &["BGREWRITEAOF"]).await?[0].starts_with("-NOPERM"));
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_archived_append_only_file_restores_cut_at_a_second() -> anyhow::Result<()> {
    use dormouse_engines::redis::pitr::AofHeader;
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let a = spec();
    agent.start(&a).await?;
    run(&agent, &a, &["SET k0 base"]).await?;
    let mut base = Vec::new();
    agent.backup(&a, &mut base).await?;
    agent.stop(&a.id).await?;
    let set = |k: &str| format!("*3\r\n$3\r\nSET\r\n$2\r\n{k}\r\n$1\r\nv\r\n");
    // Marked seconds 100 and 200, and a command the archive caught half written.
    let increments =
        format!("#TS:100\r\n{}#TS:200\r\n{}{}", set("k1"), set("k2"), &set("k3")[..20]);
    for (until, expected) in
        [(50, ["base", "", ""]), (150, ["base", "v", ""]), (300, ["base", "v", "v"])]
    {
        let b = spec();
        let header = AofHeader { until, base_bytes: base.len() as u64 }.line();
        let stream = [header.as_bytes(), &base, increments.as_bytes()].concat();
        agent.restore(&b, Format::Aof, &a.name, &mut &stream[..]).await?;
        agent.start(&b).await?;
        let got = run(&agent, &b, &["GET k0", "GET k1", "GET k2", "GET k3"]).await?;
        let got: Vec<&str> = got.iter().map(|v| if v == "$-1" { "" } else { v }).collect();
        assert_eq!(got[..3], expected, "until {until}");
        assert_eq!(got[3], "", "the torn command is dropped");
        agent.stop(&b.id).await?;
    }
    // A stream cut short is refused; nothing is restored.
    let b = spec();
    let header = AofHeader { until: 300, base_bytes: base.len() as u64 }.line();
    let short = [header.as_bytes(), &base[..base.len() / 2]].concat();
    assert!(agent.restore(&b, Format::Aof, &a.name, &mut &short[..]).await.is_err());
    agent.shutdown().await;
    Ok(())
}
