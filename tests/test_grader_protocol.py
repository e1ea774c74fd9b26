"""The declared protocol (grader/protocol.py): replies validated on arrival, and points only from what
the judge parsed itself.

Fast tier: the declarations agree with worker.py; malformed and forged replies are refused with one
clear message (a failed check, never an internal grader error); a static guard that no check decides
on a REPORTED field without saying why the derived evidence decides too.

Slow tier, two kinds of grading:
* attacks that patch the worker's reply path at import (wrong JSON types, a forged import reply, a
  description that disagrees with its array, an extra array, a forged reply line, absurd reported
  hyperparameters), graded in the session's default batch (tests/conftest.py `graded`, in the
  background) next to its correct submission (`reference`, 100) and a blank template (0): the batch
  finishes, no attack is a grader_error, each loses what it forged;
* the forger (tests/grader_cases/forge.py): the blank template and one-bug variants (packed into one
  submission: they change different parts) graded with every reported field replaced by what a correct
  submission reported for the same request, on the same secret draws; no check may turn from failed
  to passed. A background job (tests/conftest.py): three judges, beside the other tests.
"""
import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, background_result
from grader import protocol as P
from grader.check_plugin import Request, StudentCode, call_failure_text
from grader.rubric import CHECKS
from grader.worker_process import CallFailed, protocol_import
from grader_cases import cases as C
from grader_cases import combine

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Declarations
# ---------------------------------------------------------------------------------------------

def test_every_declared_request_is_a_worker_op_and_back():
    tree = ast.parse((ROOT / "grader" / "worker.py").read_text(encoding="utf-8"))
    ops = {n.name[3:] for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("op_")}
    assert ops == set(P.OPS)


def test_protocol_imports_nothing_of_the_grader():
    """It is copied next to worker.py and loaded there by path: standard library only."""
    tree = ast.parse((ROOT / "grader" / "protocol.py").read_text(encoding="utf-8"))
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= {"math", "re", "typing"}, mods


def test_description_lists_every_op():
    text = P.describe()
    assert all(f"{op}:" in text for op in P.OPS) and "REPORTED" in text and "derived" in text


# ---------------------------------------------------------------------------------------------
# Validation on arrival
# ---------------------------------------------------------------------------------------------

F32 = np.zeros((1, 256, 256), np.float32)
PART = {"type": "torch.Tensor", "dtype": "float32", "shape": [1, 256, 256], "requires_grad": False, "device": "cpu"}
ITEM = {"read": 0, "index": 0, "item": {"type": "builtins.tuple", "len": 2}, "parts": [PART, PART]}
GOOD = {
    "dataset": ({"len_type": "builtins.int", "items": [ITEM]}, {"len": np.array(5), "r0i0p0": F32, "r0i0p1": F32}),
    "losses": ({"returned": {"type": "builtins.tuple", "len": 2}, "gan_type": "BCELoss", "l1_type": "L1Loss",
                "errors": {}}, {"gan": np.zeros(2), "l1": np.zeros(2)}),
    "networks": ({"g": {"type": "torch.Tensor", "dtype": "float32", "shape": [1, 256, 256]}}, {"g": F32}),
}


@pytest.mark.parametrize("op", sorted(GOOD))
def test_a_well_formed_reply_passes(op):
    value, arrays = GOOD[op]
    assert P.validate(op, value, arrays) == (value, arrays)


def _with(op, change=None, arrays=None):
    value = json.loads(json.dumps(GOOD[op][0]))
    if change:
        change(value)
    return op, value, {**GOOD[op][1], **(arrays or {})}


