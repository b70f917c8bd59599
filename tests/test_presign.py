"""`presign` against a real SeaweedFS, with curl as the client (no credentials on its side).

SeaweedFS checks SigV4 query signatures, their expiry and every signed header, so these
tests show what a worker or browser holding only the URL can and cannot do.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.catalog.presign import insert_rows
from apstorage.cli import app
from apstorage.durations import format_duration, parse_duration
from apstorage.errors import ApStorageError, UsageError
from apstorage.model import FileRow, Location, new_id, object_key
from apstorage.services.files import PutRequest, put_file
from apstorage.services.presign import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    content_disposition,
    parse_upload_json,
    resolve_expires,
)
from tests.conftest import settings_from
from apstorage.services.context import Storage


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def curl(tmp_path: Path, url: str, *args: str) -> tuple[int, str, bytes]:
    """(status, response headers, body) of ``curl [args] url``; curl has no credentials."""
    body, head = tmp_path / "curl-body", tmp_path / "curl-head"
    done = subprocess.run(
        ["curl", "-sS", "-o", str(body), "-D", str(head), "-w", "%{http_code}", *args, url],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return int(done.stdout), head.read_text(), body.read_bytes()


def curl_put(tmp_path: Path, url: str, data: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    payload = tmp_path / "upload.bin"
    payload.write_bytes(data)
    args = ["-X", "PUT", "--data-binary", f"@{payload}"]
    for name, value in headers.items():
        if name.lower() != "content-length":  # curl sends the real length of the data
            args += ["-H", f"{name}: {value}"]
    return curl(tmp_path, url, *args)


@pytest.fixture
def env(set_env, s3_env, tmp_path) -> dict[str, str]:
    return set_env(**s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))


def put_s3(env: dict[str, str], tmp_path: Path, data: bytes, name: str, file_type: str = "FLOW_RUN_LOG") -> FileRow:
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    with Storage(settings_from(env)) as storage:
        return put_file(storage, PutRequest(str(src), file_type, project_id="proj1", name=name))


def row_count(env: dict[str, str]) -> int:
    with Storage(settings_from(env)) as storage:
        return storage.catalog._execute('SELECT count(*) FROM "file"')[0][0]


# -- durations, limits and headers -------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), (" 2H ", 7200)],
)
def test_durations_accept_seconds_and_units(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "-5", "1.5h", "0", "h", "10 minutes"])
def test_durations_refuse_anything_else_with_exit_2(text) -> None:
    with pytest.raises(UsageError) as err:
        parse_duration(text, "--older-than")
    assert err.value.exit_code == 2 and "--older-than" in str(err.value)


def test_format_duration_picks_the_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (604800, 5400, 90, 3600)] == ["7d", "90m", "90s", "1h"]


def test_expiry_defaults_and_the_sigv4_limit() -> None:
    assert resolve_expires(None, "GET") == DEFAULT_EXPIRES["GET"] == 604800
    assert resolve_expires(None, "PUT") == DEFAULT_EXPIRES["PUT"] == 3600
    assert resolve_expires("7d", "GET") == MAX_EXPIRES
    for too_long in ("8d", "604801"):
        with pytest.raises(UsageError, match="7 days"):
            resolve_expires(too_long, "GET")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("report.txt", 'attachment; filename="report.txt"'),
        ("résumé.pdf", "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
        ('a"b\\c.txt', "attachment; filename=\"c.txt\""),  # a backslash is a path separator
        ('say "hi".txt', "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt"),
        ("../../etc/passwd", 'attachment; filename="passwd"'),
        ("a\r\nSet-Cookie: x=1", "attachment; filename=\"a  Set-Cookie: x=1\""),
        ("evil\u202etxt.exe", 'attachment; filename="evil txt.exe"'),
        ("", 'attachment; filename="download"'),
        ("日本.txt", "attachment; filename=\".txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
    ],
)
def test_content_disposition_is_safely_quoted(name, expected) -> None:
    header = content_disposition(name)
    assert header == expected
    assert "\r" not in header and "\n" not in header


def test_upload_json_is_validated_whole() -> None:
    files = parse_upload_json('{"files":[{"fileName":"a","fileSize":1},{"fileName":"b","fileSize":0}]}')
    assert [(f.file_name, f.size) for f in files] == [("a", 1), ("b", 0)]
    for bad in ("nope", "{}", '{"files":[]}', '{"files":[{"fileName":"a","fileSize":-1}]}',
                '{"files":[{"fileName":"","fileSize":1}]}', '{"files":[{"fileName":"a","fileSize":"1"}]}'):
        with pytest.raises(UsageError):
            parse_upload_json(bad)


# -- GET URLs ---------------------------------------------------------------------------


def test_get_url_returns_the_exact_bytes_as_an_attachment(runner, env, tmp_path) -> None:
    data = bytes(range(256)) * 40
    row = put_s3(env, tmp_path, data, "rapport été.bin")
    result = invoke(runner, "presign", row.id, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["id"] == row.id and out["method"] == "GET"
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out["url"]
    assert f"/{env['AP_S3_BUCKET']}/project/proj1/FLOW_RUN_LOG/{row.id}?" in out["url"]  # path-style
    expires_at = datetime.fromisoformat(out["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(days=6, hours=23) < expires_at - datetime.now(timezone.utc) <= timedelta(days=7)
    status, headers, body = curl(tmp_path, out["url"])
    assert status == 200 and body == data
    disposition = next(h for h in headers.splitlines() if h.lower().startswith("content-disposition:"))
    assert disposition.split(":", 1)[1].strip() == (
        "attachment; filename=\"rapport ete.bin\"; filename*=UTF-8''rapport%20%C3%A9t%C3%A9.bin"
    )
    human = invoke(runner, "presign", row.id, "--expires", "15m")
    assert human.exit_code == 0 and human.stdout.strip().startswith("http://")
    assert "X-Amz-Expires=900&" in human.stdout


def test_get_url_is_refused_once_expired(runner, env, tmp_path) -> None:
    row = put_s3(env, tmp_path, b"short-lived", "a.txt")
    url = json.loads(invoke(runner, "presign", row.id, "--expires", "2", "--json").stdout)["url"]
    assert curl(tmp_path, url)[0] == 200
    time.sleep(3)  # behavioural: wait past the 2 s expiry
    status, _, body = curl(tmp_path, url)
    assert status == 403 and b"expired" in body.lower()


def test_a_changed_key_or_signature_is_refused(runner, env, tmp_path) -> None:
    row = put_s3(env, tmp_path, b"first", "a.txt")
    other = put_s3(env, tmp_path, b"second", "b.txt")
    url = json.loads(invoke(runner, "presign", row.id, "--json").stdout)["url"]
    assert curl(tmp_path, url)[2] == b"first"
    other_key = url.replace(row.id, other.id, 1)  # an existing object: 403 is the signature
    assert curl(tmp_path, other_key)[0] == 403
    flipped = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert curl(tmp_path, flipped)[0] == 403
    longer = url.replace("X-Amz-Expires=604800", "X-Amz-Expires=604799")
    assert longer != url and curl(tmp_path, longer)[0] == 403


# -- refusals ---------------------------------------------------------------------------


def test_eight_days_is_exit_2_naming_the_limit(runner, env, tmp_path) -> None:
    row = put_s3(env, tmp_path, b"x", "a.txt")
    result = invoke(runner, "presign", row.id, "--expires", "8d")
    assert result.exit_code == 2
    assert "7 days" in result.stderr and "604800" in result.stderr
    assert result.stdout == ""
    assert invoke(runner, "presign", row.id, "--expires", "7d").exit_code == 0


def test_db_and_local_rows_are_exit_6_pointing_at_migrate(runner, set_env, s3_env, tmp_path) -> None:
    base = dict(s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    ids = {}
    for location in ("DB", "LOCAL"):
        env = set_env(**base, AP_FILE_STORAGE_LOCATION=location)
        ids[location] = put_s3(env, tmp_path, b"bytes", "a.txt").id
    for location, file_id in ids.items():
        result = invoke(runner, "presign", file_id)
        assert result.exit_code == 6, result.output
        assert f"location {location}" in result.stderr and "migrate-to-s3" in result.stderr
    assert invoke(runner, "presign", "nosuchid").exit_code == 4


def test_usage_mistakes_are_exit_2(runner, env) -> None:
    for args in (
        ["presign"],
        ["presign", "x", "--method", "DELETE"],
        ["presign", "x", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a", "--size", "1"],
        ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a"],
        ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a", "--size", "-1"],
        ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--name", "a", "--size", "1"],
        ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a", "--size", "1", "--method", "GET"],
        ["presign", "x", "--expires", "soon"],
    ):
        result = invoke(runner, *args)
        assert result.exit_code == 2, (args, result.output)
    assert row_count(env) == 0


# -- the upload flow --------------------------------------------------------------------


def test_upload_url_takes_exactly_the_declared_size_then_get_reads_it(runner, env, tmp_path, seaweed) -> None:
    data = b"worker output " * 100
    result = invoke(
        runner, "presign", "--upload", "--type", "FLOW_RUN_LOG", "--project", "proj9",
        "--name", "run.log", "--size", str(len(data)), "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "PUT" and out["size"] == len(data) and out["dryRun"] is False
    assert out["s3Key"] == f"project/proj9/FLOW_RUN_LOG/{out['id']}"
    assert out["headers"] == {"Content-Length": str(len(data)), "x-amz-tagging": "ap-retention=execution"}
    expires_at = datetime.fromisoformat(out["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires_at - datetime.now(timezone.utc) <= timedelta(hours=1)

    with Storage(settings_from(env)) as storage:
        row = storage.catalog.get(out["id"])
    assert (row.location, row.size, row.s3_key, row.type, row.project_id, row.file_name) == (
        Location.S3, len(data), out["s3Key"], "FLOW_RUN_LOG", "proj9", "run.log"
    )
    assert invoke(runner, "get", out["id"]).exit_code == 4  # nothing uploaded yet

    assert curl_put(tmp_path, out["url"], data + b"!", out["headers"])[0] == 403  # one byte more
    assert curl_put(tmp_path, out["url"], data[:-1], out["headers"])[0] == 403  # one byte less
    assert curl_put(tmp_path, out["url"], data, {})[0] == 403  # without the signed tag header
    status, _, body = curl_put(tmp_path, out["url"], data, out["headers"])
    assert status == 200, body
    got = invoke(runner, "get", out["id"])
    assert got.exit_code == 0 and got.stdout_bytes == data

    tags = seaweed.client().get_object_tagging(Bucket=env["AP_S3_BUCKET"], Key=out["s3Key"])["TagSet"]
    assert tags == [{"Key": "ap-retention", "Value": "execution"}]


def test_put_url_for_an_existing_row_is_bound_to_its_size(runner, env, tmp_path) -> None:
    row = put_s3(env, tmp_path, b"12345", "a.txt")
    out = json.loads(invoke(runner, "presign", row.id, "--method", "put", "--json").stdout)
    assert out["method"] == "PUT" and out["headers"]["Content-Length"] == "5"
    assert curl_put(tmp_path, out["url"], b"123456", out["headers"])[0] == 403
    assert curl_put(tmp_path, out["url"], b"abcde", out["headers"])[0] == 200
    assert invoke(runner, "get", row.id).stdout_bytes == b"abcde"


def test_batch_from_json_creates_every_row_with_working_urls(runner, set_env, s3_env, catalog_env, tmp_path) -> None:
    env = set_env(**{**catalog_env, **s3_env})
    files = [{"fileName": f"step-{i}.json", "fileSize": 10 + i} for i in range(3)]
    result = invoke(
        runner, "presign", "--from-json", "-", "--type", "flow_step_file", "--platform", "plat1", "--json",
        input=json.dumps({"files": files}),
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["files"]
    assert [f["fileName"] for f in out] == [f["fileName"] for f in files]
    assert len({f["id"] for f in out}) == 3
    with Storage(settings_from(env)) as storage:
        for entry, asked in zip(out, files):
            row = storage.catalog.get(entry["id"])
            assert row.size == asked["fileSize"] and row.platform_id == "plat1"
            assert row.s3_key == f"platform/plat1/FLOW_STEP_FILE/{entry['id']}"
    data = b"x" * files[1]["fileSize"]
    assert curl_put(tmp_path, out[1]["url"], data, out[1]["headers"])[0] == 200
    assert invoke(runner, "get", out[1]["id"]).stdout_bytes == data


def test_oversize_is_exit_7_before_any_row_is_made(runner, set_env, s3_env, tmp_path) -> None:
    env = set_env(**s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_MAX_FILE_SIZE_MB="1")
    limit = 1024 * 1024
    single = invoke(runner, "presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p",
                    "--name", "big", "--size", str(limit + 1))
    assert single.exit_code == 7 and "AP_MAX_FILE_SIZE_MB" in single.stderr
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"files": [
        {"fileName": "ok-1", "fileSize": 1}, {"fileName": "too-big", "fileSize": limit + 1},
        {"fileName": "ok-2", "fileSize": limit},
    ]}))
    result = invoke(runner, "presign", "--from-json", str(batch), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 7 and "too-big" in result.stderr and "ok-1" not in result.stderr
    assert row_count(env) == 0


def test_a_failing_batch_insert_leaves_no_row(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    existing = new_id()
    storage.catalog.insert(FileRow(id=existing, type="FLOW_RUN_LOG", location=Location.S3, project_id="p"))

    def row(file_id: str) -> FileRow:
        key = object_key(file_id, "FLOW_RUN_LOG", "p", None)
        return FileRow(id=file_id, type="FLOW_RUN_LOG", location=Location.S3, project_id="p", s3_key=key, size=1)

    fresh = [new_id(), new_id()]
    with pytest.raises(ApStorageError, match="nothing was created"):
        insert_rows(storage.catalog, [row(fresh[0]), row(existing), row(fresh[1])])
    count = storage.catalog._execute('SELECT count(*) FROM "file"')[0][0]
    assert count == 1
    stored = insert_rows(storage.catalog, [row(i) for i in fresh])
    assert [r.id for r in stored] == fresh and stored[0].created is not None
    assert storage.catalog.get(fresh[1]).s3_key.endswith(fresh[1])


def test_upload_dry_run_creates_nothing(runner, env) -> None:
    result = invoke(runner, "presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p",
                    "--name", "a", "--size", "3", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dryRun"] is True and out["url"] is None
    assert row_count(env) == 0


def test_permanent_types_are_not_uploaded_to_s3(runner, env) -> None:
    result = invoke(runner, "presign", "--upload", "-t", "SAMPLE_DATA", "--project", "p", "--name", "a", "--size", "3")
    assert result.exit_code == 6 and "permanent" in result.stderr
    assert row_count(env) == 0


def test_upload_without_s3_settings_is_exit_3(runner, set_env) -> None:
    set_env()
    result = invoke(runner, "presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a", "--size", "3")
    assert result.exit_code == 3 and "AP_S3_BUCKET" in result.stderr


def test_temporary_credentials_that_die_first_are_warned_about(runner, set_env, s3_env, tmp_path, monkeypatch) -> None:
    """Credentials from a credential_process with an Expiration (what STS/SSO/IRSA give)."""
    expiry = (datetime.now(timezone.utc) + timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    script = tmp_path / "creds.py"
    script.write_text(
        "import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': %r, 'SecretAccessKey': %r, "
        "'SessionToken': None, 'Expiration': %r}))\n"
        % (s3_env["AP_S3_ACCESS_KEY_ID"], s3_env["AP_S3_SECRET_ACCESS_KEY"], expiry)
    )
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {shlex.quote(sys.executable)} {shlex.quote(str(script))}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    static = {k: v for k, v in s3_env.items() if k not in ("AP_S3_ACCESS_KEY_ID", "AP_S3_SECRET_ACCESS_KEY")}
    env = set_env(**static, AP_FILE_STORAGE_LOCATION="S3", AP_S3_USE_IRSA="true")
    row = put_s3(env, tmp_path, b"signed by a temporary key", "a.txt")

    result = invoke(runner, "presign", row.id, "--json")
    assert result.exit_code == 0, result.output
    assert "temporary" in result.stderr and expiry.replace("Z", "") in result.stderr
    assert json.loads(result.stdout)["warnings"]
    assert curl(tmp_path, json.loads(result.stdout)["url"])[2] == b"signed by a temporary key"
    short = invoke(runner, "presign", row.id, "--expires", "10m", "--json")
    assert short.exit_code == 0 and "temporary" not in short.stderr
