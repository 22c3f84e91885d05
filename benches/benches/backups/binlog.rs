//! The binary log's cost on writes: `sysbench oltp_write_only` against standalone `mariadbd`
//! with Dormouse's binary log settings and without a binary log (and, on request, cheaper ways
//! to keep one).

use std::path::Path;

use anyhow::Context;

use super::mariadb::{DORMOUSE_LOG, mariadb, standalone_cnf, start_mariadbd};
use super::{Sizes, ratio, row, shell};

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

pub(super) async fn phase(dir: &Path, sizes: &Sizes) -> anyhow::Result<()> {
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
