"""`restore` (issue 21, item 5) against real servers: SeaweedFS and moto's server (both keep
versions), rclone's S3 server (no versioning API), and the fault stand-in (a proof that
fails, an Object Lock refusal). SQLite catalogs, Postgres for the round trip.

After every command: every S3 row's bytes exist, at least as a restorable version
(``assert_restorable``), and once restored every row reads back byte for byte through
the path `get` takes (``assert_intact``).
"""

from __future__ import annotations

import json
import secrets

import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.errors import UsageError
from apstorage.services.restore import RestoreRequest
from apstorage.stores.s3_versions import OBJECT_LOCK_REASON
from tests.integrity import assert_intact
from tests.s3_faults import Fault, s3_error
from tests.test_cli import closed_port
from tests.test_versioned_sweep import NOW, OLD, _versioned, assert_restorable, listing, put_row


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def restore_json(runner: CliRunner, *args: str) -> tuple[int, dict]:
    result = invoke(runner, "restore", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(params=["seaweed", "moto"])
def server(request):
    return request.getfixturevalue(request.param)


def _put(runner: CliRunner, tmp_path, body: bytes, *, project: str = "proj1") -> str:
    src = tmp_path / f"f-{secrets.token_hex(4)}"
    src.write_bytes(body)
    result = invoke(runner, "put", str(src), "--type", "FLOW_RUN_LOG", "--project", project, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def _get(runner: CliRunner, file_id: str) -> bytes:
    result = runner.invoke(app, ["get", file_id, "-o", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def _key(storage, file_id: str) -> str:
    return storage.catalog.get(file_id).key


def _catalog(storage) -> list[tuple]:
    return storage.catalog._execute('SELECT "id", "s3Key", "location", "size", "updated" FROM "file" ORDER BY "id"')


# -- the round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_put_delete_restore_get_byte_for_byte(server, catalog, request, make_env, set_env, storage_factory,
                                              runner, tmp_path) -> None:
    bucket = _versioned(server)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **server.ap_env(bucket))
    if catalog == "postgres":
        env["AP_POSTGRES_URL"] = request.getfixturevalue("pg_url")
    set_env(**env)
    assert invoke(runner, "init").exit_code == 0
    client = server.client()
    bodies = {"a": secrets.token_bytes(3000), "b": b"kept as it is"}
    ids = {name: _put(runner, tmp_path, body) for name, body in bodies.items()}
    storage = storage_factory(env)
    key = _key(storage, ids["a"])
    client.delete_object(Bucket=bucket, Key=key)  # a delete marker: the bytes stay as a version
    assert assert_restorable(storage, client, bucket) == 2
    rows_before = _catalog(storage)

    before = listing(client, bucket)
    code, dry = restore_json(runner, ids["a"], ids["b"], "--dry-run")
    assert code == 0 and dry["dryRun"] is True
    assert listing(client, bucket) == before  # nothing written
    (would,) = [r for r in dry["rows"] if r["status"] == "wouldRestore"]
    assert would["id"] == ids["a"] and would["bytes"] == 3000
    assert would["versionId"] == before[key]["versions"][0][0]
    assert dry["restored"] == 1 and dry["alreadyPresent"] == 1 and dry["bytesRestored"] == 3000

    result = invoke(runner, "restore", ids["a"], ids["b"])
    assert result.exit_code == 0, result.output
    assert f"restored FLOW_RUN_LOG {ids['a']} {key} 2.9 KiB from version {would['versionId']}, proven: size+etag" in result.stdout
    assert f"already present FLOW_RUN_LOG {ids['b']}" in result.stdout
    assert "restore: restored 1 file (2.9 KiB)" in result.stderr and "1 already present" in result.stderr
    assert _get(runner, ids["a"]) == bodies["a"]
    assert assert_intact(storage, {ids[n]: bodies[n] for n in bodies}) == 2
    assert _catalog(storage) == rows_before  # the catalog is never changed

    after = listing(client, bucket)
    code, again = restore_json(runner, ids["a"])
    assert code == 0 and again["restored"] == 0 and again["alreadyPresent"] == 1
    assert listing(client, bucket) == after  # already present: nothing written


def test_multipart_version_is_proven_by_size_and_the_copys_etag(seaweed, make_env, set_env, storage_factory,
                                                                runner) -> None:
    bucket = _versioned(seaweed)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **seaweed.ap_env(bucket))
    set_env(**env)
    storage = storage_factory(env)
    client = seaweed.client()
    row = put_row(storage, client, bucket, 1, [])
    body = secrets.token_bytes(2048)
    upload = client.create_multipart_upload(Bucket=bucket, Key=row.key)
    part = client.upload_part(Bucket=bucket, Key=row.key, UploadId=upload["UploadId"], PartNumber=1, Body=body)
    client.complete_multipart_upload(Bucket=bucket, Key=row.key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    storage.catalog._execute(f'UPDATE "file" SET "size" = {len(body)} WHERE "id" = {storage.catalog.ph}', (row.id,))
    assert client.head_object(Bucket=bucket, Key=row.key)["ETag"].strip('"').endswith("-1")
    client.delete_object(Bucket=bucket, Key=row.key)
    code, doc = restore_json(runner, row.id)
    assert code == 0, doc
    (restored,) = doc["rows"]
    assert restored["status"] == "restored" and restored["proof"] in ("size+copyEtag", "size+etag")
    if restored["proof"] == "size+copyEtag":  # the version's ETag was a multipart one
        assert restored["etag"] == client.head_object(Bucket=bucket, Key=row.key)["ETag"].strip('"')
    assert assert_intact(storage, {row.id: body}) == 1


# -- what cannot be restored -------------------------------------------------------------------


def test_refusals_name_the_id_with_their_exit_codes(seaweed, make_env, set_env, storage_factory, runner,
                                                    tmp_path) -> None:
    bucket = _versioned(seaweed)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **seaweed.ap_env(bucket))
    set_env(**env)
    storage = storage_factory(env)
    client = seaweed.client()
    good = put_row(storage, client, bucket, 1, [b"bytes to bring back"])
    client.delete_object(Bucket=bucket, Key=good.key)
    markers_only = put_row(storage, client, bucket, 1, [b"gone for good"])
    vid = client.head_object(Bucket=bucket, Key=markers_only.key)["VersionId"]
    client.delete_object(Bucket=bucket, Key=markers_only.key)
    client.delete_object(Bucket=bucket, Key=markers_only.key, VersionId=vid)  # only the marker is left
    never = put_row(storage, client, bucket, 1, [])  # no version, no marker
    src = tmp_path / "pkg"
    src.write_bytes(b"a package archive lives in the DB")
    db_id = json.loads(invoke(runner, "put", str(src), "--type", "PACKAGE_ARCHIVE", "--project", "proj1",
                              "--json").stdout)["id"]
    before = listing(client, bucket)

    def one_error_line(result) -> str:  # a request refused as a whole: one line, no summary
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
        assert result.stdout == "" and "restore: " not in result.stderr, result.output
        return result.stderr

    result = invoke(runner, "restore", "NoSuchId0000000000000")
    assert result.exit_code == 4 and "NoSuchId0000000000000" in one_error_line(result)
    for row, words in ((markers_only, "only delete markers"), (never, "no version and no delete marker")):
        result = invoke(runner, "restore", row.id)
        assert result.exit_code == 4, result.output
        assert row.id in one_error_line(result) and words in result.stderr
    result = invoke(runner, "restore", db_id)
    assert result.exit_code == 6 and db_id in one_error_line(result) and "S3 rows only" in result.stderr
    result = invoke(runner, "restore", db_id, "NoSuchId0000000000000")  # every id refused: their lines only
    assert result.exit_code == 4 and result.stderr.count("error: ") == 2 and "restore: " not in result.stderr
    assert listing(client, bucket) == before  # nothing written by any refusal

    # several at once: the restorable one is restored, the run says what it could not do
    result = invoke(runner, "restore", "--dry-run", good.id, db_id)  # only some refused: the summary stays
    assert result.exit_code == 6 and "error: " in result.stderr
    assert "restore: would restore 1 file" in result.stderr and "1 not in S3" in result.stderr, result.stderr
    code, doc = restore_json(runner, good.id, never.id, "NoSuchId0000000000000", db_id)
    assert code == 4
    assert (doc["restored"], doc["notRestorable"], doc["notFound"], doc["notS3"]) == (1, 1, 1, 1)
    assert {r["id"]: r["status"] for r in doc["rows"]}[good.id] == "restored"
    assert client.get_object(Bucket=bucket, Key=good.key)["Body"].read() == b"bytes to bring back"


@pytest.mark.parametrize("args,words", [
    ((), "--all-missing"),
    (("someid", "--all-missing"), "--all-missing"),
    (("someid", "--project", "p1"), "--all-missing"),
    (("--all-missing", "--project", ""), "--project"),
    (("--all-missing", "--platform", "a b"), "--platform"),
])
def test_usage_errors_name_the_flags(args, words, set_env, runner) -> None:
    set_env()
    result = invoke(runner, "restore", *args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr


def test_unversioned_buckets_have_nothing_to_restore_from(seaweed, rclone, make_env, set_env, storage_factory,
                                                          runner) -> None:
    for info in (seaweed, rclone):
        bucket = f"u-{secrets.token_hex(5)}"
        client = info.client()
        client.create_bucket(Bucket=bucket)
        env = make_env(AP_FILE_STORAGE_LOCATION="S3", **info.ap_env(bucket))
        set_env(**env)
        storage = storage_factory(env)
        row = put_row(storage, client, bucket, 1, [b"x"])
        client.delete_object(Bucket=bucket, Key=row.key)
        for args in ((row.id,), ("--all-missing",), ("--all-missing", "--dry-run")):
            result = invoke(runner, "restore", *args)
            assert result.exit_code == 4, result.output
            assert "is not versioned" in result.stderr and "nothing was written" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_unreachable_s3_is_exit_8(make_env, set_env, storage_factory, runner) -> None:
    port = closed_port()
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", AP_S3_BUCKET="bkt", AP_S3_ENDPOINT=f"http://127.0.0.1:{port}",
                   AP_S3_ACCESS_KEY_ID="k", AP_S3_SECRET_ACCESS_KEY="very-secret-value", AP_S3_TIMEOUT_SECONDS="2")
    set_env(**env)
    storage = storage_factory(env)
    from apstorage.model import FileRow, Location, new_id

    row = storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p",
                                         size=1, created=NOW))
    result = invoke(runner, "restore", row.id, "--json")
    assert result.exit_code == 8 and f"127.0.0.1:{port}" in result.stderr
    assert json.loads(result.stdout)["error"]["exitCode"] == 8
    assert "very-secret-value" not in result.output


