"""实验六 · Experiment 6 学生模板 / student template: T1 -> T2 MRI translation with a conditional GAN.

请对照讲义补全标有 TODO 的部分（第 1-5 步），并删掉其后的 raise NotImplementedError(...)；其余代码已给出。
Fill in the parts marked TODO (Steps 1-5, see the handout) and delete the raise NotImplementedError(...)
after each; everything else is given.

    Step 1  PairedMedicalDataset   paired T1/T2 PNG slices           (search: "STEP 1")
    Step 2  Generator, Discriminator                                  (search: "STEP 2")
    Step 3  build_losses, build_optimizers                            (search: "STEP 3")
    Step 4  train_step (one batch); train, the epoch loop, is given   (search: "STEP 4")
    Step 5  visualize (T1 input | generated T2 | real T2)             (search: "STEP 5")

运行 / Run:        python student_template.py --epochs 1     (试运行 / a quick trial; the handout uses 50)
自查 / Self-check: python -m grader student_template.py

此文件由 handout/make_student.py 根据 experiment6.py 生成。教师请勿手工修改：改 experiment6.py 后重新生成。
Generated from experiment6.py by handout/make_student.py. Instructors: do not edit it by hand; change
experiment6.py (or the prompts in make_student.py) and regenerate.
"""
import argparse
import csv
import json
import math
import os
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

DEFAULT_DATA_ROOT = os.path.join("dataset", "ixi2000")
# The kit folder. A notebook has no __file__: its first cell makes the kit root the working directory.
KIT_ROOT = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
PHANTOM_ROOT = KIT_ROOT / "data" / "phantoms"
IMAGE_SIZE = 256


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
                   help="DataLoader worker processes (default: 0 on CPU, 2 on CUDA)")
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


# ==================================================================================================
# STEP 1 · Paired T1/T2 dataset (构建医学图像配对数据集)
# ==================================================================================================

class PairedMedicalDataset(Dataset):
    """T1/T2 slice pairs: the i-th PNG of t1_dir (sorted by name) goes with the i-th PNG of t2_dir.

    Returns (t1, t2): float32 tensors of shape (1, 256, 256) scaled to [-1, 1].
    """

    def __init__(self, t1_dir, t2_dir):
        # TODO 第 1 步 / Step 1: PairedMedicalDataset.__init__
        # 列出 t1_dir 和 t2_dir 中的 .png 文件，各自按文件名排序，存为 self.t1_paths 和 self.t2_paths
        # （排序后第 i 个 T1 与第 i 个 T2 是同一张切片）。
        # 再定义 self.transform：Resize((256, 256)) -> ToTensor() -> Normalize(mean=[0.5], std=[0.5])，
        # 把像素从 [0, 255] 变到 [-1, 1]，与生成器 Tanh 的输出范围一致。
        # 注意：self.transform 也写在 __init__ 里（与上面的赋值同样缩进）。
        # List the .png files in t1_dir and in t2_dir, sort each list by file name and keep them as
        # self.t1_paths and self.t2_paths (after sorting, the i-th T1 and the i-th T2 are the same slice).
        # Then build self.transform: Resize((256, 256)) -> ToTensor() -> Normalize(mean=[0.5], std=[0.5]),
        # which maps pixels from [0, 255] to [-1, 1], the range of the generator's Tanh.
        # Note: self.transform goes inside __init__ too (same indentation as the assignments above).
        raise NotImplementedError("Step 1: 第 1 步 · 请补全 / fill in PairedMedicalDataset.__init__")

    def __len__(self):
        # TODO 第 1 步 / Step 1: PairedMedicalDataset.__len__
        # 返回配对的数量：两个路径列表中较短者的长度。
        # Return the number of pairs: the length of the shorter of the two path lists.
        raise NotImplementedError("Step 1: 第 1 步 · 请补全 / fill in PairedMedicalDataset.__len__")

    def __getitem__(self, idx):
        # TODO 第 1 步 / Step 1: PairedMedicalDataset.__getitem__
        # 打开第 idx 个 T1 与 T2 图像，用 .convert("L") 转成单通道灰度图，各自经过 self.transform，
        # 返回 (t1, t2)：两个形状为 (1, 256, 256)、取值在 [-1, 1] 的 float32 张量。
        # Open the idx-th T1 and T2 images, make them one-channel grayscale with .convert("L"), apply
        # self.transform to each and return (t1, t2): float32 tensors of shape (1, 256, 256) in [-1, 1].
        raise NotImplementedError("Step 1: 第 1 步 · 请补全 / fill in PairedMedicalDataset.__getitem__")


