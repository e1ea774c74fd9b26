"""The class summary's pure parts and the similarity check, without grading anything.

The summary written by a real batch is tested in tests/test_grader.py (it reuses that file's batches);
here the result dicts are built with grader/report.py's own score() from made-up judge answers, and
the similarity check runs on source files built from experiment6.py.
"""
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from grader_cases import cases as C

from grader import report, similarity, summary  # noqa: E402
from grader.rubric import CHECKS  # noqa: E402
from grader.sources import Submission  # noqa: E402

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")
TEMPLATE = ROOT / "student_template.py"


def run_grader(args, cwd):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "grader", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=300)


def as_notebook(source):
    """The code as a notebook: one cell per top-level definition, a magic, a "run"-tagged cell."""
    import nbformat

    lines = source.splitlines()
    cuts = [0] + [i for i, ln in enumerate(lines) if i and ln.startswith(("def ", "class "))] + [len(lines)]
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# 实验六"))
    nb.cells.append(nbformat.v4.new_code_cell("%matplotlib inline"))
    nb.cells += [nbformat.v4.new_code_cell("\n".join(lines[a:b])) for a, b in zip(cuts, cuts[1:])]
    run = nbformat.v4.new_code_cell('main(["--epochs", "50"])')
    run.metadata["tags"] = ["run"]
    nb.cells.append(run)
    return nb


def result(student, failing=(), message="wrong", status="ok", status_message="", seconds=1.0):
    """A result dict as grader/report.py makes it: every check passes except `failing` {id: message}."""
    if status != "ok":
        judged = {"status": status, "status_message": status_message, "checks": {}}
    else:
        failing = dict.fromkeys(failing, message) if not isinstance(failing, dict) else failing
        judged = {"status": "ok", "checks": {cid: {"passed": cid not in failing, "message": failing.get(cid, "")}
                                             for cid in CHECKS}}
    return report.score(Submission(student, student + ".py"), judged, seconds)


# ---------------------------------------------------------------------------------------------
# Summary: numbers
# ---------------------------------------------------------------------------------------------

def test_histogram_bins_are_tens_and_100_joins_the_last():
    bins = summary.histogram([0, 9, 10, 55, 89.5, 90, 100, 100])
    assert [(lo, hi) for lo, hi, _ in bins] == [(0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59),
                                                 (60, 69), (70, 79), (80, 89), (90, 100)]
    assert [c for *_, c in bins] == [2, 1, 0, 0, 0, 1, 0, 0, 1, 3]


def test_pass_rates_sorted_worst_first_with_the_most_common_hint():
    results = [result("a", {"4.2": "λ is 10", "5.3": "two panels"}),
               result("b", {"4.2": "λ is 10"}),
               result("c", {"4.2": "loss_G uses t1"}),
               result("d")]
    rows = summary.check_stats(results)
    assert [r["id"] for r in rows[:2]] == ["4.2", "5.3"]
    top = rows[0]
    assert (top["passed"], top["n"], top["rate"]) == (1, 4, 0.25)
    assert (top["hint"], top["hint_count"]) == ("λ is 10", 2)
    assert rows[1]["passed"] == 3 and rows[1]["hint"] == "two panels"
    assert all(r["rate"] == 1 and r["hint"] == "" for r in rows[2:])
    assert [r["id"] for r in rows[2:]] == [c for c in CHECKS if c not in ("4.2", "5.3")]  # ties: rubric order


def test_a_crash_message_is_not_taken_as_a_checks_hint():
    """Three crashed submissions repeat their status message on every check; the one graded student's
    real failure message is the hint, and the crashes still count as failures."""
    results = [result(f"crash{i}", status="crashed", status_message="the process exited") for i in range(3)]
    results.append(result("graded", {"2.2": "no Tanh"}))
    row = next(r for r in summary.check_stats(results) if r["id"] == "2.2")
    assert (row["passed"], row["hint"], row["hint_count"]) == (0, "no Tanh", 1)
    row = next(r for r in summary.check_stats(results) if r["id"] == "1.1")
    assert (row["passed"], row["hint"]) == (1, "the process exited")  # nothing better to show


def test_class_stats_statuses_step_means_and_times():
    results = [result("a", seconds=3.0), result("b", ["4.2"], seconds=9.0),
               result("z_crash", status="crashed", status_message="x", seconds=5.0),
               result("t", status="timeout", status_message="y", seconds=1.0)]
    s = summary.class_stats(results)
    assert s["n"] == 4 and s["mean"] == pytest.approx((100 + 94) / 4)
    assert s["step_means"][4] == pytest.approx((35 + 29) / 4)
    assert s["statuses"] == [("ok", 2, ["a", "b"]), ("crashed", 1, ["z_crash"]), ("timeout", 1, ["t"])]
    assert (s["seconds_median"], s["seconds_max"], s["slowest"]) == (4.0, 9.0, "b")


