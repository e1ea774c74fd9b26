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


# --------------------------------------------------------------------------------------------------
# Student-facing text: no development log, commands that run from the bundle, parallel languages
# --------------------------------------------------------------------------------------------------

STUDENT_TEXTS = {**{f"handout.{lang}.md": path for lang, path in HANDOUTS.items()},
                 "report_template.md": ROOT / "handout" / "report_template.md"}
# Words of the kit's development that students must not read (handouts, report template).
DEVELOPMENT_WORDS = [r"\bissues?\b", r"\brounds?\b", r"\bsessions?\b", r"\bdevelopment log\b",
                     r"第\s*[一二三四五六七八九十\d]+\s*轮", r"[一两二三四五]轮(实测|测量)", r"会话", r"开发日志"]
# Files the handout tells students to create themselves (not in the bundle, by design).
STUDENT_WRITTEN = {"unet_challenge.py"}


def bundle_paths():
    """Relative paths of the student bundle, from make_student's own list (plus the generated files)."""
    from handout import make_student as ms

    paths = {"student_template.py", "handout/experiment6_student.ipynb"}
    for pattern in ms.BUNDLE_FILES:
        paths |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file()}
    return paths


@pytest.mark.parametrize("name", STUDENT_TEXTS)
def test_student_text_is_not_a_development_log(name):
    text = STUDENT_TEXTS[name].read_text(encoding="utf-8")
    found = [m.group(0) for w in DEVELOPMENT_WORDS for m in re.finditer(w, text, flags=re.I)]
    assert not found, f"{name} speaks of the kit's development: {found}"


@pytest.mark.parametrize("name", STUDENT_TEXTS)
def test_every_python_command_names_a_file_students_have(name):
    """`python some/file.py` in a student text must run from the bundle (or be the student's own file)."""
    text = STUDENT_TEXTS[name].read_text(encoding="utf-8")
    scripts = re.findall(r"\bpython3?\s+(?:-[A-Za-z]\S*\s+)*([\w./\\-]+\.py)\b", text)
    assert scripts or name == "report_template.md", "no python command found: the pattern is broken"
    have = bundle_paths() | STUDENT_WRITTEN
    missing = sorted({s for s in scripts if s.replace("\\", "/") not in have})
    assert not missing, f"{name} tells students to run files the bundle does not hold: {missing}"
    assert "challenge_unet.py" not in text  # it imports the reference solution: instructors only


def test_both_languages_have_the_same_sections():
    """Same headings in the same order: level and number (1, 4.6, Step 3) of every heading."""
    def outline(lang):
        headings = re.findall(r"^(#{1,6}) (.+)$", without_code(read(lang)), flags=re.M)
        return [(len(level), (re.match(r"(Step \d|\d+(\.\d+)*)", title) or [None])[0]) for level, title in headings]

    zh, en = outline("zh"), outline("en")
    assert len(zh) > 20
    assert zh == en, [(a, b) for a, b in zip(zh, en) if a != b] or (len(zh), len(en))
    numbers = [n for level, n in zh if level == 2 and n]
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)], f"top-level sections out of order: {numbers}"


@pytest.mark.parametrize("lang", HANDOUTS)
def test_step1_check_makes_the_phantoms_it_reads(lang):
    """A fresh bundle has no data/phantoms/ folder: a snippet that reads it must draw it first."""
    blocks = [b for b in code_blocks(read(lang), "python") if "data/phantoms" in b]
    assert blocks, "the Step 1 check snippet is gone"
    for block in blocks:
        assert "make_phantom_dataset(" in block, f"{lang}: reads data/phantoms without drawing it:\n{block}"



FIGURES = ROOT / "handout" / "figures"


def figures_manifest():
    import json

    return json.loads((FIGURES / "figures.json").read_text(encoding="utf-8"))


def test_training_figures_are_the_ones_make_figures_wrote():
    """results.png, loss_curves.png and training_stages.png come from one run of handout/make_figures.py:
    a figure replaced by hand (or left from an older run) no longer matches the SHA-256 it recorded."""
    import hashlib

    manifest = figures_manifest()
    assert set(manifest["sha256"]) == {"results.png", "loss_curves.png", "training_stages.png"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((FIGURES / name).read_bytes()).hexdigest() == digest, (
            f"handout/figures/{name} is not the one make_figures.py recorded: run python handout/make_figures.py")
    assert manifest["run"]["epochs"] == 50 and manifest["run"]["precision"] == "fp32"


def test_loss_curves_figure_has_the_panels_the_code_draws():
    """The shipped loss_curves.png must look like the one a student's run writes: a panel added to or
    dropped from experiment6.plot_history makes the figure stale."""
    from handout import make_figures

    history = [{"epoch": e, "loss_G": 9.0, "loss_G_adv": 1.0, "loss_D": 0.5, "L1": 0.08, "test_psnr": 25.0}
               for e in (1, 2)]
    assert make_figures.loss_panels(history) == figures_manifest()["loss_curves_panels"], (
        "experiment6.plot_history draws a different number of panels than the shipped loss_curves.png: "
        "run python handout/make_figures.py and update section 9.2 of both handouts")


@pytest.mark.parametrize("lang", HANDOUTS)
def test_section_9_quotes_the_figures_run(lang):
    """The numbers section 9 quotes are those of the run that drew its figures."""
    q = figures_manifest()["quoted"]
    text = read(lang)
    section = text[text.index("\n## 9"):text.index("\n## 10")]
    model = q["final metrics"]["test"]
    stages = {int(e): m for e, m in q["stages (whole test split)"].items()}
    wanted = [f"{model['psnr']:.2f}", f"{model['ssim']:.3f}",
              f"{q['loss_G first/last'][0]:.1f}", f"{q['loss_G first/last'][1]:.1f}",
              f"{q['L1 first/last'][0]:.3f}", f"{q['L1 first/last'][1]:.3f}",
              f"{stages[1]['psnr']:.1f}", f"{stages[1]['ssim']:.3f}", f"{stages[5]['psnr']:.1f}", f"{stages[5]['ssim']:.3f}"]
    missing = [w for w in wanted if w not in section]
    assert not missing, f"handout.{lang}.md section 9 does not quote the figures' run: {missing} (see handout/figures/figures.json)"
