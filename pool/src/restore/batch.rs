//! Running a table of system calls inside the stub in one ptrace round trip.
//!
//! One injected system call costs two ptrace stops (~22 µs here); a small
//! loop of machine code in the stub's scratch area runs a whole table for
//! the price of one stop (`PTRACE_CONT` until its `int3`).
//!
//! ```text
//! scratch area (SCRATCH_LEN bytes, mapped rwx in the stub, unmapped last)
//! 0               the loop (CODE, below)
//! CLONE_CODE_OFF  the thread-making code (CLONE_CODE, see "Threads" below)
//! DATA_OFF        argument data of the current batch (structs, strings);
//!                 of a group of new threads, each thread's after the
//!                 previous one's
//! TABLE_OFF       the table: 64-byte entries (a group of new threads:
//!                 their tables one after the other)
//!                 u64 nr | u64 arg0..arg5 | u64 result (written by the loop)
//!                 an entry with nr = -1 ends the table
//! RECORDS_OFF     thread records (Remote::run_clones), 128 bytes each
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
//!
//! A `seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ..)`
//! entry must return exactly 0: when the filter cannot reach every thread
//! the kernel installs it nowhere and returns the id of a thread it could
//! not reach, a positive value the loop lets through. [`Remote::run`]
//! reads those results back and fails the batch on anything but 0.
//!
//! ## Threads
//!
//! [`Remote::run_clones`] makes up to [`SLOTS`] threads in one round trip
//! of the main thread, with no ptrace stop per thread: the threads are not
//! traced when they are born (no `PTRACE_O_TRACECLONE`), each runs its own
//! table itself, reports, and parks in `pause`; the restorer
//! seizes them afterwards. The threads are made from two threads at once
//! (the machine's second CPU): the main thread makes the first half, and
//! the first thread it makes, before its own table, makes the second half
//! (its record's `sublist`), waits for them and only then reports. One
//! record per thread, each list ended by a record whose first word is -1:
//!
//! ```text
//! record (RECORD = 192 bytes)
//! 0    struct clone_args (88 bytes; set_tid points at +88)
//! 88   i32 set_tid[1]
//! 96   u64 the thread's table
//! 104  u64 clone3's result (written by the thread that made it)
//! 112  u32 done (futex word: the thread sets 1 when its table ended)
//! 120  u64 rbx of the thread at the end (its terminator, or the entry
//!      that failed)
//! 128  u64 sublist: 0, or the first record of the threads this thread
//!      makes before running its table
//!
//! records: main's list (first half) | -1 | the sublist (second half) | -1
//! ```
//!
//! CLONE_CODE, main thread with `rbx = r14 =` the first record, `r15 = 0`:
//!
//! ```text
//! ctop:  mov rax,[rbx] ; cmp rax,-1 ; je join
//!        mov rdi,rbx ; mov esi,88 ; mov r12,[rbx+96] ; mov r13,rbx
//!        mov eax,SYS_clone3 ; syscall
//!        test rax,rax ; je child                 (the new thread)
//!        mov [rbx+104],rax ; cmp rax,-4095 ; jae cdone
//!        add rbx,192 ; jmp ctop
//! join:  mov rbx,r14                             (wait for every thread)
//! jtop:  mov rax,[rbx] ; cmp rax,-1 ; je cdone
//! jwait: mov eax,[rbx+112] ; test eax,eax ; jne jnext
//!        futex(rbx+112, FUTEX_WAIT_PRIVATE, 0, NULL) ; jmp jwait
//! jnext: add rbx,192 ; jmp jtop
//! cdone: test r15,r15 ; jne own                 (a thread that made a sublist)
//!        int3                                    (the main thread)
//! child: mov rax,[r13+128] ; test rax,rax ; je table
//!        mov r15,r13 ; mov rbx,rax ; mov r14,rax ; jmp ctop
//! own:   mov r13,r15 ; mov r12,[r13+96]          (its own record and table)
//! table: mov rbx,r12                             (r12, r13 survive clone3)
//! ltop:  the loop of CODE over the thread's table, ending at cfin
//! cfin:  mov [r13+120],rbx ; mov dword [r13+112],1
//!        futex(r13+112, FUTEX_WAKE_PRIVATE, 1)
//! park:  pause ; jmp park
//! ```
//!
//! The thread making the sublist does so before its table, while it still
//! has the stub's privileges (`clone3` with `set_tid` needs
//! `CAP_SYS_ADMIN` over the copy's pid namespace; the table ends with the
//! thread's credentials). If one of its `clone3` calls fails it stops
//! there (the result is in that record), runs its table and reports; the
//! restorer finds the failure in the records.
//!
//! A new thread shares the main thread's stack pointer but never touches
//! the stack (nor runs a handler: it is born with every signal blocked,
//! the main thread's mask).

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::remote::Remote;
use super::RestoreError;

