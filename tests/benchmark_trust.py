"""Measure the trust attacks (tests/grader_cases/attacks.py) against a grader: per-submission outcome,
seconds, the memory peak of the grading processes, and survivors. Prints figures; asserts nothing.

    python tests/benchmark_trust.py --kit /path/to/kit [--timeout 25] [--life 60] [--only untouched_reference,...]
    python tests/benchmark_trust.py --kit . --memory-of experiment6.py    # memory of one grading

--memory-of samples every process of the grading every 0.1 s (/proc/PID/smaps_rollup): the peak of the
summed PSS (shared pages, e.g. torch's libraries, counted once across processes: what a memory cgroup
sees, less page cache) and of the summed RSS, what each process (CLI, judge, worker) held at that
moment, and each one's own peak.

--kit is the folder whose grader/ is graded with (e.g. a checkout of the base commit for "before").
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def _tree_rss(root):
    """RSS (bytes) of root and every descendant, from /proc (Linux)."""
    kids, rss = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(d.name)
        kids.setdefault(int(fields.get("PPid", "0").strip() or 0), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return [rss.get(pid, 0) for pid in seen]


def _role(pid):
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = b" ".join(cmd).decode("utf-8", "replace")
    try:  # a judge forked by the warm server has the server's command line, and its own name
        if Path(f"/proc/{pid}/comm").read_text().strip() == "e6-judge":
            return "judge"
    except OSError:
        pass
    for mod, role in (("grader.judge_server", "judge server"), ("grader.judge", "judge"), ("worker", "worker"),
                      ("-m grader", "cli")):
        if mod in text:
            return role
    return os.path.basename(cmd[0].decode("utf-8", "replace")) or "?"


def _tree_pss(root):
    """{pid: (role, Pss bytes, Rss bytes)} of root and every descendant (Linux, smaps_rollup)."""
    out = {}
    for pid in _tree_pids(root):
        try:
            fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        kb = lambda k: int(fields.get(k, "0 kB").split()[0]) * 1024  # noqa: E731
        out[pid] = (_role(pid), kb("Pss"), kb("Rss"))
    return out


def _tree_pids(root):
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(Path(d, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def sample(proc, peaks, stop):
    """Peak of the summed RSS of proc and all its descendants, and of the largest single process;
    with smaps_rollup also the peak summed PSS, who held what at that moment, and each role's peak."""
    t0 = time.perf_counter()
    while not stop.is_set():
        sizes = _tree_rss(proc.pid)
        peaks["sum"] = max(peaks.get("sum", 0), sum(sizes))
        peaks["one"] = max(peaks.get("one", 0), max(sizes, default=0))
        if peaks.get("pss_ok", True):
            procs = _tree_pss(proc.pid)
            peaks["pss_ok"] = bool(procs) or peaks.get("pss_seen", False)
            peaks["pss_seen"] = peaks.get("pss_seen", False) or bool(procs)
            pss = sum(p for _, p, _ in procs.values())
            if pss > peaks.get("pss", 0):
                peaks["pss"], peaks["pss_at"] = pss, time.perf_counter() - t0
                peaks["pss_who"] = sorted(((r, p, s) for r, p, s in procs.values()), key=lambda x: -x[1])
            for r, p, s in procs.values():
                if p > peaks.setdefault("role", {}).get(r, (0, 0))[0]:
                    peaks["role"][r] = (p, s)
        time.sleep(0.1)


