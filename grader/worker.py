"""The UNTRUSTED side: runs a student's code on inputs the judge chooses, returns raw observations.

Started by grader/worker_process.py as `python -I worker.py` with cwd = a fresh empty temp dir, CUDA hidden,
one thread, a memory limit. It imports nothing from the grader package (it cannot even see it: -I),
so a submission that patches things here only changes what it reports about itself.

Protocol: one JSON request per line on the ORIGINAL stdin, one reply per line on the ORIGINAL
stdout, each reply prefixed with a random token the judge sends first. Both original descriptors are
duplicated away at start-up; fd 0 is then /dev/null and fd 1 is merged into stderr, so whatever the
submission prints (or reads) never touches the protocol. Tensors travel as .npz files written with
numpy (read back by the judge with allow_pickle=False); nothing is ever pickled.
"""
import importlib.util
import io
import json
import os
import sys
import threading
import time
import traceback

# ----------------------------------------------------------------------------------------------
# Start-up: private protocol channels, memory limit, watchdog
# ----------------------------------------------------------------------------------------------
_proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
_proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)
sys.stdin = open(os.devnull, encoding="utf-8")
sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), encoding="utf-8", errors="replace",
                              line_buffering=True, write_through=True)

def _rlimit(name, value):
    try:  # POSIX only; hard limit too, so the submission cannot raise it again
        import resource

        resource.setrlimit(getattr(resource, name), (value, value))
    except (ImportError, AttributeError, ValueError, OSError):
        pass


# Start-up parameters from the judge (grader/worker_process.py, WorkerProcess.start): one JSON variable.
try:
    _START = json.loads(os.environ.get("GRADER_WORKER", "") or "{}")
except ValueError:
    _START = {}
_mem = int(_START.get("memory_mb") or 0)
if _mem > 0:  # RLIMIT_DATA (not RLIMIT_AS): torch reserves lots of address space at import.
    _rlimit("RLIMIT_DATA", _mem * 2 ** 20)
_fsize = int(_START.get("fsize_mb") or 0)
if _fsize > 0:  # no single file larger than the scratch quota; EFBIG instead of a SIGXFSZ kill
    _rlimit("RLIMIT_FSIZE", _fsize * 2 ** 20)
    try:
        import signal as _signal

        _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
try:  # when the machine runs out of memory, the kernel's OOM killer takes this process, not the judge
    with open("/proc/self/oom_score_adj", "w") as _f:
        _f.write("500")
except OSError:
    pass
_nproc = int(_START.get("nproc") or 0)
if _nproc > 0:  # set only when this worker has a uid of its own (grader/sandbox.py): counts only it
    _rlimit("RLIMIT_NPROC", _nproc)
if sys.platform == "linux":  # no setuid binary can give the submission back any privilege
    try:
        import ctypes as _ctypes

        _ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except (OSError, AttributeError):
        pass
