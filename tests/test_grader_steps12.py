"""Steps 1-2 (dataset, networks): each one-bug variant loses exactly the check(s) about its bug, with a
hint that names it; the reference keeps 100; a submission that answers the worker's Step 1-2 requests
from public constants (no lab code) gets nothing for them.

The submissions (tests/grader_cases/cases.py STEP12_VARIANTS and SELF_DESCRIPTION_SHIM) are graded in
the session's shared default-flag batch (tests/conftest.py `graded`, which also holds `reference`); the
variants packed with other files' variants of other parts (tests/grader_cases/combine.py). The unit tests at the end check
the judge's own helpers (grader/expected.py) without grading anything.
"""
import re

import numpy as np
import pytest

from conftest import ROOT, check_variant
from grader_cases import cases as C

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")


def variants():
    """name -> (checks lost, source), for conftest.graded to pack."""
    return {name: (lost, C.substitute(REFERENCE, subs)) for name, (lost, _words, subs) in C.STEP12_VARIANTS.items()}


def write_submissions(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s12_shim_self_description.py").write_text(C.blank_template(REFERENCE) + C.SELF_DESCRIPTION_SHIM,
                                                         encoding="utf-8")


@pytest.fixture(scope="module")
def steps12(graded):
    return graded


@pytest.mark.slow
def test_reference_keeps_100(steps12):
    assert steps12.scores("reference") == {"total": 100, **C.POINTS}, steps12.explain("reference")


@pytest.mark.slow
@pytest.mark.parametrize("student", list(C.STEP12_VARIANTS))
def test_one_bug_loses_exactly_its_checks_with_a_hint_naming_it(steps12, student):
    lost, words, _ = C.STEP12_VARIANTS[student]
    got = check_variant(steps12, student, dict.fromkeys(lost))  # exactly these lose points
    for c in lost:
        out = got[c][2]
        assert all(w in out for w in words), (c, words, out)
        assert re.search(r"[\u4e00-\u9fff]", out), out  # Chinese first, English alongside


@pytest.mark.slow
def test_self_description_shim_scores_nothing(steps12):
    got = steps12.scores("s12_shim_self_description")
    assert got["step1"] == 0 and got["step2"] == 0 and got["total"] == 0, steps12.explain("s12_shim_self_description")


# ---------------------------------------------------------------------------------------------------
# The judge's helpers (no grading)
# ---------------------------------------------------------------------------------------------------

def test_identify_finds_the_image_its_orientation_and_ignores_the_value_scale():
    from grader import expected as E

    rng = np.random.default_rng(0)
    palette = np.concatenate([[0, 255], rng.integers(1, 255, 254)])
    imgs = {k: E.block_image(rng, palette).astype(np.float64) for k in range(6)}
    for k in range(6):
        for o in range(8):
            shown = E.dihedral(imgs[k], o) / 255.0  # no Normalize: [0, 1]
            name, orient, c = E.identify(shown, imgs)
            assert (name, c > 0.999) == (k, True)
            assert np.array_equal(E.dihedral(imgs[k], orient), E.dihedral(imgs[k], o))
    assert E.identify(np.roll(imgs[0], 5, axis=1), imgs) is None  # a shifted (cropped) image is no file
    assert E.identify(np.full((256, 256), np.nan), imgs) is None


def test_every_block_image_has_the_same_histogram():
    from grader import expected as E

    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, 256)
    a, b = E.block_image(rng, palette), E.block_image(rng, palette)
    assert np.array_equal(np.sort(a.ravel()), np.sort(b.ravel())) and not np.array_equal(a, b)


def test_the_handout_networks_are_shift_equivariant_where_the_checks_look():
    import torch

    from grader import expected as E
    from grader import nets

    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    u = rng.uniform(-1, 1, (1, 1, 256, 256)).astype(np.float32)
    su = np.roll(u, (16, 16), axis=(-2, -1))
    G, D = nets.Generator().eval(), nets.Discriminator().eval()
    with torch.no_grad():
        g = G(torch.from_numpy(np.concatenate([u, su]))).numpy()
        v = np.flip(u, axis=-1).copy()
        sv = np.roll(v, (16, 16), axis=(-2, -1))
        d = D(torch.from_numpy(np.concatenate([u, su])), torch.from_numpy(np.concatenate([v, sv]))).numpy()
    moved, base = E.shifted_interior(g[0], g[1], 16, 32)
    assert np.allclose(moved, base, atol=1e-5) and not np.allclose(g[0], g[1], atol=1e-3)
    moved, base = E.shifted_interior(d[0], d[1], 4, 7)  # D's grid: 16 input pixels are 4 output cells
    assert np.allclose(moved, base, atol=1e-5)
    assert not np.allclose(*E.shifted_interior(d[0], d[1], 3, 7), atol=1e-5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")  # the checks' @check marker
def test_a_reply_whose_description_disagrees_with_its_arrays_earns_nothing():
    """Refused on arrival (grader/protocol.py), before any check reads it: that check's failure."""
    from grader import protocol as P
    from grader.checks import check_step1 as S1

    arr = np.zeros((1, 128, 128), np.float32)
    told = {"type": "torch.Tensor", "dtype": "float32", "shape": [1, 256, 256]}
    value = {"len_type": "builtins.int", "items": [{"read": 0, "index": 0, "item": {"type": "builtins.tuple", "len": 2},
                                                    "parts": [told, told]}]}
    with pytest.raises(P.Malformed, match="the reply says"):
        P.validate("dataset", value, {"r0i0p0": arr, "r0i0p1": arr})
    honest = dict(told, shape=[1, 128, 128])
    value["items"][0]["parts"] = [honest, honest]
    P.validate("dataset", value, {"r0i0p0": arr, "r0i0p1": arr})
    items = S1._reply(value, {"r0i0p0": arr, "r0i0p1": arr}, [0])
    assert [a.shape for _, a in items[0, 0]["parts"]] == [(1, 128, 128)] * 2
