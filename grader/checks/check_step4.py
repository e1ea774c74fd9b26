"""Step 4 · train_step, compared with the expected steps from the same seeded state.

The worker runs the submission's train_step on the grader's networks (grader/nets.py) with trusted
BCELoss, L1Loss and Adam optimizers (so Steps 2 and 3 cannot cost points here). The judge computes
the same steps itself in both accepted orders (G then D as in the handout, D then G as in the pix2pix
paper) and a check passes when the submission matches either.

One property per check: the loss VALUES (4.2, 4.3) against the handout's formulas; the UPDATES (4.4,
4.5) against one optimizer step on the loss the submission computed, when the judge can recompute
that loss (the handout's, or a classic wrong one that the returned value identifies: then 4.2/4.3
fail, name the bug, and the update itself is judged right); the second call (4.6) against the same
call made on a copy with every gradient cleared (so a wrong first step is not blamed on zero_grad);
the gradients left on G (4.7) against the submission's own loss_G. 4.1 (two floats, both networks
trained) counts only next to one first-step value the judge recomputed.
"""
from functools import lru_cache
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
LAMBDA = 7.0  # the lambda_l1 of the extra call: any value but the default 100 shows a hard-coded weight

# What a train_step error means (texts verified with torch 2.x): both come from a missing
# fake.detach() in the discriminator's loss in the handout's order (G first).
DOUBLE_BACKWARD = "Trying to backward through the graph a second time"
INPLACE = "modified by an inplace operation"
ERROR_HINTS = {
    DOUBLE_BACKWARD: (
        "这是缺少 detach 的典型错误：判别器的损失用了 D(t1, fake_t2) 而没有 .detach()，loss_D.backward() 要再穿过生成器的"
        "计算图，而它在 loss_G.backward() 之后已经释放。在判别器的损失中写 D(t1, fake_t2.detach())（不要加 retain_graph=True）",
        "this is the classic missing detach: the discriminator's loss uses D(t1, fake_t2) without .detach(), so "
        "loss_D.backward() goes back through the generator's graph, which loss_G.backward() has already freed. Use "
        "D(t1, fake_t2.detach()) in the discriminator's loss (do not add retain_graph=True)"),
    INPLACE: (
        "这是缺少 detach 的典型错误（加了 retain_graph=True 之后）：loss_D.backward() 仍穿过生成器，而 optimizer_G.step() "
        "已经原地修改了生成器的权重。retain_graph=True 不是解决办法：去掉它，在判别器的损失中写 D(t1, fake_t2.detach())",
        "this is the classic missing detach (after adding retain_graph=True): loss_D.backward() still goes back through "
        "the generator, whose weights optimizer_G.step() has already changed in place. retain_graph=True is not the "
        "fix: remove it and use D(t1, fake_t2.detach()) in the discriminator's loss"),
}

