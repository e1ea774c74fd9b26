"""The declared protocol between the judge and the worker: every request, and the shape of its reply.

One place to read what a check gets back (a maintainer adding a check reads the reply here, never in
worker.py). Imported by the judge (grader/check_plugin.py, grader/worker_process.py) and copied next to
worker.py into the submission's in/ folder, so it imports nothing from the grader package.

A request is one JSON line {"id", "op", "args"}; the reply is one JSON line {"id", "ok": true, "value",
"seconds"} or {"id", "ok": false, "error": {"type", "message", "traceback"}, "seconds"}, and, for most
ops, an .npz of arrays the worker wrote to args["out"] (checked from its headers by
worker_process.check_npz before anything is inflated).

Every field below is marked:
  REPORTED  the student process's word. Every JSON field is reported: the worker runs inside the
            student's process, and a submission may patch it (replace op_<name>, _send, ...), so a
            reported field may say anything of the declared type. Checks may use it in messages and
            hints, and to pick which of the judge's own recomputations to compare with; never to award
            a point by itself.
  DERIVED   what the judge parsed itself: an array's name, dtype, shape and values, as read from the
            .npz. Points come from these, compared with values the judge computed (grader/expected.py).

validate(op, value, arrays, args) checks a reply against its declaration on arrival (check_plugin.
StudentCode.run, before any check sees it): JSON types, required and unexpected fields, array names,
dtype kinds, ranks, shapes the JSON describes, shapes fixed by the request's own inputs. Anything
else raises Malformed, which the judge turns into that student's failed check (CallFailed "malformed"),
never a grader error. The result is a Reply: (reported, arrays), unpacked by the checks as
`value, arrays = student_code.run(request)`.
"""
import math
import re
from typing import NamedTuple

REPORTED, DERIVED = "reported", "derived"


class Malformed(Exception):
    """A reply that does not follow its declaration (message: what is wrong, in English, short)."""


# ----------------------------------------------------------------------------------------------
# A small type language for JSON values
# ----------------------------------------------------------------------------------------------

