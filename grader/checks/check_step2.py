"""Step 2 · Generator and Discriminator: shapes, output ranges, conditioning, gradient flow."""
import numpy as np
import pytest

from grader.check_plugin import Request, check, fail

N = 2


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(2)
    u = lambda: rng.uniform(-1, 1, (N, 1, 256, 256)).astype(np.float32)
    return {"x": u(), "y": u(), "x2": u(), "y2": u()}


@pytest.fixture(scope="module")
def g_out(student_code, inputs):
    return student_code.run(Request("g_fwd", "networks", "Generator()(x)", {"seed": 0, "G": True}, inputs))


@pytest.fixture(scope="module")
def d_out(student_code, inputs):
    return student_code.run(Request("d_fwd", "networks", "Discriminator()(x1, x2)", {"seed": 0, "D": True}, inputs))


def _shape(value, key, expected, who, hint_zh, hint_en):
    d = value.get(key, {})
    if d.get("dtype") is None:
        fail(f"{who} 返回了 {d.get('type')}，应为张量：检查 forward 的 return",
             f"{who} returned {d.get('type')}, expected a tensor: check the return of forward")
    if tuple(d["shape"]) != expected:
        fail(f"{who} 输出形状为 {tuple(d['shape'])}，应为 {expected}：{hint_zh}",
             f"{who} output is {tuple(d['shape'])}, expected {expected}: {hint_en}")


def _tensor(value, key, who):
    """2.2, 2.4 and 2.5 judge values, not the shape (2.1 and 2.3 do): a wrong shape costs one check."""
    d = value.get(key, {})
    if d.get("dtype") is None:
        fail(f"{who} 返回了 {d.get('type')}，应为张量：检查 forward 的 return",
             f"{who} returned {d.get('type')}, expected a tensor: check the return of forward")


@check("2.1")
def check_generator_shape(g_out):
    value, _ = g_out
    _shape(value, "g", (N, 1, 256, 256), "生成器 Generator",
           "编码器的下采样次数应与解码器的上采样次数相同，最后一层输出 1 个通道",
           "the encoder's downsampling must be undone by the decoder's upsampling, and the last layer "
           "must output 1 channel")


@check("2.2")
def check_generator_range(g_out):
    value, arrays = g_out
    _tensor(value, "g", "生成器 Generator")
    for key, when in (("g", "默认初始化 / default init"), ("g_big", "参数放大 10 倍 / weights x10")):
        y = arrays.get(key)
        if y is None or not np.isfinite(y).all() or y.min() < -1.0 or y.max() > 1.0:
            lo, hi = (float(np.nanmin(y)), float(np.nanmax(y))) if y is not None and y.size else (None, None)
            fail(f"生成器输出超出 [-1, 1]（{when}：[{lo}, {hi}]）：最后一层之后加 nn.Tanh()，与数据的 [-1, 1] 对应",
                 f"generator output leaves [-1, 1] ({when}: [{lo}, {hi}]): end with nn.Tanh(), matching the "
                 f"data's [-1, 1]")


@check("2.3")
def check_discriminator_shape(d_out):
    value, _ = d_out
    _shape(value, "d", (N, 1, 63, 63), "判别器 Discriminator",
           "两次 stride 2 的卷积后，最后一个 Conv2d 应为 kernel 4、stride 1、padding 1（64 -> 63），并在 dim=1 上拼接两个输入",
           "after two stride-2 convolutions the last Conv2d must have kernel 4, stride 1, padding 1 "
           "(64 -> 63), and the two inputs are concatenated on dim=1")


@check("2.4")
def check_discriminator_range(d_out):
    value, arrays = d_out
    _tensor(value, "d", "判别器 Discriminator")
    p, big = arrays.get("d"), arrays.get("d_big")
    ok = p is not None and np.isfinite(p).all() and p.min() > 0 and p.max() < 1
    ok = ok and big is not None and np.isfinite(big).all() and big.min() >= 0 and big.max() <= 1
    if not ok:
        rng = f"[{float(np.nanmin(p)):.3g}, {float(np.nanmax(p)):.3g}]" if p is not None and p.size else "?"
        fail(f"判别器输出 {rng} 不是 (0, 1) 内的概率：最后加 nn.Sigmoid()（BCELoss 需要概率）",
             f"discriminator output {rng} is not a probability in (0, 1): end with nn.Sigmoid() "
             f"(BCELoss expects probabilities)")


@check("2.5")
def check_discriminator_conditioning(d_out):
    value, arrays = d_out
    _tensor(value, "d", "判别器 Discriminator")
    base = arrays["d"]
    for key, which_zh, which_en in (("d_x2", "第一个输入 x1 (T1)", "the first input x1 (T1)"),
                                    ("d_y2", "第二个输入 x2 (T2)", "the second input x2 (T2)")):
        other = arrays.get(key)
        if other is None or other.shape != base.shape or np.allclose(other, base, atol=1e-6):
            fail(f"改变{which_zh}时判别器输出不变：forward 中应 torch.cat([x1, x2], dim=1) 后送入网络，"
                 f"第一层 Conv2d 的输入通道为 2",
                 f"changing {which_en} does not change the discriminator's output: forward must feed "
                 f"torch.cat([x1, x2], dim=1) to the network, whose first Conv2d has 2 input channels")


@check("2.6")
def check_gradient_flow(student_code, inputs):
    for name, after in (("Generator", "g_fwd"), ("Discriminator", "d_fwd")):
        value, _ = student_code.run(Request(f"grads_{name}", "grads", f"{name} backward", {"seed": 0, "nets": [name]},
                                            {"x": inputs["x"], "y": inputs["y"]}), after=[after])
        v = value[name]
        if v["total"] == 0:
            fail(f"{name} 没有可训练参数：层要注册为属性（如 self.model = nn.Sequential(...)）",
                 f"{name} has no parameters: layers must be attributes (e.g. self.model = nn.Sequential(...))")
        bad = v["frozen"] + v["no_grad"]
        if bad or v["nonzero"] == 0:
            fail(f"{name} 的参数 {bad[:5]} 没有得到梯度：不要在 forward 中使用 torch.no_grad()、.detach() 或 "
                 f"requires_grad=False，所有层都要参与 forward",
                 f"{name} parameters {bad[:5]} receive no gradient: no torch.no_grad(), .detach() or "
                 f"requires_grad=False in forward, and every layer must be used in forward")
