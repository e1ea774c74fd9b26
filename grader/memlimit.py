"""The memory the machine (container) gives the grader: its cgroup limit, the OOM kills counted there,
and whether one grading fits. Linux only; elsewhere every answer is "unknown" (None).

    python -m grader.memlimit [--results PATH]

exits 0 when one grading fits (or the limit is unknown), 3 when the limit is below what one grading
needs: then it prints what the TA must change and, with --results, writes a Gradescope results.json
telling the student that it is not their fault (grader/gradescope/run_autograder runs this first).

What one grading needs was measured (grader/README.md, "Memory"): the judge and the worker each import
torch, and a torch build that ships CUDA's libraries costs about 150 MB more per process at import,
even without a GPU.
"""
import argparse
import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path

# One grading of the reference, whole container (cgroup v1 memory.max_usage_in_bytes, page cache
# included) on Python 3.11, 2-core AMD EPYC: CPU-only torch 2.13 660 MB (100/100 inside 768 MB);
# torch 2.14 with CUDA's libraries 860 MB (65/100 inside 768 MB: the worker was OOM-killed). The need is
# that plus ~5 %.
NEED_MB = {"cpu": 700, "cuda": 900}
GRADESCOPE_SETTING = "Gradescope: assignment → Settings → Autograder Settings → memory limit"
CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 2 ** 60  # cgroup v1 writes "no limit" as 9223372036854771712


def _cgroup_dirs():
    """Candidate folders of this process's memory cgroup, innermost first (v2, then v1). In a container
    with its own cgroup namespace the path is "/" and the folder is the mount itself."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.strip("/")
        if controllers == "":  # cgroup v2 (unified)
            roots = [CGROUP, CGROUP / "unified"]
        elif "memory" in controllers.split(","):
            roots = [CGROUP / "memory"]
        else:
            continue
        for root in roots:
            here = root / rel if rel else root
            while True:  # the group and its ancestors: the smallest limit on the way up binds
                out.append(here)
                if here == root:
                    break
                here = here.parent
    return out


def _read_int(path):
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def container_limit():
    """The memory limit (bytes) that binds this process, or None when there is none or it is unknown."""
    limits = []
    for d in _cgroup_dirs():
        for name in ("memory.max", "memory.limit_in_bytes"):
            v = _read_int(d / name)
            if v is not None and 0 < v < UNLIMITED:
                limits.append(v)
    return min(limits) if limits else None


def oom_kills():
    """OOM kills counted in this process's memory cgroup so far (None: unknown). Compare two readings."""
    for d in _cgroup_dirs():
        for name in ("memory.events", "memory.oom_control"):  # v2, v1 (kernel >= 4.13)
            try:
                for line in (d / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                continue
    return None


def torch_build():
    """"cuda" when the installed torch ships CUDA's (or ROCm's) libraries, "cpu" otherwise (without importing torch)."""
    spec = find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(folder) / "lib"
        if any(lib.glob("libtorch_cuda*")) or any(lib.glob("libtorch_hip*")) or any(lib.glob("torch_cuda*")):
            return "cuda"
    return "cpu"


def needed_mb():
    return NEED_MB[torch_build()]


def oom_note(killed_by_signal=True):
    """What a student reads when the process running their code was killed, maybe by the OOM killer."""
    limit = container_limit()
    where = f"（本机上限 {limit >> 20} MB）" if limit else ""
    where_en = f" (this machine's limit: {limit >> 20} MB)" if limit else ""
    return (f"进程被系统强制结束，最常见的原因是内存不足{where}：这可能是评分机器的内存上限太小，不一定是你的代码的问题；"
            f"如果本地自查正常，请告诉助教 / the process was killed by the system, most often for lack of memory"
            f"{where_en}: the grading machine's memory limit may be too small, which is not necessarily your "
            f"code's fault; if your self-check passes on your own computer, tell your TA.")


def oom_counted_note():
    """What a student reads when the cgroup counted an OOM kill while their submission was graded."""
    limit = container_limit()
    zh, en = (f"（{limit >> 20} MB）", f" (limit {limit >> 20} MB)") if limit else ("", "")
    return (f"评分机器的内存{zh}在评分时被用尽，进程被系统结束：分数可能因此偏低，这不一定是你的问题，请告诉助教 / "
            f"the grading machine ran out of memory{en} and the system killed a process during grading: the "
            f"score may be too low because of that, which is not necessarily your fault; tell your TA.")


def too_little(limit, need):
    """(TA text, student text) for a machine whose limit is below what one grading needs."""
    ta = (f"The container's memory limit is {limit >> 20} MB; one grading needs about {need} MB with this torch "
          f"build ({torch_build()}). Raise it in {GRADESCOPE_SETTING} to at least {need} MB"
          f"{' (or install the CPU-only torch, as setup.sh does: it needs less)' if torch_build() == 'cuda' else ''}, "
          f"then rerun the autograder on the submissions.")
    student = ("评分环境的内存不足，你的提交没有被评分：这不是你的问题，请告诉助教（助教需要在 Gradescope 的 Autograder Settings "
               f"中调高内存上限）。/ The grading machine has too little memory ({limit >> 20} MB, needs about {need} MB), "
               "so your submission was not graded: this is not your fault. Please tell your TA (the assignment's "
               "Autograder Settings on Gradescope need a higher memory limit).")
    return ta, student


def results_json(student_text, ta_text):
    """A Gradescope results.json scoring 0, for a grading that could not run (keys of the spec only)."""
    test = {"name": "评分环境 / grading environment", "score": 0, "max_score": 100, "status": "failed",
            "output": student_text, "visibility": "visible"}
    return {"score": 0, "output": student_text, "output_format": "text", "test_output_format": "text",
            "test_name_format": "text", "visibility": "visible", "stdout_visibility": "hidden", "tests": [test],
            "extra_data": {"status": "grader_error", "ta_action": ta_text}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m grader.memlimit")
    p.add_argument("--results", help="write a Gradescope results.json here when memory is too small")
    a = p.parse_args(argv)
    limit, need = container_limit(), needed_mb()
    if limit is None or limit >> 20 >= need:
        print(f"[memory] limit {'none' if limit is None else f'{limit >> 20} MB'}, one grading needs about {need} MB "
              f"({torch_build()} torch): ok")
        return 0
    ta, student = too_little(limit, need)
    print(f"[memory] {ta}", file=sys.stderr)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(json.dumps(results_json(student, ta), ensure_ascii=False, indent=1),
                                   encoding="utf-8")
    return 3


if __name__ == "__main__":
    sys.exit(main())
