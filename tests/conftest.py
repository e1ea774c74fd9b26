"""Shared test setup: the kit root on sys.path, a tiny seeded phantom dataset, a fixed torch state, and
the grading batches that several test files share.

Grading is the slow part of the suite (a fresh judge and worker process per submission), so every
submission the grader tests need is written into one folder per set of grader flags and graded by
ONE `python -m grader` call per session, started in the background as soon as the tests are
collected (the tests that read a batch run last, the others beside it):

* `graded`: default flags, the kit's own grader, and always `reference` (experiment6.py untouched).
  Each collected test module that uses it writes its submissions with its `write_submissions(folder)`
  and declares its one-bug variants with `variants()`; the variants of all modules are packed several
  to a submission where the grader's design makes them independent (tests/grader_cases/combine.py,
  read back with `check_variant`). Contributors: test_grader.py, test_grader_habits.py,
  test_grader_points.py, test_grader_steps12.py, test_grader_steps345.py.
* `attacked`: a copy of the grader (tampering cannot touch the real one), a small --timeout and
  --budget, a small scratch quota and a memory safety net. Each collected module that uses it writes
  its attacks with `write_attacks(folder, where)` (test_grader.py's hostile cases, test_grader_trust.py,
  test_grader_textsafe.py). It runs --jobs 3: one slot is the staller, which only sleeps.

Only modules with a selected test that uses the batch contribute, so `pytest tests/test_grader_points.py`
grades only that file's submissions (its variants packed among themselves). A batch that needs root, other
flags or a grader that may be tampered with differently keeps its own call (test_grader_trust.py's root
batch, test_bundle.py).
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


def reads_shared_batch(item):
    return bool(set(SHARED_BATCHES) & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Guard of the tiers: a test that uses a shared grading batch must be marked slow, or the fast
    tier would silently grade a whole batch."""
    unmarked = [item.nodeid for item in items
                if reads_shared_batch(item) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a shared grading batch (graded/attacked) but are not marked "
                                "@pytest.mark.slow:\n  " + "\n  ".join(unmarked))
    # The tests that read a shared batch run last (in their own order): the batches are graded in the
    # background meanwhile (pytest_collection_finish), beside the other tests. Just before them run the
    # tests whose fixture is a background job (below), so that the background thread can take some.
    def rank(item):
        if reads_shared_batch(item):
            return 2
        return 1 if job_fixtures(item) else 0

    items[:] = sorted(items, key=rank)  # stable: each group keeps its order


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

    def variant(self, name):
        """(submission it was packed into, its own checks, the names packed with it, the checks outside
        every member's parts) of a one-bug variant (tests/grader_cases/combine.py)."""
        from grader.rubric import CHECKS

        packed = getattr(self, "packed", {})
        assert name in packed, f"{name} is not a packed variant of this batch"
        stem, own, partners = packed[name]
        others = set().union(*(packed[p][1] for p in partners))
        return stem, own, partners, set(CHECKS) - own - others

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


def write_into(folder, write):
    """Call write(); return the names it created in folder (never one another module created)."""
    before = set(os.listdir(folder))
    extra = write()
    new = set(os.listdir(folder)) - before
    return new, extra or []


# ---------------------------------------------------------------------------------------------
# The shared batches
#
# Both are started in the background as soon as the tests are collected (the default batch, then the
# attack batch), and the tests that read them run last: meanwhile the other tests, which mostly use
# one core, run beside them. A batch's fixture waits for its grader call to end.
# ---------------------------------------------------------------------------------------------

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


def session_contributors(session, fixture):
    """The selected test modules that use `fixture` (directly or through another fixture)."""
    return sorted({item.module for item in session.items if fixture in getattr(item, "fixturenames", ())},
                  key=lambda m: m.__name__)


def prepare_graded(session, tmp_path_factory):
    """Write the default batch's submissions; returns (grader arguments, cwd, what the fixture keeps)."""
    from grader_cases import combine

    tmp = tmp_path_factory.mktemp("graded")
    subs = tmp / "submissions"
    subs.mkdir()
    reference = (ROOT / "experiment6.py").read_text(encoding="utf-8")
    (subs / "reference.py").write_text(reference, encoding="utf-8")
    paths, written, variants, declared_by = [subs], {}, {}, {}
    for module in session_contributors(session, "graded"):
        if hasattr(module, "write_submissions"):
            names, extra = write_into(subs, lambda: module.write_submissions(subs))
            written[module.__name__] = names
            paths += extra
        for name, (want, source) in (module.variants() if hasattr(module, "variants") else {}).items():
            assert name not in variants, f"variant {name} declared by {declared_by[name]} and {module.__name__}"
            variants[name], declared_by[name] = (want, source), module.__name__
    files, packed = combine.pack(variants, reference)
    for stem, source in files.items():
        assert not (subs / f"{stem}.py").exists(), stem
        (subs / f"{stem}.py").write_text(source, encoding="utf-8")
    written["combined"] = {f"{stem}.py" for stem in files}
    keep = SimpleNamespace(tmp=tmp, written=written, packed=packed, n_variants=len(variants), n_files=len(files))
    return [*paths, "--out", tmp / "out", "--jobs", "2"], tmp, keep


