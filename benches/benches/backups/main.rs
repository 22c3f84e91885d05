//! Backup and restore benchmark (issue 18): Dormouse's hot backups and restores against the raw
//! tools on the same data (MariaDB ~1 GB: `mariadb-backup | zstd -1`; Redis ~500 MB:
//! `redis-cli --rdb` + `zstd -1`), and what the binary log costs sysbench writes.
//!
//! Run: `cargo bench -p dormouse-benches --bench backups` (release build; `-- --quick` for a
//! small smoke run by hand; `ROUNDS=n` to change the default 3; `PHASES=mariadb,redis,binlog`
//! to pick). Everything runs in-process on loopback: control, agent and proxy of a
//! `dormouse up`, with real `mariadbd` and `redis-server`; the raw tools run as root against the
//! same instances. Results and their commands are in `benches/README.md`.
//!
//! Last results (2026-12-06, 2-core Debian 12 VM, a build running beside it), medians of
//! per-round ratios: MariaDB hot backup 0.90–1.11× the raw tools (target 0.8×: met), Redis
//! 0.87–0.96× `redis-cli --rdb` + `zstd -1` (met); restores 1.3–1.5× (MariaDB) and 2.3–2.7×
//! (Redis) the raw tools' time; the binary log makes `oltp_write_only` 0.62–0.69× as fast
//! (target 0.9×: missed). Since point-in-time recovery the first backup after the load also
//! archives the load's change log (MariaDB: 9.9 s against 2.6 s), so it is reported apart.

mod binlog;
mod mariadb;
mod redis;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use dormouse_benches::procs;
use dormouse_control::up::{self, UpConfig};
use dormouse_engines::InstanceId;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How large the datasets are: the full run's, or a smoke run's.
struct Sizes {
    rounds: usize,
    /// sysbench `--tables` and `--table-size` of the MariaDB dataset.
    tables: u32,
    table_size: u32,
    /// Keys of the Redis dataset, each with a random 128-byte value.
    keys: u64,
    /// Seconds of each sysbench `oltp_write_only` run, and its dataset.
    write_seconds: u32,
    write_tables: u32,
    write_table_size: u32,
}

const MIB: f64 = 1024.0 * 1024.0;

struct Bench {
    running: up::Running,
    http: reqwest::Client,
    tenant_token: String,
    dir: PathBuf,
    quiet: bool,
}

/// The instance behind a database, as the host sees it.
struct Instance {
    dir: PathBuf,
    port: u16,
    password: String,
}

/// One backup taken through the API.
struct Taken {
    id: String,
    plain: u64,
    stored: u64,
    wall: Duration,
    /// CPU the Dormouse process (control, agent, proxy, pipeline) used meanwhile.
    cpu: f64,
}

impl Bench {
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.running.api_url()))
            .bearer_auth(&self.tenant_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let body: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
        anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
        Ok((status, body))
    }

    /// Creates a database that never suspends (a hot backup needs it running); returns its
    /// token.
    async fn create(&self, engine: &str, name: &str) -> anyhow::Result<String> {
        let body =
            json!({"name": name, "engine": engine, "plan": "medium", "idle_timeout_seconds": 0});
        let (_, created) = self.api(reqwest::Method::POST, "/v1/databases", Some(body)).await?;
        Ok(created["token"]["token"].as_str().unwrap_or_default().to_owned())
    }

    async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/databases/{name}?now=true");
        self.api(reqwest::Method::DELETE, &path, None).await.map(drop)
    }

    async fn instance(&self, name: &str) -> anyhow::Result<Instance> {
        let all = self.running.service.store().all_databases().await?;
        let db = all.iter().find(|d| d.name == name).context("no such database")?;
        let id: &InstanceId = &db.id;
        Ok(Instance {
            dir: self.running.agent.instance_dir(id),
            port: db.port,
            password: db.password.expose().to_owned(),
        })
    }

    /// POST a backup and poll its row until it completed: the wall time a user waits.
    async fn backup(&self, name: &str) -> anyhow::Result<Taken> {
        let pid = std::process::id();
        let cpu_before = procs::cpu_seconds(pid)?;
        let started = Instant::now();
        let (_, row) =
            self.api(reqwest::Method::POST, &format!("/v1/databases/{name}/backups"), None).await?;
        let id = row["id"].as_str().context("no backup id")?.to_owned();
        let deadline = started + Duration::from_secs(600);
        loop {
            let (_, row) =
                self.api(reqwest::Method::GET, &format!("/v1/backups/{id}"), None).await?;
            match row["status"].as_str() {
                Some("completed") => {
                    let wall = started.elapsed();
                    let cpu = procs::cpu_seconds(pid)? - cpu_before;
                    anyhow::ensure!(row["hot"] == json!(true), "not a hot backup: {row}");
                    return Ok(Taken {
                        id,
                        plain: row["size_bytes"].as_u64().unwrap_or_default(),
                        stored: row["stored_bytes"].as_u64().unwrap_or_default(),
                        wall,
                        cpu,
                    });
                }
                Some("failed") => anyhow::bail!("backup failed: {row}"),
                _ if Instant::now() > deadline => anyhow::bail!("backup never completed: {row}"),
                // Polling is how a client learns of completion; 20 ms is noise next to seconds.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn delete_backup(&self, id: &str) -> anyhow::Result<()> {
        self.api(reqwest::Method::DELETE, &format!("/v1/backups/{id}"), None).await.map(drop)
    }

    /// Restores a backup into a new database: (POST → 201, POST → first query answered, CPU
    /// the Dormouse process used meanwhile).
    async fn restore_new<F, Fut>(
        &self,
        backup: &str,
        name: &str,
        first_query: F,
    ) -> anyhow::Result<(Duration, Duration, f64)>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let body = json!({"name": name, "plan": "medium", "idle_timeout_seconds": 0,
                          "restore": {"backup": backup}});
        let pid = std::process::id();
        let cpu_before = procs::cpu_seconds(pid)?;
        let started = Instant::now();
        let (status, created) =
            self.api(reqwest::Method::POST, "/v1/databases", Some(body)).await?;
        let restored = started.elapsed();
        anyhow::ensure!(status == reqwest::StatusCode::CREATED, "restore answered {status}");
        let token = created["token"]["token"].as_str().unwrap_or_default().to_owned();
        first_query(token).await?;
        let wall = started.elapsed();
        Ok((restored, wall, procs::cpu_seconds(pid)? - cpu_before))
    }

    fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("  {}", line.as_ref());
        }
    }
}

