"""The judge's handle on the untrusted worker process (grader/worker.py): WorkerProcess.

One worker per submission serves requests one at a time. Each request has a wall-clock limit, and
the submission as a whole a total budget; on a timeout the worker and everything it started are
killed, on a crash the exit is recorded, and the next request starts a fresh worker (which imports
the submission again), so a crash fails only the checks that needed the answer. Everything coming
back is data: JSON lines after a random token on the worker's original stdout, arrays read by the
submission's Sandbox (grader/sandbox.py), re-validated by the checks.

Where its parts live: the folders, uid slot and scratch quota in grader/sandbox.py, the safe file
reads in grader/safefiles.py, the first import (definitions-only fallback, hygiene) in
grader/import_policy.py. What contained the worker (`protection`) is what this side set up and
checked, never what the worker says about itself.
"""
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections import deque

from grader import fence, osfeatures, protocol  # fence: grader/fence.py (namespaces, seccomp, cgroup)
from grader.import_policy import first_import
from grader.safefiles import CallFailed, check_npz  # noqa: F401  (checks and tests import them from here)
from grader.sandbox import Sandbox, landlock_abi, tasks_of_uid
from grader.settings import Settings

WORKER_ENV = "GRADER_WORKER"  # the worker's start-up parameters (JSON), see start()
MAX_REPLY = 4 * 2 ** 20  # bytes; a reply is a small JSON object
SANDBOX_REFUSED = 75  # the worker's exit code when it could not apply the Landlock it was told to (worker.py)


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
    and read replies from, killed (with everything it started); its Sandbox removed at close()."""

    def __init__(self, submission, settings=None, record=None):
        self.settings = (settings or Settings()).resolved()  # the batch's, from the judge (grader/settings.py)
        self.timeout = float(self.settings.timeout)  # per request, the import included
        self.budget = float(self.settings.budget)  # total seconds for the whole submission
        self.scratch_mb = self.settings.scratch_mb
        self.deadline = None
        self.budget_spent = False
        self.proc = None
        self.log = CappedLog()
        self.restarts = 0
        self.incidents = []  # "crashed" / "timeout" during checks, for the status column
        self.import_info = None  # reply to the first successful import
        self.import_failure = None  # CallFailed: the submission cannot be imported at all
        self.import_facts = {}  # what the judge measured about the first import (grader/hygiene.py)
        self.module_code = None  # set when the file's module-level code failed, hung or trained
        self._n = 0
        self._pending, self._done = {}, {}  # request id -> (op, args, timeout, what, process) / reply
        self._old = []  # earlier worker processes (their reader threads may still wait on orphans)
        self._ready = False
        self.subreaper = become_subreaper()
        # Landlock as the judge established it: its own probe of the kernel; every worker start is told
        # to apply it or exit before any student code runs (worker.py), so it holds for every start.
        self.landlock_abi = 0 if self.settings.no_landlock else landlock_abi()
        self.sandbox = Sandbox(submission, self.settings)
        if record is not None:  # for whoever must clean up if this judge is killed (cli.py's backstop)
            self.sandbox.write_record(record)
        self.submission = self.sandbox.submission  # the file imported: the definitions-only copy after a fallback
        self.inputs = self.sandbox.inputs  # where checks may put their own input files (Step 1)
        self.slot_uid = self.sandbox.uid
        self.fence = fence.Fence(self.settings, self.slot_uid)  # fence hook: cgroup or memory watchdog
        self.quota = self.sandbox.quota

    # ------------------------------------------------------------------ what the checks use of the sandbox
    def put(self, name, **arrays):
        return self.sandbox.put(name, **arrays)

    def path(self, name):
        return self.sandbox.path(name)

    def get(self, name):
        return self.sandbox.get(name)

    def read_reply(self, path, max_bytes):
        return self.sandbox.read_reply(path, max_bytes)

    def cwd_files(self):
        return self.sandbox.cwd_files()

    @property
    def protection(self):
        """What contained this worker beyond its own process (results.json): what the judge set up and
        checked itself, never the worker's reply."""
        parts = []
        if self.landlock_abi:
            parts.append(f"landlock ABI {self.landlock_abi}")
        if self.slot_uid is not None:
            parts.append(f"separate uid {self.slot_uid}")
        elif self.subreaper:
            parts.append("subreaper")
        return parts + self.fence.protection()  # fence hook: what the judge verified itself

    # ------------------------------------------------------------------ process management
    def start(self):
        """Start the process now (torch import overlaps with the judge's own start-up)."""
        if self.proc is not None:
            return
        if self.budget_spent or (self.deadline is not None and time.monotonic() >= self.deadline):
            raise self._budget_failure("start-up")
        if self.deadline is None and self.budget:
            self.deadline = time.monotonic() + self.budget
        sb = self.sandbox
        self.cwd = sb.new_cwd()
        # The worker's start-up parameters, one JSON variable (grader/worker.py reads it before any student code).
        start = {"sandbox_dir": str(sb.scratch), "read_paths": [str(sb.inputs)],  # not nets.py: worker._grader_nets
                 "kit_data": sb.kit_data, "landlock": "required" if self.landlock_abi else False,
                 "memory_mb": self.settings.memory_mb or 0, "fsize_mb": self.scratch_mb, "nproc": 0}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GRADER_", "PYTEST"))}
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg", MPLCONFIGDIR=str(sb.scratch / "mpl"),
                   TMPDIR=str(sb.scratch / "tmp"),
                   PYTHONIOENCODING="utf-8:replace", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
                   TQDM_DISABLE="1")
        kw = osfeatures.new_group_kwargs()
        if sb.uid is not None:  # layer 2: its own uid, no groups; RLIMIT_NPROC then counts only this submission
            kw.update(user=sb.uid, group=sb.gid, extra_groups=[])
            env.update(HOME=str(sb.scratch / "tmp"))
            start["nproc"] = 256
        elif osfeatures.PROC and osfeatures.RESOURCE and not osfeatures.is_root():
            # Same uid as the TA: RLIMIT_NPROC counts all of the TA's tasks, so allow what runs now + 512
            # (a fork bomb stops there). Root ignores RLIMIT_NPROC, hence only without root.
            start["nproc"] = tasks_of_uid(os.getuid()) + 512
        start["fence"] = self.fence.worker_params(sys.executable, sb.worker_fence)  # fence hook
        env[WORKER_ENV] = json.dumps(start)
        # ---- the slot's process is started here (hooks that confine it further go next to this call)
        self.proc = subprocess.Popen([sys.executable, "-I", "-X", "utf8", sb.worker_py], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd, env=env,
                                     **kw)
        self.fence.started(self.proc, self._kill_tree, self.log.feed)  # fence hook: its cgroup, or the memory watchdog
        if not sb.mounted:
            threading.Thread(target=self._monitor, args=(self.proc,), daemon=True).start()
        self.token = secrets.token_hex(16).encode()
        self.replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self.proc, self.replies), daemon=True).start()
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        self._write(self.token + b"\n")
        self._ready = False

    def start_ready(self):
        """Start a worker and wait for its first line, sent before any student code runs."""
        self.start()
        try:
            r = self._wait_reply(max(self.timeout, 120.0), "start-up")
        except CallFailed as e:
            if e.kind == "crashed" and getattr(e, "exit_code", None) == SANDBOX_REFUSED:
                raise CallFailed("sandbox", f"the worker could not apply Landlock ABI {self.landlock_abi} and "
                                 "refused to run the submission (GRADER_NO_LANDLOCK=1 turns Landlock off)",
                                 e.detail) from None
            raise
        if self.landlock_abi and not (isinstance(r, dict) and str(r.get("sandbox")).startswith("landlock")):
            self.kill()  # its first line, before student code, must confirm what it was told to apply
            raise CallFailed("sandbox", f"the worker did not confirm Landlock ABI {self.landlock_abi}")
        broken = self.fence.verify(self.proc.pid)  # fence hook: fail closed when a promised fence is missing
        if broken:
            self.kill()
            raise CallFailed("crashed", f"start-up: {broken}")
        self._ready = True
        return r

    def _monitor(self, proc):
        """Without a tmpfs quota: kill the worker once its scratch folder holds more than the quota
        (RLIMIT_FSIZE bounds every single file meanwhile)."""
        while self.proc is proc and proc.poll() is None:
            try:
                used = self.sandbox.usage()
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
                    protocol.check_envelope(r)  # the reply line as grader/protocol.py declares it, or "malformed"
                    q.put(r)
                except protocol.Malformed as e:
                    q.put(("malformed", str(e)[:300]))
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
        self.sandbox.kill_all()

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
            kill_children()
        self.sandbox.wipe_scratch()
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
            kill_children()
        self.sandbox.close()
        self.fence.close()  # fence hook: its cgroup

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
            if not (isinstance(r, tuple) and r[0] == "malformed"):  # a forged reply is not a crash
                self.incidents.append("crashed")
            if isinstance(r, tuple):
                raise CallFailed(r[0], f"{what}: {r[1]}")  # r[0]: "protocol" or "malformed"
            e = CallFailed("crashed", f"{what}: the process exited (exit code {code})", self.log.text())
            e.exit_code = code
            raise e
        return r

    # ------------------------------------------------------------------ requests
    def ensure_imported(self):
        if self.import_failure is not None:
            raise self.import_failure
        if self.proc is not None and self._ready:
            return self.import_info
        if self.import_info is None:
            return first_import(self)  # grader/import_policy.py
        self.start_ready()
        r = self.request("import", {"submission": self.submission}, "import")
        self.restarts += 1
        return r

    def request(self, op, args, what):
        """Send one request and wait for its reply (the import and the warm-up: no import first)."""
        r = self.receive(self.send(op, args, self.timeout, what, importing=(op in ("import", "preload"))))
        return protocol_import(r) if op == "import" else r

    def send(self, op, args, timeout=None, what=None, importing=False):
        """Queue a request without waiting (the judge computes references meanwhile)."""
        if not importing:
            self.ensure_imported()
        self.sandbox.share_inputs()  # whatever the checks just wrote into in/
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


# ----------------------------------------------------------------------------------------------
# Without root: the judge as a subreaper, so detached descendants of the worker come back to it
# ----------------------------------------------------------------------------------------------

def become_subreaper():
    """PR_SET_CHILD_SUBREAPER (Linux >= 3.4): orphaned descendants re-parent to this process. Only
    where /proc lets kill_children find them again."""
    if not osfeatures.subreaper_possible():
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
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
    import signal

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
