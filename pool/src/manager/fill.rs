//! Keeping `min_instances` ready: the copies come from the same path as cold
//! starts (restored from the version's snapshot when it has one, falling
//! back to a boot if the restore fails; booted otherwise). One filler per
//! version starts them one after another, so a large `min_instances` never
//! floods the machine with starts, and each new copy is measured before the
//! next one is counted against the budget.

use super::{FunctionKey, Pool, Room, State};

/// Versions short of their `min_instances` that no filler works on; marks
/// them as being filled.
pub(super) fn claim_missing(st: &mut State) -> Vec<FunctionKey> {
    let mut out = Vec::new();
    for key in st.specs.keys() {
        if st.filling.contains(key) || missing(st, key) == 0 {
            continue;
        }
        out.push(key.clone());
    }
    for key in &out {
        st.filling.insert(key.clone());
    }
    out
}

/// How many instances `key` lacks to reach its `min_instances`.
fn missing(st: &State, key: &FunctionKey) -> usize {
    if st.closed || st.retired.contains(key) {
        return 0;
    }
    let Some(spec) = st.specs.get(key) else {
        return 0;
    };
    let have = st.idle.get(key).map_or(0, Vec::len)
        + st.busy.get(key).copied().unwrap_or(0)
        + st.booting.get(key).copied().unwrap_or(0);
    spec.min_instances.saturating_sub(have)
}

impl Pool {
    /// Starts instances of `key` until it has `min_instances` (claimed by
    /// [`claim_missing`]); stops at the first failure (the next maintenance
    /// tick tries again).
    pub(super) async fn fill(self, key: FunctionKey) {
        loop {
            let spec = {
                let st = self.state.lock().unwrap();
                if missing(&st, &key) == 0 {
                    break;
                }
                st.specs.get(&key).cloned()
            };
            let Some(spec) = spec else { break };
            match self.cold_start(&key, &spec, None, Room::Spare).await {
                Ok((instance, _, _)) => {
                    self.sample(Some(vec![instance.id().to_string()])).await;
                    self.release(&key, instance).await;
                }
                Err((e, kind)) => {
                    let limit_key = format!("min_instances:{}", key.name);
                    if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow(&limit_key) {
                        tracing::warn!(
                            function = %key.name,
                            version = key.version,
                            start = kind.as_str(),
                            error = %e,
                            suppressed,
                            "min_instances start failed"
                        );
                    }
                    break;
                }
            }
        }
        self.state.lock().unwrap().filling.remove(&key);
    }
}
