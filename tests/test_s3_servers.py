"""One S3 contract suite, run on every S3 implementation the tests start.

SeaweedFS (``weed mini``) and rclone's S3 server (``rclone serve s3``) both enforce SigV4
signatures and pre-signed expiry. rclone has no lifecycle API and keeps no tags. moto's
server (``python -m moto.server``) keeps tags and lifecycle rules but checks no pre-signed
signature, expiry or signed ``Content-Length``. Where a server lacks a feature, the test
asserts the documented degradation (exit 6 and "not supported" for lifecycle; a warning
that the tag was dropped for put and check-iam; ``get`` refusing bytes of another size than
the row records), never a skip. The catalog is the embedded SQLite default: the subject
here is S3.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.errors import BackendUnavailableError, NotFoundError
from apstorage.model import FileRow, Location, new_id
from apstorage.services.context import Storage
from apstorage.stores.s3 import MULTIPART_THRESHOLD, S3Store, _xml_unsafe, parse_list_page
from tests import servers
from tests.conftest import settings_from
from tests.s3_faults import Answer, Fault

MiB = 1024 * 1024


@dataclass(frozen=True)
class Server:
    """One S3 implementation and what it can do."""

    name: str
    info: servers.S3Info
    lifecycle: bool  # implements bucket lifecycle configuration
    tags: bool  # keeps object tags (GetObjectTagging)
    signatures: bool = True  # checks pre-signed URLs: signature, expiry, signed headers


@pytest.fixture(params=["seaweedfs", "rclone", "moto"])
def s3_server(request: pytest.FixtureRequest) -> Server:
    if request.param == "seaweedfs":
        return Server("seaweedfs", request.getfixturevalue("seaweed"), lifecycle=True, tags=True)
    if request.param == "moto":
        return Server("moto", request.getfixturevalue("moto"), lifecycle=True, tags=True, signatures=False)
    return Server("rclone", request.getfixturevalue("rclone"), lifecycle=False, tags=False)


@pytest.fixture
def server_bucket(s3_server: Server) -> str:
    name = f"c-{secrets.token_hex(6)}"
    s3_server.info.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def env(s3_server: Server, server_bucket: str, set_env, tmp_path: Path) -> dict[str, str]:
    """The process environment the CLI reads: SQLite catalog, S3 storage on this server."""
    return set_env(
        **s3_server.info.ap_env(server_bucket),
        AP_FILE_STORAGE_LOCATION="S3",
        AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"),
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner: CliRunner) -> Callable[..., object]:
    def invoke(*args: str, input: bytes | None = None):
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


def keys_in(server: Server, bucket: str) -> list[str]:
    client = server.info.client()
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request without credentials; (status, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def put_json(cli, path: Path, *args: str) -> dict:
    result = cli("put", str(path), "--type", "FLOW_RUN_LOG", "--project", "proj1", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) | {"stderr": result.stderr}


def get_bytes(cli, file_id: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"out-{file_id}"
    result = cli("get", file_id, "-o", str(out))
    assert result.exit_code == 0, result.output
    return out.read_bytes()


class _closing:
    """Closes the store (its connections) after the block."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    def __enter__(self) -> S3Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


# -- put / get -----------------------------------------------------------------------------