# Classic wrong loss formulas, recognised by value (4.2, 4.3) and by the update they cause (4.4, 4.5).
G_HINTS = {
    "g_adv_detached": (
        "loss_G 的对抗项用了 fake.detach()：生成器得不到来自判别器的梯度，只被 L1 项训练。生成器的损失中写 "
        "D(t1, fake_t2)（不要 detach）；.detach() 只用在判别器的损失中",
        "loss_G's adversarial term uses fake.detach(): the generator gets no gradient from the discriminator, only "
        "from the L1 term. Use D(t1, fake_t2) (no detach) in the generator's loss; .detach() belongs only in the "
        "discriminator's loss"),
    "g_l1_detached": (
        "loss_G 的 L1 项用了 fake.detach()：生成器得不到 L1 项的梯度，只被对抗项训练，输出不会向真实 T2 靠拢。"
        "写 lambda_l1 * criterion_L1(fake_t2, t2)（不要 detach）",
        "loss_G's L1 term uses fake.detach(): the generator gets no gradient from the L1 term, only from the "
        "adversarial one, so its output is not pulled towards the real T2. Write lambda_l1 * criterion_L1(fake_t2, t2) "
        "(no detach)"),
    "g_target_zeros": (
        "生成器对抗项的目标是全 0：G 希望 D 把生成图判为真，目标应为 torch.ones_like(pred_fake)",
        "the generator's adversarial target is zeros: G wants D to call its fakes real, so the target is "
        "torch.ones_like(pred_fake)"),
    "l1_against_t1": (
        "L1 项比较的是生成图与输入 T1：应与真实 T2 比较，criterion_L1(fake_t2, t2)",
        "the L1 term compares the fake with the input T1: compare it with the real T2, criterion_L1(fake_t2, t2)"),
    "no_adv": ("loss_G 缺少对抗项 criterion_GAN(D(t1, fake_t2), 全 1)",
               "loss_G lacks its adversarial term criterion_GAN(D(t1, fake_t2), ones)"),
    "no_l1": ("loss_G 缺少 L1 项 lambda_l1 * criterion_L1(fake_t2, t2)",
              "loss_G lacks its L1 term lambda_l1 * criterion_L1(fake_t2, t2)"),
}
D_HINTS = {
    "d_targets_swapped": ("判别器的目标反了：真实对 (t1, t2) 的目标是全 1，生成对 (t1, fake) 的目标是全 0",
                          "the discriminator's targets are swapped: the real pair (t1, t2) gets ones, the generated "
                          "pair (t1, fake) gets zeros"),
    "d_fake_target_ones": ("生成对 (t1, fake) 的目标应为全 0（torch.zeros_like），不是全 1",
                           "the generated pair (t1, fake) needs zeros (torch.zeros_like) as its target, not ones"),
    "d_real_target_zeros": ("真实对 (t1, t2) 的目标应为全 1（torch.ones_like），不是全 0",
                            "the real pair (t1, t2) needs ones (torch.ones_like) as its target, not zeros"),
    "d_no_half": ("loss_D 少了 0.5：它是两项的平均，0.5 * (loss_real + loss_fake)",
                  "loss_D lacks the 0.5: it is the mean of the two terms, 0.5 * (loss_real + loss_fake)"),
    "d_only_real": ("loss_D 只有真实对一项：还要加上生成对 criterion_GAN(D(t1, fake_t2.detach()), 全 0)",
                    "loss_D has only the real-pair term: add the generated pair's criterion_GAN(D(t1, "
                    "fake_t2.detach()), zeros)"),
    "d_only_fake": ("loss_D 只有生成对一项：还要加上真实对 criterion_GAN(D(t1, t2), 全 1)",
                    "loss_D has only the generated-pair term: add the real pair's criterion_GAN(D(t1, t2), ones)"),
    "d_no_zero_grad": ("缺少 optimizer_D.zero_grad()（在 loss_D.backward() 之前）：loss_G.backward() 已在判别器上留下梯度",
                       "optimizer_D.zero_grad() is missing (before loss_D.backward()): loss_G.backward() has left "
                       "gradients on the discriminator"),
}


def _call(student_code, request, after=()):
    """student_code.run, and a train_step error the judge recognises gets its hint first."""
    try:
        return student_code.run(request, after=after)
    except pytest.fail.Exception as e:
        text = str(e.msg)
        for key, (zh, en) in ERROR_HINTS.items():
            if key in text:
                fail(f"{zh} / {WHERE_ZH}", f"{en} / {WHERE_EN}\n{text}")
        raise


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
    """The student runs of train_step, defined here only, and started at once: the worker trains while
    this process computes the expected steps. The two-step run also makes its second call on a copy with
    cleared gradients (twin_at=1, for 4.6); a one-step run passes lambda_l1=LAMBDA (4.2)."""
    inputs = {**start.state, "t1": start.t1, "t2": start.t2}
    two = Request("train_step", "train_step", "train_step", {"steps": 2, "snapshots": 2, "seed": 0, "twin_at": 1},
                  inputs)
    lam = Request("train_lambda", "train_step", f"train_step(..., lambda_l1={LAMBDA:g})",
                  {"steps": 1, "seed": 0, "lambda_l1": LAMBDA}, inputs)
    ten = Request("train_10", "train_step", "train_step x10", {"steps": 10, "final_state": True, "seed": 0},
                  {**ten_steps_start.state, "t1": ten_steps_start.t1, "t2": ten_steps_start.t2})
    for r in (two, lam, ten):
        student_code.submit(r)
    return SimpleNamespace(two_steps=two, ten_steps=ten, lam=lam)


