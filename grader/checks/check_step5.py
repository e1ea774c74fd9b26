"""Step 5 · visualize (figure file, panels, eval-mode inference without a graph) and import hygiene."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from grader import hygiene
from grader import reference as ref
from grader.harness import check, fail

WHERE_ZH = "检查 visualize"
WHERE_EN = "check visualize"
MAX_PNG = 50 * 2 ** 20


@pytest.fixture(scope="module")
def setup():
    G, _ = ref.new_nets(5)
    rng = np.random.default_rng(51)
    for m in G.modules():  # running statistics far from any batch's: eval and train mode disagree
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.from_numpy(rng.uniform(-0.3, 0.3, m.num_features).astype(np.float32)))
            m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, m.num_features).astype(np.float32)))
    state = ref.state_arrays(G)
    t1, t2 = ref.phantom_pairs(2, seed=50)
    return state, t1, t2


@pytest.fixture(scope="module")
def vis(sub, setup):
    state, t1, t2 = setup
    path = sub.worker.path("figure.png")
    value, arrays = sub.run("visualize", "visualize", "visualize", {"path": path, "indices": [0]},
                            {**state, "t1": t1, "t2": t2})
    return path, value, arrays


@pytest.fixture(scope="module")
def image(vis):
    path, value, _ = vis
    if not os.path.isfile(path):
        fail(f"visualize 没有在给定的 path 写出文件：使用 plt.savefig(path) / {WHERE_ZH}",
             f"visualize wrote no file at the given path: use plt.savefig(path) / {WHERE_EN}")
    if os.path.getsize(path) > MAX_PNG:
        fail("图像文件过大 / the figure file is too large", "")
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            fail(f"写出的文件不是 PNG：文件名以 .png 结尾并用 plt.savefig(path) 保存 / {WHERE_ZH}",
                 f"the file written is not a PNG: save with plt.savefig(path) to a .png name / {WHERE_EN}")
    Image.MAX_IMAGE_PIXELS = 40_000_000
    try:
        with Image.open(path) as im:
            im.load()
            gray = np.asarray(im.convert("L"))
    except Exception as e:  # noqa: BLE001 - any decoding problem is the file's
        fail(f"PNG 无法解码 / the PNG cannot be decoded: {type(e).__name__}: {e}", "")
    return gray


@check("5.1")
def check_png_and_path(vis, image):
    path, value, _ = vis
    got = value.get("returned_path")
    if got is None or os.path.abspath(got) != os.path.abspath(path):
        fail(f"visualize 返回了 {value['returned']['type']}（{got}），应返回保存的路径 path / {WHERE_ZH}：最后 return path",
             f"visualize returned {value['returned']['type']} ({got}), expected the path it saved to: end with "
             f"return path")
    if min(image.shape) < 64:
        fail(f"图像只有 {image.shape[1]}x{image.shape[0]} 像素 / the figure is only {image.shape[1]}x{image.shape[0]} px",
             "")


@check("5.2")
def check_not_blank(image):
    if image.std() < 5:
        fail(f"图像几乎是纯色（标准差 {image.std():.1f}）：是否在 imshow 之前保存了空白图？/ {WHERE_ZH}",
             f"the figure is almost uniform (std {image.std():.1f}): saved before imshow? / {WHERE_EN}")


@check("5.3")
def check_three_panels(image, note):
    runs, _ = ref.panel_columns(image)
    if len(runs) == 1:  # panels drawn edge to edge (e.g. one concatenated image): judge by aspect
        rows = np.nonzero((np.abs(image.astype(int) - np.bincount(image[0]).argmax()) > 24).mean(axis=1) > 0.15)[0]
        height = rows.max() - rows.min() + 1 if rows.size else 0
        width = runs[0][1] - runs[0][0]
        if height and 2.6 <= width / height <= 3.4:
            note("三个面板紧挨着（无间隔）/ the three panels touch (no gaps)")
            return
    if len(runs) != 3:
        fail(f"一行样本的图中找到 {len(runs)} 个面板，应为 3 个（T1 输入 | 生成的 T2 | 真实的 T2）："
             f"用 plt.subplot(1, 3, k) 或 plt.subplots(len(indices), 3) 画三列 / {WHERE_ZH}",
             f"found {len(runs)} panels in a one-sample figure, expected 3 (T1 input | generated T2 | real T2): "
             f"draw three columns with plt.subplot(1, 3, k) or plt.subplots(len(indices), 3) / {WHERE_EN}")


@check("5.4")
def check_eval_mode(vis, setup):
    _, value, arrays = vis
    calls = value["calls"]
    if not calls:
        fail(f"visualize 没有调用生成器 G：生成的 T2 应为 G(t1.unsqueeze(0)) / {WHERE_ZH}",
             f"visualize never called the generator G: the generated T2 is G(t1.unsqueeze(0)) / {WHERE_EN}")
    if any(c["training"] for c in calls):
        fail(f"调用 G 时它仍处于训练模式：先调用 G.eval()，BatchNorm 才会使用运行统计量 / {WHERE_ZH}",
             f"G was called in training mode: call G.eval() first so BatchNorm uses its running statistics "
             f"/ {WHERE_EN}")
    # Re-compute the first call in the judge: the output must be the eval-mode output of its input.
    state = setup[0]
    if "in0" in arrays and "out0" in arrays:
        G = ref.kit().Generator()
        ref.load_state(G, state, "G.")
        G.eval()
        with torch.no_grad():
            want = G(torch.from_numpy(arrays["in0"].astype(np.float32))).numpy()
        if want.shape != arrays["out0"].shape or not np.allclose(want, arrays["out0"], atol=1e-4):
            fail(f"生成的 T2 与 eval 模式下 G 的输出不同：结果不应依赖批统计量（G.eval()）/ {WHERE_ZH}",
                 f"the generated T2 differs from G's eval-mode output: it must not depend on batch statistics "
                 f"(G.eval()) / {WHERE_EN}")


@check("5.5")
def check_no_grad(vis):
    _, value, _ = vis
    calls = value["calls"]
    if not calls:
        fail(f"visualize 没有调用生成器 G / visualize never called the generator G", "")
    if any(c["grad_enabled"] or c["requires_grad"] for c in calls):
        fail(f"推理时构建了计算图：把 G(...) 放在 with torch.no_grad(): 之中 / {WHERE_ZH}",
             f"inference built an autograd graph: put G(...) inside with torch.no_grad(): / {WHERE_EN}")


def _module_code_line(worker):
    """(where, text) of the module-level line to blame: the line the import failed at if the traceback
    names one, else the first statement the definitions-only copy left out (grader/sources.py)."""
    import json
    import re
    from pathlib import Path

    from grader.sources import where

    sub_path = Path(worker.module_code.get("original") or "")
    text = sub_path.read_text(encoding="utf-8") if sub_path.is_file() else ""
    failure = worker.module_code.get("failure")
    if failure is not None and text:
        lines = [int(n) for n in re.findall(r'File "' + re.escape(str(sub_path)) + r'", line (\d+), in <module>',
                                            failure.detail or "")]
        if lines and lines[-1] <= len(text.split("\n")):
            return where(lines[-1], text), text.split("\n")[lines[-1] - 1].strip()
    try:
        dropped = json.loads(sub_path.with_name("definitions.json").read_text(encoding="utf-8"))["dropped"]
    except (OSError, ValueError, KeyError, TypeError):
        dropped = []
    if dropped:
        return str(dropped[0]["where"]), str(dropped[0]["text"])
    return None, None


def _module_code_failure(worker):
    mc = worker.module_code
    failure = mc.get("failure")
    if failure is None:
        reasons = mc.get("reasons") or []
        zh, en = "、".join(r[0] for r in reasons), ", ".join(r[1] for r in reasons)
    elif failure.kind == "timeout":
        zh, en = f"超时（{failure.message}）", f"timed out ({failure.message})"
    elif failure.kind == "crashed":
        zh, en = f"进程退出（{failure.message}）", f"the process exited ({failure.message})"
    else:
        zh, en = f"出错：{failure.message}", f"failed: {failure.message}"
    place, line = _module_code_line(worker)
    graded = mc.get("graded")
    what_zh = "只评分了文件中的定义（import、def/class 及它们所需的常量）" if graded else "其中的定义也无法单独导入"
    what_en = "only its definitions were graded (imports, def/class and the constants they need)" if graded else \
        "its definitions alone do not import either"
    at_zh = f"{place}：`{line}` 是模块级代码，" if place else ""
    at_en = f"{place.split(' / ')[-1]}: `{line}` is module-level code: " if place else ""
    fail(f"导入文件时{zh}，{what_zh}。{at_zh}请把它（以及其后运行、训练的代码）移到 if __name__ == \"__main__\": 之下"
         f"（笔记本中删掉这些单元格，或给它们加 run 标签）",
         f"importing the file {en}; {what_en}. {at_en}move it (and the run or training code after it) under "
         f"if __name__ == \"__main__\": (in the notebook, delete those cells or tag them \"run\")")


@check("5.6")
def check_import_hygiene(sub, note, vis):
    # `vis` ties these points to a working visualize: an empty template imports cleanly too, and
    # must not earn anything for it.
    sub.import_info()
    w = sub.worker
    if w.module_code is not None:
        _module_code_failure(w)
    facts = w.import_facts or {}
    if facts.get("cpu") is not None:
        note(f"导入耗时 / import took {facts.get('wall', 0):.2f} s ({facts['cpu']:.2f} s CPU)")
    problems = hygiene.problems(facts)
    files = w.cwd_listing_after_import
    if files:
        problems.insert(0, (f"在当前目录创建了 {files[:5]}", f"created {files[:5]} in the working directory"))
    if problems:
        fail("导入文件时" + "、".join(p[0] for p in problems) + "：训练和运行代码应放在 if __name__ == \"__main__\": 之下"
             "（笔记本中给这些单元格加 run 标签）",
             "importing the file " + ", ".join(p[1] for p in problems) + ": training and run code belongs under "
             "if __name__ == \"__main__\": (in the notebook, tag those cells \"run\")")
    late = hygiene.cwd_files(w.sandbox)
    if late:
        fail(*hygiene.files_message(late).split("\n", 1))
