//! The warm pool: provisioned, stopped instance directories kept per engine, and how an
//! instance gets its directory (its own, a claimed warm one, or a new one made in a scratch
//! directory and renamed into place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio_util::sync::CancellationToken;

use super::{AgentError, LocalAgent, StartTiming, create_private_dir};
use crate::engine::{Engine, EngineError};
use crate::spec::{EngineKind, InstanceId, InstanceSpec};

impl LocalAgent {
    /// Gives the instance its directory: the existing one, a claimed warm one, or a new one
    /// filled in a scratch directory and renamed into place when complete (a crash
    /// mid-provision never leaves a half-made instance).
    pub(super) async fn provision(
        &self,
        engine: &dyn Engine,
        spec: &InstanceSpec,
        timing: &mut StartTiming,
    ) -> Result<PathBuf, AgentError> {
        let dir = self.instance_dir(&spec.id);
        if dir.is_dir() {
            return Ok(dir);
        }
        let started = Instant::now();
        if self.claim_warm(spec.engine, &dir) {
            timing.warm = true;
            self.warm_wanted.notify_one();
        } else {
            let scratch = self.root.join(format!(".{}.provisioning", spec.id));
            self.fill(engine, spec, &scratch).await?;
            tokio::fs::rename(&scratch, &dir)
                .await
                .map_err(EngineError::io(format!("moving {} into place", dir.display())))?;
        }
        timing.provision = started.elapsed();
        Ok(dir)
    }

    pub(super) async fn fill(
        &self,
        engine: &dyn Engine,
        spec: &InstanceSpec,
        scratch: &Path,
    ) -> Result<(), AgentError> {
        let _ = tokio::fs::remove_dir_all(scratch).await;
        create_private_dir(scratch)
            .map_err(EngineError::io(format!("creating {}", scratch.display())))?;
        engine.provision(spec, scratch).await?;
        Ok(())
    }

    /// Renames a warm directory of `engine` to `dir`; false if none is left. Concurrent
    /// claimers race on the rename, which only one wins.
    pub(super) fn claim_warm(&self, engine: EngineKind, dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(self.warm_dir(engine)) else { return false };
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .any(|e| std::fs::rename(e.path(), dir).is_ok())
    }

    /// Warm directories ready for `engine`.
    pub fn warm_count(&self, engine: EngineKind) -> usize {
        std::fs::read_dir(self.warm_dir(engine)).map_or(0, |entries| {
            entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count()
        })
    }

    /// Tops up every engine's warm directories; returns how many were made.
    pub async fn refill_warm_pool(&self) -> usize {
        let mut made = 0;
        for (kind, engine) in &self.engines {
            let warm = self.warm_dir(*kind);
            if let Err(e) = create_private_dir(&warm) {
                tracing::warn!(engine = %kind, error = %e, "warm pool directory");
                continue;
            }
            while self.warm_count(*kind) < self.warm_size {
                let mut suffix = [0u8; 6];
                rand::rng().fill_bytes(&mut suffix);
                let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
                // A provisioned directory does not depend on the spec's identity or secret.
                let spec = InstanceSpec {
                    id: InstanceId::generate(),
                    name: "warm".into(),
                    engine: *kind,
                    limits: crate::spec::Limits { memory_mb: 0, max_connections: 0 },
                    password: crate::spec::Secret::new(""),
                    port: 0,
                };
                let scratch = warm.join(format!(".{name}"));
                let result = match self.fill(engine.as_ref(), &spec, &scratch).await {
                    Ok(()) => std::fs::rename(&scratch, warm.join(&name))
                        .map_err(|e| AgentError::from(EngineError::io("warm pool")(e))),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(engine = %kind, error = %e, "refilling the warm pool");
                    let _ = tokio::fs::remove_dir_all(&scratch).await;
                    break;
                }
                made += 1;
            }
        }
        made
    }

    /// Keeps the warm pool full: refills at start, after every claim, and every minute.
    pub async fn run_warm_pool(self: Arc<Self>, shutdown: CancellationToken) {
        if self.warm_size == 0 {
            return;
        }
        loop {
            self.refill_warm_pool().await;
            tokio::select! {
                () = self.warm_wanted.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