MALFORMED = {
    "wrong JSON type": _with("dataset", lambda v: v.__setitem__("items", "all")),
    "missing field": _with("dataset", lambda v: v.pop("len_type")),
    "unexpected field": _with("losses", lambda v: v.__setitem__("values", {"gan": [0.69, 0.69]})),
    "nested wrong type": _with("dataset", lambda v: v["items"][0].__setitem__("index", "0")),
    "bool as int": _with("dataset", lambda v: v["items"][0].__setitem__("read", True)),
    "unexpected array": _with("losses", arrays={"zzz": np.zeros(1)}),
    "array of the wrong kind": _with("losses", arrays={"gan": np.zeros(2, np.int64)}),
    "array of the wrong shape": _with("losses", arrays={"gan": np.zeros(3)}),
    "JSON shape disagrees with the array": _with("networks", arrays={"g": np.zeros((1, 128, 128), np.float32)}),
    "JSON dtype disagrees with the array": _with("dataset", arrays={"r0i0p1": F32.astype(np.float64)}),
    "array without a description": _with("networks", arrays={"d": F32}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reply_is_refused(case):
    op, value, arrays = MALFORMED[case]
    with pytest.raises(P.Malformed):
        P.validate(op, value, arrays)


def test_a_forged_import_reply_is_refused():
    good = {"seconds": 0.1, "cpu": 0.1, "threads_added": 0, "optimizer_steps": 0, "backward_calls": 0,
            "sandbox": "landlock ABI 6", "names": {"Generator": True}}
    assert protocol_import(dict(good)) == good
    for forged in ({**good, "names": ["Generator"]}, {**good, "sandbox": {"abi": 99}}, [], "ok", None):
        with pytest.raises(CallFailed) as e:
            protocol_import(forged)
        assert e.value.kind == "malformed"


@pytest.mark.parametrize("line", [{"id": [1], "ok": True, "value": {}}, {"id": 1, "ok": "yes", "value": {}},
                                  {"id": 1, "ok": False, "error": "boom"}, {"id": 1, "ok": True}, [1, 2],
                                  {"id": 1, "ok": False, "error": {"type": "E", "message": 5, "traceback": ""}}])
def test_a_forged_reply_line_is_refused(line):
    with pytest.raises(P.Malformed):
        P.check_envelope(line)


def test_honest_reply_lines_pass():
    P.check_envelope({"ready": True, "pid": 5})
    P.check_envelope({"ready": True, "pid": 5, "sandbox": "landlock ABI 7"})  # worker.py's first line, Landlock on
    P.check_envelope({"id": 3, "ok": True, "value": {"x": 1}, "seconds": 0.5})
    P.check_envelope({"id": 3, "ok": False, "error": {"type": "Missing", "message": "Generator", "traceback": ""},
                      "seconds": 0.0})


class OneReply:
    """A worker stand-in answering every request with one fixed reply."""

    def __init__(self, value, arrays=None):
        self.value, self.arrays, self.sent = value, arrays or {}, 0

    def put(self, name, **arrays):
        return f"in/{name}"

    def path(self, name):
        return f"x/{name}"

    def send(self, op, args, timeout, what):
        self.sent += 1
        return self.sent

    def receive(self, rid):
        return self.value

    def get(self, name):
        return self.arrays


def test_a_malformed_reply_is_that_checks_failure_in_both_languages():
    code = StudentCode(OneReply({"returned": "a tuple, trust me"}))
    with pytest.raises(pytest.fail.Exception) as e:
        code.run(Request("losses", "losses", "build_losses()", {}))
    text = str(e.value.msg)
    assert "评分协议" in text and "does not follow the grader's protocol" in text and "build_losses()" in text
    assert "internal grader error" not in text
    assert isinstance(code.cache["losses"], CallFailed) and code.cache["losses"].kind == "malformed"


def test_malformed_text_names_the_cause():
    text = call_failure_text(CallFailed("malformed", "dataset: unexpected array 'zzz'"), "PairedMedicalDataset")
    assert text.count("\n") == 0 and "op_*" in text and "unexpected array 'zzz'" in text


# ---------------------------------------------------------------------------------------------
# Static guard: a check that fails (or passes) on a REPORTED field says why derived evidence decides too
# ---------------------------------------------------------------------------------------------

def _json_keys(t, out):
    if isinstance(t, P.Obj):
        for k, f in t.fields.items():
            out.add(k)
            _json_keys(f.type, out)
    elif isinstance(t, (P.List, P.Opt, P.Map)):
        _json_keys(t.inner, out)
    elif isinstance(t, P.OneOf):
        for o in t.options:
            _json_keys(o, out)
    return out


REPORTED_KEYS = set().union(*(_json_keys(op.value, set()) for op in P.OPS.values()))
FAILERS = {"fail", "_item_error", "_see_first", "_nonfinite", "_not_a_network"}
MARK = "# reported gate:"


def _reads(node):
    """The reported keys an expression reads: x["key"], x.get("key"), "key" in x."""
    for n in ast.walk(node):
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value in REPORTED_KEYS:
            yield n.slice.value
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and n.args
                and isinstance(n.args[0], ast.Constant) and n.args[0].value in REPORTED_KEYS):
            yield n.args[0].value
        if (isinstance(n, ast.Compare) and isinstance(n.left, ast.Constant) and n.left.value in REPORTED_KEYS
                and any(isinstance(o, (ast.In, ast.NotIn)) for o in n.ops)):
            yield n.left.value


def _decides(stmts):
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in FAILERS
               for s in stmts for n in ast.walk(s))