def check_data_root(root):
    """Fail early, with a message a student can act on, on the classic data mistakes."""
    root = Path(root)
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
        for d, n in zip(dirs, names):
            for f in n:
                try:
                    with Image.open(d / f) as im:
                        im.load()  # decode fully: truncated files fail here, not mid-epoch
                except Exception as e:
                    raise DataError(f"无法读取图像 / cannot read image: {d / f} ({type(e).__name__}: {e})\n"
                                    f"  请删除或替换该文件（A 与 B 中的同名文件都要处理）。\n"
                                    f"  Delete or replace it (and its partner of the same name).") from None


# ==================================================================================================
# STEP 2 · Generator and Discriminator (定义生成器与判别器)
# ==================================================================================================

class Generator(nn.Module):
    """Encoder-decoder: (N, 1, 256, 256) T1 in [-1, 1] -> (N, 1, 256, 256) T2 in [-1, 1]."""

    def __init__(self):
        super().__init__()
        # TODO 第 2 步 / Step 2: Generator.__init__
        # 用 nn.Sequential 搭建编码器-解码器，存为 self.model（每层都是 kernel 4、stride 2、padding 1）：
        #   编码 256 -> 128 -> 64：Conv2d(1, 64) + LeakyReLU(0.2)；Conv2d(64, 128) + BatchNorm2d(128) + LeakyReLU(0.2)
        #   解码 64 -> 128 -> 256：ConvTranspose2d(128, 64) + BatchNorm2d(64) + ReLU；ConvTranspose2d(64, 1) + Tanh
        # Build the encoder-decoder as self.model = nn.Sequential(...) (every layer: kernel 4, stride 2, padding 1):
        #   encode 256 -> 128 -> 64: Conv2d(1, 64) + LeakyReLU(0.2); Conv2d(64, 128) + BatchNorm2d(128) + LeakyReLU(0.2)
        #   decode 64 -> 128 -> 256: ConvTranspose2d(128, 64) + BatchNorm2d(64) + ReLU; ConvTranspose2d(64, 1) + Tanh
        raise NotImplementedError("Step 2: 第 2 步 · 请补全 / fill in Generator.__init__")

    def forward(self, x):
        # TODO 第 2 步 / Step 2: Generator.forward
        # x 的形状为 (N, 1, 256, 256)；返回 self.model(x)：形状相同，取值在 [-1, 1]。
        # x has shape (N, 1, 256, 256); return self.model(x): the same shape, values in [-1, 1].
        raise NotImplementedError("Step 2: 第 2 步 · 请补全 / fill in Generator.forward")


class Discriminator(nn.Module):
    """PatchGAN-lite: judges a (T1, T2) pair; (N, 1, 256, 256) x 2 -> (N, 1, 63, 63) probabilities."""

    def __init__(self):
        super().__init__()
        # TODO 第 2 步 / Step 2: Discriminator.__init__
        # 搭建 self.model = nn.Sequential(...)（简化的 PatchGAN，输入是 T1 与 T2 拼接后的 2 个通道）：
        #   Conv2d(2, 64, 4, 2, 1) + LeakyReLU(0.2)                       256 -> 128
        #   Conv2d(64, 128, 4, 2, 1) + BatchNorm2d(128) + LeakyReLU(0.2)  128 -> 64
        #   Conv2d(128, 1, 4, 1, 1) + Sigmoid                             64 -> 63，每个值给一个局部区域打分
        # Build self.model = nn.Sequential(...) (a small PatchGAN; its input is T1 and T2 stacked as 2 channels):
        #   Conv2d(2, 64, 4, 2, 1) + LeakyReLU(0.2)                       256 -> 128
        #   Conv2d(64, 128, 4, 2, 1) + BatchNorm2d(128) + LeakyReLU(0.2)  128 -> 64
        #   Conv2d(128, 1, 4, 1, 1) + Sigmoid                             64 -> 63, one score per image patch
        raise NotImplementedError("Step 2: 第 2 步 · 请补全 / fill in Discriminator.__init__")

    def forward(self, x1, x2):
        # TODO 第 2 步 / Step 2: Discriminator.forward
        # 沿通道维拼接 T1 (x1) 与真实或生成的 T2 (x2)：torch.cat([x1, x2], dim=1) 得到 (N, 2, 256, 256)，
        # 送入 self.model，返回 (N, 1, 63, 63) 的概率图，取值在 (0, 1)（1 = 真实配对）。
        # Stack the T1 (x1) and a real or generated T2 (x2) along the channel axis: torch.cat([x1, x2], dim=1)
        # gives (N, 2, 256, 256); return self.model of it, a (N, 1, 63, 63) map of probabilities in (0, 1)
        # (1 = a real pair).
        raise NotImplementedError("Step 2: 第 2 步 · 请补全 / fill in Discriminator.forward")


