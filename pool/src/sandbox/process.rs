//! A sandbox's outer process, from the server's side: spawned by the
//! server itself (a [`tokio::process::Child`]) or forked by the zygote
//! ([`super::zygote`]) as the server's child and known by its pidfd. Either
//! way the server waits for it, kills it and reaps it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::process::Child;

/// The outer process of one sandbox.
#[derive(Debug)]
pub(super) enum OuterProcess {
    /// Spawned by the server (fork and exec of the init binary).
    Spawned(Child),
    /// Forked by the zygote; a child of this process.
    Forked(Forked),
}

/// An outer process forked by the zygote.
#[derive(Debug)]
pub(super) struct Forked {
    pid: i32,
    /// `None` once reaped.
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Forked {
    /// Takes over the zygote's answer: a child of this process.
    pub(super) fn new(pid: i32, pidfd: OwnedFd) -> Forked {
        Forked {
            pid,
            pidfd: Some(pidfd),
            status: None,
        }
    }

    /// Reaps the process if it has ended (`waitid(P_PIDFD, WNOHANG)`).
    fn try_reap(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(pidfd) = self.pidfd.as_ref() else {
            return Ok(None);
        };
        // SAFETY: siginfo_t is plain data; all-zero is valid and means "no
        // child changed state" after a WNOHANG wait.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`, which lives for the call; the
        // pidfd is ours and open.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: waitid filled si_pid/si_code/si_status (zero: nothing yet).
        let (pid, code, value) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let raw = match code {
            libc::CLD_EXITED => (value & 0xff) << 8,
            libc::CLD_DUMPED => (value & 0x7f) | 0x80,
            _ => value & 0x7f,
        };
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        self.pidfd = None;
        Ok(Some(status))
    }

    /// Sends SIGKILL (through the pidfd: never another process that got
    /// the pid again).
    fn kill(&self) -> std::io::Result<()> {
        let Some(pidfd) = self.pidfd.as_ref() else {
            return Ok(());
        };
        // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // Already dead (not reaped yet): nothing to kill.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits until the process ends and reaps it.
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            let Some(pidfd) = self.pidfd.as_ref() else {
                return Err(std::io::Error::other("no pidfd"));
            };
            // A pidfd polls readable once its process has ended.
            let dup = pidfd.try_clone()?;
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged for
            // as long as the AsyncFd owns it.
            let fd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
            let _ = fd.readable().await?;
        }
    }
}

impl Drop for Forked {
    /// Like a `kill_on_drop` child: killed, and reaped where that can wait
    /// (in the background in a runtime, else at once).
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = self.kill();
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // A runtime that shuts down drops the task: the pidfd then
                // closes and the zombie is left to this process's exit.
                rt.spawn(async move {
                    let mut rest = Forked {
                        pid: 0,
                        pidfd: Some(pidfd),
                        status: None,
                    };
                    let _ = rest.wait().await;
                    // Reaped or not, never killed again through a drop.
                    rest.status.get_or_insert(ExitStatus::from_raw(0));
                });
            }
            Err(_) => {
                let mut info: libc::siginfo_t =
                    // SAFETY: plain data; all-zero is valid.
                    unsafe { std::mem::zeroed() };
                // SAFETY: a blocking waitid on our own child, just killed;
                // `info` lives for the call.
                unsafe {
                    libc::waitid(
                        libc::P_PIDFD,
                        pidfd.as_raw_fd() as libc::id_t,
                        &mut info,
                        libc::WEXITED,
                    )
                };
            }
        }
    }
}

impl OuterProcess {
    /// Its host pid (`None` once a spawned child was reaped).
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            OuterProcess::Spawned(c) => c.id(),
            OuterProcess::Forked(f) => f.pidfd.as_ref().map(|_| f.pid as u32),
        }
    }

    /// Sends SIGKILL (does not wait).
    pub(super) fn start_kill(&mut self) -> std::io::Result<()> {
        match self {
            OuterProcess::Spawned(c) => c.start_kill(),
            OuterProcess::Forked(f) => f.kill(),
        }
    }

    /// Waits for it to end and reaps it.
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            OuterProcess::Spawned(c) => c.wait().await,
            OuterProcess::Forked(f) => f.wait().await,
        }
    }

    /// Reaps it if it has ended.
    pub(super) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            OuterProcess::Spawned(c) => c.try_wait(),
            OuterProcess::Forked(f) => f.try_reap(),
        }
    }
}
