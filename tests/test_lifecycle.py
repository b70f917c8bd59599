"""`lifecycle apply` / `lifecycle show`, and the retention tag `put` writes.

Against a real SeaweedFS (the `bucket`/`s3_env` fixtures), against moto's server, and,
for a store that has no lifecycle support at all, against a tiny HTTP server that answers every lifecycle request with S3's 501 NotImplemented (what such
stores return; SeaweedFS 4.48 itself does so only for Transition rules, tested too).
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import re
import secrets
import threading
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.errors import NotSupportedError
from apstorage.services.files import RETENTION_TAG
from apstorage.services.lifecycle import (
    ABORT_RULE_ID,
    EXPIRE_RULE_ID,
    our_rules,
    plan_merge,
)
from apstorage.stores.s3 import MULTIPART_THRESHOLD, S3Store
from apstorage.stores.s3_lifecycle import get_lifecycle, put_lifecycle
from tests.conftest import READONLY_IDENTITY, settings_from

OURS = [EXPIRE_RULE_ID, ABORT_RULE_ID]
TAG_SET = [{"Key": k, "Value": v} for k, v in RETENTION_TAG.items()]

# Foreign rules in forms SeaweedFS 4.48 and moto both store and return.
FOREIGN = [
    {"ID": "team-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 7}},
    {
        "ID": "team-and",
        "Filter": {"And": {"Prefix": "tmp/", "Tags": [{"Key": "kind", "Value": "scratch"}]}},
        "Status": "Disabled",
        "Expiration": {"Days": 2},
    },
    {"ID": "team-legacy", "Prefix": "old/", "Status": "Enabled", "Expiration": {"Days": 90}},
    {
        "ID": "team-date",
        "Filter": {"Prefix": "exports/"},
        "Status": "Enabled",
        "Expiration": {"Date": dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)},
    },
]
FOREIGN_IDS = [r["ID"] for r in FOREIGN]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_json(runner: CliRunner, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke(runner, *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def admin_client(seaweed) -> Any:
    return seaweed.client()


def rules_of(client, bucket: str) -> list[dict[str, Any]]:
    return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]


def by_id(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ID"]: r for r in rules}


# -- the tag `put` writes ------------------------------------------------------------------


def test_put_tags_execution_data_on_both_upload_paths(runner, seaweed, s3_env, set_env, tmp_path) -> None:
    """The small path (PutObject) and the multipart path (upload_fileobj, > 16 MiB) both
    store ap-retention=execution on SeaweedFS; permanent types never reach the bucket."""
    set_env(**s3_env, AP_FILE_STORAGE_LOCATION="S3")
    client = admin_client(seaweed)
    small = tmp_path / "small.log"
    small.write_bytes(b"run log\n")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (MULTIPART_THRESHOLD + 1024 * 1024))
    for path, file_type in ((small, "FLOW_RUN_LOG"), (big, "FLOW_STEP_FILE")):
        data = run_json(runner, "put", str(path), "-t", file_type, "--project", "proj1")
        assert data["location"] == "S3"
        tags = client.get_object_tagging(Bucket=s3_env["AP_S3_BUCKET"], Key=data["s3Key"])["TagSet"]
        assert tags == TAG_SET, (file_type, tags)
    head = client.head_object(Bucket=s3_env["AP_S3_BUCKET"], Key=data["s3Key"])
    assert "-" in head["ETag"]  # really went through multipart

    perm = run_json(runner, "put", str(small), "-t", "SAMPLE_DATA", "--project", "proj1")
    assert perm["location"] == "DB" and perm["s3Key"] is None
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env["AP_S3_BUCKET"]).get("Contents", [])]
    assert len(keys) == 2 and not any("SAMPLE_DATA" in k for k in keys)


def test_untagged_store_writes_carry_no_tag_on_either_path(seaweed, s3_env) -> None:
    store = S3Store(settings_from(s3_env))
    client = admin_client(seaweed)
    try:
        for key, size in (("a/small", 10), ("a/big", MULTIPART_THRESHOLD + 1)):
            store.put(key, io.BytesIO(b"z" * size), size)
            assert client.get_object_tagging(Bucket=store.bucket, Key=key)["TagSet"] == []
    finally:
        store.close()


# -- the judged scenario on real SeaweedFS ---------------------------------------------------


def test_apply_merges_into_a_bucket_with_foreign_rules(runner, seaweed, bucket, s3_env, set_env) -> None:
    set_env(**s3_env)
    client = admin_client(seaweed)
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": FOREIGN})
    before = rules_of(client, bucket)
    assert [r["ID"] for r in before] == FOREIGN_IDS

    # --dry-run: the diff, and nothing written
    plan = run_json(runner, "lifecycle", "apply", "--dry-run")
    assert plan["dryRun"] is True and plan["written"] is False
    assert plan["added"] == OURS and plan["kept"] == FOREIGN_IDS
    assert plan["updated"] == [] and plan["removed"] == []
    assert rules_of(client, bucket) == before

    # apply: foreign rules identical, ours added after them
    plan = run_json(runner, "lifecycle", "apply")
    assert plan["added"] == OURS and plan["kept"] == FOREIGN_IDS and plan["written"] is True
    after = rules_of(client, bucket)
    assert [r["ID"] for r in after] == FOREIGN_IDS + OURS
    assert after[: len(FOREIGN)] == before
    mine = by_id(after)
    assert mine[EXPIRE_RULE_ID]["Filter"] == {"Tag": TAG_SET[0]}
    assert mine[EXPIRE_RULE_ID]["Expiration"] == {"Days": 31}  # 30 days retention + 1 grace
    assert mine[EXPIRE_RULE_ID]["Status"] == "Enabled"
    assert mine[ABORT_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert mine[ABORT_RULE_ID]["Filter"] in ({"Prefix": ""}, {})

    # a second apply changes nothing
    plan = run_json(runner, "lifecycle", "apply")
    assert plan["changed"] is False and plan["written"] is False
    assert plan["added"] == plan["updated"] == plan["removed"] == []
    assert plan["kept"] == FOREIGN_IDS + OURS
    assert rules_of(client, bucket) == after

    # new retention: our expiry rule updated in place, the rest untouched
    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "40", "--grace-days", "2")
    assert plan["updated"] == [EXPIRE_RULE_ID] and plan["expirationDays"] == 42
    changed = rules_of(client, bucket)
    assert [r["ID"] for r in changed] == FOREIGN_IDS + OURS
    assert changed[: len(FOREIGN)] == before
    assert by_id(changed)[EXPIRE_RULE_ID]["Expiration"] == {"Days": 42}

    # show: every rule, ours marked
    shown = run_json(runner, "lifecycle", "show")
    assert shown["configured"] is True and shown["missing"] == []
    assert [(r["id"], r["ours"]) for r in shown["rules"]] == [(i, False) for i in FOREIGN_IDS] + [
        (i, True) for i in OURS
    ]
    rows = {r["id"]: r for r in shown["rules"]}
    assert rows["team-date"]["rule"]["Expiration"]["Date"] == "2031-01-01T00:00:00Z"
    assert rows[EXPIRE_RULE_ID]["filter"] == "tag ap-retention=execution"
    assert rows[EXPIRE_RULE_ID]["actions"] == "expire after 42 days"
    assert rows["team-and"]["enabled"] is False

    # --replace removes foreign rules only when asked, and --dry-run still writes nothing
    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "40", "--grace-days", "2", "--replace", "--dry-run")
    assert plan["removed"] == FOREIGN_IDS and plan["kept"] == OURS
    assert rules_of(client, bucket) == changed
    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "40", "--grace-days", "2", "--replace")
    assert plan["removed"] == FOREIGN_IDS and plan["written"] is True
    assert [r["ID"] for r in rules_of(client, bucket)] == OURS


def test_bucket_without_configuration(runner, bucket, s3_env, set_env) -> None:
    set_env(**s3_env)
    shown = run_json(runner, "lifecycle", "show")
    assert shown.pop("retentionCheck")["level"] == "note"  # the defaults, 30 and 30
    assert shown.pop("versioning")["status"] == "Unversioned"  # tests/test_lifecycle_versions.py
    assert (shown.pop("versionsKeptForever"), shown.pop("deleteMarkersKept"), shown.pop("missingVersionRules")) \
        == (False, False, [])
    assert shown == {"bucket": bucket, "configured": False, "rules": [], "missing": OURS,
                     "minimumExpiryDays": 31, "problems": []}
    human = invoke(runner, "lifecycle", "show")
    assert human.exit_code == 0
    assert f"bucket {bucket} has no lifecycle rules" in human.stdout
    assert "lifecycle apply" in human.stderr

    result = invoke(runner, "lifecycle", "apply")
    assert result.exit_code == 0, result.output
    assert EXPIRE_RULE_ID in result.stdout and "added" in result.stdout
    assert "wrote 2 rules" in result.stderr
    again = invoke(runner, "lifecycle", "apply")
    assert again.exit_code == 0 and "no change" in again.stderr


def test_missing_bucket_is_exit_4(runner, s3_env, set_env) -> None:
    set_env(**{**s3_env, "AP_S3_BUCKET": "no-such-bucket-here"})
    for args in (("lifecycle", "show"), ("lifecycle", "apply"), ("lifecycle", "apply", "--dry-run")):
        result = invoke(runner, *args)
        assert result.exit_code == 4, (args, result.output)
        assert "no-such-bucket-here" in result.stderr and "does not exist" in result.stderr


def test_missing_permission_is_exit_5(runner, seaweed, bucket, s3_env, set_env) -> None:
    """A read-only identity can show and dry-run, but not write."""
    reader = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**{**s3_env, "AP_S3_ACCESS_KEY_ID": reader["accessKey"],
               "AP_S3_SECRET_ACCESS_KEY": reader["secretKey"]})
    assert run_json(runner, "lifecycle", "show")["rules"] == []
    assert run_json(runner, "lifecycle", "apply", "--dry-run")["added"] == OURS
    result = invoke(runner, "lifecycle", "apply")
    assert result.exit_code == 5, result.output
    assert "refused access" in result.stderr and "AccessDenied" in result.stderr
    assert reader["secretKey"] not in result.output
    with pytest.raises(ClientError) as info:
        rules_of(admin_client(seaweed), bucket)  # still no configuration
    assert info.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"


def test_seaweedfs_rejects_transitions_as_not_supported(seaweed, bucket, s3_env) -> None:
    """SeaweedFS 4.48 answers 501 NotImplemented to Transition rules: exit 6, with the
    provider's own message."""
    store = S3Store(settings_from(s3_env))
    rule = {"ID": "to-glacier", "Filter": {"Prefix": "a/"}, "Status": "Enabled",
            "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}
    try:
        with pytest.raises(NotSupportedError) as info:
            put_lifecycle(store, [rule])
        assert info.value.exit_code == 6
        assert "NotImplemented" in str(info.value) and "HTTP 501" in str(info.value)
        assert get_lifecycle(store).exists is False
    finally:
        store.close()


def test_usage_and_config_errors(runner, s3_env, set_env) -> None:
    set_env(**s3_env)
    assert invoke(runner, "lifecycle", "apply", "--retention-days", "0").exit_code == 2
    assert invoke(runner, "lifecycle", "apply", "--grace-days", "-1").exit_code == 2
    set_env()  # no AP_S3_BUCKET
    result = invoke(runner, "lifecycle", "show")
    assert result.exit_code == 3 and "AP_S3_BUCKET" in result.stderr


# -- a store without lifecycle support ------------------------------------------------------

_NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>Lifecycle is not available on this gateway</Message>"
    b"<Resource>/bucket</Resource></Error>"
)


