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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use dormouse_benches::procs::{self, Guard};
use dormouse_control::up::{self, UpConfig};
use dormouse_engines::InstanceId;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

// ---------------------------------------------------------------------------------------------
// MariaDB

/// `mariadb` as root over a server's socket (root has an empty password there).
fn mariadb(socket: &Path, sql: &str) -> anyhow::Result<String> {
    shell(&format!("mariadb -uroot --socket='{}' -N -B -e \"{sql}\"", socket.display()))
}

/// Dormouse's binary log and durability settings (`render_my_cnf`).
const DORMOUSE_LOG: &str = "log_bin=binlog\nbinlog_format=ROW\nsync_binlog=1\n\
                            log_bin_trust_function_creators=1\ninnodb_flush_log_at_trx_commit=1\n";

/// Settings of `render_my_cnf` (engines/src/mariadb/config.rs) that matter for throughput,
/// with `log` (binary log and durability), plus what a standalone server run by the benchmark
/// needs.
fn standalone_cnf(dir: &Path, log: &str) -> String {
    let d = dir.display();
    format!(
        "[mariadbd]\n\
         skip-name-resolve\n\
         performance_schema=OFF\n\
         innodb_log_file_size=8M\n\
         innodb_log_buffer_size=2M\n\
         key_buffer_size=1M\n\
         aria_pagecache_buffer_size=2M\n\
         datadir={d}/data\n\
         socket={d}/sock\n\
         pid-file={d}/mysqld.pid\n\
         log_error={d}/err.log\n\
         skip-networking\n\
         user=root\n\
         server_id=1\n\
         {log}\
         innodb_buffer_pool_size=1024M\n\
         max_connections=1000\n\
         query_cache_size=0\n\
         query_cache_type=0\n\
         table_open_cache=200\n\
         thread_cache_size=8\n\
         character-set-server=utf8mb4\n\
         collation-server=utf8mb4_general_ci\n"
    )
}

/// Starts `mariadbd` on `dir/my.cnf`; ready once `sql` answers over its socket.
async fn start_mariadbd(dir: &Path, sql: &str) -> anyhow::Result<Guard> {
    let child = Command::new(procs::program("mariadbd"))
        .arg(format!("--defaults-file={}/my.cnf", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mariadbd")?;
    let mut guard = Guard::new("mariadbd", child);
    let socket = dir.join("sock");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        guard
            .check_alive()
            .with_context(|| std::fs::read_to_string(dir.join("err.log")).unwrap_or_default())?;
        match socket_query(&socket, sql).await {
            Ok(()) => return Ok(guard),
            Err(e) if Instant::now() > deadline => return Err(e.context("mariadbd never ready")),
            // Still starting: ask again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn socket_query(socket: &Path, sql: &str) -> anyhow::Result<()> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.display().to_string()))
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts).await?;
    let got: Option<i64> = conn.query_first(sql).await?;
    anyhow::ensure!(got.is_some(), "{sql} returned nothing");
    conn.disconnect().await?;
    Ok(())
}

/// Through the proxy, as the database's token: the query a restored database must answer.
async fn proxy_query(port: u16, name: &str, token: &str, sql: &str) -> anyhow::Result<()> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(name))
        .pass(Some(token))
        .db_name(Some(name))
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts).await?;
    let got: Option<i64> = conn.query_first(sql).await?;
    anyhow::ensure!(got.is_some(), "{sql} returned nothing");
    conn.disconnect().await?;
    Ok(())
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

const FIRST_QUERY: &str = "SELECT id FROM sbtest1 WHERE id = 1";