# fence hook (grader/worker_fence.py, copied next to this file): cgroup, namespaces, seccomp; it exits
# (code 70) rather than run without a fence the judge promised. Before Landlock (it mounts /proc).
FENCE = "none"
if _START.get("fence"):
    _fence_spec = importlib.util.spec_from_file_location(
        "worker_fence", os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_fence.py"))
    _fence = importlib.util.module_from_spec(_fence_spec)
    _fence_spec.loader.exec_module(_fence)
    FENCE = _fence.apply(_START["fence"])


# ----------------------------------------------------------------------------------------------
# Landlock (Linux >= 5.13, unprivileged): from here on this process and its children may READ only
# the Python installation, system folders and the submission's own folder, and WRITE
# only inside the sandbox folder the judge made for it (plus /dev/null). So it cannot read
# the kit's reference solution or other students' files, nor write grades or the grader's files.
# It also cannot signal or ptrace processes outside it (ABI >= 6) or open TCP connections (ABI >= 4).
# Applied before any thread exists, so every thread of the process is covered.
# ----------------------------------------------------------------------------------------------

def _landlock(rules):
    """rules: [(path, "r" | "rw")]. Returns a short description of what is in force."""
    import ctypes
    import platform
    import stat

    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return "unavailable (not Linux x86_64/aarch64)"
    create, add_rule, restrict = 444, 445, 446  # same numbers on x86_64 and aarch64
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return "unavailable (kernel without Landlock)"
    READ_FILE, READ_DIR = 1 << 2, 1 << 3
    WRITE_FILE, TRUNCATE, REFER = 1 << 1, 1 << 14, 1 << 13
    write_dir = WRITE_FILE | sum(1 << b for b in range(4, 13))  # REMOVE_*, MAKE_*
    if abi >= 2:
        write_dir |= REFER
    if abi >= 3:
        write_dir |= TRUNCATE
    handled = READ_FILE | READ_DIR | write_dir
    net = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no rule: all denied
    scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL

    class Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = Attr(handled, net, scoped)
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    rs = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        return f"unavailable (create_ruleset errno {ctypes.get_errno()})"
    for path, mode in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        rights = (READ_FILE | READ_DIR) if is_dir else READ_FILE
        if "w" in mode:
            rights |= write_dir if is_dir else (WRITE_FILE | (TRUNCATE if abi >= 3 else 0))
        rule = PathBeneath(rights, fd)
        libc.syscall(add_rule, ctypes.c_int(rs), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by restrict_self
        os.close(rs)
        return "unavailable (no_new_privs failed)"
    r = libc.syscall(restrict, ctypes.c_int(rs), ctypes.c_uint32(0))
    os.close(rs)
    return f"landlock ABI {abi}" if r == 0 else f"unavailable (restrict_self errno {ctypes.get_errno()})"


def _sandbox_rules(sandbox):
    system = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev", "/run"]
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))}
    python.update(p for p in sys.path if p and os.path.isdir(p))
    extra = [p for p in _START.get("read_paths") or [] if p]
    return ([(p, "r") for p in system + sorted(python) + extra]
            + [(sandbox, "rw"), ("/dev/null", "rw")])  # not /dev/shm: RAM-backed, outside any quota


_sandbox = _START.get("sandbox_dir")
SANDBOX = "off"
if _sandbox and _START.get("landlock", True):
    try:
        SANDBOX = _landlock(_sandbox_rules(_sandbox))
    except Exception as _e:  # noqa: BLE001 - never fail to start because of the sandbox
        SANDBOX = f"unavailable ({type(_e).__name__}: {_e})"
if _START.get("landlock") == "required" and not SANDBOX.startswith("landlock"):
    # The judge's own probe found Landlock and promised it (results.json `protection`): fail closed,
    # before any student code, rather than run it less contained than promised.
    sys.stderr.write(f"[grader] Landlock could not be applied: {SANDBOX}\n")
    os._exit(75)  # worker_process.SANDBOX_REFUSED


def _watchdog(parent):
    # If the judge dies, do not keep computing for nobody.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


threading.Thread(target=_watchdog, args=(os.getppid(),), daemon=True).start()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
import matplotlib  # noqa: E402  (imported early so its start-up cost is not billed to the student)

matplotlib.use("Agg")

_token = b""
_submission = None  # the submission's module
_submission_path = "\0"
# The grader's networks (grader/nets.py, the handout's, trusted code) for Steps 4 and 5. They arrive as
# source text with the first Step 4/5 request, i.e. after the judge has every Step 2 answer
# (grader/check_plugin.py enforces that order), and are never registered in sys.modules nor readable
# as a file: so while the submission's own Generator/Discriminator are being graded there is nothing
# here to borrow.
_grader_nets = None


def _send(obj):
    _proto_out.write(_token + b" " + json.dumps(obj, allow_nan=True).encode("utf-8") + b"\n")