# -- --all-missing, with gc --missing and sweep-expired -------------------------------------------


def test_gc_missing_then_restore_all_missing(server, make_env, set_env, storage_factory, runner) -> None:
    bucket = _versioned(server)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **server.ap_env(bucket))
    set_env(**env)
    storage = storage_factory(env)
    client = server.client()
    a = put_row(storage, client, bucket, OLD - 10, [b"first a", b"current a"])
    b = put_row(storage, client, bucket, OLD - 10, [b"present b"])
    lost = put_row(storage, client, bucket, OLD - 10, [])  # its bytes never were
    other = put_row(storage, client, bucket, OLD - 10, [b"other project"], key=f"project/proj2/FLOW_RUN_LOG/{secrets.token_hex(4)}")
    storage.catalog._execute(f'UPDATE "file" SET "projectId" = {storage.catalog.ph} WHERE "id" = {storage.catalog.ph}',
                             ("proj2", other.id))
    bodies = {a.id: b"current a", b.id: b"present b", other.id: b"other project"}
    for row in (a, other):
        client.delete_object(Bucket=bucket, Key=row.key)

    code, dry = restore_json(runner, "--all-missing", "--dry-run")
    assert code == 4  # one row cannot be restored: exit 4, after listing what would be
    assert (dry["restored"], dry["notRestorable"], dry["alreadyPresent"], dry["checked"]) == (2, 1, 1, 4)
    assert {r["id"] for r in dry["rows"] if r["status"] == "wouldRestore"} == {a.id, other.id}
    result = invoke(runner, "restore", "--all-missing", "--dry-run")
    assert "1 row without a current object cannot be restored" in result.stderr and lost.id in result.stderr
    assert assert_restorable(storage, client, bucket, skip=frozenset({lost.id})) == 3  # dry run: nothing written

    gc = json.loads(invoke(runner, "gc", "--missing", "--trust", "S3", "--json").stdout)
    assert gc["restorable"] == 2  # kept: restorable
    ids = {r[0] for r in _catalog(storage)}
    assert lost.id not in ids and {a.id, b.id, other.id} <= ids
    assert assert_restorable(storage, client, bucket) == 3

    code, doc = restore_json(runner, "--all-missing", "--project", "proj2")
    assert code == 0 and doc["restored"] == 1 and doc["rows"][0]["id"] == other.id
    assert doc["checked"] == 1
    assert assert_restorable(storage, client, bucket) == 3
    assert "DeleteMarkers" in client.list_object_versions(Bucket=bucket, Prefix=a.key)  # a still deleted
    code, doc = restore_json(runner, "--all-missing", "--workers", "2")
    assert code == 0, doc
    assert (doc["restored"], doc["alreadyPresent"], doc["notRestorable"]) == (1, 2, 0)
    assert doc["rows"][0]["id"] == a.id and doc["bytesRestored"] == len(b"current a")
    assert assert_intact(storage, bodies) == 3
    code, doc = restore_json(runner, "--all-missing")
    assert code == 0 and doc["restored"] == 0 and doc["alreadyPresent"] == 3


