//! The mm fields of the copy, its auxv and executable: one
//! `PR_SET_MM_MAP` (the restore side of `snapshotter::capture::mm`, state
//! `snapshotter::state::MmState`). It runs after the stub's own binary is
//! unmapped (the kernel answers `EBUSY` while it is mapped) and before the
//! mapping fds are closed (`exe_fd` is one of them).
//!
//! `struct prctl_mm_map` as `PR_SET_MM_MAP` takes it (104 bytes):
//!
//! ```text
//! u64 start_code end_code start_data end_data start_brk brk start_stack
//!     arg_start arg_end env_start env_end
//! u64 auxv (pointer)   u32 auxv_size (bytes)   u32 exe_fd
//! ```

use snapshotter::state::MmState;

use super::batch::Batch;
use super::remote::bytes_of;
use super::RestoreError;

/// `struct prctl_mm_map`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}
const _: () = assert!(std::mem::size_of::<PrctlMmMap>() == 104);

/// `PR_SET_MM_MAP` with the saved fields, auxv and the executable (held by
/// the stub as `exe_fd`). The stub's own binary must be unmapped already.
pub fn set_mm(batch: &mut Batch, mm: &MmState, exe_fd: i32) -> Result<(), RestoreError> {
    let auxv: Vec<u8> = mm
        .auxv
        .iter()
        .flat_map(|&(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    let auxv_addr = batch.data(&auxv)?;
    let map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: auxv_addr,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    let addr = batch.data(bytes_of(&map))?;
    batch.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            addr,
            std::mem::size_of::<PrctlMmMap>() as u64,
            0,
            0,
        ],
    );
    Ok(())
}
