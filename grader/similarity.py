"""Which submissions look copied: every pair compared with copydetect, the kit's given code discounted.

    python -m grader submissions/ --similarity [--out grading] [--similarity-threshold 0.5]

copydetect (winnowing fingerprints, as MOSS) tokenises each file with Pygments and replaces every
name by one letter, so renaming variables or rewriting comments changes nothing; a match is a run of
at least NOISE_T characters of that normalised code found in both files. Code that every student was
given is boilerplate: its fingerprints are removed before comparing, so only what students wrote
counts. The boilerplate is the generated template, the notebook's code, the handout's python blocks,
and the template (and notebook) with the handout's code for Steps 1-4 pasted into their TODO stubs,
which is what a student who follows the handout hands in for those steps. Without that last one, the
few characters where the given code meets the handout's code would be shared by every such student
and two independent Step 5 solutions would look half copied.

Score of a pair = max(share of A's non-boilerplate code found in B, share of B's found in A), so a
student who copied a classmate and then added code of their own is still caught. It never changes a
grade: it only writes similarity.html (copydetect's side-by-side report of the flagged pairs) and
similarity.csv into the output folder.
"""
import ast
import bisect
import csv
import re
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

from grader import sources
from grader.settings import DEFAULTS

KIT = Path(__file__).resolve().parents[1]
TEMPLATE = KIT / "student_template.py"
NOTEBOOK = KIT / "handout" / "experiment6_student.ipynb"
HANDOUTS = [KIT / "handout" / "handout.zh.md", KIT / "handout" / "handout.en.md"]

THRESHOLD = DEFAULTS.similarity_threshold  # grader/settings.py
CONSOLE_PAIRS = 5  # the most similar pairs printed
REPORT_PAIRS = 100  # at most this many pairs (the most similar) in similarity.html; the CSV has all
# copydetect's defaults. noise == guarantee means a winnowing window of 1: every k-gram is kept, so
# the scores do not depend on Python's per-process string hash seed (with a larger window they would).
NOISE_T = GUARANTEE_T = 25

# The public contract: where a function's code counts for the "steps" column of similarity.csv.
CONTRACT = {"PairedMedicalDataset": 1, "Generator": 2, "Discriminator": 2, "build_losses": 3,
            "build_optimizers": 3, "train_step": 4, "visualize": 5}
STEP_HEADER = re.compile(r"^\s*#\s*STEP\s+(\d+)\b", re.IGNORECASE)
STUB = re.compile(r'^(\s*)raise NotImplementedError\("Step \d+:.*fill in ([\w.]+)"\)\s*$')
CSV_HEADER = ["student_a", "student_b", "score", "share_a", "share_b", "overlap", "steps", "where_a", "where_b"]


# ----------------------------------------------------------------------------------------------
# Boilerplate: what every student was given
# ----------------------------------------------------------------------------------------------

def handout_blocks(markdown):
    return re.findall(r"^```python[^\n]*\n(.*?)^```", markdown, re.S | re.M)


def handout_bodies(blocks):
    """{qualified name: body source} of every function the handout's code blocks define."""
    bodies = {}
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        lines = block.splitlines()

        def visit(node, prefix):
            for child in node.body:
                if isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                elif isinstance(child, ast.FunctionDef):
                    body = "\n".join(lines[child.body[0].lineno - 1:child.end_lineno])
                    bodies.setdefault(prefix + child.name, textwrap.dedent(body))

        visit(tree, "")
    return bodies


