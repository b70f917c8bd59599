"""The SQL of `sweep-expired`: expired rows by keyset pages, projects' own retention, the
delete of exactly the rows whose bytes are gone, and the sweep lock.

Every selection is an equality on ``"type"`` (and ``"projectId"``) plus a range on
``"created"``, so the (``type``, ``created``) and (``projectId``, ``type``, ``created``)
indexes serve it; pages continue after the last ``("created", "id")`` seen, never by
OFFSET, so memory and per-page cost stay flat whatever the table size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apstorage.catalog.locks import RunLock, try_run_lock
from apstorage.model import EXPIRING_TYPES, LEGACY_TYPES

if TYPE_CHECKING:
    from apstorage.catalog.base import Catalog

# Only what the sweep needs: never "data" (bytea) nor "metadata".
SWEEP_COLUMNS = '"id", "created", "location", "s3Key", "type", "projectId", "platformId", "size"'

# Rows of an older type name that belong to an expiring type (``STEP_FILE`` rows).
_STORED_NAMES = {
    t: (t, *sorted(old for old, new in LEGACY_TYPES.items() if new == t)) for t in EXPIRING_TYPES
}

SQLITE_MAX_VARS = 500  # per IN (...) list: well under every SQLite build's limit


@dataclass(frozen=True)
class ExpiredRow:
    """One candidate row. ``created`` is the value as stored (a keyset cursor)."""

    id: str
    created: Any
    location: str
    s3_key: str | None
    type: str
    project_id: str | None
    platform_id: str | None
    size: int | None


def stored_type_names(file_type: str) -> tuple[str, ...]:
    """The ``"type"`` values that hold rows of an expiring type (its legacy names too)."""
    if file_type not in EXPIRING_TYPES:  # the one guard that keeps bundles and permanent files safe
        raise ValueError(f"{file_type!r} is not an expiring execution-data type")
    return _STORED_NAMES[file_type]


# -- selection -------------------------------------------------------------------------------


def expired_page_sql(catalog: Catalog, *, by_project: bool, after: bool, limit: int) -> str:
    """The page query. Parameters, in order: [projectId,] type, cutoff, [not_before,]
    [after_created, after_created, after_id].

    ``"created" >= after_created`` repeats the row comparison as a plain range so every
    planner puts it in the index condition; the row comparison breaks ties on ``id``.
    """
    p = catalog.ph
    where = []
    if by_project:
        where.append(f'"projectId" = {p}')
    where.append(f'"type" = {p}')
    where.append(f'"created" < {p}')
    if by_project:
        where.append(f'"created" >= {p}')
    if after:
        where.append(f'"created" >= {p}')
        where.append(f'("created", "id") > ({p}, {p})')
    return (
        f'SELECT {SWEEP_COLUMNS} FROM "file" WHERE {" AND ".join(where)} '
        f'ORDER BY "created", "id" LIMIT {int(limit)}'
    )


def expired_page_params(
    catalog: Catalog,
    stored_type: str,
    cutoff: datetime,
    *,
    project_id: str | None = None,
    not_before: datetime | None = None,
    after: tuple[Any, str] | None = None,
) -> tuple:
    params: list[Any] = []
    if project_id is not None:
        params.append(project_id)
    params.append(stored_type)
    params.append(catalog._ts_in(cutoff))
    if project_id is not None:
        params.append(catalog._ts_in(not_before))  # type: ignore[arg-type]
    if after is not None:
        params.extend([after[0], after[0], after[1]])
    return tuple(params)


def select_expired(
    catalog: Catalog,
    stored_type: str,
    cutoff: datetime,
    *,
    limit: int,
    after: tuple[Any, str] | None = None,
    project_id: str | None = None,
    not_before: datetime | None = None,
) -> list[ExpiredRow]:
    """One page of rows of ``stored_type`` created before ``cutoff`` (and, for one
    project, not before ``not_before``), after the keyset cursor ``after``."""
    if stored_type not in {n for names in _STORED_NAMES.values() for n in names}:
        raise ValueError(f"{stored_type!r} is not an expiring execution-data type")
    by_project = project_id is not None
    sql = expired_page_sql(catalog, by_project=by_project, after=after is not None, limit=limit)
    params = expired_page_params(
        catalog, stored_type, cutoff, project_id=project_id, not_before=not_before, after=after
    )
    return [ExpiredRow(*t) for t in catalog._execute(sql, params)]


def count_expired(
    catalog: Catalog,
    stored_type: str,
    cutoff: datetime,
    *,
    project_id: str | None = None,
    not_before: datetime | None = None,
) -> tuple[int, int]:
    """(rows, bytes by ``size``) that ``select_expired`` would page through: the same
    conditions, counted by the same index (a progress bar's total)."""
    if stored_type not in {n for names in _STORED_NAMES.values() for n in names}:
        raise ValueError(f"{stored_type!r} is not an execution-data type")
    page = expired_page_sql(catalog, by_project=project_id is not None, after=False, limit=1)
    where = page[page.index(" WHERE ") : page.index(" ORDER BY ")]
    params = expired_page_params(catalog, stored_type, cutoff, project_id=project_id, not_before=not_before)
    rows = catalog._execute(f'SELECT count(*), coalesce(sum("size"), 0) FROM "file"{where}', params)
    return int(rows[0][0]), int(rows[0][1])


# -- per-project retention ---------------------------------------------------------------------


def has_project_retention(catalog: Catalog) -> bool:
    """True when the database has the platform's ``project`` table with an
    ``executionDataRetentionDays`` column (found the way the queries will resolve it)."""
    if catalog.dialect == "postgres":
        rows = catalog._execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('project') "
            "AND attname = 'executionDataRetentionDays' AND NOT attisdropped"
        )
    else:
        rows = catalog._execute(
            "SELECT 1 FROM pragma_table_info('project') WHERE name = 'executionDataRetentionDays'"
        )
    return bool(rows)


