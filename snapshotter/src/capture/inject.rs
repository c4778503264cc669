//! Running a syscall inside a stopped process (syscall injection).
//!
//! The process must be held by a [`Seized`] and be in a ptrace stop. For
//! one injected syscall the injector
//!
//! 1. saves the registers,
//! 2. points `rip` at a `syscall` instruction (two bytes `0f 05` found in the
//!    process's `[vdso]`), puts the number in `rax` and the arguments in
//!    `rdi, rsi, rdx, r10, r8, r9`, and sets `orig_rax = -1` so the kernel
//!    applies no syscall-restart rule on the way out of the current stop,
//! 3. resumes with `PTRACE_SYSCALL` to the syscall-entry stop, then to the
//!    syscall-exit stop, and reads the result from `rax`,
//! 4. puts the saved registers back.
//!
//! Step 4 cannot always restore the registers bit for bit: a process stopped
//! while blocked in a syscall carries a pending restart (`rax = -512`,
//! `orig_rax = nr`) that the kernel applies only when it leaves the
//! *original* stop. The injector therefore writes back the registers with
//! that rule already applied ([`Registers::resumed_in_place`]): the
//! process re-enters its syscall exactly as it would have (a timed wait or
//! sleep, `-ERESTART_RESTARTBLOCK`, through `restart_syscall`, its restart
//! block untouched by the injected calls).
//!
//! Memory the syscall needs (for out-parameters) comes from a scratch area
//! below the stack's red zone, saved before and written back after
//! ([`Injector::with_scratch`]).

use super::memory::{self, MemoryError};
use super::ptrace::{PtraceError, Seized, Stop};
use crate::state::Registers;

/// The x86_64 `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// Event stops (group-stop reports) tolerated during one injected syscall.
const MAX_EVENT_STOPS: usize = 4;
/// Bytes below `rsp` the ABI reserves (red zone); scratch goes below.
const RED_ZONE: u64 = 128;

/// Failures of syscall injection.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A ptrace operation failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// Reading or writing the process's memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// No `syscall` instruction was found to borrow.
    #[error("no syscall instruction found in [vdso] of pid {pid}")]
    NoSyscallInstruction {
        /// The process.
        pid: i32,
    },
    /// Reading the memory map failed.
    #[error("cannot read /proc/{pid}/maps: {source}")]
    Maps {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// The process stopped somewhere else than expected.
    #[error("injected syscall {nr} in pid {pid}: unexpected stop {stop:?}")]
    UnexpectedStop {
        /// The process.
        pid: i32,
        /// The syscall.
        nr: i64,
        /// The stop seen.
        stop: Stop,
    },
}

/// Runs syscalls inside a held process.
#[derive(Debug, Clone, Copy)]
pub struct Injector {
    syscall_at: u64,
}

impl Injector {
    /// An injector that borrows the `syscall` instruction at `addr`.
    pub fn with_syscall_at(addr: u64) -> Injector {
        Injector { syscall_at: addr }
    }

    /// Finds a `syscall` instruction in the `[vdso]` of the process.
    pub fn find(seized: &Seized) -> Result<Injector, InjectError> {
        let pid = seized.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|source| InjectError::Maps { pid, source })?;
        for line in maps.lines().filter(|l| l.ends_with("[vdso]")) {
            let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
            else {
                continue;
            };
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            match Injector::find_in_vdso(seized, start, end) {
                Err(InjectError::NoSyscallInstruction { .. }) => continue,
                found => return found,
            }
        }
        Err(InjectError::NoSyscallInstruction { pid })
    }

    /// Finds a `syscall` instruction in the process's `[vdso]`, which the
    /// caller found at `start..end` (from a `/proc/PID/maps` it read
    /// anyway). Every process of this kernel has the same vDSO image, so
    /// the offset found in one process is tried first in the next: two
    /// bytes read and compared instead of the whole vDSO read and searched
    /// (the bytes are always checked, so a vDSO that differs is searched).
    pub fn find_in_vdso(seized: &Seized, start: u64, end: u64) -> Result<Injector, InjectError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        /// The offset in the vDSO of the last `syscall` found, plus one
        /// (0: none found yet).
        static KNOWN_OFFSET: AtomicU64 = AtomicU64::new(0);
        let pid = seized.pid();
        let known = KNOWN_OFFSET.load(Ordering::Relaxed);
        if let Some(offset) = known.checked_sub(1) {
            if start + offset + 2 <= end {
                let mut insn = [0u8; 2];
                memory::read_remote(pid, start + offset, &mut insn)?;
                if insn == SYSCALL_INSN {
                    return Ok(Injector {
                        syscall_at: start + offset,
                    });
                }
            }
        }
        let mut text = vec![0u8; end.saturating_sub(start) as usize];
        memory::read_remote(pid, start, &mut text)?;
        match text.windows(2).position(|w| w == SYSCALL_INSN) {
            Some(i) => {
                KNOWN_OFFSET.store(i as u64 + 1, Ordering::Relaxed);
                Ok(Injector {
                    syscall_at: start + i as u64,
                })
            }
            None => Err(InjectError::NoSyscallInstruction { pid }),
        }
    }

    /// Address of the borrowed `syscall` instruction.
    pub fn syscall_address(&self) -> u64 {
        self.syscall_at
    }

    /// Runs syscall `nr` with `args` in the process and returns the raw
    /// result (negative errno on failure, as the kernel returns it).
    pub fn syscall(
        &self,
        seized: &mut Seized,
        nr: i64,
        args: [u64; 6],
    ) -> Result<i64, InjectError> {
        let saved = seized.registers()?;
        let result = self.run(seized, &saved, nr, args);
        // Put the registers back even when the syscall failed half-way.
        let restored = seized.set_registers(&saved.resumed_in_place());
        let value = result?;
        restored?;
        Ok(value)
    }

    fn run(
        &self,
        seized: &mut Seized,
        saved: &Registers,
        nr: i64,
        args: [u64; 6],
    ) -> Result<i64, InjectError> {
        let mut regs = *saved;
        regs.rip = self.syscall_at;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        seized.set_registers(&regs)?;
        // Entry stop, then exit stop. Signals that arrive meanwhile are kept
        // by `Seized` for the detach and not delivered now.
        let pid = seized.pid();
        let mut syscall_stops = 0;
        let mut event_stops = 0;
        while syscall_stops < 2 {
            seized.resume_syscall(false)?;
            match seized.wait()? {
                Stop::Syscall => syscall_stops += 1,
                Stop::Signal(_) => {}
                // A process in group-stop (SIGSTOP) reports it once more when
                // resumed; resuming again runs it.
                Stop::Event if event_stops < MAX_EVENT_STOPS => event_stops += 1,
                stop => return Err(InjectError::UnexpectedStop { pid, nr, stop }),
            }
        }
        let after = seized.registers()?;
        Ok(after.rax as i64)
    }

    /// Runs `f` with `len` bytes of scratch memory in the process (below the
    /// stack's red zone, 16-byte aligned): the bytes there are saved first and
    /// written back afterwards.
    pub fn with_scratch<T>(
        &self,
        seized: &mut Seized,
        len: usize,
        f: impl FnOnce(&Injector, &mut Seized, u64) -> Result<T, InjectError>,
    ) -> Result<T, InjectError> {
        let pid = seized.pid();
        let rsp = seized.registers()?.rsp;
        let addr = (rsp - RED_ZONE - len as u64) & !15;
        let mut saved = vec![0u8; len];
        memory::read_remote(pid, addr, &mut saved)?;
        let result = f(self, seized, addr);
        memory::write_remote(pid, addr, &saved)?;
        result
    }
}
