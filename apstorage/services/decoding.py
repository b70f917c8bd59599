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
    that differs from ``row.size`` raise ``UnreadableFileError`` while iterating. The size
    is the first thing blamed: when decoding fails, the rest of the stored bytes are
    counted, and a size that disagrees is reported instead of the decoder's complaint.
    """
    check_decodable(row)
    return _decode(row, _StoredBytes(row, stored))


class _StoredBytes:
    """The stored chunks, counted; at their end the count must equal the row's size."""

    def __init__(self, row: FileRow, chunks: Iterator[bytes]) -> None:
        self.row = row
        self.chunks = chunks
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.count += len(chunk)
            yield chunk
        self.check()

    def check(self) -> None:
        if self.row.size is not None and self.count != self.row.size:
            raise UnreadableFileError(
                f"file {self.row.id}: read {self.count} stored bytes but its row records size "
                f"{self.row.size}; the bytes were changed or cut short behind the catalog's back",
            )

    def check_rest(self) -> None:
        """After a decoding failure: count what is left, and blame the size if it is off."""
        if self.row.size is None:
            return
        for chunk in self.chunks:
            self.count += len(chunk)
        self.check()


def _decode(row: FileRow, stored: _StoredBytes) -> Iterator[bytes]:
    import zlib

    import zstandard

    compression = row.compression
    try:
        if compression is Compression.GZIP:
            yield from _gunzip(iter(stored))
            return
        chunks: Iterator[bytes] = iter(stored)
        if compression is Compression.NONE:
            head, chunks = _peek(chunks, _MAGIC_LEN)
            if not starts_with_zstd_frame(head):
                yield from chunks
                return
        yield from _unzstd(chunks)
    except zstandard.ZstdError as exc:
        stored.check_rest()
        raise UnreadableFileError(f"file {row.id}: {_what(row)} is damaged ({exc})") from None
    except zlib.error as exc:
        stored.check_rest()
        raise UnreadableFileError(f"file {row.id}: {_what(row)} is damaged ({exc})") from None
    except _Truncated as exc:
        stored.check_rest()
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
