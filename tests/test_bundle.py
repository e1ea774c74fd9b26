"""The student bundle (python handout/make_student.py --bundle OUT.zip): what the instructor hands out.

Built and unzipped once per session; from inside it the blank template must stop with the friendly
message, and the grader (one batch) must give the blank template 0 and the filled-in one 100.
"""
import csv
import re
import shutil
import subprocess
import zipfile

import pytest

from conftest import ROOT, run_script
from handout import make_student as ms

SOURCE = ms.REFERENCE.read_text(encoding="utf-8")
MUST_HAVE = ["README.md", "student_template.py", "handout/experiment6_student.ipynb", "handout/handout.zh.md",
             "handout/handout.en.md", "handout/figures/results.png", "handout/figures/loss_curves.png",
             "handout/report_template.md", "data/__init__.py", "data/phantoms.py", "grader/__main__.py",
             "grader/README.md", "requirements.txt", "requirements-notebook.txt"]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """The bundle as a student gets it: built by the CLI, unzipped with a real unzip if there is one."""
    tmp = tmp_path_factory.mktemp("bundle")
    r = run_script([ROOT / "handout" / "make_student.py", "--bundle", tmp / "exp6.zip"], cwd=tmp)
    assert r.returncode == 0, r.stderr
    unzip = shutil.which("unzip")
    if unzip:
        subprocess.run([unzip, "-q", str(tmp / "exp6.zip"), "-d", str(tmp / "x")], check=True)
    else:
        with zipfile.ZipFile(tmp / "exp6.zip") as z:
            z.extractall(tmp / "x")
    tops = list((tmp / "x").iterdir())
    assert [p.name for p in tops] == [ms.BUNDLE_TOP]  # one folder: unzipping does not spill files
    return tops[0]


def bundled_files(root):
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def test_bundle_holds_what_students_need_and_not_the_solution(bundle):
    files = bundled_files(bundle)
    missing = [name for name in MUST_HAVE if name not in files]
    assert not missing, missing
    assert not [n for n in files if n.rsplit("/", 1)[-1] in ("experiment6.py", "report_answer_key.md")]
    assert not [n for n in files if n.startswith(("tests/", ".ci/")) or "make_student" in n]
    # The template and notebook are the current generation, not stale copies.
    assert files["student_template.py"].read_text(encoding="utf-8") == ms.build_template(SOURCE)
    # Student-facing text never sends students to the reference solution.
    for name in ("README.md", "student_template.py", "handout/handout.zh.md", "handout/handout.en.md",
                 "handout/experiment6_student.ipynb", "handout/report_template.md"):
        assert "experiment6.py" not in files[name].read_text(encoding="utf-8"), name
    assert files["README.md"].read_text(encoding="utf-8").startswith("# 实验六")  # Chinese first


def test_no_bundled_file_holds_a_line_of_the_step5_solution(bundle):
    forbidden = ms.solution_lines(SOURCE)
    assert len(forbidden) >= 8, forbidden  # the imshow, subplots, unsqueeze ... lines of visualize
    # The scan finds the solution where it is: it can fail.
    assert len(ms.find_leaks({"x.py": SOURCE.encode()}, forbidden)) >= 1
    assert ms.find_leaks({"sub/experiment6.py": b""}, forbidden)
    leaks = []
    for name, path in bundled_files(bundle).items():
        for line in ms.file_lines(name, path.read_bytes()):
            if ms._normalise(line) in forbidden:
                leaks.append((name, line.strip()))
    assert not leaks, leaks


def test_handout_links_resolve_inside_the_bundle(bundle):
    for lang in ("zh", "en"):
        handout = bundle / "handout" / f"handout.{lang}.md"
        text = re.sub(r"^```.*?^```", "", handout.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://|mailto:", target):
                assert (handout.parent / target).is_file(), f"{lang}: {target} is not in the bundle"


@pytest.mark.slow
def test_blank_template_in_the_bundle_says_not_implemented(bundle):
    r = run_script(["student_template.py", "--epochs", "1", "--no-progress"], cwd=bundle)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert "尚未完成" in r.stderr and "Not implemented yet: Step 1:" in r.stderr


@pytest.mark.slow
def test_template_copied_out_of_the_kit_says_where_to_run_it(bundle, tmp_path):
    shutil.copy(bundle / "student_template.py", tmp_path / "student_template.py")
    r = run_script(["student_template.py", "--epochs", "1", "--no-progress"], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "data/phantoms.py" in r.stderr
    assert "错误" in r.stderr and "Error" in r.stderr


@pytest.mark.slow
def test_grader_inside_the_bundle_scores_blank_0_and_solved_100(bundle, tmp_path):
    subs = tmp_path / "subs"
    (subs / "blank").mkdir(parents=True)
    (subs / "solved").mkdir()
    shutil.copy(bundle / "student_template.py", subs / "blank" / "student_template.py")
    # Filled with the reference code by make_student's own parser.
    (subs / "solved" / "student_template.py").write_text(ms.build_template(SOURCE, solutions=True), encoding="utf-8")
    r = run_script(["-m", "grader", subs, "--out", tmp_path / "grading", "--jobs", "2"], cwd=bundle)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "grading" / "grades.csv", encoding="utf-8") as f:
        totals = {row["student"]: float(row["total"]) for row in csv.DictReader(f)}
    assert totals == {"blank": 0, "solved": 100}, totals