def fill_stubs(code, bodies, dedup=True):
    """The template with each `raise NotImplementedError("Step N: ... fill in NAME")` stub replaced by
    the handout's body of NAME (stubs the handout has no code for, i.e. Step 5, stay). dedup: leave out
    the body's first lines that the template already gives (super().__init__()); students paste both
    ways, so both are boilerplate."""
    out, filled = [], 0
    for line in code.splitlines():
        m = STUB.match(line)
        if m and m.group(2) in bodies:
            body = bodies[m.group(2)].splitlines()
            # The template already gives the first lines of some bodies (super().__init__()): not twice.
            given = set()
            for prev in reversed(out):
                if prev.lstrip().startswith(("def ", "class ")):
                    break
                given.add(prev.strip())
            while dedup and body and (not body[0].strip() or body[0].strip() in given):
                body.pop(0)
            out += [m.group(1) + ln if ln.strip() else "" for ln in body]
            filled += 1
        else:
            out.append(line)
    return "\n".join(out) + "\n", filled


def boilerplate_texts():
    """{file name: code} and a list of warnings for what is missing from this kit."""
    texts, warnings = {}, []
    blocks = []
    for md in HANDOUTS:
        if md.is_file():
            blocks += handout_blocks(md.read_text(encoding="utf-8"))
        else:
            warnings.append(f"missing {md.relative_to(KIT)}")
    if blocks:
        texts["handout_code.py"] = "\n\n".join(blocks)
    bodies = handout_bodies(blocks)
    given = {}
    if TEMPLATE.is_file():
        given["template"] = TEMPLATE.read_text(encoding="utf-8")
    else:
        warnings.append(f"missing {TEMPLATE.relative_to(KIT)}")
    if NOTEBOOK.is_file():
        try:
            given["notebook"] = sources.notebook_to_source(NOTEBOOK.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001
            warnings.append(f"cannot read {NOTEBOOK.relative_to(KIT)}: {e}")
    else:
        warnings.append(f"missing {NOTEBOOK.relative_to(KIT)}")
    for name, code in given.items():
        texts[f"{name}.py"] = code
        for dedup, suffix in ((True, ""), (False, "_pasted_whole")):
            filled, n = fill_stubs(code, bodies, dedup)
            if n:
                texts[f"{name}_with_handout_code{suffix}.py"] = filled
    return texts, warnings


# ----------------------------------------------------------------------------------------------
# Where an overlap sits: contract function or "# STEP N" section, per line
# ----------------------------------------------------------------------------------------------

def line_labels(code):
    """One (step, label) per line (index 0 = line 1): the contract function or class holding the
    line, else the "# STEP N" section it follows, else (None, "other")."""
    lines = code.splitlines() or [""]
    labels, step = [], None
    for line in lines:
        m = STEP_HEADER.match(line)
        if m:
            step = int(m.group(1))
        labels.append((step, f"Step {step} section") if step else (None, "other"))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return labels
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in CONTRACT:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            for i in range(start - 1, min(node.end_lineno, len(labels))):
                labels[i] = (CONTRACT[node.name], node.name)
    return labels


def line_starts(code):
    return [0] + [m.end() for m in re.finditer("\n", code)]


def where(code, slices, labels, starts=None):
    """[(step, 'visualize 354-376')] for the character slices copydetect marked in code, most lines first."""
    spans = {}  # label -> line numbers
    starts = starts or line_starts(code)
    for a, b in zip(*slices):
        first = bisect.bisect_right(starts, int(a)) - 1
        last = bisect.bisect_right(starts, max(int(b) - 1, int(a))) - 1
        for ln in range(first, last + 1):
            if ln < len(labels) and code[starts[ln]:starts[ln + 1] if ln + 1 < len(starts) else None].strip():
                spans.setdefault(labels[ln], set()).add(ln + 1)
    parts = []
    for (step, label), nums in sorted(spans.items(), key=lambda kv: -len(kv[1])):
        parts.append((step, f"{label} {_ranges(sorted(nums))}"))
    return parts


def _ranges(nums):
    out, start = [], nums[0]
    for prev, cur in zip(nums, nums[1:] + [None]):
        if cur != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

def safe_name(student, used):
    """A file name for the report: only characters that need no escaping in HTML or a path."""
    base = re.sub(r"[^A-Za-z0-9_.\-\u4e00-\u9fff]+", "_", student).strip("._") or "student"
    name, i = base, 2
    while name.lower() in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name.lower())
    return name


