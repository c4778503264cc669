//! What makes a process impossible to restore faithfully, and the checks
//! that find it.
//!
//! Every refusal names the offending thing and why thaw cannot copy it; a
//! capture that meets one stops and detaches instead of writing a snapshot
//! that would restore wrong.

use std::net::SocketAddr;

use super::procfs;
use super::CaptureError;

/// Why a process cannot be captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The main thread has exited, other threads still run.
    #[error("its main thread has exited while other threads run; a copy cannot be made of a zombie leader")]
    MainThreadExited,
    /// Signals pending for one thread that have no queued `siginfo` to
    /// copy (see [`super::pending`]).
    #[error("signals {mask:#x} are pending for thread {tid}; they would be lost")]
    ThreadSignals {
        /// The thread (host tid).
        tid: i32,
        /// Its pending mask.
        mask: u64,
    },
    /// Child processes (running or not yet reaped).
    #[error("it has child processes {pids:?}; a copy would not have them (this capture takes one process; `thaw snapshot` captures a process tree)")]
    Children {
        /// Their pids.
        pids: Vec<i32>,
    },
    /// Something of a process tree a copy could not recreate (a zombie
    /// child, a child sharing its parent's memory, other credentials, a
    /// session or group outside the tree, a pipe end outside it).
    #[error("in its process tree: {why}")]
    Tree {
        /// What and why.
        why: String,
    },
    /// A TCP socket, connected or listening.
    #[error("fd {fd} is a TCP socket {local} -> {remote} ({state}); a copy can neither share nor recreate the connection")]
    TcpSocket {
        /// The descriptor.
        fd: i32,
        /// Local address.
        local: SocketAddr,
        /// Remote address.
        remote: SocketAddr,
        /// Connection state name.
        state: &'static str,
    },
    /// A descriptor whose object cannot be recreated in a copy.
    #[error("fd {fd} is {what}; {why}")]
    Descriptor {
        /// The descriptor.
        fd: i32,
        /// What it refers to.
        what: String,
        /// Why that cannot be restored.
        why: &'static str,
    },
    /// Memory shared with other processes (or able to be).
    #[error("memory {start:#x}-{end:#x} ({name}) is shared memory; other processes would see the copies' writes")]
    SharedMemory {
        /// First address.
        start: u64,
        /// End address.
        end: u64,
        /// Path or pseudo-name.
        name: String,
    },
    /// A writable shared mapping of a file.
    #[error("memory {start:#x}-{end:#x} is a writable shared mapping of {path}; every copy would write the same file")]
    SharedWritableFile {
        /// First address.
        start: u64,
        /// End address.
        end: u64,
        /// The file.
        path: String,
    },
    /// A mapping of a file on a filesystem that exists only inside the
    /// process's sandbox ([`PrivateFilesystems`]).
    #[error("memory {start:#x}-{end:#x} maps {path}, on a filesystem that exists only inside the process's sandbox (its root, /tmp); a copy gets its own sandbox, so thaw could not map it this file")]
    SandboxOnlyFile {
        /// First address.
        start: u64,
        /// End address.
        end: u64,
        /// The file.
        path: String,
    },
    /// A kind of mapping thaw does not know how to recreate.
    #[error("memory {start:#x}-{end:#x} ({name}) is a mapping thaw cannot recreate")]
    UnknownMapping {
        /// First address.
        start: u64,
        /// End address.
        end: u64,
        /// Path or pseudo-name.
        name: String,
    },
    /// A timer a copy could not have the same way (see
    /// [`super::timers`]).
    #[error("{what}; a copy could not have this timer")]
    Timers {
        /// Which timers.
        what: String,
    },
    /// A lock held on a file (the copy would not hold it).
    #[error("fd {fd} holds a file lock ({lock}); a copy would not hold it")]
    FileLock {
        /// The descriptor.
        fd: i32,
        /// The fdinfo `lock:` line.
        lock: String,
    },
    /// A seccomp filter (or mode) the restorer cannot give back.
    #[error("it runs under {what}; a copy could only get back a filter thaw knows")]
    Seccomp {
        /// Which filter or mode.
        what: String,
    },
    /// Signals pending for the process that have no queued `siginfo` to
    /// copy (see [`super::pending`]).
    #[error("signals {mask:#x} are pending; they would be lost")]
    PendingSignals {
        /// Pending signal mask (thread and process).
        mask: u64,
    },
}

/// Refuses a process whose main thread has exited while others run (a
/// zombie leader cannot be stopped or restored).
pub fn check_main_thread(pid: i32) -> Result<(), CaptureError> {
    let stat = procfs::read_text(pid, &format!("task/{pid}/stat"))?;
    let state = stat
        .rfind(')')
        .and_then(|close| stat[close + 1..].split_whitespace().next())
        .unwrap_or("?");
    if state == "Z" || state == "X" {
        return Err(CaptureError::refused(pid, Refusal::MainThreadExited));
    }
    Ok(())
}

