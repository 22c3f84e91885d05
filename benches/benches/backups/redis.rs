//! Redis: ~500 MB of random values, Dormouse's hot backup and restore into a new database
//! against `redis-cli --rdb` + `zstd -1` and `zstd -dc` + `redis-server` on the file.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use dormouse_benches::procs::Guard;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::timed_shell;
use super::{Bench, Instance, Side, Sizes, Table, file_size, first_backup, mb, order};

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

pub(super) async fn phase(bench: &Bench, sizes: &Sizes) -> anyhow::Result<()> {
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
    let mut table = Table::default();
    for round in 0..sizes.rounds {
        for side in order(round) {
            match side {
                Side::Dormouse => dormouse_round(bench, name, round, &mut table).await?,
                Side::Raw => raw_round(bench, &inst, &work, round, &mut table).await?,
            }
        }
    }
    table.print();
    table.ratio(
        "hot backup throughput Dormouse/(rdb + zstd) (target ≥ 0.8×)",
        "hot backup throughput: Dormouse",
        "hot backup throughput: redis-cli --rdb, then zstd -1",
    );
    table.ratio(
        "hot backup throughput Dormouse/(rdb alone)",
        "hot backup throughput: Dormouse",
        "hot backup throughput: redis-cli --rdb alone",
    );
    bench.drop_database(name).await?;
    std::fs::remove_dir_all(&work)?;
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
    table.push("backup plain size (RDB): Dormouse", "MiB", mb(taken.plain));
    table.push("backup stored size: Dormouse (zstd -1 + AES-GCM)", "MiB", mb(taken.stored));
    table.push("hot backup wall: Dormouse (POST → completed)", "s", taken.wall.as_secs_f64());
    table.push("hot backup throughput: Dormouse", "MiB/s", rate);
    table.push("hot backup: Dormouse process CPU", "s", taken.cpu);

    let proxy_port = bench.running.redis_addr.map(|a| a.port()).unwrap_or_default();
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
    table.push("restore: Dormouse POST → 201", "s", to_201.as_secs_f64());
    table.push("restore: Dormouse POST → first GET via proxy", "s", to_query.as_secs_f64());
    table.push("restore: Dormouse process CPU", "s", cpu);
    bench.drop_database(&restored).await?;
    bench.delete_backup(&taken.id).await
}

/// `redis-cli --rdb`, then `zstd -1` of the file; then the compressed file restored by hand.
async fn raw_round(
    bench: &Bench,
    inst: &Instance,
    work: &Path,
    round: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
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
    let zstd_took =
        timed_shell(&format!("zstd -1 -q -f '{}' -o '{}'", rdb.display(), zst.display()))?;
    let (plain, stored) = (file_size(&rdb)?, file_size(&zst)?);
    bench.say(format!(
        "round {round}: raw redis-cli --rdb {:.0} MiB in {:.2} s, zstd -1 → {:.0} MiB in {:.2} s",
        mb(plain),
        rdb_took.as_secs_f64(),
        mb(stored),
        zstd_took.as_secs_f64()
    ));
    let both = rdb_took + zstd_took;
    table.push("backup plain size (RDB): raw", "MiB", mb(plain));
    table.push("backup stored size: raw (zstd -1)", "MiB", mb(stored));
    table.push("hot backup wall: redis-cli --rdb file", "s", rdb_took.as_secs_f64());
    table.push("hot backup wall: zstd -1 of that file", "s", zstd_took.as_secs_f64());
    table.push(
        "hot backup throughput: redis-cli --rdb alone",
        "MiB/s",
        mb(plain) / rdb_took.as_secs_f64(),
    );
    table.push(
        "hot backup throughput: redis-cli --rdb, then zstd -1",
        "MiB/s",
        mb(plain) / both.as_secs_f64(),
    );
    std::fs::remove_file(&rdb)?;

    let (unpack, start) = raw_restore(work, &zst).await?;
    bench.say(format!(
        "round {round}: raw restore zstd -dc {:.2} s, start → first GET {:.2} s",
        unpack.as_secs_f64(),
        start.as_secs_f64()
    ));
    table.push("restore: raw zstd -dc > dump.rdb", "s", unpack.as_secs_f64());
    table.push("restore: raw redis-server start on dump.rdb → first GET", "s", start.as_secs_f64());
    table.push("restore: raw total", "s", (unpack + start).as_secs_f64());
    std::fs::remove_file(&zst)?;
    Ok(())
}

/// The RDB unpacked into a fresh server's directory, then start until the first GET
/// answers: (unpack, start).
async fn raw_restore(work: &Path, zst: &Path) -> anyhow::Result<(Duration, Duration)> {
    let target = work.join("restore");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target)?;
    let unpack = timed_shell(&format!(
        "zstd -dcq '{}' > '{}'",
        zst.display(),
        target.join("dump.rdb").display()
    ))?;
    let started = Instant::now();
    let server = start_redis(&target).await?;
    let start = started.elapsed();
    drop(server);
    std::fs::remove_dir_all(&target)?;
    Ok((unpack, start))
}
