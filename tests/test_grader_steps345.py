"""Steps 3-5: every point from the judge's own computation, one property per check, hints that name the bug.

Graded in the session's shared default-flag batch (tests/conftest.py `graded`) with an untouched copy of
the reference (`reference`), which must keep 100; the one-bug variants are packed with other files'
variants of other parts (tests/grader_cases/combine.py):

* a shim of the self-description class: the blank template plus module-level code that replaces the
  worker's request handlers (found through sys.modules) with functions answering what the checks ask,
  from the request's own inputs and public constants, with no lab code. It must score 0 on Steps 3-5
  (and 0 in all: Steps 1-2 are the blank template's);
* one-bug variants of the reference, each with the EXACT set of checks it loses and words its hint must
  contain (the bug named, in Chinese and English).

`python tests/test_grader_steps345.py DIR` writes the same submissions into DIR.
"""
import sys
from pathlib import Path

import pytest

from conftest import ROOT, check_variant
from grader_cases import cases as C

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")

SHIM = r'''

def _shim():
    """Answer the grader's Step 3-5 requests without running any lab code."""
    import sys as _s
    import numpy as np
    worker = _s.modules.get("__main__")
    ops = getattr(worker, "OPS", None)
    if not isinstance(ops, dict):
        return

    def npz(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def losses(a):
        return {"returned": {"type": "builtins.tuple", "len": 2}, "gan_type": "torch.nn.modules.loss.BCELoss",
                "l1_type": "torch.nn.modules.loss.L1Loss", "values": {"gan": [0.6931, 0.6931], "l1": [0.6667, 1.0]}}

    def optimizers(a):
        x = npz(a["inp"])
        lr = a.get("kwargs", {}).get("lr", 2e-4)
        opts, arrays = [], {}
        for tag in ("G", "D"):
            names = sorted(k.split(".", 1)[1] for k in x if k.startswith(tag + "."))
            opts.append({"type": "torch.optim.adam.Adam", "groups": [{"params": [f"{tag}.{n}" for n in names],
                         "lr": lr, "betas": [0.5, 0.999], "weight_decay": 0.0}]})
            for n in names:  # about what Adam does in its first steps: lr per step against the gradient
                arrays[f"{tag}.{n}"] = x[f"{tag}.{n}"] - lr * sum(np.sign(x[f"grad{s}.{tag}.{n}"]) for s in range(a["steps"]))
        np.savez(a["out"], **arrays)
        return {"returned": {"type": "builtins.tuple", "len": 2}, "opts": opts}

    def train_step(a):
        x = npz(a["inp"])
        arrays, returned = {}, []
        params = {k: v for k, v in x.items() if k[:2] in ("G.", "D.") and v.dtype.kind == "f"
                  and "running" not in k}
        for s in range(a["steps"]):
            returned.append({"type": "builtins.tuple", "len": 2, "parts": [
                {"type": "builtins.float", "value": 30.0 - s}, {"type": "builtins.float", "value": 0.69}],
                "values": [30.0 - s, 0.69]})
            if s < a.get("snapshots", 0):
                for k, v in params.items():
                    arrays[f"s{s}.{k}"] = v - 2e-4 * (s + 1)
                    if k.startswith("G."):
                        arrays[f"s{s}.gradG.{k[2:]}"] = np.zeros_like(v)
        for k, v in params.items():
            arrays[f"twin.{k}"] = v - 4e-4
            if k.startswith("G.") and a.get("final_state"):
                arrays["final." + k] = v - 1e-4
        np.savez(a["out"], **arrays)
        return {"returned": returned, "twin": {"values": [29.0, 0.69]}}

    def visualize(a):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        x = npz(a["inp"])
        t1, t2 = x["t1"][0, 0], x["t2"][0, 0]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        for ax, im, name in zip(axes, [t1, np.flipud(t2), t2], ["T1", "Generated T2", "Real T2"]):
            ax.imshow((im + 1) / 2, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name)
            ax.axis("off")
        fig.savefig(a["path"], dpi=100)
        plt.close(fig)
        np.savez(a["out"])
        return {"returned": {"type": "builtins.str"}, "returned_path": a["path"], "n_calls": 1,
                "calls": [{"training": False, "grad_enabled": False, "requires_grad": False, "tensors": False}],
                "training_after": True, "passed_indices": True}

    ops.update(losses=losses, optimizers=optimizers, train_step=train_step, visualize=visualize)


_shim()
'''

G_LOSS = "loss_G = criterion_GAN(pred_fake, torch.ones_like(pred_fake)) + lambda_l1 * criterion_L1(fake_t2, t2)"
D_DETACH = "pred_fake = D(t1, fake_t2.detach())  # detach: this loss must not update G"
IMSHOW = 'axes[r][c].imshow(((img[0].clamp(-1, 1) + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1)'