def test_put_get_empty_non_ascii_and_zstd(s3_server, env, cli, tmp_path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    text = tmp_path / "journal-été-日本.log"
    payload = ("ligne été ✓ 日本語\n" * 400).encode()
    text.write_bytes(payload)

    ids = []
    for path, extra in ((empty, ()), (text, ()), (text, ("--compress", "zstd"))):
        put = put_json(cli, path, *extra)
        ids.append(put["id"])
        assert put["location"] == "S3" and put["s3Key"].startswith("project/proj1/FLOW_RUN_LOG/")
        assert get_bytes(cli, put["id"], tmp_path) == path.read_bytes()
        if extra:
            assert put["size"] < len(payload)  # stored compressed, read back whole
        dropped = "did not keep the tag ap-retention=execution" in put["stderr"]
        assert dropped is (not s3_server.tags), put["stderr"]
        if dropped:  # one line, naming what it costs
            assert put["stderr"].count("warning:") == 1 and "lifecycle rule" in put["stderr"]

    with Storage(settings_from(env)) as storage:
        assert storage.catalog.get(ids[1]).file_name == "journal-été-日本.log"
        assert storage.catalog.get(ids[0]).size == 0


def test_permanent_types_read_no_tag_back(env, cli, tmp_path) -> None:
    """Only tagged (execution-data) puts pay for the read-back: a permanent type goes to the
    database and says nothing about tags on any server."""
    src = tmp_path / "sample.json"
    src.write_bytes(b"{}")
    result = cli("put", str(src), "--type", "SAMPLE_DATA", "--project", "proj1", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["location"] == "DB"
    assert "tag" not in result.stderr


def test_multipart_upload_round_trips(s3_server, env, cli, tmp_path, set_env) -> None:
    """Over the multipart threshold (one 17 MiB file per server)."""
    set_env(**env, AP_MAX_FILE_SIZE_MB="20")
    big = tmp_path / "big.bin"
    data = secrets.token_bytes(MULTIPART_THRESHOLD + MiB)
    big.write_bytes(data)
    put = put_json(cli, big)
    assert put["size"] == len(data)
    got = get_bytes(cli, put["id"], tmp_path)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert ("did not keep the tag" in put["stderr"]) is (not s3_server.tags)


def test_keys_xml_cannot_carry_list_and_delete_under_their_own_names(s3_server, env) -> None:
    """Listing asks for encoding-type=url; DeleteObjects cannot carry control characters,
    so such keys are deleted one by one (never MalformedXML on every run)."""
    keys = ["project/p/ctl\x01key", "project/p/tab\tand\x1fus", "project/p/plus+and space", "project/p/é-ü-日"]
    with _closing(S3Store(settings_from(env))) as store:
        for key in keys:
            store.put(key, io.BytesIO(b"x"), 1)
        assert sorted(o.key for o in store.list("project/")) == sorted(keys)
        assert store.delete_many([*keys, "project/p/never-there"]) == {}
        assert list(store.list("project/")) == []


# -- presign -------------------------------------------------------------------------------


def test_presigned_get_works_and_refuses_tampering_and_expiry(s3_server, env, cli, tmp_path, monkeypatch) -> None:
    src = tmp_path / "run.log"
    src.write_bytes(b"pre-signed bytes\n")
    put = put_json(cli, src)
    result = cli("presign", put["id"], "--expires", "15m", "--json")
    assert result.exit_code == 0, result.output
    url = json.loads(result.stdout)["url"]
    assert http("GET", url) == (200, b"pre-signed bytes\n")

    # moto checks no pre-signed URL: what it serves is asserted, so a change shows.
    refused = (lambda answer: answer[0] in (400, 403)) if s3_server.signatures else (
        lambda answer: answer == (200, b"pre-signed bytes\n"))
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    forged = with_query(url, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]})
    assert refused(http("GET", forged))
    longer = with_query(url, **{"X-Amz-Expires": "604800"})  # not what was signed
    assert refused(http("GET", longer))

    # A URL signed an hour ago for one minute: expired. (The signer's clock is moved,
    # not the test's: no waiting.)
    import botocore.auth

    an_hour_ago = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=1)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: an_hour_ago)
    with _closing(S3Store(settings_from(env))) as store:
        stale = store.presign_get(put["s3Key"], 60)
    monkeypatch.undo()
    answer = http("GET", stale)
    assert refused(answer), (answer[0], answer[1][:200])


