"""Durations on the command line: ``90`` (seconds), ``30s``, ``15m``, ``1h``, ``7d``.

One parser for every flag that takes a duration (``presign --expires``, and later
``--older-than 30d``), so they all accept the same spellings and refuse the same way.
"""

from __future__ import annotations

import re

from apstorage.errors import UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ACCEPTED = "a whole number of seconds, or a number followed by s, m, h or d (e.g. 90, 15m, 1h, 7d)"

# ASCII digits only (\d would take other scripts' digits), at most 12 of them: longer is
# a typo, and Python refuses int() of very long digit strings.
_DURATION_RE = re.compile(r"[ ]*([0-9]{1,12})[ ]*([smhd]?)[ ]*", re.IGNORECASE)
MAX_DURATION = 36500 * 86400  # 100 years: further back than any date a catalog holds


def parse_duration(
    value: str | int, flag: str = "--expires", *, minimum: int = 1, maximum: int = MAX_DURATION
) -> int:
    """The number of seconds ``value`` stands for, between ``minimum`` and ``maximum``;
    UsageError (exit 2) naming ``flag`` when it is not one."""
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value)
        if not match:
            raise UsageError(f"{flag}: {value[:40]!r} is not a duration; accepted: {ACCEPTED}")
        seconds = int(match.group(1)) * UNITS[(match.group(2) or "s").lower()]
    if seconds < minimum:
        raise UsageError(f"{flag}: {value!r} is too short; give at least {minimum} s")
    if seconds > maximum:
        raise UsageError(
            f"{flag}: {value!r} is too long; give at most {format_duration(maximum)} ({maximum} s)"
        )
    return seconds


def format_duration(seconds: int) -> str:
    """The largest exact unit: 604800 → ``7d``, 5400 → ``90m``, 90 → ``90s``."""
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
