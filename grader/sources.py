"""Finding submissions and turning each into one clean UTF-8 .py file (trusted side, no execution).

Accepted inputs: a .py file, a .ipynb notebook, a folder per student, a folder of such (or of
.py/.ipynb files), or a .zip of any of these. Sources in GBK/GB18030, with a UTF-8 BOM or with CRLF
line ends grade exactly like clean UTF-8.
"""
import ast
import codecs
import hashlib
import json
import re
import shutil
import symtable
import tempfile
import tokenize
import unicodedata
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PREFERRED = ("student_template", "experiment6")
SKIP_DIRS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__", ".git", ".venv", "venv", "dataset", "outputs",
             "data", "grading", "node_modules"}
ZIP_MAX_BYTES = 200 * 2 ** 20
ZIP_MAX_FILES = 5000
SOURCE_MAX_BYTES = 5 * 2 ** 20


class UserError(Exception):
    """A problem with the command line itself (exit code 2)."""


@dataclass
class Submission:
    student: str
    origin: str  # what the TA gave us, for messages
    file: Path = None  # the chosen .py / .ipynb
    status: str = "ok"  # or no_submission / ambiguous / encoding_error / syntax_error / bad_zip
    message: str = ""
    clean: Path = None  # the UTF-8 .py the worker imports
    notes: list = field(default_factory=list)
    label: str = ""  # the graded file, relative to what the TA gave (results.json, grades.csv)
    skipped: list = field(default_factory=list)  # [{"file", "reason"}]: candidates not graded


# ----------------------------------------------------------------------------------------------
# Decoding and notebook conversion
# ----------------------------------------------------------------------------------------------

def decode(data):
    """bytes -> str: UTF-8 (with or without BOM), else GB18030 (a superset of GBK); newlines -> \\n."""
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise UnicodeDecodeError("utf-8/gb18030", data, 0, 1, "not UTF-8 or GBK")
    return text.replace("\r\n", "\n").replace("\r", "\n"), enc


CELL_HEADER = "# ---- notebook cell "  # + 1-based cell number (markdown cells counted, as Jupyter shows them)
KEEP_CELL_MAGICS = {"time", "timeit", "capture", "prun"}  # their body is Python


def notebook_to_source(text):
    """Code cells not tagged "run", with IPython magics and shell lines removed."""
    import nbformat

    nb = nbformat.reads(text, as_version=4)
    parts = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "run" in (cell.get("metadata", {}).get("tags") or []):
            continue
        lines = cell.source.split("\n")
        first = lines[0].strip() if lines else ""
        if first.startswith("%%"):
            if first[2:].split()[0:1] and first[2:].split()[0] in KEEP_CELL_MAGICS:
                lines = lines[1:]
            else:
                continue  # %%bash, %%writefile, ...: not Python
        body, _n = neutralize_magics("\n".join(lines))
        parts.append(f"{CELL_HEADER}{i + 1} ----\n" + body)
    return "\n\n".join(parts) + "\n"


