"""Warm judges: one server per batch imports torch, pytest and the grader once, then forks a judge for
each submission, instead of every judge importing them afresh: about 1.5 s of CPU less per submission,
a sixth of a grading (figures in grader/README.md, "Known limitations").

    python -m grader.judge_server --batch OUT   (started by grader/cli.py; JSON lines on stdin and stdout;
                                                 OUT, the batch's --out, only tells `ps` whose server it is)

A forked judge runs the same program as `python -m grader.judge`: judge.main(argv), in a process of
its own session (the CLI's backstop kills its group), with its own working folder and log, in the
environment the CLI gives every judge (the server was started in it). It starts from the server's
memory, which holds imported modules and nothing of any submission: the server never runs a check
and never reads a reply. Only the CLI holds the server's pipes (there is no socket a worker could
connect to), and the server is non-dumpable like every judge (grader/fence.py), so no process of the
same uid may ptrace it or read its memory.

Used for a batch of two or more submissions where os.fork and os.pidfd_open exist (Linux) and not in a
small container (cli.malloc_env: memory counts more than CPU there), unless GRADER_NO_WARM_JUDGES=1.
Elsewhere, and for a single submission, the CLI starts `python -m grader.judge` as before. If the
server cannot start a judge, or dies, the CLI starts that judge (and every later one) afresh.

Protocol, one JSON object per line:
    CLI -> server   {"id": N, "argv": [judge arguments], "cwd": FOLDER, "log": FILE}
    server -> CLI   {"id": N, "pid": PID}     the judge runs, in its own session, writing its log
                    {"id": N, "exit": CODE}   it ended; CODE as subprocess's returncode (-9: SIGKILL)
                    {"id": N, "error": TEXT}  it could not be started
"""
import gc
import json
import os
import subprocess
import sys
import threading

# What every judge imports before it reads its submission (grader/judge.py and the checks): torch alone
# is most of a judge's start-up.
PRELOAD = ("torch", "numpy", "PIL.Image", "pytest", "grader.judge", "grader.worker_process", "grader.check_plugin",
           "grader.expected", "grader.nets")


START_SECONDS = 120  # a fork and a judge's set-up take milliseconds; this is only for a stuck server


def available():
    """(True, "") where judges can be forked from a warm server, else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, "not Linux"
    if not hasattr(os, "fork"):
        return False, "no os.fork"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False, "no pidfd_open (Python 3.9+ on Linux 5.3+)"
    return True, ""


# ---------------------------------------------------------------------------------------------
# The CLI's end
# ---------------------------------------------------------------------------------------------

class WarmJudge:
    """A forked judge as the CLI sees it: the part of subprocess.Popen that cli.run_judge uses."""

    def __init__(self, rid):
        self.id = rid
        self.pid = self.returncode = self.error = None
        self.lost = False  # the server ended before this judge did: its exit code is unknown
        self.started, self.ended = threading.Event(), threading.Event()

    def wait(self, timeout=None):
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"judge {self.pid}", timeout)
        return self.returncode

    def kill(self):
        if self.pid is not None and not self.ended.is_set():  # never a pid the server may have reaped
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass


class JudgeServer:
    """Started by the CLI once per batch; start() forks one judge, from any of the CLI's threads."""

    def __init__(self, env, log_path, batch=""):
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "grader.judge_server", "--batch", str(batch)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, env=env, cwd=os.path.dirname(log_path),
                                         start_new_session=True)
        self._lock = threading.Lock()
        self._judges, self._next, self.dead = {}, 0, False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def start(self, argv, cwd, log):
        """A running WarmJudge, or OSError when the server could not start it (start it afresh then)."""
        with self._lock:
            if self.dead:
                raise OSError("the judge server has ended")
            self._next += 1
            judge = self._judges[self._next] = WarmJudge(self._next)
            line = json.dumps({"id": judge.id, "argv": list(argv), "cwd": str(cwd), "log": str(log)})
            try:
                self.proc.stdin.write(line.encode("utf-8") + b"\n")
                self.proc.stdin.flush()
            except OSError as e:
                self._judges.pop(judge.id, None)
                raise OSError(f"the judge server has ended: {e}") from None
        if not judge.started.wait(START_SECONDS):  # a server this slow to fork is of no use: judges start afresh
            with self._lock:
                self.dead = True
            raise OSError(f"the judge server did not start a judge within {START_SECONDS} s")
        if judge.pid is None:
            raise OSError(judge.error or "the judge server has ended")
        return judge

    def _read(self):
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
                rid = msg["id"]
            except (ValueError, KeyError, TypeError):
                continue
            with self._lock:
                judge = self._judges.get(rid)
                if judge is None:
                    continue
                if "pid" in msg:
                    judge.pid = int(msg["pid"])
                elif "exit" in msg:
                    judge.returncode = int(msg["exit"])
                    self._judges.pop(rid, None)
                    judge.ended.set()
                else:
                    judge.error = str(msg.get("error"))
                    self._judges.pop(rid, None)
                    judge.ended.set()
                judge.started.set()
        with self._lock:  # the server is gone: nobody will say how its judges end
            self.dead = True
            for judge in self._judges.values():
                judge.lost = True
                judge.started.set()
                judge.ended.set()
            self._judges.clear()

    def close(self):
        """No more judges: the server exits once its running judges have (the CLI waited for them)."""
        with self._lock:
            self.dead = True
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)


