//! What the proxy asks of and tells control: the token-signing public keys, routes to
//! databases, revocations, waking sleeping databases, and how many client sessions each
//! database has (so control can suspend idle ones). `HttpControl` speaks control's internal
//! API; `dormouse up` plugs control in directly.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::allowlist::AllowList;

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
    /// The server's Unix socket on its host; the proxy uses it when it can open it (same
    /// host), else TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<std::path::PathBuf>,
    /// The internal user the proxy authenticates as.
    pub user: String,
    /// The user for read-only tokens, whose writes the server itself refuses (with the
    /// proxy's own check before it on Redis). Redis falls back to `user` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_user: Option<String>,
    /// Redis: the user the proxy runs `INFO` as, the only one the server lets run it (so no
    /// script reads what the proxy filters out of it). Without one, `INFO` runs as `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_user: Option<String>,
    pub password: BackendSecret,
    /// What the database's plan allows through the proxy.
    #[serde(default)]
    pub limits: RouteLimits,
    /// Client addresses the database accepts; empty (or absent, from an older control) means
    /// any. Checked once a token has been verified: see [`crate::auth::route_for`].
    #[serde(default, skip_serializing_if = "AllowList::is_empty")]
    pub allowed_cidrs: AllowList,
}

impl Route {
    /// What identifies the server a route leads to, for pooling: its socket when it has one
    /// (which names the instance, and stays when the server restarts on another port), else
    /// its TCP address.
    pub fn server(&self) -> String {
        match &self.socket {
            // Not `display()`: this runs for every borrowed connection, and formatting costs.
            Some(path) => path.to_string_lossy().into_owned(),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Per-database limits the proxy enforces, from the database's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLimits {
    /// Client connections at once, over all proxies' sessions on this one.
    pub max_clients: u32,
    /// Backend connections the proxy may open to the server (per protocol flavour).
    pub max_backend: u32,
}

impl Default for RouteLimits {
    fn default() -> Self {
        Self { max_clients: 10_000, max_backend: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Control could not be asked, or failed; asking again may work.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The database is suspended (or its server is down): wake it.
    #[error("database is asleep")]
    Asleep,
    /// Waking the database failed; `retryable` says whether trying again soon may help.
    #[error("the database could not be started: {message}")]
    WakeFailed { message: String, retryable: bool },
}

impl ControlError {
    /// What a client is told when it cannot reach `database` for this reason, in words that
    /// fit a MySQL error message or a Redis `-ERR` line.
    pub fn for_client(&self, database: &str) -> String {
        match self {
            // Retrying at once would not help: control says when it tries again.
            ControlError::WakeFailed { message, retryable: false } => {
                format!("Dormouse: database '{database}' could not be started: {message}")
            }
            other => format!("Dormouse: database '{database}' is unavailable ({other}); try again"),
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            ControlError::Unavailable(_) => true,
            ControlError::Asleep => true,
            ControlError::WakeFailed { retryable, .. } => *retryable,
        }
    }
}

/// Something control did that proxies must act on before it takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// The database's server is about to stop: drop its routes and pooled connections.
    Suspending { tenant: String, database: String },
    /// The database's server started (maybe on a new port): drop cached routes.
    Woke { tenant: String, database: String },
    /// The database is being deleted.
    Deleted { tenant: String, database: String },
    /// Settings that travel with its route (the address allowlist) changed: drop cached routes.
    Changed { tenant: String, database: String },
}

/// Called synchronously, in order, as events happen.
pub type EventHook = Arc<dyn Fn(&ControlEvent) + Send + Sync>;

#[async_trait]
pub trait ControlPlane: Send + Sync {
    /// The public keys tokens are signed with.
    async fn jwks(&self) -> Result<JwkSet, ControlError>;
    /// Whether the token with this id was revoked.
    async fn is_revoked(&self, jti: &str) -> Result<bool, ControlError>;
    /// Where `tenant`'s database `database` is served, `None` if it has no such database, or
    /// `Asleep` if it must be woken first.
    async fn route(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError>;
    /// Starts a sleeping database and returns its route once it is ready. Concurrent calls for
    /// one database share one start.
    async fn wake(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError>;
    /// The database's server refused the proxy's internal account (a session changed its
    /// password): has control put the account back, so the next login works.
    async fn repair_access(&self, _tenant: &str, _database: &str) -> Result<(), ControlError> {
        Err(ControlError::Unavailable("this control plane cannot repair accounts".into()))
    }

    /// The addresses a database accepts, asked before a sleeping database is woken for a
    /// client, so a client it would refuse does not start it. `None` when it cannot say (no
    /// such database, or a control without the answer): the woken route's list decides then.
    async fn allowlist(
        &self,
        _tenant: &str,
        _database: &str,
    ) -> Result<Option<AllowList>, ControlError> {
        Ok(None)
    }
    /// A client session on the database began (after authentication).
    fn session_opened(&self, tenant: &str, database: &str);
    /// A client session on the database ended.
    fn session_closed(&self, tenant: &str, database: &str);
    /// Registers a hook for control's events, where control can deliver them.
    fn watch(&self, _hook: EventHook) {}
}

/// Internal API paths, shared with control's router.
pub mod paths {
    pub const JWKS: &str = "/.well-known/jwks.json";
    pub const REVOCATIONS: &str = "/internal/v1/revocations";
    pub const ROUTES: &str = "/internal/v1/routes";
    pub const ACTIVITY: &str = "/internal/v1/activity";
}

/// Body of the revocations endpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Revocations {
    /// Ids of revoked tokens that have not expired yet.
    pub revoked: Vec<String>,
}

/// How often a remote proxy reports its sessions unless told otherwise.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Body of the activity endpoint: one proxy's open sessions per database.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Distinguishes proxies; a proxy that stops reporting is forgotten.
    pub proxy: String,
    pub sessions: Vec<DatabaseSessions>,
    /// How long the proxy trusts a cached route, and how often it reports. A proxy can open a
    /// session on a cached route without asking control, and control hears of it only in a
    /// later report, so control waits this long before it stops an idle database.
    /// Absent from older proxies' reports: control then assumes the defaults.
    #[serde(default)]
    pub route_ttl_ms: Option<u64>,
    #[serde(default)]
    pub every_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSessions {
    pub tenant: String,
    pub database: String,
    pub open: u32,
}

/// Body of a failed wake, from the internal API.
#[derive(Debug, Serialize, Deserialize)]
pub struct WakeFailure {
    pub message: String,
    pub retryable: bool,
}

/// Talks to control's internal HTTP API with an operator token.
pub struct HttpControl {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Revocations are fetched as a whole list and trusted for `revocation_ttl`.
    revocation_ttl: Duration,
    revoked: Mutex<Option<(Instant, HashSet<String>)>>,
    proxy_id: String,
    sessions: DashMap<(String, String), u32>,
}

impl HttpControl {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            revocation_ttl: Duration::from_secs(1),
            revoked: Mutex::new(None),
            proxy_id: format!("proxy-{:016x}", rand::random::<u64>()),
            sessions: DashMap::new(),
        }
    }

    /// `base` + `path`, then each of `segments` as one percent-encoded path segment, so no name
    /// can change which endpoint is asked.
    fn url(&self, path: &str, segments: &[&str]) -> Result<reqwest::Url, ControlError> {
        let bad = |e: String| ControlError::Unavailable(format!("control URL: {e}"));
        let mut url =
            reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| bad(e.to_string()))?;
        url.path_segments_mut().map_err(|()| bad("cannot have a path".into()))?.extend(segments);
        Ok(url)
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        segments: &[&str],
    ) -> Result<Option<T>, ControlError> {
        let resp = self
            .http
            .get(self.url(path, segments)?)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        decode(path, resp).await
    }

    /// Sends this proxy's session counts every `every` until `shutdown`: control suspends a
    /// database only when no proxy reports sessions on it. `route_ttl` is how long this proxy's
    /// route cache trusts an entry.
    pub async fn report_activity(
        self: Arc<Self>,
        every: Duration,
        route_ttl: Duration,
        shutdown: CancellationToken,
    ) {
        let millis = |d: Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let sessions: Vec<DatabaseSessions> = self
                .sessions
                .iter()
                .map(|e| DatabaseSessions {
                    tenant: e.key().0.clone(),
                    database: e.key().1.clone(),
                    open: *e.value(),
                })
                .collect();
            self.sessions.retain(|_, open| *open > 0);
            let report = ActivityReport {
                proxy: self.proxy_id.clone(),
                sessions,
                route_ttl_ms: millis(route_ttl),
                every_ms: millis(every),
            };
            let Ok(url) = self.url(paths::ACTIVITY, &[]) else { continue };
            let sent = self.http.post(url).bearer_auth(&self.token).json(&report).send().await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "reporting activity to control");
            }
        }
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    path: &str,
    resp: reqwest::Response,
) -> Result<Option<T>, ControlError> {
    match resp.status() {
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        reqwest::StatusCode::CONFLICT => Err(ControlError::Asleep),
        reqwest::StatusCode::SERVICE_UNAVAILABLE => {
            let failure: Option<WakeFailure> = resp.json().await.ok();
            Err(failure.map_or(ControlError::Unavailable(format!("{path}: unavailable")), |f| {
                ControlError::WakeFailed { message: f.message, retryable: f.retryable }
            }))
        }
        s if s.is_success() => {
            resp.json().await.map(Some).map_err(|e| ControlError::Unavailable(e.to_string()))
        }
        s => Err(ControlError::Unavailable(format!("{path}: HTTP {s}"))),
    }
}

