//! Proxy benchmark: the same workloads against the servers directly, through Dormouse, through
//! haproxy (plain TCP) and, for Redis, through nutcracker (twemproxy); prints medians and the
//! ratios the targets of issue 5 are stated in, as a Markdown table for `benches/README.md`.
//!
//! Run: `cargo bench -p dormouse-benches --bench proxies` (about ten minutes; `-- --quick` for a
//! smoke run of seconds, which CI does). Needs `redis-benchmark`, `sysbench`, `haproxy` and
//! `nutcracker` (`./scripts/install-deps --bench`). Workloads: `redis-benchmark` SET/GET with 50
//! clients, unpipelined and `-P 16`; `sysbench` `oltp_point_select` and `oltp_read_write` with
//! 16 threads; connect → log in → one query → disconnect loops; 5,000 idle logged-in clients
//! per engine beside 50 active ones, with the proxy's resident memory read before and after
//! (a fresh Dormouse process per engine). Each proxy's CPU time per request is read too.
//! `PHASES=redis,mysql,churn,idle` picks phases; `LAYOUT=split` gives the proxies their own
//! cores (see `cpus`) instead of sharing every core with the load generators and servers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dormouse_benches::clients::{self, Engine};
use dormouse_benches::cpus::Layout;
use dormouse_benches::peers;
use dormouse_benches::procs::{children_cpu_seconds, cpu_seconds, have, pid_listening_on, rss_kib};
use dormouse_benches::serve::{self, SERVE_ENV};
use dormouse_benches::tools::{self, Endpoint, redis_benchmark, sysbench};

/// How much of everything to do.
struct Sizes {
    reps: usize,
    redis_requests: u64,
    redis_pipelined_requests: u64,
    sysbench_seconds: u32,
    table_size: u32,
    churn: Duration,
    idle: usize,
}

const FULL: Sizes = Sizes {
    reps: 5,
    redis_requests: 200_000,
    redis_pipelined_requests: 2_000_000,
    sysbench_seconds: 10,
    table_size: 10_000,
    churn: Duration::from_secs(5),
    idle: 5_000,
};

const QUICK: Sizes = Sizes {
    reps: 1,
    redis_requests: 2_000,
    redis_pipelined_requests: 16_000,
    sysbench_seconds: 1,
    table_size: 100,
    churn: Duration::from_millis(500),
    idle: 100,
};

const DIRECT: &str = "direct";
const DORMOUSE: &str = "Dormouse";
const HAPROXY: &str = "haproxy";
const NUTCRACKER: &str = "nutcracker";
const TWIN: &str = "twin direct";

/// Samples per workload and target, in the order measured. Targets take turns within each
/// repetition, so the `i`-th samples of two targets were taken side by side.
#[derive(Default)]
struct Results {
    rows: Vec<(String, &'static str, Samples)>,
}

/// Samples by target name.
type Samples = BTreeMap<&'static str, Vec<f64>>;

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median of the ratios of side-by-side samples: throughput on this machine drifts by
/// 10–20 % over minutes, and a pair taken together drifts alike.
fn paired_ratio(over: &[f64], under: &[f64]) -> f64 {
    if over.len() != under.len() {
        return median(over) / median(under);
    }
    let ratios: Vec<f64> = over.iter().zip(under).map(|(a, b)| a / b).collect();
    median(&ratios)
}

impl Results {
    fn add(&mut self, workload: &str, unit: &'static str, target: &'static str, samples: &[f64]) {
        let median = median(samples);
        println!("  {workload:<32} {target:<12} {median:>12.1} {unit}   (runs: {samples:.0?})");
        match self.rows.iter_mut().find(|(w, _, _)| w == workload) {
            Some((_, _, values)) => {
                values.insert(target, samples.to_vec());
            }
            None => self.rows.push((
                workload.into(),
                unit,
                BTreeMap::from([(target, samples.to_vec())]),
            )),
        }
    }

    fn samples(&self, workload: &str, target: &str) -> Option<&[f64]> {
        self.rows
            .iter()
            .find(|(w, _, _)| w == workload)
            .and_then(|(_, _, v)| v.get(target).map(Vec::as_slice))
    }

