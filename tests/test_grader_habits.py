"""Correct submissions written with ordinary habits get full marks (or lose only 5.6, import hygiene,
for module-level code), and import-time training or delayed writes always fail 5.6.

Every graded case is built here from experiment6.py (as tests/grader_cases/cases.py does) and graded
in the session's shared default-flag batch (tests/conftest.py `graded`, one grader call for several
files); the unit tests below it need no grading.
"""
import ast
import csv
import json
import re
import sys

import pytest

from conftest import ROOT
from grader_cases import cases as C
from handout import make_student as ms

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")
FULL = {"total": 100.0, **{k: float(v) for k, v in C.POINTS.items()}}
NO_56 = {**FULL, "total": 97.0, "step5": 17.0}  # everything but 5.6 (3 points)
TEMPLATE = ROOT / "student_template.py"
NOTEBOOK = ROOT / "handout" / "experiment6_student.ipynb"
WARMUP = ROOT / "handout" / "warmup_gan.py"

# The handout's "检验一下" snippet, pasted at the top level after the dataset class.
CHECK_SNIPPET = '''
from torch.utils.data import DataLoader

dataset = PairedMedicalDataset("dataset/ixi2000/trainA", "dataset/ixi2000/trainB")
t1, t2 = dataset[0]
print(len(dataset), t1.shape, t1.dtype, t1.min().item(), t1.max().item())
dataloader = DataLoader(dataset, batch_size=1, shuffle=True)
'''
# The handout's Step 4 loop at module level, after the definitions, on data it can reach (so it trains).
TRAIN_LOOP = '''
device = torch.device("cpu")
G, D = Generator().to(device), Discriminator().to(device)
criterion_GAN, criterion_L1 = build_losses()
optimizer_G, optimizer_D = build_optimizers(G, D)
torch.manual_seed(0)
dataloader = [(torch.rand(1, 1, 256, 256) * 2 - 1, torch.rand(1, 1, 256, 256) * 2 - 1)]
epochs = 2
for epoch in range(epochs):
    for t1, t2 in dataloader:
        t1, t2 = t1.to(device), t2.to(device)
        loss_G, loss_D = train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D)
    print(f"Epoch {epoch + 1}/{epochs} | Loss_G: {loss_G:.4f} | Loss_D: {loss_D:.4f}")
'''
# The same loop exactly as the handout shows it: `epochs` and `dataloader` are not defined at import.
HANDOUT_LOOP = """
for epoch in range(epochs):
    for t1, t2 in dataloader:
        t1, t2 = t1.to(device), t2.to(device)
        loss_G, loss_D = train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D)
    print(f"Epoch {epoch + 1}/{epochs} | Loss_G: {loss_G:.4f} | Loss_D: {loss_D:.4f}")
"""
EXPLORE_CELL = ('dataset = PairedMedicalDataset("data/phantoms/trainA", "data/phantoms/trainB")\n'
                'print(len(dataset))\nvisualize(Generator(), dataset, "cpu", "first_look.png")')
# Lines that begin with `!=`, `%` or `!` but are code: inside brackets, after a backslash, in a string.
EXPRESSION_CELL = '''different = (1
             != 2)
remainder = (7
             % 3)
odd = 5 \\
    % 2
doc = """
%d items
!important
"""
%matplotlib inline
!echo shell lines still go
assert different and remainder == 1 and odd == 1 and doc.count("\\n") == 3
'''
SGD_AT_IMPORT = '''
_w = torch.zeros(64, requires_grad=True)
for _ in range(300):  # a hand-written SGD loop, no torch.optim
    _loss = ((_w - 1.0) ** 2).sum()
    _loss.backward()
    with torch.no_grad():
        _w -= 0.01 * _w.grad
        _w.grad.zero_()
'''
# Gradient descent written out by hand, without autograd or torch.optim: only its CPU time shows.
MANUAL_GD_AT_IMPORT = '''
_g = torch.Generator().manual_seed(0)
_X, _y = torch.randn(3000, 600, generator=_g), torch.randn(3000, 1, generator=_g)
_w = torch.zeros(600, 1)
for _ in range(6000):  # about 3 s of CPU
    _w -= 1e-5 * (_X.T @ (_X @ _w - _y))
'''
THREAD_WRITE = '''
import threading as _threading, time as _time
def _later():
    _time.sleep(3)
    open("written_later.txt", "w").write("x")
_threading.Thread(target=_later, daemon=True).start()
'''
CHILD_WRITE = '''
import subprocess as _sp, sys as _sys
_sp.Popen([_sys.executable, "-c", "import time; time.sleep(3); open('child_wrote.txt', 'w').write('x')"])
'''
BROKEN_DEFINITIONS = ("def build_losses():", "def build_losses(_x=no_such_module_e6.X):")


