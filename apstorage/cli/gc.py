"""`gc`: delete what `du --verify` finds — orphans, rows whose bytes are gone, expired
pending uploads."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from apstorage.cli.app import (
    DRY_RUN_OPTION, JSON_OPTION, METRICS_OPTION, QUIET_OPTION, VERBOSE_OPTION, app, handle_errors,
)
from apstorage.cli.output import Output, human_size, new_table, record_metrics, summary_line
from apstorage.text import plural, printable  # keys and ids come from a catalog or a server

SHOWN = 20  # failures and reported rows printed without --json


@app.command("gc")
@handle_errors
def gc_cmd(
    orphans: bool = typer.Option(
        False, "--orphans",
        help="Objects and LOCAL files under platform/ and project/ that no row references "
        "and older than the grace.",
    ),
    missing: bool = typer.Option(
        False, "--missing",
        help="Execution-data rows older than the grace whose bytes are gone. Permanent rows "
        "with missing bytes are reported (exit 1), never deleted.",
    ),
    pending: bool = typer.Option(
        False, "--pending",
        help="Rows made by `presign --upload` whose URL expired with no object uploaded.",
    ),
    grace: Optional[str] = typer.Option(
        None, "--grace", metavar="DURATION",
        help="Leave anything younger than this alone (default 24h; 1h to 3650d): 90m, 12h, 2d.",
    ),
    max_delete: Optional[int] = typer.Option(
        None, "--max-delete", min=1, max=1_000_000_000, metavar="N", help="Stop after N deletions in this run.",
    ),
    workers: int = typer.Option(
        8, "--workers", min=1, max=64, metavar="N",
        help="Batches of objects deleted concurrently.",
    ),
    purge_versions: bool = typer.Option(
        False, "--purge-versions",
        help="On a versioned bucket, delete orphans with every version and delete marker of "
        "their keys. Without it an orphan's delete only adds a delete marker (the summary says "
        "how many bytes stay); --orphans still takes orphan keys' old noncurrent versions and "
        "lone delete markers.",
    ),
    verbose: bool = VERBOSE_OPTION,
    trust: Optional[List[str]] = typer.Option(
        None, "--trust", metavar="LOCATION",
        help="S3 or LOCAL (repeatable): the configured bucket or root is this catalog's, so "
        "rows without bytes older than the grace are deleted however many there are (a "
        "lifecycle rule that expires objects before the catalog's retention leaves most old "
        "rows without their object) and orphans are judged there.",
    ),
    quiet: bool = QUIET_OPTION,
    metrics_file: Optional[str] = METRICS_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Delete orphans, rows whose bytes are gone and expired pending uploads.

    With no kind named, all three. What `du --verify` finds, cleaned safely beside
    put, get, presign and migrate-to-s3: anything younger than --grace is never taken,
    every batch is re-checked against the catalog just before its delete, and only one
    gc or sweep-expired runs at a time (a second one exits 0 and says so).
    """
    from apstorage.cli.interrupt import stop_on_signals
    from apstorage.services.context import Storage
    from apstorage.services.du import vacuum_hint
    from apstorage.services.gc import collect_garbage, parse_grace, parse_kinds, parse_trust

    kinds = parse_kinds(orphans, missing, pending)
    grace_seconds = parse_grace(grace)
    trusted = parse_trust(trust)
    out = Output(json_out, quiet=quiet)
    with record_metrics(metrics_file, "gc") as metrics, stop_on_signals() as interrupt:
        with Storage(workers=workers) as storage:
            # The stores are listed as gc goes: no total to count first, so the bar
            # counts what was listed (with its rate) instead of sitting at 0/?.
            with out.progress(None, "gc: listing", unit="objects") as bar:
                def progress(event: str, n: int) -> None:
                    if event == "listed":
                        bar.advance(n)

                report = collect_garbage(
                    storage, kinds=kinds, grace=grace_seconds, max_delete=max_delete,
                    dry_run=dry_run, workers=workers, on_progress=progress, stop=interrupt.event,
                    purge_versions=purge_versions,
                    trust=trusted,
                )
            hint = None if dry_run or out.json_mode or report.lock_held or not report.deleted else vacuum_hint(storage)
        if metrics is not None:
            _fill_metrics(metrics, report)
        if not out.json_mode and not report.lock_held:
            from apstorage.cli.sweep import show_versioning

            show_versioning(out, report.versioning, [], verbose)
        _show(out, report, max_delete, hint)
        if report.interrupted:
            raise typer.Exit(interrupt.exit_code)
        if not report.ok:
            raise typer.Exit(1)


