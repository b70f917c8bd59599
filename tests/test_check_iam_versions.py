"""`check-iam` on versioned buckets (issue 21, item 7): list-versions, get-version and
delete-versions, and a clean-up that leaves no version or delete marker of the probes.

Real servers: SeaweedFS and moto's server (versioned), moto's server enforcing IAM (a user
lacking each of s3:ListBucketVersions, s3:GetObjectVersion, s3:DeleteObjectVersion), and
rclone's S3 server plus an unversioned SeaweedFS bucket (the checks skipped).
"""

from __future__ import annotations

import json
import secrets
import xml.etree.ElementTree as ET
from typing import Iterator

import boto3
import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.services.check_iam import CHECKS, VERSION_CHECKS, run_checks
from tests import servers
from tests.conftest import settings_from

PREFIX = "ci/probes/"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def versions_under(client, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(key, versionId, is a delete marker) of everything ListObjectVersions shows."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        out += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        out += [(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])]
    return out


def make_bucket(info, versioned: bool) -> str:
    bucket = f"ci-{secrets.token_hex(6)}"
    client = info.client()
    client.create_bucket(Bucket=bucket)
    if versioned:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


@pytest.fixture(params=["seaweed", "moto"])
def server(request):
    return request.getfixturevalue(request.param)


def test_a_versioned_bucket_passes_the_version_checks_and_keeps_no_version(runner, server, set_env, tmp_path) -> None:
    bucket = make_bucket(server, True)
    client = server.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}other.txt", Body=b"not a probe")  # never touched
    set_env(**server.ap_env(bucket))
    junit = tmp_path / "iam.xml"
    result = invoke(runner, "check-iam", "--prefix", PREFIX, "--json", "--junit-xml", str(junit))
    report = json.loads(result.stdout)
    checks = by_name(report)
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    for name in ("list", "put", "get", "delete", "list-versions", "get-version", "delete-versions"):
        assert checks[name]["status"] == "passed", checks[name]
    failed = [c["name"] for c in report["checks"] if c["status"] == "failed"]
    assert failed in ([], ["anonymous-denied"]), result.output  # moto's server serves unsigned GETs
    assert checks["list-versions"]["permission"] == "s3:ListBucketVersions"
    assert checks["get-version"]["permission"] == "s3:GetObjectVersion"
    assert checks["delete-versions"]["permission"] == "s3:DeleteObjectVersion"
    assert "1 version and 0 delete markers" in checks["list-versions"]["detail"]  # the probe, current
    assert "read the probe back" in checks["get-version"]["detail"]
    # the delete check left both probes as noncurrent versions under delete markers
    assert "deleted 2 versions and 2 delete markers" in checks["delete-versions"]["detail"]
    assert "shows none" in checks["delete-versions"]["detail"]
    assert report["leftover"] == []
    assert versions_under(client, bucket) == [(f"{PREFIX}other.txt", versions_under(client, bucket)[0][1], False)]
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(CHECKS)
    assert all(c.find("failure") is None for c in cases if c.get("name") in VERSION_CHECKS)

    human = invoke(runner, "check-iam", "--prefix", PREFIX)
    assert "s3:DeleteObjectVersion" in human.stdout and "delete-versions" in human.stdout
    assert [k for k, _, _ in versions_under(client, bucket)] == [f"{PREFIX}other.txt"]


@pytest.mark.parametrize("skip", ["delete-versions", "delete,list-versions,get-version,delete-versions", "delete"])
def test_the_cleanup_removes_every_version_and_marker_whatever_was_skipped(server, make_env, skip) -> None:
    bucket = make_bucket(server, True)
    report = run_checks(settings_from(make_env(**server.ap_env(bucket))), prefix=PREFIX, skip=skip.split(","))
    assert report.leftover == []
    assert versions_under(server.client(), bucket, PREFIX) == []
    statuses = {c.name: c.status for c in report.checks}
    for name in skip.split(","):
        assert statuses[name] == "skipped"


