"""The grader: the reference scores 100, a blank template 0, single-bug variants lose points in the
right step only, hostile submissions never get full marks and never stop the batch, every input
form and encoding works, and the outputs follow the Gradescope format.

Grading is the slow part (a fresh process per submission), so every submission the tests need is
written into a few folders and graded by as few `python -m grader` calls as possible (session
fixtures); the tests then only read grades.csv / results.json. The submissions are built here from
experiment6.py (tests/grader_cases/cases.py), never stored, so they follow the reference.
"""
import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from grader_cases import cases as C

pytestmark = pytest.mark.skipif(not (ROOT / "grader" / "__main__.py").exists(),
                                reason="grader/ not written yet")

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")
HEADER = ["student", "total", "step1", "step2", "step3", "step4", "step5", "status", "file"]
FULL = C.POINTS
HOSTILE_TIMEOUT = 30  # --timeout for the hostile batch: small, but the reference still passes in it
MAKE_STUDENT = ROOT / "handout" / "make_student.py"


# ---------------------------------------------------------------------------------------------
# Running the grader
# ---------------------------------------------------------------------------------------------

def memory_safety_net():
    """Soft address-space cap for the hostile batch, so that a grader without its own memory limit
    cannot let the memory-hog submission take the whole (shared) machine. The grader may set its own."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.RLIM_INFINITY))


def run_grader(args, cwd, timeout=900, env_extra=None, pythonpath=ROOT, preexec_fn=None):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               PYTHONPATH=str(pythonpath), **(env_extra or {}))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "grader", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout,
                       preexec_fn=preexec_fn)
    return r, time.perf_counter() - start


def read_grades(out):
    with open(out / "grades.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows and rows[0] == HEADER, rows[:1]
    return {r[0]: dict(zip(HEADER, r)) for r in rows[1:]}


def scores(row):
    return {k: float(row[k]) for k in ["total", *C.STEPS]}


def results_json(batch, student):
    return json.loads((batch.out / student / "results.json").read_text(encoding="utf-8"))


class Batch:
    def __init__(self, out, proc, seconds):
        self.out, self.proc, self.seconds = out, proc, seconds
        assert proc.returncode == 0, f"grader exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        self.rows = read_grades(out)

    def row(self, student):
        assert student in self.rows, f"{student} missing from grades.csv (have {sorted(self.rows)})"
        return self.rows[student]

    def scores(self, student):
        return scores(self.row(student))

    def explain(self, student):
        """What the grader said, for assertion messages."""
        fb = self.out / student / "feedback.md"
        text = fb.read_text(encoding="utf-8", errors="replace") if fb.exists() else "(no feedback.md)"
        return f"{student}: {self.rows.get(student)}\n{text[:3000]}"


def report(request, line):
    """Figures (wall times) are printed, never asserted."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():  # shown even under -q and output capture
        tr.write_line(line)


# ---------------------------------------------------------------------------------------------
# Building submissions
# ---------------------------------------------------------------------------------------------

def notebook_from_source(source, marker):
    """The reference as a student notebook: several definition cells, a markdown cell, a magic, a shell
    line and a "run"-tagged training cell that the grader must not execute (it would write `marker`)."""
    import nbformat

    source = source.replace('\nif __name__ == "__main__":\n    sys.exit(main())\n', "\n")
    lines = source.splitlines(keepends=True)
    # Cut before every section header (a "# ====" line followed by a "# STEP ..."-style title line).
    cuts = [0] + [i for i in range(1, len(lines) - 1)
                  if lines[i].startswith("# ====") and not lines[i + 1].startswith("# ====")
                  and lines[i + 1].startswith("# ")] + [len(lines)]
    chunks = ["".join(lines[a:b]).strip("\n") for a, b in zip(cuts, cuts[1:])]
    assert len(chunks) >= 6, "expected the reference to have its Step section headers"
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# 实验六 · Experiment 6\n\n按步骤完成 / complete step by step."))
    nb.cells.append(nbformat.v4.new_code_cell("%matplotlib inline\n" + chunks[0]))
    nb.cells.append(nbformat.v4.new_code_cell("!pip list"))
    nb.cells += [nbformat.v4.new_code_cell(c) for c in chunks[1:]]
    run = nbformat.v4.new_code_cell(f'open({str(marker)!r}, "w").write("executed")\nmain(["--epochs", "50"])')
    run.metadata["tags"] = ["run"]
    nb.cells.append(run)
    nbformat.validate(nb)
    return nb


