"""The embedded default catalog: SQLite at ``AP_CONFIG_PATH/apstorage.sqlite``."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apstorage.catalog.base import INDEXES, Catalog, InitReport
from apstorage.errors import BackendUnavailableError, PermissionDeniedError

_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

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
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except PermissionError as exc:
            raise PermissionDeniedError(f"cannot create the catalog at {self.path}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailableError(f"cannot open the catalog at {self.path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def init_schema(self) -> InitReport:
        report = InitReport(created_table=False, target=self.target)
        with self.transaction() as cur:
            exists = cur.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'file'"
            ).fetchone()
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
        return _Tx(self.conn, self._lock)

    def _execute(self, sql: str, params: tuple = (), *, binary: bool = False) -> list[tuple]:
        # Autocommit mode: one statement is one transaction. The lock makes the shared
        # connection safe to use from worker threads.
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

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
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn = conn
        self.lock = lock

    def __enter__(self) -> sqlite3.Cursor:
        self.lock.acquire()
        self.cur = self.conn.cursor()
        self.cur.execute("BEGIN IMMEDIATE")
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
        self.cur.close()
        self.lock.release()
