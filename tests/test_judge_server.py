"""Warm judges (grader/judge_server.py): a batch's judges forked from one server that imported torch
once behave as judges started afresh, and the CLI copes with a server that cannot fork or dies.

Fast tier: the server's own protocol (a judge that exits at once: its exit code and its log).
Slow tier: a judge that runs (its own session and name, the CLI's backstop kills it), a server lost
while its judge runs (that submission is judged afresh, in full), and every judge of the session's
default batch forked (the figures in the note of this change: about 2 s of CPU saved per judge).
"""
import os
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from grader import cli, judge_server
from grader.settings import Settings

LINUX_WARM, WHY = judge_server.available()
pytestmark = pytest.mark.skipif(not LINUX_WARM, reason=f"no warm judges here: {WHY}")


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "PACKAGE_PARENT", ROOT)
    s = judge_server.JudgeServer(cli.judge_env(), str(tmp_path / "server.log"), batch="e6-test-batch")
    yield s
    s.close()


def test_a_forked_judge_exits_with_its_code_and_writes_its_log(server, tmp_path):
    helped = server.start(["--help"], tmp_path, tmp_path / "help.log")
    wrong = server.start(["--no-such-option"], tmp_path, tmp_path / "wrong.log")
    assert helped.wait(120) == 0 and wrong.wait(120) == 2
    assert {helped.pid, wrong.pid}.isdisjoint({server.proc.pid, os.getpid()})
    assert "usage:" in (tmp_path / "help.log").read_text(encoding="utf-8")
    assert "grader.judge: error:" in (tmp_path / "wrong.log").read_text(encoding="utf-8")
    server.close()
    assert server.proc.returncode == 0, (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
    with pytest.raises(OSError):
        server.start(["--help"], tmp_path, tmp_path / "late.log")


def test_settings_can_turn_warm_judges_off(tmp_path):
    config = Settings.from_environment({"GRADER_NO_WARM_JUDGES": "1"})
    assert config.no_warm_judges
    assert judge_server.start_for_batch(cli.judge_env(), tmp_path, 5, config, small_container=False) is None
    assert judge_server.start_for_batch(cli.judge_env(), tmp_path, 1, Settings(), small_container=False) is None
    assert judge_server.start_for_batch(cli.judge_env(), tmp_path, 5, Settings(), small_container=True) is None


def _judge_alive(pid):
    """A forked judge still running (a killed one may linger as a zombie of whoever adopted it)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return comm == "e6-judge" and state not in ("Z", "X")


def _submission(tmp_path, text):
    sub = tmp_path / "submission.py"
    sub.write_text(text, encoding="utf-8")
    return SimpleNamespace(clean=sub)


@pytest.mark.slow
def test_a_running_forked_judge_is_its_own_session_and_the_backstop_kills_it(server, tmp_path, monkeypatch):
    """A submission whose import sleeps: the judge waits for its worker; what the CLI's backstop does
    (kill_tree, then reclaim_sandbox) ends the judge and everything it started."""
    sub = _submission(tmp_path, "import time\ntime.sleep(600)\n")
    config = Settings(timeout=300).resolved()
    result = tmp_path / "j" / "result.json"
    result.parent.mkdir()
    j = server.start(cli.judge_arguments(sub, config, result), result.parent, result.parent / "judge.log")
    assert Path(f"/proc/{j.pid}/comm").read_text().strip() == "e6-judge"
    assert os.getsid(j.pid) == j.pid and os.getpgid(j.pid) == j.pid
    assert f"grader.judge_server\0--batch\0e6-test-batch".encode() in Path(f"/proc/{j.pid}/cmdline").read_bytes()
    from grader import osfeatures

    osfeatures.kill_tree(j)
    assert j.wait(60) == -signal.SIGKILL
    cli.reclaim_sandbox(result, config)
    assert not _judge_alive(j.pid)


@pytest.mark.slow
def test_a_server_lost_while_its_judge_runs_means_that_submission_is_judged_afresh(server, tmp_path):
    sub = _submission(tmp_path, (ROOT / "experiment6.py").read_text(encoding="utf-8"))
    config = Settings().resolved()
    started = []
    real_start = server.start

    def start_then_die(*args):
        j = real_start(*args)
        started.append(j.pid)
        server.proc.kill()  # the OOM killer, say, picks the server while the judge runs
        return j

    server.start = start_then_die
    workdir = tmp_path / "work"
    workdir.mkdir()
    data = cli.run_judge(sub, config, workdir, server)
    assert data["status"] == "ok" and data["judge"] == "fresh", data
    assert len(data["checks"]) == 31 and all(c["passed"] for c in data["checks"].values()), data["checks"]
    assert not _judge_alive(started[0]), "the lost judge still runs"
    with pytest.raises(OSError):
        real_start(["--help"], tmp_path, tmp_path / "after.log")


@pytest.mark.slow
def test_every_judge_of_the_default_batch_was_forked(graded):
    how = {s: graded.results(s)["extra_data"]["judge"] for s in graded.rows}
    judged = {s: h for s, h in how.items() if h}  # "" where no judge ran (a syntax error, nothing gradable)
    assert len(judged) > 10 and set(judged.values()) == {"forked"}, how
