"""Containment of the untrusted worker that does not depend on Landlock (trusted side).

Layer 2 of the trust model (grader/README.md). As root, every worker runs as its own unprivileged uid,
taken from a small range and held with a lock for the whole submission, so that "every process of
that uid" is exactly "everything this submission started": it is killed with kill(-1) from a helper
running as that uid before the submission's results are written, RLIMIT_NPROC counts only it, and
the kit, the outputs and other students' files are not writable for it (plain Unix permissions).
Its scratch folder is a size-limited tmpfs where mounting is allowed (a disk-usage monitor otherwise).

Without root, the judge becomes a child subreaper (Linux), so double-forked and setsid'ed
descendants of the worker re-parent to the judge and are found and killed when it closes the worker.
"""
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time

from grader import osfeatures

DEFAULT_UID_BASE = 1_879_048_192  # systemd's "unused" uid range: no account, no file owned by it
SLOTS = 64


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def uid_base(configured=None):
    """`configured` (Settings.worker_uid_base), else the uid of the account `e6grader` (made by
    gradescope/setup.sh), else a default in an unused range. Slot k runs as uid base + k, gid base + k."""
    if configured is not None:
        return int(configured)
    if not osfeatures.PWD:
        return DEFAULT_UID_BASE
    import pwd

    try:
        return pwd.getpwnam("e6grader").pw_uid
    except KeyError:
        return DEFAULT_UID_BASE


def user_layer_wanted(no_user):
    """no_user: Settings.no_user (GRADER_NO_USER=1)."""
    return osfeatures.user_layer_possible() and not no_user


def probe_user(python=sys.executable, base=None):
    """Can an unprivileged uid run this interpreter and import the packages the worker needs?
    Returns (True, "") or (False, why). Once per batch (cli.py); about 0.2 s."""
    uid = uid_base(base) + SLOTS - 1
    code = ("import importlib.util as u, numpy; import sys; "
            "sys.exit(0 if all(u.find_spec(m) for m in ('torch', 'matplotlib', 'PIL')) else 3)")
    try:
        r = subprocess.run([python, "-I", "-c", code], user=uid, group=uid, extra_groups=[], cwd="/",
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "HOME": "/"})
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"cannot start {python} as uid {uid}: {type(e).__name__}: {e}"
    if r.returncode != 0:
        tail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        return False, (f"an unprivileged user cannot run {python} with its packages ({tail[0][:200]}); "
                       f"install the kit's Python outside /root (e.g. .ci/run builds it in /var/cache)")
    return True, ""


class Slot:
    """One uid of the range, held (flock) by one judge at a time, machine-wide."""

    def __init__(self, base=None):
        import fcntl  # user_layer_possible() checked it

        # One place per machine, whatever TMPDIR a batch has: two batches must never share a uid.
        lock_dir = "/run/experiment6-grader" if os.path.isdir("/run") else \
            os.path.join(tempfile.gettempdir(), "experiment6-grader")
        try:
            os.mkdir(lock_dir, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(lock_dir)
        if st.st_uid != 0 or not os.path.isdir(lock_dir) or os.path.islink(lock_dir) or st.st_mode & 0o022:
            raise OSError(f"{lock_dir} is not a root-owned private folder")
        base = uid_base(base)
        for k in range(SLOTS):
            fd = os.open(os.path.join(lock_dir, f"slot{k}"),
                         os.O_RDWR | os.O_CREAT | osfeatures.O_NOFOLLOW | osfeatures.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid, self.gid = fd, base + k, base + k
            kill_uid(self.uid)  # leftovers of a judge that died without cleaning up
            return
        raise OSError(f"all {SLOTS} worker uids are in use")

    def release(self):
        kill_uid(self.uid)
        os.close(self.fd)


def _uid_pids(uid):
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1:2] in ([b"Z"], [b"X"]):
                        break  # dead already, waiting to be reaped: nothing left to kill
                    if line.startswith(b"Uid:"):
                        if str(uid).encode() in line.split()[1:]:
                            pids.append(int(name))
                        break
        except OSError:
            pass
    return pids


def tasks_of_uid(uid):
    """Threads + processes of a uid now: what RLIMIT_NPROC counts."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status", "rb") as f:
                    fields = dict(line.split(b":", 1) for line in f if b":" in line)
                if str(uid).encode() == fields[b"Uid"].split()[0]:
                    n += int(fields[b"Threads"])
            except (OSError, KeyError, ValueError):
                pass
    return n


def kill_uid(uid, rounds=50):
    """SIGKILL every process whose uid is `uid`: a forked helper takes that uid and calls kill(-1),
    which the kernel applies to every process the helper may signal, i.e. exactly that uid's.
    Repeated until /proc shows none (a fork racing the first round is caught by the next)."""
    for _ in range(rounds):
        if not _uid_pids(uid):
            return True
        pid = os.fork()
        if pid == 0:  # child: only syscalls, then _exit (the judge has threads)
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001
                os._exit(1)
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.02)
    return not _uid_pids(uid)


# ----------------------------------------------------------------------------------------------
# Without root: subreaper + descendants
# ----------------------------------------------------------------------------------------------

def become_subreaper():
    """PR_SET_CHILD_SUBREAPER (Linux >= 3.4): orphaned descendants re-parent to this process. Only
    where /proc lets kill_children find them again."""
    if not osfeatures.subreaper_possible():
        return False
    try:
        return _libc().prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children(pid):
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out = [int(x) for x in f.read().split()]
    except OSError:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                            out.append(int(name))
                except (OSError, ValueError, IndexError):
                    pass
    return out


def kill_children(keep=(), rounds=100):
    """SIGKILL and reap every child of this process (with a subreaper: every orphaned descendant
    too, as each killed one's children re-parent here). `keep`: pids not to touch."""
    if not osfeatures.PROC:
        return
    me = os.getpid()
    for _ in range(rounds):
        kids = [k for k in _children(me) if k not in keep]
        if not kids:
            return
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        for k in kids:
            try:
                os.waitpid(k, 0)
            except ChildProcessError:
                pass


# ----------------------------------------------------------------------------------------------
# Temp-space quota
# ----------------------------------------------------------------------------------------------

def mount_tmpfs(path, size_mb, uid, gid):
    """A private size-limited tmpfs on `path` (needs CAP_SYS_ADMIN). True on success."""
    if not osfeatures.LINUX:
        return False
    libc = _libc()
    opts = f"size={int(size_mb)}m,nr_inodes=65536,mode=0700,uid={uid},gid={gid}".encode()
    MS_NOSUID, MS_NODEV = 2, 4
    return libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0


def umount(path):
    try:
        _libc().umount2(os.fsencode(path), 2)  # MNT_DETACH
    except (OSError, AttributeError):
        pass


def usage_bytes(dir_fd, limit_entries=200_000):
    """Bytes allocated under an open directory, walked without following links; an inode flood
    (more than limit_entries) counts as over any quota."""
    total, n = 0, 0
    if isinstance(dir_fd, str):  # no *at() calls (Windows): walk the path
        for root, dirs, files in os.walk(dir_fd):
            for name in files:
                n += 1
                if n > limit_entries:
                    return float("inf")
                try:
                    total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
                except OSError:
                    pass
        return total
    for _root, dirs, files, rootfd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in files + dirs:
            n += 1
            if n > limit_entries:
                return float("inf")
            try:
                total += os.stat(name, dir_fd=rootfd, follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return total
