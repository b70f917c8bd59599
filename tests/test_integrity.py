"""Nothing lost (issue 13): every move and delete proven, shared bytes kept, durable
before destructive, the embedded default under concurrent commands.

Real Postgres, SQLite and SeaweedFS; answers SeaweedFS cannot give (2xx without an ETag
or without storing, a non-MD5 ETag, a held request) come from the fault stand-in
(tests/s3_faults.py). After every scenario, ``assert_invariant``: every row kept points
at bytes that exist with the right content, and nothing a remaining row references was
deleted.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.errors import ApStorageError, NotFoundError
from apstorage.model import Location, new_id, object_key
from apstorage.services.context import Storage
from apstorage.services.migrate import MigrateOptions, migrate_to_s3
from apstorage.services.sweep import sweep_expired
from tests.s3_faults import Fault

NOW = datetime.now(timezone.utc)
OLD = NOW - timedelta(days=45)


# -- rows as the platform writes them, and the invariant -------------------------------------


def add_row(storage: Storage, location: Location, data: bytes | None, *, file_type: str = "FLOW_RUN_LOG",
            project: str | None = "p1", platform: str | None = None, s3_key: str | None = None,
            created: datetime = NOW, size: int | None | str = "auto", compression: str = "NONE",
            write: bool = True, file_id: str | None = None) -> str:
    """Insert a row with plain SQL (any odd value the platform may leave), its bytes where
    ``location`` says (``write=False``: the bytes are someone else's, already there)."""
    catalog = storage.catalog
    file_id = file_id or new_id()
    if location is not Location.DB and s3_key is None:
        s3_key = object_key(file_id, file_type, project, platform)
    if write and data is not None and location is not Location.DB:
        storage.store(location).put(s3_key, io.BytesIO(data), len(data))
    p = catalog.ph
    catalog._execute(
        f'INSERT INTO "file" ("id", "created", "updated", "projectId", "platformId", "location", '
        f'"size", "s3Key", "type", "compression", "data") VALUES ({", ".join([p] * 11)})',
        (file_id, catalog._ts_in(created), catalog._ts_in(created), project, platform, location.value,
         (len(data) if data is not None else None) if size == "auto" else size, s3_key, file_type,
         compression, data if location is Location.DB else None),
    )
    return file_id


class Raw:
    """A row read with plain SQL: odd values (an unknown compression) stay as they are."""

    def __init__(self, storage: Storage, file_id: str) -> None:
        catalog = storage.catalog
        rows = catalog._execute(
            'SELECT "location", "s3Key", "size", "type", "projectId", "platformId" FROM "file" '
            f'WHERE "id" = {catalog.ph}', (file_id,))
        if not rows:
            raise NotFoundError(file_id)
        self.id = file_id
        location, self.s3_key, self.size, self.type, self.project, self.platform = rows[0]
        self.location = Location(location)

    @property
    def key(self) -> str:
        return self.s3_key or object_key(self.id, self.type, self.project, self.platform)


def stored_bytes(storage: Storage, file_id: str) -> bytes:
    """The row's bytes as stored (no decoding), read from wherever the row says."""
    row = Raw(storage, file_id)
    if row.location is Location.DB:
        data = storage.catalog.read_data(file_id)
        assert data is not None, f"{file_id}: DB row without bytes"
        return data
    return storage.store(row.location).get(row.key)


def assert_invariant(storage: Storage, expected: dict[str, bytes]) -> None:
    """Every row in ``expected`` still exists and its bytes are exactly the expected ones."""
    for file_id, data in expected.items():
        assert stored_bytes(storage, file_id) == data, file_id


def row_exists(storage: Storage, file_id: str) -> bool:
    try:
        Raw(storage, file_id)
    except NotFoundError:
        return False
    return True


def s3_keys(storage: Storage) -> set[str]:
    return {info.key for info in storage.store(Location.S3).list("")}


def cli(env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apstorage", *args], env=dict(os.environ, **env),
                          input=stdin, capture_output=True, timeout=timeout)


@pytest.fixture
def env(catalog_env, s3_env, tmp_path) -> dict[str, str]:
    return dict(catalog_env, **s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))


@pytest.fixture
def faulty_env(catalog_env, faulty_s3, bucket, tmp_path) -> dict[str, str]:
    return dict(catalog_env, **faulty_s3.info.ap_env(bucket), AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))


