"""Gradescope: setup.sh's pip logic on old and new pips, the memory limit the autograder reads from its
cgroup (and the results.json it writes when that is too small), run_autograder end to end on Python
3.10 (Gradescope's Ubuntu 22.04), and one grading inside Gradescope's default 768 MB.

The last two are `slow` (a real grading each); the cgroup test needs root and a cgroup memory
controller it can create a group in, and says why it skips otherwise.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, check_gradescope_keys, read_grades, report, run_grader
from grader import memlimit

SETUP = ROOT / "grader" / "gradescope" / "setup.sh"
RUN_AUTOGRADER = ROOT / "grader" / "gradescope" / "run_autograder"
PY310 = Path(os.environ.get("GRADER_PY310", "/var/cache/experiment6-kit/dev-py3.10/bin/python"))


# ---------------------------------------------------------------------------------------------
# setup.sh: ask pip which options it has instead of trying one and failing into the build log
# ---------------------------------------------------------------------------------------------

def _fake_python(folder, help_options):
    """A `python3` whose `-m pip install --help` lists help_options and whose installs are recorded."""
    folder.mkdir()
    log = folder / "calls.log"
    fake = folder / "python3"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'echo "$*" >> "{log}"\n'
                    'if [ "$4" = "--help" ]; then\n'
                    "  echo 'Usage: pip install [options] <requirement specifier>'\n"
                    + "".join(f"  echo '  {opt}  some help text'\n" for opt in help_options)
                    + "  exit 0\nfi\n"
                    # an option pip does not know is an error, as pip 22.0.2 says it
                    'for a in "$@"; do case "$a" in --break-system-packages|--root-user-action*)\n'
                    + "".join(f'  [ "${{a%%=*}}" = "{opt}" ] && continue 2\n' for opt in help_options)
                    + '  echo "ERROR: no such option: $a" >&2; exit 2;; esac; done\n'
                    "exit 0\n", encoding="utf-8")
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize("help_options, want", [
    ([], ""),  # Ubuntu 22.04's pip 22.0.2 knows neither option
    (["--root-user-action"], "--root-user-action=ignore"),  # pip 22.1 .. 23.0
    (["--break-system-packages", "--root-user-action"], "--break-system-packages --root-user-action=ignore"),
])
def test_setup_sh_passes_only_the_pip_options_pip_has(tmp_path, help_options, want):
    fake, log = _fake_python(tmp_path / "bin", help_options)
    r = subprocess.run(["bash", "-c", f'PY="{fake}"; source "{SETUP}"; pip_install -r requirements.txt'],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stdout + r.stderr
    installs = [ln for ln in log.read_text().splitlines() if "--help" not in ln]
    assert installs == [" ".join(["-m pip install --no-input", want, "-r requirements.txt"]).replace("  ", " ")]


def test_the_fake_pip_rejects_an_unknown_option(tmp_path):
    """The test above can fail: the fake pip errors on an option it does not list, as pip 22.0.2 does."""
    fake, _ = _fake_python(tmp_path / "bin", [])
    r = subprocess.run([str(fake), "-m", "pip", "install", "--break-system-packages", "x"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no such option" in r.stderr


# ---------------------------------------------------------------------------------------------
# The container's memory limit (grader/memlimit.py)
# ---------------------------------------------------------------------------------------------

def _cgroups(tmp_path, monkeypatch, proc_lines, files):
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    monkeypatch.setattr(memlimit, "CGROUP", root)
    monkeypatch.setattr(memlimit, "PROC_CGROUP", proc)


def test_limit_of_a_cgroup_v1_group_and_its_parents(tmp_path, monkeypatch):
    _cgroups(tmp_path, monkeypatch, ["4:memory:/docker/abc", "3:cpu:/docker/abc"], {
        "memory/memory.limit_in_bytes": "9223372036854771712",  # the root: no limit
        "memory/docker/memory.limit_in_bytes": str(2 << 30),
        "memory/docker/abc/memory.limit_in_bytes": str(768 << 20),
        "memory/docker/abc/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"})
    assert memlimit.container_limit() == 768 << 20 and memlimit.oom_kills() == 2


def test_limit_of_a_cgroup_v2_container(tmp_path, monkeypatch):
    # A container with its own cgroup namespace sees itself at "/" of the mount.
    _cgroups(tmp_path, monkeypatch, ["0::/"], {"memory.max": str(1536 << 20), "memory.events": "low 0\noom_kill 0\n"})
    assert memlimit.container_limit() == 1536 << 20 and memlimit.oom_kills() == 0


def test_no_limit_is_unknown(tmp_path, monkeypatch):
    _cgroups(tmp_path, monkeypatch, ["0::/user.slice"], {"user.slice/memory.max": "max"})
    assert memlimit.container_limit() is None and memlimit.oom_kills() is None
    monkeypatch.setattr(memlimit, "PROC_CGROUP", tmp_path / "missing")  # not Linux
    assert memlimit.container_limit() is None
    assert memlimit.main([]) == 0


def test_too_little_memory_writes_a_results_json_for_student_and_ta(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memlimit, "container_limit", lambda: 512 << 20)
    results = tmp_path / "results" / "results.json"
    assert memlimit.main(["--results", str(results)]) == 3
    data = json.loads(results.read_text(encoding="utf-8"))
    check_gradescope_keys(data)
    assert data["score"] == 0 and sum(t["max_score"] for t in data["tests"]) == 100
    assert "不是你的问题" in data["output"] and "not your fault" in data["output"], data["output"]
    ta = capsys.readouterr().err
    assert "Autograder Settings" in ta and "512 MB" in ta and f"{memlimit.needed_mb()} MB" in ta, ta
    assert data["extra_data"]["ta_action"] in ta
    monkeypatch.setattr(memlimit, "container_limit", lambda: memlimit.needed_mb() << 20)
    assert memlimit.main(["--results", str(tmp_path / "other.json")]) == 0
    assert not (tmp_path / "other.json").exists()


def test_a_sigkill_is_never_only_the_students_crash():
    from grader.check_plugin import call_failure_text
    from grader.worker_process import CallFailed

    killed = call_failure_text(CallFailed("crashed", "train_step: the process exited (exit code -9)"), "train_step")
    exited = call_failure_text(CallFailed("crashed", "train_step: the process exited (exit code 3)"), "train_step")
    assert "内存上限" in killed and "memory limit may be too small" in killed, killed
    assert "memory limit" not in exited


# ---------------------------------------------------------------------------------------------
# run_autograder end to end, and inside Gradescope's default memory
# ---------------------------------------------------------------------------------------------

def _template_edited():
    """The blank template with a student's comment: an untouched copy of a kit file is never graded."""
    return (ROOT / "student_template.py").read_text(encoding="utf-8") + "\n# 我的提交 / my submission\n"