# ==================================================================================================
# STEP 3 · Losses and optimizers (定义损失函数与优化器)
# ==================================================================================================

def build_losses():
    """Returns (criterion_GAN, criterion_L1): binary cross-entropy and mean absolute error."""
    # TODO 第 3 步 / Step 3: build_losses
    # 创建并返回 (criterion_GAN, criterion_L1)：nn.BCELoss()（判别器以 Sigmoid 结尾，输出的是概率）
    # 和 nn.L1Loss()（逐像素平均绝对误差）。
    # Create and return (criterion_GAN, criterion_L1): nn.BCELoss() (the discriminator ends in a Sigmoid,
    # so it outputs probabilities) and nn.L1Loss() (mean absolute pixel error).
    raise NotImplementedError("Step 3: 第 3 步 · 请补全 / fill in build_losses")


def build_optimizers(G, D, lr=2e-4, betas=(0.5, 0.999)):
    """Returns (optimizer_G, optimizer_D): one Adam per network (beta1 = 0.5 as in pix2pix/DCGAN)."""
    # TODO 第 3 步 / Step 3: build_optimizers
    # 为 G 和 D 各建一个 torch.optim.Adam（分别优化 G.parameters() 和 D.parameters()），
    # 使用参数 lr 和 betas（默认 2e-4 与 (0.5, 0.999)，不要写死），返回 (optimizer_G, optimizer_D)。
    # Create one torch.optim.Adam for G and one for D (over G.parameters() and D.parameters()) with the
    # lr and betas arguments (defaults 2e-4 and (0.5, 0.999); do not hard-code them) and return
    # (optimizer_G, optimizer_D).
    raise NotImplementedError("Step 3: 第 3 步 · 请补全 / fill in build_optimizers")


# ==================================================================================================
# STEP 4 · Training (训练生成对抗网络)
# ==================================================================================================

def train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D, lambda_l1=100.0):
    """One batch: update G, then D (the handout's order). Returns (loss_G, loss_D) as Python floats."""
    # TODO 第 4 步 / Step 4: train_step
    # 训练一个 batch（讲义第 4 步的循环体；t1、t2 已在 device 上，循环本身由下面给出的 train() 负责）。
    # 先更新 G：fake_t2 = G(t1)，pred_fake = D(t1, fake_t2)，
    #   loss_G = criterion_GAN(pred_fake, 全 1) + lambda_l1 * criterion_L1(fake_t2, t2)，
    #   然后 optimizer_G.zero_grad()、loss_G.backward()、optimizer_G.step()。
    # 再更新 D：真实配对 D(t1, t2) 的目标是全 1，生成配对 D(t1, fake_t2.detach()) 的目标是全 0，
    #   loss_D = 0.5 * (loss_real + loss_fake)，同样 zero_grad、backward、step。
    # 返回 (loss_G.item(), loss_D.item())：两个 Python float。
    # 提示：目标用 torch.ones_like / torch.zeros_like 生成；用参数 lambda_l1，不要写死 100。
    # Train on one batch (the body of the handout's Step 4 loop; t1 and t2 are already on the device,
    # and the loop itself is train(), given below).
    # G first: fake_t2 = G(t1), pred_fake = D(t1, fake_t2),
    #   loss_G = criterion_GAN(pred_fake, all ones) + lambda_l1 * criterion_L1(fake_t2, t2),
    #   then optimizer_G.zero_grad(), loss_G.backward(), optimizer_G.step().
    # Then D: the real pair D(t1, t2) has target all ones, the generated pair D(t1, fake_t2.detach())
    #   all zeros; loss_D = 0.5 * (loss_real + loss_fake); zero_grad, backward, step again.
    # Return (loss_G.item(), loss_D.item()): two Python floats.
    # Hints: make the targets with torch.ones_like / torch.zeros_like; use lambda_l1, not a fixed 100.
    raise NotImplementedError("Step 4: 第 4 步 · 请补全 / fill in train_step")


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