def start_for_batch(env, workdir, n_judges, config, small_container):
    """The batch's JudgeServer, or None when judges are started afresh (see the module docstring)."""
    ok, _why = available()
    if not ok or config.no_warm_judges or small_container or n_judges < 2:
        return None
    try:
        return JudgeServer(env, os.path.join(str(workdir), "judge_server.log"), config.out)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class _JudgeExit(BaseException):
    """Raised in a forked judge once judge.main has returned: it unwinds to main(), and the process
    exits as any Python program does (atexit handlers, buffers flushed)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _send(fd, msg):
    data = (json.dumps(msg) + "\n").encode("utf-8")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the CLI is gone: nobody to tell, but the server still reaps its judges
        pass


def _preload():
    import importlib
    import traceback

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the forked judge imports it again and fails visibly there
            traceback.print_exc()


def _judge(req, inherited, ready):
    """In the forked child: become a judge like `python -m grader.judge` would be (its own session,
    folder and log), tell the server on `ready`, and run it."""
    code = 1
    try:
        gc.enable()
        for fd in inherited:  # the server's reply pipe, selector and its other judges' pidfds
            try:
                os.close(fd)
            except OSError:
                pass
        os.setsid()
        os.chdir(req["cwd"])
        try:  # `ps` and /proc/PID/comm say what it is (its command line is the server's)
            import ctypes

            ctypes.CDLL(None).prctl(15, b"e6-judge", 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):
            pass
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.write(ready, b"1")  # from now on it can be killed as a group, and `ps` shows its name
        os.close(ready)
        sys.argv = ["grader.judge", *req["argv"]]
        from grader import judge

        judge.FORKED = True
        code = judge.main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - into the judge's log, as an exec'd judge's traceback would be
        import traceback

        traceback.print_exc()
        code = 1
    raise _JudgeExit(code)


def serve():
    import selectors

    from grader import fence

    fence.shield_self()  # non-dumpable, inherited by every judge it forks
    replies = os.dup(1)
    os.dup2(2, 1)  # what an import prints goes to the log, never into the replies
    # The preloaded objects go into the collector's permanent generation (gc docs, gc.freeze): a judge's
    # collections then neither scan them nor write to their pages, which would copy those pages into
    # every judge (measured: 0.3-0.5 s of CPU less per judge).
    gc.disable()
    _preload()
    gc.freeze()
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    running, pending, reading = {}, b"", True  # running: pidfd -> (request id, pid)
    while reading or running:
        for key, _ in sel.select():
            if key.fd != 0:  # a judge ended
                rid, pid = running.pop(key.fd)
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _send(replies, {"id": rid, "exit": os.waitstatus_to_exitcode(status)})
                continue
            chunk = os.read(0, 65536)
            if not chunk:  # the CLI closed its end: no more judges
                reading = False
                sel.unregister(0)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                req = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                ready_r, ready_w = os.pipe()
                try:
                    pid = os.fork()
                except OSError as e:
                    os.close(ready_r)
                    os.close(ready_w)
                    _send(replies, {"id": req["id"], "error": f"fork: {e}"})
                    continue
                if pid == 0:
                    _judge(req, [replies, sel.fileno(), ready_r, *running], ready_w)
                os.close(ready_w)
                os.read(ready_r, 1)  # the judge is set up (or died trying: its exit is reported below)
                os.close(ready_r)
                try:
                    pidfd = os.pidfd_open(pid)  # also for a judge that has already ended: not reaped yet
                except OSError as e:  # (too many open files): the CLI starts this judge afresh
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    _send(replies, {"id": req["id"], "error": f"pidfd_open: {e}"})
                    continue
                running[pidfd] = (req["id"], pid)
                sel.register(pidfd, selectors.EVENT_READ)
                _send(replies, {"id": req["id"], "pid": pid})


def main():
    try:
        serve()
    except _JudgeExit as e:  # a forked judge, on its way out
        sys.exit(e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
