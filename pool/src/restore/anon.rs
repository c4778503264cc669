//! Anonymous-memory semantics in `mmap` mode.
//!
//! In `mmap` mode a copy's private memory is `MAP_PRIVATE` of the
//! snapshot's image file. Two things then differ from the anonymous memory
//! the program had: `MADV_DONTNEED` (and `MADV_DONTNEED_LOCKED`) refill a
//! range from the image instead of giving zeros, `MADV_FREE` fails
//! (`EINVAL`, file memory), and an area grown with `mremap` continues into
//! the image's next bytes (or past its end: `SIGBUS`) instead of zeros.
//! `mremap(MREMAP_DONTUNMAP)` leaves the image in the old range.
//!
//! The guard keeps the anonymous semantics without giving up the shared
//! image: a seccomp filter installed in the copy during the restore (still
//! privileged, before the credentials drop) traps those calls, and a small
//! position-independent `SIGSYS` handler injected into the copy runs them:
//!
//! ```text
//! filter (classic BPF, x86_64 only; other arches allowed)
//!   madvise(_, _, DONTNEED | FREE | DONTNEED_LOCKED)     ┐ only if the
//!   mremap growing (new_len > old_len) or DONTUNMAP       │ syscall came from
//!        → SECCOMP_RET_TRAP                               │ code the copy had
//!   execve, execveat → SECCOMP_RET_TRAP                   │ mapped when saved
//!   rt_sigaction(SIGSYS, act != NULL) → EPERM             ┘
//!   anything else → allow
//!
//! handler (SA_SIGINFO, all signals blocked, returns through rt_sigreturn
//! with the result in RAX; its own system calls come from an address the
//! filter does not trap)
//!   madvise: for every mapping of the image inside the range (found with
//!            the PROCMAP_QUERY ioctl on /proc/self/maps: inode and device
//!            of the image, protection as it is now), map fresh anonymous
//!            memory over it (MAP_FIXED, same protection); then the real
//!            madvise on the whole range (its result is the result)
//!   mremap:  the real mremap; then the same over the grown part (and over
//!            the old range with DONTUNMAP)
//!   exec:    clears ADDR_NO_RANDOMIZE (restored on failure), sets the
//!            caller's signal mask, runs the real call: the new program,
//!            which keeps the filter but not the handler, gets a random
//!            layout, unlike the copy's (the server starts functions
//!            without randomisation)
//!   if /proc/self/maps cannot be opened or queried: SIGKILL (a copy must
//!   never read the image where the program expects zeros)
//! ```
//!
//! The trap is limited to system calls made from the copy's executable
//! areas as saved (coalesced into at most [`MAX_RANGES`] ranges), so a
//! program the copy `exec`s (whose handler is gone) is very unlikely to
//! hit it; a hit kills it with `SIGSYS`, never stale data. A copy that
//! blocks `SIGSYS` when it calls one of those is killed by `SIGSYS` too
//! (the kernel forces the signal). Children of `fork` inherit the filter,
//! the handler and its area, and query their own map.
//!
//! The handler area is one mapping (`r-x`) at an address chosen outside
//! every saved area and outside the trapped ranges:
//!
//! ```text
//! 0          the handler (machine code below)
//! RESTORER   mov eax, 15 ; syscall           (rt_sigreturn)
//! DATA       u64 inode | u32 dev major | u32 dev minor | "/proc/self/maps\0"
//! ```

use std::os::unix::fs::MetadataExt;

use snapshotter::state::{AreaKind, MemoryArea, ProcessState, PAGE_SIZE};

use super::batch::Batch;
use super::remote::{bytes_of, Remote};
use super::signals::KernelSigaction;
use super::RestoreError;

