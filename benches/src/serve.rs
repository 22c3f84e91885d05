//! The Dormouse under test, in a process of its own so its memory can be read: the benchmark
//! binary re-runs itself with `DORMOUSE_BENCH_SERVE=<dir>`, which starts `dormouse up`, creates
//! one Redis and one MySQL database, and prints where everything is as one JSON line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::Context;
use dormouse_control::up::{self, UpConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::procs::Guard;

/// The variable that turns the benchmark binary into the server under test.
pub const SERVE_ENV: &str = "DORMOUSE_BENCH_SERVE";
const READY: &str = "dormouse-bench-ready ";

/// One database as each side sees it: through the proxy (database name and token) and on its
/// server (the internal user).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub proxy_port: u16,
    pub token: String,
    pub backend_port: u16,
    pub backend_user: String,
    pub backend_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    pub redis: Database,
    pub mysql: Database,
}

/// Runs the server side until standard input closes (the parent exited or is done).
pub async fn serve(dir: &str) -> anyhow::Result<()> {
    let mut config = UpConfig::ephemeral(dir);
    config.warm_pool = 0;
    let running = up::start(config, CancellationToken::new()).await?;
    let http = reqwest::Client::new();
    let api = running.api_url();
    let post = |path: &str, token: &str, body: Value| {
        http.post(format!("{api}{path}")).bearer_auth(token).json(&body).send()
    };
    let tenant: Value =
        post("/v1/tenants", &running.admin_token, json!({"name": "bench"})).await?.json().await?;
    let tenant_token = tenant["token"].as_str().context("tenant token")?.to_owned();
    let tenant_id = tenant["id"].as_str().context("tenant id")?.to_owned();
    let mut made = Vec::new();
    for (name, engine, port) in
        [("kv", "redis", running.redis_addr), ("sql", "mysql", running.mysql_addr)]
    {
        // "small": 300 server connections, so the direct runs are not capped below the proxy's.
        let body =
            json!({"name": name, "engine": engine, "plan": "small", "idle_timeout_seconds": 0});
        let resp = post("/v1/databases", &tenant_token, body).await?;
        anyhow::ensure!(resp.status().is_success(), "creating {name}: {}", resp.text().await?);
        let created: Value = resp.json().await?;
        let route = running
            .service
            .wake(&tenant_id, name)
            .await
            .map_err(|e| anyhow::anyhow!("waking {name}: {e}"))?
            .context("no route")?;
        made.push(Database {
            name: name.into(),
            proxy_port: port.context("proxy not listening")?.port(),
            token: created["token"]["token"].as_str().context("database token")?.to_owned(),
            backend_port: route.port,
            backend_user: route.user,
            backend_password: route.password.0,
        });
    }
    let mysql = made.pop().context("mysql")?;
    let redis = made.pop().context("redis")?;
    println!("{READY}{}", serde_json::to_string(&Served { redis, mysql })?);
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    running.stop().await;
    Ok(())
}

/// Starts the server side in a child process and waits for its description.
pub fn spawn(dir: &std::path::Path) -> anyhow::Result<(Guard, Served)> {
    let child = Command::new(std::env::current_exe()?)
        .env(SERVE_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut guard = Guard::new("dormouse", child);
    let stdout = guard.child.stdout.take().context("child stdout")?;
    for line in BufReader::new(stdout).lines() {
        if let Some(json) = line?.strip_prefix(READY) {
            return Ok((guard, serde_json::from_str(json)?));
        }
    }
    guard.check_alive()?;
    anyhow::bail!("dormouse closed its output before it was ready")
}
