//! What survives: a restart of `dormouse up` keeps tenants, databases, tokens and data; a
//! killed `redis-server` is restarted by its supervisor and the next client succeeds.

use std::time::Duration;

use dormouse_engines::{HostAgent, InstanceState};
use dormouse_tests::{Cluster, eventually, stdout};
use reqwest::Method;

#[tokio::test]
async fn a_restarted_dormouse_keeps_tenants_databases_tokens_and_data() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["SET", "kept", "yes"]).await?;
    assert_eq!(stdout(&out), "OK");
    let operator = cluster.admin_token();

    cluster.restart().await?;

    assert_eq!(cluster.admin_token(), operator, "the admin token is reused");
    let out = cluster.redis_cli(Some("cache"), Some(&token), &["GET", "kept"]).await?;
    assert_eq!(stdout(&out), "yes");
    let shown = cluster.api(Method::GET, "/v1/databases/cache", Some(&admin), None).await?;
    assert_eq!(shown.body["status"], "running");
    let tenants = cluster.api(Method::GET, "/v1/tenants", Some(&operator), None).await?;
    assert_eq!(tenants.body["tenants"][0]["name"], "acme");
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_redis_server_is_restarted_and_the_next_client_succeeds() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.tenant("acme").await?;
    let db = cluster.database(&admin, "cache", "redis").await?;
    let token = db["token"]["token"].as_str().unwrap_or_default().to_owned();
    let agent = cluster.running().agent.clone();
    let id = cluster.running().service.store().all_databases().await?[0].id.clone();
    let InstanceState::Running { pid, .. } = agent.state(&id) else { anyhow::bail!("not running") };

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)?;
    eventually(
        Duration::from_secs(20),
        "the server to be restarted",
        || {
            let state = agent.state(&id);
            async move {
                matches!(state, InstanceState::Running { pid: p, .. } if p != pid).then_some(())
            }
        },
    )
    .await?;

    let out = cluster.redis_cli(Some("cache"), Some(&token), &["SET", "after", "restart"]).await?;
    assert_eq!(stdout(&out), "OK");
    cluster.stop().await;
    Ok(())
}
