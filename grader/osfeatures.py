"""What this operating system offers the grader, detected once, in one place (trusted side).

Every grader module asks here instead of importing a POSIX-only module or testing `os.name` itself,
so that a student's self-check and a TA's batch run on Windows, macOS and Linux, and so that a test
can simulate another platform by making these imports and calls unavailable (tests/platform_sim/).
The untrusted worker (grader/worker.py) is the one exception: it runs under `python -I` from a copy
and imports nothing of the grader, so it keeps its own try/except around each POSIX call.

What each missing feature costs (grader/README.md, "Platforms"):
  fcntl, pwd, fork, /proc, root   no separate worker uid (layer 2 of the trust model)
  /proc (Linux)                   no subreaper clean-up and no judge-side measurement of the import's CPU
                                  time, threads and children (the worker's own counts are used instead)
  setsid / killpg                 the worker is a new process group (Windows) and is killed with its
                                  tree by taskkill, or alone
  dir_fd (*at calls)              the judge works on paths instead of folder descriptors
  resource                        no RLIMIT_DATA / RLIMIT_FSIZE / RLIMIT_NPROC caps
Scores do not depend on any of these: only what contains a hostile submission does.
"""
import codecs
import os
import subprocess
import sys

WINDOWS = os.name == "nt"
LINUX = sys.platform.startswith("linux")
MACOS = sys.platform == "darwin"


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


FCNTL = _importable("fcntl")  # flock: the machine-wide lock on a worker uid
RESOURCE = _importable("resource")  # setrlimit
PWD = _importable("pwd")  # the e6grader account's uid
UIDS = hasattr(os, "geteuid") and hasattr(os, "setuid")
FORK = hasattr(os, "fork")
SESSIONS = hasattr(os, "setsid") and hasattr(os, "killpg")  # start_new_session=True and killpg
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# *at() calls (os.open/os.mkdir relative to a folder descriptor) and os.fwalk: Linux, macOS, BSD.
DIR_FD = (not WINDOWS and {os.open, os.mkdir, os.stat, os.unlink} <= os.supports_dir_fd
          and hasattr(os, "fwalk") and bool(O_DIRECTORY))


def _proc_readable():
    try:
        return LINUX and os.path.isdir("/proc/self/task") and bool(os.listdir("/proc/self/task"))
    except OSError:
        return False


PROC = _proc_readable()  # /proc/<pid>/stat, /proc/<pid>/task, /proc/<pid>/status


def is_root():
    return UIDS and os.geteuid() == 0


def user_layer_possible():
    """Whether workers can run as their own unprivileged uid here (grader/sandbox.py): Linux, root,
    and what that layer uses (flock on the uid's lock, fork + setuid to kill every process of the
    uid, /proc to see them)."""
    return LINUX and is_root() and FCNTL and FORK and PROC


def subreaper_possible():
    """PR_SET_CHILD_SUBREAPER and finding the re-parented orphans again: Linux with /proc."""
    return LINUX and PROC


def where():
    """Which platform this is, in two words, for messages."""
    return "Windows" if WINDOWS else "macOS" if MACOS else "Linux" if LINUX else sys.platform


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------

def new_group_kwargs():
    """Popen keyword arguments that put a child (and what it starts) into a group of its own, so it
    can be killed with everything it started: a new session on POSIX, a new process group on Windows."""
    if SESSIONS:
        return {"start_new_session": True}
    if WINDOWS:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {}


def kill_tree(proc):
    """SIGKILL the process group of a child started with new_group_kwargs(); on Windows
    `taskkill /T /F` kills its tree; elsewhere (or if that fails) the child alone."""
    try:
        if SESSIONS:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            return
        if WINDOWS:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        proc.kill()
    except OSError:
        pass


def set_rlimit(name, soft, hard=None):
    """setrlimit(RLIMIT_<name>) where it exists; True if set."""
    if not RESOURCE:
        return False
    import resource

    try:
        limit = getattr(resource, name)
        resource.setrlimit(limit, (soft, resource.RLIM_INFINITY if hard is None else hard))
        return True
    except (AttributeError, ValueError, OSError):
        return False


# ----------------------------------------------------------------------------------------------
# Console
# ----------------------------------------------------------------------------------------------

# What the grader and the kit print, for consoles that cannot show it (a GBK or cp1252 console, or
# output redirected on Windows): readable ASCII instead of '?'. CJK goes through where the console
# has it (GBK); on cp1252 every message still has its English half.
_ASCII = {"\u2713": "v", "\u2714": "v", "\u2705": "[v]", "\u2717": "x", "\u2718": "x", "\u274c": "[x]",
          "\u2192": "->", "\u2190": "<-", "\u2265": ">=", "\u2264": "<=", "\u2260": "!=", "\u00d7": "x",
          "\u00b7": ".", "\u2014": "-", "\u2013": "-", "\u2026": "...", "\u03bb": "lambda", "\u00b2": "^2",
          "\u00b3": "^3", "\u00b1": "+-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
          "\u2502": "|", "\u2212": "-", "\u03b2": "beta", "\u00b0": "deg", "\u2248": "~"}


def _console_errors(exc):
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start:exc.end]:
        sub = _ASCII.get(ch, "?")
        try:
            sub.encode(exc.encoding)
        except (UnicodeEncodeError, LookupError):
            sub = "?"
        out.append(sub)
    return "".join(out), exc.end


codecs.register_error("grader_console", _console_errors)


def console_safe(streams=None):
    """Make the console streams unable to fail on a character their encoding lacks (a GBK or cp1252
    console): ✓ becomes v, → becomes ->, anything else without an equivalent ?. UTF-8 streams are
    left as they are."""
    for stream in streams or (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if enc in ("utf8", "utf8sig") or not hasattr(stream, "reconfigure"):
            continue
        try:
            stream.reconfigure(errors="grader_console")
        except (ValueError, OSError, AttributeError):
            pass
