"""Fences between a worker and its neighbours (grader/README.md, "Trust model", "Fences between
neighbours"): same-uid interference, memory and CPU across processes, pathname unix sockets.

Slow tier: one `python -m grader` batch per configuration, each grading an untouched copy of the
reference (it must still get 100) with four attacks that have read grader/worker_fence.py:
  neighbours  prlimit(RLIMIT_FSIZE=0) on every grader process it can find (the TA's CLI, the
              judges and the server they are forked from: before the fence this killed the batch),
              and on a "victim" (a process of the grader's own uid, like the TA's editor, whose pid the attack is told): prlimit,
              setpriority, sched_setaffinity, SIGSTOP, ptrace, reading its /proc environ;
  socket      connects to a pathname unix socket of the grader's uid (a docker.sock or ssh-agent);
  memory      five children of 500 MB each, together over the --memory-mb cap of 2048 MB;
  cpu         six setsid()'d CPU burners, each in a scheduling group of its own if it may.
Each attack reports what it achieved in its Step 1 failure message; the victim, the socket's
listener and the batch itself are also checked from outside.

Configurations (where this machine allows them): the TA's own account (here `nobody`, with Landlock
and namespaces), the same without Landlock and namespaces (seccomp alone), and root whose workers
run as root (GRADER_NO_USER=1: the root fallback). Root with a uid per worker is the shared attack
batch's (test_grader_trust.py). Fast tier: the filter and the cgroup discovery, without grading.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, Batch, background_result, copy_kit

try:  # the batches below also run against a grader without these modules (to see the attacks work)
    from grader import cgroups, fence
    from grader import worker_fence as wf
except ImportError:
    cgroups = fence = wf = None

NOBODY = 65534
MEMORY_MB = 2048  # --memory-mb of the batches: the reference needs well under it
# --timeout 300: generous, so that a machine under heavy load cannot cost the reference a point
CHILDREN, CHILD_MB, HOLD_S = 5, 500, 3  # the memory attack: 2.5 GB together, each far below the cap
SECRET = "e6fence-secret-%d" % os.getpid()  # in the victim's environment only
LINUX = sys.platform.startswith("linux")


def _attack(body):
    """A submission whose dataset runs the attack once and reports in its failure message."""
    return ("import os\n_REPORT = None\n\n" + body + "\n\n"
            "class PairedMedicalDataset:\n"
            "    def __init__(self, *args, **kwargs):\n"
            "        global _REPORT\n"
            "        if _REPORT is None:\n"
            "            try:\n"
            "                _REPORT = _attack()\n"
            "            except BaseException as e:\n"
            "                _REPORT = 'attack failed: %r' % (e,)\n"
            "        raise RuntimeError('FENCE-REPORT ' + _REPORT)\n")


def neighbours(victim_pid, batch_marker):
    return _attack(f'''
def _attack():
    import ctypes, resource, signal
    out = []

    def attempt(what, f):
        try:
            f()
            out.append(what + ": ok")
        except OSError as e:
            out.append(what + ": refused (" + (e.strerror or str(e)) + ")")

    found = []
    for d in os.listdir("/proc"):  # every grader process it can see: the CLI and the judges
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = open("/proc/%s/cmdline" % d, "rb").read()
            except OSError:
                continue
            if (cmd.split(b"\\0")[1:3] in ([b"-m", b"grader"], [b"-m", b"grader.judge"],
                                          [b"-m", b"grader.judge_server"])
                    and {batch_marker.encode()!r} in cmd):  # this batch's (its --out), never another's
                found.append(int(d))
    out.append("grader processes seen: %d" % len(found))
    for pid in found:
        attempt("prlimit grader", lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, 0)))
    v = {victim_pid}
    attempt("prlimit victim", lambda: resource.prlimit(v, resource.RLIMIT_FSIZE, (0, 0)))
    attempt("setpriority victim", lambda: os.setpriority(os.PRIO_PROCESS, v, 19))
    attempt("setpriority user", lambda: os.setpriority(os.PRIO_USER, 0, 19))  # the victim's nice tells
    attempt("affinity victim", lambda: os.sched_setaffinity(v, {{0}}))
    attempt("sigstop victim", lambda: os.kill(v, signal.SIGSTOP))
    libc = ctypes.CDLL(None, use_errno=True)

    def ptrace():
        if libc.ptrace(16, v, None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        libc.ptrace(17, v, None, None)  # PTRACE_DETACH

    attempt("ptrace victim", ptrace)

    def environ():
        with open("/proc/%d/environ" % v, "rb") as f:
            out.append("environ: " + f.read().decode("ascii", "replace").replace("\\0", " ")[-300:])

    attempt("read victim environ", environ)
    return "; ".join(out)
''')


def unix_socket(path):
    return _attack(f'''
def _attack():
    import socket
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({str(path)!r})
        s.sendall(b"e6fence-pwned")
        s.close()
        return "unix connect: ok"
    except OSError as e:
        return "unix connect: refused (" + (e.strerror or str(e)) + ")"
''')


def memory():
    return _attack(f'''
def _attack():
    import time
    r, w = os.pipe()
    kids = []
    for i in range({CHILDREN}):
        pid = os.fork()
        if pid == 0:
            try:
                block = bytearray(b"\\1") * ({CHILD_MB} * 2 ** 20)  # every page written
                os.write(w, b"1")
                time.sleep({HOLD_S} + 2)
            finally:
                os._exit(0)
        kids.append(pid)
    os.close(w)
    held = b""
    while len(held) < {CHILDREN}:
        c = os.read(r, 16)
        if not c:
            break
        held += c
    time.sleep({HOLD_S})  # all of them hold their memory meanwhile
    alive = [k for k in kids if os.waitpid(k, os.WNOHANG)[0] == 0]
    return "memory: %d of {CHILDREN} children held {CHILD_MB} MB each, %d still alive {HOLD_S} s later" % (
        len(held), len(alive))
''')


def cpu_burners():
    return _attack('''
def _attack():
    import time

    def group():
        try:
            auto = open("/proc/self/autogroup").read().split()[0]
        except OSError:
            auto = "?"
        try:
            cg = [l for l in open("/proc/self/cgroup").read().splitlines() if ":cpu:" in l or ":cpu," in l
                  or l.startswith("0::")]
        except OSError:
            cg = []
        return auto + " " + ",".join(cg)

    mine = group()
    r, w = os.pipe()
    n = 6
    for i in range(n):
        if os.fork() == 0:
            try:
                try:
                    os.setsid()
                except OSError:
                    pass
                t = time.process_time()
                while time.process_time() - t < 0.3:
                    pass
                os.write(w, (group() + "\\n").encode())
            finally:
                os._exit(0)
    os.close(w)
    data = b""
    while True:
        c = os.read(r, 65536)
        if not c:
            break
        data += c
    groups = data.decode().splitlines()
    escaped = sum(1 for g in groups if g != mine)
    return "cpu: %d of %d burners in a scheduling group of their own" % (escaped, len(groups))
''')


# ---------------------------------------------------------------------------------------------
# The batches
# ---------------------------------------------------------------------------------------------

CONFIGS = {
    "user": (NOBODY, {}),  # a TA's own account: Landlock, namespaces, seccomp, memory watchdog
    "user_no_landlock_no_ns": (NOBODY, {"GRADER_NO_LANDLOCK": "1", "GRADER_NO_NAMESPACES": "1"}),  # seccomp alone
    "root_fallback": (0, {"GRADER_NO_USER": "1"}),  # root workers: namespaces, seccomp, cgroup
}


def _runnable_by(uid):
    try:
        r = subprocess.run([sys.executable, "-I", "-c", "import torch"], user=uid, group=uid, extra_groups=[],
                           cwd="/", capture_output=True, timeout=300)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Listener:
    """A pathname unix socket of `uid` (mode 600) that counts who connected."""

    def __init__(self, folder, uid):
        self.path = folder / "agent.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chown(self.path, uid, uid)
        os.chmod(self.path, 0o600)
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.connections, self.stop = [], False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                self.connections.append(conn.recv(100))
            except OSError:
                self.connections.append(b"")
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def _victim_facts(pid):
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    limits = [line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max file size")]
    return {"state": stat[0], "nice": int(stat[16]), "fsize": limits[0].split()[3],
            "cpus": status["Cpus_allowed_list"].strip(), "tracer": status["TracerPid"].strip()}


def fence_batch(factory, config):
    """One configuration's batch (a background job, tests/conftest.py): the Batch, with what the victim,
    the listener and this machine showed around it."""
    if not LINUX or os.geteuid() != 0 or fence is None:
        pytest.skip("needs Linux and root (to run the grader as another user and make its victim)")
    uid, env_extra = CONFIGS[config]
    if uid != 0 and not _runnable_by(uid):
        pytest.skip(f"uid {uid} cannot run {sys.executable} with torch (a venv under /root?)")
    tmp = Path(tempfile.mkdtemp(prefix="e6fence-", dir="/tmp"))
    os.chmod(tmp, 0o755)
    kit = copy_kit(tmp / "kit")
    subs, out, home = tmp / "submissions", tmp / "out", tmp / "home"
    subs.mkdir()
    home.mkdir()
    private = tmp / "private"
    private.mkdir(mode=0o700)
    os.chown(private, uid, uid)
    listener = Listener(private, uid)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1200)", "e6fence-victim"],
                              user=uid, group=uid, extra_groups=[], env={"E6_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL, start_new_session=True)
    before = _victim_facts(victim.pid)
    files = {"fence_reference.py": (ROOT / "experiment6.py").read_text(encoding="utf-8"),
             "fence_neighbours.py": neighbours(victim.pid, tmp.name), "fence_socket.py": unix_socket(listener.path),
             "fence_memory.py": memory(), "fence_cpu.py": cpu_burners()}
    for name, text in files.items():
        (subs / name).write_text(text, encoding="utf-8")
    for p in [tmp, *tmp.rglob("*")]:
        if not p.is_symlink() and p != private and p.parent != private:
            os.chown(p, uid, uid)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               PYTHONPATH=str(kit), HOME=str(home), TMPDIR=str(home), **env_extra)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "grader", str(subs), "--out", str(out), "--jobs", "2",
                               "--memory-mb", str(MEMORY_MB), "--timeout", "300", "--budget", "1500"], cwd=tmp, env=env, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=1500, user=uid, group=uid,
                              extra_groups=[])
        seconds = time.perf_counter() - start
        after = _victim_facts(victim.pid)
    finally:
        victim.kill()
        victim.wait()
        listener.close()
    b = Batch(out, proc, seconds)
    b.config, b.victim_before, b.victim_after, b.connections = config, before, after, listener.connections
    b.ns_possible = fence.probe(sys.executable, kit / "grader" / "worker_fence.py", uid if uid else None).get("ns")
    cg = cgroups.SlotCgroup.create(64) if uid == 0 else None  # root may, where /sys/fs/cgroup is writable
    b.cgroup_possible = cg is not None
    if cg:
        cg.close()
    b.tmp = tmp
    b.report_lines = [f"[fence batch {config}] {len(b.rows)} submissions in {seconds:.1f} s wall; "
                      f"load {os.getloadavg()[0]:.1f}"]
    for s in sorted(b.rows):
        if s != "fence_reference":
            found = [ln for ln in b.said(s).splitlines() if "FENCE-REPORT" in ln][:1]
            b.report_lines.append(f"  {s}: {b.row(s)['status']}: "
                                  f"{found[0][:400] if found else b.said(s)[-300:]!r}")
    return b


BACKGROUND_JOBS = {"fenced": fence_batch}


@pytest.fixture(scope="module", params=list(CONFIGS))
def fenced(request):
    b = background_result(request, request.param)
    yield b
    shutil.rmtree(b.tmp, ignore_errors=True)


def said(b, student):
    text = b.said(student)
    assert "FENCE-REPORT" in text or b.row(student)["status"] != "ok", b.explain(student)
    return text


@pytest.mark.slow
def test_reference_still_gets_full_marks_beside_the_attacks(fenced):
    assert fenced.row("fence_reference")["total"] == "100", fenced.explain("fence_reference")
    prot = fenced.results("fence_reference")["extra_data"]["protection"]
    assert "seccomp" in prot, prot
    if fenced.config != "user_no_landlock_no_ns" and fenced.ns_possible:  # where this kernel lets the uid
        assert "namespaces" in prot, prot
    assert ("cgroup" in prot) if fenced.cgroup_possible else ("memory watchdog" in prot), prot


@pytest.mark.slow
def test_same_uid_neighbours_are_out_of_reach(fenced):
    """Class 2: the batch finished (the CLI's file size limit was not touched), the victim is as it was."""
    text = said(fenced, "fence_neighbours")
    after = dict(fenced.victim_after)
    assert after.pop("state") not in ("T", "t"), (fenced.victim_after, text)  # not stopped
    assert after == {k: v for k, v in fenced.victim_before.items() if k != "state"}, (fenced.victim_after, text)
    for what in ("prlimit grader", "prlimit victim", "setpriority victim", "affinity victim", "sigstop victim",
                 "ptrace victim"):
        assert f"{what}: ok" not in text, text
    if fenced.config != "user_no_landlock_no_ns":  # seccomp cannot filter open(): see README, known limitations
        assert SECRET not in text, text


@pytest.mark.slow
def test_pathname_unix_sockets_cannot_be_reached(fenced):
    """Class 9 (socket half): the grader's uid owns the socket, the worker cannot connect to it."""
    text = said(fenced, "fence_socket")
    assert fenced.connections == [], (fenced.connections, text)
    assert "unix connect: refused" in text, text


@pytest.mark.slow
def test_memory_of_all_processes_together_is_capped(fenced):
    """Class 4: five children of 500 MB each (each within the per-process limit) cannot hold 2.5 GB
    together under a 2048 MB cap: the cgroup's OOM kill or the watchdog stops them."""
    text = said(fenced, "fence_memory")
    assert f"{CHILDREN} of {CHILDREN} children held" not in text or f"{CHILDREN} still alive" not in text, text
    assert fenced.row("fence_memory")["status"] in ("crashed", "ok"), fenced.explain("fence_memory")


@pytest.mark.slow
def test_cpu_burners_stay_in_the_submissions_scheduling_group(fenced):
    """Class 4 (CPU): setsid()'d children would each get a scheduling autogroup of their own."""
    text = said(fenced, "fence_cpu")
    assert "cpu: 0 of 6 burners" in text, text


# ---------------------------------------------------------------------------------------------
# Fast: the parts, without grading
# ---------------------------------------------------------------------------------------------

def _bpf_run(prog, nr, args, arch=0xC000003E):
    """Interpret the filter for one system call (enough of classic BPF for what program() emits)."""
    import struct

    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & 0xFFFFFFFFFFFFFFFF for a in args + [0] * (6 - len(args))])
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == wf.LD_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == wf.JEQ:
            pc += jt if acc == k else jf
        elif code == wf.JSET:
            pc += jt if acc & k else jf
        elif code == wf.RET:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


