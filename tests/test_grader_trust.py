"""The grader's trust boundary (grader/README.md, "Trust model"), attacked one class at a time by
submissions that have read the grader (tests/grader_cases/attacks.py), each graded in the same batch
as an untouched copy of the reference, which must still get 100.

Two `python -m grader` calls: the shared attack batch (tests/conftest.py `attacked`: a copy of the
grader, small --timeout/--budget/scratch quota, with whatever this machine offers: Landlock and, as
root with an interpreter an unprivileged user can run, the separate-uid layer), which also grades
test_grader.py's hostile submissions, and, as root only, a small batch with Landlock switched off so
that layer 2 alone must hold (its own call: it needs root and GRADER_NO_LANDLOCK=1). Pure parts (ids,
CSV cells, fences, .npz header checks) have fast unit tests below.
"""
import csv
import io
import os
import re
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import (ATTACK_BUDGET, ATTACK_SCRATCH_MB, ATTACK_TIMEOUT, ROOT, Batch, GraderCall, background_result,
                      copy_kit)
from grader_cases import attacks as A
from grader_cases import cases as C

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")
FULL = {"total": 100, **C.POINTS}
MARK = "e6trust-orphan-%d" % os.getpid()  # argv of the detached sleepers, to find survivors
LIFE = 900  # how long the orphans would live: longer than the whole batch


def survivors(marker):
    """pids whose command line holds marker (detached processes that outlived the batch)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def alive_worker_copy(pid):
    try:
        return b"worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def write_attacks(folder, where, life=LIFE):
    """This file's attacks for the shared attack batch (conftest.attacked); the link attack aims at
    the untouched reference's original file (where.reference)."""
    files = {
        # Graded first (ids are sorted, and the odd names below cost no time): it sleeps through its
        # whole --budget, so the other job slots grade everything else meanwhile.
        "a_staller": A.staller(REFERENCE, where.timeout - 3),
        "t_plant_links": A.plant_links(REFERENCE, where.reference, A.exchange_names(where.grader)),
        "t_npz_bomb": A.npz_bomb(REFERENCE, A.make_npz_bomb()),
        "t_png_bomb": A.png_bomb(REFERENCE),
        "t_deep_expression": A.deep_expression(),
        "t_markdown": A.markdown_injection(REFERENCE),
        "t_orphans": A.orphans(REFERENCE, MARK, life),
        "t_disk_fill": A.disk_fill(REFERENCE),
    }
    for name, src in files.items():
        (folder / f"{name}.py").write_text(src, encoding="utf-8")
    # Ids that collide after cleaning, are reserved output names, are too long, or look like formulas.
    # Their content is a syntax error, so they cost no grading time.
    bad = "def broken(:\n"
    (folder / "alice").mkdir()
    (folder / "alice" / "student_template.py").write_text(bad, encoding="utf-8")
    for stem in ["alice", "alice_2", "Alice", "grades.csv", "summary.md", "similarity.html", "-rf", "=1+2",
                 "@SUM(A1)", "+cmd", "x" * 240, "x" * 240 + "y", "张" * 80]:
        (folder / f"{stem}.py").write_text(bad, encoding="utf-8")


def after_attacks():
    """Called by conftest.attacked right after the grader call."""
    return survivors(MARK)


def build_main(subs, safe_root, timeout=ATTACK_TIMEOUT, life=LIFE, grader_dir=ROOT / "grader"):
    """The attacks next to an untouched reference, as the attack batch holds them (for
    tests/benchmark_trust.py, which grades them with another copy of the grader); returns the victim."""
    subs.mkdir(parents=True)
    victim = subs / "untouched_reference.py"
    victim.write_text(REFERENCE, encoding="utf-8")
    write_attacks(subs, SimpleNamespace(tmp=safe_root, grader=grader_dir, reference=victim, timeout=timeout), life)
    return victim


@pytest.fixture(scope="module")
def main_batch(attacked):
    b = attacked
    b.victim, b.after_survivors = b.where.reference, b.survivors[__name__]
    return b


@pytest.mark.slow
def test_correct_submission_gets_100_next_to_every_attack(main_batch):
    assert main_batch.scores("untouched_reference") == FULL, main_batch.explain("untouched_reference")


# ---- class 1: the exchange ------------------------------------------------------------------

