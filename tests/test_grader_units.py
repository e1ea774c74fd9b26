"""Unit tests of the grader's pure parts, calling its functions directly (no `python -m grader`, no
worker process): source decoding and cleaning, notebook conversion, zip extraction, which file is
graded, report and feedback text, the rubric and its cross-checks, the request rules of the check
plugin, and the import-hygiene verdicts. The grading batches in tests/test_grader*.py prove the same
things end to end; these say which function broke.
"""
import ast
import csv
import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from conftest import ROOT, check_gradescope_keys
from grader import check_plugin, hygiene, report, rubric, sources
from grader.check_plugin import Request, StudentCode, rubric_problems
from grader.rubric import CHECKS, STEP_POINTS, step_of
from grader.sources import Submission
from grader.worker_process import CallFailed

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Decoding and cleaning a source file (grader/sources.py)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,want_enc", [
    ("x = '中文'\n".encode("utf-8"), "utf-8-sig"),
    (b"\xef\xbb\xbf" + "x = '中文'\n".encode("utf-8"), "utf-8-sig"),
    ("x = '中文'\n".encode("gbk"), "gb18030"),
    ("x = '中文'\r\n".encode("gbk"), "gb18030"),
    ("x = '中文'\r".encode("utf-8"), "utf-8-sig"),
])
def test_decode_gives_the_same_text_for_every_accepted_encoding(data, want_enc):
    text, enc = sources.decode(data)
    assert (text, enc) == ("x = '中文'\n", want_enc)


def test_decode_refuses_what_is_neither_utf8_nor_gbk():
    with pytest.raises(UnicodeDecodeError):
        sources.decode(b"x = 1\n\x80\xff")


def _prepared(tmp_path, name, data):
    src = tmp_path / name
    src.write_bytes(data)
    return sources.prepare(Submission("s", str(src), file=src), tmp_path)


def test_prepare_writes_clean_utf8_and_says_what_it_converted(tmp_path):
    submission = _prepared(tmp_path, "s.py", "# -*- coding: gbk -*-\nx = '中文'\r\n".encode("gbk"))
    assert submission.status == "ok", submission.message
    clean = submission.clean.read_bytes()
    assert b"\r" not in clean and "x = '中文'".encode("utf-8") in clean
    assert clean.count(b"\n") == 2 and clean.startswith(b"# (encoding declaration 'gbk' removed")
    assert submission.notes == ["源文件编码 / source encoding: GBK/GB18030 + CRLF"]
    for companion in ("definitions.py", "definitions_strict.py", "definitions.json", "warmup.py"):
        assert (submission.clean.parent / companion).is_file(), companion


def test_prepare_notes_a_bom_but_not_plain_utf8(tmp_path):
    assert _prepared(tmp_path, "a.py", b"\xef\xbb\xbfx = 1\n").notes == ["源文件编码 / source encoding: UTF-8 + BOM"]
    assert _prepared(tmp_path, "b.py", b"x = 1\n").notes == []


@pytest.mark.parametrize("name,data,status", [
    ("big.py", b"#" * (sources.SOURCE_MAX_BYTES + 1), "too_large"),
    ("bad.py", b"x = 1\n\x80\xff\n", "encoding_error"),
    ("nb.ipynb", b"{not json", "bad_notebook"),
    ("syn.py", b"def f(:\n    pass\n", "syntax_error"),
])
def test_prepare_reports_unusable_files_by_status(tmp_path, name, data, status):
    submission = _prepared(tmp_path, name, data)
    assert submission.status == status and submission.clean is None and submission.message


def test_syntax_error_message_names_the_line(tmp_path):
    submission = _prepared(tmp_path, "syn.py", b"x = 1\ndef f(:\n    pass\n")
    assert "syn.py, line 2" in submission.message and "def f(:" in submission.message


def test_a_py_exported_from_jupyter_loses_its_magic_lines_only(tmp_path):
    submission = _prepared(tmp_path, "exp.py", b"!pip install torch\n%matplotlib inline\nx = 1 % 2\ny = x != 1\n")
    assert submission.status == "ok", submission.message
    assert submission.clean.read_text(encoding="utf-8").split("\n")[:4] == [
        "pass  # (magic removed)", "pass  # (magic removed)", "x = 1 % 2", "y = x != 1"]
    assert "已删除 IPython 魔法命令 / IPython magic and shell lines removed" in submission.notes


