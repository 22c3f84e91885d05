//! Stock clients of other languages (PyMySQL, PHP's mysqli) driven through a scripted
//! session: the job goes to the program as JSON on stdin, what the clients got comes back as
//! lines on stdout.

use std::time::Duration;

use anyhow::Context;

/// The PHP program that runs a mysqli job (see the file for its steps).
pub const MYSQLI_STEPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/mysqli_steps.php");

/// Runs `program` with `args`, gives it `job` on stdin and returns its output lines.
pub async fn run_job(
    program: &str,
    args: &[&str],
    job: &serde_json::Value,
) -> anyhow::Result<Vec<String>> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program} (./scripts/install-deps installs it)"))?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, job.to_string().as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("{program} timed out"))??;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}