def _readline():
    buf = bytearray()
    while True:
        c = _proto_in.read(1)
        if not c:
            os._exit(0)  # judge closed the pipe
        if c == b"\n":
            return bytes(buf)
        buf += c


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _npz_in(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k].copy()) for k in z.files}


def _describe(v):
    """JSON-safe description of any value the submission returned."""
    d = {"type": type(v).__module__ + "." + type(v).__qualname__}
    if isinstance(v, torch.Tensor):
        d.update(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape), requires_grad=v.requires_grad,
                 device=str(v.device))
    elif isinstance(v, (bool, int, float)):
        d["value"] = float(v) if not isinstance(v, bool) else bool(v)
    elif isinstance(v, np.ndarray):
        d.update(dtype=str(v.dtype), shape=list(v.shape))
    elif isinstance(v, (tuple, list)):
        d["len"] = len(v)
    return d


def _raw(v):
    """v as an array of its OWN dtype (tensor, numpy array or PIL image), so the judge reads dtype and
    shape from the array itself; None when numpy has no such dtype (bfloat16, complex, objects)."""
    try:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.dtype == torch.bfloat16 or t.is_complex():
                return None
            return t.numpy().copy()
        if isinstance(v, np.ndarray) or type(v).__module__.startswith("PIL."):
            arr = np.array(v)
            return arr if arr.dtype.kind in "fiub" else None
    except Exception:  # noqa: BLE001 - an odd object: the judge says what it was from its description
        return None
    return None


def _error_text(e):
    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if f.filename == _submission_path][-3:]
    where = "".join(f" (line {f.lineno}: {(f.line or '').strip()[:120]})" for f in frames[-1:])
    return f"{type(e).__name__}: {e}"[:1000] + where


def _np(t):
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy().copy()  # copy: params change in place later


def _seed(s):
    torch.manual_seed(s)
    np.random.seed(s)
    import random

    random.seed(s)


def _load_state(net, arrays, prefix):
    sd = net.state_dict()
    for k in sd:
        if prefix + k in arrays:
            sd[k] = arrays[prefix + k].to(sd[k].dtype)
    net.load_state_dict(sd)


def _need(name):
    if not hasattr(_submission, name):
        raise _Missing(name)
    return getattr(_submission, name)


