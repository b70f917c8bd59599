"""The one output helper every command uses.

Data goes to stdout (a Rich table on a TTY, one JSON document with ``--json``);
messages, warnings and progress go to stderr, and progress only when stderr is a TTY,
so cron logs stay clean.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from apstorage.text import printable


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self._out: Any = None
        self._err: Any = None

    @property
    def out(self):  # rich.console.Console on stdout
        if self._out is None:
            self._out = _safe_console(sys.stdout)
        return self._out

    @property
    def err(self):  # rich.console.Console on stderr
        if self._err is None:
            self._err = _safe_console(sys.stderr)
        return self._err

    def result(self, data: Any, render: Callable[[Any], None] | None = None) -> None:
        """The command's result: JSON with --json, else ``render(stdout console)``."""
        if self.json_mode or render is None:
            sys.stdout.write(json.dumps(data, default=str) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

    def info(self, message: str) -> None:
        self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", style="yellow", markup=False)

    def error(self, message: str, hint: str | None = None) -> None:
        """One line: what went wrong and, when there is one, what to do about it.

        Like every string printed here, it goes out with control characters escaped and
        known secrets blanked (``_safe_console``): one line, whatever the message quotes."""
        line = f"error: {message}" + (f" (hint: {hint})" if hint else "")
        self.err.print(line, style="bold red", markup=False, soft_wrap=True)

    @property
    def progress_enabled(self) -> bool:
        return sys.stderr.isatty()

    @contextmanager
    def progress(self, total: int | None, description: str, *, bytes_total: int | None = None) -> Iterator["Progress"]:
        """A progress bar on stderr when it is a TTY (files done of ``total``, bytes
        moved of ``bytes_total`` when given, rate, elapsed, ETA); otherwise nothing."""
        if not sys.stderr.isatty():
            yield Progress(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress as RichProgress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[moved]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with RichProgress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total, rate="", moved="")
            yield Progress(bar, task, bytes_total)


def _safe_console(file: Any) -> Any:
    """A Rich console that escapes control characters (``apstorage.text.printable``) and
    blanks known secrets (``config.scrub``) in every string it renders: messages and table
    cells alike, since keys, names and ids come from a catalog or a server. No markup and
    no emoji codes: ``[red]`` or ``:x:`` in a key prints as written."""
    from rich.console import Console

    from apstorage.config import scrub

    class SafeConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(printable(scrub(text), keep="\t"), **kwargs)

    return SafeConsole(file=file, highlight=False, soft_wrap=True, markup=False, emoji=False)


class Progress:
    """Advance a Rich task, or nothing when progress is off."""

    def __init__(self, bar: Any, task: Any, bytes_total: int | None = None) -> None:
        self.bar = bar
        self.task = task
        self.bytes_total = bytes_total
        self.bytes = 0

    def advance(self, n: int = 1, size: int = 0) -> None:
        """``n`` more files done, ``size`` more bytes moved."""
        if self.bar is None:
            return
        self.bar.advance(self.task, n)
        fields: dict[str, str] = {}
        if size or self.bytes_total:
            self.bytes += size
            of = f" of {human_size(self.bytes_total)}" if self.bytes_total else ""
            fields["moved"] = f"{human_size(self.bytes)}{of}"
        speed = self.bar.tasks[self.task].speed if hasattr(self.bar, "tasks") else None
        if speed:
            fields["rate"] = f"{speed:,.0f} files/s"
        if fields:
            self.bar.update(self.task, **fields)
