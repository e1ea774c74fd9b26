"""Turning one graded submission into scores, Gradescope JSON, feedback.md and console lines.

Everything a submission can influence (its id, what it printed or raised, names of its types) is
treated as hostile text here: grades.csv cells never start a spreadsheet formula, feedback.md shows
such text only inside code fences longer than any backtick run in it (so it cannot close them), and
results.json declares its output as plain text, so Gradescope renders nothing of it as HTML.
"""
import csv
import json
import re
import statistics
import traceback
from collections import Counter

from grader.rubric import CHECKS, STEP_POINTS, STEP_TITLES, step_of
from grader.textsafe import visible

CSV_HEADER = ["student", "total", "step1", "step2", "step3", "step4", "step5", "status", "file"]

STATUS_TEXT = {
    "ok": "已评分 / graded",
    "syntax_error": "语法错误 / syntax error",
    "import_error": "导入出错 / error at import",
    "crashed": "进程崩溃或退出 / the process crashed or exited",
    "timeout": "超时 / timed out",
    "no_submission": "没有提交文件 / no submission file",
    "ambiguous": "无法确定提交文件 / ambiguous submission",
    "encoding_error": "无法识别编码 / unknown encoding",
    "bad_zip": "压缩包损坏或不安全 / bad or unsafe zip",
    "bad_notebook": "笔记本无法读取 / unreadable notebook",
    "too_large": "文件过大 / file too large",
    "grader_error": "评分程序出错 / grader error",
}


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # incl. full-width


def csv_cell(value):
    """A grades.csv cell that no spreadsheet evaluates: text starting like a formula gets a leading '."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    s = str(value)
    return "'" + s if s.lstrip(" ").startswith(FORMULA_START) else s


def fence(text, indent=""):
    """text as a fenced code block it cannot close: the fence is longer than any backtick run inside."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    body = [indent + ln for ln in text.splitlines()] or [indent]
    return [indent + f + "text", *body, indent + f]


# Enough to make emphasis, code, links/images, headings, tables and strike-through inert; '.', '-',
# '(' stay readable ('(' and '!' only matter after ']' or before '[', which are escaped).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def md_escape(text):
    """Inline text (ids, notes) with markdown and HTML made inert."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def protection_text(result):
    """What contained this submission's code, in words (results.json, feedback.md)."""
    prot = result.get("protection")
    if prot is None:
        return "not run (nothing of the submission was executed)"
    # As root, the separate-user layer fell back (cli.containment): said wherever protection is.
    off = f"; separate-user layer off: {result['layer_off']}" if result.get("layer_off") else ""
    strong = [p for p in prot if p.startswith(("landlock", "separate uid"))]
    if strong:
        return " + ".join(prot) + off
    return "process isolation only / 仅进程隔离 (" + (", ".join(prot) or "no sandbox") + ")" + off


def unprotected(result):
    """Whether to warn about this submission: neither Landlock nor a separate uid contained its code,
    in a TA's batch or on Gradescope. A student's self-check (cli.py sets self_check) is their own code
    on their own computer: nothing to warn about there."""
    prot = result.get("protection")
    return (prot is not None and not result.get("self_check")
            and not any(p.startswith(("landlock", "separate uid")) for p in prot))


def batch_protection(results):
    """The layers that contained the batch's workers, in words (one entry per kind)."""
    kinds = []
    for r in results:
        for p in r.get("protection") or []:
            k = "separate uid per worker" if p.startswith("separate uid") else p
            if k not in kinds:
                kinds.append(k)
    return " + ".join(kinds) or "process isolation only / 仅进程隔离"


PROTECTION_WARNING = ("注意：本机上学生代码没有沙箱隔离（{why}）：恶意的提交可以读写评分用户能访问的文件。"
                      "可信的成绩请在 Linux（root 或 Landlock）或 Gradescope 上评分。/ Warning: student code is not "
                      "sandboxed on this machine ({why}): a malicious submission can read and write whatever the "
                      "grading user can. Trusted grades come from Linux (as root, or with Landlock) or Gradescope.")

