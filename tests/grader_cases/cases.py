"""Submissions for tests/test_grader.py, built at test time from the reference experiment6.py.

A variant is the reference with exact text substitutions (old -> new). Every `old` must occur exactly
once in the reference, so an edit to experiment6.py makes the suite fail loudly instead of silently
testing an unchanged file.
"""

POINTS = {"step1": 15, "step2": 20, "step3": 10, "step4": 35, "step5": 20}
STEPS = list(POINTS)


def substitute(source, subs):
    for old, new in subs:
        n = source.count(old)
        assert n == 1, f"snippet occurs {n} times in experiment6.py (expected exactly 1): {old!r}"
        source = source.replace(old, new)
    return source


def blank_template(source):
    """The student template of `source`: every solution region replaced by its bilingual prompt and a
    NotImplementedError("Step N: ...") stub, by handout/make_student.py itself (no second parser of
    the ### BEGIN/END SOLUTION markers here)."""
    from handout import make_student

    return make_student.build_template(source)


def lost(*check_ids):
    """The exact outcome of a variant: these checks score 0, every other check keeps its points."""
    return {c: 0 for c in check_ids}


# Single-bug variants: name -> (exact outcome: the checks it loses, {} for a correct variant; subs).
# One bug costs one check: a wrong loss costs its value check (4.2/4.3) only, since 4.4-4.7 are judged
# against one correct step on the loss 4.2/4.3 identified. A missing optimizer_D.step() costs 4.1 and 4.5;
# a visualize that saves nothing also loses 5.6, whose points rest on a figure that shows G's output.
_TRAIN_STEP_BODY_OLD = """    fake_t2 = G(t1)
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
"""
# pix2pix's order (D first, then G): a correct solution the handout did not choose.
_TRAIN_STEP_D_FIRST = """    fake_t2 = G(t1)
    pred_real = D(t1, t2)
    loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))
    pred_fake = D(t1, fake_t2.detach())
    loss_fake = criterion_GAN(pred_fake, torch.zeros_like(pred_fake))
    loss_D = 0.5 * (loss_real + loss_fake)
    optimizer_D.zero_grad()
    loss_D.backward()
    optimizer_D.step()

    pred_fake = D(t1, fake_t2)
    loss_G = criterion_GAN(pred_fake, torch.ones_like(pred_fake)) + lambda_l1 * criterion_L1(fake_t2, t2)
    optimizer_G.zero_grad()
    loss_G.backward()
    optimizer_G.step()
"""

