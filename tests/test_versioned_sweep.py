"""sweep-expired and gc on versioned buckets (issue 21): real SeaweedFS and moto's server
(both keep versions), rclone's S3 server (no versioning API), SQLite and Postgres catalogs.

After every command: each row's bytes exist, at least as a restorable version
(``assert_restorable``), and the figures the report gives match what
``list_object_versions`` shows.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.model import FileRow, Location, new_id
from apstorage.services.context import Storage
from apstorage.stores.s3_versions import OBJECT_LOCK_REASON

NOW = datetime.now(timezone.utc)
OLD = 45  # days: older than the default 30-day retention
FRESH = 3


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _versioned(info, *, lock: bool = False) -> str:
    bucket = f"v-{secrets.token_hex(6)}"
    client = info.client()
    if lock:
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


@pytest.fixture(params=["seaweed", "moto"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def venv(server, catalog_env) -> dict:
    """(env, client, bucket) for a versioned bucket on ``server`` and a catalog."""
    bucket = _versioned(server)
    return {"env": {**catalog_env, **server.ap_env(bucket)}, "client": server.client(), "bucket": bucket}


def put_row(storage: Storage, client, bucket: str, age_days: float, bodies: list[bytes], *,
            key: str | None = None, file_type: str = "FLOW_RUN_LOG") -> FileRow:
    """A row created ``age_days`` ago whose key holds one version per body (the last is
    the current object)."""
    file_id = new_id()
    key = key or f"project/proj1/{file_type}/{file_id}"
    for body in bodies:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    row = FileRow(id=file_id, type=file_type, location=Location.S3, created=NOW - timedelta(days=age_days),
                  project_id="proj1", platform_id=None, size=len(bodies[-1]) if bodies else 0, s3_key=key)
    return storage.catalog.insert(row)


def listing(client, bucket: str) -> dict[str, dict[str, list]]:
    """{key: {"versions": [(id, size, latest)], "markers": [(id, latest)]}} of the whole bucket."""
    out: dict[str, dict[str, list]] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            out.setdefault(v["Key"], {"versions": [], "markers": []})["versions"].append(
                (v["VersionId"], v["Size"], v["IsLatest"]))
        for m in page.get("DeleteMarkers", []):
            out.setdefault(m["Key"], {"versions": [], "markers": []})["markers"].append((m["VersionId"], m["IsLatest"]))
    return out


def rows(storage: Storage) -> list[tuple[str, str | None, str]]:
    return [(r[0], r[1], r[2]) for r in storage.catalog._execute('SELECT "id", "s3Key", "location" FROM "file"')]


def assert_restorable(storage: Storage, client, bucket: str, skip: frozenset = frozenset()) -> int:
    """Every S3 row's key (but the rows in ``skip``, made without bytes) has at least one
    version with bytes (current or noncurrent)."""
    found = listing(client, bucket)
    n = 0
    for file_id, key, location in rows(storage):
        if location != "S3" or file_id in skip:
            continue
        assert found.get(key, {}).get("versions"), f"row {file_id}: no version of {key} left"
        n += 1
    return n


def sweep(runner: CliRunner, *args: str):
    return runner.invoke(app, ["sweep-expired", *args], catch_exceptions=False)


# -- sweep-expired ---------------------------------------------------------------------------


def test_default_sweep_says_the_bytes_stay_and_counts_them_exactly(venv, storage_factory, set_env, runner) -> None:
    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"old" * i, b"x" * (100 + i)]) for i in range(1, 4)]
    kept = put_row(storage, client, bucket, FRESH, [b"fresh bytes"])
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    before = listing(client, bucket)
    dry = json.loads(sweep(runner, "--json", "--dry-run").stdout)
    assert listing(client, bucket) == before
    data = json.loads(sweep(runner, "--json").stdout)
    assert dry["bytesRetained"] == data["bytesRetained"] and dry["bytes"] == data["bytes"]
    assert data["deleted"] == 3 and data["failed"] == 0
    assert data["versioned"] is True and data["versioning"]["status"] == "Enabled"
    found = listing(client, bucket)
    retained = 0
    for row in expired:
        entry = found[row.s3_key]
        assert [latest for _, latest in entry["markers"]] == [True]  # a delete marker is current
        assert not any(latest for _, _, latest in entry["versions"])
        retained += sum(size for _, size, _ in entry["versions"])
    assert data["bytesRetained"] == retained == sum(3 * i + 100 + i for i in range(1, 4))
    assert data["bytes"] == sum(r.size for r in expired)
    assert found[kept.s3_key]["versions"] and assert_restorable(storage, client, bucket) == 1

    # the summary line says so (not a TTY: one line on stderr)
    put_row(storage, client, bucket, OLD, [b"12345"])
    result = sweep(runner)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("\n") == 1
    assert "versioned bucket: 5 B stay as noncurrent versions" in result.stderr
    assert "apstorage lifecycle apply" in result.stderr and "--purge-versions" in result.stderr


def test_purge_versions_removes_every_version_but_never_a_shared_key(venv, storage_factory, set_env, runner) -> None:
    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"a" * i, b"bb" * i, b"c" * (10 + i)]) for i in range(1, 6)]
    # a key two rows hold, one expired and one fresh: its versions are never touched
    shared_key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    shared_old = put_row(storage, client, bucket, OLD, [b"s1", b"shared!"], key=shared_key)
    shared_new = put_row(storage, client, bucket, FRESH, [], key=shared_key)
    fresh = put_row(storage, client, bucket, FRESH, [b"v1", b"fresh"])
    # an expired key whose current object was already deleted (a marker over two versions)
    gone = put_row(storage, client, bucket, OLD, [b"one", b"two!"])
    client.delete_object(Bucket=bucket, Key=gone.s3_key)
    before = listing(client, bucket)
    swept = [*expired, gone]
    want_bytes = sum(size for r in swept for _, size, _ in before[r.s3_key]["versions"])
    want_versions = sum(len(before[r.s3_key]["versions"]) for r in swept)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")

    dry = json.loads(sweep(runner, "--json", "--dry-run", "--purge-versions").stdout)
    assert listing(client, bucket) == before  # a dry run lists, never deletes
    data = json.loads(sweep(runner, "--json", "--purge-versions").stdout)
    assert data["failed"] == 0 and data["deleted"] == len(swept) + 1  # + the shared key's old row
    assert data["purgeVersions"] and data["versioned"]
    assert data["versionsDeleted"] == want_versions and data["deleteMarkersDeleted"] == 1
    # bytes: every deleted version of the purged keys; the shared key's row went, its bytes stayed
    assert data["bytes"] == want_bytes
    assert data["bytesRetained"] == 0
    assert dry["bytes"] == data["bytes"] and dry["versionsDeleted"] == data["versionsDeleted"]
    after = listing(client, bucket)
    for row in swept:
        assert row.s3_key not in after, row.s3_key
    assert after[shared_key] == before[shared_key] and after[fresh.s3_key] == before[fresh.s3_key]
    remaining = {r[0] for r in rows(storage)}
    assert remaining == {shared_new.id, fresh.id}
    assert assert_restorable(storage, client, bucket) == 2


def test_a_run_whose_every_key_another_row_holds_still_knows_the_bucket_is_versioned(venv, storage_factory, set_env,
                                                                                      runner) -> None:
    """No S3 byte is deleted (the fresh row holds the key), yet the bucket was asked: the
    report says versioned, and --purge-versions counts no byte freed (dry run alike)."""
    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    put_row(storage, client, bucket, OLD, [b"x" * 2000], key=key)
    put_row(storage, client, bucket, FRESH, [], key=key)
    before = listing(client, bucket)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    dry = json.loads(sweep(runner, "--json", "--dry-run", "--purge-versions").stdout)
    assert dry["versioned"] is True and dry["bytes"] == 0 and dry["deleted"] == 1
    data = json.loads(sweep(runner, "--json", "--purge-versions").stdout)
    assert data["versioned"] is True and data["versioning"]["status"] == "Enabled"
    assert data["deleted"] == 1 and data["bytes"] == 0 and data["versionsDeleted"] == 0
    assert listing(client, bucket) == before


def test_a_default_run_whose_every_key_is_held_says_versioned(venv, storage_factory, set_env, runner) -> None:
    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    old = put_row(storage, client, bucket, OLD, [b"held"], key=key)
    put_row(storage, client, bucket, FRESH, [], key=key)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    data = json.loads(sweep(runner, "--json").stdout)
    assert data["versioned"] is True and data["deleted"] == 1
    assert data["bytes"] == old.size  # by default "bytes" stays the rows' recorded sizes (README)


def test_purge_versions_on_an_unversioned_store_says_so_once(rclone, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = f"t-{secrets.token_hex(6)}"
    client = rclone.client()
    client.create_bucket(Bucket=bucket)
    env = {**catalog_env, **rclone.ap_env(bucket)}
    storage = storage_factory(env)
    for i in range(3):
        put_row(storage, client, bucket, OLD, [b"z" * (i + 1)])
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = sweep(runner, "--purge-versions", "--verbose")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sum("versioning" in line for line in lines) == 1  # the state, said once (--verbose)
    assert "no versioning API" in result.stderr or "Unversioned" in result.stderr
    assert sum("not versioned" in line for line in lines) == 1
    assert lines[-1].startswith("sweep-expired: deleted 3 files (6 B)") and "versioned bucket" not in lines[-1]
    put_row(storage, client, bucket, OLD, [b"q"])
    data = json.loads(sweep(runner, "--json", "--purge-versions").stdout)
    assert data["deleted"] == 1 and data["versioned"] is False and data["bytesRetained"] == 0
    assert data["versioning"]["versioned"] is False and data["versioning"]["status"] == "Unversioned"
    assert not client.list_objects_v2(Bucket=bucket).get("Contents")


def test_no_s3_involved_never_asks_the_versioning_state(catalog_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(catalog_env)
    storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB,
                                   created=NOW - timedelta(days=OLD), project_id="p", platform_id=None, size=1), b"1")
    set_env(**catalog_env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    data = json.loads(sweep(runner, "--json", "--purge-versions").stdout)
    assert data["deleted"] == 1 and data["versioning"] is None and data["notes"] == []


@pytest.mark.parametrize("server_name", ["seaweed", "moto"])
def test_object_lock_keeps_the_row_grouped_under_one_reason(server_name, request, make_env, storage_factory,
                                                            set_env, runner) -> None:
    """SeaweedFS 4.48 and moto's server both enforce a legal hold on DeleteObjects naming the
    version (SeaweedFS answers a bare AccessDenied, moto names object lock)."""
    info = request.getfixturevalue(server_name)
    bucket = _versioned(info, lock=True)
    client = info.client()
    env = {**make_env(), **info.ap_env(bucket)}
    storage = storage_factory(env)
    locked = [put_row(storage, client, bucket, OLD, [b"old", b"held bytes"]) for _ in range(2)]
    free = [put_row(storage, client, bucket, OLD, [b"free"]) for _ in range(3)]
    for row in locked:
        client.put_object_legal_hold(Bucket=bucket, Key=row.s3_key, LegalHold={"Status": "ON"})
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = sweep(runner, "--purge-versions")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count(OBJECT_LOCK_REASON) == 1, result.stderr  # one group
    assert "2 failed" in result.stderr.splitlines()[-1]
    ids = {r[0] for r in rows(storage)}
    assert ids == {r.id for r in locked}
    found = listing(client, bucket)
    assert all(r.s3_key not in found for r in free)
    assert assert_restorable(storage, client, bucket) == 2
    data = json.loads(sweep(runner, "--purge-versions", "--json").stdout)
    assert data["failed"] == 2 and {f["reason"] for f in data["failures"]} == {OBJECT_LOCK_REASON}
    for row in locked:
        client.put_object_legal_hold(Bucket=bucket, Key=row.s3_key, LegalHold={"Status": "OFF"})


def test_purge_versions_keeps_the_delete_marker_over_a_locked_version(seaweed, make_env, storage_factory,
                                                                       set_env, runner) -> None:
    """An expired row whose object was deleted (a delete marker over its version), the
    version on legal hold: --purge-versions must not delete the marker while the version
    stays, or the locked version would be the current object again. The row is kept,
    still restorable; another row's key without a lock goes whole."""
    bucket = _versioned(seaweed, lock=True)
    client = seaweed.client()
    env = {**make_env(), **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    row = put_row(storage, client, bucket, OLD, [b"held bytes"])
    held = client.list_object_versions(Bucket=bucket, Prefix=row.s3_key)["Versions"][0]["VersionId"]
    client.put_object_legal_hold(Bucket=bucket, Key=row.s3_key, VersionId=held, LegalHold={"Status": "ON"})
    client.delete_object(Bucket=bucket, Key=row.s3_key)  # a delete marker is the key's latest
    free = put_row(storage, client, bucket, OLD, [b"free"])
    client.delete_object(Bucket=bucket, Key=free.s3_key)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    try:
        result = sweep(runner, "--purge-versions", "--json")
        assert result.exit_code == 1, result.stdout
        data = json.loads(result.stdout)
        assert data["failed"] == 1 and {f["reason"] for f in data["failures"]} == {OBJECT_LOCK_REASON}
        after = listing(client, bucket)
        assert [latest for _, latest in after[row.s3_key]["markers"]] == [True], after[row.s3_key]
        assert [v for v, _, _ in after[row.s3_key]["versions"]] == [held]
        assert free.s3_key not in after and data["deleteMarkersDeleted"] == 1 and data["versionsDeleted"] == 1
        assert {r[0] for r in rows(storage)} == {row.id}
        assert assert_restorable(storage, client, bucket) == 1
    finally:
        client.put_object_legal_hold(Bucket=bucket, Key=row.s3_key, VersionId=held, LegalHold={"Status": "OFF"})


def test_purge_versions_sends_a_batch_as_parts_at_once(seaweed, faulty_s3, make_env, storage_factory) -> None:
    """A batch of 400 expired keys is purged as parts (S3_PARTS, at least MIN_PART keys
    each), each listing and deleting its own range: their DeleteObjects are in flight
    together; every version of every swept key goes, the fresh key keeps its own."""
    import threading

    from apstorage.services.sweep import MIN_PART, S3_PARTS
    from tests.s3_faults import Fault

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **faulty_s3.info.ap_env(bucket)}
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"v1", b"version two"]) for _ in range(400)]
    fresh = put_row(storage, client, bucket, FRESH, [b"f1", b"fresh"])
    lock, state = threading.Lock(), {"now": 0, "most": 0, "deletes": 0}

    def overlapping(req):  # each DeleteObjects takes a little while: parts sent at once overlap
        with lock:
            state["now"] += 1
            state["deletes"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        return None  # forwarded to SeaweedFS as sent

    faulty_s3.add(Fault("custom", method="POST", query="delete", handler=overlapping))
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    proc_env.update(env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    done = subprocess.run([sys.executable, "-m", "apstorage", "sweep-expired", "--purge-versions", "--batch-size",
                           "1000", "--workers", "1", "--json"], env=proc_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["deleted"] == 400 and report["versionsDeleted"] == 800 and report["failed"] == 0
    assert state["deletes"] >= min(S3_PARTS, 400 // MIN_PART)
    assert state["most"] >= 2, state  # the parts were in flight together
    after = listing(client, bucket)
    assert not any(row.s3_key in after for row in expired)
    assert len(after[fresh.s3_key]["versions"]) == 2
    assert {r[0] for r in rows(storage)} == {fresh.id}


def test_kill_during_purge_then_a_rerun_finishes(seaweed, faulty_s3, make_env, storage_factory, tmp_path) -> None:
    """SIGKILL while `sweep-expired --purge-versions` deletes: no row is gone whose key still
    has a version, the fresh rows keep theirs, and a re-run deletes every expired row and
    leaves no version of it."""
    from tests.s3_faults import Fault

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **faulty_s3.info.ap_env(bucket)}
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"v1", b"version two"]) for _ in range(120)]
    fresh = [put_row(storage, client, bucket, FRESH, [b"f1", b"fresh"]) for _ in range(5)]

    def slow(req):  # each DeleteObjects takes a while: the kill lands mid-run
        time.sleep(0.15)
        return None

    faulty_s3.add(Fault("custom", method="POST", query="delete", handler=slow))
    db = Path(env["AP_CONFIG_PATH"]) / "apstorage.sqlite"
    cmd = [sys.executable, "-m", "apstorage", "sweep-expired", "--purge-versions", "--batch-size", "10",
           "--workers", "2"]
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    proc_env.update(env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    proc = subprocess.Popen(cmd, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with sqlite3.connect(db) as conn:
                left = conn.execute('SELECT count(*) FROM "file"').fetchone()[0]
            if left <= len(expired) + len(fresh) - 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = listing(client, bucket)
    remaining = {r[0] for r in rows(storage)}
    assert remaining < {r.id for r in expired + fresh} and len(remaining) > len(fresh)
    for row in expired:
        if row.id not in remaining:
            assert row.s3_key not in found, "a row was deleted while its key still had a version"
    for row in fresh:
        assert row.id in remaining and len(found[row.s3_key]["versions"]) == 2
    faulty_s3.clear()
    proc2 = subprocess.run(cmd + ["--json"], env=proc_env, capture_output=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    data = json.loads(proc2.stdout)
    assert data["failed"] == 0
    assert {r[0] for r in rows(storage)} == {r.id for r in fresh}
    found = listing(client, bucket)
    assert not any(r.s3_key in found for r in expired)
    assert assert_restorable(storage, client, bucket) == len(fresh)


# -- gc --------------------------------------------------------------------------------------


LATER = NOW + timedelta(days=2)  # gc's clock: everything written by the test is older than the grace


def _orphan(client, bucket: str, bodies: list[bytes], *, marker: bool = False, drop_versions: bool = False) -> str:
    key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    ids = [client.put_object(Bucket=bucket, Key=key, Body=b)["VersionId"] for b in bodies]
    if marker:
        client.delete_object(Bucket=bucket, Key=key)
    if drop_versions:
        for vid in ids:
            client.delete_object(Bucket=bucket, Key=key, VersionId=vid)
    return key


def _gc_scene(storage: Storage, client, bucket: str) -> dict:
    refs = [put_row(storage, client, bucket, FRESH, [b"r1", b"ref bytes"]) for _ in range(4)]
    restorable = put_row(storage, client, bucket, OLD, [b"precious", b"precious!"])
    client.delete_object(Bucket=bucket, Key=restorable.s3_key)  # current gone, versions stay
    gone = put_row(storage, client, bucket, OLD, [])  # no version at all: missing
    return {
        "refs": refs, "restorable": restorable, "gone": gone,
        "a": _orphan(client, bucket, [b"a1", b"a-two"]),  # an orphan with a current object
        "b": _orphan(client, bucket, [b"b1", b"b-two!"], marker=True),  # versions under a marker
        "c": _orphan(client, bucket, [b"c1"], marker=True, drop_versions=True),  # a lone marker
    }


def _sizes(entry: dict) -> int:
    return sum(size for _, size, _ in entry["versions"])


def test_gc_orphans_takes_orphan_versions_and_keeps_referenced_and_restorable_keys(venv, storage_factory) -> None:
    from apstorage.services.gc import collect_garbage

    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    scene = _gc_scene(storage, client, bucket)
    before = listing(client, bucket)
    kept_keys = [r.s3_key for r in scene["refs"]] + [scene["restorable"].s3_key]

    dry = collect_garbage(storage, kinds=("orphans", "missing"), now=LATER, dry_run=True).to_json()
    assert listing(client, bucket) == before
    report = collect_garbage(storage, kinds=("orphans", "missing"), now=LATER).to_json()
    assert report["failed"] == 0 and report["versioned"] is True
    after = listing(client, bucket)
    # the orphan with a current object: a delete marker, its bytes counted as retained
    a = after[scene["a"]]
    assert [latest for _, latest in a["markers"]] == [True] and len(a["versions"]) == 2
    assert report["bytesRetained"] == _sizes(a) == _sizes(before[scene["a"]])
    assert report["orphans"]["files"] == 1
    # versions under a marker, and a lone marker: gone, the versions counted as orphan
    # versions, the markers apart (no bytes, no file)
    assert scene["b"] not in after and scene["c"] not in after
    assert report["orphanVersions"]["files"] == 2 and report["deleteMarkers"]["files"] == 1 + 1
    assert report["orphanVersions"]["bytes"] == _sizes(before[scene["b"]]) and report["deleteMarkers"]["bytes"] == 0
    assert report["deleted"] == report["orphans"]["files"] + report["missing"]["files"] + 2
    version_kinds = ("orphanVersions", "deleteMarkers")
    taken = sorted((i["key"], i["versionId"]) for i in report["items"] if i["kind"] in version_kinds)
    want = sorted([(scene["b"], v) for v, _, _ in before[scene["b"]]["versions"]]
                  + [(scene["b"], m) for m, _ in before[scene["b"]]["markers"]]
                  + [(scene["c"], m) for m, _ in before[scene["c"]]["markers"]])
    assert taken == want
    dry_taken = sorted((i["key"], i["versionId"]) for i in dry["items"] if i["kind"] in version_kinds)
    assert dry_taken == want and dry["orphanVersions"] == report["orphanVersions"]
    assert dry["deleteMarkers"] == report["deleteMarkers"]
    assert dry["bytesRetained"] == report["bytesRetained"]
    # the restorable row is counted apart, never deleted; the row with no version is
    assert report["restorable"] == 1 and report["restorableRows"][0]["id"] == scene["restorable"].id
    assert report["missing"]["files"] == 1
    ids = {r[0] for r in rows(storage)}
    assert scene["restorable"].id in ids and scene["gone"].id not in ids
    for key in kept_keys:
        assert after[key] == before[key]
    assert assert_restorable(storage, client, bucket) == 5

    # a later run takes the versions the first one's delete made noncurrent
    again = collect_garbage(storage, kinds=("orphans",), now=LATER + timedelta(days=1)).to_json()
    assert again["orphanVersions"]["files"] == 2 and again["orphanVersions"]["bytes"] == _sizes(a)
    assert again["deleteMarkers"]["files"] == 1
    final = listing(client, bucket)
    assert scene["a"] not in final and all(final[k] == before[k] for k in kept_keys)


def test_gc_purge_versions_deletes_orphans_with_every_version(venv, storage_factory) -> None:
    from apstorage.services.gc import collect_garbage

    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    scene = _gc_scene(storage, client, bucket)
    before = listing(client, bucket)
    dry = collect_garbage(storage, kinds=("orphans",), now=LATER, purge_versions=True, dry_run=True).to_json()
    assert listing(client, bucket) == before
    report = collect_garbage(storage, kinds=("orphans",), now=LATER, purge_versions=True).to_json()
    assert dry["bytes"] == report["bytes"] and dry["deleted"] == report["deleted"]
    after = listing(client, bucket)
    assert report["failed"] == 0 and report["purgeVersions"]
    assert scene["a"] not in after and scene["b"] not in after and scene["c"] not in after
    assert report["orphans"]["bytes"] == _sizes(before[scene["a"]]) and report["bytesRetained"] == 0
    assert report["bytes"] == sum(_sizes(before[scene[k]]) for k in "abc")
    for row in scene["refs"] + [scene["restorable"]]:
        assert after[row.s3_key] == before[row.s3_key]
    assert assert_restorable(storage, client, bucket, frozenset({scene["gone"].id})) == 5


def _restorable_scene(storage: Storage, client, bucket: str) -> FileRow:
    """Three fresh rows with their objects, and an old row whose current object was
    deleted (a delete marker; its bytes stay as a version): restorable."""
    for _ in range(3):
        put_row(storage, client, bucket, FRESH, [b"ok"])
    row = put_row(storage, client, bucket, OLD, [b"precious"])
    client.delete_object(Bucket=bucket, Key=row.s3_key)
    return row


def test_gc_cli_names_restore_for_a_restorable_row(venv, storage_factory, set_env, runner) -> None:
    env, client, bucket = venv["env"], venv["client"], venv["bucket"]
    storage = storage_factory(env)
    row = _restorable_scene(storage, client, bucket)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = runner.invoke(app, ["gc", "--missing", "--verbose"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "S3 bucket versioning: Enabled" in result.stderr
    assert "restorable" in result.stderr and "apstorage restore" in result.stderr
    assert row.id in {r[0] for r in rows(storage)}
    quiet = runner.invoke(app, ["gc", "--missing", "-q"], catch_exceptions=False)
    assert (quiet.exit_code, quiet.stderr) == (0, ""), quiet.stderr  # --quiet: failures only
    data = json.loads(runner.invoke(app, ["gc", "--missing", "--json"]).stdout)
    assert data["restorable"] == 1 and data["missing"]["files"] == 0 and data["versioning"]["status"] == "Enabled"


def test_gc_on_a_store_without_versioning(rclone, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = f"t-{secrets.token_hex(6)}"
    client = rclone.client()
    client.create_bucket(Bucket=bucket)
    env = {**catalog_env, **rclone.ap_env(bucket)}
    storage = storage_factory(env)
    for _ in range(3):
        put_row(storage, client, bucket, FRESH, [b"ok"])
    gone = put_row(storage, client, bucket, OLD, [])
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = runner.invoke(app, ["gc", "--missing", "--verbose", "--purge-versions"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert sum("versioning" in line for line in result.stderr.splitlines()) == 1
    assert result.stderr.count("not versioned") == 1
    assert gone.id not in {r[0] for r in rows(storage)}
    data = json.loads(runner.invoke(app, ["gc", "--json"]).stdout)
    assert data["versioning"]["status"] == "Unversioned" and data["versioned"] is False  # rclone: an empty state


def test_gc_object_lock_keeps_the_locked_version(seaweed, make_env, storage_factory, capsys) -> None:
    """Orphan keys under a delete marker whose one version is on legal hold: the locked
    version stays and the key's delete marker with it (deleting the marker would make the
    locked version the current object again: the orphan back); the other versions go; the
    refusals print as one grouped line."""
    from apstorage.cli.gc import _messages
    from apstorage.cli.output import Output
    from apstorage.services.gc import collect_garbage

    bucket = _versioned(seaweed, lock=True)
    client = seaweed.client()
    env = {**make_env(), **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    for _ in range(3):
        put_row(storage, client, bucket, FRESH, [b"ok"])
    keys, held = [], {}
    for _ in range(2):
        key = _orphan(client, bucket, [b"held", b"free!"], marker=True)
        first = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        held[key] = next(v["VersionId"] for v in first if v["Size"] == 4)  # the version b"held"
        client.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=held[key], LegalHold={"Status": "ON"})
        keys.append(key)
    try:
        result = collect_garbage(storage, kinds=("orphans",), now=LATER)
        report = result.to_json()
        assert report["failed"] == 2 and {f["reason"] for f in report["failures"]} == {OBJECT_LOCK_REASON}
        after = listing(client, bucket)
        for key in keys:
            assert [v for v, _, _ in after[key]["versions"]] == [held[key]]  # b"free!" went
            assert [latest for _, latest in after[key]["markers"]] == [True], after[key]  # still no current object
        assert report["orphanVersions"]["files"] == 2 and report["deleteMarkers"]["files"] == 0
        assert report["orphans"]["files"] == 0  # nothing came back to be judged an orphan
        capsys.readouterr()
        _messages(Output(), result, None)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "kept 2 files" in errors[0] and "object lock" in errors[0], errors
    finally:
        for key in keys:
            client.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=held[key], LegalHold={"Status": "OFF"})


def test_purge_versions_of_a_key_the_version_listing_cannot_show(seaweed, make_env, storage_factory, set_env,
                                                                  runner) -> None:
    """SeaweedFS lists a key with a control character as another name (U+FFFD) in
    ListObjectVersions: its versions cannot be found, so its row is kept (exit 1, one
    reason), never deleted while its bytes stay; gc never judges the renamed entries."""
    from apstorage.services.gc import collect_garbage

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    odd = put_row(storage, client, bucket, OLD, [b"one", b"two"], key=f"project/proj1/FLOW_RUN_LOG/a\x01{new_id()}")
    plain = put_row(storage, client, bucket, OLD, [b"three"])
    for _ in range(3):
        put_row(storage, client, bucket, FRESH, [b"ok"])
    before = client.list_object_versions(Bucket=bucket, Prefix=odd.s3_key)["Versions"]
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = sweep(runner, "--json", "--purge-versions")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["failed"] == 1 and data["deleted"] == 1 and data["versionsDeleted"] == 1
    assert "version listing does not show this key" in data["failures"][0]["reason"]
    assert odd.id in {r[0] for r in rows(storage)} and plain.s3_key not in listing(client, bucket)
    report = collect_garbage(storage, kinds=("orphans",), now=LATER).to_json()
    assert report["orphanVersions"]["files"] == 0 and report["skipped"].get("unreadableName") == 2
    assert client.list_object_versions(Bucket=bucket, Prefix=odd.s3_key)["Versions"] == before


def test_suspended_bucket_counts_what_a_plain_delete_leaves(server, request, make_env, storage_factory, set_env,
                                                            runner) -> None:
    """Suspended versioning keeps the versions written while it was enabled; a plain delete
    there removes the current ``null`` version (AWS S3 user guide, "Deleting objects from
    versioning-suspended buckets"): bytesRetained counts only what the listing still shows.
    (moto's server drops the enabled-time version when a ``null`` one is written: there
    nothing stays, and the report says 0.)"""
    bucket = _versioned(server)
    client = server.client()
    env = {**make_env(), **server.ap_env(bucket)}
    storage = storage_factory(env)
    key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    client.put_object(Bucket=bucket, Key=key, Body=b"written while enabled")
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    row = put_row(storage, client, bucket, OLD, [b"null version"], key=key)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    data = json.loads(sweep(runner, "--json").stdout)
    assert data["deleted"] == 1 and data["versioning"]["status"] == "Suspended" and data["versioned"]
    left = listing(client, bucket).get(row.s3_key, {"versions": [], "markers": []})
    assert data["bytesRetained"] == _sizes(left)
    if request.node.callspec.params["server"] == "seaweed":
        assert _sizes(left) == len(b"written while enabled")


def test_suspended_bucket_a_noncurrent_null_version_goes_with_a_plain_delete(seaweed, make_env, storage_factory,
                                                                            set_env, runner) -> None:
    """A key written before versioning was enabled (its ``null`` version), then again while
    enabled, then the bucket suspended: the ``null`` version is noncurrent, and a plain
    delete still replaces it with the ``null`` delete marker. bytesRetained counts the
    version written while enabled only, as the listing shows afterwards. (SeaweedFS only:
    moto's server 5.2 lists nothing at all for such a key after the delete, not even the
    marker, which is no S3 behaviour to check figures against.)"""
    server = seaweed
    bucket = f"v-{secrets.token_hex(6)}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    env = {**make_env(), **server.ap_env(bucket)}
    storage = storage_factory(env)
    key = f"project/proj1/FLOW_RUN_LOG/{new_id()}"
    client.put_object(Bucket=bucket, Key=key, Body=b"before versioning: null")
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    row = put_row(storage, client, bucket, OLD, [b"while enabled"], key=key)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    before = listing(client, bucket)[key]["versions"]
    assert any(v[0] == "null" and not v[2] for v in before), before  # a noncurrent null version
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    data = json.loads(sweep(runner, "--json").stdout)
    assert data["deleted"] == 1 and data["versioning"]["status"] == "Suspended"
    left = listing(client, bucket).get(row.s3_key, {"versions": [], "markers": []})
    assert data["bytesRetained"] == _sizes(left) == len(b"while enabled"), (data["bytesRetained"], left)


# -- a versioning state that cannot be read ---------------------------------------------------


@pytest.fixture
def refused_versioning(seaweed, faulty_s3, make_env):
    """(env, client, bucket) for a versioned SeaweedFS bucket behind the stand-in, which
    answers GetBucketVersioning with 403 AccessDenied (a policy without
    s3:GetBucketVersioning); everything else reaches SeaweedFS."""
    from tests.s3_faults import Fault

    bucket = _versioned(seaweed)
    faulty_s3.add(Fault("status", method="GET", query="versioning", status=403, code="AccessDenied"))
    return {"env": {**make_env(), **faulty_s3.info.ap_env(bucket)}, "client": seaweed.client(), "bucket": bucket}


def test_gc_missing_never_deletes_a_restorable_row_when_versioning_is_refused(refused_versioning, storage_factory,
                                                                             set_env, runner) -> None:
    """A refused GetBucketVersioning is an unknown state, never "not versioned": the rows
    without a current object have their versions listed, and a restorable one is kept."""
    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    row = _restorable_scene(storage, client, bucket)
    set_env(**env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = runner.invoke(app, ["gc", "--missing", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["restorable"] == 1 and data["missing"]["files"] == 0, data
    assert data["versioning"]["status"] == "Unknown" and "s3:GetBucketVersioning" in data["versioning"]["note"]
    assert row.id in {r[0] for r in rows(storage)}
    assert assert_restorable(storage, client, bucket) == 4
    text = runner.invoke(app, ["gc", "--missing"], catch_exceptions=False)
    assert "GetBucketVersioning was refused" in text.stderr and "may be versioned" in text.stderr


def test_purge_versions_frees_the_bytes_when_versioning_is_refused(refused_versioning, storage_factory,
                                                                  set_env, runner) -> None:
    """--purge-versions on an unknown state lists and deletes every version (it never says
    "plain deletes already free the bytes"); the kept row keeps its versions."""
    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"v1", b"two"]) for _ in range(3)]
    fresh = put_row(storage, client, bucket, FRESH, [b"f1", b"fresh"])
    set_env(**env)
    result = sweep(runner, "--purge-versions", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deleted"] == 3 and data["versionsDeleted"] == 6, data
    assert "not versioned" not in result.stderr
    found = listing(client, bucket)
    assert all(r.s3_key not in found for r in expired)
    assert len(found[fresh.s3_key]["versions"]) == 2


def test_a_plain_sweep_counts_what_stays_when_versioning_is_refused(refused_versioning, storage_factory,
                                                                   set_env, runner) -> None:
    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    for _ in range(2):
        put_row(storage, client, bucket, OLD, [b"12345", b"1234567"])
    set_env(**env)
    result = sweep(runner, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deleted"] == 2 and data["versioned"] is True and data["bytesRetained"] == 24, data
    assert data["versioning"]["status"] == "Unknown"
    for _ in range(2):
        put_row(storage, client, bucket, OLD, [b"x"])
    quiet = sweep(runner, "-q")  # the state could not be read: a warning, even with --quiet
    assert quiet.exit_code == 0 and quiet.stderr.startswith("warning: GetBucketVersioning was refused"), quiet.stderr


def test_restore_and_check_iam_when_versioning_is_refused(refused_versioning, storage_factory, set_env,
                                                          runner) -> None:
    """restore still finds the version to copy back; check-iam fails list-versions naming
    s3:GetBucketVersioning (exit 1), and runs the other version checks."""
    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    row = put_row(storage, client, bucket, FRESH, [b"bring me back"])
    client.delete_object(Bucket=bucket, Key=row.s3_key)
    set_env(**env)
    result = runner.invoke(app, ["restore", row.id], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "warning: GetBucketVersioning was refused" in result.stderr and "may be versioned" in result.stderr
    assert client.get_object(Bucket=bucket, Key=row.s3_key)["Body"].read() == b"bring me back"
    iam = runner.invoke(app, ["check-iam", "--json"], catch_exceptions=False)
    assert iam.exit_code == 1, iam.stdout
    checks = {c["name"]: c for c in json.loads(iam.stdout)["checks"]}
    assert checks["list-versions"]["status"] == "failed" and "s3:GetBucketVersioning" in json.dumps(checks["list-versions"])
    assert checks["get-version"]["status"] == "passed" and checks["delete-versions"]["status"] == "passed", checks


def test_a_refused_version_delete_names_s3_delete_object_version(seaweed, faulty_s3, make_env, storage_factory,
                                                                 set_env, runner) -> None:
    """Every version delete answered AccessDenied per key (a policy with s3:DeleteObject
    but not s3:DeleteObjectVersion; no lock on the bucket): the rows stay, one grouped
    line names the permission, exit 1."""
    import re

    from tests.s3_faults import Answer, Fault

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **faulty_s3.info.ap_env(bucket)}
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"v1", b"two"]) for _ in range(3)]

    def refuse_versions(req):
        pairs = re.findall(rb"<Key>(.*?)</Key>\s*<VersionId>(.*?)</VersionId>", req.body)
        if not pairs:
            return None
        errors = b"".join(b"<Error><Key>%s</Key><VersionId>%s</VersionId><Code>AccessDenied</Code>"
                          b"<Message>Access Denied</Message></Error>" % pair for pair in pairs)
        return Answer(200, {"Content-Type": "application/xml"},
                      b'<?xml version="1.0" encoding="UTF-8"?><DeleteResult '
                      b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + errors + b"</DeleteResult>")

    faulty_s3.add(Fault("custom", method="POST", query="delete", handler=refuse_versions))
    set_env(**env)
    result = sweep(runner, "--purge-versions")
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s3:DeleteObjectVersion" in errors[0] and "kept 3 files" in errors[0], result.stderr
    assert {r.id for r in expired} <= {r[0] for r in rows(storage)}
    assert assert_restorable(storage, client, bucket) == 3


def test_du_says_unknown_and_counts_versions_when_versioning_is_refused(refused_versioning, storage_factory,
                                                                       set_env, runner) -> None:
    """du under a refused GetBucketVersioning: the versions are counted as on a versioned
    bucket (the listing answers) and the state is "Unknown", never "Unversioned"."""
    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    put_row(storage, client, bucket, FRESH, [b"one", b"two!"])
    set_env(**env)
    data = json.loads(runner.invoke(app, ["du", "--json"], catch_exceptions=False).stdout)
    v = data["s3Versions"]
    assert v["versioning"] == "Unknown" and v["checked"] is True, v
    assert v["noncurrentVersions"] == {"count": 1, "bytes": 3} and v["currentObjects"]["count"] == 1


def test_lifecycle_apply_includes_the_versioned_rules_when_versioning_is_refused(refused_versioning, set_env,
                                                                                 runner) -> None:
    """An unknown state may be versioned: lifecycle apply writes the noncurrent-version and
    delete-marker rules too (on a bucket that turns out unversioned they remove nothing),
    and says why in one warning."""
    from apstorage.services.lifecycle import VERSIONED_RULE_IDS

    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    set_env(**env)
    result = runner.invoke(app, ["lifecycle", "apply"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    ids = {r["ID"] for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(VERSIONED_RULE_IDS) <= ids, ids
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "s3:GetBucketVersioning" in warnings[0] and "included" in warnings[0], warnings


def test_a_refused_version_listing_names_s3_list_bucket_versions(seaweed, faulty_s3, make_env, storage_factory,
                                                                 set_env, runner) -> None:
    """ListObjectVersions refused (403): sweep --purge-versions keeps the rows, one grouped
    line naming s3:ListBucketVersions, exit 1."""
    from tests.s3_faults import Fault

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **faulty_s3.info.ap_env(bucket)}
    storage = storage_factory(env)
    expired = [put_row(storage, client, bucket, OLD, [b"v1", b"two"]) for _ in range(3)]
    faulty_s3.add(Fault("status", method="GET", query="versions", status=403, code="AccessDenied"))
    set_env(**env)
    result = sweep(runner, "--purge-versions")
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s3:ListBucketVersions" in errors[0] and "kept 3 files" in errors[0], result.stderr
    assert {r.id for r in expired} <= {r[0] for r in rows(storage)}


def test_a_plain_sweep_says_when_the_bytes_that_stay_are_not_measured(refused_versioning, faulty_s3,
                                                                      storage_factory, set_env, runner) -> None:
    """Versioning and the version listing both refused: the rows are swept (a plain delete
    needs neither), bytesRetained falls back to the rows' sizes, and a note says they were
    not measured — never a figure presented as measured."""
    from tests.s3_faults import Fault

    env, client, bucket = refused_versioning["env"], refused_versioning["client"], refused_versioning["bucket"]
    storage = storage_factory(env)
    for _ in range(2):
        put_row(storage, client, bucket, OLD, [b"12345", b"1234567"])
    faulty_s3.add(Fault("status", method="GET", query="versions", status=403, code="AccessDenied"))
    set_env(**env)
    result = sweep(runner, "--json")
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["deleted"] == 2 and data["bytesRetained"] == 14, data
    assert any("not measured" in note and "s3:ListBucketVersions" in note for note in data["notes"]), data["notes"]


@pytest.mark.parametrize("stalled, versioned", [("DeleteObjects", False), ("DeleteObjects", True),
                                                ("ListObjectVersions", True)],
                         ids=["deletes, unversioned", "deletes, versioned", "version listing"])
def test_gc_gives_up_on_a_stalled_store_with_exit_8(seaweed, faulty_s3, make_env, storage_factory, stalled,
                                                   versioned) -> None:
    """Only the deletes (or only the version listing) stall: gc gives up as every command
    does (BackendUnavailableError: exit 8, naming the host), never "kept N files" (exit 1)
    nor a note and exit 0 while orphan versions pile up."""
    from apstorage.errors import BackendUnavailableError
    from apstorage.services.gc import collect_garbage
    from tests.s3_faults import Fault

    client = seaweed.client()
    bucket = _versioned(seaweed) if versioned else f"u-{secrets.token_hex(6)}"
    if not versioned:
        client.create_bucket(Bucket=bucket)
    env = {**make_env(), **faulty_s3.info.ap_env(bucket), "AP_S3_TIMEOUT_SECONDS": "1"}
    storage = storage_factory(env)
    for _ in range(3):
        put_row(storage, client, bucket, FRESH, [b"ok"])
    client.put_object(Bucket=bucket, Key=f"project/proj1/FLOW_RUN_LOG/{new_id()}", Body=b"orphan")
    if stalled == "DeleteObjects":
        faulty_s3.add(Fault("stall", method="POST", query="delete", delay=30))
    else:
        _orphan(client, bucket, [b"old", b"older"], marker=True)
        faulty_s3.add(Fault("stall", method="GET", query="versions", delay=30))
    with pytest.raises(BackendUnavailableError) as caught:
        collect_garbage(storage, kinds=("orphans",), now=LATER)
    assert urlsplit(faulty_s3.endpoint).netloc in str(caught.value)


@pytest.mark.parametrize("wrong", ["secret", "bucket"])
def test_a_sweep_with_wrong_credentials_or_bucket_names_that_not_a_permission(seaweed, make_env, storage_factory,
                                                                           set_env, runner, wrong) -> None:
    """A wrong secret (SignatureDoesNotMatch) or a missing bucket fails every request:
    not a refused GetBucketVersioning. The S3 rows are kept under that one reason, no hint
    to grant s3:GetBucketVersioning or s3:ListBucketVersions, exit 1; the DB rows are still
    swept."""
    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**make_env(), **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    kept = [put_row(storage, client, bucket, OLD, [b"s3 bytes"]) for _ in range(3)]
    db_row = storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB,
                                            created=NOW - timedelta(days=OLD), project_id="proj1", size=2), b"db")
    bad = {"AP_S3_SECRET_ACCESS_KEY": "not-the-secret"} if wrong == "secret" else {"AP_S3_BUCKET": f"{bucket}-gone"}
    set_env(**{**env, **bad})
    result = sweep(runner, "--purge-versions")
    assert result.exit_code == 1, result.stderr
    assert "GetBucketVersioning" not in result.stderr and "ListBucketVersions" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "kept 3 files" in errors[0], result.stderr
    assert ("SignatureDoesNotMatch" if wrong == "secret" else "does not exist") in errors[0]
    ids = {r[0] for r in rows(storage)}
    assert {r.id for r in kept} <= ids and db_row.id not in ids


def test_two_expired_rows_of_one_key_in_two_batches_leave_one_delete_marker(seaweed, catalog_env,
                                                                           storage_factory) -> None:
    """Two expired rows share each key and fall in different batches: the first batch keeps
    the bytes (the other row still holds them), the second deletes them — once. The end of
    the run, which deletes the keys kept for rows that are gone since, must not delete them
    again: on a versioned bucket that wrote a second delete marker per key."""
    from apstorage.services.sweep import sweep_expired

    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = {**catalog_env, **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    firsts = [put_row(storage, client, bucket, OLD + 2, [b"shared bytes"]) for _ in range(5)]
    for row in firsts:  # the second row of each key, newer: in a later batch
        put_row(storage, client, bucket, OLD + 1, [], key=row.s3_key)
    report = sweep_expired(storage, batch_size=5, workers=1, retention_days=30)
    assert report.deleted == 10 and report.failed == 0, report
    found = listing(client, bucket)
    for row in firsts:
        assert len(found[row.s3_key]["markers"]) == 1, found[row.s3_key]
        assert len(found[row.s3_key]["versions"]) == 1
    assert rows(storage) == []
