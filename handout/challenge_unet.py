"""实验六 · 加分挑战 2 / Experiment 6, challenge 2: a compact U-Net generator, measured against the handout's.

The handout's generator squeezes the T1 slice through a 64x64x128 bottleneck and rebuilds the T2 from
that alone, through ConvTranspose layers. A U-Net (Ronneberger et al. 2015; the generator of pix2pix,
Isola et al. 2017) adds skip connections: every decoder level also receives the encoder's feature
map of the same resolution, so the edges and positions that T1 and T2 share (same anatomy, different
contrast) need not pass through the bottleneck; the deep path only has to learn the contrast change.

Everything else is experiment6.py's, imported, not copied: the dataset, build_losses,
build_optimizers, train_step, the epoch loop, metrics, figures, checkpoints, --resume and the CLI.

Run (from the kit root):
    python handout/challenge_unet.py --epochs 5                      # U-Net, outputs in outputs/unet/
    python handout/challenge_unet.py --compare --epochs 5 --data-root PATH
        # handout G (10 epochs) and U-Net (5 epochs) on the same data and seed, the step-time ratio
        # measured side by side, compare.png (T1 | handout G | U-Net | real T2) and compare.md
    python handout/challenge_unet.py --compare --epochs 5 --intensity-norm volume --lambda-l1 400 --data-root PATH
        # the handout's measured setting: each volume's T1 and T2 scaled to one tissue median (MRI
        # intensities have no unit; compare.md then also scores against the original T2), and the L1
        # weight chosen on a held-out training subject (see the handout)
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

KIT_ROOT = Path(__file__).resolve().parents[1]
if str(KIT_ROOT) not in sys.path:
    sys.path.insert(0, str(KIT_ROOT))
import experiment6 as e6  # noqa: E402


# ==================================================================================================
# The networks
# ==================================================================================================

NORMS = ("instance", "batch", "group", "none")


def make_norm(kind, channels):
    """The normalisation layer after each U-Net conv.

    instance (default): each image is normalised by its own statistics, in training and at test time
    alike. BatchNorm at batch size 1 (the handout's setting) uses the one image's statistics while
    training but the running averages at test time (G.eval()); the two differ from slice to slice, and
    in the U-Net the difference shows as a grey haze over the black background (measured: see the
    handout). group = GroupNorm with 8 groups (also batch-independent); none = plain conv + bias.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, not {kind!r}")


class Down(nn.Module):
    """Halves the resolution: Conv 4x4 stride 2 (as in the handout's encoder) + norm + LeakyReLU."""

    def __init__(self, c_in, c_out, norm="instance"):
        super().__init__()
        layers = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm in (None, "none"))]
        if norm is not None:
            layers.append(make_norm(norm, c_out))
        layers.append(nn.LeakyReLU(0.2))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


UPSAMPLES = ("nearest", "bilinear")


