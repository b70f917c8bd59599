"""The one output helper every command uses.

Data goes to stdout (a Rich table on a TTY, one JSON document with ``--json``);
messages, warnings and progress go to stderr, and progress only when stderr is a TTY,
so cron logs stay clean.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from apstorage.text import plural, printable  # plural: re-exported for the commands


def human_size(n: int | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``19.5 MiB``; ``-`` for unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size):,} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``3 min 04 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def summary_line(
    command: str,
    verb: str,
    files: int,
    size: int | None,
    seconds: float,
    counts: Sequence[tuple[int, str]] = (),
    *,
    interrupted: bool = False,
    dry_run: bool = False,
) -> str:
    """The one line a run leaves in a log, the same shape for every command that moves
    or deletes files::

        sweep-expired: deleted 2,000 files (19.5 MiB) in 3.2 s; 0 failed
        migrate-to-s3: migrated 812 files (7.9 MiB) in 1.4 s; 3 skipped, 0 failed; interrupted: run it again to finish

    ``counts`` are (n, label) pairs after the duration (failed, skipped, ...).
    """
    line = f"{command}: {verb} {plural(files, 'file')}"
    if size is not None:
        line += f" ({human_size(size)})"
    line += f" in {human_duration(seconds)}"
    if counts:
        line += "; " + ", ".join(f"{n:,} {label}" for n, label in counts)
    if dry_run:
        line += "; dry run: nothing changed"
    if interrupted:
        line += "; interrupted: run it again to finish"
    return line


def retention_check(settings: Any) -> dict[str, str] | None:
    """Where settings are reviewed (``config``, ``lifecycle show``, ``check-iam``):
    AP_EXECUTION_DATA_RETENTION_DAYS against AP_PAUSED_FLOW_TIMEOUT_DAYS
    (``model.retention_race``) as ``{"level": "warning"|"note", "message"}``, the
    ``retentionCheck`` of their --json, or None when the retention is longer. Sweeps say
    only the shorter case (``model.retention_race_warning``)."""
    found = settings.retention_race
    return None if found is None else {"level": found[0], "message": found[1]}


def show_retention_check(out: "Output", check: dict[str, str] | None) -> None:
    """``retention_check``'s line on stderr: ``warning: ...`` when the retention is shorter
    than the pause timeout, ``note: ...`` when they are equal (the platform's defaults)."""
    if check is None:
        return
    if check["level"] == "warning":
        out.warn(check["message"])
    else:
        out.info(f"note: {check['message']}")


def new_table(*headers: str, right: Iterable[str] = (), title: str | None = None):
    """A Rich table that never cuts a value: text columns fold long values onto more
    lines instead of ending them with "…", and on a console that is not a terminal
    (see ``Output``) nothing needs to fold at all. Columns named in ``right`` (counts,
    sizes) are right-aligned."""
    from rich.table import Table

    numeric = set(right)
    table = Table(title=title)
    for header in headers:
        table.add_column(
            header,
            justify="right" if header in numeric else "left",
            overflow="fold",
            no_wrap=header in numeric,
        )
    return table


def record_metrics(path: str | None, job: str):
    """``with record_metrics(--metrics-file, "sweep_expired") as metrics:`` — a
    ``apstorage.metrics.RunMetrics`` that is written however the block ends (None, and
    prometheus_client never imported, without the flag)."""
    if path is None:
        from contextlib import nullcontext

        return nullcontext()
    from apstorage.metrics import recording

    return recording(path, job)


def failure_lines(failures: Iterable[tuple[str, ...]], total: int, verb: str, *, shown: int = 5) -> list[str]:
    """Failures grouped by reason, for people and cron logs: one line per distinct reason
    with its count, then up to ``shown`` of the files it hit. ``failures`` are (what,
    reason) or (what, reason, key) tuples — a listed subset; ``total`` counts them all.
    A reason that names its file's own key (``s3://b/project/p/...``) is grouped with the
    same reason for other keys, the key written ``<key>``; ``what`` still names it::

        kept 30 files: S3 at http://... refused access to s3://demo/<key> (AccessDenied: ...)
          FLOW_RUN_LOG 0OZpPAtwnLyyiDF6b2mQO (S3 project/p/FLOW_RUN_LOG/0OZpP...)
          ... and 25 more
    """
    by_reason: dict[str, list[str]] = {}
    for what, reason, *key in failures:
        if key and key[0] and key[0] in reason:
            reason = reason.replace(key[0], "<key>")
        by_reason.setdefault(reason, []).append(what)
    listed = sum(len(v) for v in by_reason.values())
    lines: list[str] = []
    for reason, items in by_reason.items():
        count = len(items) + (total - listed if len(by_reason) == 1 else 0)
        lines.append(f"{verb} {plural(count, 'file')}: {reason}")
        lines += [f"  {what}" for what in items[:shown]]
        if count > shown:
            lines.append(f"  ... and {count - shown:,} more")
    if len(by_reason) > 1 and total > listed:
        lines.append(f"... and {total - listed:,} more {verb} (--json lists the first {listed:,})")
    return lines


# Width of a console that is not a terminal: wide enough that no table cell is ever
# folded or cut, so a pipe or a log file carries every key, filter and ARN whole.
# Rich sizes tables to their content, so rows are no wider than they need to be.
PIPE_WIDTH = 100_000


class Output:
    """Where a command's output goes. ``json_mode``: one JSON document on stdout.
    ``quiet``: messages are dropped except failures (errors, and a summary line that
    reports failures)."""

    def __init__(self, json_mode: bool = False, *, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
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

    @property
    def interactive(self) -> bool:
        """A person is watching stderr (a terminal), not cron or a pipe."""
        return sys.stderr.isatty()

    def result(self, data: Any, render: Callable[[Any], None] | None = None) -> None:
        """The command's result: JSON with --json, else ``render(stdout console)``."""
        if self.json_mode or render is None:
            sys.stdout.write(json.dumps(data, default=str) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    def note(self, message: str) -> None:
        """A message only a person at a terminal needs ("nothing to migrate"); cron logs
        and pipes stay empty."""
        if self.interactive and not self.json_mode:
            self.info(message)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", style="yellow", markup=False)

    def error(self, message: str, hint: str | None = None) -> None:
        """One line: what went wrong and, when there is one, what to do about it.

        Like every string printed here, it goes out with control characters escaped and
        known secrets blanked (``_safe_console``): one line, whatever the message quotes."""
        line = f"error: {message}" + (f" (hint: {hint})" if hint else "")
        self.err.print(line, style="bold red", markup=False, soft_wrap=True)

    def fail(self, message: str, hint: str | None, exit_code: int) -> None:
        """A failure at the error boundary: the stderr line and, with --json, the
        ``{"error": {"message", "hint", "exitCode"}}`` document on stdout, so a script
        never parses an empty stdout."""
        self.error(message, hint)
        if self.json_mode:
            doc = {"error": {"message": message, "hint": hint, "exitCode": exit_code}}
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()

    def failures(self, failures: Iterable[tuple[str, ...]], total: int, verb: str) -> None:
        """Failed files on stderr, grouped by reason (see ``failure_lines``); shown even
        with --quiet."""
        for line in failure_lines(failures, total, verb):
            if line.startswith(" "):
                self.err.print(line, markup=False, soft_wrap=True)
            else:
                self.error(line)

    def summary(self, line: str, *, failed: bool = False) -> None:
        """The run's one summary line on stderr (see ``summary_line``); with --quiet,
        only when something failed."""
        if failed or not self.quiet:
            self.err.print(line, markup=False, style="bold red" if failed and self.interactive else None)

    @property
    def progress_enabled(self) -> bool:
        return sys.stderr.isatty()

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner with ``message`` ("counting expired files…") on a TTY stderr while
        something without a known length runs; nothing otherwise."""
        if not self.progress_enabled:
            yield
            return
        with self.err.status(message, spinner="dots"):
            yield

    @contextmanager
    def progress(
        self, total: int | None, description: str, *, bytes_total: int | None = None, unit: str = "files"
    ) -> Iterator["Progress"]:
        """A progress bar on stderr when it is a TTY: files done of ``total``, bytes done
        of ``bytes_total`` when given, rate and time left; otherwise nothing. Give the
        totals (a count query under ``status``) so the bar never shows ``0/?``."""
        if not self.progress_enabled or total == 0:
            yield Progress(None, None)
            return
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn

        # Fits 80 columns: migrating ━━━━━━━ 200/2,300 files  2.0/20.7 MiB  47 files/s  eta 45 s
        columns = [
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[moved]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
        ]
        with RichProgress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total, files="", moved="", rate="", eta="")
            tracker = Progress(bar, task, bytes_total, unit=unit)
            tracker.advance(0)
            yield tracker


def _safe_console(file: Any) -> Any:
    """A Rich console that escapes control characters (``apstorage.text.printable``) and
    blanks known secrets (``config.scrub``) in every string it renders: messages and table
    cells alike, since keys, names and ids come from a catalog or a server. No markup and
    no emoji codes: ``[red]`` or ``:x:`` in a key prints as written. Off a terminal the
    console is ``PIPE_WIDTH`` wide, so a pipe or a log carries every value whole."""
    from rich.console import Console

    from apstorage.config import scrub

    class SafeConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(printable(scrub(text), keep="\t"), **kwargs)

    # Off a terminal, wide enough that no table cell is folded or cut (PIPE_WIDTH).
    width = None if file.isatty() else PIPE_WIDTH
    return SafeConsole(file=file, highlight=False, soft_wrap=True, markup=False, emoji=False, width=width)


class Progress:
    """Advance a Rich task, or nothing when progress is off. Thread-safe (Rich locks)."""

    def __init__(self, bar: Any, task: Any, bytes_total: int | None = None, *, unit: str = "files") -> None:
        self.bar = bar
        self.task = task
        self.bytes_total = bytes_total
        self.unit = unit
        self.bytes = 0

    def advance(self, n: int = 1, size: int = 0) -> None:
        """``n`` more files done, ``size`` more bytes moved."""
        if self.bar is None:
            return
        self.bar.advance(self.task, n)
        self.bytes += size or 0
        task = self.bar.tasks[self.task]
        done, total = int(task.completed), task.total
        fields = {"files": f"{done:,}/{int(total):,} {self.unit}" if total else f"{done:,} {self.unit}"}
        if self.bytes or self.bytes_total:
            of = f" of {human_size(self.bytes_total)}" if self.bytes_total else ""
            fields["moved"] = f"{human_size(self.bytes)}{of}"
        elapsed = task.elapsed or 0.0
        if elapsed > 1.0 and done:
            fields["rate"] = f"{done / elapsed:,.0f} {self.unit}/s"
            left = (total - done) * elapsed / done if total and total > done else 0
            fields["eta"] = f"eta {human_duration(left)}" if left else ""
        if total is not None and done > total:  # more than counted (rows added meanwhile)
            self.bar.update(self.task, total=done)
        self.bar.update(self.task, **fields)
