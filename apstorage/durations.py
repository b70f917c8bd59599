"""Durations on the command line: ``90`` (seconds), ``30s``, ``15m``, ``1h``, ``7d``.

One parser for every flag that takes a duration (``presign --expires``, and later
``--older-than 30d``), so they all accept the same spellings and refuse the same way.
"""

from __future__ import annotations

import re

from apstorage.errors import UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ACCEPTED = "a whole number of seconds, or a number followed by s, m, h or d (e.g. 90, 15m, 1h, 7d)"

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(value: str | int, flag: str = "--expires", *, minimum: int = 1) -> int:
    """The number of seconds ``value`` stands for; UsageError (exit 2) when it is not one."""
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise UsageError(f"{flag}: {value!r} is not a duration; accepted: {ACCEPTED}")
        seconds = int(match.group(1)) * UNITS[(match.group(2) or "s").lower()]
    if seconds < minimum:
        raise UsageError(f"{flag}: {value!r} is too short; give at least {minimum} s")
    return seconds


def format_duration(seconds: int) -> str:
    """The largest exact unit: 604800 → ``7d``, 5400 → ``90m``, 90 → ``90s``."""
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
