//! Control's operations, shared by the REST API and the in-process link to the proxy: tenants,
//! databases and their instances, tokens, routes.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dormouse_engines::{EngineKind, HostAgent, InstanceId, Secret};
use dormouse_proxy::allowlist::AllowList;
use dormouse_proxy::claims::{Claims, Role};
use dormouse_proxy::control::{
    BackendSecret, ControlError, ControlEvent, EventHook, Protocol, Route, RouteLimits,
};
use rand::RngCore;

use crate::activity::ActivityBook;
use crate::backup::Backups;
use crate::keys::{KeyError, KeyRing};
use crate::lifecycle::{Attempt, Lifecycle, LifecycleError, Start, failure_reason, retry_after};
use crate::metrics::Metrics;
use crate::names;
use crate::store::{
    Database, DatabaseStatus, StartFailure, Store, StoreError, Tenant, TokenRecord,
};

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What a client is told about a database whose starts fail: the server's reason, and when
/// the next connection will try again.
fn start_failure_message(name: &str, failure: &StartFailure, retry_in: i64) -> String {
    let starts = if failure.attempts == 1 { "start" } else { "starts" };
    format!(
        "{} ({} failed {starts} in a row; connections try again in {retry_in} s, \
         `dormouse db resume {name}` at once)",
        failure.reason, failure.attempts
    )
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lifetime of the token a new tenant gets.
pub const TENANT_TOKEN_TTL: i64 = 365 * 24 * 3600;
/// Default lifetime of tokens made through `POST /v1/tokens` and of a new database's token.
pub const DEFAULT_TOKEN_TTL: i64 = 30 * 24 * 3600;
/// Longest lifetime a token may be given.
pub const MAX_TOKEN_TTL: i64 = 10 * 365 * 24 * 3600;

/// Errors a caller can cause, each mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// A backup failed its checks (changed, cut short, not ours).
    #[error("{0}")]
    Corrupt(String),
    /// A restore could not be done as asked (its reason says why); nothing changed.
    #[error("{0}")]
    RestoreFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Internal(format!("store: {e}"))
    }
}

impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> Self {
        ServiceError::Internal(format!("keys: {e}"))
    }
}

/// Who is calling, after their token was verified.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The platform operator (the admin token `dormouse up` writes).
    Operator,
    Tenant {
        tenant: Tenant,
        role: Role,
        database: Option<String>,
    },
}

/// A freshly signed token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedToken {
    pub id: String,
    pub token: String,
    pub expires_at: i64,
}

/// Where clients reach the proxy, for connection strings.
#[derive(Debug, Clone, Default)]
pub struct PublicEndpoints {
    pub host: String,
    pub redis_port: Option<u16>,
    pub mysql_port: Option<u16>,
}

pub struct ControlService {
    store: Arc<dyn Store>,
    keys: KeyRing,
    lifecycle: Lifecycle,
    /// Ids of revoked, unexpired tokens; the proxy asks this on every login.
    revoked: RwLock<HashSet<String>>,
    endpoints: RwLock<PublicEndpoints>,
    activity: ActivityBook,
    metrics: Metrics,
    hooks: RwLock<Vec<EventHook>>,
    access_repairs: crate::access::AccessRepairs,
    backups: Backups,
}

impl ControlService {
    pub async fn new(
        store: Arc<dyn Store>,
        keys: KeyRing,
        agent: Arc<dyn HostAgent>,
        backups: Backups,
    ) -> Result<Self, ServiceError> {
        let revoked = store.revoked_tokens(now()).await?.into_iter().collect();
        Ok(Self {
            lifecycle: Lifecycle::new(store.clone(), agent),
            store,
            keys,
            revoked: RwLock::new(revoked),
            endpoints: RwLock::default(),
            activity: ActivityBook::default(),
            metrics: Metrics::new(),
            hooks: RwLock::default(),
            access_repairs: Default::default(),
            backups,
        })
    }

    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    pub fn access_repairs(&self) -> &crate::access::AccessRepairs {
        &self.access_repairs
    }

    pub fn activity(&self) -> &ActivityBook {
        &self.activity
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn set_endpoints(&self, endpoints: PublicEndpoints) {
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = endpoints;
    }

    pub fn endpoints(&self) -> PublicEndpoints {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).contains(jti)
    }

