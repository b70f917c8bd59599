"""Run locks: one holder at a time per name, across processes and hosts.

Postgres: a session advisory lock held on a dedicated connection for the run.
SQLite: an exclusive, non-blocking ``flock`` on a file beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from apstorage.catalog.base import Catalog


@contextlib.contextmanager
def run_lock(catalog: Catalog, name: str) -> Iterator[bool]:
    """Yield True while holding the lock ``name``; False when another run holds it."""
    if catalog.dialect == "postgres":
        conn = catalog.connect()  # type: ignore[attr-defined]
        try:
            got = conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (f"apstorage:{name}",)
            ).fetchone()[0]
            yield bool(got)
        finally:
            conn.close()  # ends the session, releasing the lock
        return
    path = f"{catalog.path}.{name}.lock"  # type: ignore[attr-defined]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
