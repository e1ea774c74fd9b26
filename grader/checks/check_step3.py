"""Step 3 · losses and optimizers, judged on behaviour (values on known tensors, steps on known grads)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from grader import expected
from grader.check_plugin import Request, check, fail
from grader.expected import close, rel_diff

STEPS = 3
LR_DEFAULT, LR_GIVEN = 2e-4, 1e-3  # build_optimizers(G, D) and build_optimizers(G, D, lr=LR_GIVEN)


def make_loss_inputs(rng):
    f = lambda *s: rng.uniform(0.05, 0.95, s).astype(np.float32)
    return {"p": f(2, 1, 63, 63), "t": (rng.uniform(0, 1, (2, 1, 63, 63)) > 0.5).astype(np.float32),
            "p2": f(1, 1, 63, 63), "t2": f(1, 1, 63, 63),  # soft targets tell BCE from look-alikes
            "u": rng.uniform(-1, 1, (2, 1, 256, 256)).astype(np.float32),
            "v": rng.uniform(-1, 1, (2, 1, 256, 256)).astype(np.float32),
            "u2": rng.normal(0, 2, (1, 1, 16, 16)).astype(np.float32),
            "v2": rng.normal(0, 1, (1, 1, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def loss_inputs():
    """Drawn in this run from os.urandom (expected.secret_rng): no loss value can be prepared offline. The
    verdicts do not depend on the draw (measured: tests/test_grader_protocol.py)."""
    return make_loss_inputs(expected.secret_rng())


@pytest.fixture(scope="module")
def losses(student_code, loss_inputs):
    """{"gan": [two values] or the error text, "l1": ..., "gan_type", "l1_type"}: values from the arrays."""
    value, arrays = student_code.run(Request("losses", "losses", "build_losses()", {}, loss_inputs))
    if "gan_type" not in value:  # reported gate: not a pair of criteria, so no value arrays either
        fail(f"build_losses() 应返回 (criterion_GAN, criterion_L1)，实际返回 {value['returned']['type']}",
             f"build_losses() should return (criterion_GAN, criterion_L1), found {value['returned']['type']}")
    errors = value.get("errors") or {}
    got = {k: [float(v) for v in arrays[k]] if k in arrays else str(errors.get(k, "(no value)")) for k in ("gan", "l1")}
    return {**got, "gan_type": value.get("gan_type"), "l1_type": value.get("l1_type")}


def _expect(kind, x):
    if kind == "gan":
        return [nn.BCELoss()(torch.from_numpy(x[p]), torch.from_numpy(x[t])).item() for p, t in (("p", "t"), ("p2", "t2"))]
    return [nn.L1Loss()(torch.from_numpy(x[u]), torch.from_numpy(x[v])).item() for u, v in (("u", "v"), ("u2", "v2"))]


def _finite(got, name):
    if isinstance(got, list) and not all(expected.finite(g) for g in got):
        fail(f"{name} 在已知输入上给出 {got}：不是有限数（NaN/inf）",
             f"{name} gives {got} on known inputs: not finite (NaN/inf)")


@check("3.1")
def check_gan_loss(losses, loss_inputs):
    got, want = losses["gan"], _expect("gan", loss_inputs)
    _finite(got, "criterion_GAN")
    if isinstance(got, str) or not all(close(g, w) for g, w in zip(got, want)):
        fail(f"criterion_GAN（{losses.get('gan_type')}）在已知概率上给出 {got}，BCELoss 应为 "
             f"{[round(w, 5) for w in want]}：判别器已输出 Sigmoid 概率，使用 nn.BCELoss()（不是 BCEWithLogitsLoss / MSELoss）",
             f"criterion_GAN ({losses.get('gan_type')}) gives {got} on known probabilities, BCELoss gives "
             f"{[round(w, 5) for w in want]}: D already outputs Sigmoid probabilities, use nn.BCELoss() "
             f"(not BCEWithLogitsLoss or MSELoss)")


@check("3.2")
def check_l1_loss(losses, loss_inputs):
    got, want = losses["l1"], _expect("l1", loss_inputs)
    _finite(got, "criterion_L1")
    if isinstance(got, str) or not all(close(g, w) for g, w in zip(got, want)):
        fail(f"criterion_L1（{losses.get('l1_type')}）给出 {got}，平均绝对误差应为 {[round(w, 5) for w in want]}："
             f"使用 nn.L1Loss()（reduction='mean'，不是 MSELoss / SmoothL1Loss）",
             f"criterion_L1 ({losses.get('l1_type')}) gives {got}, the mean absolute error is "
             f"{[round(w, 5) for w in want]}: use nn.L1Loss() (mean reduction; not MSELoss or SmoothL1Loss)")


def _tiny_nets():
    torch.manual_seed(30)
    return nn.Linear(4, 3), nn.Linear(5, 2)


@pytest.fixture(scope="module")
def opt_inputs():
    G, D = _tiny_nets()
    x = {f"G.{k}": v.detach().numpy().copy() for k, v in G.state_dict().items()}
    x.update({f"D.{k}": v.detach().numpy().copy() for k, v in D.state_dict().items()})
    rng = np.random.default_rng(31)
    for s in range(STEPS):
        for tag, net in (("G", G), ("D", D)):
            for n, p in net.named_parameters():
                # Varied magnitudes: beta2 and the bias corrections only show when grads change.
                x[f"grad{s}.{tag}.{n}"] = (rng.normal(0, 1, p.shape) * 10.0 ** rng.integers(-3, 1)).astype(np.float32)
    return x


def _adam_expected(x, lr, betas):
    G, D = _tiny_nets()
    out = {}
    for tag, net in (("G", G), ("D", D)):
        opt = expected.Adam(net.parameters(), lr=lr, betas=betas)
        for s in range(STEPS):
            opt.zero_grad()
            for n, p in net.named_parameters():
                p.grad = torch.from_numpy(x[f"grad{s}.{tag}.{n}"]).clone()
            opt.step()
        out[tag] = {n: p.detach().numpy().copy() for n, p in net.named_parameters()}
    return out


def _opt_request(key, kwargs, opt_inputs, coverage=False):
    call = "build_optimizers(G, D" + "".join(f", {k}={v}" for k, v in kwargs.items()) + ")"
    return Request(key, "optimizers", call, {"steps": STEPS, "kwargs": kwargs, "coverage": coverage}, opt_inputs)


@pytest.fixture(scope="module")
def opt_requests(opt_inputs):
    """The two build_optimizers requests: without arguments (3.3 and 3.5) and with lr= (3.4)."""
    return {"default": _opt_request("opt_default", {}, opt_inputs, coverage=True),
            "lr": _opt_request("opt_lr", {"lr": LR_GIVEN}, opt_inputs)}


def _run_opt(student_code, request):
    value, arrays = student_code.run(request, after=["opt_default"] if request.key != "opt_default" else [])
    if value.get("no_parameter"):  # reported gate: not called, so no arrays either
        name = value["no_parameter"][0]
        fail(f"build_optimizers 没有参数 {name}：接口是 build_optimizers(G, D, lr=2e-4, ...)，lr 要传给两个 Adam",
             f"build_optimizers has no parameter {name}: the contract is build_optimizers(G, D, lr=2e-4, ...), and lr "
             f"goes to both Adam optimizers")
    if "opts" not in value:  # reported gate: not two optimizers, so no steps and no arrays either
        fail(f"build_optimizers 应返回 (optimizer_G, optimizer_D)，实际返回 {value['returned']['type']}",
             f"build_optimizers should return (optimizer_G, optimizer_D), found {value['returned']['type']}")
    return value, arrays


def _compare(value, arrays, opt_inputs, lr, call):
    want = _adam_expected(opt_inputs, lr, (0.5, 0.999))
    for i, tag in enumerate(("G", "D")):
        got = {n[2:]: a for n, a in arrays.items() if n.startswith(tag + ".")}
        base = {n: opt_inputs[f"{tag}.{n}"] for n in want[tag]}
        err = rel_diff(got, want[tag], base)
        if err > 1e-4:
            info = value["opts"][i]
            g = info["groups"][0] if info["groups"] else {}
            fail(f"{call} 的 optimizer_{tag}（{info['type']}，lr={g.get('lr')}，betas={g.get('betas')}）在已知梯度上的 "
                 f"{STEPS} 步更新与 torch.optim.Adam(lr={lr}, betas=(0.5, 0.999)) 不同（相对差 {err:.2g}）："
                 f"使用 torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)",
                 f"{call}'s optimizer_{tag} ({info['type']}, lr={g.get('lr')}, betas={g.get('betas')}) does not "
                 f"step like torch.optim.Adam(lr={lr}, betas=(0.5, 0.999)) on {STEPS} known gradients (relative "
                 f"difference {err:.2g}): use torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)")


@check("3.3")
def check_adam_defaults(student_code, opt_requests, opt_inputs):
    value, arrays = _run_opt(student_code, opt_requests["default"])
    _compare(value, arrays, opt_inputs, LR_DEFAULT, "build_optimizers(G, D)")


@check("3.4")
def check_lr_argument(student_code, opt_requests, opt_inputs):
    """lr= reaches the optimizers: with the judge's fixed gradients, an Adam (or SGD) step is exactly
    proportional to lr whatever betas or eps are, so the lr=1e-3 run must move every parameter 5 times
    as far as the student's own default run. This checks only lr: wrong betas or another optimizer
    cost 3.3, once. The ratio counts only when the default run's parameters are what the optimizers it
    describes make of the known gradients (recomputed here), so replies made up to have the ratio earn
    nothing."""
    default_value, default_arrays = _run_opt(student_code, opt_requests["default"])
    explained, bad = _steps_explained(default_value, default_arrays, opt_inputs)
    if not explained:
        fail(f"optimizer_{bad} 的更新无法按它报告的类型和超参数重算出来，lr 无法检验（先看 3.3）/ 检查 build_optimizers",
             f"optimizer_{bad}'s updates are not what the type and hyperparameters it reports make of the known "
             f"gradients, so lr cannot be checked (see 3.3 first) / check build_optimizers")
    value, arrays = _run_opt(student_code, opt_requests["lr"])
    ratio = LR_GIVEN / LR_DEFAULT
    call = f"build_optimizers(G, D, lr={LR_GIVEN})"
    for i, tag in enumerate(("G", "D")):
        names = [n[2:] for n in opt_inputs if n.startswith(tag + ".")]
        base = {n: opt_inputs[f"{tag}.{n}"] for n in names}
        own = {n: default_arrays.get(f"{tag}.{n}") for n in names}
        if any(a is None or a.shape != base[n].shape for n, a in own.items()):
            fail(f"build_optimizers(G, D) 的 optimizer_{tag} 没有给出可比较的参数 / 检查 build_optimizers",
                 f"build_optimizers(G, D)'s optimizer_{tag} gave no parameters to compare / check build_optimizers")
        if all(np.array_equal(own[n], base[n]) for n in names):
            fail(f"build_optimizers(G, D) 的 optimizer_{tag} 在已知梯度上一步也没有移动参数，无法检验 lr：检查 build_optimizers",
                 f"build_optimizers(G, D)'s optimizer_{tag} did not move any parameter on known gradients, so lr "
                 f"cannot be checked: check build_optimizers")
        want = {n: base[n] + ratio * (own[n].astype(np.float64) - base[n]) for n in names}
        got = {n[2:]: a for n, a in arrays.items() if n.startswith(tag + ".")}
        err = rel_diff(got, want, base)
        # float32 rounding of the default run, scaled by 5: ~4e-5 for Adam, up to 1.5e-3 for SGD's tiny
        # steps; lr off by 1 % gives 1e-2, lr ignored 0.8
        if err > 5e-3:
            info = value["opts"][i]
            g = info["groups"][0] if info["groups"] else {}
            fail(f"{call} 的 optimizer_{tag} 的步长不是 build_optimizers(G, D) 的 {ratio:g} 倍（相对差 {err:.2g}，"
                 f"lr={g.get('lr')}）：把参数 lr 传给 torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)",
                 f"{call}'s optimizer_{tag} does not step {ratio:g} times as far as build_optimizers(G, D)'s "
                 f"(relative difference {err:.2g}, lr={g.get('lr')}): pass the lr parameter on, "
                 f"torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)")


def _steps_explained(value, arrays, opt_inputs):
    """Whether the parameters the worker sent back are what the optimizers it describes (type, lr, betas)
    make of the known gradients, recomputed here; (False, tag) for the first net where they are not. So
    the optimizers' parameter lists (3.5) count only when the steps they report really happened."""
    G, D = _tiny_nets()
    for i, (tag, net) in enumerate((("G", G), ("D", D))):
        got = {n[2:]: a for n, a in arrays.items() if n.startswith(tag + ".")}
        if not got or not all(expected.finite(a) for a in got.values()):
            return False, tag
        info = value["opts"][i]
        g = info["groups"][0] if info["groups"] else {}
        lr, betas = g.get("lr"), g.get("betas")
        sims = []
        if lr is not None and info["type"].endswith(".Adam") and betas and len(betas) == 2:
            sims.append(("adam", lr, tuple(betas)))
        if lr is not None and info["type"].endswith(".SGD"):
            sims.append(("sgd", lr, None))
        base = {n: opt_inputs[f"{tag}.{n}"] for n, _ in net.named_parameters()}
        ok = False
        for kind, lr_, betas_ in sims:
            try:  # reported hyperparameters may be anything a float can be (beta 1.0: division by zero)
                ok = ok or _simulate(kind, lr_, betas_, base, got, opt_inputs, tag)
            except (ArithmeticError, ValueError, RuntimeError):
                pass
        if not ok:
            return False, tag
    return True, None


