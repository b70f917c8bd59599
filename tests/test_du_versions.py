"""du and du --verify on versioned buckets (issue 21 item 3): SeaweedFS and moto's server
keep versions; rclone's S3 server has no versioning API. The figures du prints must match
``list_object_versions`` exactly; restorable rows are counted apart from missing ones."""

from __future__ import annotations

import json
import secrets

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from tests.test_versioned_sweep import FRESH, OLD, listing, put_row


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _bucket(info, status: str | None) -> str:
    name = f"v-{secrets.token_hex(6)}"
    client = info.client()
    client.create_bucket(Bucket=name)
    if status:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if status == "Suspended":
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    return name


@pytest.fixture(params=["seaweed", "moto"])
def server(request):
    return request.getfixturevalue(request.param)


def du(runner: CliRunner, *args: str):
    return runner.invoke(app, ["du", *args], catch_exceptions=False)


def expected(client, bucket: str) -> dict:
    """What list_object_versions shows under the managed prefixes, in du's JSON words."""
    current = noncurrent = markers = 0
    current_bytes = noncurrent_bytes = 0
    without = 0
    for key, entry in listing(client, bucket).items():
        if not key.startswith(("platform/", "project/")):
            continue
        markers += len(entry["markers"])
        has_current = False
        for _, size, latest in entry["versions"]:
            if latest:
                has_current = True
                current, current_bytes = current + 1, current_bytes + size
            else:
                noncurrent, noncurrent_bytes = noncurrent + 1, noncurrent_bytes + size
        without += not has_current
    return {
        "currentObjects": {"count": current, "bytes": current_bytes},
        "noncurrentVersions": {"count": noncurrent, "bytes": noncurrent_bytes},
        "deleteMarkers": {"count": markers},
        "keysWithoutCurrentObject": without,
    }


def shown(data: dict) -> dict:
    return {k: data[k] for k in ("currentObjects", "noncurrentVersions", "deleteMarkers", "keysWithoutCurrentObject")}


def seed(storage, client, bucket: str) -> dict:
    """Rows and keys of every kind: a live row with two versions, an expired row, a row
    whose object was deleted (restorable), a row with no version at all (missing), an
    unreferenced key with versions behind a delete marker (orphan versions), an
    unreferenced key with only a delete marker (lone), an object outside the managed
    prefixes (not counted)."""
    live = put_row(storage, client, bucket, FRESH, [b"first", b"second!"])
    expired = put_row(storage, client, bucket, OLD, [b"expired bytes"])
    restorable = put_row(storage, client, bucket, FRESH, [b"bring me back"])
    client.delete_object(Bucket=bucket, Key=restorable.s3_key)
    missing = put_row(storage, client, bucket, 10, [])  # past a pre-signed upload's 7 days
    orphan_key = "project/proj1/FLOW_RUN_LOG/orphanversions0000001"
    client.put_object(Bucket=bucket, Key=orphan_key, Body=b"orphan v1")
    client.put_object(Bucket=bucket, Key=orphan_key, Body=b"orphan v2!")
    client.delete_object(Bucket=bucket, Key=orphan_key)
    lone_key = "project/proj1/FLOW_RUN_LOG/lonemarker00000000001"
    put = client.put_object(Bucket=bucket, Key=lone_key, Body=b"gone")
    client.delete_object(Bucket=bucket, Key=lone_key)  # a delete marker ...
    client.delete_object(Bucket=bucket, Key=lone_key, VersionId=put["VersionId"])  # ... left alone
    client.put_object(Bucket=bucket, Key="elsewhere/not-ours", Body=b"x")
    return {"live": live, "expired": expired, "restorable": restorable, "missing": missing,
            "orphan_key": orphan_key, "lone_key": lone_key}


