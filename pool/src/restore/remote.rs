//! Driving the stub: system calls run inside it (through the capture's
//! injector), its memory written through `/proc/PID/mem`, and a scratch
//! page for the arguments of those calls.

use std::fs::File;
use std::os::unix::fs::FileExt;

use snapshotter::capture::{Injector, Seized};

use super::RestoreError;

/// The stub held by the restorer.
#[derive(Debug)]
pub struct Remote {
    /// The ptrace hold (detaches on drop).
    pub seized: Seized,
    injector: Injector,
    mem: File,
    /// The scratch area (address, length), once mapped.
    pub scratch: Option<(u64, u64)>,
    /// System calls run so far.
    pub calls: u32,
    /// Pids (in the restorer's namespace) of the processes forked by
    /// batches, in the order they were made (process trees, see `tree`).
    pub cloned: Vec<i32>,
    /// The stub's map as read when it was seized (that read found the
    /// vDSO), until the restore takes it ([`Remote::take_stub_map`]).
    stub_map: Option<super::memory::StubMap>,
}

impl Remote {
    /// Seizes `pid` (killed if the restorer dies while holding it), reads
    /// its memory map once (kept for [`Remote::take_stub_map`]) and finds a
    /// `syscall` instruction in its vDSO.
    pub fn seize(pid: i32) -> Result<Remote, RestoreError> {
        let seized = Seized::stop(pid).map_err(|e| RestoreError::Stub(e.to_string()))?;
        // A half-made copy must not run if the restorer dies.
        nix::sys::ptrace::setoptions(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD
                | nix::sys::ptrace::Options::PTRACE_O_EXITKILL,
        )
        .map_err(|e| RestoreError::Stub(format!("PTRACE_SETOPTIONS: {e}")))?;
        let stub_map = super::memory::stub_map(pid)?;
        let (start, end) = stub_map.vdso().ok_or_else(|| {
            RestoreError::Stub(
                snapshotter::capture::inject::InjectError::NoSyscallInstruction { pid }.to_string(),
            )
        })?;
        let injector = Injector::find_in_vdso(&seized, start, end)
            .map_err(|e| RestoreError::Stub(e.to_string()))?;
        let mem = open_mem(pid)?;
        Ok(Remote {
            seized,
            injector,
            mem,
            scratch: None,
            calls: 0,
            cloned: Vec::new(),
            stub_map: Some(stub_map),
        })
    }

    /// The stub's map read by [`Remote::seize`], once (`None` after, and
    /// for a thread or process taken over: read it then). Nothing the
    /// restore does before taking it moves the special areas it holds.
    pub fn take_stub_map(&mut self) -> Option<super::memory::StubMap> {
        self.stub_map.take()
    }

    /// Takes over thread `tid` of this stub, which the restorer has seized
    /// and interrupted already, once it is in that stop: the returned
    /// `Remote` runs batches and sets registers in that thread, sharing the
    /// stub's scratch area.
    pub fn adopt_thread(&self, tid: i32) -> Result<Remote, RestoreError> {
        let seized = Seized::adopt(tid).map_err(|e| RestoreError::Stub(e.to_string()))?;
        let mem = self.mem.try_clone().map_err(|source| RestoreError::Io {
            what: "dup the stub's /proc/PID/mem".into(),
            source,
        })?;
        Ok(Remote {
            seized,
            injector: self.injector,
            mem,
            scratch: self.scratch,
            calls: 0,
            cloned: Vec::new(),
            stub_map: None,
        })
    }

    /// Takes over process `pid`, which a batch of this stub forked (traced
    /// already, with this stub's options, waiting in its first stop): a copy
    /// of this stub (the same scratch area with its loop, the same vDSO)
    /// with its own memory.
    pub fn adopt_process(&self, pid: i32) -> Result<Remote, RestoreError> {
        let seized = Seized::adopt(pid).map_err(|e| RestoreError::Stub(e.to_string()))?;
        let mem = open_mem(pid)?;
        Ok(Remote {
            seized,
            injector: self.injector,
            mem,
            scratch: self.scratch,
            calls: 0,
            cloned: Vec::new(),
            stub_map: None,
        })
    }

    /// The stub's pid (in the restorer's namespace).
    pub fn pid(&self) -> i32 {
        self.seized.pid()
    }

    /// Address of the `syscall` instruction in use.
    pub fn syscall_address(&self) -> u64 {
        self.injector.syscall_address()
    }

    /// Uses the `syscall` instruction at `addr` from now on (after the vDSO
    /// moved).
    pub fn set_syscall_address(&mut self, addr: u64) {
        self.injector = Injector::with_syscall_at(addr);
    }

