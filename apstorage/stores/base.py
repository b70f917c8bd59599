"""The one small interface every store implements (DB, LOCAL, S3).

A store maps keys to bytes. It knows nothing of rows: for S3 and LOCAL the key is the
object key (``project/{id}/{TYPE}/{fileId}``); for DB it is the file id, because the
bytes live in the row itself. Deleting a missing key is success. Signing is a
capability only S3 has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterable, Iterator

from apstorage.errors import ApStorageError
from apstorage.model import Location

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None  # LastModified (S3) or mtime (LOCAL), UTC, when listed


class Store(ABC):
    location: Location

    @abstractmethod
    def put(self, key: str, source: BinaryIO, size: int, *, tags: dict[str, str] | None = None) -> None:
        """Write ``size`` bytes read from ``source`` under ``key``, all or nothing."""

    @abstractmethod
    def open(self, key: str) -> Iterator[bytes]:
        """Stream the bytes under ``key`` in chunks; NotFoundError when absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is success."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size of ``key``, or None when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every key under ``prefix``, streamed page by page."""

    def check_delete(self, key: str) -> None:
        """Raise what ``delete(key)`` would refuse the key with before touching anything
        (an unsafe key, a path through a link), so that a dry run says what the real run
        would keep. Reads only; the default refuses nothing."""

    def get(self, key: str) -> bytes:
        return b"".join(self.open(key))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Delete many keys; returns {key: reason} for the ones the store refused."""
        failed: dict[str, str] = {}
        for key in keys:
            try:
                self.delete(key)
            except (ApStorageError, OSError) as exc:  # reported per key; a bug is raised as itself
                failed[key] = str(exc)
        return failed

    def close(self) -> None:
        pass
