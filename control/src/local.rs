//! The proxy's view of control when both run in one process (`dormouse up`): the same
//! questions `HttpControl` asks over HTTP, answered by direct calls; session counts are exact,
//! and events reach the proxy synchronously, before they take effect.

use std::sync::Arc;

use async_trait::async_trait;
use dormouse_proxy::allowlist::AllowList;
use dormouse_proxy::control::{ControlError, ControlPlane, EventHook, Route};
use jsonwebtoken::jwk::JwkSet;

use crate::service::ControlService;

pub struct LocalControl(pub Arc<ControlService>);

#[async_trait]
impl ControlPlane for LocalControl {
    async fn jwks(&self) -> Result<JwkSet, ControlError> {
        Ok(self.0.keys().jwks().clone())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, ControlError> {
        Ok(self.0.is_revoked(jti))
    }

    async fn route(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        self.0.route(tenant, database).await
    }

    async fn wake(&self, tenant: &str, database: &str) -> Result<Option<Route>, ControlError> {
        self.0.wake(tenant, database).await
    }

    async fn repair_access(&self, tenant: &str, database: &str) -> Result<(), ControlError> {
        self.0.repair_access(tenant, database).await.map(|_| ())
    }

    async fn allowlist(
        &self,
        tenant: &str,
        database: &str,
    ) -> Result<Option<AllowList>, ControlError> {
        self.0.allowlist(tenant, database).await
    }

    fn session_opened(&self, tenant: &str, database: &str) {
        self.0.activity().opened(tenant, database);
    }

    fn session_closed(&self, tenant: &str, database: &str) {
        self.0.activity().closed(tenant, database);
    }

    fn watch(&self, hook: EventHook) {
        self.0.add_hook(hook);
    }
}
