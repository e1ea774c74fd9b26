"""Step 1 · PairedMedicalDataset, checked on PNG folders the judge writes itself.

Every input is drawn in this run from os.urandom (grader/expected.py secret_rng): file names, how many
pairs, pixel values, image sizes, colours. What a check compares is read from the ARRAYS of the reply
(their own dtype and shape, as the .npz headers give them); the reply's JSON only says what kind of
object each part was, and a reply whose JSON disagrees with its arrays earns nothing.

Each check judges one property on inputs where other bugs cannot change its verdict:
  1.1  __len__ = min(len(t1), len(t2)): folders with one extra unpaired PNG (in A, then in B)
  1.2  items are pairs of (1,256,256) float32 tensors showing the folders' images
  1.3  the value range, from the sorted values (every main image has the same histogram): pairing,
       flips and swaps cannot change it
  1.4  RGB -> one grayscale channel, compared up to scale (a missing Normalize does not matter)
  1.5  other sizes are resized, compared up to scale and orientation
  1.6  dataset[i] = (T1, T2) of the i-th sorted name, aligned: pair ids found from the images' block
       patterns (up to any scale, so a missing Normalize does not matter), each item read 3 times
  1.7  files that are not PNGs are ignored
A check that cannot judge because of another check's failure says which one to look at first.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grader import expected as E
from grader.check_plugin import Request, check, fail

WHERE_ZH = "检查 PairedMedicalDataset"
WHERE_EN = "check PairedMedicalDataset"
READS = 3  # each main item read this often: independent random flips show up with certainty


def _to_unit(p):
    return np.asarray(p, np.float64) / 127.5 - 1.0  # ToTensor + Normalize(0.5, 0.5)


@pytest.fixture(scope="module")
def rng():
    return E.secret_rng()


@pytest.fixture(scope="module")
def folders(student_code):
    # Inside the worker's in/ folder: the only place (besides its own file) the student code may read.
    return Path(tempfile.mkdtemp(prefix="s1-", dir=student_code.worker.inputs))


def _write(folder, images, rng):
    """images: name -> uint8 array (2-D gray or 3-D RGB), written in a random order."""
    folder.mkdir(parents=True)
    names = list(images)
    for k in rng.permutation(len(names)):
        img = images[names[k]]
        Image.fromarray(img, "RGB" if img.ndim == 3 else "L").save(folder / names[k])


def _request(key, a, b, indices, reads=1, arrays=True):
    return Request(key, "dataset", "PairedMedicalDataset",
                   {"t1_dir": str(a), "t2_dir": str(b), "indices": list(indices), "reads": reads, "arrays": arrays})


# ----------------------------------------------------------------------------------------------
# Reading a reply: one dict per (read, index) with its error or its two parts as (description, array)
# ----------------------------------------------------------------------------------------------

def _reply(value, arrays, indices, reads=1):
    """The reply (validated on arrival by grader/protocol.py: types, and each part's description agrees
    with its array) as {(read, index): {"error", "parts": [(description, array or None)], "type", "len"}}."""
    got = {(it["read"], it["index"]): it for it in value["items"]}
    out = {}
    for r in range(reads):
        for i in list(indices):  # (not a bare `for i in indices:`: make_student refuses solution lines)
            it = got.get((r, i))
            if it is None:
                out[(r, i)] = {"error": "(no answer)", "parts": []}
                continue
            if it.get("error"):
                out[(r, i)] = {"error": str(it["error"])[:1500], "parts": []}
                continue
            parts = []
            descs = it.get("parts") if isinstance(it.get("parts"), list) else []
            for j, d in enumerate(descs[:2]):
                d = d if isinstance(d, dict) else {}
                parts.append((d, arrays.get(f"r{r}i{i}p{j}")))
            item = it.get("item") if isinstance(it.get("item"), dict) else {}
            out[(r, i)] = {"error": None, "parts": parts, "type": str(item.get("type")), "len": item.get("len")}
    return out


def _item_error(i, it):
    fail(f"读取 dataset[{i}] 时出错：{it['error']} / {WHERE_ZH}",
         f"dataset[{i}] raised an error: {it['error']} / {WHERE_EN}")


def _pair_or_fail(i, it, first=None):
    """The two parts of item i, or the check fails: with the item's error, or (first=None) with what is
    wrong with its return, or (first="1.2") pointing to the check that judges it. An item counts as a
    pair when both part arrays came (derived); its reported type and length only add hints (1.2)."""
    if it["error"]:  # reported gate: an item that raised sent no arrays
        _item_error(i, it)
    if len(it["parts"]) == 2 and all(arr is not None for _, arr in it["parts"]):
        return it["parts"]
    if first and (len(it["parts"]) != 2 or it.get("len") not in (2, None)):  # reported gate: no arrays here
        fail(f"dataset[{i}] 不是 (t1, t2) 对，此项无法判断：先看 {first} / {WHERE_ZH}",
             f"dataset[{i}] is not a pair (t1, t2), so this cannot be judged: see {first} first / {WHERE_EN}")
    if len(it["parts"]) != 2 or it.get("len") not in (2, None):  # reported gate: arrays missing here
        fail(f"dataset[{i}] 应返回 (t1, t2) 两个张量，实际为 {it.get('type')}（长度 {it.get('len')}）："
             f"检查 __getitem__ 的 return / {WHERE_ZH}",
             f"dataset[{i}] should return a pair (t1, t2), found {it.get('type')} (length {it.get('len')}): "
             f"check the return of __getitem__ / {WHERE_EN}")
    return it["parts"]


def _nonfinite(i, name):
    fail(f"dataset[{i}] 的 {name} 含有 NaN 或 inf：检查 transform / {WHERE_ZH}",
         f"dataset[{i}]'s {name} contains NaN or inf: check the transform / {WHERE_EN}")


def _see_first(other, i, name, d, arr):
    shape = tuple(arr.shape) if arr is not None else d.get("type")
    fail(f"dataset[{i}] 的 {name} 不是一张 256x256 的单通道图像（{shape}），此项无法判断：先看 {other} / {WHERE_ZH}",
         f"dataset[{i}]'s {name} is not one 256x256 channel ({shape}), so this cannot be judged: see {other} "
         f"first / {WHERE_EN}")


def _image(i, name, d, arr):
    """One item part as a finite 256x256 image, or the check fails ("see 1.2 first", or NaN/inf)."""
    img = E.as_image(arr)
    if img is None:
        _see_first("1.2", i, name, d, arr)
    if not np.isfinite(img).all():
        _nonfinite(i, name)
    return img


# ----------------------------------------------------------------------------------------------
# The main set: N pairs of 256x256 block images (1.2, 1.3, 1.6)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def main_set(folders, student_code, rng):
    n = int(rng.integers(5, 8))
    names = [s + ".png" for s in E.random_names(rng, n)]
    palette = np.concatenate([[0, 255], rng.integers(1, 255, 254)]).astype(np.uint8)
    imgs = {("A", k): E.block_image(rng, palette) for k in range(n)}
    imgs.update({("B", k): E.block_image(rng, palette) for k in range(n)})
    a, b = folders / "main" / "A", folders / "main" / "B"
    _write(a, {names[k]: imgs["A", k] for k in range(n)}, rng)
    _write(b, {names[k]: imgs["B", k] for k in range(n)}, rng)
    req = _request("ds_main", a, b, range(n), reads=READS)
    value, arrays = student_code.run(req)
    listing_differs = os.listdir(a) != sorted(os.listdir(a)) or os.listdir(a) != os.listdir(b)
    expected_sorted = np.sort(_to_unit(np.repeat(palette, 256)))
    return {"n": n, "names": names, "imgs": {k: v.astype(np.float64) for k, v in imgs.items()},
            "items": _reply(value, arrays, range(n), READS), "listing_differs": listing_differs,
            "sorted": expected_sorted}


@check("1.2")
def check_items(main_set, note):
    hinted = set()
    for i in range(main_set["n"]):
        it = main_set["items"][0, i]
        parts = _pair_or_fail(i, it)
        if it.get("len") not in (2, None) and "len" not in hinted:  # reported: a hint only
            hinted.add("len")
            note(f"提示（不计分）：dataset[{i}] 返回 {it.get('len')} 个元素，接口要求 (t1, t2) 两个 / hint (not scored): "
                 f"dataset[{i}] returns {it.get('len')} elements; the contract returns the pair (t1, t2)")
        for j, (d, arr) in enumerate(parts):
            name = ("t1", "t2")[j]
            if (not str(d.get("type")).startswith("torch.") or "Tensor" not in str(d.get("type"))) and "type" not in hinted:
                hinted.add("type")  # reported: a hint only
                note(f"提示（不计分）：dataset[{i}] 的 {name} 是 {d.get('type')}，接口要求 torch.Tensor：使用 "
                     f"transforms.ToTensor() / hint (not scored): dataset[{i}]'s {name} is a {d.get('type')}; the "
                     f"contract returns a torch.Tensor: use transforms.ToTensor()")
            if arr is None:
                fail(f"dataset[{i}] 的 {name}（{d.get('dtype')}）无法读取：应为 float32 张量 / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} ({d.get('dtype')}) could not be read: expected a float32 tensor / {WHERE_EN}")
            if tuple(arr.shape) != (1, 256, 256) or arr.dtype != np.float32:
                fail(f"dataset[{i}] 的 {name} 形状/类型为 {tuple(arr.shape)} {arr.dtype}，应为 (1, 256, 256) "
                     f"float32：检查 Resize((256,256))、convert('L') 与 ToTensor() / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} is {tuple(arr.shape)} {arr.dtype}, expected (1, 256, 256) "
                     f"float32: check Resize((256,256)), convert('L') and ToTensor() / {WHERE_EN}")
            img = _image(i, name, d, arr)
            if E.identify(img, main_set["imgs"]) is None:
                fail(f"dataset[{i}] 的 {name} 不是文件夹中的任何一张图像（即使允许翻转与缩放数值）：不要随机裁剪、旋转或"
                     f"改动图像内容 / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} shows none of the folders' images (even allowing flips and any "
                     f"value scale): no random crops, rotations or other changes of the content / {WHERE_EN}")


@check("1.3")
def check_range(main_set):
    want = main_set["sorted"]
    for i in range(main_set["n"]):
        parts = _pair_or_fail(i, main_set["items"][0, i], "1.2")
        for j, (d, arr) in enumerate(parts):
            name = ("t1", "t2")[j]
            img = _image(i, name, d, arr)
            got = np.sort(img.ravel())
            if np.abs(got - want).max() <= 2e-3:
                continue
            lo, hi = got[0], got[-1]
            if np.abs(got - (want + 1) / 2).max() <= 2e-3:
                fail(f"dataset[{i}] 的 {name} 在 [0, 1] 内（黑 = {lo:.3f}，白 = {hi:.3f}），应为 [-1, 1]：缺少 "
                     f"Normalize(mean=[0.5], std=[0.5])（放在 ToTensor() 之后）/ {WHERE_ZH}",
                     f"dataset[{i}]'s {name} is in [0, 1] (black = {lo:.3f}, white = {hi:.3f}), expected [-1, 1]: "
                     f"Normalize(mean=[0.5], std=[0.5]) is missing (after ToTensor()) / {WHERE_EN}")
            if np.abs(got - (want + 1) * 127.5).max() <= 0.5:
                fail(f"dataset[{i}] 的 {name} 在 [0, 255] 内，应为 [-1, 1]：使用 ToTensor() 再 Normalize(mean=[0.5], "
                     f"std=[0.5]) / {WHERE_ZH}",
                     f"dataset[{i}]'s {name} is in [0, 255], expected [-1, 1]: use ToTensor() and then "
                     f"Normalize(mean=[0.5], std=[0.5]) / {WHERE_EN}")
            fail(f"dataset[{i}] 的 {name}：黑色像素为 {lo:.3f}，白色像素为 {hi:.3f}；应为 -1 与 1，中间灰度线性对应"
                 f"（x/127.5 - 1）：ToTensor() 之后用 Normalize(mean=[0.5], std=[0.5]) / {WHERE_ZH}",
                 f"dataset[{i}]'s {name}: black pixels give {lo:.3f}, white give {hi:.3f}; expected -1 and 1 with "
                 f"grays in between mapped linearly (x/127.5 - 1): after ToTensor() use Normalize(mean=[0.5], "
                 f"std=[0.5]) / {WHERE_EN}")


@check("1.6")
def check_pairing(main_set, note):
    n, names, imgs = main_set["n"], main_set["names"], main_set["imgs"]
    seen = {}  # (read, index) -> ((folder, k, orientation) of t1, of t2)
    for r in range(READS):
        for i in range(n):
            parts = _pair_or_fail(i, main_set["items"][r, i], "1.2")
            ids = []
            for j, (d, arr) in enumerate(parts):
                name = ("t1", "t2")[j]
                img = _image(i, name, d, arr)
                found = E.identify(img, imgs)
                if found is None:
                    fail(f"dataset[{i}] 的 {name} 认不出是哪个文件，此项无法判断：先看 1.2 / {WHERE_ZH}",
                         f"dataset[{i}]'s {name} matches no file, so the pairing cannot be judged: see 1.2 first / "
                         f"{WHERE_EN}")
                (folder, k), orient, _ = found
                ids.append((folder, k, orient))
            seen[r, i] = tuple(ids)
    for i in range(n):
        (f1, k1, o1), (f2, k2, o2) = seen[0, i]
        if (f1, f2) == ("B", "A"):
            fail(f"dataset[{i}] 返回的是 (T2, T1)：第一个应是 t1_dir 中的 T1 图像，第二个是 t2_dir 中的 T2 图像；"
                 f"检查 return 的顺序 (t1, t2) / {WHERE_ZH}",
                 f"dataset[{i}] returns (T2, T1): the first element must be the T1 image from t1_dir, the second "
                 f"the T2 image from t2_dir; check the order of the return (t1, t2) / {WHERE_EN}")
        if f1 == f2:
            which = "T1 (t1_dir)" if f1 == "A" else "T2 (t2_dir)"
            fail(f"dataset[{i}] 的两个元素都来自 {which}：t1 读 t1_paths[idx]，t2 读 t2_paths[idx] / {WHERE_ZH}",
                 f"both elements of dataset[{i}] come from {which}: t1 reads t1_paths[idx], t2 reads "
                 f"t2_paths[idx] / {WHERE_EN}")
    for (r, i), ((_, k1, o1), (_, k2, o2)) in seen.items():
        if o1 != o2:
            fail(f"dataset[{i}]（第 {r + 1} 次读取）中 T1 {E.DIHEDRAL_ZH[o1]}，T2 {E.DIHEDRAL_ZH[o2]}：T1 与 T2 "
                 f"被各自独立地随机翻转（数据增强），一对图像不再对齐。不要做随机增强，或对两张图使用同一次随机结果 / {WHERE_ZH}",
                 f"in dataset[{i}] (read {r + 1}) T1 is {E.DIHEDRAL_EN[o1]} and T2 {E.DIHEDRAL_EN[o2]}: T1 and T2 "
                 f"were flipped independently at random (augmentation), so the pair is no longer aligned. Drop the random augmentation, or apply the same "
                 f"random draw to both images / {WHERE_EN}")
    for i in range(n):
        ids = {(seen[r, i][0][1], seen[r, i][1][1]) for r in range(READS)}
        if len(ids) > 1:
            fail(f"多次读取 dataset[{i}] 得到不同的图像对：__getitem__ 应只依赖 idx，不要随机选图 / {WHERE_ZH}",
                 f"reading dataset[{i}] several times gives different pairs: __getitem__ must depend on idx "
                 f"only, with no random choice of files / {WHERE_EN}")
    got = [(seen[0, i][0][1], seen[0, i][1][1]) for i in range(n)]
    right = [(k, k) for k in range(n)]
    if all(a == b for a, b in got) and got != right:
        # Right pairs (e.g. paired by identical name) in the file system's listing order.
        order = ", ".join(names[a] for a, _ in got)
        fail(f"每对 T1/T2 配对正确，但样本顺序是 {order}，不是按文件名排序：对文件名列表使用 sorted()，"
             f"这样 dataset[i] 在每台机器上都是同一个切片 / {WHERE_ZH}",
             f"every T1/T2 pair is right, but the items come in the order {order}, not sorted by file name: "
             f"apply sorted() to the file names so that dataset[i] is the same slice on every machine / {WHERE_EN}")
    if got != right:
        shown = ", ".join(f"dataset[{i}] = (A/{names[a]}, B/{names[b]})" for i, (a, b) in enumerate(got))
        fail(f"配对错误：{shown}；应为 dataset[i] = (A 与 B 中排序后第 i 个文件)。对 os.listdir 的结果使用 sorted() / "
             f"{WHERE_ZH}",
             f"wrong pairing: {shown}; expected dataset[i] = the i-th file of A and of B in sorted name order. "
             f"Apply sorted() to os.listdir's result / {WHERE_EN}")
    flips = {seen[key][0][2] for key in seen}
    if flips != {0}:
        note("注意：样本是文件图像的翻转版本（T1 与 T2 一致，配对仍正确）；讲义的数据集不做数据增强，测试与可视化时会看到翻转后的"
             "图像 / note: the items are flipped versions of the files (the same for T1 and T2, so the pairs stay "
             "right); the handout's dataset does no augmentation, and testing and visualize would see flipped images")
    if not main_set["listing_differs"]:
        note("注意：此文件系统按名称顺序列出文件，配对检查较弱 / note: this file system lists files in name order, "
             "so the pairing check is weaker here")


# ----------------------------------------------------------------------------------------------
# Length (1.1) and non-image files (1.7)
# ----------------------------------------------------------------------------------------------

def _small_pairs(rng, n, extra=None):
    """n random 8x8 gray pairs under random names; `extra` ("A" or "B") gets one more image, whose
    name sorts after every other, so the first n pairs are the same however the lengths are handled."""
    stems = E.random_names(rng, n + 1)
    names = [s + ".png" for s in stems[:n]]
    img = lambda: rng.integers(0, 256, (8, 8)).astype(np.uint8)
    a = {nm: img() for nm in names}
    b = {nm: img() for nm in names}
    if extra:
        (a if extra == "A" else b)[stems[n] + ".png"] = img()
    return a, b


def _length(value, arrays):
    """len(dataset) as the array the judge parsed; the type the worker reports when it is not an int."""
    return int(arrays["len"]) if "len" in arrays else value.get("len_type")


@pytest.fixture(scope="module")
def length_sets(folders, student_code, rng):
    out = {}
    for extra in ("A", "B"):
        n = int(rng.integers(3, 51))  # no item is read: the length alone, hard to guess
        a_imgs, b_imgs = _small_pairs(rng, n, extra)
        a, b = folders / f"len{extra}" / "A", folders / f"len{extra}" / "B"
        _write(a, a_imgs, rng)
        _write(b, b_imgs, rng)
        out[extra] = (n, len(a_imgs), len(b_imgs), _request(f"ds_len{extra}", a, b, [], arrays=False))
        student_code.submit(out[extra][3])
    return out


@check("1.1")
def check_length(length_sets, student_code):
    for extra in ("A", "B"):
        n, na, nb, req = length_sets[extra]
        value, arrays = student_code.run(req, after=["ds_main"])
        got = _length(value, arrays)
        if got == n:
            continue
        fail(f"t1_dir 有 {na} 张 PNG，t2_dir 有 {nb} 张，数据集长度为 {got}，应为 {n}：__len__ 应返回 "
             f"min(len(self.t1_paths), len(self.t2_paths))，两个列表都要看 / {WHERE_ZH}",
             f"t1_dir holds {na} PNGs and t2_dir {nb}: the dataset's length is {got}, expected {n}: __len__ "
             f"must return min(len(self.t1_paths), len(self.t2_paths)), looking at both lists / {WHERE_EN}")


JUNK = {"Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56), ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(56),
        "notes.txt": "扫描记录 / scan notes\n".encode("utf-8")}
JUNK_INDICES = 10  # items asked for whatever the number of pairs (3-8), so the request does not tell it


@pytest.fixture(scope="module")
def junk_set(folders, student_code, rng):
    n = int(rng.integers(3, 9))
    palette = rng.integers(0, 256, 256).astype(np.uint8)
    names = [s + ".png" for s in E.random_names(rng, n)]
    imgs = {(f, k): E.block_image(rng, palette) for f in "AB" for k in range(n)}
    a, b = folders / "junk" / "A", folders / "junk" / "B"
    _write(a, {names[k]: imgs["A", k] for k in range(n)}, rng)
    _write(b, {names[k]: imgs["B", k] for k in range(n)}, rng)
    for d in (a, b):
        for name, data in JUNK.items():
            (d / name).write_bytes(data)
    req = _request("ds_junk", a, b, range(JUNK_INDICES))
    student_code.submit(req)
    return n, {k: v.astype(np.float64) for k, v in imgs.items()}, req


@check("1.7")
def check_only_png(junk_set, student_code):
    n, imgs, req = junk_set
    value, arrays = student_code.run(req, after=["ds_main"])
    got = _length(value, arrays)
    junk = ", ".join(JUNK)
    if got != n:
        fail(f"每个文件夹有 {n} 张 PNG 和 {len(JUNK)} 个其他文件（{junk}），数据集长度为 {got}，应为 {n}：只保留"
             f"以 .png 结尾的文件名（如 f.endswith('.png')），非图像文件不能当作样本 / {WHERE_ZH}",
             f"each folder holds {n} PNGs and {len(JUNK)} other files ({junk}); the dataset's length is {got}, "
             f"expected {n}: keep only file names ending in .png (e.g. f.endswith('.png')); files that are not "
             f"images must not become items / {WHERE_EN}")
    items = _reply(value, arrays, range(n))
    for i in range(n):
        if items[0, i]["error"]:  # reported gate: an item that raised sent no arrays
            fail(f"文件夹中有非 PNG 文件（{junk}）时，读取 dataset[{i}] 出错：{items[0, i]['error']}；只保留以 .png "
                 f"结尾的文件 / {WHERE_ZH}",
                 f"with non-PNG files ({junk}) in the folders, dataset[{i}] raised: {items[0, i]['error']}; keep "
                 f"only files ending in .png / {WHERE_EN}")
        parts = items[0, i]["parts"]
        if len(parts) != 2:
            fail(f"dataset[{i}] 不是 (t1, t2) 对，此项无法判断：先看 1.2 / {WHERE_ZH}",
                 f"dataset[{i}] is not a pair (t1, t2), so this cannot be judged: see 1.2 first / {WHERE_EN}")
        for j, (d, arr) in enumerate(parts):
            img = E.as_image(arr)
            if img is None or not np.isfinite(img).all() or E.identify(img, imgs) is None:
                fail(f"文件夹中有非 PNG 文件时，dataset[{i}] 的 {('t1', 't2')[j]} 不是文件夹中的 PNG 图像，此项无法判断："
                     f"先看 1.2 / {WHERE_ZH}",
                     f"with non-PNG files in the folders, dataset[{i}]'s {('t1', 't2')[j]} is none of the folders' "
                     f"PNG images, so this cannot be judged: see 1.2 first / {WHERE_EN}")


# ----------------------------------------------------------------------------------------------
# RGB input (1.4) and other sizes (1.5)
# ----------------------------------------------------------------------------------------------

def _rgb_image(rng):
    cols = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    return np.kron(cols, np.ones((32, 32, 1), np.uint8)).astype(np.uint8)


@check("1.4")
def check_grayscale(folders, student_code, rng):
    a, b = folders / "rgb" / "A", folders / "rgb" / "B"
    rgb = {"A": _rgb_image(rng), "B": _rgb_image(rng)}
    name = E.random_names(rng, 1)[0] + ".png"
    _write(a, {name: rgb["A"]}, rng)
    _write(b, {name: rgb["B"]}, rng)
    value, arrays = student_code.run(_request("ds_rgb", a, b, [0]), after=["ds_main"])
    gray = {k: np.asarray(Image.fromarray(v, "RGB").convert("L"), np.float64) for k, v in rgb.items()}
    parts = _pair_or_fail(0, _reply(value, arrays, [0])[0, 0], "1.2")
    for j, (d, arr) in enumerate(parts):
        name = ("t1", "t2")[j]
        if arr is not None and arr.size == 3 * 256 * 256:
            fail(f"RGB PNG 的 {name} 有 3 个通道 {tuple(arr.shape)}，应为 1 个：打开图像后用 .convert('L') 转为灰度 / "
                 f"{WHERE_ZH}",
                 f"an RGB PNG gives a {name} with 3 channels {tuple(arr.shape)}, expected 1: convert it to "
                 f"grayscale with .convert('L') after Image.open / {WHERE_EN}")
        img = _image(0, name, d, arr)
        if E.identify(img, gray, coarse=0.95, fine=0.995) is None:
            fail(f"RGB PNG 的 {name} 不是它的灰度图（PIL 的 .convert('L') 的结果，允许任意数值缩放）：打开图像后用 "
                 f".convert('L') / {WHERE_ZH}",
                 f"an RGB PNG's {name} is not its grayscale image (PIL's .convert('L'), up to any value scale): "
                 f"use .convert('L') after Image.open / {WHERE_EN}")


def _resize_image(rng, w, h):
    vals = rng.integers(0, 256, (4, 4)).astype(np.float64)
    ys = np.minimum((np.arange(h) * 4) // h, 3)
    xs = np.minimum((np.arange(w) * 4) // w, 3)
    return vals[ys][:, xs].astype(np.uint8)


@check("1.5")
def check_resize(folders, student_code, rng):
    a, b = folders / "resize" / "A", folders / "resize" / "B"
    sizes = [(int(rng.integers(96, 200)), int(rng.integers(96, 200))),
             (int(rng.integers(300, 420)), int(rng.integers(170, 240)))]
    names = [s + ".png" for s in E.random_names(rng, 2)]
    imgs = {(f, i): _resize_image(rng, *sizes[i]) for f in "AB" for i in range(2)}
    _write(a, {names[i]: imgs["A", i] for i in range(2)}, rng)
    _write(b, {names[i]: imgs["B", i] for i in range(2)}, rng)
    value, arrays = student_code.run(_request("ds_resize", a, b, [0, 1]), after=["ds_main"])
    items = _reply(value, arrays, [0, 1])
    # Any of the four images counts (which file goes to which item and slot is 1.6's verdict).
    want = {k: np.asarray(Image.fromarray(v, "L").resize((256, 256), Image.BILINEAR), np.float64)
            for k, v in imgs.items()}
    sizes_txt = " / ".join(f"{w}x{h}" for w, h in sizes)
    for i in range(2):
        for j, (d, arr) in enumerate(_pair_or_fail(i, items[0, i], "1.2")):
            name = ("t1", "t2")[j]
            if arr is None or arr.shape[-2:] != (256, 256) or arr.size != 256 * 256:
                shape = tuple(arr.shape) if arr is not None else d.get("type")
                fail(f"{sizes_txt} 的图像中，dataset[{i}] 的 {name} 形状为 {shape}，应为 (1, 256, 256)：使用 "
                     f"transforms.Resize((256, 256))（注意是二元组）/ {WHERE_ZH}",
                     f"of images sized {sizes_txt}, dataset[{i}]'s {name} has shape {shape}, expected (1, 256, 256): "
                     f"use transforms.Resize((256, 256)) (a tuple) / {WHERE_EN}")
            img = _image(i, name, d, arr)
            if E.identify(img, want, grid=8, coarse=0.95, fine=0.97) is None:
                fail(f"{sizes_txt} 的图像中，dataset[{i}] 的 {name} 不是整张图像缩放到 256x256 的结果：应整体缩放"
                     f"（Resize((256, 256))），而不是裁剪或填充 / {WHERE_ZH}",
                     f"of images sized {sizes_txt}, dataset[{i}]'s {name} is not a whole image resized to 256x256: "
                     f"resize all of it (Resize((256, 256))) rather than cropping or padding / {WHERE_EN}")