# -- item 2: an upload counts only when proven ------------------------------------------------


def test_put_with_a_dropped_or_non_md5_etag_is_proven_by_head(faulty_env, faulty_s3, storage_factory, set_env) -> None:
    """2xx without an ETag, or with one that is no MD5 (SSE-KMS, SSE-C, multipart): a HEAD
    decides, and a stored object of the right size is accepted."""
    runner = CliRunner()
    env = dict(faulty_env, AP_FILE_STORAGE_LOCATION="S3")
    set_env(**env)
    storage = storage_factory(env)
    ids = {}
    for action, value in (("drop_etag", ""), ("etag", '"9b2cf535f27731c974343645a3985328"'), ("etag", '"abc-3"')):
        faulty_s3.clear()
        fault = faulty_s3.add(Fault(action=action, method="PUT", value=value))
        body = f"payload {action} {value}".encode()
        result = runner.invoke(app, ["put", "-", "--type", "FLOW_RUN_LOG", "--project", "p1", "--json"],
                               input=body, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert fault.applied == 1
        ids[json.loads(result.stdout)["id"]] = body
    assert_invariant(storage, ids)


def test_a_kms_bucket_whose_etags_are_never_md5_works(faulty_env, faulty_s3, storage_factory) -> None:
    """Every PUT and HEAD answer carries a non-MD5 ETag, as an SSE-KMS bucket gives: put
    and migrate work, proven by size."""
    faulty_s3.add(Fault(action="etag", value='"0f343b0931126a20f133d67c2b018a3b"'))
    storage = storage_factory(dict(faulty_env, AP_FILE_STORAGE_LOCATION="S3"))
    from apstorage.services.files import PutRequest, put_file

    expected = {}
    for i in range(3):
        body = os.urandom(100 + i)
        row = put_file(storage, PutRequest("-", "FLOW_RUN_LOG", project_id="p1"), stdin=io.BytesIO(body))
        expected[row.id] = body
    for _ in range(3):
        body = os.urandom(300)
        expected[add_row(storage, Location.DB, body)] = body
    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    assert (report.migrated, report.failed) == (3, 0)
    assert_invariant(storage, expected)
    assert all(Raw(storage, i).location is Location.S3 for i in expected)


def test_put_answered_2xx_without_storing_records_nothing(faulty_env, faulty_s3, storage_factory) -> None:
    faulty_s3.add(Fault(action="status", method="PUT", status=200, value=" "))
    storage = storage_factory(dict(faulty_env, AP_FILE_STORAGE_LOCATION="S3"))
    result = cli(dict(faulty_env, AP_FILE_STORAGE_LOCATION="S3"), "put", "-", "--type", "FLOW_RUN_LOG",
                 "--project", "p1", stdin=b"never stored")
    assert result.returncode == 1, result.stderr
    assert b"not there after an upload" in result.stderr and b"Traceback" not in result.stderr
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    assert s3_keys(storage) == set()


def test_a_proven_wrong_object_is_removed_and_not_recorded(faulty_env, faulty_s3, storage_factory) -> None:
    """The PUT is answered without an ETag and the object holds other bytes (another size):
    the upload is proven failed — no row, and no object left."""
    storage = storage_factory(dict(faulty_env, AP_FILE_STORAGE_LOCATION="S3"))
    upstream = faulty_s3.upstream.client()  # SeaweedFS itself, not through the stand-in
    faulty_s3.add(Fault(action="custom", method="PUT", handler=lambda req: _put_other_bytes(upstream, req)))
    from apstorage.services.files import PutRequest, put_file

    with pytest.raises(ApStorageError, match="holds 5 bytes after uploading 11"):
        put_file(storage, PutRequest("-", "FLOW_RUN_LOG", project_id="p1"), stdin=io.BytesIO(b"real bytes!"))
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    assert s3_keys(storage) == set()


def _put_other_bytes(upstream, req):
    """Store 5 other bytes at the key, straight in SeaweedFS; answer 200 without an ETag."""
    from tests.s3_faults import Answer

    bucket, key = req.key_path.split("/", 2)[1:]
    upstream.put_object(Bucket=bucket, Key=key, Body=b"other")
    return Answer(200, {"Content-Length": "0"}, b"")


def test_migrate_with_5_percent_unstored_2xx_answers_loses_nothing(faulty_env, faulty_s3, storage_factory) -> None:
    """A proxy answers 5% of PUTs with 200, no ETag, without storing: those rows stay
    where they were (bytes kept), the rest move; a clean re-run moves the rest."""
    storage = storage_factory(faulty_env)
    expected = {}
    for i in range(160):
        body = os.urandom(64 + i)
        expected[add_row(storage, Location.DB, body)] = body
    for i in range(40):
        body = os.urandom(64 + i)
        expected[add_row(storage, Location.LOCAL, body, file_type="FLOW_STEP_FILE")] = body
    fault = faulty_s3.add(Fault(action="status", method="PUT", status=200, value=" ", probability=0.05, seed=7))
    report = migrate_to_s3(storage, MigrateOptions(workers=8, batch_size=50))
    assert fault.applied > 0
    assert report.failed == fault.applied and report.migrated == 200 - fault.applied
    assert_invariant(storage, expected)
    faulty_s3.clear()
    again = migrate_to_s3(storage, MigrateOptions(workers=8))
    assert (again.migrated, again.failed) == (fault.applied, 0)
    assert_invariant(storage, expected)
    assert all(Raw(storage, i).location is Location.S3 for i in expected)
    assert list(storage.store(Location.LOCAL).list("")) == []


def test_migrate_with_dropped_etags_moves_everything(faulty_env, faulty_s3, storage_factory) -> None:
    storage = storage_factory(faulty_env)
    expected = {}
    for i in range(40):
        body = os.urandom(50 + i)
        expected[add_row(storage, Location.DB, body)] = body
    faulty_s3.add(Fault(action="drop_etag", method="PUT", every=3))
    report = migrate_to_s3(storage, MigrateOptions(workers=4))
    assert (report.migrated, report.failed) == (40, 0)
    assert_invariant(storage, expected)


# -- item 3: bytes another row references are never deleted or overwritten ------------------


@pytest.mark.parametrize("location", [Location.S3, Location.LOCAL])
def test_sweep_keeps_bytes_another_row_references(env, storage_factory, location) -> None:
    storage = storage_factory(env)
    shared = b"shared bytes"
    keeper = add_row(storage, location, shared)  # fresh: kept
    key = Raw(storage, keeper).key
    expired_same_key = add_row(storage, location, shared, s3_key=key, created=OLD, write=False)
    # A derived-key row (no s3Key) whose key another expired row names explicitly.
    derived = add_row(storage, location, b"derived", file_type="FLOW_STEP_FILE")
    storage.catalog._execute(f'UPDATE "file" SET "s3Key" = NULL WHERE "id" = {storage.catalog.ph}', (derived,))
    derived_key = object_key(derived, "FLOW_STEP_FILE", "p1", None)
    naming_it = add_row(storage, location, b"derived", s3_key=derived_key, created=OLD, write=False)
    # Two expired rows sharing a key: both go, and so do their bytes.
    both = add_row(storage, location, b"both", created=OLD)
    both_key = Raw(storage, both).key
    both_too = add_row(storage, location, b"both", s3_key=both_key, created=OLD, write=False)

    report = sweep_expired(storage, batch_size=2)
    assert report.failed == 0
    for gone in (expired_same_key, naming_it, both, both_too):
        assert not row_exists(storage, gone)
    assert_invariant(storage, {keeper: shared, derived: b"derived"})
    assert storage.store(location).stat(both_key) is None


@pytest.mark.parametrize("location", [Location.S3, Location.LOCAL])
def test_two_expired_rows_of_one_key_in_two_batches_leave_no_orphan(env, storage_factory, location) -> None:
    """Each of the two batches sees the other row still there (on Postgres: two claims open
    at once) and keeps the bytes; once both committed, nothing holds the key and the run
    deletes its bytes itself."""
    storage = storage_factory(env)
    first = add_row(storage, location, b"one key", created=OLD)
    key = Raw(storage, first).key
    second = add_row(storage, location, b"one key", s3_key=key, created=OLD, write=False)
    live = add_row(storage, location, b"live")
    report = sweep_expired(storage, batch_size=1, workers=2)
    assert report.failed == 0 and report.deleted == 2
    assert not row_exists(storage, first) and not row_exists(storage, second)
    assert storage.store(location).stat(key) is None
    assert_invariant(storage, {live: b"live"})


def test_migrate_never_overwrites_an_object_another_row_references(env, storage_factory) -> None:
    storage = storage_factory(env)
    in_s3 = add_row(storage, Location.S3, b"the S3 row's bytes")
    key = Raw(storage, in_s3).key
    db_same_key = add_row(storage, Location.DB, b"other bytes", s3_key=key)
    local_a = add_row(storage, Location.LOCAL, b"one local file", file_type="FLOW_STEP_FILE")
    local_key = Raw(storage, local_a).key
    local_b = add_row(storage, Location.LOCAL, b"one local file", s3_key=local_key, write=False)
    plain = add_row(storage, Location.DB, b"plain")

    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    failed = {f["id"]: f["reason"] for f in report.failures}
    first, second = sorted([local_a, local_b])  # rows are taken in id order
    assert set(failed) == {db_same_key, second}, failed
    assert in_s3 in failed[db_same_key]
    assert report.migrated == 2
    assert_invariant(storage, {in_s3: b"the S3 row's bytes", db_same_key: b"other bytes",
                               local_a: b"one local file", local_b: b"one local file", plain: b"plain"})
    assert Raw(storage, first).location is Location.S3
    assert Raw(storage, second).location is Location.LOCAL  # its file is still there
    # Dry run agrees with what a real run does.
    dry = migrate_to_s3(storage, MigrateOptions(dry_run=True))
    assert (dry.migrated, dry.failed) == (0, 2)


@pytest.fixture
def linked(env, storage_factory):
    """A LOCAL row's file, and a second LOCAL row whose path is a symlink to it."""
    storage = storage_factory(env)
    target = add_row(storage, Location.LOCAL, b"the target's bytes", file_type="FLOW_STEP_FILE")
    local = storage.store(Location.LOCAL)
    link_id = add_row(storage, Location.LOCAL, None, file_type="FLOW_STEP_FILE", size=18)
    link_path = local.path_for(Raw(storage, link_id).key)
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(local.path_for(Raw(storage, target).key))
    return storage, target, link_id, link_path


def test_a_symlink_is_never_read_through(linked, env, set_env) -> None:
    storage, target, link_id, link_path = linked
    set_env(**env)
    result = CliRunner().invoke(app, ["get", link_id, "-o", "-"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "symbolic link" in result.stderr and result.stdout == ""
    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    assert report.migrated == 1 and [f["id"] for f in report.failures] == [link_id]
    assert "symbolic link" in report.failures[0]["reason"]
    # The target moved to S3, but its file stays: the link still reaches it.
    assert Raw(storage, target).location is Location.S3
    assert link_path.is_symlink() and link_path.read_bytes() == b"the target's bytes"
    assert_invariant(storage, {target: b"the target's bytes"})
    from apstorage.services.du import verify

    problems = verify(storage)
    assert [m["id"] for m in problems.missing.items] == [link_id]  # a link is not a file of ours


def test_sweep_unlinks_a_symlink_and_keeps_what_a_link_reaches(linked) -> None:
    storage, target, link_id, link_path = linked
    target_path = storage.store(Location.LOCAL).path_for(Raw(storage, target).key)
    p = storage.catalog.ph
    # The target's row expires first: its file stays, because the link reaches it.
    storage.catalog._execute(f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}', (storage.catalog._ts_in(OLD), target))
    assert sweep_expired(storage).deleted == 1
    assert not row_exists(storage, target) and target_path.read_bytes() == b"the target's bytes"
    # The link's row expires: the link goes, never its target.
    storage.catalog._execute(f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}', (storage.catalog._ts_in(OLD), link_id))
    assert sweep_expired(storage).deleted == 1
    assert not link_path.exists() and not link_path.is_symlink()
    assert target_path.read_bytes() == b"the target's bytes"


def test_sweep_removes_a_rows_link_even_where_a_folder_link_reaches_it(linked) -> None:
    """issue 22, item 6: a row whose own key is a symbolic link owns that link; when the row
    expires the link goes with it — also when a folder link above it (``alias`` → its
    folder) "reaches" it — and never its target. A regular file such a folder link reaches
    stays when its row goes (nothing but the link may read it), as before."""
    storage, target, link_id, link_path = linked
    local = storage.store(Location.LOCAL)
    target_path = local.path_for(Raw(storage, target).key)
    (local.root / "alias").symlink_to(link_path.parent, target_is_directory=True)
    self_link = add_row(storage, Location.LOCAL, None, file_type="FLOW_STEP_FILE", size=1)
    self_path = local.path_for(Raw(storage, self_link).key)
    self_path.symlink_to(".", target_is_directory=True)  # a link to its own folder
    p = storage.catalog.ph
    for file_id in (link_id, self_link):
        storage.catalog._execute(f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}', (storage.catalog._ts_in(OLD), file_id))
    report = sweep_expired(storage)
    assert (report.deleted, report.failed) == (2, 0)
    assert not row_exists(storage, link_id) and not row_exists(storage, self_link)
    assert not link_path.is_symlink() and not self_path.is_symlink()  # nothing left dangling
    assert target_path.read_bytes() == b"the target's bytes" and (local.root / "alias").is_symlink()
    assert_invariant(storage, {target: b"the target's bytes"})
    # The target's row expires: the folder link still reaches its file, so the file stays.
    storage.catalog._execute(f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}', (storage.catalog._ts_in(OLD), target))
    assert sweep_expired(storage).deleted == 1
    assert not row_exists(storage, target) and target_path.read_bytes() == b"the target's bytes"


def test_a_file_kept_for_a_link_goes_when_the_link_goes_in_the_same_run(linked, env, storage_factory) -> None:
    """The target's row and the link's row expire together: the link goes with its row, and
    the target's file, kept while the link reached it, is then reached by nothing and held by
    no row: the run deletes it too, leaving no orphan. A file a live row's link still reaches
    stays (the run before it in ``test_sweep_unlinks_a_symlink_and_keeps_what_a_link_reaches``)."""
    storage, target, link_id, link_path = linked
    local = storage.store(Location.LOCAL)
    target_path = local.path_for(Raw(storage, target).key)
    # A second pair whose link row stays: its target's file must stay.
    kept_target = add_row(storage, Location.LOCAL, b"still linked", file_type="FLOW_STEP_FILE")
    live_link = add_row(storage, Location.LOCAL, None, file_type="FLOW_STEP_FILE", size=12)
    live_path = local.path_for(Raw(storage, live_link).key)
    kept_path = local.path_for(Raw(storage, kept_target).key)
    live_path.symlink_to(kept_path)
    p = storage.catalog.ph
    for file_id in (target, link_id, kept_target):
        storage.catalog._execute(f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}', (storage.catalog._ts_in(OLD), file_id))
    report = sweep_expired(storage, batch_size=1)  # the target's batch first, then the link's
    assert (report.deleted, report.failed) == (3, 0)
    assert not link_path.is_symlink() and not target_path.exists()  # nothing left behind
    assert live_path.is_symlink() and kept_path.read_bytes() == b"still linked"
    assert row_exists(storage, live_link)


# -- item 4 (migrate): one odd row never stops a run ------------------------------------------


def test_odd_rows_fail_alone_and_dry_run_counts_what_moves(env, storage_factory) -> None:
    storage = storage_factory(env)
    expected = {}
    ownerless = add_row(storage, Location.DB, b"no owner", project=None, platform=None)
    expected[ownerless] = b"no owner"
    gzip_row = add_row(storage, Location.DB, b"\x1f\x8b\x08 gzip as stored", compression="GZIP")
    odd_row = add_row(storage, Location.DB, b"odd compression", compression="BROTLI?")
    no_size = add_row(storage, Location.DB, b"no size recorded", size=None)
    empty_db = add_row(storage, Location.DB, None)  # nothing to move
    expected.update({gzip_row: b"\x1f\x8b\x08 gzip as stored", odd_row: b"odd compression",
                     no_size: b"no size recorded"})
    for _ in range(3):
        body = os.urandom(99)
        expected[add_row(storage, Location.DB, body)] = body

    dry = migrate_to_s3(storage, MigrateOptions(dry_run=True))
    assert (dry.migrated, dry.failed, dry.skipped) == (6, 1, 1)
    report = migrate_to_s3(storage, MigrateOptions(workers=2, batch_size=3))
    assert (report.migrated, report.failed, report.skipped) == (6, 1, 1)
    assert report.failures[0] == {"id": ownerless, "reason": "no s3Key, projectId or platformId: the row has no object key"}
    assert_invariant(storage, expected)
    assert Raw(storage, ownerless).location is Location.DB
    assert Raw(storage, no_size).size == len(b"no size recorded")
    assert Raw(storage, gzip_row).location is Location.S3
    assert row_exists(storage, empty_db)
    # Nothing left behind without a row: every object belongs to a migrated row.
    assert s3_keys(storage) == {Raw(storage, i).key for i in expected if i != ownerless}
    assert migrate_to_s3(storage, MigrateOptions(dry_run=True)).migrated == 0


# -- item 7: durable before destructive -------------------------------------------------------


def test_sqlite_commits_are_durable_and_readers_do_not_block(make_env, storage_factory) -> None:
    storage = storage_factory(make_env())
    conn = storage.catalog.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_local_copies_left_by_a_crash_are_removed_by_the_next_run(env, storage_factory) -> None:
    """A kill between a batch's commit and the removal of its LOCAL files leaves rows in S3
    whose LOCAL copies are still there: the next run proves each object against the file,
    then removes the file — not one another row, a link, or an unproven object needs."""
    storage = storage_factory(env)
    local, s3 = storage.store(Location.LOCAL), storage.store(Location.S3)
    expected = {}
    leftover = {}
    for i in range(3):
        body = os.urandom(40 + i)
        file_id = add_row(storage, Location.LOCAL, body, file_type="FLOW_STEP_FILE")
        expected[file_id] = leftover[file_id] = body
    unproven = add_row(storage, Location.LOCAL, b"object missing", file_type="FLOW_STEP_FILE")
    differs = add_row(storage, Location.LOCAL, b"same size, other", file_type="FLOW_STEP_FILE")
    still_local = add_row(storage, Location.LOCAL, b"a local row's file", file_type="FLOW_STEP_FILE")
    expected[still_local] = b"a local row's file"
    # What a killed run leaves: objects uploaded and rows flipped, files not yet removed.
    p = storage.catalog.ph
    for file_id in [*leftover, unproven, differs]:
        key = Raw(storage, file_id).key
        if file_id in leftover:
            s3.put_bytes(key, leftover[file_id])
        elif file_id == differs:
            s3.put_bytes(key, b"SAME SIZE, OTHER")
        storage.catalog._execute(f'UPDATE "file" SET "location" = \'S3\' WHERE "id" = {p}', (file_id,))
    report = migrate_to_s3(storage, MigrateOptions(sources=(Location.LOCAL,), workers=2))
    assert (report.leftovers_removed, report.leftovers_kept) == (3, 2)
    assert (report.migrated, report.failed) == (1, 0)
    for file_id in leftover:
        assert local.stat(Raw(storage, file_id).key) is None
    assert local.get(Raw(storage, unproven).key) == b"object missing"  # kept: S3 lacks it
    assert local.get(Raw(storage, differs).key) == b"same size, other"  # kept: not its bytes
    assert_invariant(storage, expected)


# -- item 8: the embedded default under concurrent commands -----------------------------------


def test_get_put_and_sweep_run_beside_a_migrate_on_sqlite(make_env, faulty_s3, bucket, tmp_path, storage_factory) -> None:
    """migrate-to-s3 is held inside an upload (the stand-in keeps its PUT until released):
    get, put and sweep-expired run meanwhile in other processes and all succeed."""
    env = make_env(**faulty_s3.info.ap_env(bucket), AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    storage = storage_factory(env)
    expected = {}
    for i in range(6):
        body = os.urandom(80 + i)
        expected[add_row(storage, Location.DB, body, project="slow")] = body
    readable = add_row(storage, Location.DB, b"read me", file_type="SAMPLE_DATA", project="other")
    expected[readable] = b"read me"
    add_row(storage, Location.DB, b"expired", project="other", created=OLD)
    release = threading.Event()
    held = faulty_s3.add(Fault(action="custom", method="PUT", path="/project/slow/",
                               handler=lambda req: release.wait(120) and None))
    migrate = subprocess.Popen([sys.executable, "-m", "apstorage", "migrate-to-s3", "--json", "--workers", "2"],
                               env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while held.hits == 0 and migrate.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.hits > 0, migrate.stderr.read().decode() if migrate.poll() is not None else "no PUT arrived"
        got = cli(env, "get", readable, "-o", "-")
        assert (got.returncode, got.stdout) == (0, b"read me"), got.stderr
        put = cli(env, "put", "-", "--type", "FLOW_RUN_LOG", "--project", "other", "--json", stdin=b"new")
        assert put.returncode == 0, put.stderr
        expected[json.loads(put.stdout)["id"]] = b"new"
        swept = cli(env, "sweep-expired", "--json")
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout)["deleted"] == 1
        assert migrate.poll() is None  # it was mid-upload all along
    finally:
        release.set()
    out, err = migrate.communicate(timeout=120)
    assert migrate.returncode == 0, err.decode()
    # The six held rows at least; the row put meanwhile may be claimed too, as any row
    # written during a run may (how many depends on when the run claimed its last batch).
    migrated = json.loads(out)["migrated"]
    slow = [i for i in expected if storage.catalog.get(i).project_id == "slow"]
    assert len(slow) == 6 and all(storage.catalog.get(i).location is Location.S3 for i in slow)
    assert migrated >= 6
    assert_invariant(storage, expected)


def test_a_write_lock_held_too_long_is_one_line_and_exit_8(make_env, storage_factory, home) -> None:
    env = make_env()
    storage = storage_factory(env)
    storage.catalog.init_schema()
    path = Path(home) / "apstorage.sqlite"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        result = cli(env, "put", "-", "--type", "FLOW_RUN_LOG", "--project", "p1", stdin=b"x")
        reader = cli(env, "du", "--json")  # reads do not wait for the writer
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert result.returncode == 8, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) <= 2 and str(path) in lines[0] and "Traceback" not in result.stderr.decode()
    assert reader.returncode == 0, reader.stderr


# -- item 9 (part): a row swept while migrate works on it counts as gone ---------------------


def test_a_row_deleted_while_being_migrated_counts_as_gone(make_env, faulty_s3, bucket, tmp_path, storage_factory) -> None:
    env = make_env(**faulty_s3.info.ap_env(bucket), AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    storage = storage_factory(env)
    expected = {}
    for i in range(4):
        body = os.urandom(70 + i)
        expected[add_row(storage, Location.DB, body)] = body
    doomed = add_row(storage, Location.DB, b"swept meanwhile", project="doomed")
    db_path = Path(env["AP_CONFIG_PATH"]) / "apstorage.sqlite"

    def sweep_it(req):
        other = sqlite3.connect(db_path, isolation_level=None, timeout=10)
        other.execute('DELETE FROM "file" WHERE "id" = ?', (doomed,))
        other.close()
        return None  # then forward the upload

    faulty_s3.add(Fault(action="custom", method="PUT", path="/project/doomed/", handler=sweep_it))
    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    assert (report.migrated, report.failed, report.gone) == (4, 0, 1)
    assert not row_exists(storage, doomed)
    assert s3_keys(storage) == {Raw(storage, i).key for i in expected}  # no orphan left
    assert_invariant(storage, expected)


def test_a_multipart_upload_answered_2xx_but_never_completed_moves_nothing(faulty_env, faulty_s3, storage_factory) -> None:
    """CompleteMultipartUpload answered 200 without being forwarded: the HEAD finds no
    object, so the row stays LOCAL with its file."""
    storage = storage_factory(faulty_env)
    body = os.urandom(17 * 1024 * 1024)  # over the multipart threshold
    big = add_row(storage, Location.LOCAL, body, file_type="FLOW_STEP_FILE")
    fault = faulty_s3.add(Fault(action="status", method="POST", query="uploadId", status=200,
                                value="<CompleteMultipartUploadResult></CompleteMultipartUploadResult>"))
    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    assert fault.applied == 1
    assert (report.migrated, report.failed) == (0, 1) and report.failures[0]["id"] == big
    assert Raw(storage, big).location is Location.LOCAL
    assert_invariant(storage, {big: body})
    faulty_s3.clear()
    assert migrate_to_s3(storage, MigrateOptions(workers=2)).migrated == 1
    assert_invariant(storage, {big: body})


def test_a_multipart_part_answered_without_an_etag_fails_alone_and_is_aborted(faulty_env, faulty_s3, storage_factory) -> None:
    """UploadPart answered 200 without an ETag: the upload cannot be completed or proven, so
    the row stays LOCAL with its file, the failure is one line, and no multipart upload is
    left open in the bucket."""
    storage = storage_factory(faulty_env)
    body = os.urandom(17 * 1024 * 1024)  # over the multipart threshold
    big = add_row(storage, Location.LOCAL, body, file_type="FLOW_STEP_FILE")
    fault = faulty_s3.add(Fault(action="drop_etag", method="PUT", query="uploadId"))
    report = migrate_to_s3(storage, MigrateOptions(workers=2))
    assert fault.applied >= 1
    assert (report.migrated, report.failed) == (0, 1) and "ETag" in report.failures[0]["reason"]
    assert Raw(storage, big).location is Location.LOCAL
    s3 = storage.store(Location.S3)
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert_invariant(storage, {big: body})
    faulty_s3.clear()
    assert migrate_to_s3(storage, MigrateOptions(workers=2)).migrated == 1
    assert_invariant(storage, {big: body})


def test_a_local_row_swept_before_its_file_was_read_counts_as_gone(make_env, faulty_s3, bucket, tmp_path, storage_factory) -> None:
    """A sweep deletes a LOCAL row's file, then the row, while migrate is busy with the
    batch: the row counts as gone, not as a failure."""
    env = make_env(**faulty_s3.info.ap_env(bucket), AP_LOCAL_STORAGE_PATH=str(tmp_path / "local"))
    storage = storage_factory(env)
    first = add_row(storage, Location.LOCAL, b"moved", project="trig", file_id="0" * 20 + "1")
    doomed = add_row(storage, Location.LOCAL, b"swept", project="doomed", file_id="z" * 21)
    doomed_path = storage.store(Location.LOCAL).path_for(Raw(storage, doomed).key)
    db_path = Path(env["AP_CONFIG_PATH"]) / "apstorage.sqlite"

    def sweep_it(req):
        doomed_path.unlink()  # a sweep deletes the bytes first, then the row
        other = sqlite3.connect(db_path, isolation_level=None, timeout=10)
        other.execute('DELETE FROM "file" WHERE "id" = ?', (doomed,))
        other.close()
        return None

    faulty_s3.add(Fault(action="custom", method="PUT", path="/project/trig/", handler=sweep_it))
    report = migrate_to_s3(storage, MigrateOptions(workers=1, sources=(Location.LOCAL,)))
    assert (report.migrated, report.failed, report.gone) == (1, 0, 1), report.failures
    assert_invariant(storage, {first: b"moved"})
    assert s3_keys(storage) == {Raw(storage, first).key}


def test_rows_under_a_linked_folder_dry_run_says_what_the_real_run_keeps(env, storage_factory, set_env,
                                                                         tmp_path) -> None:
    """A project folder under the LOCAL root is a symbolic link to a folder outside it,
    holding expired rows' files. The real sweep keeps those rows (a delete through a link
    is refused) and the dry run says so too: the same failures, exit 1 both times, grouped
    into one line per reason (the key written <key>), never a pair of lines per file."""
    storage = storage_factory(env)
    local = storage.store(Location.LOCAL)
    outside = tmp_path / "outside"
    outside.mkdir()
    (local.path_for("project/p2").parent).mkdir(parents=True, exist_ok=True)
    local.path_for("project/p2").symlink_to(outside, target_is_directory=True)
    linked = []
    for _ in range(6):
        file_id = new_id()
        key = object_key(file_id, "FLOW_RUN_LOG", "p2", None)
        (outside / "FLOW_RUN_LOG").mkdir(exist_ok=True)
        (outside / "FLOW_RUN_LOG" / file_id).write_bytes(b"outside the root")
        linked.append(add_row(storage, Location.LOCAL, b"outside the root", project="p2", created=OLD,
                              s3_key=key, write=False, file_id=file_id))
    plain = add_row(storage, Location.LOCAL, b"an ordinary file", created=OLD)
    set_env(**env)
    runner = CliRunner()
    dry = runner.invoke(app, ["sweep-expired", "--dry-run", "--json"], catch_exceptions=False)
    real_dry = json.loads(dry.stdout)
    assert dry.exit_code == 1 and (real_dry["deleted"], real_dry["failed"]) == (1, 6), real_dry
    text_dry = runner.invoke(app, ["sweep-expired", "--dry-run"], catch_exceptions=False)
    result = runner.invoke(app, ["sweep-expired"], catch_exceptions=False)
    assert result.exit_code == 1, result.stderr
    for out in (text_dry, result):
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "kept 6 files" in errors[0] and "<key>" in errors[0], out.stderr
    assert all(row_exists(storage, i) for i in linked) and not row_exists(storage, plain)
    assert sorted(p.read_bytes() for p in (outside / "FLOW_RUN_LOG").iterdir()) == [b"outside the root"] * 6
