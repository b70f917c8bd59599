"""`put` and `get`."""

from __future__ import annotations

from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, human_size
from apstorage.errors import UsageError


def _complete_type(incomplete: str) -> list[str]:
    from apstorage.model import ALL_TYPES

    return sorted(t for t in ALL_TYPES if t.startswith(incomplete.upper()))


@app.command()
@handle_errors
def put(
    path: str = typer.Argument(..., metavar="PATH", help="File to store, or - to read standard input."),
    file_type: str = typer.Option(
        ..., "--type", "-t", help="File type, e.g. FLOW_RUN_LOG or SAMPLE_DATA.",
        autocompletion=_complete_type,
    ),
    project: Optional[str] = typer.Option(None, "--project", help="Owning project id."),
    platform: Optional[str] = typer.Option(None, "--platform", help="Owning platform id."),
    name: Optional[str] = typer.Option(None, "--name", help="File name to record (default: PATH's name)."),
    compress: Optional[str] = typer.Option(
        None, "--compress", help="Store compressed: 'zstd' (the platform reads it back).", metavar="zstd"
    ),
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Store a file and print its id.

    Execution data and FLOW_BUNDLE follow AP_FILE_STORAGE_LOCATION; permanent types
    always go to the database. Limits are checked before anything is written (exit 7):
    AP_MAX_FILE_SIZE_MB for any input (a pipe or device is read to at most the limit + 1
    byte), 2,147,483,647 bytes (the catalog's size column), and 1 GiB for a file stored
    in the database.
    """
    from apstorage.services.context import Storage
    from apstorage.services.files import PutRequest, put_file

    if compress is not None and compress.lower() not in ("zstd", "none"):
        raise UsageError(f"--compress: {compress!r} is not valid; accepted: zstd, none")
    out = Output(json_out)
    request = PutRequest(
        source=path,
        file_type=file_type,
        project_id=project,
        platform_id=platform,
        name=name,
        compress=(compress or "").lower() == "zstd",
    )
    with Storage() as storage:
        row = put_file(storage, request, dry_run=dry_run, warn=out.warn)
    data = {
        "id": row.id,
        "location": row.location.value,
        "type": row.type,
        "size": row.size,
        "s3Key": row.s3_key,
        "dryRun": dry_run,
    }
    if dry_run:
        out.result(data, lambda c: c.print(
            f"would store {human_size(row.size)} as {row.type} in {row.location.value}"
            + (f" at {row.key}" if row.s3_key else ""), markup=False))
        return
    out.result(data, lambda c: c.print(row.id, markup=False))
    if not json_out and out.progress_enabled:  # a note for people, not for pipelines
        out.info(f"stored {human_size(row.size)} in {row.location.value}" + (f" at {row.s3_key}" if row.s3_key else ""))


@app.command()
@handle_errors
def get(
    file_id: str = typer.Argument(..., metavar="ID", help="The file's id."),
    output: str = typer.Option("-", "--output", "-o", help="Write to PATH instead of standard output (-)."),
    json_out: bool = typer.Option(
        False, "--json", help="With -o PATH: print the file's row as JSON on stdout."
    ),
) -> None:
    """Write a file's bytes to standard output or a file.

    The bytes are read from whatever location the file's row records (DB, LOCAL or S3),
    and ZSTD and GZIP rows are decompressed (so are NONE rows whose bytes are a zstd
    frame). Exit 1, naming the id, when the stored bytes differ in size from the row's
    size or cannot be decoded; with -o PATH nothing is left behind then.
    """
    from apstorage.services.context import Storage
    from apstorage.services.files import write_file_to

    if not output:  # an unset variable in a script: never a file named after something else
        raise UsageError("-o/--output: an empty path; give a file path, or - for standard output")
    if json_out and output == "-":
        raise UsageError("--json needs -o PATH: standard output carries the file's bytes")
    with Storage() as storage:
        row, written = write_file_to(storage, file_id, output)
    if output != "-":
        Output(json_out).result(row.to_json(), lambda c: c.print(f"wrote {written}", markup=False))
