//! Rebuilding a snapshot after a restore of it failed.
//!
//! A restore that fails for a reason that blames the snapshot (a corrupt or
//! missing page, a missing manifest, a mapped file that changed since the
//! capture, a copy that did not come up) falls back to booting (the pool
//! does that) and reports here. Then:
//!
//! ```text
//! note      the version's record gets `restore_failure` {snapshot, reason, at_ms,
//!           rebuild: pending}; cold starts boot from now on (never the broken
//!           snapshot again), GET /functions/:id shows why
//! rebuild   a fresh boot, the version's warm-up events, a new capture under a
//!           new id (<id>-r<n>: a cached image of the old id can never be
//!           taken for the new one)
//! swap      cold starts restore the new snapshot; the old one's manifest and
//!           store root are removed (its pages go at the next gc)
//! ```
//!
//! A version is rebuilt at most [`MAX_REBUILDS`] times in the life of its
//! record: a snapshot that keeps failing (a kernel that refuses it, a file
//! that changes all the time) is left alone after that and the version
//! boots (`rebuild: gave_up`). Only one rebuild of a version runs at a time;
//! failures reported while it runs, or about a snapshot already replaced,
//! are ignored.

use serde::{Deserialize, Serialize};

use pool::FunctionKey;

use crate::service::{now_ms, Service, Version};
use crate::snapshots;

/// Rebuilds per version before thaw stops trying.
pub const MAX_REBUILDS: u32 = 3;

/// Where the rebuild of a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// Noted; the rebuild has not started.
    Pending,
    /// Booting, warming up or capturing.
    Rebuilding,
    /// A new snapshot replaced the failed one.
    Rebuilt,
    /// The rebuild failed (`rebuild_error` says why); the version boots.
    Failed,
    /// [`MAX_REBUILDS`] reached; the version boots.
    GaveUp,
}

/// A failed restore as the version's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFailureNote {
    /// The snapshot whose restore failed.
    pub snapshot: String,
    /// Why, as the restorer said it.
    pub reason: String,
    /// Unix time, ms.
    pub at_ms: u64,
    /// The rebuild it started.
    pub rebuild: RebuildState,
    /// Why the rebuild failed, if it did.
    #[serde(default)]
    pub rebuild_error: Option<String>,
    /// The snapshot that replaced it, once rebuilt.
    #[serde(default)]
    pub rebuilt_as: Option<String>,
}

/// Reports of failed restores, from the pool's hook to the service.
pub type FailureSender = tokio::sync::mpsc::UnboundedSender<(FunctionKey, String, String)>;

/// The pool hook that sends each failure to `tx` (the pool calls it on its
/// own task; the service acts on it in [`Service::run_rebuilds`]).
pub fn hook(tx: FailureSender) -> pool::manager::RestoreFailureHook {
    std::sync::Arc::new(move |key: &FunctionKey, snapshot: &str, reason: &str| {
        let _ = tx.send((key.clone(), snapshot.to_string(), reason.to_string()));
    })
}

impl Service {
    /// Acts on every failed restore reported to `rx`, until the sender is
    /// gone.
    pub fn run_rebuilds(
        &self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(FunctionKey, String, String)>,
    ) {
        let svc = self.clone();
        tokio::spawn(async move {
            while let Some((key, snapshot, reason)) = rx.recv().await {
                if let Some(v) = svc.note_restore_failure(&key, &snapshot, &reason) {
                    let svc = svc.clone();
                    tokio::spawn(async move { svc.rebuild(v).await });
                }
            }
        });
    }

    /// Records the failure and stops restoring the snapshot. Returns the
    /// version to rebuild, unless it is already being rebuilt, the snapshot
    /// was already replaced, or the version gave up.
    fn note_restore_failure(
        &self,
        key: &FunctionKey,
        snapshot: &str,
        reason: &str,
    ) -> Option<Version> {
        let to_rebuild = self.update_version(key, |v| {
            let current = v.start.snapshot.as_ref().map(|s| s.id.as_str());
            if current != Some(snapshot) {
                // Already replaced or already noted: nothing new.
                return None;
            }
            let gave_up = v.record.rebuilds >= MAX_REBUILDS;
            v.record.restore_failure = Some(RestoreFailureNote {
                snapshot: snapshot.to_string(),
                reason: reason.to_string(),
                at_ms: now_ms(),
                rebuild: if gave_up {
                    RebuildState::GaveUp
                } else {
                    RebuildState::Pending
                },
                rebuild_error: None,
                rebuilt_as: None,
            });
            v.start.snapshot = None;
            Some((!gave_up).then(|| v.clone()))
        })?;
        tracing::warn!(
            function = %key.name,
            version = key.version,
            snapshot,
            reason,
            "snapshot marked for rebuild; cold starts boot until it is rebuilt"
        );
        to_rebuild
    }