def compare(codes, threshold=THRESHOLD, boilerplate=None, html_path=None):
    """codes: {student: source}. Returns (pairs sorted by score, best first, every pair), each a dict
    with student_a/b, score, share_a/b, overlap and where_a/b; writes copydetect's HTML report of
    the pairs above threshold to html_path if given."""
    import matplotlib

    matplotlib.use("Agg")  # copydetect draws its report's plots with pyplot
    import copydetect

    if boilerplate is None:
        boilerplate, _ = boilerplate_texts()
    with tempfile.TemporaryDirectory(prefix="e6sim-") as tmp:
        tmp = Path(tmp)
        (tmp / "subs").mkdir()
        (tmp / "boilerplate").mkdir()
        for name, code in boilerplate.items():
            (tmp / "boilerplate" / name).write_text(code, encoding="utf-8")
        det = copydetect.CopyDetector(
            noise_t=NOISE_T, guarantee_t=GUARANTEE_T, display_t=threshold, truncate=True, autoopen=False, silent=True,
            out_file=str(tmp / "report.html"))
        for f in sorted((tmp / "boilerplate").iterdir()):
            det.add_file(str(f), type="boilerplate")
        used, file_of = set(), {}
        for student in sorted(codes):  # files added in a fixed order: the same report every time
            f = tmp / "subs" / (safe_name(student, used) + ".py")
            f.write_text(codes[student], encoding="utf-8")
            file_of[str(f)] = student
            det.add_file(str(f))
        det.run()
        pairs = []
        index = {f: i for i, f in enumerate(det.ref_files)}
        for i, fa in enumerate(det.test_files):
            for fb in det.test_files[i + 1:]:
                share_a, share_b = (float(x) for x in det.similarity_matrix[i, index[fb]])
                if share_a < 0:  # not compared (copydetect could not read one of them)
                    continue
                a, b = (fb, fa) if share_b > share_a else (fa, fb)  # "A": most of its own code is shared
                pairs.append({"student_a": file_of[a], "student_b": file_of[b], "score": max(share_a, share_b),
                              "share_a": max(share_a, share_b), "share_b": min(share_a, share_b), "files": (a, b),
                              "overlap": int(det.token_overlap_matrix[i, index[fb]]), "where_a": [], "where_b": []})
        pairs.sort(key=lambda p: (-p["score"], -p["overlap"], p["student_a"], p["student_b"]))
        # Where the overlap sits: for the pairs that are reported (CSV and console) only.
        label_cache = {}
        for rank, p in enumerate(pairs):
            if (p["score"] <= threshold and rank >= CONSOLE_PAIRS) or not p["overlap"]:
                continue
            fa, fb = p["files"]
            slices = det.slice_matrix.get((fa, fb))
            sa, sb = slices if slices is not None else det.slice_matrix[(fb, fa)][::-1]
            for key, f, sl in (("where_a", fa, sa), ("where_b", fb, sb)):
                code = det.file_data[f].raw_code
                if f not in label_cache:
                    label_cache[f] = line_labels(code), line_starts(code)
                p[key] = where(code, sl, *label_cache[f])
        for p in pairs:
            del p["files"]
        flagged = [p for p in pairs if p["score"] > threshold]
        if len(flagged) > REPORT_PAIRS:  # the HTML holds both files of every pair it shows
            det.conf.display_t = flagged[REPORT_PAIRS - 1]["score"] - 1e-9
            shown = det.get_copied_code_list()[:REPORT_PAIRS]  # ties at the cut could add thousands
            det.get_copied_code_list = lambda: shown  # what generate_html_report renders
        if html_path is not None:
            with warnings.catch_warnings():  # copydetect 0.5 reads its template with a deprecated call
                warnings.simplefilter("ignore", DeprecationWarning)
                html = det.generate_html_report(output_mode="return")
            # File names in the report are the temporary paths: show the student's file name only.
            for prefix in (str(tmp / "subs") + "/", str(tmp / "subs") + "\\", str(tmp)):
                html = html.replace(prefix, "")
            Path(html_path).write_text(html, encoding="utf-8")
    return pairs


