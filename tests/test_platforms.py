"""The grader where students and TAs are: Windows and macOS (simulated on Linux), GBK and cp1252
consoles, and root with a Python the worker uid cannot run.

Windows and macOS are simulated by a throw-away venv whose site-packages holds
tests/platform_sim/e6_platform_sim.py: every process the grader starts with that venv's python (the
CLI, each judge, each worker under `python -I`) then lacks fcntl, resource, pwd, grp, termios, os.fork,
os.setsid, the *at() calls and /proc (Windows), or /proc (macOS, run as a non-root user without
Landlock). What stays Linux's: os.name, sys.platform, the C libraries. grader/README.md ("Platforms")
says what that leaves untested.
"""
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, copy_kit, report

sys.path.insert(0, str(ROOT))
from grader import osfeatures, report as grader_report  # noqa: E402
from grader.rubric import CHECKS  # noqa: E402

SIM = ROOT / "tests" / "platform_sim" / "e6_platform_sim.py"


def sim_python(where):
    """A venv at `where` whose python sees this interpreter's packages and runs the platform simulation
    (tests/platform_sim/e6_platform_sim.py) in every process, E6_SIMULATE permitting."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, capture_output=True)
    py = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "e6_parent.pth").write_text("\n".join(sorted(ours)) + "\n", encoding="utf-8")
    shutil.copy(SIM, Path(site, SIM.name))
    Path(site, "e6_sim.pth").write_text("import e6_platform_sim\n", encoding="utf-8")  # after e6_parent.pth
    return py


def grade(py, args, cwd, env_extra, user=None, timeout=3600):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GRADER_"))}
    env.update(CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", PYTHONPATH=str(cwd), **env_extra)
    kw = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    # Generous limits: this machine's load (not the simulation) must not turn a check into a timeout.
    r = subprocess.run([str(py), "-m", "grader", *map(str, args), "--timeout", "600", "--budget", "3000"], cwd=cwd,
                       env=env, capture_output=True, timeout=timeout, **kw)
    enc = env_extra.get("PYTHONIOENCODING", "utf-8")
    # Decoded with the console's own encoding, strictly: what a GBK or cp1252 console would show.
    return r.returncode, r.stdout.decode(enc), r.stderr.decode(enc)


def total(out, student):
    return json.loads((out / student / "results.json").read_text(encoding="utf-8"))["score"]


def no_traceback(*texts):
    for t in texts:
        assert "Traceback" not in t and "UnicodeEncodeError" not in t and "ModuleNotFoundError" not in t, t[-3000:]


def two_students(kit, folder):
    """A TA's folder: ref.py (the reference) and tpl.py (the template with one comment added, so that
    it is a submission and not an untouched kit file)."""
    folder.mkdir()
    shutil.copy(kit / "experiment6.py", folder / "ref.py")
    (folder / "tpl.py").write_text((kit / "student_template.py").read_text(encoding="utf-8") + "# tpl\n",
                                   encoding="utf-8")
    return folder


def kit_copy(tmp):
    """The kit's grader, data package, reference and template in `tmp` (readable by any uid)."""
    kit = copy_kit(tmp / "kit")
    shutil.copy(ROOT / "student_template.py", kit / "student_template.py")
    return kit


# ---------------------------------------------------------------------------------------------
# Console encodings (no grading)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gbk", "cp1252"])
def test_console_text_survives_a_strict_legacy_console(encoding):
    result = {"status": "ok", "status_message": "", "total": 45, "steps": {1: 15, 2: 20, 3: 10, 4: 0, 5: 0},
              "checks": [{"id": "4.2", "max": 6, "title": "loss_G 的值正确（λ、目标、L1 对象）/ loss_G value",
                          "passed": False, "step": 4, "message": "期望 ≥ 0.5 → 得到 0.1 ✓ ✗ … /", "notes": []}]}
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict")
    osfeatures.console_safe([stream])
    print(grader_report.step_table(result), file=stream)
    print(grader_report.failed_checks_text(result), file=stream)
    print(grader_report.SELF_CHECK_NOTE, grader_report.PROTECTION_WARNING, grader_report.LAYER2_FALLBACK,
          file=stream)
    stream.flush()
    text = raw.getvalue().decode(encoding)
    assert "x 4.2 (6)" in text  # ✗ -> x
    assert "0.1 v x " in text  # ✓✗ are in neither: readable ASCII, not '?'
    assert "loss_G value" in text and "Note: your code ran" in text
    if encoding == "gbk":
        assert "期望 ≥ 0.5 → " in text and "λ" in text  # GBK has CJK, Greek and these symbols: kept
    else:
        assert "? >= 0.5 -> " in text and "lambda" in text and "(???" not in text.replace("?? ", "")