async fn mariadb_phase(bench: &Bench, sizes: &Sizes) -> anyhow::Result<()> {
    println!("== MariaDB: hot backup and restore ==");
    let name = "msrc";
    bench.create("mysql", name).await?;
    let inst = bench.instance(name).await?;
    let socket = inst.dir.join(dormouse_engines::mariadb::SOCKET_FILE);
    let prepare = format!(
        "sysbench oltp_read_write --db-driver=mysql --mysql-socket='{}' --mysql-user=root \
         --mysql-db={name} --tables={} --table-size={} --threads=2 prepare",
        socket.display(),
        sizes.tables,
        sizes.table_size
    );
    bench.say(&prepare);
    let took = timed_shell(&prepare)?;
    let tables: u64 = mariadb(
        &socket,
        &format!(
            "SELECT SUM(data_length + index_length) FROM information_schema.tables \
             WHERE table_schema = '{name}'"
        ),
    )?
    .trim()
    .parse()?;
    let data = inst.dir.join("data");
    let ibd = du_bytes(&data.join(name))?;
    let datadir = du_bytes(&data)?;
    println!(
        "dataset: {} tables x {} rows (sysbench prepare {:.1} s): tables {:.0} MiB, .ibd files \
         {:.0} MiB, data directory {:.0} MiB (binary log included)",
        sizes.tables,
        sizes.table_size,
        took.as_secs_f64(),
        mb(tables),
        mb(ibd),
        mb(datadir)
    );

    first_backup(bench, name).await?;
    let work = bench.dir.join("raw-mariadb");
    std::fs::create_dir_all(&work)?;
    let proxy_port = bench.running.mysql_addr.map(|a| a.port()).unwrap_or_default();
    let (mut dm_rate, mut dm_wall, mut dm_cpu, mut dm_stored, mut dm_plain) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut raw_rate, mut raw_wall, mut raw_stored, mut raw_plain) =
        (vec![], vec![], vec![], vec![]);
    let (mut dm_restore, mut dm_first, mut dm_restore_rate, mut dm_restore_cpu) =
        (vec![], vec![], vec![], vec![]);
    let (mut raw_unpack, mut raw_prepare, mut raw_start, mut raw_total, mut raw_restore_rate) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..sizes.rounds {
        let file = work.join("full.xb.zst");
        for side in order(round) {
            if side == Side::Dormouse {
                let taken = bench.backup(name).await?;
                let rate = mb(taken.plain) / taken.wall.as_secs_f64();
                bench.say(format!(
                    "round {round}: Dormouse backup {:.0} MiB plain, {:.0} MiB stored, {:.2} s, \
                     {rate:.0} MiB/s, Dormouse CPU {:.2} s",
                    mb(taken.plain),
                    mb(taken.stored),
                    taken.wall.as_secs_f64(),
                    taken.cpu
                ));
                dm_rate.push(rate);
                dm_wall.push(taken.wall.as_secs_f64());
                dm_cpu.push(taken.cpu);
                dm_stored.push(mb(taken.stored));
                dm_plain.push(mb(taken.plain));

                let restored = format!("mr{round}");
                let (to_201, to_query, cpu) = bench
                    .restore_new(&taken.id, &restored, |token| {
                        let restored = restored.clone();
                        async move { proxy_query(proxy_port, &restored, &token, FIRST_QUERY).await }
                    })
                    .await?;
                bench.say(format!(
                    "round {round}: Dormouse restore 201 after {:.2} s, first query {:.2} s, \
                     Dormouse CPU {cpu:.2} s",
                    to_201.as_secs_f64(),
                    to_query.as_secs_f64()
                ));
                dm_restore_cpu.push(cpu);
                dm_restore.push(to_201.as_secs_f64());
                dm_first.push(to_query.as_secs_f64());
                dm_restore_rate.push(mb(taken.plain) / to_query.as_secs_f64());
                bench.drop_database(&restored).await?;
                bench.delete_backup(&taken.id).await?;
            } else {
                let (tmp, lsn) = (work.join("tmp"), work.join("lsn"));
                for d in [&tmp, &lsn] {
                    let _ = std::fs::remove_dir_all(d);
                    std::fs::create_dir_all(d)?;
                }
                let wall = timed_shell(&format!(
                    "mariadb-backup --defaults-file='{cnf}' --backup --stream=xbstream --user=root \
                     --socket='{sock}' --target-dir='{tmp}' --extra-lsndir='{lsn}' \
                     2>'{work}/backup.log' | zstd -1 -q > '{file}'",
                    cnf = inst.dir.join("my.cnf").display(),
                    sock = socket.display(),
                    tmp = tmp.display(),
                    lsn = lsn.display(),
                    work = work.display(),
                    file = file.display(),
                ))?;
                let plain: u64 =
                    shell(&format!("zstd -dcq '{}' | wc -c", file.display()))?.trim().parse()?;
                let stored = file_size(&file)?;
                let rate = mb(plain) / wall.as_secs_f64();
                bench.say(format!(
                    "round {round}: raw backup {:.0} MiB plain, {:.0} MiB stored, {:.2} s, \
                     {rate:.0} MiB/s",
                    mb(plain),
                    mb(stored),
                    wall.as_secs_f64()
                ));
                raw_rate.push(rate);
                raw_wall.push(wall.as_secs_f64());
                raw_stored.push(mb(stored));
                raw_plain.push(mb(plain));

                // Restore: unpack, prepare, start on a configuration like the instance's.
                let target = work.join("restore");
                let _ = std::fs::remove_dir_all(&target);
                std::fs::create_dir_all(target.join("data"))?;
                std::fs::write(target.join("my.cnf"), standalone_cnf(&target, DORMOUSE_LOG))?;
                let started = Instant::now();
                let unpack = timed_shell(&format!(
                    "zstd -dcq '{}' | mbstream -x -C '{}'",
                    file.display(),
                    target.join("data").display()
                ))?;
                let prepare = timed_shell(&format!(
                    "mariadb-backup --no-defaults --prepare --target-dir='{}' 2>'{}/prepare.log'",
                    target.join("data").display(),
                    work.display()
                ))?;
                let before_start = Instant::now();
                let server =
                    start_mariadbd(&target, &format!("SELECT id FROM {name}.sbtest1 WHERE id = 1"))
                        .await?;
                let start = before_start.elapsed();
                let total = started.elapsed();
                drop(server);
                bench.say(format!(
                    "round {round}: raw restore unpack {:.2} s, prepare {:.2} s, start → query \
                     {:.2} s, total {:.2} s",
                    unpack.as_secs_f64(),
                    prepare.as_secs_f64(),
                    start.as_secs_f64(),
                    total.as_secs_f64()
                ));
                raw_unpack.push(unpack.as_secs_f64());
                raw_prepare.push(prepare.as_secs_f64());
                raw_start.push(start.as_secs_f64());
                raw_total.push(total.as_secs_f64());
                raw_restore_rate.push(mb(plain) / total.as_secs_f64());
                std::fs::remove_dir_all(&target)?;
                std::fs::remove_file(&file)?;
            }
        }
    }
    row("backup plain size: Dormouse", "MiB", &dm_plain);
    row("backup plain size: raw", "MiB", &raw_plain);
    row("backup stored size: Dormouse (zstd -1 + AES-GCM)", "MiB", &dm_stored);
    row("backup stored size: raw (zstd -1)", "MiB", &raw_stored);
    row("hot backup wall: Dormouse (POST → completed)", "s", &dm_wall);
    row("hot backup wall: mariadb-backup | zstd -1 > file", "s", &raw_wall);
    row("hot backup throughput: Dormouse", "MiB/s", &dm_rate);
    row("hot backup throughput: mariadb-backup | zstd -1", "MiB/s", &raw_rate);
    row("hot backup: Dormouse process CPU", "s", &dm_cpu);
    ratio("hot backup throughput Dormouse/raw (target ≥ 0.8×)", &dm_rate, &raw_rate);
    row("restore: Dormouse POST → 201", "s", &dm_restore);
    row("restore: Dormouse POST → first query via proxy", "s", &dm_first);
    row("restore: Dormouse process CPU", "s", &dm_restore_cpu);
    row("restore: raw zstd -dc | mbstream -x", "s", &raw_unpack);
    row("restore: raw mariadb-backup --prepare", "s", &raw_prepare);
    row("restore: raw start → first query", "s", &raw_start);
    row("restore: raw total", "s", &raw_total);
    row("restore throughput (plain / to first query): Dormouse", "MiB/s", &dm_restore_rate);
    row("restore throughput (plain / to first query): raw", "MiB/s", &raw_restore_rate);
    bench.drop_database(name).await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// Redis