def write_notebook(nb, path):
    import nbformat

    if isinstance(nb, str):
        path.write_text(nb, encoding="utf-8")
    else:
        nbformat.write(nb, str(path))


def load_make_student():
    spec = importlib.util.spec_from_file_location("make_student_for_tests", MAKE_STUDENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blank():
    return C.blank_template(REFERENCE)


def syntax_error():
    return C.substitute(REFERENCE, [("return loss_G.item(), loss_D.item()", "return loss_G.item(), loss_D.item(")])


def gbk_bytes():
    data = REFERENCE.encode("gbk")  # raises if a character of the reference has no GBK code
    assert data.decode("gbk") == REFERENCE
    return data


def tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest(), sorted(p.name for p in folder.iterdir())


# Expected scores per main-batch student: None = full points for that step, "lose" = fewer than full,
# a number = exactly that.
def expect_variant(step_that_loses):
    return {s: ("lose" if s == step_that_loses else None) for s in C.STEPS}


EXPECT = {
    "reference": expect_variant(None),
    "blank": {s: 0 for s in C.STEPS},
    **{name: expect_variant(step) for name, (step, _subs) in C.VARIANTS.items()},
    "notebook": expect_variant(None),
    "independent_rewrite": expect_variant(None),  # every solution region in another style (cases.REWRITE)
    "folder_gbk": expect_variant(None),       # a folder per student, holding a GBK-encoded file
    "solo_bom": expect_variant(None),         # a student folder given directly as PATH, UTF-8 with BOM
    "zip_crlf": expect_variant(None),         # inside a .zip, CRLF line endings
    "zip_syntax_error": {s: 0 for s in C.STEPS},
}


@pytest.fixture(scope="session")
def batch(tmp_path_factory, request):
    """Every ordinary submission, graded by one grader call (default timeout, --jobs 2)."""
    tmp = tmp_path_factory.mktemp("grader_batch")
    subs = tmp / "submissions"
    subs.mkdir()
    (subs / "reference.py").write_text(REFERENCE, encoding="utf-8")
    (subs / "blank.py").write_text(blank(), encoding="utf-8")
    if (ROOT / "student_template.py").exists():
        shutil.copy(ROOT / "student_template.py", subs / "generated_template.py")
    for name, (_step, subs_) in C.VARIANTS.items():
        (subs / f"{name}.py").write_text(C.substitute(REFERENCE, subs_), encoding="utf-8")
    (subs / "independent_rewrite.py").write_text(C.replace_solutions(REFERENCE, C.REWRITE), encoding="utf-8")
    marker = tmp / "run_cell_executed"
    write_notebook(notebook_from_source(REFERENCE, marker), subs / "notebook.ipynb")
    make_student_error = None
    if MAKE_STUDENT.exists():
        try:  # a failure here belongs to test_make_student_notebook_gets_100, not to the whole batch
            write_notebook(load_make_student().build_notebook(REFERENCE, solutions=True),
                           subs / "notebook_make_student.ipynb")
        except Exception as e:  # noqa: BLE001
            make_student_error = f"handout/make_student.py build_notebook(source, solutions=True) failed: {e!r}"
    # A folder per student (with a stray non-code file, as students hand in), GBK-encoded code.
    (subs / "folder_gbk").mkdir()
    (subs / "folder_gbk" / "student_template.py").write_bytes(gbk_bytes())
    (subs / "folder_gbk" / "notes.txt").write_text("my notes", encoding="utf-8")
    # One student's folder passed directly as a PATH: UTF-8 with a byte-order mark (Windows Notepad).
    solo = tmp / "solo_bom"
    solo.mkdir()
    (solo / "student_template.py").write_bytes(b"\xef\xbb\xbf" + REFERENCE.encode("utf-8"))
    # A .zip of per-student folders: CRLF line endings, and a syntax error the batch must survive.
    archive = tmp / "handins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zip_crlf/student_template.py", REFERENCE.replace("\n", "\r\n").encode("utf-8"))
        z.writestr("zip_syntax_error/student_template.py", syntax_error().encode("utf-8"))
    out = tmp / "out"
    proc, seconds = run_grader([subs, solo, archive, "--out", out, "--jobs", "2"], cwd=tmp)
    n = len(list(subs.iterdir())) + 1 + 2
    report(request, f"[grader batch] {n} submissions graded in {seconds:.1f} s wall "
                    f"({seconds / n:.1f} s per submission, --jobs 2)")
    b = Batch(out, proc, seconds)
    b.marker, b.make_student_error = marker, make_student_error
    return b


