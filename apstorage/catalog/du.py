"""The SQL of `du`: one aggregate over the ``file`` table, and the row streams and
lookups `du --verify` compares the stores against.

The aggregate is a single ``GROUP BY`` over the chosen columns: the database does the
counting, however many rows there are. The verify side never loads the table: rows come
either as one sorted stream (read page by page from a server-side cursor) or by
batched primary-key lookups, or by keyset pages in ``id`` order.

The object key of a row is computed here in SQL exactly as ``FileRow.key`` computes it
in Python (the row's own ``s3Key`` when set, else
``platform/{platformId}/{TYPE}/{id}`` or ``project/{projectId}/{TYPE}/{id}``), so the
database can sort rows in the order the stores list keys: byte order (``COLLATE "C"``
on Postgres, SQLite's default ``BINARY``), or folder by folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from apstorage.errors import ApStorageError
from apstorage.model import LEGACY_TYPES

if TYPE_CHECKING:
    from apstorage.catalog.base import Catalog

# `--by` names → columns. The names are also the JSON keys of each group.
GROUP_COLUMNS = {
    "location": '"location"',
    "type": '"type"',
    "project": '"projectId"',
    "platform": '"platformId"',
}

SQLITE_MAX_VARS = 500  # per IN (...) list: well under every SQLite build's limit
STREAM_PAGE = 5000  # rows per fetch from the sorted stream

# FileRow.key, in SQL. NULLIF: an empty s3Key counts as unset, as `s3_key or ...` does.
KEY_SQL = (
    "COALESCE(NULLIF(\"s3Key\", ''), "
    "CASE WHEN COALESCE(\"platformId\", '') <> '' THEN 'platform/' || \"platformId\" "
    "ELSE 'project/' || \"projectId\" END || '/' || \"type\" || '/' || \"id\")"
)


@dataclass(frozen=True)
class UsageFilter:
    """What `du` counts. Empty means no restriction."""

    types: tuple[str, ...] = ()  # canonical type names
    project_ids: tuple[str, ...] = ()
    platform_ids: tuple[str, ...] = ()
    created_before: datetime | None = None


@dataclass(frozen=True)
class UsageRow:
    keys: tuple[Any, ...]  # one value per --by name, in order
    files: int
    bytes: int
    unsized: int  # rows whose "size" is NULL (counted in files, not in bytes)


@dataclass(frozen=True)
class KeyedRow:
    """What verify needs of a row: where its bytes should be and how many there are."""

    id: str
    key: str | None  # None when the row has neither an s3Key nor an owner
    size: int | None
    created: datetime | None = None  # UTC; tells a pending pre-signed upload from lost bytes
    upload_expires: str | None = None  # `presign --upload`'s marker: the URL's expiry, ISO-8601


def stored_type_names(file_type: str) -> tuple[str, ...]:
    """The ``"type"`` values that hold rows of ``file_type`` (its legacy names too)."""
    return (file_type, *sorted(old for old, new in LEGACY_TYPES.items() if new == file_type))


def _in_list(catalog: Catalog, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    if catalog.dialect == "postgres":
        return f"{column} = ANY({catalog.ph})", [list(values)]
    return f"{column} IN ({', '.join([catalog.ph] * len(values))})", list(values)


def usage(catalog: Catalog, by: Sequence[str], where: UsageFilter) -> list[UsageRow]:
    """Files and bytes per group: one aggregate query, grouped by the ``by`` columns."""
    unknown = [name for name in by if name not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"unknown grouping {unknown}")
    columns = [GROUP_COLUMNS[name] for name in by]
    conditions: list[str] = []
    params: list[Any] = []
    if where.types:
        names = [n for t in where.types for n in stored_type_names(t)]
        sql, values = _in_list(catalog, '"type"', names)
        conditions.append(sql)
        params.extend(values)
    if where.project_ids:
        sql, values = _in_list(catalog, '"projectId"', where.project_ids)
        conditions.append(sql)
        params.extend(values)
    if where.platform_ids:
        sql, values = _in_list(catalog, '"platformId"', where.platform_ids)
        conditions.append(sql)
        params.extend(values)
    if where.created_before is not None:
        conditions.append(f'"created" < {catalog.ph}')
        params.append(catalog._ts_in(where.created_before))
    select = ", ".join(
        [*columns, "COUNT(*)", 'COALESCE(SUM("size"), 0)', 'COUNT(*) - COUNT("size")']
    )
    sql = f'SELECT {select} FROM "file"'
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if columns:
        sql += " GROUP BY " + ", ".join(columns)
    n = len(columns)
    out = []
    for t in catalog._execute(sql, tuple(params)):
        if not columns and t[n] == 0:
            continue  # no grouping and no rows: no group at all
        out.append(UsageRow(keys=tuple(t[:n]), files=int(t[n]), bytes=int(t[n + 1]), unsized=int(t[n + 2])))
    return out


# -- verify ----------------------------------------------------------------------------------


def count_rows(catalog: Catalog, locations: Sequence[str] = ("S3", "LOCAL")) -> dict[str, tuple[int, int]]:
    """{location: (rows there, those whose key does not end in ``/{id}``)}, in one scan.

    The second number tells verify whether looking objects up by the id in their key
    (the primary key) can miss a row, in which case it also looks them up by ``s3Key``.
    """
    if catalog.dialect == "postgres":
        suffix = f'right({KEY_SQL}, length("id") + 1)'
    else:
        suffix = f'substr({KEY_SQL}, -(length("id") + 1))'
    cond, params = _in_list(catalog, '"location"', list(locations))
    rows = catalog._execute(
        f'SELECT "location", COUNT(*), '
        f"COUNT(*) - COUNT(CASE WHEN {suffix} = '/' || \"id\" THEN 1 END) "
        f'FROM "file" WHERE {cond} GROUP BY "location"',
        tuple(params),
    )
    counts = {location: (0, 0) for location in locations}
    counts.update({t[0]: (int(t[1]), int(t[2])) for t in rows})
    return counts


def rows_by_ids(catalog: Catalog, location: str, ids: Sequence[str]) -> list[KeyedRow]:
    """Rows at ``location`` with one of these ids, by primary key, in batches."""
    return _lookup(catalog, location, '"id"', ids)


def rows_by_keys(catalog: Catalog, location: str, keys: Sequence[str]) -> list[KeyedRow]:
    """Rows at ``location`` whose ``s3Key`` is one of these keys (no index: a scan per
    batch, so verify only asks when some row's key does not end in its id)."""
    return _lookup(catalog, location, '"s3Key"', keys)


def _keyed(catalog: Any, t: Sequence[Any]) -> KeyedRow:
    return KeyedRow(t[0], t[1], t[2], catalog._ts_out(t[3]), t[4])


def _upload_expiry(catalog: Any) -> str:
    """The pending-upload marker ``presign --upload`` leaves in ``metadata`` (gc reads it
    the same way)."""
    from apstorage.catalog.gc import _pending_sql

    return _pending_sql(catalog.dialect)


def storable(value: str) -> bool:
    """Whether ``value`` can be a column's text at all: a file name that is not UTF-8
    (listed with lone surrogates, as Python decodes it) cannot, so no row names it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lookup(catalog: Catalog, location: str, column: str, values: Sequence[str]) -> list[KeyedRow]:
    out: list[KeyedRow] = []
    values = [v for v in dict.fromkeys(values) if storable(v)]  # no row names the others
    if not values:
        return out
    step = 1000 if catalog.dialect == "postgres" else SQLITE_MAX_VARS
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        cond, params = _in_list(catalog, column, chunk)
        rows = catalog._execute(
            f'SELECT "id", {KEY_SQL}, "size", "created", {_upload_expiry(catalog)} FROM "file" WHERE {cond} AND "location" = {catalog.ph}',
            (*params, location),
        )
        out.extend(_keyed(catalog, t) for t in rows)
    return out


def iter_rows_by_id(catalog: Catalog, location: str, *, page: int = 1000) -> Iterator[KeyedRow]:
    """Every row at ``location`` in ``id`` order, by keyset pages on the primary key."""
    p = catalog.ph
    last = ""
    while True:
        rows = catalog._execute(
            f'SELECT "id", {KEY_SQL}, "size", "created", {_upload_expiry(catalog)} FROM "file" WHERE "location" = {p} AND "id" > {p} '
            f'ORDER BY "id" LIMIT {int(page)}',
            (location, last),
        )
        for t in rows:
            yield _keyed(catalog, t)
        if len(rows) < page:
            return
        last = rows[-1][0]


def iter_rows_by_key(catalog: Catalog, location: str, *, order: str = "bytes") -> Iterator[KeyedRow]:
    """Every row at ``location`` sorted by object key, streamed: the database sorts, the
    client holds one page at a time.

    ``order`` is "bytes" (byte order: what S3 documents for listings) or "segments"
    (folder by folder, as a directory walk lists: byte order with "/" below every other
    character).

    Postgres: a server-side cursor on a connection of its own, inside one read-only
    transaction that lasts as long as the stream is read. SQLite: one statement read
    with ``fetchmany``.
    """
    if order not in ("bytes", "segments"):
        raise ValueError(f"unknown order {order!r}")
    if catalog.dialect == "postgres":
        sort = KEY_SQL if order == "bytes" else f"replace({KEY_SQL}, '/', chr(1))"
        sort += ' COLLATE "C"'
        return _pg_sorted(catalog, _sorted_sql(catalog, sort), location)
    sort = KEY_SQL if order == "bytes" else f"replace({KEY_SQL}, '/', char(1))"
    return _sqlite_sorted(catalog, _sorted_sql(catalog, sort), location)


def _sorted_sql(catalog: Catalog, sort: str) -> str:
    return (
        f'SELECT "id", {KEY_SQL}, "size", "created", {_upload_expiry(catalog)} FROM "file" WHERE "location" = {catalog.ph} '
        f'ORDER BY {sort}, "id"'
    )


def _pg_sorted(catalog: Any, query: str, location: str) -> Iterator[KeyedRow]:
    import psycopg

    try:
        conn = catalog.connect()
    except psycopg.Error as exc:  # connect() translates its own; belt and braces
        raise catalog._translate(exc) from None
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            with conn.cursor(name="apstorage_du_verify") as cur:
                cur.execute(query, (location,))
                while True:
                    batch = cur.fetchmany(STREAM_PAGE)
                    for t in batch:
                        yield _keyed(catalog, t)
                    if len(batch) < STREAM_PAGE:
                        break
    except psycopg.Error as exc:
        raise catalog._translate(exc) from None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def _sqlite_sorted(catalog: Any, query: str, location: str) -> Iterator[KeyedRow]:
    import sqlite3

    lock = catalog._lock
    try:
        with lock:
            cur = catalog.conn.execute(query, (location,))
        try:
            while True:
                with lock:
                    batch = cur.fetchmany(STREAM_PAGE)
                for t in batch:
                    yield _keyed(catalog, t)
                if len(batch) < STREAM_PAGE:
                    break
        finally:
            with lock:
                cur.close()
    except sqlite3.Error as exc:
        raise ApStorageError(f"SQLite error at {catalog.target}: {exc}") from None


# -- the table's own footprint -------------------------------------------------------------

SAMPLE_PAGES = 2000  # heap pages read at most for the live-bytes aggregate (16 MiB); a sample above
ROW_OVERHEAD = 28  # Postgres: tuple header (23, aligned to 24) + line pointer (4)
PACKING = 1.15  # live bytes never pack pages completely: alignment, page and chunk headers

_PG_COLUMNS = ("id", "created", "updated", "projectId", "platformId", "location", "fileName",
               "size", "metadata", "s3Key", "type", "compression")


@dataclass(frozen=True)
class Footprint:
    """What the ``file`` table costs on disk, and what a VACUUM (FULL) would return.

    Postgres: ``table`` (heap, with its free-space and visibility maps), ``toast`` (the
    TOAST table and its index: where large ``data`` values live), ``indexes``; their sum
    is ``pg_total_relation_size('file')``. SQLite: the whole database file
    (``page_count * page_size``); ``free`` is its free pages (``freelist_count``).
    ``live_bytes``: the bytes the live rows hold (every column as stored, ``data``
    compressed as Postgres keeps it). ``reclaimable``: what the VACUUM would return, by
    ``method``.
    """

    dialect: str
    on_disk: int
    rows: int
    data_bytes: int  # sum of octet_length("data"): the bytes held in the DB location
    live_bytes: int
    reclaimable: int
    method: str
    table: int | None = None
    toast: int | None = None
    indexes: int | None = None
    free: int | None = None
    dead_rows: int | None = None

    @property
    def vacuum(self) -> str:
        return 'VACUUM FULL "file"' if self.dialect == "postgres" else "VACUUM"

    def to_json(self) -> dict:
        return {
            "dialect": self.dialect,
            "onDisk": self.on_disk,
            "table": self.table,
            "toast": self.toast,
            "indexes": self.indexes,
            "freePages": self.free,
            "rows": self.rows,
            "dataBytes": self.data_bytes,
            "liveBytes": self.live_bytes,
            "deadRows": self.dead_rows,
            "reclaimable": self.reclaimable,
            "vacuum": self.vacuum,
            "method": self.method,
        }


def footprint(catalog: Catalog, *, rows: int | None = None) -> Footprint:
    """The ``file`` table's footprint: one catalog query for the sizes and one aggregate
    over the rows — on Postgres over a sample of about ``SAMPLE_PAGES`` heap pages
    (``TABLESAMPLE SYSTEM``) when the table has more, so ``du`` stays quick on any table.

    ``rows``: the table's row count when the caller has just counted it (an unfiltered
    ``usage``); Postgres then skips its own ``COUNT(*)``, a second pass over the table
    (2.3 s of a 10^7-row ``du``)."""
    if catalog.dialect == "postgres":
        return _pg_footprint(catalog, rows)
    return _sqlite_footprint(catalog)


def _pg_footprint(catalog: Catalog, counted: int | None = None) -> Footprint:
    sizes = catalog._execute(
        "SELECT pg_table_size(c.oid), "
        "COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0), "
        "pg_indexes_size(c.oid), pg_total_relation_size(c.oid), c.relpages, "
        "NULLIF(c.reltoastrelid, 0), "
        "(SELECT n_dead_tup FROM pg_stat_all_tables s WHERE s.relid = c.oid) "
        "FROM pg_class c WHERE c.oid = '\"file\"'::regclass"
    )[0]
    table_size, toast, indexes, total, relpages, toast_oid, dead = sizes
    columns = " + ".join(f'COALESCE(pg_column_size("{c}"), 0)' for c in _PG_COLUMNS)
    aggregate = (
        f'SELECT COUNT(*), COALESCE(SUM(octet_length("data")), 0), '
        f'COALESCE(SUM({columns} + COALESCE(pg_column_size("data"), 0)), 0) FROM "file"'
    )  # octet_length and pg_column_size read a TOAST pointer, never the TOASTed bytes
    if counted is None:
        (counted,) = catalog._execute('SELECT COUNT(*) FROM "file"')[0]
    rows = int(counted)
    if relpages and int(relpages) > SAMPLE_PAGES:
        percent = 100.0 * SAMPLE_PAGES / int(relpages)
        n, data, live = catalog._execute(aggregate + f" TABLESAMPLE SYSTEM ({percent:.6f})")[0]
        scale = rows / n if n else 0.0
        data, live = int(data * scale), int(live * scale)
        how = f"a {percent:.2g} % page sample"
    else:
        data, live = (int(v) for v in catalog._execute(aggregate)[0][1:])
        how = "every row"
    live += rows * ROW_OVERHEAD
    heap_and_toast = int(table_size)
    exact = _pgstattuple(catalog, toast_oid)
    if exact is not None:
        reclaimable, method = exact, "pgstattuple: dead tuples and free space of the table and its TOAST"
    else:
        reclaimable = max(0, heap_and_toast - int(live * PACKING))
        method = (
            f"estimate: table + TOAST on disk minus {PACKING:g} x the live rows' bytes "
            f"(pg_column_size, {how}); indexes not counted"
        )
    return Footprint(
        dialect="postgres", on_disk=int(total), rows=rows, data_bytes=int(data), live_bytes=live,
        reclaimable=reclaimable, method=method, table=heap_and_toast - int(toast),
        toast=int(toast), indexes=int(indexes), dead_rows=None if dead is None else int(dead),
    )


def _pgstattuple(catalog: Catalog, toast_oid: Any) -> int | None:
    """Dead tuples + free space, exactly, when the pgstattuple extension is installed
    and readable by this user; None otherwise (apstorage never installs it)."""
    if not catalog._execute("SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'"):
        return None
    try:
        total = 0
        targets = ["'\"file\"'::regclass"] + ([f"{int(toast_oid)}::oid"] if toast_oid else [])
        for target in targets:
            dead, free = catalog._execute(
                f"SELECT dead_tuple_len, free_space FROM pgstattuple({target})"
            )[0]
            total += int(dead) + int(free)
        return total
    except ApStorageError:
        return None


def _sqlite_footprint(catalog: Catalog) -> Footprint:
    page_count = int(catalog._execute("PRAGMA page_count")[0][0])
    page_size = int(catalog._execute("PRAGMA page_size")[0][0])
    free_pages = int(catalog._execute("PRAGMA freelist_count")[0][0])
    columns = " + ".join(f'COALESCE(length("{c}"), 0)' for c in (*_PG_COLUMNS, "data"))
    rows, data, live = catalog._execute(
        f'SELECT COUNT(*), COALESCE(SUM(length("data")), 0), COALESCE(SUM({columns}), 0) FROM "file"'
    )[0]
    free = free_pages * page_size
    return Footprint(
        dialect="sqlite", on_disk=page_count * page_size, rows=int(rows), data_bytes=int(data),
        live_bytes=int(live), reclaimable=free, free=free,
        method="free pages (freelist_count x page_size); VACUUM also defragments the rest",
    )


__all__ = [
    "Footprint",
    "footprint",
    "GROUP_COLUMNS",
    "KEY_SQL",
    "KeyedRow",
    "UsageFilter",
    "UsageRow",
    "count_rows",
    "iter_rows_by_id",
    "iter_rows_by_key",
    "rows_by_ids",
    "rows_by_keys",
    "stored_type_names",
    "usage",
]
