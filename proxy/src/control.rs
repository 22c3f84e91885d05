//! What the proxy asks of control: the token-signing public keys, the route to a database, and
//! whether a token was revoked. `HttpControl` asks over control's internal API; `dormouse up`
//! plugs control in directly.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

/// The wire protocol a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Redis,
    Mysql,
}

/// The backend password; never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendSecret(pub String);

impl fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackendSecret(***)")
    }
}

/// How to reach a database's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    /// The internal user the proxy authenticates as.
    pub user: String,
    pub password: BackendSecret,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Control could not be asked, or failed; the client may retry.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The database exists but cannot be reached now.
    #[error("database not available: {0}")]
    NotRunning(String),
}

#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// The public keys tokens are signed with.
    async fn jwks(&self) -> Result<JwkSet, ControlError>;
    /// Whether the token with this id was revoked.
    async fn is_revoked(&self, jti: &str) -> Result<bool, ControlError>;
    /// Where `tenant`'s database `database` is served, or `None` if it has no such database.
    async fn route(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError>;
}

/// Internal API paths, shared with control's router.
pub mod paths {
    pub const JWKS: &str = "/.well-known/jwks.json";
    pub const REVOCATIONS: &str = "/internal/v1/revocations";
    pub const ROUTES: &str = "/internal/v1/routes";
}

/// Body of the revocations endpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Revocations {
    /// Ids of revoked tokens that have not expired yet.
    pub revoked: Vec<String>,
}

/// Talks to control's internal HTTP API with an operator token.
pub struct HttpControl {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Revocations are fetched as a whole list and trusted for `revocation_ttl`.
    revocation_ttl: Duration,
    revoked: Mutex<Option<(Instant, HashSet<String>)>>,
}

impl HttpControl {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            revocation_ttl: Duration::from_secs(1),
            revoked: Mutex::new(None),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ControlError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                Err(ControlError::NotRunning(resp.text().await.unwrap_or_default()))
            }
            s if s.is_success() => {
                resp.json().await.map(Some).map_err(|e| ControlError::Unavailable(e.to_string()))
            }
            s => Err(ControlError::Unavailable(format!("GET {path}: HTTP {s}"))),
        }
    }
}

#[async_trait]
impl ControlPlane for HttpControl {
    async fn jwks(&self) -> Result<JwkSet, ControlError> {
        Ok(self.get(paths::JWKS).await?.unwrap_or_default())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, ControlError> {
        {
            let cached = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, set)) = cached.as_ref()
                && at.elapsed() < self.revocation_ttl
            {
                return Ok(set.contains(jti));
            }
        }
        let list: Revocations = self.get(paths::REVOCATIONS).await?.unwrap_or_default();
        let set: HashSet<String> = list.revoked.into_iter().collect();
        let hit = set.contains(jti);
        *self.revoked.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), set));
        Ok(hit)
    }

    async fn route(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        self.get(&format!("{}/{tenant}/{database}", paths::ROUTES)).await
    }
}