@pytest.fixture(scope="module")
def want(start, requests):
    """The expected two steps, {order: [snapshot after step 1, after step 2]} (after `requests`: they
    are computed while the worker runs the student's)."""
    return {o: expected.expected_steps(start.state, start.t1, start.t2, 2, o) for o in expected.ORDERS}


@pytest.fixture(scope="module")
def run(student_code, requests, want):
    """(what each of the two calls returned, the arrays recorded after them, the twin's report)."""
    value, arrays = _call(student_code, requests.two_steps)
    return value.get("returned", []), arrays, value.get("twin") or {}


def _snap(arrays, s, tag):
    p = f"s{s}.{tag}."
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def _losses(arrays, s):
    """[loss_G, loss_D] of call s as float() made them (the "losses" array; NaN: not a number)."""
    table = arrays.get("losses")
    if table is None or s >= table.shape[0]:
        return [None, None]
    return [float(v) for v in table[s]]


def _matching(pred):
    return [o for o in expected.ORDERS if pred(o)]


def _order_note(note, orders):
    if len(orders) == 1:  # (loss_D of the first step is the same in both orders: no note then)
        note("检测到的更新顺序 / detected order: " + expected.ORDERS[orders[0]])


def _fmt(v):
    return "None" if v is None else f"{v:.6g}"


@pytest.fixture(scope="module")
def diagnosis(start, want):
    """Which formula the returned loss values come from, recomputed here: functions of the returned
    (loss_G, loss_D) -> (names of the classic bugs they match, {name: expected_steps kwargs})."""
    terms = {"G->D": expected.loss_terms(start.state, start.t1, start.t2),
             "D->G": expected.loss_terms(start.state, start.t1, start.t2, d_params=want["D->G"][0]["D"])}

    def g_bugs(got, lam=100.0):
        out = {}
        if not expected.finite(got):
            return out
        for o, t in terms.items():
            cands = {"g_target_zeros": t["fake_0"] + lam * t["l1_t2"], "l1_against_t1": t["fake_1"] + lam * t["l1_t1"],
                     "no_adv": lam * t["l1_t2"], "no_l1": t["fake_1"]}
            for name, v in cands.items():
                if expected.close(got, v):
                    out.setdefault(name, o)
            est = (got - t["fake_1"]) / t["l1_t2"]  # the L1 weight the value implies
            if abs(est - lam) > 0.5 and est > 0.5 and abs(est - round(est)) < 5e-3:  # a whole number
                out.setdefault(f"lambda={round(est):g}", o)
        return out

    def d_bugs(got):
        out = {}
        if not expected.finite(got):
            return out
        t = terms["G->D"]  # loss_D of the first step is the same in both orders
        cands = {"d_targets_swapped": 0.5 * (t["real_0"] + t["fake_1"]), "d_fake_target_ones": 0.5 * (t["real_1"] + t["fake_1"]),
                 "d_real_target_zeros": 0.5 * (t["real_0"] + t["fake_0"]), "d_no_half": t["real_1"] + t["fake_0"],
                 "d_only_real": t["real_1"], "d_only_fake": t["fake_0"]}
        for name, v in cands.items():
            if expected.close(got, v) or (name.startswith("d_only") and expected.close(got, 0.5 * v)):
                out[name] = "G->D"
        return out

    return SimpleNamespace(g=g_bugs, d=d_bugs)


