"""The catalog: the platform's ``file`` table. The only package that holds SQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apstorage.catalog.base import Catalog, InitReport

if TYPE_CHECKING:
    from apstorage.config import Settings

__all__ = ["Catalog", "InitReport", "open_catalog"]


def open_catalog(settings: Settings, *, create: bool | None = None) -> Catalog:
    """Connect to the configured catalog.

    The embedded default (SQLite) creates its table on first use; Postgres never does
    unless asked (``apstorage init``), because it is normally the platform's own database.
    """
    if settings.db_type == "POSTGRES":
        from apstorage.catalog.postgres import PostgresCatalog

        catalog: Catalog = PostgresCatalog(settings)
        if create:
            catalog.init_schema()
        return catalog
    from apstorage.catalog.sqlite import SqliteCatalog

    catalog = SqliteCatalog(settings.sqlite_path)
    if create is not False:
        catalog.init_schema()
    return catalog