class Up(nn.Module):
    """Doubles the resolution, then joins the skip: resize x2 -> concat(skip) -> Conv 3x3 + norm + ReLU.

    Why resize + conv and not ConvTranspose(k=4, s=2): a strided transposed convolution adds up its
    kernel's contributions unevenly (neighbouring output pixels receive different numbers of kernel
    taps), so even a perfectly flat input comes out with a faint 2x2 checkerboard unless the weights
    happen to cancel it. After a resize, a flat map stays flat through the 3x3 conv, so that source of
    checkerboard is gone by construction ("resize-convolution": Odena, Dumoulin & Olah, "Deconvolution
    and checkerboard artifacts", Distill 2016). nearest (default) is the resize they recommend and is
    cheap on a CPU; bilinear is smoother but its backward pass is one of the costliest ops of the step
    (measured: see the handout).
    """

    def __init__(self, c_in, c_skip, c_out, norm="instance", upsample="nearest"):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, not {upsample!r}")
        self.upsample = upsample
        self.conv = nn.Sequential(nn.Conv2d(c_in + c_skip, c_out, 3, 1, 1, bias=norm == "none"),
                                  make_norm(norm, c_out), nn.ReLU())

    def forward(self, x, skip):
        if self.upsample == "nearest":
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        else:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetGenerator(nn.Module):
    """Compact U-Net: (N, 1, 256, 256) T1 in [-1, 1] -> (N, 1, 256, 256) T2 in [-1, 1].

    4 levels, base channels b (32): encoder 256 -> 128 (b) -> 64 (2b) -> 32 (4b) -> 16 (8b); each
    decoder level upsamples and concatenates the encoder map of its resolution, the last one the
    T1 slice itself, so full-resolution edges reach the output without any downsampling.
    """

    def __init__(self, base=32, norm="instance", head=3, upsample="nearest"):
        super().__init__()
        b, n, u = base, norm, upsample
        self.downs = nn.ModuleList([Down(1, b, norm=None), Down(b, 2 * b, n), Down(2 * b, 4 * b, n),
                                    Down(4 * b, 8 * b, n)])
        self.ups = nn.ModuleList([Up(8 * b, 4 * b, 4 * b, n, u), Up(4 * b, 2 * b, 2 * b, n, u),
                                  Up(2 * b, b, b, n, u), Up(b, 1, b // 2, n, u)])
        # Output head: Conv 3x3 (fan-in 9 x b/2) + Tanh (the inputs' [-1, 1] range). Adam moves every weight
        # by at most about lr per step, so how fast the output level can move is set by the head's fan-in;
        # with a 1x1 head (fan-in b/2 = 16) the black background (78 % of a slice, -1 = Tanh saturated)
        # was still grey after an epoch (measured: see the handout), and SSIM punishes that heavily.
        self.out = nn.Sequential(nn.Conv2d(b // 2, 1, head, 1, head // 2), nn.Tanh())

    def forward(self, x):
        skips = [x]                    # full resolution: the T1 slice itself
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()                    # the bottleneck is h itself, not a skip
        for up in self.ups:
            h = up(h, skips.pop())     # deepest skip first: 32x32, 64x64, 128x128, then the input
        return self.out(h)


class PatchGAN70(nn.Module):
    """The pix2pix 70x70 PatchGAN: D(t1, t2) -> (N, 1, 30, 30) probabilities, one per 70x70 patch.

    ndf=64 is the paper's width (about 6 GFLOP per forward pass, 5x the handout D); ndf=32 is a
    quarter of that. Ends in Sigmoid because experiment6.build_losses uses BCELoss.
    """

    def __init__(self, ndf=64):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(2, ndf, 4, 2, 1), nn.LeakyReLU(0.2),                                      # 128
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2),  # 64
            nn.Conv2d(2 * ndf, 4 * ndf, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * ndf), nn.LeakyReLU(0.2),  # 32
            nn.Conv2d(4 * ndf, 8 * ndf, 4, 1, 1, bias=False), nn.BatchNorm2d(8 * ndf), nn.LeakyReLU(0.2),  # 31
            nn.Conv2d(8 * ndf, 1, 4, 1, 1), nn.Sigmoid(),                                       # 30
        )

    def forward(self, x1, x2):
        return self.model(torch.cat([x1, x2], dim=1))


def add_flip_augmentation(G):
    """Left-right flip augmentation for a generator, without touching the data pipeline (experiment6.run
    builds the DataLoader, and this challenge does not change experiment6.py).

    In training mode every call flips its input with probability 1/2 and flips the output back, so G
    produces its answer for the mirrored T1 and is judged on the mirrored T2: flipping both images leaves
    the L1 term unchanged, so for G this is exactly training on the mirrored pair (D still sees the
    pairs as they are). A left-right flip of an axial slice swaps the hemispheres, which anatomy allows.
    In eval mode (scores, figures) nothing is flipped. Hooks are not part of the state_dict, so the
    checkpoints are the plain generator's. Returns G.
    """
    state = {"flipped": False}

    def before(module, args):
        state["flipped"] = module.training and bool(torch.rand(()) < 0.5)  # the seeded global generator
        return (args[0].flip(-1), *args[1:]) if state["flipped"] else None

    def after(module, args, output):
        return output.flip(-1) if state["flipped"] else None

    G.register_forward_pre_hook(before)
    G.register_forward_hook(after)
    return G


def factories(args):
    """(U-Net generator, discriminator, handout generator) zero-argument factories for experiment6.run, from
    the CLI. --flip gives both generators the same augmentation, so --compare still changes only the network."""
    def unet():
        G = UNetGenerator(base=args.unet_base, norm=args.norm, upsample=args.upsample)
        return add_flip_augmentation(G) if args.flip else G

    def handout():
        return add_flip_augmentation(e6.Generator()) if args.flip else e6.Generator()

    disc = (lambda: PatchGAN70(ndf=args.ndf)) if args.disc == "patch70" else e6.Discriminator  # noqa: E731
    return unet, disc, handout


def to01(x):
    """The networks' [-1, 1] (Tanh, the dataset's Normalize) as the PNGs' [0, 1], where the metrics work."""
    return (x.clamp(-1, 1) + 1) / 2


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


# ==================================================================================================
# Intensity normalisation (this challenge's data path only; experiment6.py reads the PNGs as they are)
# ==================================================================================================

INTENSITY_NORMS = ("none", "volume", "slice")
# Median of the tissue pixels after normalisation, on the PNGs' [0, 1] scale: about what the three
# brats-tcga training subjects already have (T1 0.51-0.78, T2 0.23-0.26), low enough that almost
# nothing clips. Fixed before measuring anything, not tuned on the test subject.
TARGET_MEDIAN = {"A": 0.5, "B": 0.25}
TISSUE = 0.05  # a pixel is tissue above 5 % of the range (the kit's brain mask uses the same threshold)


def volume_key(filename, mode):
    """The slices of one scan share their name up to the last "_" (brats-tcga <subject>_z<zzz>.png,
    prepare_ixi <subject>_s<kkk>.png); mode "slice" makes every slice its own group."""
    return filename if mode == "slice" else Path(filename).stem.rsplit("_", 1)[0]


def normalise_data_root(src, dst, mode="volume"):
    """Write a copy of src (trainA/trainB/testA/testB) to dst in which each volume (mode "volume") or each
    slice ("slice") of each modality is multiplied by one factor, TARGET_MEDIAN / (median of its tissue
    pixels), then clipped to [0, 1] and saved as 8-bit PNG again. T1 input and T2 target get the same
    treatment. MRI intensities have no absolute unit: the PNGs were already scaled per volume by the
    99.5th percentile, which made the test subject's T2 1.6x brighter than the training subjects'
    (its brightest tissue, CSF, is less bright relative to the rest); the tissue median is a steadier
    reference. Returns {"mode", "target_median", "factors": {split: {side: {volume: factor}}}}, also
    written to dst/normalisation.json."""
    from PIL import Image

    src, dst = Path(src), Path(dst)
    e6.check_data_root(src)  # the kit's clear messages for a wrong folder, before anything is written
    info = {"source": str(src), "mode": mode, "target_median": TARGET_MEDIAN, "tissue_threshold": TISSUE,
            "factors": {}}
    for split in ("train", "test"):
        names = sorted(f for f in os.listdir(src / f"{split}A") if f.lower().endswith(".png"))
        groups = {}
        for f in names:
            groups.setdefault(volume_key(f, mode), []).append(f)
        for side in ("A", "B"):
            (dst / f"{split}{side}").mkdir(parents=True, exist_ok=True)
            factors = info["factors"].setdefault(split, {}).setdefault(side, {})
            for key, files in groups.items():
                images = [np.asarray(Image.open(src / f"{split}{side}" / f).convert("L"), dtype=np.float32) / 255
                          for f in files]
                tissue = np.concatenate([im[im > TISSUE] for im in images])
                factor = TARGET_MEDIAN[side] / float(np.median(tissue)) if tissue.size else 1.0
                factors[key] = round(factor, 6)
                for f, im in zip(files, images):
                    out = np.clip(np.rint(im * factor * 255), 0, 255).astype(np.uint8)
                    Image.fromarray(out, mode="L").save(dst / f"{split}{side}" / f)
    (dst / "normalisation.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def use_intensity_norm(args):
    """With --intensity-norm volume|slice: write the normalised copy under OUT and train on it.
    Returns the normalisation info (None without it); args.raw_data_root keeps the original folder."""
    args.raw_data_root = str(e6.resolve_data_root(args.data_root))  # str: checkpoints store args, weights_only
    if args.intensity_norm == "none":
        return None
    dst = Path(args.out) / f"data_{args.intensity_norm}"
    info = normalise_data_root(args.raw_data_root, dst, args.intensity_norm)
    print(f"[data] intensity normalisation '{args.intensity_norm}': tissue median -> T1 {TARGET_MEDIAN['A']}, "
          f"T2 {TARGET_MEDIAN['B']}; normalised copy in {dst}", flush=True)
    args.data_root = str(dst)
    return info


def raw_target_scores(pred, raw_root, norm_root, info):
    """Score a generator trained on normalised slices against the ORIGINAL test T2 (the PNGs as shipped).

    pred: its outputs for the normalised test split, in that split's order, on the [0, 1] scale
    (predict_test_split). They are on the normalised scale; to compare them with the original T2 they
    are divided by a T2 factor:
    "train_scale": the mean T2 factor of the training volumes. It uses nothing of the test T2: the
        brightness the model learnt from the training subjects (what a user without the answer gets).
    "own_scale": the test volume's own T2 factor, the exact inverse of the normalisation (it uses one
        number computed from the real T2 volume: its tissue median).
    Also the T1-as-T2 floor against the original T2. Means over the whole test split."""
    raw = e6.PairedMedicalDataset(os.path.join(raw_root, "testA"), os.path.join(raw_root, "testB"))
    norm = e6.PairedMedicalDataset(os.path.join(norm_root, "testA"), os.path.join(norm_root, "testB"))
    assert len(pred) == len(raw) == len(norm)
    train_b = float(np.mean(list(info["factors"]["train"]["B"].values())))
    own_b = info["factors"]["test"]["B"]
    sums = {"train_scale": {}, "own_scale": {}, "t1_as_t2": {}}
    for i in range(len(raw)):
        name = os.path.basename(raw.t1_paths[i])
        assert name == os.path.basename(norm.t1_paths[i])  # the copy holds the same slices, same order
        t1_raw, t2_raw = (to01(x).unsqueeze(0) for x in raw[i])
        p = pred[i:i + 1]
        preds = {"train_scale": (p / train_b).clamp(0, 1),
                 "own_scale": (p / own_b[volume_key(name, info["mode"])]).clamp(0, 1),
                 "t1_as_t2": t1_raw}
        for k, q in preds.items():
            for m, v in e6.image_metrics(q, t2_raw, t1_raw).items():
                sums[k].setdefault(m, []).append(v)
    return {k: {m: round(torch.cat(v).mean().item(), 5) for m, v in s.items()} for k, s in sums.items()}


# ==================================================================================================
# CLI: experiment6.py's flags plus a few of our own
# ==================================================================================================

def own_parser():
    p = argparse.ArgumentParser(add_help=False, prog="challenge_unet.py")
    g = p.add_argument_group("U-Net challenge (on top of experiment6.py's flags below)")
    g.add_argument("--out", default=os.path.join("outputs", "unet"),
                   help="output folder (default outputs/unet; with --compare it gets handout/ and unet/)")
    g.add_argument("--unet-base", type=int, default=32, help="channels of the first U-Net level (default 32)")
    g.add_argument("--norm", choices=NORMS, default="instance",
                   help="normalisation layer of the U-Net (default instance; batch = the handout's BatchNorm)")
    g.add_argument("--upsample", choices=UPSAMPLES, default="nearest",
                   help="resize of each U-Net decoder level before its 3x3 conv (default nearest; bilinear is "
                        "smoother and slower)")
    g.add_argument("--flip", action="store_true",
                   help="left-right flip augmentation while training (with --compare: both generators)")
    g.add_argument("--intensity-norm", choices=INTENSITY_NORMS, default="none",
                   help="volume/slice: train and score on a copy of the data in which each volume (slice) of "
                        "T1 and of T2 is scaled to the same tissue median (written to OUT/data_<mode>); "
                        "metrics.json/compare.json then also score against the original T2. Default none")
    g.add_argument("--disc", choices=["handout", "patch70"], default="handout",
                   help="handout = experiment6.Discriminator (default); patch70 = the pix2pix 70x70 PatchGAN")
    g.add_argument("--ndf", type=int, default=32, help="width of the 70x70 PatchGAN (pix2pix: 64)")
    g.add_argument("--compare", action="store_true",
                   help="train the handout G and the U-Net on the same data and seed; write compare.png/.md")
    g.add_argument("--baseline-epochs", type=int, default=None,
                   help="--compare: epochs of the handout G (default 2 x --epochs: the same time budget "
                        "if a U-Net step costs 2 handout steps)")
    g.add_argument("--bench-steps", type=int, default=None,
                   help="time this many training steps of each model, interleaved (default 10 with --compare, "
                        "else 0); 0 = skip")
    return p


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    mine = own_parser()
    if "-h" in argv or "--help" in argv:
        mine.print_help()
        print("\nexperiment6.py flags (all accepted here; --out is the one above):")
        e6.parse_args(["--help"])  # prints and exits
    own, rest = mine.parse_known_args(argv)
    args = e6.parse_args(rest)  # experiment6's own flags, with its defaults and its error messages
    for k, v in vars(own).items():
        setattr(args, k, v)
    return args


# ==================================================================================================
# Side-by-side measurements
# ==================================================================================================

def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def time_train_steps(models, batch, device, precision, channels_last, steps=10, rounds=3):
    """Seconds per experiment6.train_step for each (G, D) factory pair, measured in turns (A, B, A, B, ...)
    on the same batch, so that both see the same machine load. Returns {name: median seconds}."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    t1, t2 = (e6.decode_cached(x.to(device)).contiguous(memory_format=memory_format) for x in batch)
    runs = {}
    for name, (make_g, make_d) in models.items():
        torch.manual_seed(0)
        G, D = make_g().to(device), make_d().to(device)
        G.to(memory_format=memory_format)
        D.to(memory_format=memory_format)
        losses, opts = e6.build_losses(), e6.build_optimizers(G, D)
        G_run, D_run = G, D
        if e6.PRECISIONS[precision] is not None:
            G_run = e6.Autocast(G, device.type, e6.PRECISIONS[precision])
            D_run = e6.Autocast(D, device.type, e6.PRECISIONS[precision])
        runs[name] = (G_run, D_run, losses, opts)

    def step(name):
        G_run, D_run, (c_gan, c_l1), (o_g, o_d) = runs[name]
        e6.train_step(G_run, D_run, t1, t2, c_gan, c_l1, o_g, o_d)

    for name in runs:  # warm-up: first calls allocate memory and pick kernels
        for _ in range(2):
            step(name)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name in runs:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def predict_test_split(G, dataset, device):
    """(prediction, real T2, T1) for the whole test split, stacked, on the [0, 1] scale."""
    preds, reals, t1s = [], [], []
    was_training = G.training
    G.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            t1, t2 = (e6.decode_cached(x.unsqueeze(0)) for x in dataset[i])
            preds.append(to01(G(t1.to(device)).float().cpu()))
            reals.append(to01(t2))
            t1s.append(to01(t1))
    G.train(was_training)
    return torch.cat(preds), torch.cat(reals), torch.cat(t1s)


def brightness_check(pred, real, t1):
    """How much of the error is one global brightness offset? Over the whole test split: the model's mean
    tissue intensity relative to the real T2's, and the PSNR after multiplying the prediction by the one
    gain that fits best (least squares). The gain uses the real T2, so it is a diagnosis, not a score."""
    tissue = (t1 > 0.05) | (real > 0.05)
    gain = ((pred * real).sum() / pred.pow(2).sum().clamp_min(1e-10)).item()
    psnr = lambda p: (10 * torch.log10(1 / (p.clamp(0, 1) - real).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10))).mean().item()  # noqa: E731,E501
    return {"tissue_mean_pred_over_real": round((pred[tissue].mean() / real[tissue].mean()).item(), 3),
            "best_gain": round(gain, 3), "psnr": round(psnr(pred), 2), "psnr_after_gain": round(psnr(pred * gain), 2),
            "edge_strength_pred_over_real": edge_strength_ratio(pred, real, tissue)}


def edge_strength_ratio(pred, real, mask):
    """How sharp is the prediction compared with the real T2? The mean gradient magnitude (differences of
    neighbouring pixels) inside mask, prediction over real: 1 = as much edge as the real image, below 1 =
    blurrier. L1 alone pulls towards a blurry average of the plausible answers; the GAN term pushes back."""
    def grad(x):
        gx, gy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
        return (gx[..., :-1, :].pow(2) + gy[..., :, :-1].pow(2)).sqrt()
    m = mask[..., :-1, :-1]
    return round((grad(pred)[m].mean() / grad(real)[m].mean().clamp_min(1e-10)).item(), 3)


def periodic_artefact_level(images):
    """How strong are the period-2 and period-4 patterns (checkerboard, stripes) in (N, 1, H, W) images?

    A layer that upsamples by 2 can print a pattern that repeats every 2 output pixels (two such layers:
    every 4). Such a pattern puts its energy at the frequencies 0, 1/4, 1/2 and 3/4 cycles per pixel along
    each axis, where real anatomy has little. Returned: the mean amplitude of the 2D DFT at those 15
    frequencies (without the image mean), in grey levels (0-255), averaged over the images. The real T2
    sets the level of anatomy alone; a visible checkerboard is many times that."""
    h, w = images.shape[-2:]
    spectrum = torch.fft.fft2(images.double()).abs() / (h * w)
    freqs = [(u, v) for u in (0, h // 4, h // 2, 3 * h // 4) for v in (0, w // 4, w // 2, 3 * w // 4)
             if (u, v) != (0, 0)]
    return round(255 * torch.stack([spectrum[..., u, v] for u, v in freqs]).mean().item(), 4)


def compare_figure(nets, dataset, device, indices, path, title, zoom=80):
    """One row per test slice: T1 | each generator | real T2, with each slice's PSNR in the titles. A last
    row shows the centre zoom x zoom pixels of the middle slice, pixel for pixel: a checkerboard is
    2 pixels wide and invisible at the full-slice scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 + len(nets)
    rows = len(indices) + (1 if zoom else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    with torch.no_grad():
        for r, i in enumerate(indices):
            t1, t2 = dataset[i]
            panels = [("T1 input", t1)]
            for name, G in nets.items():
                G.eval()
                fake = G(t1.unsqueeze(0).to(device)).float().cpu()[0]
                mse = (to01(fake) - to01(t2)).pow(2).mean().clamp_min(1e-10)
                panels.append((f"{name}\n{10 * torch.log10(1 / mse).item():.1f} dB", fake))
            panels.append(("Real T2", t2))
            for c, (name, img) in enumerate(panels):
                axes[r][c].imshow(to01(img[0]).numpy(), cmap="gray", vmin=0, vmax=1)
                axes[r][c].set_title(name, fontsize=9)
                axes[r][c].axis("off")
            if zoom and r == len(indices) // 2:
                h, w = t1.shape[-2:]
                top, left = (h - zoom) // 2, (w - zoom) // 2
                for c, (name, img) in enumerate(panels):
                    ax = axes[-1][c]
                    ax.imshow(to01(img[0, top:top + zoom, left:left + zoom]).numpy(), cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
                    ax.set_title(f"{name.splitlines()[0]}, centre {zoom}x{zoom} px", fontsize=8)
                    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def summarise(name, out, epochs):
    """One table row from a run folder: final metrics, per-epoch test scores, s/epoch."""
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    history = ckpt["history"]
    seconds = [h["seconds"] for h in history]
    return {"name": name, "epochs": epochs, **metrics["test"], "floor": metrics["t1_as_t2"],
            "s_per_epoch": round(statistics.median(seconds), 1), "train_seconds": round(sum(seconds), 1),
            "per_epoch": [{"epoch": h["epoch"], "psnr": h.get("test_psnr"), "ssim": h.get("test_ssim"),
                           "seconds": h["seconds"]} for h in history]}


def run_compare(args):
    """Train the handout G, then the U-Net (same data, seed, losses, train_step), then compare them."""
    if args.resume:
        raise e6.DataError("--compare 不支持 --resume / --compare does not take --resume: it trains both "
                           "models from scratch (resume each one with its own command instead).")
    out = Path(args.out)
    baseline_epochs = args.baseline_epochs or 2 * args.epochs
    device = e6.pick_device(args.device)
    precision = e6.pick_precision(args.precision, device)
    channels_last = e6.use_channels_last(args.precision, device)
    make_g, make_d, make_handout = factories(args)
    load = {"start": load_average()}
    norm_info = use_intensity_norm(args)

    step_times = None
    bench_steps = 10 if args.bench_steps is None else args.bench_steps
    if bench_steps:
        root = e6.resolve_data_root(args.data_root)
        e6.check_data_root(root)
        train_set = e6.PairedMedicalDataset(os.path.join(root, "trainA"), os.path.join(root, "trainB"))
        batch = [torch.stack([train_set[i][k] for i in range(min(args.batch_size, len(train_set)))])
                 for k in (0, 1)]
        step_times = time_train_steps({"handout": (e6.Generator, e6.Discriminator), "unet": (make_g, make_d)},
                                      batch, device, precision, channels_last, steps=bench_steps)
        load["after_step_timing"] = load_average()
        print(f"[speed] one train_step ({precision}, batch {args.batch_size}): handout "
              f"{step_times['handout'] * 1000:.0f} ms, U-Net {step_times['unet'] * 1000:.0f} ms, ratio "
              f"{step_times['unet'] / step_times['handout']:.2f}x (interleaved; load average {load_average()})",
              flush=True)

    # The U-Net first: the new result is there even if the (longer) baseline run is interrupted.
    runs = [(f"U-Net b{args.unet_base}", make_g, make_d, args.epochs, out / "unet"),
            ("handout G", make_handout, e6.Discriminator, baseline_epochs, out / "handout")]
    for name, g, d, epochs, folder in runs:
        sub = copy.copy(args)
        sub.epochs, sub.out = epochs, str(folder)
        print(f"[compare] training {name} for {epochs} epochs -> {folder}", flush=True)
        e6.run(sub, generator=g, discriminator=d)
        load[name] = load_average()

    # The figure: both final generators on the same test slices.
    root = e6.resolve_data_root(args.data_root)
    test_set = e6.PairedMedicalDataset(os.path.join(root, "testA"), os.path.join(root, "testB"))
    nets = {}
    for name, g, d, epochs, folder in reversed(runs):  # columns: T1 | handout G | U-Net | real T2
        G = g().to(device)
        G.load_state_dict(torch.load(folder / "checkpoint.pt", map_location=device, weights_only=True)["G"])
        nets[f"{name} ({epochs} ep)"] = G
    indices = [int(i) for i in np.linspace(0, len(test_set) - 1, min(args.vis_samples, len(test_set))).round()]
    figure = compare_figure(nets, test_set, device, indices, out / "compare.png",
                            "T1 | handout G | U-Net | real T2 (test subject)"
                            + (f", {args.intensity_norm}-normalised intensities" if norm_info else ""))

    rows = [summarise(name, folder, epochs) for name, g, d, epochs, folder in runs]
    for row, G in zip(rows, reversed(list(nets.values()))):
        pred, real, t1 = predict_test_split(G, test_set, device)  # the same real and t1 for every row
        row["brightness"] = brightness_check(pred, real, t1)
        row["periodic_artefacts"] = periodic_artefact_level(pred)
        if norm_info:
            row["original_t2"] = raw_target_scores(pred, args.raw_data_root, root, norm_info)
    result = {"rows": rows, "step_seconds": step_times, "periodic_artefacts_real_t2": periodic_artefact_level(real),
              "load_average": load, "precision": precision,
              "device": str(device), "data_root": str(root), "seed": args.seed,
              "intensity_norm": args.intensity_norm, "norm": args.norm, "upsample": args.upsample,
              "lambda_l1": args.lambda_l1, "flip": args.flip}
    if step_times:
        result["step_ratio"] = round(step_times["unet"] / step_times["handout"], 3)
    (out / "compare.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = markdown_table(result)
    (out / "compare.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"[out] {figure}, {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def markdown_table(result):
    rows = result["rows"]
    lines = ["| model | epochs | PSNR (dB) | brain PSNR (dB) | SSIM | MAE | s/epoch | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['epochs']} | {r['psnr']:.2f} | {r['psnr_masked']:.2f} | {r['ssim']:.3f} | "
                     f"{r['mae']:.4f} | {r['s_per_epoch']:.1f} | {r['train_seconds']:.0f} |")
    f = rows[0]["floor"]
    lines.append(f"| T1 used as T2 (floor) | - | {f['psnr']:.2f} | {f['psnr_masked']:.2f} | {f['ssim']:.3f} | "
                 f"{f['mae']:.4f} | - | - |")
    lines += ["", "Per-epoch test PSNR / SSIM (the --eval-samples subset of the test split):", "",
              "| epoch | " + " | ".join(r["name"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for e in range(max(len(r["per_epoch"]) for r in rows)):
        cells = []
        for r in rows:
            p = r["per_epoch"][e] if e < len(r["per_epoch"]) else None
            cells.append(f"{p['psnr']:.2f} / {p['ssim']:.3f}" if p and p["psnr"] is not None else "")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    nan = float("nan")
    lines += ["", "Diagnostics on the whole test split. Brightness: mean tissue intensity predicted / real, and the "
              "PSNR after the one gain that fits best (it uses the real T2: a diagnosis, not a score). Edge strength: "
              "mean gradient magnitude in the tissue, predicted / real (below 1 = blurrier). Periodic artefacts: mean "
              "DFT amplitude at the period-2/period-4 frequencies in grey levels, a checkerboard detector (real T2: "
              f"{result.get('periodic_artefacts_real_t2', nan):.4f}):", "",
              "| model | predicted / real | best gain | PSNR | PSNR after that gain | edge strength / real | "
              "periodic artefacts |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r.get("brightness")
        if b:
            lines.append(f"| {r['name']} | {b['tissue_mean_pred_over_real']:.3f} | {b['best_gain']:.3f} | "
                         f"{b['psnr']:.2f} | {b['psnr_after_gain']:.2f} | "
                         f"{b.get('edge_strength_pred_over_real', nan):.3f} | {r.get('periodic_artefacts', nan):.4f} |")
    if any("original_t2" in r for r in rows):
        lines += ["", f"Scored against the ORIGINAL test T2 (trained and scored above on the {result['intensity_norm']}-"
                      "normalised copy). train scale: the output divided by the training volumes' mean T2 factor "
                      "(uses nothing of the test T2); own scale: divided by the test volume's own T2 factor "
                      "(the inverse of the normalisation, computed from the real T2):", "",
                  "| model | mapping | PSNR (dB) | brain PSNR (dB) | SSIM | MAE |", "|---|---|---|---|---|---|"]
        for r in rows:
            for k in ("train_scale", "own_scale"):
                o = r["original_t2"][k]
                lines.append(f"| {r['name']} | {k.replace('_', ' ')} | {o['psnr']:.2f} | {o['psnr_masked']:.2f} | "
                             f"{o['ssim']:.3f} | {o['mae']:.4f} |")
        o = rows[0]["original_t2"]["t1_as_t2"]
        lines.append(f"| T1 used as T2 (floor) | - | {o['psnr']:.2f} | {o['psnr_masked']:.2f} | {o['ssim']:.3f} | "
                     f"{o['mae']:.4f} |")
    if result.get("step_seconds"):
        s = result["step_seconds"]
        lines += ["", f"One train_step ({result['precision']}, interleaved, same batch): handout "
                      f"{s['handout'] * 1000:.0f} ms, U-Net {s['unet'] * 1000:.0f} ms, ratio {result['step_ratio']:.2f}x."]
    lines += ["", f"Load average (1, 5, 15 min) during the run: {result['load_average']}", ""]
    return "\n".join(lines)


# ==================================================================================================
# main
# ==================================================================================================

def run_unet(args):
    make_g, make_d, _ = factories(args)
    norm_info = use_intensity_norm(args)
    if args.bench_steps:
        root = e6.resolve_data_root(args.data_root)
        e6.check_data_root(root)
        ds = e6.PairedMedicalDataset(os.path.join(root, "trainA"), os.path.join(root, "trainB"))
        device = e6.pick_device(args.device)
        batch = [torch.stack([ds[i][k] for i in range(min(args.batch_size, len(ds)))]) for k in (0, 1)]
        t = time_train_steps({"handout": (e6.Generator, e6.Discriminator), "unet": (make_g, make_d)}, batch,
                             device, e6.pick_precision(args.precision, device),
                             e6.use_channels_last(args.precision, device), steps=args.bench_steps)
        print(f"[speed] one train_step: handout {t['handout'] * 1000:.0f} ms, U-Net {t['unet'] * 1000:.0f} ms, "
              f"ratio {t['unet'] / t['handout']:.2f}x (load average {load_average()})", flush=True)
    print(f"[model] U-Net generator, base {args.unet_base}: {count_parameters(make_g()):,} parameters; "
          f"discriminator {args.disc}: {count_parameters(make_d()):,} parameters")
    code = e6.run(args, generator=make_g, discriminator=make_d)
    metrics_path = Path(args.out) / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics.update({"generator": f"unet (base {args.unet_base}, {args.norm} norm, {args.upsample} upsampling)",
                    "discriminator": args.disc,
                    "intensity_norm": args.intensity_norm, "lambda_l1": args.lambda_l1, "flip": args.flip,
                    "load_average_end": load_average()})
    if norm_info:
        device = e6.pick_device(args.device)
        G = make_g().to(device)
        G.load_state_dict(torch.load(Path(args.out) / "checkpoint.pt", map_location=device, weights_only=True)["G"])
        test_set = e6.PairedMedicalDataset(os.path.join(args.data_root, "testA"), os.path.join(args.data_root, "testB"))
        pred, _, _ = predict_test_split(G, test_set, device)
        metrics["original_t2"] = raw_target_scores(pred, args.raw_data_root, args.data_root, norm_info)
    metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return code


def main(argv=None):
    def command():
        args = parse_args(argv)
        try:
            return run_compare(args) if args.compare else run_unet(args)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            print("错误 / Error: 检查点与当前模型不匹配 / the checkpoint does not fit this model (another "
                  "--unet-base/--disc, or a checkpoint of experiment6.py's generator?). Use the same flags "
                  "as the run that wrote it, or another --out.", file=sys.stderr)
            return 2
    return e6.exit_code_of(command)  # the kit's own messages for bad data, NaN losses, Ctrl+C


if __name__ == "__main__":
    sys.exit(main())
