"""The worker's fence against its neighbours (UNTRUSTED side; stdlib only, Linux only).

Copied into in/ next to worker.py and loaded by file name (the worker runs under `python -I` and
cannot import the grader package). worker.py calls apply() at start-up, before Landlock, before any
thread exists and long before any student code. grader/fence.py is the judge's side: it decides what
is promised (the `fence` entry of the worker's start-up parameters) and verifies it afterwards.

1. cgroup: if the judge put this process into a cgroup of its own (grader/cgroups.py), wait until
   /proc/self/cgroup shows it, so that every process started from here on is counted there.
2. Namespaces (where the kernel lets an unprivileged process make them): a new user, PID and mount
   namespace. This process (W) stays outside and only waits; its child (C) is PID 1 of the new PID
   namespace, mounts a /proc of its own, drops every capability and carries on as the worker. From
   C, no other process of the machine has a pid, so prlimit(2), setpriority, sched_*, ioprio_set,
   kill, ptrace and process_vm_* cannot name one, and /proc shows only the submission's processes.
   When C dies the kernel kills everything left in the namespace.
3. seccomp (always, where the kernel has it): a small BPF filter, written here by hand (no library:
   ~40 instructions, the same on every Python, no C library to install for it) that
   refuses what no lab code needs and what namespaces cannot stop: socket(AF_UNIX) (pathname sockets
   such as docker.sock or the TA's ssh-agent are reachable across namespaces; socketpair stays),
   ptrace, process_vm_*, kcmp, pidfd_getfd/send_signal, perf_event_open, io_uring (it would bypass
   the filter), setsid (a new session gets its own CPU autogroup), unshare/setns/namespace clones.
   Where namespaces could not be made, it also confines prlimit64, setpriority, sched_set*,
   ioprio_set, migrate/move_pages and every signal call to this process or its own process group.

apply() returns a short description; with a `require` promise a fence that cannot be put up ends
the process (exit code 70 and one line on stderr) instead of running student code without it.
"""
import ctypes
import json
import os
import platform
import signal
import struct
import sys
import time

EXIT_FENCE = 70  # the worker could not put up a fence the judge promised

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
CLONE_NS_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 38, 22, 24
PR_SET_SECUREBITS, PR_CAP_AMBIENT = 28, 47

# x86_64 / aarch64 numbers of the system calls the filter looks at
ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
NR = {
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "pidfd_send_signal": (424, 424), "pidfd_getfd": (438, 438),
    "prlimit64": (302, 261), "setpriority": (141, 140), "sched_setparam": (142, 118),
    "sched_setscheduler": (144, 119), "sched_setaffinity": (203, 122), "sched_setattr": (314, 274),
    "ioprio_set": (251, 30), "migrate_pages": (256, 238), "move_pages": (279, 239),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "process_madvise": (440, 440), "perf_event_open": (298, 241),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "setsid": (112, 157), "unshare": (272, 97), "setns": (308, 268), "clone": (56, 220),
    "clone3": (435, 435), "socket": (41, 198),
}
EPERM, EACCES, ENOSYS = 1, 13, 38


class Refused(Exception):
    pass


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# 1. cgroup placement
# ----------------------------------------------------------------------------------------------

def wait_for_cgroup(expected, seconds=10.0):
    """expected: ["<hierarchy-id>:<controllers>:<path>" lines of /proc/self/cgroup]. True once all
    are there (the judge writes our pid right after starting us)."""
    end = time.monotonic() + seconds
    while True:
        try:
            with open("/proc/self/cgroup") as f:
                have = set(f.read().split("\n"))
        except OSError:
            have = set()
        if all(e in have for e in expected):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.005)


# ----------------------------------------------------------------------------------------------
# 2. Namespaces
# ----------------------------------------------------------------------------------------------