def _g_bug_hint(name):
    if name.startswith("lambda="):
        w = name.split("=", 1)[1]
        return (f"L1 项的权重是 {w} 而不是 lambda_l1：写 lambda_l1 * criterion_L1(fake_t2, t2)，不要写死数值",
                f"the L1 term is weighted by {w} instead of lambda_l1: write lambda_l1 * criterion_L1(fake_t2, t2), "
                f"not a fixed number")
    return G_HINTS[name]


def _variant_kwargs(name):
    if name.startswith("lambda="):
        return {"lam": float(name.split("=", 1)[1])}
    return {**expected.G_VARIANTS, **expected.D_VARIANTS}.get(name)


@lru_cache(None)
def _variant_steps(key, name, order):
    """The judge's own first two steps with one classic bug (cached per module run: key = id of start)."""
    st = _STARTS[key]
    return expected.expected_steps(st.state, st.t1, st.t2, 2, order, **_variant_kwargs(name))


_STARTS = {}


def _update(run, start, want, diagnosis, tag):
    """How net `tag`'s parameters after the first call are explained, recomputed here:
    SimpleNamespace(kind="reference" | a classic bug's name | None, orders, err, unchanged, snaps, bugs)
    where bugs are the classic bugs the returned loss value shows (then the update is judged against
    the step on that loss)."""
    returned, arrays, _ = run
    base = start.params[tag]
    got = _snap(arrays, 0, tag)
    unchanged = bool(got) and expected.rel_diff(got, base) == 0.0
    errs = {o: expected.rel_diff(got, want[o][0][tag], base) for o in expected.ORDERS}
    orders = [o for o in expected.ORDERS if errs[o] < PARAM_TOL]
    lg, ld = _losses(arrays, 0)
    bugs = diagnosis.g(lg) if tag == "G" else diagnosis.d(ld)
    value_right = any(expected.close(lg if tag == "G" else ld, want[o][0]["loss_" + tag]) for o in expected.ORDERS)
    res = SimpleNamespace(kind=None, orders=orders, err=min(errs.values()), unchanged=unchanged, snaps=None, bugs=bugs,
                          value_right=value_right)
    if orders:
        res.kind, res.snaps = "reference", {o: want[o] for o in orders}
        return res
    if unchanged or not got:
        return res
    _STARTS[id(start)] = start
    names = [n for n in bugs if _variant_kwargs(n)]
    if value_right:  # the value is right: bugs that do not change it
        names += ["g_adv_detached", "g_l1_detached"] if tag == "G" else ["d_no_zero_grad"]
    for name in names:
        orders_v = [bugs.get(name, "G->D")] if name in bugs else ["G->D"]
        for o in orders_v:
            snaps = _variant_steps(id(start), name, o)
            if expected.rel_diff(got, snaps[0][tag], base) < PARAM_TOL:
                res.kind, res.orders, res.snaps = name, [o], {o: snaps}
                return res
    return res


@pytest.fixture(scope="module")
def g_update(run, start, want, diagnosis):
    return _update(run, start, want, diagnosis, "G")


@pytest.fixture(scope="module")
def d_update(run, start, want, diagnosis):
    return _update(run, start, want, diagnosis, "D")


def _value_ok(run, want, i):
    got = _losses(run[1], 0)[i]
    key = ("loss_G", "loss_D")[i]
    return any(expected.close(got, want[o][0][key]) for o in expected.ORDERS)