/// Size of the scratch area.
pub const SCRATCH_LEN: u64 = RECORDS_OFF + RECORDS_LEN;
/// Offset of the thread-making code.
const CLONE_CODE_OFF: u64 = 128;
/// Offset of the argument data.
const DATA_OFF: u64 = 4096;
/// Offset of the table.
const TABLE_OFF: u64 = 128 * 1024;
/// End of the tables.
const TABLE_END: u64 = 256 * 1024;
/// Offset of the thread records.
const RECORDS_OFF: u64 = TABLE_END;
/// Room for the records: [`SLOTS`] threads and two terminators.
const RECORDS_LEN: u64 = 8 * 1024;
/// Bytes per thread record.
pub const RECORD: u64 = 192;
const _: () = assert!((SLOTS as u64 + 2) * RECORD <= RECORDS_LEN);
/// Offset in a record of its sublist (see "Threads" in the module doc).
const SUBLIST: usize = 128;
/// Bytes per table entry.
const ENTRY: u64 = 64;
/// `SECCOMP_SET_MODE_FILTER`.
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// `SECCOMP_FILTER_FLAG_TSYNC`.
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
/// Most entries in one batch (one is the terminator).
const MAX_ENTRIES: usize = ((TABLE_END - TABLE_OFF) / ENTRY) as usize - 1;

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

/// Most threads one [`Remote::run_clones`] makes (its records' room).
/// Their batches share the data region ([`Batch::for_thread`]: each
/// thread's data right after the previous one's) and the table region
/// (packed by `run_clones`), so that a group touches few pages.
pub const SLOTS: usize = 31;

/// The thread-making code (see "Threads" in the module doc).
pub const CLONE_CODE: [u8; 245] = [
    0x48, 0x8b, 0x03, // ctop: mov rax,[rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax,-1
    0x74, 0x30, // je join
    0x48, 0x89, 0xdf, // mov rdi,rbx
    0xbe, 0x58, 0x00, 0x00, 0x00, // mov esi,88
    0x4c, 0x8b, 0x63, 0x60, // mov r12,[rbx+96]
    0x49, 0x89, 0xdd, // mov r13,rbx
    0xb8, 0xb3, 0x01, 0x00, 0x00, // mov eax,435 (clone3)
    0x0f, 0x05, // syscall
    0x48, 0x85, 0xc0, // test rax,rax
    0x74, 0x4e, // je child
    0x48, 0x89, 0x43, 0x68, // mov [rbx+104],rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax,-4095
    0x73, 0x3c, // jae cdone
    0x48, 0x81, 0xc3, 0xc0, 0x00, 0x00, 0x00, // add rbx,192
    0xeb, 0xc7, // jmp ctop
    0x4c, 0x89, 0xf3, // join: mov rbx,r14
    0x48, 0x8b, 0x03, // jtop: mov rax,[rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax,-1
    0x74, 0x27, // je cdone
    0x8b, 0x43, 0x70, // jwait: mov eax,dword [rbx+112]
    0x85, 0xc0, // test eax,eax
    0x75, 0x17, // jne jnext
    0x48, 0x8d, 0x7b, 0x70, // lea rdi,[rbx+112]
    0xbe, 0x80, 0x00, 0x00, 0x00, // mov esi,128 (FUTEX_WAIT_PRIVATE)
    0x31, 0xd2, // xor edx,edx
    0x45, 0x31, 0xd2, // xor r10d,r10d
    0xb8, 0xca, 0x00, 0x00, 0x00, // mov eax,202 (futex)
    0x0f, 0x05, // syscall
    0xeb, 0xe2, // jmp jwait
    0x48, 0x81, 0xc3, 0xc0, 0x00, 0x00, 0x00, // jnext: add rbx,192
    0xeb, 0xd0, // jmp jtop
    0x4d, 0x85, 0xff, // cdone: test r15,r15
    0x75, 0x1b, // jne own
    0xcc, // int3
    0x49, 0x8b, 0x85, 0x80, 0x00, 0x00, 0x00, // child: mov rax,[r13+128]
    0x48, 0x85, 0xc0, // test rax,rax
    0x74, 0x15, // je table
    0x4d, 0x89, 0xef, // mov r15,r13
    0x48, 0x89, 0xc3, // mov rbx,rax
    0x49, 0x89, 0xc6, // mov r14,rax
    0xe9, 0x74, 0xff, 0xff, 0xff, // jmp ctop
    0x4d, 0x89, 0xfd, // own: mov r13,r15
    0x4d, 0x8b, 0x65, 0x60, // mov r12,[r13+96]
    0x4c, 0x89, 0xe3, // table: mov rbx,r12
    0x48, 0x8b, 0x03, // ltop: mov rax,[rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax,-1
    0x74, 0x2c, // je cfin
    0x48, 0x8b, 0x7b, 0x08, // mov rdi,[rbx+8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi,[rbx+16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx,[rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10,[rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8,[rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9,[rbx+48]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // mov [rbx+56],rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax,-4095
    0x73, 0x06, // jae cfin
    0x48, 0x83, 0xc3, 0x40, // add rbx,64
    0xeb, 0xcb, // jmp ltop
    0x49, 0x89, 0x5d, 0x78, // cfin: mov [r13+120],rbx
    0x41, 0xc7, 0x45, 0x70, 0x01, 0x00, 0x00, 0x00, // mov dword [r13+112],1
    0x49, 0x8d, 0x7d, 0x70, // lea rdi,[r13+112]
    0xbe, 0x81, 0x00, 0x00, 0x00, // mov esi,129 (FUTEX_WAKE_PRIVATE)
    0xba, 0x01, 0x00, 0x00, 0x00, // mov edx,1
    0xb8, 0xca, 0x00, 0x00, 0x00, // mov eax,202 (futex)
    0x0f, 0x05, // syscall
    0xb8, 0x22, 0x00, 0x00, 0x00, // park: mov eax,34 (pause)
    0x0f, 0x05, // syscall
    0xeb, 0xf7, // jmp park
];
const _: () = assert!(CLONE_CODE_OFF >= CODE.len() as u64);
const _: () = assert!(CLONE_CODE_OFF + CLONE_CODE.len() as u64 <= DATA_OFF);

