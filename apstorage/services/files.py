"""`put` and `get`: store a file where its type and the settings say, read it from wherever
its row says it is.

Write order (nothing half-made): the size limit is checked before anything is written;
S3/LOCAL bytes are written first and the row inserted after, and an object whose row
insert failed is removed; DB bytes go in with the row in one statement.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Iterator

from apstorage.errors import NotFoundError, PermissionDeniedError, TooLargeError, UsageError
from apstorage.model import (
    ZSTD_MAGIC,
    Compression,
    FileRow,
    Location,
    check_owner,
    is_execution_type,
    new_id,
    object_key,
    parse_type,
)
from apstorage.services.context import Storage
from apstorage.stores.base import CHUNK

SPOOL_IN_MEMORY = 8 * 1024 * 1024
RETENTION_TAG = {"ap-retention": "execution"}


@dataclass(frozen=True)
class PutRequest:
    source: str  # a path, or "-" for stdin
    file_type: str
    project_id: str | None = None
    platform_id: str | None = None
    name: str | None = None
    compress: bool = False


MAX_NAME_LENGTH = 1024


def check_file_name(name: object, where: str) -> str | None:
    """Why ``name`` cannot be recorded as a new file's name, or None: it must be a
    non-empty string of at most MAX_NAME_LENGTH printable characters."""
    from apstorage.text import has_control

    if not isinstance(name, str) or not name.strip():
        return f"{where} must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"{where} is longer than {MAX_NAME_LENGTH} characters"
    if has_control(name) is not None:
        return f"{where} holds a control character; accepted: printable text"
    return None


def location_for(file_type: str, configured: Location) -> Location:
    """Permanent files always live in DB; execution data follows the setting."""
    return configured if is_execution_type(file_type) else Location.DB


def validate_put(storage: Storage, req: PutRequest) -> tuple[str, Location, FileRow]:
    """Check everything that can be checked before a byte is written."""
    file_type = parse_type(req.file_type)
    check_owner(req.project_id, req.platform_id)
    location = location_for(file_type, storage.settings.storage_location)
    file_id = new_id()
    key = object_key(file_id, file_type, req.project_id, req.platform_id)
    name = req.name if req.name is not None else (None if req.source == "-" else Path(req.source).name)
    if name is not None and (problem := check_file_name(name, "--name" if req.name is not None else "the file's name")):
        raise UsageError(problem + ("" if req.name is not None else "; give --name"))
    row = FileRow(
        id=file_id,
        type=file_type,
        location=location,
        project_id=req.project_id,
        platform_id=req.platform_id,
        file_name=name,
        s3_key=None if location is Location.DB else key,
        compression=Compression.ZSTD if req.compress else Compression.NONE,
    )
    return file_type, location, row


def put_file(storage: Storage, req: PutRequest, *, stdin: BinaryIO | None = None, dry_run: bool = False) -> FileRow:
    file_type, location, row = validate_put(storage, req)
    limit = storage.settings.max_file_size_bytes
    with contextlib.ExitStack() as stack:
        source, size = _open_source(req.source, limit, stdin, stack)
        if req.compress:
            source, size = _compress(source, stack)
        row = FileRow(**{**row.__dict__, "size": size})
        if dry_run:
            return row
        if location is Location.DB:
            return storage.catalog.insert(row, source.read())
        store = storage.store(location)
        tags = RETENTION_TAG if is_execution_type(file_type) else None
        store.put(row.key, source, size, tags=tags)
        try:
            return storage.catalog.insert(row)
        except BaseException:
            # The row never made it: remove the bytes so nothing points nowhere.
            with contextlib.suppress(Exception):
                store.delete(row.key)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _open_source(
    source: str, limit: int, stdin: BinaryIO | None, stack: contextlib.ExitStack
) -> tuple[BinaryIO, int]:
    """The input, seekable, with its size known and within the limit."""
    if source == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY))
        size = 0
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large("standard input", size, limit, at_least=True)
            spool.write(chunk)
        spool.seek(0)
        return spool, size  # type: ignore[return-value]
    path = Path(source)
    try:
        stat = path.stat()
        if path.is_dir():
            raise UsageError(f"{source} is a directory; give a file or - for standard input")
        fh = stack.enter_context(open(path, "rb"))
    except FileNotFoundError:
        raise NotFoundError(f"input file {source} does not exist") from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot read input file {source}: permission denied") from None
    if stat.st_size > limit:
        raise _too_large(source, stat.st_size, limit)
    return fh, stat.st_size


def _too_large(what: str, size: int, limit: int, *, at_least: bool = False) -> TooLargeError:
    amount = f"more than {limit}" if at_least else str(size)
    return too_large_error(f"{what} is {amount} bytes", limit, "nothing was written")


def too_large_error(what: str, limit: int, consequence: str) -> TooLargeError:
    """Exit 7, naming the setting and how to raise it."""
    mb = limit // (1024 * 1024)
    return TooLargeError(
        f"{what}, over AP_MAX_FILE_SIZE_MB={mb} ({limit} bytes); {consequence}",
        hint="raise AP_MAX_FILE_SIZE_MB to accept larger files",
    )


def _compress(source: BinaryIO, stack: contextlib.ExitStack) -> tuple[BinaryIO, int]:
    import zstandard

    spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY))
    zstandard.ZstdCompressor(level=3).copy_stream(source, spool)
    size = spool.tell()
    spool.seek(0)
    return spool, size  # type: ignore[return-value]


# -- reading ----------------------------------------------------------------------------


def open_file(storage: Storage, file_id: str) -> tuple[FileRow, Iterator[bytes]]:
    """The row and its original bytes, streamed from wherever the row says they are."""
    row = storage.catalog.get(file_id)
    if row.location is Location.DB:
        chunks = storage.store(Location.DB).open(row.id)
    else:
        chunks = storage.store(row.location).open(row.key)
    return row, decompressed(chunks, force=row.compression is Compression.ZSTD)


def decompressed(chunks: Iterator[bytes], *, force: bool) -> Iterator[bytes]:
    """Undo zstd when the row says ZSTD, or when the bytes start with the zstd magic
    (the platform writes such ``NONE`` rows and decompresses them the same way)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(ZSTD_MAGIC):
            break
    if not (force or head.startswith(ZSTD_MAGIC)):
        if head:
            yield head
        yield from chunks
        return
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    for chunk in itertools.chain([head], chunks):
        while chunk:
            out = obj.decompress(chunk)
            if out:
                yield out
            chunk = obj.unused_data if obj.eof else b""
            if obj.eof:
                obj = dctx.decompressobj()  # the next frame, if any


