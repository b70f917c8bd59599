"""The SQL of `gc`: which keys rows still reference, the rows whose bytes may be gone,
and the conditional delete of exactly those rows.

Every check that decides a delete runs on a connection of its own (one per worker
thread), inside a transaction that stays open until the bytes are deleted:

- ``Session.referenced(keys)``: the keys among ``keys`` that some row, at any location,
  points at — looked up by primary key (a platform key ends in its file id) and, when
  some row's key does not end in its id, by ``s3Key`` as well;
- ``Session.rows(ids)``: what gc needs to judge a row whose bytes looked absent;
- ``Session.delete_rows(...)``: delete them only if each still records the location it
  was judged at, was created before the run began and, at DB, still has no data.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from apstorage.catalog.du import KEY_SQL, KeyedRow, _keyed, _upload_expiry, storable
from apstorage.errors import ApStorageError
from apstorage.model import PENDING_UPLOAD_KEY

if TYPE_CHECKING:
    from apstorage.catalog.base import Catalog

SQLITE_MAX_VARS = 500
_ID = '"id"'
_S3KEY = '"s3Key"'
DB_PAGE = 1000
SMALL_TABLE_BLOCKS = 512  # 4 MiB of table at most: a full pass is cheap, spread points too few


@dataclass(frozen=True)
class JudgedRow:
    """A row whose bytes looked absent, as gc judges it."""

    id: str
    created: datetime
    location: str
    type: str
    key: str | None  # None at DB, or when the row has neither s3Key nor owner
    size: int | None
    has_data: bool
    upload_expires: str | None  # the pending-upload marker (ISO-8601), when set


def _pending_sql(dialect: str) -> str:
    if dialect == "postgres":
        return f"(\"metadata\" ->> '{PENDING_UPLOAD_KEY}')"
    return f"(CASE WHEN json_valid(\"metadata\") THEN json_extract(\"metadata\", '$.{PENDING_UPLOAD_KEY}') END)"


def _in(dialect: str, ph: str, column: str, n: int) -> str:
    if dialect == "postgres":
        return f"{column} = ANY({ph})"
    return f"{column} IN ({', '.join([ph] * n)})"


def _params(dialect: str, values: Sequence[Any]) -> list[Any]:
    return [list(values)] if dialect == "postgres" else list(values)


def _chunks(values: Sequence[Any], dialect: str) -> Iterator[Sequence[Any]]:
    step = 10_000 if dialect == "postgres" else SQLITE_MAX_VARS
    for start in range(0, len(values), step):
        yield values[start : start + step]


def has_rows(catalog: Catalog) -> bool:
    """Whether the ``file`` table holds any row at all (an empty catalog is refused as a
    source of orphans: it is far likelier to be the wrong database)."""
    return bool(catalog._execute('SELECT 1 FROM "file" LIMIT 1'))


def odd_keys(catalog: Catalog) -> bool:
    """Whether any row's key does not end in ``/{id}`` (then keys are looked up by
    ``s3Key`` too, which has no index)."""
    if catalog.dialect == "postgres":
        suffix = f'right({KEY_SQL}, length("id") + 1)'
    else:
        suffix = f'substr({KEY_SQL}, -(length("id") + 1))'
    rows = catalog._execute(
        f'SELECT 1 FROM "file" WHERE "s3Key" IS NOT NULL AND "s3Key" <> \'\' '
        f"AND {suffix} <> '/' || \"id\" LIMIT 1"
    )
    return bool(rows)


def noncanonical_keys(catalog: Catalog) -> list[str]:
    """Keys of rows at S3 or LOCAL that a store may file under another name: with an
    empty segment (``a//b``, a leading or trailing ``/``), a ``.`` or ``..`` segment, or
    a backslash. SeaweedFS and a file system collapse them (``a//b`` and ``a\\b`` are
    listed as ``a/b``), so the listed name must count as referenced too. One scan of the
    table."""
    patterns = ("%//%", "/%", "%/", "./%", "%/./%", "%/.", "%..%", "%\\%")
    odd = " OR ".join(f"k LIKE {catalog.ph} ESCAPE '!'" for _ in patterns)  # the key built once a row
    rows = catalog._execute(
        f'SELECT DISTINCT k FROM (SELECT {KEY_SQL} AS k FROM "file" '
        f'WHERE "location" IN (\'S3\', \'LOCAL\')) AS keyed WHERE {odd}',
        patterns,
    )
    return [r[0] for r in rows if r[0]]


def iter_db_rows_without_data(catalog: Catalog, created_before: datetime, *, page: int = DB_PAGE) -> Iterator[list[str]]:
    """Pages of ids of DB rows with no data, created before ``created_before``, by keyset
    pages on the primary key (one scan of the table in all)."""
    p = catalog.ph
    last = ""
    while True:
        rows = catalog._execute(
            f'SELECT "id" FROM "file" WHERE "location" = \'DB\' AND "data" IS NULL '
            f'AND "created" < {p} AND "id" > {p} ORDER BY "id" LIMIT {int(page)}',
            (catalog._ts_in(created_before), last),
        )
        if rows:
            yield [r[0] for r in rows]
        if len(rows) < page:
            return
        last = rows[-1][0]


RESPREADS = 4  # sample_rows: how many times the points may be spread again over a narrower span


def sample_rows(catalog: Catalog, location: str, n: int) -> list[KeyedRow]:
    """Up to ``n`` distinct rows at ``location`` spread over the whole table, whatever
    their ids look like (rows written by other tools need not have random ids: sequential,
    all sharing a prefix, ``zzz...``), the same rows every run.

    The physical position of a row (Postgres' ``ctid`` block, SQLite's ``rowid``:
    insertion order, so old and new rows alike) is cut into ``n`` even spans and the first
    row of the location at or after each point is taken, one index (or TID range) seek per
    point — cheap on 10^7 rows. When most points land on the same rows (the location's
    rows fill only part of the table: a deployment that wrote 10^6 DB rows before switching
    to S3), the points are spread again, up to ``RESPREADS`` times, over the stretch the
    location's rows were found in: from the first row found to the first point with none
    at or after it (until 90 % of ``n`` are found). Should that still give fewer than half
    of ``n`` (the location's rows in
    several short stretches, or scattered one per page), one pass over the location's rows
    takes ``n`` of them evenly spaced in physical order (``row_number()``; the cost of a
    pass over that location, which gc's listing makes anyway). So does a Postgres table of
    at most ``SMALL_TABLE_BLOCKS`` pages, and Postgres before 14 (no TID range scan)."""
    if n < 1:
        return []
    columns = f'"id", {KEY_SQL}, "size", "created", {_upload_expiry(catalog)}'
    p = catalog.ph
    order = '"ctid"' if catalog.dialect == "postgres" else '"rowid"'

    def evenly() -> list[KeyedRow]:
        """n rows of the location evenly spaced in physical order (the rows where
        floor(rank * n / total) steps): one pass over the location's rows."""
        rows = catalog._execute(
            f'SELECT {columns} FROM "file" WHERE "location" = {p} AND "id" IN ('
            f'SELECT "id" FROM (SELECT "id", row_number() OVER (ORDER BY {order}) - 1 AS "rank", '
            f'count(*) OVER () AS "total" FROM "file" WHERE "location" = {p}) AS "ranked" '
            f'WHERE mod("rank" * {int(n)}, "total") < {int(n)})', (location, location)
        )
        return [_keyed(catalog, t) for t in rows]

    if catalog.dialect == "postgres":
        version, blocks = catalog._execute(
            "SELECT current_setting('server_version_num')::int, "
            "pg_relation_size('\"file\"') / current_setting('block_size')::int"
        )[0]
        if blocks <= SMALL_TABLE_BLOCKS or version < 140000:
            return evenly()
        lo, hi = 0, int(blocks)

        def seek(point: int) -> tuple | None:
            found = catalog._execute(
                f'SELECT {columns}, ("ctid"::text::point)[0]::bigint FROM "file" '
                f'WHERE "ctid" >= {p}::tid AND "location" = {p} LIMIT 1',
                (f"({point},0)", location),
            )
            return found[0] if found else None
    else:
        bounds = catalog._execute('SELECT min("rowid"), max("rowid") FROM "file"')[0]
        if bounds[0] is None:
            return []
        lo, hi = int(bounds[0]), int(bounds[1]) + 1

        def seek(point: int) -> tuple | None:
            found = catalog._execute(
                f'SELECT {columns}, "rowid" FROM "file" WHERE "rowid" >= {p} AND "location" = {p} '
                'ORDER BY "rowid" LIMIT 1',
                (point, location),
            )
            return found[0] if found else None

    def spread(start: int, end: int) -> tuple[dict[str, tuple], int]:
        """(the rows found from n points over [start, end), the first point with no row of
        the location at or after it, else end). A seek goes forward: past such a point
        every later one finds nothing too."""
        picked: dict[str, tuple] = {}
        for k in range(n):
            point = start + (end - start) * k // n
            found = seek(point)
            if found is None:
                return picked, point
            picked.setdefault(found[0], found)
        return picked, end

    enough = n - n // 10  # what the points are spread again for
    picked, end = spread(lo, hi)
    if not picked:
        return []
    span = (lo, hi)
    for _ in range(RESPREADS):
        if len(picked) >= enough:
            break
        start = min(int(t[-1]) for t in picked.values())
        if (start, end) == span:
            break  # the same stretch again: nothing more to find this way
        span = (start, end)
        again, end = spread(start, end)
        if len(again) > len(picked):
            picked = again
    if len(picked) < n // 2:
        return evenly()  # a location with fewer than n rows gives them all
    return [_keyed(catalog, t[:-1]) for t in picked.values()][:n]


class Session:
    """A connection of its own, for one thread: checks and deletes in short transactions."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.dialect = catalog.dialect
        self.ph = catalog.ph
        if self.dialect == "postgres":
            self.conn: Any = catalog.connect()  # type: ignore[attr-defined]
        else:
            try:
                self.conn = sqlite3.connect(
                    catalog.path, timeout=30, isolation_level=None,  # type: ignore[attr-defined]
                    check_same_thread=False,
                )
                self.conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise ApStorageError(f"cannot open {catalog.target}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Any]:
        """One transaction; a cursor inside it. SQLite: ``BEGIN`` (a read snapshot that
        never blocks writers) or ``BEGIN IMMEDIATE`` for a write."""
        if self.dialect == "postgres":
            import psycopg

            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise self.catalog._translate(exc) from None  # type: ignore[attr-defined]
            return
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ApStorageError(f"SQLite error at {self.catalog.target}: {exc}") from None
        finally:
            cur.close()

    # -- orphans ------------------------------------------------------------------------
    def referenced(self, cur: Any, keys: Sequence[str], *, by_s3_key: bool) -> set[str]:
        """The keys among ``keys`` some row points at, whatever its location. A row whose
        id is a key's last segment counts (its key is normally that key; and a row at DB
        or LOCAL whose migration uploaded the object but did not switch yet needs it)."""
        keys = [k for k in keys if storable(k)]  # a name that is not UTF-8: no row names it
        ids = {k.rsplit("/", 1)[-1]: k for k in keys}
        found: set[str] = set()
        id_list = list(ids)
        for chunk in _chunks(id_list, self.dialect):
            cur.execute(
                f'SELECT "id" FROM "file" WHERE {_in(self.dialect, self.ph, _ID, len(chunk))}',
                _params(self.dialect, chunk),
            )
            found.update(ids[r[0]] for r in cur.fetchall())
        if by_s3_key:
            rest = [k for k in keys if k not in found]
            for chunk in _chunks(rest, self.dialect):
                cur.execute(
                    f'SELECT "s3Key" FROM "file" WHERE {_in(self.dialect, self.ph, _S3KEY, len(chunk))}',
                    _params(self.dialect, chunk),
                )
                found.update(r[0] for r in cur.fetchall())
        return found

    # -- rows without bytes ---------------------------------------------------------------
    def rows(self, ids: Sequence[str]) -> list[JudgedRow]:
        out: list[JudgedRow] = []
        with self.transaction() as cur:
            for chunk in _chunks(list(ids), self.dialect):
                cur.execute(
                    f'SELECT "id", "created", "location", "type", '
                    f'CASE WHEN "location" = \'DB\' THEN NULL ELSE {KEY_SQL} END, "size", '
                    f'"data" IS NOT NULL, {_pending_sql(self.dialect)} FROM "file" '
                    f'WHERE {_in(self.dialect, self.ph, _ID, len(chunk))}',
                    _params(self.dialect, chunk),
                )
                for t in cur.fetchall():
                    out.append(JudgedRow(
                        id=t[0], created=self.catalog._ts_out(t[1]), location=t[2], type=t[3],
                        key=t[4], size=t[5], has_data=bool(t[6]),
                        upload_expires=None if t[7] is None else str(t[7]),
                    ))
        return out

    def delete_rows(self, location: str, ids: Sequence[str], created_before: datetime) -> set[str]:
        """Delete, in one short transaction, the rows among ``ids`` still at ``location``,
        created before ``created_before`` and, at DB, still without data. Returns the ids
        deleted."""
        deleted: set[str] = set()
        if not ids:
            return deleted
        p = self.ph
        extra = ' AND "data" IS NULL' if location == "DB" else ""
        with self.transaction(write=True) as cur:
            for chunk in _chunks(list(ids), self.dialect):
                cur.execute(
                    f'DELETE FROM "file" WHERE {_in(self.dialect, p, _ID, len(chunk))} '
                    f'AND "location" = {p} AND "created" < {p}{extra} RETURNING "id"',
                    (*_params(self.dialect, chunk), location, self.catalog._ts_in(created_before)),
                )
                deleted.update(r[0] for r in cur.fetchall())
        return deleted


__all__ = [
    "JudgedRow",
    "Session",
    "has_rows",
    "iter_db_rows_without_data",
    "odd_keys",
    "sample_rows",
]
