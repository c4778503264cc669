//! Credentials of the copy, in every thread (a raw `setresuid` changes
//! only the calling thread): the sandbox's policy, or the snapshot's own
//! ids (state: `snapshotter::state::ProcessAttributes`, read by
//! `snapshotter::capture::process`). Each thread sets them last in its
//! batch (they drop the privileges the calls before needed); the seccomp
//! policy follows ([`super::seccomp`]).

use snapshotter::state::ProcessState;

use super::batch::Batch;
use super::remote::bytes_of;
use super::Credentials;
use super::RestoreError;

/// Highest capability number this code knows (`CAP_LAST_CAP` of Linux 6.x),
/// used when `/proc/sys/kernel/cap_last_cap` cannot be read.
const CAP_LAST: u32 = 40;

/// The highest capability number of this kernel (read once: it is fixed
/// for the kernel's life, and every restore's credentials need it).
fn cap_last() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_LAST)
            .max(CAP_LAST)
    })
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` + two `__user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapSet {
    version: u32,
    pid: i32,
    /// effective, permitted, inheritable; for capabilities 0-31, then 32-63.
    data: [u32; 6],
}
const _: () = assert!(std::mem::size_of::<CapSet>() == 32);

/// The credentials of the thread running `batch`, last in its batch (they
/// drop the privileges the calls before needed); every thread runs this in
/// its own batch, since a raw `setresuid` changes only the calling thread.
/// The seccomp policy comes after (`super::seccomp`).
///
/// [`Credentials::Function`] (every sandboxed copy): the sandbox's policy
/// whatever the snapshot says: no ambient capabilities, an empty bounding
/// set, no supplementary groups, the function's gid and uid (real,
/// effective, saved), empty effective, permitted and inheritable sets
/// (`capset`, also for uid 0), `PR_SET_DUMPABLE` and `NoNewPrivs`.
///
/// [`Credentials::Snapshot`] (`thaw restore` of a snapshot the operator
/// made): the saved bounding set, groups, gids, uids (capabilities then
/// follow the usual rules of a uid change), `NoNewPrivs` as saved.
pub fn set_credentials(
    batch: &mut Batch,
    state: &ProcessState,
    credentials: &Credentials,
) -> Result<(), RestoreError> {
    let p = &state.process;
    // Mode 2 (thaw's policy, the only filter capture accepts) is
    // reinstalled after this (`super::seccomp`); strict mode is refused.
    super::seccomp::wanted(state, false)?;
    match credentials {
        Credentials::Function { uid, gid } => {
            batch.call(
                "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            );
            for cap in 0..=cap_last() {
                batch.call(
                    super::batch::CallName::Numbered("prctl(PR_CAPBSET_DROP, ", cap as u64, ")"),
                    libc::SYS_prctl,
                    [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0, 0],
                );
            }
            batch.call("setgroups", libc::SYS_setgroups, [0, 0, 0, 0, 0, 0]);
            let (u, g) = (*uid as u64, *gid as u64);
            batch.call("setresgid", libc::SYS_setresgid, [g, g, g, 0, 0, 0]);
            batch.call("setresuid", libc::SYS_setresuid, [u, u, u, 0, 0, 0]);
            let caps = CapSet {
                version: CAPABILITY_VERSION_3,
                pid: 0,
                data: [0; 6],
            };
            let header = batch.data(bytes_of(&caps))?;
            batch.call(
                "capset (none)",
                libc::SYS_capset,
                [header, header + 8, 0, 0, 0, 0],
            );
            dumpable(batch);
            batch.call(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            );
        }
        Credentials::Snapshot => {
            let bounding = p.capabilities[3];
            for cap in 0..=CAP_LAST {
                if bounding & (1 << cap) == 0 {
                    batch.call(
                        super::batch::CallName::Numbered(
                            "prctl(PR_CAPBSET_DROP, ",
                            cap as u64,
                            ")",
                        ),
                        libc::SYS_prctl,
                        [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0, 0],
                    );
                }
            }
            let groups: Vec<u8> = p.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
            let addr = if groups.is_empty() {
                0
            } else {
                batch.data(&groups)?
            };
            batch.call(
                "setgroups",
                libc::SYS_setgroups,
                [p.groups.len() as u64, addr, 0, 0, 0, 0],
            );
            let [rg, eg, sg, _] = p.gids;
            batch.call(
                "setresgid",
                libc::SYS_setresgid,
                [rg as u64, eg as u64, sg as u64, 0, 0, 0],
            );
            let [ru, eu, su, _] = p.uids;
            batch.call(
                "setresuid",
                libc::SYS_setresuid,
                [ru as u64, eu as u64, su as u64, 0, 0, 0],
            );
            dumpable(batch);
            if p.no_new_privs {
                batch.call(
                    "prctl(PR_SET_NO_NEW_PRIVS)",
                    libc::SYS_prctl,
                    [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
                );
            }
        }
    }
    Ok(())
}

/// `PR_SET_DUMPABLE`: changing ids clears it; the original was dumpable or
/// it could not have been captured (and the copy's /proc files stay its
/// own).
fn dumpable(batch: &mut Batch) {
    batch.call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
    );
}
