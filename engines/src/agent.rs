//! The host agent: turns "run this instance" into a provisioned directory and a supervised
//! server process. `LocalAgent` runs in-process for `dormouse up`; a remote agent on each host
//! of a fleet will implement the same trait.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::engine::{Engine, EngineError};
use crate::spec::{Endpoint, EngineKind, InstanceId, InstanceSpec};
use crate::supervisor::{InstanceState, RestartPolicy, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this host cannot run {0} databases")]
    EngineUnavailable(EngineKind),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What control asks of a host.
#[async_trait]
pub trait HostAgent: Send + Sync {
    /// Provisions the instance on first use, starts its server unless it is already running,
    /// and waits until it is ready.
    async fn start(&self, spec: &InstanceSpec) -> Result<Endpoint, AgentError>;
    /// Stops the server cleanly; its data stays on disk.
    async fn stop(&self, id: &InstanceId) -> Result<(), AgentError>;
    /// Stops the server and deletes its data.
    async fn destroy(&self, id: &InstanceId) -> Result<(), AgentError>;
    /// Observed state of the instance's server.
    fn state(&self, id: &InstanceId) -> InstanceState;
    /// Where the instance listens while it is running.
    fn endpoint(&self, id: &InstanceId) -> Option<Endpoint> {
        match self.state(id) {
            InstanceState::Running { port, .. } => {
                Some(Endpoint { host: "127.0.0.1".into(), port })
            }
            _ => None,
        }
    }
    /// The engines this host can run.
    fn engines(&self) -> Vec<EngineKind>;
    /// Stops every server (on shutdown).
    async fn shutdown(&self);
}

/// Runs instances as child processes of this process, under `root/<instance id>/`.
pub struct LocalAgent {
    root: PathBuf,
    engines: HashMap<EngineKind, Arc<dyn Engine>>,
    policy: RestartPolicy,
    /// Serialises start/stop/destroy of one instance; readers never take it.
    locks: DashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
    supervisors: DashMap<InstanceId, Arc<Supervisor>>,
}

impl LocalAgent {
    pub fn new(
        root: impl Into<PathBuf>,
        engines: Vec<Arc<dyn Engine>>,
        policy: RestartPolicy,
    ) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root)?;
        Ok(Self {
            root,
            engines: engines.into_iter().map(|e| (e.kind(), e)).collect(),
            policy,
            locks: DashMap::new(),
            supervisors: DashMap::new(),
        })
    }

    pub fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn lock(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(id.clone()).or_default().clone()
    }

    /// Fills the instance directory once: into a scratch directory, renamed into place when
    /// complete, so a crash mid-provision never leaves a half-made instance behind.
    async fn provision(
        &self,
        engine: &dyn Engine,
        spec: &InstanceSpec,
    ) -> Result<PathBuf, AgentError> {
        let dir = self.instance_dir(&spec.id);
        if dir.is_dir() {
            return Ok(dir);
        }
        let scratch = self.root.join(format!(".{}.provisioning", spec.id));
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        create_private_dir(&scratch)
            .map_err(EngineError::io(format!("creating {}", scratch.display())))?;
        engine.provision(spec, &scratch).await?;
        tokio::fs::rename(&scratch, &dir)
            .await
            .map_err(EngineError::io(format!("moving {} into place", dir.display())))?;
        Ok(dir)
    }

    async fn stop_locked(&self, id: &InstanceId) {
        if let Some((_, supervisor)) = self.supervisors.remove(id) {
            supervisor.stop().await;
        }
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[async_trait]
impl HostAgent for LocalAgent {
    async fn start(&self, spec: &InstanceSpec) -> Result<Endpoint, AgentError> {
        let engine =
            self.engines.get(&spec.engine).ok_or(AgentError::EngineUnavailable(spec.engine))?;
        let supervisor = {
            let lock = self.lock(&spec.id);
            let _guard = lock.lock().await;
            let live = self.supervisors.get(&spec.id).map(|s| s.clone()).filter(|s| {
                !matches!(s.state(), InstanceState::Stopped | InstanceState::Failed { .. })
            });
            match live {
                Some(s) => s,
                None => {
                    let dir = self.provision(engine.as_ref(), spec).await?;
                    let s = Arc::new(Supervisor::spawn(
                        engine.clone(),
                        spec.clone(),
                        dir,
                        self.policy.clone(),
                    ));
                    self.supervisors.insert(spec.id.clone(), s.clone());
                    s
                }
            }
        };
        match supervisor.ready().await {
            Ok(port) => Ok(Endpoint { host: "127.0.0.1".into(), port }),
            Err(e) => {
                let lock = self.lock(&spec.id);
                let _guard = lock.lock().await;
                self.supervisors.remove_if(&spec.id, |_, s| Arc::ptr_eq(s, &supervisor));
                supervisor.stop().await;
                Err(e.into())
            }
        }
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), AgentError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id).await;
        Ok(())
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), AgentError> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id).await;
        let dir = self.instance_dir(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io(format!("removing {}", dir.display()))(e).into()),
        }
        drop(_guard);
        self.locks.remove(id);
        Ok(())
    }

    fn state(&self, id: &InstanceId) -> InstanceState {
        self.supervisors.get(id).map_or(InstanceState::Stopped, |s| s.state())
    }

    fn engines(&self) -> Vec<EngineKind> {
        let mut kinds: Vec<_> = self.engines.keys().copied().collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds
    }

    async fn shutdown(&self) {
        let ids: Vec<InstanceId> = self.supervisors.iter().map(|e| e.key().clone()).collect();
        let stops = ids.iter().map(|id| self.stop(id));
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "stopping an instance at shutdown");
            }
        }
    }
}
