//! Sandboxes forked by the zygote (pool/src/sandbox/zygote.rs): the outer
//! process is this process's child (not the zygote's), holds only the
//! descriptors placed for it, dies with its sandbox, and a dead zygote is
//! replaced. Needs root.

mod restore_support;

use pool::sandbox::{Sandbox, SandboxExit};
use restore_support::sandbox_env::{sandbox_env, shell_spec, SandboxEnv};
use tokio::io::AsyncReadExt;

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            skip!("sandboxes need root (namespaces, mounts, cgroups)");
        }
    };
}

/// Field 4 (ppid) of `/proc/PID/stat`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// This process's children named `thaw-zygote`.
fn zygotes() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ppid(pid) == Some(me) && comm(pid) == "thaw-zygote")
        .collect()
}

/// What each open descriptor of `pid` points at.
fn fd_targets(pid: u32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let t = std::fs::read_link(e.path()).ok()?;
            Some((n, t.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Launches `script` and waits for its setup; the caller waits for the end.
async fn launch(env: &SandboxEnv, script: &str) -> Sandbox {
    Sandbox::launch(&env.config, &shell_spec(&env.code, script))
        .await
        .expect("launch")
}

async fn finish(mut sb: Sandbox) -> (SandboxExit, String) {
    let mut out = sb.stdout.take().unwrap();
    let mut o = String::new();
    out.read_to_string(&mut o).await.unwrap();
    let exit = sb.wait().await;
    sb.destroy().await.unwrap();
    (exit, o)
}

// One test: the zygote is per process, and the checks below count it.
#[tokio::test]
async fn outer_processes_are_forked_by_the_zygote_as_our_children() {
    require_root!();
    if !pool::sandbox::zygote::zygote_enabled() {
        skip!("THAW_SANDBOX_ZYGOTE=0: the zygote is turned off");
    }
    let env = sandbox_env("zyg-basic");

    // A function that runs until told: its outer process is inspected.
    let sb = launch(&env, "read x <&3; echo done $x").await;
    let outer = sb.init_pid().expect("outer pid");
    assert_eq!(
        ppid(outer),
        Some(std::process::id()),
        "the outer process is the launcher's child (CLONE_PARENT), so the launcher reaps it and its parent-death signal follows the launcher"
    );
    let z = zygotes();
    assert_eq!(z.len(), 1, "one zygote per launching process: {z:?}");
    assert_ne!(outer, z[0], "the sandbox is not the zygote itself");
    assert_eq!(ppid(z[0]), Some(std::process::id()));

    // The outer keeps its log pipes at 0-2 (stdin: /dev/null), pid 1's
    // liveness pipe, and nothing of the zygote (its socket, the request's
    // reply socket, the other requests' descriptors).
    let fds = fd_targets(outer);
    assert_eq!(fds[0], (0, "/dev/null".to_string()), "{fds:?}");
    assert!(
        fds.iter().all(|(_, t)| !t.starts_with("socket:")),
        "{fds:?}"
    );
    assert!(
        fds.iter().all(|(n, _)| *n <= 2 || *n < 1000),
        "no status, keeper or zygote descriptor: {fds:?}"
    );
    assert!(
        fds.len() <= 5,
        "only 0-2 and pid 1's liveness pipe (and nothing inherited): {fds:?}"
    );

    // The function's protocol pipe (its fd 3) is the launcher's request
    // pipe: a line written there reaches it.
    {
        use tokio::io::AsyncWriteExt;
        let mut sb = sb;
        let mut req = sb.requests.take().unwrap();
        req.write_all(b"hi\n").await.unwrap();
        drop(req);
        let (exit, out) = finish(sb).await;
        assert_eq!(exit, SandboxExit::Exited(0));
        assert_eq!(out.trim(), "done hi");
    }
    assert!(
        ppid(outer).is_none(),
        "the launcher reaped the outer process (no zombie left)"
    );

    // Exit codes and signals travel as with a spawned init.
    let (exit, _) = finish(launch(&env, "exit 7").await).await;
    assert_eq!(exit, SandboxExit::Exited(7));
    let (exit, _) = finish(launch(&env, "kill -9 $$").await).await;
    assert_eq!(exit, SandboxExit::Signaled(9));

    // Many at once: each gets its own pipes.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let sb = launch(&env, &format!("echo sandbox {i}")).await;
        set.spawn(async move { (i, finish(sb).await) });
    }
    while let Some(r) = set.join_next().await {
        let (i, (exit, out)) = r.unwrap();
        assert_eq!(exit, SandboxExit::Exited(0));
        assert_eq!(out.trim(), format!("sandbox {i}"));
    }

    // A dead zygote is replaced by the next launch.
    let old = zygotes()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while comm(old) == "thaw-zygote"
        && std::fs::read_to_string(format!("/proc/{old}/stat")).is_ok_and(|s| !s.contains(") Z"))
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (exit, out) = finish(launch(&env, "echo again").await).await;
    assert_eq!(exit, SandboxExit::Exited(0));
    assert_eq!(out.trim(), "again");
    let now = zygotes();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], old, "a new zygote");
    assert!(
        env.config.cgroups.children().is_empty(),
        "every sandbox's cgroup is gone: {:?}",
        env.config.cgroups.children()
    );
}
