"""实验六 · 热身（可选）/ Experiment 6 warm-up (optional): an unconditional GAN that draws T2 slices.

Before conditioning a GAN on a T1 slice (the lab itself), watch a plain GAN learn to draw T2 slices
from random noise. This is the fully connected GAN of the background article ("GANs in medical
imaging"), trained on the kit's own T2 slices instead of MNIST, with two of its bugs fixed:

  * `device` was never defined: here it is CUDA if available, else CPU;
  * the noise batch always had `batch_size` rows, so the last, smaller batch of an epoch got a fake
    batch of a different size than the real one: here the noise follows the real batch's size.

Each step trains D first, then G, as in the article (the lab's train_step does G first, then D).

Run (from the kit root):  python handout/warmup_gan.py
      (about half a minute on 2 CPU cores; outputs in outputs/warmup/: samples.png, real.png, loss_curves.png)
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.utils import save_image

KIT_ROOT = Path(__file__).resolve().parents[1]
PHANTOM_ROOT = KIT_ROOT / "data" / "phantoms"  # the same cache experiment6.py uses
LATENT_DIM = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Experiment 6 warm-up: an unconditional fully connected GAN that draws T2 slices.")
    p.add_argument("--data-root", default=None,
                   help="folder with a trainB/ subfolder of T2 PNGs. Default: the kit's synthetic "
                        f"phantoms ({PHANTOM_ROOT}), drawn on first use")
    p.add_argument("--size", type=int, default=32,
                   help="images are resized to SIZE x SIZE and flattened (64: sharper, about 3x slower)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (quick tests)")
    p.add_argument("--out", default=os.path.join("outputs", "warmup"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class DataError(Exception):
    """A problem with the user's data folder; main() prints it without a traceback."""


