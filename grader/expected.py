"""The expected values, computed by the judge itself (trusted side; never touches submission code).

Everything a check compares a submission with comes from here: phantom inputs, the grader's networks
(grader/nets.py) in a given state, the training steps the handout describes (Adam written out by its
update rule: constructing torch.optim.Adam the first time costs seconds of imports), once per
accepted order of updates, and the analysis of Step 5's figure. The kit's data/phantoms.py is loaded
by file path for the phantom images.
"""
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from grader import nets

KIT = Path(__file__).resolve().parents[1]
PHANTOMS = KIT / "data" / "phantoms.py"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


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
    return nets.Generator(), nets.Discriminator()


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
# Step 4: the expected training steps
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


# The bugs Step 4 recognises by recomputing them (the feedback then names the bug): each is the handout's
# step with one change. "lam" is filled in by the check (an L1 weight estimated from the loss value).
G_VARIANTS = {
    "g_adv_detached": {"g_adv_detach": True},   # loss_G's adversarial term on fake.detach()
    "g_l1_detached": {"g_l1_detach": True},     # loss_G's L1 term on fake.detach()
    "g_target_zeros": {"g_target": 0.0},        # G's adversarial target 0 instead of 1
    "l1_against_t1": {"l1_target": "t1"},      # L1 between the fake and the input T1
}
D_VARIANTS = {
    "d_targets_swapped": {"d_real": 0.0, "d_fake": 1.0},
    "d_fake_target_ones": {"d_fake": 1.0},
    "d_real_target_zeros": {"d_real": 0.0},
    "d_no_half": {"d_scale": 1.0},
    "d_no_zero_grad": {"d_zero_grad": False},   # optimizer_D.zero_grad() missing (G->D: loss_G left grads on D)
}


def expected_step(G, D, t1, t2, opt_g, opt_d, order, lam=100.0, g_adv_detach=False, g_l1_detach=False,
                  g_target=1.0, l1_target="t2", d_real=1.0, d_fake=0.0, d_scale=0.5, d_zero_grad=True):
    """One training step as the handout describes it (keyword arguments: one classic bug each)."""
    bce, l1 = nn.BCELoss(), nn.L1Loss()

    def g_update(fake):
        pf = D(t1, fake.detach() if g_adv_detach else fake)
        loss_g = bce(pf, torch.full_like(pf, g_target)) + lam * l1(fake.detach() if g_l1_detach else fake,
                                                                   t2 if l1_target == "t2" else t1)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return loss_g.item()

    def d_update(fake):
        pr = D(t1, t2)
        pf = D(t1, fake.detach())
        loss_d = d_scale * (bce(pr, torch.full_like(pr, d_real)) + bce(pf, torch.full_like(pf, d_fake)))
        if d_zero_grad:
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


def expected_steps(state, t1, t2, steps, order, **variant):
    """`steps` training steps of the grader's networks from `state`, in `order` ("G->D" or "D->G"):
    a snapshot after each step (losses, G/D parameters, gradients left on G). `variant`: keyword
    arguments of expected_step (lam, or one classic bug)."""
    G, D = nets.Generator(), nets.Discriminator()
    load_state(G, state, "G.")
    load_state(D, state, "D.")
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    t1, t2 = torch.from_numpy(t1), torch.from_numpy(t2)
    snaps = []
    for s in range(steps):
        i = s % t1.shape[0]
        lg, ld = expected_step(G, D, t1[i:i + 1], t2[i:i + 1], opt_g, opt_d, order, **variant)
        snaps.append({"loss_G": lg, "loss_D": ld,
                      "G": {n: p.detach().numpy().copy() for n, p in G.named_parameters()},
                      "D": {n: p.detach().numpy().copy() for n, p in D.named_parameters()},
                      "gradG": {n: p.grad.numpy().copy() for n, p in G.named_parameters() if p.grad is not None}})
    return snaps


def loss_terms(state, t1, t2, d_params=None):
    """The pieces of the first step's losses, computed from `state` on pair 0 (train mode, as the step
    runs): BCE of D on the real and the fake pair against 1 and 0, and L1 of the fake against T2 and
    T1. `d_params`: D's parameters to use instead (D after its update, for loss_G in the D->G order)."""
    G, D = nets.Generator(), nets.Discriminator()
    load_state(G, state, "G.")
    load_state(D, state, "D.")
    if d_params is not None:
        load_state(D, d_params, "")
    x, y = torch.from_numpy(t1[:1]), torch.from_numpy(t2[:1])
    bce, l1 = nn.BCELoss(), nn.L1Loss()
    with torch.no_grad():
        fake = G(x)
        pf, pr = D(x, fake), D(x, y)
        return {"fake_1": bce(pf, torch.ones_like(pf)).item(), "fake_0": bce(pf, torch.zeros_like(pf)).item(),
                "real_1": bce(pr, torch.ones_like(pr)).item(), "real_0": bce(pr, torch.zeros_like(pr)).item(),
                "l1_t2": l1(fake, y).item(), "l1_t1": l1(fake, x).item()}


