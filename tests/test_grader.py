"""The grader: the reference scores 100, a blank template 0, single-bug variants lose points in the
right step only, hostile submissions never get full marks and never stop the batch, every input
form and encoding reaches the judge as the reference does, and the outputs follow the Gradescope format.

Grading is the slow part (a fresh process per submission), so this file's submissions join the
session's shared batches (tests/conftest.py): `write_submissions` for the default-flag batch
(`graded`), `write_attacks` for the attack batch (`attacked`); the tests then only read
grades.csv / results.json. The submissions are built here from experiment6.py
(tests/grader_cases/cases.py, handout/make_student.py), never stored, so they follow the reference.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, check_gradescope_keys, check_variant, run_grader, tree_digest
from grader.rubric import CHECKS
from grader_cases import cases as C
from handout import make_student as ms

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")
FULL = C.POINTS
RUN_CELL_MARKER = "run_cell_executed"  # written next to the submissions folder if a "run" cell is executed


def scores(row):
    return {k: float(row[k]) for k in ["total", *C.STEPS]}


def results_json(batch, student):
    return batch.results(student)


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


def blank():
    return C.blank_template(REFERENCE)


def syntax_error():
    return C.substitute(REFERENCE, [("return loss_G.item(), loss_D.item()", "return loss_G.item(), loss_D.item(")])


def gbk_bytes():
    data = REFERENCE.encode("gbk")  # raises if a character of the reference has no GBK code
    assert data.decode("gbk") == REFERENCE
    return data


# Exact outcome per student of this file: the checks it loses (each scores 0); every other check keeps
# its points. Per step this gives the exact step scores below.
OUTCOMES = {
    "reference": {},
    **{name: outcome for name, (outcome, _subs) in C.VARIANTS.items()},
    "notebook": {},
    "independent_rewrite": {},  # every solution region in another style (cases.REWRITE)
}


def step_scores(outcome):
    return {s: FULL[s] - sum(CHECKS[c][0] - v for c, v in outcome.items() if c.startswith(s[-1] + "."))
            for s in C.STEPS}


EXPECT = {
    **{name: step_scores(outcome) for name, outcome in OUTCOMES.items()},
    "blank_template": {s: 0 for s in C.STEPS},
    "zip_syntax_error": {s: 0 for s in C.STEPS},  # inside a .zip given as a second PATH
    "zip_nothing_gradable": {s: 0 for s in C.STEPS},  # a folder in the .zip without code
}


def per_check(batch, student):
    """check id -> score, from the student's results.json."""
    got = {}
    for t in batch.results(student)["tests"]:
        m = re.search(r"\b(\d\.\d)\b", t["name"])
        if m:
            got[m.group(1)] = t["score"]
    return got


def variants():
    """The one-bug variants (cases.VARIANTS) for conftest.graded, which packs them with other files'
    variants of other parts (tests/grader_cases/combine.py): name -> (checks lost, source)."""
    return {name: (outcome, C.substitute(REFERENCE, subs_)) for name, (outcome, subs_) in C.VARIANTS.items()}


def write_submissions(folder):
    """This file's other students for the shared default-flag batch (conftest.graded, which also holds
    `reference`); returns the extra PATH it grades (a .zip next to the folder)."""
    # The generated template (what student_template.py must be: test_student_template.py checks the
    # committed file against this generation).
    (folder / "blank_template.py").write_text(ms.build_template(REFERENCE), encoding="utf-8")
    (folder / "independent_rewrite.py").write_text(C.replace_solutions(REFERENCE, C.REWRITE), encoding="utf-8")
    import nbformat

    nbformat.write(notebook_from_source(REFERENCE, folder.parent / RUN_CELL_MARKER), str(folder / "notebook.ipynb"))
    # A .zip of per-student folders: a syntax error and a folder with nothing gradable, which the
    # batch must survive. (Encodings and the other input forms: test_every_input_form_... below.)
    archive = folder.parent / "handins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zip_syntax_error/student_template.py", syntax_error().encode("utf-8"))
        z.writestr("zip_nothing_gradable/notes.txt", "my notes")
    return [archive]


@pytest.fixture(scope="module")
def batch(graded):
    return graded


# ---------------------------------------------------------------------------------------------
# Reference, blank template, variants
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_reference_gets_100(batch):
    assert batch.scores("reference") == {"total": 100, **FULL}, batch.explain("reference")
    assert batch.row("reference")["status"] == "ok"


