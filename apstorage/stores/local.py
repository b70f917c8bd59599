"""LOCAL store: files under ``AP_LOCAL_STORAGE_PATH`` at the object key's relative path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from apstorage.errors import ApStorageError, NotFoundError, PermissionDeniedError, UsageError
from apstorage.model import Location, safe_relative_key
from apstorage.stores.base import CHUNK, ObjectInfo, Store


class LocalStore(Store):
    location = Location.LOCAL

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def path_for(self, key: str) -> Path:
        """The file for ``key``; refuses any key that would land outside the root."""
        safe_relative_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if root != path and root not in path.parents:
            raise UsageError(f"unsafe object key {key!r}: it leaves {root}")
        return path

    def put(self, key: str, source: BinaryIO, size: int, *, tags: dict[str, str] | None = None) -> None:
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write a temp file beside the target, fsync, then rename: never a half file.
            fd, tmp = tempfile.mkstemp(prefix=".apstorage-", dir=path.parent)
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot write under {path.parent}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def open(self, key: str) -> Iterator[bytes]:
        path = self.path_for(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"LOCAL file {path} does not exist") from None
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot read {path}: {exc.strerror}") from None
        return _iter_file(fh)

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot delete {path}: {exc.strerror}") from None
        except OSError as exc:
            raise ApStorageError(f"cannot delete {path}: {exc.strerror}") from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            return ObjectInfo(key, self.path_for(key).stat().st_size)
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = self.root.resolve()
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".apstorage-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(root).as_posix()
                if key.startswith(prefix):
                    try:
                        st = full.stat()
                    except FileNotFoundError:
                        continue
                    modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
                    yield ObjectInfo(key, st.st_size, modified)


def _iter_file(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
