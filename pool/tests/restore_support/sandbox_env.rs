//! A sandbox configuration for tests that launch sandboxes directly: a
//! temporary folder with the function's code folder and a data folder
//! (masked, holding the run directory), and a cgroup parent of its own.

use std::path::{Path, PathBuf};

use pool::cgroup::{CgroupLimits, CgroupRoot};
use pool::sandbox::{LaunchSpec, Network, SandboxConfig};

/// What a test's sandboxes share; the folder goes when it is dropped.
pub struct SandboxEnv {
    _dir: tempfile::TempDir,
    /// Launch configuration (uid/gid 65534, no host network).
    pub config: SandboxConfig,
    /// The function's code folder (empty).
    pub code: PathBuf,
}

impl SandboxEnv {
    /// The temporary folder holding everything (for more code folders).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A fresh environment; `tag` names its temporary folder and its cgroup
/// parent (`test-<tag>`), whose stale groups are removed first.
pub fn sandbox_env(tag: &str) -> SandboxEnv {
    let dir = tempfile::Builder::new()
        .prefix(&format!("thaw-{tag}"))
        .tempdir_in("/var/tmp")
        .unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cgroups = CgroupRoot::detect(&format!("test-{tag}")).unwrap();
    cgroups.remove_stale().unwrap();
    let config = SandboxConfig {
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_thaw-sandbox-init")),
        init_args: vec![],
        run_dir: data.join("run"),
        mask: vec![data.clone()],
        uid: 65534,
        gid: 65534,
        cgroups,
        network: None,
    };
    SandboxEnv {
        _dir: dir,
        config,
        code,
    }
}

/// A sandbox of the function whose code is `code` running `script` with
/// `/bin/sh -c`, Python's host binds, small limits and no network.
pub fn shell_spec(code: &Path, script: &str) -> LaunchSpec {
    LaunchSpec {
        code_dir: code.to_path_buf(),
        runtime_dir: None,
        binds: pool::sandbox::binds::PYTHON3.paths(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/var/task".into(),
        limits: CgroupLimits {
            memory_bytes: 64 << 20,
            pids: 32,
            cpu_weight: 100,
            cpu_millicores: None,
        },
        tmp_mb: 8,
        network: Network::None,
        network_allow: Vec::new(),
        no_aslr: false,
        stub: false,
    }
}