def rel_diff(got, want, base=None):
    """||(got-base) - (want-base)|| / ||want-base|| over all tensors of two name->array dicts."""
    num = den = 0.0
    for n, r in want.items():
        s = got.get(n)
        if s is None or s.shape != r.shape or not np.all(np.isfinite(s)):
            return float("inf")  # a NaN or inf never matches (NaN < tol would be False, but NaN > tol too)
        b = base[n] if base is not None else 0.0
        num += float(np.sum((s.astype(np.float64) - r) ** 2))
        den += float(np.sum((r.astype(np.float64) - b) ** 2))
    return (num ** 0.5) / (den ** 0.5 + 1e-30)


def close(a, b, rel=1e-4, abs_=1e-5):
    return a is not None and bool(np.isfinite(a)) and abs(a - b) <= abs_ + rel * abs(b)


def finite(x):
    """True when x is a number or an array of numbers with no NaN or inf."""
    try:
        return x is not None and bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))
    except (TypeError, ValueError):
        return False


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


def _runs(mask, min_len=1):
    """[start, stop) runs of True in a 1-D boolean array, at least min_len long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def panel_boxes(gray):
    """For each of the three panel columns of a figure, the image boxes (y0, y1, x0, x1) in it, top
    first (one per figure row), or None when there are not three columns.

    Columns come from panel_columns (or thirds of one run when the panels touch). Rows: imshow keeps
    square pixels, so each panel's image is about as tall as it is wide; it is the run of rows, in
    the panel's columns, with content (titles and tick labels are shorter runs), widened to the
    square when the image's own top or bottom rows look like background.
    """
    runs, _ = panel_columns(gray)
    if len(runs) == 1:
        x0, x1 = runs[0]
        w = (x1 - x0) / 3
        runs = [(int(round(x0 + k * w)), int(round(x0 + (k + 1) * w))) for k in range(3)]
    if len(runs) != 3:
        return None
    return _column_boxes(gray, runs)


def _column_boxes(gray, runs):
    g = gray.astype(np.int16)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bg = np.bincount(border, minlength=256).argmax()
    content = np.abs(g - bg) > 24
    boxes = []
    for x0, x1 in runs:
        w = x1 - x0
        rows = _runs(content[:, x0:x1].mean(axis=1) > 0.15)
        if not rows:
            return None
        # One box per image row of the figure (several when visualize draws several slices), top first.
        tall = [r for r in rows if r[1] - r[0] >= 0.8 * w] or [max(rows, key=lambda r: r[1] - r[0])]
        column = []
        for y0, y1 in tall:
            if y1 - y0 < 0.9 * w:  # background-coloured rows inside the image: centre a square
                c = (y0 + y1) // 2
                y0, y1 = max(0, c - w // 2), min(g.shape[0], c - w // 2 + w)
            column.append((y0, y1, x0, x1))
        boxes.append(column)
    return boxes


def all_boxes(gray):
    """Every image box of a figure whatever its number of columns (also 1, 2 or 4), and the thirds and
    halves of a single run (panels drawn edge to edge): where the judge looks for G's output."""
    runs, _ = panel_columns(gray)
    sets = [runs]
    if len(runs) == 1:
        x0, x1 = runs[0]
        for k in (2, 3):
            w = (x1 - x0) / k
            sets.append([(int(round(x0 + j * w)), int(round(x0 + (j + 1) * w))) for j in range(k)])
    out = []
    for rs in sets:
        cols = _column_boxes(gray, rs) if rs else None
        out += [b for col in (cols or []) for b in col]
    # A panel whose image is mostly the background's colour (a white, saturated output on a white
    # figure) is not found as a column: take the box halfway between two equal boxes of one row.
    for a in list(out):
        for c in list(out):
            if a[:2] == c[:2] and a[3] - a[2] == c[3] - c[2] and c[2] - a[2] > 1.5 * (a[3] - a[2]):
                x0 = (a[2] + c[2]) // 2
                mid = (a[0], a[1], x0, x0 + a[3] - a[2])
                if mid not in out:
                    out.append(mid)
    return out


def shows(gray, image, others):
    """(similarity, box) of the box of the figure that best shows `image`, counted only where it is
    PANEL_MARGIN above that box's similarity with every image in `others` (T1, T2: a panel that shows
    them does not show G's output). (0.0, None) when no box does."""
    best = (0.0, None)
    for y0, y1, x0, x1 in all_boxes(gray):
        crop = gray[y0:y1, x0:x1]
        sim = panel_similarity(crop, image)
        if sim >= PANEL_MATCH and sim >= max((panel_similarity(crop, o) for o in others), default=0.0) + PANEL_MARGIN:
            best = max(best, (sim, (y0, y1, x0, x1)), key=lambda t: t[0])
    return best


