"""Step 1 · PairedMedicalDataset, checked on PNG folders the judge writes itself."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grader.check_plugin import Request, check, fail

WHERE_ZH = "检查 PairedMedicalDataset"
WHERE_EN = "check PairedMedicalDataset"


def _to_unit(p):
    return p / 127.5 - 1.0  # ToTensor + Normalize(0.5, 0.5)


@pytest.fixture(scope="module")
def folders(student_code):
    # Inside the worker's in/ folder: the only place (besides its own file) the student code may read.
    return Path(tempfile.mkdtemp(prefix="s1-", dir=student_code.worker.inputs))


def _pair_image(value, size=(256, 256)):
    """Background `value`, a black block top-left and a white block bottom-right."""
    w, h = size
    a = np.full((h, w), value, np.uint8)
    a[: h // 4, : w // 4] = 0
    a[-h // 4:, -w // 4:] = 255
    return a


# Six pairs: a file system whose listing happens to be in name order hides a missing sorted() only
# with probability 1/720 (with three names it was 1/6). Sorted order = pair id.
MAIN_NAMES = [f"p{k}.png" for k in range(6)]
N_MAIN = len(MAIN_NAMES)
A_VALUES = [40, 65, 90, 115, 140, 165]
B_VALUES = [100, 125, 150, 175, 200, 225]
A_ORDER, B_ORDER = (2, 5, 0, 3, 1, 4), (4, 1, 3, 0, 5, 2)  # creation orders, both unlike sorted


@pytest.fixture(scope="module")
def main_set(folders, student_code):
    a, b = folders / "main" / "A", folders / "main" / "B"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    # Creation order differs between A and B and from the sorted order, so a dataset that keeps
    # os.listdir's order pairs the wrong slices on most file systems.
    for k in A_ORDER:
        Image.fromarray(_pair_image(A_VALUES[k]), "L").save(a / MAIN_NAMES[k])
    for k in B_ORDER:
        Image.fromarray(_pair_image(B_VALUES[k]), "L").save(b / MAIN_NAMES[k])
    value, arrays = student_code.run(Request("ds_main", "dataset", "PairedMedicalDataset",
                                             {"t1_dir": str(a), "t2_dir": str(b)}))
    listing_differs = os.listdir(a) != sorted(os.listdir(a)) or os.listdir(a) != os.listdir(b)
    return value, arrays, listing_differs


def _items_ok(value, arrays, n):
    """Return the list of (t1, t2) numpy arrays or fail with what is wrong."""
    out = []
    for i, it in enumerate(value["items"][:n]):
        if len(it["parts"]) != 2 or it["item"].get("len") not in (2, None):
            fail(f"dataset[{i}] 应返回 (t1, t2) 两个张量，实际为 {it['item']['type']}（长度 {it['item'].get('len')}）："
                 f"检查 __getitem__ 的 return / {WHERE_ZH}",
                 f"dataset[{i}] should return a pair (t1, t2), found {it['item']['type']} "
                 f"(length {it['item'].get('len')}): check the return of __getitem__ / {WHERE_EN}")
        pair = []
        for j, part in enumerate(it["parts"]):
            name = ("t1", "t2")[j]
            if part.get("dtype") is None:
                fail(f"dataset[{i}] 的 {name} 是 {part['type']}，应为 torch.Tensor：使用 transforms.ToTensor() / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} is a {part['type']}, expected a torch.Tensor: use transforms.ToTensor() / {WHERE_EN}")
            if tuple(part["shape"]) != (1, 256, 256) or part["dtype"] != "float32":
                fail(f"dataset[{i}] 的 {name} 形状/类型为 {tuple(part['shape'])} {part['dtype']}，应为 (1, 256, 256) "
                     f"float32：检查 Resize((256,256))、convert('L') 与 ToTensor() / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} is {tuple(part['shape'])} {part['dtype']}, expected (1, 256, 256) "
                     f"float32: check Resize((256,256)), convert('L') and ToTensor() / {WHERE_EN}")
            pair.append(arrays[f"i{i}_{j}"].astype(np.float64))
        out.append(pair)
    return out


@check("1.1")
def check_length(main_set):
    value, _, _ = main_set
    if value["len"] != N_MAIN:
        fail(f"{N_MAIN} 对图像的数据集长度为 {value['len']}，应为 {N_MAIN}：检查 __len__ 与文件列表 / {WHERE_ZH}",
             f"a dataset of {N_MAIN} pairs has length {value['len']}, expected {N_MAIN}: check __len__ and the file lists / {WHERE_EN}")


@check("1.2")
def check_items(main_set):
    value, arrays, _ = main_set
    if value["len"] < 1 or not value["items"]:
        fail(f"数据集为空，无法取样本 / {WHERE_ZH}", f"the dataset is empty: no item to check / {WHERE_EN}")
    _items_ok(value, arrays, N_MAIN)


@check("1.3")
def check_range(main_set):
    value, arrays, _ = main_set
    items = _items_ok(value, arrays, N_MAIN)
    for i, (t1, t2) in enumerate(items):
        for name, t in (("t1", t1), ("t2", t2)):
            lo, hi = t[0, :64, :64].mean(), t[0, -64:, -64:].mean()
            if t.min() < -1.0001 or t.max() > 1.0001 or abs(lo + 1) > 0.02 or abs(hi - 1) > 0.02:
                fail(f"dataset[{i}] 的 {name}：黑色像素为 {lo:.3f}，白色像素为 {hi:.3f}，范围 [{t.min():.3f}, {t.max():.3f}]；"
                     f"应为 -1 与 1（范围 [-1, 1]）：ToTensor() 之后需要 Normalize(mean=[0.5], std=[0.5]) / {WHERE_ZH}",
                     f"dataset[{i}]'s {name}: black pixels give {lo:.3f}, white give {hi:.3f}, range "
                     f"[{t.min():.3f}, {t.max():.3f}]; expected -1 and 1 (range [-1, 1]): after ToTensor() add "
                     f"Normalize(mean=[0.5], std=[0.5]) / {WHERE_EN}")


def _student_scale(main_set):
    """The submission's own value mapping, measured on the black and white blocks of its first main
    item (what 1.3 judges), as a function taking its values to the handout's [-1, 1]. 1.4-1.6 compare
    through it, so a missing or different Normalize costs 1.3 only."""
    _, arrays, _ = main_set
    t = arrays.get("i0_0")
    if t is None or t.ndim != 3 or t.shape[1:] != (256, 256):
        return lambda x: x
    lo, hi = float(t[0, :64, :64].mean()), float(t[0, -64:, -64:].mean())
    if not np.isfinite([lo, hi]).all() or abs(hi - lo) < 1e-3:
        return lambda x: x
    return lambda x: -1.0 + 2.0 * (x - lo) / (hi - lo)


def _pair_ids(t1, t2):
    c1, c2 = t1[0, 120:136, 120:136].mean(), t2[0, 120:136, 120:136].mean()
    k1 = int(np.argmin([abs(c1 - _to_unit(v)) for v in A_VALUES]))
    k2 = int(np.argmin([abs(c2 - _to_unit(v)) for v in B_VALUES]))
    return k1, k2


@check("1.6")
def check_pairing(main_set, note):
    value, arrays, listing_differs = main_set
    items = _items_ok(value, arrays, N_MAIN)
    if len(items) < N_MAIN:
        fail(f"数据集不足 {N_MAIN} 个样本 / {WHERE_ZH}", f"fewer than {N_MAIN} items: cannot check the pairing / {WHERE_EN}")
    unit = _student_scale(main_set)
    got = [_pair_ids(unit(t1), unit(t2)) for t1, t2 in items]
    if all(a == b for a, b in got) and got != [(k, k) for k in range(N_MAIN)]:
        # Right pairs (e.g. paired by identical name) in the file system's listing order.
        order = ", ".join(MAIN_NAMES[a] for a, _ in got)
        fail(f"每对 T1/T2 配对正确，但样本顺序是 {order}，不是按文件名排序：对文件名列表使用 sorted()，"
             f"这样 dataset[i] 在每台机器上都是同一个切片 / {WHERE_ZH}",
             f"every T1/T2 pair is right, but the items come in the order {order}, not sorted by file name: "
             f"apply sorted() to the file names so that dataset[i] is the same slice on every machine / {WHERE_EN}")
    if got != [(k, k) for k in range(N_MAIN)]:
        names = ", ".join(f"dataset[{i}] = (A/{MAIN_NAMES[a]}, B/{MAIN_NAMES[b]})" for i, (a, b) in enumerate(got))
        fail(f"配对错误：{names}；应为 dataset[i] = (A 与 B 中排序后第 i 个同名文件)。对 os.listdir 的结果使用 sorted() / "
             f"{WHERE_ZH}",
             f"wrong pairing: {names}; expected dataset[i] = the i-th file of A and B in sorted name order. "
             f"Apply sorted() to os.listdir's result / {WHERE_EN}")
    if not listing_differs:
        note("注意：此文件系统按名称顺序列出文件，配对检查较弱 / note: this file system lists files in name order, "
             "so the pairing check is weaker here")


@check("1.4")
def check_grayscale(folders, student_code, main_set):
    a, b = folders / "rgb" / "A", folders / "rgb" / "B"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[:, :128] = (120, 120, 120)
    rgb[:, 128:] = (200, 100, 50)
    Image.fromarray(rgb, "RGB").save(a / "x.png")
    Image.fromarray(rgb, "RGB").save(b / "x.png")
    value, arrays = student_code.run(Request("ds_rgb", "dataset", "PairedMedicalDataset",
                                             {"t1_dir": str(a), "t2_dir": str(b)}), after=["ds_main"])
    if value["len"] < 1 or not value["items"]:
        fail(f"包含 1 对 RGB PNG 的数据集为空 / {WHERE_ZH}", f"a dataset with one RGB PNG pair is empty / {WHERE_EN}")
    part = value["items"][0]["parts"][0] if value["items"][0]["parts"] else {"shape": None}
    if part.get("shape") is None or tuple(part["shape"]) != (1, 256, 256):
        fail(f"RGB PNG 的样本形状为 {part.get('shape')}，应为 (1, 256, 256)：打开图像后用 .convert('L') 转为灰度 / {WHERE_ZH}",
             f"an RGB PNG gives an item of shape {part.get('shape')}, expected (1, 256, 256): convert it to "
             f"grayscale with .convert('L') after Image.open / {WHERE_EN}")
    t = _student_scale(main_set)(arrays["i0_0"].astype(np.float64)[0])
    gray, color = t[:, 20:100].mean(), t[:, 150:240].mean()
    if abs(gray - _to_unit(120)) > 0.03 or not (_to_unit(50) - 0.03 <= color <= _to_unit(200) + 0.03):
        fail(f"RGB 灰色 (120,120,120) 变为 {gray:.3f}（应为 {_to_unit(120):.3f}）；彩色像素变为 {color:.3f}：用 .convert('L') / {WHERE_ZH}",
             f"RGB gray (120,120,120) became {gray:.3f} (expected {_to_unit(120):.3f}); a colour pixel became "
             f"{color:.3f}: use .convert('L') / {WHERE_EN}")


@check("1.5")
def check_resize(folders, student_code, main_set):
    a, b = folders / "resize" / "A", folders / "resize" / "B"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for name, (w, h) in (("r0.png", (128, 128)), ("r1.png", (300, 200))):
        img = np.zeros((h, w), np.uint8)
        img[:, w // 2:] = 255  # left half black, right half white
        Image.fromarray(img, "L").save(a / name)
        Image.fromarray(img, "L").save(b / name)
    value, arrays = student_code.run(Request("ds_resize", "dataset", "PairedMedicalDataset",
                                             {"t1_dir": str(a), "t2_dir": str(b)}), after=["ds_main"])
    for i, size in enumerate(("128x128", "300x200")):
        if i >= len(value["items"]):
            fail(f"数据集少于 2 个样本 / {WHERE_ZH}", f"the dataset has fewer than 2 items / {WHERE_EN}")
        for j, part in enumerate(value["items"][i]["parts"]):
            if part.get("shape") is None or tuple(part["shape"]) != (1, 256, 256):
                fail(f"{size} 的图像得到形状 {part.get('shape')}，应为 (1, 256, 256)：使用 transforms.Resize((256, 256))"
                     f"（注意是二元组）/ {WHERE_ZH}",
                     f"a {size} image gives shape {part.get('shape')}, expected (1, 256, 256): use "
                     f"transforms.Resize((256, 256)) (a tuple) / {WHERE_EN}")
            t = _student_scale(main_set)(arrays[f"i{i}_{j}"].astype(np.float64)[0])
            if not (t[:, :100].mean() < -0.9 and t[:, 156:].mean() > 0.9):
                fail(f"{size} 的图像缩放后内容不对（左半应为黑、右半应为白）：应整体缩放而不是裁剪 / {WHERE_ZH}",
                     f"the resized {size} image lost its content (left half black, right half white expected): "
                     f"resize the whole image rather than cropping it / {WHERE_EN}")
