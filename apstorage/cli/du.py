"""`du`."""

from __future__ import annotations

from typing import List, Optional

import typer

from apstorage.cli.app import JSON_OPTION, METRICS_OPTION, app, handle_errors
from apstorage.cli.output import Output, human_size, new_table, plural, record_metrics
from apstorage.errors import UsageError

SHOWN_ITEMS = 20  # problem keys printed per kind without --json


@app.command()
@handle_errors
def du(
    by: Optional[List[str]] = typer.Option(
        None, "--by", metavar="KEY[,KEY..]",
        help="Group by location, type, project and/or platform (default: location,type).",
    ),
    file_types: Optional[List[str]] = typer.Option(
        None, "--type", "-t", metavar="T[,T..]", help="Only these file types."
    ),
    projects: Optional[List[str]] = typer.Option(
        None, "--project", metavar="ID[,ID..]",
        help="Only these projects' files (an empty or malformed id is refused, exit 2).",
    ),
    platforms: Optional[List[str]] = typer.Option(
        None, "--platform", metavar="ID[,ID..]",
        help="Only these platforms' files (an empty or malformed id is refused, exit 2).",
    ),
    older_than: Optional[str] = typer.Option(
        None, "--older-than", metavar="DURATION", help="Only files created more than this long ago: 90, 15m, 12h, 30d."
    ),
    check: bool = typer.Option(
        False, "--verify",
        help="Also compare the catalog with the S3 and LOCAL stores: missing objects, orphans, "
        "size mismatches. Exit 1 when anything is inconsistent. Never deletes.",
    ),
    csv_out: bool = typer.Option(False, "--csv", help="Print the groups as CSV with a header."),
    no_versions: bool = typer.Option(
        False, "--no-versions",
        help="On a versioned bucket, do not list its versions (noncurrent versions and delete "
        "markers are then not counted): the figures come from the catalog alone.",
    ),
    metrics_file: Optional[str] = METRICS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Show usage by location, type, project or platform.

    Files and bytes come from the catalog.

    One aggregate query answers however many objects the bucket holds. On a versioned
    bucket (Enabled or Suspended) the bucket's versions under platform/ and project/ are
    also listed (one request per 1,000 entries; --no-versions skips it) and noncurrent
    versions and delete markers are shown apart from current objects. With --verify the
    stores are listed (paginated, streaming) and compared with the catalog; on a versioned
    bucket it also reports orphan versions, lone delete markers and restorable rows.
    """
    from apstorage.services.context import Storage
    from apstorage.services.du import DuRequest, disk_usage, verify

    if csv_out and json_out:
        raise UsageError("give --json or --csv, not both")
    if csv_out and check:
        raise UsageError("--csv prints usage groups only; use --json with --verify to get the problem keys")
    request = DuRequest.from_flags(by, file_types, projects, platforms, older_than)
    if check and request.filtered:
        raise UsageError(
            "--verify checks the whole catalog against the stores; it does not take "
            "--type, --project, --platform or --older-than"
        )
    out = Output(json_out)
    with record_metrics(metrics_file, "du") as metrics:
        with Storage() as storage:
            with out.status("adding up the catalog…"):
                report = disk_usage(storage, request)
            if check:
                with out.status("listing the stores and comparing them with the catalog…"):
                    report.verify = verify(storage, limit=None if json_out else SHOWN_ITEMS)
                report.versions = report.verify.versions
            elif storage.settings.s3_bucket and not no_versions and not csv_out:
                from apstorage.services.du import MANAGED_PREFIXES
                from apstorage.services.du_versions import figures

                with out.status("listing the bucket's versions…"):
                    report.versions = figures(storage, MANAGED_PREFIXES)
        if metrics is not None:
            _fill_metrics(metrics, report)
        if csv_out:
            _write_csv(report)
        else:
            out.result(report.to_json(), lambda console: _render(console, report))
        if report.unsized and not json_out:
            out.warn(f"{plural(report.unsized, 'row')} without a recorded size: counted as files, not bytes")
        if report.versions is not None and not report.versions.checked and not json_out:
            # A note about the report, not part of it: stdout stays the table (--json: "note").
            out.warn(f"S3 versions: not counted ({report.versions.note})")
        if report.verify is not None and not report.verify.ok:
            if not json_out:
                out.info("the catalog and the stores disagree (see above); nothing was changed")
            raise typer.Exit(1)


def _fill_metrics(metrics, report) -> None:
    labels = list(report.by)
    for g in report.groups:
        keys = dict(zip(labels, g.keys))
        metrics.set("files", g.files, "Files in the catalog, by the du --by keys.", **keys)
        metrics.set("bytes", g.bytes, "Bytes in the catalog (stored size), by the du --by keys.", **keys)
    metrics.set("total_files", report.files, "Files in the catalog (after du's filters).")
    metrics.set("total_bytes", report.bytes, "Bytes in the catalog (after du's filters).")
    if report.verify is not None:
        for kind in report.verify.kinds():
            metrics.set("problem_files", kind.files, "du --verify: files per kind of problem.", kind=kind.kind)
            metrics.set("problem_bytes", kind.bytes, "du --verify: bytes per kind of problem.", kind=kind.kind)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _write_csv(report) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*report.by, "files", "bytes"])
    for g in report.groups:
        writer.writerow([*("" if k is None else k for k in g.keys), g.files, g.bytes])
    sys.stdout.flush()


def _render(console, report) -> None:
    table = new_table(*report.by, "files", "bytes", right=("files", "bytes"))
    previous: tuple = ()
    for g in report.groups:
        if previous and g.keys[:1] != previous[:1] and len(report.by) > 1:
            table.add_section()  # a line between locations (or whatever the first key is)
        previous = g.keys
        table.add_row(*(_cell(k) for k in g.keys), f"{g.files:,}", human_size(g.bytes))
    table.add_section()
    label = ["total", *[""] * (len(report.by) - 1)] if report.by else []
    table.add_row(*label, f"{report.files:,}", human_size(report.bytes), style="bold")
    console.print(table)
    if report.created_before is not None:
        console.print(f"files created before {report.created_before:%Y-%m-%d %H:%M} UTC", markup=False)
    if report.catalog is not None:
        _render_footprint(console, report.catalog)
    if report.versions is not None:
        _render_versions(console, report.versions)
    if report.verify is not None:
        _render_verify(console, report.verify)


def _render_footprint(console, fp) -> None:
    """The footer: what the catalog's own table costs."""
    if fp.dialect == "postgres":
        parts = (
            f"table {human_size(fp.table)} + TOAST {human_size(fp.toast)} + indexes "
            f"{human_size(fp.indexes)} = {human_size(fp.on_disk)} on disk"
        )
    else:
        parts = f"database file {human_size(fp.on_disk)}, of which {human_size(fp.free)} free pages"
    console.print(
        f"catalog: {parts}; live rows hold {human_size(fp.live_bytes)} "
        f"({human_size(fp.data_bytes)} of file data in {plural(fp.rows, 'row')}); "
        f"{fp.vacuum} would return about {human_size(fp.reclaimable)}",
        markup=False, soft_wrap=True,
    )


def _render_versions(console, v) -> None:
    """One line: what a versioned bucket holds besides what the catalog counts (nothing
    when they could not be counted: ``du`` says why on stderr)."""
    if not v.checked:
        return
    console.print(
        f"S3 bucket versioning {v.versioning.status or 'unknown'}: {plural(v.current, 'current object')} "
        f"{human_size(v.current_bytes)}; {plural(v.noncurrent, 'noncurrent version')} "
        f"{human_size(v.noncurrent_bytes)}; {plural(v.delete_markers, 'delete marker')} "
        f"({plural(v.keys_without_current, 'key')} without a current object) under platform/ and project/",
        markup=False, soft_wrap=True,
    )


def _render_verify(console, result) -> None:
    from apstorage.services.du import CLEAN_SHORT

    console.print()
    for loc in result.locations:
        if loc.checked:
            console.print(
                f"{loc.location} {loc.target}: {plural(loc.objects, 'object')} "
                f"({human_size(loc.bytes)}) under platform/ and project/; "
                f"{plural(loc.rows, 'row')} in the catalog",
                markup=False,
            )
        else:
            console.print(f"{loc.location}: not checked ({loc.note})", markup=False)
    table = new_table("problem", "files", "bytes", "what cleans it", right=("files", "bytes"))
    names = {
        "missing": "missing objects",
        "orphans": "orphan objects",
        "sizeMismatches": "size mismatches",
        "refused": "refused by the store",
        "pendingUploads": "pending uploads",
        "restorable": "restorable rows",
        "orphanVersions": "orphan versions",
        "loneDeleteMarkers": "lone delete markers",
    }
    for kind in result.kinds():
        if kind.kind == "pendingUploads" and not kind.files:
            continue
        table.add_row(names[kind.kind], f"{kind.files:,}", human_size(kind.bytes),
                      CLEAN_SHORT[kind.kind] if kind.files else "")
    console.print(table)
    for kind in result.kinds():
        if not kind.files:
            continue
        console.print(f"{names[kind.kind]}:", markup=False)
        for item in kind.items:
            line = f"  {item['location']} {item.get('key') or '(no key)'}"
            if item.get("id"):
                line += f"  id={item['id']}"
            if item.get("versionId"):
                line += f"  versionId={item['versionId']}"
            if item.get("deleteMarkers"):
                line += f"  delete markers={item['deleteMarkers']}"
            if "objectSize" in item:
                line += f"  row size={item['size']} object size={item['objectSize']}"
            elif item.get("expiresAt"):
                line += f"  created={item['created']}, upload possible until {item['expiresAt']}"
            elif item.get("size") is not None:
                line += f"  size={item['size']}"
            if item.get("error"):
                line += f"  error={item['error']}"
            console.print(line, markup=False, soft_wrap=True)
        if kind.files > len(kind.items):
            console.print(f"  … and {kind.files - len(kind.items):,} more (--json lists them all)", markup=False)
    console.print("consistent" if result.ok else "inconsistent", style="bold green" if result.ok else "bold red")
