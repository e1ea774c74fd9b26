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
from pathlib import Path

from grader import osfeatures, report, similarity, summary
from grader.rubric import rubric_text
from grader.sources import UserError, discover, prepare

PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m grader",
        description="实验六自动评分 / Experiment 6 autograder. PATH: .py, .ipynb, a student folder, a folder "
                    "of submissions, or a .zip of them.")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--out", default="grading", help="output folder (default: grading/)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="submissions graded in parallel (default: half the CPU cores)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per check (default: 60)")
    p.add_argument("--memory-mb", type=int, default=3072, help="memory limit of the student process (POSIX)")
    p.add_argument("--budget", type=float, default=None,
                   help="total seconds for all checks of one submission (default: max(4 x --timeout, 180))")
    p.add_argument("--rubric", action="store_true", help="print every check and its points, then exit")
    p.add_argument("--similarity", action="store_true",
                   help="compare every pair of submissions for copying (writes similarity.html/.csv into --out); "
                        "grades nothing, so it can run on an already graded folder")
    p.add_argument("--similarity-threshold", type=float, default=similarity.THRESHOLD,
                   help=f"pairs above this score go into similarity.csv (default: {similarity.THRESHOLD})")
    p.add_argument("--single", action="store_true",
                   help="treat each PATH as ONE student's submission (used by the Gradescope script)")
    return p.parse_args(argv)


def run_judge(submission, args, workdir):
    """Run the trusted judge for one prepared submission; return its parsed JSON or None."""
    result_path = Path(tempfile.mkdtemp(prefix="e6j-", dir=workdir)) / "result.json"
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env.pop("GRADER_PYTEST_VERBOSE", None)
    cmd = [sys.executable, "-m", "grader.judge", str(submission.clean), str(result_path),
           "--timeout", str(args.timeout), "--memory-mb", str(args.memory_mb), "--budget", str(args.budget)]
    # The judge itself stops the submission at --budget; this backstop only covers a judge that hangs.
    budget = args.budget + args.timeout + 120
    log = result_path.parent / "judge.log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=result_path.parent, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **osfeatures.new_group_kwargs())
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            osfeatures.kill_tree(proc)
            proc.wait()
            return {"status": "timeout", "status_message": f"评分超过 {budget:.0f} 秒 / grading exceeded {budget:.0f} s",
                    "checks": {}}
    try:
        data = json.loads(result_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except (OSError, ValueError):
        tail = log.read_bytes()[-1500:].decode("utf-8", "replace") if log.exists() else ""
        return {"status": "grader_error", "checks": {},
                "status_message": f"评分程序出错，请联系助教 / the grader failed, tell your TA (exit {proc.returncode}):\n{tail}"}


def grade_one(submission, args, workdir):
    """One submission, whatever it holds: any exception here (a 200,000-term expression that makes
    the parser recurse too deep, a broken file, a bug of ours) becomes this student's grader_error
    row, and the batch goes on."""
    start = time.perf_counter()
    judged = None
    try:
        if submission.status == "ok":
            prepare(submission, workdir)
        judged = run_judge(submission, args, workdir) if submission.status == "ok" else None
        return report.score(submission, judged, time.perf_counter() - start)
    except BaseException as e:  # noqa: BLE001 - RecursionError, MemoryError, OSError, ...
        if isinstance(e, KeyboardInterrupt):
            raise
        return report.grader_error(submission, e, time.perf_counter() - start)


def main(argv=None):
    osfeatures.console_safe()  # a GBK or cp1252 console cannot show every character
    args = parse_args(argv)
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
            print(f"错误 / Error: {e}", file=sys.stderr)
            return 2
        if args.similarity:
            return similarity.run_cli(submissions, args.out, args.similarity_threshold, workdir)
        return run(submissions, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def containment(workdir):
    """Decide once per batch whether workers run as their own unprivileged uid (grader/contain.py),
    and say what protects the batch. Sets GRADER_CONTAIN for the judges. Returns (layer, why):
    "user"; "fallback" (root, but that uid cannot run this Python: never silent, see run());
    or "none" with the reason the layer does not exist here."""
    from grader import contain

    os.environ.pop("GRADER_CONTAIN", None)
    if contain.user_layer_wanted():
        ok, why = contain.probe_user()
        if ok:
            os.environ["GRADER_CONTAIN"] = "user"
            return "user", ""
        return "fallback", why
    if osfeatures.is_root() and os.environ.get("GRADER_NO_USER") == "1":
        return "none", "GRADER_NO_USER=1"
    if not osfeatures.LINUX:
        return "none", f"{osfeatures.where()}: no Landlock, no separate user"
    if not osfeatures.is_root():
        return "none", "not running as root"
    return "none", "no /proc or fcntl"


def run(submissions, args, workdir):
    out_dir = Path(args.out)
    start = time.perf_counter()
    if args.budget is None:
        args.budget = max(4 * args.timeout, 180.0)
    try:  # before hours of grading, not after
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(f"not writable: {out_dir}")
    except OSError as e:
        print(f"错误 / Error: 无法写入输出文件夹 / cannot write the output folder --out {out_dir}: {e}", file=sys.stderr)
        return 2
    layer, why = containment(workdir)
    single = len(submissions) == 1
    self_check = single and not args.single  # a student's own file on their own computer
    results = [None] * len(submissions)
    if single:
        print(f"评分中 / grading {submissions[0].origin} ...", flush=True)
        results[0] = grade_one(submissions[0], args, workdir)
    else:
        from tqdm import tqdm

        print(report.CONSOLE_HEADER)
        # A bar only on a terminal: in a log file its carriage-return frames are clutter.
        bar = tqdm(total=len(submissions), unit="sub", dynamic_ncols=True, leave=False, disable=not sys.stderr.isatty())
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(grade_one, s, args, workdir): i for i, s in enumerate(submissions)}
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                bar.write(report.console_line(results[i]))
                bar.update(1)
        bar.close()
    if self_check:
        results[0]["self_check"] = True  # no warning in its feedback (report.unprotected)
    # Every judge (and so every worker, and with layer 2 every process of its uid) has exited:
    # only now are results written.
    report.write_outputs(out_dir, results)
    wall = time.perf_counter() - start
    # What contained the student code, said once: calmly on a self-check, plainly for a TA batch.
    if self_check:
        if report.unprotected(dict(results[0], self_check=False)):
            print("\n" + report.SELF_CHECK_NOTE, file=sys.stderr)
    else:
        if layer == "fallback":  # root, but the separate-user layer could not run: never silent
            print("\n" + report.LAYER2_FALLBACK.format(why=why, layers=report.batch_protection(results)),
                  file=sys.stderr)
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