SELF_CHECK_NOTE = ("说明：你的代码在本机的独立进程中运行，没有沙箱；这对自查没有影响，分数与在 Linux 或 Gradescope 上相同。"
                   "/ Note: your code ran in a separate process on this computer, without a sandbox; that is fine "
                   "for a self-check, and the score is the same as on Linux or Gradescope.")

LAYER2_FALLBACK = ("注意：以 root 运行，但“独立用户”保护层没有启用：{why}。本批次的学生代码只受 {layers} 保护。要启用它，"
                   "请用 root 家目录以外的 Python 运行评分程序（系统 Python，或由它在 /root 以外建的 venv，"
                   "如 .ci/run 在 /var/cache/experiment6-kit 中所建）。/ Note: running as root, but the separate-user "
                   "layer is off: {why}. Student code in this batch is contained by {layers} only. To get that "
                   "layer, run the grader with a Python outside root's home: the system Python, or a venv made "
                   "from it outside /root (as .ci/run builds in /var/cache/experiment6-kit).")


def protection_warning(results, why=""):
    if any(unprotected(r) for r in results):
        return PROTECTION_WARNING.format(why=why or "see grader/README.md")
    return ""


def grader_error(submission, exc, seconds):
    """The row of a submission whose grading itself failed (the batch goes on)."""
    tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:1500]
    judged = {"status": "grader_error", "checks": {},
              "status_message": f"评分程序出错，请联系助教 / the grader failed on this submission, tell your TA: {tb}"}
    return score(submission, judged, seconds)


def score(submission, judged, seconds):
    """Merge the judge's JSON (or a pre-judge failure) with the rubric into one result dict. A check id
    the rubric does not hold is a ValueError (grade_one turns it into this student's grader_error)."""
    status, status_message = submission.status, visible(submission.message or "")
    checks_in, notes_in, log = {}, {}, ""
    if judged is not None:
        status = judged.get("status") if isinstance(judged.get("status"), str) else "grader_error"
        status_message = visible(judged.get("status_message") or "")
        checks_in = judged.get("checks") if isinstance(judged.get("checks"), dict) else {}
        notes_in = judged.get("notes") if isinstance(judged.get("notes"), dict) else {}
        log = visible(judged.get("log") or "")
    unknown = sorted(set(checks_in) - set(CHECKS))
    if unknown:  # a check the rubric does not know would score nothing, silently: never
        raise ValueError(f"the judge reported checks that are not in grader/rubric.py: {unknown[:5]}")
    # "forked" from the batch's warm server or "fresh" (grader/judge_server.py): for the TA, not scored
    started = judged.get("judge") if judged is not None and judged.get("judge") in ("forked", "fresh") else ""
    protection = None
    if judged is not None and isinstance(judged.get("protection"), list):
        protection = [visible(p, one_line=True) for p in judged["protection"]]
    checks, steps = [], {s: 0 for s in STEP_POINTS}
    for cid, (points, title) in CHECKS.items():
        r = checks_in.get(cid)
        passed = isinstance(r, dict) and r.get("passed") is True
        if isinstance(r, dict):
            message = visible(r.get("message") or "")
        elif status_message:
            message = status_message
        else:
            message = "此项未运行 / this check did not run"
        notes = [visible(n) for n in notes_in.get(cid, [])] if isinstance(notes_in.get(cid, []), list) else []
        got = points if passed else 0
        steps[step_of(cid)] += got
        checks.append({"id": cid, "step": step_of(cid), "title": title, "points": got, "max": points,
                       "passed": passed, "message": "" if passed else message, "notes": notes})
    # Every string a submission can influence passes through visible() here (grader/textsafe.py):
    # all outputs are built from this dict.
    one = lambda v: visible(v, one_line=True)  # noqa: E731 - ids, paths, file names
    skipped = [{"file": one(k.get("file", "")), "reason": visible(k.get("reason", ""))}
               for k in getattr(submission, "skipped", []) if isinstance(k, dict)]
    return {"student": one(submission.student), "origin": one(submission.origin),
            "file": one(submission.file) if submission.file else "",
            "status": one(status), "status_message": status_message, "total": sum(steps.values()),
            "steps": steps, "checks": checks, "seconds": round(seconds, 2),
            "notes": [visible(n) for n in submission.notes], "log": log, "protection": protection,
            "file_label": one(getattr(submission, "label", "") or ""), "skipped": skipped, "judge": started}


