"""The judge's side of the fence between a worker and everything else on the machine (trusted side).

What it adds to layers 1 and 2 (grader/README.md, "Trust model", "Fences between neighbours"):
  * namespaces + seccomp, put up by the worker itself at start-up (grader/worker_fence.py, copied into
    in/ next to worker.py). Here: whether they are promised (a probe, once per judge, run as the
    worker's uid: where the probe got them, the worker must get them or refuse to start), and
    what the judge can see for itself afterwards (the worker's PID namespace differs from its own,
    its seccomp filter count is higher), which is what results.json's `protection` says;
  * a cgroup per submission (grader/cgroups.py) with the memory cap for all its processes together,
    a pids limit and one CPU weight, where this process may create cgroups;
  * otherwise a watchdog thread: the summed anonymous memory of every process of the submission
    (its uid when it has one, else every descendant of this judge), sampled every 0.5 s, pages that
    forks share counted once; over the cap, the whole tree is killed, like an OOM kill.
WorkerProcess (grader/worker_process.py) calls it at a few marked lines.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from grader import cgroups, osfeatures

WORKER_FENCE = Path(__file__).resolve().parent / "worker_fence.py"
WATCH_INTERVAL = 0.5  # s between two samples of the summed memory
_PROBES = {}  # uid -> the probe's answer (one per judge process and uid)


def probe(python, fence_py, uid=None):
    """{"ns": bool, "seccomp": bool, "why": str}: what worker_fence.py gets on this kernel for this uid."""
    key = (python, uid)
    if key not in _PROBES:
        kw = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        try:
            r = subprocess.run([python, "-I", "-S", str(fence_py)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"}, **kw)
            _PROBES[key] = json.loads(r.stdout.decode() or "{}")
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            _PROBES[key] = {"ns": False, "seccomp": False, "why": f"probe failed: {e}"}
    return _PROBES[key]


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                k, _, v = line.decode("utf-8", "replace").partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def _ppids():
    """{pid: ppid} of every process this judge can see."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    out[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def _rss_anon_kb(pid):
    """Resident anonymous memory of a process in kB (cheap: /proc/PID/status). Pages a fork still
    shares with its parent count in each of them."""
    s = _status(pid)
    total = 0
    for k in ("RssAnon", "RssShmem"):
        try:
            total += int(s.get(k, "0 kB").split()[0])
        except ValueError:
            pass
    return total


