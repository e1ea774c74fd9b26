"""Simulate another OS's Python on Linux, for tests/test_platforms.py (never installed anywhere else).

Put into the site-packages of a throw-away venv with a .pth line `import e6_platform_sim`, so that it
runs in EVERY process that venv's python starts, including `python -I` (the grader's worker ignores
PYTHONPATH and the environment's PYTHON* variables, but not the .pth files of its own site-packages;
a sitecustomize.py would be shadowed by Debian's own). E6_SIMULATE picks the platform:

  windows  fcntl, resource, pwd, grp and termios fail to import; os.fork, os.setsid, os.killpg, the uid
           calls and the *at() calls (os.supports_dir_fd, os.fwalk) are gone; /proc does not exist.
  macos    /proc does not exist (run it as a non-root user, with GRADER_NO_LANDLOCK=1).

What cannot be simulated: os.name and sys.platform stay Linux's (changing them breaks the standard
library, which picks its Windows modules at import), and C code still sees the real /proc.
"""
import builtins
import io
import os
import sys

SIM = os.environ.get("E6_SIMULATE", "")
BLOCKED = {"fcntl", "resource", "pwd", "grp", "termios"} if SIM == "windows" else set()


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (simulated {SIM})", name=name)
        return None


def _is_proc(path):
    try:
        p = os.fsdecode(path) if not isinstance(path, int) else ""
    except TypeError:
        return False
    return p == "/proc" or p.startswith("/proc/")


def _hide_proc(f):
    def wrapper(path=".", *args, **kw):
        if _is_proc(path):
            raise FileNotFoundError(2, "No such file or directory (simulated: no /proc)", os.fsdecode(path))
        return f(path, *args, **kw)
    wrapper.__wrapped__ = f
    return wrapper


if SIM in ("windows", "macos"):
    for name in BLOCKED:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, _Blocker())
    for name in ("listdir", "scandir", "stat", "lstat", "open"):
        setattr(os, name, _hide_proc(getattr(os, name)))
    builtins.open = io.open = _hide_proc(io.open)
    if SIM == "windows":
        for name in ("fork", "forkpty", "setsid", "killpg", "getuid", "geteuid", "setuid", "setgid", "fwalk",
                     "fchown", "chown", "lchown"):
            if hasattr(os, name):
                delattr(os, name)
        os.supports_dir_fd = set()
    print(f"[platform-sim {SIM}: blocked {sorted(BLOCKED) or 'nothing'}, no /proc]", file=sys.stderr)