VARIANTS = {
    # Step 1
    "s1_unsorted": (lost("1.6"), [
        ("self.t1_paths = sorted(os.path.join(t1_dir, f)", "self.t1_paths = list(os.path.join(t1_dir, f)"),
        ("self.t2_paths = sorted(os.path.join(t2_dir, f)", "self.t2_paths = list(os.path.join(t2_dir, f)"),
    ]),
    "s1_no_convert_L": (lost("1.4"), [
        ('t1_img = Image.open(self.t1_paths[idx]).convert("L")', "t1_img = Image.open(self.t1_paths[idx])"),
        ('t2_img = Image.open(self.t2_paths[idx]).convert("L")', "t2_img = Image.open(self.t2_paths[idx])"),
    ]),
    "s1_no_resize": (lost("1.5"), [("            transforms.Resize((256, 256)),\n", "")]),
    "s1_no_normalize": (lost("1.3"), [
        ("            transforms.Normalize(mean=[0.5], std=[0.5]),     # [0, 1] -> [-1, 1], matches Tanh\n", ""),
    ]),
    # Step 2
    "s2_d_stride2": (lost("2.3"), [
        ("nn.Conv2d(128, 1, 4, 1, 1), nn.Sigmoid()", "nn.Conv2d(128, 1, 4, 2, 1), nn.Sigmoid()"),
    ]),
    "s2_d_ignores_x1": (lost("2.5"), [("x = torch.cat([x1, x2], dim=1)", "x = torch.cat([x2, x2], dim=1)")]),
    "s2_no_tanh": (lost("2.2"), [
        ("nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),", "nn.ConvTranspose2d(64, 1, 4, 2, 1),")]),
    # Step 3
    "s3_sgd": (lost("3.3"), [
        ("optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)",
         "optimizer_G = torch.optim.SGD(G.parameters(), lr=lr)"),
        ("optimizer_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)",
         "optimizer_D = torch.optim.SGD(D.parameters(), lr=lr)"),
    ]),
    "s3_wrong_betas": (lost("3.3"), [
        ("optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)",
         "optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.999))"),
        ("optimizer_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)",
         "optimizer_D = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.999))"),
    ]),
    "s3_mse": (lost("3.2"), [("criterion_L1 = nn.L1Loss()", "criterion_L1 = nn.MSELoss()")]),
    # optimizer_G also holds D's parameters: its steps on known gradients are still right (3.3), but
    # stepped alone it moves D too (3.5, judged from the arrays, not from its reported parameter list)
    "s3_opt_G_holds_D": (lost("3.5"), [
        ("optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)",
         "optimizer_G = torch.optim.Adam(list(G.parameters()) + list(D.parameters()), lr=lr, betas=betas)")]),
    # Step 4
    "s4_lambda10": (lost("4.2"), [
        ("+ lambda_l1 * criterion_L1(fake_t2, t2)", "+ 10.0 * criterion_L1(fake_t2, t2)")]),
    "s4_flipped_d_targets": (lost("4.3"), [
        ("loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))",
         "loss_real = criterion_GAN(pred_real, torch.zeros_like(pred_real))"),
        ("loss_fake = criterion_GAN(pred_fake, torch.zeros_like(pred_fake))",
         "loss_fake = criterion_GAN(pred_fake, torch.ones_like(pred_fake))"),
    ]),
    "s4_l1_against_t1": (lost("4.2"), [
        ("lambda_l1 * criterion_L1(fake_t2, t2)", "lambda_l1 * criterion_L1(fake_t2, t1)")]),
    "s4_no_half": (lost("4.3"), [
        ("loss_D = 0.5 * (loss_real + loss_fake)", "loss_D = (loss_real + loss_fake)")]),
    "s4_no_zero_grad_G": (lost("4.6"), [
        ("    optimizer_G.zero_grad()\n    loss_G.backward()", "    loss_G.backward()")]),
    "s4_no_D_step": (lost("4.1", "4.5"), [
        ("    loss_D.backward()\n    optimizer_D.step()\n", "    loss_D.backward()\n")]),
    "s4_no_detach": (lost("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8"), [
        ("pred_fake = D(t1, fake_t2.detach())", "pred_fake = D(t1, fake_t2)")]),
    # Returning tensors is a hint, not a point: that a value is a Python float is the worker's word
    # (grader/protocol.py, reported), the values themselves (float() of each) are what 4.1 checks.
    "s4_returns_tensors": ({}, [("return loss_G.item(), loss_D.item()", "return loss_G, loss_D")]),
    "s4_d_first_correct": ({}, [(_TRAIN_STEP_BODY_OLD, _TRAIN_STEP_D_FIRST)]),
    # Step 5
    "s5_two_panels": (lost("5.3"), [
        ("rows.append([t1, fake, t2])", "rows.append([t1, fake])"),
        ("plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows))", "plt.subplots(len(rows), 2, figsize=(6, 3 * len(rows))"),
    ]),
    "s5_writes_nothing": (lost("5.1", "5.2", "5.3", "5.4", "5.6"), [
        ("    fig.savefig(path, dpi=100)\n    plt.close(fig)\n    G.train()\n    return path\n",
         "    plt.close(fig)\n    G.train()\n    return None\n"),
    ]),
    "s5_no_eval": (lost("5.4"), [("    G.eval()  # BatchNorm uses its running statistics at inference\n", "")]),
    # Noise that must not cost anything: a warning and stderr output at import.
    "noisy_import": ({}, [
        ("DEFAULT_DATA_ROOT = os.path.join(", 'import warnings\nwarnings.warn("student warning at import")\n'
         'print("student noise on stderr / 学生输出", file=sys.stderr)\nDEFAULT_DATA_ROOT = os.path.join('),
    ]),
}

