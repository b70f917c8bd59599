"""LOCAL store: files under ``AP_LOCAL_STORAGE_PATH`` at the object key's relative path."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

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

    def prune_empty_dirs(self, keys: Iterable[str]) -> int:
        """Remove the folders that deleting ``keys`` left empty, deepest first, up to the
        root — never the root itself, never through a symbolic link (a folder whose path
        crosses one is left alone). ``rmdir`` only removes an empty folder, so a file
        written meanwhile keeps its folder. Returns how many folders were removed."""
        root = self.root.resolve()
        folders: set[tuple[str, ...]] = set()
        for key in keys:
            parts = tuple(key.split("/")[:-1])
            if not parts or ".." in parts or "" in parts or parts in folders:
                continue
            if _crosses_link(root, parts):
                continue
            folders.update(parts[:depth] for depth in range(1, len(parts) + 1))
        removed = 0
        for folder in sorted(folders, key=len, reverse=True):  # children before parents
            try:
                os.rmdir(root.joinpath(*folder))
            except OSError:  # not empty (or gone already): its parents will not be empty either
                continue
            removed += 1
        return removed

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
                    with contextlib.suppress(FileNotFoundError):
                        yield ObjectInfo(key, full.stat().st_size)


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


def _crosses_link(root: Path, parts: tuple[str, ...]) -> bool:
    """True when any folder on the way from ``root`` to ``root/parts`` is a symbolic link
    (or not a folder)."""
    path = root
    for part in parts:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return True
        except OSError:
            return True
    return False
