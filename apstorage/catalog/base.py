"""What every catalog does, with the SQL both dialects share.

Column names are the platform's quoted camelCase. A dialect supplies its placeholder,
its DDL, and its conversions for timestamps and JSON.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from apstorage.errors import NotFoundError
from apstorage.model import Compression, FileRow, Location

ROW_COLUMNS = (
    '"id", "created", "updated", "projectId", "platformId", "location", "fileName", '
    '"size", "metadata", "s3Key", "type", "compression"'
)

# The indexes a real deployment has; `init` creates them with a new table.
INDEXES = {
    "idx_file_type_created_desc": ("type", "created"),
    "idx_file_project_id_type_created_desc": ("projectId", "type", "created"),
    "idx_file_platform_id": ("platformId",),
}


def _shown(file_id: str) -> str:
    """An id as an error names it: quoted (repr: control characters escaped), and cut at
    80 characters (a 5,000-character id is not worth a screen of text)."""
    return repr(file_id) if len(file_id) <= 80 else f"{file_id[:80]!r}... ({len(file_id):,} characters)"


@dataclass
class InitReport:
    created_table: bool
    created_indexes: list[str] = field(default_factory=list)
    missing_indexes: list[str] = field(default_factory=list)
    target: str = ""
    # apstorage's own indexes (not the platform's) an existing table lacks: {"name", "sql"},
    # the statement an operator may run (init never does: it never alters an existing table)
    optional_indexes: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "createdTable": self.created_table,
            "createdIndexes": self.created_indexes,
            "missingIndexes": self.missing_indexes,
            "optionalIndexes": self.optional_indexes,
        }


class Catalog(ABC):
    """The ``file`` table. Implementations translate driver errors to ApStorageError."""

    ph = "?"
    dialect = ""  # "sqlite" | "postgres"
    target = ""

    # -- schema ---------------------------------------------------------------------
    @abstractmethod
    def init_schema(self) -> InitReport:
        """Create the table and its indexes when missing; never alter an existing table."""

    # -- plumbing each dialect provides ---------------------------------------------------
    @abstractmethod
    def transaction(self) -> Any:
        """A context manager yielding a DB-API cursor inside one short transaction
        (placeholders are ``self.ph``); rolled back on any exception."""

    @abstractmethod
    def _execute(self, sql: str, params: tuple = (), *, binary: bool = False) -> list[tuple]:
        """Run one statement in its own short transaction and return its rows."""

    @abstractmethod
    def _ts_in(self, value: datetime) -> Any: ...

    @abstractmethod
    def _ts_out(self, value: Any) -> datetime | None: ...

    @abstractmethod
    def _json_in(self, value: dict | None) -> Any: ...

    @abstractmethod
    def _bytes_in(self, value: bytes) -> Any: ...

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows -------------------------------------------------------------------------
    def row_from_tuple(self, t: tuple) -> FileRow:
        metadata = t[8]
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        return FileRow(
            id=t[0],
            created=self._ts_out(t[1]),
            updated=self._ts_out(t[2]),
            project_id=t[3],
            platform_id=t[4],
            location=Location(t[5]),
            file_name=t[6],
            size=t[7],
            metadata=metadata,
            s3_key=t[9],
            type=t[10],
            compression=Compression(t[11]),
        )

    def insert(self, row: FileRow, data: bytes | None = None) -> FileRow:
        """Insert a row (with its bytes when it lives in DB) in one statement."""
        now = datetime.now(timezone.utc)
        created = row.created or now
        p = self.ph
        self._execute(
            f'INSERT INTO "file" ({ROW_COLUMNS}, "data") VALUES '
            f"({', '.join([p] * 13)})",
            (
                row.id,
                self._ts_in(created),
                self._ts_in(row.updated or created),
                row.project_id,
                row.platform_id,
                row.location.value,
                row.file_name,
                row.size,
                self._json_in(row.metadata),
                row.s3_key,
                row.type,
                row.compression.value,
                None if data is None else self._bytes_in(data),
            ),
        )
        return FileRow(**{**row.__dict__, "created": created, "updated": row.updated or created})

    def get(self, file_id: str) -> FileRow:
        if not file_id.isprintable() or len(file_id) > 255:
            # Control characters or bytes that are not UTF-8 (surrogate escapes from argv):
            # no row has such an id, and the driver could not even encode it.
            raise NotFoundError(f"no file with id {_shown(file_id)} in the catalog ({self.target})")
        rows = self._execute(f'SELECT {ROW_COLUMNS} FROM "file" WHERE "id" = {self.ph}', (file_id,))
        if not rows:
            raise NotFoundError(f"no file with id {_shown(file_id)} in the catalog ({self.target})")
        return self.row_from_tuple(rows[0])

    def read_data(self, file_id: str) -> bytes | None:
        rows = self._execute(
            f'SELECT "data" FROM "file" WHERE "id" = {self.ph}', (file_id,), binary=True
        )
        if not rows:
            raise NotFoundError(f"no file with id {_shown(file_id)} in the catalog ({self.target})")
        data = rows[0][0]
        return None if data is None else bytes(data)

    def write_data(self, file_id: str, data: bytes) -> None:
        p = self.ph
        rows = self._execute(
            f'UPDATE "file" SET "data" = {p}, "size" = {p}, "updated" = {p} '
            f'WHERE "id" = {p} RETURNING "id"',
            (self._bytes_in(data), len(data), self._ts_in(datetime.now(timezone.utc)), file_id),
        )
        if not rows:
            raise NotFoundError(f"no file with id {_shown(file_id)} in the catalog ({self.target})")

    def clear_data(self, file_id: str) -> bool:
        rows = self._execute(
            f'UPDATE "file" SET "data" = NULL WHERE "id" = {self.ph} AND "data" IS NOT NULL '
            'RETURNING "id"',
            (file_id,),
        )
        return bool(rows)

    def data_size(self, file_id: str) -> int | None:
        """Length of a row's bytes without reading them; None when the row has none."""
        length = "octet_length" if self.dialect == "postgres" else "length"
        rows = self._execute(
            f'SELECT {length}("data") FROM "file" WHERE "id" = {self.ph} AND "data" IS NOT NULL',
            (file_id,),
        )
        return int(rows[0][0]) if rows else None

    def has_data(self, file_id: str) -> bool:
        rows = self._execute(
            f'SELECT 1 FROM "file" WHERE "id" = {self.ph} AND "data" IS NOT NULL', (file_id,)
        )
        return bool(rows)

    def iter_ids_with_data(self, prefix: str = "", page: int = 1000) -> Iterator[str]:
        """Ids of rows holding bytes, in id order, by keyset pagination."""
        last = ""
        while True:
            p = self.ph
            rows = self._execute(
                f'SELECT "id" FROM "file" WHERE "data" IS NOT NULL AND "id" > {p} '
                f'AND substr("id", 1, {len(prefix)}) = {p} ORDER BY "id" LIMIT {int(page)}',
                (last, prefix),
            )
            for (file_id,) in rows:
                yield file_id
            if len(rows) < page:
                return
            last = rows[-1][0]

    def delete(self, file_id: str) -> bool:
        rows = self._execute(
            f'DELETE FROM "file" WHERE "id" = {self.ph} RETURNING "id"', (file_id,)
        )
        return bool(rows)