# Where hostile code goes: at import (appended at the end of the file) or at the start of a function body.
TRAIN_STEP_START = ("    ### BEGIN SOLUTION\n    # --- Generator: fool D on (t1, G(t1)) and stay close to the real T2 ---\n")
G_FORWARD_START = ("    def forward(self, x):\n        ### BEGIN SOLUTION\n        return self.model(x)\n")
BUILD_LOSSES_START = ('    """Returns (criterion_GAN, criterion_L1): binary cross-entropy and mean absolute error."""\n'
                      "    ### BEGIN SOLUTION\n")


def insert_after(anchor, code, indent):
    body = "".join(indent + line + "\n" if line else "\n" for line in code.strip("\n").splitlines())
    return [(anchor, anchor + body)]


def insert_before(anchor, code, indent):
    """Hostile code as the first statements of the function whose `def` line starts `anchor`."""
    body = "".join(indent + line + "\n" if line else "\n" for line in code.strip("\n").splitlines())
    head, rest = anchor.split("\n", 1)
    return [(anchor, head + "\n" + body + rest)]


FLOOD = 'import sys as _sys\nfor _ in range(50):\n    _sys.stdout.write("x" * 1_000_000 + "\\n")\n'

CHEAT_PATCHES = '''
import sys as _sys, types as _types
import numpy as _np
import torch as _torch
_torch.allclose = lambda *a, **k: True
_torch.equal = lambda *a, **k: True
_torch.Tensor.allclose = lambda *a, **k: True
_torch.Tensor.equal = lambda *a, **k: True
_np.allclose = lambda *a, **k: True
_np.array_equal = lambda *a, **k: True
_torch.testing.assert_close = lambda *a, **k: None
_np.testing.assert_allclose = lambda *a, **k: None
class _Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
_fake = _types.ModuleType("pytest")
_fake.approx = lambda *a, **k: _Yes()
_fake.raises = lambda *a, **k: None
_sys.modules["pytest"] = _fake
'''


def forger_code(out_dir, grader_dir, safe_root):
    """Overwrite every results.json / grades.csv it can reach with full marks, and tamper with the grader.

    It is told the real --out and grader folders (a worst case: a student who read the TA's command line)
    and also tries the folders it was run from, but never writes outside safe_root (the test's own
    temporary folder), so the test cannot damage anything else on the machine.
    """
    return f'''
def _forge():
    import csv, json, os, pathlib, sys
    full = {{"score": 100.0, "tests": [{{"name": "forged", "score": 100.0, "max_score": 100.0,
             "status": "passed", "output": "", "visibility": "visible"}}]}}
    targets = [pathlib.Path({str(out_dir)!r})]
    here = pathlib.Path.cwd()
    targets += [here, here.parent]
    try:
        targets.append(pathlib.Path(os.readlink("/proc/%d/cwd" % os.getppid())))
    except OSError:
        pass
    safe = os.path.realpath({str(safe_root)!r}) + os.sep
    targets = [t for t in targets if os.path.realpath(t).startswith(safe)]
    for base in targets:
        for p in [base / "grading", base]:
            try:
                p.mkdir(parents=True, exist_ok=True)
                (p / "results.json").write_text(json.dumps(full))
                with open(p / "grades.csv", "w", newline="") as f:
                    csv.writer(f).writerows([["student", "total", "step1", "step2", "step3", "step4", "step5",
                                              "status"], ["forger", 100, 15, 20, 10, 35, 20, "ok"]])
            except OSError:
                pass
        try:
            for root, dirs, files in os.walk(base):
                if root.count(os.sep) - str(base).count(os.sep) > 3:
                    dirs[:] = []
                for name in files:
                    if name == "results.json":
                        pathlib.Path(root, name).write_text(json.dumps(full))
                    elif name in ("grades.csv", "feedback.md"):
                        pathlib.Path(root, name).write_text("student,total\\nforger,100\\n")
        except OSError:
            pass
    # Tamper with the grader package: a marker file and an appended line in each of its modules.
    dirs = {{pathlib.Path({str(grader_dir)!r})}}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None) or ""
        if "grader" in f:
            dirs.add(pathlib.Path(f).parent)
    for d in dirs:
        if not os.path.realpath(d).startswith(safe):
            continue
        try:
            (d / "PWNED_BY_STUDENT").write_text("x")
            for py in d.rglob("*.py"):
                with open(py, "a") as f:
                    f.write("\\n# tampered by a student submission\\n")
        except OSError:
            pass


_forge()
'''


