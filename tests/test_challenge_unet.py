"""Challenge 2 (handout/challenge_unet.py): the U-Net generator, its skip path, and that it reuses
experiment6.py's training and outputs (--compare, --resume). Tiny phantoms and narrow nets: seconds."""
import csv
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

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
    # 3x3 output head: a 1x1 head (fan-in 16) left the black background grey after a whole epoch
    assert G.out[0].kernel_size == (3, 3) and cu.UNetGenerator(base=8, head=1).out[0].kernel_size == (1, 1)


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


@pytest.mark.parametrize("upsample", cu.UPSAMPLES)
def test_resize_conv_turns_a_flat_map_into_a_flat_map_unlike_conv_transpose(upsample):
    """Why the decoder resizes and then convolves: a flat feature map stays flat (no checkerboard can come
    from the upsampling itself), whereas a stride-2 ConvTranspose with the same random weights prints a
    period-2 pattern into it (its kernel taps overlap unevenly)."""
    torch.manual_seed(0)
    up = cu.Up(8, 1, 4, norm="none", upsample=upsample)
    flat, skip = torch.full((1, 8, 16, 16), 0.7), torch.full((1, 1, 32, 32), -0.3)
    with torch.no_grad():
        y = up.conv[0](torch.cat([F_resize(flat, upsample), skip], dim=1))[..., 1:-1, 1:-1]  # inside the border
        transposed = torch.nn.ConvTranspose2d(8, 4, 4, 2, 1)(flat)[..., 1:-1, 1:-1]
    assert (y - y[..., :1, :1]).abs().max() < 1e-5
    assert (transposed - transposed[..., :1, :1]).abs().max() > 1e-2
    assert cu.UNetGenerator(base=8).ups[0].upsample == "nearest"  # the default
    with pytest.raises(ValueError):
        cu.Up(8, 1, 4, upsample="transpose")


def F_resize(x, mode):
    return torch.nn.functional.interpolate(x, scale_factor=2, mode=mode)


