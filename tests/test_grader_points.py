"""Every point is earned by the work: submissions written by someone who has read the grader lose the
points they forge, and correct submissions written with other ordinary habits keep all of them.

All of them are built from experiment6.py the way tests/grader_cases/cases.py builds the kit's
variants, and graded in the session's shared default-flag batch (tests/conftest.py `graded`, which
also holds the reference and test_grader.py's pix2pix-order variant); those that change one contract
function are packed with other files' variants of other parts (tests/grader_cases/combine.py). The
tests then read grades.csv / results.json. `python tests/test_grader_points.py DIR` writes the same submissions into
DIR (to grade them with another copy of the grader, e.g. for before/after figures).
"""
import sys
from pathlib import Path

import pytest

from conftest import ROOT, check_variant
from grader.rubric import CHECKS
from grader_cases import cases as C

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")

VIS_DEF = "def visualize(G, dataset, device, path, indices=(0,), title=None):\n"


def replace_visualize_body(source, body):
    """The reference with visualize's solution region replaced by `body` (make_student's parser)."""
    return C.replace_solutions(source, {"visualize": body})


# --- Step 5 forgeries ------------------------------------------------------------------------------
# Three noise panels; G is never called. The grader's recording hooks are called directly with a
# stand-in module in eval mode, under no_grad, with no tensors.
NOISE_WITH_STAND_IN = '''
class _StandIn(torch.nn.Module):
    pass

stand_in = _StandIn().eval()
with torch.no_grad():
    for h in list(G._forward_hooks.values()):
        h(stand_in, (), None)
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, name in zip(axes, ["T1 input", "Generated T2", "Real T2"]):
    ax.imshow(rng.random((256, 256)), cmap="gray")
    ax.set_title(name)
    ax.axis("off")
fig.savefig(path, dpi=100)
plt.close(fig)
return path
'''

# Forged records WITH tensors, handed to the hooks as if G (in eval mode) had produced the real T2
# from the slice; the real T2 is shown as the "generated" one. G is never run.
REAL_T2_FORGED_RECORDS = '''
G.eval()
t1, t2 = dataset[indices[0]]
with torch.no_grad():
    for h in list(G._forward_hooks.values()):
        h(G, (t1.unsqueeze(0),), t2.unsqueeze(0).clone())
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, img, name in zip(axes, [t1, t2, t2], ["T1 input", "Generated T2", "Real T2"]):
    ax.imshow(((img[0] + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name)
    ax.axis("off")
fig.savefig(path, dpi=100)
plt.close(fig)
return path
'''

# G really called, but in train mode with autograd on; the real hooks are swapped for wrappers that
# report an eval-mode stand-in under no_grad, without tensors.
TRAIN_MODE_FORGED_REPORTS = '''
class _StandIn(torch.nn.Module):
    pass

stand_in = _StandIn().eval()
for key, h in list(G._forward_hooks.items()):
    def forged(module, inputs, output, _h=h):
        with torch.no_grad():
            _h(stand_in, (), None)
    G._forward_hooks[key] = forged
t1, t2 = dataset[indices[0]]
fake = G(t1.unsqueeze(0))[0].detach()
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, img, name in zip(axes, [t1, fake, t2], ["T1 input", "Generated T2", "Real T2"]):
    ax.imshow(((img[0].clamp(-1, 1) + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name)
    ax.axis("off")
fig.savefig(path, dpi=100)
plt.close(fig)
return path
'''