@pytest.mark.slow
def test_planted_links_and_fifos_are_never_followed(main_batch):
    b = main_batch
    assert b.victim.read_text(encoding="utf-8") == REFERENCE, "the judge wrote through a planted link"
    got = b.scores("t_plant_links")
    assert got["total"] < 100 and b.rows["t_plant_links"]["status"] != "grader_error", b.explain("t_plant_links")
    assert got["step5"] < 20, b.explain("t_plant_links")  # its figure was a link
    assert "not a regular file" in b.said("t_plant_links"), b.explain("t_plant_links")


@pytest.mark.slow
def test_npz_bomb_is_refused_from_its_headers(main_batch):
    b = main_batch
    assert b.rows["t_npz_bomb"]["status"] != "grader_error", b.explain("t_npz_bomb")
    assert b.scores("t_npz_bomb")["total"] < 50, b.explain("t_npz_bomb")
    assert "too large once decompressed" in b.said("t_npz_bomb"), b.explain("t_npz_bomb")


@pytest.mark.slow
def test_png_bomb_is_refused_before_decoding(main_batch):
    b = main_batch
    got = b.scores("t_png_bomb")
    assert {k: got[k] for k in ("step1", "step2", "step3", "step4")} == \
           {k: FULL[k] for k in ("step1", "step2", "step3", "step4")}, b.explain("t_png_bomb")
    assert got["step5"] <= 3, b.explain("t_png_bomb")  # at most 5.6 (import hygiene) survives
    assert "像素" in b.said("t_png_bomb") and "pixels" in b.said("t_png_bomb"), b.explain("t_png_bomb")


# ---- class 2: the batch always finishes -----------------------------------------------------

@pytest.mark.slow
def test_deep_expression_is_that_students_grader_error(main_batch):
    b = main_batch
    assert b.rows["t_deep_expression"]["status"] == "grader_error", b.explain("t_deep_expression")
    assert "RecursionError" in b.said("t_deep_expression")


@pytest.mark.slow
def test_ids_unique_bounded_not_reserved(main_batch):
    b = main_batch
    ids = list(b.rows)
    assert len(ids) == len(list((b.tmp / "submissions").iterdir())), ids  # alice/, 13 odd names, ...: nobody lost
    assert len({i.casefold() for i in ids}) == len(ids), ids
    for i in ids:
        assert len(i.encode("utf-8")) <= 120, i
        assert i.casefold() not in {"grades.csv", "summary.md", "similarity.html"}, i
        assert not i.startswith(("-", ".", "=", "+", "@")), i
        assert (b.out / i / "results.json").is_file(), i
    # Sorted discovery: Alice.py, alice/, alice.py, alice_2.py (unique ignoring case, alice_2 kept for its owner)
    assert {"Alice", "alice_3", "alice_4", "alice_2"} <= set(ids), ids


# ---- class 4: processes, disk, time ---------------------------------------------------------

@pytest.mark.slow
def test_detached_grandchildren_are_killed(main_batch):
    b = main_batch
    # Processes that outlive the import are an import side effect: 5.6 may say so (it does where the
    # worker sees them as its descendants: a PID namespace), and nothing else may cost a point.
    lost = b.lost("t_orphans")
    assert lost <= {"5.6"}, b.explain("t_orphans")
    if lost:
        assert "still running after the import" in b.per_check("t_orphans")["5.6"][2], b.explain("t_orphans")
    assert b.after_survivors == [], f"detached processes outlived the batch: {b.after_survivors}"
    pids = [int(p) for p in re.findall(r"ORPHAN_PID=(\d+)", b.feedback("t_orphans") + b.said("t_orphans"))]
    assert not any(alive_worker_copy(p) for p in pids), pids


@pytest.mark.slow
def test_disk_fill_stops_at_the_quota(main_batch):
    b = main_batch
    assert b.scores("untouched_reference") == FULL
    fb = b.feedback("t_disk_fill")
    filled = [int(x) for x in re.findall(r"FILLED=(\d+)", fb)]
    # Either the write failed at the quota (tmpfs / RLIMIT_FSIZE) and the code went on, or the monitor
    # stopped the worker; never more than the quota (+ one 2 MB file, + one sampling interval).
    assert all(x <= (ATTACK_SCRATCH_MB + 8) * 2 ** 20 for x in filled), (filled, b.explain("t_disk_fill"))
    assert filled or b.scores("t_disk_fill")["step3"] < 10, b.explain("t_disk_fill")


