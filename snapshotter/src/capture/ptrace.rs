//! Stopping a process with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, reading its
//! thread state, and always detaching again.
//!
//! [`Seized`] owns the tracing relationship: its `Drop` detaches, so the
//! traced process keeps running whatever happens to the capture. Signals
//! that arrive while the process is held (signal-delivery stops) are kept
//! and handed back to it when it is detached, so none is lost.
//!
//! A process with several threads is held with [`stop_all`]: every thread
//! seized and interrupted, `/proc/PID/task` listed again until no new
//! thread appears (a thread that runs can create more until it is
//! stopped), so no thread runs while another is read.
//!
//! Caveat for callers: ptrace stops are reported through `waitpid`. If the
//! capturing process is also the target's parent, nothing else in it may
//! wait for the target during a capture (for example a runtime's child
//! reaper calling `waitpid(pid, WNOHANG)`): it would consume the stop
//! notifications (and an exit status) meant for [`Seized`]. Capture from a
//! process that is not the target's parent, or pause such reaping.

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::state::{Registers, Rseq};

/// `NT_X86_XSTATE` regset number.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Large enough for every xsave layout the kernel exposes today (AMX tiles
/// included); the kernel shortens the iovec to the real size.
const XSAVE_BUFFER: usize = 32 * 1024;

/// `struct ptrace_rseq_configuration` from `<linux/ptrace.h>`.
#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}
const _: () = assert!(std::mem::size_of::<RseqConfiguration>() == 24);

/// Failures of ptrace operations.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// A ptrace request or wait failed.
    #[error("{op} on pid {pid} failed: {errno}")]
    Call {
        /// What was attempted.
        op: &'static str,
        /// The process.
        pid: i32,
        /// The kernel's answer.
        errno: Errno,
    },
    /// `/proc/PID/task` could not be listed.
    #[error("cannot list the threads of pid {pid}: {source}")]
    Tasks {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// Threads kept appearing while the others were being stopped.
    #[error("pid {pid} kept creating threads while they were being stopped ({rounds} rounds)")]
    Unstable {
        /// The process.
        pid: i32,
        /// Listings made.
        rounds: usize,
    },
    /// The process exited or was killed while held.
    #[error("pid {pid} ended while stopped for capture: {status}")]
    Ended {
        /// The process.
        pid: i32,
        /// How it ended.
        status: String,
    },
}

/// How [`Seized::wait`] found the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` (after `PTRACE_INTERRUPT`, or a group stop).
    Event,
    /// A syscall-entry or syscall-exit stop (`PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// A signal-delivery stop; the signal was kept for the detach.
    Signal(Signal),
    /// Any other ptrace event.
    Other(i32),
}

/// A process held with `PTRACE_SEIZE`. Detaches on drop.
#[derive(Debug)]
pub struct Seized {
    pid: Pid,
    attached: bool,
    pending_signal: Option<Signal>,
}

