"""`sweep-expired`: the cron job that deletes expired execution data."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from typing import Optional

import typer

from apstorage.cli.app import (
    DRY_RUN_OPTION, JSON_OPTION, METRICS_OPTION, QUIET_OPTION, VERBOSE_OPTION, app, handle_errors,
)
from apstorage.cli.output import Output, human_size, new_table, plural, record_metrics, summary_line
from apstorage.model import EXPIRING_TYPES

# The types --types accepts (DESIGN §1: execution data that expires; FLOW_BUNDLE is not one).
SWEEPABLE_HELP = ", ".join(sorted(EXPIRING_TYPES))


@app.command("sweep-expired")
@handle_errors
def sweep_expired_cmd(
    retention_days: Optional[int] = typer.Option(
        None, "--retention-days", min=1, max=36500, metavar="N",
        help="Delete execution data older than N days (default: AP_EXECUTION_DATA_RETENTION_DAYS, 30).",
    ),
    types: Optional[str] = typer.Option(
        None, "--types", metavar="T,..",
        help=f"Comma-separated types to sweep, among {SWEEPABLE_HELP} (default: all six). "
        "Permanent types and FLOW_BUNDLE are refused.",
    ),
    batch_size: int = typer.Option(
        1000, "--batch-size", min=1, max=100_000, metavar="N",
        help="Rows selected and deleted per batch (one short transaction each).",
    ),
    max_delete: Optional[int] = typer.Option(
        None, "--max-delete", min=1, max=1_000_000_000, metavar="N", help="Stop after N files in this run.",
    ),
    workers: int = typer.Option(
        8, "--workers", min=1, max=64, metavar="N",
        help="Batches whose bytes are deleted concurrently.",
    ),
    purge_versions: bool = typer.Option(
        False, "--purge-versions",
        help="On a versioned bucket, delete every version and delete marker of the swept keys "
        "(never of a key another row references), so the bytes are really gone; a row is "
        "deleted only once its key has no version left. Without it a delete there only adds "
        "a delete marker and the bytes stay as noncurrent versions (the summary says how many).",
    ),
    verbose: bool = VERBOSE_OPTION,
    quiet: bool = QUIET_OPTION,
    metrics_file: Optional[str] = METRICS_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Delete expired execution data (the cron job).

    Bytes go first, then exactly the rows whose bytes are gone.

    Only execution data that expires is swept; FLOW_BUNDLE and permanent files are never
    touched. A project's own executionDataRetentionDays counts, clamped to
    [AP_PAUSED_FLOW_TIMEOUT_DAYS, AP_EXECUTION_DATA_RETENTION_DAYS]; a retention shorter
    than the pause timeout is warned about on every run (equal, the platform's defaults,
    is not). A file its
    store refuses to delete keeps its row and makes the run exit 1. Safe in cron: one
    summary line when it deleted or failed something, nothing when nothing had expired.
    On Postgres several runs (hosts) at once share the work, each batch claimed by one
    run; on SQLite a run that finds another one holding the sweep lock exits 0 and says so. Ctrl-C (or
    SIGTERM) finishes the batches in flight, prints what was done and exits 130.
    """
    from apstorage.cli.interrupt import stop_on_signals
    from apstorage.services.context import Storage
    from apstorage.services.sweep import S3_PARTS, count_expired, resolve_types, sweep_expired

    from apstorage.model import split_items

    type_list = resolve_types(split_items(types, "--types"))
    out = Output(json_out, quiet=quiet)
    with record_metrics(metrics_file, "sweep_expired") as metrics, stop_on_signals() as interrupt:
        started = time.monotonic()
        # The S3 connection pool holds every DeleteObjects in flight: --workers batches, each
        # in up to S3_PARTS parts.
        with Storage(workers=workers * S3_PARTS) as storage:
            total = total_bytes = None
            if out.progress_enabled and not dry_run:
                with out.status("counting expired files…"):
                    total, total_bytes = count_expired(
                        storage, retention_days=retention_days, types=type_list, max_delete=max_delete
                    )
            waiting = out.status("counting expired files…") if dry_run else nullcontext()
            with waiting, out.progress(total, "sweeping", bytes_total=total_bytes) as bar:
                report = sweep_expired(
                    storage,
                    retention_days=retention_days,
                    types=type_list,
                    batch_size=batch_size,
                    max_delete=max_delete,
                    dry_run=dry_run,
                    workers=workers,
                    on_batch=lambda deleted, failed, size: bar.advance(deleted + failed, size),
                    stop=interrupt.event,
                    purge_versions=purge_versions,
                )
            vacuum = None
            if report.deleted and not dry_run and not out.json_mode:  # --json has no place for it
                from apstorage.services.du import vacuum_hint

                vacuum = vacuum_hint(storage)
        seconds = time.monotonic() - started
        if metrics is not None:
            _fill_metrics(metrics, report)
        if not quiet:  # a warning about the settings, not a failure
            for warning in report.warnings:
                out.warn(warning)
        if not out.json_mode:
            show_versioning(out, report.versioning, report.notes, verbose)
        _show(out, report, seconds, max_delete)
        if vacuum and not out.json_mode:
            out.info(vacuum)
        if report.interrupted:
            raise typer.Exit(interrupt.exit_code)
        if report.failed:
            raise typer.Exit(1)