def clipped_range(crop, image, n=128):
    """Which part of [-1, 1] a panel that shows `image` draws as one flat colour: "dark" when, where the
    image is below -0.25, the panel barely varies (its 20-80 % percentile range is under 3 grey levels
    and under a tenth of its range elsewhere) although the image varies there by at least 0.3: e.g.
    imshow(x, vmin=0, vmax=1) of a [-1, 1] image, or an RGB float image, which imshow clips to [0, 1];
    "bright" likewise above 0.25; None when the panel shows the whole range."""
    n = min(n, *np.shape(crop))
    if n < 16:
        return None
    p, r = _grid(crop, n).ravel(), _grid(image, n).ravel()
    spread = lambda a: float(np.percentile(a, 80) - np.percentile(a, 20))
    for name, part in (("dark", r < -0.25), ("bright", r > 0.25)):
        rest = ~part
        if part.sum() < 0.05 * r.size or rest.sum() < 0.05 * r.size or spread(r[part]) < 0.1:
            continue
        if spread(p[part]) < min(3.0, 0.1 * spread(p[rest])) or spread(p[part]) < 0.02 * spread(p[rest]):
            return name
    return None


def _ranks(a):
    a = np.asarray(a, np.float64).ravel()
    order = np.argsort(a, kind="stable")
    r = np.empty(a.size)
    r[order] = np.arange(a.size)
    # ties (clipped by vmin/vmax, flat background) share their mean rank
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def _grid(a, n):
    """Block means of a 2-D array on an n x n grid (image and figure pixels need not divide)."""
    a = np.asarray(a, np.float64)
    ys = np.linspace(0, a.shape[0], n + 1).astype(int)
    xs = np.linspace(0, a.shape[1], n + 1).astype(int)
    c = np.cumsum(np.cumsum(np.pad(a, ((1, 0), (1, 0))), axis=0), axis=1)
    s = c[ys[1:]][:, xs[1:]] - c[ys[:-1]][:, xs[1:]] - c[ys[1:]][:, xs[:-1]] + c[ys[:-1]][:, xs[:-1]]
    return s / np.outer(np.diff(ys), np.diff(xs))


PANEL_MATCH = 0.8  # panel_similarity of the middle panel with the image it must show ...
PANEL_MARGIN = 0.2  # ... and at least this much above its similarity with any other candidate image


def panel_similarity(crop, image, n=64, bins=16):
    """How well a figure panel (gray pixels) shows an image, in [0, 1], on an n x n grid of block means.

    The larger of |Spearman correlation| (indifferent to any monotonic colour map: gray, gray_r,
    viridis, bone, ... and to vmin/vmax clipping) and the correlation ratio of the panel given the
    image's value in `bins` quantile bins (any colour map at all, e.g. jet, is a function of the value).
    The coarse grid absorbs interpolation and a pixel or two of cropping error.
    """
    n = min(n, *np.shape(crop))  # a small panel: a coarser grid (every block needs a pixel)
    if n < 16:
        return 0.0
    p, r = _grid(crop, n).ravel(), _grid(image, n).ravel()
    a, b = _ranks(p), _ranks(r)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    rho = abs(float(np.corrcoef(a, b)[0, 1]))
    edges = np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1])
    idx = np.searchsorted(edges, r)
    means = np.bincount(idx, weights=p, minlength=bins) / np.maximum(np.bincount(idx, minlength=bins), 1)
    eta2 = 1.0 - float(((p - means[idx]) ** 2).sum()) / float(((p - p.mean()) ** 2).sum())
    return max(rho, max(0.0, eta2) ** 0.5)


