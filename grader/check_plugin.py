"""The pytest plugin the checks run under (loaded by grader/judge.py only; trusted side).

What a check file (grader/checks/check_step*.py) uses from here:
  @check(id)          the rubric id of a check function (grader/rubric.py holds its points and title;
                      every id must be in the rubric, exactly once: see rubric_problems)
  fail(zh, en)        end a check with a message: a complete sentence in Chinese, then the same in
                      English, each naming where to look; the student sees "zh\nen"
  Request(...)        one request to the worker, defined once and used by name in submit() / run()
  student_code        fixture: the submission, reached only through the worker process
                      (grader/worker_process.py); its answers are cached by request key. run() returns a
                      grader/protocol.Reply, validated against the declared protocol on arrival:
                      `value, arrays = student_code.run(request)` where `value` is REPORTED (the worker's
                      word: messages, hints) and `arrays` DERIVED (as parsed: points come from these)
  note                fixture: add an informational line to the current check's output (shown even
                      on a pass)
The Collector records one outcome per rubric id; the judge turns that into JSON.
"""
from pathlib import Path
from typing import NamedTuple

import pytest

from grader import memlimit, protocol
from grader.rubric import CHECKS
from grader.worker_process import CallFailed

SESSION = {"worker": None}  # set by the judge before pytest.main
GRADER_NETS_PY = Path(__file__).resolve().parent / "nets.py"  # sent as source text, see GRADER_NETS_OPS


def check(check_id):
    return pytest.mark.check(check_id)


def fail(zh, en):
    """End the check: `zh` and `en` are the same message in Chinese and in English (see the module docstring)."""
    pytest.fail(f"{zh}\n{en}", pytrace=False)


def rubric_problems(check_ids):
    """What is wrong between the checks collected (their @check ids, in order; None for a check function
    without one) and the rubric: ids not in it, ids used twice, rubric ids without a check. Empty when
    they agree. The judge refuses to grade otherwise (a check missing from the rubric would score
    nothing, silently)."""
    out = []
    seen = set()
    for cid in check_ids:
        if cid is None:
            out.append("a check function without @check(id)")
        elif cid not in CHECKS:
            out.append(f"check id {cid!r} is not in grader/rubric.py")
        elif cid in seen:
            out.append(f"check id {cid!r} is used by more than one check")
        seen.add(cid)
    out += [f"rubric id {cid!r} has no check" for cid in CHECKS if cid not in seen]
    return out


def call_failure_text(e, what):
    """Bilingual text for a failed worker call (student exception, crash, timeout, missing name)."""
    detail = f"\n{e.detail.rstrip()}" if e.detail else ""
    if getattr(e, "at_import", False):
        what = "import"  # the same words for every check, and in the status message
    if e.kind == "missing":
        return (f"提交中没有 {e.message}：名称是接口的一部分，请检查拼写 / "
                f"the submission has no {e.message}: the name is part of the contract, check its spelling")
    if e.kind == "import_error":
        return (f"导入提交文件时出错（此项依赖导入）/ importing the submission failed (this check needs it):\n"
                f"{e.message}{detail}")
    if e.kind == "crashed":
        # SIGKILL is what the kernel's OOM killer sends: the limit may be the grading machine's, not the code's
        oom = f"\n{memlimit.oom_note()}" if "exit code -9)" in e.message else ""
        return (f"运行 {what} 时进程退出（sys.exit / os._exit / 崩溃 / 内存不足？）/ the process exited while "
                f"running {what} (sys.exit, os._exit, a crash or out of memory): {e.message}{oom}{detail}")
    if e.kind == "timeout":
        return (f"{what} 超时：是否有死循环，或在导入时就开始训练（应放在 if __name__ == \"__main__\": 之下）？/ "
                f"{what} timed out: an endless loop, or training at import time (put it under "
                f"if __name__ == \"__main__\":)? ({e.message})")
    if e.kind == "error" and e.message.startswith("NotImplementedError"):
        return f"尚未完成 / not implemented yet: {e.message.split(':', 1)[-1].strip()}"
    if e.kind == "error":
        return f"运行 {what} 时抛出异常 / {what} raised an exception:\n{e.message}{detail}"
    if e.kind == "malformed":
        return (f"评分进程对 {what} 的回复不符合评分协议，此项不得分：提交的代码是否修改或替换了评分程序的函数"
                f"（如 worker 的 _send、op_*）？不要改动评分程序 / the reply to {what} does not follow the grader's "
                f"protocol, so this check earns nothing: did the submission change or replace the grader's own "
                f"functions (the worker's _send, op_*)? Leave the grader alone ({e.message})")
    return f"评分通信错误 / grader protocol error in {what}: {e.message}"


class Request(NamedTuple):
    """One request to the worker: `op` (a function op_<op> of grader/worker.py) with JSON `args` and
    arrays `inputs` (written as an .npz into in/); `what` names the student function in messages. The
    answer is cached under `key`: define each request once (a module-level fixture) and pass the same
    object wherever it is needed; StudentCode refuses a key reused for another request."""
    key: str
    op: str
    what: str
    args: dict = None
    inputs: dict = None
    timeout: float = None


