"""TRUSTED computations of the expected values (never touches submission code).

The networks are the grader's copy of the handout's (grader/nets.py); the kit's data/phantoms.py is
loaded by file path for phantom images. The training-step references and Adam are written out here
independently (Adam by its update rule: constructing torch.optim.Adam the first time costs seconds of
imports), once per accepted order of updates.
"""
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

KIT = Path(__file__).resolve().parents[1]
NETS = Path(__file__).resolve().parent / "nets.py"
PHANTOMS = KIT / "data" / "phantoms.py"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@lru_cache(None)
def kit():
    """The networks (named for what they stand for: the kit's reference architecture)."""
    return _load(NETS, "_grader_nets")


@lru_cache(None)
def phantoms():
    return _load(PHANTOMS, "_kit_phantoms")


def phantom_pairs(n, seed):
    """n phantom T1/T2 pairs as the dataset would give them: float32 (n,1,256,256) in [-1,1], 8-bit steps."""
    ph = phantoms()
    rng = np.random.default_rng(seed)
    t1, t2 = [], []
    for _ in range(n):
        a, b, _ = ph.phantom_slice(rng, 256)
        t1.append(ph.to_uint8(a))
        t2.append(ph.to_uint8(b))
    f = lambda x: (np.stack(x)[:, None].astype(np.float32) / 255.0 - 0.5) / 0.5
    return f(t1), f(t2)


def new_nets(seed):
    torch.manual_seed(seed)
    return kit().Generator(), kit().Discriminator()


def state_arrays(G=None, D=None):
    out = {}
    for tag, net in (("G", G), ("D", D)):
        if net is not None:
            out.update({f"{tag}.{k}": v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()})
    return out


def load_state(net, arrays, prefix):
    sd = net.state_dict()
    for k in sd:
        if prefix + k in arrays:
            sd[k] = torch.from_numpy(np.array(arrays[prefix + k])).to(sd[k].dtype)
    net.load_state_dict(sd)


# ----------------------------------------------------------------------------------------------
# Step 4: trusted training steps
# ----------------------------------------------------------------------------------------------
ORDERS = {
    "G->D": "先更新 G 再更新 D（讲义顺序）/ G first, then D (the handout's order)",
    "D->G": "先更新 D 再更新 G（pix2pix 论文顺序）/ D first, then G (the pix2pix paper's order)",
}


class Adam:
    """torch.optim.Adam's update rule (amsgrad=False, weight_decay=0), as torch writes it."""

    def __init__(self, params, lr=2e-4, betas=(0.5, 0.999), eps=1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / (bc2 ** 0.5)).add_(self.eps)
            p.addcdiv_(m, denom, value=-(self.lr / bc1))


def ref_step(G, D, t1, t2, opt_g, opt_d, order, lam=100.0):
    bce, l1 = nn.BCELoss(), nn.L1Loss()

    def g_update(fake):
        pf = D(t1, fake)
        loss_g = bce(pf, torch.ones_like(pf)) + lam * l1(fake, t2)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_g.item()

    def d_update(fake):
        pr = D(t1, t2)
        pf = D(t1, fake.detach())
        loss_d = 0.5 * (bce(pr, torch.ones_like(pr)) + bce(pf, torch.zeros_like(pf)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        return loss_d.item()

    fake = G(t1)
    if order == "G->D":
        lg = g_update(fake)
        ld = d_update(fake)
    else:
        ld = d_update(fake)
        lg = g_update(fake)
    return lg, ld


def ref_train(state, t1, t2, steps, order):
    """Snapshots after each step: losses, G/D parameters, gradients left on G."""
    G, D = kit().Generator(), kit().Discriminator()
    load_state(G, state, "G.")
    load_state(D, state, "D.")
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    t1, t2 = torch.from_numpy(t1), torch.from_numpy(t2)
    snaps = []
    for s in range(steps):
        i = s % t1.shape[0]
        lg, ld = ref_step(G, D, t1[i:i + 1], t2[i:i + 1], opt_g, opt_d, order)
        snaps.append({"loss_G": lg, "loss_D": ld,
                      "G": {n: p.detach().numpy().copy() for n, p in G.named_parameters()},
                      "D": {n: p.detach().numpy().copy() for n, p in D.named_parameters()},
                      "gradG": {n: p.grad.numpy().copy() for n, p in G.named_parameters() if p.grad is not None}})
    return snaps


def rel_diff(sub, ref, base=None):
    """||(sub-base) - (ref-base)|| / ||ref-base|| over all tensors of two name->array dicts."""
    num = den = 0.0
    for n, r in ref.items():
        s = sub.get(n)
        if s is None or s.shape != r.shape:
            return float("inf")
        b = base[n] if base is not None else 0.0
        num += float(np.sum((s.astype(np.float64) - r) ** 2))
        den += float(np.sum((r.astype(np.float64) - b) ** 2))
    return (num ** 0.5) / (den ** 0.5 + 1e-30)


def close(a, b, rel=1e-4, abs_=1e-5):
    return a is not None and np.isfinite(a) and abs(a - b) <= abs_ + rel * abs(b)


# ----------------------------------------------------------------------------------------------
# Step 5: figure analysis
# ----------------------------------------------------------------------------------------------

def panel_columns(gray):
    """Count image panels side by side in a figure (2-D uint8 array).

    Background = the most common border value. A column belongs to a panel when at least 15 % of its
    pixels differ clearly from the background; panels are runs of such columns at least 4 % of the
    figure wide (titles, tick labels and thin lines are narrower or sparser). Returns the runs.
    """
    g = gray.astype(np.int16)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bg = np.bincount(border, minlength=256).argmax()
    content = np.abs(g - bg) > 24
    frac = content.mean(axis=0)
    cols = frac > 0.15
    runs, start = [], None
    for x, c in enumerate(list(cols) + [False]):
        if c and start is None:
            start = x
        elif not c and start is not None:
            if x - start >= max(8, 0.04 * g.shape[1]):
                runs.append((start, x))
            start = None
    return runs, float(content.mean())
