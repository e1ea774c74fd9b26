"""Step 5 · visualize (figure file, panels, eval-mode inference without a graph) and import hygiene."""
import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from grader import expected, hygiene
from grader.check_plugin import Request, check, fail
from grader.worker_process import CallFailed

WHERE_ZH = "检查 visualize"
WHERE_EN = "check visualize"
MAX_PNG = 20 * 2 ** 20  # bytes; the handout's figure is ~100 KB
MAX_PIXELS = 16_000_000  # 16 MP; the handout's figure is 0.27 MP, even 4 rows at dpi 300 stay under 10 MP


@pytest.fixture(scope="module")
def scene():
    """What visualize is given: the state of the grader's G (expected.visualize_generator) and the
    dataset's slices (item 0 is the one the figure must show)."""
    t1, t2 = expected.visualize_slices()
    return SimpleNamespace(state=expected.state_arrays(expected.visualize_generator()), t1=t1, t2=t2)


@pytest.fixture(scope="module")
def vis(student_code, scene):
    path = student_code.worker.path("figure.png")
    value, arrays = student_code.run(Request("visualize", "visualize", "visualize", {"path": path, "indices": [0]},
                                             {**scene.state, "t1": scene.t1, "t2": scene.t2}))
    return path, value, arrays


@pytest.fixture(scope="module")
def image(vis, student_code):
    # The file lies in a folder the worker writes: read it without following links, regular files only,
    # size-capped, and refuse a huge pixel count from the header BEFORE anything is decoded.
    path, value, _ = vis
    try:
        data = student_code.worker.read_reply(path, MAX_PNG)
    except CallFailed as e:
        fail(f"visualize 在 path 处写出的不是普通文件（链接、管道？）或文件过大 / {WHERE_ZH}: {e.message}",
             f"what visualize left at the given path is not a plain file (a link, a pipe?) or too large / "
             f"{WHERE_EN}: {e.message}")
    if data is None:
        fail(f"visualize 没有在给定的 path 写出文件：使用 plt.savefig(path) / {WHERE_ZH}",
             f"visualize wrote no file at the given path: use plt.savefig(path) / {WHERE_EN}")
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"写出的文件不是 PNG：文件名以 .png 结尾并用 plt.savefig(path) 保存 / {WHERE_ZH}",
             f"the file written is not a PNG: save with plt.savefig(path) to a .png name / {WHERE_EN}")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own guard as a second line (it errors above 2x this)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the IHDR header: nothing decoded yet
            if w * h > MAX_PIXELS:
                fail(f"图像有 {w}x{h} 像素，超过上限 {MAX_PIXELS}：用 figsize=(9, 3)、dpi=100 保存 / {WHERE_ZH}",
                     f"the figure has {w}x{h} pixels, more than the limit of {MAX_PIXELS}: save it with "
                     f"figsize=(9, 3), dpi=100 / {WHERE_EN}")
            im.load()
            gray = np.asarray(im.convert("L"))
    except pytest.fail.Exception:
        raise
    except Image.DecompressionBombError as e:  # PIL's own header check (above 2 x MAX_PIXELS)
        fail(f"图像像素过多，超过上限 {MAX_PIXELS}：用 figsize=(9, 3)、dpi=100 保存 / {WHERE_ZH}: {e}",
             f"the figure has more pixels than the limit of {MAX_PIXELS}: save it with figsize=(9, 3), dpi=100 "
             f"/ {WHERE_EN}")
    except Exception as e:  # noqa: BLE001 - any decoding problem is the file's
        fail(f"PNG 无法解码：{type(e).__name__}: {e} / {WHERE_ZH}",
             f"the PNG cannot be decoded: {type(e).__name__}: {e} / {WHERE_EN}")
    return gray


@pytest.fixture(scope="module")
def content(image, scene):
    """Whether the figure shows G's output on the chosen slice, as the judge computes it here (eval mode,
    or train mode when G.eval() is missing: that is 5.4's to judge), in a panel that does not look more
    like T1 or the real T2. 5.1-5.3 and 5.6 count only then: a figure without it earns nothing."""
    t1, t2 = scene.t1, scene.t2
    ev, tr = expected.g_outputs(scene.state, t1[:1])
    blank = float(image.std()) < 5
    for mode, img in (("eval", ev[0, 0]), ("train", tr[0, 0])):
        sim, box = expected.shows(image, img, [t1[0, 0], t2[0, 0]])
        if box is not None and not blank:
            return SimpleNamespace(mode=mode, box=box, sim=sim, img=img, blank=blank)
    return SimpleNamespace(mode=None, box=None, sim=0.0, img=None, blank=blank)


