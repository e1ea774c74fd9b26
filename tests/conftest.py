"""Shared test setup: the kit root on sys.path, a tiny seeded phantom dataset, a fixed torch state, and
the grading batches that several test files share.

Grading is the slow part of the suite (a fresh judge and worker process per submission), so every
submission the grader tests need is written into one folder per set of grader flags and graded by
ONE `python -m grader` call per session:

* `graded`: default flags, the kit's own grader. Each collected test module that uses it writes its
  submissions with its `write_submissions(folder)` (test_grader.py, test_grader_habits.py,
  test_grader_points.py).
* `attacked`: a copy of the grader (tampering cannot touch the real one), a small --timeout and
  --budget, a small scratch quota and a memory safety net. Each collected module that uses it writes
  its attacks with `write_attacks(folder, where)` (test_grader.py's hostile cases, test_grader_trust.py).
  It runs --jobs 3: one slot is the staller, which only sleeps.

Only modules with a selected test that uses the batch contribute, so `pytest tests/test_grader_points.py`
grades only that file's submissions. A batch that needs root, other flags or a grader that may be
tampered with differently keeps its own call (test_grader_trust.py's root batch, test_bundle.py).
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data.phantoms import make_phantom_dataset  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Two tiers: `python -m pytest -q -m "not slow"` (the developer's loop) and `python -m pytest -q` (CI)
# ---------------------------------------------------------------------------------------------

SHARED_BATCHES = ("graded", "attacked")  # the session's grading batches (below)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: grades submissions (a grader, judge or worker process), trains for more than a few "
                   "seconds, builds a venv or runs a notebook kernel; the developer's loop deselects these with "
                   "-m \"not slow\", CI runs everything")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Guard of the tiers: a test that uses a shared grading batch must be marked slow, or the fast
    tier would silently grade a whole batch."""
    unmarked = [item.nodeid for item in items
                if set(SHARED_BATCHES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a shared grading batch (graded/attacked) but are not marked "
                                "@pytest.mark.slow:\n  " + "\n  ".join(unmarked))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def notebook_kit(tmp_path, tiny_data):
    """A minimal kit for running a notebook: data/phantoms.py, the tiny data as dataset/ixi2000 and an
    empty handout/ (where the notebook goes). Returns the kit root."""
    kit = tmp_path / "kit"
    (kit / "data").mkdir(parents=True)
    for name in ("__init__.py", "phantoms.py"):
        shutil.copy(ROOT / "data" / name, kit / "data" / name)
    shutil.copytree(tiny_data, kit / "dataset" / "ixi2000")
    (kit / "handout").mkdir()
    return kit


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """6 train / 2 test phantom pairs at 64x64 (the dataset resizes them to 256x256)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("tiny"), n_train=6, n_test=2, size=64, seed=3)


def run_script(args, cwd, timeout=600):
    """Run a kit script like a user would, returning the CompletedProcess (text, both streams)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Running the grader and reading what it wrote
# ---------------------------------------------------------------------------------------------

GRADES_HEADER = ["student", "total", "step1", "step2", "step3", "step4", "step5", "status", "file"]
SCORE_KEYS = ["total", "step1", "step2", "step3", "step4", "step5"]

# Every key of Gradescope's results.json spec (gradescope-autograders.readthedocs.io/en/latest/specs/,
# "Output format"): at the top, in each test, in each leaderboard entry. Gradescope ignores or rejects
# anything else; the kit's own data belongs in extra_data.
GRADESCOPE_KEYS = {"score", "execution_time", "output", "output_format", "test_output_format", "test_name_format",
                   "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard"}
GRADESCOPE_TEST_KEYS = {"score", "max_score", "status", "name", "name_format", "number", "output", "output_format",
                        "tags", "visibility", "extra_data"}
GRADESCOPE_LEADERBOARD_KEYS = {"name", "value", "order"}


def check_gradescope_keys(data, leaderboard=False):
    """results.json holds only keys of Gradescope's spec, and a leaderboard exactly when asked for."""
    assert set(data) <= GRADESCOPE_KEYS, f"not in Gradescope's spec: {sorted(set(data) - GRADESCOPE_KEYS)}"
    assert isinstance(data.get("extra_data", {}), dict), data.get("extra_data")
    for t in data.get("tests", []):
        assert set(t) <= GRADESCOPE_TEST_KEYS, f"test keys not in the spec: {sorted(set(t) - GRADESCOPE_TEST_KEYS)}"
    assert ("leaderboard" in data) == leaderboard, data.get("leaderboard")
    for entry in data.get("leaderboard", []):
        assert set(entry) <= GRADESCOPE_LEADERBOARD_KEYS and {"name", "value"} <= set(entry), entry


def children_cpu():
    """CPU seconds (user + sys) of every finished child process so far: printed beside wall times,
    which the machine's other load inflates."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_grader(args, cwd, timeout=1500, env_extra=None, pythonpath=ROOT, preexec_fn=None):
    """`python -m grader ARGS` as a TA runs it; returns (CompletedProcess, wall seconds). The CPU
    seconds it took (all its processes) are left in run_grader.cpu."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               PYTHONPATH=str(pythonpath), **(env_extra or {}))
    start, cpu = time.perf_counter(), children_cpu()
    r = subprocess.run([sys.executable, "-m", "grader", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, encoding="utf-8", errors="replace", timeout=timeout, preexec_fn=preexec_fn)
    run_grader.cpu = children_cpu() - cpu
    return r, time.perf_counter() - start


def read_grades(out):
    with open(out / "grades.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows and rows[0] == GRADES_HEADER, rows[:1]
    return {r[0]: dict(zip(GRADES_HEADER, r)) for r in rows[1:]}


class Batch:
    """What one grader call wrote into `out`: grades.csv rows and each student's files."""

    def __init__(self, out, proc, seconds):
        self.out, self.proc, self.seconds = out, proc, seconds
        assert proc.returncode == 0, f"grader exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        self.rows = read_grades(out)

    def row(self, student):
        assert student in self.rows, f"{student} missing from grades.csv (have {sorted(self.rows)})"
        return self.rows[student]

    def scores(self, student):
        return {k: float(self.row(student)[k]) for k in SCORE_KEYS}

    def results(self, student):
        return json.loads((self.out / student / "results.json").read_text(encoding="utf-8"))

    def feedback(self, student):
        return (self.out / student / "feedback.md").read_text(encoding="utf-8")

    def per_check(self, student):
        """check id ("5.4") -> (score, max_score, output), from the student's results.json."""
        got = {}
        for t in self.results(student)["tests"]:
            m = re.search(r"\b(\d\.\d)\b", t["name"])
            if m:
                got[m.group(1)] = (t["score"], t["max_score"], t.get("output", ""))
        return got

    def lost(self, student):
        """The ids of the checks that did not get full points."""
        return {c for c, (score, top, _) in self.per_check(student).items() if score < top}

    def said(self, student):
        """Everything results.json tells the student."""
        data = self.results(student)
        return data.get("output", "") + "\n".join(t["output"] for t in data["tests"])

    def explain(self, student):
        """What the grader said, for assertion messages."""
        fb = self.out / student / "feedback.md"
        text = fb.read_text(encoding="utf-8", errors="replace") if fb.exists() else "(no feedback.md)"
        return f"{student}: {self.rows.get(student)}\n{text[:4000]}"


def report(request, line):
    """Figures (wall times) are printed, never asserted."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():  # shown even under -q and output capture
        tr.write_line(line)


def copy_kit(dest):
    """The grader and what it imports (experiment6.py for nets, data/ for phantoms), without caches."""
    shutil.copytree(ROOT / "grader", dest / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "experiment6.py", dest / "experiment6.py")
    shutil.copytree(ROOT / "data", dest / "data", ignore=shutil.ignore_patterns("__pycache__", "phantoms"))
    return dest


def contributors(request, fixture):
    """The selected test modules that use `fixture` (directly or through another fixture)."""
    return sorted({item.module for item in request.session.items if fixture in item.fixturenames},
                  key=lambda m: m.__name__)


def write_into(folder, write):
    """Call write(); return the names it created in folder (never one another module created)."""
    before = set(os.listdir(folder))
    extra = write()
    new = set(os.listdir(folder)) - before
    return new, extra or []


# ---------------------------------------------------------------------------------------------
# The shared batches
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def graded(request, tmp_path_factory):
    """Every default-flag submission of the selected modules, graded by one grader call (--jobs 2).
    `graded.written[module name]` holds the names that module put into the submissions folder."""
    tmp = tmp_path_factory.mktemp("graded")
    subs = tmp / "submissions"
    subs.mkdir()
    paths, written = [subs], {}
    for module in contributors(request, "graded"):
        names, extra = write_into(subs, lambda: module.write_submissions(subs))
        written[module.__name__] = names
        paths += extra
    out = tmp / "out"
    proc, seconds = run_grader([*paths, "--out", out, "--jobs", "2"], cwd=tmp)
    b = Batch(out, proc, seconds)
    b.tmp, b.written = tmp, written
    report(request, f"[grader batch] {len(b.rows)} submissions of {', '.join(written)} graded in {seconds:.1f} s "
                    f"wall, {run_grader.cpu:.0f} s CPU (--jobs 2); load {os.getloadavg()[0]:.1f}")
    return b


ATTACK_TIMEOUT = 25  # --timeout: small, but the reference passes well within it
ATTACK_BUDGET = 110  # --budget: far above what the reference needs, far below 13 calls x (timeout - 3)
ATTACK_SCRATCH_MB = 32  # per-submission temp-space quota (GRADER_SCRATCH_MB)


def memory_safety_net():
    """Soft address-space cap for the attack batch, so that a grader without its own memory limit
    cannot let the memory-hog submission take the whole (shared) machine. The grader may set its own."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.RLIM_INFINITY))


def tree_digest(folder):
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest(), sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="session")
def attacked(request, tmp_path_factory):
    """Every attack of the selected modules and one untouched copy of the reference (it must still get
    100: `untouched_reference`), graded by one call of a COPY of the grader with a small --timeout,
    --budget and scratch quota. Writers get `where`: tmp (the only folder attacks may write to), out
    (the --out folder), grader (the copy's package folder), reference (the untouched copy's file),
    timeout. Afterwards `attacked.before` is the copy's digest before grading and
    `attacked.survivors[module]` what that module's `after_attacks()` found right after the call
    (detached processes that outlived the batch)."""
    tmp = tmp_path_factory.mktemp("attacked")
    kit = copy_kit(tmp / "kit")
    before = tree_digest(kit / "grader")
    subs, out = tmp / "submissions", tmp / "out"
    subs.mkdir()
    reference = subs / "untouched_reference.py"
    reference.write_text((ROOT / "experiment6.py").read_text(encoding="utf-8"), encoding="utf-8")
    where = SimpleNamespace(tmp=tmp, out=out, grader=kit / "grader", reference=reference, timeout=ATTACK_TIMEOUT)
    modules, written = contributors(request, "attacked"), {}
    for module in modules:
        written[module.__name__], _ = write_into(subs, lambda: module.write_attacks(subs, where))
    # --jobs 3 on 2 cores: the staller (graded first) sleeps through its whole budget in one slot, so
    # two slots are left for the submissions that compute.
    proc, seconds = run_grader([subs, "--out", out, "--jobs", "3", "--timeout", ATTACK_TIMEOUT,
                                "--budget", ATTACK_BUDGET], cwd=tmp, pythonpath=kit,
                               env_extra={"GRADER_SCRATCH_MB": str(ATTACK_SCRATCH_MB)},
                               preexec_fn=memory_safety_net())
    survivors = {m.__name__: m.after_attacks() for m in modules if hasattr(m, "after_attacks")}
    b = Batch(out, proc, seconds)
    b.tmp, b.kit, b.before, b.written, b.survivors, b.where = tmp, kit, before, written, survivors, where
    report(request, f"[grader attack batch] {len(b.rows)} submissions of {', '.join(written)} in {seconds:.1f} s "
                    f"wall, {run_grader.cpu:.0f} s CPU (--jobs 3, --timeout {ATTACK_TIMEOUT}, --budget {ATTACK_BUDGET}, "
                    f"scratch {ATTACK_SCRATCH_MB} MB); load {os.getloadavg()[0]:.1f}")
    return b
