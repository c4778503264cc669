//! The default system-call policy of functions: a seccomp filter, modelled
//! on the default profiles of container runtimes (Docker/moby's
//! `default.json`, the runc/containerd defaults), installed in every
//! function (pid 2 of its sandbox) and reinstalled in every restored copy
//! (see `restore::seccomp`).
//!
//! It is a deny-list: what a function's runtime needs (Python, Node.js,
//! Java) keeps working, and the doors an unprivileged process uses to reach
//! the kernel's attack surface or other processes are shut. The function
//! already runs as an unprivileged uid with no capabilities and
//! `no_new_privs`; the filter takes away what those leave open (user
//! namespaces above all: `unshare -Ur` gives a process `CAP_SYS_ADMIN` over
//! a namespace of its own, the usual first step of a kernel exploit).
//!
//! ```text
//! program (classic BPF, one pass, no backward jumps)
//!   arch != x86_64                         → KILL_PROCESS (no i386 ABI)
//!   nr >= 0x40000000 (x32 ABI)             → ERRNO(EPERM)
//!   clone with any CLONE_NEW* flag         → ERRNO(EPERM)
//!   clone3                                 → ERRNO(ENOSYS): seccomp cannot
//!                                            read its flags (they are in
//!                                            memory); glibc then falls
//!                                            back to clone, checked above
//!   every call in DENIED                   → ERRNO(EPERM)
//!   anything else                          → ALLOW
//! ```
//!
//! The system call number is looked up by binary search (`JGE` halves down
//! to leaves of at most three `JEQ`s, see `search`), not a linear list: at
//! most about 8 comparisons per call instead of ~60, which makes the
//! filter's installation, in every function and every restored copy,
//! several times cheaper (the kernel emulates the program for every system
//! call number when it installs it).
//!
//! Allowed calls never look at their arguments, so the kernel's per-syscall
//! action cache lets them through without running the program at all; only
//! `clone` (and the denied calls) run it.
//!
//! Order in the function (`init::try_exec`): capabilities dropped, groups,
//! gid, uid, `no_new_privs`, then this filter (an unprivileged process may
//! install a filter only under `no_new_privs`), then `execve`, which keeps
//! it. The restorer installs it last, after its own `clone3` calls and the
//! credentials (`restore::seccomp`). Capture reads a function's filter back
//! with `PTRACE_SECCOMP_GET_FILTER` and accepts exactly [`program_bytes`]
//! (see `snapshotter::capture::CaptureOptions::seccomp_filters`).

use std::sync::OnceLock;

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// First system call number of the x32 ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Low half of the first argument (clone's flags).
const ARG0_LO: u32 = 16;