    fn get(&self, workload: &str, target: &str) -> f64 {
        self.samples(workload, target).map_or(f64::NAN, median)
    }

    fn ratio(&self, workload: &str, over: &str, under: &str) -> f64 {
        match (self.samples(workload, over), self.samples(workload, under)) {
            (Some(a), Some(b)) => paired_ratio(a, b),
            _ => f64::NAN,
        }
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "| workload | unit | {DIRECT} | {DORMOUSE} | {HAPROXY} | {NUTCRACKER} ({TWIN}) | \
             {DORMOUSE}/{DIRECT} | {DORMOUSE}/{NUTCRACKER} |\n|---|---|---|---|---|---|---|---|\n"
        );
        let cell = |v: Option<&Vec<f64>>| match v.map(|s| median(s)) {
            Some(v) if v < 100.0 => format!("{v:.1}"),
            Some(v) => format!("{v:.0}"),
            None => "–".to_owned(),
        };
        for (workload, unit, v) in &self.rows {
            let peer = match (v.get(NUTCRACKER), v.get(TWIN)) {
                (Some(n), Some(t)) => format!("{} ({})", cell(Some(n)), cell(Some(t))),
                (Some(n), None) => cell(Some(n)),
                _ => "–".into(),
            };
            let ratio = |a: Option<&Vec<f64>>, b: Option<&Vec<f64>>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.2}×", paired_ratio(a, b)),
                _ => "–".into(),
            };
            out.push_str(&format!(
                "| {workload} | {unit} | {} | {} | {} | {peer} | {} | {} |\n",
                cell(v.get(DIRECT)),
                cell(v.get(DORMOUSE)),
                cell(v.get(HAPROXY)),
                ratio(v.get(DORMOUSE), v.get(DIRECT)),
                ratio(v.get(DORMOUSE), v.get(NUTCRACKER)),
            ));
        }
        out
    }
}

/// The endpoints of one engine.
struct Targets(Vec<Target>);

/// Where a workload is sent, with the processes whose CPU time it is charged: the proxy in
/// between (none for the servers themselves) and the server that answers.
struct Target {
    name: &'static str,
    at: Endpoint,
    proxy: Option<u32>,
    server: u32,
}

/// CPU time per request of the processes that served a run, in microseconds.
struct Cpu {
    proxy: Option<f64>,
    server: f64,
    /// Proxy, server and load generator together: what the run cost the machine.
    all: f64,
}

/// What `work` returns, and the CPU time spent on each of `requests(&out)` while it ran. The
/// load generator is the only child process `work` waits for.
fn with_cpu<T>(
    target: &Target,
    requests: impl FnOnce(&T) -> f64,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<Cpu>)> {
    let proxy_before = target.proxy.map(cpu_seconds).transpose()?;
    let server_before = cpu_seconds(target.server)?;
    let generator_before = children_cpu_seconds()?;
    let out = work()?;
    let served = requests(&out);
    if served <= 0.0 {
        return Ok((out, None));
    }
    let per_request = |seconds: f64| seconds * 1e6 / served;
    let proxy = match (target.proxy, proxy_before) {
        (Some(pid), Some(before)) => Some(per_request(cpu_seconds(pid)? - before)),
        _ => None,
    };
    let server = per_request(cpu_seconds(target.server)? - server_before);
    let generator = per_request(children_cpu_seconds()? - generator_before);
    let all = proxy.unwrap_or(0.0) + server + generator;
    Ok((out, Some(Cpu { proxy, server, all })))
}

/// CPU samples per target, by row.
#[derive(Default)]
struct CpuSamples {
    proxy: BTreeMap<&'static str, Vec<f64>>,
    server: BTreeMap<&'static str, Vec<f64>>,
    all: BTreeMap<&'static str, Vec<f64>>,
}

impl CpuSamples {
    fn push(&mut self, name: &'static str, cpu: Option<Cpu>) {
        let Some(cpu) = cpu else { return };
        if let Some(proxy) = cpu.proxy {
            self.proxy.entry(name).or_default().push(proxy);
        }
        self.server.entry(name).or_default().push(cpu.server);
        self.all.entry(name).or_default().push(cpu.all);
    }