def prepare_attacked(session, tmp_path_factory):
    """Copy the grader and write the attack batch's submissions; returns (grader arguments, cwd, keep)."""
    tmp = tmp_path_factory.mktemp("attacked")
    kit = copy_kit(tmp / "kit")
    before = tree_digest(kit / "grader")
    subs, out = tmp / "submissions", tmp / "out"
    subs.mkdir()
    reference = subs / "untouched_reference.py"
    reference.write_text((ROOT / "experiment6.py").read_text(encoding="utf-8"), encoding="utf-8")
    where = SimpleNamespace(tmp=tmp, out=out, grader=kit / "grader", reference=reference, timeout=ATTACK_TIMEOUT)
    modules, written = session_contributors(session, "attacked"), {}
    for module in modules:
        written[module.__name__], _ = write_into(subs, lambda: module.write_attacks(subs, where))
    keep = SimpleNamespace(tmp=tmp, kit=kit, before=before, written=written, where=where, modules=modules)
    # --jobs 3 on 2 cores: the staller (graded first) sleeps through its whole budget in one slot, so
    # two slots are left for the submissions that compute.
    return [subs, "--out", out, "--jobs", "3", "--timeout", ATTACK_TIMEOUT, "--budget", ATTACK_BUDGET], tmp, keep


class GraderCall:
    """`python -m grader ARGS` started now (as run_grader runs it, output into files); `wait()` returns
    (CompletedProcess, wall seconds, CPU seconds of all its processes)."""

    def __init__(self, args, cwd, env_extra=None, pythonpath=ROOT, preexec_fn=None):
        env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
                   PYTHONPATH=str(pythonpath), **(env_extra or {}))
        self.args = [sys.executable, "-m", "grader", *map(str, args)]
        self.files = [open(cwd / name, "w+b") for name in ("grader.stdout", "grader.stderr")]
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(self.args, cwd=cwd, env=env, stdout=self.files[0], stderr=self.files[1],
                                     preexec_fn=preexec_fn, start_new_session=hasattr(os, "setsid"))
        self.result, self.cpu, self.seconds = None, 0.0, None

    def _reap(self):
        if hasattr(os, "wait4"):  # its own CPU time and that of every process it waited for
            _pid, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.cpu = usage.ru_utime + usage.ru_stime
        else:
            self.proc.wait()

    def wait(self, timeout=2400):
        if self.result is None:
            import threading

            reaper = threading.Thread(target=self._reap, daemon=True)
            reaper.start()
            reaper.join(timeout - (time.perf_counter() - self.start))
            if reaper.is_alive():
                self.kill()
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.seconds = time.perf_counter() - self.start
            out, err = [(f.seek(0), f.read().decode("utf-8", errors="replace"))[1] for f in self.files]
            for f in self.files:
                f.close()
            self.result = subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)
        return self.result, self.seconds, self.cpu

    def kill(self):
        if self.proc.returncode is None:  # not reaped yet (the reaper sets it)
            try:
                os.killpg(self.proc.pid, 9) if hasattr(os, "killpg") else self.proc.kill()
            except OSError:
                pass