@pytest.mark.slow
def test_blank_template_gets_0_on_every_step_and_says_not_implemented(batch):
    assert batch.scores("blank_template") == {"total": 0, **{s: 0 for s in C.STEPS}}, batch.explain("blank_template")
    fb = batch.feedback("blank_template")
    assert "NotImplementedError" in fb or "未完成" in fb or "not implemented" in fb.lower(), fb[:2000]


def graded_as(batch, student):
    """The submission a student's results are in: a packed variant's combined file, else its own."""
    return batch.variant(student)[0] if student in C.VARIANTS else student


def unsorted_undetectable(batch, student):
    if student != "s1_unsorted":
        return False
    stem = graded_as(batch, student)
    return per_check(batch, stem).get("1.6") == CHECKS["1.6"][0] and "lists files in name order" in batch.feedback(stem)


@pytest.mark.slow
@pytest.mark.parametrize("student", [s for s in EXPECT if s not in ("reference", "blank_template")])
def test_expected_per_step_scores(batch, student):
    if unsorted_undetectable(batch, student):
        pytest.skip("this file system lists files in name order: the grader says it cannot see a missing sorted()")
    if student in C.VARIANTS:  # packed with others: its step scores are its submission's per-check sums
        stem = graded_as(batch, student)
        want = step_scores({c: score for c, (score, _top, _out) in batch.per_check(stem).items()
                            if score != CHECKS[c][0]})
        assert batch.scores(stem) == {"total": sum(want.values()), **want}, batch.explain(stem)
        return
    assert batch.scores(student) == {"total": sum(EXPECT[student].values()), **EXPECT[student]}, \
        batch.explain(student)


@pytest.mark.slow
@pytest.mark.parametrize("student", OUTCOMES)
def test_exact_per_check_scores(batch, student):
    """Each variant loses exactly the checks its outcome states, and keeps every other point: a check
    that also penalises another check's bug shows up here."""
    if unsorted_undetectable(batch, student):
        pytest.skip("this file system lists files in name order: the grader says it cannot see a missing sorted()")
    if student in C.VARIANTS:  # packed with variants of other parts (tests/grader_cases/combine.py)
        check_variant(batch, student, OUTCOMES[student])
        return
    want = {cid: points for cid, (points, _title) in CHECKS.items()}
    want.update(OUTCOMES[student])
    got = per_check(batch, student)
    lost = {c: v for c, v in got.items() if v != want.get(c)}
    assert got == want, (f"{student}: differs on {lost}; the checks it loses: "
                         f"{ {c: v for c, v in got.items() if v < CHECKS[c][0]} }", batch.explain(student))


@pytest.mark.slow
def test_d_first_order_is_named_in_the_feedback(batch):
    """pix2pix's order (D, then G) is correct too: full points, and the feedback says which order it saw."""
    step44 = next(t for t in batch.results(graded_as(batch, "s4_d_first_correct"))["tests"]
                  if t["name"].startswith("Step 4.4 "))
    assert "D first" in step44["output"], step44


@pytest.mark.slow
def test_notebook_run_cell_is_not_executed(batch):
    assert not (batch.tmp / RUN_CELL_MARKER).exists(), "the grader executed a cell tagged 'run'"
    assert batch.row("notebook")["status"] == "ok"


def test_every_input_form_and_encoding_reaches_the_judge_as_the_reference(tmp_path):
    """A GBK file in a student folder (with a stray non-code file), a folder given directly as PATH
    holding UTF-8 with a BOM (Windows Notepad), and CRLF line ends inside a .zip: the ids are the
    folder names, and the judge's inputs (the clean copy and the definitions copy beside it, all it
    gets) are byte for byte the reference's. So they grade exactly as the reference does (the judge
    is deterministic: test_reproducible_per_test_scores) without grading them again."""
    from grader import sources as S

    subs = tmp_path / "submissions"
    (subs / "folder_gbk").mkdir(parents=True)
    (subs / "reference.py").write_text(REFERENCE, encoding="utf-8")
    (subs / "folder_gbk" / "student_template.py").write_bytes(gbk_bytes())
    (subs / "folder_gbk" / "notes.txt").write_text("my notes", encoding="utf-8")
    solo = tmp_path / "solo_bom"
    solo.mkdir()
    (solo / "student_template.py").write_bytes(b"\xef\xbb\xbf" + REFERENCE.encode("utf-8"))
    archive = tmp_path / "handins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zip_crlf/student_template.py", REFERENCE.replace("\n", "\r\n").encode("utf-8"))
        z.writestr("zip_other/student_template.py", REFERENCE.encode("utf-8"))  # two folders: a folder of students
    work = tmp_path / "work"
    work.mkdir()
    found = {s.student: s for s in S.discover([subs, solo, archive], work)}
    assert set(found) == {"reference", "folder_gbk", "solo_bom", "zip_crlf", "zip_other"}

    def judge_inputs(sub):
        S.prepare(sub, work)
        assert sub.status == "ok", (sub.student, sub.status, sub.message)
        return {p.name: p.read_bytes() for p in sub.clean.parent.iterdir()}

    want = judge_inputs(found["reference"])
    assert "submission.py" in want and len(want) >= 2
    for student in ("folder_gbk", "solo_bom", "zip_crlf"):
        assert judge_inputs(found[student]) == want, student
    assert found["folder_gbk"].file.name == "student_template.py"


