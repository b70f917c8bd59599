"""DB store: the bytes live in the row's ``data`` column; the key is the file id."""

from __future__ import annotations

from typing import BinaryIO, Iterator

from apstorage.catalog import Catalog
from apstorage.errors import NotFoundError
from apstorage.model import Location
from apstorage.stores.base import CHUNK, ObjectInfo, Store


class DbStore(Store):
    location = Location.DB

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def put(self, key: str, source: BinaryIO, size: int, *, tags: dict[str, str] | None = None) -> None:
        self.catalog.write_data(key, source.read())

    def open(self, key: str) -> Iterator[bytes]:
        data = self.catalog.read_data(key)
        if data is None:
            raise NotFoundError(f"file {key!r} has no bytes in the database")
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])

    def get(self, key: str) -> bytes:
        data = self.catalog.read_data(key)
        if data is None:
            raise NotFoundError(f"file {key!r} has no bytes in the database")
        return data

    def delete(self, key: str) -> None:
        try:
            self.catalog.clear_data(key)
        except NotFoundError:
            pass

    def stat(self, key: str) -> ObjectInfo | None:
        size = self.catalog.data_size(key)
        return None if size is None else ObjectInfo(key, size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for file_id in self.catalog.iter_ids_with_data(prefix):
            info = self.stat(file_id)
            if info is not None:
                yield info