std::arch::global_asm!(
    ".pushsection .text.thaw_pool_anon,\"ax\",@progbits",
    ".balign 16",
    ".globl thaw_pool_anon_start",
    ".hidden thaw_pool_anon_start",
    "thaw_pool_anon_start:",
    // void handler(int sig, siginfo_t *info /* rsi */, ucontext_t *uc /* rdx */)
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov r15, rdx",
    // Only traps of the filter (si_code SYS_SECCOMP); other SIGSYS ignored.
    "cmp dword ptr [rsi + 8], 1",
    "jne .Lthaw_out",
    "mov eax, dword ptr [rsi + 24]",
    "cmp eax, 28",
    "je .Lthaw_madvise",
    "cmp eax, 25",
    "je .Lthaw_mremap",
    "cmp eax, 59",
    "je .Lthaw_exec",
    "cmp eax, 322",
    "je .Lthaw_exec",
    "jmp .Lthaw_out",
    // execve/execveat: the new program runs with address randomisation
    // (its layout then cannot repeat the copy's, whose filter it keeps
    // without the handler) and the mask the caller had.
    ".Lthaw_exec:",
    "mov r13d, eax",
    "mov edi, -1",
    "mov eax, 135",
    "syscall",
    "mov r12, rax",
    "test eax, 0x40000",
    "jz .Lthaw_mask",
    "mov edi, r12d",
    "and edi, -262145",
    "mov eax, 135",
    "syscall",
    ".Lthaw_mask:",
    // rt_sigprocmask(SIG_SETMASK, &uc->uc_sigmask, NULL, 8)
    "mov edi, 2",
    "lea rsi, [r15 + 296]",
    "xor edx, edx",
    "mov r10d, 8",
    "mov eax, 14",
    "syscall",
    "mov rdi, qword ptr [r15 + 104]",
    "mov rsi, qword ptr [r15 + 112]",
    "mov rdx, qword ptr [r15 + 136]",
    "mov r10, qword ptr [r15 + 56]",
    "mov r8, qword ptr [r15 + 40]",
    "mov eax, r13d",
    "syscall",
    // Only a failed exec returns: personality back, its result (the mask
    // comes back with rt_sigreturn).
    "mov r13, rax",
    "mov edi, r12d",
    "mov eax, 135",
    "syscall",
    "mov rax, r13",
    "jmp .Lthaw_result",
    // madvise(addr = gregs[RDI], len = gregs[RSI], advice = gregs[RDX])
    ".Lthaw_madvise:",
    "mov r12, qword ptr [r15 + 104]",
    "mov r13, qword ptr [r15 + 112]",
    "test r12, 4095",
    "jnz .Lthaw_einval",
    "mov rax, r13",
    "add rax, 4095",
    "jc .Lthaw_einval",
    "and rax, -4096",
    "mov r14, r12",
    "add r14, rax",
    "jc .Lthaw_einval",
    "mov rdi, r12",
    "mov rsi, r14",
    "call .Lthaw_zero",
    "mov rdi, r12",
    "mov rsi, r13",
    "mov rdx, qword ptr [r15 + 136]",
    "mov eax, 28",
    "syscall",
    "jmp .Lthaw_result",
    // mremap(old = RDI, old_len = RSI, new_len = RDX, flags = R10, new = R8)
    ".Lthaw_mremap:",
    "mov rdi, qword ptr [r15 + 104]",
    "mov rsi, qword ptr [r15 + 112]",
    "mov rdx, qword ptr [r15 + 136]",
    "mov r10, qword ptr [r15 + 56]",
    "mov r8, qword ptr [r15 + 40]",
    "mov eax, 25",
    "syscall",
    "cmp rax, -4095",
    "jae .Lthaw_result",
    "mov r12, rax",
    "mov r13, qword ptr [r15 + 112]",
    "add r13, 4095",
    "and r13, -4096",
    "mov r14, qword ptr [r15 + 136]",
    "add r14, 4095",
    "and r14, -4096",
    // MREMAP_DONTUNMAP: the old range stays mapped, empty.
    "test qword ptr [r15 + 56], 4",
    "jz .Lthaw_grown",
    "mov rdi, qword ptr [r15 + 104]",
    "lea rsi, [rdi + r13]",
    "call .Lthaw_zero",
    ".Lthaw_grown:",
    "cmp r14, r13",
    "jbe .Lthaw_moved",
    "lea rdi, [r12 + r13]",
    "lea rsi, [r12 + r14]",
    "call .Lthaw_zero",
    ".Lthaw_moved:",
    "mov rax, r12",
    "jmp .Lthaw_result",
    ".Lthaw_einval:",
    "mov rax, -22",
    ".Lthaw_result:",
    "mov qword ptr [r15 + 144], rax",
    ".Lthaw_out:",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    // zero(start = rdi, end = rsi): every mapping of the image in the
    // range becomes fresh anonymous memory with its current protection.
    // Frame: struct procmap_query at [rsp] (104 bytes), the fd at [rsp+112].
    ".Lthaw_zero:",
    "sub rsp, 120",
    "mov rbx, rdi",
    "mov rbp, rsi",
    "cmp rbx, rbp",
    "jae .Lthaw_zret",
    "mov edi, -100",
    "lea rsi, [rip + .Lthaw_path]",
    "mov edx, 0x80000",
    "xor r10d, r10d",
    "mov eax, 257",
    "syscall",
    "test rax, rax",
    "js .Lthaw_die",
    "mov qword ptr [rsp + 112], rax",
    ".Lthaw_zloop:",
    "cmp rbx, rbp",
    "jae .Lthaw_zdone",
    "xor eax, eax",
    "mov rdi, rsp",
    "mov ecx, 13",
    "rep stosq",
    "mov qword ptr [rsp], 104",
    // PROCMAP_QUERY_COVERING_OR_NEXT_VMA
    "mov qword ptr [rsp + 8], 16",
    "mov qword ptr [rsp + 16], rbx",
    "mov rdi, qword ptr [rsp + 112]",
    // PROCMAP_QUERY = _IOWR('f', 17, struct procmap_query)
    "mov esi, 0xc0686611",
    "mov rdx, rsp",
    "mov eax, 16",
    "syscall",
    // -ENOENT: no mapping at or after the cursor.
    "cmp rax, -2",
    "je .Lthaw_zdone",
    "test rax, rax",
    "js .Lthaw_die",
    "mov rax, qword ptr [rsp + 24]",
    "cmp rax, rbp",
    "jae .Lthaw_zdone",
    "mov rdx, qword ptr [rsp + 64]",
    "cmp rdx, qword ptr [rip + .Lthaw_ino]",
    "jne .Lthaw_znext",
    "mov edx, dword ptr [rsp + 72]",
    "cmp edx, dword ptr [rip + .Lthaw_major]",
    "jne .Lthaw_znext",
    "mov edx, dword ptr [rsp + 76]",
    "cmp edx, dword ptr [rip + .Lthaw_minor]",
    "jne .Lthaw_znext",
    "cmp rax, rbx",
    "cmovb rax, rbx",
    "mov rsi, qword ptr [rsp + 32]",
    "cmp rsi, rbp",
    "cmova rsi, rbp",
    "sub rsi, rax",
    "mov rdi, rax",
    // vma_flags: readable 1, writable 2, executable 4 = PROT_* bits.
    "mov rdx, qword ptr [rsp + 40]",
    "and edx, 7",
    // MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED
    "mov r10d, 0x32",
    "mov r8, -1",
    "xor r9d, r9d",
    "mov eax, 9",
    "syscall",
    "cmp rax, -4095",
    "jae .Lthaw_die",
    ".Lthaw_znext:",
    "mov rbx, qword ptr [rsp + 32]",
    "jmp .Lthaw_zloop",
    ".Lthaw_zdone:",
    "mov rdi, qword ptr [rsp + 112]",
    "mov eax, 3",
    "syscall",
    ".Lthaw_zret:",
    "add rsp, 120",
    "ret",
    // Which memory is the image's cannot be told: end the copy rather than
    // let it read the image where it expects zeros.
    ".Lthaw_die:",
    "mov eax, 39",
    "syscall",
    "mov edi, eax",
    "mov esi, 9",
    "mov eax, 62",
    "syscall",
    "ud2",
    ".balign 8",
    ".globl thaw_pool_anon_restorer",
    ".hidden thaw_pool_anon_restorer",
    "thaw_pool_anon_restorer:",
    "mov eax, 15",
    "syscall",
    "ud2",
    ".balign 8",
    ".globl thaw_pool_anon_data",
    ".hidden thaw_pool_anon_data",
    "thaw_pool_anon_data:",
    ".Lthaw_ino:",
    ".quad 0",
    ".Lthaw_major:",
    ".long 0",
    ".Lthaw_minor:",
    ".long 0",
    ".Lthaw_path:",
    ".asciz \"/proc/self/maps\"",
    ".balign 8",
    ".globl thaw_pool_anon_end",
    ".hidden thaw_pool_anon_end",
    "thaw_pool_anon_end:",
    ".popsection",
);

