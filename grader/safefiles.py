"""The judge's file operations in folders the untrusted worker can write (trusted side).

Where *at() calls exist (Linux, macOS, BSD) the judge works through directory descriptors taken when
it made the folders, so the worker cannot redirect it by renaming or replacing a folder: a reply is
opened with O_NOFOLLOW | O_NONBLOCK relative to such a descriptor, must be a regular file, and its
size is checked before reading (a planted link or FIFO is refused, never followed or waited on). On
Windows (no Landlock, no separate user: "process isolation only") the same code runs on paths.

An .npz reply is held in memory and checked from its zip directory and .npy headers (numeric dtype,
shape consistent with the member, bounded size once inflated) before one byte of an array is
inflated, then read with allow_pickle=False.
"""
import io
import os
import stat
import zipfile

from grader import osfeatures

# The judge's own work on a reply (recomputing what it holds: G on every recorded input, ...) grows with
# its arrays, so their size is the per-request bound on that work. The largest real reply is 11 MB
# (ds_main: 42 slices of 256 x 256 float32); 32 MB leaves room for float64 and bounds a forged reply
# to 64 recomputed 256 x 256 images (a few seconds of the judge's CPU), well inside the budget.
MAX_NPZ = 32 * 2 ** 20  # bytes of one .npz reply as stored
MAX_NPZ_ARRAYS = 32 * 2 ** 20  # bytes of all its arrays once decompressed, checked from the headers
MAX_NPZ_MEMBERS = 4096

AT = osfeatures.DIR_FD
DIRFLAGS = os.O_RDONLY | osfeatures.O_DIRECTORY | osfeatures.O_NOFOLLOW | osfeatures.O_CLOEXEC


class CallFailed(Exception):
    """A request to the worker did not give a usable answer. kind: 'error' (student code raised),
    'missing', 'crashed', 'timeout', 'import_*', 'protocol' (a reply the judge refuses), 'malformed' (a reply
    that does not follow grader/protocol.py: the submission tampered with the worker), 'sandbox'
    (the promised restriction could not be applied: the worker refused to run student code)."""

    def __init__(self, kind, message, detail=""):
        super().__init__(message)
        self.kind, self.message, self.detail = kind, message, detail


def opendir(path, parent=None):
    """A descriptor of the folder (or its path where descriptors cannot be used)."""
    if not AT:
        return str(path) if parent is None else os.path.join(parent, path)
    return os.open(path, DIRFLAGS) if parent is None else os.open(path, DIRFLAGS, dir_fd=parent)


def closedir(d):
    if isinstance(d, int):
        try:
            os.close(d)
        except OSError:
            pass


def at(d, name):
    """(path, kwargs) for an os call on `name` inside folder d (a descriptor or a path)."""
    return (name, {"dir_fd": d}) if isinstance(d, int) else (os.path.join(d, name), {})


