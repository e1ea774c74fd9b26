"""Pytest plugin for the checks (loaded by grader/judge.py only; trusted side).

Fixtures:  sub  - the submission, reached only through the worker process (grader/client.py)
           note - attach an informational line to the current check's output (shown even on a pass)
Helpers:   check(id) marks a test with its rubric id; fail(zh, en) ends a check with a bilingual message.
The collector records one outcome per rubric id; the judge turns that into JSON.
"""
import time

import pytest

from grader.client import CallFailed

SESSION = {"worker": None}  # set by the judge before pytest.main


def check(check_id):
    return pytest.mark.check(check_id)


def fail(zh, en):
    pytest.fail(f"{zh}\n{en}", pytrace=False)


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
        return (f"运行 {what} 时进程退出（sys.exit / os._exit / 崩溃 / 内存不足？）/ the process exited while "
                f"running {what} (sys.exit, os._exit, a crash or out of memory): {e.message}{detail}")
    if e.kind == "timeout":
        return (f"{what} 超时：是否有死循环，或在导入时就开始训练（应放在 if __name__ == \"__main__\": 之下）？/ "
                f"{what} timed out: an endless loop, or training at import time (put it under "
                f"if __name__ == \"__main__\":)? ({e.message})")
    if e.kind == "error" and e.message.startswith("NotImplementedError"):
        return f"尚未完成 / not implemented yet: {e.message.split(':', 1)[-1].strip()}"
    if e.kind == "error":
        return f"运行 {what} 时抛出异常 / {what} raised an exception:\n{e.message}{detail}"
    return f"评分通信错误 / grader protocol error in {what}: {e.message}"


# Ops that run the grader's own networks in the worker, and ops that grade the submission's networks.
# The trusted networks travel (as source) only with the first kind, and only once every request of the
# second kind has been answered: until then they do not exist in the student's process, so a submission
# cannot hand them in as its own Generator/Discriminator (a worker restarted later never re-runs Step 2:
# its answers are cached here).
TRUSTED_NETS_OPS = ("train_step", "visualize")
OWN_NETS_OPS = ("networks", "grads")


class Sub:
    """The submission as the checks see it. Results (and failures) are cached by key, so checks that
    share one expensive run (Step 4) do not repeat it, and a timeout is paid once."""

    def __init__(self, worker):
        self.w = worker
        self.cache, self.sent, self.ops = {}, {}, {}
        self.nets_released = False

    def submit(self, key, op, what, args=None, inputs=None, timeout=None):
        """Start a request now; run() with the same key collects it later."""
        if key in self.cache or key in self.sent:
            return
        args = dict(args or {})
        if op in OWN_NETS_OPS and self.nets_released:
            raise RuntimeError(f"{op} requested after the trusted networks reached the worker")
        if op in TRUSTED_NETS_OPS:
            if any(self.w_op(k) in OWN_NETS_OPS for k in self.sent):
                raise RuntimeError("trusted networks requested while a Step 2 answer is pending")
            from grader.reference import NETS

            args["nets_source"] = NETS.read_text(encoding="utf-8")
            self.nets_released = True
        if inputs is not None:
            args["inp"] = self.w.put(f"{key}_in.npz", **inputs)
        args["out"] = self.w.path(f"{key}_out.npz")
        try:
            self.sent[key] = self.w.send(op, args, timeout, what)
            self.ops[key] = op
        except CallFailed as e:
            self.cache[key] = e

    def w_op(self, key):
        return self.ops.get(key)

    def run(self, key, op, what, args=None, inputs=None, timeout=None, after=()):
        """Result of a request, or the check fails with a bilingual message. `after`: keys of earlier
        runs of the same student code; if one of them hung or crashed, do not pay for it again."""
        for k in after:
            prev = self.cache.get(k)
            if isinstance(prev, CallFailed) and prev.kind in ("timeout", "crashed"):
                self.cache[key] = prev
        if key not in self.cache:
            self.submit(key, op, what, args, inputs, timeout)
        if key not in self.cache:
            try:
                value = self.w.receive(self.sent.pop(key))
                self.cache[key] = (value, self.w.get(f"{key}_out.npz"))
            except CallFailed as e:
                self.cache[key] = e
        r = self.cache[key]
        if isinstance(r, CallFailed):
            pytest.fail(call_failure_text(r, what), pytrace=False)
        return r

    def import_info(self):
        try:
            return self.w.ensure_imported()
        except CallFailed as e:
            pytest.fail(call_failure_text(e, "import"), pytrace=False)

    @property
    def worker(self):
        return self.w


@pytest.fixture(scope="session")
def sub():
    return Sub(SESSION["worker"])


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

    def pytest_configure(self, config):
        config.addinivalue_line("markers", "check(id): rubric id of a grader check")

    def pytest_collection_modifyitems(self, items):
        for item in items:
            m = item.get_closest_marker("check")
            if m:
                self.ids[item.nodeid] = m.args[0]

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
