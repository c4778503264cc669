//! Running a table of system calls inside the stub in one ptrace round trip.
//!
//! One injected system call costs two ptrace stops (~22 µs here); a small
//! loop of machine code in the stub's scratch area runs a whole table for
//! the price of one stop (`PTRACE_CONT` until its `int3`).
//!
//! ```text
//! scratch area (SCRATCH_LEN bytes, mapped rwx in the stub, unmapped last)
//! 0          the loop (CODE, below)
//! DATA_OFF   argument data of the current batch (structs, strings)
//! TABLE_OFF  the table: 64-byte entries
//!            u64 nr | u64 arg0..arg5 | u64 result (written by the loop)
//!            an entry with nr = -1 ends the table
//! ```
//!
//! The loop, with `rbx` pointing at the table:
//!
//! ```text
//! top:  mov rax,[rbx] ; cmp rax,-1 ; je done
//!       mov rdi,[rbx+8] ; mov rsi,[rbx+16] ; mov rdx,[rbx+24]
//!       mov r10,[rbx+32] ; mov r8,[rbx+40] ; mov r9,[rbx+48]
//!       syscall ; mov [rbx+56],rax
//!       cmp rax,-4095 ; jae done        (an error stops the batch)
//!       add rbx,64 ; jmp top
//! done: int3                             (rbx names the entry it stopped at)
//! ```

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::remote::Remote;
use super::RestoreError;

/// Size of the scratch area.
pub const SCRATCH_LEN: u64 = 64 * 4096;
/// Offset of the argument data.
const DATA_OFF: u64 = 4096;
/// Offset of the table.
const TABLE_OFF: u64 = 128 * 1024;
/// Bytes per table entry.
const ENTRY: u64 = 64;
/// Most entries in one batch (one is the terminator).
const MAX_ENTRIES: usize = ((SCRATCH_LEN - TABLE_OFF) / ENTRY) as usize - 1;

/// The loop's machine code (see the module doc).
pub const CODE: [u8; 54] = [
    0x48, 0x8b, 0x03, // mov rax,[rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax,-1
    0x74, 0x2c, // je done
    0x48, 0x8b, 0x7b, 0x08, // mov rdi,[rbx+8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi,[rbx+16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx,[rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10,[rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8,[rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9,[rbx+48]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // mov [rbx+56],rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax,-4095
    0x73, 0x06, // jae done
    0x48, 0x83, 0xc3, 0x40, // add rbx,64
    0xeb, 0xcb, // jmp top
    0xcc, // done: int3
];
/// Offset of the `syscall` instruction in [`CODE`].
pub const SYSCALL_OFFSET: u64 = 0x21;

/// Threads whose batches run at once ([`Remote::run_in_threads`]): each
/// gets a slot of the data region ([`SLOT_DATA`] bytes) and of the table
/// region ([`SLOT_ENTRIES`] entries).
pub const SLOTS: usize = 31;
/// Argument data of one slot.
const SLOT_DATA: u64 = (TABLE_OFF - DATA_OFF) / SLOTS as u64 / 16 * 16;
/// Entries of one slot (one is the terminator).
const SLOT_ENTRIES: usize = ((SCRATCH_LEN - TABLE_OFF) / ENTRY) as usize / SLOTS - 1;

/// A table of system calls being built.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<[u64; 8]>,
    names: Vec<String>,
    data: Vec<u8>,
    scratch: u64,
    /// `None`: the whole scratch area; `Some(n)`: slot `n` of [`SLOTS`].
    slot: Option<usize>,
}

impl Batch {
    /// An empty batch for the scratch area at `scratch`.
    pub fn new(scratch: u64) -> Batch {
        Batch {
            scratch,
            ..Batch::default()
        }
    }

    /// An empty batch in slot `slot` (< [`SLOTS`]) of the scratch area, to
    /// run beside batches of other slots in other threads.
    pub fn in_slot(scratch: u64, slot: usize) -> Batch {
        assert!(slot < SLOTS);
        Batch {
            scratch,
            slot: Some(slot),
            ..Batch::default()
        }
    }

    /// Offset and size of this batch's argument data in the scratch area.
    fn data_region(&self) -> (u64, u64) {
        match self.slot {
            None => (DATA_OFF, TABLE_OFF - DATA_OFF),
            Some(n) => (DATA_OFF + n as u64 * SLOT_DATA, SLOT_DATA),
        }
    }

