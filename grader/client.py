"""Judge-side handle on the untrusted worker process (grader/worker.py).

One worker per submission serves requests one at a time. Each request has a wall-clock limit; on a
timeout the whole process group is killed, on a crash the exit is recorded, and the next request
starts a fresh worker (which imports the submission again), so a crash fails only the checks that
needed the answer. Everything coming back is data: JSON parsed here, arrays read with
allow_pickle=False and re-validated by the checks.
"""
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

WORKER = Path(__file__).resolve().parent / "worker.py"
KIT_DATA = Path(__file__).resolve().parents[1] / "data"  # the kit's data package, readable by submissions
MAX_REPLY = 4 * 2 ** 20  # bytes; a reply is a small JSON object
MAX_NPZ = 256 * 2 ** 20


class CallFailed(Exception):
    """kind: 'error' (student code raised), 'missing', 'crashed', 'timeout', 'import_*', 'protocol'."""

    def __init__(self, kind, message, detail=""):
        super().__init__(message)
        self.kind, self.message, self.detail = kind, message, detail


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


class Worker:
    def __init__(self, submission, reference, timeout=60.0, memory_mb=4096, import_timeout=None):
        self.submission, self.reference = str(Path(submission).resolve()), str(Path(reference).resolve())
        self.timeout = float(timeout)
        self.import_timeout = float(import_timeout or timeout)
        self.memory_mb = memory_mb
        self.proc = None
        self.import_info = None  # reply to the first successful import
        self.import_failure = None  # CallFailed: the submission cannot be imported at all
        self.restarts = 0
        self.log = CappedLog()
        self.cwd_listing_after_import = None
        self.import_wall = None
        self.import_facts = {}  # what the judge measured about the first import (grader/hygiene.py)
        self.module_code = None  # set when the file's module-level code failed, hung or trained
        self.warmup = Path(self.submission).with_name("warmup.py")  # its imports only (grader/hygiene.py)
        # Definitions-only copies of the submission (grader/sources.py), tried in order if needed.
        self.definitions = [str(p) for p in (Path(self.submission).with_name(n)
                                             for n in ("definitions.py", "definitions_strict.py")) if p.is_file()]
        # Everything the worker may write lives under one sandbox folder (see worker.py, Landlock).
        self.sandbox = Path(tempfile.mkdtemp(prefix="e6w-"))
        self.exchange = self.sandbox / "x"
        self.exchange.mkdir()
        self.incidents = []  # "crashed" / "timeout" during checks, for the status column
        self._n = 0
        self._runs = 0
        self._pending, self._done = {}, {}  # request id -> (op, args, timeout, what, process) / reply

    # ------------------------------------------------------------------ process management
    def start(self):
        """Start the process now (torch import overlaps with the judge's own start-up)."""
        if self.proc is not None:
            return
        self._runs += 1
        self.cwd = self.sandbox / f"cwd{self._runs}"
        self.mpl = self.sandbox / "mpl"
        for d in (self.cwd, self.mpl, self.sandbox / "tmp"):
            d.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GRADER_", "PYTEST"))}
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg", MPLCONFIGDIR=str(self.mpl),
                   GRADER_SANDBOX_DIR=str(self.sandbox), TMPDIR=str(self.sandbox / "tmp"),
                   GRADER_READ_PATHS=os.pathsep.join([str(Path(self.submission).parent), self.reference, str(KIT_DATA)]),
                   GRADER_KIT_DATA=str(KIT_DATA),
                   GRADER_NO_LANDLOCK=os.environ.get("GRADER_NO_LANDLOCK", ""),
                   PYTHONIOENCODING="utf-8:replace", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
                   GRADER_MEMORY_MB=str(self.memory_mb or 0), TQDM_DISABLE="1")
        kw = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        self.proc = subprocess.Popen([sys.executable, "-I", "-X", "utf8", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd, env=env,
                                     **kw)
        self.token = secrets.token_hex(16).encode()
        self.replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self.proc, self.replies), daemon=True).start()
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        self._write(self.token + b"\n")
        self._ready = False

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
                    q.put(json.loads(body.decode("utf-8")))
                except ValueError:
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

    def kill(self):
        p = self.proc
        if p is None:
            return
        self.proc = None
        try:
            if os.name == "posix":
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for s in (p.stdin, p.stdout, p.stderr):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.kill()
        shutil.rmtree(self.sandbox, ignore_errors=True)

    def _wait_reply(self, timeout, what):
        try:
            r = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            self.incidents.append("timeout")
            raise CallFailed("timeout", f"{what}: no answer within {timeout:.0f} s") from None
        if r is None or isinstance(r, tuple):
            code = None
            if self.proc is not None:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
            self.incidents.append("crashed")
            if isinstance(r, tuple):
                raise CallFailed("protocol", f"{what}: {r[1]}")
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
        self._wait_reply(max(self.import_timeout, 120.0), "start-up")
        self._ready = True

    def _import(self, path):
        return self._request("import", {"submission": path, "nets": self.reference}, self.import_timeout, "import")

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
                    self._request("preload", {"submission": str(self.warmup)}, self.import_timeout, "import")
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
                self.import_facts = hygiene.facts(before, after, r, wall, warm)
                self.import_wall = wall
                self.cwd_listing_after_import = hygiene.cwd_files(self.sandbox)
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
        kind = {"error": "import_error", "missing": "import_error"}.get(failure.kind, failure.kind)
        self.import_failure = CallFailed(kind, failure.message, failure.detail)
        self.import_failure.at_import = True
        raise self.import_failure from None

    def _request(self, op, args, timeout, what):
        return self.receive(self.send(op, args, timeout, what, importing=(op in ("import", "preload"))))

    def send(self, op, args, timeout=None, what=None, importing=False):
        """Queue a request without waiting (the judge computes references meanwhile)."""
        if not importing:
            self.ensure_imported()
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

    def call(self, op, args=None, timeout=None, what=None):
        return self.receive(self.send(op, args or {}, timeout, what))

    # ------------------------------------------------------------------ arrays
    def path(self, name):
        return str(self.exchange / name)

    def put(self, name, **arrays):
        p = self.exchange / name
        np.savez(p, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        return str(p)

    def get(self, name):
        p = self.exchange / name
        if not p.is_file():
            return {}
        if p.stat().st_size > MAX_NPZ:
            raise CallFailed("protocol", "output file too large")
        out = {}
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                a = z[k]
                if a.dtype.kind not in "fiub":
                    raise CallFailed("protocol", f"unexpected array type {a.dtype}")
                out[k] = a
        p.unlink()
        return out