def projects_below(
    catalog: Catalog, days: int, *, after: str = "", limit: int = 500
) -> list[tuple[str, int]]:
    """(project id, its own ``executionDataRetentionDays``) for projects that set a value
    below ``days``, in id order after ``after``. The clamp to the pause timeout is the
    caller's (``model.effective_retention_days``)."""
    p = catalog.ph
    rows = catalog._execute(
        f'SELECT "id", "executionDataRetentionDays" FROM "project" '
        f'WHERE "executionDataRetentionDays" IS NOT NULL AND "executionDataRetentionDays" < {p} '
        f'AND "id" > {p} ORDER BY "id" LIMIT {int(limit)}',
        (days, after),
    )
    return [(str(r[0]), int(r[1])) for r in rows]


# -- delete ------------------------------------------------------------------------------------


def delete_rows(catalog: Catalog, ids_by_location: dict[str, list[str]]) -> set[str]:
    """Delete these rows in one short transaction, each only if it still records the
    location its bytes were deleted from (a row moved meanwhile keeps its new bytes).
    Returns the ids actually deleted (a concurrent delete is not counted twice)."""
    deleted: set[str] = set()
    p = catalog.ph
    with catalog.transaction() as cur:
        for location, ids in ids_by_location.items():
            if not ids:
                continue
            if catalog.dialect == "postgres":
                cur.execute(
                    f'DELETE FROM "file" WHERE "id" = ANY({p}) AND "location" = {p} RETURNING "id"',
                    (list(ids), location),
                )
                deleted.update(r[0] for r in cur.fetchall())
                continue
            for start in range(0, len(ids), SQLITE_MAX_VARS):
                chunk = ids[start : start + SQLITE_MAX_VARS]
                cur.execute(
                    f'DELETE FROM "file" WHERE "id" IN ({", ".join([p] * len(chunk))}) '
                    f'AND "location" = {p} RETURNING "id"',
                    (*chunk, location),
                )
                deleted.update(r[0] for r in cur.fetchall())
    return deleted


def delete_rows_sharing_bytes(
    catalog: Catalog, keys: dict[str, list[tuple[str, str]]], batch_ids: list[str]
) -> tuple[set[str], set[str]]:
    """Of ``keys`` ({key: [(row id, location), ...]} of one batch), find in one transaction
    the keys some row outside the batch still references, and delete the batch's rows at
    those keys there and then — their bytes stay, for the other row. Returns (the ids
    deleted, the keys kept). The other keys' bytes may go; their rows are deleted later
    (``delete_rows``), once the bytes are."""
    from apstorage.catalog.refs import rows_referencing

    if not keys:
        return set(), set()
    deleted: set[str] = set()
    with catalog.transaction() as cur:
        held = rows_referencing(cur, catalog, list(keys), exclude=batch_ids)
        for key in held:
            for file_id, location in keys[key]:
                cur.execute(
                    f'DELETE FROM "file" WHERE "id" = {catalog.ph} AND "location" = {catalog.ph} '
                    'RETURNING "id"',
                    (file_id, location),
                )
                deleted.update(r[0] for r in cur.fetchall())
    return deleted, set(held)


# -- the sweep lock ----------------------------------------------------------------------------

SweepLock = RunLock


def try_sweep_lock(catalog: Catalog) -> RunLock | None:
    """Take the sweep lock without waiting; None when another run holds it (locks.py)."""
    return try_run_lock(catalog, "sweep-expired")


__all__ = [
    "ExpiredRow",
    "count_expired",
    "SweepLock",
    "delete_rows",
    "delete_rows_sharing_bytes",
    "expired_page_params",
    "expired_page_sql",
    "has_project_retention",
    "projects_below",
    "select_expired",
    "stored_type_names",
    "try_sweep_lock",
]