def write_lf(path, text):
    """UTF-8 with LF line ends on every OS (Path.write_text's newline= needs Python 3.10)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def prepare(submission, workdir):
    """Fill submission.clean (or submission.status/message): decode, convert, syntax-check. Runs no student code."""
    path = submission.file
    data = path.read_bytes()
    if len(data) > SOURCE_MAX_BYTES:
        submission.status, submission.message = "too_large", (f"文件过大（{len(data)} 字节）/ file too large ({len(data)} bytes): {path.name}")
        return submission
    try:
        text, enc = decode(data)
    except UnicodeDecodeError:
        submission.status = "encoding_error"
        submission.message = (f"无法识别文件编码（应为 UTF-8 或 GBK）/ cannot decode the file (expected UTF-8 or GBK): {path.name}")
        return submission
    bom, crlf = data.startswith(b"\xef\xbb\xbf"), b"\r" in data
    if enc != "utf-8-sig" or bom or crlf:
        kind = "GBK/GB18030" if enc == "gb18030" else "UTF-8"
        submission.notes.append(f"源文件编码 / source encoding: {kind}{' + BOM' if bom else ''}{' + CRLF' if crlf else ''}")
    if path.suffix.lower() == ".py":
        text = drop_coding_declaration(text)
    if path.suffix.lower() == ".ipynb":
        try:
            text = notebook_to_source(text)
        except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
            submission.status = "bad_notebook"
            submission.message = f"无法读取笔记本 / cannot read the notebook {path.name}: {type(e).__name__}: {e}"[:600]
            return submission
    try:
        ast.parse(text, filename=path.name)  # parse only: nothing is executed
    except SyntaxError as e:
        # A .py exported from Jupyter/Colab may still hold `!pip ...` or `%matplotlib` lines.
        stripped = _strip_magics(text) if path.suffix.lower() == ".py" else None
        if stripped is not None:
            try:
                ast.parse(stripped, filename=path.name)
                submission.notes.append("已删除 IPython 魔法命令 / IPython magic and shell lines removed")
                text, e = stripped, None
            except SyntaxError:
                pass
        if e is not None:
            return _syntax_error(submission, path, e)
    clean_dir = Path(tempfile.mkdtemp(prefix="e6src-", dir=workdir))
    submission.clean = clean_dir / "submission.py"
    write_lf(submission.clean, text)
    write_definitions(text, clean_dir)
    return submission


def _strip_magics(text):
    out, n = neutralize_magics(text)
    return out if n else None


def where(line, text):
    """'line N' of a .py, or 'notebook cell K, line N' for a converted notebook (see CELL_HEADER)."""
    lines = text.split("\n")
    for k in range(min(line, len(lines)) - 1, -1, -1):
        if lines[k].startswith(CELL_HEADER):
            cell = lines[k][len(CELL_HEADER):].split()[0]
            return f"笔记本第 {cell} 个单元格第 {line - k - 1} 行 / notebook cell {cell}, line {line - k - 1}"
    return f"第 {line} 行 / line {line}"


def warmup_source(text):
    """Every import the file makes at module level (outside the main guard and function bodies), each
    in its own try/except: imported by the worker before the file itself, so that the judge's CPU
    measure of the real import counts the file's own code, not the libraries it loads."""
    out = ["# Warm-up for the import-hygiene measure (grader/hygiene.py): the file's imports only."]

    def visit(stmts):
        for node in stmts:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                    isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                out.append("try:\n    " + ast.unparse(node) + "\nexcept BaseException:\n    pass")
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) and not _is_main_guard(node):
                for name in ("body", "orelse", "finalbody"):
                    visit(getattr(node, name, []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(ast.parse(text).body)
    return "\n".join(out) + "\n"


def write_definitions(text, clean_dir):
    """definitions.py (+ definitions_strict.py) and definitions.json next to submission.py, for the judge
    (grader/judge.py) to grade when importing the whole file fails, hangs or trains; warmup.py for
    the import-hygiene measure."""
    dropped = []
    for name, strict in (("definitions.py", False), ("definitions_strict.py", True)):
        try:
            src, dropped_now = definitions_only(text, strict=strict)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        write_lf(clean_dir / name, src)
        dropped = dropped if strict else dropped_now
    # The line to blame first (when the import did not fail at a known line): a loop, then a call,
    # then an assignment that calls something.
    dropped = sorted(dropped, key=lambda d: d[2])
    info = [{"line": ln, "text": t[:200], "where": where(ln, text)} for ln, t, _a in dropped[:20]]
    write_lf(clean_dir / "warmup.py", warmup_source(text))
    (clean_dir / "definitions.json").write_text(json.dumps({"dropped": info}, ensure_ascii=False), encoding="utf-8")


def _syntax_error(submission, path, e):
    submission.status = "syntax_error"
    line = (e.text or "").rstrip("\n")
    submission.message = (f"语法错误，无法导入，所有检查得 0 分 / syntax error, the file cannot be imported, every check "
                   f"scores 0:\n  {path.name}, line {e.lineno}: {e.msg}\n    {line}")
    return submission


# ----------------------------------------------------------------------------------------------
# PEP 263 coding declarations, IPython magics and shell lines
# ----------------------------------------------------------------------------------------------

_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def drop_coding_declaration(text):
    """The student process gets UTF-8: a `# -*- coding: gbk -*-` line (line 1 or 2, PEP 263) would make
    Python decode that UTF-8 as GBK. It becomes a plain comment, so line numbers stay the same."""
    lines = text.split("\n", 2)
    for i in range(min(2, len(lines))):
        m = _CODING.match(lines[i])
        if m:
            try:
                utf8 = codecs.lookup(m.group(1)).name == "utf-8"
            except LookupError:
                utf8 = False
            if not utf8:
                lines[i] = f"# (encoding declaration {m.group(1)!r} removed: the grader re-encoded this file as UTF-8)"
            break
        if lines[i].strip() and not lines[i].lstrip().startswith("#"):
            break  # PEP 263: only a comment line may come before the declaration
    return "\n".join(lines)


def _tokens_by_line(lines):
    """Tokens grouped by logical line, as IPython's inputtransformer2.make_tokens_by_line does: a new
    group after NEWLINE, or after NL outside brackets (lines continued by brackets, a backslash or a
    string stay in one group). Magic lines tokenize (as ERRORTOKENs); a tokenizer error ends the list."""
    groups, depth = [[]], 0
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            groups[-1].append(tok)
            if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and depth <= 0):
                groups.append([])
            elif tok.string in "([{" and tok.type == tokenize.OP:
                depth += 1
            elif tok.string in ")]}" and tok.type == tokenize.OP and depth > 0:
                depth -= 1
    except (tokenize.TokenError, SyntaxError, StopIteration):
        pass
    if not groups[-1]:
        groups.pop()
    return groups


def _assign_index(line):
    depth = 0
    for i, t in enumerate(line):
        if t.string == "=" and depth == 0:
            return i
        if t.string in ("(", "[", "{"):
            depth += 1
        elif t.string in (")", "]", "}") and depth > 0:
            depth -= 1
    return None


def _first_magic_fallback(groups):
    """(row, col) 1-based row of the first magic/shell/help line, by IPython's four token rules
    (EscapedCommand, MagicAssign, SystemAssign, HelpEnd), or None."""
    found = []
    for line in groups:
        ix = 0
        while ix < len(line) and line[ix].type in (tokenize.INDENT, tokenize.DEDENT):
            ix += 1
        if ix >= len(line):
            continue
        first = line[ix]
        if first.string in ("%", "!", "?", ",", ";", "/"):  # IPython: ESCAPE_SINGLES
            found.append(first.start)  # %magic, !shell, ?help at the start of a logical line
            continue
        a = _assign_index(line)
        if a is not None and a + 2 <= len(line) and not line[a].line.strip().startswith("="):
            nxt = line[a + 1] if a + 1 < len(line) else None
            if nxt is not None and nxt.string == "%" and a + 2 < len(line) and line[a + 2].type == tokenize.NAME:
                found.append(nxt.start)  # x = %time f()
                continue
            j = a + 1
            while j < len(line) and line[j].type == tokenize.ERRORTOKEN and line[j].string.isspace():
                j += 1
            if j < len(line) and line[j].string == "!":
                found.append(line[j].start)  # files = !ls
                continue
        if len(line) > 2 and line[-2].string == "?":
            found.append(line[ix].start)  # obj?
    return min(found) if found else None


def _first_magic_ipython(lines):
    from IPython.core import inputtransformer2 as it2

    groups = it2.make_tokens_by_line(lines)
    hits = [cls.find(groups) for cls in (it2.MagicAssign, it2.SystemAssign, it2.EscapedCommand, it2.HelpEnd)]
    hits = [h for h in hits if h]
    if not hits:
        return None
    h = min(hits, key=lambda h: (h.start_line, h.start_col))
    return h.start_line + 1, h.start_col


def _first_magic(lines):
    try:
        return _first_magic_ipython(lines)
    except ImportError:
        return _first_magic_fallback(_tokens_by_line(lines))


MAX_MAGICS = 500


def neutralize_magics(text):
    """Replace every IPython magic / shell / help line by `pass` (same indentation, same line count),
    where IPython would see one: at the start of a logical line, never inside brackets, after a
    backslash or inside a string, so a line-broken `!= b` or `% n` stays code. Uses IPython's own
    input transformer when IPython is installed, else the same token rules (see _first_magic_fallback).
    Returns (text, number of lines replaced)."""
    lines = [ln + "\n" for ln in text.split("\n")]
    done = 0
    while done < MAX_MAGICS:
        hit = _first_magic(lines)
        if hit is None:
            break
        row = hit[0] - 1
        end = row
        while end + 1 < len(lines) and lines[end].rstrip("\n").endswith("\\"):
            end += 1  # IPython continues a magic line with a trailing backslash
        indent = lines[row][: len(lines[row]) - len(lines[row].lstrip())]
        lines[row] = indent + "pass  # (magic removed)\n"
        for k in range(row + 1, end + 1):
            lines[k] = "\n"
        done += 1
    return "".join(lines)[:-1], done


# ----------------------------------------------------------------------------------------------
# Definitions-only copy: what is graded when importing the whole file fails, hangs or trains
# ----------------------------------------------------------------------------------------------

CONTRACT = ("PairedMedicalDataset", "Generator", "Discriminator", "build_losses", "build_optimizers",
            "train_step", "visualize")


def _is_main_guard(node):
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    sides = [node.test.left, *node.test.comparators]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return isinstance(node.test.ops[0], ast.Eq) and names == ["__name__"] and consts == ["__main__"]


def _bound(node):
    """Module-level names a statement binds."""
    out = set()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        for a in node.names:
            out.add(a.asname or a.name.split(".")[0])
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out.add(node.name)
    else:
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                out.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                out |= _bound(n)
    return out


def _loads(nodes):
    return {n.id for node in nodes if node is not None for n in ast.walk(node)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _definition_time_refs(node):
    """Names a def/class statement reads when it runs: decorators, defaults, annotations, bases."""
    parts = list(node.decorator_list)
    if isinstance(node, ast.ClassDef):
        parts += node.bases + [k.value for k in node.keywords]
    else:
        a = node.args
        parts += a.defaults + [d for d in a.kw_defaults if d is not None] + [node.returns]
        parts += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x is not None]
    return _loads(parts)


def _global_refs(table):
    """Global names read anywhere inside a function/class symbol table (nested scopes included)."""
    out = set()
    for s in table.get_symbols():
        if s.is_referenced() and (s.is_global() or (table.get_type() == "class" and not s.is_local())):
            out.add(s.get_name())
    for child in table.get_children():
        out |= _global_refs(child)
    return out


_ASSIGN = (ast.Assign, ast.AnnAssign, ast.AugAssign)


def _assignment_like(node):
    """An assignment, or an if/try block (not the main guard) holding only imports, defs, assignments."""
    if isinstance(node, _ASSIGN):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Starred)) and
                   all(isinstance(m, (ast.Name, ast.Tuple, ast.List, ast.Starred, ast.Store, ast.Load))
                       for m in ast.walk(n)) for n in targets)
    if isinstance(node, (ast.If, ast.Try)) and not _is_main_guard(node):
        body = list(node.body) + list(node.orelse) + list(getattr(node, "finalbody", []))
        for h in getattr(node, "handlers", []):
            body += h.body
        return all(isinstance(s, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                                  ast.ClassDef, ast.Pass)) or _assignment_like(s) for s in body)
    return False


