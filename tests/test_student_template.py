"""The generated student files: in sync with experiment6.py, blank where students write, and equal to
the reference once the solutions are filled back in."""
import importlib.util
import inspect
import json
import re
import shutil

import nbformat
import pytest
import torch

import experiment6 as ex
from conftest import ROOT, notebook_kit, run_script
from handout import make_student as ms

SOURCE = ms.REFERENCE.read_text(encoding="utf-8")


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def blank():
    return load_module(ms.TEMPLATE, "blank_student_template")


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    path = tmp_path_factory.mktemp("solved") / "solved_template.py"
    path.write_text(ms.build_template(SOURCE, solutions=True), encoding="utf-8")
    return load_module(path, "solved_student_template")


# ---------------------------------------------------------------------------------------------
# Generation: committed files are current, --check catches drift, prompts match regions
# ---------------------------------------------------------------------------------------------

def test_committed_files_match_a_fresh_generation():
    files = ms.generate(SOURCE)
    assert set(files) == {ms.TEMPLATE, ms.NOTEBOOK, ms.MANIFEST}
    for path, text in files.items():
        assert path.read_bytes() == text.encode("utf-8"), \
            f"{path.name} is out of date or was edited by hand: run python handout/make_student.py"
    assert ms.generate(SOURCE) == files  # deterministic


@pytest.mark.slow
def test_check_flags_a_hand_edited_template(tmp_path):
    kit = tmp_path / "kit"
    for sub in ("handout", "grader", "data"):
        (kit / sub).mkdir(parents=True)
    for rel in ("experiment6.py", "student_template.py", "handout/make_student.py",
                "handout/experiment6_student.ipynb", "grader/__init__.py", "grader/sources.py",
                "grader/shipped.json", *(p.relative_to(ROOT).as_posix() for pattern in ms.SHIPPED_FILES
                                         for p in ROOT.glob(pattern))):
        shutil.copy(ROOT / rel, kit / rel)
    check = [kit / "handout" / "make_student.py", "--check"]
    r = run_script(check, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    template = kit / "student_template.py"
    text = template.read_bytes()
    template.write_bytes(text.replace(b"\n", b"\r\n"))  # a CRLF checkout is stale too
    r = run_script(check, cwd=tmp_path)
    assert r.returncode == 1 and "student_template.py" in r.stderr and "Traceback" not in r.stderr
    assert "experiment6_student.ipynb" not in r.stderr

    template.write_bytes(text.replace(b'raise NotImplementedError("Step 3', b'return None  # ("Step 3', 1))
    assert run_script(check, cwd=tmp_path).returncode == 1
    r = run_script(check[:1], cwd=tmp_path)  # regenerating repairs it
    assert r.returncode == 0 and template.read_bytes() == text

    # The hand-in fingerprints (grader/shipped.json) go stale with any fingerprinted file.
    warmup = kit / "handout" / "warmup_gan.py"
    warmup.write_text(warmup.read_text(encoding="utf-8") + "\nEXTRA = 1\n", encoding="utf-8")
    r = run_script(check, cwd=tmp_path)
    assert r.returncode == 1 and "grader/shipped.json" in r.stderr and "student_template.py" not in r.stderr
    assert run_script(check[:1], cwd=tmp_path).returncode == 0 and run_script(check, cwd=tmp_path).returncode == 0


def _region_lines_removed(source, function):
    head, rest = source.split(f"def {function}(", 1)
    body, tail = rest.split("\ndef ", 1)
    body = "\n".join(l for l in body.split("\n") if l.strip() not in (ms.BEGIN, ms.END))
    return f"{head}def {function}({body}\ndef {tail}"


def test_region_and_prompt_mismatches_stop_the_generation():
    extra = SOURCE.replace("def pick_device(name):\n",
                           f"def pick_device(name):\n    {ms.BEGIN}\n    pass\n    {ms.END}\n", 1)
    with pytest.raises(ValueError, match="without a prompt: \\['pick_device'\\]"):
        ms.build_template(extra)
    with pytest.raises(ValueError, match="without a region: \\['build_losses'\\]"):
        ms.build_template(_region_lines_removed(SOURCE, "build_losses"))
    with pytest.raises(ValueError, match="inside another solution region"):
        ms.build_template(SOURCE.replace(f"    {ms.END}\n", "", 1))


# ---------------------------------------------------------------------------------------------
# solutions=True gives back the reference
# ---------------------------------------------------------------------------------------------

def _own_callables(module):
    """{qualified name: signature} of the functions and methods the module itself defines."""
    found = {}
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            found[name] = str(inspect.signature(obj))
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member):
                    found[f"{name}.{attr}"] = str(inspect.signature(member))
    return found