def _see_first(content, cid):
    """The figure must show G's output before anything else about it counts."""
    if content.mode is None:
        if content.blank:
            fail(f"图像几乎是纯色，无法评判（先看 5.2）/ {WHERE_ZH}", f"the figure is almost uniform, nothing to judge (see "
                                                             f"5.2 first) / {WHERE_EN}")
        fail(f"图中找不到 G 对该切片的输出，无法评判（先看 5.1）/ {WHERE_ZH}" if cid != "5.1" else
             f"图中没有 G 对评分程序所选切片的输出（评分程序自己算出这张图并在图中寻找它）：中间一列应画 "
             f"G(t1.unsqueeze(0))，t1 取自 dataset[indices[0]] / {WHERE_ZH}",
             f"the figure does not show G's output on that slice (see 5.1 first) / {WHERE_EN}" if cid != "5.1" else
             f"the figure does not show G's output on the slice the grader chose (the grader computes that image "
             f"itself and looks for it in the figure): the middle column must show G(t1.unsqueeze(0)) with t1 from "
             f"dataset[indices[0]] / {WHERE_EN}")


@check("5.1")
def check_png_and_path(vis, image, content, note):
    path, value, _ = vis
    got = value.get("returned_path")  # reported (protocol.py): a hint, never a point
    if got is None or os.path.abspath(got) != os.path.abspath(path):
        note(f"提示（不计分）：visualize 返回了 {value['returned']['type']}（{got}），接口要求返回保存的路径：最后 return path / "
             f"hint (not scored): visualize returned {value['returned']['type']} ({got}); the contract returns the "
             f"path it saved to: end with return path")
    if min(image.shape) < 64:
        fail(f"图像只有 {image.shape[1]}x{image.shape[0]} 像素 / {WHERE_ZH}",
             f"the figure is only {image.shape[1]}x{image.shape[0]} px / {WHERE_EN}")
    _see_first(content, "5.1")


@check("5.2")
def check_not_blank(image, content):
    if image.std() < 5:
        fail(f"图像几乎是纯色（标准差 {image.std():.1f}）：是否在 imshow 之前保存了空白图？/ {WHERE_ZH}",
             f"the figure is almost uniform (std {image.std():.1f}): saved before imshow? / {WHERE_EN}")
    _see_first(content, "5.2")
    y0, y1, x0, x1 = content.box
    part = expected.clipped_range(image[y0:y1, x0:x1], content.img)
    if part == "dark":
        fail(f"图中 G 的输出在 [-1, 0) 的部分全部显示为同一种颜色：imshow 把 [-1, 1] 的图像截断到了 [0, 1]（vmin=0 / RGB 浮点图），"
             f"暗的一半看不见。先映射到 [0, 1]：((x.clamp(-1, 1) + 1) / 2)，再 imshow(..., cmap=\"gray\", vmin=0, vmax=1)，"
             f"或直接 imshow(x, cmap=\"gray\", vmin=-1, vmax=1) / {WHERE_ZH}",
             f"G's output is drawn in one flat colour wherever it is below 0: imshow clipped the [-1, 1] image to "
             f"[0, 1] (vmin=0, or a float RGB image), so the dark half is invisible. Map it to [0, 1] first, "
             f"(x.clamp(-1, 1) + 1) / 2, then imshow(..., cmap=\"gray\", vmin=0, vmax=1), or imshow(x, cmap=\"gray\", "
             f"vmin=-1, vmax=1) / {WHERE_EN}")
    if part == "bright":
        fail(f"图中 G 的输出在 (0, 1] 的部分全部显示为同一种颜色：显示范围截断了亮的一半。用 imshow(x, cmap=\"gray\", vmin=-1, vmax=1)"
             f"，或先映射到 [0, 1] 再用 vmin=0, vmax=1 / {WHERE_ZH}",
             f"G's output is drawn in one flat colour wherever it is above 0: the display range clips the bright half. "
             f"Use imshow(x, cmap=\"gray\", vmin=-1, vmax=1), or map to [0, 1] first and use vmin=0, vmax=1 / "
             f"{WHERE_EN}")