def gradescope(result):
    """results.json for one graded submission. No leaderboard: run_autograder adds one when asked
    (GRADER_LEADERBOARD=1), since Gradescope shows it only where the assignment enables it."""
    tests = []
    for c in result["checks"]:
        out = c["message"]
        if out and out == result["status_message"]:  # the whole submission failed: said once at the top
            out = "未评分，原因见总体说明 / not graded, see the overall message"
        if c["notes"]:
            out = (out + "\n" if out else "") + "\n".join(c["notes"])
        tests.append({"name": f"Step {c['id']} · {c['title']}", "score": c["points"], "max_score": c["max"],
                      "status": "passed" if c["passed"] else "failed", "output": out, "visibility": "visible"})
    head = f"总分 / Total: {result['total']}/100"
    if result["status"] != "ok":
        head += f"\n状态 / Status: {result['status']} — {STATUS_TEXT.get(result['status'], '')}\n{result['status_message']}"
    head += "".join(f"\n{line}" for line in file_lines(result))
    if unprotected(result):
        head += "\n" + PROTECTION_WARNING.format(why="see grader/README.md")
    # output_format "text": Gradescope shows every output verbatim, nothing is rendered as HTML/markdown.
    # Only keys of Gradescope's results.json spec (gradescope-autograders.readthedocs.io, "Autograder
    # Specifications"; checked in tests/conftest.py): the kit's own ones go into extra_data.
    return {"score": result["total"], "execution_time": result["seconds"], "output": head,
            "output_format": "text", "test_output_format": "text", "test_name_format": "text",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests,
            "extra_data": {"status": result["status"], "protection": protection_text(result),
                           "file": result.get("file_label", ""), "skipped_files": result.get("skipped", []),
                           "judge": result.get("judge", "")}}


def file_lines(result):
    """Which file was graded, and which candidates were not (and why)."""
    out = []
    if result.get("file_label"):
        out.append(f"评分文件 / graded file: {result['file_label']}")
    for s in result.get("skipped", []):
        out.append(f"未评分 / not graded: {s['file']} — {s['reason']}")
    return out


def feedback_md(result):
    r = result
    # Text a submission can influence appears only escaped (md_escape) or inside fence(): it cannot
    # fake a header, a score line or HTML.
    lines = [f"# 实验六评分反馈 / Experiment 6 feedback: {md_escape(r['student'])}", "",
             f"**总分 / Total: {r['total']} / 100**  ·  状态 / status: `{r['status']}`"
             f" ({STATUS_TEXT.get(r['status'], r['status'])})", ""]
    if file_lines(r):
        lines += [f"- {md_escape(line)}" for line in file_lines(r)] + [""]
    if unprotected(r):
        lines += ["> " + md_escape(PROTECTION_WARNING.format(why="see grader/README.md")), ""]
    if r["status_message"]:
        lines += [*fence(r["status_message"]), ""]
    lines += ["| 步骤 / Step | 得分 / Score |", "|---|---|"]
    for s, total in STEP_POINTS.items():
        lines.append(f"| Step {s} · {STEP_TITLES[s]} | {r['steps'][s]} / {total} |")
    lines.append("")
    for s in STEP_POINTS:
        lines.append(f"## Step {s} · {STEP_TITLES[s]}  ({r['steps'][s]}/{STEP_POINTS[s]})")
        lines.append("")
        for c in r["checks"]:
            if c["step"] != s:
                continue
            mark = "✅" if c["passed"] else "❌"
            lines.append(f"- {mark} **{c['id']}** {c['title']} — {c['points']}/{c['max']}")
            if not c["passed"] and c["message"] and c["message"] != r["status_message"]:
                lines += ["", *fence(c["message"], "  ")]
            for n in c["notes"]:
                lines.append(f"  - {md_escape(n)}")
        lines.append("")
    if r["notes"]:
        lines += ["## 备注 / Notes", ""] + [f"- {md_escape(n)}" for n in r["notes"]] + [""]
    if r["log"].strip():
        lines += ["## 程序输出（节选）/ Program output (excerpt)", "", *fence(r["log"].strip()[-2000:]), ""]
    lines += [f"<sub>保护 / protection: {md_escape(protection_text(r))}</sub>", ""]
    return "\n".join(lines)