class SharedBatches:
    """The session's two grader calls, one after the other in a background thread."""

    def __init__(self, session):
        import threading

        factory = session.config._tmp_path_factory
        self.calls, self.done, self.errors = {}, {}, {}
        self.prepared = {}
        for name, prepare in (("graded", prepare_graded), ("attacked", prepare_attacked)):
            if session_contributors(session, name):
                try:
                    self.prepared[name] = prepare(session, factory)
                except Exception as e:  # noqa: BLE001 - raised by the batch's fixture, not at collection
                    self.prepared[name], self.errors[name], self.done[name] = None, e, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self._grade()
        finally:
            if "jobs" in _SHARED:
                _SHARED["jobs"].run_queued()

    def _grade(self):
        for name, prepared in self.prepared.items():
            if prepared is None:
                continue
            args, cwd, keep = prepared
            try:
                if name == "graded":
                    call = GraderCall(args, cwd)
                else:
                    call = GraderCall(args, cwd, pythonpath=keep.kit, preexec_fn=memory_safety_net(),
                                      env_extra={"GRADER_SCRATCH_MB": str(ATTACK_SCRATCH_MB)})
                self.calls[name] = call
                call.wait()
                if name == "attacked":  # right after the call: detached processes that outlived the batch
                    keep.survivors = {m.__name__: m.after_attacks() for m in keep.modules
                                      if hasattr(m, "after_attacks")}
            except BaseException as e:  # noqa: BLE001 - raised by the fixture that waits for it
                self.errors[name] = e
            finally:
                self.done[name] = True

    def get(self, name):
        """(Batch, keep, CPU seconds) once that call has ended."""
        assert name in self.prepared, f"no test selected uses {name}"
        while name not in self.done and self.thread.is_alive():  # GraderCall.wait has its own timeout
            self.thread.join(1)
        if name in self.errors:
            raise self.errors[name]
        proc, seconds, cpu = self.calls[name].wait()
        args, cwd, keep = self.prepared[name]
        return Batch(args[args.index("--out") + 1], proc, seconds), keep, cpu

    def stop(self):
        for call in self.calls.values():
            call.kill()


# ---------------------------------------------------------------------------------------------
# Background jobs: other slow set-up that depends on nothing else (a grader batch of a configuration
# of its own, the forger). A module declares `BACKGROUND_JOBS = {fixture name: job}`; `job(factory,
# param)` returns the fixture's value (param: the fixture's parameter, or None) and may skip. Each
# job a selected test needs is queued at collection; the background thread takes queued jobs once
# the shared batches are graded, and a fixture runs its job itself if the thread has not taken it
# (else it waits for it). Their tests run just before the shared batches' readers, so both cores stay
# busy to the end. The fixture gets the value with `background_result(request, param)`.
# ---------------------------------------------------------------------------------------------

def job_fixtures(item):
    """[(fixture name, param)] of the background jobs this test uses."""
    declared = getattr(getattr(item, "module", None), "BACKGROUND_JOBS", {})
    callspec = getattr(item, "callspec", None)
    return [(name, callspec.params.get(name) if callspec else None)
            for name in getattr(item, "fixturenames", ()) if name in declared]


class Jobs:
    def __init__(self, session):
        import threading

        self.lock, self.queue, self.state = threading.Lock(), [], {}
        factory = session.config._tmp_path_factory
        for item in session.items:
            for name, param in job_fixtures(item):
                key = (item.module.__name__, name, param)
                if key not in self.state:
                    job = item.module.BACKGROUND_JOBS[name]
                    self.state[key] = {"run": lambda job=job, param=param: job(factory, param),
                                       "done": threading.Event(), "value": None, "error": None, "where": None}
                    self.queue.append(key)

    def _claim(self, key=None):
        with self.lock:
            if key is None:
                key = self.queue[0] if self.queue else None
            if key is None or key not in self.queue:
                return None
            self.queue.remove(key)
            return key

    def _run(self, key, where):
        st = self.state[key]
        st["where"] = where
        try:
            st["value"] = st["run"]()
        except BaseException as e:  # noqa: BLE001 - pytest.skip too: raised again by the fixture
            st["error"] = e
        finally:
            st["done"].set()

    def cancel(self):
        """The session is over: no queued job starts any more (a running one finishes on its own)."""
        with self.lock:
            self.queue.clear()

    def run_queued(self):
        """The background thread's part: every job no fixture has taken yet."""
        while True:
            key = self._claim()
            if key is None:
                return
            self._run(key, "background")

    def result(self, key):
        if self._claim(key) is not None:
            self._run(key, "foreground")
        st = self.state[key]
        st["done"].wait()
        if st["error"] is not None:
            raise st["error"]
        return st["value"], st["where"]


def background_result(request, param=None):
    """The value of this fixture's background job (run here if the background thread has not taken it)."""
    key = (request.module.__name__, request.fixturename, param)
    jobs = _SHARED.get("jobs")
    assert jobs is not None and key in jobs.state, f"background job {key} was not queued at collection"
    value, where = jobs.result(key)
    for line in getattr(value, "report_lines", []):
        report(request, f"{line} ({where})")
    return value


_SHARED = {}


