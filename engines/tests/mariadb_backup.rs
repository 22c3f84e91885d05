//! Backups of real `mariadbd` instances through the local agent: a hot `mariadb-backup` stream
//! taken while writes go on, restored under another name with the tables moved into the new
//! schema; a cold tar of a stopped instance; a restore whose input breaks leaves the old data;
//! the data version moves only with writes.

mod support;

use std::sync::Arc;
use support::{BreaksAfter, FailsAfter, searchable_tempdir};

use dormouse_engines::backup::Format;
use dormouse_engines::engine::Engine;
use dormouse_engines::mariadb::MariaDbEngine;
use dormouse_engines::supervisor::RestartPolicy;
use dormouse_engines::{
    EngineKind, HostAgent, InstanceId, InstanceSpec, InstanceState, Limits, LocalAgent, Secret,
};

fn spec(name: &str) -> InstanceSpec {
    InstanceSpec {
        id: InstanceId::generate(),
        name: name.into(),
        engine: EngineKind::Mysql,
        limits: Limits { memory_mb: 16, max_connections: 20 },
        password: Secret::generate(),
        port: 0,
    }
}

fn agent(tmp: &std::path::Path) -> anyhow::Result<LocalAgent> {
    let engine: Arc<dyn Engine> = Arc::new(MariaDbEngine::detect(tmp.join("templates"))?);
    Ok(LocalAgent::new(tmp.join("instances"), vec![engine], RestartPolicy::default())?)
}

/// Runs SQL through the `mariadb` client as the internal user; returns its stdout.
async fn sql(agent: &LocalAgent, spec: &InstanceSpec, statement: &str) -> anyhow::Result<String> {
    let port = agent.endpoint(&spec.id).ok_or_else(|| anyhow::anyhow!("not running"))?.port;
    let out = tokio::process::Command::new("mariadb")
        .args(["--no-defaults", "-h", "127.0.0.1", "--batch", "--skip-column-names"])
        .args(["-u", "dormouse"])
        .arg(format!("-P{port}"))
        .arg(format!("-p{}", spec.password.expose()))
        .arg(&spec.name)
        .args(["-e", statement])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn a_hot_backup_taken_during_writes_restores_under_a_new_name() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (shop, copy) = (spec("shop"), spec("shop-copy"));
    agent.start(&shop).await?;
    sql(&agent, &shop, "CREATE TABLE items (id INT PRIMARY KEY, v TEXT)").await?;
    sql(&agent, &shop, "CREATE TABLE `odd``name` (x INT); INSERT INTO `odd``name` VALUES (7)")
        .await?;
    sql(&agent, &shop, "INSERT INTO items VALUES (1, 'one'), (2, 'two')").await?;

    // Writes from another connection go on while the backup runs.
    let writes = async {
        for i in 100..120 {
            sql(&agent, &shop, &format!("INSERT INTO items VALUES ({i}, 'later')")).await?;
        }
        anyhow::Ok(())
    };
    let mut bytes = Vec::new();
    let (taken, written) = tokio::join!(agent.backup(&shop, &mut bytes), writes);
    let taken = taken?;
    written?;
    assert!(taken.hot && taken.format == Format::Xbstream, "{taken:?}");
    assert_eq!(taken.bytes, bytes.len() as u64);
    assert!(taken.position.binlog_file.as_deref().is_some_and(|f| f.starts_with("binlog.")));
    assert!(taken.position.gtid.as_deref().is_some_and(|g| g.starts_with("0-1-")), "{taken:?}");

    agent.restore(&copy, Format::Xbstream, &shop.name, &mut &bytes[..]).await?;
    agent.start(&copy).await?;
    assert_eq!(
        sql(&agent, &copy, "SELECT v FROM items WHERE id <= 2 ORDER BY id").await?,
        "one\ntwo"
    );
    assert_eq!(sql(&agent, &copy, "SELECT x FROM `odd``name`").await?, "7");
    let later: u32 =
        sql(&agent, &copy, "SELECT COUNT(*) FROM items WHERE id >= 100").await?.parse()?;
    assert!(later <= 20, "{later}");
    // The old schema is gone, and the new one is the tenant's to write.
    sql(&agent, &copy, "INSERT INTO items VALUES (3, 'three')").await?;
    let schemas = sql(&agent, &copy, "SHOW DATABASES").await?;
    assert!(!schemas.lines().any(|s| s == "shop"), "{schemas}");
    // The source instance is untouched.
    assert_eq!(sql(&agent, &shop, "SELECT COUNT(*) FROM items").await?, "22");
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_cold_backup_of_a_stopped_instance_starts_no_server_and_restores() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (a, b) = (spec("app"), spec("app"));
    agent.start(&a).await?;
    sql(&agent, &a, "CREATE TABLE t (v INT); INSERT INTO t VALUES (42)").await?;
    agent.stop(&a.id).await?;

    let mut bytes = Vec::new();
    let taken = agent.backup(&a, &mut bytes).await?;
    assert!(!taken.hot && taken.format == Format::Tar, "{taken:?}");
    assert_eq!(agent.state(&a.id), InstanceState::Stopped);
    assert!(!tmp.path().join("instances").join(a.id.as_str()).join("mysqld.sock").exists());

    agent.restore(&b, Format::Tar, &a.name, &mut &bytes[..]).await?;
    agent.start(&b).await?;
    assert_eq!(sql(&agent, &b, "SELECT v FROM t").await?, "42");
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_broken_backup_or_restore_stream_fails_and_leaves_the_data_as_it_was()
-> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let (a, b) = (spec("app"), spec("app"));
    agent.start(&a).await?;
    // A backup whose output fails is an error, and the server keeps running.
    let failed = agent.backup(&a, &mut FailsAfter { room: 100_000 }).await;
    assert!(failed.is_err_and(|e| e.to_string().contains("no space left")));
    let mut bytes = Vec::new();
    agent.backup(&a, &mut bytes).await?;
    agent.start(&b).await?;
    sql(&agent, &b, "CREATE TABLE t (v INT); INSERT INTO t VALUES (1)").await?;
    agent.stop(&b.id).await?;

    let mut broken = BreaksAfter { limit: bytes.len() / 2, data: bytes, at: 0 };
    let err = agent.restore(&b, Format::Xbstream, &a.name, &mut broken).await.expect_err("broken");
    assert!(err.to_string().contains("connection reset"), "{err}");
    agent.start(&b).await?;
    assert_eq!(sql(&agent, &b, "SELECT v FROM t").await?, "1");
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_mariadb_data_version_moves_with_writes_only() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path())?;
    let a = spec("app");
    agent.start(&a).await?;
    sql(&agent, &a, "CREATE TABLE t (v INT)").await?;
    // Background work right after a start (purge, statistics) may move the log a little:
    // wait until two readings agree.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut before = agent.data_version(&a).await?;
    loop {
        sql(&agent, &a, "SELECT COUNT(*) FROM t").await?;
        let again = agent.data_version(&a).await?;
        if again == before {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never steady: {before} {again}");
        before = again;
    }
    sql(&agent, &a, "INSERT INTO t VALUES (1)").await?;
    assert_ne!(agent.data_version(&a).await?, before, "a write moves it");

    agent.stop(&a.id).await?;
    let stopped = agent.data_version(&a).await?;
    assert_eq!(agent.data_version(&a).await?, stopped);
    agent.start(&a).await?;
    sql(&agent, &a, "INSERT INTO t VALUES (2)").await?;
    agent.stop(&a.id).await?;
    assert_ne!(agent.data_version(&a).await?, stopped, "written while it ran");
    Ok(())
}
