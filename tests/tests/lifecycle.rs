//! Scale to zero and back: idle databases are suspended, clients of both engines wake them
//! without seeing an error, concurrent clients cause one wake, a failing wake is reported
//! quickly to every waiting client with the server's reason and spaced out, and a suspended
//! database survives a restart. A database behind a remote proxy is drained before it is
//! suspended, so a session opened there on a cached route keeps it awake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dormouse_engines::{EngineKind, HostAgent, InstanceState};
use dormouse_proxy::control::{ControlError, ControlPlane, HttpControl, REPORT_EVERY};
use dormouse_proxy::{Proxy, ProxyConfig};
use dormouse_tests::{Cluster, eventually, stdout};
use mysql_async::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A cluster that looks for idle databases every 100 ms.
async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(|config| config.idle_check_every = Duration::from_millis(100)).await
}

async fn create(cluster: &Cluster, admin: &str, body: Value) -> anyhow::Result<String> {
    let r = cluster.api(Method::POST, "/v1/databases", Some(admin), Some(body)).await?;
    anyhow::ensure!(r.status == 201, "{r:?}");
    Ok(r.body["token"]["token"].as_str().unwrap_or_default().to_owned())
}

async fn status(cluster: &Cluster, admin: &str, name: &str) -> anyhow::Result<Value> {
    Ok(cluster.api(Method::GET, &format!("/v1/databases/{name}"), Some(admin), None).await?.body)
}

async fn wait_for_status(
    cluster: &Cluster,
    admin: &str,
    name: &str,
    want: &str,
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), &format!("{name} to be {want}"), || async {
        let body = status(cluster, admin, name).await.ok()?;
        (body["status"] == want).then_some(())
    })
    .await
}

async fn suspend(cluster: &Cluster, admin: &str, name: &str) -> anyhow::Result<()> {
    let r = cluster
        .api(Method::POST, &format!("/v1/databases/{name}/suspend"), Some(admin), None)
        .await?;
    anyhow::ensure!(r.status == 200 && r.body["status"] == "suspended", "{r:?}");
    Ok(())
}

fn instance_state(cluster: &Cluster, name: &str) -> InstanceState {
    let service = &cluster.running().service;
    let dbs = futures::executor::block_on(service.store().all_databases()).unwrap_or_default();
    match dbs.into_iter().find(|d| d.name == name) {
        Some(db) => cluster.running().agent.state(&db.id),
        None => InstanceState::Stopped,
    }
}