def unmarked_reported_gates(source):
    """(line, keys) of every if/while that tests a reported key and fails the check in a branch, without
    a `# reported gate: <why the arrays decide too>` comment on its line."""
    lines = source.splitlines()
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, (ast.If, ast.While)):
            keys = sorted(set(_reads(n.test)))
            if keys and (_decides(n.body) or _decides(n.orelse)) and MARK not in lines[n.lineno - 1]:
                out.append((n.lineno, keys))
    return out


def test_no_check_decides_on_a_reported_field_unmarked():
    """Cheap and static (the forger below is the real test): a new check that compares, say, the reported
    betas with (0.5, 0.999) is caught here."""
    found = {f.name: unmarked_reported_gates(f.read_text(encoding="utf-8"))
             for f in sorted((ROOT / "grader" / "checks").glob("check_*.py"))}
    assert not any(found.values()), found


def test_the_guard_catches_a_betas_check_written_the_wrong_way():
    wrong = '''
@check("3.6")
def check_betas(student_code, opt_requests):
    value, arrays = student_code.run(opt_requests["default"])
    for info in value["opts"]:
        if info["groups"][0]["betas"] != [0.5, 0.999]:
            fail("betas", "betas")
'''
    assert unmarked_reported_gates(wrong) == [(6, ["betas", "groups"])]


# ---------------------------------------------------------------------------------------------
# Slow: attacks on the reply path, graded in one batch with a correct submission and the blank template
# ---------------------------------------------------------------------------------------------

WORKER = '''

def _tamper():
    import sys
    w = sys.modules.get("__main__")
    ops = getattr(w, "OPS", None)
    if not isinstance(ops, dict):
        return
{body}


_tamper()
'''

