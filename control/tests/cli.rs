//! The `dormouse` binary as a user runs it: `up` on kernel-chosen ports, then the client
//! commands against its API, then SIGTERM for a clean stop; and `control` and `proxy` run
//! apart, as on a fleet.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_dormouse");

/// A `dormouse` server process, killed when dropped.
struct Server {
    child: Child,
    /// What it printed up to the line it was waited for.
    printed: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Runs `dormouse` with `args` and reads what it prints until a line containing `until`.
    fn start(data_dir: &std::path::Path, args: &[&str], until: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(BIN)
            .args(["--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("DORMOUSE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut server = Self { child, printed: Vec::new() };
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            let done = line.contains(until);
            server.printed.push(line);
            if done {
                // Keep reading, so the server never writes into a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(server);
            }
        }
        anyhow::bail!("dormouse {args:?} ended before printing {until:?}: {:?}", server.printed)
    }

    /// The value it printed after `label` (an endpoint).
    fn printed(&self, label: &str) -> anyhow::Result<String> {
        self.printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow::anyhow!("{label} not printed: {:?}", self.printed))
    }
}

struct Up {
    server: Server,
    api: String,
    redis: String,
}

/// Starts `dormouse up` and reads the endpoints it prints.
fn up(data_dir: &std::path::Path) -> anyhow::Result<Up> {
    let args = ["up", "--api-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0"];
    let server = Server::start(
        data_dir,
        &[&args[..], &["--mysql-listen", "127.0.0.1:0", "--demo"]].concat(),
        "redis-cli",
    )?;
    Ok(Up { api: server.printed("API:")?, redis: server.printed("Redis:")?, server })
}