def test_periodic_artefact_level_sees_a_checkerboard_and_not_anatomy():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    brain = ((yy - 128) ** 2 / 90 ** 2 + (xx - 128) ** 2 / 70 ** 2 < 1).astype(np.float64)
    smooth = torch.tensor(brain * (0.4 + 0.2 * np.sin(xx / 9.0) * np.cos(yy / 13.0)))[None, None]
    noisy = smooth + torch.tensor(brain * rng.normal(0, 0.02, brain.shape))[None, None]  # texture: all frequencies
    board = torch.tensor(brain * ((yy + xx) % 2) * (2 / 255))[None, None]  # 2 grey levels, inside the brain only
    stripes = torch.tensor(brain * ((xx // 2) % 2) * (2 / 255))[None, None]  # period 4 along x
    base = cu.periodic_artefact_level(noisy)
    assert cu.periodic_artefact_level(noisy + board) > 1.5 * base
    assert cu.periodic_artefact_level(noisy + stripes) > 1.3 * base  # its energy sits at 2 of the 15 frequencies
    assert cu.periodic_artefact_level(smooth) < base  # without texture even less: the level is not "any detail"
    assert cu.periodic_artefact_level(torch.cat([noisy, noisy + board])) == pytest.approx(
        (base + cu.periodic_artefact_level(noisy + board)) / 2, abs=1e-4)  # mean over the images (4 decimals)


def test_edge_strength_ratio_is_one_for_the_real_image_and_lower_when_blurred():
    torch.manual_seed(0)
    real = torch.rand(2, 1, 64, 64)
    blurred = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    mask = torch.ones_like(real, dtype=torch.bool)
    assert cu.edge_strength_ratio(real, real, mask) == pytest.approx(1.0)
    assert cu.edge_strength_ratio(blurred, real, mask) < 0.6
    assert cu.edge_strength_ratio(2 * real, real, mask) == pytest.approx(2.0)


@pytest.mark.slow
def test_flip_augmentation_trains_on_the_mirrored_pair_and_never_flips_at_test_time():
    torch.manual_seed(0)
    plain = cu.UNetGenerator(base=8)
    G = cu.add_flip_augmentation(cu.UNetGenerator(base=8))
    G.load_state_dict(plain.state_dict())  # hooks are not in the state_dict: the same keys, the same net
    x = torch.rand(1, 1, 256, 256) * 2 - 1
    with torch.no_grad():
        as_is, mirrored = plain(x), plain(x.flip(-1)).flip(-1)
        assert (as_is - mirrored).abs().max() > 1e-3  # the test can tell the two apart
        seen = []
        for _ in range(16):
            y = G.train()(x)
            seen.append("as_is" if torch.allclose(y, as_is, atol=1e-5) else
                        "mirrored" if torch.allclose(y, mirrored, atol=1e-5) else "other")
        assert set(seen) == {"as_is", "mirrored"}  # about half of the calls, and nothing else
        assert all(torch.allclose(G.eval()(x), as_is, atol=1e-5) for _ in range(4))  # eval: never flipped


@pytest.mark.parametrize("norm", ["instance", "group", "none"])
def test_default_norms_do_not_depend_on_the_batch_or_the_mode(norm):
    """BatchNorm at batch size 1 normalises with the image's own statistics while training and with running
    averages in G.eval(); the batch-independent norms must give one answer in both modes and any batch."""
    torch.manual_seed(0)
    G = cu.UNetGenerator(base=8, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
    x, other = torch.rand(1, 1, 256, 256) * 2 - 1, torch.rand(1, 1, 256, 256) * 2 - 1
    with torch.no_grad():
        alone_train = G.train()(x)
        in_batch = G(torch.cat([x, other]))[:1]
        alone_eval = G.eval()(x)
    assert torch.allclose(alone_train, in_batch, atol=1e-5) and torch.allclose(alone_train, alone_eval, atol=1e-5)
    # The handout's BatchNorm does depend on the mode (the reason for the change): the test can tell.
    B = cu.UNetGenerator(base=8, norm="batch")
    with torch.no_grad():
        assert (B.train()(x) - B.eval()(x)).abs().max() > 1e-3
    assert cu.UNetGenerator(base=8).downs[1].block[1].__class__ is torch.nn.InstanceNorm2d  # the default


def test_volume_normalisation_gives_every_scan_the_same_tissue_median(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    brightness = {"train": {"subjA": (0.6, 0.2), "subjB": (0.4, 0.35)}, "test": {"subjC": (0.7, 0.4)}}
    for split, subjects in brightness.items():
        for subject, (t1, t2) in subjects.items():
            for z in range(3):
                for side, level in (("A", t1), ("B", t2)):
                    img = np.zeros((64, 64))
                    img[16:48, 16:48] = level * rng.uniform(0.8, 1.2, (32, 32)) * (1 + 0.1 * z)
                    (src / f"{split}{side}").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255)).save(src / f"{split}{side}" / f"{subject}_z{z:03d}.png")
    info = cu.normalise_data_root(src, tmp_path / "dst", "volume")
    assert set(info["factors"]["train"]["A"]) == {"subjA", "subjB"} and set(info["factors"]["test"]["B"]) == {"subjC"}
    for split, subjects in brightness.items():
        for subject in subjects:
            for side in "AB":
                files = sorted((tmp_path / "dst" / f"{split}{side}").glob(f"{subject}_z*.png"))
                assert len(files) == 3
                pixels = np.concatenate([np.asarray(Image.open(f), dtype=np.float32).ravel() / 255 for f in files])
                median = np.median(pixels[pixels > cu.TISSUE])
                assert abs(median - cu.TARGET_MEDIAN[side]) <= 1.5 / 255, (split, subject, side, median)
                # one factor per volume: the slices keep their brightness order (z made them 10 % apart)
                means = [np.asarray(Image.open(f), dtype=np.float32)[16:48, 16:48].mean() for f in files]
                assert means[0] < means[1] < means[2]
    # "slice" mode: each slice on its own
    info = cu.normalise_data_root(src, tmp_path / "per_slice", "slice")
    assert len(info["factors"]["train"]["A"]) == 6
    assert cu.volume_key("TCGA-FG-6692_z030.png", "volume") == "TCGA-FG-6692"


@pytest.fixture(scope="module")
def compare_run(tiny_data, tmp_path_factory):
    """One --compare run (1 epoch each, 2 steps of batch 3, with --flip), shared by the tests below."""
    out = tmp_path_factory.mktemp("cmp")
    code = cu.main(["--compare", "--data-root", str(tiny_data), "--epochs", "1", "--baseline-epochs", "1",
                    "--bench-steps", "1", "--intensity-norm", "volume", "--flip", "--out", str(out), *TINY])
    assert code == 0
    return out


@pytest.mark.slow
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
    # the diagnostics: a checkerboard level for each model and for the real T2, edge strength, brightness
    assert result["periodic_artefacts_real_t2"] > 0 and result["flip"] is True and result["upsample"] == "nearest"
    assert all(r["periodic_artefacts"] > 0 and r["brightness"]["edge_strength_pred_over_real"] > 0
               for r in result["rows"])
    assert "periodic artefacts" in table and "edge strength" in table


@pytest.mark.slow
def test_compare_with_intensity_norm_trains_on_the_copy_and_also_scores_the_original_t2(compare_run, tiny_data):
    out = compare_run
    result = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert result["intensity_norm"] == "volume" and result["data_root"] == str(out / "data_volume")
    assert (out / "data_volume" / "normalisation.json").is_file()
    # The floor against the original T2 is the plain kit's floor on the original data, not the copy's.
    raw = cu.e6.PairedMedicalDataset(str(tiny_data / "testA"), str(tiny_data / "testB"))
    floor = cu.e6.evaluate(torch.nn.Identity(), raw, torch.device("cpu"))["t1_as_t2"]
    for row in result["rows"]:
        o = row["original_t2"]
        assert o["t1_as_t2"]["psnr"] == pytest.approx(floor["psnr"], abs=1e-3)
        assert row["floor"]["psnr"] != pytest.approx(floor["psnr"], abs=1e-3)  # the copy is another scale
        assert {"psnr", "psnr_masked", "ssim", "mae"} <= set(o["train_scale"]) and "own_scale" in o
    assert "ORIGINAL test T2" in (out / "compare.md").read_text(encoding="utf-8")


@pytest.mark.slow
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


@pytest.mark.slow
def test_resuming_a_checkpoint_of_another_model_is_one_clear_error(compare_run, tiny_data, capsys):
    ckpt = compare_run / "handout" / "checkpoint.pt"  # experiment6's Generator, not a U-Net
    code = cu.main(["--data-root", str(tiny_data), "--epochs", "2", "--resume", str(ckpt),
                    "--out", str(compare_run / "wrong"), *TINY])
    assert code == 2
    assert "does not fit this model" in capsys.readouterr().err
