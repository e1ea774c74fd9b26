"""Finding submissions and turning each into one clean UTF-8 .py file (trusted side, no execution).

Accepted inputs: a .py file, a .ipynb notebook, a folder per student, a folder of such (or of
.py/.ipynb files), or a .zip of any of these. Sources in GBK/GB18030, with a UTF-8 BOM or with CRLF
line ends grade exactly like clean UTF-8.
"""
import ast
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
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
        kept = []
        for line in lines:
            s = line.lstrip()
            if s.startswith(("%", "!")):
                # Keep the indentation valid: a magic inside a block becomes `pass`.
                kept.append(line[: len(line) - len(s)] + "pass  # (magic removed)")
            else:
                kept.append(line)
        parts.append(f"# ---- notebook cell {i} ----\n" + "\n".join(kept))
    return "\n\n".join(parts) + "\n"


def prepare(sub, workdir):
    """Fill sub.clean (or sub.status/message): decode, convert, syntax-check. Runs no student code."""
    path = sub.file
    data = path.read_bytes()
    if len(data) > SOURCE_MAX_BYTES:
        sub.status, sub.message = "too_large", (f"文件过大（{len(data)} 字节）/ file too large ({len(data)} bytes): {path.name}")
        return sub
    try:
        text, enc = decode(data)
    except UnicodeDecodeError:
        sub.status = "encoding_error"
        sub.message = (f"无法识别文件编码（应为 UTF-8 或 GBK）/ cannot decode the file (expected UTF-8 or GBK): {path.name}")
        return sub
    bom, crlf = data.startswith(b"\xef\xbb\xbf"), b"\r" in data
    if enc != "utf-8-sig" or bom or crlf:
        kind = "GBK/GB18030" if enc == "gb18030" else "UTF-8"
        sub.notes.append(f"源文件编码 / source encoding: {kind}{' + BOM' if bom else ''}{' + CRLF' if crlf else ''}")
    if path.suffix.lower() == ".ipynb":
        try:
            text = notebook_to_source(text)
        except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
            sub.status = "bad_notebook"
            sub.message = f"无法读取笔记本 / cannot read the notebook {path.name}: {type(e).__name__}: {e}"[:600]
            return sub
    try:
        ast.parse(text, filename=path.name)  # parse only: nothing is executed
    except SyntaxError as e:
        # A .py exported from Jupyter/Colab may still hold `!pip ...` or `%matplotlib` lines.
        stripped = _strip_magics(text) if path.suffix.lower() == ".py" else None
        if stripped is not None:
            try:
                ast.parse(stripped, filename=path.name)
                sub.notes.append("已删除 IPython 魔法命令 / IPython magic and shell lines removed")
                text, e = stripped, None
            except SyntaxError:
                pass
        if e is not None:
            return _syntax_error(sub, path, e)
    clean_dir = Path(tempfile.mkdtemp(prefix="e6src-", dir=workdir))
    sub.clean = clean_dir / "submission.py"
    sub.clean.write_text(text, encoding="utf-8", newline="\n")
    return sub


def _strip_magics(text):
    lines = text.split("\n")
    out = [ln[: len(ln) - len(ln.lstrip())] + "pass  # (magic removed)" if ln.lstrip().startswith(("%", "!"))
           else ln for ln in lines]
    return "\n".join(out) if out != lines else None


def _syntax_error(sub, path, e):
    sub.status = "syntax_error"
    line = (e.text or "").rstrip("\n")
    sub.message = (f"语法错误，无法导入，所有检查得 0 分 / syntax error, the file cannot be imported, every check "
                   f"scores 0:\n  {path.name}, line {e.lineno}: {e.msg}\n    {line}")
    return sub


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
        elif p.is_dir() and depth > 1:
            out.extend(_candidates(p, depth - 1))
    return out