ATTACKS = {
    # every op answers with wrong JSON types (a reply shaped by hand from the checks' source)
    "p_wrong_types": (set(CHECKS), '''
    bad = {"dataset": {"len_type": 5, "items": "all"}, "networks": {"g": [4, 1, 256, 256]},
           "grads": {"output": None, "params": "weight", "frozen": []},
           "losses": {"returned": {"type": "builtins.tuple"}, "gan_type": "BCELoss", "l1_type": "L1Loss", "errors": []},
           "optimizers": {"returned": {"type": "builtins.tuple"}, "opts": [{"type": "Adam", "groups": [
               {"params": ["G.weight"], "lr": "2e-4", "betas": [0.5, 0.999], "weight_decay": 0}]}] * 2},
           "train_step": {"returned": [{"type": "builtins.tuple", "len": 2, "parts": "floats"}], "twin": {"ran": "yes"}},
           "visualize": {"returned": {"type": "builtins.str"}, "returned_path": 1, "calls": {}, "n_calls": 1,
                         "training_after": False, "passed_indices": True}}
    for name, v in bad.items():
        ops[name] = (lambda v: lambda a: v)(v)'''),
    # the import reply says whatever the submission likes: refused, so its definitions are graded (5.6 lost)
    "p_forged_import": ({"5.6"}, '''
    send = w._send

    def fake(obj):
        v = obj.get("value") if isinstance(obj, dict) else None
        if isinstance(v, dict) and "names" in v:
            v["names"], v["sandbox"] = ["Generator"], {"landlock": 99}
        send(obj)
    w._send = fake'''),
    # G's output described as 128x128 while the array is 256x256: Step 2's G checks earn nothing
    "p_shape_lie": ({"2.1", "2.2", "2.6"}, '''
    orig = ops["networks"]

    def fake(a):
        r = orig(a)
        if isinstance(r.get("g"), dict):
            r["g"]["shape"] = [4, 1, 128, 128]
        return r
    ops["networks"] = fake'''),
    # one extra array in the main dataset reply: the checks reading it earn nothing
    "p_extra_array": ({"1.2", "1.3", "1.6"}, '''
    np = w.np
    savez = np.savez

    def fake(file, *a, **k):
        if str(file).endswith("ds_main_out.npz"):
            k["zzz"] = np.zeros(1)
        return savez(file, *a, **k)
    np.savez = fake'''),
    # a reply line whose id is a list (unhashable): refused, the worker restarted, only the losses lost
    "p_bad_line": ({"3.1", "3.2"}, '''
    send = w._send

    def fake(obj):
        v = obj.get("value") if isinstance(obj, dict) else None
        if isinstance(v, dict) and "gan_type" in v:
            obj["id"] = [obj["id"]]
        send(obj)
    w._send = fake'''),
    # absurd reported hyperparameters (beta 1.0 divides by zero in a naive recomputation): 3.4/3.5 cannot
    # confirm the steps, 3.3 (judged on the arrays) still passes
    "p_absurd_betas": ({"3.4", "3.5"}, '''
    orig = ops["optimizers"]

    def fake(a):
        r = orig(a)
        for o in r.get("opts", []):
            for g in o["groups"]:
                g["betas"], g["lr"] = [1.0, 1.0], 1e308
        return r
    ops["optimizers"] = fake'''),
}


def write_submissions(folder):
    """The reply-path attacks and a blank template, for the session's default batch (its `reference`
    stands beside them)."""
    # (one comment line more than the shipped template, which is never graded as a submission)
    (folder / "p_blank.py").write_text(C.blank_template(REFERENCE) + "\n# p_blank\n", encoding="utf-8")
    for name, (_, body) in ATTACKS.items():
        (folder / f"{name}.py").write_text(REFERENCE + WORKER.format(body=body), encoding="utf-8")


@pytest.mark.slow
def test_correct_and_blank_next_to_the_attacks(graded):
    assert graded.scores("reference") == {"total": 100, **C.POINTS}, graded.explain("reference")
    assert graded.scores("p_blank")["total"] == 0, graded.explain("p_blank")


@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(ATTACKS))
def test_a_forged_reply_is_that_students_failed_check(graded, student):
    b = graded
    assert b.row(student)["status"] == "ok", b.explain(student)
    assert b.lost(student) == ATTACKS[student][0], b.explain(student)
    said = b.said(student)
    assert "internal grader error" not in said and "grader_error" not in said, said[:3000]
    if student not in ("p_forged_import", "p_absurd_betas"):
        assert "does not follow the grader's protocol" in said and "评分协议" in said, said[:3000]


# ---------------------------------------------------------------------------------------------
# Slow: the forger. No check turns from failed to passed when every reported field is a correct
# submission's (tests/grader_cases/forge.py).
# ---------------------------------------------------------------------------------------------

FORGED = ["s12_len_max", "s3_mse", "s3_opt_G_holds_D", "s4_lambda10", "s5_no_eval"]


def _outcome(name):
    """The exact outcome a variant has when graded honestly (tests/grader_cases/cases.py)."""
    if name in C.VARIANTS:
        return set(C.VARIANTS[name][0])
    return set(C.STEP12_VARIANTS[name][0])


