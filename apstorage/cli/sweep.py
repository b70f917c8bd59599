"""`sweep-expired`: the cron job that deletes expired execution data."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, human_size

FAILURES_PRINTED = 20


@app.command("sweep-expired")
@handle_errors
def sweep_expired_cmd(
    retention_days: Optional[int] = typer.Option(
        None, "--retention-days", min=1, max=36500, metavar="N",
        help="Delete execution data older than N days (default: AP_EXECUTION_DATA_RETENTION_DAYS, 30).",
    ),
    types: Optional[str] = typer.Option(
        None, "--types", metavar="T,..",
        help="Comma-separated execution-data types to sweep (default: all six). "
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
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Delete expired execution data (the cron job).

    Bytes go first, then exactly the rows whose bytes are gone.

    Only execution data that expires is swept; FLOW_BUNDLE and permanent files are never
    touched. A project's own executionDataRetentionDays counts, clamped to
    [AP_PAUSED_FLOW_TIMEOUT_DAYS, AP_EXECUTION_DATA_RETENTION_DAYS]. A file its
    store refuses to delete keeps its row and makes the run exit 1. Safe in cron: a run
    that finds another one holding the sweep lock exits 0 and says so; output only when
    there is something to say.
    """
    from apstorage.services.context import Storage
    from apstorage.services.sweep import resolve_types, sweep_expired

    type_list = resolve_types(types.split(",") if types else None)
    out = Output(json_out)
    with Storage(workers=workers) as storage, out.progress(None, "sweeping") as bar:
        report = sweep_expired(
            storage,
            retention_days=retention_days,
            types=type_list,
            batch_size=batch_size,
            max_delete=max_delete,
            dry_run=dry_run,
            workers=workers,
            on_batch=lambda deleted, failed: bar.advance(deleted + failed),
        )
        vacuum = None
        if report.deleted and not dry_run:
            from apstorage.services.du import vacuum_hint

            vacuum = vacuum_hint(storage)
    data = report.to_json()
    for warning in report.warnings:
        out.warn(warning)

    if report.lock_held:
        out.info("another sweep-expired run holds the sweep lock; this run did nothing")
        if json_out:
            out.result(data)
        return

    def render(console) -> None:
        from rich.table import Table

        verb = "would delete" if dry_run else "deleted"
        table = Table("type", "files", "bytes", title=f"{verb} (older than {report.retention_days} days)")
        for file_type in report.types:
            table.add_row(file_type, str(report.by_type[file_type]), human_size(report.bytes_by_type[file_type]))
        table.add_row("total", str(report.deleted), human_size(report.bytes), style="bold")
        console.print(table)

    if json_out:
        out.result(data)
    elif dry_run or sys.stdout.isatty():
        out.result(data, render)

    if not json_out:
        if report.max_delete_reached:
            out.info(f"stopped at --max-delete {max_delete}; more expired files remain")
        for failure in report.failures[:FAILURES_PRINTED]:
            where = failure.key or failure.id
            out.error(f"kept {failure.type} {failure.id} ({failure.location} {where}): {failure.reason}")
        if report.failed > FAILURES_PRINTED:
            out.error(f"... and {report.failed - FAILURES_PRINTED} more files kept")
        for location, reason in report.abandoned_locations.items():
            out.warn(f"{location} left alone for the rest of this run: {reason}")
        if report.failed and not sys.stdout.isatty():
            out.info(
                f"deleted {report.deleted} files ({human_size(report.bytes)}); "
                f"{report.failed} could not be deleted and were kept"
            )
    if vacuum:
        out.info(vacuum)
    if report.failed:
        raise typer.Exit(1)