# ---------------------------------------------------------------------------------------------
# Notebook conversion
# ---------------------------------------------------------------------------------------------

def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, tags in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nbformat.writes(nb)


def test_notebook_keeps_untagged_code_cells_numbered_as_jupyter_shows_them():
    text = _notebook(("md", "# title", None), ("code", "import os\n%matplotlib inline", None),
                     ("code", "main()", ["run"]), ("code", "%%time\nx = 1", None),
                     ("code", "%%bash\nls -l", None), ("code", "def f():\n    return 2", None))
    src = sources.notebook_to_source(text)
    assert "main()" not in src and "ls -l" not in src and "%%time" not in src
    assert f"{sources.CELL_HEADER}2 ----\nimport os\npass  # (magic removed)" in src
    assert f"{sources.CELL_HEADER}4 ----\nx = 1" in src
    assert f"{sources.CELL_HEADER}6 ----\ndef f():" in src
    ast.parse(src)
    line = src.split("\n").index("    return 2") + 1
    assert sources.where(line, src) == "笔记本第 6 个单元格第 2 行 / notebook cell 6, line 2"
    assert sources.where(3, "a\nb\nc\n") == "第 3 行 / line 3"


# ---------------------------------------------------------------------------------------------
# Zip extraction
# ---------------------------------------------------------------------------------------------

