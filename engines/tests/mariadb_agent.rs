//! The local agent running real `mariadbd` processes from a template: the internal user logs
//! in to its schema, data survives a stop, a killed server is restarted, destroy removes all.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::searchable_tempdir;

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

/// Runs SQL through the `mariadb` client as the internal user; returns its stdout.
async fn sql(port: u16, spec: &InstanceSpec, statement: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "--batch",
            "--skip-column-names",
            "-u",
            "dormouse",
        ])
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
async fn a_mariadb_instance_keeps_its_data_restarts_after_a_crash_and_is_destroyed()
-> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let engine: Arc<dyn Engine> = Arc::new(MariaDbEngine::detect(tmp.path().join("templates"))?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![engine], RestartPolicy::default())?;
    let spec = spec("my-app");
    let ep = agent.start(&spec).await?.endpoint;

    assert_eq!(
        sql(ep.port, &spec, "SELECT DATABASE(), CURRENT_USER()").await?,
        "my-app\tdormouse@127.0.0.1"
    );
    let grants = sql(ep.port, &spec, "SHOW GRANTS").await?;
    assert!(grants.contains("GRANT ALL PRIVILEGES ON `my-app`.*"), "{grants}");
    assert!(!grants.contains("ON *.* TO") || grants.contains("GRANT USAGE ON *.*"), "{grants}");
    sql(ep.port, &spec, "CREATE TABLE t (v INT); INSERT INTO t VALUES (42)").await?;
    // Every change goes to the binary log, which tenants can neither read nor purge.
    for statement in ["SHOW BINARY LOGS", "PURGE BINARY LOGS BEFORE NOW()", "SHOW BINLOG EVENTS"] {
        let refused = sql(ep.port, &spec, statement).await.expect_err(statement).to_string();
        assert!(refused.contains("Access denied"), "{statement}: {refused}");
    }
    let binlog = tmp.path().join("instances").join(spec.id.as_str()).join("data/binlog.000001");
    assert!(binlog.is_file(), "binary logging is on");
    // Which does not keep tenants from writing routines and triggers (row format makes them
    // safe to log).
    sql(ep.port, &spec, "CREATE FUNCTION f() RETURNS INT RETURN 1").await?;
    sql(ep.port, &spec, "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.v = NEW.v")
        .await?;

    agent.stop(&spec.id).await?;
    let ep = agent.start(&spec).await?.endpoint;
    assert_eq!(sql(ep.port, &spec, "SELECT v FROM t").await?, "42");

    let InstanceState::Running { pid, .. } = agent.state(&spec.id) else {
        anyhow::bail!("not running")
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let InstanceState::Running { pid: p, port, .. } = agent.state(&spec.id)
            && p != pid
        {
            break port;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Committed with innodb_flush_log_at_trx_commit=1: survives the kill.
    assert_eq!(sql(port, &spec, "SELECT v FROM t").await?, "42");

    let dir = tmp.path().join("instances").join(spec.id.as_str());
    agent.destroy(&spec.id).await?;
    assert!(!dir.exists());
    Ok(())
}

#[tokio::test]
async fn instances_of_one_template_are_independent() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let engine = Arc::new(MariaDbEngine::detect(tmp.path().join("templates"))?);
    engine.prepare().await?;
    let agent = LocalAgent::new(
        tmp.path().join("instances"),
        vec![engine as Arc<dyn Engine>],
        RestartPolicy::default(),
    )?;
    let (a, b) = (spec("alpha"), spec("beta"));
    let (ea, eb) = (agent.start(&a).await?.endpoint, agent.start(&b).await?.endpoint);
    sql(ea.port, &a, "CREATE TABLE only_here (x INT)").await?;
    assert_eq!(sql(eb.port, &b, "SHOW TABLES").await?, "");
    // One instance's password does not open the other.
    assert!(
        sql(eb.port, &InstanceSpec { name: "beta".into(), ..a.clone() }, "SELECT 1").await.is_err()
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_setup_fails_the_start_at_once_with_the_servers_reason() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine: Arc<dyn Engine> = Arc::new(MariaDbEngine::detect(tmp.path().join("templates"))?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![engine], RestartPolicy::default())?;
    // Control refuses this name; here it stands for any setup statement the server rejects.
    let spec = spec("information_schema");
    let started = std::time::Instant::now();
    let e = agent.start(&spec).await.expect_err("cannot grant on information_schema");
    let reason = e.to_string();
    assert!(reason.contains("setup failed") && reason.contains("1044"), "{reason}");
    // Not the 120 s start deadline, and not restarted.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(matches!(agent.state(&spec.id), InstanceState::Stopped | InstanceState::Failed { .. }));
    Ok(())
}

#[tokio::test]
async fn a_changed_internal_password_is_repaired_on_the_running_server() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let engine: Arc<dyn Engine> = Arc::new(MariaDbEngine::detect(tmp.path().join("templates"))?);
    let agent =
        LocalAgent::new(tmp.path().join("instances"), vec![engine], RestartPolicy::default())?;
    let spec = spec("my_app");
    let ep = agent.start(&spec).await?.endpoint;
    sql(ep.port, &spec, "SET PASSWORD = PASSWORD('stolen')").await?;
    assert!(sql(ep.port, &spec, "SELECT 1").await.is_err(), "the password changed");
    agent.repair_access(&spec.id).await?;
    assert_eq!(sql(ep.port, &spec, "SELECT 1").await?, "1");
    let grants = sql(ep.port, &spec, "SHOW GRANTS").await?;
    assert!(grants.contains("`my\\\\_app`.*"), "{grants}");
    agent.destroy(&spec.id).await?;
    Ok(())
}
