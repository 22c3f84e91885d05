//! Cold-start benchmark: how long a client waits when its database is asleep, and when it was
//! just created. For each engine: suspend → connect → first reply, and create (REST API) →
//! connect → first reply, repeated; prints median and p95 against the targets of issue 4.
//!
//! Run: `cargo bench -p dormouse-benches --bench cold_start` (release build; `-- --quick` for
//! a three-round smoke run; `ROUNDS=n` to change the default 25). Everything runs in-process on loopback: control, agent, proxy,
//! real `redis-server` and `mariadbd`. Clients: raw RESP (AUTH + PING) for Redis, `mysql_async`
//! (no TLS, so the RSA token path, + `SELECT 1`) for MySQL.
//!
//! Last results (2026-11-24, 2-core Debian 12 VM, Redis 7.0.15, MariaDB 10.11.19, 25 rounds),
//! medians: Redis wake 19.1 ms, create 22.3 ms; MariaDB wake 121.0 ms, create 140.8 ms (all
//! within target). Details and p95 in `benches/README.md`.

use std::time::{Duration, Instant};

use dormouse_benches::clients;
use dormouse_benches::tools::Endpoint;
use dormouse_control::up::{self, UpConfig};
use dormouse_engines::EngineKind;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Bench {
    running: up::Running,
    http: reqwest::Client,
    tenant_token: String,
}

impl Bench {
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.running.api_url()))
            .bearer_auth(&self.tenant_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
        Ok(body)
    }

    /// Creates a database; returns its token.
    async fn create(&self, engine: EngineKind, name: &str) -> anyhow::Result<String> {
        let body = json!({"name": name, "engine": engine.as_str()});
        let created = self.api(reqwest::Method::POST, "/v1/databases", Some(body)).await?;
        Ok(created["token"]["token"].as_str().unwrap_or_default().to_owned())
    }

    /// Connects, authenticates and runs one trivial query: the time a client waits.
    async fn first_reply(&self, engine: EngineKind, name: &str, token: &str) -> anyhow::Result<()> {
        match engine {
            EngineKind::Redis => {
                let port = self.running.redis_addr.map(|a| a.port()).unwrap_or_default();
                let at = Endpoint { port, user: Some(name.into()), password: token.into() };
                clients::login(clients::Engine::Redis, &at, name).await?;
            }
            EngineKind::Mysql => {
                let port = self.running.mysql_addr.map(|a| a.port()).unwrap_or_default();
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(port)
                    .user(Some(name))
                    .pass(Some(token))
                    .db_name(Some(name))
                    .prefer_socket(false);
                let mut conn = mysql_async::Conn::new(opts).await?;
                let one: Option<i32> = conn.query_first("SELECT 1").await?;
                anyhow::ensure!(one == Some(1));
                conn.disconnect().await?;
            }
        }
        Ok(())
    }
}

fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = samples[((samples.len() * 95).div_ceil(100)).saturating_sub(1)];
    (ms(samples[samples.len() / 2]), ms(p95), ms(samples[0]))
}

fn report(what: &str, engine: EngineKind, samples: &mut [Duration], target_ms: f64) {
    let (median, p95, min) = summary(samples);
    let verdict = if median <= target_ms { "meets" } else { "MISSES" };
    println!(
        "{what:<26} {engine:<6} n={:<3} median {median:>7.1} ms  p95 {p95:>7.1} ms  min {min:>7.1} ms  target {target_ms:>4} ms: {verdict}",
        samples.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick {
        3
    } else {
        std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(25)
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter.as_str()).try_init();
    let dir = tempfile::tempdir()?;
    let mut config = UpConfig::ephemeral(dir.path());
    config.warm_pool = 2;
    let running = up::start(config, CancellationToken::new()).await?;
    let http = reqwest::Client::new();
    let operator = running.admin_token.clone();
    let tenant: Value = http
        .post(format!("{}/v1/tenants", running.api_url()))
        .bearer_auth(&operator)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let tenant_token = tenant["token"].as_str().unwrap_or_default().to_owned();
    let bench = Bench { running, http, tenant_token };

    for (engine, wake_target, create_target) in
        [(EngineKind::Redis, 30.0, 50.0), (EngineKind::Mysql, 250.0, 300.0)]
    {
        let name = format!("wake-{engine}");
        let token = bench.create(engine, &name).await?;
        bench.first_reply(engine, &name, &token).await?;

        let mut wakes = Vec::new();
        for _ in 0..rounds {
            bench
                .api(reqwest::Method::POST, &format!("/v1/databases/{name}/suspend"), None)
                .await?;
            let started = Instant::now();
            bench.first_reply(engine, &name, &token).await?;
            wakes.push(started.elapsed());
        }
        report("suspended -> first reply", engine, &mut wakes, wake_target);

        let mut creates = Vec::new();
        for i in 0..rounds {
            // Measure the steady state: the warm pool refilled after the last create.
            let agent = bench.running.agent.clone();
            let deadline = Instant::now() + Duration::from_secs(30);
            while agent.warm_count(engine) < 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let name = format!("new-{engine}-{i}");
            let started = Instant::now();
            let token = bench.create(engine, &name).await?;
            bench.first_reply(engine, &name, &token).await?;
            creates.push(started.elapsed());
        }
        report("create -> first reply", engine, &mut creates, create_target);
    }
    bench.running.stop().await;
    Ok(())
}
