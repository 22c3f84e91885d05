//! MariaDB: a ~1 GiB sysbench dataset, Dormouse's hot backup and restore into a new database
//! against `mariadb-backup | zstd -1` and `zstd -dc | mbstream -x` + `--prepare` + start.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use dormouse_benches::procs::{self, Guard};
use mysql_async::prelude::Queryable;

use super::{Bench, Instance, Side, Sizes, Table, du_bytes, file_size, first_backup, mb, order};
use super::{shell, timed_shell};

/// `mariadb` as root over a server's socket (root has an empty password there).
pub(super) fn mariadb(socket: &Path, sql: &str) -> anyhow::Result<String> {
    shell(&format!("mariadb -uroot --socket='{}' -N -B -e \"{sql}\"", socket.display()))
}

/// Dormouse's binary log and durability settings (`render_my_cnf`).
pub(super) const DORMOUSE_LOG: &str = "log_bin=binlog\nbinlog_format=ROW\nsync_binlog=1\n\
                            log_bin_trust_function_creators=1\ninnodb_flush_log_at_trx_commit=1\n";

/// Settings of `render_my_cnf` (engines/src/mariadb/config.rs) that matter for throughput,
/// with `log` (binary log and durability), plus what a standalone server run by the benchmark
/// needs.
pub(super) fn standalone_cnf(dir: &Path, log: &str) -> String {
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
pub(super) async fn start_mariadbd(dir: &Path, sql: &str) -> anyhow::Result<Guard> {
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

const FIRST_QUERY: &str = "SELECT id FROM sbtest1 WHERE id = 1";

pub(super) async fn phase(bench: &Bench, sizes: &Sizes) -> anyhow::Result<()> {
    println!("== MariaDB: hot backup and restore ==");
    let name = "msrc";
    bench.create("mysql", name).await?;
    let inst = bench.instance(name).await?;
    load(bench, &inst, name, sizes)?;
    first_backup(bench, name).await?;
    let work = bench.dir.join("raw-mariadb");
    std::fs::create_dir_all(&work)?;
    let mut table = Table::default();
    for round in 0..sizes.rounds {
        for side in order(round) {
            match side {
                Side::Dormouse => dormouse_round(bench, name, round, &mut table).await?,
                Side::Raw => raw_round(bench, &inst, &work, name, round, &mut table).await?,
            }
        }
    }
    table.print();
    table.ratio(
        "hot backup throughput Dormouse/raw (target ≥ 0.8×)",
        "hot backup throughput: Dormouse",
        "hot backup throughput: mariadb-backup | zstd -1",
    );
    bench.drop_database(name).await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// sysbench's tables into the instance, as root over its socket; prints what it came to.
fn load(bench: &Bench, inst: &Instance, name: &str, sizes: &Sizes) -> anyhow::Result<()> {
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
    let sql = format!(
        "SELECT SUM(data_length + index_length) FROM information_schema.tables \
         WHERE table_schema = '{name}'"
    );
    let tables: u64 = mariadb(&socket, &sql)?.trim().parse()?;
    let data = inst.dir.join("data");
    println!(
        "dataset: {} tables x {} rows (sysbench prepare {:.1} s): tables {:.0} MiB, .ibd files \
         {:.0} MiB, data directory {:.0} MiB (binary log included)",
        sizes.tables,
        sizes.table_size,
        took.as_secs_f64(),
        mb(tables),
        mb(du_bytes(&data.join(name))?),
        mb(du_bytes(&data)?)
    );
    Ok(())
}

/// A backup through the API, then a restore of it into a new database.
async fn dormouse_round(
    bench: &Bench,
    name: &str,
    round: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
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
    table.push("backup plain size: Dormouse", "MiB", mb(taken.plain));
    table.push("backup stored size: Dormouse (zstd -1 + AES-GCM)", "MiB", mb(taken.stored));
    table.push("hot backup wall: Dormouse (POST → completed)", "s", taken.wall.as_secs_f64());
    table.push("hot backup throughput: Dormouse", "MiB/s", rate);
    table.push("hot backup: Dormouse process CPU", "s", taken.cpu);

    let proxy_port = bench.running.mysql_addr.map(|a| a.port()).unwrap_or_default();
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
    table.push("restore: Dormouse POST → 201", "s", to_201.as_secs_f64());
    table.push("restore: Dormouse POST → first query via proxy", "s", to_query.as_secs_f64());
    table.push("restore: Dormouse process CPU", "s", cpu);
    let rate = mb(taken.plain) / to_query.as_secs_f64();
    table.push("restore throughput (plain / to first query): Dormouse", "MiB/s", rate);
    bench.drop_database(&restored).await?;
    bench.delete_backup(&taken.id).await
}

/// `mariadb-backup | zstd -1` of the same instance, then that file restored by hand.
async fn raw_round(
    bench: &Bench,
    inst: &Instance,
    work: &Path,
    name: &str,
    round: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    let file = work.join("full.xb.zst");
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
        sock = inst.dir.join(dormouse_engines::mariadb::SOCKET_FILE).display(),
        tmp = tmp.display(),
        lsn = lsn.display(),
        work = work.display(),
        file = file.display(),
    ))?;
    let plain: u64 = shell(&format!("zstd -dcq '{}' | wc -c", file.display()))?.trim().parse()?;
    let stored = file_size(&file)?;
    let rate = mb(plain) / wall.as_secs_f64();
    bench.say(format!(
        "round {round}: raw backup {:.0} MiB plain, {:.0} MiB stored, {:.2} s, {rate:.0} MiB/s",
        mb(plain),
        mb(stored),
        wall.as_secs_f64()
    ));
    table.push("backup plain size: raw", "MiB", mb(plain));
    table.push("backup stored size: raw (zstd -1)", "MiB", mb(stored));
    table.push("hot backup wall: mariadb-backup | zstd -1 > file", "s", wall.as_secs_f64());
    table.push("hot backup throughput: mariadb-backup | zstd -1", "MiB/s", rate);

    let (unpack, prepare, start, total) = raw_restore(work, &file, name).await?;
    bench.say(format!(
        "round {round}: raw restore unpack {:.2} s, prepare {:.2} s, start → query {:.2} s, \
         total {:.2} s",
        unpack.as_secs_f64(),
        prepare.as_secs_f64(),
        start.as_secs_f64(),
        total.as_secs_f64()
    ));
    table.push("restore: raw zstd -dc | mbstream -x", "s", unpack.as_secs_f64());
    table.push("restore: raw mariadb-backup --prepare", "s", prepare.as_secs_f64());
    table.push("restore: raw start → first query", "s", start.as_secs_f64());
    table.push("restore: raw total", "s", total.as_secs_f64());
    let rate = mb(plain) / total.as_secs_f64();
    table.push("restore throughput (plain / to first query): raw", "MiB/s", rate);
    std::fs::remove_file(&file)?;
    Ok(())
}

/// Unpack, prepare, start on a configuration like the instance's, until the first query
/// answers: (unpack, prepare, start, total).
async fn raw_restore(
    work: &Path,
    file: &Path,
    name: &str,
) -> anyhow::Result<(Duration, Duration, Duration, Duration)> {
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
    let query = format!("SELECT id FROM {name}.sbtest1 WHERE id = 1");
    let server = start_mariadbd(&target, &query).await?;
    let start = before_start.elapsed();
    let total = started.elapsed();
    drop(server);
    std::fs::remove_dir_all(&target)?;
    Ok((unpack, prepare, start, total))
}