class _NoLifecycleHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(501)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_NOT_IMPLEMENTED)))
        self.end_headers()
        self.wfile.write(_NOT_IMPLEMENTED)

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_lifecycle_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLifecycleHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_store_without_lifecycle_is_exit_6(runner, set_env, no_lifecycle_endpoint) -> None:
    set_env(AP_S3_BUCKET="bucket", AP_S3_ENDPOINT=no_lifecycle_endpoint, AP_S3_REGION="us-east-1",
            AP_S3_ACCESS_KEY_ID="AKNOLIFECYCLE", AP_S3_SECRET_ACCESS_KEY="secret-no-lifecycle")
    for args in (("lifecycle", "show"), ("lifecycle", "apply")):
        result = invoke(runner, *args)
        assert result.exit_code == 6, result.output
        assert "does not support lifecycle" in result.stderr
        assert "Lifecycle is not available on this gateway" in result.stderr


# -- moto ------------------------------------------------------------------------------------


@pytest.fixture
def moto_env(moto) -> dict[str, str]:
    """A fresh bucket on moto's server (the session's): lifecycle asks the versioning
    state over apstorage's own signed HTTP path, which the in-process mock cannot see."""
    bucket = f"moto-{secrets.token_hex(5)}"
    moto.client().create_bucket(Bucket=bucket)
    return moto.ap_env(bucket)