/// Every `CLONE_NEW*` flag `clone` takes: `NEWNS`, `NEWCGROUP`, `NEWUTS`,
/// `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET` (`CLONE_NEWTIME` exists only for
/// `clone3` and `unshare`, both denied).
pub const CLONE_NEW_MASK: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// System calls denied with `EPERM`, grouped by why.
pub const DENIED: &[(&str, &[(i64, &str)])] = &[
    (
        "namespaces: a new user namespace gives CAP_SYS_ADMIN inside it, the usual door to kernel bugs; joining or making namespaces leaves the sandbox's",
        &[
            (libc::SYS_unshare, "unshare"),
            (libc::SYS_setns, "setns"),
        ],
    ),
    (
        "io_uring: a second system-call interface that seccomp cannot see into, and a frequent source of kernel vulnerabilities (disabled by default by Docker, Google, Android)",
        &[
            (libc::SYS_io_uring_setup, "io_uring_setup"),
            (libc::SYS_io_uring_enter, "io_uring_enter"),
            (libc::SYS_io_uring_register, "io_uring_register"),
        ],
    ),
    (
        "kernel keyrings: not namespaced; keys could be read or planted across sandboxes",
        &[
            (libc::SYS_keyctl, "keyctl"),
            (libc::SYS_add_key, "add_key"),
            (libc::SYS_request_key, "request_key"),
        ],
    ),
    (
        "BPF and performance events: programs and counters run in the kernel and observe other processes",
        &[
            (libc::SYS_bpf, "bpf"),
            (libc::SYS_perf_event_open, "perf_event_open"),
        ],
    ),
    (
        "other processes' memory and descriptors: a function must not trace or read another process (the restorer's own ptrace comes from outside)",
        &[
            (libc::SYS_ptrace, "ptrace"),
            (libc::SYS_process_vm_readv, "process_vm_readv"),
            (libc::SYS_process_vm_writev, "process_vm_writev"),
            (libc::SYS_process_madvise, "process_madvise"),
            (libc::SYS_process_mrelease, "process_mrelease"),
            (libc::SYS_pidfd_getfd, "pidfd_getfd"),
            (libc::SYS_kcmp, "kcmp"),
            (libc::SYS_move_pages, "move_pages"),
            (libc::SYS_migrate_pages, "migrate_pages"),
        ],
    ),
    (
        "userfaultfd: stalls kernel code paths at will (a classic exploitation aid); copies' page faults are served by thaw, never by the function",
        &[(libc::SYS_userfaultfd, "userfaultfd")],
    ),
    (
        "the kernel itself: modules, kexec, reboot, swap",
        &[
            (libc::SYS_kexec_load, "kexec_load"),
            (libc::SYS_kexec_file_load, "kexec_file_load"),
            (libc::SYS_init_module, "init_module"),
            (libc::SYS_finit_module, "finit_module"),
            (libc::SYS_delete_module, "delete_module"),
            (libc::SYS_reboot, "reboot"),
            (libc::SYS_swapon, "swapon"),
            (libc::SYS_swapoff, "swapoff"),
            (libc::SYS_acct, "acct"),
            (libc::SYS_syslog, "syslog"),
            (libc::SYS_iopl, "iopl"),
            (libc::SYS_ioperm, "ioperm"),
            (libc::SYS_uselib, "uselib"),
            (libc::SYS_quotactl, "quotactl"),
            (libc::SYS_quotactl_fd, "quotactl_fd"),
            (libc::SYS_lookup_dcookie, "lookup_dcookie"),
            (libc::SYS_vhangup, "vhangup"),
        ],
    ),
    (
        "mounts and the file system tree: the sandbox's mounts are fixed when it starts",
        &[
            (libc::SYS_mount, "mount"),
            (libc::SYS_umount2, "umount2"),
            (libc::SYS_pivot_root, "pivot_root"),
            (libc::SYS_chroot, "chroot"),
            (libc::SYS_open_tree, "open_tree"),
            (libc::SYS_move_mount, "move_mount"),
            (libc::SYS_fsopen, "fsopen"),
            (libc::SYS_fsconfig, "fsconfig"),
            (libc::SYS_fsmount, "fsmount"),
            (libc::SYS_fspick, "fspick"),
            (libc::SYS_mount_setattr, "mount_setattr"),
            (libc::SYS_fanotify_init, "fanotify_init"),
        ],
    ),
    (
        "file handles: open_by_handle_at opens files by inode number, past every path check (the 'shocker' container escape)",
        &[
            (libc::SYS_open_by_handle_at, "open_by_handle_at"),
            (libc::SYS_name_to_handle_at, "name_to_handle_at"),
        ],
    ),
    (
        "host-wide clocks and names",
        &[
            (libc::SYS_settimeofday, "settimeofday"),
            (libc::SYS_clock_settime, "clock_settime"),
            (libc::SYS_clock_adjtime, "clock_adjtime"),
            (libc::SYS_adjtimex, "adjtimex"),
            (libc::SYS_sethostname, "sethostname"),
            (libc::SYS_setdomainname, "setdomainname"),
        ],
    ),
];

/// Every denied system call number, in [`DENIED`]'s order.
pub fn denied_numbers() -> impl Iterator<Item = (i64, &'static str)> {
    DENIED.iter().flat_map(|(_, calls)| calls.iter().copied())
}

/// The policy's program.
pub fn program() -> &'static [libc::sock_filter] {
    static PROGRAM: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    PROGRAM.get_or_init(build)
}

