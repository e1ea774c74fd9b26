"""Synthetic paired T1/T2 brain phantoms: the kit's embedded default dataset.

Real IXI slices cannot ship with the kit (licence, size), yet `python experiment6.py` must work on a
fresh clone. So we draw axial "slices" of a brain-like head with the tissue contrasts of real MRI:

    tissue         T1-weighted            T2-weighted
    scalp fat      brightest              medium
    skull          dark                   dark
    CSF            dark                   brightest
    grey matter    medium                 bright
    white matter   bright (> grey)        darkest brain tissue
    lesion         darker than WM         bright (oedema-like)

Each slice has its own anatomy (head shape and size, folded cortex, ventricles, deep nuclei, an
optional lesion), its own smooth bias field per sequence and Rician noise, so T2 is *not* an intensity
copy of T1: the generator has to learn that CSF flips from dark to bright while fat goes the other way.
Everything is seeded: the same seed gives byte-identical PNGs on every machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Tissue labels, shared by the generator and the tests that check the contrasts.
BACKGROUND, FAT, SKULL, CSF, GREY, WHITE, LESION = range(7)
TISSUES = {"background": BACKGROUND, "fat": FAT, "skull": SKULL, "csf": CSF,
           "grey": GREY, "white": WHITE, "lesion": LESION}

# Mean intensity of each label on a 0..1 scale, index = label.
T1_LEVELS = np.array([0.00, 0.92, 0.07, 0.12, 0.48, 0.72, 0.32])
T2_LEVELS = np.array([0.00, 0.50, 0.06, 0.95, 0.60, 0.36, 0.82])

GENERATOR_VERSION = 1  # bump when the drawing changes, so stale caches are regenerated


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT (partial-volume effect at tissue borders)."""
    h, w = image.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape).astype(np.float32)


def _bias_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth multiplicative coil-sensitivity field, about ±15 % across the head."""
    c = rng.uniform(-0.12, 0.12, size=5)
    return 1.0 + c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x ** 2 - 0.3) + c[4] * (y ** 2 - 0.3)


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0):
    """Normalised elliptical radius: < 1 inside the ellipse."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    return np.sqrt((u / ax) ** 2 + (v / ay) ** 2)


def phantom_slice(rng: np.random.Generator, size: int = 256):
    """Draw one paired slice. Returns (t1, t2, labels): two float arrays in [0, 1] and the label map."""
    # float32 throughout: half the memory traffic of float64, and plenty for 8-bit images.
    coords = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    y, x = np.meshgrid(coords, coords, indexing="ij")  # y grows downwards: anterior is at the top

    # Head outline: an ellipse, taller than wide, slightly rotated, with a wobbly (lumpy) border.
    level = rng.uniform(0.0, 1.0)  # 0 = top of the head, 1 = mid-brain; smaller heads near the top
    scale = 0.80 + 0.20 * np.sqrt(level)
    ax, ay = scale * rng.uniform(0.66, 0.76), scale * rng.uniform(0.80, 0.90)
    angle = rng.uniform(-0.15, 0.15)
    cx, cy = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    phi = np.arctan2(y - cy, x - cx)
    wobble = 1.0 + sum(rng.uniform(-0.02, 0.02) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
                       for k in range(2, 6))
    rho = _ellipse(x, y, cx, cy, ax, ay, angle) / wobble  # 1.0 at the skin

    labels = np.zeros((size, size), dtype=np.uint8)
    labels[rho < 1.00] = FAT
    labels[rho < 0.92] = SKULL
    labels[rho < 0.86] = CSF  # thin CSF layer under the skull

    # Cortex: grey matter band whose inner (white-matter) border folds into gyri.
    n_gyri = rng.integers(9, 16)
    fold = rng.uniform(0.04, 0.07) * np.sin(n_gyri * phi + rng.uniform(0, 2 * np.pi))
    fold += 0.02 * np.sin((n_gyri + 5) * phi + rng.uniform(0, 2 * np.pi))
    labels[rho < 0.83] = GREY
    labels[rho < 0.70 + fold] = WHITE
    # Sulci: CSF clefts that cut into the grey matter between gyri.
    sulci = (np.sin(n_gyri * phi + rng.uniform(0, 2 * np.pi)) > 0.93) & (rho < 0.84) & (rho > 0.72)
    labels[sulci] = CSF

    # Deep grey nuclei and lateral ventricles appear in the middle levels of the brain.
    if level > 0.35:
        for side in (-1, 1):
            nx, ny = cx + side * rng.uniform(0.16, 0.22) * ax, cy + rng.uniform(0.02, 0.10)
            labels[_ellipse(x, y, nx, ny, 0.10 * ax, 0.16 * ay, side * 0.3) < 1] = GREY
        vsize = rng.uniform(0.6, 1.3) * level
        for side in (-1, 1):
            vx, vy = cx + side * 0.07 * ax, cy - rng.uniform(0.0, 0.08)
            ventricle = _ellipse(x, y, vx, vy, 0.06 * ax * vsize + 0.02, 0.30 * ay * vsize + 0.03,
                                 -side * rng.uniform(0.1, 0.35))
            labels[ventricle < 1] = CSF

    # Sometimes a lesion in the white matter (dark on T1, bright on T2, like oedema).
    if rng.uniform() < 0.4:
        r = np.sqrt(rng.uniform(0.0, 0.25))
        t = rng.uniform(0, 2 * np.pi)
        lx, ly = cx + r * ax * np.cos(t), cy + r * ay * np.sin(t)
        lesion = _ellipse(x, y, lx, ly, rng.uniform(0.04, 0.10), rng.uniform(0.04, 0.10),
                          rng.uniform(0, np.pi)) < 1
        labels[lesion & (labels == WHITE)] = LESION

    images = []
    for levels in (T1_LEVELS, T2_LEVELS):
        # Per-subject jitter of the tissue levels, then blur, bias field and Rician noise.
        jitter = (levels * (1.0 + rng.uniform(-0.05, 0.05, size=levels.shape))).astype(np.float32)
        clean = _smooth(jitter[labels], sigma=0.8)
        clean *= _bias_field(rng, x, y)
        sigma = rng.uniform(0.010, 0.025)
        noise = rng.standard_normal((2, size, size), dtype=np.float32) * sigma
        noisy = np.hypot(clean + noise[0], noise[1])
        images.append(np.clip(noisy, 0.0, 1.0))
    return images[0], images[1], labels


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_phantom_dataset(root, n_train: int = 120, n_test: int = 24, size: int = 256, seed: int = 0):
    """Write root/{trainA,trainB,testA,testB}/phantom_XXXX.png (A = T1, B = T2).

    Idempotent: if `root` already holds a complete set made with the same parameters, nothing is
    written. Train and test use different random streams, like different subjects.
    Returns the root as a Path.
    """
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "n_train": n_train, "n_test": n_test,
              "size": size, "seed": seed}
    stamp = root / "phantoms.json"
    if stamp.exists():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == params:
                return root
        except ValueError:
            pass  # unreadable stamp: regenerate

    for split, count, stream in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng([seed, stream])
        dir_a, dir_b = root / f"{split}A", root / f"{split}B"
        for d in (dir_a, dir_b):
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("phantom_*.png"):
                old.unlink()
        for i in range(count):
            t1, t2, _ = phantom_slice(rng, size)
            name = f"phantom_{split}_{i:04d}.png"
            Image.fromarray(to_uint8(t1), mode="L").save(dir_a / name)
            Image.fromarray(to_uint8(t2), mode="L").save(dir_b / name)
    stamp.write_text(json.dumps(params), encoding="utf-8")  # written last: marks the set complete
    return root
