"""`put` and `get`: store a file where its type and the settings say, read it from wherever
its row says it is.

Write order (nothing half-made): every size limit is checked before anything is written
(a regular file by its size on disk, before a byte is read; a pipe, FIFO or device by
streaming at most limit + 1 bytes into an anonymous temporary file); S3/LOCAL bytes are
written first and the row inserted after, and an object whose row insert failed is
removed; DB bytes go in with the row in one statement.

Size limits (all exit 7, nothing written): ``AP_MAX_FILE_SIZE_MB`` on the input; the
catalog's ``size`` column, a 32-bit integer in the platform's schema (2,147,483,647
bytes), and, for a file stored in the database, what one ``bytea``/BLOB value can hold
(``MAX_DB_BYTES``), on the stored bytes (the compressed ones with ``--compress``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterator

from apstorage.config import Settings
from apstorage.errors import ApStorageError, NotFoundError, PermissionDeniedError, TooLargeError, UsageError
from apstorage.model import (
    MAX_CATALOG_SIZE,
    MAX_DB_BYTES,
    Compression,
    FileRow,
    Location,
    check_owner,
    expires,
    follows_storage_location,
    new_id,
    object_key,
    parse_type,
)
from apstorage.services.context import Storage
from apstorage.services.decoding import decoded
from apstorage.stores.base import CHUNK

SPOOL_IN_MEMORY = 8 * 1024 * 1024
RETENTION_TAG = {"ap-retention": "execution"}


def retention_tags(file_type: str) -> dict[str, str] | None:
    """The S3 tags an object of this type carries: ``ap-retention=execution`` for data
    that expires by age (the bucket lifecycle rule's filter), none for ``FLOW_BUNDLE``
    and permanent types, which the platform never expires by age."""
    return RETENTION_TAG if expires(file_type) else None


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
    """Execution data and flow bundles follow the setting; permanent files live in DB
    (the platform's own rule)."""
    return configured if follows_storage_location(file_type) else Location.DB


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


# -- size limits --------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeLimit:
    """One bound on a file's size (bytes) and how a refusal explains it."""

    bytes: int
    reason: str  # completes "<what> is N bytes, ..."
    hint: str


def max_file_size_limit(settings: Settings) -> SizeLimit:
    limit = settings.max_file_size_bytes
    return SizeLimit(
        limit,
        f"over AP_MAX_FILE_SIZE_MB={settings.max_file_size_mb} ({limit} bytes)",
        "raise AP_MAX_FILE_SIZE_MB to accept larger files",
    )


def stored_size_limits(settings: Settings, file_type: str, location: Location) -> list[SizeLimit]:
    """What the catalog can record: ``size`` is an int32 in the platform's schema, and a
    file stored in the database must fit one ``bytea``/BLOB value."""
    limits = [
        SizeLimit(
            MAX_CATALOG_SIZE,
            f"over the {MAX_CATALOG_SIZE} bytes the catalog's size column (a 32-bit "
            "integer in the platform's schema) can record",
            "the platform cannot catalogue a file this large; split it",
        )
    ]
    if location is Location.DB:
        db_max = MAX_DB_BYTES[settings.db_type]
        if follows_storage_location(file_type):
            why = f"AP_FILE_STORAGE_LOCATION={settings.storage_location.value}"
            hint = "set AP_FILE_STORAGE_LOCATION=S3 (or LOCAL) to store execution data outside the database"
        else:
            why = (
                f"{file_type} is a permanent type, stored in the database whatever "
                "AP_FILE_STORAGE_LOCATION says"
            )
            hint = "permanent files always live in the database; this one cannot be stored"
        limits.append(SizeLimit(db_max, f"over the {db_max} bytes one database value can hold ({why})", hint))
    return limits


def check_size(what: str, size: int, limits: list[SizeLimit], *, at_least: bool = False) -> None:
    """Refuse (exit 7) a ``size`` over any of ``limits``, naming the tightest one it breaks.
    ``at_least``: the input was cut off, so ``size`` is only known to be more than that."""
    broken = [limit for limit in limits if size > limit.bytes]
    if not broken:
        return
    limit = min(broken, key=lambda l: l.bytes)
    amount = f"more than {limit.bytes}" if at_least else str(size)
    raise TooLargeError(f"{what} is {amount} bytes, {limit.reason}; nothing was written", hint=limit.hint)


def too_large_error(what: str, limit: int, consequence: str) -> TooLargeError:
    """Exit 7, naming the setting and how to raise it."""
    mb = limit // (1024 * 1024)
    return TooLargeError(
        f"{what}, over AP_MAX_FILE_SIZE_MB={mb} ({limit} bytes); {consequence}",
        hint="raise AP_MAX_FILE_SIZE_MB to accept larger files",
    )


# -- writing ------------------------------------------------------------------------------


def put_file(
    storage: Storage, req: PutRequest, *, stdin: BinaryIO | None = None, dry_run: bool = False,
    warn: Callable[[str], None] | None = None,
) -> FileRow:
    """Store one file; returns its row. Every limit is checked before anything is written.
    ``warn`` receives one line when the store dropped the retention tag (read back after an
    S3 put)."""
    file_type, location, row = validate_put(storage, req)
    settings = storage.settings
    stored_limits = stored_size_limits(settings, file_type, location)
    input_limits = [max_file_size_limit(settings)]
    if not req.compress:
        input_limits += stored_limits  # the input is what gets stored
    with contextlib.ExitStack() as stack:
        source, size = _open_source(req.source, input_limits, stdin, stack)
        if req.compress:
            source, size = _compress(source, stored_limits, stack)
        row = FileRow(**{**row.__dict__, "size": size})
        if dry_run:
            return row
        if location is Location.DB:
            return storage.catalog.insert(row, source.read())
        store = storage.store(location)
        tags = retention_tags(file_type)
        store.put(row.key, source, size, tags=tags)
        try:
            inserted = storage.catalog.insert(row)
        except BaseException:
            # The row never made it: remove the bytes so nothing points nowhere.
            with contextlib.suppress(Exception):
                store.delete(row.key)
            raise
        if tags and warn is not None:
            _warn_if_tag_dropped(store, row.key, size, tags, warn)
        return inserted
    raise AssertionError("unreachable")  # pragma: no cover


def _warn_if_tag_dropped(
    store: object, key: str, size: int, tags: dict[str, str], warn: Callable[[str], None]
) -> None:
    """One GetObjectTagging after an S3 put: a store that keeps no tags (rclone's) makes
    the bucket lifecycle rule miss the object, which is worth one line on stderr. A store
    that refuses the read-back (no s3:GetObjectTagging) is not second-guessed."""
    read_tags = getattr(store, "read_tags", None)
    if read_tags is None:
        return
    try:
        kept = read_tags(key, size)
    except ApStorageError:
        return
    if kept is None or any(kept.get(k) != v for k, v in tags.items()):
        tag = "&".join(f"{k}={v}" for k, v in tags.items())
        warn(
            f"the store did not keep the tag {tag} on {key}: the bucket lifecycle rule "
            "(`apstorage lifecycle apply`) will miss it; `apstorage sweep-expired` still deletes it"
        )


def _open_source(
    source: str, limits: list[SizeLimit], stdin: BinaryIO | None, stack: contextlib.ExitStack
) -> tuple[BinaryIO, int]:
    """The input, readable from its start, with its size known and within ``limits``.

    A regular file is checked by its size on disk before a byte is read. Anything else
    (standard input, a pipe, a FIFO, ``<(...)``, a character device such as /dev/zero, a
    /proc file that says it is empty) has no size to trust: it is streamed into an anonymous temporary file (memory up to
    8 MiB), and reading stops at the tightest limit + 1 byte.
    """
    if source == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _spool(stream, "standard input", limits, stack)
    path = Path(source)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{source} is a directory; give a file or - for standard input")
        # A regular file's size is trusted, except 0: /proc and similar files say 0 and
        # still have content, so they are streamed like a pipe.
        sized = stat.S_ISREG(info.st_mode) and info.st_size > 0
        if sized:
            check_size(f"input file {source}", info.st_size, limits)
        fh = stack.enter_context(open(path, "rb"))
    except FileNotFoundError:
        raise NotFoundError(f"input file {source} does not exist") from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot read input file {source}: permission denied") from None
    if sized:
        return fh, info.st_size
    return _spool(fh, f"input {source}", limits, stack)


def _spool(
    stream: IO[bytes], what: str, limits: list[SizeLimit], stack: contextlib.ExitStack
) -> tuple[BinaryIO, int]:
    """Copy a stream of unknown length into an anonymous temporary file, refusing it as
    soon as it passes the tightest limit (at most limit + 1 bytes are read)."""
    cap = min(limit.bytes for limit in limits)
    spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY))
    size = 0
    while chunk := stream.read(min(CHUNK, cap + 1 - size)):
        size += len(chunk)
        if size > cap:
            check_size(what, size, limits, at_least=True)
        spool.write(chunk)
    spool.seek(0)
    return spool, size  # type: ignore[return-value]