@pytest.mark.slow
def test_stalling_in_every_call_hits_the_total_budget(main_batch):
    b = main_batch
    assert b.rows["a_staller"]["status"] == "timeout", b.explain("a_staller")
    assert b.scores("a_staller")["total"] < 100
    assert "total time budget" in b.said("a_staller"), b.explain("a_staller")


# ---- class 5: outputs -----------------------------------------------------------------------

def outside_fences(md):
    """The lines of md that a CommonMark renderer shows as markdown (not inside a fenced block)."""
    out, fence = [], None
    for line in md.splitlines():
        s = line.strip()
        m = re.match(r"(`{3,}|~{3,})", s)
        if fence is None:
            if m:
                fence = m.group(1)
            else:
                out.append(line)
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and s == m.group(1):
            fence = None
    return out


@pytest.mark.slow
def test_printed_and_raised_markdown_stays_inside_fences(main_batch):
    b = main_batch
    md = b.feedback("t_markdown")
    assert A.FAKE in md  # it is shown ...
    shown = "\n".join(outside_fences(md))
    assert A.FAKE not in shown and "<img" not in shown, shown[-3000:]  # ... but only as code
    assert b.scores("t_markdown")["step3"] < 10 and b.scores("t_markdown")["step4"] == 35
    data = b.results("t_markdown")
    assert data["output_format"] == "text" and data["extra_data"].get("protection")


