"""One-bug variants packed several to a graded submission, where the grader's design makes them independent.

Grading is the suite's cost (a judge and a worker process per submission, ~14 s of CPU each), and most
graded submissions are the reference with one bug in one contract function. The grader reaches each
contract function through its own worker request, and each check reads only the replies of its part's
requests (grader/worker.py's op_* and grader/checks/):

    part        contract names                     requests                checks
    dataset     PairedMedicalDataset               dataset                 1.1-1.7
    networks    Generator, Discriminator           networks, grads         2.1-2.6
    losses      build_losses                       losses                  3.1, 3.2
    optimizers  build_optimizers (on nn.Linear)    optimizers              3.3-3.5
    train_step  train_step (on grader/nets.py with trusted losses and Adam)     4.1-4.8
    visualize   visualize (on grader/nets.py's G, the judge's slices)          5.1-5.6
    module      anything outside those (import time)                            5.6

So variants that change different parts can share one submission: a Step 1 bug, a Step 2 bug, a
Step 3 bug, a Step 4 bug and a Step 5 bug in one file. Each member's exact outcome is judged on its own
part's checks, and every check outside all members' parts must keep its points; together that is the
union of their exact per-check outcomes, and it holds only if each bug costs nothing outside its part
even next to the others (a stronger test of independence than one bug alone). A variant whose declared
outcome leaves its parts' checks, or that changes the module level next to visualize (both reach 5.6),
is never packed with one that shares those checks: it gets a submission of its own.

Variants are given as full sources (the reference with the bug); their edits are found by diffing
against the reference, so any way of building a variant (cases.substitute, replace_solutions) packs.
Byte-identical variants (the same bug declared by two test files) share one member slot.
"""
import ast
import difflib
import hashlib

PART_OF_NAME = {
    "PairedMedicalDataset": "dataset",
    "Generator": "networks",
    "Discriminator": "networks",
    "build_losses": "losses",
    "build_optimizers": "optimizers",
    "train_step": "train_step",
    "visualize": "visualize",
}
PART_CHECKS = {
    "dataset": {f"1.{i}" for i in range(1, 8)},
    "networks": {f"2.{i}" for i in range(1, 7)},
    "losses": {"3.1", "3.2"},
    "optimizers": {"3.3", "3.4", "3.5"},
    "train_step": {f"4.{i}" for i in range(1, 9)},
    "visualize": {"5.1", "5.2", "5.3", "5.4", "5.6"},  # 5.5 is retired (grader/rubric.py)
    "module": {"5.6"},
}
PREFIX = "combined_"  # the graded submissions' names: combined_01.py, ...


def part_spans(reference):
    """[(first line, last line (0-based, inclusive), part)] of the contract's top-level definitions."""
    lines, spans = reference.splitlines(), []
    for node in ast.parse(reference).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in PART_OF_NAME:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            last = node.end_lineno - 1
            while last + 1 < len(lines) and lines[last + 1][:1] in (" ", "\t"):  # its trailing indented comments
                last += 1
            spans.append((first, last, PART_OF_NAME[node.name]))
    return spans


def edits(reference, source):
    """The line edits that turn reference into source: [(i1, i2, new lines)] (reference lines i1:i2)."""
    a, b = reference.splitlines(keepends=True), source.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return [(i1, i2, b[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def parts_of(spans, changes):
    """The parts the edits touch: an edit inside one definition belongs to it, anything else to "module"."""
    parts = set()
    for i1, i2, _new in changes:
        last = max(i1, i2 - 1)  # an insertion (i1 == i2) sits before line i1
        inside = [p for a, b, p in spans if a <= i1 and last <= b and (i1 > a or i2 > i1)]
        parts.add(inside[0] if inside else "module")
    return parts


def apply(reference, changes):
    lines = reference.splitlines(keepends=True)
    for i1, i2, new in sorted(changes, key=lambda c: (c[0], c[1]), reverse=True):
        lines[i1:i2] = new
    return "".join(lines)


class Member:
    def __init__(self, names, source, want, parts, changes):
        self.names, self.source, self.want, self.parts, self.changes = names, source, want, parts, changes

    @property
    def checks(self):
        """The checks this member's outcome is judged on: its parts' checks."""
        return set().union(*(PART_CHECKS[p] for p in self.parts))


def pack(variants, reference):
    """variants: name -> (the checks it loses ({check id: score or None}, or a set), source). Returns
    (files {submission stem: source}, where {variant name: (stem, own checks, partners' names)}).

    Each submission holds at most one member per part, and members whose checks overlap never share
    one; the order is deterministic (sorted names, the fullest part first)."""
    spans = part_spans(reference)
    by_source, members = {}, []
    for name in sorted(variants):
        want, source = variants[name]
        key = hashlib.sha256(source.encode("utf-8")).hexdigest()
        if key in by_source:  # the same file declared twice: one slot, both outcomes must agree
            m = by_source[key]
            assert set(m.want) == set(want), (f"{name} is byte-identical to {m.names[0]} but declares other "
                                              f"lost checks: {sorted(want)} vs {sorted(m.want)}")
            m.names.append(name)
            continue
        changes = edits(reference, source)
        parts = parts_of(spans, changes)
        m = Member([name], source, dict.fromkeys(want), parts, changes)
        if not changes or not set(want) <= m.checks:  # not a one-part bug the design isolates: alone
            m.parts = set(PART_CHECKS)
        by_source[key] = m
        members.append(m)
    crowd = {}
    for m in members:
        for p in m.parts:
            crowd[p] = crowd.get(p, 0) + 1
    members.sort(key=lambda m: (-max(crowd[p] for p in m.parts), sorted(m.parts), m.names[0]))
    bins = []  # [members]
    for m in members:
        for b in bins:
            if all(not (m.parts & o.parts) and not (m.checks & o.checks) for o in b):
                b.append(m)
                break
        else:
            bins.append([m])
    files, where = {}, {}
    width = len(str(len(bins)))
    for k, b in enumerate(bins, 1):
        stem = f"{PREFIX}{k:0{width}d}"
        files[stem] = apply(reference, [c for m in b for c in m.changes])
        for m in b:
            partners = [n for o in b if o is not m for n in o.names]
            for n in m.names:
                where[n] = (stem, m.checks, partners)
    return files, where