def _class_body_refs(node):
    out = set()
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out |= _definition_time_refs(stmt)
            if isinstance(stmt, ast.ClassDef):
                out |= _class_body_refs(stmt)
        else:
            out |= _loads([stmt])
    return out


def _blame_rank(node):
    if any(isinstance(n, (ast.For, ast.AsyncFor, ast.While)) for n in ast.walk(node)):
        return 0
    return 2 if _assignment_like(node) else 1


def _has_call(node):
    return any(isinstance(n, ast.Call) for n in ast.walk(node))


def definitions_only(text, filename="submission.py", strict=False):
    """(source, actions): the file with only what its definitions need, and [(line, text, rank)] of the
    module-level statements left out that do something, in source order; rank 0 for loops (training),
    1 for other statements (a call), 2 for assignments that call something. Kept: every def/class; `from __future__`;
    each import, assignment or if/try block of imports and assignments whose names a def's
    decorators, defaults, annotations or bases read, or that the contract's functions and classes
    read (transitively, through what they call). Everything else (calls, loops, prints, the main
    guard) becomes blank lines, so line numbers stay those of the file. strict: also leave out the
    assignments that call something (the second try, when the first copy does not import).
    Raises SyntaxError."""
    tree = ast.parse(text, filename=filename)
    top = symtable.symtable(text, filename, "exec")
    tables = {(t.get_name(), t.get_lineno()): t for t in top.get_children()}
    stmts = tree.body
    defs, binders = {}, {}
    for i, node in enumerate(stmts):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lineno = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            t = tables.get((node.name, node.lineno)) or tables.get((node.name, lineno))
            defs[i] = _global_refs(t) if t is not None else _loads([node])
        for name in _bound(node):
            binders.setdefault(name, []).append(i)
    keep = set(defs)
    need = set()
    for i in defs:
        need |= _definition_time_refs(stmts[i])
        if isinstance(stmts[i], ast.ClassDef):  # the class body runs at definition time
            need |= _class_body_refs(stmts[i])
    need |= set(CONTRACT)
    seen, todo = set(), list(need)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for i in binders.get(name, []):
            node = stmts[i]
            if i in defs:
                todo += defs[i]  # a function the graded code reaches: what its body reads is needed
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                keep.add(i)
            elif _assignment_like(node) and not (strict and _has_call(node)):
                keep.add(i)
                todo += _loads([node])
    for i, node in enumerate(stmts):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            keep.add(i)
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            keep.add(i)  # the module docstring
    dropped = [stmts[i] for i in range(len(stmts)) if i not in keep]
    # What to name in the feedback: code that does something (not an unused import or constant).
    actions = [n for n in dropped if not (isinstance(n, (ast.Import, ast.ImportFrom, ast.Pass)) or _is_main_guard(n)
                                          or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                                          or (_assignment_like(n) and not _has_call(n)))]
    lines = text.split("\n")
    return _blank_out(text, dropped, [stmts[i] for i in sorted(keep)]), \
        [(n.lineno, lines[n.lineno - 1].strip(), _blame_rank(n)) for n in actions]


