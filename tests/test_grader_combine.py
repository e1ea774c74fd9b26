"""The packing of one-bug variants into shared submissions (tests/grader_cases/combine.py), without grading:
every check belongs to exactly one part, each variant's edits stay where they were found, members of one
submission never share a part or a check, and the packing is the same on every run."""
import ast

import pytest

from conftest import ROOT
from grader.rubric import CHECKS
from grader_cases import cases as C
from grader_cases import combine

REFERENCE = (ROOT / "experiment6.py").read_text(encoding="utf-8")


def all_variants():
    """Every module's declared variants, as conftest.graded collects them."""
    import test_grader
    import test_grader_points
    import test_grader_steps12
    import test_grader_steps345

    found = {}
    for module in (test_grader, test_grader_points, test_grader_steps12, test_grader_steps345):
        for name, value in module.variants().items():
            assert name not in found, name
            found[name] = value
    return found


def test_every_check_belongs_to_exactly_one_part_but_5_6_to_two():
    """A new check must be placed in a part here, or its variants could be packed next to a bug it sees."""
    seen = {}
    for part, checks in combine.PART_CHECKS.items():
        for c in checks:
            seen.setdefault(c, []).append(part)
    assert set(seen) == set(CHECKS)
    assert {c: parts for c, parts in seen.items() if len(parts) > 1} == {"5.6": ["visualize", "module"]}


def test_every_contract_definition_is_a_part():
    names = {n.name for n in ast.parse(REFERENCE).body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert set(combine.PART_OF_NAME) <= names
    assert sorted(p for _a, _b, p in combine.part_spans(REFERENCE)) == sorted(combine.PART_OF_NAME.values())


def test_packing_keeps_each_variant_and_separates_parts():
    variants = all_variants()
    files, where = combine.pack(variants, REFERENCE)
    assert set(where) == set(variants)
    assert len(files) < len(variants)
    assert (files, where) == combine.pack(dict(reversed(list(variants.items()))), REFERENCE)  # deterministic
    spans = combine.part_spans(REFERENCE)
    members = {}
    for name, (stem, own, partners) in where.items():
        members.setdefault(stem, set()).add(name)
        want, source = variants[name]
        assert set(want) <= own, name
        # its own edits, applied alone, give back its source; packed, they are all in the file
        changes = combine.edits(REFERENCE, source)
        assert combine.apply(REFERENCE, changes) == source, name
        assert all(own.isdisjoint(where[p][1]) for p in partners if variants[p][1] != source), (name, partners)
        for i1, i2, new in changes:
            assert "".join(new) in files[stem], (name, new)
        parts = combine.parts_of(spans, changes)
        for p in partners:
            if variants[p][1] != source:
                assert parts.isdisjoint(combine.parts_of(spans, combine.edits(REFERENCE, variants[p][1]))), (name, p)
    for stem, source in files.items():
        compile(source, stem, "exec")
        assert source != REFERENCE
    # the same bug declared by two files is graded once
    assert where["s4_no_zero_grad_G"][0] == where["c45_no_zero_grad_G"][0]


def test_module_level_code_is_never_packed_with_visualize():
    """Both reach 5.6 (import hygiene): a print at import next to a figure bug would hide one of them."""
    noisy = C.substitute(REFERENCE, C.VARIANTS["noisy_import"][1])
    blank_fig = C.substitute(REFERENCE, C.VARIANTS["s5_writes_nothing"][1])
    files, where = combine.pack({"noisy": ({}, noisy), "fig": ({"5.1": 0, "5.6": 0}, blank_fig)}, REFERENCE)
    assert len(files) == 2 and where["noisy"][0] != where["fig"][0]


@pytest.mark.parametrize("want", [{"3.1": 0}, {"2.2": None}])
def test_a_variant_losing_checks_outside_its_parts_is_graded_alone(want):
    """The packing trusts the declared outcome only inside the variant's parts: a Step 3 bug declared to
    cost a Step 1 check is not packed next to a Step 1 bug."""
    step1 = C.substitute(REFERENCE, C.VARIANTS["s1_no_resize"][1])
    step3 = C.substitute(REFERENCE, C.VARIANTS["s3_sgd"][1])
    files, where = combine.pack({"s1": ({"1.5": 0}, step1), "s3": ({**want, "1.5": 0}, step3)}, REFERENCE)
    assert len(files) == 2 and where["s3"][1] == set(CHECKS)


def test_a_background_grader_call_reports_its_output_and_cpu(tmp_path):
    """conftest.GraderCall, which starts the shared batches ahead of their tests: `python -m grader
    --rubric` started, waited for, its output and exit code read back like run_grader's."""
    from conftest import GraderCall

    call = GraderCall(["--rubric"], tmp_path)
    proc, seconds, cpu = call.wait(timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Total" in proc.stdout and "1.1" in proc.stdout, proc.stdout[-2000:]
    assert seconds > 0 and cpu >= 0
    assert call.wait() == (proc, seconds, cpu)  # waited for once