def insert_before(source, anchor, code):
    assert source.count(anchor) == 1, anchor
    return source.replace(anchor, code + "\n\n" + anchor)


def main_guard_off(source):
    return C.substitute(source, [('\nif __name__ == "__main__":\n    sys.exit(main())\n', "\n")])


# name -> (expected scores, file the grader must choose, files it must skip)
CASES = {
    "habit_check_snippet": (NO_56, "habit_check_snippet.py", []),
    "habit_train_loop": (NO_56, "habit_train_loop.py", []),
    "habit_handout_loop_verbatim": (NO_56, "habit_handout_loop_verbatim.py", []),
    "habit_nb_explore_cell": (NO_56, "habit_nb_explore_cell.ipynb", []),
    "habit_gbk_coding_line": (FULL, "habit_gbk_coding_line.py", []),
    "habit_nb_bang_percent_in_expressions": (FULL, "habit_nb_bang_percent_in_expressions.ipynb", []),
    "habit_kit_data_import": (FULL, "habit_kit_data_import.py", []),
    # make_student's finished notebook under the shipped name, next to the shipped warm-up script and
    # the untouched template re-saved on Windows (CRLF): the notebook is graded, both others skipped.
    "habit_nb_next_to_shipped_files": (FULL, "experiment6_student.ipynb", ["student_template.py", "warmup_gan.py"]),
    # Attackers and limits: these must fail 5.6 (and only 5.6), or score what the definitions earn.
    "attack_sgd_at_import": (NO_56, "attack_sgd_at_import.py", []),
    "attack_manual_gd_at_import": (NO_56, "attack_manual_gd_at_import.py", []),
    "attack_thread_writes_later": (NO_56, "attack_thread_writes_later.py", []),
    "attack_child_writes_later": (NO_56, "attack_child_writes_later.py", []),
    "defs_do_not_import": ({k: 0.0 for k in FULL}, "defs_do_not_import.py", []),
}