# ---------------------------------------------------------------------------------------------
# Reference, blank template, variants
# ---------------------------------------------------------------------------------------------

def test_reference_gets_100(batch):
    assert batch.scores("reference") == {"total": 100, **FULL}, batch.explain("reference")
    assert batch.row("reference")["status"] == "ok"


def test_blank_template_gets_0_without_crashing(batch):
    assert batch.scores("blank") == {"total": 0, **{s: 0 for s in C.STEPS}}, batch.explain("blank")
    fb = (batch.out / "blank" / "feedback.md").read_text(encoding="utf-8")
    assert "NotImplementedError" in fb or "未完成" in fb or "not implemented" in fb.lower(), fb[:2000]


def test_generated_student_template_gets_0(batch):
    if not (ROOT / "student_template.py").exists():
        pytest.skip("student_template.py not generated yet")
    assert batch.scores("generated_template")["total"] == 0, batch.explain("generated_template")


@pytest.mark.parametrize("student", [s for s in EXPECT if s not in ("reference", "blank")])
def test_expected_per_step_scores(batch, student):
    got = batch.scores(student)
    if student == "s1_unsorted" and got["step1"] == FULL["step1"] and \
            "lists files in name order" in (batch.out / student / "feedback.md").read_text(encoding="utf-8"):
        pytest.skip("this file system lists files in name order: the grader says it cannot see a missing sorted()")
    for step, want in EXPECT[student].items():
        if want is None:
            assert got[step] == FULL[step], (step, batch.explain(student))
        elif want == "lose":
            assert got[step] < FULL[step], (step, batch.explain(student))
        else:
            assert got[step] == want, (step, batch.explain(student))


def test_notebook_run_cell_is_not_executed(batch):
    assert not batch.marker.exists(), "the grader executed a cell tagged 'run'"
    assert batch.row("notebook")["status"] == "ok"


def test_make_student_notebook_gets_100(batch):
    if not MAKE_STUDENT.exists():
        pytest.skip("handout/make_student.py not written yet")
    assert batch.make_student_error is None, batch.make_student_error
    assert batch.scores("notebook_make_student") == {"total": 100, **FULL}, batch.explain("notebook_make_student")


def test_encodings_match_clean_utf8_per_test(batch):
    ref = [(t["name"], t["score"]) for t in results_json(batch, "reference")["tests"]]
    for student in ("folder_gbk", "solo_bom", "zip_crlf"):
        assert [(t["name"], t["score"]) for t in results_json(batch, student)["tests"]] == ref, student


def test_reproducible_per_test_scores(batch, hostile):
    """The reference graded twice (once in each batch) gets identical per-test scores."""
    a, b = results_json(batch, "reference")["tests"], results_json(hostile, "h_reference")["tests"]
    assert [(t["name"], t["score"], t["status"]) for t in a] == [(t["name"], t["score"], t["status"]) for t in b]


# ---------------------------------------------------------------------------------------------
# Input forms and user errors
# ---------------------------------------------------------------------------------------------

def test_input_forms_give_the_right_ids(batch):
    expected = {"reference", "blank", "notebook", "folder_gbk", "solo_bom", "zip_crlf",
                "zip_syntax_error", "independent_rewrite", *C.VARIANTS}
    if (ROOT / "student_template.py").exists():
        expected.add("generated_template")
    if MAKE_STUDENT.exists() and batch.make_student_error is None:
        expected.add("notebook_make_student")
    assert set(batch.rows) == expected


def test_syntax_error_gets_0_and_says_so(batch):
    row = batch.row("zip_syntax_error")
    assert row["status"] == "syntax_error" and float(row["total"]) == 0, batch.explain("zip_syntax_error")
    fb = (batch.out / "zip_syntax_error" / "feedback.md").read_text(encoding="utf-8")
    assert "line" in fb.lower() or "行" in fb, fb[:2000]


