"""One cgroup per submission's worker where the grader may make cgroups (trusted side, Linux).

Memory (RLIMIT_DATA) is per process and a submission may start many; CPU is shared per scheduling
entity and every setsid child would be one. So, where this process may create child cgroups
(root, or a delegated cgroup), every worker of a submission runs in a cgroup of its own with
  memory   the `--memory-mb` cap for ALL its processes together (swap included where counted);
  pids     at most PIDS_MAX tasks (threads count);
  cpu      the default weight, so that the whole submission is ONE entity for the scheduler.
cgroup v1 (a hierarchy per controller, e.g. /sys/fs/cgroup/memory) and v2 (the unified hierarchy,
where this process's cgroup must be able to give children the controllers: its cgroup.subtree_control)
are both read from /proc/self/mountinfo and /proc/self/cgroup; a controller found in neither is not
limited (grader/fence.py then watches the summed memory itself).

The judge creates the cgroup next to itself (a child of its own cgroup in each hierarchy), writes the
worker's pid into it right after starting it; the worker waits until /proc/self/cgroup shows it
(grader/worker_fence.py), so that nothing it starts is outside.
"""
import os
import secrets

PIDS_MAX = 512
PREFIX = "e6w-"


def _mounts():
    """[(fstype, mount point, mount root, super options)] of the cgroup file systems."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(b) >= 3 and b[0] in ("cgroup", "cgroup2"):
                    out.append((b[0], a[4].replace("\\040", " "), a[3], set(b[2].split(","))))
    except OSError:
        pass
    return out


def _own():
    """{controller or "": (hierarchy line prefix, path)} from /proc/self/cgroup."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f.read().splitlines():
                hid, ctrls, path = line.split(":", 2)
                for c in (ctrls.split(",") if ctrls else [""]):
                    out[c] = (f"{hid}:{ctrls}", path)
    except (OSError, ValueError):
        pass
    return out


def _dir(mount, root, path):
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    rel = path[len(root):] if root != "/" else path
    d = os.path.join(mount, rel.lstrip("/"))
    return d if os.path.isdir(d) else None


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True


def _sweep(parent):
    """Remove empty cgroups a judge that died without cleaning up left next to ours."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if n.startswith(PREFIX) and n[len(PREFIX):].split("-")[0].isdigit():
            if not _alive(int(n[len(PREFIX):].split("-")[0])):
                try:
                    os.rmdir(os.path.join(parent, n))
                except OSError:
                    pass


class SlotCgroup:
    """The cgroup(s) of one submission's workers. SlotCgroup.create() returns None where none can be
    made. `limits` says what is limited ("memory", "pids", "cpu"), `expected` the /proc/self/cgroup
    lines the worker must see."""

    def __init__(self):
        self.dirs, self.limits, self.expected, self.version = [], [], [], set()

    @classmethod
    def create(cls, memory_mb, pids_max=PIDS_MAX):
        if not os.path.isfile("/proc/self/cgroup"):
            return None
        self = cls()
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        own = _own()
        wanted = ["memory", "pids", "cpu"]
        for fstype, mount, root, opts in _mounts():  # v1 first: one hierarchy per controller (or a few)
            if fstype != "cgroup":
                continue
            ctrls = [c for c in wanted if c in opts and c not in self.limits]
            if not ctrls or ctrls[0] not in own:
                continue
            prefix, path = own[ctrls[0]]
            parent = _dir(mount, root, path)
            if parent and self._make(parent, name, prefix, path, ctrls, 1, memory_mb, pids_max):
                self.limits += ctrls
        left = [c for c in wanted if c not in self.limits]
        v2 = [(m, r) for t, m, r, _ in _mounts() if t == "cgroup2"]
        if left and v2 and "" in own:
            prefix, path = own[""]
            parent = _dir(v2[0][0], v2[0][1], path)
            if parent:
                ctrls = self._v2_enable(parent, left)
                if ctrls and self._make(parent, name, prefix, path, ctrls, 2, memory_mb, pids_max):
                    self.limits += ctrls
        if "memory" not in self.limits and memory_mb:
            self.close()  # the memory cap is what matters most: without it fence.py's watchdog does it all
            return None
        return self if self.dirs else None

    @staticmethod
    def _v2_enable(parent, ctrls):
        try:
            with open(os.path.join(parent, "cgroup.controllers")) as f:
                available = set(f.read().split())
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                enabled = set(f.read().split())
        except OSError:
            return []
        ctrls = [c for c in ctrls if c in available]
        for c in ctrls:
            if c not in enabled:
                try:  # EBUSY when this cgroup holds processes itself ("no internal processes")
                    _write(os.path.join(parent, "cgroup.subtree_control"), f"+{c}")
                except OSError:
                    return []
        return ctrls

    def _make(self, parent, name, prefix, path, ctrls, version, memory_mb, pids_max):
        _sweep(parent)
        d = os.path.join(parent, name)
        try:
            os.mkdir(d, 0o755)
        except OSError:
            return False
        self.dirs.append(d)
        try:
            for c in ctrls:
                if c == "memory" and memory_mb:
                    limit = str(int(memory_mb) * 2 ** 20)
                    if version == 1:
                        _write(os.path.join(d, "memory.limit_in_bytes"), limit)
                        if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                            _write(os.path.join(d, "memory.memsw.limit_in_bytes"), limit)
                    else:
                        _write(os.path.join(d, "memory.max"), limit)
                        for f, v in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                            if os.path.exists(os.path.join(d, f)):
                                _write(os.path.join(d, f), v)
                elif c == "pids":
                    _write(os.path.join(d, "pids.max"), str(pids_max))
                elif c == "cpu":
                    if version == 1:
                        _write(os.path.join(d, "cpu.shares"), "1024")
                    else:
                        _write(os.path.join(d, "cpu.weight"), "100")
        except OSError:
            self.dirs.remove(d)
            try:
                os.rmdir(d)
            except OSError:
                pass
            return False
        self.version.add(version)
        self.expected.append(f"{prefix}:{path.rstrip('/')}/{name}")
        return True

    def add(self, pid):
        """Move process pid (the worker just started) into every hierarchy. False if one failed."""
        ok = True
        for d in self.dirs:
            try:
                _write(os.path.join(d, "cgroup.procs"), str(pid))
            except OSError:
                ok = False
        return ok

    def oom_kills(self):
        """How many processes the kernel killed for this cgroup's memory limit so far."""
        for d in self.dirs:
            for f in ("memory.events", "memory.oom_control"):
                try:
                    with open(os.path.join(d, f)) as fh:
                        for line in fh:
                            k, _, v = line.partition(" ")
                            if k == "oom_kill":
                                return int(v)
                except (OSError, ValueError):
                    pass
        return 0

    def describe(self):
        return f"cgroup v{'/'.join(map(str, sorted(self.version)))} ({', '.join(self.limits)})"

    def close(self):
        """Remove the cgroups (their processes are gone by now; a few tries while the last exit)."""
        import time

        for d in list(self.dirs):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    try:
                        with open(os.path.join(d, "cgroup.procs")) as f:
                            pids = [int(x) for x in f.read().split()]
                        for p in pids:
                            os.kill(p, 9)
                    except (OSError, ValueError):
                        pass
                    time.sleep(0.02)
            self.dirs.remove(d)
