//! The control plane and the `dormouse` binary. Control holds intent (what tenants asked for)
//! and observed state (what hosts report), and drives one toward the other.
//!
//! Reading order:
//! - [`names`]: valid names and plans.
//! - [`store`]: the `Store` trait and its SQLite implementation.
//! - [`keys`]: the token-signing key, JWKS.
//! - [`lifecycle`]: database status transitions, instance start and destroy.
//! - [`service`]: the operations (tenants, databases, tokens, routes).
//! - [`backup`]: backups and restores: object store, encryption, jobs.
//! - [`access`]: repairing a database's internal accounts when a session changed them.
//! - [`activity`]: client sessions per database, as proxies report them.
//! - [`reconciler`]: moves observed state toward intent.
//! - [`suspender`]: suspends databases idle for longer than their timeout.
//! - [`metrics`]: what `/metrics` reports.
//! - [`api`]: the REST API.
//! - [`local`]: the in-process link the proxy uses in `dormouse up`.
//! - [`up`]: wiring for `dormouse up` and `dormouse control`.
//! - [`cli`]: the command line, including the REST client commands.

pub mod access;
pub mod activity;
pub mod api;
pub mod backup;
pub mod cli;
pub mod keys;
pub mod lifecycle;
pub mod local;
pub mod metrics;
pub mod names;
pub mod reconciler;
pub mod service;
pub mod store;
pub mod suspender;
pub mod up;