def test_a_swept_row_is_gone_so_restore_says_not_found(seaweed, make_env, set_env, storage_factory, runner) -> None:
    bucket = _versioned(seaweed)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **seaweed.ap_env(bucket))
    set_env(**env)
    storage = storage_factory(env)
    client = seaweed.client()
    swept = put_row(storage, client, bucket, OLD, [b"expired"])
    assert invoke(runner, "sweep-expired").exit_code == 0
    result = invoke(runner, "restore", swept.id)
    assert result.exit_code == 4 and swept.id in result.stderr and "no file with id" in result.stderr


# -- faults: a proof that fails, an Object Lock refusal -------------------------------------------


def _faulty_env(faulty_s3, make_env, set_env, storage_factory):
    bucket = _versioned(faulty_s3.upstream)
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **faulty_s3.info.ap_env(bucket))
    set_env(**env)
    return bucket, storage_factory(env), faulty_s3.upstream.client()


def test_a_copy_that_left_two_versions_of_the_same_bytes_is_restored(faulty_s3, make_env, set_env,
                                                                      storage_factory, runner) -> None:
    """SeaweedFS sometimes leaves two versions from one CopyObject: the answer names one, the
    other is current. Both hold the version's bytes (size and ETag match), so the row is
    restored, reported with the current version's id — no proof failure, no undo."""
    bucket, storage, client = _faulty_env(faulty_s3, make_env, set_env, storage_factory)
    row = put_row(storage, client, bucket, 1, [b"copied twice"])
    client.delete_object(Bucket=bucket, Key=row.key)

    def twice(req):
        if "x-amz-copy-source" not in req.headers:
            return None
        first = faulty_s3.forward(req, {})
        if first.status == 200:
            faulty_s3.forward(req, {})  # a second version, now the current one
        return first

    faulty_s3.add(Fault("custom", method="PUT", handler=twice))
    code, doc = restore_json(runner, row.id)
    assert code == 0, doc
    (restored,) = doc["rows"]
    current = client.head_object(Bucket=bucket, Key=row.key)
    assert restored["status"] == "restored" and restored["newVersionId"] == current["VersionId"]
    assert client.get_object(Bucket=bucket, Key=row.key)["Body"].read() == b"copied twice"