def visualize_generator():
    """The G that Step 5 hands to visualize: its eval-mode output looks like none of T1, the real T2
    or its own train-mode output, so the figure's middle panel tells which one was drawn.

    Random 1x1 channel mixes with a bilinear 4x4 kernel in both ConvTranspose layers (no checkerboard:
    a smooth image the figure renders faithfully), BatchNorm running statistics far from any batch's,
    and the last layer's gain set so that the output on the Step 5 slice spans most of (-1, 1)
    without saturating. Seeds chosen (once, by search) for the least resemblance to T1, T2 and the
    train-mode output.
    """
    G, _ = new_nets(12)
    g = torch.Generator().manual_seed(1012)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 4
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, nn.ConvTranspose2d):
                cin, cout = m.weight.shape[:2]
                m.weight.copy_(torch.randn(cin, cout, generator=g)[:, :, None, None] / cin ** 0.5 * torch.outer(k, k))
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_((torch.rand(m.num_features, generator=g) * 2 - 1) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
        t1, _ = visualize_slices()
        G.eval()
        pre = torch.atanh(G(torch.from_numpy(t1[:1])).clamp(-0.999, 0.999))
        last = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
        gain = 0.45 / float(pre.std())
        last.weight.mul_(gain)
        last.bias.fill_(-float(pre.mean()) * gain)
    return G


def visualize_slices():
    """(t1, t2) of Step 5's dataset; item 0 is the slice the figure must show."""
    return phantom_pairs(2, seed=50)


def g_outputs(state, x):
    """Eval-mode and train-mode (batch statistics) outputs of the grader's G in `state` on batch x."""
    G = nets.Generator()
    load_state(G, state, "G.")
    x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    with torch.no_grad():
        G.eval()
        ev = G(x).numpy()
        G.train()
        tr = G(x).numpy()
    return ev, tr


# ----------------------------------------------------------------------------------------------
# Steps 1 and 2: per-run secret inputs and what the judge can verify about the replies
# ----------------------------------------------------------------------------------------------

def secret_rng():
    """A generator seeded from os.urandom in the judge: the inputs of Steps 1-2 differ in every run, so
    no reply can be prepared from public constants (the scores do not depend on the draw)."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def dihedral(a, k):
    """The k-th (0..7) of the 8 flips/rotations of the last two axes; 0 is the identity, 1 a left-right
    flip, 2 an up-down flip."""
    a = np.asarray(a)
    if k >= 4:
        a = np.swapaxes(a, -1, -2)
    if k % 4 in (1, 3):
        a = a[..., :, ::-1]
    if k % 4 in (2, 3):
        a = a[..., ::-1, :]
    return a


DIHEDRAL_ZH = ["未翻转", "左右翻转", "上下翻转", "旋转 180°", "转置", "转置后左右翻转", "转置后上下翻转", "转置后旋转 180°"]
DIHEDRAL_EN = ["not flipped", "flipped left-right", "flipped up-down", "rotated 180°", "transposed",
               "transposed and flipped left-right", "transposed and flipped up-down", "transposed and rotated 180°"]


def corr(a, b):
    """Pearson correlation of two arrays of the same size (0 when either is constant or not finite):
    indifferent to any positive scale and offset, so [0,1] instead of [-1,1] still matches."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size or a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / d if d > 0 else 0.0


def as_image(arr, size=256):
    """An item part as a 2-D (size, size) float64 image, or None when it does not hold exactly one."""
    if arr is None or np.asarray(arr).size != size * size:
        return None
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        return None
    return a.reshape(size, size).astype(np.float64)


def identify(img, candidates, grid=16, coarse=0.9, fine=0.98):
    """Which candidate image (name -> 2-D array) `img` shows, and in which of the 8 orientations, up to
    any positive scale and offset of the values: (name, k, correlation), or None. Found on block means
    (a `grid` x `grid` grid), confirmed on every pixel."""
    if img is None or not np.isfinite(img).all():
        return None
    small = _grid(img, grid)
    best = None
    for name, cand in candidates.items():
        cs = _grid(cand, grid)
        for k in range(8):
            c = corr(small, dihedral(cs, k))
            if best is None or c > best[2]:
                best = (name, k, c)
    if best is None or best[2] < coarse:
        return None
    c = corr(img, dihedral(candidates[best[0]], best[1]))
    return (best[0], best[1], c) if c >= fine else None


def block_image(rng, palette, grid=16, size=256):
    """A size x size uint8 image of grid x grid square blocks whose values are a random permutation of
    `palette` (grid*grid values): every such image has the same histogram, and two of them (or one and
    a flip of another) are nearly uncorrelated."""
    vals = rng.permutation(np.asarray(palette, np.uint8)).reshape(grid, grid)
    b = size // grid
    return np.kron(vals, np.ones((b, b), np.uint8)).astype(np.uint8)


def random_names(rng, n, used=()):
    """n distinct random lower-case file stems (4-9 letters and digits), sorted."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    out = set()
    while len(out) < n:
        s = "".join(rng.choice(letters, int(rng.integers(4, 10))))
        if s not in used:
            out.add(s)
    return sorted(out)


def shifted_interior(a, b, shift, margin):
    """(b's interior, a's interior moved by `shift`) over the last two axes: for a convolutional network
    f, f(roll(x, shift)) equals roll(f(x), shift) away from the borders and the seam."""
    h, w = a.shape[-2:]
    return (b[..., shift + margin:h - margin, shift + margin:w - margin],
            a[..., margin:h - margin - shift, margin:w - margin - shift])