def steps_of(pair):
    steps = sorted({s for s, _ in pair["where_a"] + pair["where_b"] if s is not None})
    return " ".join(str(s) for s in steps)


def write_csv(path, pairs, threshold):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for p in pairs:
            if p["score"] > threshold:
                w.writerow([p["student_a"], p["student_b"], f"{p['score']:.3f}", f"{p['share_a']:.3f}",
                            f"{p['share_b']:.3f}", p["overlap"], steps_of(p),
                            "; ".join(t for _, t in p["where_a"]), "; ".join(t for _, t in p["where_b"])])


# ----------------------------------------------------------------------------------------------
# Command line: python -m grader PATH... --similarity
# ----------------------------------------------------------------------------------------------

def submission_code(submission, workdir):
    """The code a submission is graded on (notebooks converted), or None with a reason."""
    if submission.status == "ok" and submission.file is not None:
        sources.prepare(submission, workdir)
    if submission.status == "ok" and submission.clean is not None:
        return submission.clean.read_text(encoding="utf-8"), ""
    if submission.status == "syntax_error" and submission.file is not None:
        try:  # it cannot be imported, but it can still be copied: compare its text
            text, _enc = sources.decode(submission.file.read_bytes())
            if submission.file.suffix.lower() == ".ipynb":
                text = sources.notebook_to_source(text)
            return text, ""
        except Exception:  # noqa: BLE001
            pass
    return None, submission.status


def run_cli(submissions, out_dir, threshold, workdir):
    """Compare every pair of submissions and write the outputs; grades are not touched. Exit code."""
    start = time.perf_counter()
    if not 0 <= threshold <= 1:
        print(f"错误 / Error: --similarity-threshold 应在 0 到 1 之间 / must be between 0 and 1 (got {threshold:g})",
              file=sys.stderr)
        return 2
    try:
        import copydetect  # noqa: F401
    except ImportError:
        print("错误 / Error: 相似度检查需要 copydetect / the similarity check needs copydetect:\n"
              "  pip install -r requirements-ta.txt", file=sys.stderr)
        return 2
    codes, skipped = {}, []
    for submission in submissions:
        code, why = submission_code(submission, workdir)
        if code is None:
            skipped.append(f"{submission.student} ({why})")
        else:
            codes[submission.student] = code
    if len(codes) < 2:
        print("错误 / Error: 相似度检查需要至少两份可读的提交 / the similarity check needs at least two "
              f"readable submissions (found {len(codes)})", file=sys.stderr)
        return 2
    boilerplate, warnings = boilerplate_texts()
    for w in warnings:
        print(f"警告 / warning: 模板代码不全，相似度可能偏高 / boilerplate incomplete, scores may be high: {w}",
              file=sys.stderr)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = compare(codes, threshold, boilerplate, html_path=out_dir / "similarity.html")
    write_csv(out_dir / "similarity.csv", pairs, threshold)
    flagged = sum(p["score"] > threshold for p in pairs)
    print(f"相似度 / similarity: {len(codes)} submissions, {len(pairs)} pairs, {flagged} above {threshold:g} "
          f"({time.perf_counter() - start:.1f} s)")
    if skipped:
        print("未比较 / not compared: " + ", ".join(skipped))
    print("最相似的几对 / most similar pairs:")
    for p in pairs[:CONSOLE_PAIRS]:
        mark = "!" if p["score"] > threshold else " "
        print(f" {mark} {p['score']:.2f}  {p['student_a']} ~ {p['student_b']}  (steps: {steps_of(p) or '-'})")
    print(f"报告 / report: {out_dir / 'similarity.html'}    {out_dir / 'similarity.csv'}")
    return 0
