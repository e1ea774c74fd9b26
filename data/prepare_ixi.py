#!/usr/bin/env python3
"""Turn the IXI release (NIfTI volumes) into Experiment 6's paired PNG layout.

    python data/prepare_ixi.py --t1 IXI-T1.tar --t2 IXI-T2.tar --out dataset/ixi2000 --pairs 2000

Output (A = T1, B = T2, identical file names in A and B):

    OUT/trainA/IXI002-Guys-0828_s070.png   OUT/trainB/IXI002-Guys-0828_s070.png
    OUT/testA/...                          OUT/testB/...
    OUT/manifest.csv       one row per pair: filename, subject, slice, split, source files
    OUT/registration.csv   one row per subject: rigid parameters and alignment (MI) before/after
    OUT/preview.png        a few pairs: T1 | T2 | T2's edges drawn in red on T1
    OUT/prepare_ixi.json   the settings used; a rerun with the same settings resumes

Pipeline (the numbered sections of this file follow it):
  1. find the T1 and T2 files (folders or the official .tar archives), pair them by subject id and
     report subjects that have only one modality;
  2. split by SUBJECT (seeded) before any slice exists, so no subject is in both train and test;
  3. read both volumes with nibabel and hand them to SimpleITK with their real-world geometry;
  4. build one axial grid from T1 (1 mm isotropic, 256 x 256 in-plane, centred on the head), stored
     so that ``array[k]`` is already in radiological display orientation: anterior at the top, the
     patient's right on the image's left (the convention of the kit's other real pairs: RAS
     canonical, ``img = slice[::-1, ::-1].T``);
  5. register T2 rigidly onto T1 (Mattes mutual information, Euler3D, multi-resolution): IXI T1 is a
     sagittal acquisition and T2 an axial one, in different voxel grids, so slice k of one array is
     NOT slice k of the other;
  6. resample both onto the grid, scale each volume by its 99.5th percentile to 0..255, keep central
     axial slices that contain enough head and lie inside the T2 field of view, write PNGs;
  7. write manifest/QA files and a preview, resuming from an earlier interrupted run;
  8. command line; stop when --pairs pairs are written.

Needs: numpy, nibabel, SimpleITK, Pillow, tqdm (see requirements-data.txt).
Data licence: IXI is CC BY-SA 3.0, https://brain-development.org/ixi-dataset/
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import random
import re
import shutil
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ITK's default thread pool hands work chunks to whichever thread is free, so sums are added in a
# different order on each run. The "Platform" threader gives every thread a fixed share, which makes
# such differences rarer; they are not gone (measured on a 2-core AMD EPYC: one subject's resampled T2
# slices moved by about a gray level in 2 of 6 reruns, even with the registration on one thread).
os.environ.setdefault("ITK_GLOBAL_DEFAULT_THREADER", "Platform")

try:  # the data-preparation extras are kept out of requirements.txt (students do not need them)
    import nibabel as nib
    import SimpleITK as sitk
except ImportError as e:
    print(f"错误 / Error: 缺少数据准备所需的库 {e.name}，请运行 pip install -r requirements-data.txt\n"
          f"  missing the data-preparation package {e.name}: run  pip install -r requirements-data.txt",
          file=sys.stderr)
    sys.exit(2)
from tqdm import tqdm

IXI_URLS = {
    "T1": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar",
    "T2": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T2.tar",
}

# File-name conventions: each regex must capture the subject id as group "subject".
NAMINGS = {
    # IXI002-Guys-0828-T1.nii.gz / IXI002-Guys-0828-T2.nii.gz
    "ixi": (r"^(?P<subject>IXI\d+-[A-Za-z]+-\d+)-T1\.nii(\.gz)?$",
            r"^(?P<subject>IXI\d+-[A-Za-z]+-\d+)-T2\.nii(\.gz)?$"),
    # BraTS-GLI-00001-000-t1n.nii.gz / -t2w.nii.gz and TCGA-DU-7294_t1.nii.gz / _t2.nii.gz
    "brats": (r"^(?P<subject>.+?)[-_](t1n|t1)\.nii(\.gz)?$",
              r"^(?P<subject>.+?)[-_](t2w|t2)\.nii(\.gz)?$"),
}

SPLITS = ("train", "test")
OUTPUT_ITEMS = ("trainA", "trainB", "testA", "testB", "manifest.csv", "registration.csv",
                "preview.png", "prepare_ixi.json")
IMAGE_SIZE = 256  # the handout's models expect 256 x 256
MANIFEST_FIELDS = ["filename", "subject", "slice", "split", "t1_source", "t2_source"]
REGISTRATION_FIELDS = ["subject", "split", "init", "rot_x_deg", "rot_y_deg", "rot_z_deg",
                       "tx_mm", "ty_mm", "tz_mm", "mi_header", "mi_registered"]


class PrepError(Exception):
    """A problem the user can fix; main() prints it as one bilingual message and exits with 2."""

    def __init__(self, zh: str, en: str):
        super().__init__(f"{zh}\n  {en}")


def warn(zh: str, en: str) -> None:
    tqdm.write(f"警告 / Warning: {zh}\n  {en}", file=sys.stderr)


def info(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# 0. Optional download of the official tarballs
# ---------------------------------------------------------------------------------------------

def download_ixi(dest: Path) -> dict[str, Path]:
    """Fetch IXI-T1.tar and IXI-T2.tar into dest; files already there are kept (no re-download)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepError(f"无法创建下载目录 {dest}：{exc}", f"cannot create download folder {dest}: {exc}")
    paths = {}
    for modality, url in IXI_URLS.items():
        target = dest / Path(url).name
        paths[modality] = target
        if target.is_file():
            info(f"{target} already downloaded, skipping")
            continue
        # Download to .part and rename at the end, so an interrupted download is never mistaken
        # for a complete archive on the next run.
        partial = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as exc:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
            raise PrepError(
                f"下载 {url} 失败（{exc}）。请检查网络，或在浏览器中从 "
                "https://brain-development.org/ixi-dataset/ 手动下载后用 --t1/--t2 指定。",
                f"downloading {url} failed ({exc}). Check the internet connection, or download it "
                "by hand from https://brain-development.org/ixi-dataset/ and pass it with --t1/--t2.")
        partial.replace(target)
    return paths