@check("5.3")
def check_three_panels(image, content, note):
    _see_first(content, "5.3")
    runs, _ = expected.panel_columns(image)
    if len(runs) == 1:  # panels drawn edge to edge (e.g. one concatenated image): judge by aspect
        rows = np.nonzero((np.abs(image.astype(int) - np.bincount(image[0]).argmax()) > 24).mean(axis=1) > 0.15)[0]
        height = rows.max() - rows.min() + 1 if rows.size else 0
        width = runs[0][1] - runs[0][0]
        if height and 2.6 <= width / height <= 3.4:
            note("三个面板紧挨着（无间隔）/ the three panels touch (no gaps)")
            return
    if len(runs) != 3 and not _three_in_row(image, content):
        fail(f"一行样本的图中找到 {len(runs)} 个面板，应为 3 个（T1 输入 | 生成的 T2 | 真实的 T2）："
             f"用 plt.subplot(1, 3, k) 或 plt.subplots(len(indices), 3) 画三列 / {WHERE_ZH}",
             f"found {len(runs)} panels in a one-sample figure, expected 3 (T1 input | generated T2 | real T2): "
             f"draw three columns with plt.subplot(1, 3, k) or plt.subplots(len(indices), 3) / {WHERE_EN}")


def _three_in_row(image, content):
    """Three equal image boxes in the row of G's output (one of them may look like the background)."""
    y0, y1, x0, x1 = content.box
    row = {b for b in expected.all_boxes(image) if b[:2] == (y0, y1) and b[3] - b[2] == x1 - x0}
    return len(row) == 3


MATCH, MARGIN = expected.PANEL_MATCH, expected.PANEL_MARGIN
OUT_TOL = 0.02  # relative error of a recorded output against the judge's recomputation (bf16 passes)


def _rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / (np.linalg.norm(b) + 1e-12))


@pytest.fixture(scope="module")
def calls(vis, scene):
    """Every call of G that visualize made, recomputed here from its recorded input: in which mode
    (eval / train) the output really was computed, and the output on the grader's slice if G saw it.
    The worker's own words (mode, grad) are kept beside, to be believed only for verified calls."""
    _, value, arrays = vis
    state, t1 = scene.state, scene.t1
    out = {"calls": [], "problem": None, "slice_out": None}
    recs = value["calls"]
    if not recs:
        out["problem"] = ("visualize 没有调用生成器 G：生成的 T2 应为 G(t1.unsqueeze(0))",
                          "visualize never called the generator G: the generated T2 is G(t1.unsqueeze(0))")
        return out
    if value["n_calls"] > len(recs) or any(not c.get("tensors") or f"in{k}" not in arrays or f"out{k}" not in arrays
                                           for k, c in enumerate(recs)):
        out["problem"] = ("有对 G 的调用无法复核（没有张量输入输出，或超过 8 次）：visualize 应直接以张量调用 G(t1.unsqueeze(0))",
                          "some calls of G cannot be checked (no tensor input/output, or more than 8 calls): visualize "
                          "should call G(t1.unsqueeze(0)) on a tensor")
        return out
    for k, c in enumerate(recs):
        x, y = arrays[f"in{k}"], arrays[f"out{k}"]
        mode = None
        if x.ndim == 4 and x.shape[1:] == (1, 256, 256) and y.shape == x.shape:
            ev, tr = expected.g_outputs(state, x)
            mode = "eval" if _rel(y, ev) < OUT_TOL else ("train" if _rel(y, tr) < OUT_TOL else None)
        if mode is None:
            out["problem"] = (f"第 {k + 1} 次调用 G 的输出与评分程序用同一输入重算的结果不同",
                              f"the output of call {k + 1} of G differs from the grader's recomputation on the same input")
            return out
        out["calls"].append({**c, "mode": mode})
        for row in range(x.shape[0]):
            if out["slice_out"] is None and np.allclose(x[row], t1[0], atol=1e-5):
                out["slice_out"] = y[row, 0]
    if out["slice_out"] is None:
        out["problem"] = ("G 没有在评分程序指定的切片（dataset[indices[0]]，没有 indices 参数时为 dataset[0]）上调用",
                          "G was never called on the slice the grader chose (dataset[indices[0]], or dataset[0] when "
                          "visualize has no indices parameter)")
    return out


