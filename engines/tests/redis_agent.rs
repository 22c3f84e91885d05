//! The local agent running real `redis-server` processes: start, readiness, crash restart,
//! stop with data kept, destroy, and a failing start.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::searchable_tempdir;

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
        name: "test".into(),
        engine: EngineKind::Redis,
        limits: Limits { memory_mb: 32, max_connections: 20 },
        password: Secret::generate(),
        port: 0,
    }
}

fn agent(root: &std::path::Path) -> LocalAgent {
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect().expect("redis-server installed"));
    LocalAgent::new(root, vec![redis], RestartPolicy::default()).expect("agent")
}

/// Sends inline commands as the internal user and returns one reply line per command.
async fn run(port: u16, password: &str, commands: &[&str]) -> std::io::Result<Vec<String>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut out = Vec::new();
    w.write_all(format!("AUTH {INTERNAL_USER} {password}\r\n").as_bytes()).await?;
    assert_eq!(lines.next_line().await?.as_deref(), Some("+OK"));
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
async fn redis_instance_starts_keeps_data_across_stop_and_is_destroyed() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path());
    let spec = spec();
    let ep = agent.start(&spec).await?.endpoint;
    let pw = spec.password.expose();
    assert_eq!(run(ep.port, pw, &["SET k v", "GET k"]).await?, ["+OK", "v"]);

    // The default user is off: an unauthenticated client cannot do anything.
    let mut raw = TcpStream::connect(("127.0.0.1", ep.port)).await?;
    raw.write_all(b"GET k\r\n").await?;
    let mut reply = String::new();
    BufReader::new(&mut raw).read_line(&mut reply).await?;
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
    // Admin commands are outside the internal user's ACL.
    assert!(run(ep.port, pw, &["CONFIG GET dir"]).await?[0].starts_with("-NOPERM"));

    agent.stop(&spec.id).await?;
    assert_eq!(agent.state(&spec.id), InstanceState::Stopped);
    assert!(TcpStream::connect(("127.0.0.1", ep.port)).await.is_err());

    let ep = agent.start(&spec).await?.endpoint;
    assert_eq!(run(ep.port, pw, &["GET k"]).await?, ["v"]);

    let dir = tmp.path().join(spec.id.as_str());
    assert!(dir.is_dir());
    agent.destroy(&spec.id).await?;
    assert!(!dir.exists());
    Ok(())
}

#[tokio::test]
async fn a_killed_redis_server_is_restarted() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = agent(tmp.path());
    let spec = spec();
    let ep = agent.start(&spec).await?.endpoint;
    run(ep.port, spec.password.expose(), &["SET k v"]).await?;
    let InstanceState::Running { pid, .. } = agent.state(&spec.id) else {
        anyhow::bail!("not running");
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let InstanceState::Running { pid: new_pid, .. } = agent.state(&spec.id)
            && new_pid != pid
        {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ep = agent.endpoint(&spec.id).expect("running");
    // The SET was followed by a kill -9 within a second: AOF `everysec` may not have it, so only
    // check that the restarted server answers.
    assert_eq!(run(ep.port, spec.password.expose(), &["PING"]).await?, ["+PONG"]);
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_server_that_cannot_start_fails_with_its_log() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let broken: Arc<dyn Engine> = Arc::new(RedisEngine::with_binary("/bin/false"));
    let policy = RestartPolicy { initial_backoff: Duration::from_millis(1), ..Default::default() };
    let agent = LocalAgent::new(tmp.path(), vec![broken], policy)?;
    let spec = spec();
    let err = agent.start(&spec).await.expect_err("cannot start");
    assert!(err.to_string().contains("exited during start"), "{err}");
    assert!(matches!(agent.state(&spec.id), InstanceState::Stopped));
    Ok(())
}

#[tokio::test]
async fn an_engine_this_host_lacks_is_refused() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let agent = LocalAgent::new(tmp.path(), vec![], RestartPolicy::default())?;
    let err = agent.start(&spec()).await.expect_err("no engine");
    assert_eq!(err.to_string(), "this host cannot run redis databases");
    Ok(())
}

#[tokio::test]
async fn a_warm_directory_is_claimed_and_refilled() -> anyhow::Result<()> {
    let tmp = searchable_tempdir()?;
    let redis: Arc<dyn Engine> = Arc::new(RedisEngine::detect()?);
    let agent =
        LocalAgent::new(tmp.path(), vec![redis], RestartPolicy::default())?.with_warm_pool(2);
    assert_eq!(agent.refill_warm_pool().await, 2);
    assert_eq!(agent.refill_warm_pool().await, 0, "already full");
    let spec = spec();
    let started = agent.start(&spec).await?;
    assert!(started.timing.warm, "claimed from the warm pool");
    assert!(!started.timing.already_running);
    let again = agent.start(&spec).await?;
    assert!(again.timing.already_running);
    assert_eq!(agent.refill_warm_pool().await, 1, "one made to replace the claimed one");
    run(started.endpoint.port, spec.password.expose(), &["SET k v"]).await?;
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_acl_is_rendered_again_at_every_start() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agent = agent(tmp.path());
    let spec = spec();
    let ep = agent.start(&spec).await?.endpoint;
    let pw = spec.password.expose();
    assert!(run(ep.port, pw, &["SWAPDB 0 1"]).await?[0].starts_with("-NOPERM"));

    // Whatever the file says now (edited, or left by an older version), a restart after a
    // crash starts from a freshly rendered one.
    let conf = tmp.path().join(spec.id.as_str()).join(dormouse_engines::redis::CONFIG_FILE);
    let loose = std::fs::read_to_string(&conf)?
        .lines()
        .map(|l| {
            if l.starts_with(&format!("user {INTERNAL_USER} ")) {
                l.split(" -").next().unwrap_or(l)
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&conf, loose)?;
    let InstanceState::Running { pid, .. } = agent.state(&spec.id) else {
        anyhow::bail!("not running");
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ep = loop {
        if let InstanceState::Running { pid: new_pid, .. } = agent.state(&spec.id)
            && new_pid != pid
            && let Some(ep) = agent.endpoint(&spec.id)
        {
            break ep;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let replies = run(ep.port, pw, &["SWAPDB 0 1", "SELECT 1", "INFO"]).await?;
    assert!(replies[0].starts_with("-NOPERM"), "{replies:?}");
    assert!(replies[1].starts_with("-ERR DB index is out of range"), "{replies:?}");
    assert!(replies[2].starts_with("-NOPERM"), "{replies:?}");
    agent.shutdown().await;
    Ok(())
}
