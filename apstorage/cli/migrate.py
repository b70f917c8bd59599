"""`migrate-to-s3`."""

from __future__ import annotations

import time
from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, METRICS_OPTION, QUIET_OPTION, app, handle_errors
from apstorage.cli.output import Output, record_metrics, summary_line



@app.command("migrate-to-s3")
@handle_errors
def migrate_to_s3(
    sources: str = typer.Option("db,local", "--from", help="Where to move bytes from: db, local or both."),
    types: Optional[str] = typer.Option(
        None, "--types", metavar="T,..",
        help="Only these types (comma-separated), e.g. FLOW_RUN_LOG,FLOW_STEP_FILE. From db, "
        "permanent types also need --include-permanent.",
    ),
    include_permanent: bool = typer.Option(
        False, "--include-permanent", help="Also move permanent files out of the database."
    ),
    workers: int = typer.Option(128, "--workers", min=1, max=256, help="Parallel uploads."),
    batch_size: int = typer.Option(100, "--batch-size", min=1, max=10000, help="Rows claimed per transaction."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, max=1_000_000_000, help="Stop after this many files."),
    quiet: bool = QUIET_OPTION,
    metrics_file: Optional[str] = METRICS_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Move DB and LOCAL bytes into S3, verified and resumable.

    Each file is uploaded with Content-MD5 (the server checks it), then its row is switched
    to S3 in the batch's transaction; LOCAL files are removed only after that commit, and
    folders left empty with them. Safe to run on several hosts at once against Postgres; a
    re-run finishes an interrupted job. Ctrl-C (or SIGTERM) lets the uploads in flight
    finish and their batch commit, prints what was moved and exits 130.
    """
    from apstorage.cli.interrupt import stop_on_signals
    from apstorage.services.context import Storage
    from apstorage.model import split_items
    from apstorage.services.migrate import MigrateOptions, migrate_to_s3 as run, parse_sources, plan

    opts = MigrateOptions(
        sources=parse_sources(sources),
        types=tuple(split_items(types, "--types") or ()),
        include_permanent=include_permanent,
        workers=workers,
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
    )
    out = Output(json_out, quiet=quiet)
    with record_metrics(metrics_file, "migrate_to_s3") as metrics, stop_on_signals() as interrupt:
        started = time.monotonic()
        with Storage(workers=workers) as storage:
            if dry_run:
                with out.status("counting files to migrate…"):
                    report = run(storage, opts)
            else:
                total = total_bytes = None
                if out.progress_enabled:
                    with out.status("counting files to migrate…"):
                        total, total_bytes = plan(storage, opts)
                with out.progress(total, "migrating", bytes_total=total_bytes) as bar:
                    report = run(storage, opts, progress=bar.advance, stop=interrupt.event)
            vacuum = None
            # also after an interrupt: the batches done freed space; --json has no place for it
            if report.freed_db_bytes and not out.json_mode:
                from apstorage.services.du import vacuum_hint

                vacuum = vacuum_hint(storage)
        seconds = time.monotonic() - started
        if metrics is not None:
            metrics.dry_run = dry_run
            metrics.set("migrated_files", report.migrated, "Files the last run moved to S3.")
            metrics.set("migrated_bytes", report.bytes, "Bytes the last run moved to S3.")
            metrics.set("skipped_files", report.skipped, "Files the last run found nothing to move for.")
            metrics.set("failed_files", report.failed, "Files the last run could not move (left where they were).")
            metrics.set("interrupted", 1 if report.interrupted else 0, "1 when the last run was stopped by a signal.")
        _show(out, report, seconds)
        if vacuum and not out.json_mode:
            out.info(vacuum)
        if report.interrupted:
            raise typer.Exit(interrupt.exit_code)
        if report.failed:
            raise typer.Exit(1)


def _show(out: Output, report, seconds: float) -> None:
    if out.json_mode:
        out.result({**report.to_json(), "seconds": round(seconds, 3)})
        return
    failures = [(f"{f['id']} ({f['key']})" if "key" in f else f["id"], f["reason"], f.get("key"))
                for f in report.failures]
    out.failures(failures, report.failed, "not moved")
    if report.migrated or report.failed or report.skipped or report.gone or report.interrupted:
        out.summary(
            summary_line(
                "migrate-to-s3", "would migrate" if report.dry_run else "migrated",
                report.migrated, report.bytes, seconds,
                [(report.skipped, "skipped"), (report.failed, "failed")]
                + ([(report.gone, "deleted meanwhile by a sweep")] if report.gone else []),
                interrupted=report.interrupted, dry_run=report.dry_run,
            ),
            failed=bool(report.failed),
        )
    else:
        out.note("nothing to migrate: no DB or LOCAL bytes match (already in S3?)")
    if report.leftovers_removed or report.leftovers_kept:
        out.info(
            f"LOCAL copies left by an interrupted run: {report.leftovers_removed} removed, "
            f"{report.leftovers_kept} kept (their S3 object could not be proven)"
        )