@pytest.fixture
def moto_bucket(set_env, moto_env) -> str:
    set_env(**moto_env)
    return moto_env["AP_S3_BUCKET"]


@pytest.fixture
def moto_client(moto):
    return moto.client()


def test_moto_merge_apply_twice_and_replace(runner, moto_bucket, moto_client) -> None:
    client = moto_client
    transition = {"ID": "team-glacier", "Filter": {"Prefix": "archive/"}, "Status": "Enabled",
                  "Transitions": [{"Days": 60, "StorageClass": "GLACIER"}]}
    foreign = [*FOREIGN, transition]
    client.put_bucket_lifecycle_configuration(Bucket=moto_bucket, LifecycleConfiguration={"Rules": foreign})
    before = rules_of(client, moto_bucket)
    ids = FOREIGN_IDS + ["team-glacier"]

    plan = run_json(runner, "lifecycle", "apply", "--dry-run")
    assert plan["added"] == OURS and plan["kept"] == ids
    assert rules_of(client, moto_bucket) == before

    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "45")
    assert plan["added"] == OURS and plan["written"] is True
    after = rules_of(client, moto_bucket)
    assert after[: len(ids)] == before
    assert by_id(after)[EXPIRE_RULE_ID]["Expiration"] == {"Days": 46}
    assert by_id(after)[EXPIRE_RULE_ID]["Filter"] == {"Tag": TAG_SET[0]}

    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "45")
    assert plan["changed"] is False and plan["kept"] == ids + OURS
    assert rules_of(client, moto_bucket) == after

    shown = run_json(runner, "lifecycle", "show")
    assert [r["id"] for r in shown["rules"] if r["ours"]] == OURS
    assert {r["id"]: r["actions"] for r in shown["rules"]}["team-glacier"] == "move to GLACIER after 60 days"

    plan = run_json(runner, "lifecycle", "apply", "--retention-days", "45", "--replace")
    assert plan["removed"] == ids and plan["kept"] == OURS
    assert [r["ID"] for r in rules_of(client, moto_bucket)] == OURS


