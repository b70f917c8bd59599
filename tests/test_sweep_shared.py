"""Several `sweep-expired` runs on one Postgres catalog at once (issue 23): each page is
claimed ``FOR UPDATE SKIP LOCKED`` and held while its bytes and rows are deleted, so the
runs delete disjoint parts, and a run killed mid-batch leaves its batch to the next run.
SQLite runs one sweep at a time and says so; gc keeps a lock of its own.

Every run here is a real process (``python -m apstorage``) against real Postgres and
SeaweedFS; the fault stand-in (tests/s3_faults.py) holds a run's DeleteObjects answer
back to open a deterministic window. Every wait is bounded.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from apstorage.catalog import sweep as sweep_sql
from apstorage.catalog.locks import try_gc_lock
from apstorage.model import FileRow, Location, new_id
from apstorage.services.context import Storage
from tests.integrity import assert_intact
from tests.s3_faults import Answer, Fault

NOW = datetime.now(timezone.utc)
OLD = 45  # days: older than the default 30-day retention
FRESH = 3
WAIT = 120  # seconds: the bound of every wait on a process or an event
TYPE = "FLOW_RUN_LOG"


@pytest.fixture
def pg_env(pg_url, make_env, s3_env) -> dict[str, str]:
    env = make_env(AP_POSTGRES_URL=pg_url, **s3_env)
    storage = Storage(_settings(env))
    storage.catalog.init_schema()
    storage.close()
    return env


def _settings(env: dict[str, str]):
    from tests.conftest import settings_from

    return settings_from(env)


def _proc_env(env: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    out.update(env)
    return out


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`apstorage sweep-expired --json ...` as a process of its own (the real entry point)."""
    return subprocess.Popen(
        [sys.executable, "-m", "apstorage", "sweep-expired", "--json", *args],
        env=_proc_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


def seed(storage: Storage, count: int, age_days: float, *, start_minute: int = 0, key: str | None = None,
         body: bytes | None = None, location: Location = Location.S3) -> list[FileRow]:
    """``count`` rows ``age_days`` old, a minute apart (so claims take them in a known
    order), each with its bytes (one object per row unless ``key`` is shared)."""
    out = []
    for i in range(count):
        file_id = new_id()
        data = body or f"bytes of {file_id}".encode()
        created = NOW - timedelta(days=age_days) + timedelta(minutes=start_minute + i)
        row = FileRow(id=file_id, type=TYPE, location=location, created=created, project_id="proj1",
                      platform_id=None, size=len(data))
        if location is Location.DB:
            out.append(storage.catalog.insert(row, data))
            continue
        row = FileRow(**{**row.__dict__, "s3_key": key or row.key})
        if key is None or i == 0:
            storage.store(Location.S3).put(row.s3_key, io.BytesIO(data), len(data))
        out.append(storage.catalog.insert(row))
    return out


def remaining_ids(storage: Storage) -> set[str]:
    return {r[0] for r in storage.catalog._execute('SELECT "id" FROM "file"')}


def object_exists(storage: Storage, key: str) -> bool:
    return storage.store(Location.S3).exists(key)


@pytest.fixture
def catalog(pg_env, storage_factory):
    """(env, storage, expired rows, kept rows, the key an expired and a fresh row share, the
    key two expired rows share): 60 expired S3 rows, 10 expired DB rows, 10 fresh S3 rows."""
    storage = storage_factory(pg_env)
    expired = seed(storage, 60, OLD) + seed(storage, 10, OLD, start_minute=200, location=Location.DB)
    kept = seed(storage, 10, FRESH)
    held_key = f"project/proj1/{TYPE}/shared-{secrets.token_hex(4)}"
    both = seed(storage, 2, OLD, start_minute=300, key=held_key, body=b"held by a fresh row")
    fresh_sharer = seed(storage, 1, FRESH, start_minute=300, key=held_key, body=b"held by a fresh row")
    gone_key = f"project/proj1/{TYPE}/pair-{secrets.token_hex(4)}"
    pair = seed(storage, 2, OLD, start_minute=400, key=gone_key, body=b"two expired rows")
    return {
        "env": pg_env, "storage": storage, "expired": expired + both + pair, "kept": kept + fresh_sharer,
        "held_key": held_key, "gone_key": gone_key,
    }


def assert_swept(c: dict, total_deleted: int) -> None:
    """Every expired row gone, counted once over the runs; every kept row's bytes intact;
    the key a fresh row shares still there."""
    storage = c["storage"]
    left = remaining_ids(storage)
    assert not left & {r.id for r in c["expired"]}
    assert left == {r.id for r in c["kept"]}
    assert total_deleted == len(c["expired"])
    assert assert_intact(storage) == len(c["kept"])
    for row in c["kept"]:
        assert object_exists(storage, row.s3_key)
    assert object_exists(storage, c["held_key"])


class HoldDeletes:
    """A custom fault for the stand-in: the first ``times`` DeleteObjects requests are
    (with ``forward``) passed to SeaweedFS and their answers held back, or (without) held
    back before anything is deleted, until ``release`` or WAIT seconds."""

    def __init__(self, stand_in, *, forward: bool, times: int = 1) -> None:
        self.stand_in = stand_in
        self.forward = forward
        self.reached = threading.Event()
        self.released = threading.Event()
        self.fault = stand_in.add(Fault("custom", method="POST", query="delete", times=times, handler=self._hold))

    def _hold(self, req) -> Answer | None:
        answer = self.stand_in.forward(req, {}) if self.forward else None
        self.reached.set()
        self.released.wait(WAIT)
        return answer

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), "the held run never sent its DeleteObjects"

    def release(self) -> None:
        self.released.set()