/// Median, minimum and maximum.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v.first().copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
}

fn row(what: &str, unit: &str, values: &[f64]) {
    let (median, min, max) = stats(values);
    println!(
        "{what:<58} median {median:>9.2} {unit:<5} range {min:>9.2}–{max:<9.2} n={}",
        values.len()
    );
}

/// Samples by row, printed in the order each row was first given one.
#[derive(Default)]
struct Table {
    rows: Vec<(&'static str, &'static str, Vec<f64>)>,
}

impl Table {
    fn push(&mut self, what: &'static str, unit: &'static str, value: f64) {
        match self.rows.iter_mut().find(|(w, _, _)| *w == what) {
            Some((_, _, values)) => values.push(value),
            None => self.rows.push((what, unit, vec![value])),
        }
    }

    fn get(&self, what: &str) -> &[f64] {
        self.rows.iter().find(|(w, _, _)| *w == what).map_or(&[], |(_, _, v)| v)
    }

    fn print(&self) {
        for (what, unit, values) in &self.rows {
            row(what, unit, values);
        }
    }

    fn ratio(&self, what: &str, ours: &str, theirs: &str) {
        ratio(what, self.get(ours), self.get(theirs));
    }
}

/// Runs a shell pipeline (bash, with `pipefail`, so a failed producer fails it).
fn shell(script: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .output()
        .with_context(|| format!("running {script}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{script}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn timed_shell(script: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    shell(script)?;
    Ok(started.elapsed())
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

fn du_bytes(path: &Path) -> anyhow::Result<u64> {
    let out = shell(&format!("du -sb '{}'", path.display()))?;
    Ok(out.split_whitespace().next().unwrap_or("0").parse()?)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// The first backup after the load: since point-in-time recovery, a backup job also archives
/// the change log written since the last one (here the whole load's), so it is reported apart
/// and the rounds measure the steady state.
async fn first_backup(bench: &Bench, name: &str) -> anyhow::Result<()> {
    let taken = bench.backup(name).await?;
    println!(
        "first backup after the load (archives the load's change log too): {:.2} s, {:.0} MiB \
         plain, {:.0} MiB/s of data, Dormouse CPU {:.2} s",
        taken.wall.as_secs_f64(),
        mb(taken.plain),
        mb(taken.plain) / taken.wall.as_secs_f64(),
        taken.cpu
    );
    bench.delete_backup(&taken.id).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Dormouse,
    Raw,
}

/// Alternates which side goes first, so a drift over the run touches both.
fn order(round: usize) -> [Side; 2] {
    if round.is_multiple_of(2) { [Side::Dormouse, Side::Raw] } else { [Side::Raw, Side::Dormouse] }
}

/// The median of per-round ratios (rounds ran side by side).
fn ratio(what: &str, ours: &[f64], theirs: &[f64]) {
    let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
    row(what, "x", &ratios);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok());
    let sizes = if quick {
        Sizes {
            rounds: rounds.unwrap_or(1),
            tables: 2,
            table_size: 20_000,
            keys: 100_000,
            write_seconds: 5,
            write_tables: 2,
            write_table_size: 10_000,
        }
    } else {
        Sizes {
            rounds: rounds.unwrap_or(3),
            tables: 8,
            table_size: 500_000,
            keys: 3_500_000,
            write_seconds: 25,
            write_tables: 4,
            write_table_size: 100_000,
        }
    };
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "mariadb,redis,binlog".into());
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter.as_str()).try_init();
    for tool in ["mariadb-backup", "mbstream", "zstd", "sysbench", "redis-cli", "mariadbd"] {
        anyhow::ensure!(procs::have(tool), "{tool} is not installed");
    }
    let dir = tempfile::Builder::new().prefix("dormouse-backups-bench").tempdir()?;
    println!(
        "{} rounds; machine: {} cores; {}",
        sizes.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        shell("date -u +%FT%TZ")?.trim()
    );

    if phases.contains("mariadb") || phases.contains("redis") {
        let mut config = UpConfig::ephemeral(dir.path().join("up"));
        config.warm_pool = 1;
        let running = up::start(config, CancellationToken::new()).await?;
        let http = reqwest::Client::new();
        let tenant: Value = http
            .post(format!("{}/v1/tenants", running.api_url()))
            .bearer_auth(&running.admin_token)
            .json(&json!({"name": "bench"}))
            .send()
            .await?
            .json()
            .await?;
        let tenant_token = tenant["token"].as_str().unwrap_or_default().to_owned();
        let bench = Bench { running, http, tenant_token, dir: dir.path().to_owned(), quiet: false };
        let result = async {
            if phases.contains("mariadb") {
                mariadb::phase(&bench, &sizes).await?;
            }
            if phases.contains("redis") {
                redis::phase(&bench, &sizes).await?;
            }
            anyhow::Ok(())
        }
        .await;
        bench.running.stop().await;
        result?;
    }
    if phases.contains("binlog") {
        binlog::phase(dir.path(), &sizes).await?;
    }
    Ok(())
}