def read_nofollow(name, dir_fd, max_bytes):
    """Bytes of the regular file `name` in dir_fd, never following a link nor blocking on a FIFO or
    device; None if absent; CallFailed if it is not a regular file or larger than max_bytes."""
    flags = os.O_RDONLY | osfeatures.O_NOFOLLOW | osfeatures.O_NONBLOCK | osfeatures.O_CLOEXEC | osfeatures.O_BINARY
    try:
        path, kw = at(dir_fd, name)
        fd = os.open(path, flags, **kw)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP: a symbolic link; others: whatever it is, it is not our reply
        raise CallFailed("protocol", f"{name}: not a regular file ({os.strerror(e.errno)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CallFailed("protocol", f"{name}: not a regular file")
        if st.st_size > max_bytes:
            raise CallFailed("protocol", f"{name}: too large ({st.st_size} bytes, at most {max_bytes})")
        chunks, left = [], max_bytes + 1
        while left > 0:
            b = os.read(fd, min(left, 2 ** 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew while read
            raise CallFailed("protocol", f"{name}: too large")
        return data
    finally:
        os.close(fd)


def write_new(dir_fd, name, data, mode, group=None):
    """Create `name` in dir_fd (never through a link, never over an existing file), mode and, where
    given, group set whatever the umask. Returns False if the name is taken."""
    path, kw = at(dir_fd, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | osfeatures.O_NOFOLLOW | osfeatures.O_CLOEXEC
                     | osfeatures.O_BINARY, mode, **kw)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        if group is not None:
            os.fchown(f.fileno(), -1, group)
        if hasattr(os, "fchmod"):
            os.fchmod(f.fileno(), mode)
        f.write(data)
    return True


def set_mode(name, dir_fd, mode, group=None):
    """chmod (and chgrp) `name` inside dir_fd without following a link."""
    try:
        fd = os.open(name, os.O_RDONLY | osfeatures.O_NOFOLLOW | osfeatures.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def rmtree_at(parent, name, depth=0):
    """Remove `name` (a file or a whole folder) inside the folder descriptor `parent`, never following
    a link: what shutil.rmtree(name, dir_fd=parent) does from Python 3.11 on, for 3.9 and 3.10 too.
    Folders nested deeper than 100 levels are left (a planted tower must not exhaust descriptors)."""
    try:
        fd = os.open(name, DIRFLAGS, dir_fd=parent)
    except OSError:  # not a folder (or a link to one): unlink it
        try:
            os.unlink(name, dir_fd=parent)
        except OSError:
            pass
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for n, is_dir in entries:
            if is_dir and depth < 100:
                rmtree_at(fd, n, depth + 1)
            elif not is_dir:
                try:
                    os.unlink(n, dir_fd=fd)
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError:
        pass


def usage_bytes(dir_fd, limit_entries=200_000):
    """Bytes allocated under an open directory, walked without following links; an inode flood
    (more than limit_entries) counts as over any quota."""
    total, n = 0, 0
    if isinstance(dir_fd, str):  # no *at() calls (Windows): walk the path
        for root, dirs, files in os.walk(dir_fd):
            for name in files:
                n += 1
                if n > limit_entries:
                    return float("inf")
                try:
                    total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
                except OSError:
                    pass
        return total
    for _root, dirs, files, rootfd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in files + dirs:
            n += 1
            if n > limit_entries:
                return float("inf")
            try:
                total += os.stat(name, dir_fd=rootfd, follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return total


def check_npz(data, max_total=MAX_NPZ_ARRAYS):
    """Validate an .npz held in memory WITHOUT decompressing its arrays: member names, the declared
    uncompressed sizes, and each .npy header (numeric dtype, shape whose size matches the member).
    Raises CallFailed("protocol") on anything else. Returns {name: (dtype, shape)}."""
    import numpy as np  # here, not at the top: the CLI imports this package's sandbox code without numpy

    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CallFailed("protocol", f"reply is not a valid .npz ({e})") from None
    if len(infos) > MAX_NPZ_MEMBERS:
        raise CallFailed("protocol", f"reply has {len(infos)} arrays")
    total, out, seen = 0, {}, set()
    for info in infos:
        if not info.filename.endswith(".npy") or info.filename in seen or info.flag_bits & 0x1:
            raise CallFailed("protocol", f"unexpected member {info.filename[:80]!r} in the reply")
        seen.add(info.filename)
        total += info.file_size
        if total > max_total:
            raise CallFailed("protocol", f"reply arrays too large once decompressed (> {max_total} bytes)")
        try:
            with z.open(info) as f:  # reads (and inflates) only the small header
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
                else:
                    raise ValueError(f"npy version {version}")
                header_len = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as e:
            raise CallFailed("protocol", f"bad array header in the reply ({type(e).__name__}: {e})"[:300]) from None
        if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
            raise CallFailed("protocol", f"unexpected array type {dtype}")
        n = 1
        for d in shape:
            n *= int(d)
        if n * dtype.itemsize + header_len != info.file_size:
            raise CallFailed("protocol", f"array {info.filename[:80]!r}: header does not match its size")
        out[info.filename[:-4]] = (dtype, tuple(shape))
    return out


def load_npz(data):
    """{name: array} of an .npz held in memory: checked (check_npz) before anything is inflated."""
    import numpy as np

    check_npz(data)
    out = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for k in z.files:
                out[k] = z[k]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CallFailed("protocol", f"unreadable reply ({type(e).__name__}: {e})"[:300]) from None
    return out
