"""SQL for `presign --upload`: many rows inserted in one transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Sequence

from apstorage.catalog.base import ROW_COLUMNS, Catalog
from apstorage.errors import ApStorageError, BackendUnavailableError
from apstorage.model import FileRow


def insert_rows(catalog: Catalog, rows: Sequence[FileRow]) -> list[FileRow]:
    """Insert every row (rows without bytes: S3 or LOCAL) in ONE transaction.

    Either all rows exist afterwards or none does: a failure on any row (a duplicate
    id, a lost connection) rolls the whole batch back.
    """
    if not rows:
        return []
    now = datetime.now(timezone.utc)
    p = catalog.ph
    sql = f'INSERT INTO "file" ({ROW_COLUMNS}) VALUES ({", ".join([p] * 12)})'
    stored: list[FileRow] = []
    params: list[tuple] = []
    for row in rows:
        created = row.created or now
        updated = row.updated or created
        stored.append(FileRow(**{**row.__dict__, "created": created, "updated": updated}))
        params.append(
            (
                row.id,
                catalog._ts_in(created),
                catalog._ts_in(updated),
                row.project_id,
                row.platform_id,
                row.location.value,
                row.file_name,
                row.size,
                catalog._json_in(row.metadata),
                row.s3_key,
                row.type,
                row.compression.value,
            )
        )
    try:
        with catalog.transaction() as cur:
            cur.executemany(sql, params)
    except sqlite3.OperationalError as exc:  # locked, disk full, unreadable file
        raise BackendUnavailableError(
            f"the catalog at {catalog.target} refused the batch ({exc}); nothing was created"
        ) from None
    except sqlite3.Error as exc:  # e.g. a duplicate id
        raise ApStorageError(
            f"the catalog at {catalog.target} refused the batch ({exc}); nothing was created"
        ) from None
    except ApStorageError as exc:  # Postgres errors, already translated by the catalog
        raise type(exc)(f"{exc.message}; nothing was created", exc.hint) from None
    return stored