def run(kit, args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(kit), PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="",
               MPLBACKEND="Agg", **(env_extra or {}))
    peaks, stop = {}, threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "grader", *map(str, args)], env=env, cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t = threading.Thread(target=sample, args=(proc, peaks, stop), daemon=True)
    t.start()
    out = proc.communicate()[0]
    stop.set()
    return proc.returncode, time.perf_counter() - start, peaks, out.decode("utf-8", "replace")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kit", required=True)
    p.add_argument("--timeout", type=int, default=25)
    p.add_argument("--budget", type=int, default=110)
    p.add_argument("--life", type=int, default=60, help="lifetime of the orphans (s)")
    p.add_argument("--only", default="", help="comma-separated stems to keep; 'ids' keeps the odd-name files")
    p.add_argument("--memory-of", default="", help="measure one grading of this file instead")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the grader")
    a = p.parse_args()
    kit = Path(a.kit).resolve()
    env = dict(kv.split("=", 1) for kv in a.env)
    print(f"kit {kit}  load {os.getloadavg()}")
    if a.memory_of:
        with tempfile.TemporaryDirectory() as tmp:
            rc, wall, peaks, out = run(kit, [Path(a.memory_of).resolve(), "--out", Path(tmp) / "o"], env)
            print(out[-600:])
            print(f"rc {rc}  wall {wall:.1f} s  peak RSS judge+worker+cli {peaks.get('sum', 0) / 2**20:.0f} MiB, "
                  f"largest single process {peaks.get('one', 0) / 2**20:.0f} MiB  load {os.getloadavg()}")
            if peaks.get("pss"):
                mib = 2 ** 20
                print(f"peak summed PSS {peaks['pss'] / mib:.0f} MiB at {peaks['pss_at']:.1f} s: "
                      + ", ".join(f"{r} {p / mib:.0f} (RSS {s / mib:.0f})" for r, p, s in peaks["pss_who"]))
                print("each role's own peak PSS (RSS): " + ", ".join(
                    f"{r} {p / mib:.0f} ({s / mib:.0f})" for r, (p, s) in sorted(peaks["role"].items())) + " MiB")
        return
    import test_grader_trust as T

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        T.build_main(tmp / "subs", tmp, timeout=a.timeout, life=a.life)
        if a.only:
            keep = set(a.only.split(","))
            for f in list((tmp / "subs").iterdir()):
                if f.stem not in keep and f.name not in keep and not ("ids" in keep and not f.stem.startswith(("t_", "a_"))):
                    if f.is_dir():
                        import shutil

                        shutil.rmtree(f)
                    else:
                        f.unlink()
        args = [tmp / "subs", "--out", tmp / "out", "--jobs", "2", "--timeout", a.timeout]
        helptext = subprocess.run([sys.executable, "-m", "grader", "--help"], env=dict(os.environ, PYTHONPATH=str(kit)),
                                  capture_output=True, text=True).stdout
        if "--budget" in helptext:
            args += ["--budget", a.budget]
        victim = tmp / "subs" / "untouched_reference.py"
        before = victim.read_bytes() if victim.exists() else b""
        rc, wall, peaks, out = run(kit, args, env)
        print(f"rc {rc}  wall {wall:.1f} s  peak RSS (sum of all grader processes) {peaks.get('sum', 0) / 2**20:.0f} MiB"
              f"  largest single process {peaks.get('one', 0) / 2**20:.0f} MiB  load {os.getloadavg()}")
        if victim.exists():
            print("victim file unchanged:", victim.read_bytes() == before)
        print("survivors:", T.survivors(T.MARK))
        grades = tmp / "out" / "grades.csv"
        if not grades.exists():
            print("NO grades.csv\n", out[-3000:])
            return
        rows = list(csv.DictReader(open(grades, encoding="utf-8")))
        secs = []
        for r in rows:
            rj = tmp / "out" / r["student"] / "results.json"
            extra = ""
            if rj.exists():
                d = json.loads(rj.read_text(encoding="utf-8"))
                secs.append(d.get("execution_time", 0))
                extra = f"{d.get('execution_time', 0):7.1f}s  {d.get('output_format', '-')}  {d.get('extra_data', {}).get('protection', '-')}"
            print(f"{r['student'][:40]:<40} {r['total']:>4} {r['status']:<14} {extra}")
        print(f"rows {len(rows)}; median seconds {statistics.median(secs) if secs else 0:.1f}")
        print(out[-1500:])


if __name__ == "__main__":
    main()