/// Sends one command, reads one reply: `Some(bulk)`, `None` for a nil, an error for `-ERR`.
async fn resp_command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    args: &[&str],
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    stream.write_all(&req).await?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[1..end]).into_owned();
        match buf[0] {
            b'-' => anyhow::bail!("{head}"),
            b'+' | b':' => return Ok(Some(head.into_bytes())),
            b'$' => {
                let len: i64 = head.parse()?;
                if len < 0 {
                    return Ok(None);
                }
                let want = end + 2 + len as usize + 2;
                if buf.len() >= want {
                    return Ok(Some(buf[end + 2..want - 2].to_vec()));
                }
            }
            _ => anyhow::bail!("unexpected reply {}", String::from_utf8_lossy(&buf)),
        }
    }
}

/// `AUTH` then `GET key:1` through the proxy; done once the value came back.
async fn redis_first_get(port: u16, name: &str, token: &str) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    resp_command(&mut s, &["AUTH", name, token]).await?;
    let got = resp_command(&mut s, &["GET", "key:1"]).await?;
    anyhow::ensure!(got.is_some_and(|v| v.len() == 128), "key:1 missing after the restore");
    Ok(())
}

/// Loads `keys` keys with random 128-byte printable values through `redis-cli --pipe`.
fn redis_load(inst: &Instance, keys: u64) -> anyhow::Result<()> {
    let mut child = Command::new("redis-cli")
        .env("REDISCLI_AUTH", &inst.password)
        .args(["-h", "127.0.0.1", "-p", &inst.port.to_string()])
        .args(["--user", dormouse_engines::redis::INTERNAL_USER, "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting redis-cli --pipe")?;
    {
        let stdin = child.stdin.take().context("no stdin")?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdin);
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut value = [0u8; 128];
        for i in 0..keys {
            for chunk in value.chunks_mut(10) {
                // xorshift64*: cheap, and random enough that zstd finds no redundancy beyond
                // the alphabet's 6 bits per byte (like base64 of random bytes).
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let mut r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                for b in chunk {
                    *b = ALPHABET[(r & 63) as usize];
                    r >>= 6;
                }
            }
            let key = format!("key:{i}");
            write!(out, "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$128\r\n", key.len())?;
            out.write_all(&value)?;
            out.write_all(b"\r\n")?;
        }
        out.flush()?;
    }
    let done = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&done.stdout);
    anyhow::ensure!(
        done.status.success() && text.contains("errors: 0"),
        "redis-cli --pipe: {text}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    Ok(())
}