    pub fn revoked_ids(&self) -> Vec<String> {
        self.revoked.read().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Verifies a bearer token and says who it belongs to.
    pub async fn caller(&self, token: &str) -> Result<Caller, ServiceError> {
        let claims = self
            .keys
            .verify(token)
            .map_err(|_| ServiceError::Unauthorized("invalid or expired token".into()))?;
        if self.is_revoked(&claims.jti) {
            return Err(ServiceError::Unauthorized("this token was revoked".into()));
        }
        match &claims.sub {
            None if claims.role == Role::Admin => Ok(Caller::Operator),
            None => Err(ServiceError::Unauthorized("invalid token".into())),
            Some(tenant_id) => {
                let tenant = self.store.tenant(tenant_id).await?.ok_or_else(|| {
                    ServiceError::Unauthorized("this token's tenant no longer exists".into())
                })?;
                Ok(Caller::Tenant { tenant, role: claims.role, database: claims.db })
            }
        }
    }

    /// Signs and records a token.
    pub async fn issue(
        &self,
        tenant: Option<&str>,
        database: Option<&str>,
        role: Role,
        ttl_seconds: i64,
    ) -> Result<IssuedToken, ServiceError> {
        let created = now();
        let record = TokenRecord {
            id: random_hex(8),
            tenant_id: tenant.map(Into::into),
            database: database.map(Into::into),
            role,
            expires_at: created + ttl_seconds,
            revoked_at: None,
            created_at: created,
        };
        let claims = Claims {
            sub: record.tenant_id.clone(),
            db: record.database.clone(),
            role,
            exp: u64::try_from(record.expires_at).unwrap_or_default(),
            jti: record.id.clone(),
        };
        let token = self.keys.sign(&claims)?;
        self.store.insert_token(&record).await?;
        Ok(IssuedToken { id: record.id, token, expires_at: record.expires_at })
    }

    pub async fn create_tenant(&self, name: &str) -> Result<(Tenant, IssuedToken), ServiceError> {
        if !names::valid_name(name) {
            return Err(ServiceError::Invalid {
                field: "name",
                message: format!("invalid tenant name: {}", names::NAME_RULE),
            });
        }
        let tenant =
            Tenant { id: format!("t-{}", random_hex(6)), name: name.into(), created_at: now() };
        match self.store.insert_tenant(&tenant).await {
            Err(StoreError::Conflict) => {
                return Err(ServiceError::Conflict(format!(
                    "a tenant named {name:?} already exists"
                )));
            }
            other => other?,
        }
        let token = self.issue(Some(&tenant.id), None, Role::Admin, TENANT_TOKEN_TTL).await?;
        tracing::info!(tenant = %tenant.name, id = %tenant.id, "tenant created");
        Ok((tenant, token))
    }

    /// Creates a database and starts its instance (or, `lazy`, leaves it to the first client);
    /// returns it with a token scoped to it.
    pub async fn create_database(
        &self,
        tenant: &Tenant,
        req: &NewDatabase,
    ) -> Result<(Database, IssuedToken), ServiceError> {
        let name = req.name.as_str();
        if !names::valid_name(name) {
            return Err(ServiceError::Invalid {
                field: "name",
                message: format!("invalid database name: {}", names::NAME_RULE),
            });
        }
        let (source, until) = match &req.restore {
            Some(from) => {
                let (backup, until) = self.restore_source(tenant, from).await?;
                (Some(backup), until)
            }
            None => (None, None),
        };
        let engine: EngineKind = match (&source, req.engine.as_str()) {
            (Some(backup), "") => backup.engine,
            (None, "") => {
                return Err(ServiceError::Invalid {
                    field: "engine",
                    message: "engine is required: \"mysql\" or \"redis\"".into(),
                });
            }
            _ => req.engine.parse().map_err(|_| ServiceError::Invalid {
                field: "engine",
                message: format!(
                    "unknown engine {:?}: expected \"mysql\" or \"redis\"",
                    req.engine
                ),
            })?,
        };
        match &source {
            // A restore to a time was checked as it was chosen (a Redis one has no backup).
            Some(backup) if until.is_some() && backup.engine != engine => {
                return Err(ServiceError::Invalid {
                    field: "restore",
                    message: format!(
                        "{:?} is a {} database; it cannot be restored into a {engine} database",
                        backup.database_name, backup.engine
                    ),
                });
            }
            Some(backup) if until.is_none() => {
                self.restorable(tenant, &backup.id, Some(engine)).await?;
            }
            _ => {}
        }
        if let Some(why) = engine.reserved(name) {
            return Err(ServiceError::Invalid {
                field: "name",
                message: format!("the name {name:?} is reserved for {engine} databases ({why})"),
            });
        }
        let plan_name = req
            .plan
            .as_deref()
            .or(source.as_ref().map(|b| b.plan.as_str()))
            .unwrap_or(names::DEFAULT_PLAN);
        if names::plan(plan_name).is_none() {
            return Err(ServiceError::Invalid {
                field: "plan",
                message: format!(
                    "unknown plan {plan_name:?}: expected one of {}",
                    names::plan_names()
                ),
            });
        }
        let idle_timeout_seconds = validate_idle_timeout(req.idle_timeout_seconds)?;
        let allowed_cidrs = validate_allowlist(req.allowed_cidrs.as_deref())?;
        let expires_at = validate_expiry(req.expires_at.as_deref(), req.ttl_seconds)?;
        if !self.lifecycle.agent().engines().contains(&engine) {
            return Err(ServiceError::Unavailable(format!(
                "{engine} databases are not available on this installation (is the {} package installed?)",
                match engine {
                    EngineKind::Redis => "redis-server",
                    EngineKind::Mysql => "mariadb-server",
                }
            )));
        }
        let db = Database {
            id: InstanceId::generate(),
            tenant_id: tenant.id.clone(),
            name: name.into(),
            engine,
            plan: plan_name.into(),
            status: DatabaseStatus::Creating,
            port: 0,
            password: Secret::generate(),
            created_at: now(),
            idle_timeout_seconds,
            last_wake_ms: None,
            start_failure: None,
            allowed_cidrs,
            expires_at,
        };
        match self.store.insert_database(&db).await {
            Err(StoreError::Conflict) => {
                return Err(ServiceError::Conflict(format!(
                    "a database named {name:?} already exists"
                )));
            }
            other => other?,
        }
        if let Some(backup) = &source
            && let Err(e) = self.restore_new(&db, backup, until).await
        {
            if let Err(cleanup) = self.lifecycle.destroy(&db).await {
                tracing::error!(db = %db.name, error = %cleanup, "cleaning up a failed restore");
            }
            return Err(e);
        }
        let outcome = if req.lazy {
            self.lifecycle.defer(&db).await.map(|()| None)
        } else {
            self.lifecycle.start(&db, Attempt::Now).await.map(Some)
        };
        match outcome {
            Ok(Some(start)) => {
                self.metrics.provisioned(engine, start.started.timing.warm);
                self.activity.touch(&tenant.id, name);
            }
            Ok(None) => {}
            Err(e) => {
                // A database that never ran holds no data: remove it rather than leave a corpse.
                if let Err(cleanup) = self.lifecycle.destroy(&db).await {
                    tracing::error!(db = %db.name, error = %cleanup, "cleaning up a failed create");
                }
                return Err(match e {
                    LifecycleError::Agent(_) | LifecycleError::Timeout => {
                        tracing::error!(db = %db.name, error = %e, "database failed to start");
                        ServiceError::Unavailable(format!(
                            "the database server failed to start: {}",
                            failure_reason(&e)
                        ))
                    }
                    other => ServiceError::Internal(other.to_string()),
                });
            }
        }
        let db = self.store.database(&tenant.id, name).await?.unwrap_or(db);
        let token =
            self.issue(Some(&tenant.id), Some(name), Role::Readwrite, DEFAULT_TOKEN_TTL).await?;
        tracing::info!(tenant = %tenant.name, db = %db.name, engine = %engine, lazy = req.lazy, "database created");
        Ok((db, token))
    }

    pub async fn database(&self, tenant: &Tenant, name: &str) -> Result<Database, ServiceError> {
        self.store
            .database(&tenant.id, name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no database named {name:?}")))
    }

    pub async fn set_idle_timeout(
        &self,
        tenant: &Tenant,
        name: &str,
        seconds: u32,
    ) -> Result<Database, ServiceError> {
        let db = self.database(tenant, name).await?;
        let seconds = validate_idle_timeout(Some(seconds))?;
        self.store.set_idle_timeout(&db.id, seconds).await?;
        self.database(tenant, name).await
    }

    /// Replaces the addresses a database accepts (`None` or empty: any). Proxies in this
    /// process drop its cached route at once; others within their route TTL.
    pub async fn set_allowed_cidrs(
        &self,
        tenant: &Tenant,
        name: &str,
        cidrs: Option<&[String]>,
    ) -> Result<Database, ServiceError> {
        let db = self.database(tenant, name).await?;
        let cidrs = validate_allowlist(cidrs)?;
        self.store.set_allowed_cidrs(&db.id, &cidrs).await?;
        self.emit(&ControlEvent::Changed { tenant: tenant.id.clone(), database: name.into() });
        tracing::info!(tenant = %tenant.name, db = %name, allowed = %cidrs, "allowlist changed");
        self.database(tenant, name).await
    }

    /// Deletes a database. Unless `now`, its data is first kept as a final backup that
    /// [`Self::undelete_database`] restores for [`UNDO_WINDOW`]; if that backup fails, nothing
    /// is deleted. Returns the final backup.
    pub async fn delete_database(
        &self,
        tenant: &Tenant,
        name: &str,
        now: bool,
    ) -> Result<Option<crate::store::BackupRecord>, ServiceError> {
        let db = self.database(tenant, name).await?;
        let internal = |e: LifecycleError| ServiceError::Internal(e.to_string());
        let (held, db) = self.lifecycle.hold(&db).await.map_err(internal)?;
        self.emit(&ControlEvent::Deleted { tenant: tenant.id.clone(), database: name.into() });
        // A database that never ran (created lazily) has nothing to keep.
        let provisioned = self.lifecycle.agent().data_size(&db.id).await > 0;
        let keep = !now && db.status != DatabaseStatus::Deleting && provisioned;
        let final_backup = if keep {
            let db = self.lifecycle.suspend_held(&held, &db, || {}).await.map_err(internal)?;
            let mut kept = self
                .backup_now(&held, &db, crate::store::BackupKind::Final)
                .await
                .map_err(|e| {
                    ServiceError::Unavailable(format!(
                        "{e}; the database was not deleted (delete it with ?now=true to skip \
                         the final backup)"
                    ))
                })?;
            kept.expires_at = Some(crate::service::now() + UNDO_WINDOW);
            self.store.update_backup(&kept).await?;
            Some(kept)
        } else {
            None
        };
        let revoked = self.lifecycle.destroy_held(held, &db).await.map_err(internal)?;
        // Mirror the store's revocations for the proxy (merged: a concurrent revoke stays).
        self.revoked.write().unwrap_or_else(|e| e.into_inner()).extend(revoked);
        self.activity.forget(&tenant.id, name);
        self.access_repairs.forget(&db.id);
        Ok(final_backup)
    }

    /// Revokes a token. Tenants may revoke their own tenant's tokens; the operator any.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let record = self.store.token(id).await?;
        let visible = match (caller, &record) {
            (_, None) => false,
            (Caller::Operator, Some(_)) => true,
            (Caller::Tenant { tenant, .. }, Some(r)) => {
                r.tenant_id.as_deref() == Some(tenant.id.as_str())
            }
        };
        if !visible {
            return Err(ServiceError::NotFound(format!("no token with id {id:?}")));
        }
        self.store.revoke_token(id, now()).await?;
        self.revoked.write().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned());
        tracing::info!(token = id, "token revoked");
        Ok(())
    }