    /// Boots, warms and captures the version again, then restores from the
    /// new snapshot.
    async fn rebuild(&self, v: Version) {
        let key = v.key.clone();
        let Some(old) = v
            .record
            .restore_failure
            .as_ref()
            .map(|n| n.snapshot.clone())
        else {
            return;
        };
        self.set_rebuild_state(&key, RebuildState::Rebuilding, None, None);
        let result = async {
            let instance = self
                .pool
                .boot(&key, &v.start)
                .await
                .map_err(|e| format!("boot: {e}"))?;
            let instance = self.run_warmup(&v, instance).await?;
            let id = format!(
                "{}-r{}",
                snapshots::snapshot_id(&key.name, key.version, key.uid),
                v.record.rebuilds + 1
            );
            let info = self.snapshot(&v, &instance, id).await;
            self.pool.release(&key, instance).await;
            if let Ok(info) = &info {
                self.record_deploy_working_set(&v, info).await;
            }
            info.map_err(|e| format!("capture: {e}"))
        }
        .await;
        match result {
            Ok(info) => {
                let new_id = info.id.clone();
                let installed = self
                    .update_version(&key, |v| {
                        v.record.rebuilds += 1;
                        v.start.snapshot = Some(pool::instance::SnapshotSource {
                            id: info.id.clone(),
                            mode: v
                                .record
                                .spec
                                .memory_mode
                                .clone()
                                .unwrap_or_else(|| self.config.memory_mode.clone()),
                        });
                        v.record.snapshot = Some(info.clone());
                        Some(())
                    })
                    .is_some();
                let dir = snapshots::snapshots_dir(&self.config.data_dir);
                if installed {
                    if let Some(r) = &self.pool.config().restorer {
                        r.forget(&old);
                    }
                    snapshots::remove(&self.store, &dir, &old);
                    // Reported rebuilt once the old snapshot is gone, so a
                    // caller that sees "rebuilt" never finds it.
                    self.set_rebuild_state(&key, RebuildState::Rebuilt, None, Some(new_id.clone()));
                    tracing::info!(function = %key.name, version = key.version, old = %old, new = %new_id, "snapshot rebuilt");
                    if let Some(uploader) = &self.config.uploader {
                        uploader.spawn(
                            self.metrics.clone(),
                            crate::remote::VersionUpload {
                                name: key.name.clone(),
                                version: key.version,
                                uid: key.uid,
                                snapshot: new_id.clone(),
                            },
                        );
                    }
                } else {
                    // The version went away while it was rebuilt.
                    snapshots::remove(&self.store, &dir, &new_id);
                }
            }
            Err(e) => {
                tracing::warn!(function = %key.name, version = key.version, error = %e, "snapshot rebuild failed; the version boots");
                self.set_rebuild_state(&key, RebuildState::Failed, Some(e), None);
            }
        }
    }

    fn set_rebuild_state(
        &self,
        key: &FunctionKey,
        state: RebuildState,
        error: Option<String>,
        rebuilt_as: Option<String>,
    ) {
        self.update_version(key, |v| {
            if let Some(n) = &mut v.record.restore_failure {
                n.rebuild = state;
                n.rebuild_error = error.clone();
                n.rebuilt_as = rebuilt_as.clone();
            }
            Some(())
        });
    }

    /// Changes one version in memory with `f`, re-registers it with the
    /// pool and saves the function's record. `None` if the version is gone
    /// or `f` said there was nothing to do.
    fn update_version<T>(
        &self,
        key: &FunctionKey,
        f: impl FnOnce(&mut Version) -> Option<T>,
    ) -> Option<T> {
        let mut map = self.functions.write().unwrap();
        let list = map.get_mut(&key.name)?;
        let v = list.iter_mut().find(|v| v.key == *key)?;
        let out = f(v)?;
        self.keep(v);
        self.save_or_log(&key.name, list);
        Some(out)
    }
}
