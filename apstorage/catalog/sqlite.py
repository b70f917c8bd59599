"""The embedded default catalog: SQLite at ``AP_CONFIG_PATH/apstorage.sqlite``.

Several commands may use it at once (a cron sweep beside a long migrate, a put, a get), so:

* WAL journal: readers never wait for a writer, nor a writer for readers;
* ``synchronous=FULL``: a commit is on disk before the command goes on to delete the
  bytes it made unreferenced (a LOCAL file, an S3 object) — durable before destructive;
* write transactions are short (``BEGIN IMMEDIATE`` only around the writes; nothing waits
  on the network inside one), and opening the catalog takes no write lock unless the table
  must be created;
* a writer waits at most ``BUSY_TIMEOUT`` seconds for another one, then the command ends
  with one line naming the database file (BackendUnavailableError, exit 8).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apstorage.catalog.base import INDEXES, Catalog, InitReport
from apstorage.errors import (
    ApStorageError,
    BackendUnavailableError,
    ConfigError,
    PermissionDeniedError,
)

_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

BUSY_TIMEOUT = 10  # seconds a write waits for another command's write transaction

DDL = """
CREATE TABLE "file" (
    "id" varchar(21) PRIMARY KEY NOT NULL,
    "created" datetime NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    "updated" datetime NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    "projectId" varchar(21),
    "platformId" varchar(21),
    "data" blob,
    "location" varchar NOT NULL,
    "fileName" varchar,
    "size" integer,
    "metadata" text,
    "s3Key" varchar,
    "type" varchar NOT NULL DEFAULT 'UNKNOWN',
    "compression" varchar NOT NULL DEFAULT 'NONE'
)
"""


class SqliteCatalog(Catalog):
    ph = "?"
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.target = f"sqlite:{self.path}"
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot create the catalog at {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise self.translate(exc) from None
        except OSError as exc:  # AP_CONFIG_PATH under a file, or a folder that cannot be made
            raise ConfigError(
                f"cannot create the catalog at {self.path}: {exc.strerror}; "
                "AP_CONFIG_PATH must be a folder apstorage can create and write"
            ) from None

    def translate(self, exc: sqlite3.Error) -> ApStorageError:
        """A driver error as one line naming the database file."""
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return BackendUnavailableError(
                f"the catalog {self.path} is busy: another apstorage command held its write "
                f"lock for over {BUSY_TIMEOUT} s; try again when it has finished"
            )
        if "readonly" in lowered or "read-only" in lowered:
            return PermissionDeniedError(f"the catalog {self.path} is read-only: {text}")
        if isinstance(exc, sqlite3.OperationalError):
            return BackendUnavailableError(f"cannot use the catalog {self.path}: {text}")
        return ApStorageError(f"SQLite error in the catalog {self.path}: {text}")

    def close(self) -> None:
        self.conn.close()

    def init_schema(self) -> InitReport:
        """Create the table when missing. An existing table is only read (no write lock:
        every command opens the catalog this way, beside a running migrate or sweep)."""
        report = InitReport(created_table=False, target=self.target)
        exists_sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'file'"
        if self._execute(exists_sql):
            with self._lock:
                try:
                    report.missing_indexes = self._missing_indexes(self.conn.cursor())
                except sqlite3.Error as exc:
                    raise self.translate(exc) from None
            return report
        with self.transaction() as cur:
            exists = cur.execute(exists_sql).fetchone()
            if not exists:
                cur.execute(DDL)
                report.created_table = True
                for name, cols in INDEXES.items():
                    quoted = ", ".join(f'"{c}"' for c in cols)
                    cur.execute(f'CREATE INDEX "{name}" ON "file" ({quoted})')
                    report.created_indexes.append(name)
            else:
                report.missing_indexes = self._missing_indexes(cur)
        return report

    def _missing_indexes(self, cur: sqlite3.Cursor) -> list[str]:
        present = set()
        for (index_name,) in cur.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'file'"
        ).fetchall():
            cols = tuple(r[2] for r in cur.execute(f'PRAGMA index_info("{index_name}")'))
            present.add(cols)
        return [name for name, cols in INDEXES.items() if cols not in present]

    def transaction(self) -> "_Tx":
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock for the transaction's length
        only. Keep network I/O out of it."""
        return _Tx(self)

    def _execute(self, sql: str, params: tuple = (), *, binary: bool = False) -> list[tuple]:
        # Autocommit mode: one statement is one transaction (a read takes no lock in WAL).
        # The lock makes the shared connection safe to use from worker threads.
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self.translate(exc) from None

    def _ts_in(self, value: datetime) -> Any:
        return value.astimezone(timezone.utc).strftime(_TS_FORMAT)

    def _ts_out(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            parsed = value
        else:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)

    def _json_in(self, value: dict | None) -> Any:
        return None if value is None else json.dumps(value)

    def _bytes_in(self, value: bytes) -> Any:
        return value


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception; driver errors come out as
    ApStorageError naming the database file."""

    def __init__(self, catalog: SqliteCatalog) -> None:
        self.catalog = catalog
        self.conn = catalog.conn
        self.lock = catalog._lock

    def __enter__(self) -> sqlite3.Cursor:
        self.lock.acquire()
        try:
            self.cur = self.conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.lock.release()
            raise self.catalog.translate(exc) from None
        except BaseException:
            self.lock.release()
            raise
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error as error:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise self.catalog.translate(error) from None
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.cur.close()
            self.lock.release()
        if isinstance(exc, sqlite3.Error):
            raise self.catalog.translate(exc) from None
        return False
