//! What an instance is: its id, engine, resource limits, and the secret of its internal user.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The datastores Dormouse runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Redis,
    Mysql,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Mysql, EngineKind::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Redis => "redis",
            EngineKind::Mysql => "mysql",
        }
    }

    /// Names a database of this engine may not take, with why: a MySQL database's name is
    /// its schema's, and these schemas belong to the server (`test` is one by convention: some
    /// installations grant every user rights on it and on `test_%`).
    pub fn reserved(self, name: &str) -> Option<&'static str> {
        const MYSQL: &[&str] =
            &["mysql", "sys", "performance_schema", "information_schema", "test"];
        match self {
            EngineKind::Mysql if MYSQL.contains(&name) => Some("a MariaDB system schema"),
            EngineKind::Mysql | EngineKind::Redis => None,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = UnknownEngine;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redis" => Ok(EngineKind::Redis),
            "mysql" => Ok(EngineKind::Mysql),
            _ => Err(UnknownEngine(s.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown engine {0:?}")]
pub struct UnknownEngine(pub String);

/// Instance id: also the name of its directory, so only `[a-z0-9_-]` is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInstanceId> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok { Ok(Self(id)) } else { Err(InvalidInstanceId(id)) }
    }

    /// A fresh random id, `i-` followed by 16 hex digits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("i-{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid instance id {0:?}")]
pub struct InvalidInstanceId(pub String);

/// A secret string; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// 32 random bytes as 64 hex digits: safe inside any config file or protocol field.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resource limits an engine applies to its server (from the database's plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory for data: Redis `maxmemory`, MariaDB buffer pool.
    pub memory_mb: u32,
    /// Server-side connection cap.
    pub max_connections: u32,
}

/// Everything the agent needs to run one database's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// The database's name as its tenant knows it (the MariaDB schema).
    pub name: String,
    pub engine: EngineKind,
    pub limits: Limits,
    /// Password of the internal user that only the proxy uses.
    pub password: Secret,
    /// Preferred port; 0 lets the agent choose. A taken port is replaced by a free one.
    pub port: u16,
}

/// Where a running instance listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The server's Unix socket on its host, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_safe_directory_names() {
        assert!(InstanceId::new("i-0123abcd").is_ok());
        assert!(InstanceId::new("../etc").is_err());
        assert!(InstanceId::new("").is_err());
        assert!(InstanceId::new("A").is_err());
        assert!(InstanceId::new(InstanceId::generate().as_str()).is_ok());
    }

    #[test]
    fn system_schemas_are_reserved_for_mysql_only() {
        for name in ["mysql", "sys", "performance_schema", "information_schema", "test"] {
            assert!(EngineKind::Mysql.reserved(name).is_some(), "{name}");
            assert!(EngineKind::Redis.reserved(name).is_none(), "{name}");
        }
        assert!(EngineKind::Mysql.reserved("m_sql").is_none(), "escaped in grants instead");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::generate();
        assert_eq!(s.expose().len(), 64);
        assert!(!format!("{s:?}").contains(s.expose()));
    }
}