# Loads experiment6.py from wherever the grader's own modules live (the kit root, next to grader/)
# and uses its Step 1-5 solutions in place of the submission's own (blank) ones.
STEAL_REFERENCE = '''
def _steal():
    import importlib.util, pathlib, sys
    me = pathlib.Path(__file__).resolve()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        here = pathlib.Path(f).resolve().parent
        for cand in (here / "experiment6.py", here.parent / "experiment6.py", here.parent.parent / "experiment6.py"):
            if cand.is_file() and cand != me:
                spec = importlib.util.spec_from_file_location("_stolen_reference", cand)
                ref = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(ref)
                for name in ("PairedMedicalDataset", "Generator", "Discriminator", "build_losses",
                             "build_optimizers", "train_step", "visualize"):
                    globals()[name] = getattr(ref, name)
                return


_steal()
'''


# ---------------------------------------------------------------------------------------------
# A second, independent correct solution: every solution region of experiment6.py written again in
# another style (same behaviour, other structure, names and calls). For the similarity check, it is
# what a classmate who did not copy hands in.
# ---------------------------------------------------------------------------------------------

def replace_solutions(source, codes):
    """The reference with each solution region (BEGIN/END SOLUTION) replaced by codes[owner], where owner
    is the qualified name of the function holding the region (regions without an entry are kept)."""
    import ast
    import textwrap

    from handout import make_student as ms

    lines = source.splitlines()
    regions = ms.find_regions(lines, ast.parse(source))
    assert set(codes) <= {r["owner"] for r in regions}, sorted(set(codes) - {r["owner"] for r in regions})
    for r in reversed(regions):
        code = codes.get(r["owner"])
        if code is None:
            continue
        indent = ms.indent_of(lines[r["begin"]])
        lines[r["begin"]:r["end"] + 1] = [indent + ln if ln.strip() else ""
                                          for ln in textwrap.dedent(code).strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


REWRITE = {
    "PairedMedicalDataset.__init__": '''
def _pngs(folder):
    names = [n for n in os.listdir(folder) if n.lower().endswith(".png")]
    names.sort()
    return [os.path.join(folder, n) for n in names]

self.t1_paths, self.t2_paths = _pngs(t1_dir), _pngs(t2_dir)
steps = [transforms.Resize((256, 256)), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
self.transform = transforms.Compose(steps)
''',
    "PairedMedicalDataset.__len__": '''
n1, n2 = len(self.t1_paths), len(self.t2_paths)
return n1 if n1 < n2 else n2
''',
    "PairedMedicalDataset.__getitem__": '''
pair = []
for paths in (self.t1_paths, self.t2_paths):
    with Image.open(paths[idx]) as im:
        pair.append(self.transform(im.convert("L")))
return tuple(pair)
''',
    "Generator.__init__": '''
layers = [nn.Conv2d(1, 64, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(negative_slope=0.2)]
layers += [nn.Conv2d(64, 128, kernel_size=4, stride=2, padding=1), nn.BatchNorm2d(128),
           nn.LeakyReLU(negative_slope=0.2)]
layers += [nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU()]
layers += [nn.ConvTranspose2d(64, 1, kernel_size=4, stride=2, padding=1), nn.Tanh()]
self.model = nn.Sequential(*layers)
''',
    "Generator.forward": '''
out = self.model(x)
return out
''',
    "Discriminator.__init__": '''
blocks = []
blocks.append(nn.Conv2d(2, 64, kernel_size=4, stride=2, padding=1))
blocks.append(nn.LeakyReLU(negative_slope=0.2))
blocks.append(nn.Conv2d(64, 128, kernel_size=4, stride=2, padding=1))
blocks.append(nn.BatchNorm2d(128))
blocks.append(nn.LeakyReLU(negative_slope=0.2))
blocks.append(nn.Conv2d(128, 1, kernel_size=4, stride=1, padding=1))
blocks.append(nn.Sigmoid())
self.model = nn.Sequential(*blocks)
''',
    "Discriminator.forward": '''
pair = torch.cat((x1, x2), 1)
out = self.model(pair)
return out
''',
    "build_losses": '''
return nn.BCELoss(), nn.L1Loss()
''',
    "build_optimizers": '''
make = lambda net: torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
return make(G), make(D)
''',
    "train_step": '''
generated = G(t1)
# generator
optimizer_G.zero_grad()
verdict = D(t1, generated)
adv = criterion_GAN(verdict, torch.ones_like(verdict))
pixel = criterion_L1(generated, t2)
g_total = adv + lambda_l1 * pixel
g_total.backward()
optimizer_G.step()
# discriminator
optimizer_D.zero_grad()
on_real = D(t1, t2)
on_fake = D(t1, generated.detach())
d_total = (criterion_GAN(on_real, torch.ones_like(on_real))
           + criterion_GAN(on_fake, torch.zeros_like(on_fake))) / 2
d_total.backward()
optimizer_D.step()
return float(g_total.item()), float(d_total.item())
''',
    "visualize": '''
G.eval()
n = len(indices)
fig = plt.figure(figsize=(9, 3 * n))
labels = ("T1", "fake T2", "T2")
with torch.no_grad():
    for row, index in enumerate(indices):
        source, target = dataset[index]
        output = G(source[None].to(device))[0].float().cpu()
        for col, picture in enumerate((source, output, target)):
            ax = plt.subplot(n, 3, row * 3 + col + 1)
            shown = (picture.squeeze(0).clamp(-1, 1) + 1) * 0.5
            ax.imshow(shown.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(labels[col])
            ax.set_axis_off()
if title is not None:
    plt.suptitle(title)
plt.tight_layout()
plt.savefig(path)
plt.close(fig)
G.train()
return path
''',
}


# ---------------------------------------------------------------------------------------------
# Steps 1-2: one-bug variants with the EXACT checks they must lose (all others full) and words the
# hint must contain (tests/test_grader_steps12.py). Each bug is written differently from VARIANTS'.
# name -> (checks lost, words of the hint, subs)
# ---------------------------------------------------------------------------------------------
_S1_T1_PATHS = 'self.t1_paths = sorted(os.path.join(t1_dir, f) for f in os.listdir(t1_dir)\n                               if f.lower().endswith(".png"))'
_S1_T2_PATHS = 'self.t2_paths = sorted(os.path.join(t2_dir, f) for f in os.listdir(t2_dir)\n                               if f.lower().endswith(".png"))'
_S1_RETURN = "return self.transform(t1_img), self.transform(t2_img)"
_S1_NORMALIZE = "transforms.Normalize(mean=[0.5], std=[0.5]),     # [0, 1] -> [-1, 1], matches Tanh"
_S1_RESIZE = "transforms.Resize((256, 256)),"
_D_CONV2 = "nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),     # 128 -> 64"

STEP12_VARIANTS = {
    "s12_norm_identity": ({"1.3"}, ["Normalize", "[0, 1]"], [
        (_S1_NORMALIZE, "transforms.Normalize(mean=[0.0], std=[1.0]),")]),
    "s12_swap_return": ({"1.6"}, ["(T2, T1)"], [
        (_S1_RETURN, "return self.transform(t2_img), self.transform(t1_img)")]),
    "s12_independent_flips": ({"1.6"}, ["independently", "flip"], [
        (_S1_RESIZE, "transforms.Resize((256, 256)), transforms.RandomHorizontalFlip(p=0.5),")]),
    "s12_t1_twice": ({"1.6"}, ["both elements", "T1"], [(_S1_RETURN, "return self.transform(t1_img), self.transform(t1_img)")]),
    "s12_len_of_t1": ({"1.1"}, ["min(len(self.t1_paths), len(self.t2_paths))"], [
        ("return min(len(self.t1_paths), len(self.t2_paths))", "return len(self.t1_paths)")]),
    "s12_len_max": ({"1.1"}, ["min(len(self.t1_paths), len(self.t2_paths))"], [
        ("return min(len(self.t1_paths), len(self.t2_paths))", "return max(len(self.t1_paths), len(self.t2_paths))")]),
    "s12_takes_every_file": ({"1.7"}, [".png", "Thumbs.db"], [
        (_S1_T1_PATHS, "self.t1_paths = sorted(os.path.join(t1_dir, f) for f in os.listdir(t1_dir))"),
        (_S1_T2_PATHS, "self.t2_paths = sorted(os.path.join(t2_dir, f) for f in os.listdir(t2_dir))")]),
    "s12_red_channel": ({"1.4"}, ["convert('L')"], [
        ('t1_img = Image.open(self.t1_paths[idx]).convert("L")', "t1_img = Image.open(self.t1_paths[idx]).split()[0]"),
        ('t2_img = Image.open(self.t2_paths[idx]).convert("L")', "t2_img = Image.open(self.t2_paths[idx]).split()[0]")]),
    "s12_center_crop": ({"1.5"}, ["cropping"], [(_S1_RESIZE, "transforms.CenterCrop(256),")]),
    "s12_resize_int": ({"1.5"}, ["Resize((256, 256))"], [(_S1_RESIZE, "transforms.Resize(256),")]),
    "s12_float64": ({"1.2"}, ["float64"], [(_S1_RETURN, "return self.transform(t1_img).double(), self.transform(t2_img).double()")]),
    "s12_g_sigmoid": ({"2.2"}, ["Sigmoid", "-1"], [
        ("nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),", "nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Sigmoid(),")]),
    "s12_g_leaky_last": ({"2.2"}, ["Tanh"], [
        ("nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),", "nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.LeakyReLU(0.2),")]),
    "s12_d_middle_stride1": ({"2.3"}, ["stride"], [(_D_CONV2, "nn.Conv2d(64, 128, 4, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),")]),
    "s12_d_no_sigmoid": ({"2.4"}, ["Sigmoid"], [
        ("nn.Conv2d(128, 1, 4, 1, 1), nn.Sigmoid(),", "nn.Conv2d(128, 1, 4, 1, 1),")]),
    "s12_d_x1_only": ({"2.5"}, ["x2", "torch.cat"], [("x = torch.cat([x1, x2], dim=1)", "x = torch.cat([x1, x1], dim=1)")]),
    "s12_g_detached_output": ({"2.6"}, ["detach"], [
        ("    def forward(self, x):\n        ### BEGIN SOLUTION\n        return self.model(x)\n",
         "    def forward(self, x):\n        ### BEGIN SOLUTION\n        return self.model(x).detach()\n")]),
    # correct, in another style: glob, and [-1, 1] by a Lambda instead of Normalize
    "s12_eq_glob_lambda": (set(), [], [
        ("DEFAULT_DATA_ROOT = os.path.join(", "import glob\nDEFAULT_DATA_ROOT = os.path.join("),
        (_S1_T1_PATHS, 'self.t1_paths = sorted(glob.glob(os.path.join(t1_dir, "*.png")))'),
        (_S1_T2_PATHS, 'self.t2_paths = sorted(glob.glob(os.path.join(t2_dir, "*.png")))'),
        (_S1_NORMALIZE, "transforms.Lambda(lambda t: t * 2 - 1),")]),
    "s12_d_first_layer_frozen": ({"2.6"}, ["requires_grad"], [
        (_D_CONV2 + "\n            nn.Conv2d(128, 1, 4, 1, 1), nn.Sigmoid(),  # 64 -> 63: one real/fake score per patch\n        )\n",
         _D_CONV2 + "\n            nn.Conv2d(128, 1, 4, 1, 1), nn.Sigmoid(),  # 64 -> 63: one real/fake score per patch\n        )\n"
         "        self.model[0].weight.requires_grad_(False)\n")]),
}

# The blank template plus, at import, handlers that replace the worker's Step 1-2 request handlers
# (found through sys.modules) with answers built from public constants: no lab code at all.
SELF_DESCRIPTION_SHIM = '''

def _shim():
    import sys
    import numpy as np
    worker = next((m for m in list(sys.modules.values()) if hasattr(m, "OPS") and hasattr(m, "op_dataset")), None)
    if worker is None:
        return
    tensor = lambda shape: {"type": "torch.Tensor", "dtype": "float32", "shape": list(shape),
                            "requires_grad": False, "device": "cpu"}
    img = -np.ones((1, 256, 256), np.float32)
    img[:, 128:, 128:] = 1.0
    img[:, :128, 128:] = np.linspace(-1, 1, 128, dtype=np.float32)

    def dataset(a):
        items, arrays = [], {}
        for r in range(a.get("reads", 1)):
            for i in a.get("indices", []):
                items.append({"read": r, "index": i, "item": {"type": "builtins.tuple", "len": 2},
                              "parts": [tensor(img.shape), tensor(img.shape)]})
                arrays[f"r{r}i{i}p0"] = img
                arrays[f"r{r}i{i}p1"] = img * 0.5
        arrays["len"] = np.array(max(len(a.get("indices", [])), 5))  # len travels as an array (grader/protocol.py)
        np.savez(a["out"], **arrays)
        return {"len_type": "builtins.int", "items": items}

    def networks(a):
        res, arrays = {}, {}
        for tag, shape in (("g", (4, 1, 256, 256)), ("d", (4, 1, 63, 63))):
            if a.get(tag.upper()):
                y = np.tanh(np.linspace(-3, 3, int(np.prod(shape)), dtype=np.float32)).reshape(shape)
                if tag == "d":
                    y = (y + 1.02) / 2.04
                    y[1] *= 0.9
                    y[2] *= 0.8
                for key, arr in ((tag, y), (tag + "_big", np.sign(y[:2]) if tag == "g" else y[:2])):
                    arrays[key] = arr.astype(np.float32)
                    res[key] = tensor(arr.shape)
        np.savez(a["out"], **arrays)
        return res

    def grads(a):
        shape = (1, 1, 256, 256) if a["net"] == "Generator" else (1, 1, 63, 63)
        names = ["model.0.weight", "model.0.bias"]
        arrays = {"y": np.zeros(shape, np.float32)}
        arrays.update({"p." + n: np.ones(3, np.float32) for n in names})
        np.savez(a["out"], **arrays)
        return {"output": tensor(shape), "params": names, "frozen": []}

    for name, f in (("dataset", dataset), ("networks", networks), ("grads", grads)):
        setattr(worker, "op_" + name, f)
        worker.OPS[name] = f


_shim()
'''
