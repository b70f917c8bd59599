"""SQL for `migrate-to-s3`: count candidates, claim batches, read bytes, flip rows to S3.

Postgres claims a batch with ``FOR UPDATE SKIP LOCKED`` inside the batch's transaction, so
concurrent runs on several hosts split the work; SQLite is single-run (see locks.py) and
never holds a transaction across the uploads: the batch is read in autocommit (WAL reads
take no lock) and flipped in its own short write transaction (``batch_scope``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from apstorage.catalog.base import Catalog
from apstorage.model import FileRow, Location


@dataclass(frozen=True)
class Candidate:
    row: FileRow
    stored_size: int  # bytes in the store today (octet_length for DB rows)
    has_data: bool = False  # a DB row with bytes (data IS NOT NULL)


def _filters(catalog: Catalog, locations: Iterable[Location], types: Iterable[str]) -> tuple[str, list[Any]]:
    p = catalog.ph
    locations = [loc.value for loc in locations]
    types = sorted(types)
    sql = (
        f'"location" IN ({", ".join([p] * len(locations))}) '
        f'AND "type" IN ({", ".join([p] * len(types))})'
    )
    return sql, [*locations, *types]


def count_candidates(catalog: Catalog, locations, types) -> tuple[int, int]:
    """(files, bytes) that a run would move."""
    where, params = _filters(catalog, locations, types)
    length = 'octet_length("data")' if catalog.dialect == "postgres" else 'length("data")'
    rows = catalog._execute(
        f'SELECT count(*), coalesce(sum(CASE WHEN "location" = \'DB\' THEN {length} '
        f'ELSE "size" END), 0) FROM "file" WHERE {where}',
        tuple(params),
    )
    return int(rows[0][0]), int(rows[0][1])


_CLAIM_COLUMNS = (
    '"id", "type", "location", "projectId", "platformId", "s3Key", "compression", "size", '
    "{length}"
)


@contextlib.contextmanager
def batch_scope(catalog: Catalog) -> Iterator[Any]:
    """Where one batch is claimed, read and (on Postgres) flipped: a cursor.

    Postgres: the batch's transaction, held through the uploads — its row locks are how
    concurrent runs split the work, and nothing else waits on them but a sweep of those
    very rows. SQLite: no transaction (autocommit reads; the flip takes its own short
    ``catalog.transaction()``), so get, put and sweep run beside a migrate."""
    if catalog.dialect == "postgres":
        with catalog.transaction() as cur:
            yield cur
    else:
        yield None


class _Reads:
    """A cursor-shaped reader over ``catalog._execute`` (SQLite's autocommit path)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.rows: list[tuple] = []

    def execute(self, sql: str, params: Any = ()) -> None:
        self.rows = self.catalog._execute(sql, tuple(params))

    def fetchall(self) -> list[tuple]:
        return self.rows


def claim_batch(cur: Any, catalog: Catalog, locations, types, after: str, limit: int, *,
                lock: bool = True) -> list[Candidate]:
    """The next ``limit`` candidates after id ``after``, in id order (keyset pagination).

    On Postgres, run inside ``batch_scope``: the rows stay locked (and are skipped by other
    runs) until the transaction ends (``lock=False`` for a dry run: nothing is locked).
    ``cur`` None reads in autocommit. The compression is not read: migrate copies the
    stored bytes as stored, whatever the row says they are."""
    where, params = _filters(catalog, locations, types)
    p = catalog.ph
    cur = cur if cur is not None else _Reads(catalog)
    if catalog.dialect == "postgres":
        columns = _CLAIM_COLUMNS.format(length='octet_length("data")')
        lock_sql = " FOR UPDATE SKIP LOCKED" if lock else ""
    else:
        columns = _CLAIM_COLUMNS.format(length='length("data")')
        lock_sql = ""
    cur.execute(
        f'SELECT {columns} FROM "file" WHERE {where} AND "id" > {p} '
        f'ORDER BY "id" LIMIT {int(limit)}{lock_sql}',
        (*params, after),
    )
    out = []
    for t in cur.fetchall():
        row = FileRow(
            id=t[0], type=t[1], location=Location(t[2]), project_id=t[3], platform_id=t[4],
            s3_key=t[5], size=t[7],
        )
        stored = t[8] if row.location is Location.DB else t[7]
        out.append(Candidate(row, int(stored or 0), t[8] is not None))
    return out


def lock_keys(cur: Any, catalog: Catalog, keys: list[str]) -> set[str]:
    """Postgres: take a transaction advisory lock on each key without waiting; the keys
    another run holds (it is uploading to them now) come back. SQLite: one run at a time,
    nothing to lock."""
    if catalog.dialect != "postgres" or not keys:
        return set()
    cur.execute(
        "SELECT k FROM unnest(%s::text[]) AS k "
        "WHERE NOT pg_try_advisory_xact_lock(hashtextextended('apstorage:key:' || k, 0))",
        (keys,),
    )
    return {r[0] for r in cur.fetchall()}


def read_data(cur: Any, catalog: Catalog, ids: list[str]) -> Iterator[tuple[str, bytes | None]]:
    """The bytes of DB rows, read in one query (binary on Postgres)."""
    if not ids:
        return iter(())
    p = catalog.ph
    cur = cur if cur is not None else _Reads(catalog)
    if catalog.dialect == "postgres":
        cur.execute('SELECT "id", "data" FROM "file" WHERE "id" = ANY(%s)', (ids,), binary=True)
    else:
        cur.execute(
            f'SELECT "id", "data" FROM "file" WHERE "id" IN ({", ".join([p] * len(ids))})', ids
        )
    rows = cur.fetchall()
    return ((file_id, None if data is None else bytes(data)) for file_id, data in rows)


def mark_in_s3(cur: Any, catalog: Catalog, moved: list[tuple[str, str, Location, int]]) -> set[str]:
    """Flip rows to S3 (``location``, ``s3Key``, ``data`` NULL, and ``size`` where the row
    had none) — only rows still where we found them. ``moved`` holds (id, key, source
    location, bytes uploaded). Returns the ids flipped: a row missing from it was deleted
    (or moved) meanwhile. Postgres: one statement per source location (unnest of the ids,
    keys and sizes)."""
    if not moved:
        return set()
    flipped: set[str] = set()
    if catalog.dialect == "postgres":
        by_location: dict[Location, list[tuple[str, str, int]]] = {}
        for file_id, key, loc, size in moved:
            by_location.setdefault(loc, []).append((file_id, key, size))
        for loc, items in by_location.items():
            cur.execute(
                'UPDATE "file" AS f SET "location" = \'S3\', "s3Key" = m.key, "data" = NULL, '
                '"size" = COALESCE(f."size", m.size), "updated" = now() '
                "FROM unnest(%s::text[], %s::text[], %s::int[]) AS m(id, key, size) "
                'WHERE f."id" = m.id AND f."location" = %s RETURNING f."id"',
                ([i for i, _, _ in items], [k for _, k, _ in items], [n for _, _, n in items], loc.value),
            )
            flipped.update(r[0] for r in cur.fetchall())
        return flipped
    p = catalog.ph
    for file_id, key, loc, size in moved:
        cur.execute(
            f'UPDATE "file" SET "location" = \'S3\', "s3Key" = {p}, "data" = NULL, '
            f'"size" = COALESCE("size", {p}), '
            f"\"updated\" = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE \"id\" = {p} "
            f'AND "location" = {p} RETURNING "id"',
            (key, size, file_id, loc.value),
        )
        flipped.update(r[0] for r in cur.fetchall())
    return flipped