    /// Offset of this batch's table and the entries it may hold at once.
    fn table_region(&self) -> (u64, usize) {
        match self.slot {
            None => (TABLE_OFF, MAX_ENTRIES),
            Some(n) => (
                TABLE_OFF + (n * (SLOT_ENTRIES + 1)) as u64 * ENTRY,
                SLOT_ENTRIES,
            ),
        }
    }

    /// Copies `bytes` into the batch's argument data; returns their address
    /// in the stub (16-byte aligned).
    pub fn data(&mut self, bytes: &[u8]) -> Result<u64, RestoreError> {
        let (offset, size) = self.data_region();
        let at = self.data.len().next_multiple_of(16);
        if (at + bytes.len()) as u64 > size {
            return Err(RestoreError::NoRoom("argument data of a batch"));
        }
        self.data.resize(at, 0);
        self.data.extend_from_slice(bytes);
        Ok(self.scratch + offset + at as u64)
    }

    /// Adds system call `nr`; `what` names it in errors.
    pub fn call(&mut self, what: impl Into<String>, nr: i64, args: [u64; 6]) {
        let mut e = [0u64; 8];
        e[0] = nr as u64;
        e[1..7].copy_from_slice(&args);
        self.entries.push(e);
        self.names.push(what.into());
    }

    /// Number of calls.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch has no calls.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Remote {
    /// Writes the loop into the scratch area (mapped rwx at `scratch`).
    pub fn install_loop(&mut self, scratch: u64) -> Result<(), RestoreError> {
        self.write(scratch, &CODE)
    }

    /// Runs every call of `batch` in order, stopping at the first error.
    pub fn run(&mut self, batch: Batch) -> Result<(), RestoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (scratch, _) = self.scratch.expect("scratch mapped before a batch");
        assert_eq!(scratch, batch.scratch);
        let (data_off, _) = batch.data_region();
        let (table_off, max) = batch.table_region();
        self.write(scratch + data_off, &batch.data)?;
        for (entries, names) in batch.entries.chunks(max).zip(batch.names.chunks(max)) {
            let table_addr = scratch + table_off;
            self.write(table_addr, &table(entries))?;
            let stopped_at = self.run_loop(scratch, table_addr)?;
            self.calls += 1;
            check(stopped_at, table_addr, entries.len(), names)?;
        }
        Ok(())
    }

    /// Runs `batches[i]` in `threads[i]`, all at once: each batch must be in
    /// its own slot ([`Batch::in_slot`]) and fit it (at most one chunk).
    /// Every thread is let go before the first is waited for, so their
    /// round trips overlap.
    pub fn run_in_threads(threads: &mut [Remote], batches: Vec<Batch>) -> Result<(), RestoreError> {
        assert_eq!(threads.len(), batches.len());
        let mut started = Vec::with_capacity(batches.len());
        for (t, batch) in threads.iter_mut().zip(&batches) {
            let (scratch, _) = t.scratch.expect("scratch mapped before a batch");
            assert!(
                batch.slot.is_some(),
                "a batch run beside others needs a slot"
            );
            let (data_off, _) = batch.data_region();
            let (table_off, max) = batch.table_region();
            if batch.entries.len() > max {
                return Err(RestoreError::NoRoom("table of a thread's batch"));
            }
            t.write(scratch + data_off, &batch.data)?;
            let table_addr = scratch + table_off;
            t.write(table_addr, &table(&batch.entries))?;
            t.start_loop(scratch, table_addr)?;
            started.push(table_addr);
        }
        let mut first_error = None;
        for ((t, batch), table_addr) in threads.iter_mut().zip(&batches).zip(started) {
            let result = t
                .wait_loop()
                .and_then(|at| check(at, table_addr, batch.entries.len(), &batch.names));
            t.calls += 1;
            if let (Err(e), None) = (result, &first_error) {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs the loop until its `int3`; returns `(rbx, rax)` there.
    fn run_loop(&mut self, scratch: u64, table: u64) -> Result<(u64, u64), RestoreError> {
        self.start_loop(scratch, table)?;
        self.wait_loop()
    }

    /// Points the stub at the loop with `rbx = table` and lets it run.
    fn start_loop(&mut self, scratch: u64, table: u64) -> Result<(), RestoreError> {
        let saved = self
            .seized
            .registers()
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        let mut regs = saved;
        regs.rip = scratch;
        regs.rbx = table;
        regs.orig_rax = u64::MAX;
        self.seized
            .set_registers(&regs)
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        let pid = Pid::from_raw(self.pid());
        ptrace::cont(pid, None).map_err(|e| RestoreError::Stub(format!("PTRACE_CONT: {e}")))
    }

    /// Waits until the loop reaches its `int3`; returns `(rbx, rax)` there.
    fn wait_loop(&mut self) -> Result<(u64, u64), RestoreError> {
        let pid = Pid::from_raw(self.pid());
        let err = |what: &str, errno: Errno| RestoreError::Stub(format!("{what}: {errno}"));
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(err("waitpid", e)),
                Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => break,
                // A thread made by a clone3 of the batch (the stub is
                // traced with PTRACE_O_TRACECLONE): note its tid; it waits
                // in its first stop for the restorer.
                // A process forked the same way (PTRACE_O_TRACEFORK): a
                // child of a process tree (see `tree`).
                Ok(WaitStatus::PtraceEvent(
                    _,
                    _,
                    libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK,
                )) => {
                    let tid = ptrace::getevent(pid).map_err(|e| err("PTRACE_GETEVENTMSG", e))?;
                    self.cloned.push(tid as i32);
                    ptrace::cont(pid, None).map_err(|e| err("PTRACE_CONT", e))?;
                }
                // Any other signal or event stop: suppress it and go on.
                Ok(WaitStatus::Stopped(..)) | Ok(WaitStatus::PtraceEvent(..)) => {
                    ptrace::cont(pid, None).map_err(|e| err("PTRACE_CONT", e))?;
                }
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    return Err(RestoreError::Stub(format!(
                        "the stub ended running a batch: {status:?}"
                    )));
                }
                Ok(_) => {}
            }
        }
        let after = self
            .seized
            .registers()
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        Ok((after.rbx, after.rax))
    }
}