@check("4.1")
def check_returns_floats(run, start, want, g_update, d_update, note):
    returned, arrays, _ = run
    # What the call returned (its type and length) is the worker's word (protocol.py: reported): hints only.
    # The values are the "losses" array, float() of the first two elements, NaN when that is not a number.
    r = returned[0] if returned else {"type": "?"}
    parts = r.get("parts")
    if parts is None or r.get("len") != 2:
        note(f"提示（不计分）：train_step 返回了 {r['type']}（长度 {r.get('len')}），接口要求 (loss_G, loss_D) / "
             f"hint (not scored): train_step returned {r['type']} (length {r.get('len')}); the contract returns "
             f"(loss_G, loss_D)")
    for name, p in zip(("loss_G", "loss_D"), parts or []):
        if p["type"] != "builtins.float":
            note(f"提示（不计分）：{name} 的类型为 {p['type']}，应为 Python float：返回 {name}.item()（张量会让计算图一直保留）/ "
                 f"hint (not scored): {name} is a {p['type']}, expected a Python float: return {name}.item() (a "
                 f"tensor keeps its graph alive)")
    for name, v in zip(("loss_G", "loss_D"), _losses(arrays, 0)):
        if not expected.finite(v):
            fail(f"{name} = {v}：损失不是有限数（NaN/inf）/ {WHERE_ZH}", f"{name} = {v}: the loss is not finite (NaN/inf) / "
                                                                     f"{WHERE_EN}")
    for tag, zh, en in (("G", "生成器", "generator"), ("D", "判别器", "discriminator")):
        got = _snap(arrays, 0, tag)
        if got and not all(expected.finite(v) for v in got.values()):
            fail(f"调用 train_step 后{zh}参数中出现 NaN/inf / {WHERE_ZH}",
                 f"the {en}'s parameters hold NaN/inf after train_step / {WHERE_EN}")
        if not got or expected.rel_diff(got, start.params[tag]) == 0.0:
            fail(f"调用 train_step 后{zh}参数没有变化：train_step 应完成一次真正的训练（backward 与 optimizer.step()）/ {WHERE_ZH}",
                 f"train_step left the {en}'s parameters unchanged: it must really train (backward and "
                 f"optimizer.step()) / {WHERE_EN}")
    # Counted only next to something the judge recomputed: a returned loss or an update it can explain.
    if not (_value_ok(run, want, 0) or _value_ok(run, want, 1) or g_update.kind or d_update.kind):
        fail(f"无法确认 train_step 真的训练了：loss_G、loss_D 以及两个网络一步之后的参数都与评分程序重算的结果不同（先看 4.2–4.5）/ {WHERE_ZH}",
             f"cannot confirm that train_step really trained: loss_G, loss_D and both networks' parameters after one "
             f"call all differ from the grader's recomputation (see 4.2-4.5 first) / {WHERE_EN}")


def _bug_list(bugs, hints):
    names = [n for n in bugs if n.startswith("lambda=") or n in hints]
    if not names:
        return "", ""
    parts = [_g_bug_hint(n) if n.startswith("lambda=") or n in G_HINTS else hints[n] for n in names[:1]]
    return "：" + parts[0][0], ": " + parts[0][1]


