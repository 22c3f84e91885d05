//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on a port the
//! kernel picks, with one bucket, stopped when dropped.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct MotoServer {
    _child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl MotoServer {
    /// Starts moto and makes `bucket` in it.
    pub async fn start(bucket: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting moto_server (pip install \"moto[server]\")")?;
        let stderr = child.stderr.take().context("moto's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        // It says where it listens once it does: " * Running on http://127.0.0.1:PORT".
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.split("Running on ").nth(1) {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("moto_server exited before listening")
        })
        .await
        .context("moto_server did not start in 30 s")??;
        // Keep reading its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let made = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await?;
        if !made.status().is_success() {
            bail!("creating bucket {bucket}: {}", made.status());
        }
        Ok(Self { _child: child, endpoint, bucket: bucket.to_owned() })
    }

    /// Control's backup settings for this server, with objects under `prefix`.
    pub fn backup_config(
        &self,
        prefix: &str,
    ) -> anyhow::Result<dormouse_control::backup::BackupConfig> {
        let address = format!("s3://{}/{prefix}", self.bucket);
        let mut s3 =
            dormouse_control::backup::S3Config::from_url(&address).map_err(anyhow::Error::msg)?;
        s3.endpoint = Some(self.endpoint.clone());
        s3.access_key_id = Some("test".into());
        s3.secret_access_key = Some("test".into());
        Ok(dormouse_control::backup::BackupConfig {
            storage: dormouse_control::backup::StorageConfig::S3(s3),
            concurrency: 1,
        })
    }
}