    /// Adds the rows `<what>: proxy CPU per <unit>` and the like.
    fn report(self, results: &mut Results, what: &str, per: &str) {
        let rows = [("proxy", self.proxy), ("server", self.server), ("all processes'", self.all)];
        for (whose, samples) in rows {
            for (name, runs) in samples {
                results.add(&format!("{what}: {whose} CPU per {per}"), "µs", name, &runs);
            }
        }
    }
}

async fn redis_throughput(
    results: &mut Results,
    sizes: &Sizes,
    targets: &Targets,
) -> anyhow::Result<()> {
    for (pipeline, requests) in [(1, sizes.redis_requests), (16, sizes.redis_pipelined_requests)] {
        let mut samples: BTreeMap<(&'static str, String), Vec<f64>> = BTreeMap::new();
        let mut cpu = CpuSamples::default();
        // Targets take turns within each repetition, so drift in the machine hits all alike.
        for _ in 0..sizes.reps {
            for target in &targets.0 {
                let (rates, used) = with_cpu(
                    target,
                    |_| 2.0 * requests as f64,
                    || redis_benchmark(&target.at, "set,get", 50, requests, pipeline),
                )?;
                for (test, rps) in rates {
                    samples.entry((target.name, test)).or_default().push(rps);
                }
                cpu.push(target.name, used);
            }
        }
        for ((name, test), runs) in samples {
            let workload = format!("Redis {test}, 50 clients, -P {pipeline}");
            results.add(&workload, "req/s", name, &runs);
        }
        cpu.report(results, &format!("Redis SET+GET -P {pipeline}"), "request");
    }
    Ok(())
}

fn mysql_throughput(
    results: &mut Results,
    sizes: &Sizes,
    targets: &Targets,
    db: &str,
) -> anyhow::Result<()> {
    for (test, per) in [("oltp_point_select", "queries"), ("oltp_read_write", "transactions")] {
        let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let mut cpu = CpuSamples::default();
        for _ in 0..sizes.reps {
            for target in &targets.0 {
                let (name, at) = (target.name, &target.at);
                let (rate, used) = with_cpu(
                    target,
                    |r: &tools::SysbenchRate| r.queries * f64::from(sizes.sysbench_seconds),
                    || sysbench(at, db, test, "run", 16, sizes.sysbench_seconds, sizes.table_size),
                )?;
                cpu.push(name, used);
                if rate.errors > 0 {
                    println!(
                        "  ({name}: {} deadlocks/lock waits retried by sysbench)",
                        rate.errors
                    );
                }
                let value = if per == "queries" { rate.queries } else { rate.transactions };
                samples.entry(name).or_default().push(value);
            }
        }
        let unit = if per == "queries" { "queries/s" } else { "txn/s" };
        for (name, runs) in samples {
            results.add(&format!("MySQL {test}, 16 threads"), unit, name, &runs);
        }
        cpu.report(results, &format!("MySQL {test}"), "query");
    }
    Ok(())
}

async fn churn(
    results: &mut Results,
    sizes: &Sizes,
    engine: Engine,
    targets: &Targets,
    db: &str,
) -> anyhow::Result<()> {
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..sizes.reps {
        for target in &targets.0 {
            let rate = clients::churn(engine, &target.at, db, 8, sizes.churn).await?;
            samples.entry(target.name).or_default().push(rate);
        }
    }
    let workload = format!("{engine} connect+auth+query+close, 8 loops");
    for (name, runs) in samples {
        results.add(&workload, "conn/s", name, &runs);
    }
    Ok(())
}

/// Opens many idle clients through Dormouse, reads its memory, and measures 50 active clients
/// beside them.
async fn idle(
    results: &mut Results,
    sizes: &Sizes,
    dir: &Path,
    layout: &Layout,
) -> anyhow::Result<()> {
    for engine in [Engine::Redis, Engine::Mysql] {
        // A fresh process per engine: memory freed by earlier work would be reused by these
        // sessions and hide what they cost.
        let (mut dormouse, served) = serve::spawn(&dir.join(format!("idle-{engine}")))?;
        let pid = dormouse.pid();
        layout.place_proxy(pid)?;
        let db = if engine == Engine::Redis { &served.redis } else { &served.mysql };
        let at = Endpoint {
            port: db.proxy_port,
            user: Some(db.name.clone()),
            password: db.token.clone(),
        };
        let active = |results: &mut Results, label: &str| -> anyhow::Result<()> {
            let workload = format!("{engine} 50 active clients{label}");
            let rate = match engine {
                Engine::Redis => redis_benchmark(&at, "get", 50, sizes.redis_requests, 1)?
                    .first()
                    .map_or(0.0, |r| r.1),
                Engine::Mysql => {
                    let r = sysbench(
                        &at,
                        &db.name,
                        "oltp_point_select",
                        "run",
                        50,
                        sizes.sysbench_seconds,
                        sizes.table_size,
                    )?;
                    r.queries
                }
            };
            let unit = if engine == Engine::Redis { "GET/s" } else { "queries/s" };
            results.add(&workload, unit, DORMOUSE, &[rate]);
            Ok(())
        };
        if engine == Engine::Mysql {
            sysbench(&at, &db.name, "oltp_read_write", "prepare", 1, 0, sizes.table_size)?;
        }
        active(results, "")?;
        // Warm the allocator with one login first, so the baseline is not the first-ever one.
        clients::close_all(clients::open_idle(engine, &at, &db.name, 10, 10).await?).await;
        let before = rss_kib(pid)?;
        let idle = clients::open_idle(engine, &at, &db.name, sizes.idle, 32).await?;
        let after = rss_kib(pid)?;
        let per_client = (after.saturating_sub(before)) as f64 * 1024.0 / sizes.idle as f64;
        println!(
            "  {engine}: {} idle clients: proxy RSS {before} → {after} KiB, {per_client:.0} bytes each",
            sizes.idle
        );
        results.add(&format!("{engine} memory per idle client"), "bytes", DORMOUSE, &[per_client]);
        active(results, &format!(" beside {} idle", sizes.idle))?;
        clients::close_all(idle).await;
        dormouse.check_alive()?;
    }
    Ok(())
}

fn verdicts(r: &Results, idle: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: String, value: f64, ok: bool| {
        if value.is_nan() {
            return; // a phase not run
        }
        out.push(format!("{what}: {value:.2} — {}", if ok { "met" } else { "MISSED" }));
    };
    for pipeline in [1, 16] {
        let floor = if pipeline == 1 { 0.9 } else { 0.8 };
        for test in ["SET", "GET"] {
            let w = format!("Redis {test}, 50 clients, -P {pipeline}");
            let ratio = r.ratio(&w, DORMOUSE, DIRECT);
            check(format!("{w}: Dormouse/direct ≥ {floor}"), ratio, ratio >= floor);
            let peer = r.ratio(&w, DORMOUSE, NUTCRACKER);
            check(format!("{w}: Dormouse/nutcracker > 1"), peer, peer > 1.0);
        }
    }
    let w = "MySQL oltp_point_select, 16 threads";
    let ratio = r.ratio(w, DORMOUSE, DIRECT);
    check(format!("{w}: Dormouse/direct ≥ 0.85"), ratio, ratio >= 0.85);
    for engine in [Engine::Redis, Engine::Mysql] {
        let w = format!("{engine} connect+auth+query+close, 8 loops");
        let ratio = r.ratio(&w, DORMOUSE, DIRECT);
        check(format!("{w}: Dormouse/direct > 1"), ratio, ratio > 1.0);
        let bytes = r.get(&format!("{engine} memory per idle client"), DORMOUSE);
        check(
            format!("{engine}: KiB per idle client ({idle}) < 16"),
            bytes / 1024.0,
            bytes < 16.0 * 1024.0,
        );
    }
    out
}

async fn run(sizes: &Sizes, dir: &Path) -> anyhow::Result<()> {
    for tool in ["redis-benchmark", "sysbench", "haproxy", "nutcracker", "redis-server"] {
        anyhow::ensure!(have(tool), "{tool} is missing: run ./scripts/install-deps --bench");
    }
    let phases = |name: &str| {
        std::env::var("PHASES").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
    };
    let layout = Layout::from_env()?;
    layout.enter_near()?;
    let (mut dormouse, served) = serve::spawn(&dir.join("dormouse"))?;
    let (rdb, mdb) = (&served.redis, &served.mysql);
    let proxy = |d: &serve::Database| Endpoint {
        port: d.proxy_port,
        user: Some(d.name.clone()),
        password: d.token.clone(),
    };
    let direct = |d: &serve::Database, port: u16| Endpoint {
        port,
        user: Some(d.backend_user.clone()),
        password: d.backend_password.clone(),
    };
    let (haproxy, l4) = peers::haproxy(dir, &[rdb.backend_port, mdb.backend_port]).await?;
    let (twin_server, twin) = peers::twin_redis(dir, &rdb.backend_password).await?;
    let (nutcracker, nut) = peers::nutcracker(dir, &twin).await?;
    let (ours, theirs) = (Some(dormouse.pid()), Some(haproxy.pid()));
    for pid in [dormouse.pid(), haproxy.pid(), nutcracker.pid()] {
        layout.place_proxy(pid)?;
    }
    // Dormouse's servers are its children: found by the ports they listen on.
    let (redis_server, mariadb) =
        (pid_listening_on(rdb.backend_port)?, pid_listening_on(mdb.backend_port)?);
    let target = |name, at, proxy, server| Target { name, at, proxy, server };
    let redis = Targets(vec![
        target(DIRECT, direct(rdb, rdb.backend_port), None, redis_server),
        target(DORMOUSE, proxy(rdb), ours, redis_server),
        target(HAPROXY, direct(rdb, l4[0]), theirs, redis_server),
        target(TWIN, twin, None, twin_server.pid()),
        target(NUTCRACKER, nut, Some(nutcracker.pid()), twin_server.pid()),
    ]);
    let mysql = Targets(vec![
        target(DIRECT, direct(mdb, mdb.backend_port), None, mariadb),
        target(DORMOUSE, proxy(mdb), ours, mariadb),
        target(HAPROXY, direct(mdb, l4[1]), theirs, mariadb),
    ]);
    let mut results = Results::default();

    if phases("redis") {
        println!("== Redis throughput (redis-benchmark)");
        redis_throughput(&mut results, sizes, &redis).await?;
    }
    if phases("mysql") {
        println!("== MySQL throughput (sysbench)");
        let at = &mysql.0[0].at;
        sysbench(at, &mdb.name, "oltp_read_write", "prepare", 1, 0, sizes.table_size)?;
        mysql_throughput(&mut results, sizes, &mysql, &mdb.name)?;
    }
    if phases("churn") {
        println!("== Connection churn");
        let redis_l4 = Targets(redis.0.into_iter().take(3).collect());
        churn(&mut results, sizes, Engine::Redis, &redis_l4, "").await?;
        churn(&mut results, sizes, Engine::Mysql, &mysql, &mdb.name).await?;
    }
    dormouse.check_alive()?;
    drop(dormouse);
    if phases("idle") {
        println!("== Many clients");
        idle(&mut results, sizes, dir, &layout).await?;
    }

    println!("\n{}", results.markdown());
    for line in verdicts(&results, sizes.idle) {
        println!("- {line}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(SERVE_ENV) {
        // The server under test runs as `dormouse up` would: `DORMOUSE_THREADS` or the default.
        let threads = std::env::var("DORMOUSE_THREADS").ok().and_then(|t| t.parse().ok());
        let runtime = dormouse_control::up::server_runtime(threads)?;
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter.as_str())
            .with_writer(std::io::stderr)
            .try_init();
        return runtime.block_on(serve::serve(&dir));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    // `cargo test` runs this without `--bench`: treat that, like `--quick`, as a smoke run.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    dormouse_control::up::raise_open_files_limit(16_384);
    let dir = tempfile::tempdir()?;
    println!(
        "proxies benchmark ({}), {} cores",
        if quick { "quick smoke run" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    runtime.block_on(run(if quick { &QUICK } else { &FULL }, dir.path()))
}
