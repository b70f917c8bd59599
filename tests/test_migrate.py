"""migrate-to-s3 against real Postgres/SQLite and SeaweedFS: every byte arrives, nothing is
lost when the run is killed, concurrent runs split the work."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.model import FileRow, Location, new_id, object_key
from apstorage.services.context import Storage
from apstorage.services.migrate import MigrateOptions, migrate_to_s3, plan
from tests.conftest import settings_from


def seed(storage: Storage, db_rows: int, local_files: int, *, size: int = 10 * 1024,
         permanent: int = 0) -> dict[str, bytes]:
    """Rows as the platform leaves them: bytes in DB rows, files under the LOCAL root."""
    catalog = storage.catalog
    local = storage.store(Location.LOCAL)
    expected: dict[str, bytes] = {}
    with catalog.transaction() as cur:
        p = catalog.ph
        sql = (f'INSERT INTO "file" ("id", "created", "updated", "projectId", "location", "type", '
               f'"size", "data", "compression") VALUES ({", ".join([p] * 9)})')
        now = catalog._ts_in(__import__("datetime").datetime.now(__import__("datetime").timezone.utc))
        params = []
        for i in range(db_rows + permanent):
            file_id = new_id()
            data = os.urandom(size)
            kind = "FLOW_RUN_LOG" if i < db_rows else "SAMPLE_DATA"
            params.append((file_id, now, now, "proj", "DB", kind, size, data, "NONE"))
            expected[file_id] = data
        cur.executemany(sql, params)
    for _ in range(local_files):
        file_id = new_id()
        data = os.urandom(size)
        key = object_key(file_id, "FLOW_STEP_FILE", "proj", None)
        path = local.path_for(key)  # written directly: LocalStore.put's fsync per file is slow here
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        catalog.insert(FileRow(id=file_id, type="FLOW_STEP_FILE", location=Location.LOCAL,
                               project_id="proj", size=size, s3_key=key))
        expected[file_id] = data
    return expected


def assert_consistent(storage: Storage, expected: dict[str, bytes]) -> dict[str, int]:
    """Every row points at bytes that exist and are the original bytes."""
    from concurrent.futures import ThreadPoolExecutor

    s3 = storage.store(Location.S3)
    local = storage.store(Location.LOCAL)
    where = {"DB": 0, "LOCAL": 0, "S3": 0}
    in_s3: dict[str, str] = {}
    for file_id, data in expected.items():
        row = storage.catalog.get(file_id)
        where[row.location.value] += 1
        if row.location is Location.S3:
            assert storage.catalog.read_data(file_id) is None
            in_s3[file_id] = row.key
        elif row.location is Location.DB:
            assert storage.catalog.read_data(file_id) == data
        else:
            assert local.get(row.key) == data
    # The S3 objects: SeaweedFS's own ETag is the MD5 of what it stored (one listing, not
    # a GET per object: botocore spends ~7 ms of CPU on each); multipart ones are read.
    etags = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        etags.update((o["Key"], o["ETag"].strip('"')) for o in page.get("Contents", ()))
    reread = {}
    for file_id, key in in_s3.items():
        assert key in etags, (file_id, key)
        if "-" in etags[key]:
            reread[file_id] = key
        else:
            assert etags[key] == hashlib.md5(expected[file_id]).hexdigest(), file_id
    with ThreadPoolExecutor(8) as pool:
        for file_id, got in zip(reread, pool.map(s3.get, reread.values())):
            assert got == expected[file_id], file_id
    return where


@pytest.fixture
def env(catalog_env, s3_env, tmp_path) -> dict[str, str]:
    return dict(catalog_env, **s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))


def test_migrates_db_and_local_files_verified(env, storage_factory, tmp_path) -> None:
    """The issue's scenario: 2,000 DB rows and 500 LOCAL files (plus permanent rows) on
    Postgres; a fifth of it on SQLite (the same paths, several batches each)."""
    storage = storage_factory(env)
    db_rows, local_files = (2000, 500) if storage.catalog.dialect == "postgres" else (400, 100)
    moved = db_rows + local_files
    expected = seed(storage, db_rows=db_rows, local_files=local_files, permanent=5)
    report = migrate_to_s3(storage, MigrateOptions())
    assert (report.migrated, report.failed, report.skipped) == (moved, 0, 0)
    assert report.bytes == moved * 10 * 1024
    assert report.freed_db_bytes == db_rows * 10 * 1024
    where = assert_consistent(storage, expected)
    assert where == {"DB": 5, "LOCAL": 0, "S3": moved}  # permanent rows stay in DB
    assert list(storage.store(Location.LOCAL).list("")) == []  # LOCAL files are gone
    s3 = storage.store(Location.S3)
    assert sum(1 for _ in s3.list("")) == moved
    tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key=storage.catalog.get(next(iter(expected))).key)
    assert {"Key": "ap-retention", "Value": "execution"} in tags["TagSet"]
    # A second run has nothing left to do.
    again = migrate_to_s3(storage, MigrateOptions())
    assert (again.migrated, again.failed) == (0, 0)
    # Permanent rows move only when asked.
    perm = migrate_to_s3(storage, MigrateOptions(include_permanent=True))
    assert perm.migrated == 5
    assert assert_consistent(storage, expected) == {"DB": 0, "LOCAL": 0, "S3": moved + 5}


def test_large_files_take_the_pool_and_a_missing_local_file_fails_alone(env, storage_factory) -> None:
    """Files over SMALL_OBJECT go through the worker pool (multipart above 16 MiB), a
    LOCAL file larger on disk than its row says still arrives whole, and a LOCAL row whose
    file is gone is reported and left as it was."""
    from apstorage.services.migrate import SMALL_OBJECT

    storage = storage_factory(env)
    expected = seed(storage, db_rows=3, local_files=3)
    catalog, local = storage.catalog, storage.store(Location.LOCAL)

    def add(location: Location, data: bytes, recorded_size: int | None = None) -> str:
        file_id = new_id()
        key = object_key(file_id, "FLOW_STEP_FILE", "proj", None)
        row = FileRow(id=file_id, type="FLOW_STEP_FILE", location=location, project_id="proj",
                      size=recorded_size or len(data), s3_key=key if location is Location.LOCAL else None)
        if location is Location.LOCAL:
            local.put(key, __import__("io").BytesIO(data), len(data))
            catalog.insert(row)
        else:
            catalog.insert(row, data)
        expected[file_id] = data
        return file_id

    add(Location.DB, os.urandom(SMALL_OBJECT + 1))
    add(Location.LOCAL, os.urandom(SMALL_OBJECT * 2))
    add(Location.LOCAL, os.urandom(17 * 1024 * 1024))  # multipart
    add(Location.LOCAL, os.urandom(SMALL_OBJECT + 10), recorded_size=100)  # the row undersells it
    missing = add(Location.LOCAL, b"gone")
    local.delete(catalog.get(missing).key)
    del expected[missing]

    report = migrate_to_s3(storage, MigrateOptions(workers=4, batch_size=4))
    assert (report.migrated, report.failed) == (len(expected), 1)
    assert report.failures[0]["id"] == missing and "missing" in report.failures[0]["reason"]
    assert assert_consistent(storage, expected) == {"DB": 0, "LOCAL": 0, "S3": len(expected)}
    assert catalog.get(missing).location is Location.LOCAL


def test_dry_run_changes_nothing(env, storage_factory) -> None:
    storage = storage_factory(env)
    expected = seed(storage, db_rows=20, local_files=5)
    report = migrate_to_s3(storage, MigrateOptions(dry_run=True))
    assert (report.migrated, report.bytes, report.dry_run) == (25, 25 * 10 * 1024, True)
    assert assert_consistent(storage, expected) == {"DB": 20, "LOCAL": 5, "S3": 0}
    assert list(storage.store(Location.S3).list("")) == []


def test_types_and_limit_and_sources(env, storage_factory) -> None:
    storage = storage_factory(env)
    expected = seed(storage, db_rows=10, local_files=4)
    # --limit bounds the whole run, across sources (DB first, then LOCAL).
    both = MigrateOptions(sources=(Location.DB, Location.LOCAL), limit=12)
    assert plan(storage, both)[0] == 12
    assert migrate_to_s3(storage, MigrateOptions(sources=(Location.DB, Location.LOCAL), limit=12, dry_run=True)).migrated == 12
    assert migrate_to_s3(storage, MigrateOptions(sources=(Location.LOCAL,))).migrated == 4
    assert migrate_to_s3(storage, MigrateOptions(sources=(Location.DB, Location.LOCAL), limit=3)).migrated == 3
    assert migrate_to_s3(storage, MigrateOptions(types=("FLOW_STEP_FILE",))).migrated == 0
    assert assert_consistent(storage, expected) == {"DB": 7, "LOCAL": 0, "S3": 7}


def test_refused_uploads_leave_rows_in_place_and_exit_1(env, set_env, tmp_path) -> None:
    from tests.conftest import READONLY_IDENTITY

    cred = READONLY_IDENTITY[0]["credentials"][0]
    storage = Storage(settings_from(env))
    expected = seed(storage, db_rows=5, local_files=2)
    storage.close()
    set_env(**dict(env, AP_S3_ACCESS_KEY_ID=cred["accessKey"], AP_S3_SECRET_ACCESS_KEY=cred["secretKey"]))
    result = CliRunner().invoke(app, ["migrate-to-s3", "--json"], catch_exceptions=False)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["migrated"], data["failed"]) == (0, 7)
    assert all("refused" in f["reason"] or "Access" in f["reason"] for f in data["failures"])
    with Storage(settings_from(env)) as storage:
        assert assert_consistent(storage, expected) == {"DB": 5, "LOCAL": 2, "S3": 0}


def test_failures_of_one_kind_print_as_one_group_naming_each_key(env, set_env, storage_factory) -> None:
    """Two missing LOCAL files and refused uploads: one line per kind of failure (the key
    written ``<key>`` in it), then the rows it hit with their keys; --json keeps each key."""
    from tests.conftest import READONLY_IDENTITY

    storage = storage_factory(env)
    seed(storage, db_rows=3, local_files=2)
    gone = []
    for _ in range(2):
        file_id = new_id()
        key = object_key(file_id, "FLOW_STEP_FILE", "proj", None)
        storage.catalog.insert(FileRow(id=file_id, type="FLOW_STEP_FILE", location=Location.LOCAL,
                                       project_id="proj", size=4, s3_key=key))
        gone.append((file_id, key))
    cred = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**dict(env, AP_S3_ACCESS_KEY_ID=cred["accessKey"], AP_S3_SECRET_ACCESS_KEY=cred["secretKey"]))
    result = CliRunner().invoke(app, ["migrate-to-s3"], catch_exceptions=False)
    assert result.exit_code == 1
    groups = [line for line in result.stderr.splitlines() if line.startswith("error: not moved")]
    assert len(groups) == 2, result.stderr  # the 5 refused uploads, the 2 missing files
    assert any(line.startswith("error: not moved 5 files:") and "<key>" in line for line in groups), groups
    assert any(line.startswith("error: not moved 2 files:") and "missing" in line for line in groups), groups
    for file_id, key in gone:
        assert f"  {file_id} ({key})" in result.stderr.splitlines()
    data = json.loads(CliRunner().invoke(app, ["migrate-to-s3", "--json"]).stdout)
    assert {(f["id"], f["key"]) for f in data["failures"] if "missing" in f["reason"]} == set(gone)


def test_bad_flags_are_usage_errors(set_env, s3_env) -> None:
    set_env(**s3_env)
    runner = CliRunner()
    for args, needle in (
        (["--from", "s3"], "--from"),
        (["--types", "NOPE"], "--types"),
        (["--types", "SAMPLE_DATA"], "--include-permanent"),
    ):
        result = runner.invoke(app, ["migrate-to-s3", *args], catch_exceptions=False)
        assert result.exit_code == 2, result.output
        assert needle in result.stderr


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    full = dict(os.environ, **env)
    return subprocess.Popen([sys.executable, "-m", "apstorage", "migrate-to-s3", "--json", *args],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def pg_env(make_env, pg_url, s3_env, tmp_path) -> dict[str, str]:
    env = make_env(AP_POSTGRES_URL=pg_url, **s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    with Storage(settings_from(env)) as storage:
        storage.catalog.init_schema()
    return env


def test_sigkill_mid_run_loses_nothing_and_a_rerun_finishes(pg_env) -> None:
    with Storage(settings_from(pg_env)) as storage:
        expected = seed(storage, db_rows=1500, local_files=300)
    proc = _cli(pg_env, "--workers", "2", "--batch-size", "20")
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Storage(settings_from(pg_env)) as storage:
        first = assert_consistent(storage, expected)
    assert first["S3"] < len(expected), "the run finished before it was killed: nothing tested"
    rerun = _cli(pg_env)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["migrated"] == len(expected) - first["S3"]  # nothing done twice
    with Storage(settings_from(pg_env)) as storage:
        assert assert_consistent(storage, expected) == {"DB": 0, "LOCAL": 0, "S3": len(expected)}
        assert list(storage.store(Location.LOCAL).list("")) == []


def test_two_concurrent_runs_split_the_work(pg_env) -> None:
    with Storage(settings_from(pg_env)) as storage:
        expected = seed(storage, db_rows=800, local_files=100)
    runs = [_cli(pg_env, "--batch-size", "25", "--workers", "4") for _ in range(2)]
    reports = []
    for proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))
    assert sum(r["migrated"] for r in reports) == len(expected)
    assert all(r["failed"] == 0 for r in reports)
    with Storage(settings_from(pg_env)) as storage:
        assert assert_consistent(storage, expected) == {"DB": 0, "LOCAL": 0, "S3": len(expected)}


def test_sqlite_allows_one_run_at_a_time(make_env, s3_env, tmp_path) -> None:
    from apstorage.catalog.locks import try_run_lock

    env = make_env(**s3_env)
    with Storage(settings_from(env)) as storage:
        seed(storage, db_rows=3, local_files=0)
        with try_run_lock(storage.catalog, "migrate") as held:
            assert held is not None
            proc = _cli(env)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"one run at a time" in err
