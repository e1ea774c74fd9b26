"""Step 2 · Generator and Discriminator: shapes, output ranges, conditioning, gradient flow.

The inputs and the networks' seed are drawn in this run from os.urandom (grader/expected.py
secret_rng). Each network runs once (eval mode) on one batch whose samples the judge related to each
other, so the judge can verify that the arrays it gets back come from a network applied to them:
  G batch: u, another image v, u with a small patch changed, u shifted by 16 pixels
  D batch: (a, b), (a', b), (a, b'), (a, b) both shifted by 16 pixels
A convolutional network's output on a shifted input is its output shifted (away from the borders):
checked on whatever output size the network produced (so a wrong stride costs only the shape check).
Shapes and ranges are read from the arrays (their .npz headers), never from the reply's JSON; a reply
whose JSON disagrees with its arrays, or any NaN/inf, earns nothing. Gradients (2.6) come as arrays:
the output of the backward run must be the forward run's output for the same input, and every
parameter must hold a finite gradient.
"""
import numpy as np
import pytest

from grader import expected as E
from grader.check_plugin import Request, check, fail

SHIFT = 16  # pixels; a multiple of any total stride up to 16
G_ROWS = ("u", "v", "u patched", "u shifted")
D_ROWS = ("(a, b)", "(a', b)", "(a, b')", "(a, b) shifted")


@pytest.fixture(scope="module")
def secret():
    rng = E.secret_rng()
    img = lambda: rng.uniform(-1, 1, (1, 1, 256, 256)).astype(np.float32)
    shift = lambda t: np.roll(t, (SHIFT, SHIFT), axis=(-2, -1))
    u, v, a, a2, b, b2 = (img() for _ in range(6))
    pu = u.copy()
    pu[..., 126:130, 126:130] = -pu[..., 126:130, 126:130]  # a 4x4 patch: a convolution spreads it
    gx = np.concatenate([u, v, pu, shift(u)])
    dx1 = np.concatenate([a, a2, a, shift(a)])
    dx2 = np.concatenate([b, b, b2, shift(b)])
    return {"seed": int(rng.integers(0, 2 ** 31)),
            "inputs": {"gx": gx, "dx1": dx1, "dx2": dx2, "gx_big": gx[[0, 3]], "dx1_big": dx1[[0, 3]],
                       "dx2_big": dx2[[0, 3]]}}


def _forward(student_code, secret, tag):
    req = Request(f"{tag}_fwd", "networks", "Generator()(x)" if tag == "g" else "Discriminator()(x1, x2)",
                  {"seed": secret["seed"], tag.upper(): True}, secret["inputs"])
    value, arrays = student_code.run(req)
    return value if isinstance(value, dict) else {}, arrays


@pytest.fixture(scope="module")
def g_out(student_code, secret):
    return _forward(student_code, secret, "g")


@pytest.fixture(scope="module")
def d_out(student_code, secret):
    return _forward(student_code, secret, "d")


WHO = {"g": ("生成器 Generator", "the generator"), "d": ("判别器 Discriminator", "the discriminator")}


def _arrays(out, tag):
    """The output arrays of one network (normal and x10), checked against the reply's JSON, finite,
    and verified to come from a network applied to the batch. Fails otherwise."""
    value, arrays = out
    who_zh, who_en = WHO[tag]
    got = {}
    for key in (tag, tag + "_big"):
        d = value.get(key) if isinstance(value.get(key), dict) else {}
        arr = arrays.get(key)
        if arr is None:
            fail(f"{who_zh} 返回了 {d.get('type')}，应为 float 张量：检查 forward 的 return",
                 f"{who_en} returned {d.get('type')}, expected a float tensor: check the return of forward")
        if arr.dtype.kind != "f":
            fail(f"{who_zh} 的输出类型为 {arr.dtype}，应为浮点张量", f"{who_en}'s output is {arr.dtype}, expected floats")
        if not np.isfinite(arr).all():
            fail(f"{who_zh} 的输出含有 NaN 或 inf{'（参数放大 10 倍时）' if key.endswith('big') else ''}：检查 forward",
                 f"{who_en}'s output contains NaN or inf{' (with weights x10)' if key.endswith('big') else ''}: "
                 f"check forward")
        rows = 4 if key == tag else 2
        if arr.ndim < 1 or arr.shape[0] != rows:
            fail(f"{who_zh} 对 {rows} 个样本的批次输出形状为 {tuple(arr.shape)}：第一维应是批次大小",
                 f"{who_en} gives shape {tuple(arr.shape)} for a batch of {rows}: the first dimension must be "
                 f"the batch")
        got[key] = arr.astype(np.float64)
    _verify(got[tag], tag, who_zh, who_en)
    _verify(got[tag + "_big"][[0, 0, 0, 1]], tag, who_zh, who_en, big=True)
    return got[tag], got[tag + "_big"]


