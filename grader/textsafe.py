"""One sanitiser for every string a submission can influence, before it reaches any output.

A submission controls its file names, what it prints, its exception messages and the names of its
types. Any of these may hold terminal escape sequences (ANSI CSI/OSC: clear the screen, move the
cursor, write the clipboard, retitle the window), a carriage return that overwrites a line already
printed (a fake "Total 100 / 100"), or Unicode bidi controls that reorder what a reader sees in
feedback.md or an editor. `visible()` shows each such character as a Python-style escape (`\\x1b`,
`\\r`, `\\u202e`), so the text stays readable and nothing is lost, but nothing is interpreted.

report.score() runs every student-controlled field of a result through it; everything written
afterwards (console, feedback.md, grades.csv, results.json, the class summary) is built from that
result. The CLI also runs the few strings it prints before grading (the file being graded, a
command-line error naming a path) through it.
"""
import re

# Bidi embeddings/overrides/isolates and marks: they reorder text a reader sees (Trojan Source).
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# C0 controls but tab and newline, DEL, C1 controls (0x9b alone starts a CSI on some terminals),
# the Unicode line/paragraph separators (some viewers break lines there), and the bidi set.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029" + BIDI + "]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + BIDI + "]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(m):
    ch = m.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text, one_line=False):
    """text with every control and bidi character shown as an escape. Tabs and newlines are kept
    unless one_line (ids, file names, table cells), where they are escaped too. Lone surrogates
    (possible in text decoded with surrogateescape) are escaped as well."""
    s = str(text)
    s = (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_escape, s)
    if any("\ud800" <= c <= "\udfff" for c in s):
        s = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in s)
    return s


def is_visible(text, one_line=False):
    """True when visible() would change nothing (used by tests and assertions)."""
    return visible(text, one_line) == str(text)