def test_filter_confines_calls_on_other_processes_without_namespaces():
    nr = {n: v[0] for n, v in wf.NR.items()}
    prog = wf.program("x86_64", own=(1000, 1000))
    deny = wf._errno(wf.EPERM)
    ok = wf.ALLOW
    cases = [
        ("prlimit64", [0], ok), ("prlimit64", [1000], ok), ("prlimit64", [999], deny),
        ("kill", [0, 15], ok), ("kill", [1000, 15], ok), ("kill", [-1000, 9], ok), ("kill", [-1, 9], deny),
        ("kill", [4242, 9], deny), ("kill", [4242, 0], ok), ("tgkill", [1000, 1001, 10], ok), ("tgkill", [7, 7, 9], deny),
        ("setpriority", [0, 0, 5], ok), ("setpriority", [0, 77, 5], deny), ("setpriority", [2, 0, 19], deny),
        ("setpriority", [1, 1000, 5], ok), ("ioprio_set", [3, 0, 0], deny), ("ioprio_set", [1, 0, 0], ok),
        ("sched_setaffinity", [0, 8, 0], ok), ("sched_setaffinity", [31337, 8, 0], deny),
        ("ptrace", [16, 1000], deny), ("process_vm_readv", [1000], deny), ("setsid", [], deny),
        ("socket", [1, 1, 0], wf._errno(wf.EACCES)), ("socket", [2, 1, 0], ok), ("clone", [0x11], ok),
        ("clone", [wf.CLONE_NEWUSER | 0x11], deny), ("clone3", [0], wf._errno(wf.ENOSYS)),
        ("io_uring_setup", [8, 0], wf._errno(wf.ENOSYS)), ("read", [0, 0, 0], ok),
    ]
    nr["read"] = 0
    for name, args, want in cases:
        assert _bpf_run(prog, nr[name], args) == want, (name, args)
    assert _bpf_run(prog, 0x40000000 | 1, []) == wf._errno(wf.ENOSYS)  # x32
    assert _bpf_run(prog, 1, [], arch=0x40000003) == wf.KILL  # i386 via int 0x80
    inside = wf.program("aarch64")  # in a PID namespace: other processes have no pid to name
    assert _bpf_run(inside, wf.NR["prlimit64"][1], [4242], arch=wf.ARCHES["aarch64"]) == ok
    assert _bpf_run(inside, wf.NR["ptrace"][1], [16, 4242], arch=wf.ARCHES["aarch64"]) == deny