# --- Step 2: a blank template that hands in the grader's own networks -----------------------------
BORROW_GRADER_NETS = '''

def _borrow(name):
    """Find the grader's copy of the networks anywhere in this process or on a readable path."""
    import gc, importlib.util, os, types

    def ok(c):
        return (isinstance(c, type) and issubclass(c, nn.Module) and c.__name__ == name
                and c.__module__ != __name__)

    for m in list(sys.modules.values()):  # a module left in sys.modules
        if ok(getattr(m, name, None)):
            return getattr(m, name)
    main = sys.modules.get("__main__")  # the worker's own globals
    for v in list(vars(main).values()) if main else []:
        if isinstance(v, types.ModuleType) and ok(getattr(v, name, None)):
            return getattr(v, name)
    for o in gc.get_objects():  # anything alive in the process
        if ok(o):
            return o
    import json
    start = json.loads(os.environ.get("GRADER_WORKER", "") or "{}")  # the worker's start-up parameters
    for p in [q for r in start.get("read_paths", []) for q in (r, os.path.join(r, "nets.py"))]:  # a readable nets.py
        if p.endswith("nets.py") and os.path.isfile(p):
            spec = importlib.util.spec_from_file_location("_borrowed_nets", p)
            m = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(m)
            return getattr(m, name)
    raise NotImplementedError(name)


class Generator(nn.Module):
    def __new__(cls, *args, **kwargs):
        return _borrow("Generator")(*args, **kwargs)


class Discriminator(nn.Module):
    def __new__(cls, *args, **kwargs):
        return _borrow("Discriminator")(*args, **kwargs)
'''

# --- Step 4: a train_step that trains nothing ------------------------------------------------------
# Sets G's last layer to the constant that minimises L1 (the median of T2), nudges D so "both networks
# change", and returns the loss values of that state.
CONSTANT_LAST_LAYER = '''
with torch.no_grad():
    last = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    last.weight.zero_()
    last.bias.fill_(float(torch.atanh(t2.median().clamp(-0.99, 0.99))))
    for p in D.parameters():
        p.mul_(1.0001)
    fake_t2 = G(t1)
    pred_fake = D(t1, fake_t2)
    loss_G = criterion_GAN(pred_fake, torch.ones_like(pred_fake)) + lambda_l1 * criterion_L1(fake_t2, t2)
    pred_real = D(t1, t2)
    loss_D = 0.5 * (criterion_GAN(pred_real, torch.ones_like(pred_real))
                    + criterion_GAN(pred_fake, torch.zeros_like(pred_fake)))
return loss_G.item(), loss_D.item()
'''

PAIRING_OLD = '''        self.t1_paths = sorted(os.path.join(t1_dir, f) for f in os.listdir(t1_dir)
                               if f.lower().endswith(".png"))
        self.t2_paths = sorted(os.path.join(t2_dir, f) for f in os.listdir(t2_dir)
                               if f.lower().endswith(".png"))
'''
PAIRING_BY_NAME = '''        # a T1 slice goes with the T2 slice of the same file name
        names = sorted(set(f for f in os.listdir(t1_dir) if f.lower().endswith(".png")) & set(os.listdir(t2_dir)))
        self.t1_paths = [os.path.join(t1_dir, f) for f in names]
        self.t2_paths = [os.path.join(t2_dir, f) for f in names]
'''
G_BLOCK = "    optimizer_G.zero_grad()\n    loss_G.backward()\n    optimizer_G.step()\n"


