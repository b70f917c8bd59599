"""put/get through the services, on both catalogs and all three locations."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import zstandard

from apstorage.errors import NotFoundError, TooLargeError, UsageError
from apstorage.model import Compression, FileRow, Location, new_id
from apstorage.services.files import PutRequest, open_file, put_file
from tests.conftest import settings_from
from apstorage.services.context import Storage


def _env_for(request, catalog_env, tmp_path) -> dict[str, str]:
    env = dict(catalog_env, AP_FILE_STORAGE_LOCATION=request.param, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    if request.param == "S3":
        env.update(request.getfixturevalue("s3_env"))
    return env


@pytest.fixture(params=["DB", "LOCAL", "S3"])
def location_env(request, catalog_env, tmp_path) -> dict[str, str]:
    return _env_for(request, catalog_env, tmp_path)


@pytest.fixture(params=["LOCAL", "S3"])
def object_location_env(request, catalog_env, tmp_path) -> dict[str, str]:
    """Locations where bytes and row are written separately (DB writes both at once)."""
    return _env_for(request, catalog_env, tmp_path)


def read_back(storage: Storage, file_id: str) -> bytes:
    _, chunks = open_file(storage, file_id)
    return b"".join(chunks)


def write_input(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    return str(path)


def test_round_trip_is_byte_identical_in_every_location(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    data = os.urandom(300_000)
    row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_RUN_LOG", project_id="proj1"))
    assert row.location.value == location_env["AP_FILE_STORAGE_LOCATION"]
    assert read_back(storage, row.id) == data
    stored = storage.catalog.get(row.id)
    assert stored.size == len(data) and stored.file_name == "input.bin"
    if row.location is not Location.DB:
        assert stored.s3_key == f"project/proj1/FLOW_RUN_LOG/{row.id}"
        assert storage.catalog.read_data(row.id) is None
        assert storage.store(row.location).stat(stored.s3_key).size == len(data)


def test_permanent_types_always_go_to_the_database(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest(write_input(tmp_path, b"asset"), "PLATFORM_ASSET", platform_id="plat1"))
    assert row.location is Location.DB
    assert storage.catalog.read_data(row.id) == b"asset"


def test_compressed_put_stores_zstd_and_reads_back_the_original(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    data = b"log line\n" * 50_000
    row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_RUN_LOG", project_id="p", compress=True))
    stored = storage.catalog.get(row.id)
    assert stored.compression is Compression.ZSTD
    assert stored.size < len(data) // 10
    assert read_back(storage, row.id) == data


def test_stdin_is_read_when_the_path_is_dash(location_env, storage_factory) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest("-", "WEBHOOK_PAYLOAD", project_id="p"), stdin=io.BytesIO(b"{}"))
    assert row.file_name is None
    assert read_back(storage, row.id) == b"{}"


def test_oversize_input_is_refused_before_anything_is_written(location_env, storage_factory, tmp_path) -> None:
    env = dict(location_env, AP_MAX_FILE_SIZE_MB="1")
    storage = storage_factory(env)
    big = write_input(tmp_path, b"x" * (1024 * 1024 + 1))
    for request, stdin in (
        (PutRequest(big, "FLOW_RUN_LOG", project_id="p"), None),
        (PutRequest("-", "FLOW_RUN_LOG", project_id="p"), io.BytesIO(b"x" * (1024 * 1024 + 1))),
    ):
        with pytest.raises(TooLargeError) as info:
            put_file(storage, request, stdin=stdin)
        assert info.value.exit_code == 7 and "AP_MAX_FILE_SIZE_MB" in str(info.value)
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    if env["AP_FILE_STORAGE_LOCATION"] != "DB":
        assert list(storage.store(Location(env["AP_FILE_STORAGE_LOCATION"])).list("")) == []


def test_dry_run_writes_nothing(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest(write_input(tmp_path, b"abc"), "FLOW_RUN_LOG", project_id="p"), dry_run=True)
    assert row.size == 3
    with pytest.raises(NotFoundError):
        storage.catalog.get(row.id)


def test_a_failed_row_insert_removes_the_object(object_location_env, storage_factory, tmp_path, monkeypatch) -> None:
    storage = storage_factory(object_location_env)
    store = storage.store(Location(object_location_env["AP_FILE_STORAGE_LOCATION"]))

    def fail(*args, **kwargs):
        raise RuntimeError("the database went away mid-insert")

    monkeypatch.setattr(storage.catalog, "insert", fail)
    with pytest.raises(RuntimeError):
        put_file(storage, PutRequest(write_input(tmp_path, b"orphan?"), "FLOW_RUN_LOG", project_id="p"))
    assert list(store.list("project/p/")) == []


def test_switching_location_leaves_every_earlier_file_readable(catalog_env, s3_env, storage_factory, tmp_path) -> None:
    written: dict[str, bytes] = {}
    for location in ("DB", "LOCAL", "S3", "DB", "LOCAL"):
        env = dict(catalog_env, **s3_env, AP_FILE_STORAGE_LOCATION=location, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
        storage = storage_factory(env)
        data = f"written while location={location} {new_id()}".encode()
        row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_STEP_FILE", project_id="p"))
        assert row.location.value == location
        written[row.id] = data
        for file_id, expected in written.items():
            assert read_back(storage, file_id) == expected
        storage.close()


def test_platform_written_zstd_rows_are_read_back(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    original = b'{"steps": {"a": 1}}' * 1000
    frame = zstandard.ZstdCompressor().compress(original)
    zstd_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", compression=Compression.ZSTD, size=len(frame))
    storage.catalog.insert(zstd_row, frame)
    # The platform also leaves rows marked NONE whose bytes are a zstd frame.
    magic_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", size=len(frame))
    storage.catalog.insert(magic_row, frame)
    # And a streamed frame with no content size in its header.
    streamed = zstandard.ZstdCompressor().compressobj()
    frame2 = streamed.compress(original) + streamed.flush()
    stream_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", compression=Compression.ZSTD)
    storage.catalog.insert(stream_row, frame2)
    for row in (zstd_row, magic_row, stream_row):
        assert read_back(storage, row.id) == original


def test_plain_rows_are_not_touched(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    row = FileRow(id=new_id(), type="UNKNOWN", location=Location.DB, project_id="p")
    storage.catalog.insert(row, b"\x28\xb5")  # shorter than the magic
    assert read_back(storage, row.id) == b"\x28\xb5"


def test_unknown_id_is_not_found(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(NotFoundError) as info:
        open_file(storage, "doesnotexist000000000")
    assert info.value.exit_code == 4


def test_a_file_needs_an_owner(catalog_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(UsageError, match="--project"):
        put_file(storage, PutRequest(write_input(tmp_path, b"x"), "FLOW_RUN_LOG"))


def test_missing_input_path_is_not_found(catalog_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(NotFoundError, match="does not exist"):
        put_file(storage, PutRequest(str(tmp_path / "nope"), "FLOW_RUN_LOG", project_id="p"))
