"""`migrate-to-s3`."""

from __future__ import annotations

from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, human_size


@app.command("migrate-to-s3")
@handle_errors
def migrate_to_s3(
    sources: str = typer.Option("db,local", "--from", help="Where to move bytes from: db, local or both."),
    types: Optional[str] = typer.Option(None, "--types", help="Only these types (comma-separated)."),
    include_permanent: bool = typer.Option(
        False, "--include-permanent", help="Also move permanent files out of the database."
    ),
    workers: int = typer.Option(64, "--workers", min=1, max=256, help="Parallel uploads."),
    batch_size: int = typer.Option(100, "--batch-size", min=1, max=10000, help="Rows claimed per transaction."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, max=1_000_000_000, help="Stop after this many files."),
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Move DB and LOCAL bytes into S3, verified and resumable.

    Each file is uploaded with Content-MD5 (the server checks it), then its row is switched
    to S3 in the batch's transaction; LOCAL files are removed only after that commit. Safe
    to run on several hosts at once against Postgres; a re-run finishes an interrupted job.
    """
    from apstorage.services.context import Storage
    from apstorage.services.migrate import MigrateOptions, migrate_to_s3 as run, parse_sources, plan

    opts = MigrateOptions(
        sources=parse_sources(sources),
        types=tuple(t for t in (types or "").split(",") if t.strip()),
        include_permanent=include_permanent,
        workers=workers,
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
    )
    out = Output(json_out)
    vacuum = None
    with Storage(workers=workers) as storage:
        if dry_run:
            report = run(storage, opts)
        else:
            total, total_bytes = plan(storage, opts) if out.progress_enabled else (None, None)
            with out.progress(total, "migrating", bytes_total=total_bytes) as bar:
                report = run(storage, opts, progress=bar.advance)
            if report.freed_db_bytes:
                from apstorage.services.du import vacuum_hint

                vacuum = vacuum_hint(storage)
    data = report.to_json()

    def render(console) -> None:
        verb = "would migrate" if dry_run else "migrated"
        console.print(
            f"{verb} {report.migrated} files ({human_size(report.bytes)}) to S3; "
            f"{report.skipped} skipped, {report.failed} failed",
            markup=False,
        )
        for failure in report.failures[:20]:
            console.print(f"  failed {failure['id']}: {failure['reason']}", markup=False)
        if report.failed > 20:
            console.print(f"  ... and {report.failed - 20} more (see --json)", markup=False)

    out.result(data, render)
    if vacuum:
        out.info(vacuum)
    if report.failed:
        raise typer.Exit(1)