def _drop_capabilities(libc):
    """No capability left, none to regain by exec (root in the namespace included)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    libc.prctl(PR_SET_SECUREBITS, 0x2F, 0, 0, 0)  # NOROOT, NO_SETUID_FIXUP, each locked; KEEP_CAPS locked off
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = ctypes.create_string_buffer(24)  # two {effective, permitted, inheritable}, all zero
    libc.syscall(126 if platform.machine() == "x86_64" else 91, ctypes.c_char_p(header), data)  # capset
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("CapEff:", "CapPrm:", "CapBnd:")) and int(line.split()[1], 16):
                raise Refused(f"capabilities left ({line.strip()})")


def _parent_waits(child, judge):
    """W: holds nothing of the protocol, waits for C, exits as C did. If the judge dies, so does C."""
    os.closerange(0, 65536)
    # No thread here: after unshare(CLONE_NEWPID) this process cannot create one (EINVAL).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            os._exit(3)
        if pid:
            break
        if os.getppid() != judge:
            os.kill(child, signal.SIGKILL)
            os._exit(3)
        signal.sigtimedwait({signal.SIGCHLD}, 1.0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError, ImportError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def namespaces(libc):
    """Enter new user + PID + mount namespaces. Returns in the child (C, PID 1 of the new namespace,
    its own /proc, no capabilities); the parent never returns. Raises Refused (in the caller,
    nothing changed) when the kernel does not allow them."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) != 0:
        raise Refused(f"unshare: {os.strerror(ctypes.get_errno())}")
    try:  # the same ids inside (root stays uid 0 there, but without any capability: see below)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as e:  # half made (a user namespace without ids): never carry on from here
        _refuse("namespaces", f"id maps: {e.strerror}")
    judge = os.getppid()
    r, w = os.pipe()
    child = os.fork()
    if child:
        os.close(w)
        ok = os.read(r, 1)  # C says whether its /proc and capabilities are in order
        if ok != b"1":
            os.waitpid(child, 0)
            sys.stderr.write("[grader fence] namespaces: the worker's setup failed\n")
            os._exit(EXIT_FENCE)
        _parent_waits(child, judge)
    os.close(r)
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.setsid()  # C's own session: the judge measures C, and 5.6 counts C's session
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise Refused(f"mount --make-rprivate /: {os.strerror(ctypes.get_errno())}")
        if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            raise Refused(f"mount /proc: {os.strerror(ctypes.get_errno())}")
        _drop_capabilities(libc)
    except (Refused, OSError) as e:
        sys.stderr.write(f"[grader fence] namespaces: {e}\n")
        os._exit(EXIT_FENCE)
    os.write(w, b"1")
    os.close(w)


# ----------------------------------------------------------------------------------------------
# 3. seccomp
# ----------------------------------------------------------------------------------------------

LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
ALLOW, KILL = 0x7FFF0000, 0x80000000


def _errno(e):
    return 0x00050000 | e


def _arg(i):
    return 16 + 8 * i  # low 32 bits of seccomp_data.args[i] (little endian; pid_t and int args)


def program(arch, own=None):
    """The filter as [(code, jt, jf, k)]. own: (pid, pgid) where no PID namespace fences the worker:
    the calls that name another process are then allowed only for 0, this process or its group."""
    m = {"x86_64": 0, "aarch64": 1}[arch]
    p = [(LD_ABS, 0, 0, 4), (JEQ, 1, 0, ARCHES[arch]), (RET, 0, 0, KILL), (LD_ABS, 0, 0, 0)]
    if arch == "x86_64":  # the x32 ABI's numbers
        p += [(JSET, 0, 1, 0x40000000), (RET, 0, 0, _errno(ENOSYS))]

    def rule(name, body):
        p.append((JEQ, 0, len(body), NR[name][m]))
        p.extend(body)

    def allow_if(conditions, errno=EPERM):
        """Allowed when one of the conditions (each a list of (arg, value) equalities) holds."""
        body = []
        for terms in conditions:
            n = 2 * len(terms) + 1
            for j, (a, v) in enumerate(terms):
                body += [(LD_ABS, 0, 0, _arg(a)), (JEQ, 0, n - 2 * j - 2, v & 0xFFFFFFFF)]
            body.append((RET, 0, 0, ALLOW))
        return body + [(RET, 0, 0, _errno(errno))]

    for name in ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "process_madvise", "pidfd_getfd",
                 "pidfd_send_signal", "perf_event_open", "setsid", "unshare", "setns"):
        rule(name, [(RET, 0, 0, _errno(EPERM))])
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"):  # glibc falls back to clone
        rule(name, [(RET, 0, 0, _errno(ENOSYS))])
    flags_arg = 0  # clone(flags, ...) on both
    rule("clone", [(LD_ABS, 0, 0, _arg(flags_arg)), (JSET, 1, 0, CLONE_NS_FLAGS), (RET, 0, 0, ALLOW),
                   (RET, 0, 0, _errno(EPERM))])
    rule("socket", [(LD_ABS, 0, 0, _arg(0)), (JEQ, 1, 0, 1), (RET, 0, 0, ALLOW),  # AF_UNIX == 1
                    (RET, 0, 0, _errno(EACCES))])
    if own is not None:
        pid, pgid = own
        me = [[(0, 0)], [(0, pid)]]  # pid 0: the caller itself
        rule("kill", allow_if([[(0, 0)], [(0, pid)], [(0, -pgid)], [(1, 0)]]))
        rule("tkill", allow_if([[(0, pid)]]))
        for name in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            rule(name, allow_if([[(0, pid)]]))
        for name in ("prlimit64", "sched_setparam", "sched_setscheduler", "sched_setaffinity", "sched_setattr",
                     "migrate_pages", "move_pages"):
            rule(name, allow_if(me))
        # which: PRIO_PROCESS 0 / PRIO_PGRP 1 (PRIO_USER 2 would reach every process of the uid);
        # ioprio: IOPRIO_WHO_PROCESS 1 / IOPRIO_WHO_PGRP 2 (IOPRIO_WHO_USER 3 refused)
        rule("setpriority", allow_if([[(0, 0), (1, 0)], [(0, 0), (1, pid)], [(0, 1), (1, 0)], [(0, 1), (1, pgid)]]))
        rule("ioprio_set", allow_if([[(0, 1), (1, 0)], [(0, 1), (1, pid)], [(0, 2), (1, 0)], [(0, 2), (1, pgid)]]))
    p.append((RET, 0, 0, ALLOW))
    return p


