"""实验六 · Experiment 6: T1 -> T2 MRI modality translation with a conditional GAN (pix2pix-style).

Read it from the top: Steps 1-5 come first, in the lab handout's order, and hold only what it teaches.

    Step 1  PairedMedicalDataset   paired T1/T2 PNG slices           (search: "STEP 1")
    Step 2  Generator, Discriminator                                  (search: "STEP 2")
    Step 3  build_losses, build_optimizers                            (search: "STEP 3")
    Step 4  train_step (one batch), train (the epoch loop)            (search: "STEP 4")
    Step 5  visualize (T1 input | generated T2 | real T2)             (search: "STEP 5")

After Step 5 a fence ("以下为已提供的基础设施") starts the given infrastructure: command line, data
checks, mixed precision and caching, evaluation, plots, checkpoints, run() and main(). Students can stop
reading there.

Run:  python experiment6.py --epochs 50
      (without dataset/ixi2000 it trains on synthetic T1/T2 brain phantoms it draws itself)

Code between "### BEGIN SOLUTION" and "### END SOLUTION" is what students write; the student
template and notebook are generated from this file (handout/make_student.py), so edit it here only.
"""
import argparse
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms


# ==================================================================================================
# STEP 1 · Paired T1/T2 dataset (构建医学图像配对数据集)
# ==================================================================================================

class PairedMedicalDataset(Dataset):
    """T1/T2 slice pairs: the i-th PNG of t1_dir (sorted by name) goes with the i-th PNG of t2_dir.

    Returns (t1, t2): float32 tensors of shape (1, 256, 256) scaled to [-1, 1].
    """

    def __init__(self, t1_dir, t2_dir):
        ### BEGIN SOLUTION
        # Sorting makes the pairing follow the file names, identical in both folders.
        self.t1_paths = sorted(os.path.join(t1_dir, f) for f in os.listdir(t1_dir)
                               if f.lower().endswith(".png"))
        self.t2_paths = sorted(os.path.join(t2_dir, f) for f in os.listdir(t2_dir)
                               if f.lower().endswith(".png"))
        self.transform = transforms.Compose([
            transforms.Resize((256, 256)),
            transforms.ToTensor(),                           # [0, 255] -> [0, 1]
            transforms.Normalize(mean=[0.5], std=[0.5]),     # [0, 1] -> [-1, 1], matches Tanh
        ])
        ### END SOLUTION

    def __len__(self):
        ### BEGIN SOLUTION
        return min(len(self.t1_paths), len(self.t2_paths))
        ### END SOLUTION

    def __getitem__(self, idx):
        ### BEGIN SOLUTION
        t1_img = Image.open(self.t1_paths[idx]).convert("L")  # "L" = 8-bit grayscale, also for RGB files
        t2_img = Image.open(self.t2_paths[idx]).convert("L")
        return self.transform(t1_img), self.transform(t2_img)
        ### END SOLUTION


# ==================================================================================================
# STEP 2 · Generator and Discriminator (定义生成器与判别器)
# ==================================================================================================

class Generator(nn.Module):
    """Encoder-decoder: (N, 1, 256, 256) T1 in [-1, 1] -> (N, 1, 256, 256) T2 in [-1, 1]."""

    def __init__(self):
        super().__init__()
        ### BEGIN SOLUTION
        self.model = nn.Sequential(
            # encoder: 256 -> 128 -> 64
            nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            # decoder: 64 -> 128 -> 256
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),  # Tanh: same [-1, 1] range as the inputs
        )
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        return self.model(x)
        ### END SOLUTION


class Discriminator(nn.Module):
    """PatchGAN-lite: judges a (T1, T2) pair; (N, 1, 256, 256) x 2 -> (N, 1, 63, 63) probabilities."""

    def __init__(self):
        super().__init__()
        ### BEGIN SOLUTION
        self.model = nn.Sequential(
            nn.Conv2d(2, 64, 4, 2, 1), nn.LeakyReLU(0.2),                            # 256 -> 128
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),     # 128 -> 64
            nn.Conv2d(128, 1, 4, 1, 1), nn.Sigmoid(),  # 64 -> 63: one real/fake score per patch
        )
        ### END SOLUTION

    def forward(self, x1, x2):
        ### BEGIN SOLUTION
        # Conditional GAN: D sees the T1 input together with a real or generated T2.
        x = torch.cat([x1, x2], dim=1)
        return self.model(x)
        ### END SOLUTION