/// One thread for [`Remote::run_clones`]: its tid (in the copy's pid
/// namespace) and the batch it runs itself ([`Batch::for_thread`]).
#[derive(Debug)]
pub struct NewThread {
    /// The saved thread id it gets (`set_tid`).
    pub tid: i32,
    /// Its batch ([`Batch::for_thread`], slot `n` for the `n`th thread).
    pub batch: Batch,
}

/// What a call of a batch is named in errors. Made into text only when
/// one fails: a numpy/pandas copy's memory batch has hundreds of `mmap`s,
/// and formatting a name for each was a measurable share of the server's
/// CPU per cold start (allocated, then dropped unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallName {
    /// Fixed text.
    Text(std::borrow::Cow<'static, str>),
    /// `what` at an address: `"{what} at {addr:#x}"`.
    At(&'static str, u64),
    /// `what` over a range: `"{what} at {start:#x}-{end:#x}"`.
    Range(&'static str, u64, u64),
    /// A number between two texts: `"{before}{n}{after}"`.
    Numbered(&'static str, u64, &'static str),
}

impl std::fmt::Display for CallName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallName::Text(text) => f.write_str(text),
            CallName::At(what, addr) => write!(f, "{what} at {addr:#x}"),
            CallName::Range(what, start, end) => write!(f, "{what} at {start:#x}-{end:#x}"),
            CallName::Numbered(before, n, after) => write!(f, "{before}{n}{after}"),
        }
    }
}

impl From<&'static str> for CallName {
    fn from(text: &'static str) -> CallName {
        CallName::Text(std::borrow::Cow::Borrowed(text))
    }
}

impl From<String> for CallName {
    fn from(text: String) -> CallName {
        CallName::Text(std::borrow::Cow::Owned(text))
    }
}

/// A table of system calls being built.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<[u64; 8]>,
    names: Vec<CallName>,
    data: Vec<u8>,
    scratch: u64,
    /// `None`: the whole scratch area; `Some(n)`: the `n`th thread of a
    /// group ([`Batch::for_thread`]).
    slot: Option<usize>,
    /// A thread's batch: where its argument data starts, in bytes from
    /// the start of the data region.
    data_from: u64,
    /// Index of the first best-effort entry ([`Batch::call_best_effort`]):
    /// it and every later one may fail without failing the batch.
    best_effort_from: Option<usize>,
}

impl Batch {
    /// An empty batch for the scratch area at `scratch`.
    pub fn new(scratch: u64) -> Batch {
        Batch {
            scratch,
            ..Batch::default()
        }
    }

    /// An empty batch for the `slot`th thread (< [`SLOTS`]) of a group
    /// [`Remote::run_clones`] makes, its argument data from `data_from`
    /// bytes into the data region: 0 for the first thread, then the
    /// previous thread's [`Batch::data_end`].
    pub fn for_thread(scratch: u64, slot: usize, data_from: u64) -> Batch {
        assert!(slot < SLOTS);
        Batch {
            scratch,
            slot: Some(slot),
            data_from: data_from.next_multiple_of(16),
            ..Batch::default()
        }
    }

    /// Where the next thread's data may start ([`Batch::for_thread`]).
    pub fn data_end(&self) -> u64 {
        self.data_from + self.data.len() as u64
    }