def test_an_interrupted_run_on_a_versioned_bucket_leaves_no_version(seaweed, make_env) -> None:
    bucket = make_bucket(seaweed, True)
    settings = settings_from(make_env(**seaweed.ap_env(bucket)))

    def interrupt_after_delete(result) -> None:
        if result.name == "delete":
            assert len(versions_under(seaweed.client(), bucket)) == 4  # 2 versions, 2 markers
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_checks(settings, on_result=interrupt_after_delete)
    assert versions_under(seaweed.client(), bucket) == []


def test_a_suspended_bucket_is_checked_as_versioned(moto, make_env) -> None:
    """Suspended: writes make a ``null`` version, read back by its id; moto's server's
    plain delete then removes it without leaving a delete marker, so nothing is left for
    delete-versions (said so, skipped) and nothing remains."""
    bucket = make_bucket(moto, True)
    moto.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    report = run_checks(settings_from(make_env(**moto.ap_env(bucket))), prefix=PREFIX)
    checks = {c.name: c for c in report.checks}
    assert checks["list-versions"].status == "passed" and checks["get-version"].status == "passed"
    assert "versionId null" in checks["get-version"].detail
    assert checks["delete-versions"].status == "skipped"
    assert "the plain deletes left none" in checks["delete-versions"].detail
    assert report.leftover == [] and versions_under(moto.client(), bucket) == []


def test_a_store_that_keeps_deleted_null_markers_is_reported_not_hidden(seaweed, make_env) -> None:
    """SeaweedFS 4.48 answers the delete of a Suspended bucket's ``null`` delete marker
    as done (204, and in DeleteObjects) but keeps it: delete-versions fails saying so
    (no permission hint), and the clean-up names each marker left."""
    bucket = make_bucket(seaweed, True)
    seaweed.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    report = run_checks(settings_from(make_env(**seaweed.ap_env(bucket))), prefix=PREFIX)
    checks = {c.name: c for c in report.checks}
    assert checks["list-versions"].status == "passed" and checks["get-version"].status == "passed"
    assert checks["delete-versions"].status == "failed" and checks["delete-versions"].hint is None
    assert "did not remove them; this is not a permission problem" in checks["delete-versions"].detail
    left = versions_under(seaweed.client(), bucket)
    assert left and all(marker and vid == "null" for _, vid, marker in left)
    assert sorted(report.leftover) == sorted(
        f"s3://{bucket}/{key} (delete marker null: still listed after a delete the store answered as done)"
        for key, _, _ in left)


# -- unversioned -----------------------------------------------------------------------------------


def test_an_unversioned_bucket_skips_the_version_checks(runner, seaweed, set_env) -> None:
    bucket = make_bucket(seaweed, False)
    set_env(**seaweed.ap_env(bucket))
    result = invoke(runner, "check-iam", "--json")
    assert result.exit_code == 0, result.output
    checks = by_name(json.loads(result.stdout))
    for name in VERSION_CHECKS:
        assert checks[name]["status"] == "skipped" and checks[name]["ok"] is None
        assert checks[name]["detail"] == "bucket is not versioned"
    assert all(c["status"] == "passed" for n, c in checks.items() if n not in VERSION_CHECKS)
    human = invoke(runner, "check-iam")
    assert human.exit_code == 0 and "bucket is not versioned" in human.stdout
    assert versions_under(seaweed.client(), bucket) == []


def test_rclone_has_no_versioning_api_and_skips_them(rclone, make_env) -> None:
    bucket = f"ci-{secrets.token_hex(6)}"
    rclone.client().create_bucket(Bucket=bucket)
    report = run_checks(settings_from(make_env(**rclone.ap_env(bucket))), prefix=PREFIX)
    checks = {c.name: c for c in report.checks}
    for name in VERSION_CHECKS:
        assert checks[name].status == "skipped"
        assert checks[name].detail.startswith("bucket is not versioned")
    assert checks["delete"].status == "passed" and report.leftover == []
    assert rclone.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []


