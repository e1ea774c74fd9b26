"""Challenge 2 (handout/challenge_unet.py): the U-Net generator, its skip path, and that it reuses
experiment6.py's training and outputs (--compare, --resume). Tiny phantoms and narrow nets: seconds."""
import csv
import json
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "handout"))
import challenge_unet as cu  # noqa: E402  (importing must not train or write anything)

TINY = ["--batch-size", "3", "--unet-base", "8", "--eval-samples", "2", "--vis-samples", "2", "--no-progress"]


def test_unet_shapes_and_range():
    G = cu.UNetGenerator(base=8)
    x = torch.rand(2, 1, 256, 256) * 2 - 1
    y = G(x)
    assert y.shape == (2, 1, 256, 256)
    assert y.abs().max() <= 1  # Tanh, like the handout's G: the same [-1, 1] as the data


def test_patchgan70_shape_and_receptive_field():
    D = cu.PatchGAN70(ndf=8).eval()  # eval: BatchNorm's batch statistics would couple all pixels
    x1 = torch.zeros(1, 1, 256, 256, requires_grad=True)
    p = D(x1, torch.zeros(1, 1, 256, 256))
    assert p.shape == (1, 1, 30, 30) and ((p > 0) & (p < 1)).all()
    p[0, 0, 15, 15].backward()  # which input pixels can one output score see?
    rows = torch.nonzero(x1.grad[0, 0].abs().sum(dim=1)).flatten()
    cols = torch.nonzero(x1.grad[0, 0].abs().sum(dim=0)).flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_skip_connections_carry_encoder_features_to_the_decoder():
    G = cu.UNetGenerator(base=8).eval()
    x = torch.rand(1, 1, 256, 256) * 2 - 1
    enc, dec_skips = [], []
    hooks = [d.register_forward_hook(lambda _m, _i, out: enc.append(out)) for d in G.downs]
    hooks += [u.register_forward_pre_hook(lambda _m, args: dec_skips.append(args[1])) for u in G.ups]
    with torch.no_grad():
        y = G(x)
    for h in hooks:
        h.remove()
    # Each decoder level gets the encoder map of its resolution (deepest first), the last one the T1.
    expected = [enc[2], enc[1], enc[0], x]
    assert [s.shape for s in dec_skips] == [e.shape for e in expected]
    assert all(s is e for s, e in zip(dec_skips, expected))

    # ... and uses it: change only the skip tensors (zeros instead), and the output changes.
    zero_skip = [u.register_forward_pre_hook(lambda _m, args: (args[0], torch.zeros_like(args[1])))
                 for u in G.ups]
    with torch.no_grad():
        y_no_skip = G(x)
    for h in zero_skip:
        h.remove()
    assert (y - y_no_skip).abs().max() > 1e-3
    # The same for one level alone: the full-resolution T1 skip reaches the output.
    h = torch.randn(1, 8, 128, 128)
    with torch.no_grad():
        a, b = G.ups[3](h, x), G.ups[3](h, -x)
    assert (a - b).abs().max() > 1e-3


@pytest.fixture(scope="module")
def compare_run(tiny_data, tmp_path_factory):
    """One --compare run (1 epoch each, 2 steps of batch 3), shared by the tests below."""
    out = tmp_path_factory.mktemp("cmp")
    code = cu.main(["--compare", "--data-root", str(tiny_data), "--epochs", "1", "--baseline-epochs", "1",
                    "--bench-steps", "1", "--out", str(out), *TINY])
    assert code == 0
    return out


def test_compare_writes_both_runs_the_figure_and_the_table(compare_run):
    out = compare_run
    for sub in ("unet", "handout"):
        for f in ("results.png", "loss_curves.png", "history.csv", "metrics.json", "checkpoint.pt"):
            assert (out / sub / f).is_file(), f"{sub}/{f}"
        metrics = json.loads((out / sub / "metrics.json").read_text(encoding="utf-8"))
        assert {"psnr", "ssim", "mae", "psnr_masked"} <= set(metrics["t1_as_t2"])  # the floor
    # The U-Net folder holds the U-Net, the other one experiment6's Generator: not the same model twice.
    unet = torch.load(out / "unet" / "checkpoint.pt", weights_only=True)["G"]
    handout = torch.load(out / "handout" / "checkpoint.pt", weights_only=True)["G"]
    assert any(k.startswith("downs.") for k in unet) and all(k.startswith("model.") for k in handout)
    assert (out / "compare.png").stat().st_size > 1000
    table = (out / "compare.md").read_text(encoding="utf-8")
    assert "U-Net b8" in table and "handout G" in table and "T1 used as T2" in table
    result = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert result["step_ratio"] > 0 and len(result["rows"]) == 2
    assert all(len(r["per_epoch"]) == 1 and r["per_epoch"][0]["psnr"] is not None for r in result["rows"])


def test_resume_continues_the_unet_run(compare_run, tiny_data):
    out = compare_run / "unet"
    before = torch.load(out / "checkpoint.pt", weights_only=True)
    assert cu.main(["--data-root", str(tiny_data), "--epochs", "2", "--resume", "--out", str(out), *TINY]) == 0
    after = torch.load(out / "checkpoint.pt", weights_only=True)
    assert before["epoch"] == 1 and after["epoch"] == 2
    assert [h["epoch"] for h in after["history"]] == [1, 2]
    with open(out / "history.csv", encoding="utf-8") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epochs"] == 2 and metrics["generator"].startswith("unet") and "t1_as_t2" in metrics


def test_resuming_a_checkpoint_of_another_model_is_one_clear_error(compare_run, tiny_data, capsys):
    ckpt = compare_run / "handout" / "checkpoint.pt"  # experiment6's Generator, not a U-Net
    code = cu.main(["--data-root", str(tiny_data), "--epochs", "2", "--resume", str(ckpt),
                    "--out", str(compare_run / "wrong"), *TINY])
    assert code == 2
    assert "does not fit this model" in capsys.readouterr().err