fn redis_info(inst: &Instance, field: &str) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .env("REDISCLI_AUTH", &inst.password)
        .args(["-h", "127.0.0.1", "-p", &inst.port.to_string()])
        .args(["--user", dormouse_engines::redis::INFO_USER, "info"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
        .with_context(|| format!("no {field} in INFO: {text}"))
}

/// A throwaway `redis-server` on `dir/dump.rdb`; ready once `key:1` reads back.
async fn start_redis(dir: &Path) -> anyhow::Result<Guard> {
    let socket = dir.join("sock");
    let child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--maxmemory", "1024mb"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut guard = Guard::new("redis-server", child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        guard.check_alive()?;
        let got = async {
            let mut s = tokio::net::UnixStream::connect(&socket).await?;
            resp_command(&mut s, &["GET", "key:1"]).await
        }
        .await;
        match got {
            Ok(Some(_)) => return Ok(guard),
            Ok(None) => anyhow::bail!("key:1 missing after the restore"),
            Err(e) if Instant::now() > deadline => return Err(e.context("never ready")),
            // Not listening yet, or -LOADING: ask again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn redis_phase(bench: &Bench, sizes: &Sizes) -> anyhow::Result<()> {
    println!("== Redis: hot backup and restore ==");
    let name = "rsrc";
    bench.create("redis", name).await?;
    let inst = bench.instance(name).await?;
    let started = Instant::now();
    redis_load(&inst, sizes.keys)?;
    let took = started.elapsed();
    let keys = redis_info(&inst, "db0")?;
    let used = redis_info(&inst, "used_memory")?.parse::<u64>()?;
    println!(
        "dataset: {} keys, random 128-byte values (redis-cli --pipe {:.1} s): {keys}, \
         used_memory {:.0} MiB",
        sizes.keys,
        took.as_secs_f64(),
        mb(used)
    );

    first_backup(bench, name).await?;
    let work = bench.dir.join("raw-redis");
    std::fs::create_dir_all(&work)?;
    let proxy_port = bench.running.redis_addr.map(|a| a.port()).unwrap_or_default();
    let (mut dm_rate, mut dm_wall, mut dm_cpu, mut dm_stored, mut dm_plain) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut rdb_wall, mut rdb_rate, mut zstd_wall, mut both_rate, mut raw_stored, mut raw_plain) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut dm_restore, mut dm_first, mut dm_restore_cpu) = (vec![], vec![], vec![]);
    let (mut raw_unpack, mut raw_start, mut raw_restore) = (vec![], vec![], vec![]);
    for round in 0..sizes.rounds {
        for side in order(round) {
            if side == Side::Dormouse {
                let taken = bench.backup(name).await?;
                let rate = mb(taken.plain) / taken.wall.as_secs_f64();
                bench.say(format!(
                    "round {round}: Dormouse backup {:.0} MiB plain, {:.0} MiB stored, {:.2} s, \
                     {rate:.0} MiB/s, Dormouse CPU {:.2} s",
                    mb(taken.plain),
                    mb(taken.stored),
                    taken.wall.as_secs_f64(),
                    taken.cpu
                ));
                dm_rate.push(rate);
                dm_wall.push(taken.wall.as_secs_f64());
                dm_cpu.push(taken.cpu);
                dm_stored.push(mb(taken.stored));
                dm_plain.push(mb(taken.plain));
                let restored = format!("rr{round}");
                let (to_201, to_query, cpu) = bench
                    .restore_new(&taken.id, &restored, |token| {
                        let restored = restored.clone();
                        async move { redis_first_get(proxy_port, &restored, &token).await }
                    })
                    .await?;
                bench.say(format!(
                    "round {round}: Dormouse restore 201 after {:.2} s, first GET {:.2} s, \
                     Dormouse CPU {cpu:.2} s",
                    to_201.as_secs_f64(),
                    to_query.as_secs_f64()
                ));
                dm_restore_cpu.push(cpu);
                dm_restore.push(to_201.as_secs_f64());
                dm_first.push(to_query.as_secs_f64());
                bench.drop_database(&restored).await?;
                bench.delete_backup(&taken.id).await?;
            } else {
                let rdb = work.join("dump.rdb");
                let rdb_took = timed_shell(&format!(
                    "REDISCLI_AUTH='{pw}' redis-cli -h 127.0.0.1 -p {port} --user {user} --rdb '{f}' \
                     >/dev/null 2>&1",
                    pw = inst.password,
                    port = inst.port,
                    user = dormouse_engines::redis::BACKUP_USER,
                    f = rdb.display()
                ))?;
                let zst = work.join("dump.rdb.zst");
                let zstd_took = timed_shell(&format!(
                    "zstd -1 -q -f '{}' -o '{}'",
                    rdb.display(),
                    zst.display()
                ))?;
                let plain = file_size(&rdb)?;
                let both = rdb_took + zstd_took;
                bench.say(format!(
                    "round {round}: raw redis-cli --rdb {:.0} MiB in {:.2} s, zstd -1 → {:.0} MiB \
                     in {:.2} s",
                    mb(plain),
                    rdb_took.as_secs_f64(),
                    mb(file_size(&zst)?),
                    zstd_took.as_secs_f64()
                ));
                rdb_wall.push(rdb_took.as_secs_f64());
                rdb_rate.push(mb(plain) / rdb_took.as_secs_f64());
                zstd_wall.push(zstd_took.as_secs_f64());
                both_rate.push(mb(plain) / both.as_secs_f64());
                raw_stored.push(mb(file_size(&zst)?));
                raw_plain.push(mb(plain));
                std::fs::remove_file(&rdb)?;

                // Restore: the RDB unpacked into a fresh server's directory, start, first GET
                // answered.
                let target = work.join("restore");
                let _ = std::fs::remove_dir_all(&target);
                std::fs::create_dir_all(&target)?;
                let started = Instant::now();
                let unpack = timed_shell(&format!(
                    "zstd -dcq '{}' > '{}'",
                    zst.display(),
                    target.join("dump.rdb").display()
                ))?;
                let before_start = Instant::now();
                let server = start_redis(&target).await?;
                let start = before_start.elapsed();
                let took = started.elapsed();
                drop(server);
                bench.say(format!(
                    "round {round}: raw restore zstd -dc {:.2} s, start → first GET {:.2} s",
                    unpack.as_secs_f64(),
                    start.as_secs_f64()
                ));
                raw_unpack.push(unpack.as_secs_f64());
                raw_start.push(start.as_secs_f64());
                std::fs::remove_file(&zst)?;
                raw_restore.push(took.as_secs_f64());
                std::fs::remove_dir_all(&target)?;
            }
        }
    }
    row("backup plain size (RDB): Dormouse", "MiB", &dm_plain);
    row("backup plain size (RDB): raw", "MiB", &raw_plain);
    row("backup stored size: Dormouse (zstd -1 + AES-GCM)", "MiB", &dm_stored);
    row("backup stored size: raw (zstd -1)", "MiB", &raw_stored);
    row("hot backup wall: Dormouse (POST → completed)", "s", &dm_wall);
    row("hot backup wall: redis-cli --rdb file", "s", &rdb_wall);
    row("hot backup wall: zstd -1 of that file", "s", &zstd_wall);
    row("hot backup throughput: Dormouse", "MiB/s", &dm_rate);
    row("hot backup throughput: redis-cli --rdb alone", "MiB/s", &rdb_rate);
    row("hot backup throughput: redis-cli --rdb, then zstd -1", "MiB/s", &both_rate);
    row("hot backup: Dormouse process CPU", "s", &dm_cpu);
    ratio("hot backup throughput Dormouse/(rdb + zstd) (target ≥ 0.8×)", &dm_rate, &both_rate);
    ratio("hot backup throughput Dormouse/(rdb alone)", &dm_rate, &rdb_rate);
    row("restore: Dormouse POST → 201", "s", &dm_restore);
    row("restore: Dormouse POST → first GET via proxy", "s", &dm_first);
    row("restore: Dormouse process CPU", "s", &dm_restore_cpu);
    row("restore: raw zstd -dc > dump.rdb", "s", &raw_unpack);
    row("restore: raw redis-server start on dump.rdb → first GET", "s", &raw_start);
    row("restore: raw total", "s", &raw_restore);
    bench.drop_database(name).await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Binary log cost

/// Configurations compared: Dormouse's, the same without a binary log, and with
/// `BINLOG_VARIANTS=all` two cheaper ways to keep one (each gives up some durability).
fn binlog_variants() -> Vec<(&'static str, String)> {
    let mut variants = vec![
        ("log_bin + ROW + sync_binlog=1 (Dormouse)", DORMOUSE_LOG.to_owned()),
        ("skip-log-bin", "skip-log-bin\ninnodb_flush_log_at_trx_commit=1\n".to_owned()),
    ];
    if std::env::var("BINLOG_VARIANTS").is_ok_and(|v| v == "all") {
        variants.push((
            "log_bin + ROW + sync_binlog=0",
            DORMOUSE_LOG.replace("sync_binlog=1", "sync_binlog=0"),
        ));
        variants.push((
            "log_bin + ROW + sync_binlog=1, innodb_flush_log_at_trx_commit=2",
            DORMOUSE_LOG
                .replace("innodb_flush_log_at_trx_commit=1", "innodb_flush_log_at_trx_commit=2"),
        ));
    }
    variants
}

async fn binlog_phase(dir: &Path, sizes: &Sizes) -> anyhow::Result<()> {
    println!("== MariaDB: sysbench oltp_write_only with and without the binary log ==");
    let mut servers = Vec::new();
    for (i, (label, log)) in binlog_variants().into_iter().enumerate() {
        let d = dir.join(format!("binlog-{i}"));
        std::fs::create_dir_all(d.join("data"))?;
        std::fs::write(d.join("my.cnf"), standalone_cnf(&d, &log))?;
        shell(&format!(
            "mariadb-install-db --no-defaults --auth-root-authentication-method=normal \
             --skip-test-db --datadir='{}' --user=root >'{}/install.log' 2>&1",
            d.join("data").display(),
            d.display()
        ))?;
        let guard = start_mariadbd(&d, "SELECT 1").await?;
        let socket = d.join("sock");
        mariadb(&socket, "CREATE DATABASE sbtest")?;
        let on: String = mariadb(&socket, "SELECT @@log_bin")?;
        let binlog = !log.contains("skip-log-bin");
        anyhow::ensure!(on.trim() == if binlog { "1" } else { "0" }, "log_bin is {on}");
        shell(&sysbench_write(&socket, sizes, "prepare"))?;
        servers.push((label, d, guard, Vec::new()));
    }
    for round in 0..sizes.rounds * 2 {
        // Rotate which goes first, so a neighbour's build touches each.
        let n = servers.len();
        for k in 0..n {
            let (label, d, _, rates) = &mut servers[(k + round) % n];
            let out = shell(&sysbench_write(&d.join("sock"), sizes, "run"))?;
            let tps = out
                .lines()
                .find_map(|l| {
                    let rest = l.trim().strip_prefix("transactions:")?;
                    rest.split('(').nth(1)?.split_whitespace().next()?.parse::<f64>().ok()
                })
                .with_context(|| format!("no rate in sysbench's report: {out}"))?;
            eprintln!("  round {round}: {label}: {tps:.1} txn/s");
            rates.push(tps);
        }
    }
    for (label, _, _, rates) in &servers {
        row(&format!("oltp_write_only, {label}"), "txn/s", rates);
    }
    let without = servers[1].3.clone();
    for (label, _, _, rates) in &servers {
        if !label.starts_with("skip") {
            let what = format!("{label} / skip-log-bin");
            ratio(&what, rates, &without);
        }
    }
    println!("(target for Dormouse's configuration: ≥ 0.9× skip-log-bin)");
    drop(servers);
    Ok(())
}

fn sysbench_write(socket: &Path, sizes: &Sizes, action: &str) -> String {
    format!(
        "sysbench oltp_write_only --db-driver=mysql --mysql-socket='{}' --mysql-user=root \
         --mysql-db=sbtest --tables={} --table-size={} --threads={} --time={} \
         --report-interval=0 {action}",
        socket.display(),
        sizes.write_tables,
        sizes.write_table_size,
        if action == "prepare" { 2 } else { 4 },
        sizes.write_seconds,
    )
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
                mariadb_phase(&bench, &sizes).await?;
            }
            if phases.contains("redis") {
                redis_phase(&bench, &sizes).await?;
            }
            anyhow::Ok(())
        }
        .await;
        bench.running.stop().await;
        result?;
    }
    if phases.contains("binlog") {
        binlog_phase(dir.path(), &sizes).await?;
    }
    Ok(())
}
