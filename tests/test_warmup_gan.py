"""The optional warm-up GAN (handout/warmup_gan.py), run the way a student runs it."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "handout"))
import warmup_gan  # noqa: E402  (importing must have no side effects: nothing may run here)

SCRIPT = ROOT / "handout" / "warmup_gan.py"


@pytest.mark.slow
def test_warmup_runs_with_a_smaller_last_batch(tiny_data, tmp_path):
    # tiny_data has 6 training slices; batch 4 gives batches of 4 and 2. With the article's fixed-size
    # noise batch the fake half would not match the real one; the full 6 images must be used each epoch.
    out = tmp_path / "warmup"
    r = run_script([SCRIPT, "--data-root", tiny_data, "--size", "16", "--epochs", "2",
                    "--batch-size", "4", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Epoch 2/2" in r.stdout and "| 6 images |" in r.stdout, r.stdout
    assert "4 steps" in r.stdout, r.stdout  # 2 batches per epoch, the smaller one not dropped

    grid = np.asarray(Image.open(out / "samples.png").convert("L"), dtype=np.float32)
    # 64 samples of 16x16 in 8 columns with 2-pixel padding: 8 * (16 + 2) + 2 = 146 pixels a side.
    assert grid.shape == (146, 146)
    tiles = grid[2:, 2:].reshape(8, 18, 8, 18)[:, :16, :, :16]  # drop the padding
    assert tiles.std() > 1.0, "the generated grid is blank"
    assert (out / "real.png").is_file() and (out / "loss_curves.png").is_file()


def test_warmup_max_steps_stops_early(tiny_data, tmp_path, capsys):
    argv = ["--data-root", str(tiny_data), "--size", "8", "--epochs", "50", "--batch-size", "4",
            "--max-steps", "3", "--out", str(tmp_path / "o")]
    assert warmup_gan.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 steps" in out and "Epoch 2/50" in out and "Epoch 3/50" not in out, out
    assert (tmp_path / "o" / "samples.png").is_file()


@pytest.mark.slow
def test_warmup_missing_data_root_is_one_clear_error(tmp_path):
    r = run_script([SCRIPT, "--data-root", tmp_path / "nope", "--out", tmp_path / "o"], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "错误 / Error" in r.stderr and "trainB" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # nothing written before the data was found


def test_warmup_empty_folder_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "d" / "trainB").mkdir(parents=True)
    assert warmup_gan.main(["--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "错误 / Error" in err and ".png" in err, err
    assert not (tmp_path / "o").exists()


def test_warmup_shapes():
    g, d = warmup_gan.Generator(16 * 16), warmup_gan.Discriminator(16 * 16)
    fake = g(torch.randn(3, warmup_gan.LATENT_DIM))
    assert fake.shape == (3, 256) and fake.abs().max() <= 1
    p = d(fake)
    assert p.shape == (3, 1) and ((p > 0) & (p < 1)).all()


def test_warmup_noise_follows_the_real_batch_size(tiny_data, tmp_path, monkeypatch, capsys):
    # The article drew torch.randn(batch_size, ...) every step; on the last, smaller batch the fakes
    # then outnumber the real slices. Record every noise batch drawn during one epoch of 4 + 2 slices.
    sizes, randn = [], torch.randn

    def recording_randn(*shape, **kwargs):
        if len(shape) == 2 and shape[1] == warmup_gan.LATENT_DIM:
            sizes.append(shape[0])
        return randn(*shape, **kwargs)

    monkeypatch.setattr(torch, "randn", recording_randn)
    assert warmup_gan.main(["--data-root", str(tiny_data), "--size", "8", "--epochs", "1",
                            "--batch-size", "4", "--out", str(tmp_path / "o")]) == 0
    assert sizes[0] == 64  # the fixed noise for the sample grid
    assert sorted(sizes[1:]) == [2, 2, 4, 4]  # one draw for D and one for G, per batch
