//! A torn-down copy's sandbox made the next stub of its version
//! ([`crate::sandbox::recycle`] does the sandbox's part).

use super::{Instance, RestoreFailure, Restorer, SnapshotSource, Stub};
use crate::logs::LogSink;
use crate::sandbox::recycle::RecycleError;
use crate::sandbox::SandboxConfig;

/// Errors of recycling an instance's sandbox into a stub (the sandbox is
/// destroyed then).
#[derive(Debug, thiserror::Error)]
pub enum RecycleFailure {
    /// The snapshot could not be prepared for the next copy.
    #[error("prepare the next copy: {0}")]
    Prepare(#[source] RestoreFailure),
    /// The sandbox could not be reset.
    #[error("reset the sandbox: {0}")]
    Sandbox(#[source] RecycleError),
    /// The new stub's files did not check out against the snapshot.
    #[error("hold the new stub: {0}")]
    Hold(#[source] RestoreFailure),
}

impl Stub {
    /// Turns `instance`, a copy restored in a stub sandbox and no longer
    /// wanted, into a stub for the next copy of `snapshot` (the same
    /// version's: the caller checks), in the same sandbox: the copy and
    /// everything it started are killed, the sandbox reset, a new stub
    /// started with the snapshot's files, as [`Stub::launch_ahead`] would
    /// (the stub is a spare). On failure the sandbox is destroyed.
    pub async fn recycle(
        instance: Instance,
        config: &SandboxConfig,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        sink: LogSink,
    ) -> Result<Stub, RecycleFailure> {
        let (r, id) = (restorer.clone(), snapshot.id.clone());
        let prepared = tokio::task::spawn_blocking(move || r.prepare_ahead(&id))
            .await
            .map_err(|e| RestoreFailure::Copy(format!("restore task: {e}")))
            .and_then(|p| p.map_err(|e| RestoreFailure::restorer(&snapshot.id, e)));
        let copy = match prepared {
            Ok(copy) => copy,
            Err(e) => {
                let _ = instance.destroy().await;
                return Err(RecycleFailure::Prepare(e));
            }
        };
        let Instance {
            mut sandbox,
            requests,
            responses,
            logs,
            memory_limit,
            page_server,
            ..
        } = instance;
        // The old copy's pipes stay open until pid 1 has killed it: a
        // runtime that saw its request pipe close would exit first, and
        // pid 1 with it.
        let reset = sandbox.recycle(&copy.fds(), &copy.open_files()).await;
        drop((requests, responses, logs));
        // A `uffd` copy's page server ends with the copy (gone now, or
        // killed by the destroy below).
        let join_page_server = |server: Option<crate::restore::CopyServer>| async move {
            if let Some(server) = server {
                let _ = tokio::task::spawn_blocking(move || server.join()).await;
            }
        };
        if let Err(e) = reset {
            let _ = sandbox.destroy().await;
            join_page_server(page_server).await;
            return Err(RecycleFailure::Sandbox(e));
        }
        join_page_server(page_server).await;
        let instance = Instance::from_sandbox(sandbox, sink, memory_limit, 2);
        Stub::hold(instance, copy, snapshot, config)
            .await
            .map_err(RecycleFailure::Hold)
    }
}

impl Instance {
    /// Whether the instance's sandbox can be recycled into a stub
    /// ([`Stub::recycle`]).
    pub fn recyclable(&self) -> bool {
        self.sandbox.is_recyclable()
    }
}
