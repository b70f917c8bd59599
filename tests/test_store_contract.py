"""One contract, four stores: DB on SQLite, DB on Postgres, LOCAL, and S3 (SeaweedFS)."""

from __future__ import annotations

import io
from typing import Callable

import pytest

from apstorage.errors import NotFoundError, UsageError
from apstorage.model import FileRow, Location, new_id
from apstorage.stores import Store
from tests.conftest import settings_from
from apstorage.services.context import Storage

KINDS = ["db-sqlite", "db-postgres", "local", "s3"]


class Harness:
    """A store plus a way to make keys it accepts (DB keys are ids of existing rows)."""

    def __init__(self, storage: Storage, location: Location) -> None:
        self.storage = storage
        self.store: Store = storage.store(location)
        self.location = location

    def key(self, prefix: str = "project/p1/FLOW_RUN_LOG/") -> str:
        file_id = new_id()
        if self.location is Location.DB:
            self.storage.catalog.insert(
                FileRow(id=file_id, type="FLOW_RUN_LOG", location=Location.DB, project_id="p1")
            )
            return file_id
        return prefix + file_id


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest, make_env, tmp_path) -> Harness:
    kind = request.param
    if kind == "db-postgres":
        env = make_env(AP_POSTGRES_URL=request.getfixturevalue("pg_url"))
    elif kind == "s3":
        env = make_env(**request.getfixturevalue("s3_env"))
    else:
        env = make_env(AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    storage = Storage(settings_from(env))
    if kind == "db-postgres":
        storage.catalog.init_schema()
    location = {"db-sqlite": Location.DB, "db-postgres": Location.DB, "local": Location.LOCAL, "s3": Location.S3}[kind]
    yield Harness(storage, location)
    storage.close()


def put(h: Harness, key: str, data: bytes) -> None:
    h.store.put(key, io.BytesIO(data), len(data))


def test_put_then_get_returns_the_same_bytes(harness: Harness) -> None:
    key = harness.key()
    data = bytes(range(256)) * 1000
    put(harness, key, data)
    assert harness.store.get(key) == data
    assert b"".join(harness.store.open(key)) == data


def test_empty_object_round_trips(harness: Harness) -> None:
    key = harness.key()
    put(harness, key, b"")
    assert harness.store.get(key) == b""
    assert harness.store.stat(key).size == 0


def test_put_overwrites(harness: Harness) -> None:
    key = harness.key()
    put(harness, key, b"first")
    put(harness, key, b"second!")
    assert harness.store.get(key) == b"second!"


def test_stat_and_exists(harness: Harness) -> None:
    key = harness.key()
    assert harness.store.stat(key) is None
    assert not harness.store.exists(key)
    put(harness, key, b"12345")
    assert harness.store.stat(key).size == 5
    assert harness.store.exists(key)


def test_get_of_missing_key_is_not_found(harness: Harness) -> None:
    with pytest.raises(NotFoundError):
        harness.store.get(harness.key())


def test_delete_removes_and_missing_delete_is_success(harness: Harness) -> None:
    key = harness.key()
    put(harness, key, b"bye")
    harness.store.delete(key)
    assert not harness.store.exists(key)
    harness.store.delete(key)  # again: still success


def test_delete_many_reports_nothing_for_present_and_missing_keys(harness: Harness) -> None:
    keys = [harness.key() for _ in range(5)]
    for key in keys[:3]:
        put(harness, key, b"x")
    assert harness.store.delete_many(keys) == {}
    assert not any(harness.store.exists(k) for k in keys)


def test_list_streams_every_key_under_a_prefix(harness: Harness) -> None:
    if harness.location is Location.DB:
        keys = [harness.key() for _ in range(3)]
        prefix = ""
    else:
        prefix = f"project/{new_id()}/"
        keys = [harness.key(prefix + "FLOW_RUN_LOG/") for _ in range(3)]
        put(harness, harness.key("project/other/FLOW_RUN_LOG/"), b"elsewhere")
    for i, key in enumerate(keys):
        put(harness, key, b"a" * (i + 1))
    listed = {info.key: info.size for info in harness.store.list(prefix)}
    for i, key in enumerate(keys):
        assert listed[key] == i + 1
    if harness.location is not Location.DB:
        assert set(listed) == set(keys)


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "a//b", ""])
def test_local_store_refuses_keys_that_escape_its_root(make_env, tmp_path, bad: str) -> None:
    env = make_env(AP_LOCAL_STORAGE_PATH=str(tmp_path / "root"))
    with Storage(settings_from(env)) as storage:
        store = storage.store(Location.LOCAL)
        with pytest.raises(UsageError):
            store.put(bad, io.BytesIO(b"x"), 1)
    assert not (tmp_path / "escape").exists()


def test_local_store_refuses_a_symlink_out_of_its_root(make_env, tmp_path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "project").mkdir(parents=True)
    outside.mkdir()
    (root / "project" / "evil").symlink_to(outside)
    env = make_env(AP_LOCAL_STORAGE_PATH=str(root))
    with Storage(settings_from(env)) as storage:
        with pytest.raises(UsageError):  # a link leaving the root: an unsafe key (exit 2)
            storage.store(Location.LOCAL).put("project/evil/x", io.BytesIO(b"x"), 1)
    assert list(outside.iterdir()) == []