def _show(out: Output, report, max_delete: int | None, hint: str | None) -> None:
    data = report.to_json()
    json_out = out.json_mode

    if report.lock_held:
        where = "" if report.lock_holders == "gc" else " (SQLite runs one gc or sweep at a time)"
        out.info(f"another {report.lock_holders} run holds the run lock{where}; this run did nothing")
        if json_out:
            out.result(data)
        return

    worked = report.deleted or report.failed or report.reported_count or report.interrupted or report.restorable_count
    if json_out:
        out.result(data)
    elif worked and (report.dry_run or sys.stdout.isatty()) and not out.quiet:
        out.result(data, lambda console: _render(console, report))
    if not json_out:
        _messages(out, report, max_delete)
    if hint and not json_out:
        out.info(hint)


def _versioned_tail(report) -> str:
    """On a versioned bucket without --purge-versions, the bytes deleted orphans keep as
    noncurrent versions (taken by a later gc --orphans once older than the grace, or by a
    lifecycle rule)."""
    if not report.versioned or report.purge_versions or not report.bytes_retained:
        return ""
    verb = "would stay" if report.dry_run else "stay"
    return (f"; versioned bucket: {human_size(report.bytes_retained)} {verb} as noncurrent versions until "
            "a lifecycle rule (`apstorage lifecycle apply`), a later gc --orphans or --purge-versions removes them")


def _fill_metrics(metrics, report) -> None:
    metrics.dry_run = report.dry_run
    for name in report.kinds:
        tally = report.kind(name)
        metrics.set("deleted_files", tally.files, "Files (objects or rows) the last run deleted, by kind.", kind=name)
        metrics.set("deleted_bytes", tally.bytes, "Bytes the last run deleted, by kind.", kind=name)
    metrics.set("failed_files", report.failed, "Deletes the last run could not make (kept).")
    metrics.set("deleted_versions", report.orphan_versions.files,
                "Orphan keys' noncurrent versions the last run deleted (versioned bucket).")
    metrics.set("deleted_markers", report.delete_markers.files,
                "Orphan keys' delete markers the last run deleted (versioned bucket; they hold no bytes).")
    metrics.set("retained_bytes", report.bytes_retained,
                "Bytes the last run's deletes left as noncurrent versions (versioned bucket, without --purge-versions).")
    metrics.set("restorable_rows", report.restorable_count,
                "Rows without a current object but with a noncurrent version (kept; apstorage restore).")
    metrics.set("reported_rows", report.reported_count, "Rows with missing bytes reported, never deleted (permanent data).")
    metrics.set("lock_held", 1 if report.lock_held else 0, "1 when the last run found another holding the run lock.")
    metrics.set("refused_locations", len({r["location"] for r in report.refusals}),
                "Locations the guard held back (most rows without bytes there; --trust LOCATION takes them).")
    metrics.set("interrupted", 1 if report.interrupted else 0, "1 when the last run was stopped by a signal.")