def test_missing_path_is_a_bilingual_error_without_traceback(tmp_path):
    r, _ = run_grader([tmp_path / "no-such-folder", "--out", tmp_path / "out"], cwd=tmp_path, timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "no-such-folder" in text
    assert re.search(r"[\u4e00-\u9fff]", text) and re.search(r"[A-Za-z]{4,}", text), text


# ---------------------------------------------------------------------------------------------
# Output formats
# ---------------------------------------------------------------------------------------------

VISIBILITY = {"visible", "hidden", "after_due_date", "after_published"}


def check_gradescope_results(data):
    """Gradescope's results.json: the keys and types its autograder reads."""
    number = (int, float)
    assert isinstance(data, dict)
    assert isinstance(data["score"], number) and not isinstance(data["score"], bool)
    if "execution_time" in data:
        assert isinstance(data["execution_time"], number)
    assert isinstance(data["tests"], list) and data["tests"]
    for t in data["tests"]:
        assert isinstance(t, dict), t
        assert isinstance(t["name"], str) and t["name"], t
        assert isinstance(t["score"], number) and isinstance(t["max_score"], number), t
        assert 0 <= t["score"] <= t["max_score"], t
        assert t["status"] in ("passed", "failed"), t
        assert isinstance(t["output"], str), t
        assert t["visibility"] in VISIBILITY, t
    if "visibility" in data:
        assert data["visibility"] in VISIBILITY
    assert sum(t["max_score"] for t in data["tests"]) == pytest.approx(100)
    assert data["score"] == pytest.approx(sum(t["score"] for t in data["tests"]))


def test_results_json_follow_gradescope_format(batch):
    for student, row in batch.rows.items():
        data = results_json(batch, student)
        check_gradescope_results(data)
        assert data["score"] == pytest.approx(float(row["total"])), student


def test_grades_csv_totals_are_step_sums(batch):
    for student, row in batch.rows.items():
        s = scores(row)
        assert s["total"] == pytest.approx(sum(s[k] for k in C.STEPS)), student
        assert all(0 <= s[k] <= FULL[k] for k in C.STEPS), (student, row)


def test_gradescope_entry_point(tmp_path):
    """run_autograder with its folders redirected (see grader/README.md) grades one submission."""
    script = ROOT / "grader" / "gradescope" / "run_autograder"
    readme = ROOT / "grader" / "README.md"
    if not script.exists():
        pytest.skip("grader/gradescope/run_autograder not written yet")
    submission, results = tmp_path / "submission", tmp_path / "results"
    submission.mkdir()
    results.mkdir()
    (submission / "student_template.py").write_text(REFERENCE, encoding="utf-8")
    names = re.findall(r"\b([A-Z][A-Z0-9_]*(?:SUBMISSION|RESULTS)[A-Z0-9_]*)\b",
                       readme.read_text(encoding="utf-8") if readme.exists() else "")
    sub_var = next((n for n in names if "SUBMISSION" in n), None)
    res_var = next((n for n in names if "RESULTS" in n), None)
    assert sub_var and res_var, "grader/README.md should document the env vars that redirect run_autograder"
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT), **{sub_var: str(submission), res_var: str(results)})
    env["GRADER_PYTHON"] = sys.executable
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((results / "results.json").read_text(encoding="utf-8"))
    check_gradescope_results(data)
    assert data["score"] == pytest.approx(100), data

    # An upload with nothing gradable still yields a valid results.json, scored 0.
    (submission / "student_template.py").unlink()
    (submission / "readme.txt").write_text("oops", encoding="utf-8")
    (results / "results.json").unlink()
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((results / "results.json").read_text(encoding="utf-8"))
    check_gradescope_results(data)
    assert data["score"] == 0


# ---------------------------------------------------------------------------------------------
# The class summary written with the batch (grader/summary.py; its pure parts: test_grader_summary.py)
# ---------------------------------------------------------------------------------------------

