"""The judge's handle on the untrusted worker process (grader/worker.py): WorkerProcess.

One worker per submission serves requests one at a time. Each request has a wall-clock limit, and
the submission as a whole a total budget; on a timeout the worker and everything it started are
killed, on a crash the exit is recorded, and the next request starts a fresh worker (which imports
the submission again), so a crash fails only the checks that needed the answer. Everything coming
back is data: JSON parsed here, arrays read with allow_pickle=False after their zip and .npy headers
were checked, and re-validated by the checks.

Folders (one private root per submission, mode 711, owned by the judge):
  in/  inputs, written only by the judge: the submission's clean copy, worker.py, the kit's data/*.py,
       the .npz inputs, the checks' own files (Step 1 PNGs); never nets.py (see worker._grader_nets).
       The worker may read it, never write it.
  w/   the worker's scratch (cwd, TMPDIR, replies in w/x/). The judge never follows a path in it:
       it holds descriptors of w/ and w/x/ opened at creation and reads replies with O_NOFOLLOW |
       O_NONBLOCK relative to them, regular files only, size checked before reading.
"""
import io
import json
import os
import queue
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from pathlib import Path

import numpy as np

from grader import contain, osfeatures, protocol
from grader.settings import Settings

WORKER = Path(__file__).resolve().parent / "worker.py"
PROTOCOL = Path(__file__).resolve().parent / "protocol.py"  # protocol: copied next to worker.py
WORKER_ENV = "GRADER_WORKER"  # the worker's start-up parameters (JSON), see start()
KIT_DATA = Path(__file__).resolve().parents[1] / "data"  # the kit's data package, readable by submissions
MAX_REPLY = 4 * 2 ** 20  # bytes; a reply is a small JSON object
MAX_NPZ = 64 * 2 ** 20  # bytes of one .npz reply as stored (the largest real one is ~10 MB)
MAX_NPZ_ARRAYS = 128 * 2 ** 20  # bytes of all its arrays once decompressed, checked from the headers
MAX_NPZ_MEMBERS = 4096


# Where *at() calls exist (Linux, macOS, BSD) the judge works through directory descriptors taken
# when it made the folders, so the worker cannot redirect it by renaming or replacing a folder. On
# Windows (no Landlock, no separate user: "process isolation only") the same code runs on paths.
AT = osfeatures.DIR_FD
_DIRFLAGS = os.O_RDONLY | osfeatures.O_DIRECTORY | osfeatures.O_NOFOLLOW | osfeatures.O_CLOEXEC


def _opendir(path, parent=None):
    """A descriptor of the folder (or its path where descriptors cannot be used)."""
    if not AT:
        return str(path) if parent is None else os.path.join(parent, path)
    return os.open(path, _DIRFLAGS) if parent is None else os.open(path, _DIRFLAGS, dir_fd=parent)


def _at(d, name):
    """(path, kwargs) for an os call on `name` inside folder d (a descriptor or a path)."""
    return (name, {"dir_fd": d}) if isinstance(d, int) else (os.path.join(d, name), {})


