# Attack probes of the containment suite (issue 12): each tries one thing a
# function must not be able to do and reports "ok" when it worked, or the
# error. Run from a function (thaw's sandbox) every probe must fail; run
# from a control (the host, as root, without the policy) every probe works.
# `probe_all()` returns {name: "ok" | "error ..."}; as a script it prints
# that as JSON.
import ctypes
import json
import os
import subprocess
import threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_ptrace = 101
SYS_clone = 56
SYS_keyctl = 250
SYS_bpf = 321
SYS_perf_event_open = 298
SYS_userfaultfd = 323
SYS_io_uring_setup = 425
SYS_clone3 = 435
SYS_unshare = 272
SYS_setns = 308

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
SIGCHLD = 17


def _err(what):
    e = ctypes.get_errno()
    return "error %s: %s" % (what, os.strerror(e) if e else "failed")


def _fd_result(rc, what):
    if rc < 0:
        return _err(what)
    os.close(rc)
    return "ok"


def unshare_cmd():
    # util-linux unshare: a user namespace with root mapped.
    try:
        r = subprocess.run(["unshare", "-Ur", "id", "-u"], capture_output=True, text=True, timeout=20)
    except OSError as e:
        return "error exec: %s" % e
    if r.returncode == 0 and r.stdout.strip() == "0":
        return "ok"
    return "error unshare -Ur: %s" % (r.stderr.strip() or r.returncode)


def unshare_call():
    # os.unshare exists from Python 3.12 on; the same system call here.
    fn = getattr(os, "unshare", None)
    pid = os.fork()
    if pid == 0:
        try:
            if fn is not None:
                fn(CLONE_NEWUSER)
            elif libc.syscall(SYS_unshare, CLONE_NEWUSER) != 0:
                os._exit(1)
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return "ok" if os.waitstatus_to_exitcode(status) == 0 else "error unshare(CLONE_NEWUSER) refused"


def clone_newuser():
    rc = libc.syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if rc == 0:
        os._exit(0)
    if rc < 0:
        return _err("clone(CLONE_NEWUSER)")
    os.waitpid(rc, 0)
    return "ok"


def clone3_call():
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, ...
    args = (ctypes.c_uint64 * 11)()
    args[4] = SIGCHLD
    rc = libc.syscall(SYS_clone3, ctypes.byref(args), ctypes.sizeof(args))
    if rc == 0:
        os._exit(0)
    if rc < 0:
        return _err("clone3")
    os.waitpid(rc, 0)
    return "ok"


def io_uring():
    params = ctypes.create_string_buffer(120)
    return _fd_result(libc.syscall(SYS_io_uring_setup, 4, params), "io_uring_setup")


def bpf_map():
    # BPF_MAP_CREATE of an array map: type 2, key 4, value 4, one entry.
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1
    return _fd_result(libc.syscall(SYS_bpf, 0, attr, ctypes.sizeof(attr)), "bpf")


def keyctl():
    # KEYCTL_GET_KEYRING_ID(KEY_SPEC_PROCESS_KEYRING, create)
    rc = libc.syscall(SYS_keyctl, 0, ctypes.c_long(-2), 1)
    return "ok" if rc >= 0 else _err("keyctl")


def ptrace_child():
    pid = os.fork()
    if pid == 0:
        try:
            os.read(os.pipe()[0], 1)
        finally:
            os._exit(0)
    try:
        # PTRACE_SEIZE: attaches without stopping the child.
        rc = libc.syscall(SYS_ptrace, 0x4206, pid, 0, 0)
        return "ok" if rc == 0 else _err("ptrace(PTRACE_SEIZE)")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def userfaultfd():
    # UFFD_USER_MODE_ONLY (1): allowed unprivileged by the kernel itself.
    return _fd_result(libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | 1), "userfaultfd")


PROBES = {
    "unshare_cmd": unshare_cmd,
    "unshare_call": unshare_call,
    "clone_newuser": clone_newuser,
    "io_uring_setup": io_uring,
    "bpf": bpf_map,
    "keyctl": keyctl,
    "ptrace": ptrace_child,
    "userfaultfd": userfaultfd,
}


def legit():
    # What functions must keep doing under the policy: threads (clone3
    # falls back to clone), fork + exec.
    out = []
    t = threading.Thread(target=lambda: out.append(1))
    t.start()
    t.join()
    r = subprocess.run(["/bin/sh", "-c", "echo fine"], capture_output=True, text=True)
    return {"thread": out == [1], "subprocess": r.stdout.strip() == "fine", "clone3": clone3_call()}


def probe_all():
    out = {}
    for name, fn in PROBES.items():
        try:
            out[name] = fn()
        except Exception as e:  # a probe must never take the function down
            out[name] = "error %r" % (e,)
    return out


def handler(event, context):
    return {"probes": probe_all(), "legit": legit(), "status": open("/proc/self/status").read()}


if __name__ == "__main__":
    print(json.dumps({"probes": probe_all(), "legit": legit()}))