fn task_ids(pid: i32) -> Result<Vec<i32>, CaptureError> {
    super::ptrace::task_ids(pid).map_err(|e| match e {
        super::PtraceError::Tasks { source, .. } => CaptureError::Proc {
            path: format!("/proc/{pid}/task"),
            source,
        },
        other => CaptureError::Ptrace(other),
    })
}

/// Refuses processes with children (`/proc/pid/task/*/children`).
pub fn check_children(pid: i32) -> Result<(), CaptureError> {
    let mut pids = Vec::new();
    for task in task_ids(pid)? {
        let text = procfs::read_text(pid, &format!("task/{task}/children"))?;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if !pids.is_empty() {
        return Err(CaptureError::refused(pid, Refusal::Children { pids }));
    }
    Ok(())
}

/// Inodes of the Unix sockets of the process's network namespace.
pub fn unix_sockets(pid: i32) -> Result<std::collections::HashSet<u64>, CaptureError> {
    let text = procfs::read_text(pid, "net/unix")?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6)?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_messages_name_the_reason() {
        let signals = Refusal::ThreadSignals { tid: 7, mask: 0x4 }.to_string();
        assert_eq!(
            signals,
            "signals 0x4 are pending for thread 7; they would be lost"
        );
        let children = Refusal::Children { pids: vec![12] }.to_string();
        assert!(children.contains("child processes [12]"));
    }
}

/// Filesystems that exist only in the captured process's own mount
/// namespace: a sandbox's root tmpfs, its `/tmp`, its `/proc`, its `/dev`
/// tmpfs. A copy is restored into a sandbox of its own, which has its own
/// instances of them, so a descriptor of a file there (the sandbox's `/`,
/// a file in `/tmp`) could never be given back exactly: such descriptors
/// are refused. Host filesystems bound into the sandbox (`/usr`, the
/// function's code, device nodes bound from the host's `/dev`) are
/// mounted in the capturer's namespace too and are kept.
#[derive(Debug, Default)]
pub struct PrivateFilesystems {
    /// Devices (`st_dev`) of mounts the process has and the capturer has
    /// not; empty when both share one mount namespace.
    private: std::collections::HashSet<u64>,
}

impl PrivateFilesystems {
    /// Compares the mounts of `pid` with the capturer's own.
    pub fn read(pid: i32) -> Result<PrivateFilesystems, CaptureError> {
        let ns = |path: &str| {
            nix::sys::stat::stat(path)
                .map(|st| (st.st_dev, st.st_ino))
                .map_err(|errno| CaptureError::Proc {
                    path: path.to_string(),
                    source: errno.into(),
                })
        };
        if ns(&format!("/proc/{pid}/ns/mnt"))? == ns("/proc/self/ns/mnt")? {
            return Ok(PrivateFilesystems::default());
        }
        let theirs = mount_devices(&procfs::read_text(pid, "mountinfo")?);
        let self_path = "/proc/self/mountinfo";
        let ours = mount_devices(&std::fs::read_to_string(self_path).map_err(|source| {
            CaptureError::Proc {
                path: self_path.to_string(),
                source,
            }
        })?);
        Ok(PrivateFilesystems {
            private: theirs.difference(&ours).copied().collect(),
        })
    }

    /// Whether a file on device `dev` is on a filesystem of the process's
    /// own (see the type's documentation).
    pub fn contains(&self, dev: u64) -> bool {
        self.private.contains(&dev)
    }
}

/// The devices (`major:minor` as `st_dev`) of every mount in a
/// `mountinfo` text.
fn mount_devices(mountinfo: &str) -> std::collections::HashSet<u64> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (major, minor) = line.split_whitespace().nth(2)?.split_once(':')?;
            Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod private_filesystem_tests {
    use super::*;

    #[test]
    fn mount_devices_reads_the_third_field() {
        let text = "22 1 0:21 / / rw,relatime - tmpfs tmpfs rw\n\
                    23 22 8:1 /usr /usr ro - ext4 /dev/sda1 rw\n\
                    bad line\n";
        let devs = mount_devices(text);
        assert_eq!(devs.len(), 2);
        assert!(devs.contains(&libc::makedev(0, 21)));
        assert!(devs.contains(&libc::makedev(8, 1)));
    }

    #[test]
    fn a_process_of_our_own_namespace_has_no_private_filesystems() {
        let own = PrivateFilesystems::read(std::process::id() as i32).unwrap();
        let root = nix::sys::stat::stat("/").unwrap();
        assert!(!own.contains(root.st_dev));
    }
}