    /// Registers a hook run synchronously on every event (the in-process proxy's).
    pub fn add_hook(&self, hook: EventHook) {
        self.hooks.write().unwrap_or_else(|e| e.into_inner()).push(hook);
    }

    pub(crate) fn emit(&self, event: &ControlEvent) {
        for hook in self.hooks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(event);
        }
    }

    /// The database a proxy asks about, with a store failure as the proxy's retryable error.
    async fn database_for_proxy(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Database>, ControlError> {
        self.store
            .database(tenant, name)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))
    }

    /// The addresses `tenant`'s database `name` accepts, for a proxy deciding whether to wake
    /// it for a client; `None` if there is no such database.
    pub async fn allowlist(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<AllowList>, ControlError> {
        Ok(self.database_for_proxy(tenant, name).await?.map(|db| db.allowed_cidrs))
    }

    /// Where the proxy finds `tenant`'s database `name`; `Asleep` when it must be woken first.
    pub async fn route(&self, tenant: &str, name: &str) -> Result<Option<Route>, ControlError> {
        let Some(db) = self.database_for_proxy(tenant, name).await? else { return Ok(None) };
        if db.status == DatabaseStatus::Deleting {
            return Ok(None);
        }
        if db.status != DatabaseStatus::Running || self.activity.is_suspending(tenant, name) {
            return Err(ControlError::Asleep);
        }
        let endpoint = self.lifecycle.agent().endpoint(&db.id).ok_or(ControlError::Asleep)?;
        let (protocol, user, readonly_user, info_user) = match db.engine {
            EngineKind::Redis => (
                Protocol::Redis,
                dormouse_engines::redis::INTERNAL_USER,
                Some(dormouse_engines::redis::READONLY_USER.to_owned()),
                Some(dormouse_engines::redis::INFO_USER.to_owned()),
            ),
            EngineKind::Mysql => (
                Protocol::Mysql,
                dormouse_engines::mariadb::INTERNAL_USER,
                Some(dormouse_engines::mariadb::READONLY_USER.to_owned()),
                None,
            ),
        };
        Ok(Some(Route {
            protocol,
            host: endpoint.host,
            port: endpoint.port,
            socket: endpoint.socket,
            user: user.into(),
            readonly_user,
            info_user,
            password: BackendSecret(db.password.expose().to_owned()),
            limits: {
                let plan = names::plan(&db.plan).unwrap_or(names::PLANS[0]);
                RouteLimits { max_clients: plan.max_clients, max_backend: plan.max_backend() }
            },
            allowed_cidrs: db.allowed_cidrs,
        }))
    }

    /// Starts a sleeping database for a client, once however many ask at the same time, and
    /// returns its route. Records the wake's parts in the log, the metrics and the database.
    pub async fn wake(&self, tenant: &str, name: &str) -> Result<Option<Route>, ControlError> {
        self.wake_with(tenant, name, Attempt::WhenDue).await
    }

    /// [`Self::wake`], or with [`Attempt::Now`] a start its owner asked for, even right after
    /// one failed.
    pub async fn wake_with(
        &self,
        tenant: &str,
        name: &str,
        attempt: Attempt,
    ) -> Result<Option<Route>, ControlError> {
        let Some(db) = self.database_for_proxy(tenant, name).await? else { return Ok(None) };
        let requested = Instant::now();
        match self.lifecycle.start(&db, attempt).await {
            Ok(start) => {
                if !start.started.timing.already_running {
                    self.record_wake(&db, &start, requested.elapsed()).await;
                }
                self.activity.touch(tenant, name);
            }
            Err(LifecycleError::Gone(_)) => return Ok(None),
            Err(LifecycleError::Cooling { failure, retry_in }) => {
                return Err(ControlError::WakeFailed {
                    message: start_failure_message(&db.name, &failure, retry_in),
                    retryable: false,
                });
            }
            Err(e) => {
                self.metrics.wake_failed(db.engine);
                tracing::warn!(db = %db.name, engine = %db.engine, error = %e, "wake failed");
                let retryable = matches!(e, LifecycleError::Store(_));
                let message = match e {
                    LifecycleError::Agent(_) | LifecycleError::Timeout => {
                        let failure = self.store.database(tenant, name).await.ok().flatten();
                        match failure.and_then(|db| db.start_failure) {
                            Some(f) => start_failure_message(&db.name, &f, retry_after(&f)),
                            None => failure_reason(&e),
                        }
                    }
                    other => other.to_string(),
                };
                return Err(ControlError::WakeFailed { message, retryable });
            }
        }
        match self.route(tenant, name).await {
            // Suspended again at once (a zero idle timeout racing the wake): try once more.
            Err(ControlError::Asleep) => Err(ControlError::WakeFailed {
                message: "suspended while waking".into(),
                retryable: true,
            }),
            other => other,
        }
    }

    async fn record_wake(&self, db: &Database, start: &Start, total: Duration) {
        let timing = &start.started.timing;
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(
            db = %db.name,
            engine = %db.engine,
            was = %start.was,
            queue_ms = ms(start.queued),
            provision_ms = ms(timing.provision),
            boot_ms = ms(timing.boot),
            total_ms = ms(total),
            warm = timing.warm,
            "database woke"
        );
        self.metrics.woke(db.engine, total);
        if timing.provision > Duration::ZERO || timing.warm {
            self.metrics.provisioned(db.engine, timing.warm);
        }
        if let Err(e) = self
            .store
            .set_last_wake(&db.id, u32::try_from(total.as_millis()).unwrap_or(u32::MAX))
            .await
        {
            tracing::warn!(db = %db.name, error = %e, "recording the wake");
        }
        self.emit(&ControlEvent::Woke { tenant: db.tenant_id.clone(), database: db.name.clone() });
    }

    /// Suspends the database if it has no client sessions (or at once, `force`d by its owner).
    pub async fn suspend(&self, db: &Database, force: bool) -> Result<bool, ServiceError> {
        let (tenant, name) = (db.tenant_id.as_str(), db.name.as_str());
        self.activity.set_suspending(tenant, name, true);
        let idle_timeout = Duration::from_secs(u64::from(db.idle_timeout_seconds));
        let still_idle = || {
            force || self.activity.idle_for(tenant, name).is_some_and(|idle| idle >= idle_timeout)
        };
        let before_stop = || {
            self.emit(&ControlEvent::Suspending { tenant: tenant.into(), database: name.into() })
        };
        let result = self.lifecycle.suspend(db, still_idle, before_stop).await;
        self.activity.set_suspending(tenant, name, false);
        let suspended = result.map_err(|e| ServiceError::Internal(e.to_string()))?;
        if suspended {
            self.metrics.suspended(db.engine);
            tracing::info!(db = %db.name, engine = %db.engine, forced = force, "database suspended");
        }
        Ok(suspended)
    }
}

