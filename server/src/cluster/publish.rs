//! The writer's side: publishes every change of the records (deploys, state
//! changes, new snapshots, rebuilds, deletes) for the readers, and a
//! heartbeat; resumes uploads when the store answers again.
//!
//! Every 200 ms the records in memory are compared with the ones published
//! last. On a change: the code of versions not sent yet (a tar, as the
//! uploader sends it), then `#catalog` under a new generation, then
//! `#writer` naming it, so a reader that sees the generation finds the
//! catalog, and every version in the catalog finds its code. Every 2 s
//! `#writer` is written again with a new heartbeat.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use remote_store::Kind;

use super::catalog::{self, Catalog, WriterObject, FORMAT};
use super::layers::{self, LayerObject};
use super::Cluster;
use crate::registry::FunctionRecord;
use crate::service::{now_ms, Service};

/// How often the records are compared with the published ones.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How often `#writer` is written when nothing changes.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Longest one publication may take before the store counts as down.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// The records of every function, as the catalog holds them.
pub(crate) fn records(service: &Service) -> BTreeMap<String, FunctionRecord> {
    service
        .functions
        .read()
        .unwrap()
        .iter()
        .map(|(name, list)| {
            (
                name.clone(),
                FunctionRecord {
                    name: name.clone(),
                    versions: list.iter().map(|v| v.record.clone()).collect(),
                },
            )
        })
        .collect()
}

struct Publisher {
    cluster: Arc<Cluster>,
    service: Service,
    url: String,
    generation: u64,
    published: Option<Vec<u8>>,
    code_sent: HashSet<(String, u64, u64)>,
    /// Layers in the bucket, by key (cluster::layers).
    layers: BTreeMap<String, LayerObject>,
}

/// Starts publishing as the writer reached at `url`.
pub fn spawn(cluster: Arc<Cluster>, service: Service, url: String) {
    tracing::info!(url = %url, store = %cluster.remote.url(), "this node is the store's writer");
    tokio::spawn(async move {
        let mut p = Publisher {
            cluster,
            service,
            url,
            generation: 0,
            published: None,
            code_sent: HashSet::new(),
            layers: BTreeMap::new(),
        };
        p.run().await;
    });
}

impl Publisher {
    async fn run(&mut self) {
        // Generations only grow, across restarts of the writer too.
        if let Ok(Ok(Some(w))) =
            tokio::time::timeout(PUBLISH_TIMEOUT, catalog::read_writer(&self.cluster.remote)).await
        {
            let age = now_ms().saturating_sub(w.heartbeat_ms);
            if w.url != self.url && age < 3 * HEARTBEAT_EVERY.as_millis() as u64 {
                tracing::warn!(
                    other = %w.url,
                    heartbeat_ms_ago = age,
                    "another writer published to this store moments ago: run one writer per store"
                );
            }
            self.generation = w.generation;
        }
        let mut last_beat: Option<Instant> = None;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let functions = records(&self.service);
            let body = serde_json::to_vec(&functions).expect("records serialise");
            let changed = self.published.as_ref() != Some(&body);
            let beat_due = last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY);
            if !changed && !beat_due {
                continue;
            }
            let result =
                match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish(functions, changed)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!(
                        "publishing took longer than {} s",
                        PUBLISH_TIMEOUT.as_secs()
                    )),
                };
            last_beat = Some(Instant::now());
            match result {
                Ok(()) => {
                    if changed {
                        self.published = Some(body);
                        tracing::debug!(generation = self.generation, "catalog published");
                    }
                    if self.cluster.health.ok() {
                        // Uploads that failed while the store was down.
                        crate::remote::upload_all(&self.service);
                    }
                    // Working sets recorded after their snapshot's upload.
                    crate::remote::upload_recorded_working_sets(&self.service);
                }
                Err(e) => self.cluster.health.failed(&format!("{e:#}")),
            }
            self.cluster.export();
        }
    }

    async fn publish(
        &mut self,
        functions: BTreeMap<String, FunctionRecord>,
        changed: bool,
    ) -> Result<()> {
        let remote = self.cluster.remote.clone();
        if changed {
            for record in functions.values() {
                for v in &record.versions {
                    let key = (record.name.clone(), v.version, v.uid);
                    if self.code_sent.contains(&key) || v.state.in_progress() {
                        // The code is final once the version is: a build
                        // (Java) writes into it during the deploy.
                        continue;
                    }
                    if let Some(l) = &v.layer {
                        if !self.layers.contains_key(&l.key) {
                            let cache = self.service.config.deps.layer_cache();
                            match layers::upload(&remote, cache, l).await {
                                Ok(obj) => {
                                    self.layers.insert(l.key.clone(), obj);
                                }
                                Err(layers::UploadError::Local(e)) => {
                                    // Readers wait for it (their pass for
                                    // this function stays incomplete).
                                    tracing::warn!(function = %record.name, version = v.version, error = %e, "the version's dependency layer cannot be published");
                                    continue;
                                }
                                Err(e @ layers::UploadError::Store(_)) => {
                                    return Err(anyhow::Error::new(e).context(format!(
                                        "uploading the layer of {} v{}",
                                        record.name, v.version
                                    )))
                                }
                            }
                        }
                    }
                    let dir = self.service.registry.code_dir(&record.name, v.version);
                    let layer = v.layer.clone();
                    let tar = match tokio::task::spawn_blocking(move || {
                        crate::remote::code_tar(&dir, layer.as_ref())
                    })
                    .await?
                    {
                        Ok(tar) => tar,
                        Err(e) => {
                            // Deleted meanwhile: the next catalog drops it.
                            tracing::warn!(function = %record.name, version = v.version, error = %format!("{e:#}"), "archiving the code to publish it");
                            continue;
                        }
                    };
                    remote
                        .put_blob(
                            Kind::Code,
                            crate::remote::code_address(&record.name, v.version, v.uid).as_bytes(),
                            &tar,
                        )
                        .await
                        .with_context(|| {
                            format!("uploading the code of {} v{}", record.name, v.version)
                        })?;
                    self.code_sent.insert(key);
                }
            }
            let generation = (self.generation + 1).max(now_ms());
            catalog::write_catalog(
                &remote,
                &Catalog {
                    format: FORMAT,
                    generation,
                    layers: functions
                        .values()
                        .flat_map(|r| &r.versions)
                        .filter_map(|v| v.layer.as_ref())
                        .filter_map(|l| Some((l.key.clone(), self.layers.get(&l.key)?.clone())))
                        .collect(),
                    functions,
                },
            )
            .await
            .context("writing the catalog")?;
            self.generation = generation;
        }
        let w = WriterObject {
            format: FORMAT,
            url: self.url.clone(),
            generation: self.generation,
            heartbeat_ms: now_ms(),
        };
        catalog::write_writer(&remote, &w)
            .await
            .context("writing the writer object")?;
        *self.cluster.writer.lock().unwrap() = Some(w);
        Ok(())
    }
}
