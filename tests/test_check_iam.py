"""`check-iam` against real servers: SeaweedFS (full, read-only and wrong credentials) and
moto's server with IAM enforcement (a user whose policy lacks s3:DeleteObject)."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from typing import Iterator

import boto3
import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.services.check_iam import CHECKS, VERSION_CHECKS, run_checks
from tests import servers
from tests.conftest import READONLY_IDENTITY, settings_from


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def admin_client(seaweed: servers.S3Info):
    return seaweed.client()


def keys_in(seaweed: servers.S3Info, bucket: str) -> list[str]:
    return [o["Key"] for o in admin_client(seaweed).list_objects_v2(Bucket=bucket).get("Contents", [])]


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_full_credentials_pass_every_check_and_leave_nothing(runner, set_env, s3_env, seaweed, tmp_path) -> None:
    set_env(**s3_env)
    junit = tmp_path / "report.xml"
    result = invoke(runner, "check-iam", "--prefix", "ci/probes/", "--json", "--junit-xml", str(junit))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["leftover"] == []
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    # the bucket is not versioned: the three version checks are skipped (test_check_iam_versions.py)
    assert all(c["ok"] is True and c["status"] == "passed" for c in report["checks"]
               if c["name"] not in VERSION_CHECKS), report
    assert {c["name"]: c["detail"] for c in report["checks"] if c["status"] == "skipped"} \
        == dict.fromkeys(VERSION_CHECKS, "bucket is not versioned")
    checks = by_name(report)
    assert checks["list"]["permission"] == "s3:ListBucket"
    assert checks["delete"]["permission"] == "s3:DeleteObject"
    assert "ci/probes/apstorage-check-iam-" in checks["put"]["detail"]
    assert "ap-retention=execution" in checks["put"]["detail"]
    assert "publicAccess" in checks["anonymous-denied"]
    assert abs(checks["clock"]["skewSeconds"]) < 300
    assert keys_in(seaweed, s3_env["AP_S3_BUCKET"]) == []

    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(CHECKS)
    assert suite.get("tests") == str(len(CHECKS)) and suite.get("failures") == "0"
    assert all(c.find("failure") is None for c in cases)
    assert suite.get("skipped") == str(len(VERSION_CHECKS))


def test_read_only_identity_fails_at_put_naming_the_permission(runner, set_env, s3_env, seaweed, tmp_path) -> None:
    cred = READONLY_IDENTITY[0]["credentials"][0]
    bucket = s3_env["AP_S3_BUCKET"]
    set_env(**dict(s3_env, AP_S3_ACCESS_KEY_ID=cred["accessKey"], AP_S3_SECRET_ACCESS_KEY=cred["secretKey"]))
    junit = tmp_path / "ro.xml"
    result = invoke(runner, "check-iam", "--json", "--junit-xml", str(junit))
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    checks = by_name(report)
    assert report["ok"] is False
    assert checks["list"]["status"] == "passed"
    assert checks["put"]["status"] == "failed" and checks["put"]["ok"] is False
    assert "s3:PutObject" in checks["put"]["detail"]
    assert checks["put"]["hint"] == f"grant s3:PutObject on arn:aws:s3:::{bucket}/*"
    for name in ("get", "presign-get"):  # nothing to read: said so, not passed
        assert checks[name]["status"] == "skipped" and checks[name]["ok"] is None
        assert "put failed" in checks[name]["detail"]
    assert checks["presign-put"]["status"] == "failed"
    assert checks["delete"]["status"] == "failed" and "s3:DeleteObject" in checks["delete"]["hint"]
    assert report["leftover"] == [] and keys_in(seaweed, bucket) == []

    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert list(cases) == list(CHECKS)
    assert "s3:PutObject" in cases["put"].find("failure").text
    assert cases["get"].find("skipped") is not None
    assert root.get("failures") == "3" and root.get("skipped") == str(2 + len(VERSION_CHECKS))

    human = invoke(runner, "check-iam")
    assert human.exit_code == 1
    assert "✓" in human.stdout and "✗" in human.stdout
    assert "grant s3:PutObject" in human.stdout  # in the table (wrapped to the width)
    assert f"put: grant s3:PutObject on arn:aws:s3:::{bucket}/*" in human.stderr
    assert "checks failed: put, presign-put, delete" in human.stderr


def test_a_wrong_secret_fails_at_list_naming_the_signature_error(runner, set_env, s3_env, seaweed) -> None:
    set_env(**dict(s3_env, AP_S3_SECRET_ACCESS_KEY="not-the-secret-at-all"))
    result = invoke(runner, "check-iam", "--json")
    assert result.exit_code == 1, result.output
    checks = by_name(json.loads(result.stdout))
    assert checks["list"]["status"] == "failed"
    assert "SignatureDoesNotMatch" in checks["list"]["detail"]
    assert "AP_S3_SECRET_ACCESS_KEY" in checks["list"]["hint"]
    assert "not-the-secret-at-all" not in result.output
    assert keys_in(seaweed, s3_env["AP_S3_BUCKET"]) == []


@pytest.fixture(scope="module")
def moto_no_delete() -> Iterator[dict[str, str]]:
    """moto enforcing IAM after 5 unauthenticated calls, which set up a user whose
    policy allows everything check-iam does except s3:DeleteObject."""
    with servers.moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as moto:
        setup = dict(endpoint_url=moto.endpoint, region_name="us-east-1",
                     aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="ci")  # 1
        policy = iam.create_policy(  # 2
            PolicyName="no-delete",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:PutObject", "s3:PutObjectTagging", "s3:GetObject"],
                "Resource": ["arn:aws:s3:::ci-bucket", "arn:aws:s3:::ci-bucket/*"],
            }]}),
        )
        iam.attach_user_policy(UserName="ci", PolicyArn=policy["Policy"]["Arn"])  # 3
        key = iam.create_access_key(UserName="ci")["AccessKey"]  # 4
        boto3.client("s3", **setup).create_bucket(Bucket="ci-bucket")  # 5
        yield {
            "AP_S3_BUCKET": "ci-bucket",
            "AP_S3_ENDPOINT": moto.endpoint,
            "AP_S3_REGION": "us-east-1",
            "AP_S3_ACCESS_KEY_ID": key["AccessKeyId"],
            "AP_S3_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }


def test_a_policy_without_delete_fails_naming_s3_delete_object(runner, set_env, moto_no_delete) -> None:
    set_env(**moto_no_delete)
    result = invoke(runner, "check-iam", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    checks = by_name(report)
    for name in ("list", "put", "get", "anonymous-denied", "clock"):
        assert checks[name]["status"] == "passed", checks[name]
    assert checks["delete"]["status"] == "failed"
    assert "s3:DeleteObject" in checks["delete"]["detail"] and "AccessDenied" in checks["delete"]["detail"]
    assert checks["delete"]["hint"] == "grant s3:DeleteObject on arn:aws:s3:::ci-bucket/*"
    # These credentials cannot remove their probe: reported, never hidden. (moto's IAM
    # mode answers 500 to any query-signed request, so presign-* fail there too.) Nor can
    # they read the versioning state or list versions: the probes' versions, if the bucket
    # keeps any, are named as not known.
    assert len(report["leftover"]) == 2 and all("apstorage-check-iam-" in x for x in report["leftover"])
    assert "could not be listed" in report["leftover"][1]
    assert "s3:GetBucketVersioning" in checks["list-versions"]["detail"] + (checks["list-versions"]["hint"] or "")
    assert "left behind" in result.stderr


def test_a_public_bucket_fails_anonymous_denied() -> None:
    """A bucket policy granting s3:GetObject to "*": exactly what the check must catch."""
    with servers.moto_server() as moto:
        client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="s")
        client.create_bucket(Bucket="open")
        client.put_bucket_policy(Bucket="open", Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::open/*",
        }]}))
        settings = settings_from({"AP_S3_BUCKET": "open", "AP_S3_ENDPOINT": moto.endpoint,
                                  "AP_S3_ACCESS_KEY_ID": "k", "AP_S3_SECRET_ACCESS_KEY": "s"})
        report = run_checks(settings)
    checks = {c.name: c for c in report.checks}
    assert checks["anonymous-denied"].status == "failed"
    assert "anyone can read" in checks["anonymous-denied"].detail
    assert "Block Public Access" in checks["anonymous-denied"].hint
    assert [c.name for c in report.failed] == ["anonymous-denied"] and report.exit_code == 1
    assert report.leftover == []


def test_an_interrupted_run_still_removes_its_probes(s3_env, make_env, seaweed) -> None:
    settings = settings_from(make_env(**s3_env))
    seen: list[str] = []

    def interrupt_after_presign_put(result) -> None:
        seen.append(result.name)
        if result.name == "presign-put":
            assert len(keys_in(seaweed, s3_env["AP_S3_BUCKET"])) == 2  # both probes exist now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_checks(settings, on_result=interrupt_after_presign_put)
    assert seen[-1] == "presign-put"
    assert keys_in(seaweed, s3_env["AP_S3_BUCKET"]) == []


def test_skip_leaves_checks_out_and_refuses_unknown_names(runner, set_env, s3_env) -> None:
    set_env(**s3_env)
    result = invoke(runner, "check-iam", "--skip", "clock, anonymous-denied,presign-get", "--json")
    assert result.exit_code == 0, result.output
    checks = by_name(json.loads(result.stdout))
    assert {n for n, c in checks.items() if c["status"] == "skipped"} \
        == {"clock", "anonymous-denied", "presign-get", *VERSION_CHECKS}
    assert all(checks[n]["detail"] == "skipped (--skip)" for n in ("clock", "anonymous-denied", "presign-get"))
    bad = invoke(runner, "check-iam", "--skip", "list,teleport")
    assert bad.exit_code == 2 and "teleport" in bad.stderr


def test_missing_configuration_is_exit_3(runner, set_env) -> None:
    set_env()
    result = invoke(runner, "check-iam")
    assert result.exit_code == 3 and "AP_S3_BUCKET" in result.stderr


def test_an_unreachable_endpoint_is_exit_8(runner, set_env, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_env(AP_S3_BUCKET="bkt", AP_S3_ENDPOINT=f"http://127.0.0.1:{port}",
            AP_S3_ACCESS_KEY_ID="k", AP_S3_SECRET_ACCESS_KEY="secret-value-123")
    junit = tmp_path / "down.xml"
    result = invoke(runner, "check-iam", "--json", "--junit-xml", str(junit))
    assert result.exit_code == 8, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["checks"][0]["status"] == "failed" and f"127.0.0.1:{port}" in report["checks"][0]["detail"]
    assert all(c["status"] == "skipped" for c in report["checks"][1:])
    assert f"127.0.0.1:{port}" in result.stderr and "secret-value-123" not in result.output
    assert len(ET.parse(junit).getroot().findall("./testsuite/testcase")) == len(CHECKS)


def test_a_missing_bucket_stops_the_run_even_when_list_is_skipped(runner, set_env, s3_env, seaweed) -> None:
    """Some stores create a bucket on the first write: nothing may be written to a
    misspelled one. `list` skipped, one ListObjectsV2 still asks."""
    set_env(**dict(s3_env, AP_S3_BUCKET="misspelled-bucket-name"))
    result = invoke(runner, "check-iam", "--skip", "list", "--json")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and all(c["status"] == "skipped" for c in report["checks"])
    assert "AP_S3_BUCKET" in result.stderr and "misspelled-bucket-name" in result.stderr
    buckets = [b["Name"] for b in admin_client(seaweed).list_buckets().get("Buckets", [])]
    assert "misspelled-bucket-name" not in buckets
