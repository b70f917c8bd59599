"""The SQL of `restore --all-missing`: every S3 row (optionally of some projects or
platforms) by keyset pages on the primary key, with what restore needs of it: its object
key (computed as ``FileRow.key`` computes it, ``catalog.du.KEY_SQL``), its recorded size
and its type. Never ``"data"`` nor ``"metadata"``; never OFFSET, so each page costs the
same whatever the table size. Read-only: restore never changes a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from apstorage.catalog.du import KEY_SQL, _in_list

if TYPE_CHECKING:
    from apstorage.catalog.base import Catalog

PAGE = 500  # rows per page


@dataclass(frozen=True)
class S3Row:
    """An S3 row as restore sees it. ``size`` in bytes (the stored size; None when the row
    records none); ``key`` is None when the row has neither an ``s3Key`` nor an owner."""

    id: str
    type: str
    key: str | None
    size: int | None


def iter_s3_pages(
    catalog: "Catalog",
    *,
    project_ids: Sequence[str] = (),
    platform_ids: Sequence[str] = (),
    page: int = PAGE,
) -> Iterator[list[S3Row]]:
    """Pages of every row whose ``"location"`` is ``S3``, in ``id`` order, ``page`` rows
    at a time (the last may be shorter). With ``project_ids`` / ``platform_ids``, only rows
    of those projects or platforms (both given: a row matching either)."""
    p = catalog.ph
    owners: list[str] = []
    params: list = []
    for column, values in (('"projectId"', project_ids), ('"platformId"', platform_ids)):
        if values:
            cond, extra = _in_list(catalog, column, list(values))
            owners.append(cond)
            params.extend(extra)
    where = f' AND ({" OR ".join(owners)})' if owners else ""
    last = ""
    while True:
        rows = catalog._execute(
            f'SELECT "id", "type", {KEY_SQL}, "size" FROM "file" '
            f'WHERE "location" = {p} AND "id" > {p}{where} ORDER BY "id" LIMIT {int(page)}',
            ("S3", last, *params),
        )
        if rows:
            yield [S3Row(t[0], t[1], t[2], t[3]) for t in rows]
        if len(rows) < page:
            return
        last = rows[-1][0]


__all__ = ["PAGE", "S3Row", "iter_s3_pages"]