def _source(name):
    if name in C.VARIANTS:
        return C.substitute(REFERENCE, C.VARIANTS[name][1])
    return C.substitute(REFERENCE, C.STEP12_VARIANTS[name][2])


def _judge(mode, record, submission, result):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", PYTHONIOENCODING="utf-8")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "grader_cases" / "forge.py"), mode, str(record),
                        str(submission), str(result)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(Path(result).read_text(encoding="utf-8"))


def forge_all(factory, _param):
    """The forger's judges (a background job, tests/conftest.py)."""
    tmp = factory.mktemp("forge")
    record = tmp / "record.json"
    (tmp / "correct.py").write_text(REFERENCE, encoding="utf-8")
    correct = _judge("record", record, tmp / "correct.py", tmp / "correct.json")
    # The variants change five different parts: packed into one submission (tests/grader_cases/combine.py),
    # each request is the one its variant alone makes, on the same draws, so each is forged as it would be alone.
    files, packed = combine.pack({n: (_outcome(n), _source(n)) for n in FORGED}, REFERENCE)
    sources = {"blank": C.blank_template(REFERENCE), **files}
    for name, src in sources.items():
        (tmp / f"{name}.py").write_text(src, encoding="utf-8")
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(sources, pool.map(lambda n: _judge("forge", record, tmp / f"{n}.py", tmp / f"{n}.json"),
                                             sources)))
    return correct, {"blank": results["blank"], **{n: results[packed[n][0]] for n in FORGED}}


BACKGROUND_JOBS = {"forged": forge_all}


@pytest.fixture(scope="module")
def forged(request):
    return background_result(request)


@pytest.mark.slow
def test_the_recorded_submission_is_correct(forged):
    correct, _ = forged
    assert correct["status"] == "ok" and all(c["passed"] for c in correct["checks"].values()), correct


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blank"] + FORGED)
def test_forged_reported_fields_turn_no_check_from_failed_to_passed(forged, name):
    _, results = forged
    r = results[name]
    honest_lost = set(CHECKS) if name == "blank" else _outcome(name)
    passed = {c for c, v in r["checks"].items() if v["passed"]}
    assert not (honest_lost & passed), (name, sorted(honest_lost & passed), r["checks"])
    assert r["status"] != "grader_error" and not any("internal grader error" in v["message"]
                                                     for v in r["checks"].values()), r


# ---------------------------------------------------------------------------------------------
# Step 3's loss inputs are drawn per run (expected.secret_rng): the verdicts must not depend on the draw
# ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")  # the checks' @check marker
def test_loss_verdicts_do_not_depend_on_the_draw():
    """BCELoss and L1Loss pass and every look-alike the feedback names fails on each of 20 seeded draws
    (300 urandom draws measured the same: 0 verdicts differ)."""
    import torch
    import torch.nn as nn

    from grader import expected as E
    from grader.checks import check_step3 as S3

    wrong = {"gan": [nn.BCEWithLogitsLoss(), nn.MSELoss(), nn.L1Loss(), nn.BCELoss(reduction="sum")],
             "l1": [nn.MSELoss(), nn.L1Loss(reduction="sum"), nn.SmoothL1Loss(), nn.HuberLoss()]}
    right = {"gan": nn.BCELoss(), "l1": nn.L1Loss()}
    pairs = {"gan": (("p", "t"), ("p2", "t2")), "l1": (("u", "v"), ("u2", "v2"))}
    for seed in range(20):
        x = S3.make_loss_inputs(np.random.default_rng(seed))
        for kind in ("gan", "l1"):
            want = S3._expect(kind, x)
            got = lambda c: [float(c(torch.from_numpy(x[a]), torch.from_numpy(x[b]))) for a, b in pairs[kind]]
            assert all(E.close(g, w) for g, w in zip(got(right[kind]), want)), (seed, kind)
            for c in wrong[kind]:
                assert not all(E.close(g, w) for g, w in zip(got(c), want)), (seed, kind, c)