def install_seccomp(libc, prog):
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise Refused(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) != 0:  # SECCOMP_MODE_FILTER
        raise Refused(f"seccomp: {os.strerror(ctypes.get_errno())}")


# ----------------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------------

def _refuse(what, why):
    sys.stderr.write(f"[grader fence] {what} was promised but failed: {why}\n")
    sys.stderr.flush()
    os._exit(EXIT_FENCE)


def apply(params):
    """params (from the judge, grader/fence.py): {"cgroup": [lines] | None, "ns": "require"|"try"|"off",
    "seccomp": "require"|"try"|"off"}. Returns what is in force, in words."""
    params = params or {}
    done = []
    arch = platform.machine()
    if not sys.platform.startswith("linux") or not (params.get("cgroup") or params.get("ns", "off") != "off"
                                                    or params.get("seccomp", "off") != "off"):
        return "none"  # nothing promised (Windows, macOS, no /proc): not a single call made here
    if params.get("cgroup"):
        if not wait_for_cgroup(params["cgroup"]):
            _refuse("cgroup", "this process was not moved into its cgroup")
        done.append("cgroup")
    libc = _libc()
    in_ns = False
    mode = params.get("ns", "off")
    if mode != "off":
        try:
            namespaces(libc)
            in_ns = True
            done.append("namespaces")
        except Refused as e:
            if mode == "require":
                _refuse("namespaces", e)
            done.append(f"no namespaces ({e})")
    if not in_ns and params.get("seccomp", "off") != "off":
        try:  # a root worker without namespaces keeps its uid but loses every capability
            if os.geteuid() == 0:
                _drop_capabilities(libc)
        except (Refused, OSError) as e:
            if params.get("seccomp") == "require":
                _refuse("dropping capabilities", e)
    mode = params.get("seccomp", "off")
    if mode != "off":
        try:
            if arch not in ARCHES:
                raise Refused(f"no filter for {arch}")
            own = None if in_ns else (os.getpid(), os.getpgid(0))
            install_seccomp(libc, program(arch, own))
            done.append("seccomp" + ("" if in_ns else " (own process group)"))
        except Refused as e:
            if mode == "require":
                _refuse("seccomp", e)
            done.append(f"no seccomp ({e})")
    return ", ".join(done) or "none"


def probe():
    """Can this uid, on this kernel, have the namespaces and the filter? Run by the judge as
    `python -I -S worker_fence.py` (grader/fence.py) with the worker's uid; prints JSON."""
    out = {"ns": False, "seccomp": False, "why": ""}
    libc = _libc()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the namespaces in a child, so that this process can report
        os.close(r)
        try:
            namespaces(libc)  # its W half stays in waitpid and exits as C does
            with open("/proc/self/status") as f:
                ok = "NSpid:\t1\n" in f.read()
            os.write(w, b"1" if ok else b"0")
        except (Refused, OSError) as e:
            os.write(w, f"0{e}".encode()[:200])
        os._exit(0)
    os.close(w)
    got = os.read(r, 300)
    os.waitpid(pid, 0)
    out["ns"] = got == b"1"
    out["why"] = got[1:].decode("utf-8", "replace")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            install_seccomp(libc, program(platform.machine(), (os.getpid(), os.getpgid(0))))
            os.write(w, b"1")
        except (Refused, KeyError, OSError):
            os.write(w, b"0")
        os._exit(0)
    os.close(w)
    out["seccomp"] = os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    print(json.dumps(out))


if __name__ == "__main__":
    probe()