def _accepts(fn, name, var_keyword=False):
    """Whether fn takes a parameter called `name` (or **kwargs, if var_keyword). Optional arguments
    are passed only then."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # cannot tell (a builtin): call it as the contract says
    p = params.get(name)
    if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return True
    return var_keyword and any(q.kind == q.VAR_KEYWORD for q in params.values())


class _Missing(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Operations (each returns a JSON-safe dict; arrays go to args["out"] as .npz)
# ----------------------------------------------------------------------------------------------

CONTRACT = ["PairedMedicalDataset", "Generator", "Discriminator", "build_losses", "build_optimizers",
            "train_step", "visualize"]


def _kit_data():
    """The kit's own `data` package (data/phantoms.py), importable read-only: `from data.phantoms import
    ...` works as it does in the kit, without putting the kit root (grader/, experiment6.py) on sys.path."""
    d = _START.get("kit_data") or ""
    init = os.path.join(d, "__init__.py")
    if not d or "data" in sys.modules or not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location("data", init, submodule_search_locations=[d])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["data"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception:  # noqa: BLE001 - then `import data` fails for the student as it would anyway
        del sys.modules["data"]


def op_preload(a):
    """Import the file's imports first (warmup.py, made by grader/sources.py), so that the libraries are
    paid for before the judge measures the CPU time of the real import (op_import)."""
    _kit_data()
    _load(a["submission"], "_definitions_warmup")
    return {}


def op_import(a):
    global _submission, _submission_path
    _submission_path = a["submission"]
    _kit_data()
    steps = {"n": 0, "backward": 0}
    hook = None
    try:  # count optimizer steps taken at import time (= training at import)
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        hook = register_optimizer_step_pre_hook(lambda *_: steps.__setitem__("n", steps["n"] + 1))
    except ImportError:
        pass
    # ... and gradient computations (a hand-written SGD loop needs them; Tensor.backward calls these).
    # Self-reported, so only a hint: the judge also measures the import's CPU time itself.
    originals = {k: getattr(torch.autograd, k) for k in ("backward", "grad")}

    def counted(f):
        def wrapper(*args, **kw):
            steps["backward"] += 1
            return f(*args, **kw)
        return wrapper

    for k, f in originals.items():
        setattr(torch.autograd, k, counted(f))
    t, cpu, threads = time.perf_counter(), time.process_time(), threading.active_count()
    try:
        _submission = _load(a["submission"], "submission")
    finally:
        if hook is not None:
            hook.remove()
        for k, f in originals.items():
            setattr(torch.autograd, k, f)
    # cpu and threads_added are used only where the judge cannot measure them itself (no /proc)
    return {"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu,
            "threads_added": threading.active_count() - threads,
            "optimizer_steps": steps["n"], "backward_calls": steps["backward"],
            "sandbox": SANDBOX, "names": {n: callable(getattr(_submission, n, None)) for n in CONTRACT}}


def op_dataset(a):
    """len() and the items a["indices"] (each read a["reads"] times) of the submission's dataset on the
    judge's folders. Arrays keep their own dtype (see _raw); an item that raises is reported as data."""
    Dset = _need("PairedMedicalDataset")
    ds = Dset(a["t1_dir"], a["t2_dir"])
    n = len(ds)
    items, arrays = [], {}
    for r in range(a.get("reads", 1)):
        for i in a.get("indices", []):
            try:
                item = ds[i]
            except Exception as e:  # noqa: BLE001 - reported to the judge as data
                items.append({"read": r, "index": i, "error": _error_text(e)})
                continue
            desc = {"read": r, "index": i, "item": _describe(item), "parts": []}
            if isinstance(item, (tuple, list)):
                for j, part in enumerate(list(item)[:2]):
                    desc["parts"].append(_describe(part))
                    arr = _raw(part) if a.get("arrays", True) else None
                    if arr is not None and arr.size <= 4 * 512 * 512:
                        arrays[f"r{r}i{i}p{j}"] = arr
            items.append(desc)
    if isinstance(n, int) and not isinstance(n, bool):
        arrays["len"] = np.array(n, dtype=np.int64)  # an array: the value the judge compares (protocol.py)
    np.savez(a["out"], **arrays)
    return {"len_type": type(n).__module__ + "." + type(n).__qualname__, "items": items}


def op_networks(a):
    """Forward passes (eval mode, no autograd) of the submission's G on the judge's batch "gx" and D on
    ("dx1", "dx2"), then of the same networks with every parameter x10 on the batches "gx_big" /
    ("dx1_big", "dx2_big"). Outputs keep their own dtype (see _raw); the judge reads shapes from them."""
    x = _npz_in(a["inp"])
    res, arrays = {}, {}
    for tag, build, args, big in (("g", "Generator", ("gx",), ("gx_big",)),
                                  ("d", "Discriminator", ("dx1", "dx2"), ("dx1_big", "dx2_big"))):
        if not a.get(tag.upper()):
            continue
        _seed(a["seed"])
        net = _need(build)()
        net.eval()
        with torch.no_grad():
            for key, names in ((tag, args), (tag + "_big", big)):
                if key == tag + "_big":
                    for p in net.parameters():  # large weights: only a final squashing layer keeps the range
                        p.mul_(10.0)
                y = net(*[x[n] for n in names])
                res[key] = _describe(y)
                arr = _raw(y)
                if arr is not None:
                    arrays[key] = arr
    np.savez(a["out"], **arrays)
    return res


def op_grads(a):
    """One backward pass through the submission's G (on "gx") or D (on "dx1", "dx2"), eval mode, built
    as op_networks builds it: the output and every parameter's gradient, as arrays (a parameter
    without a gradient has none)."""
    x = _npz_in(a["inp"])
    name = a["net"]
    _seed(a["seed"])
    net = _need(name)()
    net.eval()
    ins = [x[n].clone().requires_grad_(True) for n in (("gx",) if name == "Generator" else ("dx1", "dx2"))]
    y = net(*ins)
    res = {"output": _describe(y), "params": [n for n, _ in net.named_parameters()],
           "frozen": [n for n, p in net.named_parameters() if not p.requires_grad]}
    arrays = {}
    if isinstance(y, torch.Tensor):
        arrays["y"] = _raw(y)
        if y.requires_grad:
            w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
            (y * w).sum().backward()
            for n, p in net.named_parameters():
                if p.grad is not None:
                    arrays["p." + n] = _raw(p.grad)
    np.savez(a["out"], **{k: v for k, v in arrays.items() if v is not None})
    return res


def op_losses(a):
    x = _npz_in(a["inp"])
    crits = _need("build_losses")()
    res = {"returned": _describe(crits)}
    if not isinstance(crits, (tuple, list)) or len(crits) != 2:
        return res
    errors, arrays = {}, {}
    for name, crit, pairs in (("gan", crits[0], ("p", "t")), ("l1", crits[1], ("u", "v"))):
        res[name + "_type"] = type(crit).__module__ + "." + type(crit).__qualname__
        try:
            v = crit(x[pairs[0]], x[pairs[1]])
            v2 = crit(x[pairs[0] + "2"], x[pairs[1] + "2"])
            arrays[name] = np.array([float(v), float(v2)], dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - reported to the judge as data
            errors[name] = f"{type(e).__name__}: {e}"[:500]
    res["errors"] = errors
    np.savez(a["out"], **arrays)
    return res


def op_optimizers(a):
    """build_optimizers on two small known networks, then a few steps on known gradients."""
    x = _npz_in(a["inp"])
    _seed(0)
    G, D = nn.Linear(4, 3), nn.Linear(5, 2)
    _load_state(G, x, "G.")
    _load_state(D, x, "D.")
    build = _need("build_optimizers")
    kwargs = a.get("kwargs", {})
    missing = [k for k in kwargs if not _accepts(build, k, var_keyword=True)]
    if missing:  # the contract's optional argument is not in the signature: say so, do not call
        return {"returned": {"type": "not called"}, "no_parameter": missing}
    opts = build(G, D, **kwargs)
    res = {"returned": _describe(opts)}
    if not isinstance(opts, (tuple, list)) or len(opts) != 2:
        return res
    ids = {id(p): f"G.{n}" for n, p in G.named_parameters()}
    ids.update({id(p): f"D.{n}" for n, p in D.named_parameters()})
    res["opts"] = []
    for opt in opts:
        info = {"type": type(opt).__module__ + "." + type(opt).__qualname__, "groups": []}
        for g in getattr(opt, "param_groups", []):
            info["groups"].append({
                "params": [ids.get(id(p), "?") for p in g.get("params", [])],
                "lr": float(g["lr"]) if isinstance(g.get("lr"), (int, float)) else None,
                "betas": [float(b) for b in g["betas"]] if isinstance(g.get("betas"), (tuple, list)) else None,
                "weight_decay": float(g.get("weight_decay", 0) or 0)})
        res["opts"].append(info)
    arrays = {}
    for step in range(a["steps"]):
        for net, opt, tag in ((G, opts[0], "G"), (D, opts[1], "D")):
            opt.zero_grad()
            for n, p in net.named_parameters():
                p.grad = x[f"grad{step}.{tag}.{n}"].clone()
            opt.step()
    for tag, net in (("G", G), ("D", D)):
        for n, p in net.named_parameters():
            arrays[f"{tag}.{n}"] = _np(p)
    if a.get("coverage"):  # every parameter of both nets gets a gradient, then each optimizer steps alone:
        for opt in opts:  # which parameters it moves is which parameters it holds ("cover<i>.*")
            opt.zero_grad()
        for tag, net in (("G", G), ("D", D)):
            for n, p in net.named_parameters():
                p.grad = x[f"grad0.{tag}.{n}"].clone()
        for i, opt in enumerate(opts):
            opt.step()
            for tag, net in (("G", G), ("D", D)):
                for n, p in net.named_parameters():
                    arrays[f"cover{i}.{tag}.{n}"] = _np(p)
    np.savez(a["out"], **arrays)
    return res


def _grader_nets_module(a):
    """grader/nets.py, from the source text the request carries (see _grader_nets)."""
    global _grader_nets
    if _grader_nets is None:
        import types

        mod = types.ModuleType("_trusted_nets")  # deliberately not in sys.modules
        exec(compile(a["nets_source"], "<grader nets>", "exec"), mod.__dict__)
        _grader_nets = mod
    return _grader_nets


def op_train_step(a):
    """The submission's train_step on the grader's networks, with trusted losses and optimizers.
    `lambda_l1` (optional): passed by keyword, only when the signature has that parameter. `twin_at`
    (optional): before call number twin_at, the same call is also made on a copy of the networks and
    optimizers with every gradient cleared (p.grad = None): its parameters ("twin.*") show what that
    call does without anything the previous call left behind (the judge compares; zero_grad, 4.6)."""
    x = _npz_in(a["inp"])
    step = _need("train_step")
    kw = {}
    if "lambda_l1" in a:
        if not _accepts(step, "lambda_l1", var_keyword=True):
            return {"returned": [], "no_parameter": ["lambda_l1"]}
        kw["lambda_l1"] = float(a["lambda_l1"])
    nets = _grader_nets_module(a)
    G, D = nets.Generator(), nets.Discriminator()
    _load_state(G, x, "G.")
    _load_state(D, x, "D.")
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, l1 = nn.BCELoss(), nn.L1Loss()
    n_pairs = x["t1"].shape[0]
    returned, arrays, twin, losses = [], {}, {}, []
    _seed(a["seed"])
    for s in range(a["steps"]):
        i = s % n_pairs
        if s == a.get("twin_at"):
            import copy

            rng = torch.get_rng_state()
            G2, D2, og2, od2 = copy.deepcopy((G, D, opt_g, opt_d))  # one memo: the optimizers keep their params
            for p in list(G2.parameters()) + list(D2.parameters()):
                p.grad = None
            try:
                step(G2, D2, x["t1"][i:i + 1].clone(), x["t2"][i:i + 1].clone(), bce, l1, og2, od2, **kw)
                twin = {"ran": True}
                for tag, net in (("G", G2), ("D", D2)):
                    for n, p in net.named_parameters():
                        arrays[f"twin.{tag}.{n}"] = _np(p)
            except Exception as e:  # noqa: BLE001 - reported as data; the real call follows
                twin = {"error": f"{type(e).__name__}: {e}"[:500]}
            torch.set_rng_state(rng)
        r = step(G, D, x["t1"][i:i + 1].clone(), x["t2"][i:i + 1].clone(), bce, l1, opt_g, opt_d, **kw)
        desc = _describe(r)
        vals = [float("nan")] * 2  # NaN: not a number (the JSON's parts say what it was)
        if isinstance(r, (tuple, list)):
            desc["parts"] = [_describe(v) for v in list(r)[:3]]
            for k, v in enumerate(list(r)[:2]):
                try:
                    vals[k] = float(v)
                except Exception:  # noqa: BLE001
                    pass
        losses.append(vals)
        returned.append(desc)
        if s < a.get("snapshots", 0):
            for tag, net in (("G", G), ("D", D)):
                for n, p in net.named_parameters():
                    arrays[f"s{s}.{tag}.{n}"] = _np(p)
                    if tag == "G" and p.grad is not None:
                        arrays[f"s{s}.gradG.{n}"] = _np(p.grad)
    if a.get("final_state"):
        for k, v in G.state_dict().items():
            arrays[f"final.G.{k}"] = _np(v)
    arrays["losses"] = np.array(losses, dtype=np.float64).reshape(-1, 2)  # (calls, 2): float() of loss_G, loss_D
    np.savez(a["out"], **arrays)
    return {"returned": returned, "twin": twin}


MAX_RECORDED_CALLS = 8


def op_visualize(a):
    """visualize on the trusted G (train mode on entry). Item 0 of the dataset is the judge's slice,
    so a visualize without an `indices` parameter draws it too; `indices` is passed only when the
    signature has it. Every call of G is recorded WITH its input and output (the judge recomputes
    each one); what this process says about itself (mode, grad) counts only next to those."""
    x = _npz_in(a["inp"])
    vis = _need("visualize")
    G = _grader_nets_module(a).Generator()
    _load_state(G, x, "G.")
    G.train()
    dataset = [(x["t1"][i], x["t2"][i]) for i in range(x["t1"].shape[0])]
    calls, arrays = [], {}

    def hook(module, inputs, output):
        k = len(calls)
        rec = {"training": module.training, "grad_enabled": torch.is_grad_enabled(),
               "requires_grad": bool(getattr(output, "requires_grad", False)), "tensors": False}
        if (k < MAX_RECORDED_CALLS and module is G and inputs and isinstance(inputs[0], torch.Tensor)
                and isinstance(output, torch.Tensor) and output.numel() <= 8 * 256 * 256):
            arrays[f"in{k}"] = _np(inputs[0])
            arrays[f"out{k}"] = _np(output)
            rec["tensors"] = True
        calls.append(rec)

    G.register_forward_hook(hook)
    kwargs = {"indices": tuple(a["indices"])} if _accepts(vis, "indices") else {}
    ret = vis(G, dataset, torch.device("cpu"), a["path"], **kwargs)
    np.savez(a["out"], **arrays)
    ret_s = os.fspath(ret) if isinstance(ret, (str, os.PathLike)) else None
    return {"returned": _describe(ret), "returned_path": ret_s, "calls": calls[:50], "n_calls": len(calls),
            "training_after": G.training, "passed_indices": bool(kwargs)}


def _declared_ops():
    """op name -> op_<name>, for every request grader/protocol.py declares (copied next to this file)."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
    try:
        spec = importlib.util.spec_from_file_location("_grader_protocol", here)
        proto = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(proto)
        return {n: globals()["op_" + n] for n in proto.OPS}
    except (OSError, ImportError, SyntaxError):  # run without it (by hand): every op_<name> here
        return {n[3:]: f for n, f in globals().items() if n.startswith("op_")}


OPS = _declared_ops()


def main():
    global _token
    _token = _readline().strip()
    _send({"ready": True, "pid": os.getpid(), "sandbox": SANDBOX})  # before any student code runs
    while True:
        req = json.loads(_readline())
        t = time.perf_counter()
        try:
            value = OPS[req["op"]](req.get("args", {}))
            _send({"id": req["id"], "ok": True, "value": value, "seconds": time.perf_counter() - t})
        except BaseException as e:  # noqa: BLE001 - SystemExit / KeyboardInterrupt from student code too
            if isinstance(e, _Missing):
                err = {"type": "Missing", "message": str(e), "traceback": ""}
            else:
                tb = traceback.extract_tb(e.__traceback__)
                # Keep only the frames in student code: that is where the student must look.
                frames = [f for f in tb if f.filename == _submission_path] or tb[-3:]
                err = {"type": type(e).__name__, "message": str(e)[:2000],
                       "traceback": "".join(traceback.format_list(frames[-6:]))[-4000:]}
            _send({"id": req["id"], "ok": False, "error": err, "seconds": time.perf_counter() - t})


if __name__ == "__main__":
    main()
