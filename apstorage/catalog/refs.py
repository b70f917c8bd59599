"""Which rows reference a key: the check that keeps shared bytes alive.

Two rows can point at the same bytes: the same ``s3Key``, or one row's ``s3Key`` equal to
another's derived key (``object_key`` of a row with no ``s3Key``). Bytes at a key may be
deleted or overwritten only when no *other* row references it, so migrate and sweep ask
here first — inside the transaction that removes or moves their own rows, where they can.

A reference is any S3 or LOCAL row whose key is the key, whatever its location: S3 and
LOCAL share keys, and keeping an unreferenced copy is cheap where deleting a referenced
one loses data. DB rows hold their bytes in the row and reference no key.
"""

from __future__ import annotations

from typing import Any, Iterable

from apstorage.catalog.base import Catalog
from apstorage.errors import ApStorageError
from apstorage.model import LEGACY_TYPES, object_key

KEYED_LOCATIONS = ("S3", "LOCAL")
CHUNK = 400  # keys per query (SQLite's variable limit is far above 2 x 400 + 2)


def derived_key(file_id: str, file_type: str, project_id: str | None, platform_id: str | None) -> str | None:
    """The key of a row without ``s3Key`` (older type names mapped), or None if it has none."""
    try:
        return object_key(file_id, LEGACY_TYPES.get(file_type, file_type), project_id, platform_id)
    except ApStorageError:
        return None


def rows_referencing(
    cur: Any,
    catalog: Catalog,
    keys: Iterable[str],
    *,
    locations: Iterable[str] = KEYED_LOCATIONS,
    exclude: Iterable[str] = (),
    by_id_only: bool = False,
) -> dict[str, list[tuple[str, str]]]:
    """{key: [(row id, location), ...]} for the rows at ``locations`` that reference each of
    ``keys``, leaving out the rows in ``exclude``. Keys nobody references are absent.

    ``cur`` is a cursor of the caller's transaction (so the answer holds for it), or None
    for a statement of its own. Matching ``s3Key`` scans the table (no index on it in the
    platform's schema): ask for the keys in ``shared_keys`` only. ``by_id_only`` looks rows
    up by the id each key ends with (the primary key: cheap for any number of keys) and
    finds the rows whose own key it is, not the rows sharing it."""
    wanted = sorted(set(keys))
    skip = set(exclude)
    locations = list(locations)
    found: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        ids = sorted({k.rsplit("/", 1)[-1] for k in chunk})
        for file_id, location, s3_key, file_type, project, platform in _select(
            cur, catalog, [] if by_id_only else chunk, ids, locations
        ):
            if file_id in skip:
                continue
            key = s3_key if s3_key else derived_key(file_id, file_type, project, platform)
            if key in chunk:
                found.setdefault(key, []).append((file_id, location))
    return found


def _select(cur: Any, catalog: Catalog, keys: list[str], ids: list[str], locations: list[str]) -> list[tuple]:
    p = catalog.ph
    columns = '"id", "location", "s3Key", "type", "projectId", "platformId"'
    if catalog.dialect == "postgres":
        by_key = f'"s3Key" = ANY({p}) OR ' if keys else ""
        sql = f'SELECT {columns} FROM "file" WHERE "location" = ANY({p}) AND ({by_key}"id" = ANY({p}))'
        params: tuple = (locations, keys, ids) if keys else (locations, ids)
    else:
        by_key = f'"s3Key" IN ({", ".join([p] * len(keys))}) OR ' if keys else ""
        sql = (
            f'SELECT {columns} FROM "file" WHERE "location" IN ({", ".join([p] * len(locations))}) '
            f'AND ({by_key}"id" IN ({", ".join([p] * len(ids))}))'
        )
        params = (*locations, *keys, *ids)
    if cur is None:
        return catalog._execute(sql, params)
    cur.execute(sql, params)
    return cur.fetchall()


def _key_sql() -> str:
    """The key of a row in SQL: its ``s3Key``, else the key ``object_key`` derives."""
    legacy = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in sorted(LEGACY_TYPES.items()))
    return (
        'COALESCE("s3Key", CASE '
        """WHEN "platformId" IS NOT NULL AND "platformId" <> '' THEN 'platform/' || "platformId" """
        """WHEN "projectId" IS NOT NULL AND "projectId" <> '' THEN 'project/' || "projectId" END """
        f"""|| '/' || CASE "type" {legacy} ELSE "type" END || '/' || "id")"""
    )


def shared_keys(catalog: Catalog) -> set[str]:
    """Keys that more than one row (any location) holds: one aggregate over the table.

    The platform's schema has no index on ``s3Key``, so asking for each batch's keys would
    scan the table once per batch; a run asks this once instead (one scan, only the shared
    keys come back) and checks those keys again, exactly, in each batch's transaction
    (``rows_referencing``). Rows that start sharing a key during the run are not seen:
    nothing in apstorage or the platform gives a new row an existing key."""
    key = _key_sql()
    rows = catalog._execute(
        f'SELECT k FROM (SELECT {key} AS k FROM "file") AS keyed '
        "WHERE k IS NOT NULL GROUP BY k HAVING count(*) > 1"
    )
    return {r[0] for r in rows}


def row_exists(cur: Any, catalog: Catalog, file_id: str) -> tuple[str, str | None] | None:
    """(location, s3Key) of the row, or None when it is gone."""
    sql = f'SELECT "location", "s3Key" FROM "file" WHERE "id" = {catalog.ph}'
    if cur is None:
        rows = catalog._execute(sql, (file_id,))
    else:
        cur.execute(sql, (file_id,))
        rows = cur.fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


__all__ = ["KEYED_LOCATIONS", "derived_key", "row_exists", "rows_referencing", "shared_keys"]