extern "C" {
    static thaw_pool_anon_start: u8;
    static thaw_pool_anon_restorer: u8;
    static thaw_pool_anon_data: u8;
    static thaw_pool_anon_end: u8;
}

/// The handler's machine code as assembled above, and the offsets of the
/// restorer and of the data in it.
fn handler_code() -> (&'static [u8], usize, usize) {
    let start = &raw const thaw_pool_anon_start;
    let restorer = &raw const thaw_pool_anon_restorer;
    let data = &raw const thaw_pool_anon_data;
    let end = &raw const thaw_pool_anon_end;
    let len = end as usize - start as usize;
    // SAFETY: start..end is the assembled block above, in this binary's
    // read-only text, alive for the whole program.
    let code = unsafe { std::slice::from_raw_parts(start, len) };
    (
        code,
        restorer as usize - start as usize,
        data as usize - start as usize,
    )
}

/// Whether mmap-mode restores of this process set up the guard.
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the guard on or off for the mmap-mode restores this process makes
/// from now on (on by default). Off is for A/B measurements only: a copy
/// restored without it reads the image where its program expects zeros.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the guard is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most address ranges the filter compares the instruction pointer with.
pub const MAX_RANGES: usize = 8;

/// Why the guard cannot be set up: the semantics cannot be guaranteed in
/// mmap mode for this snapshot on this machine.
fn refuse(why: impl std::fmt::Display) -> RestoreError {
    RestoreError::Unsupported(format!(
        "mmap mode cannot keep anonymous-memory semantics: {why}; restore in uffd mode"
    ))
}

/// The guard of one copy: where its handler goes, and its filter.
#[derive(Debug)]
pub struct Guard {
    /// Address of the handler area in the copy.
    pub at: u64,
    /// Length of the handler area.
    pub len: u64,
    code: Vec<u8>,
    restorer_offset: u64,
    filter: Vec<SockFilter>,
}

