"""Regenerate the handout's training figures from one reference run (for instructors; not in the bundle).

    python handout/make_figures.py                  # about 20 min on a quiet 2-core AVX2 CPU
    python handout/make_figures.py --run DIR        # only compose, from a run this script made earlier
    python handout/make_figures.py --run DIR --stages-only   # training_stages.png from the checkpoints so far

It runs `experiment6.py --epochs 50 --precision fp32` on the built-in phantoms (seed 0) into DIR and copies
the checkpoint after epochs 1 and 5 while training (the run itself is not interrupted; with fp32, a run of
`--epochs 1` or `--epochs 5` ends in the same state). Then it writes, under handout/figures/:

* results.png and loss_curves.png: the run's own outputs (handout sections 9.1 and 9.2);
* training_stages.png: one test slice after 1, 5 and 50 epochs, with a pixel-level crop (section 9.3);

and prints the numbers that section 9 of both handouts quotes, to be checked against the text. It also
writes handout/figures/figures.json: each figure's SHA-256, the run's settings and the quoted numbers, so
tests/test_handout.py can tell a figure that no longer matches the code (e.g. a panel added to
loss_curves.png) or a number in the text that no run produced.
"""
import argparse
import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import experiment6 as ex  # noqa: E402

FIGURES = ROOT / "handout" / "figures"
SNAPSHOTS = (1, 5)  # epochs whose checkpoint is copied; the last row is the end of the run
SLICE = 12  # a test slice: the middle row of results.png (test indices 0, 12, 23)


def phantom_root():
    phantoms = ex.load_phantoms_module()
    return phantoms.make_phantom_dataset(Path(phantoms.__file__).parent / "phantoms")


def train(run_dir, epochs):
    save = ex.save_checkpoint

    def save_and_copy(path, G, D, optimizer_G, optimizer_D, epoch, args, history):
        save(path, G, D, optimizer_G, optimizer_D, epoch, args, history)
        if epoch in SNAPSHOTS:
            shutil.copy(path, f"{path}.epoch{epoch}")

    ex.save_checkpoint = save_and_copy  # run() looks it up at call time
    try:
        code = ex.exit_code_of(lambda: ex.run(ex.parse_args(
            ["--epochs", str(epochs), "--precision", "fp32", "--seed", "0", "--out", str(run_dir),
             "--data-root", str(phantom_root()), "--no-progress"])))
    finally:
        ex.save_checkpoint = save
    if code:
        sys.exit(code)


