"""Step 4 · train_step, compared with the expected steps from the same seeded state.

The worker runs the submission's train_step on the grader's networks (grader/nets.py) with trusted
BCELoss, L1Loss and Adam optimizers (so Steps 2 and 3 cannot cost points here). The judge computes
the same steps itself in both accepted orders (G then D as in the handout, D then G as in the pix2pix
paper) and a check passes when the submission matches either.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grader import expected, nets
from grader.check_plugin import Request, check, fail

WHERE_ZH = "检查 train_step"
WHERE_EN = "check train_step"
PARAM_TOL = 2e-3  # relative difference of the parameter updates (float summation order may differ)
GRAD_TOL = 1e-3


@pytest.fixture(scope="module")
def start():
    """Where the two-step run (4.1-4.7) starts: the networks' state and parameters, two phantom pairs."""
    G, D = expected.new_nets(4)
    t1, t2 = expected.phantom_pairs(2, seed=40)
    return SimpleNamespace(state=expected.state_arrays(G, D), t1=t1, t2=t2,
                           params={"G": {n: p.detach().numpy().copy() for n, p in G.named_parameters()},
                                   "D": {n: p.detach().numpy().copy() for n, p in D.named_parameters()}})


@pytest.fixture(scope="module")
def ten_steps_start():
    """Where the ten-step run (4.8) starts: other networks, four other phantom pairs."""
    G, D = expected.new_nets(8)
    t1, t2 = expected.phantom_pairs(4, seed=80)
    return SimpleNamespace(state=expected.state_arrays(G, D), t1=t1, t2=t2)


@pytest.fixture(scope="module")
def requests(student_code, start, ten_steps_start):
    """Both student runs of train_step, defined here only, and started at once: the worker trains while
    this process computes the expected steps."""
    two = Request("train_step", "train_step", "train_step", {"steps": 2, "snapshots": 2, "seed": 0},
                  {**start.state, "t1": start.t1, "t2": start.t2})
    ten = Request("train_10", "train_step", "train_step x10", {"steps": 10, "final_state": True, "seed": 0},
                  {**ten_steps_start.state, "t1": ten_steps_start.t1, "t2": ten_steps_start.t2})
    student_code.submit(two)
    student_code.submit(ten)
    return SimpleNamespace(two_steps=two, ten_steps=ten)


@pytest.fixture(scope="module")
def want(start, requests):
    """The expected two steps, {order: [snapshot after step 1, after step 2]} (after `requests`: they
    are computed while the worker runs the student's)."""
    return {o: expected.expected_steps(start.state, start.t1, start.t2, 2, o) for o in expected.ORDERS}


@pytest.fixture(scope="module")
def run(student_code, requests, want):
    """(what each of the two calls returned, the arrays recorded after them)."""
    value, arrays = student_code.run(requests.two_steps)
    return value["returned"], arrays


def _snap(arrays, s, tag):
    p = f"s{s}.{tag}."
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def _losses(returned, s):
    r = returned[s]
    vals = r.get("values") or [None, None]
    return (vals + [None, None])[:2]


def _matching(pred):
    return [o for o in expected.ORDERS if pred(o)]


def _likely_cause(run, want, which):
    """A hint when a later check only fails because a loss value (4.2 / 4.3) is already wrong."""
    returned, _ = run
    i, key, cid = (0, "loss_G", "4.2") if which == "G" else (1, "loss_D", "4.3")
    got = _losses(returned, 0)[i]
    if any(expected.close(got, want[o][0][key]) for o in expected.ORDERS):
        return "", ""
    return (f"（{key} 的值已经不对，多半由此导致：先看 {cid}）", f" ({key} is already wrong, which likely explains "
                                                            f"this: see {cid} first)")


def _order_note(note, orders):
    if len(orders) == 1:  # (loss_D of the first step is the same in both orders: no note then)
        note("检测到的更新顺序 / detected order: " + expected.ORDERS[orders[0]])