/// The bytes of a table: `entries` and the terminator.
fn table(entries: &[[u64; 8]]) -> Vec<u8> {
    let mut table = Vec::with_capacity((entries.len() + 1) * ENTRY as usize);
    for e in entries.iter().chain(std::iter::once(&[u64::MAX; 8])) {
        for v in e {
            table.extend_from_slice(&v.to_ne_bytes());
        }
    }
    table
}

/// The error of the entry the loop stopped at, if it stopped before the
/// terminator.
fn check(
    (rbx, rax): (u64, u64),
    table_addr: u64,
    count: usize,
    names: &[String],
) -> Result<(), RestoreError> {
    let index = ((rbx - table_addr) / ENTRY) as usize;
    if index < count {
        return Err(RestoreError::Remote {
            what: names[index].clone(),
            source: std::io::Error::from_raw_os_error(-(rax as i64) as i32),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_do_not_overlap_and_fit() {
        for slot in 0..SLOTS {
            let b = Batch::in_slot(0, slot);
            let (d, n) = b.data_region();
            assert!(d >= DATA_OFF && d + n <= TABLE_OFF);
            assert_eq!(d, DATA_OFF + slot as u64 * n);
            let (t, m) = b.table_region();
            assert!(t >= TABLE_OFF && t + (m as u64 + 1) * ENTRY <= SCRATCH_LEN);
            // A thread's registrations and the sandbox credentials (every
            // bounding capability dropped) fit one slot.
            assert!(m >= 60, "{m} entries");
        }
    }

    #[test]
    fn loop_layout() {
        assert_eq!(CODE[SYSCALL_OFFSET as usize..][..2], [0x0f, 0x05]);
        assert_eq!(*CODE.last().unwrap(), 0xcc);
        // je done: from 9 to the int3.
        assert_eq!(9 + CODE[8] as usize, CODE.len() - 1);
        // jae done: from 0x2f to the int3.
        assert_eq!(0x2f + CODE[0x2e] as usize, CODE.len() - 1);
        // jmp top: from 0x35 back to 0.
        assert_eq!(0x35 - (256 - CODE[0x34] as usize), 0);
    }
}
