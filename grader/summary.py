"""The class summary a TA reads after a batch: summary.md (any Markdown viewer) and summary.png.

Everything is computed from the result dicts of grader/report.py (the same numbers grades.csv and
results.json hold). Student ids and feedback messages are student-controlled text: they go into the
Markdown escaped (ids) or as code spans (messages), so no submission can add links, HTML or
formatting to the TA's page. Nothing here may fail a batch: write_class_summary() turns any error
into a warning line.
"""
import re
import statistics
from collections import Counter
from pathlib import Path

from grader.rubric import CHECKS, STEP_POINTS, STEP_TITLES, step_of

BIN_WIDTH = 10  # score histogram: 0-9, 10-19, ..., 90-100 (100 joins the last bin)
HINT_CHARS = 240  # the most common failure message, cut to one table cell
BAR_MAX = 30  # widest text bar in the Markdown histogram

# Statuses in the order a TA cares about; unknown ones follow alphabetically.
STATUS_ORDER = ["ok", "syntax_error", "import_error", "crashed", "timeout", "no_submission", "ambiguous",
                "encoding_error", "bad_zip", "bad_notebook", "too_large", "grader_error"]


# ----------------------------------------------------------------------------------------------
# Numbers (pure functions of the result dicts)
# ----------------------------------------------------------------------------------------------