def test_moto_missing_bucket_and_empty_configuration(runner, moto_bucket, moto_env, set_env) -> None:
    shown = run_json(runner, "lifecycle", "show")
    assert shown["configured"] is False and shown["missing"] == OURS
    set_env(**dict(moto_env, AP_S3_BUCKET="absent-bucket"))
    result = invoke(runner, "lifecycle", "apply")
    assert result.exit_code == 4 and "absent-bucket" in result.stderr


def test_an_updated_rule_shows_old_and_new_expiry_and_counts_are_in_the_right_number(runner, moto_bucket, moto_env, set_env) -> None:
    """issue 22, item 5: `31 days → 15 days` in the table, before/after in --json (the id lists
    unchanged), and never `1 days` (one plural helper for every count)."""
    base = moto_env
    first = invoke(runner, "lifecycle", "apply")
    assert first.exit_code == 0
    assert "abort incomplete multipart uploads after 1 day " in first.stdout + " "
    assert f"wrote 2 rules to {moto_bucket} (2 added)" in first.stderr
    set_env(**base, AP_EXECUTION_DATA_RETENTION_DAYS="14", AP_PAUSED_FLOW_TIMEOUT_DAYS="7")
    dry = invoke(runner, "lifecycle", "apply", "--dry-run")
    assert dry.exit_code == 0 and "expire after 31 days → 15 days" in dry.stdout
    plan = run_json(runner, "lifecycle", "apply")
    assert plan["updated"] == [EXPIRE_RULE_ID] and plan["kept"] == [ABORT_RULE_ID]  # the id lists stay
    changes = {c["id"]: c for c in plan["changes"]}
    updated = changes[EXPIRE_RULE_ID]
    assert updated["change"] == "updated" and updated["ours"] is True
    assert updated["before"]["Expiration"] == {"Days": 31} and updated["after"]["Expiration"] == {"Days": 15}
    assert (updated["actionsBefore"], updated["actionsAfter"]) == ("expire after 31 days", "expire after 15 days")
    assert changes[ABORT_RULE_ID]["before"] == changes[ABORT_RULE_ID]["after"]
    # A count of one is singular in the refusal too.
    set_env(**base, AP_EXECUTION_DATA_RETENTION_DAYS="1", AP_PAUSED_FLOW_TIMEOUT_DAYS="1")
    refused = invoke(runner, "lifecycle", "apply", "--grace-days", "0")
    assert refused.exit_code == 2
    assert "after 1 day, but the catalog keeps it for up to 1 day (" in refused.stderr
    assert not re.search(r"\b1 days", refused.stderr + first.stdout + first.stderr + dry.stdout + dry.stderr)