def _not_a_network(who_zh, who_en, what_zh, what_en):
    fail(f"{who_zh} 的输出不像一个作用在输入上的卷积网络：{what_zh}。请确认 forward 返回网络对输入 x 的计算结果",
         f"{who_en}'s outputs do not behave like a convolutional network applied to its input: {what_en}. Make "
         f"sure forward returns what the network computes from its input")


def _verify(y, tag, who_zh, who_en, big=False):
    """y: the batch output (rows in G_ROWS / D_ROWS order, row 3 the shifted row 0; the x10 run is
    passed as rows 0, 0, 0, 1). Shift equivariance on the output's own grid; dependence on the input."""
    if y.ndim >= 3 and min(y.shape[-2:]) >= 8:
        h = y.shape[-1]
        s = int(round(SHIFT * h / 256))
        if s >= 1:
            moved, base = E.shifted_interior(y[0], y[3], s, max(h // 8, 2))
            scale = max(1.0, float(np.abs(y).max()))
            if moved.size == 0 or not np.allclose(moved, base, rtol=0, atol=1e-4 * scale):
                _not_a_network(who_zh, who_en, "输入平移 16 像素时，输出没有相应平移（边缘以外）",
                               "shifting the input by 16 pixels does not shift the output (away from the borders)")
    if big:
        return
    if tag == "g":
        if np.allclose(y[0], y[1], rtol=0, atol=1e-6):
            _not_a_network(who_zh, who_en, "两个不同输入得到相同输出", "two different inputs give the same output")
        if y.shape[-2:] == (256, 256):
            diff = np.abs(y[2] - y[0]).reshape(-1, 256, 256).max(axis=0)
            ring = diff[118:138, 118:138].copy()
            ring[6:14, 6:14] = 0  # the changed 4x4 patch and its direct neighbours
            if ring.max() <= 1e-6:
                _not_a_network(who_zh, who_en, "改变输入中的一小块时，输出只在同一位置改变（没有卷积的邻域作用）",
                               "changing a small patch of the input changes the output only at the same pixels "
                               "(no convolution's neighbourhood)")
    elif np.allclose(y[1], y[0], rtol=0, atol=1e-6) and np.allclose(y[2], y[0], rtol=0, atol=1e-6):
        _not_a_network(who_zh, who_en, "改变任一输入时输出都不变", "changing either input does not change the output")


@check("2.1")
def check_generator_shape(g_out):
    y, _ = _arrays(g_out, "g")
    if y.shape != (4, 1, 256, 256):
        fail(f"生成器 Generator 对 4 个 (1,256,256) 输入的输出形状为 {y.shape}，应为 (4, 1, 256, 256)：编码器的下采样次数"
             f"应与解码器的上采样次数相同，最后一层输出 1 个通道",
             f"the generator's output for 4 inputs of (1,256,256) is {y.shape}, expected (4, 1, 256, 256): the "
             f"encoder's downsampling must be undone by the decoder's upsampling, and the last layer must output "
             f"1 channel")


@check("2.2")
def check_generator_range(g_out):
    y, big = _arrays(g_out, "g")  # judged on whatever shape G produced
    for arr, when_zh, when_en in ((y, "默认初始化", "default init"), (big, "参数放大 10 倍", "weights x10")):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1.0 or hi > 1.0:
            fail(f"生成器输出超出 [-1, 1]（{when_zh}：[{lo:.3g}, {hi:.3g}]）：最后一层之后加 nn.Tanh()，与数据的 [-1, 1] 对应",
                 f"the generator's output leaves [-1, 1] ({when_en}: [{lo:.3g}, {hi:.3g}]): end with nn.Tanh(), "
                 f"matching the data's [-1, 1]")
    lo, hi = float(big.min()), float(big.max())
    if lo > -0.5:
        fail(f"参数放大 10 倍时生成器输出在 [{lo:.3g}, {hi:.3g}] 内，到不了 -1：数据中黑色背景是 -1，生成器永远画不出来。"
             f"最后一层应为 nn.Tanh()（不是 nn.Sigmoid()，它只输出 (0, 1)）",
             f"with weights x10 the generator's output stays in [{lo:.3g}, {hi:.3g}] and never reaches -1: the "
             f"black background of the data is -1, which this generator can never draw. End with nn.Tanh() (not "
             f"nn.Sigmoid(), which only gives (0, 1))")
    if hi < 0.5:
        fail(f"参数放大 10 倍时生成器输出在 [{lo:.3g}, {hi:.3g}] 内，到不了 1：最后一层应为 nn.Tanh()，输出覆盖 [-1, 1]",
             f"with weights x10 the generator's output stays in [{lo:.3g}, {hi:.3g}] and never reaches 1: end "
             f"with nn.Tanh(), whose output covers [-1, 1]")


@check("2.3")
def check_discriminator_shape(d_out):
    y, _ = _arrays(d_out, "d")
    if y.shape != (4, 1, 63, 63):
        fail(f"判别器 Discriminator 对 4 对输入的输出形状为 {y.shape}，应为 (4, 1, 63, 63)：两次 stride 2 的卷积后，最后一个 "
             f"Conv2d 应为 kernel 4、stride 1、padding 1（64 -> 63），并在 dim=1 上拼接两个输入",
             f"the discriminator's output for 4 input pairs is {y.shape}, expected (4, 1, 63, 63): after two "
             f"stride-2 convolutions the last Conv2d must have kernel 4, stride 1, padding 1 (64 -> 63), and the "
             f"two inputs are concatenated on dim=1")


@check("2.4")
def check_discriminator_range(d_out):
    p, big = _arrays(d_out, "d")  # judged on whatever shape D produced
    if not (p.min() > 0 and p.max() < 1 and big.min() >= 0 and big.max() <= 1):
        lo, hi = min(p.min(), big.min()), max(p.max(), big.max())
        fail(f"判别器输出 [{lo:.3g}, {hi:.3g}]（含参数放大 10 倍时）不是 (0, 1) 内的概率：最后加 nn.Sigmoid()（BCELoss 需要概率）",
             f"the discriminator's output [{lo:.3g}, {hi:.3g}] (also with weights x10) is not a probability in "
             f"(0, 1): end with nn.Sigmoid() (BCELoss expects probabilities)")


@check("2.5")
def check_discriminator_conditioning(d_out):
    y, _ = _arrays(d_out, "d")  # judged on whatever shape D produced
    for row, which_zh, which_en in ((1, "第一个输入 x1 (T1)", "the first input x1 (T1)"),
                                    (2, "第二个输入 x2 (T2)", "the second input x2 (T2)")):
        if np.allclose(y[row], y[0], rtol=0, atol=1e-6):
            fail(f"只改变{which_zh}时判别器输出不变：forward 中应 torch.cat([x1, x2], dim=1) 后送入网络，"
                 f"第一层 Conv2d 的输入通道为 2",
                 f"changing only {which_en} does not change the discriminator's output: forward must feed "
                 f"torch.cat([x1, x2], dim=1) to the network, whose first Conv2d has 2 input channels")


@check("2.6")
def check_gradient_flow(student_code, secret, g_out, d_out):
    for name, tag, out in (("Generator", "g", g_out), ("Discriminator", "d", d_out)):
        keys = ("gx",) if tag == "g" else ("dx1", "dx2")
        inputs = {k: secret["inputs"][k][:1] for k in keys}
        req = Request(f"grads_{name}", "grads", f"{name} backward", {"seed": secret["seed"], "net": name}, inputs)
        value, arrays = student_code.run(req, after=[f"{tag}_fwd"])
        value = value if isinstance(value, dict) else {}
        try:
            y, _ = _arrays(out, tag)
        except pytest.fail.Exception:
            fail(f"{name} 的前向输出未通过检查，此项无法判断：先看 {'2.1' if tag == 'g' else '2.3'}",
                 f"{name}'s forward outputs failed their checks, so gradients cannot be judged: see "
                 f"{'2.1' if tag == 'g' else '2.3'} first")
        params = [str(n) for n in value.get("params") or []]
        if not params:
            fail(f"{name} 没有可训练参数：层要注册为属性（如 self.model = nn.Sequential(...)）",
                 f"{name} has no parameters: layers must be attributes (e.g. self.model = nn.Sequential(...))")
        out_y = arrays.get("y")
        if out_y is None or out_y.shape != y[:1].shape or not np.allclose(out_y, y[:1], rtol=1e-4, atol=1e-5):
            fail(f"{name} 在反向传播运行中的输出与前向运行中同一输入的输出不同：网络应是输入的确定函数（eval 模式下）",
                 f"{name}'s output in the backward run differs from its output on the same input in the forward "
                 f"run: the network must be a deterministic function of its input (in eval mode)")
        grads = {n: arrays.get("p." + n) for n in params}
        bad = [n for n, g in grads.items() if g is None or g.dtype.kind != "f"]
        if bad:
            fail(f"{name} 的参数 {bad[:5]} 没有得到梯度：不要在 forward 中使用 torch.no_grad()、.detach() 或 "
                 f"requires_grad=False，所有层都要参与 forward",
                 f"{name} parameters {bad[:5]} receive no gradient: no torch.no_grad(), .detach() or "
                 f"requires_grad=False in forward, and every layer must be used in forward")
        if not all(np.isfinite(g).all() for g in grads.values()):
            fail(f"{name} 的梯度含有 NaN 或 inf：检查 forward", f"{name}'s gradients contain NaN or inf: check forward")
        if all(not np.any(g) for g in grads.values()):
            fail(f"{name} 的所有参数梯度都为 0：输出没有依赖参数？检查 forward",
                 f"every gradient of {name}'s parameters is 0: does the output depend on them? check forward")