def load_generator(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    G = ex.Generator()
    G.load_state_dict(ckpt["G"])
    return G.eval(), ckpt["epoch"]


def stages_figure(run_dir, test_set, out):
    """One row per snapshot: T1 | generated | real T2 | a 64x64 crop of the generated slice, pixel for pixel."""
    from matplotlib.figure import Figure

    paths = [run_dir / f"checkpoint.pt.epoch{e}" for e in SNAPSHOTS] + [run_dir / "checkpoint.pt"]
    paths = [path for path in paths if path.is_file()]
    to01 = lambda x: ((x.clamp(-1, 1) + 1) / 2)[0].numpy()
    t1, t2 = test_set[SLICE]
    crop = slice(96, 160)
    rows, scores = [], {}
    for path in paths:
        G, epoch = load_generator(path)
        with torch.no_grad():
            fake = G(t1.unsqueeze(0))[0]
        scores[epoch] = ex.evaluate(G, test_set, torch.device("cpu"))
        rows.append((epoch, fake))
    floor = scores[rows[0][0]]["t1_as_t2"]
    fig = Figure(figsize=(8.4, 2.3 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (epoch, fake) in enumerate(rows):
        m = scores[epoch]["model"]
        name = f"{epoch} epoch" + ("s" if epoch > 1 else "")
        panels = [(to01(t1), "T1 input"), (to01(fake), f"generated T2, {name}"), (to01(t2), "real T2"),
                  (to01(fake)[crop, crop], "generated, centre 64×64 px")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest" if c == 3 else "antialiased")
            ax.set_title(title, fontsize=8.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(f"{name}\nPSNR {m['psnr']:.1f} dB\nSSIM {m['ssim']:.3f}", fontsize=9)
    fig.suptitle(f"Test slice {SLICE} of the phantoms (fp32, seed 0); scores on the whole test split. "
                 f"Floor, T1 used as T2: {floor['psnr']:.1f} dB, SSIM {floor['ssim']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return scores


def compact_png(path, max_side=800):
    """Store a figure whose pixels are all grey as an 8-bit greyscale PNG (a third of the RGBA bytes, the
    same image), at most `max_side` pixels wide or high: the bundle's figures stay small."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        im = Image.fromarray(rgb[..., 0], mode="L")
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        im.save(path, optimize=True)


def loss_panels(history):
    """How many panels experiment6.plot_history draws for this history (it builds a Figure and saves it)."""
    from matplotlib.figure import Figure

    seen = []
    save = Figure.savefig
    Figure.savefig = lambda fig, *a, **k: seen.append(len(fig.axes))
    try:
        ex.plot_history(history, "unused.png")
    finally:
        Figure.savefig = save
    return seen[0]


def write_manifest(args, quoted):
    with open(args.run / "history.csv", encoding="utf-8") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    names = ("results.png", "loss_curves.png", "training_stages.png")
    manifest = {
        "made_by": "python handout/make_figures.py",
        "run": {"epochs": len(history), "precision": "fp32", "seed": 0, "data": "built-in phantoms",
                "snapshots": list(SNAPSHOTS), "torch": torch.__version__},
        "sha256": {n: hashlib.sha256((FIGURES / n).read_bytes()).hexdigest() for n in names},
        "loss_curves_panels": loss_panels(history),
        "quoted": quoted,
    }
    (FIGURES / "figures.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                          encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "handout-figures",
                   help="run folder (default runs/handout-figures); with an existing run, training is skipped")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--stages-only", action="store_true",
                   help="write training_stages.png from the checkpoints in --run so far; train nothing")
    args = p.parse_args(argv)
    root = phantom_root()
    test_set = ex.PairedMedicalDataset(str(root / "testA"), str(root / "testB"))
    if args.stages_only:
        scores = stages_figure(args.run, test_set, FIGURES / "training_stages.png")
        print(json.dumps({e: s for e, s in scores.items()}, indent=1))
        return 0
    if not (args.run / "metrics.json").is_file():
        train(args.run, args.epochs)

    for name in ("results.png", "loss_curves.png"):
        shutil.copy(args.run / name, FIGURES / name)
    scores = stages_figure(args.run, test_set, FIGURES / "training_stages.png")
    for name in ("results.png", "loss_curves.png", "training_stages.png"):
        compact_png(FIGURES / name)

    with open(args.run / "history.csv", encoding="utf-8") as f:
        h = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    late = [r["loss_D"] for r in h if r["epoch"] > 10]
    quoted = {
        "loss_G first/last": (round(h[0]["loss_G"], 1), round(h[-1]["loss_G"], 1)),
        "L1 first/last": (round(h[0]["L1"], 3), round(h[-1]["L1"], 3)),
        "loss_G_adv first/last": (round(h[0]["loss_G_adv"], 2), round(h[-1]["loss_G_adv"], 2)),
        "loss_D min (epoch)": min((round(r["loss_D"], 3), int(r["epoch"])) for r in h),
        "loss_D range after epoch 10": (round(min(late), 2), round(max(late), 2)) if late else None,
        "test PSNR first/last": (round(h[0]["test_psnr"], 1), round(h[-1]["test_psnr"], 1)),
        "final metrics": json.loads((args.run / "metrics.json").read_text(encoding="utf-8")),
        "stages (whole test split)": {e: s["model"] for e, s in scores.items()},
    }
    print(json.dumps(quoted, indent=1))
    write_manifest(args, quoted)
    print(f"wrote {', '.join(str(FIGURES / n) for n in ('results.png', 'loss_curves.png', 'training_stages.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