def pytest_collection_finish(session):
    """Start the shared batches and background jobs the selected tests need (see above)."""
    if session.config.option.collectonly:
        return
    jobs = Jobs(session)
    if jobs.state:
        _SHARED["jobs"] = jobs
    if any(reads_shared_batch(item) for item in session.items):
        _SHARED["batches"] = SharedBatches(session)
    elif jobs.state:  # no shared batch: the background thread takes the jobs at once
        import threading

        threading.Thread(target=jobs.run_queued, daemon=True).start()


def pytest_sessionfinish(session):
    if "jobs" in _SHARED:  # an interrupted session starts no more background jobs
        _SHARED.pop("jobs").cancel()
    if "batches" in _SHARED:  # an interrupted session leaves no grader running
        _SHARED.pop("batches").stop()


@pytest.fixture(scope="session")
def graded(request):
    """Every default-flag submission of the selected modules, graded by one grader call (--jobs 2).

    Always holds `reference` (experiment6.py untouched, which several files expect to score 100).
    Each module writes its own files with `write_submissions(folder)` and may declare one-bug variants
    with `variants()` (name -> (checks lost, source)): those of all modules are packed several to a
    submission (tests/grader_cases/combine.py) and read back with `graded.variant(name)` /
    `check_variant`. `graded.written[module name]` holds the names that module put into the folder
    (`graded.written["combined"]` the packed submissions)."""
    b, keep, cpu = _SHARED["batches"].get("graded")
    b.tmp, b.written, b.packed = keep.tmp, keep.written, keep.packed
    report(request, f"[grader batch] {len(b.rows)} submissions ({keep.n_variants} variants packed into "
                    f"{keep.n_files}) of {', '.join(keep.written)} graded in {b.seconds:.1f} s wall, {cpu:.0f} s CPU "
                    f"(--jobs 2, beside other tests); load {os.getloadavg()[0]:.1f}")
    return b


@pytest.fixture(scope="session")
def attacked(request):
    """Every attack of the selected modules and one untouched copy of the reference (it must still get
    100: `untouched_reference`), graded by one call of a COPY of the grader with a small --timeout,
    --budget and scratch quota. Writers get `where`: tmp (the only folder attacks may write to), out
    (the --out folder), grader (the copy's package folder), reference (the untouched copy's file),
    timeout. Afterwards `attacked.before` is the copy's digest before grading and
    `attacked.survivors[module]` what that module's `after_attacks()` found right after the call
    (detached processes that outlived the batch)."""
    b, keep, cpu = _SHARED["batches"].get("attacked")
    b.tmp, b.kit, b.before, b.written, b.survivors, b.where = (keep.tmp, keep.kit, keep.before, keep.written,
                                                               keep.survivors, keep.where)
    report(request, f"[grader attack batch] {len(b.rows)} submissions of {', '.join(keep.written)} in "
                    f"{b.seconds:.1f} s wall, {cpu:.0f} s CPU (--jobs 3, --timeout {ATTACK_TIMEOUT}, --budget "
                    f"{ATTACK_BUDGET}, scratch {ATTACK_SCRATCH_MB} MB, beside other tests); load "
                    f"{os.getloadavg()[0]:.1f}")
    return b


def check_variant(batch, name, want):
    """Assert a packed variant's exact outcome. want: {check id: its score, or None for "loses points"}
    for the checks it loses; every other check of its parts keeps its points, and so does every check
    outside all parts of the submission it was packed into (tests/grader_cases/combine.py). Returns
    its submission's per-check results (check id -> (score, max, output))."""
    from grader.rubric import CHECKS

    stem, own, partners, outside = batch.variant(name)
    got = batch.per_check(stem)
    assert set(got) == set(CHECKS), (f"{name} (in {stem}): checks reported {sorted(got)}", batch.explain(stem))
    assert set(want) <= own, f"{name} declares checks outside its parts: {sorted(set(want) - own)}"
    wrong = {}
    for cid in own | outside:
        score, top, _ = got[cid]
        if cid not in want:
            ok = score == top
        else:
            ok = score < top if want[cid] is None else score == want[cid]
        if not ok:
            wrong[cid] = score
    assert not wrong, (f"{name}: these checks differ from its exact outcome {want} (every other check full): "
                       f"{ {c: wrong[c] for c in sorted(wrong) if c in own} }; outside every part of {stem} "
                       f"(packed with {partners}): { {c: wrong[c] for c in sorted(wrong) if c not in own} }",
                       batch.explain(stem))
    return got