# ==================================================================================================
# STEP 3 · Losses and optimizers (定义损失函数与优化器)
# ==================================================================================================

def build_losses():
    """Returns (criterion_GAN, criterion_L1): binary cross-entropy and mean absolute error."""
    ### BEGIN SOLUTION
    criterion_GAN = nn.BCELoss()  # D ends in Sigmoid, so it outputs probabilities
    criterion_L1 = nn.L1Loss()
    return criterion_GAN, criterion_L1
    ### END SOLUTION


def build_optimizers(G, D, lr=2e-4, betas=(0.5, 0.999)):
    """Returns (optimizer_G, optimizer_D): one Adam per network (beta1 = 0.5 as in pix2pix/DCGAN)."""
    ### BEGIN SOLUTION
    optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    optimizer_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    return optimizer_G, optimizer_D
    ### END SOLUTION


# ==================================================================================================
# STEP 4 · Training (训练生成对抗网络)
# ==================================================================================================

def train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D, lambda_l1=100.0):
    """One batch: update G, then D (the handout's order). Returns (loss_G, loss_D) as Python floats."""
    ### BEGIN SOLUTION
    # --- Generator: fool D on (t1, G(t1)) and stay close to the real T2 ---
    fake_t2 = G(t1)
    pred_fake = D(t1, fake_t2)
    loss_G = criterion_GAN(pred_fake, torch.ones_like(pred_fake)) + lambda_l1 * criterion_L1(fake_t2, t2)
    optimizer_G.zero_grad()
    loss_G.backward()
    optimizer_G.step()

    # --- Discriminator: real pairs -> 1, generated pairs -> 0 ---
    pred_real = D(t1, t2)
    loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))
    pred_fake = D(t1, fake_t2.detach())  # detach: this loss must not update G
    loss_fake = criterion_GAN(pred_fake, torch.zeros_like(pred_fake))
    loss_D = 0.5 * (loss_real + loss_fake)  # the mean of the two terms (under Adam the 0.5 barely changes D's steps)
    optimizer_D.zero_grad()
    loss_D.backward()
    optimizer_D.step()
    return loss_G.item(), loss_D.item()
    ### END SOLUTION


def train(G, D, dataloader, epochs, device=None, lambda_l1=100.0):
    """The handout's Step 4 loop (given): every epoch, every batch goes to the device and to train_step.

    Running this file (main(), at the end) trains with fit(), further below: the same train_step on
    every batch, plus a test score, a checkpoint and a progress bar per epoch, and optional speed-ups.
    """
    if device is None:  # a CUDA GPU if there is one, else the CPU
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G, D = G.to(device), D.to(device)
    criterion_GAN, criterion_L1 = build_losses()
    optimizer_G, optimizer_D = build_optimizers(G, D)
    for epoch in range(epochs):
        for t1, t2 in dataloader:
            t1, t2 = t1.to(device), t2.to(device)
            loss_G, loss_D = train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D,
                                        lambda_l1=lambda_l1)
        print(f"Epoch {epoch + 1}/{epochs} | Loss_G: {loss_G:.4f} | Loss_D: {loss_D:.4f}")
    return G


# ==================================================================================================
# STEP 5 · Inference and visualisation (模型推理与结果可视化)
# ==================================================================================================