def _simulate(kind, lr_, betas_, base, got, opt_inputs, tag):
    """Whether STEPS steps of Adam or SGD with these hyperparameters, recomputed here, give `got`."""
    params = {n: torch.from_numpy(base[n].copy()).requires_grad_() for n in base}
    opt = expected.Adam(params.values(), lr=lr_, betas=betas_) if kind == "adam" else None
    for s in range(STEPS):
        with torch.no_grad():
            for n, p in params.items():
                grad = torch.from_numpy(opt_inputs[f"grad{s}.{tag}.{n}"])
                if kind == "adam":
                    p.grad = grad.clone()
                else:
                    p.sub_(lr_ * grad)
        if kind == "adam":
            opt.step()
    want = {n: p.detach().numpy() for n, p in params.items()}
    return rel_diff(got, want, base) < 1e-4


@check("3.5")
def check_param_coverage(student_code, opt_requests, opt_inputs):
    value, arrays = _run_opt(student_code, opt_requests["default"])
    G, D = _tiny_nets()
    names = [f"{t}.{n}" for t, net in (("G", G), ("D", D)) for n, _ in net.named_parameters()]
    for i, (tag, net) in enumerate((("G", G), ("D", D))):
        # Every parameter of both nets held a gradient, then optimizer i stepped alone: the parameters it
        # moved (arrays cover<i>.*, compared with what they were before) are the ones it holds.
        before = {n: arrays.get(f"cover{i - 1}.{n}" if i else n) for n in names}
        after = {n: arrays.get(f"cover{i}.{n}") for n in names}
        if any(v is None for v in list(before.values()) + list(after.values())):
            fail(f"optimizer_{tag} 没有给出可比较的参数（先看 3.3）/ 检查 build_optimizers",
                 f"optimizer_{tag} gave no parameters to compare (see 3.3 first) / check build_optimizers")
        want = sorted(f"{tag}.{n}" for n, _ in net.named_parameters())
        got = sorted(n for n in names if not np.array_equal(before[n], after[n]))
        if got != want:
            fail(f"optimizer_{tag} 单独 step() 时更新的参数为 {got}，应恰好为 {tag} 的全部参数 {want}：使用 {tag}.parameters()",
                 f"optimizer_{tag} alone moves {got}, expected exactly all of {tag}'s parameters {want}: use "
                 f"{tag}.parameters()")
    ok, tag = _steps_explained(value, arrays, opt_inputs)
    if not ok:
        fail(f"optimizer_{tag} 的参数列表无法确认：评分程序按它报告的类型和超参数重算的 {STEPS} 步更新与返回的参数不同"
             f"（先看 3.3）：使用 torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)",
             f"optimizer_{tag}'s parameter list cannot be confirmed: the {STEPS} steps the grader recomputes for the "
             f"type and hyperparameters it reports differ from the parameters sent back (see 3.3 first): use "
             f"torch.optim.Adam({tag}.parameters(), lr=lr, betas=betas)")