@check("4.2")
def check_loss_g(student_code, requests, run, want, diagnosis, note):
    _, arrays, _ = run
    got = _losses(arrays, 0)[0]
    if got is not None and not expected.finite(got):
        fail(f"loss_G = {got}：不是有限数（NaN/inf），检查损失的写法 / {WHERE_ZH}",
             f"loss_G = {got}: not a finite number (NaN/inf), check how the loss is written / {WHERE_EN}")
    orders = _matching(lambda o: expected.close(got, want[o][0]["loss_G"]))
    if not orders:
        value = want["G->D"][0]["loss_G"]
        zh, en = _bug_list(diagnosis.g(got), G_HINTS)
        fail(f"loss_G = {_fmt(got)}，参考值为 {value:.5f}{zh or '：loss_G = criterion_GAN(D(t1, fake), 全 1) + lambda_l1 * criterion_L1(fake, t2)'}"
             f" / {WHERE_ZH}",
             f"loss_G = {_fmt(got)}, the reference gives {value:.5f}{en or ': loss_G = criterion_GAN(D(t1, fake), ones) + lambda_l1 * criterion_L1(fake, t2)'}"
             f" / {WHERE_EN}")
    _order_note(note, orders)
    # The same call with lambda_l1=LAMBDA: the L1 weight must follow the argument.
    value, lam_arrays = _call(student_code, requests.lam, after=[requests.two_steps.key])
    if value.get("no_parameter"):  # reported gate: not called, so no loss arrays either
        fail(f"train_step 没有参数 lambda_l1：接口是 train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, "
             f"optimizer_D, lambda_l1=100.0) / {WHERE_ZH}",
             f"train_step has no parameter lambda_l1: the contract is train_step(G, D, t1, t2, criterion_GAN, "
             f"criterion_L1, optimizer_G, optimizer_D, lambda_l1=100.0) / {WHERE_EN}")
    got_l = _losses(lam_arrays, 0)[0]
    want_l = {o: expected.expected_steps(requests.lam.inputs, requests.lam.inputs["t1"], requests.lam.inputs["t2"], 1, o,
                                         lam=LAMBDA)[0]["loss_G"] for o in orders}
    if not any(expected.close(got_l, v) for v in want_l.values()):
        ignored = expected.close(got_l, got)
        zh, en = (("：结果与 lambda_l1=100 时相同，传入的 lambda_l1 被忽略了（写死了 100？）。写 lambda_l1 * criterion_L1(fake_t2, t2)",
                   ": the same as with lambda_l1=100, so the lambda_l1 passed in is ignored (a fixed 100?). Write "
                   "lambda_l1 * criterion_L1(fake_t2, t2)") if ignored else
                  ("：L1 项的权重应为传入的 lambda_l1", ": the L1 term must be weighted by the lambda_l1 passed in"))
        fail(f"train_step(..., lambda_l1={LAMBDA:g}) 返回 loss_G = {_fmt(got_l)}，参考值为 {list(want_l.values())[0]:.5f}{zh} / {WHERE_ZH}",
             f"train_step(..., lambda_l1={LAMBDA:g}) returned loss_G = {_fmt(got_l)}, the reference gives "
             f"{list(want_l.values())[0]:.5f}{en} / {WHERE_EN}")


@check("4.3")
def check_loss_d(run, want, diagnosis, note):
    _, arrays, _ = run
    got = _losses(arrays, 0)[1]
    if got is not None and not expected.finite(got):
        fail(f"loss_D = {got}：不是有限数（NaN/inf），检查损失的写法 / {WHERE_ZH}",
             f"loss_D = {got}: not a finite number (NaN/inf), check how the loss is written / {WHERE_EN}")
    orders = _matching(lambda o: expected.close(got, want[o][0]["loss_D"]))
    if not orders:
        value = want["G->D"][0]["loss_D"]
        zh, en = _bug_list(diagnosis.d(got), D_HINTS)
        fail(f"loss_D = {_fmt(got)}，参考值为 {value:.5f}{zh or '：loss_D = 0.5 * (criterion_GAN(D(t1, t2), 全 1) + criterion_GAN(D(t1, fake.detach()), 全 0))'}"
             f" / {WHERE_ZH}",
             f"loss_D = {_fmt(got)}, the reference gives {value:.5f}{en or ': loss_D = 0.5 * (criterion_GAN(D(t1, t2), ones) + criterion_GAN(D(t1, fake.detach()), zeros))'}"
             f" / {WHERE_EN}")
    _order_note(note, orders)