def test_du_counts_versions_and_markers_as_the_listing_shows(server, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    client = server.client()
    seed(storage, client, bucket)
    set_env(**env)
    result = du(runner, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["s3Versions"]
    assert data["versioning"] == "Enabled" and data["checked"] is True
    assert shown(data) == expected(client, bucket)
    assert data["noncurrentVersions"]["count"] == 4  # live's first, the restorable one, orphan's two
    assert data["deleteMarkers"]["count"] == 3  # restorable, orphan, lone

    text = du(runner)
    assert text.exit_code == 0
    assert "S3 bucket versioning Enabled:" in text.stdout
    assert "4 noncurrent versions" in text.stdout and "3 delete markers" in text.stdout

    # a sweep without --purge-versions leaves the expired bytes as a noncurrent version ...
    swept = runner.invoke(app, ["sweep-expired", "--json"], catch_exceptions=False)
    assert json.loads(swept.stdout)["deleted"] == 1
    after = json.loads(du(runner, "--json").stdout)["s3Versions"]
    assert shown(after) == expected(client, bucket)
    assert after["noncurrentVersions"]["count"] == 5 and after["deleteMarkers"]["count"] == 4

    # --no-versions: the catalog alone, no listing
    quick = json.loads(du(runner, "--json", "--no-versions").stdout)
    assert "s3Versions" not in quick


def test_purge_versions_leaves_nothing_of_the_swept_key_in_du(server, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    client = server.client()
    put_row(storage, client, bucket, OLD, [b"a" * 10, b"b" * 20])
    put_row(storage, client, bucket, FRESH, [b"live"])
    set_env(**env)
    before = json.loads(du(runner, "--json").stdout)["s3Versions"]
    assert before["currentObjects"]["count"] == 2 and before["noncurrentVersions"] == {"count": 1, "bytes": 10}
    runner.invoke(app, ["sweep-expired", "--purge-versions"], catch_exceptions=False)
    after = json.loads(du(runner, "--json").stdout)["s3Versions"]
    assert shown(after) == expected(client, bucket)
    assert after["currentObjects"] == {"count": 1, "bytes": 4}
    assert after["noncurrentVersions"] == {"count": 0, "bytes": 0} and after["deleteMarkers"]["count"] == 0


def test_verify_reports_orphan_versions_lone_markers_and_restorable_rows(server, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    client = server.client()
    made = seed(storage, client, bucket)
    set_env(**env)
    before = listing(client, bucket)
    result = du(runner, "--verify", "--json")
    assert result.exit_code == 1, result.output
    assert listing(client, bucket) == before  # verify never writes
    v = json.loads(result.stdout)["verify"]
    assert [i["id"] for i in v["restorable"]["items"]] == [made["restorable"].id]
    assert v["restorable"]["files"] == 1 and v["restorable"]["bytes"] == len(b"bring me back")
    assert [i["id"] for i in v["missing"]["items"]] == [made["missing"].id]  # no version: missing
    assert v["orphanVersions"]["files"] == 2 and v["orphanVersions"]["bytes"] == len(b"orphan v1") + len(b"orphan v2!")
    assert {i["key"] for i in v["orphanVersions"]["items"]} == {made["orphan_key"]}
    assert [i["key"] for i in v["loneDeleteMarkers"]["items"]] == [made["lone_key"]]
    assert shown(v["versions"]) == expected(client, bucket)
    assert v["ok"] is False

    text = du(runner, "--verify")
    assert text.exit_code == 1
    for words in ("restorable rows", "orphan versions", "lone delete markers", "apstorage restore"):
        assert words in text.stdout, words


def test_verify_on_a_clean_versioned_bucket_is_consistent(server, catalog_env, storage_factory, set_env, runner) -> None:
    """History of a referenced key (its noncurrent versions) is not a problem."""
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    put_row(storage, server.client(), bucket, FRESH, [b"one", b"two", b"three"])
    set_env(**env)
    result = du(runner, "--verify", "--json")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)["verify"]
    assert v["ok"] is True and v["restorable"]["files"] == 0 and v["orphanVersions"]["files"] == 0
    assert v["versions"]["noncurrentVersions"]["count"] == 2


def test_a_suspended_bucket_counts_what_versioning_kept(seaweed, catalog_env, storage_factory, set_env, runner) -> None:
    bucket = _bucket(seaweed, "Enabled")
    env = {**catalog_env, **seaweed.ap_env(bucket)}
    storage = storage_factory(env)
    client = seaweed.client()
    put_row(storage, client, bucket, FRESH, [b"kept while enabled", b"current"])
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    set_env(**env)
    data = json.loads(du(runner, "--json").stdout)["s3Versions"]
    assert data["versioning"] == "Suspended"
    assert shown(data) == expected(client, bucket)
    assert data["noncurrentVersions"]["count"] == 1


def test_unversioned_buckets_print_what_they_printed(seaweed, rclone, catalog_env, storage_factory, set_env, runner) -> None:
    """An unversioned SeaweedFS bucket and rclone (no versioning API): no version figures,
    no new verify kinds; the JSON keys are today's."""
    for info in (seaweed, rclone):
        bucket = _bucket(info, None)
        env = {**catalog_env, **info.ap_env(bucket)}
        storage = storage_factory(env)
        put_row(storage, info.client(), bucket, FRESH, [b"plain"])
        set_env(**env)
        data = json.loads(du(runner, "--json").stdout)
        assert "s3Versions" not in data
        text = du(runner)
        assert "versioning" not in text.stdout
        result = du(runner, "--verify", "--json")
        assert result.exit_code == 0, result.output
        verify = json.loads(result.stdout)["verify"]
        assert set(verify) == {"ok", "locations", "missing", "orphans", "sizeMismatches", "refused", "pendingUploads"}
        storage.catalog._execute('DELETE FROM "file"')  # the next server's bucket has no object of this row


def test_a_key_one_row_holds_under_another_name_is_never_an_orphan_version(server, catalog_env, storage_factory, set_env, runner) -> None:
    """A row whose s3Key does not end in its id (what a sweep leaves when two expired rows
    and a fresh one shared a key) holds that key alone: its history is not orphan
    versions, and when its current object is gone it is restorable, not also orphaned."""
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    client = server.client()
    put_row(storage, client, bucket, FRESH, [b"old one", b"current"], key="project/proj1/FLOW_RUN_LOG/custom-history")
    gone = put_row(storage, client, bucket, FRESH, [b"bring me back"], key="project/proj1/FLOW_RUN_LOG/custom-restorable")
    client.delete_object(Bucket=bucket, Key=gone.s3_key)
    set_env(**env)
    result = du(runner, "--verify", "--json")
    v = json.loads(result.stdout)["verify"]
    assert v["orphanVersions"]["files"] == 0, v["orphanVersions"]
    assert v["loneDeleteMarkers"]["files"] == 0
    assert [i["id"] for i in v["restorable"]["items"]] == [gone.id]
    assert result.exit_code == 1  # the restorable row is worth a look; nothing else is wrong


def test_restorable_means_what_restore_would_copy_back(server, catalog_env, storage_factory, set_env, runner) -> None:
    """One rule in du --verify, gc and restore: a row is restorable only when a version of
    its recorded size is there. Versions of another size are not its bytes: du calls the
    row missing, restore refuses it (exit 4), gc --missing --dry-run lists it as missing."""
    bucket = _bucket(server, "Enabled")
    env = {**catalog_env, **server.ap_env(bucket)}
    storage = storage_factory(env)
    client = server.client()
    other = put_row(storage, client, bucket, 10, [b"ten bytes!"])
    client.delete_object(Bucket=bucket, Key=other.s3_key)
    storage.catalog._execute(f'UPDATE "file" SET "size" = 3 WHERE "id" = {storage.catalog.ph}', (other.id,))
    right = put_row(storage, client, bucket, 10, [b"mine"])
    client.delete_object(Bucket=bucket, Key=right.s3_key)
    set_env(**env)
    v = json.loads(du(runner, "--verify", "--json").stdout)["verify"]
    assert [i["id"] for i in v["restorable"]["items"]] == [right.id]
    assert [i["id"] for i in v["missing"]["items"]] == [other.id]
    refused = runner.invoke(app, ["restore", other.id, "--json"], catch_exceptions=False)
    assert refused.exit_code == 4 and json.loads(refused.stdout)["rows"][0]["status"] == "notRestorable"
    plan = json.loads(runner.invoke(app, ["gc", "--missing", "--dry-run", "--trust", "S3", "--json"],
                                    catch_exceptions=False).stdout)
    planned = {i.get("id") for i in plan["items"]}
    assert other.id in planned and right.id not in planned
    assert [r["id"] for r in plan["restorableRows"]] == [right.id]
    restored = runner.invoke(app, ["restore", right.id], catch_exceptions=False)
    assert restored.exit_code == 0, restored.output


def test_du_json_does_not_call_an_unreachable_bucket_unversioned(catalog_env, storage_factory, set_env, runner) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**catalog_env, "AP_S3_BUCKET": "nowhere", "AP_S3_ENDPOINT": f"http://127.0.0.1:{port}",
           "AP_S3_ACCESS_KEY_ID": "AKIDEXAMPLE", "AP_S3_SECRET_ACCESS_KEY": "secret", "AP_S3_REGION": "us-east-1"}
    set_env(**env)
    data = json.loads(du(runner, "--json").stdout)
    assert data["s3Versions"]["checked"] is False and data["s3Versions"]["versioning"] is None


def test_versions_not_counted_is_a_warning_on_stderr_and_stdout_stays_the_report(make_env, set_env, runner) -> None:
    """The note is about the report, not part of it: `du > file` and `du --csv > file` hold
    data only; --json keeps the note in its document."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_env(AP_S3_BUCKET="nowhere", AP_S3_ENDPOINT=f"http://127.0.0.1:{port}", AP_S3_ACCESS_KEY_ID="AKIDEXAMPLE",
            AP_S3_SECRET_ACCESS_KEY="secret", AP_S3_REGION="us-east-1", AP_S3_TIMEOUT_SECONDS="2")
    plain = du(runner)
    assert plain.exit_code == 0, plain.output
    assert "not counted" not in plain.stdout and "total" in plain.stdout, plain.stdout
    assert plain.stderr.startswith("warning: S3 versions: not counted (versioning could not be asked: "), plain.stderr
    assert len(plain.stderr.splitlines()) == 1, plain.stderr
    csv_run = du(runner, "--csv")
    assert csv_run.exit_code == 0 and csv_run.stdout.splitlines() == ["location,type,files,bytes"], csv_run.output
    assert csv_run.stderr == ""
    json_run = du(runner, "--json")
    assert json_run.exit_code == 0 and json_run.stderr == "", json_run.stderr
    versions = json.loads(json_run.stdout)["s3Versions"]
    assert versions["checked"] is False and versions["note"].startswith("versioning could not be asked: ")