def _middle_panels(image):
    """Crops of the middle column, one per figure row (a visualize may draw more than one slice)."""
    boxes = expected.panel_boxes(image)
    return [image[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes[1]] if boxes else []


@check("5.4")
def check_eval_mode(calls, scene, image, content, note):
    if calls["problem"]:
        fail(f"{calls['problem'][0]} / {WHERE_ZH}", f"{calls['problem'][1]} / {WHERE_EN}")
    if any(c["grad_enabled"] or c["requires_grad"] for c in calls["calls"]):
        # Grad mode is the worker's word (protocol.py: reported), which the judge cannot recompute: a hint only.
        note(f"提示（不计分）：推理时构建了计算图，把 G(...) 放在 with torch.no_grad(): 之中（省内存）/ hint (not scored): "
             f"inference built an autograd graph; put G(...) inside with torch.no_grad(): (it saves memory)")
    if any(c["mode"] != "eval" for c in calls["calls"]):  # reported gate: no, "mode" is the judge's recomputation
        fail(f"调用 G 时它仍处于训练模式（输出依赖批统计量）：先调用 G.eval()，BatchNorm 才会使用运行统计量 / {WHERE_ZH}",
             f"G was called in training mode (its output depends on batch statistics): call G.eval() first so "
             f"BatchNorm uses its running statistics / {WHERE_EN}")
    # The figure itself must show G's eval-mode output on that slice, computed here, not in the worker.
    t1, t2 = scene.t1, scene.t2
    ev, tr = expected.g_outputs(scene.state, t1[:1])
    mids = _middle_panels(image)
    if not mids and content.box is not None:  # not three columns (5.3's to judge): the panel with G's output
        y0, y1, x0, x1 = content.box
        mids = [image[y0:y1, x0:x1]]
    if not mids:
        _see_first(content, "5.4")
        fail(f"图中找不到生成的 T2（见 5.3）/ {WHERE_ZH}", f"the generated T2 cannot be found in the figure (see 5.3) / "
                                                    f"{WHERE_EN}")
    mid = max(mids, key=lambda m: expected.panel_similarity(m, ev[0, 0]))
    want = expected.panel_similarity(mid, ev[0, 0])
    others = {"T1 输入 / the T1 input": t1[0, 0], "真实 T2 / the real T2": t2[0, 0],
              "训练模式下的输出 / the train-mode output": tr[0, 0]}
    best = max(others, key=lambda k: expected.panel_similarity(mid, others[k]))
    other = expected.panel_similarity(mid, others[best])
    note(f"中间面板与 eval 输出的相似度 / middle panel vs eval-mode output: {want:.2f} "
         f"(最接近的其他图像 / closest other image: {best} {other:.2f})")
    if want < MATCH or want < other + MARGIN:
        fail(f"图中间的面板不是 G 在 eval 模式下对该切片的输出（相似度 {want:.2f}，与{best.split(' / ')[0]}为 {other:.2f}）："
             f"中间一列应画 G(t1.unsqueeze(0)) 的结果 / {WHERE_ZH}",
             f"the figure's middle panel is not G's eval-mode output on that slice (similarity {want:.2f}; "
             f"{best.split(' / ')[1]}: {other:.2f}): the middle column must show G(t1.unsqueeze(0)) / {WHERE_EN}")


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
def check_import_hygiene(student_code, note, vis, content):
    # `content` ties these points to a figure that shows G's output (5.1): an empty template imports
    # cleanly too, and must not earn anything for it.
    student_code.import_info()
    w = student_code.worker
    if w.module_code is not None:
        _module_code_failure(w)
    facts = w.import_facts or {}
    if facts.get("cpu") is not None:
        note(f"导入耗时 / import took {facts.get('wall', 0):.2f} s ({facts['cpu']:.2f} s CPU)")
    problems = hygiene.check_problems(facts)
    if problems:
        fail("导入文件时" + "、".join(p[0] for p in problems) + "：训练和运行代码应放在 if __name__ == \"__main__\": 之下"
             "（笔记本中给这些单元格加 run 标签）",
             "importing the file " + ", ".join(p[1] for p in problems) + ": training and run code belongs under "
             "if __name__ == \"__main__\": (in the notebook, tag those cells \"run\")")
    late = w.cwd_files()
    if late:
        fail(*hygiene.files_problem(late))
    if content.mode is None:
        fail(f"导入没有副作用，但 visualize 的图中找不到 G 的输出，此项不能得分（先看 5.1）/ {WHERE_ZH}",
             f"importing has no side effects, but visualize's figure does not show G's output, so this check cannot "
             f"count (see 5.1 first) / {WHERE_EN}")
