//! Handlers, one file per resource.

pub mod backups;
pub mod databases;
pub mod health;
pub mod internal;
pub mod tenants;
pub mod tokens;

use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 text for seconds since the epoch.
pub fn timestamp(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or_default());
    humantime::format_rfc3339_seconds(t).to_string()
}