/// The program as the kernel returns it to `PTRACE_SECCOMP_GET_FILTER`:
/// its instructions, 8 bytes each.
pub fn program_bytes() -> Vec<u8> {
    program()
        .iter()
        .flat_map(|f| {
            let mut b = [0u8; 8];
            b[0..2].copy_from_slice(&f.code.to_ne_bytes());
            b[2] = f.jt;
            b[3] = f.jf;
            b[4..8].copy_from_slice(&f.k.to_ne_bytes());
            b
        })
        .collect()
}

/// Installs the policy in the calling thread (and what it executes or
/// forks later). The caller needs `no_new_privs` or `CAP_SYS_ADMIN`. Only
/// the `seccomp` system call is made, so once [`program`] has been built
/// this is async-signal-safe (usable between `fork` and `exec`).
pub fn install() -> std::io::Result<()> {
    let program = program();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, 0, &fprog): the kernel copies
    // the program, which `fprog` points to and which lives for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where a jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Allow,
    Eperm,
    Enosys,
    Kill,
    Clone,
    /// An instruction of the search (its index).
    At(usize),
}

impl To {
    /// The label's slot in the table of shared targets.
    fn label(self) -> Option<usize> {
        match self {
            To::Allow => Some(0),
            To::Eperm => Some(1),
            To::Enosys => Some(2),
            To::Kill => Some(3),
            To::Clone => Some(4),
            To::Next | To::At(_) => None,
        }
    }
}

/// Most calls a leaf of the search compares one by one.
const LEAF: usize = 3;

/// One instruction before its jumps are resolved.
type Op = (u16, To, To, u32);

/// Adds the search for the accumulator among `calls` (sorted by number):
/// halves split on `JGE`, a leaf compares each of its calls with `JEQ` and
/// falls back to allowing. Every call then runs at most
/// log2(len / LEAF) + LEAF comparisons (about 8 of them for the policy's 60
/// numbers, against one per denied call in a linear list), which matters
/// when the filter is installed: the kernel prepares its per-syscall
/// action cache by emulating the program for every system call number
/// (`seccomp_cache_prepare`), so the install costs in proportion to the
/// path length (measured: a 71-instruction linear program 142 µs, a
/// 15-instruction one 35 µs, medians).
fn search(ops: &mut Vec<Op>, calls: &[(u32, To)]) {
    if calls.len() <= LEAF {
        for (i, &(nr, to)) in calls.iter().enumerate() {
            let otherwise = if i + 1 == calls.len() {
                To::Allow
            } else {
                To::Next
            };
            ops.push((JEQ_K, to, otherwise, nr));
        }
        return;
    }
    let (low, high) = calls.split_at(calls.len() / 2);
    let split = ops.len();
    ops.push((JGE_K, To::Next, To::Next, high[0].0));
    search(ops, low);
    ops[split].1 = To::At(ops.len());
    search(ops, high);
}