def test_presigned_put_upload_binds_the_size(s3_server, env, cli, tmp_path) -> None:
    result = cli("presign", "--upload", "--type", "FLOW_RUN_LOG", "--project", "proj1",
                 "--name", "upload.bin", "--size", "11", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    headers = {k: v for k, v in out.get("headers", {}).items() if k.lower() != "content-length"}
    headers["Content-Type"] = "application/octet-stream"  # what the printed curl line sends
    wrong = http("PUT", out["url"], b"12345678901!", headers)  # 12 bytes, not 11
    if s3_server.signatures:
        assert wrong[0] in (400, 403), wrong
    else:  # stored: the row's size still guards the read (exit 1, both sizes named)
        assert wrong[0] == 200, wrong
        got = cli("get", out["id"], "-o", "-")
        assert got.exit_code == 1 and got.stdout == "12345678901!"
        assert "read 12 stored bytes but its row records size 11" in got.stderr
    status, body = http("PUT", out["url"], b"hello world", headers)
    assert status in (200, 201, 204), body[:300]
    assert get_bytes(cli, out["id"], tmp_path) == b"hello world"

    human = cli("presign", "--upload", "--type", "FLOW_RUN_LOG", "--project", "proj1",
                "--name", "u2.bin", "--size", "3")
    assert human.exit_code == 0
    assert "-H 'Content-Type: application/octet-stream'" in human.stderr


# -- migrate, sweep, du --------------------------------------------------------------------


def test_migrate_then_sweep_then_verify(s3_server, env, cli, tmp_path, set_env) -> None:
    """DB rows move to S3; expired ones are swept (one with a key XML cannot carry);
    du --verify agrees at every step."""
    set_env(**{**env, "AP_FILE_STORAGE_LOCATION": "DB"})
    src = tmp_path / "step.json"
    moved = []
    for i in range(3):
        src.write_bytes(f'{{"step": {i}}}'.encode())
        moved.append(put_json(cli, src)["id"])
    set_env(**env)
    result = cli("migrate-to-s3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["migrated"] == 3
    for i, file_id in enumerate(moved):
        assert get_bytes(cli, file_id, tmp_path) == f'{{"step": {i}}}'.encode()

    now = dt.datetime.now(dt.timezone.utc)
    with Storage(settings_from(env)) as storage:
        store = storage.store(Location.S3)
        old = []
        for key in ("project/proj1/FLOW_RUN_LOG/odd\x01name", None):
            row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3,
                          created=now - dt.timedelta(days=45), project_id="proj1", size=4)
            row = FileRow(**{**row.__dict__, "s3_key": key or row.key})
            store.put(row.s3_key, io.BytesIO(b"old!"), 4)
            old.append(storage.catalog.insert(row))

    verify = cli("du", "--verify", "--json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.stdout)["verify"]
    assert report["ok"] is True, report
    assert report["orphans"]["files"] == 0 and report["missing"]["files"] == 0

    swept = cli("sweep-expired", "--json")
    assert swept.exit_code == 0, swept.output
    summary = json.loads(swept.stdout)
    assert summary["deleted"] == 2 and summary["failed"] == 0
    remaining = keys_in(s3_server, env["AP_S3_BUCKET"])
    assert not any(r.s3_key in remaining for r in old)
    assert len(remaining) == 3
    again = json.loads(cli("du", "--verify", "--json").stdout)["verify"]
    assert again["ok"] is True, again


def test_verify_names_an_orphan_with_a_control_character_by_its_own_name(s3_server, env, cli) -> None:
    key = "project/proj1/FLOW_RUN_LOG/orphan\x02here"
    s3_server.info.client().put_object(Bucket=env["AP_S3_BUCKET"], Key=key, Body=b"lost")
    result = cli("du", "--verify", "--json")
    report = json.loads(result.stdout)["verify"]
    assert report["missing"]["files"] == 0
    assert [item["key"] for item in report["orphans"]["items"]] == [key]


# -- lifecycle -----------------------------------------------------------------------------


def test_lifecycle_applies_or_says_not_supported(s3_server, env, cli) -> None:
    show = cli("lifecycle", "show", "--json")
    apply = cli("lifecycle", "apply", "--json")
    if s3_server.lifecycle:
        assert show.exit_code == 0 and json.loads(show.stdout)["rules"] == []
        assert apply.exit_code == 0, apply.output
        assert json.loads(apply.stdout)["added"] == ["apstorage-expire-execution-data", "apstorage-abort-incomplete-multipart"]
        assert {r["id"] for r in json.loads(cli("lifecycle", "show", "--json").stdout)["rules"]} >= {
            "apstorage-expire-execution-data"}
    else:  # the documented degradation: exit 6, "not supported", the sweep as the fallback
        for result in (show, apply, cli("lifecycle", "apply", "--dry-run")):
            assert result.exit_code == 6, result.output
            assert "does not support lifecycle" in result.stderr
            assert "sweep-expired" in result.stderr
        assert keys_in(s3_server, env["AP_S3_BUCKET"]) == []


# -- check-iam -----------------------------------------------------------------------------


def test_check_iam_passes_and_reports_what_the_store_lacks(s3_server, env, cli) -> None:
    result = cli("check-iam", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    from apstorage.services.check_iam import VERSION_CHECKS

    # unversioned buckets: the version checks are skipped (tests/test_check_iam_versions.py)
    assert all(c["status"] == "passed" for c in report["checks"] if c["name"] not in VERSION_CHECKS), report["checks"]
    assert all(checks[n]["detail"].startswith("bucket is not versioned") for n in VERSION_CHECKS)
    assert checks["put"]["tagKept"] is s3_server.tags
    if not s3_server.tags:
        assert "did not keep the tag" in result.stderr and "lifecycle rule" in result.stderr
    if s3_server.name == "rclone":  # neither answered: said so, not "0 of 0 settings on"
        assert "Block Public Access: not supported" in checks["anonymous-denied"]["detail"]
        assert "bucket policy status: not supported" in checks["anonymous-denied"]["detail"]
    assert report["leftover"] == [] and keys_in(s3_server, env["AP_S3_BUCKET"]) == []


def test_check_iam_on_a_missing_bucket_stops_after_list_and_writes_nothing(s3_server, env, cli, set_env) -> None:
    missing = f"nope-{secrets.token_hex(5)}"
    set_env(**{**env, "AP_S3_BUCKET": missing})
    result = cli("check-iam", "--json")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert report["checks"][0]["name"] == "list" and report["checks"][0]["status"] == "failed"
    assert all(c["status"] == "skipped" for c in report["checks"][1:])
    assert "AP_S3_BUCKET" in result.stderr and missing in result.stderr
    buckets = [b["Name"] for b in s3_server.info.client().list_buckets().get("Buckets", [])]
    assert missing not in buckets


# -- answers real servers do not give on demand (tests/s3_faults.py) ------------------------


@pytest.fixture
def faulty_env(faulty_s3, bucket, set_env, tmp_path) -> dict[str, str]:
    return set_env(**faulty_s3.info.ap_env(bucket), AP_FILE_STORAGE_LOCATION="S3",
                   AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))


def expired_rows(env: dict[str, str], names: list[str]) -> list[FileRow]:
    """Rows 45 days old (past the 30-day retention) whose objects exist, keyed by name."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    with Storage(settings_from(env)) as storage:
        store = storage.store(Location.S3)
        for name in names:
            row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3,
                          created=now - dt.timedelta(days=45), project_id="proj1", size=4)
            row = FileRow(**{**row.__dict__, "s3_key": f"project/proj1/FLOW_RUN_LOG/{name}"})
            store.put(row.s3_key, io.BytesIO(b"old!"), 4)
            rows.append(storage.catalog.insert(row))
    return rows


def rows_left(env: dict[str, str], rows: list[FileRow]) -> list[str]:
    left = []
    with Storage(settings_from(env)) as storage:
        for row in rows:
            try:
                storage.catalog.get(row.id)
                left.append(row.s3_key.rsplit("/", 1)[-1])
            except NotFoundError:
                pass
    return left


def test_a_truncated_listing_without_a_token_is_an_error_naming_the_store(faulty_s3, faulty_env, cli) -> None:
    expired_rows(faulty_env, ["a", "b"])
    faulty_s3.add(Fault("truncate_listing", method="GET", query="list-type", times=1))
    result = cli("du", "--verify", "--json")
    assert result.exit_code == 8, result.output
    assert "truncated" in result.stderr and "no continuation token" in result.stderr
    assert faulty_s3.endpoint.split("//")[1] in result.stderr  # the store, by host


def test_empty_truncated_pages_are_followed(faulty_s3, faulty_env) -> None:
    rows = expired_rows(faulty_env, ["a", "b", "c"])
    fault = faulty_s3.add(Fault("empty_truncated", method="GET", query="list-type"))
    with _closing(S3Store(settings_from(faulty_env))) as store:
        assert sorted(o.key for o in store.list("project/")) == sorted(r.s3_key for r in rows)
    assert fault.applied >= 1


def test_listing_asks_for_url_encoding(faulty_s3, faulty_env) -> None:
    expired_rows(faulty_env, ["a"])
    with _closing(S3Store(settings_from(faulty_env))) as store:
        list(store.list("project/"))
    listings = [path for method, path in faulty_s3.requests if method == "GET" and "list-type=2" in path]
    assert listings and all("encoding-type=url" in path for path in listings)


def test_deletes_carry_content_md5(faulty_s3, faulty_env, cli) -> None:
    """A store that predates botocore's CRC32 checksums refuses DeleteObjects without
    Content-MD5 (MissingContentMD5): every sweep would fail, every night."""
    rows = expired_rows(faulty_env, ["a", "b", "c"])
    fault = faulty_s3.add(Fault("require_md5", method="POST", query="delete"))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 3 and rows_left(faulty_env, rows) == []
    assert fault.applied == 1  # one DeleteObjects, let through because it carried the MD5


def test_a_store_without_multi_object_delete_falls_back_to_one_by_one(faulty_s3, faulty_env, set_env, cli) -> None:
    set_env(**faulty_env, AP_S3_DELETE_BATCH_SIZE="2")
    rows = expired_rows(faulty_env, ["a", "b", "c", "d", "e"])
    fault = faulty_s3.add(Fault("status", method="POST", query="delete", status=501, code="NotImplemented"))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 5 and rows_left(faulty_env, rows) == []
    assert keys_in_stand_in(faulty_s3, faulty_env) == []
    assert fault.applied == 1  # remembered for the run: asked once, not once per batch


def test_malformed_xml_falls_back_to_one_by_one(faulty_s3, faulty_env, cli) -> None:
    rows = expired_rows(faulty_env, ["a", "b"])
    # A store whose XML parser refuses every DeleteObjects it gets from this client.
    faulty_s3.add(Fault("status", method="POST", query="delete", status=400, code="MalformedXML"))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 2 and rows_left(faulty_env, rows) == []


@pytest.mark.parametrize("key_form", ["empty", "encoded"])
def test_unmatched_delete_errors_are_verified_before_rows_go(faulty_s3, faulty_env, cli, key_form) -> None:
    """Issue 13 item 9: error entries naming keys that were not sent make the whole batch
    "unknown"; each key is deleted again and checked, so the refused object keeps its row."""
    rows = expired_rows(faulty_env, ["keep me", "go-1", "go-2"])
    faulty_s3.add(Fault("delete_refuse", method="POST", query="delete", value="keep me",
                        key_form=key_form, code="AccessDenied"))
    faulty_s3.add(Fault("status", method="DELETE", path="keep me", status=403, code="AccessDenied"))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 2 and summary["failed"] == 1
    assert rows_left(faulty_env, rows) == ["keep me"]
    assert keys_in_stand_in(faulty_s3, faulty_env) == ["project/proj1/FLOW_RUN_LOG/keep me"]


def test_a_per_key_refusal_keeps_only_that_row(faulty_s3, faulty_env, cli) -> None:
    """An <Error> entry naming a key that was sent: that key is refused (its row and object
    stay, the S3 code in the reason); the others go."""
    rows = expired_rows(faulty_env, ["keep me", "go-1", "go-2"])
    faulty_s3.add(Fault("delete_refuse", method="POST", query="delete", value="keep me",
                        key_form="exact", code="AccessDenied"))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 2 and summary["failed"] == 1
    assert "AccessDenied" in summary["failures"][0]["reason"]
    assert rows_left(faulty_env, rows) == ["keep me"]
    assert keys_in_stand_in(faulty_s3, faulty_env) == ["project/proj1/FLOW_RUN_LOG/keep me"]


def test_a_key_missing_from_the_delete_answer_keeps_its_row(faulty_s3, faulty_env, cli) -> None:
    """A DeleteObjects answer must carry an entry (Deleted or Error) for every key sent: a
    store that skips one without a word (here it never deletes it, nor names it) has not
    deleted it, so its row stays and is reported."""
    rows = expired_rows(faulty_env, ["skipped", "go-1", "go-2"])

    def skip(req):
        import re

        keys = re.findall(rb"<Key>(.*?)</Key>", req.body)
        sent = b"".join(b"<Object><Key>" + k + b"</Key></Object>" for k in keys if b"skipped" not in k)
        answer = faulty_s3.forward(faulty_s3.resign(req, b"<Delete><Quiet>true</Quiet>" + sent + b"</Delete>"), {})
        if answer.status != 200:
            return answer
        deleted = b"".join(b"<Deleted><Key>" + k + b"</Key></Deleted>" for k in keys if b"skipped" not in k)
        return Answer(200, {"Content-Type": "application/xml"},
                      b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + deleted + b"</DeleteResult>")

    faulty_s3.add(Fault("custom", method="POST", query="delete", handler=skip))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 2 and summary["failed"] == 1
    assert "without an entry" in summary["failures"][0]["reason"]
    assert rows_left(faulty_env, rows) == ["skipped"]
    assert keys_in_stand_in(faulty_s3, faulty_env) == ["project/proj1/FLOW_RUN_LOG/skipped"]


@pytest.mark.parametrize("body", [
    b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
    b'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Deleted><Key>project/pro',  # cut short
])
def test_a_200_delete_answer_that_is_no_result_is_retried(faulty_s3, faulty_env, cli, body) -> None:
    """A 200 whose body is an <Error>, or XML cut short, is a failure (botocore's rule for S3:
    a 500) and is retried; when every attempt gets one, the rows and objects stay."""
    rows = expired_rows(faulty_env, ["a", "b"])
    once = faulty_s3.add(Fault("status", method="POST", query="delete", status=200, value=body.decode(), times=1))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 2 and rows_left(faulty_env, rows) == []
    assert once.applied == 1
    rows = expired_rows(faulty_env, ["c", "d"])
    faulty_s3.add(Fault("status", method="POST", query="delete", status=200, value=body.decode()))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 0 and summary["failed"] == 2
    assert rows_left(faulty_env, rows) == ["c", "d"]
    assert keys_in_stand_in(faulty_s3, faulty_env) == ["project/proj1/FLOW_RUN_LOG/c", "project/proj1/FLOW_RUN_LOG/d"]


def test_a_slowdown_on_delete_objects_is_retried(faulty_s3, faulty_env, cli) -> None:
    """503 SlowDown is throttling: retried (RetryPolicy, botocore's standard mode), and the
    batch then deleted as usual."""
    rows = expired_rows(faulty_env, ["a", "b", "c"])
    fault = faulty_s3.add(Fault("status", method="POST", query="delete", status=503, code="SlowDown", times=2))
    result = cli("sweep-expired", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 3 and rows_left(faulty_env, rows) == []
    assert fault.applied == 2 and keys_in_stand_in(faulty_s3, faulty_env) == []


def keys_in_stand_in(faulty_s3, env: dict[str, str]) -> list[str]:
    return sorted(keys_in(Server("seaweedfs", faulty_s3.upstream, True, True), env["AP_S3_BUCKET"]))


def test_check_iam_hint_names_missing_content_md5_not_a_permission(faulty_s3, faulty_env, cli) -> None:
    faulty_s3.add(Fault("status", method="POST", query="delete", status=400, code="MissingContentMD5"))
    result = cli("check-iam", "--json")
    assert result.exit_code == 1, result.output
    delete = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["delete"]
    assert delete["status"] == "failed" and "MissingContentMD5" in delete["detail"]
    assert "Content-MD5" in delete["hint"] and "grant" not in delete["hint"]
    assert "not a permission problem" in delete["hint"]


@pytest.mark.parametrize(("status", "verdict"), [(404, "inconclusive"), (400, "passed"), (200, "failed")])
def test_check_iam_reads_anonymous_answers(faulty_s3, faulty_env, cli, status, verdict) -> None:
    """400/401/403: refused; 2xx: public; 404 (or anything else): inconclusive."""
    def unsigned_get(req):
        signed = "authorization" in req.headers or "X-Amz-Signature" in req.query
        if req.method == "GET" and not signed:
            return Answer(status, {"Content-Type": "application/xml"}, b"<Error><Code>Injected</Code></Error>")
        return None

    faulty_s3.add(Fault("custom", handler=unsigned_get))
    result = cli("check-iam", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["anonymous-denied"]["status"] == verdict, checks["anonymous-denied"]
    assert result.exit_code == (1 if verdict == "failed" else 0), result.output
    if verdict == "inconclusive":
        assert checks["anonymous-denied"]["ok"] is None and "HTTP 404" in checks["anonymous-denied"]["detail"]


# -- the listing parser and the XML-safety rule (property tests) -----------------------------

_KEYS = st.lists(st.text(min_size=1, max_size=40), max_size=5)


def _listing(keys: list[str], *, encoded: bool, truncated: bool = False, token: str | None = None) -> bytes:
    from urllib.parse import quote_plus
    from xml.sax.saxutils import escape

    contents = "".join(
        f"<Contents><Key>{quote_plus(k, safe='/') if encoded else escape(k)}</Key><Size>{i}</Size></Contents>"
        for i, k in enumerate(keys)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{contents}"
        + (f"<NextContinuationToken>{token}</NextContinuationToken>" if token else "")
        + ("<EncodingType>url</EncodingType>" if encoded else "")
        + "</ListBucketResult>"
    ).encode("utf-8", "surrogatepass")


@hsettings(max_examples=100, deadline=None)
@given(_KEYS.map(lambda keys: [k for k in keys if not any("\ud800" <= c <= "\udfff" for c in k)]))
def test_url_encoded_keys_come_back_exactly(keys: list[str]) -> None:
    page = parse_list_page(_listing(keys, encoded=True, truncated=True, token="t"), "here", "b")
    assert [o.key for o in page.objects] == keys
    assert [o.size for o in page.objects] == list(range(len(keys)))
    assert page.truncated and page.next_token == "t"


_LISTING_LIKE = st.builds(
    lambda size, truncated, extra: (
        "<ListBucketResult><IsTruncated>" + truncated + "</IsTruncated><Contents><Key>k</Key><Size>"
        + size + "</Size></Contents>" + extra + "</ListBucketResult>"
    ).encode("utf-8", "surrogatepass"),
    st.text(max_size=8), st.sampled_from(["true", "false", "", "TRUE", "yes"]),
    st.sampled_from(["", "<NextContinuationToken/>", "<EncodingType>url</EncodingType>"]),
)


@hsettings(max_examples=100, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | _LISTING_LIKE)
def test_any_answer_parses_or_is_an_error_naming_the_store(body: bytes) -> None:
    try:
        parse_list_page(body, "http://store.example:9000", "b")
    except BackendUnavailableError as exc:
        assert "store.example:9000" in str(exc)


@hsettings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_a_key_is_batched_only_when_xml_carries_it(key: str) -> None:
    """A key without characters XML 1.0 forbids (or that parsers rewrite) survives a
    DeleteObjects body: the round trip through an XML parser gives it back unchanged."""
    import xml.etree.ElementTree as ET
    from xml.sax.saxutils import escape

    if _xml_unsafe(key):
        return
    body = f"<Delete><Object><Key>{escape(key)}</Key></Object></Delete>".encode()
    assert ET.fromstring(body).findtext("Object/Key") == key


def test_folder_objects_are_not_orphans(seaweed, bucket, set_env, cli) -> None:
    """Zero-byte keys ending in "/" (what consoles create to show a folder) hold no file.
    (On SeaweedFS: rclone maps keys to file paths and keeps no such objects.)"""
    set_env(**seaweed.ap_env(bucket), AP_FILE_STORAGE_LOCATION="S3")
    client = seaweed.client()
    # SeaweedFS sometimes holds its answer to a PUT of an empty "folder" key until the
    # client gives up (the object is stored): a short read timeout with a retry, not 60 s.
    from botocore.config import Config

    quick = client.meta.config.merge(Config(read_timeout=2, retries={"total_max_attempts": 5, "mode": "standard"}))
    import boto3

    folder_client = boto3.client(
        "s3", endpoint_url=seaweed.endpoint, region_name=seaweed.region, config=quick,
        aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key,
    )
    for key in ("project/", "project/proj1/", "project/proj1/FLOW_RUN_LOG/"):
        folder_client.put_object(Bucket=bucket, Key=key, Body=b"")
    client.put_object(Bucket=bucket, Key="project/proj1/FLOW_RUN_LOG/real-orphan", Body=b"bytes")
    result = cli("du", "--verify", "--json")
    report = json.loads(result.stdout)["verify"]
    assert [item["key"] for item in report["orphans"]["items"]] == ["project/proj1/FLOW_RUN_LOG/real-orphan"]
    assert report["missing"]["files"] == 0


def test_a_batch_goes_as_parts_at_once_and_a_refusal_in_one_keeps_only_its_row(faulty_s3, faulty_env, cli) -> None:
    """A batch of 400 S3 rows is deleted as four DeleteObjects of 100 keys (S3_PARTS),
    sent at once; one part's per-key refusal keeps exactly that row and object, the other
    parts' keys and rows go, and the rows are still deleted as one batch."""
    from apstorage.services.sweep import MIN_PART, S3_PARTS

    names = [f"go-{i:03d}" for i in range(399)] + ["keep me"]
    rows = expired_rows(faulty_env, names)
    faulty_s3.requests.clear()
    faulty_s3.add(Fault("delete_refuse", method="POST", query="delete", value="keep me",
                        key_form="exact", code="AccessDenied"))
    result = cli("sweep-expired", "--json", "--batch-size", "1000")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 399 and summary["failed"] == 1
    assert rows_left(faulty_env, rows) == ["keep me"]
    assert keys_in_stand_in(faulty_s3, faulty_env) == ["project/proj1/FLOW_RUN_LOG/keep me"]
    deletes = [path for method, path in faulty_s3.requests if method == "POST" and "delete" in path]
    # four parts at once, then the refused key tried once more on its own (delete_keys)
    assert len(deletes) == min(S3_PARTS, len(names) // MIN_PART) + 1 == 5
