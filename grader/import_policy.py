"""How the judge imports a submission the first time (trusted side): first_import(worker).

The whole file is imported once, measured by the judge (grader/hygiene.py: CPU time, threads,
processes, files, from /proc where it exists). If that import fails, hangs, exits or trains, the
judge grades a definitions-only copy of the file instead (made by grader/sources.py from the syntax
tree, nothing executed), in a fresh worker, and keeps what happened for check 5.6. Only when the
definitions alone do not import either is the submission an import failure, and every check scores 0.
"""
import time

from grader import hygiene
from grader.safefiles import CallFailed


def first_import(worker):
    """Import worker.submission in `worker` (a grader.worker_process.WorkerProcess) and return the
    import reply. Sets worker.import_facts, worker.import_info, worker.module_code (None, or what the
    module-level code did: {"failure", "reasons", "graded", "original"}) and, when graded instead,
    worker.submission to the definitions-only copy. Raises worker.import_failure when nothing imports."""
    original, failure, r, warm = worker.submission, None, None, False
    incidents = len(worker.incidents)  # a hang or crash of this import is not a check's incident
    try:
        worker.start_ready()
        if worker.sandbox.warmup.is_file():
            try:  # the libraries get imported here, so the measured import below is the file's own code
                worker.request("preload", {"submission": str(worker.sandbox.warmup)}, "import")
                warm = True
            except CallFailed:
                if worker.proc is None:  # the warm-up hung or crashed: a fresh worker, without it
                    worker.start_ready()
        pid = worker.fence.measured_pid(worker.proc.pid)  # PID 1 of its namespace, where there is one
        before, t0 = hygiene.snapshot(pid), time.perf_counter()
        try:
            r = worker.request("import", {"submission": original}, "import")
        finally:
            wall = time.perf_counter() - t0
            after = hygiene.snapshot(pid)
            worker.import_facts = hygiene.facts(before, after, r, wall, warm, files=worker.cwd_files())
    except CallFailed as e:
        failure = e
    if failure is not None and failure.kind == "sandbox":  # not the file's doing: no fallback either
        return _give_up(worker, failure)
    reasons = hygiene.problems(worker.import_facts) if failure is None else []
    if failure is None and not reasons:
        worker.import_info = r
        return r
    worker.module_code = {"failure": failure, "reasons": reasons, "graded": None, "original": original}
    for defs in worker.sandbox.definitions:
        worker.kill()
        try:
            worker.start_ready()
            r2 = worker.request("import", {"submission": defs}, "import")
        except CallFailed:
            continue
        worker.submission, worker.import_info = defs, r2
        worker.module_code["graded"] = defs
        del worker.incidents[incidents:]
        return r2
    if failure is None:  # it imported (doing what it should not), its definitions alone do not: grade it as is
        worker.kill()
        try:
            worker.start_ready()
            worker.import_info = worker.request("import", {"submission": original}, "import")
            del worker.incidents[incidents:]
            return worker.import_info
        except CallFailed as e:
            failure = e
    worker.module_code = None
    return _give_up(worker, failure)


def _give_up(worker, failure):
    kind = {"error": "import_error", "missing": "import_error", "malformed": "import_error",
            "sandbox": "grader_error"}.get(failure.kind, failure.kind)
    worker.import_failure = CallFailed(kind, failure.message, failure.detail)
    worker.import_failure.at_import = True
    raise worker.import_failure from None