def _open_nofollow(name, dir_fd, max_bytes):
    """Bytes of the regular file `name` in dir_fd, never following a link nor blocking on a FIFO or
    device; None if absent; CallFailed if it is not a regular file or larger than max_bytes."""
    flags = os.O_RDONLY | osfeatures.O_NOFOLLOW | osfeatures.O_NONBLOCK | osfeatures.O_CLOEXEC | osfeatures.O_BINARY
    try:
        path, kw = _at(dir_fd, name)
        fd = os.open(path, flags, **kw)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP: a symbolic link; others: whatever it is, it is not our reply
        raise CallFailed("protocol", f"{name}: not a regular file ({os.strerror(e.errno)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CallFailed("protocol", f"{name}: not a regular file")
        if st.st_size > max_bytes:
            raise CallFailed("protocol", f"{name}: too large ({st.st_size} bytes, at most {max_bytes})")
        chunks, left = [], max_bytes + 1
        while left > 0:
            b = os.read(fd, min(left, 2 ** 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew while read
            raise CallFailed("protocol", f"{name}: too large")
        return data
    finally:
        os.close(fd)


def _rmtree_at(parent, name, depth=0):
    """Remove `name` (a file or a whole folder) inside the folder descriptor `parent`, never following
    a link: what shutil.rmtree(name, dir_fd=parent) does from Python 3.11 on, for 3.9 and 3.10 too.
    Folders nested deeper than 100 levels are left (a planted tower must not exhaust descriptors)."""
    try:
        fd = os.open(name, _DIRFLAGS, dir_fd=parent)
    except OSError:  # not a folder (or a link to one): unlink it
        try:
            os.unlink(name, dir_fd=parent)
        except OSError:
            pass
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for n, is_dir in entries:
            if is_dir and depth < 100:
                _rmtree_at(fd, n, depth + 1)
            elif not is_dir:
                try:
                    os.unlink(n, dir_fd=fd)
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError:
        pass


def check_npz(data, max_total=MAX_NPZ_ARRAYS):
    """Validate an .npz held in memory WITHOUT decompressing its arrays: member names, the declared
    uncompressed sizes, and each .npy header (numeric dtype, shape whose size matches the member).
    Raises CallFailed("protocol") on anything else. Returns {name: (dtype, shape)}."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CallFailed("protocol", f"reply is not a valid .npz ({e})") from None
    if len(infos) > MAX_NPZ_MEMBERS:
        raise CallFailed("protocol", f"reply has {len(infos)} arrays")
    total, out, seen = 0, {}, set()
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename in seen or info.flag_bits & 0x1:
            raise CallFailed("protocol", f"unexpected member {info.filename[:80]!r} in the reply")
        seen.add(info.filename)
        total += info.file_size
        if total > max_total:
            raise CallFailed("protocol", f"reply arrays too large once decompressed (> {max_total} bytes)")
        try:
            with z.open(info) as f:  # reads (and inflates) only the small header
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
                else:
                    raise ValueError(f"npy version {version}")
                header_len = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as e:
            raise CallFailed("protocol", f"bad array header in the reply ({type(e).__name__}: {e})"[:300]) from None
        if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
            raise CallFailed("protocol", f"unexpected array type {dtype}")
        n = 1
        for d in shape:
            n *= int(d)
        if n * dtype.itemsize + header_len != info.file_size:
            raise CallFailed("protocol", f"array {info.filename[:80]!r}: header does not match its size")
        out[info.filename[:-4]] = (dtype, tuple(shape))
    return out


class CallFailed(Exception):
    """kind: 'error' (student code raised), 'missing', 'crashed', 'timeout', 'import_*', 'protocol', 'malformed'
    (a reply that does not follow grader/protocol.py: the submission tampered with the worker)."""

    def __init__(self, kind, message, detail=""):
        super().__init__(message)
        self.kind, self.message, self.detail = kind, message, detail


def protocol_import(value):
    """The import reply, validated against grader/protocol.py (CallFailed "malformed" otherwise)."""
    try:
        return protocol.validate("import", value).reported
    except protocol.Malformed as e:
        raise CallFailed("malformed", f"import: {e}") from None


class CappedLog:
    """Keeps the first and last few KB of a stream and counts the rest, so a flood cannot hurt."""

    def __init__(self, head=4096, tail=4096):
        self.head, self.tail_max, self.total = bytearray(), tail, 0
        self.head_max = head
        self.tail = deque()
        self.tail_len = 0
        self.lock = threading.Lock()

    def feed(self, chunk):
        with self.lock:
            self.total += len(chunk)
            room = self.head_max - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail.append(bytes(chunk))
                self.tail_len += len(chunk)
                while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_max:
                    self.tail_len -= len(self.tail.popleft())

    def text(self, limit=1500):
        with self.lock:
            tail = b"".join(self.tail)[-self.tail_max:]
            shown = len(self.head) + len(tail)
            s = self.head.decode("utf-8", "replace")
            if self.total > shown:
                s += f"\n[... {self.total - shown} bytes omitted ...]\n"
            s += tail.decode("utf-8", "replace")
        return s if len(s) <= limit else "..." + s[-limit:]


class WorkerProcess:
    """The worker process of one submission, as the judge drives it: started, restarted, sent requests
    and read replies from, killed (with everything it started), its folders removed."""

    def __init__(self, submission, settings=None):
        self.settings = (settings or Settings()).resolved()  # the batch's, from the judge (grader/settings.py)
        self.timeout = float(self.settings.timeout)  # per request, the import included
        self.budget = float(self.settings.budget)  # total seconds for the whole submission
        self.deadline = None
        self.budget_spent = False
        self.scratch_mb = self.settings.scratch_mb
        self.proc = None
        self.import_info = None  # reply to the first successful import
        self.import_failure = None  # CallFailed: the submission cannot be imported at all
        self.restarts = 0
        self.log = CappedLog()
        self.import_facts = {}  # what the judge measured about the first import (grader/hygiene.py)
        self.module_code = None  # set when the file's module-level code failed, hung or trained
        self.incidents = []  # "crashed" / "timeout" during checks, for the status column
        self._n = 0
        self._runs = 0
        self._pending, self._done = {}, {}  # request id -> (op, args, timeout, what, process) / reply
        self._old = []  # earlier worker processes (their reader threads may still wait on orphans)
        self.subreaper = contain.become_subreaper()
        self.slot = None
        if self.settings.contain == "user":  # decided once per batch by cli.py (probe)
            try:
                self.slot = contain.Slot(self.settings.worker_uid_base)
            except OSError:  # no uid free: `protection` (results.json) then shows no separate uid
                pass
        self.slot_uid = self.slot.uid if self.slot else None
        owner = (self.slot.uid, self.slot.gid) if self.slot else None
        # See the module docstring: root/in (judge writes) and root/w (worker writes).
        self.root = Path(tempfile.mkdtemp(prefix="e6w-"))
        os.chmod(self.root, 0o711)
        self.inputs = self.root / "in"  # in/: inputs, also where checks put their own files (Step 1)
        self.inputs.mkdir()
        os.chmod(self.inputs, 0o755)
        self.scratch = self.root / "w"
        self.scratch.mkdir(mode=0o700)
        self.quota = "none"
        if owner and contain.mount_tmpfs(self.scratch, self.scratch_mb, *owner):
            self.quota = f"tmpfs {self.scratch_mb} MB"
        elif owner:
            os.chown(self.scratch, *owner)
        self._mounted = self.quota != "none"
        self._sfd = _opendir(self.scratch)
        self._infd = _opendir(self.inputs)
        for d in ("x", "mpl", "tmp"):
            path, kw = _at(self._sfd, d)
            os.mkdir(path, 0o700, **kw)
            if owner:
                os.chown(path, *owner, follow_symlinks=False, **kw)
        self.exchange = self.scratch / "x"
        self._xfd = _opendir("x", self._sfd)
        if self.quota == "none":
            self.quota = f"monitor {self.scratch_mb} MB"
        # The worker runs copies made here, so it needs no access to the kit or the TA's folders.
        self.submission = self._copy_in(submission, "submission.py")
        # Companions grader/sources.py writes next to the clean copy: the file's imports alone (warm-up
        # before the measured import) and definitions-only copies (graded if module-level code fails).
        src_dir = Path(submission).parent
        for name in ("warmup.py", "definitions.py", "definitions_strict.py", "definitions.json"):
            if (src_dir / name).is_file():
                self._copy_in(src_dir / name, name)
        self.warmup = Path(self.submission).with_name("warmup.py")
        self.definitions = [str(self.inputs / n) for n in ("definitions.py", "definitions_strict.py")
                            if (src_dir / n).is_file()]
        # The kit's `data` package (data/*.py), importable read-only by submissions: copied in, so that
        # a worker running as its own uid needs no access to the kit itself.
        path, kw = _at(self._infd, "kitdata")
        os.mkdir(path, 0o755, **kw)
        kd = _opendir("kitdata", self._infd)
        try:
            path, kw = _at(kd, "data")
            os.mkdir(path, 0o755, **kw)
        finally:
            if isinstance(kd, int):
                os.close(kd)
        for f in sorted(KIT_DATA.glob("*.py")):
            self._copy_in(f, os.path.join("kitdata", "data", f.name))
        self.kit_data = str(self.inputs / "kitdata" / "data")
        # grader/nets.py is NOT copied in: the grader's networks reach the worker as source text with
        # the first Step 4/5 request only (grader/check_plugin.py), never as a file it could read earlier.
        self.worker_py = self._copy_in(WORKER, "worker.py")
        self._copy_in(PROTOCOL, "protocol.py")  # protocol: the declared requests and replies (grader/protocol.py)

    def _copy_in(self, src, name):
        data = Path(src).read_bytes()
        path, kw = _at(self._infd, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | osfeatures.O_NOFOLLOW
                     | osfeatures.O_BINARY, 0o644, **kw)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o644)  # whatever the umask: the worker's uid must read it
            f.write(data)
        return str(self.inputs / name)

    @property
    def protection(self):
        """What contains this worker, beyond running in its own process (for results.json)."""
        parts = []
        sb = (self.import_info or {}).get("sandbox") or ""
        if sb.startswith("landlock"):
            parts.append(sb)
        if self.slot_uid is not None:
            parts.append(f"separate uid {self.slot_uid}")
        elif self.subreaper:
            parts.append("subreaper")
        return parts

    # ------------------------------------------------------------------ process management
    def start(self):
        """Start the process now (torch import overlaps with the judge's own start-up)."""
        if self.proc is not None:
            return
        if self.budget_spent or (self.deadline is not None and time.monotonic() >= self.deadline):
            raise self._budget_failure("start-up")
        if self.deadline is None and self.budget:
            self.deadline = time.monotonic() + self.budget
        self._runs += 1
        # A fresh name each run: an earlier run of the student code may have planted anything.
        name = f"cwd{self._runs}-{secrets.token_hex(4)}"
        path, kw = _at(self._sfd, name)
        os.mkdir(path, 0o700, **kw)
        if self.slot:
            os.chown(path, self.slot.uid, self.slot.gid, follow_symlinks=False, **kw)
            self._share_inputs()
        self.cwd = self.scratch / name
        self._cwdfd = _opendir(name, self._sfd)
        self.mpl = self.scratch / "mpl"
        # The worker's start-up parameters, one JSON variable (grader/worker.py reads it before any student code).
        start = {"sandbox_dir": str(self.scratch), "read_paths": [str(self.inputs)],  # not nets.py: worker._grader_nets
                 "kit_data": self.kit_data, "landlock": not self.settings.no_landlock,
                 "memory_mb": self.settings.memory_mb or 0, "fsize_mb": self.scratch_mb, "nproc": 0}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GRADER_", "PYTEST"))}
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg", MPLCONFIGDIR=str(self.mpl),
                   TMPDIR=str(self.scratch / "tmp"),
                   PYTHONIOENCODING="utf-8:replace", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
                   TQDM_DISABLE="1")
        kw = osfeatures.new_group_kwargs()
        if self.slot:  # layer 2: its own uid, no groups; RLIMIT_NPROC then counts only this submission
            kw.update(user=self.slot.uid, group=self.slot.gid, extra_groups=[])
            env.update(HOME=str(self.scratch / "tmp"))
            start["nproc"] = 256
        elif osfeatures.PROC and osfeatures.RESOURCE and not osfeatures.is_root():
            # Same uid as the TA: RLIMIT_NPROC counts all of the TA's tasks, so allow what runs now + 512
            # (a fork bomb stops there). Root ignores RLIMIT_NPROC, hence only without root.
            start["nproc"] = contain.tasks_of_uid(os.getuid()) + 512
        env[WORKER_ENV] = json.dumps(start)
        self.proc = subprocess.Popen([sys.executable, "-I", "-X", "utf8", self.worker_py], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd, env=env,
                                     **kw)
        if self.quota.startswith("monitor"):
            threading.Thread(target=self._monitor, args=(self.proc,), daemon=True).start()
        self.token = secrets.token_hex(16).encode()
        self.replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self.proc, self.replies), daemon=True).start()
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        self._write(self.token + b"\n")
        self._ready = False

    def _share_inputs(self):
        """Inputs the checks wrote into in/ (e.g. Step 1's mkdtemp folders, mode 700) readable by the
        worker's uid. in/ is written only by the judge, so walking it is safe."""
        for _root, dirs, files, rootfd in os.fwalk(".", dir_fd=self._infd, follow_symlinks=False):
            for n in dirs:
                self._fchmod(n, rootfd, 0o755)
            for n in files:
                self._fchmod(n, rootfd, 0o644)

    @staticmethod
    def _fchmod(name, dir_fd, mode):
        try:
            fd = os.open(name, os.O_RDONLY | osfeatures.O_NOFOLLOW | osfeatures.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _monitor(self, proc):
        """Without a tmpfs quota: kill the worker once its scratch folder holds more than the quota
        (RLIMIT_FSIZE bounds every single file meanwhile)."""
        while self.proc is proc and proc.poll() is None:
            try:
                used = contain.usage_bytes(self._sfd)
            except OSError:
                used = 0
            if used > self.scratch_mb * 2 ** 20:
                self.log.feed(f"\n[grader] scratch space over {self.scratch_mb} MB: worker stopped\n".encode())
                self._kill_tree(proc)
                return
            time.sleep(0.5)

    def _read_replies(self, proc, q):
        f = proc.stdout
        while True:
            line = f.readline(MAX_REPLY)
            if not line:
                q.put(None)
                return
            if not line.endswith(b"\n"):  # over-long: not our protocol
                q.put(("protocol", "reply too long"))
                return
            tok, _, body = line.rstrip(b"\n").partition(b" ")
            if tok == self.token:
                try:
                    r = json.loads(body.decode("utf-8"))
                    protocol.check_envelope(r)  # protocol: the reply line as declared, or "malformed"
                    q.put(r)
                except protocol.Malformed as e:  # protocol
                    q.put(("malformed", str(e)[:300]))  # protocol
                except (ValueError, RecursionError, MemoryError):  # e.g. 100,000 nested lists
                    q.put(("protocol", "unparsable reply"))

    def _read_log(self, proc):
        while True:
            chunk = proc.stderr.read1(65536) if hasattr(proc.stderr, "read1") else proc.stderr.read(65536)
            if not chunk:
                return
            self.log.feed(chunk)

    def _write(self, data):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _kill_tree(self, p):
        """SIGKILL the worker and everything it started that we can find: its process group, every
        process of its uid (layer 2), every orphan re-parented to this subreaper judge."""
        osfeatures.kill_tree(p)
        if self.slot:
            contain.kill_uid(self.slot.uid)

    def kill(self):
        p = self.proc
        if p is None:
            return
        self.proc = None
        self._kill_tree(p)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.subreaper:
            contain.kill_children()
        self._wipe_scratch()
        # Only our writing end is closed here. Closing stdout/stderr would wait for the reader threads,
        # which wait for EOF, which an orphan still holding the pipe would never send: the threads are
        # daemons and end by themselves once the last writer is gone.
        try:
            p.stdin.close()
        except OSError:
            pass
        self._old.append(p)

    def close(self):
        self.kill()
        if self.subreaper:
            contain.kill_children()
        for fd in (getattr(self, "_cwdfd", None), self._xfd, self._sfd, self._infd):
            if isinstance(fd, int):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._cwdfd = None
        self._xfd = self._sfd = self._infd = None
        if self._mounted:
            contain.umount(self.scratch)
            self._mounted = False
        shutil.rmtree(self.root, ignore_errors=True)
        if self.slot:
            self.slot.release()
            self.slot = None

    def cwd_files(self):
        """Names in the worker's working directories (one per worker start), for check 5.6: listed
        through the scratch descriptor, never following a link the worker may have planted."""
        out = []
        if self._sfd is None:
            return out
        try:
            names = sorted(n for n in os.listdir(self._sfd) if n.startswith("cwd"))
        except OSError:
            return out
        for n in names:
            try:
                path, kw = _at(self._sfd, n)
                fd = os.open(path, _DIRFLAGS, **kw) if isinstance(self._sfd, int) else path
                try:
                    out += sorted(os.listdir(fd))
                finally:
                    if isinstance(fd, int):
                        os.close(fd)
            except OSError:
                pass
        return out

    def _wipe_scratch(self):
        """After a worker is gone: what it left in its scratch (old cwd, temp files) would count against
        the quota of the next one. Removed through the held descriptor, never following links."""
        if self._sfd is None:
            return
        try:
            names = os.listdir(self._sfd)
        except OSError:
            return
        for n in names:
            if n in ("x", "mpl"):
                continue
            try:
                path, kw = _at(self._sfd, n)
                if not kw:  # a path (no *at calls)
                    if stat.S_ISDIR(os.stat(path, follow_symlinks=False).st_mode):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                else:
                    _rmtree_at(self._sfd, n)
            except OSError:
                pass
        path, kw = _at(self._sfd, "tmp")
        try:
            os.mkdir(path, 0o700, **kw)
        except FileExistsError:
            pass
        except OSError:
            return
        if self.slot:
            try:
                os.chown(path, self.slot.uid, self.slot.gid, follow_symlinks=False, **kw)
            except OSError:
                pass

    def _budget_failure(self, what):
        self.budget_spent = True
        return CallFailed("timeout", f"{what}: the submission used up its total time budget "
                                     f"({self.budget:.0f} s for all checks together)")

    def _wait_reply(self, timeout, what):
        limit = timeout
        if self.deadline is not None:
            limit = min(timeout, max(0.0, self.deadline - time.monotonic()))
        try:
            r = self.replies.get(timeout=limit)
        except queue.Empty:
            self.kill()
            self.incidents.append("timeout")
            if limit < timeout:
                raise self._budget_failure(what) from None
            raise CallFailed("timeout", f"{what}: no answer within {timeout:.0f} s") from None
        if r is None or isinstance(r, tuple):
            code = None
            if self.proc is not None:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
            if not (isinstance(r, tuple) and r[0] == "malformed"):  # protocol: a forged reply is not a crash
                self.incidents.append("crashed")
            if isinstance(r, tuple):
                raise CallFailed(r[0], f"{what}: {r[1]}")  # protocol: r[0] is "protocol" or "malformed"
            raise CallFailed("crashed", f"{what}: the process exited (exit code {code})", self.log.text())
        return r

    # ------------------------------------------------------------------ requests
    def ensure_imported(self):
        if self.import_failure is not None:
            raise self.import_failure
        if self.proc is not None and self._ready:
            return self.import_info
        if self.import_info is None:
            return self._first_import()
        self._start_ready()
        r = self._import(self.submission)
        self.restarts += 1
        return r

    def _start_ready(self):
        self.start()
        self._wait_reply(max(self.timeout, 120.0), "start-up")
        self._ready = True

    def _import(self, path):
        return protocol_import(self._request("import", {"submission": path}, self.timeout, "import"))  # protocol

    def _first_import(self):
        """Import the file, measuring what the import does (grader/hygiene.py). If it fails, hangs or
        trains, grade its definitions instead (self.definitions: copies made by grader/sources.py) in a
        fresh worker, and keep what happened in self.module_code for check 5.6. Only when the
        definitions alone do not import either is the submission an import failure."""
        from grader import hygiene

        original, failure, r, warm = self.submission, None, None, False
        incidents = len(self.incidents)  # a hang or crash of this import is not a check's incident
        try:
            self._start_ready()
            if self.warmup.is_file():
                try:  # the libraries get imported here, so the measured import below is the file's own code
                    self._request("preload", {"submission": str(self.warmup)}, self.timeout, "import")
                    warm = True
                except CallFailed:
                    if self.proc is None:  # the warm-up hung or crashed: a fresh worker, without it
                        self._start_ready()
            pid = self.proc.pid
            before, t0 = hygiene.snapshot(pid), time.perf_counter()
            try:
                r = self._import(original)
            finally:
                wall = time.perf_counter() - t0
                after = hygiene.snapshot(pid)
                self.import_facts = hygiene.facts(before, after, r, wall, warm, files=self.cwd_files())
        except CallFailed as e:
            failure = e
        reasons = hygiene.problems(self.import_facts) if failure is None else []
        if failure is None and not reasons:
            self.import_info = r
            return r
        self.module_code = {"failure": failure, "reasons": reasons, "graded": None, "original": original}
        for defs in self.definitions:
            self.kill()
            try:
                self._start_ready()
                r2 = self._import(defs)
            except CallFailed:
                continue
            self.submission, self.import_info = defs, r2
            self.module_code["graded"] = defs
            del self.incidents[incidents:]
            return r2
        if failure is None:  # it imported (doing what it should not), its definitions alone do not: grade it as is
            self.kill()
            try:
                self._start_ready()
                self.import_info = self._import(original)
                del self.incidents[incidents:]
                return self.import_info
            except CallFailed as e:
                failure = e
        self.module_code = None
        kind = {"error": "import_error", "missing": "import_error", "malformed": "import_error"}.get(  # protocol
            failure.kind, failure.kind)
        self.import_failure = CallFailed(kind, failure.message, failure.detail)
        self.import_failure.at_import = True
        raise self.import_failure from None

    def _request(self, op, args, timeout, what):
        return self.receive(self.send(op, args, timeout, what, importing=(op in ("import", "preload"))))

    def send(self, op, args, timeout=None, what=None, importing=False):
        """Queue a request without waiting (the judge computes references meanwhile)."""
        if not importing:
            self.ensure_imported()
        if self.slot:
            self._share_inputs()  # whatever the checks just wrote into in/
        self._n += 1
        self._pending[self._n] = (op, args, timeout or self.timeout, what or op, self.proc)
        self._write(json.dumps({"id": self._n, "op": op, "args": args}).encode() + b"\n")
        return self._n

    def receive(self, rid):
        """The reply to request rid. Each reply may take up to its timeout after the previous one."""
        while rid not in self._done:
            op, args, timeout, what, proc = self._pending[rid]
            if proc is not self.proc or proc is None:  # lost when an earlier request killed the worker
                del self._pending[rid]
                rid = self.send(op, args, timeout, what)
                continue
            oldest = min(i for i, e in self._pending.items() if e[4] is self.proc)  # rid is one of them
            try:
                r = self._wait_reply(self._pending[oldest][2], self._pending[oldest][3])
            except CallFailed as e:  # the worker died working on the oldest pending request
                self._done[oldest] = e
                del self._pending[oldest]
                continue
            if not isinstance(r, dict) or r.get("id") not in self._pending:
                self.kill()
                self._done[oldest] = CallFailed("protocol", f"{what}: unexpected reply")
                del self._pending[oldest]
                continue
            self._done[r["id"]] = r
            del self._pending[r["id"]]
        r = self._done.pop(rid)
        if isinstance(r, CallFailed):
            raise r
        if not r.get("ok"):
            err = r.get("error") if isinstance(r.get("error"), dict) else {}
            kind = "missing" if err.get("type") == "Missing" else "error"
            raise CallFailed(kind, f"{err.get('type', '?')}: {err.get('message', '')}"
                             if kind == "error" else str(err.get("message", "")),
                             str(err.get("traceback", "")))
        return r.get("value")

    # ------------------------------------------------------------------ arrays
    @staticmethod
    def _name(name):
        if not name or "/" in name or os.sep in name or "\0" in name or name in (".", ".."):
            raise ValueError(f"bad exchange file name {name!r}")
        return name

    def path(self, name):
        """Where the worker is to write its output `name` (read back with get / read_reply)."""
        return str(self.exchange / self._name(name))

    def put(self, name, **arrays):
        """Write an input .npz into in/ (not writable by the worker); return its path."""
        name = self._name(name)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | osfeatures.O_NOFOLLOW | osfeatures.O_CLOEXEC
        for _ in range(3):  # in/ is the judge's alone; the retry only covers a layer-less worker racing us
            path, kw = _at(self._infd, name)
            try:
                os.unlink(path, **kw)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(path, flags | osfeatures.O_BINARY, 0o644, **kw)
                break
            except FileExistsError:
                continue
        else:
            raise CallFailed("protocol", f"cannot write the input {name}")
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o644)
            f.write(buf.getbuffer())
        return str(self.inputs / name)

    def read_reply(self, path, max_bytes):
        """Bytes of a file the worker wrote at self.path(name): no links, regular file, at most
        max_bytes (CallFailed otherwise); None if there is none."""
        name = os.path.basename(os.fspath(path))
        if os.path.abspath(os.fspath(path)) != os.path.abspath(self.path(name)):
            raise CallFailed("protocol", "not a path in the exchange folder")
        return _open_nofollow(name, self._xfd, max_bytes)

    def get(self, name):
        data = self.read_reply(self.path(name), MAX_NPZ)
        if data is None:
            return {}
        check_npz(data)  # sizes, dtypes and shapes from the headers, before anything is inflated
        out = {}
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                for k in z.files:
                    out[k] = z[k]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise CallFailed("protocol", f"unreadable reply ({type(e).__name__}: {e})"[:300]) from None
        try:
            path, kw = _at(self._xfd, name)
            os.unlink(path, **kw)
        except OSError:
            pass
        return out