def _zip(path, members):
    """members: [(name, data)]; data None makes a symbolic link entry."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            if data is None:
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16
                z.writestr(info, "/etc/passwd")
            else:
                z.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/abs.py", "C:/win.py", "a\\..\\..\\evil.py"])
def test_safe_extract_refuses_paths_outside_the_folder(tmp_path, name):
    z = _zip(tmp_path / "h.zip", [("ok.py", "x = 1"), (name, "x = 2")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ValueError, match="unsafe path"):
        sources.safe_extract(z, dest)
    assert not (tmp_path / "evil.py").exists()


def test_safe_extract_skips_links_and_unwraps_one_top_folder(tmp_path):
    z = _zip(tmp_path / "h.zip", [("alice/a.py", "x = 1"), ("alice/link.py", None), ("__MACOSX/._a.py", "junk")])
    dest = tmp_path / "out"
    dest.mkdir()
    root = sources.safe_extract(z, dest)
    assert root == dest / "alice"
    assert (root / "a.py").read_text() == "x = 1" and not (root / "link.py").exists()


def test_safe_extract_bounds_size_and_count(tmp_path, monkeypatch):
    z = _zip(tmp_path / "h.zip", [(f"f{i}.py", "x" * 1000) for i in range(5)])
    monkeypatch.setattr(sources, "ZIP_MAX_FILES", 4)
    with pytest.raises(ValueError, match="too many files"):
        sources.safe_extract(z, tmp_path / "a")
    monkeypatch.setattr(sources, "ZIP_MAX_FILES", 5000)
    monkeypatch.setattr(sources, "ZIP_MAX_BYTES", 4500)
    with pytest.raises(ValueError, match="more than"):
        sources.safe_extract(z, tmp_path / "b")


def test_safe_extract_reads_gbk_names_of_windows_zips(tmp_path):
    class GbkName(zipfile.ZipInfo):  # what Windows' own zip writes: GBK bytes, no UTF-8 flag
        def _encodeFilenameFlags(self):
            return self.filename.encode("gbk"), self.flag_bits

    z = tmp_path / "h.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(GbkName("张三/作业.py"), "x = 1")
        f.writestr(GbkName("张三/readme.txt"), "hi")
    dest = tmp_path / "out"
    dest.mkdir()
    assert (sources.safe_extract(z, dest) / "作业.py").read_text() == "x = 1"


# ---------------------------------------------------------------------------------------------
# Which submissions, which file, which ids (discover, choose_file, assign_ids)
# ---------------------------------------------------------------------------------------------

def test_discover_gives_one_submission_per_student_with_unique_ids(tmp_path):
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    (subs / "alice" / "work.py").write_text(REFERENCE, encoding="utf-8")
    (subs / "alice.py").write_text(REFERENCE, encoding="utf-8")
    (subs / "alice_2.py").write_text(REFERENCE, encoding="utf-8")
    (subs / "notes.txt").write_text("not code")
    found = sources.discover([subs], tmp_path / "work")
    assert [(s.student, Path(s.file).name) for s in found] == [
        ("alice", "work.py"), ("alice_3", "alice.py"), ("alice_2", "alice_2.py")]


def test_discover_takes_a_folder_with_a_preferred_file_as_one_student(tmp_path):
    d = tmp_path / "bob"
    (d / "extra").mkdir(parents=True)
    (d / "student_template.py").write_text(REFERENCE, encoding="utf-8")
    (d / "extra" / "helper.py").write_text("x = 1\n")
    found = sources.discover([d], tmp_path)
    assert [(s.student, s.label, s.status) for s in found] == [("bob", "student_template.py", "ok")]


def test_discover_turns_an_unsafe_zip_into_a_bad_zip_row(tmp_path):
    z = _zip(tmp_path / "carol.zip", [("../x.py", "x = 1")])
    (found,) = sources.discover([z], tmp_path)
    assert (found.student, found.status) == ("carol", "bad_zip") and "unsafe path" in found.message


@pytest.mark.parametrize("make", [lambda p: p / "missing.py", lambda p: (p / "a.txt").write_text("x") and p / "a.txt"])
def test_discover_refuses_a_wrong_command_line(tmp_path, make):
    with pytest.raises(sources.UserError):
        sources.discover([make(tmp_path)], tmp_path)


def test_choose_file_without_a_candidate_says_so(tmp_path):
    assert sources.choose_file(tmp_path)[1:] == ("no_submission", f"文件夹中没有 .py 或 .ipynb 文件 / no .py or "
                                                                  f".ipynb file in {tmp_path.name}")
    (tmp_path / "student_template.py").write_bytes((ROOT / "student_template.py").read_bytes().replace(b"\n", b"\r\n"))
    f, status, msg = sources.choose_file(tmp_path)
    assert f is None and status == "no_submission" and "student_template.py" in msg  # untouched, even as CRLF


@pytest.mark.parametrize("raw,want", [("alice", "alice"), ("a b/c", "a_b_c"), ("-rf", "rf"), ("..", "student"),
                                      ("grades.csv", "grades.csv_"), ("CON", "CON_"), ("张三", "张三")])
def test_clean_id(raw, want):
    assert sources.clean_id(raw) == want


# ---------------------------------------------------------------------------------------------
# Scores and report text (grader/report.py)
# ---------------------------------------------------------------------------------------------

def _judged(failing=None, **extra):
    failing = failing or {}
    return {"status": "ok", "checks": {c: {"passed": c not in failing, "message": failing.get(c, "")} for c in CHECKS},
            **extra}


def _result(student="alice", judged=None, seconds=2.0, **fields):
    return report.score(Submission(student, student + ".py", **fields), judged, seconds)


def test_score_adds_the_rubric_points_of_passed_checks():
    r = _result(judged=_judged({"4.2": "wrong loss_G", "5.6": "side effects"}))
    assert r["total"] == 100 - CHECKS["4.2"][0] - CHECKS["5.6"][0]
    assert r["steps"] == {1: 15, 2: 20, 3: 10, 4: 35 - CHECKS["4.2"][0], 5: 20 - CHECKS["5.6"][0]}
    assert [c["id"] for c in r["checks"]] == list(CHECKS)
    assert next(c for c in r["checks"] if c["id"] == "4.2")["message"] == "wrong loss_G"


def test_a_check_that_did_not_run_scores_zero_and_says_why():
    judged = _judged()
    del judged["checks"]["3.4"]
    c = next(c for c in _result(judged=judged)["checks"] if c["id"] == "3.4")
    assert (c["points"], c["passed"], c["message"]) == (0, False, "此项未运行 / this check did not run")
    c = next(c for c in _result(judged={"status": "timeout", "status_message": "hung", "checks": {}})["checks"])
    assert c["message"] == "hung"


def test_a_check_the_rubric_does_not_know_is_an_error_not_dropped():
    judged = _judged()
    judged["checks"]["4.9"] = {"passed": True, "message": ""}
    with pytest.raises(ValueError, match="4.9"):
        _result(judged=judged)


def test_a_submission_that_never_reached_the_judge_keeps_its_status():
    r = _result(judged=None, status="syntax_error", message="line 3")
    assert (r["total"], r["status"], r["status_message"], r["protection"]) == (0, "syntax_error", "line 3", None)
    assert all(c["message"] == "line 3" for c in r["checks"])


def test_gradescope_json_is_plain_text_and_names_every_check():
    r = _result(judged=_judged({"1.1": "short"}, notes={"4.2": ["order G->D"]}, protection=[]), label="alice.py")
    g = report.gradescope(r)
    assert (g["score"], g["output_format"], g["test_output_format"]) == (100 - CHECKS["1.1"][0], "text", "text")
    assert (g["extra_data"]["file"], g["extra_data"]["status"]) == ("alice.py", "ok")
    assert [t["name"] for t in g["tests"]] == [f"Step {c} · {t}" for c, (_, t) in CHECKS.items()]
    t11 = g["tests"][0]
    assert (t11["score"], t11["max_score"], t11["status"], t11["output"]) == (0, CHECKS["1.1"][0], "failed", "short")
    assert next(t for t in g["tests"] if t["name"].startswith("Step 4.2"))["output"] == "order G->D"
    assert "process isolation only" in g["extra_data"]["protection"] and "Warning: student code is not sandboxed" in g["output"]
    json.dumps(g)


def test_gradescope_json_holds_only_keys_of_gradescopes_spec():
    skipped = [{"file": "old.py", "reason": "fewer steps"}]
    for r in (_result(judged=_judged({"1.1": "short"}, protection=["landlock"]), label="a.py"),
              _result(judged=None, status="syntax_error", message="line 3")):
        r["skipped"] = skipped
        g = report.gradescope(r)
        check_gradescope_keys(g, leaderboard=False)  # a leaderboard only when run_autograder is asked for one
        assert g["extra_data"]["skipped_files"] == skipped and g["extra_data"]["status"] == r["status"]
        assert g["extra_data"]["protection"] == report.protection_text(r)
    with pytest.raises(AssertionError, match="file"):  # the check itself can fail
        check_gradescope_keys({**g, "file": "a.py"})


def test_gradescope_says_a_whole_submission_failure_once():
    g = report.gradescope(_result(judged={"status": "import_error", "status_message": "boom", "checks": {}}))
    assert "boom" in g["output"] and all("boom" not in t["output"] for t in g["tests"])


def test_feedback_keeps_student_text_inert():
    evil = "x</sub><img src=x onerror=alert(1)>[link](http://e)"
    r = _result(student="s", judged=_judged({"2.1": "```\n# fake heading\n```"}, log="```\n**bold**"))
    r["notes"] = [evil]
    md = report.feedback_md(r)
    assert "<img" not in md and "[link]" not in md and "&lt;img" in md
    fenced = re.findall(r"^ *(`{4,})text$", md, re.M)
    assert len(fenced) == 2, md  # the message and the log, each in a fence longer than their ```
    assert f"**总分 / Total: {100 - CHECKS['2.1'][0]} / 100**" in md


def test_failed_checks_text_says_a_shared_message_once_per_step():
    msg = "尚未完成 / not implemented yet: Step 1"
    r = _result(judged=_judged({c: msg for c in CHECKS if step_of(c) == 1} | {"2.1": "shape"}))
    text = report.failed_checks_text(r)
    step1 = sum(1 for c in CHECKS if step_of(c) == 1)
    assert text.count(msg) == 1 and text.count("✗ 1.") == step1 and "✗ 2.1 (4)" in text
    assert report.failed_checks_text(_result(judged=_judged())) == ""


def test_step_table_and_console_line_show_every_step():
    r = _result(judged=_judged({"5.3": "panels"}))
    table = report.step_table(r)
    assert "Total         95 / 100" in table and all(f"Step {s}" in table for s in STEP_POINTS)
    line = report.console_line(r)
    assert line.split() == ["alice", "95", "15", "20", "10", "35", "15", "ok", "2.0s"]


def test_write_outputs_writes_csv_json_and_feedback(tmp_path):
    results = [_result(student="=cmd", judged=_judged({"1.1": "x"}), label="=cmd.py"), _result(judged=_judged())]
    report.write_outputs(tmp_path, results)
    with open(tmp_path / "grades.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == report.CSV_HEADER
    p11 = CHECKS["1.1"][0]
    assert rows[1] == ["'=cmd", str(100 - p11), str(15 - p11), "20", "10", "35", "20", "ok", "'=cmd.py"]
    assert rows[2][:2] == ["alice", "100"]
    assert json.loads((tmp_path / "alice" / "results.json").read_text(encoding="utf-8"))["score"] == 100
    assert (tmp_path / "=cmd" / "feedback.md").is_file()


@pytest.mark.parametrize("protection,want", [
    (None, "not run (nothing of the submission was executed)"),
    ([], "process isolation only / 仅进程隔离 (no sandbox)"),
    (["subreaper"], "process isolation only / 仅进程隔离 (subreaper)"),
    (["landlock ABI 6", "separate uid 1879048192"], "landlock ABI 6 + separate uid 1879048192"),
])
def test_protection_text(protection, want):
    assert report.protection_text({"protection": protection}) == want


# ---------------------------------------------------------------------------------------------
# The rubric and everything that must agree with it
# ---------------------------------------------------------------------------------------------

def test_rubric_problems_finds_unknown_duplicate_missing_and_unmarked_checks():
    ids = list(CHECKS)
    assert rubric_problems(ids) == []
    assert rubric_problems(ids + ["9.9"]) == ["check id '9.9' is not in grader/rubric.py"]
    assert rubric_problems(ids + ["1.1"]) == ["check id '1.1' is used by more than one check"]
    assert rubric_problems(ids[1:]) == ["rubric id '1.1' has no check"]
    assert rubric_problems(ids + [None]) == ["a check function without @check(id)"]


def _check_ids_in_check_files():
    """The @check("id") of every check_* function in grader/checks/, in file order, read from the syntax tree."""
    ids = []
    for path in sorted((ROOT / "grader" / "checks").glob("check_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
                marks = [d.args[0].value for d in node.decorator_list
                         if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "check"]
                ids.append(marks[0] if len(marks) == 1 else None)
    return ids


def test_every_check_function_has_exactly_one_rubric_id():
    ids = _check_ids_in_check_files()
    assert len(ids) == len(CHECKS)
    assert rubric_problems(ids) == []


def test_collector_refuses_to_grade_when_checks_and_rubric_disagree():
    class Item:
        def __init__(self, cid):
            self.nodeid, self.cid = f"check_x.py::check_{cid}", cid

        def get_closest_marker(self, name):
            return None if self.cid is None else SimpleNamespace(args=(self.cid,))

    good = [Item(c) for c in CHECKS]
    collector = check_plugin.Collector()
    collector.pytest_collection_modifyitems(None, None, list(good))
    assert collector.problems == [] and len(collector.ids) == len(CHECKS)
    items = good + [Item("4.9")]
    collector.pytest_collection_modifyitems(None, None, items)
    assert items == [] and collector.problems == ["check id '4.9' is not in grader/rubric.py"]


def _readme_rubric_rows():
    md = (ROOT / "grader" / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| (\d) [^|]*\| (\d+) \| (.*) \|$", md, re.M)


def test_grader_readme_rubric_table_matches_rubric_py():
    """Each row: the step's points, and the points in parentheses of each check in rubric order."""
    rows = _readme_rubric_rows()
    assert [int(s) for s, _, _ in rows] == list(STEP_POINTS)
    for s, points, cell in rows:
        assert int(points) == STEP_POINTS[int(s)], s
        assert [int(p) for p in re.findall(r"\((\d+)\)", cell)] == \
               [p for c, (p, _) in CHECKS.items() if step_of(c) == int(s)], f"grader/README.md, Step {s}"