/// The last filter [`Guard::plan_with`] built, with the ranges it was
/// built from (see `restore::plans`).
#[derive(Debug, Default)]
pub struct FilterMemo {
    /// (image, code, exempt ranges), filter.
    last: std::sync::Mutex<Option<(FilterRanges, Vec<SockFilter>)>>,
}

/// What a filter is built from: image, code and exempt ranges.
type FilterRanges = [Vec<(u64, u64)>; 3];

impl FilterMemo {
    /// [`filter`] of these ranges, built once per distinct ranges.
    fn filter(
        &self,
        image: Vec<(u64, u64)>,
        code: Vec<(u64, u64)>,
        exempt: Vec<(u64, u64)>,
    ) -> Vec<SockFilter> {
        let key = [image, code, exempt];
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, f)) = last.as_ref() {
            if *k == key {
                return f.clone();
            }
        }
        let f = filter(&key[0], &key[1], &key[2]);
        *last = Some((key, f.clone()));
        f
    }
}

impl Guard {
    /// Plans the guard of a copy of `state` whose private memory maps
    /// `image`; `busy` are ranges the restorer itself uses (scratch).
    /// Refuses when the semantics cannot be kept (the program handles
    /// `SIGSYS` itself; the kernel lacks `PROCMAP_QUERY`).
    pub fn plan(
        state: &ProcessState,
        image: &std::fs::File,
        busy: &[(u64, u64)],
        eager: &std::collections::HashSet<usize>,
    ) -> Result<Guard, RestoreError> {
        Guard::plan_with(state, image, busy, eager, None)
    }

    /// [`Guard::plan`], the filter taken from `memo` when it was built
    /// from the same ranges (every copy of a snapshot has the same), else
    /// built and kept there.
    pub fn plan_with(
        state: &ProcessState,
        image: &std::fs::File,
        busy: &[(u64, u64)],
        eager: &std::collections::HashSet<usize>,
        memo: Option<&FilterMemo>,
    ) -> Result<Guard, RestoreError> {
        if let Some(h) = state
            .signals
            .handlers
            .iter()
            .find(|h| h.signal == libc::SIGSYS as u32 && h.handler != 0)
        {
            return Err(refuse(format!(
                "the program handles SIGSYS itself (handler {:#x})",
                h.handler
            )));
        }
        procmap_query_works().map_err(refuse)?;
        let meta = image.metadata().map_err(|source| RestoreError::Io {
            what: "stat the image".into(),
            source,
        })?;
        let (code, restorer_offset, data_offset) = handler_code();
        let mut code = code.to_vec();
        let dev = meta.dev();
        code[data_offset..data_offset + 8].copy_from_slice(&meta.ino().to_ne_bytes());
        code[data_offset + 8..data_offset + 12].copy_from_slice(&libc::major(dev).to_ne_bytes());
        code[data_offset + 12..data_offset + 16].copy_from_slice(&libc::minor(dev).to_ne_bytes());

        let code_ranges = coalesce(executable_ranges(&state.areas), MAX_RANGES);
        if code_ranges.is_empty() {
            return Err(refuse("the snapshot has no executable area"));
        }
        let exempt = exempt_ranges(&state.areas, eager);
        if exempt.len() > MAX_EXEMPT {
            return Err(refuse(format!(
                "{} separate thread stacks (the filter checks at most {MAX_EXEMPT})",
                exempt.len()
            )));
        }
        let image_ranges = coalesce(anonymous_ranges(&state.areas, eager), MAX_RANGES);
        let len = (code.len() as u64).next_multiple_of(PAGE_SIZE);
        let mut taken: Vec<(u64, u64)> = state
            .areas
            .iter()
            .filter(|a| a.kind != AreaKind::Vsyscall)
            .map(|a| (a.start, a.end))
            .collect();
        taken.extend_from_slice(&code_ranges);
        taken.extend_from_slice(busy);
        let at = super::memory::find_hole(&taken, len)
            .ok_or(RestoreError::NoRoom("anonymous-memory handler"))?;
        Ok(Guard {
            at,
            len,
            code,
            restorer_offset: restorer_offset as u64,
            filter: match memo {
                Some(memo) => memo.filter(image_ranges, code_ranges, exempt),
                None => filter(&image_ranges, &code_ranges, &exempt),
            },
        })
    }

    /// Instructions in the filter.
    pub fn filter_len(&self) -> usize {
        self.filter.len()
    }

    /// Adds to `batch` (the mapping batch): the handler area, `r-x`.
    pub fn map(&self, batch: &mut Batch) {
        batch.call(
            "mmap (anonymous-memory handler)",
            libc::SYS_mmap,
            [
                self.at,
                self.len,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                u64::MAX,
                0,
            ],
        );
    }