def _blank_out(text, dropped, kept):
    lines = text.split("\n")
    # Last first, so that a statement sharing its line with another (`x = 1; print(x)`) keeps valid offsets.
    for node in sorted(dropped, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        a, b = node.lineno - 1, node.end_lineno - 1
        head = lines[a].encode("utf-8")[: node.col_offset].decode("utf-8", "replace")
        tail = lines[b].encode("utf-8")[node.end_col_offset:].decode("utf-8", "replace")
        for k in range(a, b + 1):
            lines[k] = ""
        if head.strip() or tail.strip():
            lines[a] = head + "pass" + tail
    out = "\n".join(lines)
    try:
        ast.parse(out)
        return out
    except SyntaxError:  # an unusual layout: give up line numbers rather than correctness
        return ast.unparse(ast.Module(body=kept, type_ignores=[])) + "\n"


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------

def _visible(p):
    return not p.name.startswith((".", "~$")) and p.name not in SKIP_DIRS


def _candidates(folder, depth=3):
    out = []
    for p in sorted(folder.iterdir()):
        if not _visible(p):
            continue
        if p.is_file() and p.suffix.lower() in (".py", ".ipynb"):
            out.append(p)
        elif p.is_dir() and depth > 1 and not _is_grader_copy(p):
            out.extend(_candidates(p, depth - 1))
    return out


# Fingerprints of the kit's files a student may hand in untouched next to their own work (the blank
# template and notebook, the warm-up script, ...): never graded. Recorded when the kit and the student
# bundle are built (handout/make_student.py writes this file; `make_student.py --check` fails when it is
# stale), never taken from the files next to the grader: in the student bundle those are the student's own.
MANIFEST = Path(__file__).with_name("shipped.json")


def fingerprint(text, suffix):
    """What makes two files the same submission: a .py's text (any newline style or trailing whitespace),
    a notebook's code cells (Jupyter re-saves change metadata, ids and outputs). suffix: ".py"/".ipynb"."""
    suffix = suffix.lower()
    if suffix == ".ipynb":
        cells = json.loads(text).get("cells", [])
        code = [c.get("source", "") for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
        text = "\0".join("".join(c) if isinstance(c, list) else str(c) for c in code)
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return suffix, hashlib.sha256("\n".join(lines).strip("\n").encode("utf-8")).hexdigest()


def _fingerprint(path):
    try:
        data = path.read_bytes()
        if len(data) > SOURCE_MAX_BYTES:
            return None
        text, _ = decode(data)
        return fingerprint(text, path.suffix)
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None


@lru_cache(None)
def _shipped():
    try:
        files = json.loads(MANIFEST.read_text(encoding="utf-8"))["files"]
        return {(Path(name).suffix.lower(), digest): name for name, digest in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def shipped_name(path):
    """The kit file that `path` is an untouched copy of, or None."""
    fp = _fingerprint(path)
    return _shipped().get(fp) if fp is not None else None


def _is_grader_copy(folder):
    """A copy of this grader package (the student bundle ships it for self-checks): never a submission."""
    return folder.name == "grader" and (folder / "__main__.py").is_file() and (folder / "checks").is_dir()


def implemented_steps(text):
    """(contract names defined without a `raise NotImplementedError` stub, number of such stubs), by AST;
    a file that does not parse is counted by its text."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        stubs = len(re.findall(r"raise\s+NotImplementedError", text))
        names = set(re.findall(r"^(?:def|class)\s+(\w+)", text, re.M)) & set(CONTRACT)
        return 0 if stubs else len(names), stubs

    def stubs_in(node):
        return sum(1 for n in ast.walk(node) if isinstance(n, ast.Raise) and n.exc is not None and
                   "NotImplementedError" in {x.id for x in ast.walk(n.exc) if isinstance(x, ast.Name)})

    done = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in CONTRACT
            and not stubs_in(n)}
    return len(done), stubs_in(tree)


def _source_for_ranking(path):
    try:
        data = path.read_bytes()
        if len(data) > SOURCE_MAX_BYTES:
            return ""
        text, _ = decode(data)
        return notebook_to_source(text) if path.suffix.lower() == ".ipynb" else text
    except Exception:  # noqa: BLE001 - an unreadable file simply ranks last; prepare() reports it
        return ""


def choose_file(folder, with_skipped=False):
    """The one submission file in a student's folder, or (None, reason, message); with_skipped: a 4th
    item, [{"file", "reason"}] of the candidates not graded. Untouched copies of the kit's own files
    (template, notebook, helpers) are never graded; among the rest the file that implements the most
    contract steps (fewest `raise NotImplementedError` stubs) wins; ties fall back to the names
    student_template / experiment6, then to a lone .py."""
    cands = [p for p in _candidates(folder) if p.name != "__init__.py" and not p.name.startswith("test_")]
    rel = lambda p: str(p.relative_to(folder)).replace("\\", "/")  # noqa: E731
    skipped, real = [], []
    for p in cands:
        kit = shipped_name(p)
        if kit:
            skipped.append({"file": rel(p), "reason": f"与随附的 {kit} 相同（未修改）/ identical to the shipped {kit}"})
        else:
            real.append(p)
    out = _choose(folder, real, skipped, rel)
    if not real and skipped:
        names = ", ".join(s["file"] for s in skipped[:8])
        out = (None, "no_submission", f"只有未修改的随附文件（{names}）/ only untouched copies of the kit's files ({names})")
    return out + (skipped,) if with_skipped else out


def _choose(folder, cands, skipped, rel):
    if not cands:
        return None, "no_submission", (f"文件夹中没有 .py 或 .ipynb 文件 / no .py or .ipynb file in {folder.name}")
    if len(cands) > 1:
        rank = {p: implemented_steps(_source_for_ranking(p)) for p in cands}
        best = max((r[0], -r[1]) for r in rank.values())
        for p in cands:
            if (rank[p][0], -rank[p][1]) != best:
                skipped.append({"file": rel(p), "reason": f"实现的步骤较少（{rank[p][0]}/{len(CONTRACT)} 个接口）/ "
                                                          f"implements fewer steps ({rank[p][0]}/{len(CONTRACT)} "
                                                          f"contract names)"})
        cands = [p for p in cands if (rank[p][0], -rank[p][1]) == best]
    chosen = _by_name(cands)
    if chosen is None:
        return None, "ambiguous", _ambiguous(folder, cands)
    if isinstance(chosen, list):
        return None, "ambiguous", _ambiguous(folder, chosen)
    for p in cands:
        if p != chosen:
            skipped.append({"file": rel(p), "reason": f"同样完整，按文件名选了 {rel(chosen)} / as complete, "
                                                      f"{rel(chosen)} was chosen by its name"})
    return chosen, "ok", ""


def _by_name(cands):
    """student_template, else experiment6 (.py before .ipynb), else the only file, else a lone .py.
    A list: several files share the preferred name (ambiguous); None: no rule decides."""
    for stem in PREFERRED:
        for ext in (".py", ".ipynb"):
            named = [p for p in cands if p.name.lower() == stem + ext]
            if len(named) == 1:
                return named[0]
            if len(named) > 1:
                return named
    if len(cands) == 1:
        return cands[0]
    same = [p for p in cands if p.suffix.lower() == ".py"]
    return same[0] if len(same) == 1 else None


def _ambiguous(folder, files):
    names = ", ".join(str(p.relative_to(folder)) for p in files[:8])
    return (f"无法确定要评分的文件（{names}）：请只提交一个文件，或命名为 student_template.py / "
            f"cannot tell which file to grade ({names}): submit one file, or name it student_template.py")


def safe_extract(zpath, dest):
    """Extract a zip refusing absolute paths, '..', links and more than ZIP_MAX_BYTES in total."""
    with zipfile.ZipFile(zpath) as z:
        infos = z.infolist()
        if len(infos) > ZIP_MAX_FILES:
            raise ValueError(f"too many files ({len(infos)})")
        total = 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                raise ValueError(f"unsafe path in zip: {info.filename}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                continue  # symbolic link: skipped
            total += info.file_size
            if total > ZIP_MAX_BYTES:
                raise ValueError("archive expands to more than 200 MB")
            if info.flag_bits & 0x800 == 0:  # not marked UTF-8: Windows zips often hold GBK names
                try:
                    parts = [p.encode("cp437").decode("gb18030") for p in parts]
                except (UnicodeEncodeError, UnicodeDecodeError):
                    pass
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 2 ** 20)
    # A zip that wraps everything in one folder: look inside it.
    entries = [p for p in dest.iterdir() if _visible(p)]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _is_student_folder(folder):
    """A folder is ONE student's if it holds a preferred file at its top, or a copy of the grader (the
    whole student bundle, handed in), or only loose files (at most one .py/.ipynb besides untouched kit
    files, and no zips or sub-folders with code in them: outputs/ does not count). Otherwise it is a
    folder of submissions."""
    kids = [p for p in folder.iterdir() if _visible(p)]
    if any(p.is_dir() and _is_grader_copy(p) for p in kids):
        return True
    files = [p for p in kids if p.is_file() and p.suffix.lower() in (".py", ".ipynb") and not shipped_name(p)]
    if any(p.stem.lower() in PREFERRED for p in files):
        return True
    subs = [p for p in kids if p.suffix.lower() == ".zip" or (p.is_dir() and (
        _candidates(p) or any(q.suffix.lower() == ".zip" for q in p.iterdir())))]
    return not subs and len(files) <= 1


def discover(paths, workdir, single_student=False):
    """PATH... -> list of Submission (file chosen, not yet prepared)."""
    submissions = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"路径不存在 / path not found: {raw}")
        submissions.extend(_discover_one(p, workdir, single_student, top=True))
    if not submissions:
        raise UserError("没有找到可评分的提交（.py / .ipynb / 文件夹 / .zip）/ nothing gradable found "
                        "(.py, .ipynb, a folder or a .zip)")
    assign_ids(submissions)
    return submissions


# Names the grader writes at the top of --out (or may, in later versions): never a student id.
RESERVED_IDS = {"grades.csv", "grades", "summary.md", "summary.png", "summary.csv", "summary", "similarity.html",
                "similarity.csv", "similarity", "results.json", "feedback.md", "grading", "index.html"}
WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_ID_BYTES = 100  # UTF-8 bytes before any _N suffix: far below the 255-byte limit of a file name


def clean_id(raw):
    """A safe folder name from what the TA gave us: NFKC-normalised, then letters/digits/CJK, '-', '.', '_' only; no leading
    '-' or '.', at most MAX_ID_BYTES bytes; a reserved output name or Windows device gets a '_'."""
    # NFKC first: full-width 'ｂｏｂ' is 'bob', and an NFD name (macOS file systems) equals its NFC
    # spelling, so the uniqueness test below (case-folded) sees one name where a file system would.
    base = unicodedata.normalize("NFKC", raw)
    base = re.sub(r"[^\w.\-]+", "_", base).strip("._").lstrip("-.") or "student"
    enc = base.encode("utf-8")
    if len(enc) > MAX_ID_BYTES:
        base = enc[:MAX_ID_BYTES].decode("utf-8", "ignore").rstrip("._") or "student"
    if id_key(base) in RESERVED_IDS or id_key(base.split(".")[0]) in WINDOWS_DEVICES:
        base += "_"
    return base


def id_key(name):
    """What two ids must differ in: case-folded and NFKC-normalised (as a case-insensitive,
    normalisation-insensitive file system such as macOS's compares names)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def assign_ids(submissions):
    """Unique, stable ids over the whole batch (case-insensitively, for Windows/macOS file systems).
    The first submission with a given name keeps it; later ones get _2, _3, ... skipping every name
    that is taken or that another submission has itself (alice/, alice.py, alice_2.py -> alice,
    alice_3, alice_2). The same inputs in the same order always give the same ids."""
    bases = [clean_id(s.student) for s in submissions]
    own = {id_key(b) for b in bases}
    taken = set()
    for s, base in zip(submissions, bases):
        name, k = base, 1
        while id_key(name) in taken or (k > 1 and id_key(name) in own):
            k += 1
            name = f"{base}_{k}"
        taken.add(id_key(name))
        s.student = name
    return submissions


def _discover_one(p, workdir, single, top=False):
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".py", ".ipynb"):
            return [Submission(p.stem, str(p), file=p, label=p.name)]
        if suffix == ".zip":
            dest = Path(tempfile.mkdtemp(prefix="e6zip-", dir=workdir))
            try:
                root = safe_extract(p, dest)
            except (ValueError, zipfile.BadZipFile, OSError) as e:
                return [Submission(p.stem, str(p), status="bad_zip",
                                   message=f"无法解压 / cannot extract {p.name}: {e}")]
            return _discover_folder(root, p.stem, workdir, single, str(p))
        return [] if not top else _unsupported(p)
    if p.is_dir():
        return _discover_folder(p, p.name, workdir, single, str(p))
    return []


def _unsupported(p):
    raise UserError(f"不支持的文件类型 / unsupported file type: {p} (需要 / expected .py, .ipynb, .zip or a folder)")


def _discover_folder(folder, name, workdir, single, origin):
    if single or _is_student_folder(folder):
        return [_folder_submission(folder, name, origin)]
    out = []
    for kid in sorted(folder.iterdir()):
        if not _visible(kid):
            continue
        if kid.is_dir():
            out.append(_folder_submission(kid, kid.name, str(kid)))
        elif kid.suffix.lower() in (".py", ".ipynb"):
            out.append(Submission(kid.stem, str(kid), file=kid, label=kid.name))
        elif kid.suffix.lower() == ".zip":
            out.extend(_discover_one(kid, workdir, True))
    return out


def _folder_submission(folder, name, origin):
    f, status, msg, skipped = choose_file(folder, with_skipped=True)
    label = str(f.relative_to(folder)).replace("\\", "/") if f is not None else ""
    return Submission(name, origin, file=f, status=status, message=msg, label=label, skipped=skipped)
