//! Where backups are kept: one `ObjectStore`, the data directory's `backups/` by default, or
//! any S3-compatible bucket by configuration. Keys are laid out per tenant and database:
//! `{tenant}/{database id}/{backup id}.{format}.zst.enc`, with a manifest beside each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// The object store backups go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// A directory on this host.
    Local { dir: PathBuf },
    /// An S3-compatible bucket.
    S3(S3Config),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without a leading or trailing slash; may be empty.
    pub prefix: String,
    /// A non-AWS endpoint (`http://127.0.0.1:9000`); plain HTTP is allowed only when asked.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Parses `s3://bucket[/prefix]`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://bucket/prefix address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket"));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
        })
    }
}

impl StorageConfig {
    /// Where the backups are, for logs (never credentials).
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Local { dir } => dir.display().to_string(),
            StorageConfig::S3(s3) => {
                let at = s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
                format!("s3://{}/{}{at}", s3.bucket, s3.prefix)
            }
        }
    }

    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        match self {
            StorageConfig::Local { dir } => {
                // Sealed as they are, backups still name tenants and databases: the directory
                // is control's alone.
                let private = std::fs::create_dir_all(dir).and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                });
                private.map_err(|e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })?;
                // Empty directories left by deleted backups are removed as they empty.
                let local = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
                Ok(Arc::new(local))
            }
            StorageConfig::S3(s3) => {
                // A store that is down fails a backup in seconds, not the client's default
                // three minutes: a deletion waits for its final backup.
                let retry = RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                };
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_retry(retry);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = builder.build()?;
                if s3.prefix.is_empty() {
                    Ok(Arc::new(store))
                } else {
                    Ok(Arc::new(PrefixStore::new(store, s3.prefix.as_str())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_addresses_name_a_bucket_and_a_prefix() {
        let c = S3Config::from_url("s3://backups/prod/eu/").expect("parses");
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("backups", "prod/eu"));
        assert_eq!(S3Config::from_url("s3://b").expect("parses").prefix, "");
        assert!(S3Config::from_url("s3:///x").is_err());
        assert!(S3Config::from_url("http://b").is_err());
        let mut c = S3Config::from_url("s3://b").expect("parses");
        c.secret_access_key = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