def test_a_proof_that_fails_keeps_the_row_and_exits_1(faulty_s3, make_env, set_env, storage_factory, runner) -> None:
    bucket, storage, client = _faulty_env(faulty_s3, make_env, set_env, storage_factory)
    wrong_etag = put_row(storage, client, bucket, 1, [b"etag will be wrong"])
    wrong_size = put_row(storage, client, bucket, 1, [b"size will be wrong"])
    for row in (wrong_etag, wrong_size):
        client.delete_object(Bucket=bucket, Key=row.key)
    rows_before = _catalog(storage)
    faulty_s3.add(Fault("etag", method="HEAD", path=wrong_etag.key + "$", value='"' + "0" * 32 + '"'))

    def short(req):
        answer = faulty_s3.forward(req, {})
        if answer.status == 200:
            answer.headers = {k: ("3" if k.lower() == "content-length" else v) for k, v in answer.headers.items()}
        return answer

    faulty_s3.add(Fault("custom", method="HEAD", path=wrong_size.key + "$", handler=short))
    code, doc = restore_json(runner, wrong_etag.id, wrong_size.id)
    assert code == 1, doc
    rows = {r["id"]: r for r in doc["rows"]}
    assert doc["failed"] == 2 and doc["restored"] == 0
    assert rows[wrong_etag.id]["reason"] == "proof failed: the restored object's ETag is not the version's"
    assert rows[wrong_size.id]["reason"] == "proof failed: the restored object's size is not the version's"
    assert "HEAD shows 3 bytes" in rows[wrong_size.id]["detail"]
    assert all("was deleted again" in r["detail"] for r in rows.values())  # the key is as it was
    assert _catalog(storage) == rows_before  # the rows are kept, unchanged
    assert assert_restorable(storage, client, bucket) == 2
    # Not asserted: a later run once the faults are gone. Through this stand-in (only),
    # SeaweedFS 4.48 now and then shows a second copy of the version about a second after
    # the first was deleted again, so what a re-run finds depends on timing.


