"""A row's stored bytes back to the file: the one place compression is undone and the
stored size is checked. `get` uses it; so does anything else that needs a file's
original bytes (never `migrate-to-s3`, which copies bytes exactly as stored and keeps
the row's ``compression``, but which may call ``check_decodable`` to report a row early).

Rules (DESIGN §1, Compression; the platform's own reader does the same):

- ``ZSTD``: zstd frames, decoded as the reference decoder does: every frame in turn
  (concatenated frames give concatenated output), skippable frames
  (magic ``0x184D2A50..0x184D2A5F``, little-endian) skipped.
- ``GZIP`` (older platform versions; read, never written): gzip members in turn, as
  Python's ``gzip`` module reads them (zero padding after a member allowed).
- ``NONE``: the bytes as stored — unless they start with a zstd frame or a skippable
  frame, which the platform also writes under ``NONE``; those are decoded as ``ZSTD``.
- Anything else (a compression value this version does not know), data that is not
  valid for its compression, data that ends inside a frame or member, or stored bytes
  whose count differs from the row's ``size``: ``UnreadableFileError`` (exit 1) naming
  the row's id, for that row alone. Output may already have been produced when the
  fault is found at the end; `get -o` writes through a temp file, so nothing is left.
"""

from __future__ import annotations

import itertools
from typing import Iterator

from apstorage.errors import UnreadableFileError
from apstorage.model import ZSTD_MAGIC, Compression, FileRow

_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # bytes 1..3 of a skippable frame's little-endian magic
_MAGIC_LEN = 4
_GZIP_OUTPUT = 1024 * 1024  # bytes of output per zlib call: memory stays flat


def starts_with_zstd_frame(head: bytes) -> bool:
    """True when ``head`` starts with a zstd frame or a skippable frame magic."""
    if head.startswith(ZSTD_MAGIC):
        return True
    return len(head) >= _MAGIC_LEN and head[0] & 0xF0 == 0x50 and head[1:4] == _SKIPPABLE_TAIL


def check_decodable(row: FileRow) -> None:
    """Refuse, before any byte is read, a row whose compression this version cannot undo."""
    if not row.compression.known:
        known = ", ".join(c.value for c in Compression)
        raise UnreadableFileError(
            f"file {row.id} has compression {row.compression.value!r}, which apstorage cannot "
            f"decode (known: {known}); the row is left as it is",
        )


def decoded(row: FileRow, stored: Iterator[bytes]) -> Iterator[bytes]:
    """The file's original bytes from its ``stored`` chunks (as the store holds them).

    Refuses an unknown compression at once; damaged or truncated data and a stored size
    that differs from ``row.size`` raise ``UnreadableFileError`` while iterating (the
    size when the stored bytes end, before the decoder's own end-of-data check).
    """
    check_decodable(row)
    if row.size is not None:
        stored = _size_checked(row, stored)
    return _decode(row, stored)


def _size_checked(row: FileRow, stored: Iterator[bytes]) -> Iterator[bytes]:
    """Pass the stored chunks through; at their end, compare their length with ``size``."""
    count = 0
    for chunk in stored:
        count += len(chunk)
        yield chunk
    if count != row.size:
        raise UnreadableFileError(
            f"file {row.id}: read {count} stored bytes but its row records size {row.size}; "
            "the bytes were changed or cut short behind the catalog's back",
        )


def _decode(row: FileRow, stored: Iterator[bytes]) -> Iterator[bytes]:
    import zlib

    import zstandard

    compression = row.compression
    try:
        if compression is Compression.GZIP:
            yield from _gunzip(stored)
            return
        if compression is Compression.NONE:
            head, stored = _peek(stored, _MAGIC_LEN)
            if not starts_with_zstd_frame(head):
                yield from stored
                return
        yield from _unzstd(stored)
    except zstandard.ZstdError as exc:
        raise UnreadableFileError(f"file {row.id}: {_what(row)} is damaged ({exc})") from None
    except zlib.error as exc:
        raise UnreadableFileError(f"file {row.id}: {_what(row)} is damaged ({exc})") from None
    except _Truncated as exc:
        raise UnreadableFileError(f"file {row.id}: {_what(row)} ends inside a {exc} (truncated)") from None


def _what(row: FileRow) -> str:
    if row.compression is Compression.NONE:
        return "its bytes start with a zstd frame magic (compression NONE), but the zstd data"
    return f"its {row.compression.value} data"


class _Truncated(Exception):
    """The data ended inside a frame (zstd) or member (gzip)."""


def _peek(chunks: Iterator[bytes], n: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``n`` bytes (fewer at the end) and an iterator over all of it again."""
    head = b""
    taken: list[bytes] = []
    for chunk in chunks:
        taken.append(chunk)
        head += chunk[: n - len(head)]
        if len(head) >= n:
            break
    return head, itertools.chain(taken, chunks)


def _unzstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """zstd frames one after another; a skippable frame decodes to nothing."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    frame = None  # the frame being decoded; None between frames
    for chunk in chunks:
        while chunk:
            if frame is None:
                frame = dctx.decompressobj()
            out = frame.decompress(chunk)
            if out:
                yield out
            if frame.eof:
                chunk, frame = frame.unused_data, None
            else:
                chunk = b""
    if frame is not None:
        raise _Truncated("zstd frame")


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """gzip members one after another; zero bytes between members are padding."""
    import zlib

    member = None  # the member being decoded; None between members
    for chunk in chunks:
        while chunk:
            if member is None:
                chunk = chunk.lstrip(b"\x00")
                if not chunk:
                    break
                member = zlib.decompressobj(wbits=31)
            out = member.decompress(chunk, _GZIP_OUTPUT)
            if out:
                yield out
            while member.unconsumed_tail and not member.eof:
                out = member.decompress(member.unconsumed_tail, _GZIP_OUTPUT)
                if out:
                    yield out
            if member.eof:
                chunk, member = member.unused_data, None
            else:
                chunk = b""
    if member is not None:
        raise _Truncated("gzip member")


__all__ = ["check_decodable", "decoded", "starts_with_zstd_frame"]
