"""`restore`: bring deleted S3 objects back from their newest version, proven."""

from __future__ import annotations

from typing import List, Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, VERBOSE_OPTION, app, handle_errors
from apstorage.cli.output import Output, human_size, summary_line
from apstorage.text import plural, printable  # keys and ids come from a catalog or a server

SHOWN = 20  # rows listed per kind without --json


@app.command("restore")
@handle_errors
def restore_cmd(
    ids: Optional[List[str]] = typer.Argument(None, metavar="[ID]...", help="Ids of the rows to restore.", show_default=False),
    all_missing: bool = typer.Option(
        False, "--all-missing",
        help="Every S3 row whose current object is gone: restore those with a version, report the others.",
    ),
    projects: Optional[List[str]] = typer.Option(
        None, "--project", metavar="ID[,ID..]",
        help="With --all-missing: only these projects' rows (an empty or malformed id is refused, exit 2).",
    ),
    platforms: Optional[List[str]] = typer.Option(
        None, "--platform", metavar="ID[,ID..]",
        help="With --all-missing: only these platforms' rows (an empty or malformed id is refused, exit 2).",
    ),
    workers: int = typer.Option(
        8, "--workers", min=1, max=64, metavar="N", help="Batches of keys listed and restored concurrently.",
    ),
    verbose: bool = VERBOSE_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Bring back S3 objects deleted from a versioned bucket.

    For each row (ID..., or every S3 row with --all-missing) whose current object is gone
    (a delete marker is the latest version), the newest version with the row's size is
    copied back onto its key (CopyObject with versionId) and proven: a HEAD of the key must
    show the version's size and ETag (for a multipart ETag: the size and the ETag the copy
    answered). Rows whose object is there are left alone ("already present"); the catalog
    is never changed. --dry-run names the version each row would come from.

    JSON: {"restored", "bytesRestored", "failed", "notRestorable", "alreadyPresent",
    "notFound", "notS3", "checked", "dryRun", "versioning", "rows": [{"id", "status",
    "type", "key", "size", "versionId", "bytes", "etag", "newVersionId", "proof",
    "reason", "detail"}]}; status is restored, wouldRestore, alreadyPresent, notRestorable, failed,
    notFound or notS3.

    Exit codes: 0 restored or already present; 1 a copy or its proof failed (row
    unchanged; Object Lock refusals named so); 4 an id not in the catalog, a row with no
    version to restore from (with --all-missing too, after every restorable row was
    restored), or a bucket that is not versioned; 6 a DB or LOCAL row (restore applies to
    S3 rows only); 8 S3 unreachable.
    """
    from apstorage.services.context import Storage
    from apstorage.services.restore import RestoreRequest, restore

    request = RestoreRequest.from_flags(ids, all_missing, projects, platforms)
    out = Output(json_out)
    with Storage(workers=workers) as storage:
        with out.progress(None, "restore: checking", unit="rows") as bar:
            report = restore(storage, request, dry_run=dry_run, workers=workers,
                             on_progress=lambda n: bar.advance(n))
    if json_out:
        out.result(report.to_json())
    else:
        _show(out, report, verbose)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _where(row) -> str:
    return f"{row.type or '-'} {printable(row.id)} {printable(row.key or '-')}"


def _show(out: Output, report, verbose: bool) -> None:
    from apstorage.services import restore as R

    if verbose and report.versioning is not None:
        line = f"S3 bucket versioning: {report.versioning['status']}"
        if report.versioning.get("note"):
            line += f" ({report.versioning['note']})"
        out.info(line)
    elif report.versioning is not None and report.versioning["status"] == "Unknown":
        from apstorage.stores.s3_versions import UNKNOWN_STATE

        out.warn(f"{report.versioning['note']}: {UNKNOWN_STATE}")
    verb = "would restore" if report.dry_run else "restored"
    done = report.of(R.WOULD_RESTORE if report.dry_run else R.RESTORED)

    def render(console) -> None:
        for row in done:
            proof = "" if report.dry_run else f", proven: {row.proof}"
            console.print(f"{verb} {_where(row)} {human_size(row.bytes)} from version {printable(row.version_id or '-')}{proof}",
                          markup=False, highlight=False, soft_wrap=True)
        for row in report.of(R.PRESENT):
            console.print(f"already present {_where(row)}: nothing written", markup=False, highlight=False, soft_wrap=True)

    if done or (report.of(R.PRESENT) and not report.all_missing):
        out.result(None, render)
    for row in report.of(R.NOT_FOUND):
        out.error(row.reason or f"no file with id {printable(row.id)!r}")
    for row in report.of(R.NOT_S3):
        out.error(f"{row.type} {printable(row.id)} is a {row.location} row: {R.NOT_S3_REASON}")
    unrestorable = report.of(R.NOT_RESTORABLE)
    if unrestorable:
        n = report.count(R.NOT_RESTORABLE)
        if report.all_missing:
            out.warn(f"{plural(n, 'row')} without a current object cannot be restored (no version to restore from):")
            for row in unrestorable[:SHOWN]:
                out.info(f"  {_where(row)}: {row.reason}")
            if n > SHOWN:
                out.info(f"  ... and {n - SHOWN:,} more (--json lists the first {len(unrestorable):,})")
        else:
            for row in unrestorable:
                out.error(f"{_where(row)}: {row.reason}")
    failed = report.of(R.FAILED)
    if failed:
        out.failures(((_where(r) + (f" ({r.detail})" if r.detail else ""), r.reason or "failed") for r in failed),
                     report.count(R.FAILED), "not restored")
    if _refused_whole(report):
        return  # each refusal is its own error line; a summary of nothing done adds nothing
    counts = [(report.count(R.PRESENT), "already present"), (report.count(R.NOT_RESTORABLE), "not restorable"),
              (report.count(R.FAILED), "failed")]
    if report.count(R.NOT_FOUND):
        counts.append((report.count(R.NOT_FOUND), "not found"))
    if report.count(R.NOT_S3):
        counts.append((report.count(R.NOT_S3), "not in S3"))
    out.summary(
        summary_line("restore", verb, report.restored, report.bytes_restored, report.seconds, counts,
                     dry_run=report.dry_run),
        failed=bool(report.count(R.FAILED)),
    )


def _refused_whole(report) -> bool:
    """Every id named was refused (not in the catalog, not an S3 row, no version to restore
    from) and nothing else happened: the error lines say it all. With --all-missing, or
    when some row was restored, present or failed, the summary follows as usual."""
    from apstorage.services import restore as R

    refusals = (R.NOT_FOUND, R.NOT_S3, R.NOT_RESTORABLE)
    return not report.all_missing and report.total > 0 and sum(map(report.count, refusals)) == report.total