impl Seized {
    /// Seizes `pid` (with `PTRACE_O_TRACESYSGOOD`, never `EXITKILL`: if the
    /// capturing process dies, the target is detached and keeps running),
    /// interrupts it and waits until it is stopped.
    pub fn stop(pid: i32) -> Result<Seized, PtraceError> {
        let pid = Pid::from_raw(pid);
        ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD).map_err(|errno| {
            PtraceError::Call {
                op: "PTRACE_SEIZE",
                pid: pid.as_raw(),
                errno,
            }
        })?;
        let mut seized = Seized {
            pid,
            attached: true,
            pending_signal: None,
        };
        ptrace::interrupt(pid).map_err(|errno| seized.err("PTRACE_INTERRUPT", errno))?;
        loop {
            match seized.wait()? {
                Stop::Event => return Ok(seized),
                // A signal arrived first: keep it for the detach, resume, and
                // the interrupt (still pending) stops the process next.
                Stop::Signal(_) | Stop::Syscall | Stop::Other(_) => seized.resume_syscall(false)?,
            }
        }
    }

    /// Takes over thread `tid`, which is traced already (seized and
    /// interrupted by the caller, or auto-attached by `PTRACE_O_TRACECLONE`
    /// when a seized thread cloned it) and waits for its next stop.
    pub fn adopt(tid: i32) -> Result<Seized, PtraceError> {
        let mut seized = Seized {
            pid: Pid::from_raw(tid),
            attached: true,
            pending_signal: None,
        };
        loop {
            match seized.wait()? {
                Stop::Event => return Ok(seized),
                Stop::Signal(_) | Stop::Syscall | Stop::Other(_) => {
                    ptrace::interrupt(seized.pid)
                        .map_err(|errno| seized.err("PTRACE_INTERRUPT", errno))?;
                    seized.resume_syscall(false)?
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    fn err(&self, op: &'static str, errno: Errno) -> PtraceError {
        PtraceError::Call {
            op,
            pid: self.pid.as_raw(),
            errno,
        }
    }

    /// Waits for the next stop of the process.
    pub fn wait(&mut self) -> Result<Stop, PtraceError> {
        loop {
            let status = match waitpid(self.pid, Some(WaitPidFlag::__WALL)) {
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(self.err("waitpid", errno)),
            };
            return match status {
                WaitStatus::PtraceEvent(_, _, event) if event == libc::PTRACE_EVENT_STOP => {
                    Ok(Stop::Event)
                }
                WaitStatus::PtraceEvent(_, _, event) => Ok(Stop::Other(event)),
                WaitStatus::PtraceSyscall(_) => Ok(Stop::Syscall),
                WaitStatus::Stopped(_, signal) => {
                    self.pending_signal = Some(signal);
                    Ok(Stop::Signal(signal))
                }
                WaitStatus::Exited(_, code) => {
                    self.attached = false;
                    Err(PtraceError::Ended {
                        pid: self.pid.as_raw(),
                        status: format!("exited with status {code}"),
                    })
                }
                WaitStatus::Signaled(_, signal, _) => {
                    self.attached = false;
                    Err(PtraceError::Ended {
                        pid: self.pid.as_raw(),
                        status: format!("killed by {signal}"),
                    })
                }
                WaitStatus::Continued(_) | WaitStatus::StillAlive => continue,
            };
        }
    }

    /// Resumes with `PTRACE_SYSCALL` (stop at the next syscall entry/exit).
    /// Pending signals stay pending unless `deliver` is true.
    pub fn resume_syscall(&mut self, deliver: bool) -> Result<(), PtraceError> {
        let signal = if deliver {
            self.pending_signal.take()
        } else {
            None
        };
        ptrace::syscall(self.pid, signal).map_err(|errno| self.err("PTRACE_SYSCALL", errno))
    }

    /// The general purpose registers.
    pub fn registers(&self) -> Result<Registers, PtraceError> {
        ptrace::getregs(self.pid)
            .map(Registers::from)
            .map_err(|errno| self.err("PTRACE_GETREGS", errno))
    }

    /// Sets the general purpose registers.
    pub fn set_registers(&self, regs: &Registers) -> Result<(), PtraceError> {
        ptrace::setregs(self.pid, (*regs).into()).map_err(|errno| self.err("PTRACE_SETREGS", errno))
    }

    /// The extended processor state (`NT_X86_XSTATE`).
    pub fn xsave(&self) -> Result<Vec<u8>, PtraceError> {
        let mut buffer = vec![0u8; XSAVE_BUFFER];
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        // SAFETY: the iovec points at `buffer`, which lives across the call
        // and is `iov_len` bytes long; the kernel writes at most that much
        // and shortens `iov_len` to what it wrote.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                self.pid.as_raw(),
                NT_X86_XSTATE as libc::c_ulong,
                &mut iov as *mut libc::iovec,
            )
        };
        if rc == -1 {
            return Err(self.err("PTRACE_GETREGSET(NT_X86_XSTATE)", Errno::last()));
        }
        buffer.truncate(iov.iov_len);
        Ok(buffer)
    }

    /// Sets the extended processor state (`NT_X86_XSTATE`).
    pub fn set_xsave(&self, xsave: &[u8]) -> Result<(), PtraceError> {
        let mut copy = xsave.to_vec();
        let mut iov = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len(),
        };
        // SAFETY: the iovec describes `copy`, alive across the call; the
        // kernel only reads `iov_len` bytes from it.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                self.pid.as_raw(),
                NT_X86_XSTATE as libc::c_ulong,
                &mut iov as *mut libc::iovec,
            )
        };
        if rc == -1 {
            return Err(self.err("PTRACE_SETREGSET(NT_X86_XSTATE)", Errno::last()));
        }
        Ok(())
    }

    /// The blocked signal mask (`PTRACE_GETSIGMASK`).
    pub fn signal_mask(&self) -> Result<u64, PtraceError> {
        let mut mask: u64 = 0;
        // SAFETY: `addr` is the size of the mask buffer (8 bytes, the
        // kernel's sigset_t), `data` points at a u64 that lives across the
        // call.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_GETSIGMASK,
                self.pid.as_raw(),
                std::mem::size_of::<u64>(),
                &mut mask as *mut u64,
            )
        };
        if rc == -1 {
            return Err(self.err("PTRACE_GETSIGMASK", Errno::last()));
        }
        Ok(mask)
    }

    /// The rseq registration, `None` when the thread has none.
    pub fn rseq(&self) -> Result<Option<Rseq>, PtraceError> {
        let mut conf = RseqConfiguration::default();
        // SAFETY: `addr` is the size of the structure, `data` points at it;
        // the kernel writes at most that many bytes.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_GET_RSEQ_CONFIGURATION as libc::c_uint,
                self.pid.as_raw(),
                std::mem::size_of::<RseqConfiguration>(),
                &mut conf as *mut RseqConfiguration,
            )
        };
        if rc == -1 {
            return Err(self.err("PTRACE_GET_RSEQ_CONFIGURATION", Errno::last()));
        }
        if conf.rseq_abi_pointer == 0 {
            return Ok(None);
        }
        Ok(Some(Rseq {
            address: conf.rseq_abi_pointer,
            length: conf.rseq_abi_size,
            signature: conf.signature,
            flags: conf.flags,
        }))
    }

    /// Detaches, handing back a signal that arrived while the process was
    /// held. The process continues where it was stopped.
    pub fn detach(mut self) -> Result<(), PtraceError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), PtraceError> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let signal = self.pending_signal.take();
        match ptrace::detach(self.pid, signal) {
            Ok(()) => Ok(()),
            // Already gone: nothing left to release.
            Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(self.err("PTRACE_DETACH", errno)),
        }
    }
}

