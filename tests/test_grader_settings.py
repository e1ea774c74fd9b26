"""grader/settings.py is the ONE place a knob's default lives: `python -m grader --help`, grader/README.md's
option table and the judge's and worker's values all come from it, and no other grader file declares
a default or reads a setting's environment variable. Changing a default in settings.py alone must reach
the worker process; declaring one anywhere else must fail here. Pure and fast: no grading."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from grader import settings as S  # noqa: E402

GRADER = ROOT / "grader"
KNOBS = {f.name: f for f in S.knobs()}


def _squash(text):
    return re.sub(r"\s+", " ", text)


def test_every_knob_has_a_description_and_a_known_type():
    for f in S.knobs():
        assert f.metadata["help"].strip(), f.name
        assert "\n" not in f.metadata["help"], f"{f.name}: the description is one line"
        assert f.metadata["type"] in (int, float, str, bool), f.name
        assert f.default is None or isinstance(f.default, f.metadata["type"]), f.name
        assert f.default is not None or f.metadata["shown"], f"{f.name}: a computed default says how it is computed"


def test_help_states_every_option_with_its_default_from_settings():
    r = subprocess.run([sys.executable, "-m", "grader", "--help"], cwd=ROOT, capture_output=True, text=True,
                       encoding="utf-8", env=dict(os.environ, COLUMNS="200", PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    text = _squash(r.stdout)
    for f in S.knobs():
        if f.metadata["flag"]:
            want = _squash(f"{f.metadata['flag']} {f.metadata['metavar']} {f.metadata['help']} "
                           f"(default: {S.default_text(f)})")
            assert want in text, (want, r.stdout)
    flags = set(re.findall(r"(--[a-z][a-z-]+)", r.stdout))
    own = {"--help", "--rubric", "--similarity", "--single"}  # actions, not settings
    assert flags - own == {f.metadata["flag"] for f in S.knobs() if f.metadata["flag"]}, flags


def test_readme_option_table_is_the_settings_table():
    readme = (GRADER / "README.md").read_text(encoding="utf-8")
    assert S.markdown_table() in readme, ("grader/README.md's option table differs from grader/settings.py: "
                                          "paste the output of `python -m grader.settings`")
    for f in S.knobs():  # and each environment variable the README mentions is a knob's
        if f.metadata["env"]:
            assert f.metadata["env"] in readme
    gradescope_only = {"GRADER_SUBMISSION_DIR", "GRADER_RESULTS_DIR", "GRADER_PYTHON", "GRADER_KIT",
                       "GRADER_LEADERBOARD"}  # read by gradescope/run_autograder, not by the grader
    code = "\n".join(p.read_text(encoding="utf-8") for p in GRADER.rglob("*.py"))
    named = {n for n in re.findall(r"\bGRADER_[A-Z_]+\b", readme)
             if not re.search(rf"^{n} = ", code, re.M)}  # not a Python constant such as GRADER_NETS_OPS
    assert named <= gradescope_only | {f.metadata["env"] for f in S.knobs()}, named


def test_command_line_then_environment_then_default():
    env = {"GRADER_SCRATCH_MB": "32", "GRADER_NO_USER": "1", "GRADER_NO_LANDLOCK": "0"}
    c = S.Settings.from_environment(env, timeout=5, memory_mb=None)
    want = (5.0, S.DEFAULTS.memory_mb, 32, True, False)
    assert (c.timeout, c.memory_mb, c.scratch_mb, c.no_user, c.no_landlock) == want
    assert S.Settings.from_environment({}) == S.DEFAULTS
    r = c.resolved(cpu_count=8)
    assert (r.jobs, r.budget) == (4, max(4 * 5.0, 180.0))
    assert S.Settings.from_json(r.to_json()) == r
    with pytest.raises(ValueError):
        S.Settings.from_json('{"import_timeout": 3}')  # a knob that does not exist is refused, not ignored
    with pytest.raises(ValueError):
        S.Settings.from_environment({"GRADER_SCRATCH_MB": "lots"})


def test_cli_gives_the_judge_its_settings_and_the_judge_its_worker(tmp_path):
    from types import SimpleNamespace

    from grader import cli, judge
    from grader.worker_process import WorkerProcess

    args = cli.parse_args(["x.py", "--timeout", "7", "--memory-mb", "1000"])
    config = S.from_args(args, environ={"GRADER_SCRATCH_MB": "64"}).resolved()
    sub = tmp_path / "submission.py"
    sub.write_text("x = 1\n", encoding="utf-8")
    cmd = cli.judge_command(SimpleNamespace(clean=sub), config, tmp_path / "result.json")
    assert cmd[:3] == [sys.executable, "-m", "grader.judge"]
    a, got = judge.parse_args(cmd[3:])
    assert got == config and (got.timeout, got.memory_mb, got.scratch_mb, got.budget) == (7.0, 1000, 64, 180.0)
    w = WorkerProcess(a.submission, got)
    try:
        assert (w.timeout, w.budget, w.scratch_mb, w.settings.memory_mb) == (7.0, 180.0, 64, 1000)
    finally:
        w.close()


# --- the maintainer's change: "the per-call timeout default becomes 45 s" ---------------------------

def test_changing_a_default_in_settings_alone_reaches_help_judge_and_worker(tmp_path):
    """A copy of the grader with settings.py's timeout and memory defaults changed (and nothing else):
    --help, the judge's parsed settings and the WorkerProcess all show the new values."""
    kit = tmp_path / "kit"
    shutil.copytree(GRADER, kit / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data", kit / "data", ignore=shutil.ignore_patterns("__pycache__", "phantoms"))
    path = kit / "grader" / "settings.py"
    text = path.read_text(encoding="utf-8")
    for old, new in (("timeout: float = knob(60.0,", "timeout: float = knob(45.0,"),
                     ("memory_mb: int = knob(3072,", "memory_mb: int = knob(2000,")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    (tmp_path / "s.py").write_text("x = 1\n", encoding="utf-8")
    code = f"""
import sys
from types import SimpleNamespace
from grader import cli, judge, settings
from grader.worker_process import WorkerProcess
args = cli.parse_args([])
c = settings.from_args(args, environ={{}}).resolved()
a, got = judge.parse_args(cli.judge_command(SimpleNamespace(clean={str(tmp_path / 's.py')!r}), c, "r.json")[3:])
w = WorkerProcess(a.submission, got)
print(w.timeout, w.settings.memory_mb, w.budget)
w.close()
"""
    env = dict(os.environ, PYTHONPATH=str(kit), COLUMNS="200")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["45.0", "2000", "180.0"], r.stdout
    h = subprocess.run([sys.executable, "-m", "grader", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       env=env)
    assert "(default: 45)" in _squash(h.stdout) and "(default: 2000)" in _squash(h.stdout), h.stdout


def _grader_files():
    return sorted(p for p in GRADER.rglob("*.py") if p.name != "settings.py" and "__pycache__" not in p.parts)


def _literal(node):
    return isinstance(node, ast.Constant) and node.value is not None


def declared_elsewhere(source, filename="<file>"):
    """Where a grader file (not settings.py) declares a knob's default or reads a setting from the
    environment: [(line, what)]."""
    tree = ast.parse(source, filename)
    envs = {f.metadata["env"] for f in S.knobs() if f.metadata["env"]}
    names = set(KNOBS)
    out = []
    for n in ast.walk(tree):
        # os.environ.get("GRADER_..."), os.getenv("GRADER_..."), os.environ["GRADER_..."], "GRADER_..." in os.environ
        strings = []
        if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant):
            f = ast.unparse(n.func)
            if f in ("os.environ.get", "os.getenv", "environ.get", "os.environ.pop", "os.environ.setdefault"):
                strings.append(n.args[0].value)
        if isinstance(n, ast.Subscript) and ast.unparse(n.value) in ("os.environ", "environ"):
            if isinstance(n.slice, ast.Constant):
                strings.append(n.slice.value)
        if isinstance(n, ast.Compare) and any(ast.unparse(c) in ("os.environ", "environ") for c in n.comparators):
            if isinstance(n.left, ast.Constant):
                strings.append(n.left.value)
        for s in strings:
            if isinstance(s, str) and s.startswith("GRADER_") and (s in envs or s != "GRADER_WORKER"):
                out.append((n.lineno, f"reads {s} from the environment"))
        # a parameter named like a knob with a literal default: def f(timeout=60)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = n.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            for arg, d in pairs:
                if d is not None and _literal(d) and arg.arg in names:
                    out.append((n.lineno, f"parameter {arg.arg}={ast.unparse(d)}"))
        # argparse options with their own default
        if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("add_argument"):
            dests = {a.value.lstrip("-").replace("-", "_") for a in n.args if isinstance(a, ast.Constant)}
            dests |= {k.value.value for k in n.keywords if k.arg == "dest" and isinstance(k.value, ast.Constant)}
            for k in n.keywords:
                if k.arg == "default" and _literal(k.value) and dests & names:
                    out.append((n.lineno, f"add_argument(..., default={ast.unparse(k.value)})"))
        # a module constant named like a knob: TIMEOUT = 60, SCRATCH_MB = int(...)
        if isinstance(n, ast.Assign) and n in tree.body:
            for t in n.targets:
                if isinstance(t, ast.Name) and t.id.isupper() and t.id.lower() in names:
                    out.append((n.lineno, f"constant {t.id}"))
        # Settings(timeout=60) / replace(config, timeout=60): a knob set to a literal outside settings.py
        if isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] in ("Settings", "replace"):
            for k in n.keywords:
                if k.arg in names and _literal(k.value) and k.arg != "contain":
                    out.append((n.lineno, f"{ast.unparse(n.func)}({k.arg}={ast.unparse(k.value)})"))
    return out


def test_no_grader_file_but_settings_declares_a_default_or_reads_its_environment():
    found = []
    for p in _grader_files():
        found += [f"{p.relative_to(ROOT)}:{line}: {what}" for line, what in
                  declared_elsewhere(p.read_text(encoding="utf-8"), str(p))]
    assert not found, "declare defaults in grader/settings.py only:\n" + "\n".join(found)


@pytest.mark.parametrize("wrong", [
    'p.add_argument("--timeout", type=float, default=45.0)',  # the CLI's own default
    "def __init__(self, submission, timeout=45.0):\n    pass",  # WorkerProcess's own default
    'TIMEOUT = float(os.environ.get("GRADER_TIMEOUT", "45"))',  # an environment variable of its own
    'SCRATCH_MB = int(os.environ.get("GRADER_SCRATCH_MB", "512") or 512)',  # the old worker_process.py line
    'x = os.environ["GRADER_NO_USER"] == "1"',
    "w = WorkerProcess(path, replace(config, timeout=45))",
])
def test_the_scan_catches_a_default_declared_the_wrong_way(wrong):
    assert declared_elsewhere(wrong), wrong
