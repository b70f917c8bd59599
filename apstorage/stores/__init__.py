"""Stores: where bytes live (DB, LOCAL, S3), behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apstorage.model import Location
from apstorage.stores.base import ObjectInfo, Store

if TYPE_CHECKING:
    from apstorage.catalog import Catalog
    from apstorage.config import Settings

__all__ = ["ObjectInfo", "Store", "open_store"]


def open_store(
    location: Location, settings: Settings, catalog: Catalog | None = None, *, workers: int = 10
) -> Store:
    """The store for ``location``; S3 (and boto3) is only imported when used. Only the DB
    store needs the catalog (its bytes live in the rows)."""
    if location is Location.DB:
        from apstorage.stores.db import DbStore

        if catalog is None:
            raise ValueError("the DB store needs the catalog")
        return DbStore(catalog)
    if location is Location.LOCAL:
        from apstorage.stores.local import LocalStore

        return LocalStore(settings.local_storage_path)
    from apstorage.stores.s3 import S3Store

    return S3Store(settings, workers=workers)
