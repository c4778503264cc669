//! A sandbox's time namespace (issue 18, "Clocks"): its processes see
//! `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` moved by the offsets it was made
//! with, and the host's clocks without them.

mod restore_support;

use pool::sandbox::{Sandbox, SandboxExit};
use restore_support::sandbox_env::{sandbox_env, shell_spec, SandboxEnv};
use snapshotter::state::Clocks;
use tokio::io::AsyncReadExt;

/// Runs `script` in a sandbox with `offsets`; its exit and output.
async fn run(env: &SandboxEnv, script: &str, offsets: Option<Clocks>) -> (SandboxExit, String) {
    let spec = shell_spec(&env.code, script);
    let mut sb = Sandbox::launch_copy(&env.config, &spec, &[], &[], offsets)
        .await
        .expect("launch");
    let mut out = sb.stdout.take().unwrap();
    let mut o = String::new();
    out.read_to_string(&mut o).await.unwrap();
    let exit = sb.wait().await;
    sb.destroy().await.unwrap();
    (exit, o)
}

/// Seconds of `/proc/uptime` (boottime, moved by the namespace's offset).
fn uptime(text: &str) -> f64 {
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_sandbox_sees_its_time_namespace_offsets() {
    if !nix::unistd::geteuid().is_root() {
        skip!("needs root (namespaces, cgroups)");
    }
    if !std::path::Path::new("/proc/self/timens_offsets").exists() {
        skip!("this kernel has no time namespaces");
    }
    let env = sandbox_env("timens");
    let ten_days = 864_000_000_000_000i64;
    let offsets = Clocks {
        monotonic_ns: ten_days,
        boottime_ns: ten_days + 1,
    };
    let script = "cat /proc/self/timens_offsets; cat /proc/uptime";
    let (exit, out) = run(&env, script, Some(offsets)).await;
    assert!(matches!(exit, SandboxExit::Exited(0)), "{exit:?}: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["monotonic", "864000", "0"],
        "{out}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["boottime", "864000", "1"],
        "{out}"
    );
    let host = uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    let inside = uptime(lines[2]);
    assert!(
        inside >= host + 864_000.0 - 60.0,
        "uptime {inside} inside, {host} here"
    );

    // Without offsets: the host's clocks.
    let (exit, out) = run(&env, script, None).await;
    assert!(matches!(exit, SandboxExit::Exited(0)), "{exit:?}: {out}");
    let inside = uptime(out.lines().nth(2).unwrap());
    assert!(inside < host + 864_000.0 - 60.0, "{out}");
}
