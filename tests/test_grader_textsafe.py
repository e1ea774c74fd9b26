"""Student-controlled text (file names, prints, exception messages) reaches no output with its
control or bidi characters live: each is shown escaped (grader/textsafe.py), on the console,
in feedback.md, grades.csv and results.json. Ids are NFKC-normalised and case-folded before the
uniqueness test, as macOS's file system compares names."""
import csv
import json
import unicodedata

import pytest

from conftest import ROOT, run_grader
from grader import report
from grader.sources import Submission, assign_ids
from grader.textsafe import BIDI, is_visible, visible
from grader_cases import attacks as A

DANGEROUS = ["\x1b", "\x07", "\r", "\x9b", "\x00", "\x08", "\u2028", *BIDI]


def live_controls(text):
    """The dangerous characters present, unescaped, in text."""
    return sorted({repr(c) for c in text if c in DANGEROUS})


# ---- the sanitiser ------------------------------------------------------------------------------

def test_visible_escapes_controls_and_bidi_keeps_the_rest():
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("x\ry") == "x\\ry"
    assert visible("\x9b31m") == "\\x9b31m"
    assert visible("\u202eabc\u202c") == "\\u202eabc\\u202c"
    assert visible("行一\n\t行二 ✓") == "行一\n\t行二 ✓"  # layout and every printable character stay
    assert visible("a\nb\tc", one_line=True) == "a\\nb\\tc"
    assert visible("\udcff") == "\\udcff"  # a lone surrogate cannot break a UTF-8 write
    assert live_controls(visible(A.ESCAPES)) == []
    assert is_visible(visible(A.ESCAPES)) and not is_visible(A.ESCAPES)


def forged_result():
    """A result built from a judge reply and a submission full of escapes."""
    sub = Submission("evil", "/subs/evil" + A.ESCAPES, file=None, label="x" + A.ESCAPES + ".py",
                     skipped=[{"file": "y\u202e.py", "reason": "kit copy\x1b[2J"}], notes=["n\x1b]0;t\x07"])
    judged = {"status": "ok", "status_message": "bad " + A.ESCAPES, "log": "printed " + A.ESCAPES,
              "protection": ["landlock ABI 99\x1b[2J"],
              "checks": {"1.1": {"passed": False, "message": "raised " + A.ESCAPES},
                         "1.2": {"passed": True, "message": ""}},
              "notes": {"1.2": ["note " + A.ESCAPES]}}
    return report.score(sub, judged, 1.0)


def test_every_output_of_a_forged_result_shows_escapes_escaped(tmp_path):
    r = forged_result()
    outputs = {
        "feedback.md": report.feedback_md(r),
        "results.json": json.dumps(report.gradescope(r), ensure_ascii=False),
        "console": "\n".join([report.console_line(r), report.step_table(r), report.failed_checks_text(r)]),
    }
    report.write_outputs(tmp_path, [r])
    outputs["grades.csv"] = (tmp_path / "grades.csv").read_text(encoding="utf-8")
    for name, text in outputs.items():
        assert live_controls(text) == [], name
    assert "\\x1b[2J" in outputs["feedback.md"] and "\\u202e" in outputs["feedback.md"]  # shown, not dropped
    assert "\\x1b" in outputs["grades.csv"]  # the file column names the file, escaped


# ---- ids ----------------------------------------------------------------------------------------

def test_ids_are_nfkc_and_case_folded_before_the_uniqueness_test():
    name = "张晓明é"
    subs = [Submission(s, "o") for s in
            ["bob", "ｂｏｂ", "BOB", unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name),
             "ＣＯＮ", "Ｇrades.csv"]]
    ids = [s.student for s in assign_ids(subs)]
    assert ids[:3] == ["bob", "bob_2", "BOB_3"]
    assert ids[3] == unicodedata.normalize("NFC", name) and ids[4] == ids[3] + "_2"
    assert ids[5] == "CON_" and ids[6] == "Grades.csv_"  # a Windows device and a reserved output name
    keys = [unicodedata.normalize("NFKC", i).casefold() for i in ids]
    assert len(set(keys)) == len(keys)


# ---- graded for real ----------------------------------------------------------------------------

def write_attacks(folder, where):
    """For the shared attack batch (conftest.attacked): a folder whose one file has escapes in its
    name, printing and raising escapes; a correct submission is graded beside it (untouched_reference)."""
    evil = folder / "t_escapes"
    evil.mkdir()
    (evil / ("student_template" + "\x1b[2J\u202e" + ".py")).write_text(
        A.control_characters((ROOT / "experiment6.py").read_text(encoding="utf-8")), encoding="utf-8")


@pytest.mark.slow
def test_escapes_reach_no_output_of_a_batch(attacked):
    b = attacked
    assert b.scores("untouched_reference")["total"] == 100, b.explain("untouched_reference")
    assert b.scores("t_escapes")["step3"] < 10 and b.scores("t_escapes")["step4"] == 35, b.explain("t_escapes")
    texts = {"console": b.proc.stdout + b.proc.stderr,
             "grades.csv": (b.out / "grades.csv").read_text(encoding="utf-8"),
             "feedback.md": b.feedback("t_escapes"),
             "results.json": json.dumps(b.results("t_escapes"), ensure_ascii=False)}
    summary = b.out / "summary.md"
    if summary.exists():
        texts["summary.md"] = summary.read_text(encoding="utf-8")
    for name, text in texts.items():
        assert live_controls(text) == [], name
    assert "\\x1b[2J" in texts["feedback.md"]  # the student sees what they raised, escaped
    with open(b.out / "grades.csv", encoding="utf-8", newline="") as f:
        row = next(r for r in csv.reader(f) if r[0] == "t_escapes")
    assert row[-1].startswith("student_template\\x1b[2J\\u202e"), row


@pytest.mark.slow
def test_one_file_on_the_console_shows_escapes_escaped(tmp_path):
    """A one-file run prints the status message and the file name to the TA's terminal."""
    evil = tmp_path / ("hw" + "\x1b]0;pwned\x07\u202e" + ".py")
    evil.write_text(f"def build_losses():\n    raise ValueError({A.ESCAPES!r})\n", encoding="utf-8")
    proc, _ = run_grader([evil, "--out", tmp_path / "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    assert "ValueError" in console and "\\x1b[2J" in console, console[-3000:]
    assert live_controls(console) == [], console[-3000:]
