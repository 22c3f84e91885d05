//! The `dormouse` binary as a user runs it: `up` on kernel-chosen ports, then the client
//! commands against its API, then SIGTERM for a clean stop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_dormouse");

struct Up {
    child: Child,
    api: String,
    redis: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dormouse up` and reads the endpoints it prints.
fn up(data_dir: &std::path::Path) -> anyhow::Result<Up> {
    let mut child = Command::new(BIN)
        .args(["--data-dir"])
        .arg(data_dir)
        .args(["up", "--api-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0"])
        .args(["--mysql-listen", "127.0.0.1:0", "--demo"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (mut api, mut redis) = (String::new(), String::new());
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(a) = line.trim().strip_prefix("API:") {
            api = a.trim().to_owned();
        }
        if let Some(r) = line.trim().strip_prefix("Redis:") {
            redis = r.trim().to_owned();
        }
        if line.contains("redis-cli") {
            break;
        }
    }
    anyhow::ensure!(!api.is_empty() && !redis.is_empty(), "endpoints not printed");
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Up { child, api, redis })
}

fn dormouse(
    up: &Up,
    data_dir: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.arg("--api").arg(&up.api).arg("--data-dir").arg(data_dir).env_remove("DORMOUSE_TOKEN");
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

#[test]
fn the_cli_drives_a_running_dormouse_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut up = up(dir.path())?;

    // The operator's token is picked up from the data directory.
    let (ok, out, err) = dormouse(&up, dir.path(), None, &["--json", "tenant", "create", "acme"])?;
    assert!(ok, "{err}");
    let tenant: serde_json::Value = serde_json::from_str(&out)?;
    let token = tenant["token"].as_str().unwrap_or_default().to_owned();

    let (ok, out, err) =
        dormouse(&up, dir.path(), Some(&token), &["db", "create", "cache", "--engine", "redis"])?;
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

    let (ok, out, _) = dormouse(&up, dir.path(), Some(&token), &["db", "list"])?;
    assert!(ok && out.contains("cache") && out.contains("running"), "{out}");
    let (ok, out, _) = dormouse(
        &up,
        dir.path(),
        Some(&token),
        &["token", "create", "--database", "cache", "--role", "readonly", "--ttl", "1h"],
    )?;
    assert!(ok && out.contains("readonly"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let (ok, out, _) = dormouse(&up, dir.path(), Some(&token), &["token", "revoke", &id])?;
    assert!(ok && out.contains("revoked"), "{out}");

    // Errors are clear and exit non-zero.
    let (ok, _, err) =
        dormouse(&up, dir.path(), Some(&token), &["db", "create", "cache", "--engine", "redis"])?;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = dormouse(&up, dir.path(), Some(&token), &["db", "show", "nope"])?;
    assert!(!ok && err.contains("no database named"), "{err}");

    let (ok, _, _) = dormouse(&up, dir.path(), Some(&token), &["db", "delete", "cache"])?;
    assert!(ok);

    // SIGTERM stops everything, including the demo database's server.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.child.id() as i32),
        nix::sys::signal::SIGTERM,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = up.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    Ok(())
}