def test_moto_server_put_tags_execution_data(runner, set_env, tmp_path) -> None:
    """`put` sends small objects over its own signed HTTP path (not botocore), so this uses
    moto's HTTP server rather than the in-process mock."""
    from tests.servers import moto_server

    with moto_server() as moto:
        client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                              aws_access_key_id="AKIAFAKEFAKEFAKE", aws_secret_access_key="fake-secret")
        client.create_bucket(Bucket="moto-bucket")
        set_env(AP_S3_BUCKET="moto-bucket", AP_S3_REGION="us-east-1", AP_FILE_STORAGE_LOCATION="S3",
                AP_S3_ENDPOINT=moto.endpoint,
                AP_S3_ACCESS_KEY_ID="AKIAFAKEFAKEFAKE", AP_S3_SECRET_ACCESS_KEY="fake-secret")
        src = tmp_path / "payload.json"
        src.write_bytes(b"{}")
        data = run_json(runner, "put", str(src), "-t", "WEBHOOK_PAYLOAD", "--platform", "plat1")
        assert client.get_object_tagging(Bucket="moto-bucket", Key=data["s3Key"])["TagSet"] == TAG_SET


# -- the merge itself (pure) -----------------------------------------------------------------


def test_merge_keeps_order_unnamed_rules_and_equivalent_spellings() -> None:
    desired = our_rules(30, 1)
    unnamed = {"Filter": {"Prefix": "x/"}, "Status": "Enabled", "Expiration": {"Days": 3}}
    abort_as_empty_filter = {**desired[1], "Filter": {}}
    stale_expire = {**desired[0], "Expiration": {"Days": 10}}
    current = [stale_expire, unnamed, abort_as_empty_filter]
    merged, changes = plan_merge(current, desired)
    assert [(c.id, c.change) for c in changes] == [
        (EXPIRE_RULE_ID, "updated"), ("#2", "kept"), (ABORT_RULE_ID, "kept")
    ]
    assert merged == [desired[0], unnamed, abort_as_empty_filter]
    assert merged[1] is unnamed and merged[2] is abort_as_empty_filter