def _judge_update(upd, tag, note):
    zh_net, en_net, opt = ("生成器", "generator", "optimizer_G") if tag == "G" else ("判别器", "discriminator", "optimizer_D")
    if upd.kind == "reference":
        _order_note(note, upd.orders)
        return
    if upd.kind in ("g_adv_detached", "g_l1_detached", "d_no_zero_grad"):  # the value is right, the update shows the bug
        zh, en = (G_HINTS if tag == "G" else D_HINTS)[upd.kind]
        if upd.kind == "d_no_zero_grad":  # zero_grad is 4.6's property: judged there
            note(f"{zh}（在 4.6 中扣分）/ {en} (scored in 4.6)")
            return
        fail(f"一步之后{zh_net}参数与参考不同：{zh} / {WHERE_ZH}", f"the {en_net}'s parameters after one step differ from "
                                                                f"the reference: {en} / {WHERE_EN}")
    if upd.kind:  # the update is one correct step on the (wrong) loss the value shows: that is 4.2/4.3's
        cid = "4.2" if tag == "G" else "4.3"
        note(f"这一步的更新与你的 loss（见 {cid}）一致 / the update is one correct step on your loss (see {cid})")
        return
    if upd.unchanged:
        fail(f"一步之后{zh_net}参数完全没变：是否缺少 {opt}.step()，{opt}.step() 写在了 backward() 之前，"
             f"或在 torch.no_grad() 中计算了损失？/ {WHERE_ZH}",
             f"the {en_net}'s parameters did not change at all: {opt}.step() missing or called before backward(), "
             f"or the loss computed under torch.no_grad()? / {WHERE_EN}")
    see = ("（loss 的值也不对：先看 4.2）", " (the loss value is wrong too: see 4.2 first)") if tag == "G" else \
        ("（loss 的值也不对：先看 4.3）", " (the loss value is wrong too: see 4.3 first)")
    zh, en = see if not upd.value_right else ("", "")
    fail(f"一步之后{zh_net}参数与参考不同（相对差 {upd.err:.2g}）{zh}：检查 {opt}.zero_grad() / backward() / step() 与损失的写法 / {WHERE_ZH}",
         f"the {en_net}'s parameters after one step differ from the reference (relative difference {upd.err:.2g}){en}: "
         f"check {opt}.zero_grad() / backward() / step() and how the loss is written / {WHERE_EN}")


@check("4.4")
def check_generator_update(g_update, note):
    _judge_update(g_update, "G", note)


@check("4.5")
def check_discriminator_update(d_update, note):
    _judge_update(d_update, "D", note)


@check("4.6")
def check_second_step(run, start, want, g_update, d_update, note):
    returned, arrays, twin = run
    if "losses" not in arrays or arrays["losses"].shape[0] < 2:
        fail(f"第二步没有运行 / {WHERE_ZH}", f"the second step did not run / {WHERE_EN}")
    lg, ld = _losses(arrays, 1)
    got = {tag: _snap(arrays, 1, tag) for tag in ("G", "D")}
    base = {tag: _snap(arrays, 0, tag) for tag in ("G", "D")}
    ref = [o for o in expected.ORDERS
           if all(expected.rel_diff(got[t], want[o][1][t], start.params[t]) < PARAM_TOL for t in ("G", "D"))
           and expected.close(lg, want[o][1]["loss_G"]) and expected.close(ld, want[o][1]["loss_D"])]
    if ref:
        _order_note(note, ref)
        return
    # Judged against the student's own second call on a copy with every gradient cleared first.
    if not any(k.startswith("twin.") for k in arrays):  # the twin's parameters (its report: messages only)
        fail(f"第二次调用 train_step 的结果与参考不同，且无法与清空梯度后的同一次调用比较（{twin.get('error', '')}）/ {WHERE_ZH}",
             f"the second call of train_step differs from the reference and cannot be compared with the same call "
             f"after clearing the gradients ({twin.get('error', '')}) / {WHERE_EN}")
    tw = {tag: {k[len(f"twin.{tag}."):]: v for k, v in arrays.items() if k.startswith(f"twin.{tag}.")} for tag in ("G", "D")}
    for tag, opt in (("G", "optimizer_G"), ("D", "optimizer_D")):
        err = expected.rel_diff(got[tag], tw[tag], base[tag])
        if err >= PARAM_TOL:
            fail(f"第二次调用 train_step 时，{opt} 的更新与清空梯度后的同一次调用不同（相对差 {err:.2g}）：上一次调用留下的梯度被累加了。"
                 f"在 backward() 之前调用 {opt}.zero_grad()（或在 step() 之后立即调用）/ {WHERE_ZH}",
                 f"in the second call of train_step, {opt}'s update differs from the same call made after clearing the "
                 f"gradients (relative difference {err:.2g}): gradients left by the previous call were added. Call "
                 f"{opt}.zero_grad() before backward() (or right after step()) / {WHERE_EN}")
    first_right = g_update.kind == "reference" and d_update.kind == "reference"
    if first_right or not (_value_ok(run, want, 0) or _value_ok(run, want, 1) or g_update.kind or d_update.kind):
        fail(f"第二次调用 train_step 的结果与参考不同（loss_G={_fmt(lg)}，loss_D={_fmt(ld)}），且不是梯度累加造成的"
             f"{'：第一次调用是正确的，train_step 是否依赖上一次调用留下的状态？' if first_right else '（先看 4.2–4.5）'} / {WHERE_ZH}",
             f"a second call of train_step differs from the reference (loss_G={_fmt(lg)}, loss_D={_fmt(ld)}), and not "
             f"because gradients accumulate{': the first call was right; does train_step depend on state left by the previous call?' if first_right else ' (see 4.2-4.5 first)'}"
             f" / {WHERE_EN}")
    note("第一步已与参考不同（见 4.2–4.5）；第二步与清空梯度后的同一次调用一致，zero_grad 没有问题 / the first step already differs "
         "(see 4.2-4.5); the second call equals the same call after clearing the gradients, so zero_grad is right")


