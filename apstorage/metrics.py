"""A run's figures for monitoring, as a Prometheus text file (``--metrics-file PATH``).

node_exporter's textfile collector reads every ``*.prom`` file in its directory at each
scrape; cron jobs write theirs there. Each run replaces its file atomically (prometheus_client's
``write_to_textfile``: a temporary file beside it, then a rename), so a scrape never sees
half a file. Every command that takes the flag writes, with ``JOB`` its name in snake_case
(``sweep_expired``, ``migrate_to_s3``, ``gc``, ``du``, ``check_iam``)::

    apstorage_JOB_success                          1 when the run finished without failures
    apstorage_JOB_exit_code                        the process's exit code (DESIGN §3)
    apstorage_JOB_duration_seconds                 how long the run took
    apstorage_JOB_last_run_timestamp_seconds       when it ended (Unix time)
    apstorage_JOB_last_success_timestamp_seconds   when a run last succeeded

plus the command's own figures (files, bytes, failures, per type or location). A failed
run keeps the previous ``last_success`` (read back from the old file), so an alert on
``time() - apstorage_sweep_expired_last_success_timestamp_seconds > 2 * 86400`` fires after
two days of failures or of no runs at all — the same convention as node_exporter's own
textfile examples. A dry run never counts as a success.

prometheus_client is imported only when a file is written: ``apstorage --help`` and runs
without the flag never load it.
"""

from __future__ import annotations

import os
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from apstorage.errors import ApStorageError, NotFoundError, PermissionDeniedError, UsageError

PREFIX = "apstorage"


@dataclass
class _Family:
    help: str
    labelnames: tuple[str, ...]
    values: list[tuple[dict[str, str], float]] = field(default_factory=list)


class RunMetrics:
    """The figures of one run of ``job``; ``write`` puts them in ``path``.

    ``set(name, value, help, **labels)`` records ``apstorage_JOB_name``; every sample of
    one name must carry the same label names.
    """

    def __init__(self, path: str | os.PathLike[str], job: str) -> None:
        self.path = Path(path)
        self.job = job
        self.started = time.monotonic()
        self.dry_run = False
        self._families: dict[str, _Family] = {}

    def name(self, name: str) -> str:
        return f"{PREFIX}_{self.job}_{name}"

    def set(self, name: str, value: float, help: str, **labels: object) -> None:
        family = self._families.setdefault(name, _Family(help, tuple(sorted(labels))))
        if tuple(sorted(labels)) != family.labelnames:
            raise ValueError(f"metric {name}: label names {sorted(labels)} != {list(family.labelnames)}")
        family.values.append(({k: "" if v is None else str(v) for k, v in labels.items()}, float(value)))

    def set_many(self, name: str, values: Mapping[str, float], help: str, label: str) -> None:
        """One sample per ``values`` item, labelled ``label=key``."""
        for key, value in values.items():
            self.set(name, value, help, **{label: key})

    def check_writable(self) -> None:
        """Refuse a path whose folder is missing or not writable, before the run does
        anything (the figures would be lost at the end)."""
        folder = self.path.parent
        if self.path.is_dir():
            raise UsageError(f"--metrics-file {self.path} is a directory; give a file path such as {self.path}/apstorage.prom")
        if not folder.is_dir():
            raise NotFoundError(f"--metrics-file: the folder {folder} does not exist")
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            # The file is replaced by a rename: a device (/dev/null), a FIFO or a symbolic
            # link there would be replaced by a regular file.
            raise UsageError(
                f"--metrics-file {self.path} exists and is not a regular file (a device, a FIFO or "
                "a symbolic link); it would be replaced: give the path of a regular file"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionDeniedError(f"--metrics-file: cannot write in {folder}")

    def write(self, *, exit_code: int, now: float | None = None) -> None:
        """Write the file: the recorded figures plus the run's outcome. ``exit_code`` 0
        (and not a dry run) is a success; otherwise ``last_success`` is carried over
        from the file being replaced."""
        from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

        now = time.time() if now is None else now
        success = exit_code == 0 and not self.dry_run
        last_success = now if success else self.previous_last_success()
        registry = CollectorRegistry()
        common = [
            ("success", 1 if success else 0, "1 when the last run finished without failures, else 0."),
            ("exit_code", exit_code, "Exit code of the last run (0 done, 1 failures, 130 interrupted, ...)."),
            ("duration_seconds", time.monotonic() - self.started, "How long the last run took, in seconds."),
            ("last_run_timestamp_seconds", now, "When the last run ended, in Unix time."),
            ("dry_run", 1 if self.dry_run else 0, "1 when the last run was a dry run (changed nothing)."),
        ]
        if last_success is not None:
            common.append(("last_success_timestamp_seconds", last_success,
                           "When a run last finished without failures, in Unix time."))
        for name, value, help in common:
            Gauge(self.name(name), help, registry=registry).set(value)
        for name, family in self._families.items():
            gauge = Gauge(self.name(name), family.help, labelnames=family.labelnames, registry=registry)
            for labels, value in family.values:
                (gauge.labels(**labels) if family.labelnames else gauge).set(value)
        try:
            write_to_textfile(str(self.path), registry)
        except PermissionError as exc:
            raise PermissionDeniedError(f"--metrics-file: cannot write {self.path}: {exc.strerror}") from None
        except OSError as exc:
            raise ApStorageError(f"--metrics-file: cannot write {self.path}: {exc.strerror or exc}") from None

    def previous_last_success(self) -> float | None:
        """``last_success`` from the file this run replaces, if it has one."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        wanted = self.name("last_success_timestamp_seconds")
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == wanted:
                        return float(sample.value)
        except ValueError:  # not a metrics file we can read: start afresh
            return None
        return None


def exit_code_of(exc: BaseException | None) -> int:
    """The exit code an exception ends the process with: ``ApStorageError`` and
    click's ``Exit`` carry one; Ctrl-C is 130; anything else 1."""
    if exc is None:
        return 0
    if isinstance(exc, KeyboardInterrupt):
        return 130
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return 1


@contextmanager
def recording(path: str | os.PathLike[str] | None, job: str) -> Iterator[RunMetrics | None]:
    """Around a command: checks ``path`` first, then writes the file however the block
    ends — success, failures, an error or an interrupt — and re-raises. Yields None (and
    writes nothing) when ``path`` is None."""
    if path is None:
        yield None
        return
    metrics = RunMetrics(path, job)
    metrics.check_writable()
    try:
        yield metrics
    except BaseException as exc:
        metrics.write(exit_code=exit_code_of(exc))
        raise
    metrics.write(exit_code=0)
