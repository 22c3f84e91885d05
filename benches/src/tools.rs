//! The stock load generators, run as child processes: `redis-benchmark` and `sysbench`, with
//! their reports parsed into numbers.

use std::process::Command;

use anyhow::Context;

/// Where a load generator connects and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub port: u16,
    /// `None` for Redis's `AUTH password` form (nutcracker understands only that one).
    pub user: Option<String>,
    pub password: String,
}

/// Requests per second of each test `redis-benchmark` ran, in its order.
pub fn redis_benchmark(
    at: &Endpoint,
    tests: &str,
    clients: u32,
    requests: u64,
    pipeline: u32,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &at.port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-P", &pipeline.to_string(), "-t", tests, "-r", "100000", "--csv"]);
    if let Some(user) = &at.user {
        cmd.args(["--user", user]);
    }
    // redis-benchmark takes the password only as an argument; these are throwaway databases.
    cmd.args(["-a", &at.password]);
    let out = cmd.output().context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rates = parse_redis_csv(&text);
    anyhow::ensure!(!rates.is_empty(), "redis-benchmark printed no results: {text}");
    Ok(rates)
}

/// `"test","rps",…` then one line per test: `"SET","98039.22",…`.
fn parse_redis_csv(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim_matches('"'));
            let test = fields.next()?;
            let rps = fields.next()?.parse().ok()?;
            Some((test.to_owned(), rps))
        })
        .collect()
}

/// What a sysbench run reports per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SysbenchRate {
    pub transactions: f64,
    pub queries: f64,
    pub errors: u64,
}

/// One sysbench OLTP test (`oltp_point_select`, `oltp_read_write`) against `db`.
pub fn sysbench(
    at: &Endpoint,
    db: &str,
    test: &str,
    action: &str,
    threads: u32,
    seconds: u32,
    table_size: u32,
) -> anyhow::Result<SysbenchRate> {
    let user = at.user.as_deref().unwrap_or_default();
    let out = Command::new("sysbench")
        .arg(test)
        .args(["--db-driver=mysql", "--mysql-host=127.0.0.1"])
        .arg(format!("--mysql-port={}", at.port))
        .arg(format!("--mysql-user={user}"))
        .arg(format!("--mysql-password={}", at.password))
        .arg(format!("--mysql-db={db}"))
        .args(["--tables=1", &format!("--table-size={table_size}")])
        .arg(format!("--threads={threads}"))
        .arg(format!("--time={seconds}"))
        .args(["--report-interval=0", "--mysql-ignore-errors=1213,1205"])
        .arg(action)
        .output()
        .context("running sysbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "sysbench {test} {action} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if action != "run" {
        return Ok(SysbenchRate { transactions: 0.0, queries: 0.0, errors: 0 });
    }
    parse_sysbench(&text).with_context(|| format!("sysbench printed no rates: {text}"))
}

/// `transactions: 1234 (123.40 per sec.)`, `queries: …`, `ignored errors: 0 (…)`.
fn parse_sysbench(text: &str) -> Option<SysbenchRate> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(name)?.trim();
            let count = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            let rate = rest.split('(').nth(1)?.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((count, rate))
        })
    };
    Some(SysbenchRate {
        transactions: field("transactions:")?.1,
        queries: field("queries:")?.1,
        errors: field("ignored errors:").map_or(0, |(count, _)| count as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"98039.22\",\"0.3\"\n\
                    \"GET\",\"101010.10\",\"0.2\"\n";
        assert_eq!(
            parse_redis_csv(text),
            vec![("SET".to_owned(), 98039.22), ("GET".to_owned(), 101010.10)]
        );
    }

    #[test]
    fn reads_sysbench_report() {
        let text = "SQL statistics:\n    queries performed:\n        read: 140\n\
                    transactions:                        10     (9.98 per sec.)\n\
                    queries:                             200    (199.60 per sec.)\n\
                    ignored errors:                      2      (2.00 per sec.)\n";
        assert_eq!(
            parse_sysbench(text),
            Some(SysbenchRate { transactions: 9.98, queries: 199.6, errors: 2 })
        );
    }
}