# name -> (substitutions, {check id: words its message must contain (each a Chinese / English pair)})
VARIANTS = {
    "c45_gan_logits": ([("criterion_GAN = nn.BCELoss()", "criterion_GAN = nn.BCEWithLogitsLoss()")],
                       {"3.1": ["BCELoss", "BCEWithLogitsLoss"]}),
    "c45_l1_sum": ([("criterion_L1 = nn.L1Loss()", 'criterion_L1 = nn.L1Loss(reduction="sum")')],
                   {"3.2": ["L1Loss", "mean"]}),
    "c45_lr_fixed": ([("optimizer_G = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)",
                       "optimizer_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=betas)"),
                      ("optimizer_D = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)",
                       "optimizer_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=betas)")],
                     {"3.4": ["lr=0.001"]}),
    "c45_adv_on_detached": ([("pred_fake = D(t1, fake_t2)\n", "pred_fake = D(t1, fake_t2.detach())\n")],
                            {"4.4": ["fake.detach()", "得不到来自判别器的梯度", "no gradient from the discriminator"]}),
    "c45_d_no_detach": ([(D_DETACH, "pred_fake = D(t1, fake_t2)")],
                        {c: ["fake_t2.detach()", "已经释放", "already freed"] for c in
                         ("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8")}),
    "c45_retain_graph": ([(D_DETACH, "pred_fake = D(t1, fake_t2)"),
                          ("    loss_G.backward()\n", "    loss_G.backward(retain_graph=True)\n")],
                         {c: ["retain_graph=True 不是解决办法", "retain_graph=True is not the fix", "fake_t2.detach()"]
                          for c in ("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8")}),
    "c45_lambda_fixed": ([(G_LOSS, G_LOSS.replace("lambda_l1 *", "100.0 *"))],
                         {"4.2": ["lambda_l1=7", "被忽略", "ignored"]}),
    "c45_lambda_50": ([(G_LOSS, G_LOSS.replace("lambda_l1 *", "50 *"))],
                      {"4.2": ["权重是 50", "weighted by 50"]}),
    "c45_g_target_zeros": ([(G_LOSS, G_LOSS.replace("torch.ones_like(pred_fake)", "torch.zeros_like(pred_fake)"))],
                           {"4.2": ["目标是全 0", "adversarial target is zeros"]}),
    "c45_real_target_zeros": ([("loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))",
                                "loss_real = criterion_GAN(pred_real, torch.zeros_like(pred_real))")],
                              {"4.3": ["真实对 (t1, t2) 的目标应为全 1", "real pair (t1, t2) needs ones"]}),
    "c45_no_zero_grad_G": ([("    optimizer_G.zero_grad()\n", "")],
                           {"4.6": ["optimizer_G.zero_grad()", "累加", "were added"]}),
    "c45_no_zero_grad_D": ([("    optimizer_D.zero_grad()\n", "")],
                           {"4.6": ["optimizer_D.zero_grad()", "累加", "were added"]}),
    # A generator that never steps: 4.1 (both networks must change) and 4.8 (nothing trains) lose too, by
    # their own properties; 4.6 and 4.7 still judge the rest of the step.
    "c45_no_G_step": ([("    loss_G.backward()\n    optimizer_G.step()\n", "    loss_G.backward()\n")],
                      {"4.1": ["optimizer.step()"], "4.4": ["optimizer_G.step()", "完全没变", "did not change"],
                       "4.8": ["optimizer_G.step()"]}),
    "c45_clipped_display": ([(IMSHOW, 'axes[r][c].imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)')],
                            {"5.2": ["暗的一半看不见", "dark half is invisible", "vmin=-1"]}),
    "c45_eval_too_late": ([("    G.eval()  # BatchNorm uses its running statistics at inference\n", ""),
                           ("    fig, axes = plt.subplots(len(rows)", "    G.eval()\n    fig, axes = plt.subplots(len(rows)")],
                          {"5.4": ["G.eval()"]}),
    # the L1 term on fake.detach(): loss_G's value is right, G's step shows it (and 10 steps cannot lower L1)
    "c45_l1_on_detached": ([("lambda_l1 * criterion_L1(fake_t2, t2)", "lambda_l1 * criterion_L1(fake_t2.detach(), t2)")],
                           {"4.4": ["L1", "fake.detach()", "L1 项"], "4.8": []}),
    # step() before backward(): the step sees no gradient and zero_grad() clears the new one, so G never moves
    "c45_step_before_backward": ([("    optimizer_G.zero_grad()\n    loss_G.backward()\n    optimizer_G.step()\n",
                                   "    optimizer_G.zero_grad()\n    optimizer_G.step()\n    loss_G.backward()\n")],
                                 {"4.1": [], "4.4": ["called before backward()", "写在了 backward() 之前"], "4.8": []}),
    "c45_two_columns": ([("rows.append([t1, fake, t2])", "rows.append([t1, fake])"),
                         ("plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows))",
                          "plt.subplots(len(rows), 2, figsize=(6, 3 * len(rows))")],
                        {"5.3": ["3 个", "expected 3"]}),
}