def train(G, D, dataloader, epochs, device, criterion_GAN=None, criterion_L1=None,
          optimizer_G=None, optimizer_D=None, lambda_l1=100.0, start_epoch=0, precision="fp32",
          channels_last=False, compile=False, on_epoch_end=None, progress=True):
    """The epoch loop (given): calls train_step on every batch and returns one record per epoch.

    Each record holds the epoch's mean loss_G, loss_D and L1 (the pixel term of loss_G), its
    wall time and training samples per second; on_epoch_end(record) may add more (test metrics).
    """
    from tqdm import tqdm

    if criterion_GAN is None or criterion_L1 is None:
        criterion_GAN, criterion_L1 = build_losses()
    if optimizer_G is None or optimizer_D is None:
        optimizer_G, optimizer_D = build_optimizers(G, D)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    G_run, D_run = G, D
    if PRECISIONS[precision] is not None:
        G_run, D_run = Autocast(G, device.type, PRECISIONS[precision]), Autocast(D, device.type, PRECISIONS[precision])
    if compile:
        G_run, D_run = torch.compile(G_run), torch.compile(D_run)

    # Record G's output on each call, so the epoch's L1 can be logged without changing train_step.
    last_fake = []
    hook = G.register_forward_hook(lambda _m, _in, out: last_fake.__setitem__(slice(None), [out.detach()]))
    history = []
    try:
        for epoch in range(start_epoch, epochs):
            G.train()
            D.train()
            sums = {"loss_G": 0.0, "loss_D": 0.0, "L1": 0.0}
            batches = samples = 0
            start = time.perf_counter()
            bar = tqdm(total=len(dataloader.dataset), desc=f"epoch {epoch + 1}/{epochs}", unit="img",
                       disable=not progress, leave=False, dynamic_ncols=True)
            for t1, t2 in dataloader:
                t1 = decode_cached(t1.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
                t2 = decode_cached(t2.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
                loss_G, loss_D = train_step(G_run, D_run, t1, t2, criterion_GAN, criterion_L1,
                                            optimizer_G, optimizer_D, lambda_l1=lambda_l1)
                if not (math.isfinite(loss_G) and math.isfinite(loss_D)):
                    raise FloatingPointError(
                        f"训练发散 / training diverged at epoch {epoch + 1}: loss_G={loss_G}, loss_D={loss_D}. "
                        f"Try --precision fp32 or a smaller --lr.")
                l1 = (last_fake[0].float() - t2).abs().mean().item() if last_fake else float("nan")
                sums["loss_G"] += loss_G
                sums["loss_D"] += loss_D
                sums["L1"] += l1
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
    finally:
        hook.remove()
    return history


# ==================================================================================================
# STEP 5 · Inference and visualisation (模型推理与结果可视化)
# ==================================================================================================

def visualize(G, dataset, device, path, indices=(0,), title=None):
    """Save a figure with one row per test slice: T1 input | generated T2 | real T2. Returns path."""
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display, on every OS
    import matplotlib.pyplot as plt

    # TODO 第 5 步 / Step 5: visualize
    # 第 5 步没有参考代码。对 indices 中的每个下标 i：t1, t2 = dataset[i]，生成器的输入要有 batch 维：
    # G(t1.unsqueeze(0).to(device)) 的形状为 (1, 1, 256, 256)，结果用 .cpu() 移回 CPU。
    # 作图：每个下标一行，三列依次为 T1 输入 | 生成的 T2 | 真实 T2（cmap="gray"，先把 [-1, 1] 换算到 [0, 1]）；
    # 有 title 时作为总标题；保存到 path，关闭图，返回 path。
    # 提示：推理前调用 G.eval()，推理放在 with torch.no_grad(): 中；用 plt.subplot(...)（或 plt.subplots）
    # 排版；最后调用 G.train()，训练才能继续。
    # Step 5 has no reference code. For each index i in indices: t1, t2 = dataset[i]; the generator needs a
    # batch axis: G(t1.unsqueeze(0).to(device)) has shape (1, 1, 256, 256); bring the result back with .cpu().
    # Figure: one row per index, three columns T1 input | generated T2 | real T2 (cmap="gray", map [-1, 1] to
    # [0, 1] first); use title as the figure title if given; save to path, close the figure, return path.
    # Hints: call G.eval() before inference and run it inside with torch.no_grad():; lay out the panels with
    # plt.subplot(...) (or plt.subplots); call G.train() at the end so training can continue.
    raise NotImplementedError("Step 5: 第 5 步 · 请补全 / fill in visualize")


# ==================================================================================================
# Evaluation, plots and checkpoints (given infrastructure)
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
    """loss_curves.png: loss_G, loss_D and the L1 term per epoch (plus test PSNR if recorded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    panels = [("loss_G", "Generator loss (GAN + λ·L1)"), ("loss_D", "Discriminator loss"),
              ("L1", "L1 (train)")]
    if any("test_psnr" in h for h in history):
        panels.append(("test_psnr", "Test PSNR (dB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", markersize=3)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
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
# Devices, precision, data loading (given infrastructure)
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


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_data_root(arg, progress=True):
    """An explicit --data-root must exist; without one, fall back to phantoms if ixi2000 is absent."""
    if arg is not None:
        return Path(arg)
    if Path(DEFAULT_DATA_ROOT).is_dir():
        return Path(DEFAULT_DATA_ROOT)
    sys.path.insert(0, str(KIT_ROOT))
    from data.phantoms import make_phantom_dataset

    root = make_phantom_dataset(PHANTOM_ROOT)
    print(f"[data] {DEFAULT_DATA_ROOT} not found: using synthetic T1/T2 phantoms in {root} "
          f"(未找到 {DEFAULT_DATA_ROOT}，使用内置合成数据)")
    return root


# ==================================================================================================
# main
# ==================================================================================================

def run(args, generator=None, discriminator=None):
    """Train, score, write every output. generator/discriminator: other network classes (zero-argument
    factories) instead of Generator/Discriminator; handout/challenge_unet.py passes its U-Net here."""
    progress = not args.no_progress
    seed_everything(args.seed)
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 256x256 inputs: let cuDNN pick the fastest kernels
    print(f"[setup] device={device} precision={precision} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")

    root = resolve_data_root(args.data_root)
    check_data_root(root)
    train_set = PairedMedicalDataset(os.path.join(root, "trainA"), os.path.join(root, "trainB"))
    test_set = PairedMedicalDataset(os.path.join(root, "testA"), os.path.join(root, "testB"))
    print(f"[data] {root}: {len(train_set)} training pairs, {len(test_set)} test pairs")

    train_data = train_set if args.no_cache else cache_in_memory(train_set, progress)
    test_data = test_set if args.no_cache else cache_in_memory(test_set, progress)  # scored every epoch
    workers = args.num_workers if args.num_workers is not None else (2 if device.type == "cuda" else 0)
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
    history, start_epoch = [], 0
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
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        print(f"[resume] {resume_path}: {start_epoch} epochs done, continuing to {args.epochs}")

    n_eval = min(args.eval_samples, len(test_set))
    eval_indices = np.linspace(0, len(test_set) - 1, n_eval).round().astype(int).tolist() if n_eval else []

    def on_epoch_end(record):
        if eval_indices:
            scores = evaluate(G, test_data, device, eval_indices, floor=False, memory_format=memory_format)["model"]
            record.update({f"test_{k}": v for k, v in scores.items()})
        history.append(record)
        save_checkpoint(ckpt_path, G, D, optimizer_G, optimizer_D, record["epoch"], args, history)
        test = f" | test PSNR {record['test_psnr']:.2f} dB SSIM {record['test_ssim']:.3f}" if eval_indices else ""
        print(f"Epoch {record['epoch']}/{args.epochs} | Loss_G {record['loss_G']:.4f} | "
              f"Loss_D {record['loss_D']:.4f} | L1 {record['L1']:.4f} | "
              f"{record['samples_per_second']:.1f} img/s{test}", flush=True)

    train(G, D, dataloader, args.epochs, device, criterion_GAN, criterion_L1, optimizer_G, optimizer_D,
          lambda_l1=args.lambda_l1, start_epoch=start_epoch, precision=precision,
          channels_last=channels_last, compile=args.compile, on_epoch_end=on_epoch_end, progress=progress)

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


def main(argv=None):
    # A Chinese Windows console is GBK: replace what it cannot show instead of crashing.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = parse_args(argv)
    try:
        return run(args)
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


if __name__ == "__main__":
    sys.exit(main())