@pytest.mark.slow
def test_reproducible_per_test_scores(batch, hostile):
    """The reference graded twice (in the default batch and, by a copy of the grader, among the
    attacks) gets identical per-test scores."""
    a, b = results_json(batch, "reference")["tests"], hostile.results("untouched_reference")["tests"]
    assert [(t["name"], t["score"], t["status"]) for t in a] == [(t["name"], t["score"], t["status"]) for t in b]


# ---------------------------------------------------------------------------------------------
# Input forms and user errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_input_forms_give_the_right_ids(batch):
    """File stems for files, folder names for the folders inside a .zip; nobody lost or renamed. (The
    shared batch also holds other files' students: only the names this file wrote are looked at.)"""
    others = {name.rsplit(".", 1)[0] for module, names in batch.written.items() if module != __name__
              for name in names}
    assert set(batch.rows) - others == set(EXPECT) - set(C.VARIANTS)
    assert {graded_as(batch, v) for v in C.VARIANTS} <= set(batch.rows)


@pytest.mark.slow
def test_syntax_error_gets_0_and_says_so(batch):
    row = batch.row("zip_syntax_error")
    assert row["status"] == "syntax_error" and float(row["total"]) == 0, batch.explain("zip_syntax_error")
    fb = batch.feedback("zip_syntax_error")
    assert "line" in fb.lower() or "行" in fb, fb[:2000]


@pytest.mark.slow
def test_folder_without_code_is_no_submission(batch):
    row = batch.row("zip_nothing_gradable")
    assert row["status"] == "no_submission" and float(row["total"]) == 0, batch.explain("zip_nothing_gradable")


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


def check_gradescope_results(data, leaderboard=False):
    """Gradescope's results.json: the keys and types its autograder reads, and no other key."""
    number = (int, float)
    assert isinstance(data, dict)
    check_gradescope_keys(data, leaderboard)
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


@pytest.mark.slow
def test_results_json_follow_gradescope_format(batch):
    for student, row in batch.rows.items():
        data = results_json(batch, student)
        check_gradescope_results(data)
        assert data["score"] == pytest.approx(float(row["total"])), student


@pytest.mark.slow
def test_grades_csv_totals_are_step_sums(batch):
    for student, row in batch.rows.items():
        s = scores(row)
        assert s["total"] == pytest.approx(sum(s[k] for k in C.STEPS)), student
        assert all(0 <= s[k] <= FULL[k] for k in C.STEPS), (student, row)


@pytest.mark.slow
def test_gradescope_entry_point(tmp_path):
    """run_autograder with its folders redirected (see grader/README.md) grades one submission."""
    script = ROOT / "grader" / "gradescope" / "run_autograder"
    readme = ROOT / "grader" / "README.md"
    submission, results = tmp_path / "submission", tmp_path / "results"
    submission.mkdir()
    results.mkdir()
    (submission / "student_template.py").write_text(REFERENCE, encoding="utf-8")
    names = re.findall(r"\b([A-Z][A-Z0-9_]*(?:SUBMISSION|RESULTS)[A-Z0-9_]*)\b", readme.read_text(encoding="utf-8"))
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