/// What a tenant asks for when creating a database.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDatabase {
    pub name: String,
    /// Required, unless restoring: then the backup's engine.
    #[serde(default)]
    pub engine: String,
    pub plan: Option<String>,
    /// Seconds without client connections before it is suspended; 0 = never. Default 300.
    pub idle_timeout_seconds: Option<u32>,
    /// Provision it on the first client connection instead of now.
    #[serde(default)]
    pub lazy: bool,
    /// Client addresses it accepts (CIDRs or single addresses); absent, null or empty: any.
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Start from a backup instead of empty: a branch of another database's data.
    #[serde(default)]
    pub restore: Option<RestoreFrom>,
    /// Delete it (the safe way: a final backup, undeletable for a while) at this RFC 3339
    /// time; for preview environments and tests.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The same as a lifetime from now.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// Seconds since the epoch from RFC 3339 text.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64))
}

/// When a new database is to be deleted, from an RFC 3339 time or a lifetime (not both).
fn validate_expiry(at: Option<&str>, ttl: Option<u64>) -> Result<Option<i64>, ServiceError> {
    let invalid = |message: String| ServiceError::Invalid { field: "expires_at", message };
    let when = match (at, ttl) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(invalid("give expires_at or ttl_seconds, not both".into()));
        }
        (Some(text), None) => parse_time(text).map_err(|e| invalid(format!("expires_at {e}")))?,
        (None, Some(ttl)) => now().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
    };
    if when <= now() {
        return Err(invalid("the expiry must be in the future".into()));
    }
    Ok(Some(when))
}

