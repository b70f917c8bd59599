"""Ctrl-C and SIGTERM on long runs, in a real subprocess: the run stops after the batch in
hand, prints what it did, exits 128 + signal, and every row still points at bytes that exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from apstorage.model import Location
from apstorage.services.context import Storage
from tests.conftest import settings_from
from tests.test_migrate import assert_consistent, seed

WAIT_LIMIT = 120.0  # seconds: an upper bound on waiting for the run to start, not a threshold


@pytest.fixture
def pg_env(make_env, pg_url, s3_env, tmp_path) -> dict[str, str]:
    env = make_env(AP_POSTGRES_URL=pg_url, **s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    with Storage(settings_from(env)) as storage:
        storage.catalog.init_schema()
    return env


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "apstorage", *args],
        env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _count(storage: Storage, where: str) -> int:
    return int(storage.catalog._execute(f'SELECT count(*) FROM "file" WHERE {where}')[0][0])


def _wait_until(proc: subprocess.Popen, started) -> None:
    """Poll the catalog (not the clock) until ``started()``: the run has visibly begun."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not started():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)


def test_sigint_stops_migrate_after_the_batch_in_hand(pg_env) -> None:
    with Storage(settings_from(pg_env)) as storage:
        expected = seed(storage, db_rows=1800, local_files=200)
        proc = _start(pg_env, "migrate-to-s3", "--batch-size", "10", "--workers", "2")
        _wait_until(proc, lambda: _count(storage, "\"location\" = 'S3'") > 0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == 130, text
        assert out == b""
        summary = [line for line in text.splitlines() if line.startswith("migrate-to-s3: migrated ")]
        assert len(summary) == 1 and "interrupted" in summary[0], text
        where = assert_consistent(storage, expected)  # every row's bytes exist, unchanged
        assert 0 < where["S3"] < len(expected), where  # stopped early, and not before it began
        objects = list(storage.store(Location.S3).list(""))
        assert len(objects) == where["S3"]  # rows flipped = objects present: nothing half done
        assert f"migrated {where['S3']:,} files" in summary[0]


def test_sigterm_stops_sweep_and_reports_what_was_deleted(make_env, s3_env, tmp_path) -> None:
    from tests.test_sweep import OLD, seed as seed_one

    env = make_env(**s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    (tmp_path / "local").mkdir()
    with Storage(settings_from(env)) as storage:
        storage.catalog.init_schema()
        # Rows first (no bytes), then their objects in one put_many: seeding one by one
        # took most of this test's time.
        rows = [seed_one(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=None) for _ in range(600)]
        s3 = storage.store(Location.S3)
        stored = list(s3.put_many(((r.id, r.key, b"some bytes", None) for r in rows), concurrency=32))
        assert [error for _, error in stored if error is not None] == []
        proc = _start(env, "sweep-expired", "--batch-size", "5", "--workers", "1")
        _wait_until(proc, lambda: _count(storage, "1 = 1") < len(rows))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == 128 + signal.SIGTERM, text
        left = _count(storage, "1 = 1")
        assert 0 < left < len(rows)
        assert f"sweep-expired: deleted {len(rows) - left:,} files" in text and "interrupted" in text, text
        # bytes first, then rows: every remaining row still has its object
        assert len(list(s3.list(""))) == left


def test_sigint_stops_gc_after_the_batches_in_flight(make_env, tmp_path) -> None:
    """Ctrl-C during gc: batches in flight finish, no new one starts, the summary says what
    was deleted, exit 130; the LOCAL row of ours keeps its file."""
    from tests.test_gc import seed as seed_gc

    root = tmp_path / "local"
    env = make_env(AP_LOCAL_STORAGE_PATH=str(root))
    with Storage(settings_from(env)) as storage:
        storage.catalog.init_schema()
        ours = seed_gc(storage, "FLOW_RUN_LOG", Location.LOCAL, datetime.now(timezone.utc))
    folder = root / "project" / "gone" / "FLOW_STEP_FILE"
    folder.mkdir(parents=True)
    aged = time.time() - 3 * 86400
    orphans = 30_000
    for i in range(orphans):
        path = folder / f"o{i:06d}"
        path.write_bytes(b"x")
        os.utime(path, (aged, aged))
    proc = _start(env, "gc", "--orphans", "--workers", "1")
    _wait_until(proc, lambda: sum(1 for _ in os.scandir(folder)) < orphans)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text
    left = sum(1 for _ in os.scandir(folder))
    assert 0 < left < orphans, text
    assert f"gc: deleted {orphans - left:,} files" in text and "interrupted" in text, text
    assert (root / ours.key).read_bytes() == b"some bytes"