def test_proof_failures_are_grouped_by_reason(faulty_s3, make_env, set_env, storage_factory, runner) -> None:
    bucket, storage, client = _faulty_env(faulty_s3, make_env, set_env, storage_factory)
    rows = [put_row(storage, client, bucket, 1, [b"bytes %d" % i]) for i in range(3)]
    for row in rows:
        client.delete_object(Bucket=bucket, Key=row.key)
    faulty_s3.add(Fault("etag", method="HEAD", value='"' + "0" * 32 + '"'))
    result = invoke(runner, "restore", *(r.id for r in rows))
    assert result.exit_code == 1, result.output
    assert "not restored 3 files: proof failed: the restored object's ETag is not the version's" in result.stderr
    assert "restore: restored 0 files (0 B)" in result.stderr and "3 failed" in result.stderr


def test_an_object_lock_refusal_is_named_and_exits_1(faulty_s3, make_env, set_env, storage_factory, runner) -> None:
    bucket, storage, client = _faulty_env(faulty_s3, make_env, set_env, storage_factory)
    row = put_row(storage, client, bucket, 1, [b"locked"])
    client.delete_object(Bucket=bucket, Key=row.key)
    body = s3_error(403, "AccessDenied", "Access Denied because object protected by object lock.").body.decode()
    faulty_s3.add(Fault("status", method="PUT", path=row.key + "$", status=403, value=body))
    before = listing(client, bucket)
    result = invoke(runner, "restore", row.id)
    assert result.exit_code == 1, result.output
    assert OBJECT_LOCK_REASON in result.stderr
    assert listing(client, bucket) == before


# -- the flags, searched ------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.text(max_size=30), max_size=4),
    all_missing=st.booleans(),
    projects=st.none() | st.lists(st.text(max_size=20), max_size=3),
    platforms=st.none() | st.lists(st.text(max_size=20), max_size=3),
)
def test_flags_are_a_request_or_a_usage_error(ids, all_missing, projects, platforms) -> None:
    try:
        request = RestoreRequest.from_flags(ids, all_missing, projects, platforms)
    except UsageError as exc:
        assert exc.exit_code == 2 and exc.message
        return
    assert bool(request.ids) != request.all_missing  # exactly one of the two
    assert not (request.project_ids or request.platform_ids) or request.all_missing
    assert all(request.ids) and len(set(request.ids)) == len(request.ids)


# -- more of what an operator meets -------------------------------------------------------------


def test_a_suspended_bucket_restores_its_versions(seaweed, make_env, set_env, storage_factory, runner) -> None:
    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **seaweed.ap_env(bucket))
    set_env(**env)
    storage = storage_factory(env)
    row = put_row(storage, client, bucket, 1, [b"written while versioning was enabled"])
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    client.delete_object(Bucket=bucket, Key=row.key)  # a null delete marker; the version stays
    code, doc = restore_json(runner, row.id, "--verbose")
    assert code == 0, json.dumps(doc["rows"])
    assert doc["versioning"]["status"] == "Suspended" and doc["restored"] == 1
    assert assert_intact(storage, {row.id: b"written while versioning was enabled"}) == 1


def test_a_refused_copy_names_the_permissions(seaweed, make_env, set_env, storage_factory, runner) -> None:
    from tests.conftest import READONLY_IDENTITY

    bucket = _versioned(seaweed)
    client = seaweed.client()
    reader = READONLY_IDENTITY[0]["credentials"][0]
    env = make_env(AP_FILE_STORAGE_LOCATION="S3", **seaweed.ap_env(bucket))
    storage = storage_factory(env)
    rows = [put_row(storage, client, bucket, 1, [b"row %d" % i]) for i in range(2)]
    for row in rows:
        client.delete_object(Bucket=bucket, Key=row.key)
    before = listing(client, bucket)
    set_env(**{**env, "AP_S3_ACCESS_KEY_ID": reader["accessKey"], "AP_S3_SECRET_ACCESS_KEY": reader["secretKey"]})
    result = invoke(runner, "restore", *(r.id for r in rows))
    assert result.exit_code == 1, result.output  # the reader may list and read versions, not write
    assert "not restored 2 files: CopyObject was refused: AccessDenied" in result.stderr  # one reason, both rows
    assert "s3:GetObjectVersion and s3:PutObject" in result.stderr
    assert listing(client, bucket) == before


