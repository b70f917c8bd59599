"""The handles a service works with: settings, the catalog, and the stores, opened lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apstorage.catalog import Catalog, open_catalog
from apstorage.config import Settings, load_settings
from apstorage.model import Location
from apstorage.stores import Store, open_store

if TYPE_CHECKING:
    from apstorage.stores.s3_versions import Versioning


class Storage:
    """One catalog and one store per location, opened on first use and closed together."""

    def __init__(self, settings: Settings | None = None, *, workers: int = 10) -> None:
        self.settings = settings or load_settings()
        self.workers = workers
        self._catalog: Catalog | None = None
        self._stores: dict[Location, Store] = {}
        self._versioning: Versioning | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def store(self, location: Location) -> Store:
        if location not in self._stores:
            # Only DB needs the catalog: S3 and LOCAL commands (lifecycle, check-iam) never
            # open it, so they neither create the SQLite file nor need Postgres up.
            catalog = self.catalog if location is Location.DB else None
            self._stores[location] = open_store(location, self.settings, catalog, workers=self.workers)
        return self._stores[location]

    def versioning(self) -> Versioning:
        """The S3 bucket's versioning state (``stores.s3_versions.Versioning``), asked once
        per run (one GetBucketVersioning) by the commands that delete or count S3 bytes.
        Raises what opening the S3 store raises (ConfigError when S3 is not configured),
        NotFoundError for a missing bucket, BackendUnavailableError when unreachable."""
        if self._versioning is None:
            from apstorage.stores.s3_versions import get_versioning

            self._versioning = get_versioning(self.store(Location.S3))  # type: ignore[arg-type]
        return self._versioning

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