@pytest.mark.parametrize("encoding", ["gbk", "cp1252"])
def test_rubric_prints_on_a_legacy_console(encoding, tmp_path):
    env = dict(os.environ, PYTHONIOENCODING=encoding, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "grader", "--rubric"], cwd=tmp_path, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode(encoding, "replace")
    text = r.stdout.decode(encoding)  # strict: every byte is valid in the console's encoding
    assert "Total: 100" in text and b"Traceback" not in r.stderr
    assert ("合计" in text) == (encoding == "gbk")


def test_osfeatures_on_this_machine():
    """Detection matches what this (Linux) interpreter really has; the simulation tests below check the
    other branches in real grader processes."""
    assert osfeatures.FCNTL == (importlib.util.find_spec("fcntl") is not None)
    assert osfeatures.SESSIONS == hasattr(os, "setsid")
    assert osfeatures.PROC == os.path.isdir("/proc/self/task")
    assert osfeatures.new_group_kwargs() == ({"start_new_session": True} if osfeatures.SESSIONS else
                                             osfeatures.new_group_kwargs())


# ---------------------------------------------------------------------------------------------
# Simulated Windows and macOS: real gradings
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_kit():
    """A world-readable temp folder (a non-root uid must reach it) with a kit copy and a sim venv."""
    tmp = Path(tempfile.mkdtemp(prefix="e6plat-"))
    os.chmod(tmp, 0o755)
    kit = kit_copy(tmp)
    py = sim_python(tmp / "simvenv")
    yield tmp, kit, py
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_windows_simulated_self_check_and_batch(sim_kit, request):
    tmp, kit, py = sim_kit
    env = {"E6_SIMULATE": "windows", "GRADER_NO_LANDLOCK": "1"}
    out = tmp / "win"
    # Self-checks, one on a cp1252 console, one on a GBK console (strict decoding in grade())
    rc, so, se = grade(py, ["experiment6.py", "--out", out / "ref"], kit, dict(env, PYTHONIOENCODING="cp1252"))
    assert rc == 0, so + se
    no_traceback(so, se)
    assert "[platform-sim windows" in se  # the CLI ran simulated
    assert total(out / "ref", "experiment6") == 100, so
    assert "every check passed" in so
    assert "Note: your code ran in a separate process" in se and "Warning" not in se  # calm, once
    fb = (out / "ref" / "experiment6" / "feedback.md").read_text(encoding="utf-8")
    assert "[platform-sim windows" in fb  # ... and so did the worker (its log is in the feedback)
    assert "Warning" not in fb and "process isolation only / 仅进程隔离 (no sandbox)" in fb  # no subreaper: judge too
    rc, so2, se2 = grade(py, ["student_template.py", "--out", out / "tpl"], kit, dict(env, PYTHONIOENCODING="gbk"))
    assert rc == 0, so2 + se2
    no_traceback(so2, se2)
    assert total(out / "tpl", "student_template") == 0
    assert f"x 1.1 ({CHECKS['1.1'][0]})" in so2 and "未通过的检查" in so2  # ✗ degraded, Chinese kept on GBK
    # A TA batch: both files, graded the same, and the warning said once
    batch = two_students(kit, tmp / "win_batch")
    rc, so3, se3 = grade(py, [batch, "--out", out / "batch", "--jobs", "2"], kit, dict(env, PYTHONIOENCODING="gbk"))
    assert rc == 0, so3 + se3
    no_traceback(so3, se3)
    assert (total(out / "batch", "ref"), total(out / "batch", "tpl")) == (100, 0), so3
    assert se3.count("Warning: student code is not sandboxed") == 1 and "Gradescope" in se3
    report(request, "[platforms] Windows (simulated): self-check 100 / 0, batch 100 / 0")


