//! Everything that touches a database server process: what an instance is, the `Engine` trait
//! with one driver per datastore, process supervision, and the host agent that runs them.
//!
//! Reading order:
//! - [`spec`]: instance identity, engine kind, limits and the internal secret.
//! - [`engine`]: the `Engine` trait: provision, launch, probe, destroy.
//! - [`redis`]: the Redis driver (`redis-server`, one process per database).
//! - [`mariadb`]: the MariaDB driver (`mariadbd` from a copied template data directory).
//! - [`process`]: spawning a server process with captured output, SIGTERM-then-SIGKILL stop.
//! - [`confine`]: each server's own uid, Landlock, cgroup and rlimit limits.
//! - [`supervisor`]: one task per instance: start, wait for readiness, restart with backoff.
//! - [`backup`]: what a backup is to a host: a format, a position, plain bytes.
//! - [`datadir`]: a stopped data directory: size, fingerprint, tar out and strictly back in.
//! - [`tool`]: running backup tools with streamed input or output and quoted failures.
//! - [`agent`]: the `HostAgent` trait and the in-process implementation `dormouse up` uses.
//! - [`ports`]: picking free loopback ports.

pub mod agent;
pub mod backup;
pub mod confine;
pub mod datadir;
pub mod engine;
pub mod mariadb;
pub mod ports;
pub mod process;
pub mod redis;
pub mod spec;
pub mod supervisor;
pub mod tool;

pub use agent::{AgentError, HostAgent, LocalAgent, StartTiming, Started};
pub use engine::{Engine, EngineError};
pub use spec::{Endpoint, EngineKind, InstanceId, InstanceSpec, Limits, Secret};
pub use supervisor::InstanceState;