def test_grader_readme_module_map_names_every_file_of_the_grader():
    """The maintainers' module map (grader/README.md) and the grader/ folder list the same files: a
    module added, split or removed without its row shows up here."""
    text = (ROOT / "grader" / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| Process (trust) | Module | Holds |"):]
    table = table[:table.index("\n\n")]
    named = set()
    for row in table.splitlines()[2:]:
        cell = row.split("|")[2]
        named |= {n.rstrip("/") for n in re.findall(r"`([^`]+)`", cell)}
    named = {"checks" if n.startswith("checks/") or re.fullmatch(r"check_step\d\.py", n) else n for n in named}
    files = {p.name for p in (ROOT / "grader").iterdir()
             if p.name not in ("__init__.py", "README.md", "__pycache__") and not p.name.startswith(".")}
    assert files == named, f"only in grader/: {sorted(files - named)}; only in the map: {sorted(named - files)}"


def test_readme_step_points_match_rubric_py():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(" + "/".join(str(p) for p in STEP_POINTS.values()) + ")" in text


def test_rubric_text_lists_every_check_and_the_total():
    text = rubric.rubric_text()
    assert all(f"  {c:<4} {p:>2}  {t}" in text for c, (p, t) in CHECKS.items())
    assert text.endswith("合计 / Total: 100")


def _worker_tree():
    return ast.parse((ROOT / "grader" / "worker.py").read_text(encoding="utf-8"))


def test_worker_and_sources_agree_on_the_contract():
    # The worker runs under `python -I` and imports nothing of the grader: it keeps its own copy.
    (contract,) = [ast.literal_eval(n.value) for n in _worker_tree().body
                   if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "CONTRACT"]
    assert tuple(contract) == sources.CONTRACT


def test_every_op_the_checks_request_exists_in_the_worker():
    ops = {n.name[3:] for n in _worker_tree().body if isinstance(n, ast.FunctionDef) and n.name.startswith("op_")}
    used = set()
    for path in (ROOT / "grader" / "checks").glob("check_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Request", "_opt_request"):
                args = node.args[:2]
                if node.func.id == "Request" and isinstance(args[1], ast.Constant):
                    used.add(args[1].value)
                elif node.func.id == "_opt_request":
                    used.add("optimizers")
    assert used == {"dataset", "networks", "grads", "losses", "optimizers", "train_step", "visualize"}
    assert used <= ops and set(check_plugin.GRADER_NETS_OPS + check_plugin.OWN_NETS_OPS) <= ops


# ---------------------------------------------------------------------------------------------
# The check plugin's request rules (StudentCode), on a stand-in for the worker process
# ---------------------------------------------------------------------------------------------

# A minimal reply of each op used here that follows grader/protocol.py (replies are validated on arrival)
VALID = {"losses": {"returned": {"type": "builtins.tuple", "len": 2}}, "networks": {},
         "train_step": {"returned": []}, "dataset": {"len_type": "builtins.int", "items": []},
         "grads": {"output": {"type": "torch.Tensor"}, "params": [], "frozen": []}}


class FakeWorker:
    """Answers every request with the minimal valid reply of its op (VALID); records what was sent."""

    def __init__(self, fail_with=None):
        self.sent, self.fail_with = [], fail_with

    def put(self, name, **arrays):
        return f"in/{name}"

    def path(self, name):
        return f"x/{name}"

    def send(self, op, args, timeout, what):
        self.sent.append((op, args))
        return len(self.sent)

    def receive(self, rid):
        if self.fail_with:
            raise self.fail_with
        return dict(VALID[self.sent[rid - 1][0]])

    def get(self, name):
        return {}


def test_answers_are_cached_by_request():
    w = FakeWorker()
    code = StudentCode(w)
    req = Request("losses", "losses", "build_losses()", {}, {"p": 1})
    assert code.run(req) == (VALID["losses"], {})
    assert code.run(req) == (VALID["losses"], {}) and len(w.sent) == 1
    assert w.sent[0][1] == {"inp": "in/losses_in.npz", "out": "x/losses_out.npz"}


def test_a_request_key_cannot_stand_for_two_requests():
    code = StudentCode(FakeWorker())
    code.run(Request("k", "losses", "build_losses()", {"a": 1}))
    code.run(Request("k", "losses", "build_losses()", {"a": 1}))  # the same request spelled again: fine
    with pytest.raises(RuntimeError, match="two different requests"):
        code.run(Request("k", "losses", "build_losses()", {"a": 2}))


def test_grader_networks_reach_the_worker_only_after_every_step2_answer():
    w = FakeWorker()
    code = StudentCode(w)
    g = Request("g_fwd", "networks", "Generator()(x)", {"G": True})
    code.submit(g)
    with pytest.raises(RuntimeError, match="Step 2 answer is pending"):
        code.submit(Request("train_step", "train_step", "train_step", {"steps": 2}))
    assert all("nets_source" not in args for _, args in w.sent)
    code.run(g)
    code.submit(Request("train_step", "train_step", "train_step", {"steps": 2}))
    assert w.sent[-1][1]["nets_source"] == check_plugin.GRADER_NETS_PY.read_text(encoding="utf-8")
    with pytest.raises(RuntimeError, match="after the grader's networks"):
        code.submit(Request("grads_G", "grads", "Generator backward", {"nets": ["Generator"]}))


def test_a_hang_is_paid_once_by_the_requests_after_it():
    w = FakeWorker(fail_with=CallFailed("timeout", "no answer within 60 s"))
    code = StudentCode(w)
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        code.run(Request("ds_main", "dataset", "PairedMedicalDataset", {}))
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        code.run(Request("ds_rgb", "dataset", "PairedMedicalDataset", {}), after=["ds_main"])
    assert len(w.sent) == 1


# ---------------------------------------------------------------------------------------------
# Import hygiene verdicts (grader/hygiene.py)
# ---------------------------------------------------------------------------------------------

CLEAN = {"cpu": 0.01, "warm": True, "wall": 0.2, "threads_added": 0, "children": [], "optimizer_steps": 0,
         "backward_calls": 0, "files": []}


@pytest.mark.parametrize("change,words", [
    ({"optimizer_steps": 3}, "ran 3 optimizer steps"),
    ({"backward_calls": 2}, "computed gradients 2 times"),
    ({"cpu": 1.5}, "used 1.5 s of CPU"),
    ({"wall": 25.0}, "took 25 s"),
    ({"threads_added": 1}, "started 1 thread(s)"),
    ({"children": [123]}, "started 1 child process(es)"),
])
def test_each_import_misdeed_is_named(change, words):
    assert hygiene.problems(CLEAN) == []
    (zh, en), = hygiene.problems({**CLEAN, **change})
    assert words in en and zh


def test_cold_imports_get_the_larger_cpu_limit():
    assert hygiene.problems({**CLEAN, "cpu": 5.0, "warm": False}) == []
    assert hygiene.problems({**CLEAN, "cpu": 11.0, "warm": False})


def test_files_fail_check_56_but_do_not_make_the_definitions_graded():
    facts = {**CLEAN, "files": ["out.png"], "threads_added": 1}
    assert len(hygiene.problems(facts)) == 1  # what decides grading the definitions instead
    check = hygiene.check_problems(facts)
    assert check[0] == ("在当前目录创建了 ['out.png']", "created ['out.png'] in the working directory")
    assert check[1:] == hygiene.problems(facts)
    assert hygiene.files_message(["late.txt"]) == "\n".join(hygiene.files_problem(["late.txt"]))


def test_facts_count_only_what_the_import_added():
    before = {"cpu": 1.0, "threads": 3, "children": [10]}
    after = {"cpu": 1.25, "threads": 5, "children": [10, 11]}
    f = hygiene.facts(before, after, {"optimizer_steps": "many", "backward_calls": 2}, 0.5, True, files=["a"])
    assert f == {"cpu": 0.25, "warm": True, "wall": 0.5, "threads_added": 2, "children": [11],
                 "optimizer_steps": 0, "backward_calls": 2, "files": ["a"]}
    off_linux = {"cpu": None, "threads": None, "children": []}
    assert hygiene.facts(off_linux, off_linux, None, 0.1, False)["cpu"] is None
