"""The SQL of `sweep-expired`: expired rows by keyset pages, projects' own retention, the
delete of exactly the rows whose bytes are gone, the claims that let several runs share one
Postgres catalog, and SQLite's sweep lock.

Postgres: a run claims each batch with ``FOR UPDATE SKIP LOCKED`` (``claim_expired``) in a
transaction of its own, on a connection of its own (``open_claim_lane``), held open while
the batch's bytes are deleted and then its rows (``delete_rows(..., cur=)``). Rows another
run holds are skipped, so N runs delete disjoint parts; a run killed mid-batch loses its
connection, Postgres rolls the transaction back and its rows are claimable again. SQLite
runs one sweep at a time (``try_sweep_lock``: a lock file beside the database).

Every selection is an equality on ``"type"`` (and ``"projectId"``) plus a range on
``"created"``, so the (``type``, ``created``) and (``projectId``, ``type``, ``created``)
indexes serve it; pages continue after the last ``("created", "id")`` seen, never by
OFFSET, so memory and per-page cost stay flat whatever the table size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator

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


def claim_expired(
    cur: Any,
    catalog: Catalog,
    stored_type: str,
    cutoff: datetime,
    *,
    limit: int,
    after: tuple[Any, str] | None = None,
    project_id: str | None = None,
    not_before: datetime | None = None,
) -> list[ExpiredRow]:
    """Postgres: ``select_expired``'s page, locked ``FOR UPDATE SKIP LOCKED`` in the
    transaction of ``cur`` (a lane's: ``open_claim_lane``). Rows other transactions hold
    are passed over, not waited for, and do not count against ``limit``: fewer than
    ``limit`` rows means the scope has no more unclaimed rows after ``after``. The rows
    stay locked until that transaction ends."""
    if catalog.dialect != "postgres":
        raise ValueError("claims are a Postgres catalog's; SQLite runs one sweep at a time")
    if stored_type not in {n for names in _STORED_NAMES.values() for n in names}:
        raise ValueError(f"{stored_type!r} is not an expiring execution-data type")
    by_project = project_id is not None
    sql = expired_page_sql(catalog, by_project=by_project, after=after is not None, limit=limit)
    params = expired_page_params(
        catalog, stored_type, cutoff, project_id=project_id, not_before=not_before, after=after
    )
    try:
        cur.execute(sql + " FOR UPDATE SKIP LOCKED", params)
        return [ExpiredRow(*t) for t in cur.fetchall()]
    except Exception as exc:  # psycopg.Error: the documented exit code
        raise _translated(catalog, exc) from None


def _translated(catalog: Catalog, exc: Exception) -> Exception:
    import psycopg

    return catalog._translate(exc) if isinstance(exc, psycopg.Error) else exc  # type: ignore[attr-defined]


# Claims run the same statement again and again on a lane's session; psycopg prepares it
# after 5 runs and Postgres may then switch to a generic plan, which cannot see the
# cutoff. Every claim is planned for its own values (measured in README "Sweeping from
# several hosts").
CLAIM_SESSION_SQL = "SET plan_cache_mode = force_custom_plan"


def open_claim_lane(catalog: Catalog) -> Catalog:
    """Postgres: a new catalog (its own connection) for claims, set up by
    ``CLAIM_SESSION_SQL``. The caller closes it. Raises what ``open_catalog`` raises."""
    from apstorage.catalog import open_catalog

    lane = open_catalog(catalog.settings)  # type: ignore[attr-defined]
    try:
        lane._execute(CLAIM_SESSION_SQL)
    except BaseException:
        lane.close()
        raise
    return lane


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


def delete_rows(catalog: Catalog, ids_by_location: dict[str, list[str]], *, cur: Any = None) -> set[str]:
    """Delete these rows in one short transaction, each only if it still records the
    location its bytes were deleted from (a row moved meanwhile keeps its new bytes).
    Returns the ids actually deleted (a concurrent delete is not counted twice).

    ``cur``: a cursor of the caller's transaction (a claim's, which holds these rows): the
    deletes happen there and take effect when it commits."""
    deleted: set[str] = set()
    p = catalog.ph
    with _scope(catalog, cur) as cur:
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
    catalog: Catalog, keys: dict[str, list[tuple[str, str]]], batch_ids: list[str], *, cur: Any = None
) -> tuple[set[str], set[str]]:
    """Of ``keys`` ({key: [(row id, location), ...]} of one batch), find in one transaction
    the keys some row outside the batch still references, and delete the batch's rows at
    those keys there and then — their bytes stay, for the other row. Returns (the ids
    deleted, the keys kept). The other keys' bytes may go; their rows are deleted later
    (``delete_rows``), once the bytes are. ``cur``: as for ``delete_rows``.

    Under concurrent runs a row another run is deleting still counts as a reference until
    that run commits, so two runs holding the two rows of one key both keep its bytes (an
    orphan for ``gc --orphans``), never delete them under a row that stays."""
    from apstorage.catalog.refs import rows_referencing

    if not keys:
        return set(), set()
    deleted: set[str] = set()
    with _scope(catalog, cur) as cur:
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


@contextlib.contextmanager
def _scope(catalog: Catalog, cur: Any) -> Iterator[Any]:
    """The caller's transaction (``cur``), or a short one of our own. Driver errors come
    out as the documented ApStorageError."""
    if cur is None:
        with catalog.transaction() as own:
            yield own
        return
    try:
        yield cur
    except Exception as exc:
        raise _translated(catalog, exc) from None


# -- the sweep lock (SQLite) -------------------------------------------------------------------

SweepLock = RunLock


def sweep_is_shared(catalog: Catalog) -> bool:
    """True where runs share the work by claims (Postgres); False where one sweep runs at
    a time under ``try_sweep_lock`` (SQLite)."""
    return catalog.dialect == "postgres"


def try_sweep_lock(catalog: Catalog) -> RunLock | None:
    """Take the sweep lock without waiting; None when another run holds it (locks.py).
    SQLite's sweeps (and gc) take it; Postgres sweeps claim batches instead
    (``claim_expired``), and only ``gc`` takes a run lock there."""
    return try_run_lock(catalog, "sweep-expired")


__all__ = [
    "CLAIM_SESSION_SQL",
    "ExpiredRow",
    "claim_expired",
    "open_claim_lane",
    "sweep_is_shared",
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