/// Which data a new database starts from: a backup by id, or the newest backup of a
/// database (a deleted one too).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFrom {
    pub backup: Option<String>,
    pub database: Option<String>,
    /// RFC 3339: the state the database had at that time.
    pub time: Option<String>,
}

/// How long a deleted database can be undeleted: its final backup is kept this long.
pub const UNDO_WINDOW: i64 = 7 * 24 * 3600;

/// Longest idle timeout a database may have: a week.
pub const MAX_IDLE_TIMEOUT: u32 = 7 * 24 * 3600;
pub const DEFAULT_IDLE_TIMEOUT: u32 = 300;

fn validate_idle_timeout(seconds: Option<u32>) -> Result<u32, ServiceError> {
    let seconds = seconds.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if seconds > MAX_IDLE_TIMEOUT {
        return Err(ServiceError::Invalid {
            field: "idle_timeout_seconds",
            message: format!(
                "idle_timeout_seconds must be at most {MAX_IDLE_TIMEOUT} (0 = never suspend)"
            ),
        });
    }
    Ok(seconds)
}

/// The allowlist a request asks for, normalised; `None` is any address.
pub fn validate_allowlist(cidrs: Option<&[String]>) -> Result<AllowList, ServiceError> {
    AllowList::parse(cidrs.unwrap_or_default())
        .map_err(|e| ServiceError::Invalid { field: "allowed_cidrs", message: e.to_string() })
}
