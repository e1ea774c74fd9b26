"""The student bundle (python handout/make_student.py --bundle OUT.zip): what the instructor hands out.

Built and unzipped once per session; from inside it the blank template must stop with the friendly
message, and the grader (one batch) must give the blank template 0 and the filled-in one 100.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, read_grades, report, run_grader, run_script
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


# ---------------------------------------------------------------------------------------------
# The hand-in check: a student fills in the bundle, zips it as the handout's 提交说明 says, and
# self-checks the zip and the file with the bundle's own grader.
# ---------------------------------------------------------------------------------------------

HANDIN = "2023123456_exp6"  # the handout's example: the student number, letters and digits only


def test_bundle_carries_the_kits_fingerprints(bundle):
    """The hand-in check's fingerprints travel with the bundle, recorded when it was built."""
    shipped = bundle / "grader" / "shipped.json"
    assert shipped.read_bytes() == (ROOT / "grader" / "shipped.json").read_bytes()
    names = set(json.loads(shipped.read_text(encoding="utf-8"))["files"])
    assert {"student_template.py", "handout/experiment6_student.ipynb", "handout/warmup_gan.py"} <= names


def _zip_folder(folder, zip_path, tool):
    """Zip `folder` (the folder itself at the top of the archive) with `zip -r` or `python -m zipfile -c`,
    the two commands the handout gives."""
    if tool == "zip":
        subprocess.run(["zip", "-qr", str(zip_path), folder.name], cwd=folder.parent, check=True)
    else:
        subprocess.run([sys.executable, "-m", "zipfile", "-c", str(zip_path), folder.name], cwd=folder.parent,
                       check=True)
    return zip_path


def _handin_folder(bundle, code, where):
    """What 11.2 asks for: the code file, the report and the four training outputs in one folder."""
    d = where / HANDIN
    (d / "outputs").mkdir(parents=True)
    shutil.copy(bundle / code, d / Path(code).name)
    (d / "report.md").write_text("# 实验报告 / report\n", encoding="utf-8")
    shutil.copy(bundle / "handout" / "figures" / "results.png", d / "outputs" / "results.png")
    shutil.copy(bundle / "handout" / "figures" / "loss_curves.png", d / "outputs" / "loss_curves.png")
    (d / "outputs" / "history.csv").write_text("epoch,loss_G,loss_D\n1,30.0,0.6\n", encoding="utf-8")
    (d / "outputs" / "metrics.json").write_text('{"test": {"psnr": 20.0}}\n', encoding="utf-8")
    return d


def _self_check(kit, paths, out):
    """The bundle's own grader on PATH... (each path is discovered as `python -m grader PATH` would)."""
    r, seconds = run_grader([*paths, "--out", out, "--jobs", "2"], cwd=kit, pythonpath=kit)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_grades(out), seconds


@pytest.mark.slow
def test_hand_in_as_the_handout_says_self_checks_100_and_the_untouched_bundle_0(bundle, tmp_path, request):
    tool = "zip" if shutil.which("zip") else "python"
    # The template route, inside a copy of the bundle: the grader's neighbours are the student's own files.
    kit = shutil.copytree(bundle, tmp_path / "tpl" / ms.BUNDLE_TOP)
    blank_zip = _zip_folder(kit, tmp_path / "untouched_bundle.zip", tool)
    (kit / "student_template.py").write_text(ms.build_template(SOURCE, solutions=True), encoding="utf-8")
    handin = _zip_folder(_handin_folder(kit, "student_template.py", tmp_path / "tpl_handin"),
                         tmp_path / "tpl_handin.zip", tool)
    whole = _zip_folder(kit, tmp_path / "whole_bundle.zip", "python")  # the whole folder, zipped as it is
    rows, seconds = _self_check(kit, [kit / "student_template.py", handin, whole, blank_zip], tmp_path / "g1")
    # The notebook route: the notebook filled in, the template left blank.
    nb_kit = shutil.copytree(bundle, tmp_path / "nb" / ms.BUNDLE_TOP)
    nbformat.write(ms.build_notebook(SOURCE, solutions=True), str(nb_kit / "handout" / "experiment6_student.ipynb"))
    nb_handin = _zip_folder(_handin_folder(nb_kit, "handout/experiment6_student.ipynb", tmp_path / "nb_handin"),
                            tmp_path / "nb_handin.zip", "python")
    nb_rows, nb_seconds = _self_check(nb_kit, [nb_kit / "handout" / "experiment6_student.ipynb", nb_handin],
                                      tmp_path / "g2")
    report(request, f"[hand-in self-checks] template route {seconds:.1f} s, notebook route {nb_seconds:.1f} s wall "
                    f"(--jobs 2); load {os.getloadavg()[0]:.1f}")

    got = {k: (row["total"], row["status"], row["file"]) for k, row in {**rows, **nb_rows}.items()}
    assert got == {
        "student_template": ("100", "ok", "student_template.py"),
        "tpl_handin": ("100", "ok", "student_template.py"),
        "whole_bundle": ("100", "ok", "student_template.py"),
        "untouched_bundle": ("0", "no_submission", ""),
        "experiment6_student": ("100", "ok", "experiment6_student.ipynb"),
        "nb_handin": ("100", "ok", "experiment6_student.ipynb"),
    }, got
    said = json.loads((tmp_path / "g1" / "untouched_bundle" / "results.json").read_text(encoding="utf-8"))
    assert "only untouched copies of the kit's files" in json.dumps(said, ensure_ascii=False)