def load_t2_slices(folder, size):
    """All PNGs of `folder` as one (N, size*size) float tensor in [-1, 1] (small: fits in memory)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"找不到文件夹 / folder not found: {folder}\n"
                        f"  --data-root 下需要一个装有 T2 切片 (.png) 的 trainB 文件夹。\n"
                        f"  --data-root must contain a trainB folder of T2 slices (.png).")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png"))
    if not files:
        raise DataError(f"文件夹中没有 .png 图像 / no .png images in: {folder}")
    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5], std=[0.5]),  # [0, 1] -> [-1, 1], the range of G's Tanh
    ])
    images = []
    for f in files:
        try:
            images.append(transform(Image.open(folder / f).convert("L")))
        except Exception as e:
            raise DataError(f"无法读取图像 / cannot read image: {folder / f} ({type(e).__name__}: {e})") from None
    return torch.stack(images).flatten(1)  # fully connected networks take flat vectors


class Generator(nn.Module):
    """Noise (N, 100) -> flattened image (N, size*size) in [-1, 1]."""

    def __init__(self, n_pixels, latent_dim=LATENT_DIM):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(True),
            nn.Linear(256, 512), nn.ReLU(True),
            nn.Linear(512, 1024), nn.ReLU(True),
            nn.Linear(1024, n_pixels), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    """Flattened image (N, size*size) -> probability (N, 1) that it is a real slice."""

    def __init__(self, n_pixels):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(n_pixels, 1024), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.3),
            nn.Linear(1024, 512), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.3),
            nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.3),
            nn.Linear(256, 1), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x.view(x.size(0), -1))


def to_images(flat, size):
    """(N, size*size) in [-1, 1] -> (N, 1, size, size) in [0, 1], what save_image expects."""
    return (flat.view(-1, 1, size, size).clamp(-1, 1) + 1) / 2


def plot_losses(history, path):
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    epochs = range(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(epochs, [h["d_loss"] for h in history], label="D loss")
    ax.plot(epochs, [h["g_loss"] for h in history], label="G loss")
    ax.axhline(0.6931, color="gray", linestyle=":", linewidth=1, label="ln 2 (D guesses 0.5)")
    ax.set_xlabel("epoch")
    ax.set_title("Warm-up GAN losses")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args):
    if args.size < 4 or args.batch_size < 1 or args.epochs < 1:
        raise DataError("--size 需 >= 4，--batch-size 与 --epochs 需 >= 1 / "
                        "--size must be >= 4, --batch-size and --epochs >= 1")
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the article forgot this line

    if args.data_root is None:
        sys.path.insert(0, str(KIT_ROOT))
        from data.phantoms import make_phantom_dataset

        root = make_phantom_dataset(PHANTOM_ROOT)  # same parameters as experiment6.py: shared cache
    else:
        root = Path(args.data_root)
    real = load_t2_slices(root / "trainB", args.size)
    n_pixels = args.size * args.size
    print(f"[setup] device={device} | {len(real)} T2 slices from {root / 'trainB'} at "
          f"{args.size}x{args.size} | batch {args.batch_size}")

    dataloader = DataLoader(TensorDataset(real), batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    generator = Generator(n_pixels).to(device)
    discriminator = Discriminator(n_pixels).to(device)
    # beta1 = 0.5 (DCGAN, and this lab's Step 3) instead of the article's default 0.9: steadier GANs.
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    criterion = nn.BCELoss()
    fixed_noise = torch.randn(64, LATENT_DIM, device=device)  # the same 64 points for every snapshot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        sums = {"d_loss": 0.0, "g_loss": 0.0}
        batches = seen = 0
        for (real_samples,) in dataloader:
            real_samples = real_samples.to(device)
            n = real_samples.size(0)  # the last batch of an epoch may be smaller than --batch-size

            # --- Discriminator: real slices -> 1, generated slices -> 0 ---
            d_optimizer.zero_grad()
            real_outputs = discriminator(real_samples)
            real_loss = criterion(real_outputs, torch.ones_like(real_outputs))
            fake_samples = generator(torch.randn(n, LATENT_DIM, device=device))
            fake_outputs = discriminator(fake_samples.detach())  # detach: this loss must not update G
            fake_loss = criterion(fake_outputs, torch.zeros_like(fake_outputs))
            d_loss = (real_loss + fake_loss) / 2
            d_loss.backward()
            d_optimizer.step()

            # --- Generator: make D call fresh fakes real (the non-saturating loss -log D(G(z))) ---
            g_optimizer.zero_grad()
            fake_outputs = discriminator(generator(torch.randn(n, LATENT_DIM, device=device)))
            g_loss = criterion(fake_outputs, torch.ones_like(fake_outputs))
            g_loss.backward()
            g_optimizer.step()

            sums["d_loss"] += d_loss.item()
            sums["g_loss"] += g_loss.item()
            batches += 1
            seen += n
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                break
        history.append({k: v / batches for k, v in sums.items()})
        last = epoch + 1 == args.epochs or (args.max_steps is not None and step >= args.max_steps)
        if last or (epoch + 1) % max(1, args.epochs // 10) == 0 or epoch == 0:
            print(f"Epoch {epoch + 1}/{args.epochs} | D_loss {history[-1]['d_loss']:.4f} | "
                  f"G_loss {history[-1]['g_loss']:.4f} | {seen} images | {time.perf_counter() - start:.0f} s",
                  flush=True)
        if last:
            break

    generator.eval()
    with torch.no_grad():
        samples = to_images(generator(fixed_noise).cpu(), args.size)
    save_image(samples, out / "samples.png", nrow=8, padding=2)  # make_grid + save in one call
    save_image(to_images(real[:64], args.size), out / "real.png", nrow=8, padding=2)
    plot_losses(history, out / "loss_curves.png")
    print(f"[out] {out / 'samples.png'} (generated), {out / 'real.png'} (real, for comparison), "
          f"{out / 'loss_curves.png'} | {step} steps in {time.perf_counter() - start:.0f} s")
    return 0


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):  # a Chinese Windows console is GBK: never crash on output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = parse_args(argv)
    try:
        return run(args)
    except DataError as e:
        print(f"错误 / Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n已中断 / interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