def _compress(source: BinaryIO, limits: list[SizeLimit], stack: contextlib.ExitStack) -> tuple[BinaryIO, int]:
    """zstd-compress into an anonymous temporary file; the compressed size must fit
    ``limits`` (checked as it grows)."""
    import zstandard

    spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY))
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    size = 0
    while True:
        chunk = source.read(CHUNK)
        out = compressor.compress(chunk) if chunk else compressor.flush()
        size += len(out)
        check_size("the compressed file", size, limits, at_least=bool(chunk))
        spool.write(out)
        if not chunk:
            break
    spool.seek(0)
    return spool, size  # type: ignore[return-value]


# -- reading ----------------------------------------------------------------------------


def open_file(storage: Storage, file_id: str) -> tuple[FileRow, Iterator[bytes]]:
    """The row and its original bytes, streamed from wherever the row says they are.

    Decoding and the stored-size check are ``decoding.decoded``'s: an unknown compression
    is refused here, before a byte is read; damaged data or a size that disagrees with the
    row raises ``UnreadableFileError`` (exit 1) while the chunks are read.
    """
    row = storage.catalog.get(file_id)
    return row, decoded(row, stored_bytes(storage, row))


def stored_bytes(storage: Storage, row: FileRow) -> Iterator[bytes]:
    """A row's bytes exactly as stored (compressed or not), from its own location."""
    if row.location is Location.DB:
        return storage.store(Location.DB).open(row.id)
    return storage.store(row.location).open(row.key)