@check("4.1")
def check_returns_floats(run, start):
    returned, arrays = run
    base = start.params
    for tag, zh, en in (("G", "生成器", "generator"), ("D", "判别器", "discriminator")):
        got = _snap(arrays, 0, tag)
        if not got or expected.rel_diff(got, base[tag]) == 0.0:
            fail(f"调用 train_step 后{zh}参数没有变化：train_step 应完成一次真正的训练（backward 与 optimizer.step()）/ {WHERE_ZH}",
                 f"train_step left the {en}'s parameters unchanged: it must really train (backward and "
                 f"optimizer.step()) / {WHERE_EN}")
    r = returned[0]
    parts = r.get("parts")
    if parts is None or r.get("len") != 2:
        fail(f"train_step 返回了 {r['type']}（长度 {r.get('len')}），应返回 (loss_G, loss_D) / {WHERE_ZH} 的 return",
             f"train_step returned {r['type']} (length {r.get('len')}), expected (loss_G, loss_D): {WHERE_EN}'s return")
    for name, p in zip(("loss_G", "loss_D"), parts):
        if p["type"] != "builtins.float":
            fail(f"{name} 的类型为 {p['type']}，应为 Python float：返回 {name}.item()（张量会让计算图一直保留）",
                 f"{name} is a {p['type']}, expected a Python float: return {name}.item() (a tensor keeps its "
                 f"graph alive)")


@check("4.2")
def check_loss_g(run, want, note):
    returned, _ = run
    got = _losses(returned, 0)[0]
    orders = _matching(lambda o: expected.close(got, want[o][0]["loss_G"]))
    if not orders:
        value = want["G->D"][0]["loss_G"]
        fail(f"loss_G = {got}，参考值为 {value:.5f}：loss_G = criterion_GAN(D(t1, fake), 全 1) + lambda_l1 * "
             f"criterion_L1(fake, t2)，lambda_l1 默认 100，L1 比较生成图与真实 T2 / {WHERE_ZH}",
             f"loss_G = {got}, the reference gives {value:.5f}: loss_G = criterion_GAN(D(t1, fake), ones) + "
             f"lambda_l1 * criterion_L1(fake, t2), lambda_l1 = 100 by default, L1 compares the fake with the real "
             f"T2 / {WHERE_EN}")
    _order_note(note, orders)


@check("4.3")
def check_loss_d(run, want, note):
    returned, _ = run
    got = _losses(returned, 0)[1]
    orders = _matching(lambda o: expected.close(got, want[o][0]["loss_D"]))
    if not orders:
        value = want["G->D"][0]["loss_D"]
        fail(f"loss_D = {got}，参考值为 {value:.5f}：loss_D = 0.5 * (criterion_GAN(D(t1, t2), 全 1) + "
             f"criterion_GAN(D(t1, fake.detach()), 全 0)) / {WHERE_ZH}",
             f"loss_D = {got}, the reference gives {value:.5f}: loss_D = 0.5 * (criterion_GAN(D(t1, t2), ones) + "
             f"criterion_GAN(D(t1, fake.detach()), zeros)) / {WHERE_EN}")
    _order_note(note, orders)


def _params_check(run, start, want, tag, s):
    """(orders whose parameters of net `tag` after step s match, smallest relative error, unchanged?)"""
    _, arrays = run
    base = start.params[tag]
    got = _snap(arrays, s, tag)
    errs = {o: expected.rel_diff(got, want[o][s][tag], base) for o in expected.ORDERS}
    orders = [o for o in expected.ORDERS if errs[o] < PARAM_TOL]
    unchanged = got and expected.rel_diff(got, base) == 0.0
    return orders, min(errs.values()), unchanged


@check("4.4")
def check_generator_update(run, start, want, note):
    orders, err, unchanged = _params_check(run, start, want, "G", 0)
    if not orders:
        if unchanged:
            fail(f"一步之后生成器参数完全没变：是否缺少 optimizer_G.step()，或在 torch.no_grad() 中计算了 fake？/ {WHERE_ZH}",
                 f"the generator's parameters did not change at all: optimizer_G.step() missing, or fake computed "
                 f"under torch.no_grad()? / {WHERE_EN}")
        zh, en = _likely_cause(run, want, "G")
        fail(f"一步之后生成器参数与参考不同（相对差 {err:.2g}）{zh}：检查 loss_G、optimizer_G.zero_grad() / backward() / step() / {WHERE_ZH}",
             f"generator parameters after one step differ from the reference (relative difference {err:.2g}){en}: "
             f"check loss_G and optimizer_G.zero_grad() / backward() / step() / {WHERE_EN}")
    _order_note(note, orders)