def choose_file(folder):
    """The one submission file in a student's folder, or (None, reason, message)."""
    cands = [p for p in _candidates(folder) if p.name != "__init__.py" and not p.name.startswith("test_")]
    if not cands:
        return None, "no_submission", (f"文件夹中没有 .py 或 .ipynb 文件 / no .py or .ipynb file in {folder.name}")
    for stem in PREFERRED:
        for ext in (".py", ".ipynb"):
            named = [p for p in cands if p.name.lower() == stem + ext]
            if len(named) == 1:
                return named[0], "ok", ""
            if len(named) > 1:
                return None, "ambiguous", _ambiguous(folder, named)
    if len(cands) == 1:
        return cands[0], "ok", ""
    for ext in (".py", ".ipynb"):
        same = [p for p in cands if p.suffix.lower() == ext]
        if len(same) == 1 and ext == ".py":
            return same[0], "ok", ""
    return None, "ambiguous", _ambiguous(folder, cands)


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
    """A folder is ONE student's if it holds a preferred file at its top, or only loose files
    (at most one .py/.ipynb, no sub-folders or zips). Otherwise it is a folder of submissions."""
    kids = [p for p in folder.iterdir() if _visible(p)]
    files = [p for p in kids if p.is_file() and p.suffix.lower() in (".py", ".ipynb")]
    if any(p.stem.lower() in PREFERRED for p in files):
        return True
    subs = [p for p in kids if p.is_dir() or p.suffix.lower() == ".zip"]
    return not subs and len(files) <= 1


def discover(paths, workdir, single_student=False):
    """PATH... -> list of Submission (file chosen, not yet prepared)."""
    subs = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"路径不存在 / path not found: {raw}")
        subs.extend(_discover_one(p, workdir, single_student, top=True))
    if not subs:
        raise UserError("没有找到可评分的提交（.py / .ipynb / 文件夹 / .zip）/ nothing gradable found "
                        "(.py, .ipynb, a folder or a .zip)")
    assign_ids(subs)
    return subs


# Names the grader writes at the top of --out (or may, in later versions): never a student id.
RESERVED_IDS = {"grades.csv", "grades", "summary.md", "summary.png", "summary.csv", "summary", "similarity.html",
                "similarity.csv", "similarity", "results.json", "feedback.md", "grading", "index.html"}
WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_ID_BYTES = 100  # UTF-8 bytes before any _N suffix: far below the 255-byte limit of a file name


def clean_id(raw):
    """A safe folder name from what the TA gave us: letters/digits/CJK, '-', '.', '_' only; no leading
    '-' or '.', at most MAX_ID_BYTES bytes; a reserved output name or Windows device gets a '_'."""
    base = re.sub(r"[^\w.\-]+", "_", raw).strip("._").lstrip("-.") or "student"
    enc = base.encode("utf-8")
    if len(enc) > MAX_ID_BYTES:
        base = enc[:MAX_ID_BYTES].decode("utf-8", "ignore").rstrip("._") or "student"
    if base.casefold() in RESERVED_IDS or base.split(".")[0].casefold() in WINDOWS_DEVICES:
        base += "_"
    return base


def assign_ids(subs):
    """Unique, stable ids over the whole batch (case-insensitively, for Windows/macOS file systems).
    The first submission with a given name keeps it; later ones get _2, _3, ... skipping every name
    that is taken or that another submission has itself (alice/, alice.py, alice_2.py -> alice,
    alice_3, alice_2). The same inputs in the same order always give the same ids."""
    bases = [clean_id(s.student) for s in subs]
    own = {b.casefold() for b in bases}
    taken = set()
    for s, base in zip(subs, bases):
        name, k = base, 1
        while name.casefold() in taken or (k > 1 and name.casefold() in own):
            k += 1
            name = f"{base}_{k}"
        taken.add(name.casefold())
        s.student = name
    return subs


def _discover_one(p, workdir, single, top=False):
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".py", ".ipynb"):
            return [Submission(p.stem, str(p), file=p)]
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
        f, status, msg = choose_file(folder)
        return [Submission(name, origin, file=f, status=status, message=msg)]
    out = []
    for kid in sorted(folder.iterdir()):
        if not _visible(kid):
            continue
        if kid.is_dir():
            f, status, msg = choose_file(kid)
            out.append(Submission(kid.name, str(kid), file=f, status=status, message=msg))
        elif kid.suffix.lower() in (".py", ".ipynb"):
            out.append(Submission(kid.stem, str(kid), file=kid))
        elif kid.suffix.lower() == ".zip":
            out.extend(_discover_one(kid, workdir, True))
    return out