def test_solutions_template_has_the_reference_names_and_signatures(solved):
    public = lambda m: {n for n in vars(m) if not n.startswith("_")}
    assert public(solved) == public(ex)
    assert _own_callables(solved) == _own_callables(ex)
    assert "train_step" in _own_callables(ex) and "Generator.forward" in _own_callables(ex)


@pytest.mark.slow
def test_solutions_template_trains_exactly_like_the_reference(solved):
    t1, t2 = torch.rand(1, 1, 256, 256) * 2 - 1, torch.rand(1, 1, 256, 256) * 2 - 1
    runs = []
    for m in (ex, solved):
        torch.manual_seed(1)
        G, D = m.Generator(), m.Discriminator()
        opt_g, opt_d = m.build_optimizers(G, D)
        losses = [m.train_step(G, D, t1, t2, *m.build_losses(), opt_g, opt_d) for _ in range(2)]
        runs.append((losses, [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_solutions_template_loads_and_draws_like_the_reference(solved, tiny_data, tmp_path):
    sets = [m.PairedMedicalDataset(str(tiny_data / "testA"), str(tiny_data / "testB")) for m in (ex, solved)]
    assert len(sets[0]) == len(sets[1]) == 2
    assert all(torch.equal(a, b) for i in range(2) for a, b in zip(sets[0][i], sets[1][i]))
    G = ex.Generator()
    figures = [m.visualize(G, sets[0], torch.device("cpu"), str(tmp_path / f"{k}.png"), indices=[0, 1])
               for k, m in enumerate((ex, solved))]
    assert open(figures[0], "rb").read() == open(figures[1], "rb").read()


# ---------------------------------------------------------------------------------------------
# The blank template
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_blank_template_imports_quietly(tmp_path):
    r = run_script(["-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import student_template"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "" and list(tmp_path.iterdir()) == []


STUBS = {
    "PairedMedicalDataset": (1, lambda m, d: m.PairedMedicalDataset(str(d / "trainA"), str(d / "trainB"))),
    "PairedMedicalDataset.__len__": (1, lambda m, d: m.PairedMedicalDataset.__len__(None)),
    "PairedMedicalDataset.__getitem__": (1, lambda m, d: m.PairedMedicalDataset.__getitem__(None, 0)),
    "Generator": (2, lambda m, d: m.Generator()),
    "Generator.forward": (2, lambda m, d: m.Generator.forward(None, torch.zeros(1, 1, 256, 256))),
    "Discriminator": (2, lambda m, d: m.Discriminator()),
    "Discriminator.forward": (2, lambda m, d: m.Discriminator.forward(None, None, None)),
    "build_losses": (3, lambda m, d: m.build_losses()),
    "build_optimizers": (3, lambda m, d: m.build_optimizers(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))),
    "train_step": (4, lambda m, d: m.train_step(*[None] * 8)),
    "visualize": (5, lambda m, d: m.visualize(None, None, torch.device("cpu"), str(d / "never.png"))),
}


@pytest.mark.parametrize("name", STUBS)
def test_blank_template_stub_names_its_step(blank, tiny_data, tmp_path, name):
    step, call = STUBS[name]
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    with pytest.raises(NotImplementedError) as info:
        call(blank, data)
    message = str(info.value)
    assert message.startswith(f"Step {step}:") and f"第 {step} 步" in message and "fill in" in message
    assert not (data / "never.png").exists()


def test_blank_template_has_one_stub_per_region():
    assert ms.TEMPLATE.read_text(encoding="utf-8").count('raise NotImplementedError("Step ') == len(STUBS)
    assert ms.BEGIN not in ms.TEMPLATE.read_text(encoding="utf-8")


@pytest.mark.slow
def test_blank_template_cli_says_which_step_is_missing(tmp_path):
    r = run_script([ROOT / "student_template.py", "--epochs", "1"], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "尚未完成" in r.stderr and "Not implemented yet" in r.stderr
    assert "Step 1:" in r.stderr and "第 1 步" in r.stderr


# ---------------------------------------------------------------------------------------------
# The notebook
# ---------------------------------------------------------------------------------------------

def _tags(cell):
    return cell.metadata.get("tags", [])


def test_notebook_is_valid_and_holds_the_template_code():
    nb = nbformat.read(ms.NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "exp6"  # the kernel the handout registers
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any('if __name__ == "__main__"' in c.source for c in code)
    assert any("main([" in c.source for c in code if "run" in _tags(c))

    # The definition cells are the template minus its docstring and its __main__ guard.
    template = ms.TEMPLATE.read_text(encoding="utf-8")
    body = template.split('"""', 2)[2]
    body = body[:body.index('if __name__ == "__main__":')]
    cells = "\n".join(c.source for c in code if "run" not in _tags(c))
    nonblank = lambda text: [line for line in text.splitlines() if line.strip()]
    assert nonblank(cells) == nonblank(body)

    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for n in range(1, 6):
        assert f"第 {n} 步" in markdown and f"Step {n}" in markdown


RUNNER = """\
import json, sys
sys.path.insert(0, sys.argv[2])  # a stand-in for IPython.display: no Jupyter needed
nb = json.load(open(sys.argv[1], encoding="utf-8"))
scope = {"__name__": "notebook"}  # no __file__ and no __main__, as in a kernel
for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
        exec(compile("".join(cell["source"]), f"<cell {i}>", "exec"), scope)
"""

IPYTHON_DISPLAY = """\
class Image:
    def __init__(self, filename):
        self.filename = filename

def display(obj):
    print("[display]", obj.filename)
"""


def _run_notebook(nb, tmp_path, tiny_data, cwd_in_kit):
    """A kit with the tiny data as dataset/ixi2000; runs every code cell in order from cwd_in_kit."""
    kit = notebook_kit(tmp_path, tiny_data)
    path = kit / "handout" / "notebook.ipynb"
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    stub = tmp_path / "stub" / "IPython"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "display.py").write_text(IPYTHON_DISPLAY)
    (tmp_path / "runner.py").write_text(RUNNER)
    return kit, run_script([tmp_path / "runner.py", path, stub.parent], cwd=kit / cwd_in_kit)


@pytest.mark.slow
def test_solution_notebook_runs_top_to_bottom_from_handout(tmp_path, tiny_data):
    kit, r = _run_notebook(ms.build_notebook(SOURCE, solutions=True), tmp_path, tiny_data, "handout")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"working directory: {kit}" in r.stdout
    assert "Epoch 1/1" in r.stdout and "2 test pairs" in r.stdout  # dataset/ixi2000 of the kit root
    out = kit / "outputs" / "notebook"
    for name in ("results.png", "loss_curves.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert "[display] outputs/notebook/results.png" in r.stdout
    assert not (kit / "handout" / "outputs").exists()


@pytest.mark.slow
def test_blank_notebook_stops_at_step_1_from_kit_root(tmp_path, tiny_data):
    kit, r = _run_notebook(nbformat.read(ms.NOTEBOOK, as_version=4), tmp_path, tiny_data, ".")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"working directory: {kit}" in r.stdout
    assert "Not implemented yet: Step 1:" in r.stderr and "Traceback" not in r.stderr
    assert "finish the steps above first" in r.stdout and "[display]" not in r.stdout


def test_notebook_kernel_is_the_one_the_handouts_register():
    """The notebook opens with the kernel the handouts' install line registers, not a bare python3."""
    nb = json.loads(ms.NOTEBOOK.read_text(encoding="utf-8"))
    registered = set()
    for rel in ("handout/handout.zh.md", "handout/handout.en.md", "requirements-notebook.txt"):
        text = (ROOT / rel).read_text(encoding="utf-8")
        registered |= set(re.findall(r"ipykernel install --user --name (\S+) --display-name \"([^\"]+)\"", text))
    assert registered == {(nb["metadata"]["kernelspec"]["name"], nb["metadata"]["kernelspec"]["display_name"])}