fn build() -> Vec<libc::sock_filter> {
    let mut ops: Vec<Op> = vec![
        (LD_W_ABS, To::Next, To::Next, ARCH),
        (JEQ_K, To::Next, To::Kill, AUDIT_ARCH_X86_64),
        (LD_W_ABS, To::Next, To::Next, NR),
        (JGE_K, To::Eperm, To::Next, X32_SYSCALL_BIT),
    ];
    let mut calls: Vec<(u32, To)> = denied_numbers()
        .map(|(nr, _)| (nr as u32, To::Eperm))
        .chain([
            (libc::SYS_clone as u32, To::Clone),
            (libc::SYS_clone3 as u32, To::Enosys),
        ])
        .collect();
    calls.sort_unstable_by_key(|&(nr, _)| nr);
    search(&mut ops, &calls);
    let mut labels = [0usize; 5];
    let mut at = |label: To, ops: &mut Vec<Op>, op: Op| {
        labels[label.label().expect("a shared target")] = ops.len();
        ops.push(op);
    };
    at(
        To::Allow,
        &mut ops,
        (RET_K, To::Next, To::Next, SECCOMP_RET_ALLOW),
    );
    at(To::Clone, &mut ops, (LD_W_ABS, To::Next, To::Next, ARG0_LO));
    ops.push((JSET_K, To::Eperm, To::Next, CLONE_NEW_MASK));
    ops.push((RET_K, To::Next, To::Next, SECCOMP_RET_ALLOW));
    at(
        To::Eperm,
        &mut ops,
        (
            RET_K,
            To::Next,
            To::Next,
            SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    );
    at(
        To::Enosys,
        &mut ops,
        (
            RET_K,
            To::Next,
            To::Next,
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
    );
    at(
        To::Kill,
        &mut ops,
        (RET_K, To::Next, To::Next, SECCOMP_RET_KILL_PROCESS),
    );
    let offset = |from: usize, to: To| -> u8 {
        let target = match to {
            To::Next => return 0,
            To::At(i) => i,
            other => labels[other.label().expect("a shared target")],
        };
        let jump = target
            .checked_sub(from + 1)
            .expect("the policy only jumps forward");
        u8::try_from(jump).expect("the policy's jumps fit in 8 bits")
    };
    ops.iter()
        .enumerate()
        .map(|(i, &(code, jt, jf, k))| libc::sock_filter {
            code,
            jt: offset(i, jt),
            jf: offset(i, jf),
            k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_is_well_formed() {
        let p = program();
        assert!(p.len() < 128, "{} instructions", p.len());
        assert_eq!(program_bytes().len(), p.len() * 8);
        // Ends in the four returns, every jump inside the program.
        for (i, f) in p.iter().enumerate() {
            if f.code != RET_K {
                assert!(i + 1 + (f.jt.max(f.jf) as usize) < p.len());
            }
        }
        let names: Vec<&str> = denied_numbers().map(|(_, n)| n).collect();
        for must in [
            "unshare",
            "setns",
            "io_uring_setup",
            "keyctl",
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "mount",
            "umount2",
            "pivot_root",
            "swapon",
            "open_by_handle_at",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
        let mut numbers: Vec<i64> = denied_numbers().map(|(n, _)| n).collect();
        numbers.sort_unstable();
        let count = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), count, "a call is listed twice");
    }

    /// Runs `p` on a `struct seccomp_data` (the instructions the policy
    /// uses only), returning its action and how many instructions ran.
    fn run(p: &[libc::sock_filter], nr: u32, arch: u32, arg0: u32) -> (u32, usize) {
        let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let f = p[pc];
            steps += 1;
            let jump = |taken: bool| pc + 1 + if taken { f.jt } else { f.jf } as usize;
            pc = match f.code {
                LD_W_ABS => {
                    acc = match f.k {
                        NR => nr,
                        ARCH => arch,
                        ARG0_LO => arg0,
                        other => panic!("load of offset {other}"),
                    };
                    pc + 1
                }
                JEQ_K => jump(acc == f.k),
                JGE_K => jump(acc >= f.k),
                JSET_K => jump(acc & f.k != 0),
                RET_K => return (f.k, steps),
                other => panic!("opcode {other:#x}"),
            };
        }
    }

    #[test]
    fn every_call_number_gets_the_policy_s_answer_in_few_steps() {
        let p = program();
        let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let denied: Vec<u32> = denied_numbers().map(|(n, _)| n as u32).collect();
        let mut longest = 0;
        for nr in 0..1024u32 {
            let want = if nr == libc::SYS_clone3 as u32 {
                SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            } else if denied.contains(&nr) {
                eperm
            } else {
                SECCOMP_RET_ALLOW
            };
            let (got, steps) = run(p, nr, AUDIT_ARCH_X86_64, 0);
            assert_eq!(got, want, "system call {nr}");
            longest = longest.max(steps);
        }
        // Header (4), search (at most ~log2(62 / 3) + 1 splits and 3
        // comparisons), the return.
        assert!(longest <= 14, "a call runs {longest} instructions");
        let clone = libc::SYS_clone as u32;
        assert_eq!(run(p, clone, AUDIT_ARCH_X86_64, 0).0, SECCOMP_RET_ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            let flags = (libc::CLONE_VM | flag) as u32;
            assert_eq!(run(p, clone, AUDIT_ARCH_X86_64, flags).0, eperm);
        }
        assert_eq!(run(p, X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, 0).0, eperm);
        assert_eq!(run(p, X32_SYSCALL_BIT + 1, AUDIT_ARCH_X86_64, 0).0, eperm);
        // i386.
        assert_eq!(run(p, 1, 0x4000_0003, 0).0, SECCOMP_RET_KILL_PROCESS);
    }
}
