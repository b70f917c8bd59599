"""LOCAL store: files under ``AP_LOCAL_STORAGE_PATH`` at the object key's relative path.

Symbolic links under the root are not files of ours. The platform (or an operator) may
leave one at a row's path, pointing at another row's file; following it would make a
delete remove the *other* row's bytes. So, consistently:

* reading (``open``, ``open_file``, ``stat``) through a link under the root — the file
  itself or any folder on its way — raises ``LinkError`` (exit 1) naming the path (a link
  that leaves the root: UsageError, an unsafe key, as any other way out is): ``get``
  refuses it, ``migrate-to-s3`` reports the row as a failure, ``du --verify`` counts it as
  missing; ``list`` does not yield links;
* ``delete`` never follows a link: a link at the key is removed itself (its target stays),
  and a key reached through a linked folder is refused. A row whose key is a link owns the
  link: ``sweep-expired`` removes it with the row, so no link is left dangling and no target
  another row needs is touched;
* ``link_targets`` finds every file a link under the root points at, so that callers
  (migrate, sweep) keep a file another path still reaches.

The root itself may be a link (``AP_LOCAL_STORAGE_PATH`` → a mounted volume): it is
resolved once, and only what lies under it is checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from apstorage.errors import ApStorageError, NotFoundError, PermissionDeniedError, UsageError
from apstorage.model import Location, safe_relative_key
from apstorage.stores.base import CHUNK, ObjectInfo, Store


class LinkError(ApStorageError):
    """A key whose path under the LOCAL root is, or passes through, a symbolic link."""


class LocalStore(Store):
    location = Location.LOCAL

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def path_for(self, key: str) -> Path:
        """The file for ``key`` (not resolved: a link at the key stays a link). Refuses any
        key that could leave the root (absolute, ``..``, empty parts: ``safe_relative_key``)."""
        safe_relative_key(key)
        return self.root.resolve() / key

    def _checked_path(self, key: str, *, final: bool = True) -> Path:
        """``path_for(key)`` after checking that no folder under the root on the way to it,
        nor (``final``) the file itself, is a symbolic link. Missing parts are fine."""
        path = self.path_for(key)
        parts = key.split("/")
        here = path.parents[len(parts) - 1]  # the resolved root
        for i, part in enumerate(parts):
            here = here / part
            last = i == len(parts) - 1
            if last and not final:
                break
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                return path
            except NotADirectoryError:
                return path
            if stat_mod.S_ISLNK(mode):
                root = path.parents[len(parts) - 1]
                target = here.resolve()
                if target != root and root not in target.parents:
                    raise UsageError(f"unsafe object key {key!r}: it leaves {root} through a link")
                what = "is a symbolic link" if last else f"lies under {here}, a symbolic link"
                raise LinkError(f"LOCAL file {path} {what}; apstorage does not follow links under {root}")
        return path

    def put(self, key: str, source: BinaryIO, size: int, *, tags: dict[str, str] | None = None) -> None:
        # A link at the key itself is replaced (rename does not follow it); a linked
        # folder on the way is refused.
        path = self._checked_path(key, final=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write a temp file beside the target, fsync, then rename: never a half file.
            fd, tmp = tempfile.mkstemp(prefix=".apstorage-", dir=path.parent)
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot write under {path.parent}: {exc.strerror}") from None
        except OSError as exc:  # a file where a folder should be, a read-only disk, ...
            raise ApStorageError(
                f"cannot write under {path.parent}: {exc.strerror}",
                hint="check AP_LOCAL_STORAGE_PATH",
            ) from None
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

    def open_file(self, key: str) -> tuple[BinaryIO, int]:
        """The regular file at ``key`` opened for reading, and its size. NotFoundError when
        absent; LinkError when it is (or lies under) a link; never follows one."""
        path = self._checked_path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFoundError(f"LOCAL file {path} does not exist") from None
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot read {path}: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a link since the check
                raise LinkError(f"LOCAL file {path} is a symbolic link; apstorage does not follow links") from None
            raise ApStorageError(f"cannot read {path}: {exc.strerror or exc}") from None
        fh = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat_mod.S_ISREG(info.st_mode):
            fh.close()
            raise ApStorageError(f"LOCAL path {path} is not a regular file")
        return fh, info.st_size

    def open(self, key: str) -> Iterator[bytes]:
        fh, _ = self.open_file(key)
        return _iter_file(fh)

    def check_delete(self, key: str) -> None:
        """UsageError (a key leaving the root) or LinkError (a folder on the way is a link)
        as ``delete`` would raise them; reads only."""
        self._checked_path(key, final=False)

    def delete(self, key: str) -> None:
        """Remove the file at ``key``; a link there is removed itself, never its target."""
        path = self._checked_path(key, final=False)
        try:
            os.unlink(path)  # unlink never follows a link in the last component
        except FileNotFoundError:
            return
        except NotADirectoryError:
            return
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot delete {path}: {exc.strerror}") from None
        except OSError as exc:
            raise ApStorageError(f"cannot delete {path}: {exc.strerror}") from None

    def prune_empty_dirs(self, keys: Iterable[str]) -> int:
        """Remove the folders that deleting ``keys`` left empty, children before parents,
        up to the root — never the root itself, never through a symbolic link (a folder
        whose path crosses one is left alone). ``rmdir`` only removes an empty folder, so
        a file written meanwhile keeps its folder. Returns how many folders were removed."""
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
        """Size of the regular file at ``key``; None when absent; LinkError for a link."""
        path = self._checked_path(key)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, info.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Regular files under the root (links and their targets' folders are not walked)."""
        root = self.root.resolve()
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".apstorage-"):
                    continue
                full = Path(dirpath) / name
                try:
                    info = os.lstat(full)
                except FileNotFoundError:
                    continue
                if not stat_mod.S_ISREG(info.st_mode):
                    continue  # a link (not ours), a socket, a FIFO
                key = full.relative_to(root).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key, info.st_size, datetime.fromtimestamp(info.st_mtime, timezone.utc))

    def link_targets(self) -> set[Path]:
        """Resolved paths that symbolic links under the root point at, inside the root (a
        folder link's target counts for everything under it: see ``reached_by_link``).
        One walk of the root (``scandir``: a link is known without a stat per file)."""
        root = self.root.resolve()
        targets: set[Path] = set()
        if not root.is_dir():
            return targets
        pending = [root]
        while pending:
            folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.is_symlink():
                    with contextlib.suppress(OSError, RuntimeError):
                        target = Path(entry.path).resolve()
                        if target == root or root in target.parents:
                            targets.add(target)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
        return targets

    def reached_by_link(self, key: str, targets: set[Path]) -> bool:
        """True when a link (from ``link_targets``) reaches the file at ``key``, so the file
        must stay when its row goes.

        Never for a key that is itself a symbolic link: that link is its row's own entry
        (the row's "bytes" as far as the store goes), and removing a link never removes what
        it points at, so nothing another row or link needs is lost. A folder link above it
        (``alias`` → ``project/p1/...``) reaches the link, not a file, and keeping the link
        for it would leave a link no row owns once the row is deleted."""
        if not targets:
            return False
        path = self.path_for(key)
        if not (path in targets or any(parent in targets for parent in path.parents)):
            return False
        try:
            return not stat_mod.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # gone, or a part of the way is not a folder: nothing to keep
            return True


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
            if not stat_mod.S_ISDIR(os.lstat(path).st_mode):
                return True
        except OSError:
            return True
    return False