def _pss_anon_kb(pid):
    """Its proportional share instead (Pss_Anon + Pss_Shmem, Linux >= 5.9): shared pages count once
    over all processes. Costs a walk of its page tables (ms), so only read when the cheap sum is over
    the cap. Where it cannot be read (an older kernel, or a process that made itself non-dumpable so
    that only root may read it): the resident figure, which is never lower."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        if b"Pss_Anon" in fields:
            return int(fields[b"Pss_Anon"].split()[0]) + int(fields.get(b"Pss_Shmem", b"0 kB").split()[0])
    except (OSError, ValueError):
        pass
    return _rss_anon_kb(pid)


def shield_self():
    """Make this trusted process (the CLI, a judge) non-dumpable: then no process of the same uid
    without CAP_SYS_PTRACE may ptrace it or open its /proc/PID/mem, environ or fds, whatever else
    fences the worker (this is what still protects them where neither Landlock nor namespaces do).
    Reset by exec, so the workers started from here are not affected."""
    if osfeatures.LINUX:
        try:
            import ctypes

            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
        except (OSError, AttributeError):
            pass


class Fence:
    """One per WorkerProcess: what its workers are promised, and the cgroup or watchdog."""

    def __init__(self, settings, slot_uid):
        self.settings, self.uid = settings, slot_uid
        shield_self()  # the judge itself
        self.memory_mb = int(settings.memory_mb or 0)
        self.linux = osfeatures.LINUX and osfeatures.PROC
        self.promise = None  # the probe's answer, on the first start
        self.cgroup = cgroups.SlotCgroup.create(self.memory_mb) if self.linux else None
        self.watching = None
        self.inner = None  # pid of the worker proper (C) as this judge sees it
        self.seen = []  # what the judge verified of the last worker, for `protection`
        self.alarm = None  # what the watchdog did, for the log

    # ---- before the worker starts
    def worker_params(self, python, fence_py):
        """The `fence` entry of the worker's start-up parameters."""
        if not self.linux:
            return {"ns": "off", "seccomp": "off"}
        if self.promise is None:
            self.promise = probe(python, fence_py, self.uid)
        no_ns = bool(getattr(self.settings, "no_namespaces", False))
        return {"ns": "off" if no_ns else ("require" if self.promise.get("ns") else "try"),
                "seccomp": "require" if self.promise.get("seccomp") else "try",
                "cgroup": self.cgroup.expected if self.cgroup else None}

    # ---- right after Popen
    def started(self, proc, kill_tree, log):
        """Put the new worker into its cgroup (it waits for that before anything else), or watch its
        memory. kill_tree(proc) kills the worker with everything it started; log(bytes) notes why."""
        self.inner, self.seen = None, []
        if self.cgroup is not None:
            if not self.cgroup.add(proc.pid):
                kill_tree(proc)  # it would wait in vain; the start-up then fails as a crash
            return
        if self.linux and self.memory_mb > 0:
            self.watching = proc
            threading.Thread(target=self._watch, args=(proc, kill_tree, log), daemon=True).start()

    def _tree(self, root_pid):
        """pids of the submission's processes: its uid's, or this judge's descendants."""
        if self.uid is not None:
            out = []
            for name in os.listdir("/proc"):
                if name.isdigit():
                    s = _status(name)
                    if s.get("Uid", "").split()[:1] == [str(self.uid)]:
                        out.append(int(name))
            return out
        ppids, me, out = _ppids(), os.getpid(), []
        kids = {}
        for p, pp in ppids.items():
            kids.setdefault(pp, []).append(p)
        stack = list(kids.get(me, []))
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(kids.get(p, []))
        return out

    def _watch(self, proc, kill_tree, log):
        cap_kb = self.memory_mb * 1024
        while self.watching is proc and proc.poll() is None:
            try:
                tree = self._tree(proc.pid)
                used = sum(_rss_anon_kb(p) for p in tree)
                if used > cap_kb:  # only then the exact (and costlier) figure
                    used = sum(_pss_anon_kb(p) for p in tree)
            except OSError:
                used = 0
            if used > cap_kb:
                self.alarm = (f"\n[grader] the submission's processes together held {used // 1024} MB, over the "
                              f"{self.memory_mb} MB memory limit: all stopped\n")
                log(self.alarm.encode())
                kill_tree(proc)
                return
            time.sleep(WATCH_INTERVAL)

    # ---- after the worker said it is ready
    def measured_pid(self, pid):
        """The process that runs the submission: the worker's only child when it made namespaces
        (it is PID 1 there), else the worker itself."""
        if self.inner is None:
            self.inner = pid
            if self.linux:
                kids = _children(pid)
                if len(kids) == 1 and self._other_pidns(kids[0]):
                    self.inner = kids[0]
        return self.inner

    @staticmethod
    def _other_pidns(pid):
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        except OSError:
            return False

    def verify(self, pid):
        """What the judge sees for itself of the worker `pid` (after start-up); None when all that was
        promised holds, else why not (the worker is then not to be used: fail closed)."""
        if not self.linux:
            return None
        inner = self.measured_pid(pid)
        seen = []
        if inner != pid and self._other_pidns(inner):
            seen.append("namespaces (user, pid, mount)")
        elif self.promise and self.promise.get("ns") and not getattr(self.settings, "no_namespaces", False):
            return "the worker is not in a PID namespace of its own"
        mine, its = _status(os.getpid()), _status(inner)
        try:  # a filter of its own on top of any this judge runs under (Docker's, say)
            if "Seccomp_filters" in its:
                filtered = int(its["Seccomp_filters"]) > int(mine.get("Seccomp_filters", "0"))
            else:  # kernels before 5.9
                filtered = mine.get("Seccomp") != "2"
        except ValueError:
            filtered = False
        if filtered and its.get("Seccomp") == "2":
            seen.append("seccomp")
        elif self.promise and self.promise.get("seccomp"):
            return "the worker has no seccomp filter"
        if self.cgroup is not None:
            seen.append(self.cgroup.describe())
        elif self.linux and self.memory_mb > 0:
            seen.append(f"memory watchdog ({self.memory_mb} MB summed)")
        self.seen = seen
        return None

    def protection(self):
        return list(self.seen)

    def close(self):
        self.watching = None
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None


if __name__ == "__main__":  # what this machine offers, for a TA: python -m grader.fence
    _cg = cgroups.SlotCgroup.create(64)
    print(json.dumps({"probe": probe(sys.executable, WORKER_FENCE), "cgroup": _cg.describe() if _cg else None}))
    if _cg:
        _cg.close()