    /// Offset and size of this batch's argument data in the scratch area.
    fn data_region(&self) -> (u64, u64) {
        let room = TABLE_OFF - DATA_OFF;
        (
            DATA_OFF + self.data_from,
            room.saturating_sub(self.data_from),
        )
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
    pub fn call(&mut self, what: impl Into<CallName>, nr: i64, args: [u64; 6]) {
        assert!(
            self.best_effort_from.is_none(),
            "a required call after best-effort ones"
        );
        self.push(what.into(), nr, args);
    }

    /// Adds system call `nr` at the batch's best-effort tail: when it (or a
    /// later best-effort call) fails, the batch stops there and still
    /// succeeds. Only best-effort calls may follow it.
    pub fn call_best_effort(&mut self, what: impl Into<CallName>, nr: i64, args: [u64; 6]) {
        self.best_effort_from.get_or_insert(self.entries.len());
        self.push(what.into(), nr, args);
    }

    /// Adds an `mmap` with `MAP_FIXED` (`args` as for [`Batch::call`]),
    /// or, when `merge` is set and it continues the batch's last call
    /// (also such an `mmap`: same protection, flags and descriptor, the
    /// address right after its end and, for a file, the offset right after
    /// its range), grows that call to cover both. Two adjacent mappings of
    /// the same file at consecutive offsets, or two anonymous private ones,
    /// with the same protection and flags are one area once mapped (the
    /// kernel merges the second into the first), so the copy's map is the
    /// same either way; one call instead of two saves the second's entry,
    /// its file lookup and the merge. A `MAP_GROWSDOWN` mapping (a stack)
    /// is never merged.
    pub fn call_mmap(&mut self, what: CallName, args: [u64; 6], merge: bool) {
        if merge && self.best_effort_from.is_none() {
            if let Some(last) = self.entries.last_mut() {
                if mmap_continues(last, &args) {
                    last[2] += args[1];
                    if let Some(CallName::Range(_, _, end)) = self.names.last_mut() {
                        *end = args[0] + args[1];
                    }
                    return;
                }
            }
        }
        self.call(what, libc::SYS_mmap, args);
    }

    fn push(&mut self, what: CallName, nr: i64, args: [u64; 6]) {
        let mut e = [0u64; 8];
        e[0] = nr as u64;
        e[1..7].copy_from_slice(&args);
        self.entries.push(e);
        self.names.push(what);
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

/// Whether `mmap` arguments `next` continue the `mmap` entry `last` (see
/// [`Batch::call_mmap`]).
fn mmap_continues(last: &[u64; 8], next: &[u64; 6]) -> bool {
    let fixed = libc::MAP_FIXED as u64;
    let growsdown = libc::MAP_GROWSDOWN as u64;
    let anonymous = libc::MAP_ANONYMOUS as u64;
    let [nr, addr, len, prot, flags, fd, offset, _] = *last;
    nr == libc::SYS_mmap as u64
        && flags == next[3]
        && flags & fixed != 0
        && flags & growsdown == 0
        && prot == next[2]
        && fd == next[4]
        && addr.checked_add(len) == Some(next[0])
        && (flags & anonymous != 0 || offset.checked_add(len) == Some(next[5]))
}

impl Remote {
    /// Writes the loop and the thread-making code into the scratch area
    /// (mapped rwx at `scratch`).
    pub fn install_loop(&mut self, scratch: u64) -> Result<(), RestoreError> {
        self.write(scratch, &CODE)?;
        self.write(scratch + CLONE_CODE_OFF, &CLONE_CODE)
    }

    /// Makes `threads` (at most [`SLOTS`]; `threads[n]`'s batch in slot
    /// `n`) in the stub with one run of the main thread (see "Threads" in
    /// the module doc): `clone3` with `flags` and `set_tid = [tid]` each,
    /// the main thread making the first half and `threads[0]` the second,
    /// every new thread running its own batch; returns once every one has
    /// run it, each parked in `pause`, untraced. On success returns the
    /// address of each thread's record, in `threads` order: a parked
    /// thread's `r13` is its record (how the restorer tells the threads
    /// apart after seizing them on a kernel that cannot translate their
    /// ids). An error names the call that failed, in the main thread or in
    /// a new one.
    pub fn run_clones(
        &mut self,
        flags: u64,
        threads: &[NewThread],
    ) -> Result<Vec<u64>, RestoreError> {
        assert!(threads.len() <= SLOTS);
        let (scratch, _) = self.scratch.expect("scratch mapped before a batch");
        let records = scratch + RECORDS_OFF;
        let layout = RecordLayout::of(threads.len());
        let mut bytes = vec![0u8; layout.slots() * RECORD as usize];
        // The threads' data (packed by `for_thread`) and tables (packed
        // here, each ~1 KiB), and the records: one process_vm_writev.
        // Slots of fixed size, written whole through /proc/PID/mem, cost
        // ~0.13 ms with 15 threads (padding, and a fresh page per slot).
        let tables: Vec<Vec<u8>> = threads.iter().map(|t| table(&t.batch.entries)).collect();
        let table_offs = place_tables(&tables)?;
        let mut runs: Vec<(u64, &[u8])> = Vec::with_capacity(2 * threads.len() + 1);
        for (n, ((t, table), &table_off)) in
            threads.iter().zip(&tables).zip(&table_offs).enumerate()
        {
            let batch = &t.batch;
            assert_eq!(batch.slot, Some(n), "thread {n}'s batch in slot {n}");
            let (data_off, _) = batch.data_region();
            if !batch.data.is_empty() {
                runs.push((scratch + data_off, &batch.data));
            }
            runs.push((scratch + table_off, table));
            let record = records + layout.slot(n) as u64 * RECORD;
            // SAFETY: clone_args is plain integers; all-zero is valid.
            let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
            args.flags = flags;
            args.set_tid = record + 88;
            args.set_tid_size = 1;
            let r = &mut bytes[layout.slot(n) * RECORD as usize..][..RECORD as usize];
            r[..88].copy_from_slice(super::remote::bytes_of(&args));
            r[88..92].copy_from_slice(&t.tid.to_ne_bytes());
            r[96..104].copy_from_slice(&(scratch + table_off).to_ne_bytes());
        }
        for end in layout.terminators() {
            bytes[end * RECORD as usize..][..8].copy_from_slice(&u64::MAX.to_ne_bytes());
        }
        if let Some(first) = layout.sublist() {
            let sublist = records + layout.slot(first) as u64 * RECORD;
            bytes[SUBLIST..SUBLIST + 8].copy_from_slice(&sublist.to_ne_bytes());
        }
        runs.push((records, &bytes));
        self.write_runs(&runs)?;
        let saved = self
            .seized
            .registers()
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        let mut regs = saved;
        regs.rip = scratch + CLONE_CODE_OFF;
        regs.rbx = records;
        regs.r14 = records;
        // The main thread: at the end of its list it stops (a thread that
        // made a sublist runs its table instead).
        regs.r15 = 0;
        regs.orig_rax = u64::MAX;
        self.seized
            .set_registers(&regs)
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        ptrace::cont(Pid::from_raw(self.pid()), None)
            .map_err(|e| RestoreError::Stub(format!("PTRACE_CONT: {e}")))?;
        let (rbx, rax) = self.wait_loop()?;
        self.calls += 1;
        let index = ((rbx - records) / RECORD) as usize;
        if index < layout.main {
            return Err(RestoreError::Remote {
                what: format!("clone3 (thread {})", threads[index].tid),
                source: std::io::Error::from_raw_os_error(-(rax as i64) as i32),
            });
        }
        self.read(records, &mut bytes)?;
        let record = |n: usize| &bytes[layout.slot(n) * RECORD as usize..][..RECORD as usize];
        let word =
            |n: usize, at: usize| u64::from_ne_bytes(record(n)[at..at + 8].try_into().unwrap());
        // Every clone3 first: after a failed one in the sublist, the
        // threads made before it were not waited for (their tables may
        // still be running).
        for (n, t) in threads.iter().enumerate() {
            let made = word(n, 104) as i64;
            if (-4095..0).contains(&made) {
                return Err(RestoreError::Remote {
                    what: format!("clone3 (thread {})", t.tid),
                    source: std::io::Error::from_raw_os_error(-made as i32),
                });
            }
            if made != t.tid as i64 {
                return Err(RestoreError::Stub(format!(
                    "clone3 made thread {made} instead of {}",
                    t.tid
                )));
            }
        }
        let mut addresses = Vec::with_capacity(threads.len());
        for (n, (t, &table_off)) in threads.iter().zip(&table_offs).enumerate() {
            let table_addr = scratch + table_off;
            let stopped = word(n, 120);
            let Some(at) = stopped.checked_sub(table_addr) else {
                return Err(RestoreError::Stub(format!(
                    "thread {} did not report the end of its table",
                    t.tid
                )));
            };
            if ((at / ENTRY) as usize) < t.batch.entries.len() {
                let mut result = [0u8; 8];
                self.read(stopped + 56, &mut result)?;
                check(
                    (stopped, u64::from_ne_bytes(result)),
                    table_addr,
                    t.batch.entries.len(),
                    &t.batch.names,
                )
                .map_err(|e| match e {
                    RestoreError::Remote { what, source } => RestoreError::Remote {
                        what: format!("{what} (thread {})", t.tid),
                        source,
                    },
                    other => other,
                })?;
            }
            addresses.push(records + layout.slot(n) as u64 * RECORD);
        }
        Ok(addresses)
    }

    /// Runs every call of `batch` in order, stopping at the first error.
    pub fn run(&mut self, batch: Batch) -> Result<(), RestoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (scratch, _) = self.scratch.expect("scratch mapped before a batch");
        assert_eq!(scratch, batch.scratch);
        assert!(batch.slot.is_none(), "a thread's batch runs in run_clones");
        let (data_off, _) = batch.data_region();
        let (table_off, max) = (TABLE_OFF, MAX_ENTRIES);
        self.write(scratch + data_off, &batch.data)?;
        let best_effort_from = batch.best_effort_from.unwrap_or(usize::MAX);
        for (chunk, (entries, names)) in batch
            .entries
            .chunks(max)
            .zip(batch.names.chunks(max))
            .enumerate()
        {
            let table_addr = scratch + table_off;
            self.write(table_addr, &table(entries))?;
            let stopped_at = self.run_loop(scratch, table_addr)?;
            self.calls += 1;
            if let Err(err) = check(stopped_at, table_addr, entries.len(), names) {
                let local = ((stopped_at.0 - table_addr) / ENTRY) as usize;
                if chunk * max + local < best_effort_from {
                    return Err(err);
                }
                // The required calls before it all ran.
                self.check_tsync(table_addr, &entries[..local], names)?;
                tracing::debug!(%err, "a best-effort call failed: the batch ends there");
                return Ok(());
            }
            self.check_tsync(table_addr, entries, names)?;
        }
        Ok(())
    }

    /// Fails unless every `seccomp` entry with `SECCOMP_FILTER_FLAG_TSYNC`
    /// of the table at `table_addr` (run to its end) returned 0 (see the
    /// module doc).
    fn check_tsync(
        &self,
        table_addr: u64,
        entries: &[[u64; 8]],
        names: &[CallName],
    ) -> Result<(), RestoreError> {
        for (i, e) in entries.iter().enumerate() {
            let tsync = e[0] == libc::SYS_seccomp as u64
                && e[1] == SECCOMP_SET_MODE_FILTER
                && e[2] & SECCOMP_FILTER_FLAG_TSYNC != 0;
            if !tsync {
                continue;
            }
            let mut result = [0u8; 8];
            self.read(table_addr + i as u64 * ENTRY + 56, &mut result)?;
            let tid = u64::from_ne_bytes(result);
            if tid != 0 {
                return Err(RestoreError::Unsupported(format!(
                    "{}: the filter could not reach thread {tid} and was installed nowhere",
                    names[i]
                )));
            }
        }
        Ok(())
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
                // A process forked by a clone3 of the batch (the stub is
                // traced with PTRACE_O_TRACEFORK: a child of a process tree,
                // see `tree`): note its pid; it waits in its first stop for
                // the restorer.
                Ok(WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_FORK)) => {
                    let child = ptrace::getevent(pid).map_err(|e| err("PTRACE_GETEVENTMSG", e))?;
                    self.cloned.push(child as i32);
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

/// Where the records of a group of `count` threads go (see "Threads" in
/// the module doc): the main thread's list (the first half, rounded up),
/// its terminator, then the sublist `threads[0]` makes (the second half)
/// and its terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordLayout {
    /// Threads the main thread makes.
    main: usize,
    /// Threads in all.
    count: usize,
}

impl RecordLayout {
    fn of(count: usize) -> RecordLayout {
        RecordLayout {
            main: count.div_ceil(2),
            count,
        }
    }

    /// The record slot of the `n`th thread.
    fn slot(&self, n: usize) -> usize {
        if n < self.main {
            n
        } else {
            n + 1
        }
    }

    /// The first thread of the sublist, if there is one.
    fn sublist(&self) -> Option<usize> {
        (self.count > self.main).then_some(self.main)
    }

    /// The slots of the terminators.
    fn terminators(&self) -> Vec<usize> {
        match self.sublist() {
            Some(_) => vec![self.main, self.count + 1],
            None => vec![self.main],
        }
    }

    /// Slots in all.
    fn slots(&self) -> usize {
        self.terminators().last().copied().unwrap_or(0) + 1
    }
}

/// Offsets in the scratch area of `tables` (a group's threads' tables,
/// terminators included), one after the other from the table region's
/// start.
fn place_tables(tables: &[Vec<u8>]) -> Result<Vec<u64>, RestoreError> {
    let mut at = TABLE_OFF;
    let mut offs = Vec::with_capacity(tables.len());
    for t in tables {
        offs.push(at);
        at += t.len() as u64;
    }
    if at > TABLE_END {
        return Err(RestoreError::NoRoom("tables of a group of threads"));
    }
    Ok(offs)
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
    names: &[CallName],
) -> Result<(), RestoreError> {
    let index = ((rbx - table_addr) / ENTRY) as usize;
    if index < count {
        return Err(RestoreError::Remote {
            what: names[index].to_string(),
            source: std::io::Error::from_raw_os_error(-(rax as i64) as i32),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_mmaps_merge_into_one_call() {
        let fixed = libc::MAP_FIXED as u64;
        let private = libc::MAP_PRIVATE as u64 | fixed;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | fixed;
        let stack = anon | libc::MAP_GROWSDOWN as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let r = libc::PROT_READ as u64;
        let name = |at| CallName::Range("mmap", at, at);
        let mut b = Batch::new(0);
        // A file (fd 5) at consecutive offsets: one call.
        b.call_mmap(name(0x1000), [0x1000, 0x2000, rw, private, 5, 0x8000], true);
        b.call_mmap(name(0x3000), [0x3000, 0x1000, rw, private, 5, 0xa000], true);
        assert_eq!(b.len(), 1);
        assert_eq!(b.entries[0][2], 0x3000);
        assert_eq!(b.names[0], CallName::Range("mmap", 0x1000, 0x4000));
        // The offset does not follow on: a new call.
        b.call_mmap(
            name(0x4000),
            [0x4000, 0x1000, rw, private, 5, 0x10000],
            true,
        );
        assert_eq!(b.len(), 2);
        // Another protection, another descriptor, a gap: new calls.
        b.call_mmap(name(0x5000), [0x5000, 0x1000, r, private, 5, 0x11000], true);
        b.call_mmap(name(0x6000), [0x6000, 0x1000, r, private, 6, 0x12000], true);
        b.call_mmap(name(0x8000), [0x8000, 0x1000, r, private, 6, 0x13000], true);
        assert_eq!(b.len(), 5);
        // Anonymous: any offset.
        b.call_mmap(name(0x9000), [0x9000, 0x1000, rw, anon, u64::MAX, 0], true);
        b.call_mmap(name(0xa000), [0xa000, 0x1000, rw, anon, u64::MAX, 0], true);
        assert_eq!(b.len(), 6);
        // A stack never merges, nor anything when merging is off.
        b.call_mmap(name(0xb000), [0xb000, 0x1000, rw, stack, u64::MAX, 0], true);
        b.call_mmap(name(0xc000), [0xc000, 0x1000, rw, stack, u64::MAX, 0], true);
        b.call_mmap(name(0xd000), [0xd000, 0x1000, rw, anon, u64::MAX, 0], false);
        b.call_mmap(name(0xe000), [0xe000, 0x1000, rw, anon, u64::MAX, 0], false);
        assert_eq!(b.len(), 10);
        // Not after another call.
        b.call("munmap", libc::SYS_munmap, [0xf000, 0x1000, 0, 0, 0, 0]);
        b.call_mmap(name(0xe000), [0xf000, 0x1000, rw, anon, u64::MAX, 0], true);
        assert_eq!(b.len(), 12);
    }

    #[test]
    fn call_names_read_as_the_formatted_ones_did() {
        let cases: [(CallName, &str); 5] = [
            ("munmap (stub)".into(), "munmap (stub)"),
            (format!("chdir({})", "/var/task").into(), "chdir(/var/task)"),
            (
                CallName::At("madvise(populate)", 0x7f00_1000),
                "madvise(populate) at 0x7f001000",
            ),
            (
                CallName::Range("mmap (file)", 0x1000, 0x3000),
                "mmap (file) at 0x1000-0x3000",
            ),
            (
                CallName::Numbered("prctl(PR_CAPBSET_DROP, ", 12, ")"),
                "prctl(PR_CAPBSET_DROP, 12)",
            ),
        ];
        for (name, text) in cases {
            assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn best_effort_calls_form_the_tail() {
        let mut b = Batch::new(0);
        b.call("required", 1, [0; 6]);
        assert_eq!(b.best_effort_from, None);
        b.call_best_effort("optional", 2, [0; 6]);
        b.call_best_effort("optional too", 3, [0; 6]);
        assert_eq!(b.best_effort_from, Some(1));
        assert_eq!(b.len(), 3);
    }

    #[test]
    #[should_panic(expected = "a required call after best-effort ones")]
    fn a_required_call_after_best_effort_ones_is_a_bug() {
        let mut b = Batch::new(0);
        b.call_best_effort("optional", 2, [0; 6]);
        b.call("required", 1, [0; 6]);
    }

    #[test]
    fn a_full_group_of_threads_fits_packed() {
        // SLOTS threads, each with the sandbox credentials' table (every
        // bounding capability dropped: ~55 calls) and some data.
        let mut from = 0;
        let mut tables = Vec::new();
        for slot in 0..SLOTS {
            let mut b = Batch::for_thread(0, slot, from);
            let (d, _) = b.data_region();
            assert_eq!(d, DATA_OFF + from.next_multiple_of(16));
            let addr = b.data(&[7u8; 100]).unwrap();
            assert_eq!(addr, d);
            for _ in 0..60 {
                b.call("x", 1, [0; 6]);
            }
            from = b.data_end();
            tables.push(table(&b.entries));
        }
        assert!(DATA_OFF + from <= TABLE_OFF);
        let offs = place_tables(&tables).unwrap();
        assert_eq!(offs[0], TABLE_OFF);
        for (w, t) in offs.windows(2).zip(&tables) {
            assert_eq!(w[1], w[0] + t.len() as u64);
        }
        assert!(offs[SLOTS - 1] + tables[SLOTS - 1].len() as u64 <= TABLE_END);
        // Data that would run into the table region is refused.
        let mut b = Batch::for_thread(0, 0, TABLE_OFF - DATA_OFF - 8);
        assert!(b.data(&[0u8; 16]).is_err());
        // Tables past the region are refused.
        let big = vec![table(&[[0u64; 8]; 2048])];
        assert!(place_tables(&big).is_err());
    }

    #[test]
    fn clone_code_layout() {
        let c = &CLONE_CODE;
        let target = |at: usize| (at as isize + 2 + c[at + 1] as i8 as isize) as usize;
        let imm32 = |at: usize| i32::from_ne_bytes(c[at..at + 4].try_into().unwrap());
        // je join, je child, jae cdone, jmp ctop.
        assert_eq!(c[target(0x07)..][..3], [0x4c, 0x89, 0xf3]);
        assert_eq!(c[target(0x22)..][..3], [0x49, 0x8b, 0x85]);
        assert_eq!(c[target(0x2e)..][..3], [0x4d, 0x85, 0xff]);
        assert_eq!(target(0x37), 0);
        // The join loop: je cdone, jne jnext, jmp jwait, jmp jtop.
        assert_eq!(target(0x43), 0x6c);
        assert_eq!(target(0x4a), 0x63);
        assert_eq!(target(0x61), 0x45);
        assert_eq!(target(0x6a), 0x3c);
        // cdone: a thread that made a sublist goes on to its own table
        // (own), the main thread stops.
        assert_eq!(target(0x6f), 0x8c);
        assert_eq!(c[0x71], 0xcc);
        // child: no sublist, its table; else the sublist (jmp ctop, rel32).
        assert_eq!(target(0x7c), 0x93);
        assert_eq!(c[0x87], 0xe9);
        assert_eq!(0x8c + imm32(0x88) as isize, 0);
        // The thread's loop is CODE's, ending at cfin instead of int3.
        assert_eq!(c[0x96..0xcb], CODE[..CODE.len() - 1]);
        assert_eq!(target(0x96 + 7), 0xcb);
        // park: pause ; jmp park.
        assert_eq!(target(c.len() - 2), c.len() - 9);
        // The system call numbers.
        let nr = |at: usize| imm32(at) as i64;
        assert_eq!(nr(0x19), libc::SYS_clone3);
        assert_eq!(nr(0x5b), libc::SYS_futex);
        assert_eq!(nr(0xe6), libc::SYS_futex);
        assert_eq!(nr(0xed), libc::SYS_pause);
        // FUTEX_WAIT_PRIVATE and FUTEX_WAKE_PRIVATE.
        assert_eq!(
            nr(0x51),
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as i64
        );
        assert_eq!(
            nr(0xdc),
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as i64
        );
        // Record offsets: the table at +96 (read twice), the result at
        // +104, done at +112, the thread's last rbx at +120, the sublist
        // at +128; set_tid at +88 follows the 88-byte clone_args; the
        // records RECORD bytes apart.
        assert_eq!(std::mem::size_of::<libc::clone_args>(), 88);
        assert_eq!(c[0x0d], 88);
        assert_eq!(c[0x14], 96);
        assert_eq!(c[0x92], 96);
        assert_eq!(c[0x27], 104);
        assert_eq!(c[0x47], 112);
        assert_eq!(c[0xce], 120);
        assert_eq!(imm32(0x75) as usize, SUBLIST);
        assert_eq!(imm32(0x33) as u64, RECORD);
        assert_eq!(imm32(0x66) as u64, RECORD);
    }

    #[test]
    fn records_split_between_two_threads() {
        // One thread: the main thread makes it; no sublist.
        let one = RecordLayout::of(1);
        assert_eq!((one.slot(0), one.sublist(), one.slots()), (0, None, 2));
        assert_eq!(one.terminators(), vec![1]);
        // 15 threads: main makes 8 (slots 0..8, terminator at 8), the
        // first of them the other 7 (slots 9..16, terminator at 16).
        let l = RecordLayout::of(15);
        assert_eq!(l.main, 8);
        assert_eq!(l.sublist(), Some(8));
        assert_eq!(l.slot(7), 7);
        assert_eq!(l.slot(8), 9);
        assert_eq!(l.slot(14), 15);
        assert_eq!(l.terminators(), vec![8, 16]);
        assert_eq!(l.slots(), 17);
        // Every slot once, none on a terminator; a full group fits.
        let full = RecordLayout::of(SLOTS);
        let mut used: Vec<usize> = (0..SLOTS).map(|n| full.slot(n)).collect();
        used.extend(full.terminators());
        used.sort_unstable();
        assert_eq!(used, (0..full.slots()).collect::<Vec<_>>());
        assert!(full.slots() as u64 * RECORD <= RECORDS_LEN);
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