@check("4.5")
def check_discriminator_update(run, start, want, note):
    orders, err, unchanged = _params_check(run, start, want, "D", 0)
    if not orders:
        if unchanged:
            fail(f"一步之后判别器参数完全没变：是否缺少 optimizer_D.step()？/ {WHERE_ZH}",
                 f"the discriminator's parameters did not change at all: optimizer_D.step() missing? / {WHERE_EN}")
        zh, en = _likely_cause(run, want, "D")
        fail(f"一步之后判别器参数与参考不同（相对差 {err:.2g}）{zh}：检查 loss_D、fake.detach()、optimizer_D.zero_grad()"
             f"（在 loss_D.backward() 之前）/ {WHERE_ZH}",
             f"discriminator parameters after one step differ from the reference (relative difference {err:.2g}){en}: "
             f"check loss_D, fake.detach() and optimizer_D.zero_grad() (before loss_D.backward()) / {WHERE_EN}")
    _order_note(note, orders)


@check("4.6")
def check_second_step(run, start, want, note):
    returned, arrays = run
    if len(returned) < 2:
        fail(f"第二步没有运行 / {WHERE_ZH}", f"the second step did not run / {WHERE_EN}")
    lg, ld = _losses(returned, 1)
    g_orders, g_err, _ = _params_check(run, start, want, "G", 1)
    d_orders, d_err, _ = _params_check(run, start, want, "D", 1)
    orders = [o for o in expected.ORDERS if o in g_orders and o in d_orders
              and expected.close(lg, want[o][1]["loss_G"]) and expected.close(ld, want[o][1]["loss_D"])]
    if not orders:
        zh, en = _likely_cause(run, want, "G")
        if not zh:
            zh, en = _likely_cause(run, want, "D")
        first_ok = (_params_check(run, start, want, "G", 0)[0] and _params_check(run, start, want, "D", 0)[0])
        if first_ok and not zh:  # the first step was right, the second is not: gradients carried over
            zh, en = ("（第一步正确、第二步不同：上一步的梯度被带入了这一步）",
                      " (the first step is right and the second is not: gradients from the previous step were "
                      "carried into this one)")
        fail(f"第二次调用 train_step 的结果与参考不同（G 相对差 {g_err:.2g}，D 相对差 {d_err:.2g}，loss_G={lg}，loss_D={ld}）{zh}："
             f"每个优化器在它的 backward() 之前（或在 step() 之后）调用 zero_grad()，否则梯度会累加；"
             f"这与 .detach() 无关 / {WHERE_ZH}",
             f"a second call of train_step differs from the reference (G {g_err:.2g}, D {d_err:.2g}, loss_G={lg}, "
             f"loss_D={ld}){en}: each optimizer needs zero_grad() before its backward() (or right after its "
             f"step()), otherwise gradients accumulate; this is not about .detach() / {WHERE_EN}")
    _order_note(note, orders)


@check("4.7")
def check_generator_grads(run, start, want, note):
    _, arrays = run
    got = _snap(arrays, 0, "gradG")
    errs = {o: expected.rel_diff(got, want[o][0]["gradG"]) for o in expected.ORDERS}
    orders = [o for o in expected.ORDERS if errs[o] < GRAD_TOL]
    if not orders and all(not np.any(g) for g in got.values()):
        # zero_grad() right after step(): nothing left on G, and nothing reached it from loss_D after
        # that (a missing detach would have put loss_D's gradient there). Equivalent, provided G's
        # update itself was the reference's (4.4), so that an untrained G earns nothing here.
        g_orders = _params_check(run, start, want, "G", 0)[0]
        if g_orders:
            note("optimizer_G.zero_grad() 在 step() 之后调用：等价，判别器的更新没有把梯度传给 G / "
                 "optimizer_G.zero_grad() comes after step(): equivalent, and loss_D sent no gradient into G")
            return
        fail(f"train_step 之后生成器上没有梯度，且一步之后的参数与参考不同（见 4.4）/ {WHERE_ZH}",
             f"no gradient is left on the generator after train_step and its parameters after one step differ "
             f"from the reference (see 4.4) / {WHERE_EN}")
    if not orders:
        zh, en = _likely_cause(run, want, "G")
        fail(f"train_step 之后留在生成器上的梯度与参考不同（相对差 {min(errs.values()):.2g}）{zh}：判别器的损失要用 "
             f"fake.detach()，这样 loss_D.backward() 不会把梯度传进生成器 / {WHERE_ZH}",
             f"the gradients left on the generator after train_step differ from the reference (relative "
             f"difference {min(errs.values()):.2g}){en}: use fake.detach() in the discriminator's loss so that "
             f"loss_D.backward() does not reach the generator / {WHERE_EN}")
    _order_note(note, orders)


