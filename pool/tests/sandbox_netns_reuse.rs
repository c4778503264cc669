//! Network namespaces reused between sandboxes of one function
//! (pool/src/sandbox/netns_pool.rs): a clean one is reused, only by the same
//! function, and one with anything left in it (a TCP socket in TIME_WAIT)
//! never is. Needs root.

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

/// Runs `script` in a sandbox of the function whose code is `code`, to
/// its end and destroyed; returns its exit and stdout.
async fn run(env: &SandboxEnv, code: &std::path::Path, script: &str) -> (SandboxExit, String) {
    let mut sb = Sandbox::launch(&env.config, &shell_spec(code, script))
        .await
        .expect("launch");
    let mut out = sb.stdout.take().unwrap();
    let mut o = String::new();
    out.read_to_string(&mut o).await.unwrap();
    let exit = sb.wait().await;
    sb.destroy().await.unwrap();
    (exit, o)
}

/// Prints the sandbox's network namespace, and what a fresh one shows.
const LOOK: &str = "readlink /proc/self/ns/net; \
    python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(\"lo up\")'; \
    cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
    grep -c . /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/unix";

/// Leaves a TCP connection in TIME_WAIT (the client closes first).
const TIME_WAIT: &str = "python3 -c '
import socket
s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
c.close(); a.recv(1); a.close(); s.close()
import time; time.sleep(0.05)
'; readlink /proc/self/ns/net";

fn ns_of(out: &str) -> String {
    out.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_clean_namespace_is_reused_by_its_own_function_only() {
    require_root!();
    if !pool::sandbox::netns_pool::reuse_enabled() {
        skip!("THAW_NETNS_REUSE=0: reuse is turned off");
    }
    let env = sandbox_env("nsr-clean");
    let other = env.dir().join("other-code");
    std::fs::create_dir_all(&other).unwrap();

    let (exit, first) = run(&env, &env.code, LOOK).await;
    assert_eq!(exit, SandboxExit::Exited(0), "{first}");
    let (exit, second) = run(&env, &env.code, LOOK).await;
    assert_eq!(exit, SandboxExit::Exited(0), "{second}");
    assert_eq!(
        ns_of(&first),
        ns_of(&second),
        "the second sandbox of the function got the first one's namespace"
    );
    // What it sees is a fresh loopback-only namespace: lo up, no other
    // interface, no socket of any kind (each file has only its header).
    let fresh = "lo up\nlo\n/proc/net/tcp:1\n/proc/net/tcp6:1\n/proc/net/udp:1\n/proc/net/unix:1";
    let shown: Vec<&str> = second.lines().skip(1).collect();
    assert_eq!(shown.join("\n"), fresh, "{second}");

    let (exit, stranger) = run(&env, &other, LOOK).await;
    assert_eq!(exit, SandboxExit::Exited(0), "{stranger}");
    assert_ne!(
        ns_of(&stranger),
        ns_of(&first),
        "another function never gets this function's namespace"
    );
}

#[tokio::test]
async fn a_namespace_with_a_socket_left_is_never_reused() {
    require_root!();
    if !pool::sandbox::netns_pool::reuse_enabled() {
        skip!("THAW_NETNS_REUSE=0: reuse is turned off");
    }
    let env = sandbox_env("nsr-dirty");
    let (exit, dirty) = run(&env, &env.code, TIME_WAIT).await;
    assert_eq!(exit, SandboxExit::Exited(0), "{dirty}");
    let (exit, next) = run(&env, &env.code, LOOK).await;
    assert_eq!(exit, SandboxExit::Exited(0), "{next}");
    assert_ne!(
        ns_of(&next),
        ns_of(&dirty),
        "a namespace holding a TIME_WAIT socket is not handed on"
    );
    assert!(next.contains("/proc/net/tcp:1"), "{next}");
}