def write_submissions(folder):
    """Every case as one student (file or folder) in `folder` (conftest.graded's shared batch)."""
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    finished_nb = ms.build_notebook(REFERENCE, solutions=True)

    def py(name, text, data=None):
        (folder / f"{name}.py").write_bytes(data if data is not None else text.encode("utf-8"))

    def nb(name, nbook):
        nbformat.write(nbook, str(folder / f"{name}.ipynb"))

    py("habit_check_snippet", insert_before(REFERENCE, "class Generator(nn.Module):", CHECK_SNIPPET))
    py("habit_train_loop", main_guard_off(REFERENCE) + TRAIN_LOOP)
    py("habit_handout_loop_verbatim", main_guard_off(REFERENCE) + HANDOUT_LOOP)
    explore = nbformat.from_dict(json.loads(nbformat.writes(finished_nb)))
    explore.cells.append(nbformat.v4.new_code_cell(EXPLORE_CELL))
    nb("habit_nb_explore_cell", explore)
    gbk = "# -*- coding: gbk -*-\n" + REFERENCE
    py("habit_gbk_coding_line", gbk, data=gbk.encode("gbk"))
    expr = nbformat.from_dict(json.loads(nbformat.writes(finished_nb)))
    expr.cells.insert(3, nbformat.v4.new_code_cell(EXPRESSION_CELL))
    nb("habit_nb_bang_percent_in_expressions", expr)
    py("habit_kit_data_import", insert_before(REFERENCE, "DEFAULT_DATA_ROOT = os.path.join(",
                                              "from data.phantoms import phantom_slice, to_uint8"))
    d = folder / "habit_nb_next_to_shipped_files"
    d.mkdir()
    nbformat.write(finished_nb, str(d / "experiment6_student.ipynb"))
    (d / "warmup_gan.py").write_bytes(WARMUP.read_bytes())
    (d / "student_template.py").write_bytes(TEMPLATE.read_bytes().replace(b"\n", b"\r\n"))  # re-saved on Windows
    py("attack_sgd_at_import", REFERENCE + SGD_AT_IMPORT)
    py("attack_manual_gd_at_import", REFERENCE + MANUAL_GD_AT_IMPORT)
    py("attack_thread_writes_later", REFERENCE + THREAD_WRITE)
    py("attack_child_writes_later", REFERENCE + CHILD_WRITE)
    py("defs_do_not_import", C.substitute(REFERENCE, [BROKEN_DEFINITIONS]) + CHECK_SNIPPET)
    assert set(CASES) <= {p.stem for p in folder.iterdir()}


@pytest.fixture(scope="module")
def habits(graded):
    return graded