def test_three_concurrent_sweeps_delete_every_expired_row_once(catalog) -> None:
    procs = [start(catalog["env"], "--batch-size", "10", "--workers", "2") for _ in range(3)]
    results = [finish(p) for p in procs]
    for code, data, err in results:
        assert code == 0, err
        assert data["failed"] == 0 and data["lockHeld"] is False
    assert_swept(catalog, sum(data["deleted"] for _, data, _ in results))
    # each run's figures are its own: its bytes add up to what it counted
    assert sum(d["byLocation"].get("DB", 0) for _, d, _ in results) == 10


def test_a_claimed_batch_is_skipped_by_other_runs_and_deleted_by_its_own(catalog, faulty_s3, bucket) -> None:
    """Run A claims its first batch (the 10 oldest rows) and is held before its
    DeleteObjects reaches SeaweedFS; run B, started then, sweeps everything else and never
    touches A's rows or their bytes; released, A deletes exactly its batch."""
    storage = catalog["storage"]
    hold = HoldDeletes(faulty_s3, forward=False)
    a = start({**catalog["env"], **faulty_s3.info.ap_env(bucket)}, "--batch-size", "10", "--workers", "1")
    try:
        hold.wait_reached()
        code, b, err = finish(start(catalog["env"], "--batch-size", "10"))
        assert code == 0, err
        held = catalog["expired"][:10]
        assert b["deleted"] == len(catalog["expired"]) - 10
        assert {r.id for r in held} <= remaining_ids(storage)
        assert all(object_exists(storage, r.s3_key) for r in held)  # B deleted no bytes of A's rows
    finally:
        hold.release()
    code, a_data, err = finish(a)
    assert code == 0, err
    assert a_data["deleted"] == 10
    assert_swept(catalog, a_data["deleted"] + b["deleted"])


def test_a_kill_9_mid_batch_leaves_its_batch_for_the_next_run(catalog, faulty_s3, bucket) -> None:
    """Three runs at once; A is killed (SIGKILL) after SeaweedFS deleted its first batch's
    objects and before it deleted their rows. Postgres rolls A's claim back; B and C go on;
    a run after them deletes what is left, A's batch too (its objects already gone count as
    deleted), and the invariant holds."""
    storage = catalog["storage"]
    hold = HoldDeletes(faulty_s3, forward=True)
    a = start({**catalog["env"], **faulty_s3.info.ap_env(bucket)}, "--batch-size", "10", "--workers", "1")
    try:
        hold.wait_reached()
        others = [start(catalog["env"], "--batch-size", "10", "--workers", "2") for _ in range(2)]
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=WAIT)
        assert a.returncode == -signal.SIGKILL
    finally:
        hold.release()
    results = [finish(p) for p in others]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    code, last, err = finish(start(catalog["env"]))
    assert code == 0, err
    assert_swept(catalog, sum(d["deleted"] for _, d, _ in results) + last["deleted"])
    assert finish(start(catalog["env"]))[1]["deleted"] == 0