@check("4.7")
def check_generator_grads(run, start, want, g_update, note):
    _, arrays, _ = run
    got = _snap(arrays, 0, "gradG")
    if not g_update.kind:
        # G's update is unexplained (4.4), but the gradients may still be the reference's (e.g. step() missing)
        errs = {o: expected.rel_diff(got, want[o][0]["gradG"]) for o in expected.ORDERS}
        if min(errs.values()) < GRAD_TOL:
            _order_note(note, [o for o in errs if errs[o] < GRAD_TOL])
            return
        fail(f"生成器的这一步无法由评分程序重算（见 4.4），因此无法判断留在生成器上的梯度 / {WHERE_ZH}",
             f"the generator's step cannot be recomputed by the grader (see 4.4 first), so the gradients left on it "
             f"cannot be judged / {WHERE_EN}")
    # Against the student's own loss_G (the reference's or the classic bug 4.2/4.4 identified).
    errs = {o: expected.rel_diff(got, snaps[0]["gradG"]) for o, snaps in g_update.snaps.items()}
    if min(errs.values()) < GRAD_TOL:
        _order_note(note, [o for o in errs if errs[o] < GRAD_TOL])
        return
    if got and all(not np.any(g) for g in got.values()) or not got:
        # zero_grad() right after step(): nothing left on G, and nothing reached it from loss_D after that.
        note("optimizer_G.zero_grad() 在 step() 之后调用：等价，判别器的更新没有把梯度传给 G / "
             "optimizer_G.zero_grad() comes after step(): equivalent, and loss_D sent no gradient into G")
        return
    fail(f"train_step 之后留在生成器上的梯度与 loss_G 本身的梯度不同（相对差 {min(errs.values()):.2g}）：判别器的损失要用 "
         f"fake.detach()，这样 loss_D.backward() 不会把梯度传进生成器 / {WHERE_ZH}",
         f"the gradients left on the generator after train_step differ from loss_G's own (relative difference "
         f"{min(errs.values()):.2g}): use fake.detach() in the discriminator's loss so that loss_D.backward() does "
         f"not reach the generator / {WHERE_EN}")


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
    value, arrays = _call(student_code, requests.ten_steps, after=[requests.two_steps.key])
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