# ---------------------------------------------------------------------------------------------
# 1. Find and pair the input files
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One NIfTI file, either on disk or a member of a .tar archive."""
    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with tarfile.open(self.path) as tar:
            return tar.extractfile(self.member).read()


def list_candidates(location: Path) -> list[tuple[str, Source]]:
    """(file name, Source) for every file in a folder (recursively) or a tar archive."""
    if not location.exists():
        raise PrepError(f"找不到输入 {location}。请检查路径，或先解压/下载 IXI 数据（--download）。",
                        f"input {location} does not exist. Check the path, or extract/download "
                        "the IXI data first (--download).")
    if location.is_dir():
        return [(p.name, Source(p)) for p in sorted(location.rglob("*")) if p.is_file()]
    try:
        with tarfile.open(location) as tar:
            return [(Path(m.name).name, Source(location, m.name))
                    for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError) as exc:
        reason = str(exc).splitlines()[0]  # tarfile lists every compression it tried; keep it short
        raise PrepError(f"{location} 既不是文件夹，也不是可读的 .tar 文件（{reason}）。"
                        "文件可能损坏或下载不完整，请重新下载。",
                        f"{location} is neither a folder nor a readable .tar archive ({reason}). "
                        "It may be damaged or incompletely downloaded: download it again.")


def find_modality(location: Path, modality: str, naming: str) -> dict[str, Source]:
    """Map subject id -> Source for one modality; explain what was found if nothing matches."""
    t1_regex, t2_regex = NAMINGS[naming]
    wanted, other = (t1_regex, t2_regex) if modality == "T1" else (t2_regex, t1_regex)
    found: dict[str, Source] = {}
    n_other = 0
    for name, source in list_candidates(location):
        match = re.match(wanted, name, flags=re.IGNORECASE)
        if match:
            subject = match.group("subject")
            if subject in found:
                warn(f"{subject} 的 {modality} 出现多次，使用 {found[subject]}",
                     f"{subject} has more than one {modality} file; using {found[subject]}")
                continue
            found[subject] = source
        elif re.match(other, name, flags=re.IGNORECASE):
            n_other += 1
    if not found:
        hint_zh = hint_en = ""
        if n_other:
            other_mod = "T2" if modality == "T1" else "T1"
            hint_zh = f"那里有 {n_other} 个 {other_mod} 文件——是否把 --t1 和 --t2 写反了？"
            hint_en = f" It holds {n_other} {other_mod} files - are --t1 and --t2 swapped?"
        example = "IXI002-Guys-0828-T1.nii.gz" if naming == "ixi" else "BraTS-GLI-00001-000-t1n.nii.gz"
        raise PrepError(
            f"在 {location} 中没有找到 {modality} 文件（命名规则 --naming {naming}，例如 {example}）。{hint_zh}",
            f"no {modality} files found in {location} (naming --naming {naming}, e.g. {example})."
            f"{hint_en}")
    return found


def pair_subjects(t1: dict[str, Source], t2: dict[str, Source]) -> list[str]:
    """Subjects with both modalities (sorted); subjects with only one are reported and skipped."""
    for only, have, missing in ((sorted(set(t1) - set(t2)), "T1", "T2"),
                                (sorted(set(t2) - set(t1)), "T2", "T1")):
        if only:
            shown = ", ".join(only[:20]) + (" ..." if len(only) > 20 else "")
            warn(f"{len(only)} 个受试者只有 {have}、没有 {missing}，已跳过：{shown}",
                 f"{len(only)} subject(s) have {have} but no {missing} and are skipped: {shown}")
    paired = sorted(set(t1) & set(t2))
    if not paired:
        raise PrepError("没有任何受试者同时具有 T1 和 T2，请检查 --t1/--t2 是否来自同一数据集。",
                        "no subject has both T1 and T2; check that --t1 and --t2 belong together.")
    return paired


# ---------------------------------------------------------------------------------------------
# 2. Split by subject (before any slice exists, so slices of one subject can never leak)
# ---------------------------------------------------------------------------------------------

def assign_splits(subjects: list[str], test_fraction: float, seed: int) -> list[tuple[str, str]]:
    """Seeded subject order with a split per subject.

    Subject i of the shuffled order goes to test when round((i+1)*f) > round(i*f); every prefix of the
    order therefore holds ~f test subjects, so the fraction holds however many subjects --pairs uses.
    """
    order = sorted(subjects)
    random.Random(seed).shuffle(order)
    result = []
    for i, subject in enumerate(order):
        is_test = math.floor((i + 1) * test_fraction + 0.5) > math.floor(i * test_fraction + 0.5)
        result.append((subject, "test" if is_test else "train"))
    return result


# ---------------------------------------------------------------------------------------------
# 3. Read a volume with nibabel and give it to SimpleITK with its physical geometry
# ---------------------------------------------------------------------------------------------

def load_volume(source: Source) -> sitk.Image:
    """NIfTI -> float32 SimpleITK image. nibabel affines are RAS, ITK geometry is LPS."""
    try:
        raw = source.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: .nii.gz
            raw = gzip.decompress(raw)
        image = nib.Nifti1Image.from_bytes(raw)
        data = image.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel/gzip raise many types for broken files
        raise PrepError(f"无法读取 {source}（{type(exc).__name__}: {exc}）。文件可能损坏或不完整，"
                        "请重新下载/解压，或用 --skip-bad 跳过。",
                        f"cannot read {source} ({type(exc).__name__}: {exc}). The file is probably "
                        "corrupt or truncated: download/extract it again, or pass --skip-bad.")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2 or not np.isfinite(data).all():
        raise PrepError(f"{source} 不是有效的三维 MRI 体数据（形状 {data.shape}）。",
                        f"{source} is not a valid 3-D MRI volume (shape {data.shape}).")
    lps = np.diag([-1.0, -1.0, 1.0])
    matrix = lps @ image.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not (np.all(spacing > 1e-6) and abs(np.linalg.det(matrix)) > 1e-9):
        raise PrepError(f"{source} 的头文件几何信息（affine）无效，无法确定体素位置。",
                        f"{source} has an invalid header geometry (affine), so voxel positions "
                        "are unknown. Download/extract it again, or pass --skip-bad.")
    u, _, vt = np.linalg.svd(matrix / spacing)  # nearest rotation: sforms may carry tiny shears
    volume = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # ITK: z,y,x
    volume.SetSpacing([float(s) for s in spacing])
    volume.SetDirection([float(v) for v in (u @ vt).ravel()])
    volume.SetOrigin([float(v) for v in lps @ image.affine[:3, 3]])
    return volume


def head_mask(volume: sitk.Image) -> np.ndarray:
    """Head/brain foreground (ITK z,y,x array): above 10 % of the robust maximum."""
    data = sitk.GetArrayViewFromImage(volume)
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, bool)
    return data > 0.1 * np.percentile(positive, 99.5)


# ---------------------------------------------------------------------------------------------
# 4. Canonical axial grid derived from T1
# ---------------------------------------------------------------------------------------------

def canonical_axial_grid(t1: sitk.Image, spacing: float) -> sitk.Image:
    """Empty reference image: 256 x 256 x nz axial grid, `spacing` mm, centred on the T1 head.

    The axes are T1's own voxel axes (keeping the obliquity the radiographer planned) permuted and
    flipped to the closest of ITK's L, P, S. ITK array index [z, y, x] then means x -> patient left,
    y -> posterior, z -> superior, so ``array[z]`` displayed as is shows anterior at the top and the
    patient's right on the image's left: exactly ``RAS_slice[::-1, ::-1].T``.
    """
    direction = np.array(t1.GetDirection()).reshape(3, 3)  # columns: voxel axes in LPS
    closest = np.argmax(np.abs(direction), axis=1)        # for each world axis, the closest voxel axis
    if len(set(closest)) == 3:
        axes = direction[:, closest] * np.sign(direction[np.arange(3), closest])
    else:  # ~45 degree obliquity: no unique closest axis, fall back to the scanner axes
        axes = np.eye(3)
    zyx = np.argwhere(head_mask(t1))
    if zyx.size == 0:
        raise PrepError("T1 图像中没有任何信号（全为 0）。", "the T1 image is empty (all zeros).")
    corners = [t1.TransformContinuousIndexToPhysicalPoint([float(c) for c in (x, y, z)])
               for x in (zyx[:, 2].min(), zyx[:, 2].max())
               for y in (zyx[:, 1].min(), zyx[:, 1].max())
               for z in (zyx[:, 0].min(), zyx[:, 0].max())]
    local = np.array(corners) @ axes  # coordinates along the grid axes
    low, high = local.min(axis=0), local.max(axis=0)
    centre = (low + high) / 2
    nz = int(math.ceil((high[2] - low[2]) / spacing)) + 3
    start = centre - spacing * np.array([(IMAGE_SIZE - 1) / 2, (IMAGE_SIZE - 1) / 2, (nz - 1) / 2])
    grid = sitk.Image([IMAGE_SIZE, IMAGE_SIZE, nz], sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection([float(v) for v in axes.ravel()])
    grid.SetOrigin([float(v) for v in axes @ start])
    return grid


# ---------------------------------------------------------------------------------------------
# 5. Rigid registration of T2 onto T1
# ---------------------------------------------------------------------------------------------

def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int) -> tuple[sitk.Euler3DTransform, str]:
    """Euler3D transform mapping T1 (fixed) physical points to T2 (moving) points.

    T1 and T2 of an IXI subject come from one session, so the scanner coordinates in the headers
    already roughly agree and only head motion between the scans is left. We start from that header
    alignment, unless a moments (centre of mass) start scores better mutual information, which
    rescues files with unreliable headers. Either way the rotation centre is the T1 head centre.
    """
    mask = sitk.GetImageFromArray(head_mask(fixed).astype(np.uint8))
    mask.CopyInformation(fixed)
    mask = sitk.BinaryDilate(mask, [3, 3, 3])  # include the head edge, where the MI signal is

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()  # balance radians against mm by the shift they cause
    shrink = [4, 2, 1]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    # About 40k random samples per level keeps each subject at seconds, not minutes, with a fixed
    # seed so reruns give identical transforms.
    n_voxels = np.prod(fixed.GetSize())
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(  # seed + 1: SimpleITK reads seed 0 as "wall clock"
        [min(1.0, 40000 * s ** 3 / n_voxels) for s in shrink], seed + 1)

    centre = fixed.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in np.argwhere(head_mask(fixed)).mean(axis=0)[::-1]])
    header = sitk.Euler3DTransform()
    header.SetCenter(centre)
    moments = _rounded(sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)))
    scores = {}
    for name, start in (("header", header), ("moments", moments)):
        reg.SetInitialTransform(start, inPlace=True)
        try:
            scores[name] = reg.MetricEvaluate(fixed, moving)  # ITK reports -MI: lower is better
        except RuntimeError:  # this start leaves T1 and T2 without overlap
            scores[name] = math.inf
    init = min(scores, key=scores.get)
    transform = header if init == "header" else moments
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return _rounded(transform), init


def _rounded(transform: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """Round to 1e-5 rad / 1e-4 mm. Multi-threaded ITK sums differ in the last bits from run to
    run; rounding far below voxel precision keeps the transforms (registration.csv) identical, and
    the PNGs nearly always too (see the threader note at the top)."""
    transform.SetFixedParameters([round(v, 4) for v in transform.GetFixedParameters()])
    params = transform.GetParameters()
    transform.SetParameters([round(v, 5) for v in params[:3]] + [round(v, 4) for v in params[3:]])
    return transform


# ---------------------------------------------------------------------------------------------
# 6. Resample, normalise, choose slices, write PNGs
# ---------------------------------------------------------------------------------------------

def resample(volume: sitk.Image, grid: sitk.Image, transform: sitk.Transform,
             interpolator=sitk.sitkLinear) -> np.ndarray:
    """Volume on the reference grid as a float32 [z, row, col] array (0 outside its field of view)."""
    out = sitk.Resample(volume, grid, transform, interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def to_uint8(volume: np.ndarray, region: np.ndarray, percentile: float) -> np.ndarray:
    """Per-volume robust scaling: value / p(percentile of in-region signal), clipped to 0..255."""
    values = volume[region & (volume > 0)]
    scale = np.percentile(values, percentile) if values.size else 1.0
    return np.round(np.clip(volume / max(scale, 1e-6), 0.0, 1.0) * 255).astype(np.uint8)


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Mutual information (nats) of two uint8 images from their joint histogram."""
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 256], [0, 256]])
    p = joint / joint.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def choose_slices(fg_a: np.ndarray, fg_b: np.ndarray, covered: np.ndarray, want: int,
                  min_foreground: float, central_fraction: float) -> list[int]:
    """Axial slice indices with enough head in both images, fully inside the T2 field of view,
    from the central part of that range, evenly spaced."""
    plane = fg_a.shape[1] * fg_a.shape[2]
    both = (fg_a & fg_b).reshape(len(fg_a), -1).sum(axis=1) / plane
    t1_head = fg_a.reshape(len(fg_a), -1).sum(axis=1)
    t1_covered = (fg_a & covered).reshape(len(fg_a), -1).sum(axis=1)
    # A slice cut by the T2 field-of-view edge would pair real T1 anatomy with black T2: skip it.
    ok = (both >= min_foreground) & (t1_covered >= 0.99 * np.maximum(t1_head, 1))
    eligible = np.flatnonzero(ok)
    if eligible.size == 0:
        return []
    lo, hi = eligible.min(), eligible.max()
    margin = (hi - lo) * (1 - central_fraction) / 2
    central = eligible[(eligible >= lo + margin) & (eligible <= hi - margin)]
    if want >= central.size:
        return [int(k) for k in central]
    picks = np.round(np.linspace(0, central.size - 1, want)).astype(int)
    return [int(central[i]) for i in picks]