    /// Runs system call `nr` in the stub; a negative result is an error
    /// naming `what`.
    pub fn sys(&mut self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64, RestoreError> {
        self.calls += 1;
        let r = self
            .injector
            .syscall(&mut self.seized, nr, args)
            .map_err(|e| RestoreError::Inject {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
        if (-4095..0).contains(&r) {
            return Err(RestoreError::Remote {
                what: what.to_string(),
                source: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Brings the stub from wherever it stopped into a `PTRACE_INTERRUPT`
    /// stop, which the kernel takes inside its signal handling on the way
    /// back to user space. Registers set there are treated like those of a
    /// thread interrupted in a system call: when it resumes, the kernel
    /// itself applies the restart rule, or returns `EINTR` and runs a
    /// handler if a signal has come meanwhile (exactly as for the original).
    pub fn park(&mut self) -> Result<(), RestoreError> {
        use nix::sys::ptrace;
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let err = |what: &str, e: nix::errno::Errno| RestoreError::Stub(format!("{what}: {e}"));
        ptrace::interrupt(pid).map_err(|e| err("PTRACE_INTERRUPT", e))?;
        ptrace::cont(pid, None).map_err(|e| err("PTRACE_CONT", e))?;
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(err("waitpid", e)),
                Ok(WaitStatus::PtraceEvent(_, _, event)) if event == libc::PTRACE_EVENT_STOP => {
                    return Ok(())
                }
                // A signal or another stop first: suppress it, go on.
                Ok(WaitStatus::Stopped(..))
                | Ok(WaitStatus::PtraceEvent(..))
                | Ok(WaitStatus::PtraceSyscall(..)) => {
                    ptrace::cont(pid, None).map_err(|e| err("PTRACE_CONT", e))?;
                }
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    return Err(RestoreError::Stub(format!(
                        "the stub ended before its registers were set: {status:?}"
                    )));
                }
                Ok(_) => {}
            }
        }
    }

    /// Lets the stub run.
    pub fn detach(self) -> Result<(), RestoreError> {
        self.seized
            .detach()
            .map_err(|e| RestoreError::Stub(e.to_string()))
    }

    /// Reads `buf.len()` bytes at `addr` of the stub.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), RestoreError> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|source| RestoreError::Io {
                what: format!("read {} bytes at {addr:#x} of the stub", buf.len()),
                source,
            })
    }

    /// Writes `data` at `addr` in the stub (ignores page protections, like
    /// a debugger: private pages are copied on write).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), RestoreError> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|source| RestoreError::Io {
                what: format!("write {} bytes at {addr:#x} of the stub", data.len()),
                source,
            })
    }
}

/// Most iovecs one `process_vm_writev` takes (`IOV_MAX`).
const IOV_MAX: usize = 1024;

impl Remote {
    /// Writes every `(addr, bytes)` of `runs` into the stub with as few
    /// system calls as the kernel allows: one `process_vm_writev` per
    /// [`IOV_MAX`] runs, instead of a `/proc/PID/mem` write per run (the
    /// pages of a 16-thread copy's stacks are ~30 short runs). A run that
    /// call cannot write (a page that is not writable: unlike
    /// `/proc/PID/mem`, `process_vm_writev` does not force) is written
    /// through [`Remote::write`], and the rest go on as before.
    pub fn write_runs(&self, runs: &[(u64, &[u8])]) -> Result<(), RestoreError> {
        // Position: run `i`, `done` bytes of it written.
        let (mut i, mut done) = (0usize, 0usize);
        while i < runs.len() {
            let batch = &runs[i..runs.len().min(i + IOV_MAX)];
            let mut local = Vec::with_capacity(batch.len());
            let mut remote = Vec::with_capacity(batch.len());
            for (n, (addr, bytes)) in batch.iter().enumerate() {
                let skip = if n == 0 { done } else { 0 };
                local.push(libc::iovec {
                    iov_base: bytes[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len() - skip,
                });
                remote.push(libc::iovec {
                    iov_base: (addr + skip as u64) as *mut libc::c_void,
                    iov_len: bytes.len() - skip,
                });
            }
            // SAFETY: `local` describes live buffers of `runs` (only read);
            // `remote` names addresses in the stub, which the kernel checks.
            let n = unsafe {
                libc::process_vm_writev(
                    self.pid(),
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n <= 0 {
                // The first run cannot be written this way: force it.
                let (addr, bytes) = runs[i];
                self.write(addr + done as u64, &bytes[done..])?;
                (i, done) = (i + 1, 0);
                continue;
            }
            let mut left = n as usize;
            while left > 0 {
                let rest = runs[i].1.len() - done;
                if left >= rest {
                    left -= rest;
                    (i, done) = (i + 1, 0);
                } else {
                    done += left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

/// The bytes of a plain-data value.
pub fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: `T: Copy` plain data with no padding is read as bytes for the
    // lifetime of the borrow; callers use `repr(C)` structs of u64/u32.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), std::mem::size_of::<T>()) }
}

/// `/proc/PID/mem` of a traced process, for reading and writing its memory.
fn open_mem(pid: i32) -> Result<std::fs::File, RestoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|source| RestoreError::Io {
            what: format!("open /proc/{pid}/mem"),
            source,
        })
}
