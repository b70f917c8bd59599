"""`presign`: pre-signed GET/PUT URLs for S3 rows, and the worker upload flow."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from apstorage.cli.app import DRY_RUN_OPTION, JSON_OPTION, app, handle_errors
from apstorage.cli.output import Output, plural
from apstorage.errors import NotFoundError, PermissionDeniedError, UsageError


def _complete_type(incomplete: str) -> list[str]:
    from apstorage.model import LOCATION_TYPES

    return sorted(t for t in LOCATION_TYPES if t.startswith(incomplete.upper()))


@app.command()
@handle_errors
def presign(
    file_id: Optional[str] = typer.Argument(
        None, metavar="ID", help="The file's id (a row in S3). Not with --upload."
    ),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="GET (download, the default) or PUT (replace the bytes)."
    ),
    expires: Optional[str] = typer.Option(
        None,
        "--expires",
        "-e",
        help="How long the URL works: 90 (seconds), 15m, 1h, 7d. "
        "Default 7d for GET, 1h for PUT; at most 7d (the SigV4 limit).",
    ),
    upload: bool = typer.Option(
        False, "--upload", help="Create a new S3 row and return a PUT URL bound to --size."
    ),
    file_type: Optional[str] = typer.Option(
        None, "--type", "-t", help="With --upload: the execution data type, e.g. FLOW_RUN_LOG.",
        autocompletion=_complete_type,
    ),
    project: Optional[str] = typer.Option(None, "--project", help="With --upload: owning project id."),
    platform: Optional[str] = typer.Option(None, "--platform", help="With --upload: owning platform id."),
    name: Optional[str] = typer.Option(None, "--name", help="With --upload: the file name to record."),
    size: Optional[int] = typer.Option(
        None, "--size", min=0, help="With --upload: the exact size in bytes the upload must have."
    ),
    from_json: Optional[str] = typer.Option(
        None,
        "--from-json",
        metavar="FILE|-",
        help='Upload many: {"files":[{"fileName":..,"fileSize":..}]} from FILE or standard input.',
    ),
    dry_run: bool = DRY_RUN_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Print a pre-signed S3 URL (GET, PUT, or a worker upload).

    A SigV4 URL lets bytes go to and from S3 without passing through here.

    GET URLs download the file as an attachment under its recorded name. With --upload
    (or --from-json), create the file's row and print a PUT URL that only accepts an
    upload of exactly --size bytes; send the printed headers with it. Files in the
    database or on local disk cannot be pre-signed (migrate-to-s3 moves them).
    """
    from apstorage.services.context import Storage
    from apstorage.services import presign as service

    out = Output(json_out)
    is_upload = upload or from_json is not None
    if is_upload:
        if file_id is not None:
            raise UsageError("give either ID or --upload, not both: --upload creates a new file")
        if method is not None and service.parse_method(method) != "PUT":
            raise UsageError("--upload makes PUT URLs; leave out --method or give PUT")
        if file_type is None:
            raise UsageError("--upload needs --type (an execution data type, e.g. FLOW_RUN_LOG)")
        if from_json is not None:
            if name is not None or size is not None:
                raise UsageError("--from-json gives names and sizes; leave out --name and --size")
            files = service.parse_upload_json(_read_input(from_json), f"--from-json {from_json}")
        else:
            if name is None or size is None:
                raise UsageError("--upload needs --name and --size (or --from-json FILE)")
            files = [service.UploadFile(name, size)]
        request = service.UploadRequest(file_type, project_id=project, platform_id=platform)
        with Storage() as storage:
            result = service.presign_uploads(storage, request, files, expires, dry_run=dry_run)
        for warning in result.warnings:
            out.warn(warning)
        if from_json is not None:
            data = {"files": [item.to_json() for item in result.items], "dryRun": dry_run}
        else:
            data = {**result.items[0].to_json(), "dryRun": dry_run}
        out.result(data, lambda console: _render_uploads(console, result))
        if not json_out:
            _upload_hint(out, result)
        return

    if file_id is None:
        raise UsageError("give a file ID, or --upload to create a new file")
    for flag, value in (("--type", file_type), ("--project", project), ("--platform", platform),
                        ("--name", name), ("--size", size)):
        if value is not None:
            raise UsageError(f"{flag} only applies with --upload")
    if dry_run:
        raise UsageError("--dry-run applies with --upload; presigning an existing file changes nothing")
    with Storage() as storage:
        result = service.presign_file(storage, file_id, method, expires)
    for warning in result.warnings:
        out.warn(warning)
    item = result.items[0]
    out.result({**item.to_json(), "warnings": result.warnings},
               lambda console: console.print(item.url, markup=False, soft_wrap=True))
    if not json_out and item.headers:
        out.info("send these headers with the upload: " + ", ".join(f"{k}: {v}" for k, v in item.headers.items()))


def _read_input(source: str) -> bytes:
    """The document's bytes, at most one more than the limit (parse_upload_json refuses it)."""
    from apstorage.services.presign import MAX_DOCUMENT_BYTES

    if source == "-":
        return sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
    path = Path(source)
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"--from-json: {source} does not exist") from None
    except PermissionError:
        raise PermissionDeniedError(f"--from-json: cannot read {source}: permission denied") from None
    except (OSError, ValueError) as exc:  # a folder, an embedded NUL, ...
        raise UsageError(f"--from-json: cannot read {source!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _render_uploads(console, result) -> None:
    if len(result.items) == 1:
        item = result.items[0]
        if item.url is None:
            console.print(f"would create {item.id} ({item.file_name}, {item.size} bytes) at {item.s3_key}", markup=False)
        else:
            console.print(item.url, markup=False, soft_wrap=True)
        return
    for item in result.items:
        url = item.url or f"(dry run: would create {item.s3_key})"
        console.print(f"{item.id}\t{item.file_name}\t{url}", markup=False, soft_wrap=True)


def _upload_hint(out: Output, result) -> None:
    item = result.items[0]
    if result.dry_run:
        out.info(f"dry run: {plural(len(result.items), 'file')} validated; nothing was created")
        return
    # Content-Type given: without it curl sends a form content type, which some stores
    # keep (one emulator even stores the upload as an empty object).
    sent = {"Content-Type": "application/octet-stream"}
    sent.update((k, v) for k, v in item.headers.items() if k != "Content-Length")
    headers = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in sent.items())
    if len(result.items) == 1:
        out.info(f"created file {item.id} at {item.s3_key}; upload exactly {plural(item.size, 'byte')} with:")
        out.info(f"  curl -X PUT {headers} --data-binary @FILE '<url>'")
    else:
        out.info(f"created {plural(len(result.items), 'file')}; each URL takes exactly its fileSize bytes and: {headers}")