def submissions():
    """name -> source."""
    vis_sig = lambda new_def, loop: C.substitute(REFERENCE, [
        (VIS_DEF, new_def), ("        for i in indices:\n", f"        for i in {loop}:\n"),
        ("    if title:\n        fig.suptitle(title)\n", "")])
    return {
        # attackers
        "atk_noise_stand_in": replace_visualize_body(REFERENCE, NOISE_WITH_STAND_IN),
        "atk_real_t2_forged_records": replace_visualize_body(REFERENCE, REAL_T2_FORGED_RECORDS),
        "atk_train_mode_forged_reports": replace_visualize_body(REFERENCE, TRAIN_MODE_FORGED_REPORTS),
        "atk_blank_grader_nets": C.blank_template(REFERENCE) + BORROW_GRADER_NETS,
        "atk_constant_last_layer": C.substitute(REFERENCE, C.insert_after(C.TRAIN_STEP_START, CONSTANT_LAST_LAYER,
                                                                          "    ")),
        # G really called (eval mode, no_grad) on the slice, but the real T2 drawn as the generated one
        "atk_t2_in_middle": C.substitute(REFERENCE, [("rows.append([t1, fake, t2])", "rows.append([t1, t2, t2])")]),
        # correct habits
        "eq_vis_index0": vis_sig("def visualize(G, dataset, device, path, index=0):\n", "(index,)"),
        "eq_vis_no_optional": vis_sig("def visualize(G, dataset, device, path):\n", "(0,)"),
        "eq_zero_grad_after_step": C.substitute(REFERENCE, [
            (G_BLOCK, "    loss_G.backward()\n    optimizer_G.step()\n    optimizer_G.zero_grad()\n")]),
        "eq_pair_by_name": C.substitute(REFERENCE, [(PAIRING_OLD, PAIRING_BY_NAME)]),
        # (pix2pix's D-then-G order: test_grader.py's s4_d_first_correct, in the same batch)
    }


STEP5 = {c for c in CHECKS if c.startswith("5.")}
# The exact outcome of each one-function case: the checks it loses (every other check keeps its points).
LOSES = {
    # The figure shows noise or the real T2, never G's output on the slice: no "figure exists" points
    # either (5.1 says why, 5.2/5.3/5.6 "see 5.1 first"), and the forged records earn no 5.4.
    "atk_noise_stand_in": STEP5,
    "atk_real_t2_forged_records": STEP5,
    # G's real train-mode output is drawn (5.1-5.3 hold), reported as eval mode: 5.4 only (grad mode is
    # a reported fact, a hint only: grader/protocol.py).
    "atk_train_mode_forged_reports": {"5.4"},
    "atk_constant_last_layer": {"4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8"},
    "atk_t2_in_middle": {"5.1", "5.2", "5.3", "5.4", "5.6"},
    "eq_vis_index0": set(), "eq_vis_no_optional": set(), "eq_zero_grad_after_step": set(), "eq_pair_by_name": set(),
}


def variants():
    """The one-function cases (LOSES), for conftest.graded to pack: name -> (checks lost, source)."""
    sources = submissions()
    return {name: (lost, sources[name]) for name, lost in LOSES.items()}


def write_submissions(folder):
    """The cases that are not one-function variants (the blank template borrowing the grader's nets)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in submissions().items():
        if name not in LOSES:
            (folder / f"{name}.py").write_text(source, encoding="utf-8")


@pytest.fixture(scope="module")
def points(graded):
    return graded


def checks(batch, student):
    return batch.per_check(student)


def failed(batch, student):
    return batch.lost(student)


@pytest.mark.slow
@pytest.mark.parametrize("student", ["eq_vis_index0", "eq_vis_no_optional", "eq_zero_grad_after_step",
                                     "eq_pair_by_name"])
def test_correct_habits_get_100(points, student):
    """Every check keeps its points (packed with other parts' variants: see conftest.check_variant)."""
    assert LOSES[student] == set()
    check_variant(points, student, {})


@pytest.mark.slow
@pytest.mark.parametrize("student", ["atk_noise_stand_in", "atk_real_t2_forged_records",
                                     "atk_train_mode_forged_reports"])
def test_forged_step5_loses_the_inference_checks(points, student):
    """Exactly the checks the forgery aims at (LOSES); it costs nothing outside Step 5."""
    assert LOSES[student] <= STEP5
    check_variant(points, student, dict.fromkeys(LOSES[student]))


@pytest.mark.slow
def test_blank_template_cannot_borrow_the_grader_networks(points):
    got = points.scores("atk_blank_grader_nets")
    assert got["step2"] == 0 and got["total"] == 0, points.explain("atk_blank_grader_nets")
    assert failed(points, "atk_blank_grader_nets") == set(CHECKS)


@pytest.mark.slow
def test_train_step_that_does_not_train_loses_4_8(points):
    """It trains nothing, so every value check of Step 4 fails, 4.1 too: its "both networks changed"
    counts only next to a first-step value the judge recomputed; 4.8 is the one that names the missing
    step."""
    assert LOSES["atk_constant_last_layer"] == {"4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8"}
    got = check_variant(points, "atk_constant_last_layer", dict.fromkeys(LOSES["atk_constant_last_layer"]))
    out = got["4.8"][2]
    assert "optimizer_G.step()" in out, out


@pytest.mark.slow
def test_figure_must_show_the_generated_image(points):
    """Real eval-mode calls of G, but the figure shows the real T2 as generated: G's output is in
    no panel, so no "figure exists" points either (5.1-5.3, and 5.6 which rests on them), and no 5.4."""
    assert LOSES["atk_t2_in_middle"] == {"5.1", "5.2", "5.3", "5.4", "5.6"}
    check_variant(points, "atk_t2_in_middle", dict.fromkeys(LOSES["atk_t2_in_middle"]))


@pytest.mark.slow
def test_zero_grad_after_step_is_named_in_the_feedback(points):
    assert "zero_grad" in checks(points, points.variant("eq_zero_grad_after_step")[0])["4.7"][2]


# ---------------------------------------------------------------------------------------------------
# Pure functions of the figure analysis (no grading needed)
# ---------------------------------------------------------------------------------------------------

def _figure(middle, t1, t2, **imshow):
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, img in zip(axes, (t1, middle, t2)):
        ax.imshow(img, **imshow)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100)
    plt.close(fig)
    return np.asarray(Image.open(buf).convert("L"))