def _ones_like(volume: sitk.Image) -> sitk.Image:
    ones = sitk.Image(volume.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(volume)
    return ones


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)  # uint8 2-D array -> mode "L"


def prepare_subject(subject: str, split: str, t1_src: Source, t2_src: Source, want: int,
                    out: Path, args) -> tuple[list[dict], dict]:
    """Register, resample and slice one subject; write its PNGs; return manifest and QA rows."""
    t1, t2 = load_volume(t1_src), load_volume(t2_src)
    grid = canonical_axial_grid(t1, args.spacing)
    if args.registration == "rigid":
        try:
            transform, init = register_rigid(t1, t2, args.seed)
        except RuntimeError as exc:  # ITK errors, e.g. no overlap between T1 and T2 at all
            raise PrepError(f"{subject} 的配准失败（{str(exc).strip().splitlines()[-1]}）。"
                            "请检查 T1/T2 是否属于同一受试者，或用 --skip-bad 跳过。",
                            f"registration failed for {subject} "
                            f"({str(exc).strip().splitlines()[-1]}). Check that its T1 and T2 "
                            "belong together, or pass --skip-bad.")
    else:  # inputs already co-registered (e.g. BraTS): use the header geometry only
        transform, init = sitk.Euler3DTransform(), "none"

    a = resample(t1, grid, sitk.Transform())
    b = resample(t2, grid, transform)
    b_header = resample(t2, grid, sitk.Transform())  # header-only alignment, for the QA figure
    covered = resample(_ones_like(t2), grid, transform, sitk.sitkNearestNeighbor) > 0.5  # T2 FOV

    region = covered & ((a > 0) | (b > 0))
    a8 = to_uint8(a, region, args.percentile)
    b8 = to_uint8(b, region, args.percentile)
    b8_header = to_uint8(b_header, region, args.percentile)
    fg_a, fg_b = a8 > 25, b8 > 25  # 10 % of the robust maximum
    slices = choose_slices(fg_a, fg_b, covered, want, args.min_foreground, args.central_fraction)
    if not slices:
        raise PrepError(f"{subject} 没有可用的轴位切片（配准后 T1/T2 几乎不重叠）。请检查文件，或用 --skip-bad 跳过。",
                        f"{subject} has no usable axial slice (T1 and T2 barely overlap after "
                        "registration). Check the files, or pass --skip-bad.")

    rows = []
    for k in slices:
        name = f"{subject}_s{k:03d}.png"
        save_png(a8[k], out / f"{split}A" / name)
        save_png(b8[k], out / f"{split}B" / name)
        rows.append({"filename": name, "subject": subject, "slice": k, "split": split,
                     "t1_source": str(t1_src), "t2_source": str(t2_src)})
    params = transform.GetParameters()
    qa = {"subject": subject, "split": split, "init": init,
          **{f"rot_{ax}_deg": f"{math.degrees(v):.2f}" for ax, v in zip("xyz", params[:3])},
          **{f"t{ax}_mm": f"{v:.2f}" for ax, v in zip("xyz", params[3:])},
          "mi_header": f"{mutual_information(a8[slices], b8_header[slices]):.4f}",
          "mi_registered": f"{mutual_information(a8[slices], b8[slices]):.4f}"}
    return rows, qa



