"""Which rows reference a key: the check that keeps shared bytes alive.

Two rows can point at the same bytes: the same ``s3Key``, or one row's ``s3Key`` equal to
another's derived key (``object_key`` of a row with no ``s3Key``). Bytes at a key may be
deleted or overwritten only when no *other* row references it, so migrate and sweep ask
here first — inside the transaction that removes or moves their own rows, where they can.

A reference is any S3 or LOCAL row whose key is the key, whatever its location: S3 and
LOCAL share keys, and keeping an unreferenced copy is cheap where deleting a referenced
one loses data. DB rows hold their bytes in the row and reference no key.

Finding the rows at a key without an index on ``s3Key`` (the platform's schema has none):
a row's key almost always ends in ``/{its own id}`` (the platform writes ``s3Key`` as the
derived key; a derived key always does). Call the other rows *foreign-keyed*: a
non-empty ``s3Key`` that does not end in ``/{id}``, or an id holding ``/``. Two rows that
are not foreign-keyed cannot share a key: the key's last segment would be both their ids.
So the rows at a key are the row whose id is the key's last segment (the primary key) and
the foreign-keyed rows holding it, and every shared key is a foreign-keyed row's key.
``FOREIGN_KEYED_SQL`` is that test; ``init`` gives a new Postgres table a partial index on
it (``PG_EXTRA_INDEXES``), so both questions are index scans there; on a table without it
the foreign-keyed rows are found by one filtered scan, evaluated before any key
comparison.
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
    for a statement of its own. On Postgres the rows are found by primary key (each key's
    last segment) and among the foreign-keyed rows (module docstring): an index scan where
    ``init`` made the partial index, else a scan that tests each row's key ending before
    comparing any key — so ask for the keys in ``shared_keys`` only. ``by_id_only`` looks rows
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


# A row whose key may not end in its own id (see the module docstring). The exact text of
# the partial index's predicate (PG_EXTRA_INDEXES): the planner matches it word for word.
FOREIGN_KEYED_SQL = (
    """(("s3Key" <> '' AND right("s3Key", length("id") + 1) <> ('/' || "id")) OR strpos("id", '/') > 0)"""
)


def _select(cur: Any, catalog: Catalog, keys: list[str], ids: list[str], locations: list[str]) -> list[tuple]:
    p = catalog.ph
    columns = '"id", "location", "s3Key", "type", "projectId", "platformId"'
    if catalog.dialect == "postgres":
        # The rows at a key: by primary key (its last segment), and the foreign-keyed ones,
        # as two statements joined by UNION: in one WHERE with OR, a table without the
        # partial index is scanned comparing every row's id with every id of the batch
        # (97 s for 400 keys at 10^7 rows). The foreign-keyed test comes first, so such a
        # scan compares keys only on those rows.
        sql = f'SELECT {columns} FROM "file" WHERE "location" = ANY({p}) AND "id" = ANY({p})'
        params: tuple = (locations, ids)
        if keys:
            sql += (
                f' UNION SELECT {columns} FROM "file" WHERE "location" = ANY({p}) '
                f'AND {FOREIGN_KEYED_SQL} AND "s3Key" = ANY({p})'
            )
            params = (locations, ids, locations, keys)
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


def _key_sql(*, table: str = "") -> str:
    """The key of a row in SQL: its ``s3Key``, else the key ``object_key`` derives. An
    empty ``s3Key`` counts as unset, as ``rows_referencing`` (and the sweep) read it."""
    t = f"{table}." if table else ""
    legacy = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in sorted(LEGACY_TYPES.items()))
    s3_key = f"""NULLIF({t}"s3Key", '')"""
    return (
        f"COALESCE({s3_key}, CASE "
        f"""WHEN {t}"platformId" IS NOT NULL AND {t}"platformId" <> '' THEN 'platform/' || {t}"platformId" """
        f"""WHEN {t}"projectId" IS NOT NULL AND {t}"projectId" <> '' THEN 'project/' || {t}"projectId" END """
        f"""|| '/' || CASE {t}"type" {legacy} ELSE {t}"type" END || '/' || {t}"id")"""
    )


def shared_keys(catalog: Catalog) -> set[str]:
    """Keys that more than one row (any location) holds.

    A run asks this once and checks those keys again, exactly, in each batch's transaction
    (``rows_referencing``). Rows that start sharing a key during the run are not seen:
    nothing in apstorage or the platform gives a new row an existing key.

    Postgres: every shared key is a foreign-keyed row's key (module docstring), so only
    those rows are grouped, with the row each one's key names by its last segment (a
    primary-key lookup): the partial index when the table has it, else one filtered scan
    — never an aggregate over every row's key (at 10^7 rows: ~40 s and ~1 GB of temporary
    files; see the README's "Scale, measured"). SQLite (the embedded default, small): one
    aggregate over the table. An empty ``s3Key`` counts as unset (the row's derived key),
    as everywhere else: it is not a key '' that every such row shares."""
    if catalog.dialect == "postgres":
        return _pg_shared_keys(catalog)
    key = _key_sql()
    rows = catalog._execute(
        f'SELECT k FROM (SELECT {key} AS k FROM "file") AS keyed '
        "WHERE k IS NOT NULL GROUP BY k HAVING count(*) > 1"
    )
    return {r[0] for r in rows}


def _pg_shared_keys(catalog: Catalog) -> set[str]:
    # foreign_keyed: those rows' keys; then, for each of those keys, the row whose id is
    # its last segment, if that row is not foreign-keyed itself (then it is counted
    # already; COALESCE: the test is NULL for a row without s3Key) and its key is that key.
    key = _key_sql()
    f_key = _key_sql(table="f")
    f_foreign = FOREIGN_KEYED_SQL.replace('"s3Key"', 'f."s3Key"').replace('"id"', 'f."id"')
    sql = (
        f"WITH foreign_keyed AS MATERIALIZED ("
        f'  SELECT {key} AS k FROM "file" WHERE {FOREIGN_KEYED_SQL}'
        f") "
        f"SELECT k FROM ("
        f"  SELECT k FROM foreign_keyed WHERE k IS NOT NULL"
        f"  UNION ALL"
        f"  SELECT o.k FROM (SELECT DISTINCT k FROM foreign_keyed WHERE k IS NOT NULL) AS o"
        f"""  JOIN "file" AS f ON f."id" = substring(o.k FROM '[^/]*$')"""
        f"  WHERE NOT COALESCE({f_foreign}, false) AND {f_key} = o.k"
        f") AS holders GROUP BY k HAVING count(*) > 1"
    )
    with catalog.transaction() as cur:
        # The planner cannot estimate the foreign-keyed test (it guesses ~90 % of the rows),
        # so it prefers a scan of the table to the partial index, which holds a handful
        # (10.7 s against well under a second at 10^7 rows). enable_seqscan off only
        # penalises a scan: a table without the index is still scanned.
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(sql)
        rows = cur.fetchall()
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


__all__ = ["FOREIGN_KEYED_SQL", "KEYED_LOCATIONS", "derived_key", "row_exists", "rows_referencing", "shared_keys"]