def write_file(storage: Storage, file_id: str, output: str) -> FileRow:
    """Copy a file's bytes to ``output`` (a path, an existing folder, or "-").

    A folder gets ``FOLDER/<fileName>`` with the name made safe (``safe_file_name``), as
    ``aws s3 cp`` does with a folder target. A path is written whole or not at all: a temp
    file beside it is renamed into place once complete, with the mode an existing file
    had, else the mode the umask gives a new file. A device (``/dev/stdout``) is written
    in place. ``write_file_to`` also returns the path written."""
    return write_file_to(storage, file_id, output)[0]


def write_file_to(storage: Storage, file_id: str, output: str) -> tuple[FileRow, str]:
    """``write_file``, also returning the path written ("-" for standard output)."""
    import stat as stat_mod

    row, chunks = open_file(storage, file_id)
    if output == "-":
        _copy(chunks, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return row, "-"
    target = Path(output)
    if target.is_dir():
        target = target / safe_file_name(row.file_name, row.id)
    elif output.endswith(("/", os.sep)):
        raise NotFoundError(f"output folder {output} does not exist")
    try:
        existing = target.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise PermissionDeniedError(f"cannot write to {target}: {exc.strerror}") from None
    if existing is not None and stat_mod.S_ISDIR(existing.st_mode):
        raise UsageError(f"-o: {target} is a folder")
    if existing is not None and not stat_mod.S_ISREG(existing.st_mode):
        with open(target, "wb") as out:  # a device or a pipe: nothing to rename
            _copy(chunks, out)
        return row, str(target)
    mode = stat_mod.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask()
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except FileNotFoundError:
        raise NotFoundError(f"output folder {directory} does not exist") from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot write to {directory}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"-o: cannot write {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            _copy(chunks, out)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return row, str(target)


def safe_file_name(name: str | None, fallback: str) -> str:
    """A recorded file name as one safe path component: its last ``/`` or ``\\`` part,
    control and bidi characters replaced by ``_``; ``fallback`` (the id) when nothing usable
    is left (empty, ``.``, ``..``, or over 255 bytes)."""
    from apstorage.text import has_control

    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    while (at := has_control(base)) is not None:
        base = base[:at] + "_" + base[at + 1:]
    base = base.strip()
    if base in ("", ".", "..") or len(base.encode("utf-8", "surrogatepass")) > 255:
        return fallback
    return base


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _copy(chunks: Iterator[bytes], out: IO[bytes]) -> None:
    for chunk in chunks:
        out.write(chunk)


__all__ = [
    "PutRequest",
    "location_for",
    "put_file",
    "open_file",
    "write_file",
    "write_file_to",
    "safe_file_name",
    "decompressed",
]