# What only the worker can say about a value (its type, the path returned, grad mode) is a hint, never a
# point (grader/protocol.py: reported): these variants lose nothing and get a hint naming the habit.
HINTS = {
    "c45_loss_d_tensor": ([("return loss_G.item(), loss_D.item()", "return loss_G.item(), loss_D")],
                          {"4.1": ["loss_D", "Python float"]}),
    "c45_no_return": ([("    G.train()\n    return path\n    ### END SOLUTION\n",
                        "    G.train()\n    ### END SOLUTION\n")],
                      {"5.1": ["return path"]}),
    "c45_grad_on": ([("    with torch.no_grad():  # inference only: no graph, less memory\n", "    if True:\n"),
                     ("fake = G(t1.unsqueeze(0).to(device)).float().cpu()[0]",
                      "fake = G(t1.unsqueeze(0).to(device)).float().cpu()[0].detach()")],
                    {"5.4": ["torch.no_grad()"]}),
}


def submissions():
    out = {"c45_reference": REFERENCE, "c45_shim": C.blank_template(REFERENCE) + SHIM}
    out.update({name: C.substitute(REFERENCE, subs) for name, (subs, _) in {**VARIANTS, **HINTS}.items()})
    return out


def variants():
    """name -> (checks lost, source), for conftest.graded to pack. The HINTS variants lose nothing."""
    out = {name: (set(want), C.substitute(REFERENCE, subs)) for name, (subs, want) in VARIANTS.items()}
    out.update({name: (set(), C.substitute(REFERENCE, subs)) for name, (subs, _) in HINTS.items()})
    return out


def write_submissions(folder):
    """The shim (the reference is conftest.graded's `reference`; the variants are packed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c45_shim.py").write_text(submissions()["c45_shim"], encoding="utf-8")


@pytest.mark.slow
def test_reference_keeps_100(graded):
    assert graded.scores("reference") == {"total": 100, **C.POINTS}, graded.explain("reference")


@pytest.mark.slow
def test_shim_scores_nothing(graded):
    """Answers in the shape the checks ask for, with no lab code behind them: 0 on Steps 3-5 (and 0 in all)."""
    got = graded.scores("c45_shim")
    assert got == {"total": 0, **{s: 0 for s in C.STEPS}}, graded.explain("c45_shim")


@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(VARIANTS))
def test_one_bug_loses_exactly_its_checks_with_a_hint_naming_it(graded, student):
    want = VARIANTS[student][1]
    got = check_variant(graded, student, dict.fromkeys(want))  # exactly these lose points
    for cid, words in want.items():
        for w in words:
            assert w in got[cid][2], (cid, w, got[cid][2])


@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(HINTS))
def test_reported_habit_costs_nothing_and_gets_a_hint(graded, student):
    got = check_variant(graded, student, {})  # every check of its parts keeps its points
    for cid, words in HINTS[student][1].items():
        for w in words + ["不计分", "not scored"]:
            assert w in got[cid][2], (cid, w, got[cid][2])


def test_clipped_display_is_seen_and_a_correct_one_is_not():
    """expected.clipped_range on figures drawn here: the dark half clipped (vmin=0 on [-1, 1], a float RGB
    image) is found; the reference's mapping, auto-scaling, vmin=-1/vmax=1 and other colour maps are not."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from grader import expected as ref

    G = ref.visualize_generator()
    t1, t2 = ref.visualize_slices()
    ev, _ = ref.g_outputs(ref.state_arrays(G), t1[:1])
    to01 = lambda x: (np.clip(x, -1, 1) + 1) / 2
    styles = {"reference": (to01, {"cmap": "gray", "vmin": 0, "vmax": 1}, None),
              "auto": (lambda x: x, {"cmap": "gray"}, None),
              "full_range": (lambda x: x, {"cmap": "gray", "vmin": -1, "vmax": 1}, None),
              "viridis": (lambda x: x, {"cmap": "viridis"}, None),
              "raw_vmin0": (lambda x: x, {"cmap": "gray", "vmin": 0, "vmax": 1}, "dark"),
              "rgb_float": (lambda x: np.stack([x] * 3, -1), {}, "dark"),
              "vmax0": (lambda x: x, {"cmap": "gray", "vmin": -1, "vmax": 0}, "bright")}
    for name, (f, kw, want) in styles.items():
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        for ax, img in zip(axes, (t1[0, 0], ev[0, 0], t2[0, 0])):
            ax.imshow(f(img), **kw)
            ax.axis("off")
        buf = io.BytesIO()
        fig.savefig(buf, dpi=100)
        plt.close(fig)
        gray = np.asarray(Image.open(buf).convert("L"))
        sim, box = ref.shows(gray, ev[0, 0], [t1[0, 0], t2[0, 0]])
        assert box is not None, name
        y0, y1, x0, x1 = box
        assert ref.clipped_range(gray[y0:y1, x0:x1], ev[0, 0]) == want, name


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in submissions().items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
