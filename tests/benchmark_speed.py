"""Speed benchmark (not a test): the handout's training code as written vs experiment6.py's default path.

    python tests/benchmark_speed.py                 # phantoms, 2 epochs x 120 pairs per run
    python tests/benchmark_speed.py --data-root ../shared/realdata/brats-tcga-t1t2 --epochs 1
    python tests/benchmark_speed.py --device cuda --batch-size 1

Each configuration trains in its own child process (so peak memory is its own), on the same data,
for the same number of steps, from the same seed, then scores the test split in fp32:

    handout       the handout's Step 1-4 code as written: PNGs decoded every step, fp32, NCHW, batch 1
    handout-seedN the same with other seeds (--noise-seeds): how much test L1 moves by chance alone
    fast          experiment6.py's default driver: in-memory uint8 cache, auto precision (bf16 where
                  native, else fp32), channels_last, the same train_step

It prints samples/s, the speed-up, peak memory and test L1/PSNR/SSIM, and whether the fast path's
test L1 lies within the noise band (the larger of +-5 % and the largest seed-to-seed difference). Test
scores are taken after every epoch (not timed); runs are compared by the mean over the second half of
the epochs, because a GAN's score after any single epoch swings by several per cent.

It also prints the ceiling: the floating-point work of one training step (counted by PyTorch's
FlopCounterMode) against this device's measured dense matrix-multiply rate, i.e. the most samples/s
any implementation of the handout's model could reach here at that precision.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="default: the embedded phantoms (data/phantoms)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of the fast path")
    p.add_argument("--compile", action="store_true", help="also torch.compile the fast path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seeds", type=int, default=1,
                   help="extra handout runs with other seeds, to measure how much test L1 moves by chance "
                        "(0 = none; more = a wider, more honest band)")
    p.add_argument("--child", choices=["handout", "fast"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def handout_training(G, D, dataloader, epochs, device, on_epoch_end):
    """Step 4 of the handout as written (with its data_loader typo fixed), plus the test-score hook."""
    import torch
    import torch.nn as nn

    criterion_GAN = nn.BCELoss()
    criterion_L1 = nn.L1Loss()
    optimizer_G = torch.optim.Adam(G.parameters(), lr=0.0002, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(D.parameters(), lr=0.0002, betas=(0.5, 0.999))
    for epoch in range(epochs):
        for i, (t1, t2) in enumerate(dataloader):
            t1, t2 = t1.to(device), t2.to(device)

            fake_t2 = G(t1)
            pred_fake = D(t1, fake_t2)
            valid = torch.ones_like(pred_fake)
            loss_G = criterion_GAN(pred_fake, valid) + 100 * criterion_L1(fake_t2, t2)
            optimizer_G.zero_grad()
            loss_G.backward()
            optimizer_G.step()

            pred_real = D(t1, t2)
            loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))
            pred_fake = D(t1, fake_t2.detach())
            loss_fake = criterion_GAN(pred_fake, torch.zeros_like(pred_fake))
            loss_D = 0.5 * (loss_real + loss_fake)
            optimizer_D.zero_grad()
            loss_D.backward()
            optimizer_D.step()
        print(f"Epoch {epoch + 1}/{epochs} | Loss_G: {loss_G.item():.4f} | Loss_D: {loss_D.item():.4f}",
              file=sys.stderr)
        on_epoch_end(None)


def child(args):
    """Train one configuration and print one JSON line with its figures."""
    import torch
    from torch.utils.data import DataLoader

    import experiment6 as ex

    ex.seed_everything(args.seed)
    device = ex.pick_device(args.device)
    root = ex.resolve_data_root(args.data_root)
    train_set = ex.PairedMedicalDataset(os.path.join(root, "trainA"), os.path.join(root, "trainB"))
    test_set = ex.PairedMedicalDataset(os.path.join(root, "testA"), os.path.join(root, "testB"))
    test_data = ex.cache_in_memory(test_set, progress=False)
    G, D = ex.Generator().to(device), ex.Discriminator().to(device)
    loader_seed = torch.Generator().manual_seed(args.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    curve, eval_seconds = [], [0.0]

    def score(_record):
        """Test scores after every epoch; the time spent here is not counted as training time."""
        sync()
        t = time.perf_counter()
        curve.append(ex.evaluate(G, test_data, device, floor=False)["model"])
        eval_seconds[0] += time.perf_counter() - t

    if args.child == "handout":
        precision = "fp32"
        dataloader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=loader_seed)
        sync()
        start = time.perf_counter()
        handout_training(G, D, dataloader, args.epochs, device, on_epoch_end=score)
    else:
        precision = ex.pick_precision(args.precision, device)
        channels_last = ex.use_channels_last(args.precision, device)
        if channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        sync()
        start = time.perf_counter()  # the one-off cache build counts against the fast path
        data = ex.cache_in_memory(train_set, progress=False)
        dataloader = DataLoader(data, batch_size=args.batch_size, shuffle=True, generator=loader_seed,
                                pin_memory=device.type == "cuda", num_workers=0)
        optimizer_G, optimizer_D = ex.build_optimizers(G, D)
        ex.fit(G, D, dataloader, args.epochs, device, optimizer_G=optimizer_G, optimizer_D=optimizer_D,
               precision=precision, channels_last=channels_last, compile=args.compile, on_epoch_end=score,
               progress=False)
    sync()
    seconds = time.perf_counter() - start - eval_seconds[0]
    samples = len(train_set) * args.epochs
    scores = curve[-1]
    # One epoch's score swings with the GAN's oscillation; the mean over the second half of training
    # is the steadier figure to compare runs by.
    late = curve[len(curve) // 2:]
    late_mean = {k: sum(c[k] for c in late) / len(late) for k in scores}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {"config": args.child, "seed": args.seed, "precision": precision, "device": str(device),
              "samples": samples, "seconds": round(seconds, 2),
              "samples_per_second": round(samples / seconds, 2), "peak_rss_mb": round(peak_rss_mb),
              "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
              **{f"test_{k}": v for k, v in scores.items()},
              **{f"late_{k}": round(v, 5) for k, v in late_mean.items()}, "late_epochs": len(late)}
    print(json.dumps(result))


def flops_per_sample():
    """Floating-point operations of one train_step on one 256x256 pair (forward + backward, G and D)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import experiment6 as ex

    torch.manual_seed(0)
    G, D = ex.Generator(), ex.Discriminator()
    criterion_GAN, criterion_L1 = ex.build_losses()
    optimizer_G, optimizer_D = ex.build_optimizers(G, D)
    t1, t2 = torch.rand(2, 1, 1, 256, 256) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        ex.train_step(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D)
    return counter.get_total_flops()