@pytest.mark.parametrize("style", [{"cmap": "gray", "vmin": -1, "vmax": 1}, {"cmap": "gray_r"}, {},
                                   {"cmap": "jet"}, {"cmap": "gray", "vmin": 0, "vmax": 1},
                                   {"cmap": "gray", "interpolation": "bicubic"}])
def test_middle_panel_matches_the_eval_output_whatever_the_colour_map(style):
    from grader import expected as ref

    MATCH, MARGIN = ref.PANEL_MATCH, ref.PANEL_MARGIN

    G = ref.visualize_generator()
    t1, t2 = ref.visualize_slices()
    ev, tr = ref.g_outputs(ref.state_arrays(G), t1[:1])
    candidates = {"eval": ev[0, 0], "train": tr[0, 0], "t1": t1[0, 0], "t2": t2[0, 0]}
    for shown, img in candidates.items():
        gray = _figure(img, t1[0, 0], t2[0, 0], **style)
        y0, y1, x0, x1 = ref.panel_boxes(gray)[1][0]
        sim = {k: ref.panel_similarity(gray[y0:y1, x0:x1], v) for k, v in candidates.items()}
        accepted = sim["eval"] >= MATCH and sim["eval"] >= max(v for k, v in sim.items() if k != "eval") + MARGIN
        assert accepted == (shown == "eval"), (style, shown, sim)


def test_middle_panel_of_a_two_row_figure():
    """A visualize that draws two slices (the grader's first): the middle column has two images."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from grader import expected as ref

    G = ref.visualize_generator()
    t1, t2 = ref.visualize_slices()
    ev, tr = ref.g_outputs(ref.state_arrays(G), t1)
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for r in range(2):
        for c, img in enumerate((t1[r, 0], ev[r, 0], t2[r, 0])):
            axes[r][c].imshow(img, cmap="gray")
            axes[r][c].set_title("x")
            axes[r][c].axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100)
    plt.close(fig)
    gray = np.asarray(Image.open(buf).convert("L"))
    column = ref.panel_boxes(gray)[1]
    assert len(column) == 2, column
    y0, y1, x0, x1 = column[0]
    assert ref.panel_similarity(gray[y0:y1, x0:x1], ev[0, 0]) >= ref.PANEL_MATCH


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in submissions().items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
