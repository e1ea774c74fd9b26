"""Import hygiene (check 5.6): facts the JUDGE measures about the worker process itself, from /proc,
so that a submission cannot forge them (without /proc, on Windows and macOS, the worker's own counts
stand in for the CPU time and threads: self-reported, like the optimizer-step hints): CPU time spent by the import, threads and child processes
still alive after it, files in the worker's working directory (also at the end of grading: those are
listed by Sandbox.cwd_files, through the folder descriptors it holds, and judged here too).

Two uses: problems(facts) decides whether the file's module-level code misbehaved, so that its
definitions are graded instead (grader/import_policy.py); check_problems(facts) is everything check 5.6
reports about the import, i.e. those problems plus the files it left.

The worker first imports warmup.py (grader/sources.py: the file's module-level imports, each in a
try/except), then the real file: libraries are then already loaded, so the real import's CPU time
is the cost of the file's own module-level code. Ordinary module-level code (a print, a seed, building
a transform) costs milliseconds; training, or building a dataset, costs seconds.
"""
import os
from pathlib import Path

from grader import osfeatures

CPU_LIMIT = 1.0  # s of CPU for the module-level code, measured after the warm-up import
CPU_LIMIT_COLD = 10.0  # the same if the warm-up hung or crashed: the libraries count then
WALL_LIMIT = 20.0  # s of wall time for the import (a sleep costs no CPU)


def _stat(pid):
    """Fields of /proc/PID/stat after the command name (which may hold spaces), or None."""
    if not osfeatures.PROC:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def snapshot(pid):
    """CPU seconds (this process, its threads and its waited-for children), thread count, and the
    processes of its session (the worker is started as a session leader). None values off Linux."""
    f = _stat(pid)
    cpu = threads = None
    if f is not None:
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        cpu = sum(int(x) for x in f[11:15]) / tick  # utime, stime, cutime, cstime
        try:
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            threads = None
    return {"cpu": cpu, "threads": threads, "children": descendants(pid)}


def descendants(pid):
    """Processes other than PID whose parent is PID or whose session is PID's."""
    out = []
    if not osfeatures.PROC:
        return out
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) == pid:
            continue
        f = _stat(name)
        if f is not None and (f[1] == str(pid) or f[3] == str(pid)):
            out.append(int(name))
    return sorted(out)


def problems(facts):
    """[(zh, en)] of what the import did that it should not (empty: a clean import)."""
    out = []
    steps = facts.get("optimizer_steps") or 0
    if steps:
        out.append((f"执行了 {steps} 次优化器更新（在训练）", f"ran {steps} optimizer steps (training)"))
    back = facts.get("backward_calls") or 0
    if back:
        out.append((f"计算了 {back} 次梯度（backward，在训练）", f"computed gradients {back} times (backward: training)"))
    cpu, limit = facts.get("cpu"), CPU_LIMIT if facts.get("warm") else CPU_LIMIT_COLD
    if cpu is not None and cpu > limit:
        out.append((f"模块级代码用了 {cpu:.1f} 秒 CPU（在训练或处理数据？）",
                    f"its module-level code used {cpu:.1f} s of CPU (training or processing data?)"))
    if (facts.get("wall") or 0) > WALL_LIMIT:
        out.append((f"耗时 {facts['wall']:.0f} 秒", f"took {facts['wall']:.0f} s"))
    if facts.get("threads_added"):
        out.append((f"启动了 {facts['threads_added']} 个导入结束后仍在运行的线程",
                    f"started {facts['threads_added']} thread(s) still running after the import"))
    if facts.get("children"):
        out.append((f"启动了 {len(facts['children'])} 个导入结束后仍在运行的子进程",
                    f"started {len(facts['children'])} child process(es) still running after the import"))
    return out


def check_problems(facts):
    """[(zh, en)] that fail check 5.6: files left in the working directory, then problems(facts)."""
    files = facts.get("files")
    out = [(f"在当前目录创建了 {files[:5]}", f"created {files[:5]} in the working directory")] if files else []
    return out + problems(facts)


def facts(before, after, reply, wall, warm, files=()):
    """What the import did, from snapshot() before and after it, the worker's reply (its self-reported
    counts, hints only), its wall time, whether the warm-up ran, and the files in its working directory."""
    reply = reply if isinstance(reply, dict) else {}
    num = lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0  # noqa: E731
    cpu = None
    if before["cpu"] is not None and after["cpu"] is not None:
        cpu = round(after["cpu"] - before["cpu"], 3)
    elif "cpu" in reply:  # no /proc (Windows, macOS): the worker's own count, as the other hints
        cpu = round(max(0.0, float(num(reply["cpu"]))), 3)
    threads = None
    if before["threads"] is not None and after["threads"] is not None:
        threads = max(0, after["threads"] - before["threads"])
    elif "threads_added" in reply:  # the same: Python threads only
        threads = max(0, int(num(reply["threads_added"])))
    return {"cpu": cpu, "warm": warm, "wall": round(wall, 3), "threads_added": threads,
            "children": [p for p in after["children"] if p not in before["children"]],
            "optimizer_steps": num(reply.get("optimizer_steps")), "backward_calls": num(reply.get("backward_calls")),
            "files": list(files)}


def files_problem(files):
    """(zh, en) of check 5.6 for files that appeared only after the import (at the end of grading)."""
    return (f"导入文件后工作目录中出现了文件 {files[:5]}（导入时启动的线程或进程写的？）：训练和运行代码应放在 "
            f"if __name__ == \"__main__\": 之下",
            f"files appeared in the working directory after the import {files[:5]} (written by a thread or process "
            f"started at import?): training and run code belongs under if __name__ == \"__main__\":")


def files_message(files):
    """The same as the text of a failed check (grader/check_plugin.fail)."""
    return "\n".join(files_problem(files))