def read_summary(out):
    """The numbers of summary.md, read back from its text."""
    md = (out / "summary.md").read_text(encoding="utf-8")
    unescape = lambda t: re.sub(r"\\(.)", r"\1", t)  # noqa: E731
    head = re.search(r"submissions: \*\*(\d+)\*\* · .*?mean: \*\*([\d.]+)\*\* · .*?median: \*\*([\d.]+)\*\*", md)
    time_line = re.search(r"median \*\*([\d.]+) s\*\* · .*?max \*\*([\d.]+) s\*\*", md)
    return {
        "n": int(head.group(1)), "mean": float(head.group(2)), "median": float(head.group(3)),
        "histogram": [(int(a), int(b), int(c)) for a, b, c in re.findall(r"^\| (\d+)–(\d+) \| (\d+) \|", md, re.M)],
        "steps": {f"step{k}": float(v) for k, v in re.findall(r"^\| Step (\d) · .*? \| ([\d.]+) \| \d+ \|", md, re.M)},
        "checks": [(c, int(p), int(n)) for c, p, n in re.findall(r"^\| (\d\.\d) \| .*? \| \d+ \| (\d+)/(\d+) \|", md, re.M)],
        "statuses": {unescape(st): (int(n), sorted(unescape(i) for i in ids.split(", ") if i))
                     for st, n, ids in re.findall(r"^\| ([\w\\]+) \(.*?\) \| (\d+) \| (.*?) \|$", md, re.M)},
        "seconds": (float(time_line.group(1)), float(time_line.group(2))),
        "text": md,
    }