def step_table(result):
    rows = [f"{'Step':<8}{'得分 / Score':>14}"]
    for s, total in STEP_POINTS.items():
        rows.append(f"Step {s:<3}{result['steps'][s]:>8} / {total:<3}  {STEP_TITLES[s]}")
    rows.append(f"{'Total':<8}{result['total']:>8} / 100")
    return "\n".join(rows)


def failed_checks_text(result):
    out = []
    if result["status"] != "ok":
        out.append(f"状态 / status: {result['status']} — {STATUS_TEXT.get(result['status'], '')}")
        if result["status_message"]:
            out.append(result["status_message"])
        out.append("")
    shown_status = bool(result["status_message"])
    failed = [c for c in result["checks"] if not c["passed"]
              and not (shown_status and c["message"] == result["status_message"])]  # said once above
    i = 0
    while i < len(failed):
        # Checks of one step failing for the same reason (e.g. "not implemented yet"): say it once.
        j = i
        while (j + 1 < len(failed) and failed[j + 1]["message"] == failed[i]["message"]
               and failed[j + 1]["step"] == failed[i]["step"]):
            j += 1
        for c in failed[i:j + 1]:
            out.append(f"✗ {c['id']} ({c['max']}) {c['title']}")
        out += ["    " + ln for ln in failed[i]["message"].splitlines()]
        i = j + 1
    return "\n".join(out)


def console_line(result):
    s = result["steps"]
    return (f"{result['student'][:28]:<28} {result['total']:>4}  {s[1]:>3} {s[2]:>3} {s[3]:>3} {s[4]:>3} {s[5]:>3}  "
            f"{result['status']:<14} {result['seconds']:>6.1f}s")


CONSOLE_HEADER = f"{'student':<28} {'total':>4}  {'s1':>3} {'s2':>3} {'s3':>3} {'s4':>3} {'s5':>3}  {'status':<14} {'time':>7}"


def write_outputs(out_dir, results):
    """Per-student folders first (a failure there becomes that student's grader_error row), then
    grades.csv. Ids are unique, bounded and never a reserved name (sources.assign_ids)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        try:
            _write_student(out_dir, r)
        except Exception as e:  # noqa: BLE001 - one student's files must not end the batch
            class _Submission:  # the fields score() reads
                student, origin, file, status, message, notes = r["student"], r["origin"], None, "", "", []
            results[i] = r = grader_error(_Submission, OSError(f"writing the results failed: {type(e).__name__}: {e}"),
                                          r["seconds"])
            try:
                _write_student(out_dir, r)
            except Exception:  # noqa: BLE001 - the row in grades.csv still says what happened
                pass
    with open(out_dir / "grades.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for r in results:
            w.writerow([csv_cell(v) for v in
                        [r["student"], r["total"], *(r["steps"][s] for s in STEP_POINTS), r["status"],
                         r.get("file_label", "")]])


def _write_student(out_dir, r):
    d = out_dir / r["student"]
    d.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a lone surrogate a submission smuggled into a message must not fail the write
    (d / "results.json").write_text(json.dumps(gradescope(r), ensure_ascii=False, indent=1), encoding="utf-8",
                                    errors="backslashreplace")
    (d / "feedback.md").write_text(feedback_md(r), encoding="utf-8", errors="backslashreplace")


def summary(results, wall):
    totals = [r["total"] for r in results]
    by_status = Counter(r["status"] for r in results)
    secs = [r["seconds"] for r in results]
    lines = [f"提交数 / submissions: {len(results)}    "
             f"平均分 / mean: {statistics.mean(totals):.1f}    中位数 / median: {statistics.median(totals):.1f}",
             "状态 / status: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())),
             f"用时 / time: {wall:.1f} s wall, {statistics.median(secs):.1f} s median per submission"]
    return "\n".join(lines)
