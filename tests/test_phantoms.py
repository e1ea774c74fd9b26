"""data/phantoms.py, the kit's embedded default dataset: real T1/T2 contrast relations, determinism, variety."""
import numpy as np
from PIL import Image

from data import phantoms


def test_phantom_contrasts_follow_mri_physics():
    rng = np.random.default_rng(11)
    means = {"t1": {}, "t2": {}}
    for _ in range(6):
        t1, t2, labels = phantoms.phantom_slice(rng)
        for name, lab in phantoms.TISSUES.items():
            inner = labels == lab
            if inner.sum() > 30:
                means["t1"].setdefault(name, []).append(t1[inner].mean())
                means["t2"].setdefault(name, []).append(t2[inner].mean())
    t1 = {k: np.mean(v) for k, v in means["t1"].items()}
    t2 = {k: np.mean(v) for k, v in means["t2"].items()}
    assert t1["white"] > t1["grey"] > t1["csf"]
    assert t1["fat"] > t1["white"]  # scalp fat is the brightest thing on T1
    assert t2["csf"] > max(v for k, v in t2.items() if k != "csf")  # CSF brightest on T2
    assert t2["white"] < t2["grey"] < t2["csf"]  # white matter darkest brain tissue on T2
    assert t2["fat"] < t1["fat"]


def test_phantoms_are_deterministic_and_varied(tmp_path):
    a = phantoms.make_phantom_dataset(tmp_path / "a", n_train=3, n_test=1, size=96, seed=7)
    b = phantoms.make_phantom_dataset(tmp_path / "b", n_train=3, n_test=1, size=96, seed=7)
    names = sorted(p.name for p in (a / "trainA").iterdir())
    assert names == sorted(p.name for p in (b / "trainB").iterdir())
    for n in names:
        assert (a / "trainA" / n).read_bytes() == (b / "trainA" / n).read_bytes()
    imgs = [np.asarray(Image.open(a / "trainA" / n), dtype=float) for n in names]
    assert np.abs(imgs[0] - imgs[1]).mean() > 2  # different anatomy, not one image repeated
    # The test split is not a copy of the training split.
    test_img = np.asarray(Image.open(next((a / "testA").iterdir())), dtype=float)
    assert min(np.abs(test_img - im).mean() for im in imgs) > 2
