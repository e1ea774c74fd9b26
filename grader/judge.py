"""Trusted per-submission process: runs the checks (pytest) against one submission, writes JSON.

    python -m grader.judge SUBMISSION.py RESULT.json [--settings JSON]

SUBMISSION.py is the cleaned UTF-8 copy made by grader/sources.py. This process never imports it:
the checks reach it only through grader/worker_process.WorkerProcess. RESULT.json is read back by grader/cli.py.
JSON is the batch's grader/settings.Settings as the CLI built it (defaults when run by hand without it).
"""
import argparse
import json
import sys
import time
from pathlib import Path

from grader.settings import Settings

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
FORKED = False  # True in a judge forked by the batch's warm server (grader/judge_server.py)


def parse_args(argv=None):
    """(arguments, the batch's Settings with jobs and budget computed)."""
    p = argparse.ArgumentParser()
    p.add_argument("submission")
    p.add_argument("result")
    p.add_argument("--settings", default="{}", help="the batch's Settings as JSON (grader/settings.py)")
    a = p.parse_args(argv)
    return a, Settings.from_json(a.settings).resolved()


def time_limits(config):
    """(the judge's own limit, the CLI's backstop), in seconds from the judge's start. The submission
    gets its budget (and at most one more call); the judge's own work on its replies gets 60 s more;
    the backstop (cli.py) kills only a judge that is stuck beyond that, and then reclaims its sandbox."""
    own = config.budget + config.timeout + 60
    return own, own + 60


class OwnLimit:
    """The bound on the judge's own work: past `seconds`, the main thread gets a KeyboardInterrupt at
    its next bytecode (also inside pytest), the checks not yet run score 0, and the judge still
    cleans up and writes its result, well before the CLI's backstop."""

    def __init__(self, seconds):
        import threading

        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self):
        import _thread

        self.fired = True
        _thread.interrupt_main()

    def cancel(self):
        self.timer.cancel()


def main(argv=None):
    a, config = parse_args(argv)
    # Backstop on the judge's own memory: every reply is size-checked before it is parsed (worker_process.py),
    # this catches whatever a check might still allocate on the submission's behalf.
    from grader import hygiene, memlimit, osfeatures

    if config.judge_memory_mb > 0:  # POSIX only (osfeatures.RESOURCE)
        osfeatures.set_rlimit("RLIMIT_DATA", config.judge_memory_mb * 2 ** 20)

    from grader.worker_process import WorkerProcess

    t0 = time.perf_counter()
    own_limit = time_limits(config)[0]
    limit = OwnLimit(own_limit)
    oom_before = memlimit.oom_kills()
    # sandbox.json: what the CLI removes if this judge is killed before worker.close() (cli.reclaim_sandbox)
    worker = WorkerProcess(a.submission, config, record=Path(a.result).with_name("sandbox.json"))
    worker.start()  # torch import in the worker overlaps with ours

    import pytest
    import torch

    torch.set_num_threads(1)
    from grader import check_plugin

    check_plugin.SESSION["worker"] = worker
    collector = check_plugin.Collector()
    args = [str(CHECKS_DIR), "-c", str(CHECKS_DIR / "checks.ini"), "--rootdir", str(CHECKS_DIR),
            "-p", "no:cacheprovider", "-q", "-p", "no:randomly", "--tb=no", "-o", "console_output_style=classic"]
    if config.pytest_verbose:
        args.remove("-q")
    late_files, rc = [], 1
    try:
        try:
            try:
                worker.ensure_imported()
            except Exception:  # noqa: BLE001 - recorded in worker.import_failure; nothing to check then
                pass
            rc = 0 if worker.import_failure is not None else pytest.main(args, plugins=[check_plugin, collector])
            late_files = worker.cwd_files()  # delayed writes (a thread, a child) show up by now
        except KeyboardInterrupt:
            if not limit.fired:
                raise
    finally:
        limit.cancel()
        worker.close()
    if limit.fired:  # pytest itself ends with "interrupted" (rc 2): the bound, not a grader error
        rc = 1

    protection = worker.protection
    status, status_message = "ok", ""
    r56 = collector.results.get("5.6")
    if r56 and r56.get("passed") and late_files:  # 5.6 ran before these appeared
        r56.update(passed=False, message=hygiene.files_message(late_files))
    if worker.import_failure is not None:
        status = worker.import_failure.kind
        status_message = check_plugin.call_failure_text(worker.import_failure, "import")
        if status == "grader_error":  # the sandbox promised could not be applied: never the student's fault
            status_message = f"评分程序出错，请联系助教 / the grader failed, tell your TA: {worker.import_failure.message}"
    elif worker.incidents:  # a check crashed or hung the worker: graded, but say so
        status = "crashed" if "crashed" in worker.incidents else "timeout"
        status_message = ""
    if worker.import_failure is None and (worker.module_code or {}).get("graded"):
        status_message = ("导入整个文件失败、超时或在训练：只评分了其中的定义，见检查 5.6 / importing the whole file "
                          "failed, hung or trained: only its definitions were graded, see check 5.6")
    oom_after = memlimit.oom_kills()
    if oom_before is not None and oom_after is not None and oom_after > oom_before and status != "ok":
        # The machine's memory limit killed a process during this grading: never the student's fault alone.
        status_message = ((status_message + "\n") if status_message else "") + memlimit.oom_counted_note()
    if limit.fired:
        status = "timeout"
        status_message = (f"评分超时：核对本提交的答案用时超过 {own_limit:.0f} 秒，其余检查记 0 分 / grading timed out: "
                          f"checking this submission's answers took the grader over {own_limit:.0f} s; the checks "
                          f"not yet run score 0")
    if collector.problems or rc not in (0, 1):  # the checks themselves are broken: never a silent score
        status = "grader_error"
        status_message = ("评分程序出错，请联系助教 / the grader failed, tell your TA: "
                          + ("; ".join(collector.problems) or f"pytest exit code {int(rc)}"))
    elif worker.import_failure is None and worker.import_info is not None:
        missing = [n for n, ok in worker.import_info["names"].items() if not ok]
        if missing:
            status_message = (status_message + "\n" if status_message else "") + f"缺少 / missing: {', '.join(missing)}"
    result = {"status": status, "status_message": status_message, "pytest_exit": int(rc),
              "checks": collector.results, "notes": collector.notes,
              "restarts": worker.restarts, "incidents": worker.incidents,
              "sandbox": protection[0] if protection[:1] and protection[0].startswith("landlock") else "off",
              "protection": protection,
              "quota": worker.quota, "log": worker.log.text(3000), "seconds": time.perf_counter() - t0,
              "judge": "forked" if FORKED else "fresh"}
    Path(a.result).write_text(json.dumps(result), encoding="utf-8")  # ASCII: lone surrogates stay escaped
    return 0


if __name__ == "__main__":
    sys.exit(main())