@pytest.mark.slow
def test_summary_numbers_match_grades_csv_and_results_json(batch):
    got = check_summary_against_outputs(batch)
    # The hint shown for a check is a message students of this batch really got for it.
    row = next(ln for ln in got["text"].splitlines() if ln.startswith("| 4.2 |"))
    hint = re.search(r"\| (`+)(.*?)\1 \((\d+)×\) \|$", row)
    assert hint, row
    said = [t["output"] for s in batch.rows for t in results_json(batch, s)["tests"]
            if t["name"].startswith("Step 4.2 ") and t["status"] == "failed"]
    assert any(" ".join(o.split()).replace("|", "│").startswith(hint.group(2).rstrip("…")) for o in said), row


@pytest.mark.slow
def test_batch_console_names_the_most_failed_checks(batch):
    got = read_summary(batch.out)
    worst = [c for c, _p, _n in got["checks"][:5]]
    tail = batch.proc.stdout[batch.proc.stdout.index("most-failed"):]
    assert re.findall(r"^\s+(\d\.\d)\s", tail, re.M)[:5] == worst, tail
    assert "summary.md" in tail


@pytest.mark.slow
def test_summary_lists_crashed_and_timed_out_ids(hostile):
    """A batch with crashing submissions still writes the summary, with those ids under their status."""
    got = check_summary_against_outputs(hostile)
    assert "h_os_exit_in_train_step" in got["statuses"]["crashed"][1]
    assert "h_infinite_loop_G" in got["statuses"]["timeout"][1]
    # An exit at import is graded on the definitions now (status ok, only 5.6 lost): not listed.
    assert all("h_sys_exit_import" not in ids for _, ids in got["statuses"].values() if ids)


# ---------------------------------------------------------------------------------------------
# Hostile submissions: in the shared attack batch (conftest.attacked: a copy of the grader, small
# --timeout and --budget), next to test_grader_trust.py's attacks and one untouched reference
# ---------------------------------------------------------------------------------------------

BROKEN_TRAIN_STEP = C.insert_after(C.TRAIN_STEP_START, "return 1.0, 0.5  # no training at all", "    ")


def hostile_cases(where):
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
        # Told the real --out and the grader copy's folder (a student who read the TA's command line).
        "h_forger": (C.substitute(REFERENCE, BROKEN_TRAIN_STEP) + C.forger_code(where.out, where.grader, where.tmp),
                     None, ["step4"], []),
        "h_cheat_patches": (C.substitute(REFERENCE, BROKEN_TRAIN_STEP) + C.CHEAT_PATCHES, None, ["step4"], []),
        # A blank template that loads the TA's reference solution found next to the grader at grading time.
        "h_steals_reference": (blank() + C.STEAL_REFERENCE, None, C.STEPS, []),
    }


def write_attacks(folder, where):
    """This file's students for the shared attack batch (conftest.attacked)."""
    for name, (source, *_rest) in hostile_cases(where).items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")


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


@pytest.fixture(scope="module")
def hostile(attacked):
    attacked.cases = hostile_cases(attacked.where)
    return attacked


HOSTILE_NAMES = ["h_sys_exit_import", "h_os_exit_import", "h_os_exit_in_train_step", "h_infinite_loop_G",
                 "h_memory_hog", "h_flood", "h_forger", "h_cheat_patches", "h_steals_reference"]
SANDBOX_ONLY = {"h_steals_reference"}  # only Landlock's read limits stop this one


@pytest.mark.slow
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
    said = hostile.said(student)
    if words:  # one of these must appear in what the student is told
        assert any(w.lower() in said.lower() for w in words), (words, said[:2000])


@pytest.mark.slow
def test_attack_batch_grades_the_untouched_reference_100(hostile):
    assert hostile.scores("untouched_reference") == {"total": 100, **FULL}, hostile.explain("untouched_reference")
    assert {name.rsplit(".", 1)[0] for name in hostile.written[__name__]} == set(HOSTILE_NAMES) <= set(hostile.rows)


@pytest.mark.slow
def test_hostile_exit_at_import_loses_only_import_hygiene(hostile):
    for student in ("h_sys_exit_import", "h_os_exit_import"):
        assert hostile.scores(student)["total"] == 97, hostile.explain(student)


@pytest.mark.slow
def test_flood_output_is_bounded(hostile):
    for name in ("results.json", "feedback.md"):
        size = (hostile.out / "h_flood" / name).stat().st_size
        assert size < 1_000_000, (name, size)
    assert len(hostile.proc.stdout) + len(hostile.proc.stderr) < 1_000_000


@pytest.mark.slow
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


@pytest.mark.slow
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
