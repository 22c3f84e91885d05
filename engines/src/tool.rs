//! Running the command-line tools backups use (`mariadb-backup`, `mbstream`, `redis-cli`):
//! bytes streamed out of or into them, their stderr kept in a file, and a failure that quotes
//! their last lines. A tool that exits non-zero or is killed is an error, whatever it wrote.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

use crate::confine::Owner;
use crate::engine::{EngineError, find_program};
use crate::process::log_tail;

/// How much of a tool's stderr an error quotes.
const QUOTED: usize = 600;

/// Finds a tool, or says which package brings it.
pub fn require(program: &'static str, package: &'static str) -> Result<PathBuf, EngineError> {
    find_program(program).ok_or(EngineError::NotInstalled { program, package })
}

/// A tool's command with its stderr going to `log`, optionally run as an instance's own user
/// (restores run their tools as the owner of the directory they fill, so a crafted stream
/// cannot make them write anywhere that user could not).
pub fn command(program: &Path, log: &Path, owner: Option<Owner>) -> Result<Command, EngineError> {
    let stderr = std::fs::File::create(log)
        .map_err(EngineError::io(format!("creating {}", log.display())))?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).kill_on_drop(true);
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
    Ok(cmd)
}

/// Runs `cmd` copying its stdout into `out`; returns the bytes copied.
pub async fn stream_out(
    mut cmd: Command,
    name: &str,
    log: &Path,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<u64, EngineError> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(spawn_error(name))?;
    let mut stdout =
        child.stdout.take().ok_or_else(|| EngineError::Failed(format!("{name}: no stdout")))?;
    let copied = tokio::io::copy(&mut stdout, out).await;
    let copied = match copied {
        Ok(n) => n,
        Err(e) => {
            // Dropping the child kills it: nobody reads what it would still write.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(EngineError::Failed(format!(
                "copying the output of {name}: {e} ({})",
                log_tail(log, QUOTED)
            )));
        }
    };
    finish(child, name, log).await?;
    out.flush().await.map_err(EngineError::io("writing the backup"))?;
    Ok(copied)
}

/// Runs `cmd` feeding `input` to its stdin until `input` ends; an error reading `input`
/// kills the tool and fails.
pub async fn stream_in(
    mut cmd: Command,
    name: &str,
    log: &Path,
    input: &mut (dyn AsyncRead + Send + Unpin),
) -> Result<u64, EngineError> {
    let mut child = cmd.stdin(Stdio::piped()).spawn().map_err(spawn_error(name))?;
    let mut stdin =
        child.stdin.take().ok_or_else(|| EngineError::Failed(format!("{name}: no stdin")))?;
    let copied = match tokio::io::copy(input, &mut stdin).await {
        Ok(n) => n,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let side = if e.kind() == std::io::ErrorKind::BrokenPipe {
                format!("{name} stopped reading: {}", log_tail(log, QUOTED))
            } else {
                format!("reading the backup: {e}")
            };
            return Err(EngineError::Failed(side));
        }
    };
    // EOF for the tool.
    drop(stdin);
    finish(child, name, log).await?;
    Ok(copied)
}

/// Runs a client's one short request to its end (at most 10 s), with `input` on its stdin if
/// given (statements go there, never on a command line other users can read); returns its
/// stdout, or its stderr as the error.
pub async fn output(
    mut cmd: Command,
    name: &str,
    input: Option<&[u8]>,
) -> Result<String, EngineError> {
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error(name))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).await.map_err(EngineError::io(format!("writing to {name}")))?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| EngineError::Failed(format!("{name} timed out")))?
        .map_err(EngineError::io(format!("running {name}")))?;
    if !out.status.success() {
        return Err(EngineError::Failed(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to its end.
pub async fn run(mut cmd: Command, name: &str, log: &Path) -> Result<(), EngineError> {
    let child = cmd.spawn().map_err(spawn_error(name))?;
    finish(child, name, log).await
}

async fn finish(
    mut child: tokio::process::Child,
    name: &str,
    log: &Path,
) -> Result<(), EngineError> {
    let status = child.wait().await.map_err(EngineError::io(format!("waiting for {name}")))?;
    if status.success() {
        return Ok(());
    }
    Err(EngineError::Failed(format!("{name} failed ({status}): {}", log_tail(log, QUOTED).trim())))
}

fn spawn_error(name: &str) -> impl FnOnce(std::io::Error) -> EngineError {
    EngineError::io(format!("running {name}"))
}