    /// Writes the handler into its area (after the mapping batch ran).
    pub fn write(&self, remote: &Remote) -> Result<(), RestoreError> {
        remote.write(self.at, &self.code)
    }

    /// Adds to `batch` (the state batch, after the saved signal actions and
    /// before the credentials): the `SIGSYS` action and the filter.
    pub fn install(&self, batch: &mut Batch) -> Result<(), RestoreError> {
        let act = KernelSigaction {
            handler: self.at,
            flags: libc::SA_SIGINFO as u64 | SA_RESTORER,
            restorer: self.at + self.restorer_offset,
            mask: u64::MAX,
        };
        let addr = batch.data(bytes_of(&act))?;
        batch.call(
            "rt_sigaction(SIGSYS, anonymous-memory handler)",
            libc::SYS_rt_sigaction,
            [libc::SIGSYS as u64, addr, 0, 8, 0, 0],
        );
        let mut program = Vec::with_capacity(self.filter.len() * 8);
        for f in &self.filter {
            program.extend_from_slice(bytes_of(f));
        }
        let filter_addr = batch.data(&program)?;
        let fprog = SockFprog {
            len: self.filter.len() as u16,
            pad: [0; 3],
            filter: filter_addr,
        };
        let fprog_addr = batch.data(bytes_of(&fprog))?;
        batch.call(
            "seccomp (anonymous-memory filter)",
            libc::SYS_seccomp,
            [
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_SPEC_ALLOW | SECCOMP_FILTER_FLAG_TSYNC,
                fprog_addr,
                0,
                0,
                0,
            ],
        );
        Ok(())
    }
}

/// `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}
const _: () = assert!(std::mem::size_of::<SockFilter>() == 8);

/// `struct sock_fprog`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFprog {
    len: u16,
    pad: [u16; 3],
    filter: u64,
}
const _: () = assert!(std::mem::size_of::<SockFprog>() == 16);

/// `SA_RESTORER` (x86_64).
const SA_RESTORER: u64 = 0x0400_0000;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// Do not force speculative-store-bypass mitigation on the copy (the
/// original ran without it).
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u64 = 4;
/// Installs the filter in every thread of the process at once (the copy's
/// threads exist already when the guard is installed). On failure the
/// call returns the id of a thread that could not take it, a positive
/// value the batch checks for (`super::batch`: a TSYNC install must
/// return 0).
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `PROCMAP_QUERY` = `_IOWR('f', 17, struct procmap_query)` (Linux 6.11).
const PROCMAP_QUERY: u64 = 0xc068_6611;
const MADV_DONTNEED_LOCKED: u32 = 24;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const JEQ_X: u16 = 0x1d;
const JGE_X: u16 = 0x3d;
const JA: u16 = 0x05;
const LD_MEM: u16 = 0x60;
const LD_IMM: u16 = 0x00;
const RET_A: u16 = 0x16;
const ST: u16 = 0x02;
const ADD_K: u16 = 0x04;
const ADD_X: u16 = 0x0c;
const JGT_X: u16 = 0x2d;
const RET_K: u16 = 0x06;
const TAX: u16 = 0x07;

// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const IP_LO: u32 = 8;
const IP_HI: u32 = 12;
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_hi(i: u32) -> u32 {
    20 + 8 * i
}

/// The saved executable areas (the code that may call into the guard).
fn executable_ranges(areas: &[MemoryArea]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = areas
        .iter()
        .filter(|a| {
            a.prot.exec
                && !matches!(
                    a.kind,
                    AreaKind::Vdso | AreaKind::Vvar | AreaKind::VvarVclock | AreaKind::Vsyscall
                )
        })
        .map(|a| (a.start, a.end))
        .collect();
    v.sort_unstable();
    v
}

/// The saved areas that were anonymous memory (mapped from the image in
/// mmap mode). Private file pages laid over a file (`FilePrivate`) and
/// copies of deleted files (`FileCopied`) are the image too, but there
/// `MADV_DONTNEED` gave the file's content, not zeros: left alone.
/// Areas in `eager` (thread stacks, mapped anonymous) are left out.
fn anonymous_ranges(
    areas: &[MemoryArea],
    eager: &std::collections::HashSet<usize>,
) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = areas
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            matches!(a.kind, AreaKind::Anonymous | AreaKind::Heap)
                && !a.shared
                && !eager.contains(i)
        })
        .map(|(_, a)| a)
        .map(|a| (a.start, a.end))
        .collect();
    v.sort_unstable();
    v
}

/// Most ranges `madvise` may free without a trap (see [`exempt_ranges`]).
pub const MAX_EXEMPT: usize = 256;

/// The areas mapped anonymous in mmap mode (`eager`: thread stacks), merged
/// where adjacent: a `madvise` wholly inside one is never trapped (coalesced
/// image ranges may span them).
fn exempt_ranges(
    areas: &[MemoryArea],
    eager: &std::collections::HashSet<usize>,
) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    let mut indices: Vec<usize> = eager.iter().copied().collect();
    indices.sort_unstable();
    for i in indices {
        let a = &areas[i];
        match v.last_mut() {
            Some(last) if last.1 == a.start => last.1 = a.end,
            _ => v.push((a.start, a.end)),
        }
    }
    v
}