# -- IAM: each permission missing in turn (moto's server enforcing policies) ---------------------

BASE_ACTIONS = ["s3:ListBucket", "s3:PutObject", "s3:PutObjectTagging", "s3:GetObject", "s3:DeleteObject",
                "s3:GetBucketVersioning"]
WITHHELD = {"no-list-versions": "s3:ListBucketVersions", "no-get-version": "s3:GetObjectVersion",
            "no-delete-version": "s3:DeleteObjectVersion"}
VERSION_ACTIONS = sorted(WITHHELD.values())


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[dict[str, dict[str, str]]]:
    """moto enforcing IAM after the unauthenticated calls that set up a versioned bucket
    and one user per withheld permission (4 calls per user, then 2 for the bucket)."""
    count = 4 * len(WITHHELD) + 2
    with servers.moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": str(count)}) as moto:
        setup = dict(endpoint_url=moto.endpoint, region_name="us-east-1",
                     aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        envs = {}
        for user, withheld in WITHHELD.items():
            iam.create_user(UserName=user)
            policy = iam.create_policy(PolicyName=user, PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow",
                    "Action": BASE_ACTIONS + [a for a in VERSION_ACTIONS if a != withheld],
                    "Resource": ["arn:aws:s3:::vbucket", "arn:aws:s3:::vbucket/*"],
                }]}))
            iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
            key = iam.create_access_key(UserName=user)["AccessKey"]
            envs[user] = {"AP_S3_BUCKET": "vbucket", "AP_S3_ENDPOINT": moto.endpoint, "AP_S3_REGION": "us-east-1",
                          "AP_S3_ACCESS_KEY_ID": key["AccessKeyId"], "AP_S3_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = boto3.client("s3", **setup)
        s3.create_bucket(Bucket="vbucket")
        s3.put_bucket_versioning(Bucket="vbucket", VersioningConfiguration={"Status": "Enabled"})
        yield envs


@pytest.mark.parametrize("user", list(WITHHELD))
def test_a_missing_version_permission_fails_its_check_naming_it(runner, set_env, moto_iam, user) -> None:
    set_env(**moto_iam[user])
    result = invoke(runner, "check-iam", "--json", "--skip", "presign-get,presign-put")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    checks = by_name(report)
    for name in ("list", "put", "get", "delete"):
        assert checks[name]["status"] == "passed", checks[name]
    action = WITHHELD[user]
    failing = {"no-list-versions": "list-versions", "no-get-version": "get-version",
               "no-delete-version": "delete-versions"}[user]
    assert checks[failing]["status"] == "failed", checks[failing]
    assert action in checks[failing]["detail"] and "AccessDenied" in checks[failing]["detail"]
    resource = "arn:aws:s3:::vbucket" if failing == "list-versions" else "arn:aws:s3:::vbucket/*"
    assert checks[failing]["hint"] == f"grant {action} on {resource}"
    assert f"{failing}: grant {action}" in invoke(runner, "check-iam", "--skip", "presign-get,presign-put").stderr
    others = [n for n in VERSION_CHECKS if n != failing]
    if user == "no-get-version":
        assert all(checks[n]["status"] == "passed" for n in others)
        assert report["leftover"] == []
    elif user == "no-list-versions":
        # get-version takes the current probe's id from a HEAD; once the probes are deleted
        # no id is known, so delete-versions has nothing to go on, and the clean-up says
        # the probes' versions may be left
        assert checks["get-version"]["status"] == "passed", report
        assert checks["delete-versions"]["status"] == "skipped", report
        assert len(report["leftover"]) == 1 and "versions could not be listed" in report["leftover"][0]
        assert "probe left behind" in result.stderr
    else:
        assert all(checks[n]["status"] == "passed" for n in others), report
        # moto's server checks only s3:DeleteObject on a DeleteObjects naming versions (AWS
        # checks s3:DeleteObjectVersion), so its clean-up batch removes them; the listing,
        # which this user may do, confirms nothing is left
        assert report["leftover"] == []