def test_all_missing_pages_the_catalog_by_owner(catalog_env, storage_factory) -> None:
    from apstorage.catalog.restore import iter_s3_pages
    from apstorage.model import FileRow, Location, new_id

    storage = storage_factory(catalog_env)
    catalog = storage.catalog
    catalog.init_schema()
    made = {}
    for owner in ("p1", "p2", "pl"):
        for i in range(3):
            fid = new_id()
            platform = owner if owner == "pl" else None
            catalog.insert(FileRow(id=fid, type="FLOW_RUN_LOG", location=Location.S3, size=i,
                                   project_id=None if platform else owner, platform_id=platform))
            made[fid] = owner
    catalog.insert(FileRow(id=new_id(), type="UNKNOWN", location=Location.DB, project_id="p1", size=1), b"x")

    def ids(**kw):
        pages = list(iter_s3_pages(catalog, page=2, **kw))
        assert all(len(p) <= 2 for p in pages)
        out = [r.id for p in pages for r in p]
        assert out == sorted(out)
        return set(out)

    assert ids() == set(made)
    assert ids(project_ids=["p2"]) == {f for f, o in made.items() if o == "p2"}
    assert ids(project_ids=["p1"], platform_ids=["pl"]) == {f for f, o in made.items() if o in ("p1", "pl")}
    assert ids(project_ids=["nobody"]) == set()
    row = next(r for p in iter_s3_pages(catalog, platform_ids=["pl"]) for r in p)
    assert row.key == f"platform/pl/FLOW_RUN_LOG/{row.id}" and row.type == "FLOW_RUN_LOG"


def test_rows_sharing_a_key_are_restored_by_one_copy_counted_once(seaweed, make_env, set_env, storage_factory,
                                                                  runner) -> None:
    """Three rows whose s3Key is one key (a copy the platform made): one CopyObject brings
    all three back, and bytesRestored counts its bytes once."""
    bucket = _versioned(seaweed)
    client = seaweed.client()
    env = make_env(**seaweed.ap_env(bucket))
    storage = storage_factory(env)
    body = secrets.token_bytes(1100)
    first = put_row(storage, client, bucket, 1, [body])
    for _ in range(2):
        put_row(storage, client, bucket, 1, [], key=first.s3_key)
    storage.catalog._execute('UPDATE "file" SET "size" = 1100')
    client.delete_object(Bucket=bucket, Key=first.s3_key)
    set_env(**env)
    ids = [r[0] for r in storage.catalog._execute('SELECT "id" FROM "file"')]
    code, data = restore_json(runner, *ids)
    assert code == 0, data
    assert data["restored"] + data["alreadyPresent"] == 3 and data["bytesRestored"] == 1100, data
    versions = [v for v in listing(client, bucket)[first.s3_key]["versions"]]
    assert len(versions) == 2  # the original and one copy, never three
    assert client.get_object(Bucket=bucket, Key=first.s3_key)["Body"].read() == body


def test_a_refused_listing_fails_only_the_rows_without_their_object(faulty_s3, make_env, set_env, storage_factory,
                                                                    runner) -> None:
    """ListObjectVersions refused: restore --all-missing cannot judge the rows whose
    object is gone (failed, naming s3:ListBucketVersions), but a HEAD still shows the others
    present; nothing is written."""
    bucket, storage, client = _faulty_env(faulty_s3, make_env, set_env, storage_factory)
    present = [put_row(storage, client, bucket, 1, [b"here"]) for _ in range(2)]
    gone = put_row(storage, client, bucket, 1, [b"gone"])
    client.delete_object(Bucket=bucket, Key=gone.key)
    before = listing(client, bucket)
    faulty_s3.add(Fault("status", method="GET", query="versions", status=403, code="AccessDenied"))
    code, doc = restore_json(runner, "--all-missing")
    assert code == 1, doc
    assert doc["failed"] == 1 and doc["alreadyPresent"] == 2, doc
    (failed,) = [r for r in doc["rows"] if r["status"] == "failed"]
    assert failed["id"] == gone.id and "s3:ListBucketVersions" in failed["reason"]
    assert listing(client, bucket) == before
    assert all(client.head_object(Bucket=bucket, Key=r.key)["ContentLength"] == 4 for r in present)
