"""Run locks: one holder at a time per name and per catalog, across processes and hosts.

Postgres: a session advisory lock keyed by the name and the ``file`` table's oid (so
catalogs in other schemas of the same database do not block each other), held on a
dedicated connection for the whole run; it also dies with the process.
SQLite: an exclusive, non-blocking ``flock`` on ``<database>.<name>.lock``.

Who takes which: on SQLite one ``sweep-expired`` or ``gc`` at a time (both take
"sweep-expired"), one ``migrate-to-s3`` ("migrate"). On Postgres ``sweep-expired`` and
``migrate-to-s3`` take none (their batches are claimed with ``FOR UPDATE SKIP LOCKED``, so
runs share the work) and ``gc`` takes "gc": one gc at a time, beside any sweeps.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from apstorage.catalog.base import Catalog
from apstorage.errors import ApStorageError, PermissionDeniedError

_PG_LOCK_KEY = "hashtextextended('apstorage:' || %s || ':' || 'file'::regclass::oid::text, 0)"
_PG_LOCK_SQL = f"SELECT pg_try_advisory_lock({_PG_LOCK_KEY})"
# Released explicitly before the connection closes: a close only asks the server to end the
# session, and the lock stays held until its backend has exited — a run started right after
# (the next cron job, a second gc in one process) would find it held.
_PG_UNLOCK_SQL = f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})"


class RunLock:
    """Held for the whole run; released by ``release()`` or when the process ends."""

    def __init__(self, release: Any, where: str) -> None:
        self._release = release
        self.where = where

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            with contextlib.suppress(Exception):
                release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_run_lock(catalog: Catalog, name: str) -> RunLock | None:
    """Take the lock ``name`` without waiting; None when another run holds it."""
    if catalog.dialect == "postgres":
        return _pg_lock(catalog, name)
    return _file_lock(catalog, name)


def try_gc_lock(catalog: Catalog) -> RunLock | None:
    """gc's run lock: "gc" on Postgres (gc's passes are not shared, but sweeps may run
    beside it: their claims never touch a row gc is judging without the row lock
    deciding), the sweep's lock file on SQLite (one run at a time there)."""
    return try_run_lock(catalog, "gc" if catalog.dialect == "postgres" else "sweep-expired")


def _pg_lock(catalog: Any, name: str) -> RunLock | None:
    import psycopg

    conn = catalog.connect()
    try:
        got = conn.execute(_PG_LOCK_SQL, (name,)).fetchone()[0]
    except psycopg.Error as exc:
        conn.close()
        raise catalog._translate(exc) from None
    if not got:
        conn.close()
        return None

    def release() -> None:
        try:
            conn.execute(_PG_UNLOCK_SQL, (name,))
        finally:
            conn.close()

    return RunLock(release, f"Postgres advisory lock on {catalog.target}")


def _file_lock(catalog: Any, name: str) -> RunLock | None:
    import fcntl

    path = catalog.path.with_name(f"{catalog.path.name}.{name}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError as exc:
        raise PermissionDeniedError(f"cannot open the lock file {path}: {exc.strerror}") from None
    except OSError as exc:
        raise ApStorageError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise ApStorageError(f"cannot lock {path}: {exc.strerror}") from None

    def release() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    return RunLock(release, f"lock file {path}")