def matmul_rate(device, dtype, n=2048, seconds=1.0):
    """Measured dense matmul FLOP/s: the practical peak that convolutions approach at best."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        n = 8192
        # True fp32. cuDNN convolutions may use TF32 by default on Ampere and newer GPUs, so there the
        # fp32 ceiling printed below is a lower bound (batch 1 on a GPU is launch-bound long before it).
        torch.backends.cuda.matmul.allow_tf32 = False
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        if device.type == "cuda":
            sync()
    sync()
    return 2 * n ** 3 * calls / (time.perf_counter() - start)


def print_ceiling(by, device_name):
    import torch

    import experiment6 as ex

    device = ex.pick_device(device_name)
    flops = flops_per_sample()
    print(f"\nceiling: one training sample = {flops / 1e9:.1f} GFLOP (FlopCounterMode, one train_step)")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for precision in dict.fromkeys(["fp32", by["fast"]["precision"]]):
        rate = matmul_rate(device, dtypes[precision])
        print(f"  {precision} matmul here: {rate / 1e9:.0f} GFLOP/s -> at most {rate / flops:.1f} samples/s "
              f"({rate / flops / by['handout']['samples_per_second']:.1f}x the handout code) at 100 % of that rate")
        for r in by.values():
            if r["precision"] == precision and not r["config"].startswith("handout-seed"):
                achieved = r["samples_per_second"] * flops
                print(f"  {r['config']:<8} achieves {achieved / 1e9:.0f} GFLOP/s = {achieved / rate:.0%} of it")


def run_child(args, config, seed):
    cmd = [sys.executable, __file__, "--child", config, "--seed", str(seed), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if args.compile:
        cmd.append("--compile")
    print(f"[bench] running {config} (seed {seed}) ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"[bench] {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)

    import torch

    runs = [run_child(args, "handout", args.seed)]
    for k in range(1, args.noise_seeds + 1):
        runs.append({**run_child(args, "handout", args.seed + k), "config": f"handout-seed{args.seed + k}"})
    runs.append(run_child(args, "fast", args.seed))
    by = {r["config"]: r for r in runs}
    late = by["fast"]["late_epochs"]

    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"device {by['fast']['device']}, batch size {args.batch_size}, {by['fast']['samples']} samples per run")
    print(f"test scores: after the last epoch, and the mean over the last {late} epoch(s)")
    header = (f"{'config':<15}{'precision':<10}{'samples/s':>10}{'peak RSS MB':>13}{'L1 last':>9}"
              f"{'L1 mean':>9}{'PSNR mean':>10}{'SSIM mean':>10}")
    print(header + ("  peak CUDA MB" if by["fast"]["peak_cuda_mb"] is not None else ""))
    for r in runs:
        line = (f"{r['config']:<15}{r['precision']:<10}{r['samples_per_second']:>10.2f}{r['peak_rss_mb']:>13}"
                f"{r['test_mae']:>9.4f}{r['late_mae']:>9.4f}{r['late_psnr']:>10.2f}{r['late_ssim']:>10.3f}")
        print(line + (f"  {r['peak_cuda_mb']:>12}" if r["peak_cuda_mb"] is not None else ""))

    speedup = by["fast"]["samples_per_second"] / by["handout"]["samples_per_second"]
    base = by["handout"]["late_mae"]
    delta = (by["fast"]["late_mae"] - base) / base
    noise = max([abs(r["late_mae"] - base) / base for r in runs if r["config"].startswith("handout-seed")],
                default=0.0)
    band = max(0.05, noise)
    print(f"\nspeed-up fast / handout: {speedup:.2f}x")
    print(f"test L1 (mean of the last {late} epochs): fast vs handout {delta:+.1%}; largest seed-to-seed "
          f"difference {noise:.1%} ({args.noise_seeds} other seed(s)); band +-{band:.1%} -> "
          f"{'within noise' if abs(delta) <= band else 'OUTSIDE the noise band'}")
    print_ceiling(by, args.device)


if __name__ == "__main__":
    main()