def test_concurrent_purge_versions_runs_leave_no_version_of_a_swept_key(pg_url, make_env, seaweed, storage_factory) -> None:
    """--purge-versions on a versioned bucket, two runs at once: every expired row's key has
    no version or delete marker left, a key a fresh row shares keeps all of its versions."""
    client = seaweed.client()
    bucket = f"v-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    env = make_env(AP_POSTGRES_URL=pg_url, **seaweed.ap_env(bucket))
    storage = storage_factory(env)
    storage.catalog.init_schema()

    def put(age: float, key: str | None = None, minute: int = 0) -> FileRow:
        file_id = new_id()
        key = key or f"project/proj1/{TYPE}/{file_id}"
        for body in (b"v1 " + file_id.encode(), b"v2 " + file_id.encode()):
            client.put_object(Bucket=bucket, Key=key, Body=body)
        row = FileRow(id=file_id, type=TYPE, location=Location.S3,
                      created=NOW - timedelta(days=age) + timedelta(minutes=minute),
                      project_id="proj1", platform_id=None, size=len(body), s3_key=key)
        return storage.catalog.insert(row)

    expired = [put(OLD, minute=i) for i in range(40)]
    kept = [put(FRESH, minute=i) for i in range(5)]
    shared = f"project/proj1/{TYPE}/shared-{secrets.token_hex(4)}"
    expired.append(put(OLD, shared, minute=100))
    kept.append(put(FRESH, shared, minute=100))
    procs = [start(env, "--purge-versions", "--batch-size", "5", "--workers", "2") for _ in range(2)]
    results = [finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    assert sum(d["deleted"] for _, d, _ in results) == len(expired)
    assert remaining_ids(storage) == {r.id for r in kept}
    found: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found[entry["Key"]] = found.get(entry["Key"], 0) + 1
    for row in expired[:-1]:
        assert row.s3_key not in found
    for row in kept:
        assert found.get(row.s3_key, 0) >= 2
    assert found[shared] == 4  # both rows' two versions: the fresh row's bytes all stay


def test_sqlite_runs_one_sweep_at_a_time_and_says_so(make_env, storage_factory) -> None:
    env = make_env()
    storage = storage_factory(env)
    row = seed(storage, 1, OLD, location=Location.DB)[0]
    lock = sweep_sql.try_sweep_lock(storage.catalog)
    assert lock is not None
    try:
        code, data, err = finish(start(env))
    finally:
        lock.release()
    assert code == 0 and data["lockHeld"] is True and data["deleted"] == 0
    assert "holds the sweep lock of this SQLite catalog" in err
    assert row.id in remaining_ids(storage)
    code, data, _ = finish(start(env))
    assert code == 0 and data["deleted"] == 1 and data["lockHeld"] is False


def test_postgres_gc_keeps_a_lock_of_its_own_while_sweeps_run(pg_env, storage_factory) -> None:
    """A second gc on Postgres exits 0 and says another gc holds the lock; a sweep is not
    held back by it."""
    storage = storage_factory(pg_env)
    expired = seed(storage, 3, OLD)
    lock = try_gc_lock(storage.catalog)
    assert lock is not None
    try:
        assert try_gc_lock(storage_factory(pg_env).catalog) is None
        proc = subprocess.run([sys.executable, "-m", "apstorage", "gc", "--json"], env=_proc_env(pg_env),
                              capture_output=True, text=True, timeout=WAIT)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["lockHeld"] is True
        assert "another gc run holds the run lock" in proc.stderr
        code, data, err = finish(start(pg_env))
        assert code == 0 and data["deleted"] == 3, err
    finally:
        lock.release()
    assert not remaining_ids(storage) & {r.id for r in expired}
