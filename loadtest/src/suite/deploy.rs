//! Deploying copies of the example functions through `POST /functions` and
//! waiting for them: until a version is `ready` (its snapshot taken), or
//! until it holds a number of idle instances.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Map, Value};

use super::api::{Api, ApiError};

/// Longest wait for a function to become ready or fill its instances.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(200);

/// Why a function could not be deployed or waited for.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The folder or its manifest could not be read.
    #[error("cannot read {path}: {why}")]
    Folder {
        /// The file or folder.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The server refused the deployment.
    #[error("deploying {name} was refused (status {status}): {why}")]
    Refused {
        /// The function.
        name: String,
        /// HTTP status.
        status: u16,
        /// thaw's error.
        why: String,
    },
    /// The server's memory could not be measured.
    #[error("measuring the server's memory: {0}")]
    Measure(String),
    /// The function's version failed.
    #[error("{name} failed: {why}")]
    Failed {
        /// The function.
        name: String,
        /// Its `error` field.
        why: String,
    },
    /// It took too long.
    #[error("{name}: {what} not reached within {READY_TIMEOUT:?} (last seen: {last})")]
    Timeout {
        /// The function.
        name: String,
        /// What was awaited.
        what: String,
        /// The last record seen.
        last: String,
    },
    /// The API did not answer.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// The deploy request of the function in `folder` under `name`: the fields
/// of its `thaw.toml` (with `name` replaced and `extra` fields added) and
/// the UTF-8 files of the folder except `thaw.toml`.
pub fn deploy_request(
    folder: &Path,
    name: &str,
    extra: &Map<String, Value>,
) -> Result<Value, DeployError> {
    let bad = |path: &Path, why: String| DeployError::Folder {
        path: path.display().to_string(),
        why,
    };
    let manifest_path = folder.join("thaw.toml");
    let text =
        std::fs::read_to_string(&manifest_path).map_err(|e| bad(&manifest_path, e.to_string()))?;
    let manifest: toml::Value =
        toml::from_str(&text).map_err(|e| bad(&manifest_path, e.to_string()))?;
    let mut spec = match serde_json::to_value(manifest) {
        Ok(Value::Object(map)) => map,
        _ => return Err(bad(&manifest_path, "not a table".into())),
    };
    spec.insert("name".into(), json!(name));
    for (k, v) in extra {
        spec.insert(k.clone(), v.clone());
    }
    let mut files = Map::new();
    collect_files(folder, folder, &mut files).map_err(|(path, why)| bad(&path, why))?;
    spec.insert("files".into(), Value::Object(files));
    Ok(Value::Object(spec))
}

/// Adds the UTF-8 files under `dir` (subfolders too, such as a Java
/// package's) to `files`, keyed by their path relative to `root`; the
/// top-level `thaw.toml` is left out.
fn collect_files(
    root: &Path,
    dir: &Path,
    files: &mut Map<String, Value>,
) -> Result<(), (PathBuf, String)> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| (dir.to_path_buf(), e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_files(root, &path, files)?;
            continue;
        }
        if !path.is_file() || (dir == root && path.file_name().is_some_and(|n| n == "thaw.toml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| (path.clone(), e.to_string()))?;
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        files.insert(rel, json!(text));
    }
    Ok(())
}

/// Deploys the function in `folder` as `name` (plus `extra` spec fields).
pub async fn deploy(
    api: &Api,
    folder: &Path,
    name: &str,
    extra: &Map<String, Value>,
) -> Result<(), DeployError> {
    let body = deploy_request(folder, name, extra)?;
    let answer = api
        .send(Method::POST, "/functions", Some(&body), &[])
        .await?;
    if !answer.is_ok() {
        return Err(DeployError::Refused {
            name: name.to_owned(),
            status: answer.status,
            why: answer.error_text(),
        });
    }
    Ok(())
}

/// Deletes a function (errors are ignored: the server goes away anyway).
pub async fn remove(api: &Api, name: &str) {
    let _ = api
        .send(Method::DELETE, &format!("/functions/{name}"), None, &[])
        .await;
}

/// Waits until `name` is `ready` and returns its record.
pub async fn wait_ready(api: &Api, name: &str) -> Result<Value, DeployError> {
    wait_for(api, name, "state ready", |record| {
        match record.get("state").and_then(Value::as_str) {
            Some("ready") => Ok(true),
            Some("failed") => Err(record
                .get("error")
                .map_or_else(|| "no reason given".into(), Value::to_string)),
            _ => Ok(false),
        }
    })
    .await
}

/// Waits until `name` has at least `n` idle instances (and none starting)
/// and returns its record.
pub async fn wait_idle(api: &Api, name: &str, n: u64) -> Result<Value, DeployError> {
    wait_for(api, name, &format!("{n} idle instances"), |record| {
        if record.get("state").and_then(Value::as_str) == Some("failed") {
            return Err(record
                .get("error")
                .map_or_else(String::new, Value::to_string));
        }
        let count = |k: &str| {
            record
                .pointer(&format!("/instances/{k}"))
                .and_then(Value::as_u64)
        };
        Ok(count("idle").is_some_and(|i| i >= n) && count("booting").unwrap_or(0) == 0)
    })
    .await
}

/// Waits until `name` has at least `n` idle instances started by `kind`
/// (`restore` or `boot`) whose memory the server has measured, and none
/// starting; returns its record.
pub async fn wait_started(api: &Api, name: &str, kind: &str, n: u64) -> Result<Value, DeployError> {
    wait_for(
        api,
        name,
        &format!("{n} idle instances started by {kind}"),
        |record| {
            if record.get("state").and_then(Value::as_str) == Some("failed") {
                return Err(record
                    .get("error")
                    .map_or_else(String::new, Value::to_string));
            }
            let have = record
                .get("instance_list")
                .and_then(Value::as_array)
                .map_or(0, |list| {
                    list.iter()
                        .filter(|i| {
                            i["start"] == kind
                                && i["state"] == "idle"
                                && i.pointer("/memory/pss").and_then(Value::as_u64) > Some(0)
                        })
                        .count() as u64
                });
            let booting = record
                .pointer("/instances/booting")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Ok(have >= n && booting == 0)
        },
    )
    .await
}

async fn wait_for(
    api: &Api,
    name: &str,
    what: &str,
    mut done: impl FnMut(&Value) -> Result<bool, String>,
) -> Result<Value, DeployError> {
    let start = Instant::now();
    let path = format!("/functions/{name}");
    loop {
        let answer = api.get(&path).await?;
        if answer.is_ok() {
            match done(&answer.body) {
                Ok(true) => return Ok(answer.body),
                Ok(false) => {}
                Err(why) => {
                    return Err(DeployError::Failed {
                        name: name.to_owned(),
                        why,
                    })
                }
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            let last = answer.body.to_string();
            return Err(DeployError::Timeout {
                name: name.to_owned(),
                what: what.to_owned(),
                last: last.chars().take(300).collect(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `name` is at rest after forced cold starts: nothing busy or
/// starting, every instance idle or a spare, and at least `spares`
/// pre-made sandboxes ready again.
pub async fn wait_settled(api: &Api, name: &str, spares: u64) -> Result<Value, DeployError> {
    wait_for(
        api,
        name,
        &format!("nothing busy and {spares} spares ready"),
        |record| {
            let count = |k: &str| {
                record
                    .pointer(&format!("/instances/{k}"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let working = record
                .get("instance_list")
                .and_then(Value::as_array)
                .map_or(0, |list| {
                    list.iter()
                        .filter(|i| i["state"] != "idle" && i["state"] != "spare")
                        .count()
                });
            // A spare's pre-map (docs/restore.md, "Pre-mapped spares") is
            // background work too: at rest, none is left to run (a server
            // without pre-maps reports none).
            Ok(count("busy") == 0
                && count("booting") == 0
                && working == 0
                && count("premapping") == 0
                && count("spare") >= spares)
        },
    )
    .await
}

/// Pre-made sandboxes ready for `name` now.
pub async fn spares_ready(api: &Api, name: &str) -> Result<u64, DeployError> {
    let record = api.get(&format!("/functions/{name}")).await?.body;
    Ok(record
        .pointer("/instances/spare")
        .and_then(Value::as_u64)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_from_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("thaw.toml"),
            "name = \"x\"\nmemory_mb = 64\nwarmup = [ { a = 1 } ]\n[env]\nK = \"v\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.py"),
            "def handler(e, c):\n    return 1\n",
        )
        .unwrap();
        let mut extra = Map::new();
        extra.insert("min_instances".into(), json!(3));
        let req = deploy_request(dir.path(), "x-copy", &extra).unwrap();
        assert_eq!(req["name"], "x-copy");
        assert_eq!(req["memory_mb"], 64);
        assert_eq!(req["min_instances"], 3);
        assert_eq!(req["warmup"][0]["a"], 1);
        assert_eq!(req["env"]["K"], "v");
        assert!(req["files"]["main.py"]
            .as_str()
            .unwrap()
            .contains("handler"));
        assert!(req["files"].get("thaw.toml").is_none());
    }
}