def recompute_summary(b):
    """The same numbers from grades.csv and the results.json files."""
    import statistics

    totals = [float(r["total"]) for r in b.rows.values()]
    hist = [0] * 10
    for t in totals:
        hist[min(int(t // 10), 9)] += 1
    passed = {}
    for student in b.rows:
        for t in results_json(b, student)["tests"]:
            cid = re.match(r"Step (\d\.\d) ", t["name"]).group(1)
            passed[cid] = passed.get(cid, 0) + (t["status"] == "passed")
    statuses = {}
    for student, r in b.rows.items():
        statuses.setdefault(r["status"], []).append(student)
    secs = [results_json(b, s)["execution_time"] for s in b.rows]
    return {
        "n": len(totals), "mean": round(statistics.mean(totals), 1), "median": round(statistics.median(totals), 1),
        "histogram": [(10 * i, 100 if i == 9 else 10 * i + 9, c) for i, c in enumerate(hist)],
        "steps": {k: round(statistics.mean(float(r[k]) for r in b.rows.values()), 2) for k in C.STEPS},
        "passed": passed,
        "statuses": {st: (len(ids), sorted(ids) if st != "ok" else []) for st, ids in statuses.items()},
        "seconds": (round(statistics.median(secs), 1), round(max(secs), 1)),
    }


def check_summary_against_outputs(b):
    got, want = read_summary(b.out), recompute_summary(b)
    assert (b.out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("n", "mean", "median", "histogram", "steps", "statuses", "seconds"):
        assert got[key] == want[key], (key, got[key], want[key])
    assert {c: p for c, p, _n in got["checks"]} == want["passed"]
    assert all(n == want["n"] for _c, _p, n in got["checks"])
    rates = [p / n for _c, p, n in got["checks"]]
    assert rates == sorted(rates), "checks not sorted worst first"
    return got


def test_summary_numbers_match_grades_csv_and_results_json(batch):
    got = check_summary_against_outputs(batch)
    # The hint shown for a check is a message students of this batch really got for it.
    row = next(ln for ln in got["text"].splitlines() if ln.startswith("| 4.2 |"))
    hint = re.search(r"\| (`+)(.*?)\1 \((\d+)×\) \|$", row)
    assert hint, row
    said = [t["output"] for s in batch.rows for t in results_json(batch, s)["tests"]
            if t["name"].startswith("Step 4.2 ") and t["status"] == "failed"]
    assert any(" ".join(o.split()).replace("|", "│").startswith(hint.group(2).rstrip("…")) for o in said), row


def test_batch_console_names_the_most_failed_checks(batch):
    got = read_summary(batch.out)
    worst = [c for c, _p, _n in got["checks"][:5]]
    tail = batch.proc.stdout[batch.proc.stdout.index("most-failed"):]
    assert re.findall(r"^\s+(\d\.\d)\s", tail, re.M)[:5] == worst, tail
    assert "summary.md" in tail


def test_summary_lists_crashed_and_timed_out_ids(hostile):
    """A batch with crashing submissions still writes the summary, with those ids under their status."""
    got = check_summary_against_outputs(hostile)
    assert "h_os_exit_in_train_step" in got["statuses"]["crashed"][1]
    assert "h_infinite_loop_G" in got["statuses"]["timeout"][1]
    # An exit at import is graded on the definitions now (status ok, only 5.6 lost): not listed.
    assert all("h_sys_exit_import" not in ids for _, ids in got["statuses"].values() if ids)


# ---------------------------------------------------------------------------------------------
# Hostile submissions: a copy of the grader grades them, with a small --timeout
# ---------------------------------------------------------------------------------------------

BROKEN_TRAIN_STEP = C.insert_after(C.TRAIN_STEP_START, "return 1.0, 0.5  # no training at all", "    ")


def hostile_cases(out, grader_dir, safe_root):
    """name -> (source, expected status or None, steps that must lose points, words of which the message
    must hold one).

    Steps not listed must keep full points when the hostile code sits in one function: a crash or hang
    should cost only the checks that needed that function."""
    hog = '_hog = []\nwhile True:\n    _hog.append(b"x" * (64 * 2**20))  # written, so really resident'
    return {
        # Module-level code costs only 5.6: the definitions are graded without it (issue 11).
        "h_sys_exit_import": (REFERENCE + "\nimport sys\nsys.exit(0)\n", "ok", ["step5"], ["SystemExit"]),
        "h_os_exit_import": (REFERENCE + "\nimport os\nos._exit(0)\n", "ok", ["step5"], ["exit"]),
        "h_os_exit_in_train_step": (C.substitute(REFERENCE, C.insert_after(
            C.TRAIN_STEP_START, "import os\nos._exit(0)", "    ")), "crashed", ["step4"], ["exit"]),
        "h_infinite_loop_G": (C.substitute(REFERENCE, C.insert_before(
            C.G_FORWARD_START, "while True:\n    pass", "        ")), "timeout", ["step2"], ["timed out", "超时"]),
        "h_memory_hog": (C.substitute(REFERENCE, C.insert_after(C.BUILD_LOSSES_START, hog, "    ")), None,
                         ["step3"], ["MemoryError"]),
        "h_flood": (C.substitute(REFERENCE + "\n" + C.FLOOD, C.VARIANTS["s3_mse"][1]), None, ["step3"], []),
        "h_forger": (C.substitute(REFERENCE, BROKEN_TRAIN_STEP) + C.forger_code(out, grader_dir, safe_root),
                     None, ["step4"], []),
        "h_cheat_patches": (C.substitute(REFERENCE, BROKEN_TRAIN_STEP) + C.CHEAT_PATCHES, None, ["step4"], []),
        # A blank template that loads the TA's reference solution found next to the grader at grading time.
        "h_steals_reference": (blank() + C.STEAL_REFERENCE, None, C.STEPS, []),
    }


def landlock_available():
    """Mirrors grader/worker.py: the grader's write sandbox exists only on Linux with Landlock."""
    if sys.platform != "linux":
        return False
    import ctypes
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)) >= 1


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("grader_hostile")
    kit = tmp / "kit"  # the grader runs from a copy, so tampering cannot touch the real one
    shutil.copytree(ROOT / "grader", kit / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "experiment6.py", kit / "experiment6.py")
    shutil.copytree(ROOT / "data", kit / "data", ignore=shutil.ignore_patterns("__pycache__", "phantoms"))
    if (ROOT / "data" / "phantoms.py").exists():
        shutil.copy(ROOT / "data" / "phantoms.py", kit / "data" / "phantoms.py")
    before = tree_digest(kit / "grader")
    subs, out = tmp / "submissions", tmp / "out"
    subs.mkdir()
    cases = hostile_cases(out, kit / "grader", tmp)
    for name, (source, *_rest) in cases.items():
        (subs / f"{name}.py").write_text(source, encoding="utf-8")
    (subs / "h_reference.py").write_text(REFERENCE, encoding="utf-8")  # graded among them: unharmed
    proc, seconds = run_grader([subs, "--out", out, "--jobs", "2", "--timeout", HOSTILE_TIMEOUT], cwd=tmp,
                               pythonpath=kit, preexec_fn=memory_safety_net())
    report(request, f"[grader hostile batch] {len(cases) + 1} submissions in {seconds:.1f} s wall "
                    f"(--timeout {HOSTILE_TIMEOUT}, --jobs 2)")
    b = Batch(out, proc, seconds)
    b.cases, b.kit, b.before = cases, kit, before
    return b


HOSTILE_NAMES = ["h_sys_exit_import", "h_os_exit_import", "h_os_exit_in_train_step", "h_infinite_loop_G",
                 "h_memory_hog", "h_flood", "h_forger", "h_cheat_patches", "h_steals_reference"]
SANDBOX_ONLY = {"h_steals_reference"}  # only Landlock's read limits stop this one


@pytest.mark.parametrize("student", HOSTILE_NAMES)
def test_hostile_never_gets_full_marks(hostile, student):
    _source, status, losing, words = hostile.cases[student]
    if student in SANDBOX_ONLY and not landlock_available():
        pytest.skip("no Landlock here: the grader documents that submissions can then read the kit")
    got = hostile.scores(student)
    assert got["total"] < 100, hostile.explain(student)
    for step in C.STEPS:
        if step in losing:
            assert got[step] < FULL[step], (step, hostile.explain(student))
        else:  # the damage stays inside the function that did it
            assert got[step] == FULL[step], (step, hostile.explain(student))
    if status is not None:
        assert hostile.row(student)["status"] == status, hostile.explain(student)
    data = results_json(hostile, student)
    check_gradescope_results(data)
    assert data["score"] == pytest.approx(got["total"])
    assert data["tests"][0]["name"] != "forged"
    said = data.get("output", "") + "".join(t["output"] for t in data["tests"])
    if words:  # one of these must appear in what the student is told
        assert any(w.lower() in said.lower() for w in words), (words, said[:2000])


def test_hostile_batch_grades_the_reference_unharmed(hostile):
    assert hostile.scores("h_reference") == {"total": 100, **FULL}, hostile.explain("h_reference")
    assert set(hostile.rows) == {*hostile.cases, "h_reference"}


def test_hostile_exit_at_import_loses_only_import_hygiene(hostile):
    for student in ("h_sys_exit_import", "h_os_exit_import"):
        assert hostile.scores(student)["total"] == 97, hostile.explain(student)


def test_flood_output_is_bounded(hostile):
    for name in ("results.json", "feedback.md"):
        size = (hostile.out / "h_flood" / name).stat().st_size
        assert size < 1_000_000, (name, size)
    assert len(hostile.proc.stdout) + len(hostile.proc.stderr) < 1_000_000


def test_forger_cannot_touch_outputs_or_grader(hostile):
    row = hostile.row("h_forger")
    assert float(row["total"]) < 100, hostile.explain("h_forger")
    assert "forger" not in hostile.rows  # the forged grades.csv row did not survive
    for student in hostile.rows:
        assert results_json(hostile, student)["tests"][0]["name"] != "forged", student
    assert not (hostile.out / "results.json").exists() and not (hostile.out / "grading").exists()
    if not landlock_available():
        pytest.skip("no Landlock here: the grader documents that its files are then writable by submissions")
    assert tree_digest(hostile.kit / "grader") == hostile.before, "a submission modified the grader's files"


def test_cheat_patches_do_not_fool_step4(hostile):
    got = hostile.scores("h_cheat_patches")
    assert got["step4"] == 0, hostile.explain("h_cheat_patches")


# ---------------------------------------------------------------------------------------------
# The grader's own copy of the handout networks must stay the reference's networks
# ---------------------------------------------------------------------------------------------

def test_grader_nets_match_the_reference_networks():
    """Steps 4 and 5 run on grader/nets.py; if it drifted from experiment6.py, correct students would fail."""
    import torch

    import experiment6 as ex
    spec = importlib.util.spec_from_file_location("_grader_nets", ROOT / "grader" / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    x1, x2 = torch.rand(2, 1, 256, 256) * 2 - 1, torch.rand(2, 1, 256, 256) * 2 - 1
    for name, inputs in (("Generator", (x1,)), ("Discriminator", (x1, x2))):
        torch.manual_seed(0)
        ours = getattr(nets, name)()
        ref = getattr(ex, name)()
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
               {k: v.shape for k, v in ref.state_dict().items()}, name
        ours.load_state_dict(ref.state_dict())
        assert torch.equal(ours(*inputs), ref(*inputs)), name