@pytest.mark.slow
def test_macos_simulated_non_root_without_landlock(sim_kit, request):
    tmp, kit, py = sim_kit
    if not osfeatures.is_root():
        user = None  # already not root: nothing to switch
    else:
        user = 65534  # nobody
        try:  # an interpreter it may not even execute (a venv of a Python under /root) raises here
            probe = subprocess.run([str(py), "-c", "import torch, matplotlib, PIL"], user=user, group=user,
                                   extra_groups=[], capture_output=True, cwd=tmp)
            why = probe.stderr.decode(errors="replace")[-300:] if probe.returncode else ""
        except OSError as e:
            why = str(e)
        if why:
            pytest.skip(f"uid {user} cannot run {py} with its packages (a venv under /root?): {why}")
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    out = tmp / "mac"
    out.mkdir()
    if user is not None:
        for d in (home, out):
            os.chown(d, user, user)
    env = {"E6_SIMULATE": "macos", "GRADER_NO_LANDLOCK": "1", "HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    rc, so, se = grade(py, ["experiment6.py", "--out", out / "ref"], kit, env, user=user)
    assert rc == 0, so + se
    no_traceback(so, se)
    assert total(out / "ref", "experiment6") == 100, so
    assert "Warning" not in se and "Note: your code ran" in se  # a self-check: nothing alarming
    batch = two_students(kit, tmp / "mac_batch")
    rc, so2, se2 = grade(py, [batch, "--out", out / "batch", "--jobs", "2"], kit, env, user=user)
    assert rc == 0, so2 + se2
    assert (total(out / "batch", "ref"), total(out / "batch", "tpl")) == (100, 0), so2
    assert se2.count("Warning: student code is not sandboxed") == 1  # a TA batch: said once
    report(request, "[platforms] macOS (simulated: non-root, no Landlock, no /proc): self-check 100, batch 100 / 0")


@pytest.mark.slow
def test_root_with_a_python_the_worker_uid_cannot_run_says_so(tmp_path, request):
    """A venv in a mode-700 folder (as a venv or pyenv under /root): the separate-user layer cannot
    run; a TA batch must say so, which layer runs instead, and how to get it."""
    if not (osfeatures.user_layer_possible() and os.environ.get("GRADER_NO_USER") != "1"):
        pytest.skip("needs root on Linux with /proc")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    py = sim_python(private / "venv")  # E6_SIMULATE unset: a plain venv
    kit = kit_copy(tmp_path)
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a.py", "b.py"):
        (batch / name).write_text((kit / "student_template.py").read_text(encoding="utf-8") + f"# {name}\n",
                                  encoding="utf-8")
    rc, so, se = grade(py, [batch, "--out", tmp_path / "out", "--jobs", "2"], kit, {"PYTHONIOENCODING": "utf-8"})
    assert rc == 0, so + se
    assert (total(tmp_path / "out", "a"), total(tmp_path / "out", "b")) == (0, 0)
    assert se.count("the separate-user layer is off") == 1, se
    assert "outside root's home" in se and str(py) in se
    prot = json.loads((tmp_path / "out" / "a" / "results.json").read_text(encoding="utf-8"))["extra_data"]["protection"]
    assert "separate uid" not in prot
    assert "separate-user layer off" in prot, prot  # results.json / Gradescope's extra_data say it too
    if "landlock" in prot:
        assert "contained by landlock" in se  # which layer runs instead
    # One file (a student's self-check, Gradescope's --single): never silent either.
    for args in (["a.py"], ["--single", "a.py"]):
        rc, so, se = grade(py, [batch / args[-1], *args[:-1], "--out", tmp_path / "one"], kit,
                           {"PYTHONIOENCODING": "utf-8"})
        assert rc == 0 and se.count("the separate-user layer is off") == 1, (args, so + se)
        one = json.loads((tmp_path / "one" / "a" / "results.json").read_text(encoding="utf-8"))
        assert "separate-user layer off" in one["extra_data"]["protection"], one["extra_data"]
        assert "separate-user layer off" in (tmp_path / "one" / "a" / "feedback.md").read_text(encoding="utf-8")
    report(request, f"[platforms] root + private venv: fallback said once ({prot})")


@pytest.mark.skipif(not osfeatures.DIR_FD, reason="no *at() calls on this OS")
def test_rmtree_at_removes_a_tree_without_following_links(tmp_path):
    """safefiles.rmtree_at: shutil.rmtree(dir_fd=) for Python 3.9/3.10 (it is 3.11+)."""
    from grader import safefiles

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep", encoding="utf-8")
    root = tmp_path / "scratch"
    deep = root / "cwd1" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x", encoding="utf-8")
    (root / "cwd1" / "link").symlink_to(outside)  # must be unlinked, not followed
    (root / "cwd1" / "a" / "filelink").symlink_to(outside / "keep.txt")
    os.mkfifo(root / "cwd1" / "fifo")
    (root / "plainlink").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | osfeatures.O_DIRECTORY)
    try:
        safefiles.rmtree_at(fd, "cwd1")
        safefiles.rmtree_at(fd, "plainlink")
    finally:
        os.close(fd)
    assert os.listdir(root) == []
    assert (outside / "keep.txt").read_text(encoding="utf-8") == "keep"