def _render(console, report) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    table = new_table("kind", "location", "files", "bytes", right=("files", "bytes"),
                      title=f"gc: {verb} (older than {_grace(report.grace)})")
    for name in report.kinds:
        tally = report.kind(name)
        if not tally.by_location:
            table.add_row(name, "-", "0", human_size(0))
        for location, (files, size) in sorted(tally.by_location.items()):
            table.add_row(name, location, f"{files:,}", human_size(size))
    if report.versioned:
        for location, (files, size) in sorted(report.orphan_versions.by_location.items()):
            table.add_row("orphan versions", location, f"{files:,}", human_size(size))
        for location, (files, _size) in sorted(report.delete_markers.by_location.items()):
            table.add_row("delete markers (no bytes, not in the total)", location, f"{files:,}", "-")
    table.add_section()
    table.add_row("total", "", f"{report.deleted:,}", human_size(report.bytes), style="bold")
    console.print(table)
    for item in report.items[:SHOWN]:
        what = printable(item["key"] or "-") if item["id"] is None else f"row {printable(item['id'])} ({printable(item['key'] or '-')})"
        size = "-" if item["size"] is None else human_size(item["size"])
        console.print(f"  {verb} {item['kind']} {item['location']} {what} {size}", markup=False, highlight=False)
    if report.deleted > SHOWN:
        console.print(f"  ... and {report.deleted - SHOWN:,} more (--json lists the first "
                      f"{min(report.deleted, len(report.items)):,})", markup=False, highlight=False)


def _grace(seconds: int) -> str:
    from apstorage.durations import format_duration

    return format_duration(seconds)


def _messages(out: Output, report, max_delete: int | None) -> None:
    if report.max_delete_reached:
        out.info(f"stopped at --max-delete {max_delete:,}; more may remain")
    refused = {r["message"] for r in report.refusals}  # held back: the run exits 1
    for note in report.notes:
        if note in refused:
            out.error(note)
        else:
            out.warn(note)
    for row in report.reported[:SHOWN]:
        out.error(f"{row['type']} {printable(row['id'])} ({row['location']} {printable(row['key'] or '-')}): {row['reason']}")
    if report.reported_count > SHOWN:
        out.error(f"... and {plural(report.reported_count - SHOWN, 'more row')} with missing bytes (see --json)")
    if report.restorable_count and not out.quiet:  # kept on purpose: no failure, so not with --quiet
        out.warn(
            f"{plural(report.restorable_count, 'row')} {'has' if report.restorable_count == 1 else 'have'} no current object but a noncurrent version: "
            "restorable, never deleted by gc; `apstorage restore ID...` (or `restore --all-missing`) "
            "brings them back"
        )
        for row in report.restorable[:SHOWN]:
            out.info(f"  restorable {row['type']} {printable(row['id'])} (S3 {printable(row['key'] or '-')})")
    out.failures(  # grouped by reason, as sweep-expired and migrate-to-s3 print theirs
        ((f"{f['location']} {printable(f['key'] or f['id'] or '-')}", f["reason"], f["key"]) for f in report.failures),
        report.failed, "kept",
    )
    verb = "would delete" if report.dry_run else "deleted"
    if (report.deleted or report.delete_markers.files or report.failed or report.reported_count
            or report.interrupted or report.restorable_count):
        n_versions, n_markers = report.orphan_versions.files, report.delete_markers.files
        versions = [(n_versions, "orphan version" if n_versions == 1 else "orphan versions")] if report.versioned else []
        if n_markers:
            versions.append((n_markers, "delete marker" if n_markers == 1 else "delete markers"))
        restorable = [(report.restorable_count, "restorable")] if report.restorable_count else []

        def label(name: str, n: int) -> str:  # "orphans" is a noun; missing and pending are not
            return "orphan" if name == "orphans" and n == 1 else name

        out.summary(
            summary_line(
                "gc", verb, report.deleted, report.bytes, report.seconds,
                [*((report.kind(name).files, label(name, report.kind(name).files)) for name in report.kinds), *versions,
                 (report.failed, "failed"), (report.reported_count, "reported"), *restorable],
                dry_run=report.dry_run, interrupted=report.interrupted,
            ) + _versioned_tail(report),
            failed=bool(report.failed or report.reported_count),
        )
    elif report.refusals:
        pass
    elif report.dry_run:
        out.info(f"gc would delete nothing (nothing to collect older than {_grace(report.grace)})")
    else:
        out.note(f"nothing to collect (nothing older than {_grace(report.grace)})")

