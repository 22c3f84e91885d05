//! What a Dormouse token says. Control signs these claims as an EdDSA JWT; the proxy verifies
//! them offline. Field names are short because a token must stay under 400 bytes (the MySQL RSA
//! password path caps passwords at 469 bytes).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most a token may be, in bytes.
pub const MAX_TOKEN_BYTES: usize = 400;

/// Database (and tenant) names: `[a-z][a-z0-9_-]{0,62}`, usable as a MySQL user and schema
/// name and in URLs as is. The proxy checks names clients send against the same rule control
/// enforces when they are created.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only data access.
    Readonly,
    /// Full data access.
    Readwrite,
    /// Full data access plus management through the API (databases, tokens).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    pub fn can_write(self) -> bool {
        self >= Role::Readwrite
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "readonly" => Ok(Role::Readonly),
            "readwrite" => Ok(Role::Readwrite),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (expected admin, readwrite or readonly)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Tenant id; absent on the platform operator's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The one database this token is limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: String,
}

impl Claims {
    pub fn is_operator(&self) -> bool {
        self.sub.is_none() && self.role == Role::Admin
    }
}