/// Listings of `/proc/PID/task` before [`stop_all`] gives up.
const MAX_ROUNDS: usize = 64;

/// Thread ids of `pid` (from `/proc/PID/task`), sorted.
pub fn task_ids(pid: i32) -> Result<Vec<i32>, PtraceError> {
    let path = format!("/proc/{pid}/task");
    let dir = std::fs::read_dir(&path).map_err(|source| PtraceError::Tasks { pid, source })?;
    let mut ids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|source| PtraceError::Tasks { pid, source })?;
        if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Stops every thread of `pid` ([`Seized::stop`] each), listing
/// `/proc/PID/task` again until a listing shows no thread that is not held.
/// Threads that end meanwhile are dropped. Returns the main thread first
/// (its tid is `pid`), then the others in tid order.
pub fn stop_all(pid: i32) -> Result<Vec<Seized>, PtraceError> {
    let mut held: Vec<Seized> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let tids = task_ids(pid)?;
        let mut new = false;
        for &tid in &tids {
            if held.iter().any(|s| s.pid() == tid) {
                continue;
            }
            new = true;
            match Seized::stop(tid) {
                Ok(s) => held.push(s),
                // A thread (not the main one) that ended before it stopped.
                Err(PtraceError::Call {
                    errno: Errno::ESRCH,
                    ..
                })
                | Err(PtraceError::Ended { .. })
                    if tid != pid => {}
                Err(e) => return Err(e),
            }
        }
        held.retain(|s| tids.contains(&s.pid()));
        if !new {
            held.sort_by_key(|s| (s.pid() != pid, s.pid()));
            if held.first().map(Seized::pid) != Some(pid) {
                return Err(PtraceError::Ended {
                    pid,
                    status: "its main thread is gone".into(),
                });
            }
            return Ok(held);
        }
    }
    Err(PtraceError::Unstable {
        pid,
        rounds: MAX_ROUNDS,
    })
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(err) = self.detach_inner() {
            tracing::error!(%err, pid = self.pid.as_raw(), "detach failed");
        }
    }
}