#[tokio::test]
async fn databases_run_when_the_data_directory_is_too_deep_for_socket_paths() -> anyhow::Result<()>
{
    // Unix socket addresses hold 107 bytes; the instances' sockets would be longer here.
    let cluster = Cluster::start_in(&"deep-".repeat(20), |_| {}).await?;
    let admin = cluster.tenant("acme").await?;
    let mysql = create(&cluster, &admin, json!({ "name": "shop", "engine": "mysql" })).await?;
    let redis = create(&cluster, &admin, json!({ "name": "kv", "engine": "redis" })).await?;
    let mut conn = mysql_async::Conn::new(cluster.mysql_opts("shop", &mysql, false)).await?;
    // The proxy reaches the server over TCP instead.
    let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await?;
    assert_eq!(user.as_deref(), Some("dormouse@127.0.0.1"));
    conn.disconnect().await?;
    let out = cluster.redis_cli(Some("kv"), Some(&redis), &["SET", "k", "v"]).await?;
    assert_eq!(stdout(&out), "OK");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_idle_database_is_suspended_and_a_client_gets_its_data_back() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let token = create(
        &cluster,
        &admin,
        json!({"name": "cache", "engine": "redis", "idle_timeout_seconds": 1}),
    )
    .await?;
    assert_eq!(
        stdout(&cluster.redis_cli(Some("cache"), Some(&token), &["SET", "k", "kept"]).await?),
        "OK"
    );

    wait_for_status(&cluster, &admin, "cache", "suspended").await?;
    assert_eq!(instance_state(&cluster, "cache"), InstanceState::Stopped, "its server is stopped");

    let out = cluster.redis_cli(Some("cache"), Some(&token), &["GET", "k"]).await?;
    assert_eq!(stdout(&out), "kept", "{out:?}");
    let shown = status(&cluster, &admin, "cache").await?;
    assert_eq!(shown["status"], "running");
    assert!(shown["last_wake_ms"].as_u64().is_some(), "{shown}");

    let raw =
        reqwest::get(format!("{}/metrics", cluster.running().api_url())).await?.text().await?;
    assert!(raw.contains("dormouse_wake_seconds_bucket{"), "{raw}");
    assert!(raw.contains("dormouse_suspends_total{engine=\"redis\"} 1"), "{raw}");
    assert!(raw.contains("dormouse_wakes_total{"), "{raw}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_database_in_use_is_not_suspended_and_zero_means_never() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let token = create(
        &cluster,
        &admin,
        json!({"name": "busy", "engine": "redis", "idle_timeout_seconds": 1}),
    )
    .await?;
    let never = create(
        &cluster,
        &admin,
        json!({"name": "never", "engine": "redis", "idle_timeout_seconds": 0}),
    )
    .await?;
    let client = redis::Client::open(cluster.redis_url("busy", &token))?;
    let mut held = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut held).await?;
    let _ = never;

    // Three idle timeouts pass while a client stays connected (and "never" has no clients).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&cluster, &admin, "busy").await?["status"], "running");
    assert_eq!(status(&cluster, &admin, "never").await?["status"], "running");
    let v: String = redis::cmd("GET").arg("k").query_async(&mut held).await?;
    assert_eq!(v, "v");

    drop(held);
    drop(client);
    wait_for_status(&cluster, &admin, "busy", "suspended").await?;

    // The timeout can be changed later.
    let r = cluster
        .api(
            Method::PATCH,
            "/v1/databases/never",
            Some(&admin),
            Some(json!({"idle_timeout_seconds": 1})),
        )
        .await?;
    assert_eq!(r.body["idle_timeout_seconds"], 1, "{r:?}");
    wait_for_status(&cluster, &admin, "never", "suspended").await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn stock_clients_of_both_engines_wake_a_suspended_database_without_an_error()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let redis_token = create(&cluster, &admin, json!({"name": "cache", "engine": "redis"})).await?;
    let mysql_token = create(&cluster, &admin, json!({"name": "shop", "engine": "mysql"})).await?;
    cluster.redis_cli(Some("cache"), Some(&redis_token), &["SET", "k", "v"]).await?;
    cluster
        .mariadb("shop", &mysql_token, &["-e", "CREATE TABLE t (v INT); INSERT INTO t VALUES (7)"])
        .await?;

    // redis-cli, then the redis crate over RESP3.
    suspend(&cluster, &admin, "cache").await?;
    assert_eq!(
        stdout(&cluster.redis_cli(Some("cache"), Some(&redis_token), &["GET", "k"]).await?),
        "v"
    );
    suspend(&cluster, &admin, "cache").await?;
    let client = redis::Client::open(
        format!("{}?protocol=resp3", cluster.redis_url("cache", &redis_token)).as_str(),
    )?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let v: String = redis::cmd("GET").arg("k").query_async(&mut con).await?;
    assert_eq!(v, "v");

    // The mariadb CLI, mysql_async (with and without TLS) and PyMySQL.
    suspend(&cluster, &admin, "shop").await?;
    let out = cluster.mariadb("shop", &mysql_token, &["-e", "SELECT v FROM t"]).await?;
    assert_eq!(stdout(&out), "v\n7", "{out:?}");
    for tls in [false, true] {
        suspend(&cluster, &admin, "shop").await?;
        let mut conn =
            mysql_async::Conn::new(cluster.mysql_opts("shop", &mysql_token, tls)).await?;
        let v: Option<i32> = conn.query_first("SELECT v FROM t").await?;
        assert_eq!(v, Some(7));
        conn.disconnect().await?;
    }
    suspend(&cluster, &admin, "shop").await?;
    let script = "import os, pymysql\n\
        c = pymysql.connect(host='127.0.0.1', port=int(os.environ['PORT']), user='shop', password=os.environ['TOKEN'], database='shop')\n\
        cur = c.cursor(); cur.execute('SELECT v FROM t'); print(cur.fetchone()[0])";
    let out = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .env("PORT", cluster.mysql_port().to_string())
        .env("TOKEN", &mysql_token)
        .output()
        .await?;
    assert_eq!(stdout(&out), "7", "{}", String::from_utf8_lossy(&out.stderr));
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_clients_cause_one_wake_per_engine() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let redis_token = create(&cluster, &admin, json!({"name": "cache", "engine": "redis"})).await?;
    let mysql_token = create(&cluster, &admin, json!({"name": "shop", "engine": "mysql"})).await?;
    let metrics = || &cluster.running().service;

    suspend(&cluster, &admin, "cache").await?;
    let before = metrics().metrics().wakes_ok(EngineKind::Redis);
    let url = cluster.redis_url("cache", &redis_token);
    let clients = (0..50).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(url.as_str())?;
            let mut con = client.get_multiplexed_async_connection().await?;
            redis::cmd("INCR").arg("n").query_async::<i64>(&mut con).await.map(|_| i)
        })
    });
    for c in futures::future::join_all(clients).await {
        c??;
    }
    assert_eq!(metrics().metrics().wakes_ok(EngineKind::Redis), before + 1);

    suspend(&cluster, &admin, "shop").await?;
    let before = metrics().metrics().wakes_ok(EngineKind::Mysql);
    let clients = (0..50).map(|_| {
        let opts = cluster.mysql_opts("shop", &mysql_token, false);
        tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let one: Option<i32> = conn.query_first("SELECT 1").await?;
            conn.disconnect().await?;
            anyhow::Ok(one)
        })
    });
    for c in futures::future::join_all(clients).await {
        assert_eq!(c??, Some(1));
    }
    assert_eq!(metrics().metrics().wakes_ok(EngineKind::Mysql), before + 1);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_wake_reaches_every_waiting_client_with_the_servers_reason_and_is_not_retried_at_once()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let token = create(&cluster, &admin, json!({"name": "cache", "engine": "redis"})).await?;
    cluster.redis_cli(Some("cache"), Some(&token), &["SET", "k", "v"]).await?;
    suspend(&cluster, &admin, "cache").await?;

    // Break its data so redis-server refuses to start.
    let id = cluster.running().service.store().all_databases().await?[0].id.clone();
    let manifest = cluster
        .data_dir()
        .join("instances")
        .join(id.as_str())
        .join("data/appendonlydir/appendonly.aof.manifest");
    let original = std::fs::read(&manifest)?;
    std::fs::write(&manifest, "not a manifest\n")?;

    // redis-cli prints the server's own error text (client libraries tend to replace it).
    let said = |out: std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let started = Instant::now();
    let clients = (0..10).map(|_| cluster.redis_cli(Some("cache"), Some(&token), &["GET", "k"]));
    for out in futures::future::join_all(clients).await {
        let said = said(out?);
        assert!(said.contains("database 'cache' could not be started"), "{said}");
        // What redis-server logged about the manifest, not a generic failure.
        assert!(said.to_lowercase().contains("manifest"), "{said}");
        assert!(said.contains("1 failed start in a row"), "one start for all ten: {said}");
        assert!(said.contains("`dormouse db resume cache`"), "{said}");
        assert!(!said.contains("try again;") && !said.ends_with("try again"), "{said}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let shown = status(&cluster, &admin, "cache").await?;
    assert_eq!(shown["status"], "suspended");
    assert_eq!(shown["last_error"]["failed_starts"], 1, "{shown}");
    assert!(shown["last_error"]["reason"].as_str().is_some_and(|r| r.contains("anifest")));

    // Repaired, a client's connection does not restart it before its retry time.
    std::fs::write(&manifest, original)?;
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["GET", "k"]).await?;
    let said = said(out);
    assert!(said.contains("connections try again in"), "{said}");
    assert_eq!(status(&cluster, &admin, "cache").await?["last_error"]["failed_starts"], 1);

    // Its owner's resume starts it at once, and clears the failure.
    let r = cluster.api(Method::POST, "/v1/databases/cache/resume", Some(&admin), None).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "running");
    assert!(r.body["last_error"].is_null(), "{r:?}");
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["GET", "k"]).await?;
    assert_eq!(stdout(&out), "v", "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_suspended_database_stays_asleep_across_a_restart_and_wakes_after() -> anyhow::Result<()>
{
    let mut cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let token = create(&cluster, &admin, json!({"name": "shop", "engine": "mysql"})).await?;
    cluster
        .mariadb("shop", &token, &["-e", "CREATE TABLE t (v INT); INSERT INTO t VALUES (1)"])
        .await?;
    suspend(&cluster, &admin, "shop").await?;

    cluster.restart().await?;
    assert_eq!(status(&cluster, &admin, "shop").await?["status"], "suspended");
    assert_eq!(instance_state(&cluster, "shop"), InstanceState::Stopped);
    let out = cluster.mariadb("shop", &token, &["-e", "SELECT v FROM t"]).await?;
    assert_eq!(stdout(&out), "v\n1", "{out:?}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_lazy_database_is_provisioned_by_its_first_client() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let admin = cluster.tenant("acme").await?;
    let token =
        create(&cluster, &admin, json!({"name": "later", "engine": "redis", "lazy": true})).await?;
    assert_eq!(status(&cluster, &admin, "later").await?["status"], "suspended");
    let id = cluster.running().service.store().all_databases().await?[0].id.clone();
    assert!(
        !cluster.data_dir().join("instances").join(id.as_str()).exists(),
        "nothing provisioned yet"
    );

    assert_eq!(stdout(&cluster.redis_cli(Some("later"), Some(&token), &["PING"]).await?), "PONG");
    assert_eq!(status(&cluster, &admin, "later").await?["status"], "running");
    cluster.stop().await;
    Ok(())
}

/// A proxy of its own beside the cluster, as `dormouse proxy` runs on a fleet: it asks control's
/// HTTP API for routes, caches them for `route_ttl`, and reports its sessions every second.
async fn remote_proxy(
    cluster: &Cluster,
    keys_dir: &std::path::Path,
    route_ttl: Duration,
) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    let control = Arc::new(HttpControl::new(cluster.running().api_url(), cluster.admin_token()));
    let config = ProxyConfig { route_ttl, ..ProxyConfig::ephemeral(keys_dir) };
    let proxy = Proxy::bind(config, control.clone()).await?;
    let addr = proxy.redis_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(control.report_activity(REPORT_EVERY, route_ttl, shutdown.clone()));
    tokio::spawn(proxy.run(shutdown.clone()));
    Ok((addr, shutdown))
}

#[tokio::test]
async fn a_session_on_a_remote_proxys_cached_route_keeps_an_idle_database_awake()
-> anyhow::Result<()> {
    let cluster = cluster().await?;
    let (admin, tenant_id) = cluster.tenant_with_id("acme").await?;
    let keys = tempfile::tempdir()?;
    let (edge, stop_edge) = remote_proxy(&cluster, keys.path(), Duration::from_secs(5)).await?;
    let token = create(
        &cluster,
        &admin,
        json!({"name": "cache", "engine": "redis", "idle_timeout_seconds": 1}),
    )
    .await?;
    let client = redis::Client::open(format!("redis://cache:{token}@{edge}/"))?;

    // A first client makes the remote proxy cache the route, and leaves.
    let mut first = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut first).await?;
    drop(first);

    // Idle, the database is drained before it is suspended: control answers route lookups
    // with "asleep" while its server keeps running.
    let control = HttpControl::new(cluster.running().api_url(), cluster.admin_token());
    eventually(Duration::from_secs(10), "cache to drain", || async {
        matches!(control.route(&tenant_id, "cache").await, Err(ControlError::Asleep)).then_some(())
    })
    .await?;
    assert_eq!(status(&cluster, &admin, "cache").await?["status"], "running");
    let InstanceState::Running { pid, .. } = instance_state(&cluster, "cache") else {
        anyhow::bail!("the server of a drained database stopped");
    };

    // A client arrives while the route is still cached, so control is not asked; control
    // hears of the session in the proxy's next report, and the drain ends.
    let mut held = client.get_multiplexed_async_connection().await?;
    let v: String = redis::cmd("GET").arg("k").query_async(&mut held).await?;
    assert_eq!(v, "v");
    eventually(Duration::from_secs(5), "the drain to end", || async {
        control.route(&tenant_id, "cache").await.ok().flatten()
    })
    .await?;
    // Longer than the drain would have lasted (5 s of cached routes, two 1 s reports).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let v: String = redis::cmd("GET").arg("k").query_async(&mut held).await?;
    assert_eq!(v, "v", "the session kept its server");
    assert!(
        matches!(instance_state(&cluster, "cache"), InstanceState::Running { pid: now, .. } if now == pid),
        "the same server process still runs"
    );
    let raw =
        reqwest::get(format!("{}/metrics", cluster.running().api_url())).await?.text().await?;
    assert!(!raw.contains("dormouse_suspends_total{engine=\"redis\"} 1"), "{raw}");

    // Once it leaves, the database drains again and is suspended.
    drop(held);
    drop(client);
    wait_for_status(&cluster, &admin, "cache", "suspended").await?;
    stop_edge.cancel();
    cluster.stop().await;
    Ok(())
}
