"""`gc` against real catalogs (SQLite, Postgres) and real stores (LOCAL, SeaweedFS).

A real S3 server stamps every object with its own clock, so an S3 orphan cannot be made
an hour old in a test: those tests call the service with ``now`` a few days ahead (the
library's clock, not a command-line flag). LOCAL files are aged with ``os.utime`` and the
command runs with the real clock.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.catalog import du as du_sql
from apstorage.catalog.locks import try_gc_lock
from apstorage.cli import app
from apstorage.errors import NotFoundError
from apstorage.model import PENDING_UPLOAD_KEY, FileRow, Location, iso_utc, new_id
from apstorage.services import du as du_service
from apstorage.services.context import Storage
from apstorage.services.gc import collect_garbage
from apstorage.services.files import PutRequest, put_file
from apstorage.services.presign import UploadFile, UploadRequest, presign_uploads

NOW = datetime.now(timezone.utc)
LATER = NOW + timedelta(days=3)  # the clock S3 tests judge ages by
DAY = 86400


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def full_env(catalog_env, s3_env, tmp_path) -> dict[str, str]:
    files = tmp_path / "files"
    files.mkdir()
    return {**catalog_env, **s3_env, "AP_LOCAL_STORAGE_PATH": str(files)}


@pytest.fixture
def local_env(catalog_env, tmp_path) -> dict[str, str]:
    files = tmp_path / "files"
    files.mkdir()
    return {**catalog_env, "AP_LOCAL_STORAGE_PATH": str(files)}


def seed(storage: Storage, file_type: str, location: Location, created: datetime, *,
         data: bytes | None = b"some bytes", metadata: dict | None = None,
         project: str = "proj1") -> FileRow:
    """A row created at ``created``; its bytes stored unless ``data`` is None."""
    row = FileRow(id=new_id(), type=file_type, location=location, created=created,
                  project_id=project, size=len(data or b"") or 10, metadata=metadata)
    if location is Location.DB:
        return storage.catalog.insert(row, data)
    row = FileRow(**{**row.__dict__, "s3_key": row.key})
    if data is not None:
        storage.store(location).put(row.key, io.BytesIO(data), len(data))
    return storage.catalog.insert(row)


def orphan(storage: Storage, location: Location, *, age: float | None = None, project: str = "gone") -> str:
    """An object no row points at; LOCAL files are aged ``age`` seconds."""
    key = f"project/{project}/FLOW_STEP_FILE/{new_id()}"
    if location is Location.S3:
        storage.store(location).put(key, io.BytesIO(b"orphan!"), 7)
        return key
    path = Path(storage.settings.local_storage_path) / key  # plain writes: no fsync per file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"orphan!")
    if age is not None:
        t = time.time() - age
        os.utime(path, (t, t))
    return key


def row_exists(storage: Storage, file_id: str) -> bool:
    try:
        storage.catalog.get(file_id)
    except NotFoundError:
        return False
    return True


def object_exists(storage: Storage, location: Location, key: str) -> bool:
    return storage.store(location).stat(key) is not None


def every_row_has_its_bytes(storage: Storage) -> list[str]:
    """The invariant: ids of rows whose bytes are gone (empty when it holds)."""
    lost = []
    for location in (Location.S3, Location.LOCAL):
        if location is Location.S3 and not storage.settings.s3_bucket:
            continue
        for row in du_sql.iter_rows_by_id(storage.catalog, location.value):
            if storage.store(location).stat(row.key) is None:
                lost.append(row.id)
    rows = storage.catalog._execute('SELECT "id" FROM "file" WHERE "location" = \'DB\' AND "data" IS NULL')
    return lost + [r[0] for r in rows]


def snapshot(storage: Storage) -> tuple:
    rows = sorted(r[0] for r in storage.catalog._execute('SELECT "id" FROM "file"'))
    objects = sorted(o.key for o in storage.store(Location.S3).list("")) if storage.settings.s3_bucket else []
    files = sorted(o.key for o in storage.store(Location.LOCAL).list(""))
    return rows, objects, files


def plant_everything(storage: Storage) -> dict[str, list]:
    """Every kind, and everything gc must keep, in every location."""
    old = NOW - timedelta(days=10)
    gone: dict[str, list] = {"objects": [], "rows": []}
    kept: dict[str, list] = {"objects": [], "rows": []}
    # Rows with their bytes: kept, old or not, permanent or not.
    for location in Location:
        kept["rows"].append(seed(storage, "FLOW_RUN_LOG", location, old))
        kept["rows"].append(seed(storage, "FLOW_BUNDLE", location, old))
    kept["rows"].append(seed(storage, "PLATFORM_ASSET", Location.DB, old))
    # Orphans: S3 (old by LATER's clock) and LOCAL (aged on disk); a young LOCAL one.
    for _ in range(3):
        gone["objects"].append((Location.S3, orphan(storage, Location.S3)))
        gone["objects"].append((Location.LOCAL, orphan(storage, Location.LOCAL, age=-DAY)))
    kept["objects"].append((Location.LOCAL, orphan(storage, Location.LOCAL, age=-3 * DAY + 600)))
    # An object whose row still lives at DB (a migration that uploaded, then stopped).
    waiting = seed(storage, "FLOW_RUN_LOG", Location.DB, old)
    key = waiting.key
    storage.store(Location.S3).put(key, io.BytesIO(b"some bytes"), 10)
    kept["rows"].append(waiting)
    kept["objects"].append((Location.S3, key))
    # Execution rows whose bytes are gone: deleted. Young ones (created after the run
    # began, by LATER's clock within the grace): kept.
    for location in Location:
        gone["rows"].append(seed(storage, "TRIGGER_PAYLOAD", location, old, data=None))
    kept["rows"].append(seed(storage, "TRIGGER_PAYLOAD", Location.S3, NOW + timedelta(days=1), data=None))
    # Permanent rows and FLOW_BUNDLE without bytes: kept and reported.
    reported = [
        seed(storage, "SAMPLE_DATA", Location.DB, old, data=None),
        seed(storage, "FLOW_BUNDLE", Location.S3, old, data=None),
        seed(storage, "PROJECT_RELEASE", Location.LOCAL, old, data=None),
    ]
    kept["rows"].extend(reported)
    # Pending uploads: expired with no object (deleted), expired but uploaded (kept), in
    # flight (kept).
    expired = {PENDING_UPLOAD_KEY: iso_utc(LATER - timedelta(hours=2))}
    gone["rows"].append(seed(storage, "FLOW_STEP_FILE", Location.S3, old, data=None, metadata=expired))
    kept["rows"].append(seed(storage, "FLOW_STEP_FILE", Location.S3, old, metadata=expired))
    in_flight = {PENDING_UPLOAD_KEY: iso_utc(LATER + timedelta(minutes=5))}
    kept["rows"].append(seed(storage, "FLOW_STEP_FILE", Location.S3, old, data=None, metadata=in_flight))
    return {"gone": gone, "kept": kept, "reported": reported}


def assert_outcome(storage: Storage, planted: dict) -> None:
    for location, key in planted["gone"]["objects"]:
        assert not object_exists(storage, location, key), key
    for row in planted["gone"]["rows"]:
        assert not row_exists(storage, row.id), row
    for location, key in planted["kept"]["objects"]:
        assert object_exists(storage, location, key), key
    for row in planted["kept"]["rows"]:
        assert row_exists(storage, row.id), row


# -- the judged scenario -------------------------------------------------------------------


def test_gc_cleans_every_kind_and_nothing_else(full_env, storage_factory) -> None:
    storage = storage_factory(full_env)
    planted = plant_everything(storage)
    before = snapshot(storage)

    dry = collect_garbage(storage, dry_run=True, now=LATER)
    assert snapshot(storage) == before  # --dry-run changes nothing
    report = collect_garbage(storage, now=LATER)

    assert_outcome(storage, planted)
    # --dry-run said exactly what the real run did.
    assert dry.to_json()["orphans"] == report.to_json()["orphans"]
    assert dry.to_json()["missing"] == report.to_json()["missing"]
    assert dry.to_json()["pending"] == report.to_json()["pending"]
    # ... item by item: the same objects and rows, each named.
    def named(r):
        return sorted((i["kind"], i["location"], i["key"] or "", i["id"] or "") for i in r.items)
    assert named(dry) == named(report) and len(report.items) == report.deleted == 10
    assert {(loc.value, key) for loc, key in planted["gone"]["objects"]} == {
        (i["location"], i["key"]) for i in report.items if i["kind"] == "orphans"}
    assert {r.id for r in planted["gone"]["rows"]} == {i["id"] for i in report.items if i["id"]}
    assert report.orphans.files == 6 and report.orphans.by_location == {"S3": [3, 21], "LOCAL": [3, 21]}
    assert report.missing.files == 3 and set(report.missing.by_location) == {"S3", "LOCAL", "DB"}
    assert report.pending.files == 1
    assert report.failed == 0
    # Permanent rows (and FLOW_BUNDLE) without bytes: reported, never deleted; exit 1.
    assert sorted(r["id"] for r in report.reported) == sorted(r.id for r in planted["reported"])
    assert not report.ok
    # Nothing else is gone: what remains is exactly what was kept.
    rows, objects, files = snapshot(storage)
    assert set(rows) == {r.id for r in planted["kept"]["rows"]}
    # A second run finds nothing more to delete and reports the same rows.
    again = collect_garbage(storage, now=LATER)
    assert again.deleted == 0 and again.reported_count == 3


def test_kinds_are_chosen_one_by_one(full_env, storage_factory) -> None:
    storage = storage_factory(full_env)
    planted = plant_everything(storage)
    only_pending = collect_garbage(storage, kinds=["pending"], now=LATER)
    assert (only_pending.orphans.files, only_pending.missing.files, only_pending.pending.files) == (0, 0, 1)
    assert only_pending.reported_count == 0  # reporting belongs to --missing
    only_orphans = collect_garbage(storage, kinds=["orphans"], now=LATER)
    assert (only_orphans.orphans.files, only_orphans.missing.files) == (6, 0)
    for row in planted["gone"]["rows"][:3]:  # the missing ones are still there
        assert row_exists(storage, row.id)
    only_missing = collect_garbage(storage, kinds=["missing"], now=LATER)
    assert only_missing.missing.files == 3
    assert_outcome(storage, planted)


def test_presign_upload_marks_rows_pending_and_gc_judges_them(full_env, storage_factory) -> None:
    storage = storage_factory(full_env)
    result = presign_uploads(
        storage, UploadRequest("FLOW_RUN_LOG", project_id="proj1"),
        [UploadFile("a.txt", 5), UploadFile("b.txt", 5)], "1h",
    )
    a, b = result.items
    row = storage.catalog.get(a.id)
    assert row.metadata == {PENDING_UPLOAD_KEY: iso_utc(a.expires_at)}
    request = urllib.request.Request(a.url, data=b"hello", method="PUT", headers=a.headers)
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    # Judged now, both URLs are alive: nothing is touched.
    assert collect_garbage(storage, kinds=["pending"]).deleted == 0
    # Judged after the URLs expired (plus the margin): the one that never came goes.
    report = collect_garbage(storage, kinds=["pending"], now=a.expires_at + timedelta(hours=1))
    assert report.pending.files == 1
    assert row_exists(storage, a.id) and not row_exists(storage, b.id)


def test_a_listing_in_folder_order_starts_over_and_counts_once(local_env, storage_factory) -> None:
    """Projects `p` and `p-x`: a directory walk lists `project/p/...` first, byte order puts
    `project/p-x/...` first; the pass starts over in folder order and nothing is counted
    twice, deleted wrongly, or missed."""
    storage = storage_factory(local_env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5), project=p)
            for p in ("p", "p-x") for _ in range(3)]
    keys = [orphan(storage, Location.LOCAL, age=2 * DAY, project=p) for p in ("p", "p-x") for _ in range(4)]
    dry = collect_garbage(storage, dry_run=True)
    report = collect_garbage(storage)
    assert dry.orphans.files == report.orphans.files == 8
    assert dry.missing.files == report.missing.files == 0 and report.reported_count == 0
    assert not any(object_exists(storage, Location.LOCAL, k) for k in keys)
    assert all(row_exists(storage, r.id) and object_exists(storage, Location.LOCAL, r.key) for r in rows)


def test_a_file_a_link_reaches_is_not_an_orphan(local_env, storage_factory) -> None:
    """Row A's key is a symbolic link to a file no row names: A reads its bytes through it,
    so gc keeps the file (and never touches the link)."""
    storage = storage_factory(local_env)
    target_key = orphan(storage, Location.LOCAL, age=2 * DAY)
    root = Path(local_env["AP_LOCAL_STORAGE_PATH"])
    row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.LOCAL, created=NOW - timedelta(days=5),
                  project_id="proj1", size=7)
    link = root / row.key
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(root / target_key)
    storage.catalog.insert(FileRow(**{**row.__dict__, "s3_key": row.key}))
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW)  # a LOCAL row with its file: the root is ours
    plain = orphan(storage, Location.LOCAL, age=2 * DAY)
    report = collect_garbage(storage)
    assert (root / target_key).is_file() and link.is_symlink()
    assert not object_exists(storage, Location.LOCAL, plain)
    # The file is not an orphan, and the row whose key is the link is not missing.
    # (The link row is the LOCAL location's only row: with no row found with its bytes
    # there, rows are held back as a wrong root would be, and never judged.)
    assert report.orphans.files == 1 and report.skipped.get("linked", 0) >= 1
    assert report.missing.files == 0 and report.failed == 0 and report.ok
    assert row_exists(storage, row.id)


# -- safety beside other commands ------------------------------------------------------------


def test_a_row_that_appears_after_the_listing_keeps_its_object(full_env, storage_factory) -> None:
    """The re-check in each batch's transaction: a row inserted between the listing and
    the delete (here: right as the listing runs) keeps the object it points at."""
    storage = storage_factory(full_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=5))
    keys = [orphan(storage, Location.S3) for _ in range(5)]
    late = FileRow(id=keys[2].rsplit("/", 1)[1], type="FLOW_STEP_FILE", location=Location.S3,
                   project_id="gone", size=7, s3_key=keys[2])
    other = storage_factory(full_env)
    inserted = []

    def progress(event: str, n: int) -> None:
        if event == "listed" and not inserted:
            inserted.append(other.catalog.insert(late))

    report = collect_garbage(storage, kinds=["orphans"], now=LATER, on_progress=progress)
    assert inserted
    assert object_exists(storage, Location.S3, keys[2])
    assert [object_exists(storage, Location.S3, k) for k in keys].count(True) == 1
    assert report.orphans.files == 4 and report.skipped.get("referenced") == 1


@pytest.mark.parametrize("form", ["project/proj1//FLOW_STEP_FILE/{}.bin", "project/proj1/FLOW_STEP_FILE/a\\{}"],
                         ids=["empty segment", "backslash"])
def test_a_key_the_store_lists_under_another_name_keeps_its_object(full_env, storage_factory, form) -> None:
    """A row written by another tool with a key holding an empty segment (``a//b``) or a
    backslash (``a\\b``): SeaweedFS files both as ``a/b`` and lists that name. The listed
    name is not an orphan, however the store lists it, and the row keeps its bytes."""
    storage = storage_factory(full_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=5))
    key = form.format(new_id())  # does not end in the row's id
    storage.store(Location.S3).put(key, io.BytesIO(b"kept bytes"), 10)
    row = storage.catalog.insert(FileRow(id=new_id(), type="FILE", location=Location.S3,
                                         project_id="proj1", size=10, s3_key=key,
                                         created=NOW - timedelta(days=5)))
    listed = {i.key for i in storage.store(Location.S3).list("project/")}
    gone = orphan(storage, Location.S3)

    report = collect_garbage(storage, kinds=["orphans"], now=LATER)
    assert not object_exists(storage, Location.S3, gone) and report.orphans.files == 1
    assert storage.store(Location.S3).get(row.s3_key) == b"kept bytes"
    assert every_row_has_its_bytes(storage) == []
    if key not in listed:  # the store listed it under its collapsed name
        assert report.skipped.get("aliased") == 1


def test_put_and_presigned_upload_during_gc_survive(full_env, storage_factory, set_env, tmp_path) -> None:
    """`put` (to LOCAL and to S3) and `presign --upload` + PUT while `gc` deletes 1,000
    orphans: every new row keeps its bytes."""
    storage = storage_factory(full_env)
    set_env(**full_env)
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    for _ in range(1000):
        orphan(storage, Location.LOCAL, age=3 * DAY)
    writers = {
        location: storage_factory({**full_env, "AP_FILE_STORAGE_LOCATION": location.value})
        for location in (Location.LOCAL, Location.S3)
    }
    source = tmp_path / "payload"
    source.write_bytes(b"live bytes")
    proc = subprocess.Popen([sys.executable, "-m", "apstorage", "gc", "--orphans", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    made = []
    try:
        while proc.poll() is None and len(made) < 60:
            for location, writer in writers.items():
                row = put_file(writer, PutRequest(str(source), "FLOW_RUN_LOG", project_id="live"))
                made.append((row.id, location, row.key))
            upload = presign_uploads(writers[Location.S3], UploadRequest("FLOW_RUN_LOG", project_id="live"),
                                     [UploadFile("u.txt", 3)], "1h").items[0]
            request = urllib.request.Request(upload.url, data=b"abc", method="PUT", headers=upload.headers)
            with urllib.request.urlopen(request) as response:
                assert response.status == 200
            made.append((upload.id, Location.S3, upload.s3_key))
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert made and json.loads(out)["orphans"]["files"] == 1000
    for file_id, location, key in made:
        assert row_exists(storage, file_id)
        assert object_exists(storage, location, key), (location, key)
    assert every_row_has_its_bytes(storage) == []


def test_kill_9_during_gc_then_a_rerun_keeps_the_invariant(local_env, storage_factory, set_env) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    kept = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(10)]
    gone = [seed(storage, "WEBHOOK_PAYLOAD", Location.LOCAL, NOW - timedelta(days=5), data=None) for _ in range(10)]
    keys = [orphan(storage, Location.LOCAL, age=3 * DAY) for _ in range(2000)]
    root = Path(local_env["AP_LOCAL_STORAGE_PATH"])
    proc = subprocess.Popen([sys.executable, "-m", "apstorage", "gc"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = root / "project" / "gone" / "FLOW_STEP_FILE"
    for _ in range(20_000):  # until the first batch of orphans is gone
        if proc.poll() is not None or len(os.listdir(folder)) < len(keys):
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # Killed mid-run: rows with bytes all kept; what is gone is gone completely.
    assert set(every_row_has_its_bytes(storage)) <= {r.id for r in gone}
    for row in kept:
        assert row_exists(storage, row.id) and object_exists(storage, Location.LOCAL, row.key)
    rerun = subprocess.run([sys.executable, "-m", "apstorage", "gc", "--json"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert every_row_has_its_bytes(storage) == []
    assert not any(object_exists(storage, Location.LOCAL, k) for k in keys)
    for row in kept:
        assert row_exists(storage, row.id) and object_exists(storage, Location.LOCAL, row.key)
    assert not any(row_exists(storage, r.id) for r in gone)


# -- the command -------------------------------------------------------------------------------


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, ["gc", *args], catch_exceptions=False)


def test_the_summary_counts_one_orphan_in_the_singular(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    orphan(storage, Location.LOCAL, age=2 * DAY)
    done = invoke(runner, "--orphans")
    assert done.exit_code == 0, done.stderr
    assert "deleted 1 file (7 B)" in done.stderr and "; 1 orphan, 0 failed" in done.stderr, done.stderr


def test_cli_on_local_with_the_real_clock(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    old = [orphan(storage, Location.LOCAL, age=2 * DAY) for _ in range(3)]
    young = orphan(storage, Location.LOCAL, age=3 * 3600)  # older than 1h, younger than 24h
    before = snapshot(storage)

    refused = invoke(runner, "--grace", "59m")
    assert refused.exit_code == 2 and "--grace" in refused.stderr
    assert snapshot(storage) == before

    dry = invoke(runner, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["orphans"]["files"] == 3 and json.loads(dry.stdout)["dryRun"] is True
    assert sorted(i["key"] for i in json.loads(dry.stdout)["items"]) == sorted(old)
    assert snapshot(storage) == before
    listed = invoke(runner, "--dry-run")  # the human report names each one too
    assert listed.exit_code == 0 and all(f"would delete orphans LOCAL {k}" in listed.stdout for k in old)
    assert snapshot(storage) == before

    done = invoke(runner, "--orphans", "--json")
    data = json.loads(done.stdout)
    assert done.exit_code == 0
    assert data["orphans"] == {"files": 3, "bytes": 21, "byLocation": {"LOCAL": {"files": 3, "bytes": 21}}}
    assert set(data) >= {"missing", "pending", "deleted", "bytes", "failed", "reported", "dryRun", "skipped"}
    assert not any(object_exists(storage, Location.LOCAL, k) for k in old)
    assert object_exists(storage, Location.LOCAL, young)

    shorter = invoke(runner, "--grace", "2h", "--json")  # now the 3 h old one goes
    assert json.loads(shorter.stdout)["orphans"]["files"] == 1
    assert not object_exists(storage, Location.LOCAL, young)


def test_cli_young_s3_orphan_is_never_taken(full_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(full_env)
    set_env(**full_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=5))
    key = orphan(storage, Location.S3)  # a put between its bytes and its row looks like this
    result = invoke(runner, "--grace", "1h", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["orphans"]["files"] == 0
    assert object_exists(storage, Location.S3, key)


def test_cli_permanent_rows_without_bytes_exit_1(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    lost = seed(storage, "USER_PROFILE_PICTURE", Location.DB, NOW - timedelta(days=40), data=None)
    result = invoke(runner, "--missing")
    assert result.exit_code == 1
    assert lost.id in result.stderr and "never deleted" in result.stderr
    assert row_exists(storage, lost.id)


def test_cli_lock_held_exits_0_and_says_so(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    key = orphan(storage, Location.LOCAL, age=2 * DAY)
    seed(storage, "FLOW_RUN_LOG", Location.DB, NOW)
    lock = try_gc_lock(storage.catalog)  # what a running gc holds (and, on SQLite, a sweep)
    assert lock is not None
    try:
        result = invoke(runner)
    finally:
        lock.release()
    assert result.exit_code == 0
    assert "holds the run lock" in result.stderr
    assert object_exists(storage, Location.LOCAL, key)


def test_max_delete_stops_and_says_so(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    seed(storage, "FLOW_RUN_LOG", Location.DB, NOW)
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW)  # a LOCAL row with its file: the root is ours
    keys = [orphan(storage, Location.LOCAL, age=2 * DAY) for _ in range(25)]
    result = invoke(runner, "--max-delete", "10")
    assert result.exit_code == 0
    assert "--max-delete 10" in result.stderr
    assert [object_exists(storage, Location.LOCAL, k) for k in keys].count(False) == 10


def test_wrong_configuration_deletes_nothing(local_env, storage_factory, tmp_path) -> None:
    """An empty catalog judges no orphans; a LOCAL root holding none of its rows' files
    deletes no rows."""
    storage = storage_factory(local_env)
    key = orphan(storage, Location.LOCAL, age=2 * DAY)
    report = collect_garbage(storage)
    assert report.deleted == 0 and object_exists(storage, Location.LOCAL, key)
    assert any("no rows" in note for note in report.notes)

    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(12)]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    wrong = storage_factory({**local_env, "AP_LOCAL_STORAGE_PATH": str(empty)})
    report = collect_garbage(wrong, kinds=["missing"])
    assert report.deleted == 0 and all(row_exists(storage, r.id) for r in rows)
    assert any("configuration looks wrong" in note for note in report.notes)


def test_a_fresh_install_with_no_rows_and_no_objects_gives_a_silent_cron_gc(full_env, set_env, runner) -> None:
    """An empty catalog with empty stores is a fresh install, not a wrong configuration:
    gc (as cron runs it, stderr not a terminal) prints nothing and exits 0; a dry run
    answers with one line."""
    set_env(**full_env)
    result = invoke(runner)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    dry = invoke(runner, "--dry-run")
    assert dry.exit_code == 0 and dry.stdout == ""
    assert dry.stderr.strip().startswith("gc would delete nothing") and len(dry.stderr.strip().splitlines()) == 1


def test_an_empty_catalog_beside_a_store_with_objects_warns_once(full_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(full_env)
    key = orphan(storage, Location.S3, age=2 * DAY)
    set_env(**full_env)
    result = invoke(runner, "--orphans")
    assert result.exit_code == 0 and object_exists(storage, Location.S3, key)
    assert result.stderr.count("the catalog has no rows at all") == 1


@pytest.mark.parametrize("absent", [1, 4])
def test_a_few_rows_under_a_wrong_root_are_not_deleted(local_env, storage_factory, tmp_path, absent) -> None:
    """However few the rows, a location where none has its bytes points at a wrong
    AP_LOCAL_STORAGE_PATH (or AP_S3_BUCKET), not at lost data: no row is deleted."""
    storage = storage_factory(local_env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(absent)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wrong = storage_factory({**local_env, "AP_LOCAL_STORAGE_PATH": str(elsewhere)})
    report = collect_garbage(wrong, kinds=["missing"])
    assert report.deleted == 0 and all(row_exists(storage, r.id) for r in rows)
    assert any("configuration looks wrong" in note for note in report.notes)


def test_a_wrong_root_holding_another_deployments_files_loses_none(local_env, storage_factory, tmp_path) -> None:
    """AP_LOCAL_STORAGE_PATH pointing at another deployment's root: its old files are not
    ours to judge — with no row of ours found there, no orphan is deleted (nor any row)."""
    storage = storage_factory(local_env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(3)]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    wrong = storage_factory({**local_env, "AP_LOCAL_STORAGE_PATH": str(theirs)})
    keys = [orphan(wrong, Location.LOCAL, age=5 * DAY, project="theirs") for _ in range(5)]
    for dry_run in (True, False):
        report = collect_garbage(wrong, dry_run=dry_run)
        assert report.deleted == 0 and report.orphans.files == 0, report
        assert all(object_exists(wrong, Location.LOCAL, key) for key in keys)
        assert all(row_exists(storage, r.id) for r in rows)
        assert any("no LOCAL orphan was deleted" in note for note in report.notes)


@pytest.mark.parametrize("form", ["project/proj1//FLOW_RUN_LOG/{}", "project/proj1/../proj1/FLOW_RUN_LOG/{}",
                                  "/project/proj1/FLOW_RUN_LOG/{}", "./project/proj1/FLOW_RUN_LOG/{}"])
def test_a_local_key_the_store_refuses_keeps_its_row_and_file(local_env, storage_factory, form) -> None:
    """A LOCAL row whose key the store will not resolve (``//``, ``..``, a leading ``/``
    or ``./``) while the platform's path joining reaches its file: the row is never judged
    missing, the file never an orphan, and the dry run says what the real run does."""
    storage = storage_factory(local_env)
    for _ in range(3):
        seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    file_id = new_id()
    canonical = f"project/proj1/FLOW_RUN_LOG/{file_id}"
    path = Path(storage.settings.local_storage_path) / canonical
    path.write_bytes(b"hello")
    t = time.time() - 3 * DAY
    os.utime(path, (t, t))
    storage.catalog.insert(FileRow(id=file_id, type="FLOW_RUN_LOG", location=Location.LOCAL, project_id="proj1",
                                   size=5, s3_key=form.format(file_id), created=NOW - timedelta(days=3)))
    gone = orphan(storage, Location.LOCAL, age=2 * DAY)
    dry = collect_garbage(storage, dry_run=True)
    report = collect_garbage(storage)
    assert row_exists(storage, file_id) and path.read_bytes() == b"hello"
    assert [(i["kind"], i["key"]) for i in dry.items] == [(i["kind"], i["key"]) for i in report.items] == [
        ("orphans", gone)]


@pytest.mark.parametrize("copied", [1, 48], ids=["one file", "two files in five"])
def test_a_stale_copy_holding_few_files_of_the_catalog_deletes_nothing(local_env, storage_factory, tmp_path, copied) -> None:
    """AP_LOCAL_STORAGE_PATH pointing at a stale copy of the root that holds one file of
    the catalog among a hundred and twenty, or 48 of them: a location where most rows lack
    their bytes is not trusted — no row is judged missing, no file an orphan."""
    storage = storage_factory(local_env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(120)]
    stale = tmp_path / "stale"
    for row in rows[:copied]:
        copy = stale / row.key
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(b"some bytes")
    wrong = storage_factory({**local_env, "AP_LOCAL_STORAGE_PATH": str(stale)})
    keys = [orphan(wrong, Location.LOCAL, age=5 * DAY, project="theirs") for _ in range(3)]
    for dry_run in (True, False):
        report = collect_garbage(wrong, dry_run=dry_run)
        assert report.deleted == 0 and report.items == [], report.items[:3]
        assert any("configuration looks wrong" in note for note in report.notes), report.notes
    assert all(row_exists(storage, r.id) for r in rows)
    assert all(object_exists(wrong, Location.LOCAL, k) for k in keys)


def test_a_file_name_that_is_not_utf8_is_an_orphan_not_a_crash(local_env, storage_factory, set_env, runner) -> None:
    """A stray file whose name is not UTF-8 under the LOCAL root: no row can name it, so
    it is an orphan (deleted after the grace); du --verify and gc --json stay one JSON
    document, the name escaped."""
    storage = storage_factory(local_env)
    set_env(**local_env)
    kept = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    folder = os.fsencode(Path(storage.settings.local_storage_path) / "project" / "proj1" / "FLOW_RUN_LOG")
    stray = os.path.join(folder, b"bad\xff\xfe")
    with open(stray, "wb") as fh:
        fh.write(b"x")
    t = time.time() - 3 * DAY
    os.utime(stray, (t, t))
    verify = runner.invoke(app, ["du", "--verify", "--json"], catch_exceptions=False)
    assert verify.exit_code in (0, 1) and json.loads(verify.stdout)["verify"], verify.stderr
    dry = invoke(runner, "--dry-run")
    assert dry.exit_code == 0 and "bad\\udcff\\udcfe" in dry.stdout, (dry.stdout, dry.stderr)
    done = invoke(runner, "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["orphans"]["files"] == 1
    assert not os.path.exists(stray) and row_exists(storage, kept.id)


def test_max_delete_spent_still_reports_permanent_rows_without_bytes(local_env, storage_factory, set_env, runner) -> None:
    """--max-delete spent exactly, or early: the run says it stopped there, and a permanent
    DB row whose bytes are gone is still reported (exit 1) — a cron job that always hits
    its cap must still surface data loss."""
    storage = storage_factory(local_env)
    set_env(**local_env)
    for _ in range(3):
        seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    keys = [orphan(storage, Location.LOCAL, age=2 * DAY) for _ in range(3)]
    lost = seed(storage, "SAMPLE_DATA", Location.DB, NOW - timedelta(days=5), data=None)
    # listed after the orphans (project/zz sorts last): judged once the budget is spent
    bundle = seed(storage, "FLOW_BUNDLE", Location.LOCAL, NOW - timedelta(days=5), data=None, project="zz")
    for cap in ("1", "2"):  # 1 of 3, then exactly the 2 left
        result = invoke(runner, "--max-delete", cap, "--json")
        data = json.loads(result.stdout)
        assert result.exit_code == 1, result.stderr
        assert data["maxDeleteReached"] is True
        assert sorted(r["id"] for r in data["reported"]) == sorted([lost.id, bundle.id])
    assert not any(object_exists(storage, Location.LOCAL, k) for k in keys)
    assert row_exists(storage, lost.id) and row_exists(storage, bundle.id)


def test_max_delete_is_spent_only_on_what_is_deleted(local_env, storage_factory, set_env, runner) -> None:
    """Candidates the batch re-check keeps (here files rows reach through a key the store
    files under another name, listed first) spend none of --max-delete: the real
    orphans after them go."""
    storage = storage_factory(local_env)
    set_env(**local_env)
    root = Path(storage.settings.local_storage_path)
    for _ in range(3):
        file_id = new_id()
        path = root / "platform" / "aa" / "FLOW_RUN_LOG" / file_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"kept")
        t = time.time() - 3 * DAY
        os.utime(path, (t, t))
        storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.LOCAL,
                                       platform_id="aa", size=4, s3_key=f"platform/aa//FLOW_RUN_LOG/{file_id}",
                                       created=NOW - timedelta(days=3)))
    for _ in range(3):
        seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    keys = [orphan(storage, Location.LOCAL, age=2 * DAY, project="zz") for _ in range(2)]
    result = invoke(runner, "--max-delete", "3", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert data["orphans"]["files"] == 2 and data["maxDeleteReached"] is False
    assert not any(object_exists(storage, Location.LOCAL, k) for k in keys)
    assert len(list((root / "platform" / "aa" / "FLOW_RUN_LOG").iterdir())) == 3


def test_a_few_rows_without_bytes_among_many_are_deleted(local_env, storage_factory) -> None:
    storage = storage_factory(local_env)
    kept = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(5)]
    lost = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5))
    storage.store(Location.LOCAL).delete(lost.key)
    report = collect_garbage(storage, kinds=["missing"])
    assert report.deleted == 1 and not row_exists(storage, lost.id)
    assert all(row_exists(storage, r.id) for r in kept)


def test_du_verify_hints_name_gc(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5), data=None)
    orphan(storage, Location.LOCAL, age=2 * DAY)
    result = runner.invoke(app, ["du", "--verify", "--json"], catch_exceptions=False)
    verify = json.loads(result.stdout)["verify"]
    assert "apstorage gc --orphans" in verify["orphans"]["clean"]
    assert "apstorage gc --missing" in verify["missing"]["clean"]
    assert "apstorage gc --pending" in verify["missing"]["clean"]
    for text in du_service.CLEAN_SHORT.values():
        assert "no command yet" not in text


# -- what the catalog itself costs -------------------------------------------------------------


def test_footprint_postgres_matches_pg_total_relation_size(pg_url, make_env, storage_factory, set_env, runner) -> None:
    env = make_env(AP_POSTGRES_URL=pg_url)
    storage = storage_factory(env)
    storage.catalog.init_schema()
    rows = [seed(storage, "FLOW_RUN_LOG", Location.DB, NOW, data=os.urandom(200_000)) for _ in range(20)]
    for row in rows[:15]:
        storage.catalog.delete(row.id)
    set_env(**env)
    data = json.loads(runner.invoke(app, ["du", "--json"], catch_exceptions=False).stdout)["catalog"]
    (total, table, indexes, data_bytes) = storage.catalog._execute(
        "SELECT pg_total_relation_size('\"file\"'::regclass), pg_table_size('\"file\"'::regclass), "
        "pg_indexes_size('\"file\"'::regclass), (SELECT SUM(octet_length(data)) FROM \"file\")"
    )[0]
    assert data["onDisk"] == total
    assert data["table"] + data["toast"] == table and data["indexes"] == indexes
    assert data["table"] + data["toast"] + data["indexes"] == total
    assert data["dataBytes"] == data_bytes == 5 * 200_000 and data["rows"] == 5
    # 15 deleted rows of 200 kB (random, incompressible) are dead until VACUUM FULL.
    assert data["reclaimable"] >= 10 * 200_000
    assert data["reclaimable"] <= data["toast"] + data["table"]
    assert data["vacuum"] == 'VACUUM FULL "file"'
    assert "every row" in data["method"]


def test_footprint_postgres_samples_a_large_table(pg_url, make_env, storage_factory, monkeypatch) -> None:
    storage = storage_factory(make_env(AP_POSTGRES_URL=pg_url))
    storage.catalog.init_schema()
    for _ in range(400):
        seed(storage, "FLOW_RUN_LOG", Location.DB, NOW, data=b"x" * 100)
    storage.catalog._execute('ANALYZE "file"')
    monkeypatch.setattr(du_sql, "SAMPLE_PAGES", 1)  # every table is "large"
    fp = du_sql.footprint(storage.catalog)
    assert "sample" in fp.method and fp.rows == 400
    assert fp.on_disk == storage.catalog._execute("SELECT pg_total_relation_size('\"file\"'::regclass)")[0][0]


def test_footprint_sqlite_matches_page_counts(make_env, storage_factory, set_env, runner) -> None:
    env = make_env()
    storage = storage_factory(env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.DB, NOW, data=os.urandom(100_000)) for _ in range(30)]
    for row in rows[:20]:
        storage.catalog.delete(row.id)
    storage.catalog._execute("PRAGMA wal_checkpoint(TRUNCATE)")
    set_env(**env)
    result = runner.invoke(app, ["du", "--json"], catch_exceptions=False)
    data = json.loads(result.stdout)["catalog"]
    page_size = storage.catalog._execute("PRAGMA page_size")[0][0]
    page_count = storage.catalog._execute("PRAGMA page_count")[0][0]
    free = storage.catalog._execute("PRAGMA freelist_count")[0][0]
    assert data["onDisk"] == page_count * page_size
    assert data["freePages"] == data["reclaimable"] == free * page_size
    assert free * page_size >= 20 * 100_000
    assert data["dataBytes"] == 10 * 100_000 and data["vacuum"] == "VACUUM"
    human = runner.invoke(app, ["du"], catch_exceptions=False).stdout
    assert "catalog: database file" in human and "VACUUM would return" in human


def test_vacuum_hint_only_when_much_is_reclaimable(make_env, storage_factory, monkeypatch) -> None:
    storage = storage_factory(make_env())
    rows = [seed(storage, "FLOW_RUN_LOG", Location.DB, NOW, data=os.urandom(100_000)) for _ in range(30)]
    assert du_service.vacuum_hint(storage) is None
    for row in rows[:25]:
        storage.catalog.delete(row.id)
    assert du_service.vacuum_hint(storage) is None  # 2.5 MB: under 64 MiB
    monkeypatch.setattr(du_service, "VACUUM_HINT_BYTES", 1024 * 1024)
    hint = du_service.vacuum_hint(storage)
    assert hint is not None and "VACUUM" in hint and "MiB" in hint


# -- the validator ----------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from apstorage.errors import UsageError  # noqa: E402
from apstorage.services.gc import MAX_GRACE, MIN_GRACE, parse_grace  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-10**9, max_value=10**12),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**6), st.sampled_from(["", "s", "m", "h", "d", "H", "w"])),
))
def test_grace_is_a_duration_of_at_least_an_hour(value) -> None:
    """Any input: a number of seconds from 1 h to ten years, or UsageError (exit 2)
    naming --grace."""
    try:
        seconds = parse_grace(value)
    except UsageError as exc:
        assert "--grace" in exc.message and exc.exit_code == 2
        return
    assert isinstance(seconds, int) and MIN_GRACE <= seconds <= MAX_GRACE


def test_sweep_and_gc_say_once_when_vacuum_would_return_much(local_env, storage_factory, set_env, runner,
                                                             monkeypatch) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    for _ in range(20):
        seed(storage, "FLOW_RUN_LOG", Location.DB, NOW - timedelta(days=60), data=os.urandom(100_000))
    seed(storage, "FLOW_RUN_LOG", Location.DB, NOW)
    monkeypatch.setattr(du_service, "VACUUM_HINT_BYTES", 1024 * 1024)
    swept = runner.invoke(app, ["sweep-expired"], catch_exceptions=False)
    assert swept.exit_code == 0
    assert swept.stderr.count("VACUUM") == 1 and "could return about" in swept.stderr
    lost = seed(storage, "FLOW_STEP_FILE", Location.DB, NOW - timedelta(days=3), data=None)
    cleaned = invoke(runner, "--missing")
    assert cleaned.exit_code == 0 and not row_exists(storage, lost.id)
    assert cleaned.stderr.count("VACUUM") == 1
    nothing = invoke(runner, "--missing")  # deleted nothing: no hint
    assert "VACUUM" not in nothing.stderr


# -- the location guard and --trust (issue 22, item 3) ------------------------------------------


def lifecycle_expired(storage: Storage, *, kept: int = 6, expired: int = 24) -> tuple[list[FileRow], list[FileRow]]:
    """The storage guide's lifecycle (FLOW_RUN_LOG objects expire at 30 days) under a
    catalog retention of 90 days: rows younger than 30 days have their object, older ones
    have lost it to the rule."""
    young = [seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=2 + i)) for i in range(kept)]
    old = [seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=31 + 2 * i), data=None)
           for i in range(expired)]
    return young, old


def test_most_s3_rows_expired_by_a_lifecycle_rule_refuse_with_exit_1_until_trusted(
    full_env, storage_factory, set_env, runner,
) -> None:
    storage = storage_factory(full_env)
    set_env(**full_env)
    young, old = lifecycle_expired(storage)
    bundle = seed(storage, "FLOW_BUNDLE", Location.S3, NOW - timedelta(days=60), data=None)  # kept by the platform
    recent = seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(hours=3), data=None)  # within the grace
    before = snapshot(storage)

    refused = invoke(runner, "--missing")
    assert refused.exit_code == 1, refused.stderr
    assert "--trust S3" in refused.stderr and "AP_S3_BUCKET" in refused.stderr, refused.stderr
    assert "sampled rows lack their bytes" in refused.stderr and "nothing to collect" not in refused.stderr
    assert snapshot(storage) == before

    data = json.loads(invoke(runner, "--missing", "--json").stdout)
    assert data["deleted"] == 0 and data["trusted"] == []
    [refusal] = data["refusals"]
    assert refusal["location"] == "S3" and refusal["kind"] == "row" and refusal["trust"] == "--trust S3"
    sampled = len(young) + len(old) + 2  # every row at S3 (the sample spreads over all of them)
    assert refusal["sampled"] == sampled  # all created before the run: none left out
    assert refusal["sampledWithBytes"] == len(young)
    assert refusal["sampledWithoutBytes"] == refusal["sampled"] - len(young)
    assert refusal["listedWithBytes"] == len(young) and refusal["listedWithoutBytes"] == len(old) + 2
    # held back: what --trust S3 then deletes, not the FLOW_BUNDLE row nor the one within the grace
    assert refusal["held"] == len(old)
    assert f"{len(old)} rows without bytes that gc would delete were held back" in refusal["message"]
    assert snapshot(storage) == before

    dry = invoke(runner, "--missing", "--trust", "s3", "--dry-run", "--json")  # any case
    assert dry.exit_code == 1, dry.stderr  # the FLOW_BUNDLE row is reported, as the real run does
    dry_data = json.loads(dry.stdout)
    assert sorted(i["id"] for i in dry_data["items"]) == sorted(r.id for r in old)
    assert dry_data["refusals"] == [] and dry_data["trusted"] == ["S3"] and dry_data["dryRun"] is True
    assert snapshot(storage) == before

    done = invoke(runner, "--missing", "--trust", "S3", "--json")
    assert done.exit_code == 1  # FLOW_BUNDLE without its object: reported, never deleted
    done_data = json.loads(done.stdout)
    assert done_data["missing"]["files"] == len(old) and [r["id"] for r in done_data["reported"]] == [bundle.id]
    assert not any(row_exists(storage, r.id) for r in old)
    assert all(row_exists(storage, r.id) for r in [*young, bundle, recent])
    assert set(every_row_has_its_bytes(storage)) == {bundle.id, recent.id}


def test_a_wrong_bucket_is_still_refused_and_trust_is_per_location(full_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(full_env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.S3, NOW - timedelta(days=40)) for _ in range(8)]
    other = f"{full_env['AP_S3_BUCKET']}-other"
    storage.store(Location.S3).client.create_bucket(Bucket=other)
    set_env(**{**full_env, "AP_S3_BUCKET": other})
    before = snapshot(storage)
    for extra in ([], ["--trust", "LOCAL"]):  # trusting LOCAL says nothing about S3
        result = invoke(runner, "--missing", *extra)
        assert result.exit_code == 1, result.stderr
        assert "--trust S3" in result.stderr and "8 of 8 sampled rows lack their bytes" in result.stderr
        assert snapshot(storage) == before
    assert all(row_exists(storage, r.id) for r in rows)


@pytest.mark.parametrize("value", ["DB", "s4", "", "S3,LOCAL", "S3\n", " S3", "LOCAL ", "S3\t"])
def test_trust_accepts_only_s3_or_local(local_env, set_env, runner, value) -> None:
    set_env(**local_env)
    result = invoke(runner, "--trust", value)
    assert result.exit_code == 2 and "--trust" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if not value:
        assert "empty" in result.stderr


@pytest.mark.parametrize("far", [True, False], ids=["link out of the root", "link inside the root"])
def test_rows_behind_a_linked_folder_hold_nothing_back(local_env, storage_factory, set_env, runner,
                                                        tmp_path, far) -> None:
    """The only old LOCAL rows have their files behind a symlinked folder: gc never deletes
    them (it does not judge a path through a link), so they are no rows a refusal held
    back — no "run again with --trust LOCAL" that would then delete nothing."""
    storage = storage_factory(local_env)
    set_env(**local_env)
    local = storage.store(Location.LOCAL)
    behind = (tmp_path / "outside" / "FLOW_RUN_LOG") if far else local.path_for("moved/p2/FLOW_RUN_LOG")
    behind.mkdir(parents=True)
    local.path_for("project/p2").parent.mkdir(parents=True, exist_ok=True)
    local.path_for("project/p2").symlink_to(behind.parent, target_is_directory=True)
    linked = []
    for _ in range(5):
        row = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=40), data=None, project="p2")
        (behind / row.id).write_bytes(b"behind a link")
        linked.append(row)
    before = snapshot(storage)
    result = invoke(runner, "--missing", "--json")
    data = json.loads(result.stdout)
    assert data["refusals"] == [] and result.exit_code == 0, data
    assert snapshot(storage) == before and all(row_exists(storage, r.id) for r in linked)


def test_the_guards_verdict_never_changes_within_a_pass(local_env, storage_factory, set_env, runner,
                                                        monkeypatch) -> None:
    """A sample that says "trusted" (here: a biased one, as rows clustered by another tool
    can give), then a listing that meets the rows with files first and more rows without
    files after them: the location is judged once, with the whole listing's counts, so
    nothing is deleted before the refusal — never "deleted 49 ... no row was deleted"."""
    from apstorage.services import gc as gc_service

    monkeypatch.setattr(gc_service._Collector, "sample_found", lambda self, location, store: (50, 50))
    storage = storage_factory(local_env)
    set_env(**local_env)
    local = storage.store(Location.LOCAL)
    for i in range(200):  # in key order: 50 with files, 49 without, 1 with, 100 without
        row = FileRow(id=f"r{i:020d}", type="FLOW_RUN_LOG", location=Location.LOCAL,
                      created=NOW - timedelta(days=40), project_id="proj1", size=10)
        row = FileRow(**{**row.__dict__, "s3_key": row.key})
        if i < 50 or i == 99:
            local.put(row.key, io.BytesIO(b"some bytes"), 10)
        storage.catalog.insert(row)
    before = snapshot(storage)
    result = invoke(runner, "--missing", "--json")
    assert result.exit_code == 1, result.stdout
    data = json.loads(result.stdout)
    assert data["deleted"] == 0 and data["missing"]["files"] == 0, data
    assert [r["held"] for r in data["refusals"]] == [149], data["refusals"]
    assert snapshot(storage) == before


@pytest.mark.parametrize("args, age", [(["--pending"], 40), (["--missing"], 0.5), ([], 0.5)],
                         ids=["pending: none in flight", "missing: all within the grace", "default: all within the grace"])
def test_nothing_held_back_is_no_refusal(local_env, storage_factory, set_env, runner, args, age) -> None:
    """Most LOCAL rows lack their files, but none of them is one gc would delete (no
    pending upload; rows younger than the grace): no refusal, exit 0, a silent cron."""
    storage = storage_factory(local_env)
    set_env(**local_env)
    kept = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(2)]
    lacking = [seed(storage, "FLOW_STEP_FILE", Location.LOCAL, NOW - timedelta(days=age), data=None) for _ in range(20)]
    before = snapshot(storage)
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["refusals"] == [], data["refusals"]
    quiet = invoke(runner, *args)
    assert (quiet.exit_code, quiet.stderr) == (0, ""), quiet.stderr
    assert snapshot(storage) == before and all(row_exists(storage, r.id) for r in kept + lacking)


def test_trust_local_deletes_rows_without_files_however_many(local_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(local_env)
    set_env(**local_env)
    kept = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, NOW - timedelta(days=5)) for _ in range(2)]
    gone = [seed(storage, "FLOW_STEP_FILE", Location.LOCAL, NOW - timedelta(days=40), data=None) for _ in range(20)]
    assert invoke(runner, "--missing").exit_code == 1
    assert all(row_exists(storage, r.id) for r in gone)
    result = invoke(runner, "--missing", "--trust", "local", "--trust", "LOCAL")
    assert result.exit_code == 0, result.stderr
    assert not any(row_exists(storage, r.id) for r in gone) and all(row_exists(storage, r.id) for r in kept)


SHAPES = {
    "sequential": lambda i: f"a{i:019d}",
    "zzz prefix": lambda i: f"zzzzzzzzzzzz{i:09d}",
    "hex counter": lambda i: f"{i:021x}",
}


@pytest.mark.parametrize("spread", [False, True], ids=["small table", "spread points"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_sample_spreads_over_the_rows_whatever_their_ids(local_env, storage_factory, monkeypatch, shape,
                                                              spread) -> None:
    """Rows written by another tool with sequential or shared-prefix ids: the guard's
    sample reaches across the whole location, not its first ids — by seeks at points
    spread over the table (a large one) or evenly spaced in physical order (a small one, on
    Postgres) — and the same rows each time, so a run's verdict does not depend on luck."""
    from apstorage.catalog import gc as gc_sql
    from apstorage.catalog.gc import sample_rows

    if spread:  # the seeks a table of millions of rows gets, on this small one
        monkeypatch.setattr(gc_sql, "SMALL_TABLE_BLOCKS", 0)
    storage = storage_factory(local_env)
    make = SHAPES[shape]
    with storage.catalog.transaction() as cur:
        p = storage.catalog.ph
        created = storage.catalog._ts_in(NOW - timedelta(days=5))
        cur.executemany(  # a long file name: a few rows a page, so the table has many pages
            f'INSERT INTO "file" ("id", "projectId", "location", "type", "size", "compression", "created", "updated", '
            f"\"fileName\") VALUES ({p}, 'proj1', {p}, 'FLOW_RUN_LOG', 1, 'NONE', {p}, {p}, {p})",
            [(make(i), "LOCAL" if i % 3 else "DB", created, created, f"{i:0500d}") for i in range(3000)],
        )
    picked = sample_rows(storage.catalog, "LOCAL", 50)
    assert [r.id for r in sample_rows(storage.catalog, "LOCAL", 50)] == [r.id for r in picked]
    order = sorted(make(i) for i in range(3000) if i % 3)
    ranks = sorted(order.index(r.id) for r in picked)
    assert len({r.id for r in picked}) == len(picked) >= 45, len(picked)
    assert ranks[0] < len(order) // 10 and ranks[-1] > len(order) * 9 // 10, ranks
    assert all(int(storage.catalog._execute(
        f'SELECT count(*) FROM "file" WHERE "id" = {storage.catalog.ph} AND "location" = \'LOCAL\'', (r.id,)
    )[0][0]) == 1 for r in picked)
    for third in range(3):  # each third of the location's rows is in the sample
        assert any(len(order) * third // 3 <= rank < len(order) * (third + 1) // 3 for rank in ranks), ranks


LAYOUTS = {  # (DB rows, LOCAL rows, DB rows, LOCAL rows, ...): insertion order
    "switched to LOCAL at the end": (6000, 210),
    "LOCAL for a while, in the middle": (3000, 150, 3000),
    "two stretches of LOCAL": (0, 100, 10000, 150),
    "LOCAL now and then": (0, *[n for _ in range(40) for n in (150, 3)]),
}


@pytest.mark.parametrize("spread", [False, True], ids=["small table", "spread points"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_sample_reaches_a_location_written_in_one_block(local_env, storage_factory, monkeypatch, layout,
                                                             spread) -> None:
    """A deployment that wrote thousands of DB rows, then switched location: the
    location's rows fill one short stretch of the table, shorter than one span between
    points. The sample is still ~n rows spread over that stretch (every point of the first
    spread lands on its first row; the points are spread again over the stretch)."""
    from apstorage.catalog import gc as gc_sql
    from apstorage.catalog.gc import sample_rows

    if spread:
        monkeypatch.setattr(gc_sql, "SMALL_TABLE_BLOCKS", 0)
    storage = storage_factory(local_env)
    locations = [where for i, count in enumerate(LAYOUTS[layout]) for where in [("DB", "LOCAL")[i % 2]] * count]
    positions = [i for i, where in enumerate(locations) if where == "LOCAL"]  # rank -> position
    with storage.catalog.transaction() as cur:
        p = storage.catalog.ph
        created = storage.catalog._ts_in(NOW - timedelta(days=5))
        cur.executemany(
            f'INSERT INTO "file" ("id", "projectId", "location", "type", "size", "compression", "created", "updated") '
            f"VALUES ({p}, 'proj1', {p}, 'FLOW_RUN_LOG', 1, 'NONE', {p}, {p})",
            [(f"r{i:020d}", where, created, created) for i, where in enumerate(locations)],
        )
    picked = sample_rows(storage.catalog, "LOCAL", 50)
    assert [r.id for r in sample_rows(storage.catalog, "LOCAL", 50)] == [r.id for r in picked]
    inside = len(positions)
    ranks = sorted(positions.index(int(r.id[1:])) for r in picked)
    assert len(set(ranks)) == len(ranks) >= min(45, inside), ranks
    assert ranks[0] < inside // 10 and ranks[-1] > inside * 9 // 10, ranks
    for tenth in range(10):  # every tenth of the location's rows is in the sample
        assert any(inside * tenth // 10 <= rank < inside * (tenth + 1) // 10 for rank in ranks), ranks


@pytest.mark.parametrize("shape", list(SHAPES))
def test_sequential_ids_whose_oldest_rows_lost_their_files_are_judged_fairly(local_env, storage_factory, shape) -> None:
    """The lowest ids lost their files (the oldest rows, expired by a rule), most rows have
    theirs: the location is the catalog's, and the old rows without files go — a sample of
    the first ids alone would have refused forever."""
    storage = storage_factory(local_env)
    make = SHAPES[shape]
    root = Path(storage.settings.local_storage_path)
    lost, kept = [], []
    for i in range(200):
        row = FileRow(id=make(i), type="FLOW_RUN_LOG", location=Location.LOCAL, project_id="proj1", size=4,
                      created=NOW - timedelta(days=60 - i * 0.2))
        storage.catalog.insert(row)
        if i < 60:
            lost.append(row)
        else:
            path = root / row.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"four")
            kept.append(row)
    report = collect_garbage(storage, kinds=["missing"])
    assert report.refusals == [], report.notes
    assert report.missing.files == len(lost)
    assert not any(row_exists(storage, r.id) for r in lost) and all(row_exists(storage, r.id) for r in kept)
