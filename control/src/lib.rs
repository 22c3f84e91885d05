//! The control plane and the `dormouse` binary. Control holds intent (what tenants asked for)
//! and observed state (what hosts report), and drives one toward the other.
//!
//! Reading order:
//! - [`names`]: valid names and plans.
//! - [`store`]: the `Store` trait and its SQLite implementation.
//! - [`keys`]: the token-signing key, JWKS.
//! - [`lifecycle`]: database status transitions, instance start and destroy.
//! - [`service`]: the operations (tenants, databases, tokens, routes).
//! - [`reconciler`]: moves observed state toward intent.
//! - [`api`]: the REST API.
//! - [`local`]: the in-process link the proxy uses in `dormouse up`.
//! - [`up`]: wiring for `dormouse up` and `dormouse control`.
//! - [`cli`]: the command line, including the REST client commands.

pub mod api;
pub mod cli;
pub mod keys;
pub mod lifecycle;
pub mod local;
pub mod names;
pub mod reconciler;
pub mod service;
pub mod store;
pub mod up;