def histogram(totals, width=BIN_WIDTH, top=100):
    """[(low, high, count)] with bins [0, width), ..., [top - width, top] (the top score joins the last)."""
    n_bins = top // width
    counts = [0] * n_bins
    for t in totals:
        counts[min(max(int(t // width), 0), n_bins - 1)] += 1
    return [(i * width, top if i == n_bins - 1 else (i + 1) * width - 1, c) for i, c in enumerate(counts)]


def one_line(text, limit=HINT_CHARS):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_stats(results):
    """Per check: how many passed, and the most common failure message (the hint students got).

    A message that only repeats the submission's status (syntax error, crash at import, ...) says
    nothing about this check, so it is used as the hint only when no other failure message exists.
    Sorted worst first (lowest pass rate, then rubric order)."""
    rows = []
    order = {cid: i for i, cid in enumerate(CHECKS)}
    for cid, (points, title) in CHECKS.items():
        passed, specific, generic = 0, Counter(), Counter()
        for r in results:
            c = next((c for c in r["checks"] if c["id"] == cid), None)
            if c is None:
                continue
            if c["passed"]:
                passed += 1
            elif c["message"]:
                (generic if c["message"] == r["status_message"] else specific)[c["message"]] += 1
        hints = specific or generic
        hint, hint_count = hints.most_common(1)[0] if hints else ("", 0)
        n = len(results)
        rows.append({"id": cid, "step": step_of(cid), "title": title, "points": points, "passed": passed, "n": n,
                     "rate": passed / n if n else 0.0, "hint": hint, "hint_count": hint_count})
    rows.sort(key=lambda row: (row["rate"], order[row["id"]]))
    return rows


def class_stats(results):
    totals = [r["total"] for r in results]
    statuses = Counter(r["status"] for r in results)
    order = STATUS_ORDER + sorted(set(statuses) - set(STATUS_ORDER))
    by_status = [(s, statuses[s], sorted(r["student"] for r in results if r["status"] == s))
                 for s in order if statuses[s]]
    secs = [float(r["seconds"]) for r in results]
    slowest = max(results, key=lambda r: float(r["seconds"]))
    return {
        "n": len(results),
        "mean": statistics.mean(totals), "median": statistics.median(totals),
        "min": min(totals), "max": max(totals),
        "histogram": histogram(totals),
        "step_means": {s: statistics.mean(r["steps"][s] for r in results) for s in STEP_POINTS},
        "checks": check_stats(results),
        "statuses": by_status,
        "seconds_median": statistics.median(secs), "seconds_max": max(secs), "slowest": slowest["student"],
    }


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def md_escape(text):
    """Plain text that Markdown shows literally: CommonMark lets every ASCII punctuation character be
    backslash-escaped, and once all are, no emphasis, link, autolink, HTML tag, entity or table
    separator can start. Newlines become spaces (a table row is one line)."""
    return _PUNCT.sub(r"\\\1", " ".join(str(text).split()))


def md_code(text, limit=HINT_CHARS):
    """Text as an inline code span inside a table cell: nothing in it is interpreted and the fence is
    longer than any run of backticks inside. GFM splits table cells before it parses code spans, and
    a backslash can cancel the escape of a pipe, so `|` becomes the look-alike `│` (U+2502)."""
    text = one_line(text, limit).replace("|", "│")
    if not text:
        return ""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _bar(count, biggest):
    return "█" * (round(count / biggest * BAR_MAX) if biggest > BAR_MAX else count)


def summary_md(stats, png_name="summary.png"):
    from grader.report import STATUS_TEXT

    s = stats
    lines = ["# 实验六班级汇总 / Experiment 6 class summary", "",
             f"提交数 / submissions: **{s['n']}** · 平均分 / mean: **{s['mean']:.1f}** · 中位数 / median: "
             f"**{s['median']:.1f}** · 最低 / min: **{s['min']:g}** · 最高 / max: **{s['max']:g}**", "",
             f"![分数分布与通过率 / scores and pass rates]({png_name})", "",
             "## 分数分布 / Score histogram", "",
             "| 分数 / Score | 人数 / Count | |", "|---|---:|---|"]
    biggest = max(c for _, _, c in s["histogram"]) or 1
    lines += [f"| {lo}–{hi} | {c} | {_bar(c, biggest)} |" for lo, hi, c in s["histogram"]]
    lines += ["", "## 各步骤平均分 / Mean score per step", "",
              "| 步骤 / Step | 平均 / Mean | 满分 / Max | 得分率 / Share |", "|---|---:|---:|---:|"]
    for step, full in STEP_POINTS.items():
        mean = s["step_means"][step]
        lines.append(f"| Step {step} · {md_escape(STEP_TITLES[step])} | {mean:.2f} | {full} | {mean / full:.0%} |")
    lines.append(f"| 合计 / Total | {s['mean']:.2f} | {sum(STEP_POINTS.values())} | {s['mean'] / 100:.0%} |")
    lines += ["", "## 各检查通过率（最差在前）/ Pass rate per check, worst first", "",
              "未通过者最常收到的反馈即学生看到的提示。/ The most common failure message is the hint those "
              "students were given.", "",
              "| 检查 / Check | 内容 / What it checks | 分值 / Points | 通过 / Passed | 通过率 / Rate | "
              "最常见的反馈 / Most common failure message |", "|---|---|---:|---:|---:|---|"]
    for c in s["checks"]:
        hint = f"{md_code(c['hint'])} ({c['hint_count']}×)" if c["hint"] else ""
        lines.append(f"| {c['id']} | {md_escape(c['title'])} | {c['points']} | {c['passed']}/{c['n']} | "
                     f"{c['rate']:.0%} | {hint} |")
    lines += ["", "## 状态 / Status", "", "| 状态 / Status | 人数 / Count | 学生 / Students |", "|---|---:|---|"]
    for status, count, ids in s["statuses"]:
        who = "" if status == "ok" else ", ".join(md_escape(i) for i in ids)
        lines.append(f"| {md_escape(status)} ({md_escape(STATUS_TEXT.get(status, ''))}) | {count} | {who} |")
    lines += ["", "## 评分用时 / Grading time", "",
              f"每份提交 / per submission: 中位数 / median **{s['seconds_median']:.1f} s** · 最长 / max "
              f"**{s['seconds_max']:.1f} s** ({md_escape(s['slowest'])})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figure (English labels: a TA's matplotlib may have no CJK font; no student text in it)
# ----------------------------------------------------------------------------------------------

def summary_png(stats, path):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    s = stats
    fig, ax = plt.subplots(2, 2, figsize=(13, 8.5))
    labels = [f"{lo}-{hi}" for lo, hi, _ in s["histogram"]]
    ax[0][0].bar(labels, [c for *_, c in s["histogram"]], color="#4c72b0")
    ax[0][0].set(title=f"Score histogram (n={s['n']}, mean {s['mean']:.1f})", xlabel="total score",
                 ylabel="submissions")
    ax[0][0].tick_params(axis="x", labelrotation=45)
    steps = list(STEP_POINTS)
    ax[0][1].bar([f"Step {k}" for k in steps], [100 * s["step_means"][k] / STEP_POINTS[k] for k in steps],
                 color="#55a868")
    ax[0][1].set(title="Mean score per step (% of the step's points)", ylim=(0, 100), ylabel="%")
    checks = s["checks"]
    ax[1][0].bar([c["id"] for c in checks], [100 * c["rate"] for c in checks], color="#c44e52")
    ax[1][0].set(title="Pass rate per check, worst first", ylim=(0, 100), ylabel="% passed")
    ax[1][0].tick_params(axis="x", labelrotation=90, labelsize=8)
    ax[1][1].barh([st for st, *_ in s["statuses"]][::-1], [c for _, c, _ in s["statuses"]][::-1], color="#8172b2")
    ax[1][1].set(title=f"Status (grading time: median {s['seconds_median']:.1f} s, max {s['seconds_max']:.1f} s)",
                 xlabel="submissions")
    from matplotlib.ticker import MaxNLocator

    ax[0][0].yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of students
    ax[1][1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Entry points used by grader/cli.py
# ----------------------------------------------------------------------------------------------

def most_failed_text(stats, n=5):
    lines = [f"未通过最多的检查 / most-failed checks (of {stats['n']}):"]
    for c in stats["checks"][:n]:
        lines.append(f"  {c['id']:<4} {c['passed']:>4}/{c['n']:<4} passed  {one_line(c['title'], 90)}")
    return "\n".join(lines)


def write_summary(out_dir, results):
    """Write summary.md and summary.png into out_dir; return the stats."""
    out_dir = Path(out_dir)
    stats = class_stats(results)
    (out_dir / "summary.md").write_text(summary_md(stats), encoding="utf-8")
    summary_png(stats, out_dir / "summary.png")
    return stats


def write_class_summary(out_dir, results):
    """For the batch's console: the most-failed checks and where the summary is, or a warning.
    Never raises: the grades are already written and must stand whatever happens here."""
    try:
        stats = write_summary(out_dir, results)
        return most_failed_text(stats) + f"\n班级汇总 / class summary: {Path(out_dir) / 'summary.md'}"
    except Exception as e:  # noqa: BLE001 - a summary problem must not fail the batch
        return f"警告 / warning: 未能写出班级汇总 / could not write the class summary: {type(e).__name__}: {e}"
