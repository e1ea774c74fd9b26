"""experiment6.py and the generated template read as the handout: Steps 1-5 first, then one fence, then the
given infrastructure (issue 13). Pure text and AST checks: no training."""
import ast

import pytest

from handout import make_student as ms

SOURCE = ms.REFERENCE.read_text(encoding="utf-8")
# What the Steps hold, in the handout's order: the contract plus train, the given epoch loop of Step 4.
STEPS = {"PairedMedicalDataset": 1, "Generator": 2, "Discriminator": 2, "build_losses": 3, "build_optimizers": 3,
         "train_step": 4, "train": 4, "visualize": 5}


def layout(text):
    """(fence line, [(line, step) of the STEP headers], [(line, name) of top-level definitions]), 1-based."""
    lines = text.splitlines()
    fences = [i + 1 for i, line in enumerate(lines) if ms.FENCE.match(line)]
    assert len(fences) == 1, f"expected one fence line, found {len(fences)}"
    headers = [(i + 1, int(m.group(1))) for i, line in enumerate(lines) if (m := ms.STEP_HEADER.match(line))]
    defs = [(node.lineno, node.name) for node in ast.parse(text).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    return fences[0], headers, defs


def step_at(headers, line):
    return max((step for first, step in headers if first < line), default=None)


@pytest.mark.parametrize("path", [ms.REFERENCE, ms.TEMPLATE], ids=lambda p: p.name)
def test_steps_come_first_then_one_fence_then_the_infrastructure(path):
    text = path.read_text(encoding="utf-8")
    fence, headers, defs = layout(text)
    assert [step for _, step in headers] == [1, 2, 3, 4, 5]
    assert all(line < fence for line, _ in headers)
    above = [(line, name) for line, name in defs if line < fence]
    assert [name for _, name in above] == list(STEPS), "only the Steps' code above the fence, in order"
    assert all(step_at(headers, line) == STEPS[name] for line, name in above)
    below = {name for line, name in defs if line > fence}
    assert {"parse_args", "check_data_root", "Autocast", "decode_cached", "evaluate", "run", "main"} <= below
    # Module-level statements above the fence: the docstring and the imports only.
    tree = ast.parse(text)
    assignments = [node.lineno for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))]
    assert all(line > fence for line in assignments)
    assert fence < 300  # the target: a student reads about 260 lines and can stop


def test_reference_fence_is_the_notebooks_fence_section():
    sections = ms.split_sections(ms.notebook_code(ms.build_template(SOURCE)))
    keys = [key for key, _, _ in sections]
    assert keys[:6] == ["prelude", 1, 2, 3, 4, 5] and keys[6] == "fence"
    assert all(key == "given" for key in keys[7:])
    assert "def parse_args(" in sections[6][2] and "def parse_args(" not in sections[0][2]


def test_a_solution_region_below_the_fence_stops_the_generation():
    lines = SOURCE.splitlines(keepends=True)
    fence = next(i for i, line in enumerate(lines) if ms.FENCE.match(line))
    step5 = next(i for i, line in enumerate(lines) if line.startswith("# STEP 5 ·"))
    header = lines[fence - 1:fence + 2]  # the fence title between its two rules
    moved = lines[:step5 - 1] + header + ["\n"] + lines[step5 - 1:fence - 1] + lines[fence + 2:]
    with pytest.raises(ValueError, match="visualize below the fence"):
        ms.build_template("".join(moved))