# ---------------------------------------------------------------------------------------------
# Summary: Markdown that students cannot inject into
# ---------------------------------------------------------------------------------------------

HOSTILE_TEXT = ('<img src=x onerror=alert(1)> **bold** [link](http://evil.example) | cell | `code` '
                '&amp; <script>x</script>\n# heading _em_ ![i](x.png) https://evil.example')


def test_md_escape_leaves_no_markdown_or_html_active():
    out = summary.md_escape(HOSTILE_TEXT)
    assert "\n" not in out
    # Read as CommonMark does: every ASCII punctuation character comes as a backslash escape (shown
    # literally), none bare; and unescaping gives the text back.
    punct, plain, i = re.compile(r"[!-/:-@\[-`{-~]"), [], 0
    while i < len(out):
        if out[i] == "\\":
            assert punct.fullmatch(out[i + 1]), out[i:i + 10]
            plain.append(out[i + 1])
            i += 2
        else:
            assert not punct.fullmatch(out[i]), out[i:i + 10]
            plain.append(out[i])
            i += 1
    assert "".join(plain) == " ".join(HOSTILE_TEXT.split())


def test_md_code_is_one_code_span_in_one_table_cell():
    out = summary.md_code(HOSTILE_TEXT + " ``` done")
    fence = re.match(r"^(`+)", out).group(1)
    assert len(fence) == 4 and out.endswith(fence)  # longer than the longest backtick run (3)
    inner = out[len(fence):-len(fence)]
    assert fence not in inner and "\n" not in inner
    assert "|" not in inner and "│" in inner  # GFM would split the cell at a pipe, escaped or not
    assert summary.md_code("`x`") == "`` `x` ``"  # a code span may not start or end with its own backtick
    assert summary.md_code("x" * 1000).endswith("…`") and len(summary.md_code("x" * 1000)) < 300