fn dormouse(
    api: &str,
    data_dir: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.arg("--api").arg(api).arg("--data-dir").arg(data_dir).env_remove("DORMOUSE_TOKEN");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd.args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Creates tenant `acme` with the operator's token from the data directory; returns the
/// tenant's token.
fn tenant(api: &str, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let (ok, out, err) = dormouse(api, data_dir, None, &["--json", "tenant", "create", "acme"])?;
    anyhow::ensure!(ok, "{err}");
    let tenant: serde_json::Value = serde_json::from_str(&out)?;
    Ok(tenant["token"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn the_cli_drives_a_running_dormouse_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut up = up(dir.path())?;

    // The operator's token is picked up from the data directory.
    let token = tenant(&up.api, dir.path())?;

    let (ok, out, err) = dormouse(
        &up.api,
        dir.path(),
        Some(&token),
        &["db", "create", "cache", "--engine", "redis"],
    )?;
    assert!(ok, "{err}");
    assert!(out.contains("is running"), "{out}");
    let command =
        out.lines().find_map(|l| l.strip_prefix("connect: ")).unwrap_or_default().to_owned();
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args.first(), Some(&"redis-cli"));
    assert!(
        command.contains(up.redis.rsplit(':').next().unwrap_or("?")),
        "{command} vs {}",
        up.redis
    );
    // The printed command line works as pasted.
    let pasted = Command::new(args[0]).args(&args[1..]).args(["SET", "k", "v"]).output()?;
    assert_eq!(String::from_utf8_lossy(&pasted.stdout).trim(), "OK");

    let (ok, out, _) = dormouse(&up.api, dir.path(), Some(&token), &["db", "list"])?;
    assert!(ok && out.contains("cache") && out.contains("running"), "{out}");
    let (ok, out, _) = dormouse(
        &up.api,
        dir.path(),
        Some(&token),
        &["token", "create", "--database", "cache", "--role", "readonly", "--ttl", "1h"],
    )?;
    assert!(ok && out.contains("readonly"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let (ok, out, _) = dormouse(&up.api, dir.path(), Some(&token), &["token", "revoke", &id])?;
    assert!(ok && out.contains("revoked"), "{out}");

    // Errors are clear and exit non-zero.
    let (ok, _, err) = dormouse(
        &up.api,
        dir.path(),
        Some(&token),
        &["db", "create", "cache", "--engine", "redis"],
    )?;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = dormouse(&up.api, dir.path(), Some(&token), &["db", "show", "nope"])?;
    assert!(!ok && err.contains("no database named"), "{err}");

    // Address allowlists: set at creation, shown, replaced, cleared; a bad one is named.
    let cli = |args: &[&str]| dormouse(&up.api, dir.path(), Some(&token), args);
    let (ok, _, err) = cli(&[
        "db",
        "create",
        "guarded",
        "--engine",
        "redis",
        "--lazy",
        "--allow",
        "127.0.0.2",
        "--allow",
        "10.0.0.0/8",
    ])?;
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["db", "show", "guarded"])?;
    assert!(ok && out.contains("allowed     127.0.0.2/32, 10.0.0.0/8"), "{out}");
    let (ok, out, err) = cli(&["db", "set", "guarded", "--allow", "192.0.2.0/24"])?;
    assert!(ok && out.contains("accepts clients from 192.0.2.0/24"), "{out}{err}");
    let (ok, _, err) = cli(&["db", "set", "guarded", "--allow", "10.0.0.0/33"])?;
    assert!(!ok && err.contains("\"10.0.0.0/33\""), "{err}");
    let (ok, _, _) = cli(&["db", "set", "guarded", "--allow", "10.0.0.0/8", "--allow-any"])?;
    assert!(!ok, "one or the other");
    let (ok, out, err) = cli(&["db", "set", "guarded", "--allow-any"])?;
    assert!(ok && out.contains("accepts clients from any address"), "{out}{err}");
    let (ok, out, _) = cli(&["db", "show", "guarded"])?;
    assert!(ok && out.contains("allowed     any address"), "{out}");

    let (ok, _, err) = cli(&["db", "delete", "cache"])?;
    assert!(!ok && err.contains("--yes"), "nothing typed, nothing deleted: {err}");
    let (ok, out, err) = cli(&["db", "delete", "cache", "--yes"])?;
    assert!(ok && out.contains("dormouse db undelete cache"), "{out}{err}");
    let (ok, out, err) = cli(&["backup", "list", "--database", "cache"])?;
    assert!(ok && out.contains(" final ") && out.contains("completed"), "{out}{err}");
    let (ok, out, err) = cli(&["db", "undelete", "cache"])?;
    assert!(ok && out.contains("database cache is back (suspended)"), "{out}{err}");
    let (ok, out, err) = cli(&["backup", "create", "cache", "--wait", "--name", "nightly"])?;
    assert!(ok && out.contains("status        completed"), "{out}{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let (ok, out, err) = cli(&["db", "restore", "cache", "--backup", &id])?;
    assert!(ok && out.contains(&format!("restored from {id}")), "{out}{err}");
    let (ok, out, err) = cli(&["db", "create", "cache-copy", "--from-backup", &id])?;
    assert!(ok && out.contains("database cache-copy (redis"), "{out}{err}");
    let (ok, out, err) = cli(&["backup", "schedule", "cache", "--every", "6h", "--keep", "3"])?;
    assert!(ok && out.contains("every      6h") && out.contains("newest 3"), "{out}{err}");
    let (ok, _, err) = cli(&["db", "delete", "cache", "--yes", "--now"])?;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["db", "undelete", "cache"])?;
    assert!(!ok && err.contains("no deleted database named \"cache\""), "deleted for good: {err}");

    // SIGTERM stops everything, including the demo database's server.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.server.child.id() as i32),
        nix::sys::signal::SIGTERM,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = up.server.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    Ok(())
}

/// A port nobody listens on now, for a server that must be told its port before it starts.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn control_and_proxy_run_apart_and_connection_strings_point_at_the_proxy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (control_dir, proxy_dir) = (dir.path().join("control"), dir.path().join("proxy"));
    let (redis_port, mysql_port) = (free_port()?, free_port()?);
    let control = Server::start(
        &control_dir,
        &[
            "control",
            "--api-listen",
            "127.0.0.1:0",
            "--public-redis-port",
            &redis_port.to_string(),
            "--public-mysql-port",
            &mysql_port.to_string(),
        ],
        "admin token",
    )?;
    let api = control.printed("API:")?;
    let operator = std::fs::read_to_string(control_dir.join("admin.token"))?.trim().to_owned();
    let redis_listen = format!("127.0.0.1:{redis_port}");
    let mysql_listen = format!("127.0.0.1:{mysql_port}");
    let proxy = Server::start(
        &proxy_dir,
        &[
            "--token",
            &operator,
            "proxy",
            "--control",
            &api,
            "--redis-listen",
            &redis_listen,
            "--mysql-listen",
            &mysql_listen,
        ],
        "MySQL:",
    )?;
    assert_eq!(proxy.printed("Redis:")?, redis_listen);

    let token = tenant(&api, &control_dir)?;
    let (ok, out, err) = dormouse(
        &api,
        &control_dir,
        Some(&token),
        &["--json", "db", "create", "cache", "--engine", "redis"],
    )?;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out)?;
    let connection = &created["connection"];
    assert_eq!(connection["host"], "127.0.0.1", "{created}");
    assert_eq!(connection["port"], redis_port, "{created}");

    // The printed command line reaches the database through the proxy running apart.
    let command = connection["command"].as_str().unwrap_or_default();
    let args: Vec<&str> = command.split_whitespace().collect();
    anyhow::ensure!(args.first() == Some(&"redis-cli"), "{command}");
    let pasted = Command::new(args[0]).args(&args[1..]).args(["SET", "k", "v"]).output()?;
    assert_eq!(String::from_utf8_lossy(&pasted.stdout).trim(), "OK", "{pasted:?}");
    let pasted = Command::new(args[0]).args(&args[1..]).args(["GET", "k"]).output()?;
    assert_eq!(String::from_utf8_lossy(&pasted.stdout).trim(), "v", "{pasted:?}");

    // An allowlist travels with the route to the proxy running apart: once it leaves this
    // address out (within the proxy's route TTL), the same command line is refused.
    let (ok, _, err) = dormouse(
        &api,
        &control_dir,
        Some(&token),
        &["db", "set", "cache", "--allow", "192.0.2.1"],
    )?;
    assert!(ok, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pasted = Command::new(args[0]).args(&args[1..]).args(["GET", "k"]).output()?;
        let said = [pasted.stdout.as_slice(), pasted.stderr.as_slice()].concat();
        if String::from_utf8_lossy(&said).contains("WRONGPASS") {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "still let in: {pasted:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(proxy);
    drop(control);
    Ok(())
}