def test_merge_drops_duplicates_of_our_ids_and_replace_drops_foreign() -> None:
    desired = our_rules(30, 1)
    foreign = {"ID": "theirs", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 1}}
    merged, changes = plan_merge([desired[0], foreign, desired[0]], desired, replace=True)
    assert [(c.id, c.change) for c in changes] == [
        (EXPIRE_RULE_ID, "updated"), ("theirs", "removed"), (ABORT_RULE_ID, "added")
    ]
    assert merged == desired


# -- answers that are not a lifecycle configuration ---------------------------------------------

_LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>bucket</Name><IsTruncated>false</IsTruncated><Contents><Key>a&#x1;b</Key><Size>1</Size>"
    b"</Contents></ListBucketResult>"
)
_EXISTS = b"<Error><Code>BucketAlreadyExists</Code><Message>BucketAlreadyExists</Message></Error>"
_NO_RULES = b'<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></LifecycleConfiguration>'
_NO_CONFIG = b"<Error><Code>NoSuchLifecycleConfiguration</Code><Message>none</Message></Error>"


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers each method with a fixed (status, body) from ``answers``; counts requests."""

    answers: dict[str, tuple[int, bytes]] = {}
    seen: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append(f"{self.command} {self.path}")
        status, body = self.answers[self.command]
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted(set_env) -> Iterator[type[_ScriptedHandler]]:
    handler = type("Handler", (_ScriptedHandler,), {"answers": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    set_env(AP_S3_BUCKET="bucket", AP_S3_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
            AP_S3_REGION="us-east-1", AP_S3_ACCESS_KEY_ID="AKSCRIPTED", AP_S3_SECRET_ACCESS_KEY="secret-scripted")
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("get", "put", "said"),
    [
        ((409, _EXISTS), (409, _EXISTS), "BucketAlreadyExists (HTTP 409)"),
        ((200, _LISTING), (200, b""), "<ListBucketResult>"),  # a store that ignores ?lifecycle
        ((200, _NO_RULES), (200, b""), "without rules"),
        ((200, b""), (200, b""), "an empty body"),
    ],
    ids=["409-bucket-exists", "200-bucket-listing", "200-no-rules", "200-empty"],
)
def test_an_answer_that_is_not_a_configuration_is_not_supported(runner, scripted, get, put, said) -> None:
    scripted.answers.update(GET=get, PUT=put)
    for args in (("lifecycle", "show"), ("lifecycle", "apply"), ("lifecycle", "apply", "--dry-run")):
        result = invoke(runner, *args)
        assert result.exit_code == 6, (args, result.output)
        assert "does not support lifecycle" in result.stderr and said in result.stderr
        assert "sweep-expired" in result.stderr  # the existing hint: what still works
    assert not any(line.startswith("PUT") for line in scripted.seen)  # nothing written
    # Read once per command: no retries of an answer that will not change.
    assert len([line for line in scripted.seen if line.startswith("GET")]) == 3


def test_no_such_lifecycle_configuration_still_means_no_rules(runner, scripted) -> None:
    scripted.answers.update(GET=(404, _NO_CONFIG), PUT=(200, b""))
    shown = invoke(runner, "lifecycle", "show", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["configured"] is False
    assert json.loads(shown.stdout)["missing"] == OURS


def test_a_real_server_error_is_not_taken_for_not_supported(runner, scripted) -> None:
    scripted.answers.update(GET=(500, b"<html><body>upstream broke</body></html>"), PUT=(500, b""))
    result = invoke(runner, "lifecycle", "show")
    assert result.exit_code == 8, result.output
    assert "does not support" not in result.stderr