# ---------------------------------------------------------------------------------------------
# 7. Output folder, resuming, manifest and preview
# ---------------------------------------------------------------------------------------------

def open_output(out: Path, settings: dict, overwrite: bool) -> dict[str, list[dict]]:
    """Create or check the output folder; return the previous manifest rows by subject (to resume)."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"输出路径 {out} 是一个文件，不是文件夹。请换一个 --out。",
                        f"output path {out} is a file, not a folder. Choose another --out.")
    settings_file = out / "prepare_ixi.json"
    try:
        if out.is_dir() and overwrite:
            for item in OUTPUT_ITEMS:  # only what this script writes; never the whole folder
                path = out / item
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        elif out.is_dir() and any(out.iterdir()):
            if not settings_file.is_file():
                raise PrepError(
                    f"输出文件夹 {out} 已有内容，但不是本脚本生成的。请换一个 --out，"
                    "或加 --overwrite（会删除其中的 trainA/trainB/testA/testB 和清单文件）。",
                    f"output folder {out} is not empty and was not made by this script. Choose "
                    "another --out, or pass --overwrite (deletes trainA/trainB/testA/testB and the "
                    "manifest files in it).")
            try:
                previous = json.loads(settings_file.read_text())
            except ValueError:
                previous = None
            if previous != settings:
                changed = sorted(k for k in settings if not previous or previous.get(k) != settings[k])
                raise PrepError(
                    f"{out} 是用不同的设置生成的（{', '.join(changed)}），不能续跑。"
                    "请用相同参数重新运行、换一个 --out，或加 --overwrite 重新生成。",
                    f"{out} was made with different settings ({', '.join(changed)}), so it cannot "
                    "be resumed. Rerun with the same options, choose another --out, or pass "
                    "--overwrite to rebuild it.")
        for split in SPLITS:
            for side in "AB":
                (out / f"{split}{side}").mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise PrepError(f"无法写入输出文件夹 {out}：{exc}。请检查权限和磁盘空间。",
                        f"cannot write to output folder {out}: {exc}. Check permissions and disk space.")
    return read_previous_rows(out)


def read_previous_rows(out: Path) -> dict[str, list[dict]]:
    """Manifest rows of subjects whose PNGs are all present, grouped by subject."""
    by_subject: dict[str, list[dict]] = {}
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        return by_subject
    try:
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                row["slice"] = int(row["slice"])
                by_subject.setdefault(row["subject"], []).append(row)
    except (KeyError, TypeError, ValueError, csv.Error) as exc:
        raise PrepError(f"{manifest} 已损坏（{exc}），无法续跑。请加 --overwrite 重新生成。",
                        f"{manifest} is damaged ({exc}), so the run cannot be resumed. "
                        "Pass --overwrite to rebuild.")
    return {subject: rows for subject, rows in by_subject.items()
            if all((out / f"{r['split']}{side}" / r["filename"]).is_file()
                   for r in rows for side in "AB")}


def read_previous_qa(out: Path) -> dict[str, dict]:
    path = out / "registration.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["subject"]: row for row in csv.DictReader(f)}


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Write via a temporary file so an interruption never leaves a half-written manifest."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def remove_unlisted_pngs(out: Path, rows: list[dict]) -> int:
    """Delete PNGs the manifest does not list (left by an interrupted or skipped subject), so the
    folders the training script reads hold exactly the manifest."""
    listed = {(r["split"], r["filename"]) for r in rows}
    removed = 0
    for split in SPLITS:
        for side in "AB":
            for png in (out / f"{split}{side}").glob("*.png"):
                if (split, png.name) not in listed:
                    png.unlink()
                    removed += 1
    return removed


def write_preview(out: Path, rows: list[dict], n: int = 6) -> Path:
    """Rows of T1 | T2 | T1 with T2's edges in red (edges should sit on the same T1 boundaries)."""
    picks = [rows[i] for i in sorted({round(x) for x in np.linspace(0, len(rows) - 1, min(n, len(rows)))})]
    canvas = Image.new("RGB", (3 * IMAGE_SIZE, len(picks) * IMAGE_SIZE))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(picks):
        a = Image.open(out / f"{row['split']}A" / row["filename"]).convert("L")
        b = Image.open(out / f"{row['split']}B" / row["filename"]).convert("L")
        edges = b.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 60 else 0)
        overlay = Image.composite(Image.new("RGB", a.size, (255, 0, 0)), a.convert("RGB"), edges)
        for j, tile in enumerate((a, b, overlay)):
            canvas.paste(tile.convert("RGB"), (j * IMAGE_SIZE, i * IMAGE_SIZE))
        draw.text((4, i * IMAGE_SIZE + 4), f"{row['filename']} ({row['split']})  T1 | T2 | T2 edges on T1",
                  fill=(255, 255, 0))
    path = out / "preview.png"
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# 8. Command line
# ---------------------------------------------------------------------------------------------

class BilingualParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"错误 / Error: 命令行参数有误：{message}\n  invalid command line: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = BilingualParser(description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--t1", type=Path, help="folder or .tar with the T1 NIfTI files (IXI-T1.tar)")
    p.add_argument("--t2", type=Path, help="folder or .tar with the T2 NIfTI files (IXI-T2.tar)")
    p.add_argument("--out", type=Path, default=Path("dataset/ixi2000"), help="output folder")
    p.add_argument("--pairs", type=int, default=2000, help="total number of slice pairs to write")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of SUBJECTS used for test")
    p.add_argument("--seed", type=int, default=0, help="seed for the subject order/split and registration")
    p.add_argument("--slices-per-subject", type=int, default=20,
                   help="axial slices taken per subject (raised automatically if there are too "
                        "few subjects to reach --pairs)")
    p.add_argument("--spacing", type=float, default=1.0, help="pixel size of the axial grid in mm")
    p.add_argument("--percentile", type=float, default=99.5,
                   help="per-volume intensity percentile mapped to 255")
    p.add_argument("--min-foreground", type=float, default=0.10,
                   help="skip slices where less than this fraction of the 256x256 image is head")
    p.add_argument("--central-fraction", type=float, default=0.8,
                   help="use the central part of the usable slice range (drops skull top and base)")
    p.add_argument("--naming", choices=sorted(NAMINGS), default="ixi",
                   help="file-name convention: ixi (IXI002-Guys-0828-T1.nii.gz) or brats "
                        "(<id>-t1n/-t2w or <id>_t1/_t2)")
    p.add_argument("--registration", choices=["rigid", "none"], default="rigid",
                   help="'none' only for inputs that are already co-registered (e.g. BraTS)")
    p.add_argument("--download", type=Path, metavar="DIR",
                   help="download IXI-T1.tar and IXI-T2.tar into DIR (kept if already there) and use them")
    p.add_argument("--overwrite", action="store_true", help="rebuild the output instead of resuming")
    p.add_argument("--skip-bad", action="store_true",
                   help="warn about and skip subjects with unreadable files instead of stopping")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8),
                   help="threads for SimpleITK")
    args = p.parse_args(argv)
    checks = [(args.pairs >= 1, "--pairs >= 1"),
              (0 <= args.test_fraction < 1, "0 <= --test-fraction < 1"),
              (args.slices_per_subject >= 1, "--slices-per-subject >= 1"),
              (0.25 <= args.spacing <= 4, "0.25 <= --spacing <= 4"),
              (50 < args.percentile <= 100, "50 < --percentile <= 100"),
              (0 <= args.min_foreground < 1, "0 <= --min-foreground < 1"),
              (0 < args.central_fraction <= 1, "0 < --central-fraction <= 1"),
              (args.threads >= 1, "--threads >= 1"),
              (args.seed >= 0, "--seed >= 0")]
    for ok, rule in checks:
        if not ok:
            p.error(f"{rule}")
    if args.download is None and (args.t1 is None or args.t2 is None):
        p.error("--t1 and --t2 are required (or --download DIR)")
    return args