# Adam moves a parameter by at most lr * (1 - beta1) / sqrt(1 - beta2) per step (Kingma & Ba 2015,
# section 2.1, the case 1 - beta1 > sqrt(1 - beta2)): 10 steps of the trusted optimizer_G cannot move
# any G parameter further than this (1 % for rounding). The 10 expected steps move none by more
# than 2.4e-3; setting a layer to a constant moves some by ~1.
ADAM_MAX_MOVE = 10 * 2e-4 * (1 - 0.5) / (1 - 0.999) ** 0.5 * 1.01


def _l1(state, t1, t2):
    G = nets.Generator()
    expected.load_state(G, state, "G.")
    G.train()  # batch statistics: the same for the model before and after
    with torch.no_grad():
        return (G(torch.from_numpy(t1)) - torch.from_numpy(t2)).abs().mean().item()


@check("4.8")
def check_training_lowers_l1(student_code, requests, ten_steps_start, note):
    """Real training: L1 falls on 4 phantom pairs the 10 steps never saw, while no parameter of G
    moved more than the trusted Adam optimizer can move it (so only optimizer_G.step() on gradients
    did the work, not a hand-edited layer)."""
    state = ten_steps_start.state
    value, arrays = student_code.run(requests.ten_steps, after=[requests.two_steps.key])
    final = {k[len("final."):]: v for k, v in arrays.items() if k.startswith("final.G.")}
    h1, h2 = expected.phantom_pairs(4, seed=81)  # held out
    G0 = nets.Generator()
    names = [n for n, _ in G0.named_parameters()]
    moved = max((float(np.abs(final[f"G.{n}"].astype(np.float64) - state[f"G.{n}"]).max())
                 for n in names if f"G.{n}" in final and final[f"G.{n}"].shape == state[f"G.{n}"].shape),
                default=float("inf"))
    if len([n for n in names if f"G.{n}" in final]) != len(names):
        moved = float("inf")
    before, after = _l1(state, h1, h2), _l1(final, h1, h2)
    note(f"未参与训练的切片上 L1 / L1 on held-out slices: {before:.4f} -> {after:.4f}; "
         f"参数最大变化 / largest parameter change {moved:.2g}")
    if not np.isfinite(moved) or moved > ADAM_MAX_MOVE:
        fail(f"10 步之后生成器的某个参数变化了 {moved:.3g}，超过 Adam(lr=2e-4) 10 步所能移动的 {ADAM_MAX_MOVE:.3g}："
             f"参数只应由 optimizer_G.step() 根据梯度更新，不要直接修改权重 / {WHERE_ZH}",
             f"after 10 steps a generator parameter moved by {moved:.3g}, more than 10 steps of Adam(lr=2e-4) can "
             f"move it ({ADAM_MAX_MOVE:.3g}): parameters must change only through optimizer_G.step() on gradients, "
             f"not by editing weights / {WHERE_EN}")
    if not (np.isfinite(after) and after < 0.9 * before):
        fail(f"10 步训练后，在未参与训练的切片上 L1 从 {before:.4f} 变为 {after:.4f}，应至少下降 10%："
             f"检查 loss_G 中的 L1 项与 optimizer_G.step() / {WHERE_ZH}",
             f"10 training steps took L1 on held-out slices from {before:.4f} to {after:.4f}, expected a drop of at "
             f"least 10%: check the L1 term of loss_G and optimizer_G.step() / {WHERE_EN}")