# Ops that run the grader's networks (grader/nets.py) in the worker, and ops that grade the
# submission's own networks. The grader's networks travel (as source) only with the first kind, and
# only once every request of the second kind has been answered: until then they do not exist in the
# student's process, so a submission cannot hand them in as its own Generator/Discriminator (a worker
# restarted later never re-runs Step 2: its answers are cached here).
GRADER_NETS_OPS = ("train_step", "visualize")
OWN_NETS_OPS = ("networks", "grads")


class StudentCode:
    """The submission as the checks see it: requests to the worker process, answers (and failures)
    cached by request key, so checks that share one expensive run (Step 4) do not repeat it, and a
    timeout is paid once."""

    def __init__(self, worker):
        self.worker = worker
        self.cache, self.sent, self.ops = {}, {}, {}
        self.requests = {}  # key -> the Request first seen under it
        self.nets_released = False

    def _same(self, request):
        first = self.requests.setdefault(request.key, request)
        if first is not request and (first.op, first.what, first.args) != (request.op, request.what, request.args):
            raise RuntimeError(f"request key {request.key!r} used for two different requests")

    def submit(self, request):
        """Start a request now; run() with the same request collects it later."""
        self._same(request)
        key, op = request.key, request.op
        if key in self.cache or key in self.sent:
            return
        args = dict(request.args or {})
        if op in OWN_NETS_OPS and self.nets_released:
            raise RuntimeError(f"{op} requested after the grader's networks reached the worker")
        if op in GRADER_NETS_OPS:
            if any(self.ops.get(k) in OWN_NETS_OPS for k in self.sent):
                raise RuntimeError("the grader's networks requested while a Step 2 answer is pending")
            args["nets_source"] = GRADER_NETS_PY.read_text(encoding="utf-8")
            self.nets_released = True
        if request.inputs is not None:
            args["inp"] = self.worker.put(f"{key}_in.npz", **request.inputs)
        args["out"] = self.worker.path(f"{key}_out.npz")
        try:
            self.sent[key] = self.worker.send(op, args, request.timeout, request.what)
            self.ops[key] = op
        except CallFailed as e:
            self.cache[key] = e

    def run(self, request, after=()):
        """(value, arrays) of a request, or the check fails with a bilingual message. `after`: keys of
        earlier requests running the same student code; if one of them hung or crashed, do not pay for
        it again."""
        self._same(request)
        key = request.key
        for k in after:
            prev = self.cache.get(k)
            if isinstance(prev, CallFailed) and prev.kind in ("timeout", "crashed"):
                self.cache[key] = prev
        if key not in self.cache:
            self.submit(request)
        if key not in self.cache:
            try:
                value = self.worker.receive(self.sent.pop(key))
                self.cache[key] = self.reply(request, value, self.worker.get(f"{key}_out.npz"))
            except CallFailed as e:
                self.cache[key] = e
        r = self.cache[key]
        if isinstance(r, CallFailed):
            pytest.fail(call_failure_text(r, request.what), pytrace=False)
        return r

    @staticmethod
    def reply(request, value, arrays):
        """The reply checked against grader/protocol.py: a protocol.Reply, or CallFailed("malformed")."""
        try:
            return protocol.validate(request.op, value, arrays, request.inputs)
        except protocol.Malformed as e:
            raise CallFailed("malformed", f"{request.what}: {e}") from None

    def import_info(self):
        try:
            return self.worker.ensure_imported()
        except CallFailed as e:
            pytest.fail(call_failure_text(e, "import"), pytrace=False)


@pytest.fixture(scope="session")
def student_code():
    return StudentCode(SESSION["worker"])


@pytest.fixture
def note(request):
    cid = request.node.get_closest_marker("check").args[0]

    def add(text):
        Collector.instance.notes.setdefault(cid, []).append(text)

    return add


class Collector:
    instance = None

    def __init__(self):
        Collector.instance = self
        self.results, self.notes, self.ids = {}, {}, {}
        self.problems = []  # rubric_problems of the collected checks: the judge then grades nothing

    def pytest_collection_modifyitems(self, session, config, items):
        ids = []
        for item in items:
            m = item.get_closest_marker("check")
            ids.append(m.args[0] if m and m.args else None)
            if ids[-1] is not None:
                self.ids[item.nodeid] = ids[-1]
        self.problems = rubric_problems(ids)
        if self.problems:
            items.clear()  # run none: the judge reports a grader error (grader/judge.py)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        cid = self.ids.get(item.nodeid)
        if cid is None or rep.when not in ("setup", "call"):
            return
        if rep.when == "setup" and rep.passed:
            return
        if rep.passed:
            self.results[cid] = {"passed": True, "message": "", "seconds": round(call.duration, 3)}
            return
        exc = call.excinfo.value if call.excinfo else None
        if isinstance(exc, pytest.fail.Exception):
            msg = str(exc.msg)
        elif isinstance(exc, pytest.skip.Exception):
            msg = str(exc.msg)
        else:  # a bug in the check itself: never blame the student silently
            msg = (f"评分程序内部错误，请联系助教 / internal grader error, please tell your TA: "
                   f"{type(exc).__name__}: {exc}")
        self.results[cid] = {"passed": False, "message": msg, "seconds": round(call.duration, 3)}