FENCED_CHILD = r"""
import importlib.util, json, os, resource, socket, sys
spec = importlib.util.spec_from_file_location("wf", sys.argv[1])
wf = importlib.util.module_from_spec(spec); spec.loader.exec_module(wf)
target, sock = int(sys.argv[3]), sys.argv[4]
got = {"fence": wf.apply({"ns": sys.argv[2], "seccomp": "require"})}
def attempt(name, f):
    try:
        f(); got[name] = "ok"
    except OSError as e:
        got[name] = e.strerror
attempt("prlimit", lambda: resource.prlimit(target, resource.RLIMIT_FSIZE, (0, 0)))
attempt("kill", lambda: os.kill(target, 19))
attempt("unix", lambda: socket.socket(socket.AF_UNIX).connect(sock))
got["procs"] = len([p for p in os.listdir("/proc") if p.isdigit()])
got["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(got), flush=True)
"""


@pytest.mark.skipif(not LINUX or wf is None or wf.platform.machine() not in wf.ARCHES, reason="Linux x86_64/aarch64 only")
@pytest.mark.parametrize("ns", ["require", "off"])
def test_worker_fence_as_this_user(tmp_path, ns):
    """A root or ordinary process with the fence: nothing outside it can be reached (a process of the
    same uid, a socket of the same uid), no capability left."""
    if ns == "require" and not fence.probe(sys.executable, fence.WORKER_FENCE).get("ns"):
        pytest.skip("this kernel does not let this user make namespaces")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "s.sock"))
    srv.listen(1)
    try:
        r = subprocess.run([sys.executable, "-I", "-S", "-c", FENCED_CHILD, str(fence.WORKER_FENCE), ns, str(victim.pid),
                            str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60,
                           start_new_session=True)
        limits = Path(f"/proc/{victim.pid}/limits").read_text()
        state = Path(f"/proc/{victim.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    finally:
        victim.kill()
        victim.wait()
        srv.close()
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1]), r.stderr
    got = got[0]
    assert got["prlimit"] != "ok" and got["kill"] != "ok" and got["unix"] != "ok", got
    assert got["capeff"] == "0000000000000000", got
    assert state != "T" and [ln for ln in limits.splitlines() if ln.startswith("Max file size")][0].split()[3] == "unlimited"
    if ns == "require":
        assert got["fence"].startswith("namespaces") and got["procs"] <= 2, got
    else:
        assert "seccomp (own process group)" in got["fence"], got