def _autograde(tmp_path, name, text, python, env_extra=None, preexec_fn=None):
    submission, results = tmp_path / name / "submission", tmp_path / name / "results"
    submission.mkdir(parents=True)
    (submission / "student_template.py").write_text(text, encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               GRADER_PYTHON=str(python), GRADER_SUBMISSION_DIR=str(submission), GRADER_RESULTS_DIR=str(results),
               **(env_extra or {}))
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    r = subprocess.run(["bash", str(RUN_AUTOGRADER)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       encoding="utf-8", errors="replace", timeout=1200, preexec_fn=preexec_fn)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((results / "results.json").read_text(encoding="utf-8"))
    return data, time.perf_counter() - start, r.stdout + r.stderr


@pytest.mark.slow
def test_run_autograder_on_python_310(tmp_path, request):
    """Gradescope's Ubuntu 22.04 runs python3.10: the reference gets 100 (with a leaderboard, asked for),
    the edited template 0, and results.json holds only keys of Gradescope's spec."""
    if not PY310.exists():
        pytest.skip(f"no Python 3.10 venv with torch at {PY310} (set GRADER_PY310)")
    ref, secs, log = _autograde(tmp_path, "reference", (ROOT / "experiment6.py").read_text(encoding="utf-8"), PY310,
                                {"GRADER_LEADERBOARD": "1"})
    check_gradescope_keys(ref, leaderboard=True)
    assert ref["score"] == 100, ref["output"] + log[-2000:]
    assert ref["leaderboard"] == [{"name": "总分 / Total", "value": 100}]
    blank, secs0, log = _autograde(tmp_path, "template", _template_edited(), PY310)
    check_gradescope_keys(blank, leaderboard=False)
    assert blank["score"] == 0 and blank["extra_data"]["status"] == "ok", blank["output"] + log[-2000:]
    report(request, f"[run_autograder, Python 3.10] reference {secs:.0f} s, template {secs0:.0f} s wall; "
                    f"load {os.getloadavg()[0]:.1f}")


def _memory_cgroup(name, mb):
    """A fresh memory cgroup of `mb` MB (v1, or v2 with the memory controller), or (None, why not)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None, "needs root to create a memory cgroup"
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    if (v1 / "memory.limit_in_bytes").exists():
        group, limit, swap = v1 / name, "memory.limit_in_bytes", ("memory.memsw.limit_in_bytes", mb << 20)
    elif (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.controllers").read_text().split():
        group, limit, swap = v2 / name, "memory.max", ("memory.swap.max", 0)
    else:
        return None, "no cgroup memory controller mounted"
    try:
        if group.exists():
            group.rmdir()
        group.mkdir()
        if not (group / limit).exists():  # v2: the controller is not enabled for children here
            group.rmdir()
            return None, f"the memory controller is not available in {group.parent}"
        (group / limit).write_text(str(mb << 20))
        if (group / swap[0]).exists():  # no swap either: the limit is the memory there is
            (group / swap[0]).write_text(str(swap[1]))
    except OSError as e:
        return None, f"cannot create a memory cgroup here: {e}"
    return group, ""


class _Cgroup:
    """A fresh memory cgroup of `mb` MB for one grading (v1, or v2 with the memory controller); skips the
    test with the reason when this machine cannot make one. `enter` puts a child process into it."""

    def __init__(self, mb):
        self.group, why = _memory_cgroup(f"e6test-{mb}-{os.getpid()}", mb)
        if self.group is None:
            pytest.skip(why)

    def enter(self):
        (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self):
        for f in ("memory.max_usage_in_bytes", "memory.peak"):
            if (self.group / f).exists():
                return int((self.group / f).read_text()) >> 20
        return None

    def remove(self):
        for _ in range(50):  # the group can be removed once its last process has been reaped
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _grade_inside(tmp_path, mb):
    """`python -m grader experiment6.py` inside an `mb` MB cgroup, with generous time limits (a loaded
    machine must not turn this into a timeout): (grades.csv row, results.json, cgroup peak MB, seconds)."""
    cg = _Cgroup(mb)
    try:
        out = tmp_path / "out"
        r, secs = run_grader([ROOT / "experiment6.py", "--out", out, "--timeout", "300", "--budget", "1500"],
                             cwd=tmp_path, timeout=2400, preexec_fn=cg.enter)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return read_grades(out)["experiment6"], json.loads((out / "experiment6" / "results.json").read_text(
            encoding="utf-8")), cg.peak_mb(), secs
    finally:
        cg.remove()


@pytest.mark.slow
def test_inside_gradescopes_default_768_mb(tmp_path, request):
    """Gradescope gives a container 768 MB by default. With a CPU-only torch (what setup.sh installs) a
    whole grading of the reference fits and gets 100; a torch with CUDA's libraries needs more, and then
    run_autograder says so (to the student: not your fault; to the TA: which setting) without grading."""
    build = memlimit.torch_build()
    if build == "cpu":
        row, data, peak, secs = _grade_inside(tmp_path, 768)
        report(request, f"[768 MB cgroup] torch {build}: {row['total']} {row['status']}, peak {peak} MB, {secs:.0f} s")
        assert (row["total"], row["status"]) == ("100", "ok"), data["output"]
        return
    assert memlimit.needed_mb() > 768
    cg = _Cgroup(768)
    try:
        data, secs, log = _autograde(tmp_path, "reference", (ROOT / "experiment6.py").read_text(encoding="utf-8"),
                                     sys.executable, preexec_fn=cg.enter)
    finally:
        cg.remove()
    report(request, f"[768 MB cgroup] torch {build}: run_autograder refused ({secs:.0f} s)")
    check_gradescope_keys(data)
    assert data["score"] == 0 and "not your fault" in data["output"] and "不是你的问题" in data["output"], data
    assert "Autograder Settings" in log and "768 MB" in log, log[-2000:]


@pytest.mark.slow
def test_the_memory_the_autograder_asks_for_is_enough(tmp_path, request):
    """Inside exactly the memory grader/memlimit.py says one grading needs with this torch build, the
    reference gets 100: run_autograder never asks for less than a grading uses."""
    need = memlimit.needed_mb()
    row, data, peak, secs = _grade_inside(tmp_path, need)
    report(request, f"[{need} MB cgroup] torch {memlimit.torch_build()}: {row['total']} {row['status']}, "
                    f"peak {peak} MB, {secs:.0f} s")
    assert (row["total"], row["status"]) == ("100", "ok"), data["output"]


def test_an_oom_kill_counted_in_the_cgroup_is_said_with_the_limit(monkeypatch):
    monkeypatch.setattr(memlimit, "container_limit", lambda: 768 << 20)
    note = memlimit.oom_counted_note()
    assert "768 MB" in note and "不一定是你的问题" in note and "not necessarily your fault" in note, note
    monkeypatch.setattr(memlimit, "container_limit", lambda: None)
    assert "MB" not in memlimit.oom_counted_note()


def test_malloc_settings_only_inside_a_small_container(monkeypatch):
    """The memory-saving malloc settings cost CPU (a self-check 15 s -> 22 s wall): only where memory is short."""
    from grader import cli, memlimit

    for limit, want in ((768 * 2 ** 20, cli.MALLOC_ENV), (None, {}), (8 * 2 ** 30, {})):
        monkeypatch.setattr(memlimit, "container_limit", lambda limit=limit: limit)
        assert cli.malloc_env() == want, limit
