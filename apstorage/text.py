"""Untrusted text made safe for a terminal.

Keys, file names and ids come from a catalog or a server someone else wrote; an operator's
value can hold anything. Before such text reaches a person's terminal (tables, errors,
warnings, progress) ``printable`` escapes every character that could move the cursor, start
an escape sequence, forge a line or reverse the text around it. JSON output never goes
through here: it stays exact.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls (category Cc), line and paragraph separators, and the
# bidi embeddings/overrides/isolates (Trojan Source, CVE-2021-42574), which can disguise an
# extension or reorder a key on screen.
# ... and lone surrogates: a file name that is not UTF-8, as Python decodes it (printing
# one as it is would fail with UnicodeEncodeError).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object, keep: str = "") -> str:
    """``text`` as a string with control characters escaped the way ``repr`` shows them.

    ``"a\\x1b[31mb\\n"`` becomes ``a\\x1b[31mb\\n`` (backslash escapes, one line). Printable
    characters, including non-ASCII letters, are kept as they are, and so are the characters
    in ``keep`` (the output layer keeps tabs: they move the cursor but start no sequence).
    """
    value = text if isinstance(text, str) else str(text)
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), value)
    return _UNSAFE.sub(_escape, value)


def has_control(text: str, *, allow: str = "") -> int | None:
    """The index of the first control character in ``text`` (see ``printable``) that is
    not in ``allow``, or None."""
    for match in _UNSAFE.finditer(text):
        if match.group() not in allow:
            return match.start()
    return None


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 day``, ``2 days``, ``1,234 files``: the count with thousands separators and
    the noun in the right number (``words`` for irregular plurals). The one helper every
    layer uses for a count in a message (``apstorage.cli.output`` re-exports it)."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


__all__ = ["printable", "has_control", "plural"]