/// Merges sorted ranges (adjacent ones, then those with the smallest gaps)
/// until at most `max` are left.
fn coalesce(mut ranges: Vec<(u64, u64)>, max: usize) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    while merged.len() > max {
        let i = (0..merged.len() - 1)
            .min_by_key(|&i| merged[i + 1].0 - merged[i].1)
            .expect("two ranges or more");
        merged[i].1 = merged[i + 1].1;
        merged.remove(i + 1);
    }
    merged
}

/// A classic BPF program being written, with forward jumps to labels.
#[derive(Default)]
struct Program {
    code: Vec<(u16, Target, Target, u32)>,
    labels: std::collections::HashMap<String, usize>,
    fresh: usize,
}

/// Where a jump goes.
#[derive(Clone)]
enum Target {
    Next,
    Label(String),
}
use Target::{Label, Next};

/// Where a 64-bit value is read from: `struct seccomp_data` (offsets of
/// the high and low halves) or the scratch memory (indices).
#[derive(Clone, Copy)]
enum Value {
    Data(u32, u32),
    Mem(u32, u32),
}

impl Program {
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((code, Next, Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.code.push((code, jt, jf, k));
    }
    fn goto(&mut self, to: &str) {
        self.code.push((JA, Label(to.into()), Next, 0));
    }
    /// Goes to `to` (however far) if `A <code> k`, on otherwise.
    fn jump_far(&mut self, code: u16, k: u32, to: &str) {
        let skip = self.fresh();
        self.jump(code, k, Next, Label(skip.clone()));
        self.goto(to);
        self.label(&skip);
    }
    fn label(&mut self, name: &str) {
        let old = self.labels.insert(name.to_string(), self.code.len());
        assert!(old.is_none(), "label {name} twice");
    }
    fn fresh(&mut self) -> String {
        self.fresh += 1;
        format!("_{}", self.fresh)
    }
    fn load(&mut self, half: u32, from_mem: bool) {
        self.stmt(if from_mem { LD_MEM } else { LD_W_ABS }, half);
    }
    /// Jumps to `yes` if `v >= c` (unsigned), to `no` otherwise.
    fn ge64(&mut self, v: Value, c: u64, yes: &Target, no: &Target) {
        let (hi, lo, mem) = match v {
            Value::Data(hi, lo) => (hi, lo, false),
            Value::Mem(hi, lo) => (hi, lo, true),
        };
        let (c_hi, c_lo) = ((c >> 32) as u32, c as u32);
        self.load(hi, mem);
        self.jump(JGT_K, c_hi, yes.clone(), Next);
        self.jump(JEQ_K, c_hi, Next, no.clone());
        self.load(lo, mem);
        self.jump(JGE_K, c_lo, yes.clone(), no.clone());
    }
    fn finish(self) -> Vec<SockFilter> {
        let resolve = |at: usize, t: &Target| -> usize {
            match t {
                Next => 0,
                Label(name) => {
                    let to = self.labels[name];
                    assert!(to > at, "backward jump to {name}");
                    to - at - 1
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, (code, jt, jf, k))| {
                let (code, k) = (*code, *k);
                if code == JA {
                    return SockFilter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: resolve(at, jt) as u32,
                    };
                }
                let (jt, jf) = (resolve(at, jt), resolve(at, jf));
                assert!(jt < 256 && jf < 256, "conditional jump too far");
                SockFilter {
                    code,
                    jt: jt as u8,
                    jf: jf as u8,
                    k,
                }
            })
            .collect()
    }
}

/// The filter (see the module doc). `image`: where the image is mapped;
/// `code`: where trapped calls may come from; at most [`MAX_RANGES`] each.
fn filter(image: &[(u64, u64)], code: &[(u64, u64)], exempt: &[(u64, u64)]) -> Vec<SockFilter> {
    assert!(image.len() <= MAX_RANGES && code.len() <= MAX_RANGES);
    assert!(exempt.len() <= MAX_EXEMPT);
    let label = |s: &str| Label(s.to_string());
    let mut p = Program::default();
    p.stmt(LD_W_ABS, ARCH);
    p.jump(JEQ_K, AUDIT_ARCH_X86_64, Next, label("allow"));
    p.stmt(LD_W_ABS, NR);
    p.jump_far(JEQ_K, libc::SYS_madvise as u32, "madvise");
    p.jump_far(JEQ_K, libc::SYS_mremap as u32, "mremap");
    p.jump_far(JEQ_K, libc::SYS_rt_sigaction as u32, "sigaction");
    p.jump_far(JEQ_K, libc::SYS_execve as u32, "trap");
    p.jump_far(JEQ_K, libc::SYS_execveat as u32, "trap");
    p.label("allow");
    p.stmt(RET_K, SECCOMP_RET_ALLOW);

    // madvise(addr, len, advice) with an advice that frees, over the image.
    p.label("madvise");
    p.stmt(LD_W_ABS, arg_lo(2));
    for advice in [
        libc::MADV_DONTNEED as u32,
        libc::MADV_FREE as u32,
        MADV_DONTNEED_LOCKED,
    ] {
        p.jump(JEQ_K, advice, label("madvise_range"), Next);
    }
    p.stmt(RET_K, SECCOMP_RET_ALLOW);
    p.label("madvise_range");
    // end = addr + len into M0 (high), M1 (low).
    p.stmt(LD_W_ABS, arg_hi(0));
    p.stmt(TAX, 0);
    p.stmt(LD_W_ABS, arg_hi(1));
    p.stmt(ADD_X, 0);
    p.stmt(ST, 0);
    p.stmt(LD_W_ABS, arg_lo(0));
    p.stmt(TAX, 0);
    p.stmt(LD_W_ABS, arg_lo(1));
    p.stmt(ADD_X, 0);
    p.stmt(ST, 1);
    p.jump(JGE_X, 0, label("no_carry"), Next);
    p.stmt(LD_MEM, 0);
    p.stmt(ADD_K, 1);
    p.stmt(ST, 0);
    p.label("no_carry");
    for &(s, e) in exempt {
        // s <= addr && end <= e: inside memory that is anonymous already.
        let (upper, skip, inside) = (p.fresh(), p.fresh(), p.fresh());
        p.ge64(
            Value::Data(arg_hi(0), arg_lo(0)),
            s,
            &Label(upper.clone()),
            &Label(skip.clone()),
        );
        p.label(&upper);
        p.ge64(
            Value::Mem(0, 1),
            e + 1,
            &Label(skip.clone()),
            &Label(inside.clone()),
        );
        p.label(&inside);
        p.goto("allow_exempt");
        p.label(&skip);
    }
    for &(s, e) in image {
        // addr < e && end > s
        let (check_end, skip) = (p.fresh(), p.fresh());
        p.ge64(
            Value::Data(arg_hi(0), arg_lo(0)),
            e,
            &Label(skip.clone()),
            &Label(check_end.clone()),
        );
        p.label(&check_end);
        let hit = p.fresh();
        p.ge64(
            Value::Mem(0, 1),
            s + 1,
            &Label(hit.clone()),
            &Label(skip.clone()),
        );
        p.label(&hit);
        p.goto("trap");
        p.label(&skip);
    }
    p.label("allow_exempt");
    p.stmt(RET_K, SECCOMP_RET_ALLOW);

    // mremap(old, old_len, new_len, flags, new) of the image: growing, or
    // DONTUNMAP.
    p.label("mremap");
    p.stmt(LD_W_ABS, arg_hi(1));
    p.stmt(TAX, 0);
    p.stmt(LD_W_ABS, arg_hi(2));
    p.jump(JGT_X, 0, label("mremap_range"), Next);
    p.jump(JEQ_X, 0, Next, label("dontunmap"));
    p.stmt(LD_W_ABS, arg_lo(1));
    p.stmt(TAX, 0);
    p.stmt(LD_W_ABS, arg_lo(2));
    p.jump(JGT_X, 0, label("mremap_range"), Next);
    p.label("dontunmap");
    p.stmt(LD_W_ABS, arg_lo(3));
    p.jump(
        JSET_K,
        libc::MREMAP_DONTUNMAP as u32,
        label("mremap_range"),
        Next,
    );
    p.stmt(RET_K, SECCOMP_RET_ALLOW);
    p.label("mremap_range");
    for &(s, e) in image {
        // s <= old < e
        let (upper, skip, hit) = (p.fresh(), p.fresh(), p.fresh());
        let old = Value::Data(arg_hi(0), arg_lo(0));
        p.ge64(old, s, &Label(upper.clone()), &Label(skip.clone()));
        p.label(&upper);
        p.ge64(old, e, &Label(skip.clone()), &Label(hit.clone()));
        p.label(&hit);
        p.goto("trap");
        p.label(&skip);
    }
    p.stmt(RET_K, SECCOMP_RET_ALLOW);

    // rt_sigaction(SIGSYS, act != NULL, ...): the guard's handler stays.
    p.label("sigaction");
    p.stmt(LD_W_ABS, arg_lo(0));
    p.jump(JEQ_K, libc::SIGSYS as u32, Next, label("allow2"));
    p.stmt(LD_W_ABS, arg_lo(1));
    p.jump(JEQ_K, 0, Next, label("set"));
    p.stmt(LD_W_ABS, arg_hi(1));
    p.jump(JEQ_K, 0, label("allow2"), label("set"));
    p.label("allow2");
    p.stmt(RET_K, SECCOMP_RET_ALLOW);
    p.label("set");
    p.stmt(LD_IMM, SECCOMP_RET_ERRNO | libc::EPERM as u32);
    p.goto("from_code");

    p.label("trap");
    p.stmt(LD_IMM, SECCOMP_RET_TRAP);
    p.label("from_code");
    from_code(&mut p, code);
    p.finish()
}

/// Returns the action in `A` if the instruction pointer is in one of
/// `ranges`, `SECCOMP_RET_ALLOW` otherwise (the action waits in M2).
fn from_code(p: &mut Program, ranges: &[(u64, u64)]) {
    p.stmt(ST, 2);
    let ip = Value::Data(IP_HI, IP_LO);
    for &(s, e) in ranges {
        let (upper, skip, hit) = (p.fresh(), p.fresh(), p.fresh());
        p.ge64(ip, s, &Label(upper.clone()), &Label(skip.clone()));
        p.label(&upper);
        p.ge64(ip, e, &Label(skip.clone()), &Label(hit.clone()));
        p.label(&hit);
        p.stmt(LD_MEM, 2);
        p.stmt(RET_A, 0);
        p.label(&skip);
    }
    p.stmt(RET_K, SECCOMP_RET_ALLOW);
}

/// Whether this kernel answers `PROCMAP_QUERY` (Linux 6.11+) on
/// `/proc/self/maps`; checked once per process.
fn procmap_query_works() -> Result<(), String> {
    static WORKS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    WORKS
        .get_or_init(|| {
            let maps = std::fs::File::open("/proc/self/maps")
                .map_err(|e| format!("cannot open /proc/self/maps: {e}"))?;
            let mut query = [0u64; 13];
            query[0] = 104;
            query[1] = 0x10;
            query[2] = query.as_ptr() as u64;
            // SAFETY: PROCMAP_QUERY reads and writes the 104-byte struct
            // `query` points at, which lives across the call.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&maps),
                    PROCMAP_QUERY as _,
                    query.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(format!(
                    "this kernel lacks PROCMAP_QUERY on /proc/PID/maps (Linux 6.11+): {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_to_the_smallest_gaps() {
        let r = vec![
            (0x1000, 0x2000),
            (0x2000, 0x3000),
            (0x9000, 0xa000),
            (0x5000, 0x6000),
        ];
        assert_eq!(
            coalesce(r.clone(), 8),
            vec![(0x1000, 0x3000), (0x5000, 0x6000), (0x9000, 0xa000)]
        );
        assert_eq!(
            coalesce(r.clone(), 2),
            vec![(0x1000, 0x6000), (0x9000, 0xa000)]
        );
        assert_eq!(coalesce(r, 1), vec![(0x1000, 0xa000)]);
    }

    #[test]
    fn the_filter_fits_with_the_most_ranges() {
        let ranges: Vec<(u64, u64)> = (0..MAX_RANGES as u64)
            .map(|i| {
                (
                    0x7f00_0000_0000 + i * 0x10_0000,
                    0x7f00_0000_8000 + i * 0x10_0000,
                )
            })
            .collect();
        let exempt: Vec<(u64, u64)> = (0..MAX_EXEMPT as u64)
            .map(|i| {
                (
                    0x7e00_0000_0000 + i * 0x10_0000,
                    0x7e00_0000_8000 + i * 0x10_0000,
                )
            })
            .collect();
        let f = filter(&ranges, &ranges, &exempt);
        assert!(f.len() < 4096, "{} instructions", f.len());
        assert!(f
            .iter()
            .any(|i| i.code == LD_IMM && i.k == SECCOMP_RET_TRAP));
        assert!(f.iter().any(|i| i.code == RET_A));
    }

    #[test]
    fn the_memo_gives_the_filter_of_its_ranges() {
        let image = vec![(0x10000, 0x20000), (0x40000, 0x50000)];
        let code = vec![(0x400000, 0x410000)];
        let memo = FilterMemo::default();
        let first = memo.filter(image.clone(), code.clone(), Vec::new());
        assert_eq!(first, filter(&image, &code, &[]));
        assert_eq!(memo.filter(image.clone(), code.clone(), Vec::new()), first);
        let exempt = vec![(0x60000, 0x61000)];
        let other = memo.filter(image.clone(), code.clone(), exempt.clone());
        assert_eq!(other, filter(&image, &code, &exempt));
        assert_ne!(other, first, "other ranges, another filter");
    }

    #[test]
    fn the_handler_block_is_whole() {
        let (code, restorer, data) = handler_code();
        assert!(restorer < data && data + 32 <= code.len());
        // mov eax, 15 ; syscall
        assert_eq!(
            code[restorer..restorer + 7],
            [0xb8, 15, 0, 0, 0, 0x0f, 0x05]
        );
        assert_eq!(&code[data + 16..data + 32], b"/proc/self/maps\0");
    }
}