def run(args: argparse.Namespace) -> None:
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(args.threads)
    if args.download is not None:
        tars = download_ixi(args.download)
        args.t1, args.t2 = args.t1 or tars["T1"], args.t2 or tars["T2"]

    t1_files = find_modality(args.t1, "T1", args.naming)
    t2_files = find_modality(args.t2, "T2", args.naming)
    subjects = pair_subjects(t1_files, t2_files)
    order = assign_splits(subjects, args.test_fraction, args.seed)
    # Each split gets its own share of --pairs, filled only from its own subjects, so the test
    # split is not left empty when a small --pairs would otherwise be used up by train subjects.
    quota = {"test": math.floor(args.pairs * args.test_fraction + 0.5)}
    quota["train"] = args.pairs - quota["test"]
    per_subject = args.slices_per_subject
    for split in SPLITS:  # too few subjects for the quota: take more slices from each
        n_available = sum(s == split for _, s in order)
        if quota[split] and n_available:
            per_subject = max(per_subject, math.ceil(quota[split] / n_available))
    info(f"{len(subjects)} paired subject(s); up to {per_subject} slices each"
         + (" (raised to reach --pairs)" if per_subject > args.slices_per_subject else ""))

    settings = {key: getattr(args, key) for key in (
        "pairs", "test_fraction", "seed", "spacing", "percentile", "min_foreground",
        "central_fraction", "naming", "registration")}
    settings.update(slices_per_subject=per_subject, image_size=IMAGE_SIZE, version=1)
    previous = open_output(args.out, settings, args.overwrite)
    previous_qa = read_previous_qa(args.out)

    rows: list[dict] = []
    qa_rows: list[dict] = []
    written = dict.fromkeys(SPLITS, 0)
    reused = 0
    bar = tqdm(total=args.pairs, unit="pair", desc="IXI pairs")
    for subject, split in order:
        if all(written[s] >= quota[s] for s in SPLITS):
            break
        want = min(per_subject, quota[split] - written[split])
        if want <= 0:  # this subject's split is already full
            continue
        old = previous.get(subject)
        if old and len(old) == want and subject in previous_qa:
            new_rows, qa, reused = old, previous_qa[subject], reused + 1  # resume: already done
        else:
            started = time.perf_counter()
            try:
                new_rows, qa = prepare_subject(subject, split, t1_files[subject], t2_files[subject],
                                               want, args.out, args)
            except PrepError as exc:
                if not args.skip_bad:
                    raise
                warn(f"跳过 {subject}", f"skipping {subject}: {exc}")
                continue
            info(f"{subject} -> {split}: {len(new_rows)} pairs, start={qa['init']}, rotation "
                 f"({qa['rot_x_deg']}, {qa['rot_y_deg']}, {qa['rot_z_deg']}) deg, translation "
                 f"({qa['tx_mm']}, {qa['ty_mm']}, {qa['tz_mm']}) mm, MI header-only "
                 f"{qa['mi_header']} -> registered {qa['mi_registered']}, "
                 f"{time.perf_counter() - started:.1f} s")
        rows.extend(new_rows)
        qa_rows.append(qa)
        written[split] += len(new_rows)
        bar.update(len(new_rows))
        # Written after every subject so that an interrupted run resumes where it stopped.
        write_csv(args.out / "manifest.csv", MANIFEST_FIELDS, rows)
        write_csv(args.out / "registration.csv", REGISTRATION_FIELDS, qa_rows)
    bar.close()
    write_csv(args.out / "manifest.csv", MANIFEST_FIELDS, rows)
    write_csv(args.out / "registration.csv", REGISTRATION_FIELDS, qa_rows)
    removed = remove_unlisted_pngs(args.out, rows)
    if not rows:
        raise PrepError("没有生成任何切片对（所有受试者都被跳过）。", "no pairs were written (every subject was skipped).")
    preview = write_preview(args.out, rows)

    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    n_subj = {s: sum(q["split"] == s for q in qa_rows) for s in SPLITS}
    info(f"done: {len(rows)} pairs in {args.out} (train {counts['train']} pairs / {n_subj['train']} "
         f"subjects, test {counts['test']} pairs / {n_subj['test']} subjects); {reused} subject(s) "
         f"reused from an earlier run, {removed} stale PNG(s) removed; preview: {preview}")
    if len(rows) < args.pairs:
        warn(f"只得到 {len(rows)} 对，少于 --pairs {args.pairs}（受试者或可用切片不够）。"
             "请提供更多受试者，或增大 --slices-per-subject / --central-fraction。",
             f"only {len(rows)} pairs, fewer than --pairs {args.pairs} (not enough subjects or "
             "usable slices). Add subjects, or raise --slices-per-subject / --central-fraction.")
    for split in SPLITS:
        if counts[split] == 0 and quota[split] > 0:
            warn(f"{split} 集为空：只有 {len(subjects)} 个受试者，无法按受试者划分；"
                 f"experiment6.py 需要 train 和 test 都有图像，请提供更多受试者。",
                 f"the {split} split is empty: {len(subjects)} subject(s) are too few to split by "
                 "subject, and experiment6.py needs images in both splits. Add more subjects.")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except PrepError as exc:
        print(f"错误 / Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("已中断。用同一命令重新运行即可从中断处继续。\n  Interrupted. Run the same command "
              "again to resume where it stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
