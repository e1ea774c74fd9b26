"""Loss-analysis support and data-check consistency in experiment6.py (issue 12).

history.csv / loss_curves.png carry the adversarial term of loss_G on its own; upper-case .PNG files are
read by the reference dataset and counted by the data check, and a dataset that skips them is an error
with a message, not a crash later.
"""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

import experiment6 as ex


def _train(tiny_data, lambda_l1):
    torch.manual_seed(0)
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    ds = torch.utils.data.Subset(ds, [0, 1, 2])  # three steps are enough to average over
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(0))
    G, D = ex.Generator(), ex.Discriminator()
    return ex.fit(G, D, loader, 1, torch.device("cpu"), lambda_l1=lambda_l1, progress=False)


@pytest.mark.slow
def test_history_has_the_adversarial_term_of_loss_G(tiny_data, tmp_path):
    history = _train(tiny_data, lambda_l1=100.0)
    h = history[0]
    assert {"epoch", "loss_G", "loss_D", "L1", "seconds", "samples_per_second", "loss_G_adv"} <= set(h)
    assert h["loss_G_adv"] == pytest.approx(h["loss_G"] - 100.0 * h["L1"], rel=1e-6, abs=1e-6)
    assert 0 < h["loss_G_adv"] < 10 < h["loss_G"]  # a BCE of D's verdicts, next to ~30 of 100·L1

    no_l1 = _train(tiny_data, lambda_l1=0.0)[0]  # without the L1 term, loss_G is the adversarial term
    assert no_l1["loss_G_adv"] == pytest.approx(no_l1["loss_G"], rel=1e-6)

    ex.write_history_csv(history, tmp_path / "history.csv")
    with open(tmp_path / "history.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["loss_G_adv"]) == pytest.approx(h["loss_G_adv"])
    old = [{k: v for k, v in h.items() if k != "loss_G_adv"}]  # a history resumed from an older checkpoint
    path = ex.plot_history(old + history, tmp_path / "loss_curves.png")
    img = np.asarray(Image.open(path))
    assert img.shape[1] > 4 * img.shape[0]  # one row of five panels


def test_upper_case_png_is_read_and_counted(tiny_data, tmp_path):
    root = tmp_path / "upper"
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir(parents=True)
        for f in sorted((tiny_data / split).iterdir()):
            (root / split / (f.stem + ".PNG")).write_bytes(f.read_bytes())
    counts = ex.check_data_root(root)
    assert counts == {"train": 6, "test": 2}
    ds = ex.PairedMedicalDataset(str(root / "trainA"), str(root / "trainB"))
    ex.check_dataset_size(ds, counts["train"], root / "trainA")  # the reference reads them all

    class StrictDataset(torch.utils.data.Dataset):  # the seed handout's f.endswith('.png') filter
        def __len__(self):
            return 0

    with pytest.raises(ex.DataError, match=r"\.PNG") as info:
        ex.check_dataset_size(StrictDataset(), counts["train"], root / "trainA")
    assert "f.lower().endswith" in str(info.value) and "0" in str(info.value)