def visualize(G, dataset, device, path, indices=(0,), title=None):
    """Save a figure with one row per test slice: T1 input | generated T2 | real T2. Returns path."""
    import matplotlib
    if "ipykernel" not in sys.modules:  # a script only writes files: Agg needs no display, on every OS.
        matplotlib.use("Agg")           # In Jupyter keep the notebook's own (inline) backend.
    import matplotlib.pyplot as plt

    ### BEGIN SOLUTION
    G.eval()  # BatchNorm uses its running statistics at inference
    rows = []
    with torch.no_grad():  # inference only: no graph, less memory
        for i in indices:
            t1, t2 = dataset[i]
            fake = G(t1.unsqueeze(0).to(device)).float().cpu()[0]
            rows.append([t1, fake, t2])

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        for c, (img, name) in enumerate(zip(images, ["T1 input", "Generated T2", "Real T2"])):
            axes[r][c].imshow(((img[0].clamp(-1, 1) + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1)  # [-1,1] -> [0,1]
            axes[r][c].set_title(name)
            axes[r][c].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    G.train()
    return path
    ### END SOLUTION


# ==================================================================================================
# 以下为已提供的基础设施，无需阅读 / Given infrastructure: you do not need to read below this line
# ==================================================================================================
# Steps 1-5 above are the whole lab. Below: command line and data checks, devices, mixed precision and
# caching, evaluation, plots, checkpoints, run() and main(); they only call the Steps.

DEFAULT_DATA_ROOT = os.path.join("dataset", "ixi2000")
# The kit folder. A notebook has no __file__: its first cell makes the kit root the working directory.
KIT_ROOT = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Experiment 6: T1->T2 MRI translation with a conditional GAN (pix2pix-style).")
    p.add_argument("--data-root", default=None,
                   help=f"folder with trainA/trainB/testA/testB (A=T1, B=T2). Default: {DEFAULT_DATA_ROOT}; "
                        "if that folder does not exist, synthetic phantoms under data/phantoms are used")
    p.add_argument("--epochs", type=int, default=50, help="number of epochs (handout: 50)")
    p.add_argument("--batch-size", type=int, default=1, help="handout: 1")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (handout: 0.0002)")
    p.add_argument("--lambda-l1", type=float, default=100.0, help="weight of the L1 term (handout: 100)")
    p.add_argument("--out", default="outputs", help="folder for figures, metrics and the checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto = CUDA if available, else Apple MPS, else CPU")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 where the hardware runs it natively (recent CPUs, Ampere+ GPUs), "
                        "else fp32, both in the faster channels_last layout. fp32 = the handout's NCHW "
                        "fp32 code path, bit for bit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (default: OUT/checkpoint.pt)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes (default: 2 on CUDA, else 0; 0 in a notebook)")
    p.add_argument("--no-cache", action="store_true",
                   help="decode PNGs every epoch instead of caching them in memory once")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (opt-in)")
    p.add_argument("--eval-samples", type=int, default=64,
                   help="test slices scored after every epoch (the final metrics use all of them)")
    p.add_argument("--vis-samples", type=int, default=3, help="rows in the Step 5 figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class DataError(Exception):
    """A problem with the user's data folder; main() prints it without a traceback."""


def check_data_root(root):
    """Fail early, with a message a student can act on, on the classic data mistakes.

    Returns {"train": pairs, "test": pairs}. PNGs count in any case (.png, .PNG), as the dataset reads them.
    """
    root = Path(root)
    counts = {}
    if not root.is_dir():
        raise DataError(f"数据目录不存在 / data folder not found: {root}\n"
                        f"  请检查 --data-root，或不加该参数以使用内置的合成数据。\n"
                        f"  Check --data-root, or omit it to train on the built-in synthetic phantoms.")
    for split in ("train", "test"):
        dirs = [root / f"{split}A", root / f"{split}B"]
        for d in dirs:
            if not d.is_dir():
                raise DataError(f"缺少文件夹 / missing folder: {d}\n"
                                f"  {root} 下需要 trainA、trainB、testA、testB 四个文件夹 (A = T1, B = T2)。\n"
                                f"  {root} must contain trainA, trainB, testA and testB (A = T1, B = T2).")
        names = [sorted(f for f in os.listdir(d) if f.lower().endswith(".png")) for d in dirs]
        for d, n in zip(dirs, names):
            if not n:
                raise DataError(f"文件夹中没有 .png 图像 / no .png images in: {d}")
        if names[0] != names[1]:
            only_a = sorted(set(names[0]) - set(names[1]))
            only_b = sorted(set(names[1]) - set(names[0]))
            first = (f"{dirs[0].name}/{only_a[0]} 在 {dirs[1].name} 中没有同名文件 / has no partner in {dirs[1].name}"
                     if only_a else
                     f"{dirs[1].name}/{only_b[0]} 在 {dirs[0].name} 中没有同名文件 / has no partner in {dirs[0].name}")
            raise DataError(f"T1/T2 文件名不匹配 / T1 and T2 file names do not match "
                            f"({len(names[0])} vs {len(names[1])} files): {first}\n"
                            f"  配对按文件名进行：A 与 B 中同一切片必须同名。\n"
                            f"  Pairs are matched by name: a slice must have the same file name in A and B.")
        counts[split] = len(names[0])
        for d, n in zip(dirs, names):
            for f in n:
                try:
                    with Image.open(d / f) as im:
                        im.load()  # decode fully: truncated files fail here, not mid-epoch
                except Exception as e:
                    raise DataError(f"无法读取图像 / cannot read image: {d / f} ({type(e).__name__}: {e})\n"
                                    f"  请删除或替换该文件（A 与 B 中的同名文件都要处理）。\n"
                                    f"  Delete or replace it (and its partner of the same name).") from None
    return counts


def check_dataset_size(dataset, pairs, folder):
    """The dataset must see every pair the data check found: a filter that skips upper-case .PNG files
    (f.endswith(".png")) would otherwise train on fewer images, or crash later on an empty set."""
    if len(dataset) != pairs:
        raise DataError(f"PairedMedicalDataset 读到 {len(dataset)} 对图像，但 {folder} 中有 {pairs} 个 PNG 文件 / "
                        f"PairedMedicalDataset sees {len(dataset)} pairs, but {folder} holds {pairs} PNG files.\n"
                        f"  检查第 1 步的文件过滤：扩展名可能是大写 .PNG，请用 f.lower().endswith(\".png\")。\n"
                        f"  Check Step 1's file filter: extensions may be upper-case .PNG; use "
                        f"f.lower().endswith(\".png\").")


# ==================================================================================================
# Devices, precision, data loading; the helpers fit() calls
# ==================================================================================================

def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")  # the handout's CUDA -> CPU fallback
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("请求了 --device cuda，但没有可用的 CUDA GPU / --device cuda was requested but no CUDA GPU "
                        "is available. Use --device auto or --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DataError("--device mps was requested but Apple MPS is not available. Use --device auto.")
    return torch.device(name)


def cpu_has_native_bf16():
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX); older CPUs emulate bf16 slowly."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def pick_precision(name, device):
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise DataError("--precision fp16 is only supported on CUDA GPUs; use auto, bf16 or fp32.")
    return name


def use_channels_last(requested_precision, device):
    """NHWC is the layout oneDNN and cuDNN convolutions prefer: it skips a reorder around every conv
    (2-core CPU, fp32: 9.8 instead of 8.0 training steps/s). Only an explicit --precision fp32 keeps
    NCHW, so that its summation order, and so every bit, matches the handout's code."""
    return requested_precision != "fp32" and device.type in ("cpu", "cuda")



class Autocast(nn.Module):
    """Runs a network under mixed precision but hands back float32.

    The speed lives here, not in train_step: the student code stays the handout's. The losses are then
    computed in float32 outside autocast (BCELoss on low-precision probabilities is unsafe), and the
    final Sigmoid/Tanh run in float32 too, so probabilities near 0 or 1 do not round to exactly 0 or 1.
    """

    def __init__(self, net, device_type, dtype):
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype
        for m in net.modules():
            if isinstance(m, (nn.Sigmoid, nn.Tanh)):
                m.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))

    def forward(self, *inputs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(*inputs)
        return out.float()


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def decode_cached(x):
    """Batches from the in-memory cache are uint8; turn them back into the dataset's [-1, 1] floats."""
    if x.dtype == torch.uint8:
        return x.float().div(255).sub(0.5).div(0.5)  # the same operations as ToTensor + Normalize
    return x


def fast_networks(G, D, device, precision, compile=False):
    """What train_step runs: G and D themselves in fp32, else wrapped to run under mixed precision, and
    torch.compile'd with compile=True. The wrappers share G's and D's weights."""
    G_run, D_run = G, D
    if PRECISIONS[precision] is not None:
        G_run, D_run = Autocast(G, device.type, PRECISIONS[precision]), Autocast(D, device.type, PRECISIONS[precision])
    if compile:
        G_run, D_run = torch.compile(G_run), torch.compile(D_run)
    return G_run, D_run


class KeepOutput(nn.Module):
    """Runs net and keeps its latest output, detached, as .output.

    fit() logs the L1 term of loss_G from the very fake T2 that train_step made: no second forward
    pass (which would cost time, see a G already updated, and move BatchNorm's running statistics)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.output = net, None

    def forward(self, *inputs):
        out = self.net(*inputs)
        self.output = out.detach()
        return out


def to_device(x, device, channels_last=False):
    """A batch on the device as the dataset's [-1, 1] floats (the in-memory cache holds uint8), in the
    memory layout the networks use."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return decode_cached(x.to(device, non_blocking=True)).contiguous(memory_format=memory_format)


def check_finite(loss_G, loss_D, epoch):
    if not (math.isfinite(loss_G) and math.isfinite(loss_D)):
        raise FloatingPointError(
            f"训练发散 / training diverged at epoch {epoch + 1}: loss_G={loss_G}, loss_D={loss_D}. "
            f"Try --precision fp32 or a smaller --lr.")


def progress_bar(total, desc, progress=True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True)


def cache_in_memory(dataset, progress=True):
    """Decode every pair once and keep it as uint8 (a 2000-pair set is ~260 MB instead of ~1 GB).

    Falls back to float32 storage if the dataset's values are not exactly k/255 scaled to [-1, 1]
    (a custom transform), so caching never changes what the model sees.
    """
    from tqdm import tqdm

    t1s, t2s = [], []
    for i in tqdm(range(len(dataset)), desc="caching", unit="pair", disable=not progress, leave=False):
        t1, t2 = dataset[i]
        t1s.append(t1)
        t2s.append(t2)
    t1s, t2s = torch.stack(t1s), torch.stack(t2s)
    encoded = [((x * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8) for x in (t1s, t2s)]
    if all(torch.equal(decode_cached(e), x) for e, x in zip(encoded, (t1s, t2s))):
        return TensorDataset(*encoded)
    return TensorDataset(t1s, t2s)


def in_notebook():
    """True inside a Jupyter (IPython) kernel."""
    return "ipykernel" in sys.modules


def default_num_workers(device):
    """DataLoader worker processes when --num-workers is not given: 2 on CUDA (decoding overlaps the GPU's
    work), else 0 (on a CPU the workers would only compete with training for the same cores).
    Also 0 wherever a worker could not import the notebook's classes: a worker started by "spawn"
    (Windows, macOS) or "forkserver" re-imports the main module, and a notebook has none."""
    import multiprocessing

    if device.type != "cuda" or in_notebook():
        return 0
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if method != "fork" and not hasattr(sys.modules["__main__"], "__file__"):
        return 0
    return 2


WORKER_HINT = ("DataLoader 的工作进程意外退出 / a DataLoader worker process failed: {error}\n"
               "  请加参数 --num-workers 0 重新运行（在 notebook 中：main([..., \"--num-workers\", \"0\"])），"
               "数据将在主进程中读取。\n"
               "  Run again with --num-workers 0 (in a notebook: main([..., \"--num-workers\", \"0\"])): the data "
               "is then read in the main process.")


def batches_of(dataloader):
    """The dataloader's batches. With worker processes, a worker that cannot start or dies (a class the
    worker cannot import, a spawn re-import that fails) becomes a DataError that says what to do.
    Errors of the loop's body are raised where they happen, not here."""
    if not dataloader.num_workers:
        yield from dataloader
        return
    try:
        yield from dataloader
    except (RuntimeError, AttributeError, TypeError, EOFError, BrokenPipeError, pickle.PicklingError) as e:
        text = str(e)
        if isinstance(e, (EOFError, BrokenPipeError)) or "exited unexpectedly" in text or "pickle" in text:
            raise DataError(WORKER_HINT.format(error=f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")) from e
        raise


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_phantoms_module():
    """The kit's data/phantoms.py, next to this file (or in the working directory), loaded by its path:
    this works wherever the file was copied to, and a student's own `data` folder cannot shadow it."""
    import importlib.util

    for base in dict.fromkeys([KIT_ROOT, Path.cwd()]):
        path = base / "data" / "phantoms.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("_kit_phantoms", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
    raise DataError(f"没有 {DEFAULT_DATA_ROOT}，也找不到生成内置合成数据所需的 data/phantoms.py。\n"
                    f"  请在实验包（学生包）的根目录中运行本文件（与 data/ 文件夹放在一起），或用 --data-root 指定数据。\n"
                    f"  No {DEFAULT_DATA_ROOT} and no data/phantoms.py to draw the built-in phantoms with.\n"
                    f"  Run this file from the kit (student bundle) folder, next to its data/ folder, "
                    f"or give --data-root.")


def resolve_data_root(arg):
    """An explicit --data-root must exist; without one, fall back to phantoms if ixi2000 is absent."""
    if arg is not None:
        return Path(arg)
    if Path(DEFAULT_DATA_ROOT).is_dir():
        return Path(DEFAULT_DATA_ROOT)
    phantoms = load_phantoms_module()
    root = phantoms.make_phantom_dataset(Path(phantoms.__file__).parent / "phantoms")
    print(f"[data] {DEFAULT_DATA_ROOT} not found: using synthetic T1/T2 phantoms in {root} "
          f"(未找到 {DEFAULT_DATA_ROOT}，使用内置合成数据)")
    return root


# ==================================================================================================
# fit(): Step 4's train() with a record per epoch, a progress bar and the speed-ups
# ==================================================================================================

def fit(G, D, dataloader, epochs, device, criterion_GAN=None, criterion_L1=None, optimizer_G=None,
        optimizer_D=None, lambda_l1=100.0, history=None, on_epoch_end=None, precision="fp32",
        channels_last=False, compile=False, progress=True):
    """Step 4's train() as main() runs it: the same train_step on every batch, with a record per epoch,
    a progress bar and optional speed-ups. Returns history, one record per epoch. With precision="fp32"
    and channels_last=False it updates G and D bit for bit as train() does (the kit's tests check it).

    A record holds the epoch's mean loss_G, loss_D, L1 (the pixel term of loss_G) and loss_G_adv =
    loss_G - lambda_l1 * L1 (its adversarial term, -log D(x, G(x)) averaged over patches: ln 2 = 0.69
    when D cannot tell, larger when D rejects the fakes), its seconds and training samples per second.
    history: the records of a resumed run; training continues after them and appends to that list.
    on_epoch_end(record) may add to the record (run() scores the test set, saves a checkpoint, prints).
    precision, channels_last, compile and progress change only speed and display.
    """
    if criterion_GAN is None or criterion_L1 is None:
        criterion_GAN, criterion_L1 = build_losses()
    if optimizer_G is None or optimizer_D is None:
        optimizer_G, optimizer_D = build_optimizers(G, D)
    history = [] if history is None else history
    G_run, D_run = fast_networks(G, D, device, precision, compile)  # fp32: just G and D
    G_run = KeepOutput(G_run)  # keeps the fake T2 of each step: train_step returns only the two losses
    for epoch in range(len(history), epochs):
        G.train()
        D.train()
        sums = {"loss_G": 0.0, "loss_D": 0.0, "L1": 0.0, "loss_G_adv": 0.0}
        batches = samples = 0
        start = time.perf_counter()
        bar = progress_bar(len(dataloader.dataset), f"epoch {epoch + 1}/{epochs}", progress)
        for t1, t2 in batches_of(dataloader):
            t1, t2 = to_device(t1, device, channels_last), to_device(t2, device, channels_last)
            loss_G, loss_D = train_step(G_run, D_run, t1, t2, criterion_GAN, criterion_L1,
                                        optimizer_G, optimizer_D, lambda_l1=lambda_l1)
            check_finite(loss_G, loss_D, epoch)
            l1 = (G_run.output - t2).abs().mean().item()  # the L1 term of this step's loss_G
            sums["loss_G"] += loss_G
            sums["loss_D"] += loss_D
            sums["L1"] += l1
            sums["loss_G_adv"] += loss_G - lambda_l1 * l1
            batches += 1
            samples += t1.size(0)
            bar.update(t1.size(0))
            bar.set_postfix(G=f"{loss_G:.3f}", D=f"{loss_D:.3f}", L1=f"{l1:.4f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in sums.items()},
                  "seconds": round(seconds, 3), "samples_per_second": round(samples / seconds, 3)}
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
    return history


# ==================================================================================================
# Evaluation, plots and checkpoints
# ==================================================================================================

def image_metrics(pred, real, t1):
    """Per-image MAE, PSNR, SSIM and foreground-masked PSNR on [0, 1] images, shape (N, 1, H, W).

    Background is a large black area that any model gets right, which inflates whole-image PSNR;
    the masked PSNR only counts pixels where the T1 input or the real T2 shows tissue.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    err = pred - real
    mse = err.pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    mask = ((t1 > 0.05) | (real > 0.05)).float()
    masked_mse = (err.pow(2) * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
    ssim = structural_similarity_index_measure(pred, real, data_range=1.0, reduction="none")
    return {"mae": err.abs().mean(dim=(1, 2, 3)), "psnr": 10 * torch.log10(1.0 / mse),
            "psnr_masked": 10 * torch.log10(1.0 / masked_mse.clamp_min(1e-10)), "ssim": ssim}


def evaluate(G, dataset, device, indices=None, batch_size=2, floor=True, memory_format=torch.contiguous_format):
    """Mean test metrics of G and, with floor=True, of the trivial "T1 used as T2" prediction (the floor
    to beat). dataset may be the cached uint8 copy. Small batches are faster on a CPU (cache-friendly)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = G.training
    G.eval()
    scores = {"model": {}, "t1_as_t2": {}} if floor else {"model": {}}
    to01 = lambda x: (x.clamp(-1, 1) + 1) / 2
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            pairs = [dataset[i] for i in indices[start:start + batch_size]]
            t1 = decode_cached(torch.stack([p[0] for p in pairs]))
            t2 = decode_cached(torch.stack([p[1] for p in pairs]))
            fake = G(t1.to(device).contiguous(memory_format=memory_format)).float().cpu()
            preds = {"model": fake, "t1_as_t2": t1}
            for name in scores:
                for k, v in image_metrics(to01(preds[name]), to01(t2), to01(t1)).items():
                    scores[name].setdefault(k, []).append(v)
    G.train(was_training)
    return {name: {k: round(torch.cat(v).mean().item(), 5) for k, v in s.items()}
            for name, s in scores.items()}


def plot_history(history, path):
    """loss_curves.png: loss_G, its adversarial term, loss_D and the L1 term per epoch (plus test PSNR).

    The ln 2 line marks a discriminator that cannot tell (D = 0.5 everywhere) on the two BCE panels.
    Matplotlib's Figure API, not pyplot: no backend switch and no window, in a script or a notebook.
    """
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    panels = [("loss_G", "Generator loss (GAN + λ·L1)"), ("loss_G_adv", "GAN term of loss_G (loss_G - λ·L1)"),
              ("loss_D", "Discriminator loss"), ("L1", "L1 (train)")]
    if any("test_psnr" in h for h in history):
        panels.append(("test_psnr", "Test PSNR (dB)"))
    fig = Figure(figsize=(3.6 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", markersize=3)
        if key in ("loss_G_adv", "loss_D"):
            ax.axhline(math.log(2), color="gray", linestyle="--", linewidth=1, label="ln 2: D undecided")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def save_checkpoint(path, G, D, optimizer_G, optimizer_D, epoch, args, history):
    """Write to a temporary file, then rename: an interrupted save never leaves a broken checkpoint."""
    tmp = Path(str(path) + ".tmp")
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "optimizer_G": optimizer_G.state_dict(),
                "optimizer_D": optimizer_D.state_dict(), "epoch": epoch, "args": vars(args),
                "history": history, "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def write_history_csv(history, path):
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


# ==================================================================================================
# run() and main()
# ==================================================================================================

def run(args, generator=None, discriminator=None):
    """Train, score, write every output. generator/discriminator: other network classes (zero-argument
    factories) instead of Generator/Discriminator; handout/challenge_unet.py passes its U-Net here."""
    progress = not args.no_progress and not in_notebook()  # a notebook keeps every bar frame: one line per epoch
    seed_everything(args.seed)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 256x256 inputs: let cuDNN pick the fastest kernels
    print(f"[setup] device={device} precision={precision} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")

    root = resolve_data_root(args.data_root)
    pairs = check_data_root(root)
    train_set = PairedMedicalDataset(os.path.join(root, "trainA"), os.path.join(root, "trainB"))
    test_set = PairedMedicalDataset(os.path.join(root, "testA"), os.path.join(root, "testB"))
    check_dataset_size(train_set, pairs["train"], Path(root) / "trainA")
    check_dataset_size(test_set, pairs["test"], Path(root) / "testA")
    print(f"[data] {root}: {len(train_set)} training pairs, {len(test_set)} test pairs")

    train_data = train_set if args.no_cache else cache_in_memory(train_set, progress)
    test_data = test_set if args.no_cache else cache_in_memory(test_set, progress)  # scored every epoch
    workers = args.num_workers if args.num_workers is not None else default_num_workers(device)
    dataloader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(args.seed))

    G = (generator or Generator)().to(device)
    D = (discriminator or Discriminator)().to(device)
    channels_last = use_channels_last(args.precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    G.to(memory_format=memory_format)
    D.to(memory_format=memory_format)
    criterion_GAN, criterion_L1 = build_losses()
    optimizer_G, optimizer_D = build_optimizers(G, D, lr=args.lr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    history = []  # one record per epoch: fit() appends to it, a resumed run starts from the checkpoint's
    if args.resume:
        resume_path = ckpt_path if args.resume == "auto" else Path(args.resume)
        if not resume_path.is_file():
            raise DataError(f"找不到检查点 / checkpoint not found: {resume_path}")
        ckpt = torch.load(resume_path, map_location=device, weights_only=True)
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        optimizer_G.load_state_dict(ckpt["optimizer_G"])
        optimizer_D.load_state_dict(ckpt["optimizer_D"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = ckpt["history"]
        print(f"[resume] {resume_path}: {ckpt['epoch']} epochs done, continuing to {args.epochs}")
    start_epoch = len(history)

    n_eval = min(args.eval_samples, len(test_set))
    eval_indices = np.linspace(0, len(test_set) - 1, n_eval).round().astype(int).tolist() if n_eval else []

    def on_epoch_end(record):  # record is already the last entry of history
        if eval_indices:
            scores = evaluate(G, test_data, device, eval_indices, floor=False, memory_format=memory_format)["model"]
            record.update({f"test_{k}": v for k, v in scores.items()})
        save_checkpoint(ckpt_path, G, D, optimizer_G, optimizer_D, record["epoch"], args, history)
        test = f" | test PSNR {record['test_psnr']:.2f} dB SSIM {record['test_ssim']:.3f}" if eval_indices else ""
        print(f"Epoch {record['epoch']}/{args.epochs} | Loss_G {record['loss_G']:.4f} | "
              f"Loss_D {record['loss_D']:.4f} | L1 {record['L1']:.4f} | "
              f"{record['samples_per_second']:.1f} img/s{test}", flush=True)

    fit(G, D, dataloader, args.epochs, device, criterion_GAN, criterion_L1, optimizer_G, optimizer_D,
        lambda_l1=args.lambda_l1, history=history, on_epoch_end=on_epoch_end, precision=precision,
        channels_last=channels_last, compile=args.compile, progress=progress)

    # Outputs: Step 5 figure, loss curves, history, final metrics on the whole test split.
    vis_indices = np.linspace(0, len(test_set) - 1, min(args.vis_samples, len(test_set))).round().astype(int)
    figure = visualize(G, test_set, device, str(out / "results.png"), indices=[int(i) for i in vis_indices],
                       title=f"T1 -> T2 after {len(history)} epochs")
    plot_history(history, out / "loss_curves.png")
    write_history_csv(history, out / "history.csv")
    scores = evaluate(G, test_data, device, memory_format=memory_format)
    train_rates = [h["samples_per_second"] for h in history[start_epoch:]] or [float("nan")]
    metrics = {"test": scores["model"], "t1_as_t2": scores["t1_as_t2"], "test_pairs": len(test_set),
               "train_pairs": len(train_set), "epochs": len(history), "data_root": str(root),
               "device": str(device), "precision": precision, "batch_size": args.batch_size,
               "train_samples_per_second": round(float(np.median(train_rates)), 3),
               "seed": args.seed}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    m, f = scores["model"], scores["t1_as_t2"]
    print(f"[test] model:     PSNR {m['psnr']:.2f} dB (brain {m['psnr_masked']:.2f}) SSIM {m['ssim']:.3f} "
          f"MAE {m['mae']:.4f}")
    print(f"[test] T1 as T2:  PSNR {f['psnr']:.2f} dB (brain {f['psnr_masked']:.2f}) SSIM {f['ssim']:.3f} "
          f"MAE {f['mae']:.4f}")
    print(f"[out] {figure}, {out / 'loss_curves.png'}, {out / 'history.csv'}, {out / 'metrics.json'}, "
          f"{ckpt_path}")
    return 0


def exit_code_of(call):
    """Run call() as a command: the errors a user can cause end in one message and an exit code
    (2 for data, unfinished steps; 1 for a diverged loss; 130 for Ctrl+C), never a traceback.
    handout/challenge_unet.py runs through it too."""
    # A Chinese Windows console is GBK: replace what it cannot show instead of crashing.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        return call()
    except DataError as e:
        print(f"错误 / Error: {e}", file=sys.stderr)
        return 2
    except NotImplementedError as e:
        print(f"尚未完成 / Not implemented yet: {e}\n"
              f"  请按讲义补全该步骤后再运行。/ Fill in this step (see the handout), then run again.",
              file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"错误 / Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n已中断 / interrupted: continue later with --resume", file=sys.stderr)
        return 130


def main(argv=None):
    return exit_code_of(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