def _show(out: Output, report, seconds: float, max_delete: int | None) -> None:
    data = {**report.to_json(), "seconds": round(seconds, 3)}
    if report.lock_held:
        out.info("another sweep-expired run holds the sweep lock of this SQLite catalog (SQLite runs one "
                 "sweep at a time; on Postgres runs share the work); this run did nothing")
        if out.json_mode:
            out.result(data)
        return
    if out.json_mode:
        out.result(data)
        return
    worked = report.deleted or report.failed
    if worked and (report.dry_run or sys.stdout.isatty()) and not out.quiet:
        out.result(data, lambda console: _render(console, report))
    failures = [(f"{f.type} {f.id} ({f.location} {f.key or 'no key'})", f.reason, f.key) for f in report.failures]
    out.failures(failures, report.failed, "kept")
    for location, reason in report.abandoned_locations.items():
        out.warn(f"{location} left alone for the rest of this run: {reason}")
    if report.max_delete_reached:
        out.info(f"stopped at --max-delete {max_delete:,}; more expired files remain")
    if worked or report.interrupted:
        out.summary(
            summary_line(
                "sweep-expired", "would delete" if report.dry_run else "deleted",
                report.deleted, report.bytes, seconds, [(report.failed, "failed")],
                interrupted=report.interrupted, dry_run=report.dry_run,
            ) + versioned_tail(report),
            failed=bool(report.failed),
        )
    elif report.dry_run:
        # A dry run is asked by a person or a script that wants the answer: always one line.
        out.info(f"sweep-expired would delete nothing (nothing older than {plural(report.retention_days, 'day')})")
    else:
        out.note(f"nothing expired (nothing older than {plural(report.retention_days, 'day')})")


def show_versioning(out: Output, versioning: dict | None, notes: list[str], verbose: bool) -> None:
    """The bucket's versioning state, once, with --verbose (a store without the API says
    so there); the run's versioning notes (``--purge-versions`` on an unversioned bucket)
    as info lines. Shared by sweep-expired and gc."""
    if verbose and versioning is not None:
        state = versioning["status"]
        line = f"S3 bucket versioning: {state}"
        if versioning.get("note"):
            line += f" ({versioning['note']})"
        out.info(line)
    unknown = versioning is not None and versioning.get("status") == "Unknown" and versioning.get("note")
    for note in notes:
        if unknown and note.startswith(unknown):
            out.warn(note)  # the state could not be read: a permission to grant, shown even with -q
        else:
            out.info(note)


def versioned_tail(report) -> str:
    """What the summary line adds on a versioned bucket: the bytes that stay as
    noncurrent versions (default), or the versions deleted (--purge-versions)."""
    if not report.versioned:
        return ""
    verb = "would stay" if report.dry_run else "stay"
    if report.purge_versions:
        would = "would be " if report.dry_run else ""
        return (f"; versioned bucket: {plural(report.versions_deleted, 'version')} and "
                f"{plural(report.markers_deleted, 'delete marker')} {would}deleted")
    return (f"; versioned bucket: {human_size(report.bytes_retained)} {verb} as noncurrent versions until "
            "a lifecycle rule (`apstorage lifecycle apply`) or --purge-versions removes them")


def _render(console, report) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    table = new_table("", "files", "bytes", right=("files", "bytes"),
                      title=f"{verb}: files older than {plural(report.retention_days, 'day')}")
    for file_type in report.types:
        if report.by_type.get(file_type):
            table.add_row(file_type, f"{report.by_type[file_type]:,}", human_size(report.bytes_by_type[file_type]))
    table.add_section()
    for location in sorted(report.by_location):
        table.add_row(f"in {location}", f"{report.by_location[location]:,}", human_size(report.bytes_by_location[location]))
    table.add_section()
    table.add_row("total", f"{report.deleted:,}", human_size(report.bytes), style="bold")
    console.print(table)


def _fill_metrics(metrics, report) -> None:
    metrics.dry_run = report.dry_run
    metrics.set_many("deleted_files", {t: report.by_type.get(t, 0) for t in report.types},
                     "Files deleted by the last run, by type.", "type")
    metrics.set_many("deleted_bytes", {t: report.bytes_by_type.get(t, 0) for t in report.types},
                     "Bytes deleted by the last run, by type.", "type")
    metrics.set_many("deleted_files_by_location", report.by_location,
                     "Files deleted by the last run, by where their bytes were.", "location")
    metrics.set_many("deleted_bytes_by_location", report.bytes_by_location,
                     "Bytes deleted by the last run, by where they were.", "location")
    metrics.set("failed_files", report.failed, "Files the last run could not delete (their rows were kept).")
    metrics.set("retained_bytes", report.bytes_retained,
                "Bytes the last run's deletes left as noncurrent versions (versioned bucket, without --purge-versions).")
    metrics.set("interrupted", 1 if report.interrupted else 0, "1 when the last run was stopped by a signal.")
    metrics.set("lock_held", 1 if report.lock_held else 0, "1 when the last run found another holding the sweep lock.")