def test_summary_md_escapes_ids_and_messages(tmp_path):
    evil_id = "a_<b>*x*[y](z)"
    results = [result(evil_id, status="crashed", status_message="boom"),
               result("b", {"4.2": HOSTILE_TEXT}), result("c", {"4.2": HOSTILE_TEXT})]
    s = summary.write_summary(tmp_path, results)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.md_escape(evil_id) in md and evil_id not in md
    assert summary.md_code(HOSTILE_TEXT) + " (2×)" in md
    # Outside code spans nothing student-made stays active: no raw tag, link or emphasis.
    outside = re.sub(r"(`+).*?\1", "", md)
    assert "<img" not in outside and "<script" not in outside and "](http" not in outside
    for line in md.splitlines():  # every table row has the header's number of cells
        if line.startswith("| 4.2 |"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 7, line
    assert s["checks"][0]["id"] == "4.2"


def test_write_class_summary_never_raises(tmp_path):
    broken = [{"student": "x"}, {"student": "y"}]  # not result dicts at all
    text = summary.write_class_summary(tmp_path, broken)
    assert text.startswith("警告 / warning") and "class summary" in text
    ok = summary.write_class_summary(tmp_path, [result("a"), result("b", ["5.3", "4.2"])])
    assert "most-failed" in ok and ok.splitlines()[1].split()[0] == "4.2"  # 5.3 ties, 4.2 comes first


# ---------------------------------------------------------------------------------------------
# Similarity
# ---------------------------------------------------------------------------------------------

RENAMES = [("generated", "g_out"), ("verdict", "judgement"), ("adv", "adv_loss"), ("pixel", "l1_term"),
           ("g_total", "lossG"), ("d_total", "lossD"), ("on_real", "real_score"), ("on_fake", "fake_score"),
           ("labels", "heads"), ("picture", "img"), ("shown", "disp"), ("source", "inp"), ("target", "gt"),
           ("output", "pred"), ("blocks", "mods"), ("layers", "parts"), ("pair", "both"), ("make", "adam_for"),
           ("_pngs", "_list_png"), ("steps", "tf_list")]


def rename_and_recomment(source):
    """The same code with other local names and other comments: what a copier changes."""
    for old, new in RENAMES:
        assert re.search(rf"\b{old}\b", source), old
        source = re.sub(rf"\b{old}\b", new, source)
    source = re.sub(r"#[^\n\"']*$", "", source, flags=re.M)
    return source.replace("\n    G.eval()\n", "\n    G.eval()  # 推理模式 / inference mode\n")


def handout_follower(visualize_code):
    """Steps 1-4 pasted from the handout (as most students do), Step 5 written by the student."""
    blocks = []
    for lang in ("zh", "en"):
        blocks += similarity.handout_blocks((ROOT / "handout" / f"handout.{lang}.md").read_text(encoding="utf-8"))
    # Only the handout's versions of the reference's own solution regions (it also shows sketches, e.g.
    # train_sketch, and classes of its own, e.g. the challenge's UNet).
    import ast

    from handout import make_student as ms

    owners = {r["owner"] for r in ms.find_regions(REFERENCE.splitlines(), ast.parse(REFERENCE))}
    bodies = {k: v for k, v in similarity.handout_bodies(blocks).items() if k in owners}
    return C.replace_solutions(REFERENCE, {**bodies, "visualize": visualize_code})


OTHER_VISUALIZE = '''
G.eval()
with torch.no_grad():
    items = [dataset[i] for i in indices]
    fig, grid = plt.subplots(nrows=len(items), ncols=3, figsize=(9, 3 * len(items)), squeeze=False)
    for k, (a, b) in enumerate(items):
        y = G(a.unsqueeze(0).to(device)).cpu().float().squeeze(0)
        trio = {"T1": a, "G(T1)": y, "T2": b}
        for j, name in enumerate(trio):
            grid[k, j].imshow(trio[name][0].clamp(-1, 1).add(1).div(2).numpy(), cmap="gray", vmin=0, vmax=1)
            grid[k, j].set_title(name)
            grid[k, j].axis("off")
if title:
    fig.suptitle(title)
fig.savefig(path)
plt.close(fig)
G.train()
return path
'''


# copydetect is a TA tool (requirements-ta.txt): without it these are skipped with the install hint,
# as the data-prep and notebook extras' tests are.
TA_EXTRAS = "TA extras not installed: pip install -r requirements-ta.txt"
needs_copydetect = pytest.mark.skipif(importlib.util.find_spec("copydetect") is None, reason=TA_EXTRAS)


@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("copydetect", reason=TA_EXTRAS)
    rewrite = C.replace_solutions(REFERENCE, C.REWRITE)
    codes = {"reference": REFERENCE, "rewrite": rewrite, "rewrite_copy": rename_and_recomment(rewrite),
             "follower_a": handout_follower(C.REWRITE["visualize"]), "follower_b": handout_follower(OTHER_VISUALIZE),
             "template": TEMPLATE.read_text(encoding="utf-8")}
    pairs = similarity.compare(codes)
    return {frozenset((p["student_a"], p["student_b"])): p for p in pairs}, pairs


def score(pool, a, b):
    return pool[0][frozenset((a, b))]["score"]


def test_renamed_and_recommented_copy_is_the_top_pair(pool, request):
    by_pair, pairs = pool
    assert {pairs[0]["student_a"], pairs[0]["student_b"]} == {"rewrite", "rewrite_copy"}
    assert pairs[0]["score"] > 0.9
    planted = {frozenset(("follower_a", "rewrite")), frozenset(("follower_a", "rewrite_copy"))}  # its Step 5
    assert all(p["score"] < similarity.THRESHOLD for p in pairs[1:]
               if frozenset((p["student_a"], p["student_b"])) not in planted), \
        [(p["student_a"], p["student_b"], round(p["score"], 3)) for p in pairs[:6]]
    # The copy sits in every step (the rewrite rewrote every solution region).
    assert similarity.steps_of(pairs[0]) == "1 2 3 4 5"
    figures = ", ".join(f"{p['student_a']}~{p['student_b']} {p['score']:.3f}" for p in pairs)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"[similarity pool] {figures}")


def test_independent_correct_solutions_stay_below_the_threshold(pool):
    assert score(pool, "reference", "rewrite") < similarity.THRESHOLD


def test_handout_followers_with_their_own_step5_stay_below_the_threshold(pool):
    """Steps 1-4 from the handout plus an own Step 5: the code where given and handout code meet is
    boilerplate too, so two such students are not flagged for having followed the handout."""
    assert score(pool, "follower_a", "follower_b") < similarity.THRESHOLD
    # ... while a follower whose Step 5 is someone else's is caught, and the overlap is placed in Step 5.
    p = pool[0][frozenset(("follower_a", "rewrite"))]
    assert p["score"] > similarity.THRESHOLD
    assert p["student_a"] == "follower_a" and p["where_a"][0][1].startswith("visualize ")


def test_untouched_template_does_not_flag(pool):
    assert score(pool, "template", "reference") == 0
    assert max(score(pool, "template", o) for o in ("rewrite", "follower_a")) < similarity.THRESHOLD