class T:
    """A JSON type: check(value, where) raises Malformed or returns nothing."""

    def __init__(self, name, test):
        self.name, self.test = name, test

    def check(self, v, where):
        if not self.test(v):
            raise Malformed(f"{where}: expected {self.name}, found {type(v).__name__}")

    def __repr__(self):
        return self.name


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT = T("int", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUM = T("number", _num)  # NaN and inf included (json allows them here): checks test finiteness themselves
STR = T("str", lambda v: isinstance(v, str))
BOOL = T("bool", lambda v: isinstance(v, bool))


class Opt(T):
    def __init__(self, inner):
        super().__init__(f"{inner!r} or null", None)
        self.inner = inner

    def check(self, v, where):
        if v is not None:
            self.inner.check(v, where)


class List(T):
    def __init__(self, inner, max_len=10_000):
        super().__init__(f"[{inner!r}]", None)
        self.inner, self.max_len = inner, max_len

    def check(self, v, where):
        if not isinstance(v, list):
            raise Malformed(f"{where}: expected a list, found {type(v).__name__}")
        if len(v) > self.max_len:
            raise Malformed(f"{where}: {len(v)} entries, at most {self.max_len}")
        for i, x in enumerate(v):
            self.inner.check(x, f"{where}[{i}]")


class Map(T):
    """{str: inner} with any keys."""

    def __init__(self, inner):
        super().__init__(f"{{str: {inner!r}}}", None)
        self.inner = inner

    def check(self, v, where):
        if not isinstance(v, dict):
            raise Malformed(f"{where}: expected an object, found {type(v).__name__}")
        for k, x in v.items():
            self.inner.check(x, f"{where}.{k}")


class F(NamedTuple):
    """One JSON field: its type, whether it must be there, what it means. Always REPORTED (see above)."""
    type: T
    doc: str
    required: bool = True
    trust: str = REPORTED


class Obj(T):
    """A JSON object with declared fields; a field not declared is refused."""

    def __init__(self, name, **fields):
        super().__init__(name, None)
        self.fields = fields

    def check(self, v, where):
        if not isinstance(v, dict):
            raise Malformed(f"{where}: expected an object ({self.name}), found {type(v).__name__}")
        extra = sorted(set(v) - set(self.fields))
        if extra:
            raise Malformed(f"{where}: unexpected field {str(extra[0])[:40]!r}")
        for k, f in self.fields.items():
            if k in v:
                f.type.check(v[k], f"{where}.{k}")
            elif f.required:
                raise Malformed(f"{where}: field {k!r} missing")


class OneOf(T):
    def __init__(self, *options):
        super().__init__(" | ".join(map(repr, options)), None)
        self.options = options

    def check(self, v, where):
        errors = []
        for o in self.options:
            try:
                o.check(v, where)
                return
            except Malformed as e:
                errors.append(str(e))
        raise Malformed(errors[-1] if errors else f"{where}: no option")


# What the worker says about any value the submission returned (worker._describe).
DESC = Obj("description",
           type=F(STR, "module.qualname of the value's type"),
           dtype=F(STR, "tensors and numpy arrays: their dtype's name", False),
           shape=F(List(INT, 16), "tensors and numpy arrays: their shape (checked against the array, if one came)",
                   False),
           requires_grad=F(BOOL, "tensors: requires_grad", False),
           device=F(STR, "tensors: the device", False),
           value=F(OneOf(BOOL, NUM), "bool, int, float: the value", False),
           len=F(INT, "tuples and lists: the length", False))


class A(NamedTuple):
    """One array (or family of arrays) of the reply's .npz: DERIVED, as the judge parsed it.
    pattern: a regular expression for the name (fullmatch); kinds: allowed dtype kinds ("f" float,
    "i"/"u" integers, "b" bool); shape: None (any), or a function (name, match, arrays, inputs) ->
    the required shape; described: the JSON path of the description whose shape/dtype the array must
    match (a function of the match)."""
    pattern: str
    kinds: str
    doc: str
    shape: object = None
    described: object = None
    trust: str = DERIVED


def _like_input(prefix_group):
    """The array must have the shape of the request's input array named by this match group."""
    def shape(name, m, inputs):
        src = inputs.get(m.group(prefix_group)) if inputs else None
        return None if src is None else tuple(src.shape)
    return shape


class Op(NamedTuple):
    """One kind of request: op_<name> in worker.py."""
    args: dict  # arg name -> what it is (the judge writes these; "inp"/"out" are added by StudentCode)
    value: T  # the reply's "value" (all REPORTED)
    arrays: tuple = ()  # A(...) declarations of the .npz written to args["out"] (all DERIVED)
    doc: str = ""


ANY_ARRAY = "fiub"

OPS = {
    "preload": Op({"submission": "path of warmup.py (the file's imports only)"}, Obj("preload"),
                  doc="import the file's imports first, so the real import's CPU time is the file's own"),
    "import": Op(
        {"submission": "path of the (clean or definitions-only) submission"},
        Obj("import",
            seconds=F(NUM, "wall time of the import"),
            cpu=F(NUM, "CPU time of the import (used only without /proc)"),
            threads_added=F(INT, "Python threads started by the import (used only without /proc)"),
            optimizer_steps=F(INT, "optimizer steps during the import (a hint for 5.6)"),
            backward_calls=F(INT, "gradient computations during the import (a hint for 5.6)"),
            sandbox=F(STR, "what the worker says about its Landlock sandbox"),
            names=F(Map(BOOL), "contract name -> whether the module has it (status message only)")),
        doc="import the submission (the first one is measured by grader/hygiene.py)"),
    "dataset": Op(
        {"t1_dir": "folder A", "t2_dir": "folder B", "indices": "items to read", "reads": "reads of each item",
         "arrays": "whether to send the items as arrays"},
        Obj("dataset",
            len_type=F(STR, "the type of len(dataset) (the value itself is the array \"len\")"),
            items=F(List(Obj("item", read=F(INT, "which read"), index=F(INT, "dataset index"),
                             error=F(STR, "what dataset[index] raised", False),
                             item=F(DESC, "what dataset[index] returned", False),
                             parts=F(List(DESC, 2), "the first two elements of a tuple/list item", False))),
                    "one per (read, index) asked for")),
        (A(r"len", "i", "len(dataset), when it is an int (absent otherwise)", shape=lambda n, m, i: ()),
         A(r"r(\d+)i(\d+)p([01])", ANY_ARRAY, "part j of read r of item i, in its own dtype and shape",
           described=lambda m: ("items", (int(m.group(1)), int(m.group(2))), int(m.group(3))))),
        doc="PairedMedicalDataset(t1_dir, t2_dir): len() and the items asked for"),
    "networks": Op(
        {"seed": "torch seed before building each network", "G": "run Generator", "D": "run Discriminator"},
        Obj("networks", **{k: F(DESC, f"what the network returned ({k})", False)
                           for k in ("g", "g_big", "d", "d_big")}),
        (A(r"(g|g_big|d|d_big)", ANY_ARRAY, "the output, in its own dtype and shape",
           described=lambda m: (m.group(1),)),),
        doc="eval-mode forward passes of the submission's G on gx and D on (dx1, dx2), then with weights x10"),
    "grads": Op(
        {"seed": "torch seed", "net": "Generator or Discriminator"},
        Obj("grads", output=F(DESC, "what the network returned"),
            params=F(List(STR), "named_parameters() names"), frozen=F(List(STR), "parameters without requires_grad")),
        (A(r"y", ANY_ARRAY, "the output", described=lambda m: ("output",)),
         A(r"p\.(.+)", ANY_ARRAY, "the gradient of parameter <name> (only names listed in params)")),
        doc="one backward pass through the submission's G or D"),
    "losses": Op(
        {},
        Obj("losses", returned=F(DESC, "what build_losses() returned"),
            gan_type=F(STR, "type of criterion_GAN", False), l1_type=F(STR, "type of criterion_L1", False),
            errors=F(Obj("errors", gan=F(STR, "what criterion_GAN raised", False),
                         l1=F(STR, "what criterion_L1 raised", False)), "criteria that raised", False)),
        (A(r"gan", "f", "float(criterion_GAN) on (p, t) and on (p2, t2)", shape=lambda n, m, i: (2,)),
         A(r"l1", "f", "float(criterion_L1) on (u, v) and on (u2, v2)", shape=lambda n, m, i: (2,))),
        doc="build_losses(), each criterion on two known input pairs"),
    "optimizers": Op(
        {"steps": "steps on known gradients", "kwargs": "keyword arguments of build_optimizers",
         "coverage": "then one step of each optimizer alone, gradients on every parameter"},
        Obj("optimizers", returned=F(DESC, "what build_optimizers returned"),
            no_parameter=F(List(STR), "keyword arguments the signature lacks (then it was not called)", False),
            opts=F(List(Obj("optimizer", type=F(STR, "optimizer class"),
                            groups=F(List(Obj("group", params=F(List(STR), "parameter names (G.weight, ...)"),
                                              lr=F(Opt(NUM), "lr"), betas=F(Opt(List(NUM, 8)), "betas"),
                                              weight_decay=F(NUM, "weight_decay"))), "param_groups")), 2),
                   "optimizer_G and optimizer_D as they describe themselves", False)),
        (A(r"([GD])\.(weight|bias)", "f", "the parameters after the steps", shape=_like_input(0)),
         A(r"cover([01])\.([GD]\.(weight|bias))", "f", "args coverage: every parameter after optimizer i stepped "
           "alone on gradients given to all (which ones it moved = which ones it holds)", shape=_like_input(2))),
        doc="build_optimizers(G, D, **kwargs) on two nn.Linear, then steps on known gradients"),
    "train_step": Op(
        {"steps": "calls", "snapshots": "calls after which parameters are sent", "seed": "torch seed",
         "twin_at": "call made twice (the twin on cleared gradients)", "lambda_l1": "passed by keyword",
         "final_state": "send G's state_dict at the end", "nets_source": "grader/nets.py as text"},
        Obj("train_step",
            returned=F(List(Obj("call", parts=F(List(DESC, 3), "first elements of a tuple return", False),
                                **DESC.fields), 1000), "what each call returned"),
            twin=F(OneOf(Obj("twin", ran=F(BOOL, "the twin call returned")),
                         Obj("twin error", error=F(STR, "what the twin call raised")), Obj("no twin")),
                   "the twin call of twin_at", False),
            no_parameter=F(List(STR), "lambda_l1 not in the signature (then it was not called)", False)),
        (A(r"s(\d+)\.([GD]\..+)", "f", "parameters after call s", shape=_like_input(2)),
         A(r"s(\d+)\.gradG\.(.+)", "f", "gradients left on G after call s", shape=lambda n, m, i: (
             None if i is None or ("G." + m.group(2)) not in i else tuple(i["G." + m.group(2)].shape))),
         A(r"twin\.([GD]\..+)", "f", "parameters after the twin call", shape=_like_input(1)),
         A(r"final\.(G\..+)", "fiu", "G's state_dict after the last call", shape=_like_input(1)),
         A(r"losses", "f", "(calls, 2): float() of each call's loss_G and loss_D, NaN where not a number")),
        doc="the submission's train_step on the grader's networks, trusted losses and Adam"),
    "visualize": Op(
        {"path": "where to save the figure", "indices": "passed when the signature has it",
         "nets_source": "grader/nets.py as text"},
        Obj("visualize", returned=F(DESC, "what visualize returned"),
            returned_path=F(Opt(STR), "the returned path as text"),
            calls=F(List(Obj("call", training=F(BOOL, "G.training during the call"),
                             grad_enabled=F(BOOL, "torch.is_grad_enabled() during the call"),
                             requires_grad=F(BOOL, "output.requires_grad"),
                             tensors=F(BOOL, "whether in<k>/out<k> were sent")), 50), "the first 50 calls of G"),
            n_calls=F(INT, "how many calls of G"), training_after=F(BOOL, "G.training afterwards"),
            passed_indices=F(BOOL, "whether indices= was passed")),
        (A(r"(in|out)(\d)", "f", "input and output of recorded call k (k < 8)"),),
        doc="visualize on the grader's G; every call of G recorded with its input and output"),
}


class Reply(NamedTuple):
    """A validated reply as the checks see it: `reported` (the JSON value, REPORTED: for messages,
    hints and choosing a recomputation) and `arrays` (name -> numpy array, DERIVED)."""
    reported: object
    arrays: dict


def _json_path(value, path):
    """The description at `path` ((read, index) pairs are looked up in a dataset's items)."""
    node = value
    for p in path:
        if isinstance(p, tuple):
            node = next((it for it in node if isinstance(it, dict) and (it.get("read"), it.get("index")) == p),
                        None)
            if node is None:
                return None
            node = node.get("parts") if "parts" in node else None
            continue
        if isinstance(node, dict):
            node = node.get(p)
        elif isinstance(node, list) and isinstance(p, int):
            node = node[p] if p < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


def validate(op, value, arrays=None, inputs=None):
    """Check the reply of `op` (its JSON value, the arrays read from its .npz, the request's input arrays);
    return a Reply, or raise Malformed."""
    spec = OPS.get(op)
    if spec is None:
        raise Malformed(f"no such request {op!r}")
    spec.value.check(value, op)
    arrays = arrays or {}
    for name, arr in arrays.items():
        for a in spec.arrays:
            m = re.fullmatch(a.pattern, name)
            if m:
                break
        else:
            raise Malformed(f"unexpected array {name[:60]!r}")
        if arr.dtype.kind not in a.kinds:
            raise Malformed(f"array {name[:60]!r}: dtype {arr.dtype}, expected kind {a.kinds}")
        if a.shape is not None:
            want = a.shape(name, m, inputs)
            if want is None:
                raise Malformed(f"unexpected array {name[:60]!r} (no such input)")
            if tuple(arr.shape) != want:
                raise Malformed(f"array {name[:60]!r}: shape {tuple(arr.shape)}, expected {want}")
        if a.described is not None:
            d = _json_path(value, a.described(m))
            if not isinstance(d, dict):
                raise Malformed(f"array {name[:60]!r} has no description in the reply")
            if "shape" in d or "dtype" in d:
                if list(d.get("shape") or []) != list(arr.shape) or str(d.get("dtype")) != str(arr.dtype):
                    raise Malformed(f"array {name[:60]!r}: the reply says {d.get('dtype')} {d.get('shape')}, "
                                    f"the array is {arr.dtype} {list(arr.shape)}")
    _extra_rules(op, value, arrays)
    return Reply(value, arrays)


def _extra_rules(op, value, arrays):
    """Relations between fields that the declarations above cannot say."""
    if op == "grads":
        params = set(value["params"])
        for name in arrays:
            if name.startswith("p.") and name[2:] not in params:
                raise Malformed(f"array {name[:60]!r}: no such parameter in the reply")
    if op == "optimizers" and "opts" in value and len(value["opts"]) != 2:
        raise Malformed(f"optimizers: {len(value['opts'])} optimizers described, the worker sends 2 or none")
    if op == "train_step" and "losses" in arrays and arrays["losses"].shape != (len(value["returned"]), 2):
        raise Malformed(f"array 'losses': shape {arrays['losses'].shape}, expected ({len(value['returned'])}, 2)")
    if op == "visualize":
        if value["n_calls"] < len(value["calls"]):
            raise Malformed("visualize: fewer calls than records")
        for name in arrays:
            k = int(name[-1])
            if k >= len(value["calls"]) or not value["calls"][k]["tensors"]:
                raise Malformed(f"array {name!r} for a call without tensors")


ENVELOPE_OK = Obj("reply", id=F(INT, "request id"), ok=F(BOOL, "true"), value=F(T("any", lambda v: True), "see OPS"),
                  seconds=F(NUM, "wall time of the op", False))
ENVELOPE_ERROR = Obj("error reply", id=F(INT, "request id"), ok=F(BOOL, "false"),
                     error=F(Obj("error", type=F(STR, "exception class, or Missing"), message=F(STR, "str(exception)"),
                                 traceback=F(STR, "frames in the student's file")), "what went wrong"),
                     seconds=F(NUM, "wall time of the op", False))
READY = Obj("ready", ready=F(BOOL, "true"), pid=F(INT, "the worker's pid (reported: the judge uses its own)"),
            sandbox=F(STR, "the Landlock it applied (reported: a confirmation; the judge decides `protection`)", False))


def check_envelope(r):
    """The outer reply line (parsed JSON): raise Malformed unless it is a ready line or a declared reply."""
    if isinstance(r, dict) and "ready" in r:
        READY.check(r, "ready")
        return
    if not isinstance(r, dict) or not isinstance(r.get("ok"), bool):
        raise Malformed("a reply without ok: true/false")
    (ENVELOPE_OK if r["ok"] else ENVELOPE_ERROR).check(r, "reply")


def finite(x):
    return _num(x) and math.isfinite(x)


def describe():
    """The whole protocol as text (python -m grader.protocol)."""
    lines = []
    for name, op in OPS.items():
        lines.append(f"{name}: {op.doc}")
        lines.append("  args: " + ", ".join(op.args) if op.args else "  args: none")
        lines.append(f"  value (REPORTED): {_text(op.value, 4)}")
        for a in op.arrays:
            lines.append(f"  array {a.pattern} ({DERIVED}, dtype kind {a.kinds}): {a.doc}")
    return "\n".join(lines)


def _text(t, indent):
    if isinstance(t, Obj):
        pad = " " * indent
        inner = "".join(f"\n{pad}  {k}{'' if f.required else '?'}: {_text(f.type, indent + 2)}  # {f.doc}"
                        for k, f in t.fields.items())
        return f"{{{inner}\n{pad}}}" if inner else "{}"
    if isinstance(t, List):
        return f"[{_text(t.inner, indent)}]"
    if isinstance(t, Opt):
        return f"{_text(t.inner, indent)} | null"
    if isinstance(t, OneOf):
        return " | ".join(_text(o, indent) for o in t.options)
    if isinstance(t, Map):
        return f"{{str: {_text(t.inner, indent)}}}"
    return t.name


if __name__ == "__main__":
    print(describe())