@pytest.mark.slow
def test_grades_csv_has_no_formula_cells(main_batch):
    with open(main_batch.out / "grades.csv", encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row


# ---- class 6 / layer 2: root without Landlock -------------------------------------------------

def user_layer_state():
    if os.name != "posix" or os.geteuid() != 0:
        return "not root: the separate-user layer needs root"
    sys.path.insert(0, str(ROOT))
    from grader import sandbox

    ok, why = sandbox.probe_user(sys.executable)
    return "" if ok else why


def root_grading(factory, _param):
    """The root batch (a background job, tests/conftest.py)."""
    why = user_layer_state()
    if why:
        pytest.skip(f"layer 2 unavailable here: {why} (.ci/run builds a venv it can use)")
    tmp = factory.mktemp("trust_root")
    kit = copy_kit(tmp / "kit")  # the grader runs from a copy: the writer below aims at it
    subs, out = tmp / "subs", tmp / "out"
    subs.mkdir()
    # Let the worker's uid reach (and so try to write) the outputs: only permissions may stop it.
    for d in (tmp, tmp.parent, tmp.parent.parent):
        os.chmod(d, os.stat(d).st_mode | 0o711)
    files = {
        # Graded first, next to r_forger: looks for its neighbour's inputs (class 1).
        "r_a_reader": A.neighbour_reader(REFERENCE, MARK + "n"),
        "r_forger": A.protection_forger(REFERENCE),  # class 7
        "r_judge_work": A.judge_work(REFERENCE),  # class 3
        "r_reference": REFERENCE,
        "r_writer": A.results_writer(REFERENCE, out, kit / "grader", MARK + "w", LIFE),
        "r_orphans": A.orphans(REFERENCE, MARK + "r", LIFE),
    }
    for name, src in files.items():  # every file carries a line only a reader of that file could quote
        (subs / f"{name}.py").write_text(src + f"\n# {MARK}n-{name}\n", encoding="utf-8")
    call = GraderCall([subs, "--out", out, "--jobs", "2", "--timeout", ATTACK_TIMEOUT, "--budget", ATTACK_BUDGET],
                      tmp, pythonpath=kit,
                      env_extra={"GRADER_NO_LANDLOCK": "1", "GRADER_SCRATCH_MB": str(ATTACK_SCRATCH_MB)})
    proc, seconds, cpu = call.wait()
    b = Batch(out, proc, seconds)
    b.kit, b.after_survivors = kit, survivors(MARK + "w") + survivors(MARK + "r")
    b.report_lines = [f"[grader trust root batch] {len(files)} submissions in {seconds:.1f} s wall, {cpu:.0f} s CPU "
                      f"(GRADER_NO_LANDLOCK=1)"]
    return b


BACKGROUND_JOBS = {"root_batch": root_grading}


@pytest.fixture(scope="module")
def root_batch(request):
    return background_result(request)


@pytest.mark.slow
def test_root_without_landlock_runs_workers_as_their_own_user(root_batch):
    b = root_batch
    for s in ("r_reference", "r_writer", "r_orphans"):
        if s == "r_reference":
            assert b.scores(s) == FULL, b.explain(s)
        else:  # their detached processes are caught by import hygiene (5.6) at most: nothing else is lost
            got = b.scores(s)
            assert {k: v for k, v in got.items() if k not in ("total", "step5")} == \
                {k: v for k, v in FULL.items() if k not in ("total", "step5")}, b.explain(s)
            assert got["step5"] >= FULL["step5"] - 3, b.explain(s)
        data = b.results(s)
        prot = data["extra_data"]["protection"]
        assert "separate uid" in prot and "landlock" not in prot, prot
        assert [t["name"] for t in data["tests"]][0] != "forged"
    assert b.after_survivors == [], b.after_survivors
    assert not (b.kit / "grader" / "PWNED").exists() and not (b.out / "PWNED").exists()
    with open(b.out / "grades.csv", encoding="utf-8", newline="") as f:
        assert next(csv.reader(f))[0] == "student"
    assert "Warning: student code is not sandboxed" not in b.proc.stderr
    assert "protection: separate uid per worker" in b.proc.stderr  # which layer ran, said once


@pytest.mark.slow
def test_root_without_landlock_inputs_are_readable_by_their_own_slot_only(root_batch):
    """Class 1: a submission that finds its neighbours' workers (/proc/*/cmdline, the folders next to
    its own) cannot read their in/submission.py: in/ is root:slot-group 0750 and its uid has no other group."""
    b = root_batch
    m = re.search(r"NEIGHBOURS_SEEN=(\d+) STOLEN=\[([^\]]*)\]", b.said("r_a_reader"))
    assert m, b.explain("r_a_reader")
    assert int(m.group(1)) >= 1, "the reader found no neighbour to try: the attack did not run"
    assert m.group(2) == "", f"it read a neighbour's submission: {m.group(2)}"


@pytest.mark.slow
def test_protection_is_what_the_judge_established_not_the_workers_word(root_batch):
    """Class 7: the worker's import reply claims "landlock ABI 99"; results.json says what the judge set up."""
    b = root_batch
    prot = b.results("r_forger")["extra_data"]["protection"]
    assert "landlock" not in prot and "99" not in prot and "separate uid" in prot, prot
    assert b.scores("r_forger") == FULL, b.explain("r_forger")  # forging a word gains and costs nothing


@pytest.mark.slow
def test_the_judges_own_work_per_reply_is_bounded(root_batch):
    """Class 3: a visualize reply forged to make the judge recompute G on 8 x 16 images (64 MB of arrays)
    is refused from its headers; everything else of that submission is graded as usual."""
    b = root_batch
    assert b.rows["r_judge_work"]["status"] not in ("grader_error", "timeout"), b.explain("r_judge_work")
    assert "too large once decompressed" in b.said("r_judge_work"), b.explain("r_judge_work")
    got = b.scores("r_judge_work")
    assert {k: got[k] for k in ("step1", "step2", "step3", "step4")} == \
           {k: FULL[k] for k in ("step1", "step2", "step3", "step4")}, b.explain("r_judge_work")


def test_worker_told_landlock_is_required_refuses_to_run_without_it(tmp_path):
    """Class 7, fail closed: a worker that cannot apply the Landlock the judge promised (here: no sandbox
    folder to restrict itself to) exits with its own code before reading a request or any student code."""
    import json
    import subprocess

    from grader.worker_process import SANDBOX_REFUSED

    env = dict(os.environ, GRADER_WORKER=json.dumps({"landlock": "required"}))
    r = subprocess.run([sys.executable, "-I", str(ROOT / "grader" / "worker.py")], input=b"token\n", env=env,
                       capture_output=True, timeout=300, cwd=tmp_path)
    assert r.returncode == SANDBOX_REFUSED, (r.returncode, r.stderr[-2000:])
    assert b"Landlock could not be applied" in r.stderr and b"ready" not in r.stdout


STUCK_JUDGE = """
import os, subprocess, sys, time
from grader.settings import Settings
from grader.worker_process import WorkerProcess
sub, result, config = sys.argv[1:4]
w = WorkerProcess(sub, Settings.from_json(config).resolved(), record=os.path.join(os.path.dirname(result), "sandbox.json"))
w.start()
# what a submission's detached grandchild is: a process of the slot's uid in a session of its own
subprocess.Popen(["sleep", "900"], user=w.slot_uid, group=w.slot_uid, extra_groups=[], start_new_session=True, cwd="/")
time.sleep(3600)  # stuck (in a check, in C code, stopped): only the CLI's backstop ends it
"""


@pytest.mark.slow
@pytest.mark.parametrize("reclaim", [True, False], ids=["cli_reclaims", "without_reclaim"])
def test_after_the_backstop_kills_a_judge_no_process_or_mount_of_its_slot_is_left(tmp_path, monkeypatch, reclaim):
    """Class 3: a judge killed by the CLI's backstop before its own clean-up leaves its worker's uid
    running and its tmpfs mounted unless the CLI reclaims them (`without_reclaim` shows that it would)."""
    why = user_layer_state()
    if why:
        pytest.skip(f"layer 2 unavailable here: {why}")
    import json

    from grader import cli, sandbox
    from grader.settings import Settings

    sub = tmp_path / "submission.py"
    sub.write_text(REFERENCE, encoding="utf-8")
    config = Settings(contain="user", scratch_mb=16).resolved()
    monkeypatch.setattr(cli, "judge_command", lambda s, c, r: [sys.executable, "-c", STUCK_JUDGE, str(s.clean), str(r),
                                                                 c.to_json()])
    monkeypatch.setattr(cli, "backstop_seconds", lambda c: 20)
    if not reclaim:
        monkeypatch.setattr(cli, "reclaim_sandbox", lambda *a: None)
    got = cli.run_judge(SimpleNamespace(clean=sub), config, tmp_path)
    assert got["status"] == "timeout", got
    (record,) = tmp_path.glob("e6j-*/sandbox.json")
    rec = json.loads(record.read_text(encoding="utf-8"))
    left = (sandbox._uid_pids(rec["uid"]), rec["root"] in Path("/proc/mounts").read_text(), Path(rec["root"]).exists())
    if not reclaim:
        sandbox.reclaim(record)  # clean up after the demonstration
        assert left[0] and left[1] and left[2], left
        return
    assert left == ([], False, False), left

# ---- pure parts -------------------------------------------------------------------------------

def test_assign_ids_unique_stable_bounded():
    from grader.sources import Submission, assign_ids

    names = ["alice", "alice", "alice_2", "Alice", "grades.csv", "summary.md", "-x", "=1", "..", "", "CON",
             "a" * 400, "a" * 400, "张" * 200]
    first = [s.student for s in assign_ids([Submission(n, "") for n in names])]
    again = [s.student for s in assign_ids([Submission(n, "") for n in names])]
    assert first == again
    assert len({f.casefold() for f in first}) == len(first), first
    assert first[:3] == ["alice", "alice_3", "alice_2"]
    assert all(len(f.encode("utf-8")) <= 110 for f in first)
    assert "grades.csv" not in first and "summary.md" not in first and "CON" not in first
    assert all(f and not f.startswith(("-", ".", "=")) for f in first), first


def test_csv_cells_never_start_a_formula():
    from grader.report import csv_cell

    for bad in ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", " =1", "＝1"]:
        assert csv_cell(bad).startswith("'"), bad
    assert csv_cell("alice") == "alice" and csv_cell(15) == 15


def test_fence_cannot_be_closed_from_inside():
    from grader.report import fence

    text = "a\n```\n`````` x\n````````````\nb"
    md = "\n".join(["before", *fence(text), "after"])
    assert outside_fences(md) == ["before", "after"]
    assert outside_fences("\n".join(fence("x", "  "))) == []


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_check_npz_reads_headers_only():
    from grader.worker_process import CallFailed, check_npz

    assert check_npz(_npz(a=np.zeros((2, 3), np.float32)))["a"][1] == (2, 3)
    with pytest.raises(CallFailed, match="too large"):  # 200 MB of zeros, a few hundred KB stored
        check_npz(_npz(a=np.zeros(25 * 2 ** 20, np.float64)))
    with pytest.raises(CallFailed, match="type"):
        check_npz(_npz(a=np.array(["x"])))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a header that claims more than the member holds
        h = io.BytesIO()
        np.lib.format.write_array_header_1_0(h, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 9,)})
        z.writestr("a.npy", h.getvalue() + b"\0" * 64)
        z.writestr("b.txt", b"x")
    with pytest.raises(CallFailed):
        check_npz(buf.getvalue())
    with pytest.raises(CallFailed):
        check_npz(b"not a zip")
