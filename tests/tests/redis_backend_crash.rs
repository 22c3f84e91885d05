//! A database's `redis-server` killed under connected clients and restarted by its supervisor:
//! an idle client's next command runs on the restarted server; a command in flight gets an
//! error (it may have run, so it is never retried); state the dead server held for a client
//! (a transaction, subscriptions) is reported lost, never silently dropped.

use std::time::Duration;

use dormouse_engines::{HostAgent, InstanceState};
use dormouse_tests::resp::RawRedis;
use dormouse_tests::{Cluster, eventually};

const LOST: &[u8] = b"-ERR Dormouse: lost the connection to the database\r\n";

struct Setup {
    cluster: Cluster,
    token: String,
}

/// A tenant with a Redis database `cache`.
async fn setup() -> anyhow::Result<Setup> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    Ok(Setup { cluster, token })
}

impl Setup {
    /// A raw client logged in to `cache`.
    async fn client(&self) -> anyhow::Result<RawRedis> {
        let mut client = RawRedis::connect(self.cluster.redis_port()).await?;
        assert_eq!(client.call(&["AUTH", "cache", &self.token]).await?, b"+OK\r\n");
        Ok(client)
    }

    /// SIGKILLs the database's `redis-server` and waits until its supervisor reports a new
    /// one ready.
    async fn crash_and_wait_for_restart(&self) -> anyhow::Result<()> {
        let agent = self.cluster.running().agent.clone();
        let id = self.cluster.running().service.store().all_databases().await?[0].id.clone();
        let InstanceState::Running { pid, .. } = agent.state(&id) else {
            anyhow::bail!("the server is not running")
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)?;
        eventually(Duration::from_secs(30), "the server to be restarted", || {
            let state = agent.state(&id);
            async move {
                matches!(state, InstanceState::Running { pid: p, .. } if p != pid).then_some(())
            }
        })
        .await
    }
}

#[tokio::test]
async fn an_idle_client_runs_its_next_command_on_the_restarted_server() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut client = setup.client().await?;
    assert_eq!(client.call(&["SET", "before", "crash"]).await?, b"+OK\r\n");

    setup.crash_and_wait_for_restart().await?;

    // The same client connection works, on the new server, which has the acknowledged write.
    assert_eq!(client.call(&["GET", "before"]).await?, b"$5\r\ncrash\r\n");
    assert_eq!(client.call(&["SET", "after", "restart"]).await?, b"+OK\r\n");
    assert_eq!(client.call(&["GET", "after"]).await?, b"$7\r\nrestart\r\n");
    // A pipeline too.
    client.send(&[&["INCR", "n"], &["INCR", "n"], &["GET", "n"]]).await?;
    assert_eq!(client.frame().await?, b":1\r\n");
    assert_eq!(client.frame().await?, b":2\r\n");
    assert_eq!(client.frame().await?, b"$1\r\n2\r\n");
    setup.cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn idle_clients_survive_two_crashes_in_a_row() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut a = setup.client().await?;
    let mut b = setup.client().await?;
    for round in 0..2 {
        assert_eq!(a.call(&["PING"]).await?, b"+PONG\r\n", "round {round}");
        setup.crash_and_wait_for_restart().await?;
        assert_eq!(a.call(&["SET", "k", "a"]).await?, b"+OK\r\n", "round {round}");
        assert_eq!(b.call(&["GET", "k"]).await?, b"$1\r\na\r\n", "round {round}");
    }
    setup.cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_blocking_call_in_flight_gets_an_error_and_the_client_goes_on() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut client = setup.client().await?;
    client.send(&[&["BLPOP", "queue", "0"]]).await?;
    // The call is parked on the server once the server lists it as blocked.
    let mut observer = setup.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = observer.call(&["INFO", "clients"]).await?;
        if String::from_utf8_lossy(&info).contains("blocked_clients:1") {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the BLPOP never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    setup.crash_and_wait_for_restart().await?;

    assert_eq!(client.frame().await?, LOST, "the blocked call is failed, not retried");
    assert_eq!(client.call(&["RPUSH", "queue", "x"]).await?, b":1\r\n");
    assert_eq!(client.call(&["BLPOP", "queue", "0"]).await?, b"*2\r\n$5\r\nqueue\r\n$1\r\nx\r\n");
    setup.cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_transaction_open_at_the_crash_is_refused_until_it_ends() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut client = setup.client().await?;
    assert_eq!(client.call(&["MULTI"]).await?, b"+OK\r\n");
    assert_eq!(client.call(&["SET", "k", "queued"]).await?, b"+QUEUED\r\n");

    setup.crash_and_wait_for_restart().await?;

    // What the client meant for the transaction must not run outside it.
    let refused = client.call(&["SET", "k", "outside"]).await?;
    assert!(refused.starts_with(b"-ERR Dormouse: lost the connection"), "{refused:?}");
    let exec = client.call(&["EXEC"]).await?;
    assert!(exec.starts_with(b"-EXECABORT"), "{exec:?}");
    assert_eq!(client.call(&["GET", "k"]).await?, b"$-1\r\n", "nothing of it ran");
    // The next transaction runs on the restarted server.
    client.send(&[&["MULTI"], &["SET", "k", "v"], &["EXEC"]]).await?;
    assert_eq!(client.frame().await?, b"+OK\r\n");
    assert_eq!(client.frame().await?, b"+QUEUED\r\n");
    assert_eq!(client.frame().await?, b"*1\r\n+OK\r\n");
    setup.cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn watched_keys_lost_in_the_crash_fail_the_transaction() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut client = setup.client().await?;
    assert_eq!(client.call(&["WATCH", "k"]).await?, b"+OK\r\n");

    setup.crash_and_wait_for_restart().await?;

    let refused = client.call(&["MULTI"]).await?;
    assert!(refused.starts_with(b"-ERR Dormouse: lost the connection"), "{refused:?}");
    assert_eq!(client.call(&["UNWATCH"]).await?, b"+OK\r\n");
    assert_eq!(client.call(&["SET", "k", "v"]).await?, b"+OK\r\n");
    setup.cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_subscriber_is_disconnected_when_the_server_dies() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut subscriber = setup.client().await?;
    let confirmed = subscriber.call(&["SUBSCRIBE", "news"]).await?;
    assert!(confirmed.starts_with(b"*3\r\n$9\r\nsubscribe\r\n"), "{confirmed:?}");

    setup.crash_and_wait_for_restart().await?;

    // The subscription is gone with the server: the client is told by its connection closing
    // (its library reconnects and subscribes again), never left waiting for nothing.
    let next = subscriber.frame().await;
    let error = next.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("connection closed"), "{error}");
    setup.cluster.stop().await;
    Ok(())
}
