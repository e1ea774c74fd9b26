"""The handouts (zh, en): contract names, rubric points, links, and code that really runs.

Cheap checks only: reading Markdown, compiling code blocks and one 256x256 training step.
"""
import re

import pytest
import torch

import experiment6 as ex
from conftest import ROOT

HANDOUTS = {lang: ROOT / "handout" / f"handout.{lang}.md" for lang in ("zh", "en")}
CONTRACT_NAMES = ["PairedMedicalDataset", "Generator", "Discriminator", "build_losses", "build_optimizers",
                  "train_step", "visualize"]
RUBRIC = {1: 15, 2: 20, 3: 10, 4: 35, 5: 20}
MAX_FIGURE_BYTES = 300 * 1024


def read(lang):
    return HANDOUTS[lang].read_text(encoding="utf-8")


def code_blocks(text, language):
    return re.findall(r"^```" + language + r"\n(.*?)^```", text, flags=re.S | re.M)


def without_code(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def github_anchor(heading):
    """GitHub's heading ids: lower case, punctuation dropped (CJK kept), spaces become hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("lang", HANDOUTS)
def test_mentions_every_contract_name(lang):
    text = read(lang)
    missing = [n for n in CONTRACT_NAMES if f"`{n}" not in text]
    assert not missing, f"{lang}: contract names not mentioned as code: {missing}"


@pytest.mark.parametrize("lang", HANDOUTS)
def test_rubric_table_states_the_graders_points(lang):
    rows = re.findall(r"^\|\s*Step\s+(\d)\s*\|[^\n]*\|\s*(\d+)\s*\|\s*$", read(lang), flags=re.M)
    points = {int(step): int(p) for step, p in rows}
    assert points == RUBRIC, f"{lang}: rubric table says {points}"
    assert sum(points.values()) == 100
    total = re.search(r"^\|\s*(合计|total)\s*\|[^\n]*\|\s*(\d+)\s*\|\s*$", read(lang), flags=re.M | re.I)
    assert total and int(total.group(2)) == 100
    assert "python -m grader --rubric" in read(lang)
    assert "python -m grader student_template.py" in read(lang)


@pytest.mark.parametrize("lang", HANDOUTS)
def test_links_and_images_resolve(lang):
    text = without_code(read(lang))
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", read(lang), flags=re.M)}
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    assert targets, "no links found: the pattern is broken"
    checked = 0
    for target in targets:
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"{lang}: anchor {target} matches no heading"
            continue
        path = (HANDOUTS[lang].parent / target.split("#")[0]).resolve()
        rel = path.relative_to(ROOT).as_posix()
        assert path.is_file(), f"{lang}: link {target} -> {rel} does not exist"
        if path.suffix == ".png":
            assert path.stat().st_size < MAX_FIGURE_BYTES, f"{rel} is larger than 300 KB"
        checked += 1
    assert checked >= 3  # the figures and data/README_IXI.md at least


@pytest.mark.parametrize("lang", HANDOUTS)
def test_no_placeholders_left(lang):
    assert not re.search(r"\b[A-Z]+(_[A-Z0-9]+)+_(ZH|EN)\b", read(lang))


@pytest.mark.parametrize("lang", HANDOUTS)
def test_python_blocks_compile_and_avoid_the_seed_errors(lang):
    blocks = code_blocks(read(lang), "python")
    assert len(blocks) >= 6
    for i, block in enumerate(blocks):
        compile(block, f"handout.{lang}.md[python block {i}]", "exec")
        assert "data_loader" not in block  # the seed handout's Step 4 typo
    everything = read(lang)
    assert "data_loader =" not in everything and "in data_loader" not in everything


@pytest.mark.parametrize("lang", HANDOUTS)
def test_handout_code_matches_the_reference(lang, tiny_data):
    """Run the handout's Step 1-4 code: same items, shapes, losses and weights as experiment6.py.

    This catches the seed handout's errors too: a mis-indented self.transform fails when the class
    is defined, a missing `import torch` fails in Discriminator.forward.
    """
    ns = {}
    for block in code_blocks(read(lang), "python"):
        if re.search(r"^(class|def) ", block, flags=re.M):  # the definition blocks of Steps 1-4
            own = {}  # each block must stand alone, with its own imports, as students copy it
            exec(compile(block, f"handout.{lang}.md", "exec"), own)
            ns.update({k: v for k, v in own.items() if k in CONTRACT_NAMES})
    for name in ["PairedMedicalDataset", "Generator", "Discriminator", "build_losses", "build_optimizers",
                 "train_step"]:
        assert name in ns, f"{lang}: no code block defines {name}"

    mine = ns["PairedMedicalDataset"](tiny_data / "trainA", tiny_data / "trainB")
    ref = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    assert len(mine) == len(ref) == 6
    for a, b in zip(mine[1], ref[1]):
        assert a.shape == (1, 256, 256) and torch.equal(a, b)

    torch.manual_seed(0)
    G, D = ns["Generator"](), ns["Discriminator"]()
    G_ref, D_ref = ex.Generator(), ex.Discriminator()
    G_ref.load_state_dict(G.state_dict())  # fails unless the layers match the reference's
    D_ref.load_state_dict(D.state_dict())
    t1 = torch.stack([mine[0][0], mine[1][0]])
    t2 = torch.stack([mine[0][1], mine[1][1]])
    assert D(t1, G(t1)).shape == (2, 1, 63, 63)

    losses = ns["train_step"](G, D, t1, t2, *ns["build_losses"](), *ns["build_optimizers"](G, D))
    losses_ref = ex.train_step(G_ref, D_ref, t1, t2, *ex.build_losses(), *ex.build_optimizers(G_ref, D_ref))
    assert all(isinstance(v, float) for v in losses)
    assert losses == pytest.approx(losses_ref, rel=1e-5)
    for p, q in zip(G.parameters(), G_ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    for p, q in zip(D.parameters(), D_ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