def test_cgroup_discovery_reads_v1_and_v2(tmp_path, monkeypatch):
    """_dir maps /proc/self/cgroup paths into mount points, for a mount of the whole hierarchy and for
    a container's mount of its own part."""
    (tmp_path / "memory" / "a" / "b").mkdir(parents=True)
    assert cgroups._dir(str(tmp_path / "memory"), "/", "/a/b") == str(tmp_path / "memory" / "a" / "b")
    assert cgroups._dir(str(tmp_path / "memory"), "/docker/x", "/docker/x/a/b") == str(tmp_path / "memory" / "a" / "b")
    assert cgroups._dir(str(tmp_path / "memory"), "/docker/x", "/other") is None
    lines = ["4:memory:/process_api/abc", "8:pids:/", "1:cpu,cpuacct:/x", "0::/user.slice"]
    monkeypatch.setattr("builtins.open", _fake_open({"/proc/self/cgroup": "\n".join(lines)}, open))
    own = cgroups._own()
    assert own["memory"] == ("4:memory", "/process_api/abc") and own["cpu"] == ("1:cpu,cpuacct", "/x")
    assert own[""] == ("0:", "/user.slice")


def _fake_open(files, real):
    import io

    def fake(path, *a, **k):
        if path in files:
            return io.StringIO(files[path])
        return real(path, *a, **k)

    return fake


@pytest.mark.skipif(not LINUX or os.geteuid() != 0, reason="creates a cgroup: Linux, root")
def test_slot_cgroup_holds_memory_pids_cpu():
    cg = cgroups.SlotCgroup.create(256)
    if cg is None:
        pytest.skip("no cgroup with a memory controller can be made here")
    made = list(cg.dirs)
    try:
        assert "memory" in cg.limits and cg.expected, cg.describe()
        p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        assert cg.add(p.pid)
        mine = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
        assert all(e in mine for e in cg.expected), (mine, cg.expected)
        p.stdin.close()
        p.wait()
    finally:
        cg.close()
    assert made and not any(os.path.exists(d) for d in made)