def results(batch, student):
    return json.loads((batch.out / student / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("student", CASES)
def test_habit_scores(habits, student):
    want, graded_file, skipped = CASES[student]
    assert habits.scores(student) == want, habits.explain(student)
    tests = {t["name"].split()[1]: t for t in results(habits, student)["tests"]}
    if want == NO_56:  # only import hygiene failed, and it says where and what to do
        assert [k for k, t in tests.items() if t["status"] == "failed"] == ["5.6"], habits.explain(student)
        assert "__main__" in tests["5.6"]["output"], tests["5.6"]["output"]
    row = habits.row(student)
    assert row["file"] == graded_file, row
    data = results(habits, student)
    assert data["extra_data"]["file"] == graded_file, data["extra_data"]
    if skipped:
        assert sorted(s["file"] for s in data["extra_data"]["skipped_files"]) == skipped, data["extra_data"]
        feedback = habits.feedback(student).replace("\\", "")  # file names are markdown-escaped (student text)
        assert graded_file in feedback and all(f in feedback for f in skipped), feedback[:1500]


@pytest.mark.slow
def test_module_code_message_names_the_line(habits):
    out = {t["name"].split()[1]: t for t in results(habits, "habit_check_snippet")["tests"]}["5.6"]["output"]
    line = 1 + insert_before(REFERENCE, "class Generator(nn.Module):", CHECK_SNIPPET).split("\n").index(
        'dataset = PairedMedicalDataset("dataset/ixi2000/trainA", "dataset/ixi2000/trainB")')
    assert f"line {line}" in out and "PairedMedicalDataset(\"dataset/ixi2000" in out, out
    nb_out = {t["name"].split()[1]: t for t in results(habits, "habit_nb_explore_cell")["tests"]}["5.6"]["output"]
    assert "notebook cell" in nb_out and "PairedMedicalDataset(\"data/phantoms" in nb_out, nb_out


@pytest.mark.slow
def test_definitions_that_do_not_import_are_an_import_error(habits):
    assert habits.row("defs_do_not_import")["status"] == "import_error", habits.explain("defs_do_not_import")


@pytest.mark.slow
def test_grades_csv_ends_with_the_file_column(habits):
    with open(habits.out / "grades.csv", encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header[-1] == "file"


# ---------------------------------------------------------------------------------------------
# Unit tests (no grading)
# ---------------------------------------------------------------------------------------------

from grader import sources as S  # noqa: E402


def test_definitions_only_keeps_what_the_definitions_need():
    text = '''"""doc"""
import os
import seaborn_not_installed as sns
from torchvision import transforms
SIZE = 256
LR = 2e-4
device = os.environ.get("DEVICE", "cpu")
transform = transforms.Compose([transforms.Resize((SIZE, SIZE))])
unused = os.listdir("dataset/ixi2000")
print("hello")
class PairedMedicalDataset:
    def __getitem__(self, i):
        return transform(i), device
def build_optimizers(G, D, lr=LR):
    return helper(G)
def helper(G):
    return G
def main():
    return unused
x = 1; print(x)
for i in range(3):
    pass
if __name__ == "__main__":
    main()
'''
    out, actions = S.definitions_only(text)
    kept = out.split("\n")
    assert len(kept) == len(text.split("\n"))  # same line numbers as the file
    for line in ('"""doc"""', "import os", "from torchvision import transforms", "SIZE = 256", "LR = 2e-4",
                 'device = os.environ.get("DEVICE", "cpu")', "def helper(G):", "def main():"):
        assert line in kept, line
    for line in ("import seaborn_not_installed as sns", 'unused = os.listdir("dataset/ixi2000")', 'print("hello")',
                 "for i in range(3):", 'if __name__ == "__main__":', "    main()"):
        assert line not in kept, line
    assert [a[1:] for a in actions] == [('unused = os.listdir("dataset/ixi2000")', 2), ('print("hello")', 1),
                                        ("x = 1; print(x)", 1), ("for i in range(3):", 0)]
    assert actions[0][0] == 9
    ast.parse(out)
    strict, _ = S.definitions_only(text, strict=True)
    assert 'device = os.environ.get("DEVICE", "cpu")' not in strict.split("\n") and "LR = 2e-4" in strict


def test_definitions_only_of_the_reference_still_defines_the_contract():
    out, actions = S.definitions_only(REFERENCE)
    names = {n.name for n in ast.parse(out).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert set(S.CONTRACT) <= names
    assert [a for a in actions if a[2] < 2] == []  # nothing but constants and the main guard at module level


def test_warmup_holds_every_module_level_import_and_nothing_else():
    text = ("import os\ntry:\n    import seaborn\nexcept ImportError:\n    seaborn = None\nprint('x')\n"
            "def f():\n    import json\nif __name__ == '__main__':\n    import argparse\n")
    warm = S.warmup_source(text)
    body = [n for n in ast.parse(warm).body]
    assert all(isinstance(n, ast.Try) for n in body) and len(body) == 2
    assert "import os" in warm and "import seaborn" in warm
    assert "json" not in warm and "argparse" not in warm and "print" not in warm


def test_coding_declaration_is_rewritten_keeping_line_numbers():
    for text in ("# -*- coding: gbk -*-\nx = 1\n", "#!/usr/bin/env python\n# vim: set fileencoding=gb2312 :\nx = 1\n"):
        out = S.drop_coding_declaration(text)
        assert out.count("\n") == text.count("\n") and "x = 1" in out
        assert not any(S._CODING.match(line) for line in out.split("\n")[:2]), out
    kept = "# coding: utf-8\nx = 1\n"
    assert S.drop_coding_declaration(kept) == kept
    late = "x = 1\ny = 2\n# coding: gbk\n"  # only lines 1-2 are declarations (PEP 263)
    assert S.drop_coding_declaration(late) == late


def test_gbk_file_with_coding_line_prepares_to_clean_utf8(tmp_path):
    src = tmp_path / "s.py"
    src.write_bytes("# -*- coding: gbk -*-\nname = '学生'\n".encode("gbk"))
    sub = S.prepare(S.Submission("s", str(src), file=src), tmp_path)
    assert sub.status == "ok", sub.message
    compile(sub.clean.read_bytes(), "s.py", "exec")  # raises if a GBK declaration survived on UTF-8 bytes


MAGIC_CASES = [
    ("%matplotlib inline\nx = 1", ["pass  # (magic removed)", "x = 1"]),
    ("!pip install torch\n", ["pass  # (magic removed)", ""]),
    ("x = (1\n     != 2)", ["x = (1", "     != 2)"]),
    ("y = (7\n     % 3)", ["y = (7", "     % 3)"]),
    ("z = 5 \\\n    % 2", ["z = 5 \\", "    % 2"]),
    ('s = """\n%d\n!x\n"""', ['s = """', "%d", "!x", '"""']),
    ("if True:\n    %time f()\n    y = 2", ["if True:", "    pass  # (magic removed)", "    y = 2"]),
    ("files = !ls\nt = %timeit f()", ["pass  # (magic removed)", "pass  # (magic removed)"]),
    ("%cd \\\n  somewhere\nx = 1", ["pass  # (magic removed)", "", "x = 1"]),
    ("len?", ["pass  # (magic removed)"]),
]


@pytest.mark.parametrize("cell,want", MAGIC_CASES)
def test_magics_only_where_ipython_sees_them(cell, want, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)  # the tokenize fallback (what CI runs)
    out, _ = S.neutralize_magics(cell)
    assert out.split("\n") == want


@pytest.mark.parametrize("cell,want", MAGIC_CASES)
def test_fallback_agrees_with_ipython(cell, want):
    pytest.importorskip("IPython.core.inputtransformer2")
    out, _ = S.neutralize_magics(cell)
    assert out.split("\n") == want


def _shipped_copy(tmp_path, name, rel):
    p = tmp_path / name
    p.write_bytes((ROOT / rel).read_bytes())
    return p


def test_choose_file_skips_shipped_files_and_prefers_the_most_implemented(tmp_path):
    import nbformat

    d = tmp_path / "alice"
    d.mkdir()
    nbformat.write(ms.build_notebook(REFERENCE, solutions=True), str(d / "experiment6_student.ipynb"))
    _shipped_copy(d, "warmup_gan.py", "handout/warmup_gan.py")
    (d / "student_template.py").write_text(TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    f, status, _msg, skipped = S.choose_file(d, with_skipped=True)
    assert status == "ok" and f.name == "experiment6_student.ipynb", (status, _msg)
    assert sorted(s["file"] for s in skipped) == ["student_template.py", "warmup_gan.py"]
    # A Jupyter re-save (other metadata, outputs, ids) of the shipped notebook is still the shipped notebook.
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", name="stdout", text="hi")], 1
    e = tmp_path / "bob"
    e.mkdir()
    nbformat.write(nb, str(e / "experiment6_student.ipynb"))
    one_step_done = re.sub(r'raise NotImplementedError\("Step 1:[^"]*"\)', "pass", C.blank_template(REFERENCE), count=1)
    assert one_step_done != C.blank_template(REFERENCE)
    (e / "mine.py").write_text(one_step_done, encoding="utf-8")
    f, status, _msg, skipped = S.choose_file(e, with_skipped=True)
    assert status == "ok" and f.name == "mine.py", (status, _msg)
    assert [s["file"] for s in skipped] == ["experiment6_student.ipynb"]
    # Nothing but shipped files: there is no submission.
    g = tmp_path / "carol"
    g.mkdir()
    _shipped_copy(g, "warmup_gan.py", "handout/warmup_gan.py")
    f, status, msg, _ = S.choose_file(g, with_skipped=True)
    assert f is None and status == "no_submission" and "warmup_gan.py" in msg


def test_two_equally_finished_files_stay_ambiguous(tmp_path):
    (tmp_path / "a.py").write_text(REFERENCE, encoding="utf-8")
    (tmp_path / "b.py").write_text(REFERENCE + "\n# copy\n", encoding="utf-8")
    f, status, _msg = S.choose_file(tmp_path)
    assert f is None and status == "ambiguous"


def test_implemented_steps_counts_stubs():
    assert S.implemented_steps(REFERENCE) == (len(S.CONTRACT), 0)
    assert S.implemented_steps(C.blank_template(REFERENCE))[0] == 0
    assert S.implemented_steps("def broken(:\n    raise NotImplementedError\n") == (0, 1)