def test_boilerplate_covers_the_handout_code_in_the_template():
    texts, warnings = similarity.boilerplate_texts()
    assert warnings == []
    filled = texts["template_with_handout_code.py"]
    assert "fill in visualize" in filled  # Step 5 is not in the handout: still a stub
    assert not re.search(r"fill in (PairedMedicalDataset|Generator|Discriminator|build_|train_step)", filled)
    assert filled.count("super().__init__()") == TEMPLATE.read_text(encoding="utf-8").count("super().__init__()")
    compile(filled, "filled", "exec")


def test_line_labels_name_contract_functions_and_step_sections():
    code = "# STEP 5 · x\nimport os\n\ndef visualize(G):\n    return 1\n\ndef helper():\n    pass\n"
    labels = similarity.line_labels(code)
    assert labels[1] == (5, "Step 5 section") and labels[3] == labels[4] == (5, "visualize")
    assert labels[6] == (5, "Step 5 section")
    assert similarity.where(code, [[code.index("def visualize")], [code.index("return 1") + 3]], labels) == \
        [(5, "visualize 4-5")]


@pytest.mark.slow
@needs_copydetect
def test_similarity_cli_writes_report_and_csv_and_leaves_grades_alone(tmp_path):
    """python -m grader subs --similarity --out existing_grading_folder: notebooks compared on their
    graded code, one unreadable submission skipped, grades.csv untouched."""
    import nbformat

    subs = tmp_path / "subs"
    subs.mkdir()
    rewrite = C.replace_solutions(REFERENCE, C.REWRITE)
    (subs / "alice.py").write_text(rewrite, encoding="utf-8")
    nbformat.write(as_notebook(rename_and_recomment(rewrite)), str(subs / "bob.ipynb"))
    (subs / "carol.py").write_text(REFERENCE, encoding="gbk")
    (subs / "dave").mkdir()  # nothing to compare
    out = tmp_path / "grading"
    out.mkdir()
    (out / "grades.csv").write_text("student,total\nalice,100\n", encoding="utf-8")
    r = run_grader([subs, "--similarity", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "grades.csv").read_text(encoding="utf-8") == "student,total\nalice,100\n"
    with open(out / "similarity.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [{row["student_a"], row["student_b"]} for row in rows] == [{"alice", "bob"}]
    assert float(rows[0]["score"]) > 0.9 and rows[0]["steps"] == "1 2 3 4 5"
    assert "visualize" in rows[0]["where_a"] and "visualize" in rows[0]["where_b"]
    html = (out / "similarity.html").read_text(encoding="utf-8")
    assert "alice.py" in html and "bob.py" in html and "e6sim-" not in html
    assert "alice ~ bob" in r.stdout or "bob ~ alice" in r.stdout
    assert "dave" in r.stdout  # said not compared
    assert "Traceback" not in r.stdout + r.stderr

    bad = run_grader([subs / "alice.py", "--similarity", "--out", out], cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "two" in bad.stderr


@needs_copydetect
def test_html_report_is_capped_but_csv_lists_every_flagged_pair(tmp_path, monkeypatch):
    """A class that all copied one file must not make similarity.html hold every pair of it."""
    monkeypatch.setattr(similarity, "REPORT_PAIRS", 2)
    rewrite = C.replace_solutions(REFERENCE, C.REWRITE)
    codes = {f"s{i}": rewrite.replace("generated", f"gen{i}") for i in range(4)}  # 6 pairs, all at 1.0
    pairs = similarity.compare(codes, html_path=tmp_path / "similarity.html")
    similarity.write_csv(tmp_path / "similarity.csv", pairs, similarity.THRESHOLD)
    assert len(pairs) == 6 and all(p["score"] > 0.99 for p in pairs)
    assert (tmp_path / "similarity.html").read_text(encoding="utf-8").count("Test file:") == 2
    assert len((tmp_path / "similarity.csv").read_text(encoding="utf-8").splitlines()) == 1 + 6


def test_similarity_without_copydetect_says_how_to_install_it(tmp_path):
    """copydetect is a TA tool (requirements-ta.txt), not in the students' requirements: without it
    --similarity ends in one bilingual line naming the file to install, exit code 2, no traceback."""
    for name in ("alice", "bob"):
        (tmp_path / f"{name}.py").write_text(REFERENCE, encoding="utf-8")
    blocked = ("import sys; sys.modules['copydetect'] = None  # as if not installed\n"
               "from grader.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", blocked, str(tmp_path / "alice.py"), str(tmp_path / "bob.py"),
                        "--similarity", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "copydetect" in r.stderr and "pip install -r requirements-ta.txt" in r.stderr and "相似度" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2