def write_file(storage: Storage, file_id: str, output: str) -> FileRow:
    """Copy a file's bytes to ``output`` (a path, an existing folder, or "-").

    A folder gets ``FOLDER/<fileName>`` with the name made safe (``safe_file_name``), as
    ``aws s3 cp`` does with a folder target. A path is written whole or not at all: a temp
    file beside it is renamed into place once complete, with the mode an existing file
    had, else the mode the umask gives a new file. A device (``/dev/stdout``) is written
    in place. Reading or decoding failures remove the temp file; to stdout, bytes flow
    as they are read and a fault found at the end (a short object, a truncated frame)
    still raises, after the bytes before it. ``write_file_to`` also returns the path
    written."""
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
        with _writing(target), open(target, "wb") as out:  # a device or a pipe: nothing to rename
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
        with _writing(target), os.fdopen(fd, "wb") as out:
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


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """A write (or the flush when the file closes) the system refuses — a full disk or
    device, a quota — is an ApStorageError naming ``target``, exit 1, not a traceback."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise ApStorageError(f"cannot write to {target}: {exc.strerror or exc}") from None


def _copy(chunks: Iterator[bytes], out: IO[bytes]) -> None:
    for chunk in chunks:
        out.write(chunk)


__all__ = [
    "RETENTION_TAG",
    "PutRequest",
    "SizeLimit",
    "check_size",
    "max_file_size_limit",
    "stored_size_limits",
    "too_large_error",
    "location_for",
    "put_file",
    "open_file",
    "retention_tags",
    "stored_bytes",
    "write_file",
    "write_file_to",
    "safe_file_name",
]
