"""python -m grader PATH... [--out DIR] [--jobs N] [--timeout S]   |   python -m grader --rubric

Each submission is prepared here (decoded, converted, syntax-checked: nothing executed), then judged
by its own trusted `python -m grader.judge` process, which drives an untrusted worker. This process
only reads the judge's JSON and writes the outputs once every child has exited.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from grader import fence, judge_server, osfeatures, report, settings, similarity, summary
from grader.rubric import rubric_text
from grader.sources import UserError, discover, prepare
from grader.textsafe import visible

PACKAGE_PARENT = Path(__file__).resolve().parents[1]
# glibc malloc for the judge and (inherited) the worker: a fixed mmap threshold hands every freed block
# over 64 KB back to the system (by default the threshold grows to 32 MB and torch's freed conv buffers
# stay in the heap: 75 MB per process), and two arenas instead of 8 per core. One grading went from
# 718 to 623 MB summed PSS (grader/README.md, "Memory"). Other C libraries ignore these. It costs CPU
# (every large buffer is mapped and zeroed afresh: a self-check took 22 s wall instead of 15), so it is
# used only inside a container whose memory limit is small (Gradescope's default is 768 MB).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
LOW_MEMORY_MB = 2048


def malloc_env():
    """MALLOC_ENV inside a container limited below LOW_MEMORY_MB, else nothing."""
    from grader import memlimit

    limit = memlimit.container_limit()
    return dict(MALLOC_ENV) if limit is not None and limit < LOW_MEMORY_MB * 2 ** 20 else {}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m grader",
        description="实验六自动评分 / Experiment 6 autograder. PATH: .py, .ipynb, a student folder, a folder "
                    "of submissions, or a .zip of them. Every option's default is declared in grader/settings.py; "
                    "environment variables there too (grader/README.md lists them).")
    p.add_argument("paths", nargs="*", metavar="PATH")
    settings.add_options(p)  # --out, --jobs, --timeout, --budget, --memory-mb, --similarity-threshold
    p.add_argument("--rubric", action="store_true", help="print every check and its points, then exit")
    p.add_argument("--similarity", action="store_true",
                   help="compare every pair of submissions for copying (writes similarity.html/.csv into --out); "
                        "grades nothing, so it can run on an already graded folder")
    p.add_argument("--single", action="store_true",
                   help="treat each PATH as ONE student's submission (used by the Gradescope script)")
    return p.parse_args(argv)


def judge_arguments(submission, config, result_path):
    """What a judge is given (grader/judge.py): the submission, where to write its JSON, and the batch's
    Settings. The same for a judge started afresh and one forked by the warm server."""
    return [str(submission.clean), str(result_path), "--settings", config.to_json()]


def judge_command(submission, config, result_path):
    """The command line of a judge started afresh."""
    return [sys.executable, "-m", "grader.judge", *judge_arguments(submission, config, result_path)]


def backstop_seconds(config):
    from grader.judge import time_limits

    return time_limits(config)[1]


def reclaim_sandbox(result_path, config):
    """After the backstop killed a judge before its own clean-up: what its sandbox left (every process
    of its uid, its scratch tmpfs, its folders), from the record the judge wrote (grader/sandbox.py)."""
    from grader import sandbox

    sandbox.reclaim(sandbox_record(result_path), config.worker_uid_base)


def sandbox_record(result_path):
    """Where the judge writing result_path records its sandbox (judge.py)."""
    return Path(result_path).with_name("sandbox.json")


def judge_env():
    """The environment of every judge (and of the warm server that forks them, grader/judge_server.py)."""
    return dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8",
                **malloc_env())


def run_judge(submission, config, workdir, server=None):
    """Run the trusted judge for one prepared submission (forked by the batch's warm server if there is
    one, else started afresh); return its parsed JSON or None."""
    result_path = Path(tempfile.mkdtemp(prefix="e6j-", dir=workdir)) / "result.json"
    # The judge itself stops the submission at its budget and its own work soon after (judge.time_limits);
    # this backstop only covers a judge that hangs.
    budget = backstop_seconds(config)
    log = result_path.parent / "judge.log"
    proc = None
    if server is not None:
        try:
            proc = server.start(judge_arguments(submission, config, result_path), result_path.parent, log)
        except OSError:  # the server could not fork it, or has ended: this judge starts afresh
            proc = None
    try:
        if proc is None:
            with open(log, "wb") as lf:
                proc = subprocess.Popen(judge_command(submission, config, result_path), cwd=result_path.parent,
                                        env=judge_env(), stdout=lf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, **osfeatures.new_group_kwargs())
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            osfeatures.kill_tree(proc)
            proc.wait()
            return {"status": "timeout", "status_message": f"评分超过 {budget:.0f} 秒 / grading exceeded {budget:.0f} s",
                    "checks": {}}
        lost = getattr(proc, "lost", False)  # the warm server died: how its judge ended is unknown
        if lost:
            osfeatures.kill_tree(proc)
    finally:  # a judge killed (here, or by the OOM killer) before its own clean-up leaves its sandbox
        reclaim_sandbox(result_path, config)
    if lost:  # judged again, afresh
        return run_judge(submission, config, workdir)
    try:
        data = json.loads(result_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except (OSError, ValueError):
        tail = log.read_bytes()[-1500:].decode("utf-8", "replace") if log.exists() else ""
        if proc.returncode == -9:  # SIGKILL: the kernel's OOM killer, most often
            from grader import memlimit

            tail = memlimit.oom_note() + "\n" + tail
        return {"status": "grader_error", "checks": {},
                "status_message": f"评分程序出错，请联系助教 / the grader failed, tell your TA (exit {proc.returncode}):\n{tail}"}


def grade_one(submission, config, workdir, server=None):
    """One submission, whatever it holds: any exception here (a 200,000-term expression that makes
    the parser recurse too deep, a broken file, a bug of ours) becomes this student's grader_error
    row, and the batch goes on."""
    start = time.perf_counter()
    judged = None
    try:
        if submission.status == "ok":
            prepare(submission, workdir)
        judged = run_judge(submission, config, workdir, server) if submission.status == "ok" else None
        return report.score(submission, judged, time.perf_counter() - start)
    except BaseException as e:  # noqa: BLE001 - RecursionError, MemoryError, OSError, ...
        if isinstance(e, KeyboardInterrupt):
            raise
        return report.grader_error(submission, e, time.perf_counter() - start)


def main(argv=None):
    osfeatures.console_safe()  # a GBK or cp1252 console cannot show every character
    fence.shield_self()  # fence hook: no same-uid process may ptrace or read this one's memory (grader/fence.py)
    args = parse_args(argv)
    try:
        config = settings.from_args(args)  # the batch's one Settings: options, then environment, then defaults
    except ValueError as e:
        print(f"错误 / Error: {e}", file=sys.stderr)
        return 2
    if args.rubric:
        try:
            print(rubric_text())
        except BrokenPipeError:  # `python -m grader --rubric | head`
            pass
        return 0
    if not args.paths:
        print("错误 / Error: 请给出要评分的文件或文件夹 / give a file or folder to grade\n"
              "  python -m grader student_template.py   |   python -m grader submissions/ --out grading",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="e6grade-"))
    try:
        try:
            submissions = discover(args.paths, workdir, single_student=args.single)
        except UserError as e:
            print(f"错误 / Error: {visible(e)}", file=sys.stderr)  # may name a student's file
            return 2
        if args.similarity:
            return similarity.run_cli(submissions, config.out, config.similarity_threshold, workdir)
        return run(submissions, config, workdir, single_flag=args.single)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def containment(config):
    """Decide once per batch whether workers run as their own unprivileged uid (grader/sandbox.py),
    and say what protects the batch. Returns (Settings with `contain` decided, layer, why): layer
    "user"; "fallback" (root, but that uid cannot run this Python: never silent, see run()); or
    "none", with the reason the layer does not exist here."""
    from grader import sandbox

    if sandbox.user_layer_wanted(config.no_user):
        ok, why = sandbox.probe_user(sys.executable, config.worker_uid_base)
        if ok:
            return replace(config, contain="user"), "user", ""
        return replace(config, contain="none"), "fallback", why
    config = replace(config, contain="none")
    if osfeatures.is_root() and config.no_user:
        return config, "none", "GRADER_NO_USER=1"
    if not osfeatures.LINUX:
        return config, "none", f"{osfeatures.where()}: no Landlock, no separate user"
    if not osfeatures.is_root():
        return config, "none", "not running as root"
    return config, "none", "no /proc or fcntl"


def run(submissions, config, workdir, single_flag=False):
    config = config.resolved()  # jobs and budget computed: what every judge gets
    out_dir = Path(config.out)
    start = time.perf_counter()
    try:  # before hours of grading, not after
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(f"not writable: {out_dir}")
    except OSError as e:
        print(f"错误 / Error: 无法写入输出文件夹 / cannot write the output folder --out {out_dir}: {e}", file=sys.stderr)
        return 2
    config, layer, why = containment(config)
    single = len(submissions) == 1
    self_check = single and not single_flag  # a student's own file on their own computer (not --single)
    results = [None] * len(submissions)
    if single:
        print(f"评分中 / grading {visible(submissions[0].origin, one_line=True)} ...", flush=True)
        results[0] = grade_one(submissions[0], config, workdir)
    else:
        from tqdm import tqdm

        print(report.CONSOLE_HEADER)
        # A bar only on a terminal: in a log file its carriage-return frames are clutter.
        bar = tqdm(total=len(submissions), unit="sub", dynamic_ncols=True, leave=False, disable=not sys.stderr.isatty())
        # Judges forked from one warm server that imported torch once (Linux), else each started afresh.
        server = judge_server.start_for_batch(judge_env(), workdir, sum(s.status == "ok" for s in submissions),
                                              config, bool(malloc_env()))
        try:
            with ThreadPoolExecutor(max_workers=config.jobs) as pool:
                futures = {pool.submit(grade_one, s, config, workdir, server): i for i, s in enumerate(submissions)}
                from concurrent.futures import as_completed

                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.write(report.console_line(results[i]))
                    bar.update(1)
        finally:
            if server is not None:
                server.close()
        bar.close()
    if self_check:
        results[0]["self_check"] = True  # no warning in its feedback (report.unprotected)
    if layer == "fallback":  # every results.json / feedback.md of the batch says so too (report.protection_text)
        for r in results:
            r["layer_off"] = why
    # Every judge (and so every worker, and with layer 2 every process of its uid) has exited:
    # only now are results written.
    report.write_outputs(out_dir, results)
    wall = time.perf_counter() - start
    # What contained the student code, said once: calmly on a self-check, plainly for a TA batch.
    if layer == "fallback":  # root, but the separate-user layer could not run: never silent, one file or many
        print("\n" + report.LAYER2_FALLBACK.format(why=why, layers=report.batch_protection(results)),
              file=sys.stderr)
    if self_check:
        if report.unprotected(dict(results[0], self_check=False)):
            print("\n" + report.SELF_CHECK_NOTE, file=sys.stderr)
    else:
        warning = report.protection_warning(results, why)
        if warning:
            print("\n" + warning, file=sys.stderr)
        elif layer != "fallback" and any(r.get("protection") is not None for r in results):
            print(f"\n保护 / protection: {report.batch_protection(results)}", file=sys.stderr)
    if single:
        r = results[0]
        print()
        print(report.step_table(r))
        failed = report.failed_checks_text(r)
        if failed:
            print("\n未通过的检查 / failed checks:\n" + failed)
        else:
            print("\n全部检查通过 / every check passed.")
        print(f"\n用时 / time: {r['seconds']:.1f} s    反馈 / feedback: {out_dir / r['student'] / 'feedback.md'}")
    else:
        print()
        print(report.summary(results, wall))
        print(summary.write_class_summary(out_dir, results))
        print(f"结果 / results: {out_dir / 'grades.csv'}")
    return 0