#[async_trait]
impl ControlPlane for HttpControl {
    async fn jwks(&self) -> Result<JwkSet, ControlError> {
        Ok(self.get(paths::JWKS, &[]).await?.unwrap_or_default())
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
        let list: Revocations = self.get(paths::REVOCATIONS, &[]).await?.unwrap_or_default();
        let set: HashSet<String> = list.revoked.into_iter().collect();
        let hit = set.contains(jti);
        *self.revoked.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), set));
        Ok(hit)
    }

    async fn route(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        self.get(paths::ROUTES, &[tenant, database]).await
    }

    async fn wake(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        let resp = self
            .http
            .post(self.url(paths::ROUTES, &[tenant, database, "wake"])?)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        decode(paths::ROUTES, resp).await
    }

    async fn repair_access(&self, tenant: &str, database: &str) -> Result<(), ControlError> {
        let resp = self
            .http
            .post(self.url(paths::ROUTES, &[tenant, database, "repair"])?)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(ControlError::Unavailable(format!("repairing accounts: HTTP {s}"))),
        }
    }

    async fn allowlist(
        &self,
        tenant: &str,
        database: &str,
    ) -> Result<Option<AllowList>, ControlError> {
        self.get(paths::ROUTES, &[tenant, database, "allowlist"]).await
    }

    fn session_opened(&self, tenant: &str, database: &str) {
        *self.sessions.entry((tenant.to_owned(), database.to_owned())).or_default() += 1;
    }

    fn session_closed(&self, tenant: &str, database: &str) {
        if let Some(mut open) = self.sessions.get_mut(&(tenant.to_owned(), database.to_owned())) {
            *open = open.saturating_sub(1);
        }
    }
}

/// Counts a client session for as long as it lives.
pub struct SessionGuard {
    control: Arc<dyn ControlPlane>,
    tenant: String,
    database: String,
}

impl SessionGuard {
    pub fn new(control: Arc<dyn ControlPlane>, tenant: &str, database: &str) -> Self {
        control.session_opened(tenant, database);
        Self { control, tenant: tenant.to_owned(), database: database.to_owned() }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.control.session_closed(&self.tenant, &self.database);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_path_segments() -> Result<(), ControlError> {
        let control = HttpControl::new("http://control:7070/", "token");
        let url = control.url(paths::ROUTES, &["t-1", "../t-victim/cache", "wake"])?;
        assert_eq!(url.path(), "/internal/v1/routes/t-1/..%2Ft-victim%2Fcache/wake");
        let url = control.url(paths::ROUTES, &["t-1", ".."])?;
        assert!(!url.path().ends_with("/routes"), "{url}");
        Ok(())
    }
}
