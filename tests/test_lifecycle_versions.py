"""`lifecycle apply` / `lifecycle show` on versioned buckets (issue 21, item 6).

Real servers: SeaweedFS and moto's server (both keep versions and store these rules as
given), rclone's S3 server (no lifecycle and no versioning API: unchanged, exit 6), and an
unversioned SeaweedFS bucket whose output must be exactly what it was before.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.errors import UsageError
from apstorage.services.lifecycle import (
    ABORT_RULE_ID,
    EXPIRE_RULE_ID,
    MARKERS_RULE_ID,
    NONCURRENT_RULE_ID,
    check_noncurrent_days,
    versioned_rules,
)

BASE = [EXPIRE_RULE_ID, ABORT_RULE_ID]
ALL = BASE + [NONCURRENT_RULE_ID, MARKERS_RULE_ID]
TAG = {"Key": "ap-retention", "Value": "execution"}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_json(runner: CliRunner, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke(runner, *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def make_bucket(info, status: str | None) -> str:
    bucket = f"lv-{secrets.token_hex(6)}"
    client = info.client()
    client.create_bucket(Bucket=bucket)
    if status == "Suspended":
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if status:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
    return bucket


def rules_on(client, bucket: str) -> list[dict[str, Any]] | None:
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
        return None


@pytest.fixture(params=["seaweed", "moto"])
def server(request):
    return request.getfixturevalue(request.param)


# -- versioned buckets -------------------------------------------------------------------------


def test_versioned_bucket_gets_the_noncurrent_and_delete_marker_rules(runner, server, set_env) -> None:
    client = server.client()
    bucket = make_bucket(server, "Enabled")
    foreign = {"ID": "team-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 7}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    set_env(**server.ap_env(bucket))

    dry = run_json(runner, "lifecycle", "apply", "--dry-run")
    assert dry["dryRun"] is True and dry["written"] is False
    assert dry["added"] == ALL and dry["kept"] == ["team-logs"]
    assert dry["versioning"] == {"status": "Enabled", "versioned": True, "supported": True, "note": None}
    assert dry["noncurrentDays"] == 7
    changes = {c["id"]: c for c in dry["changes"]}
    assert changes[NONCURRENT_RULE_ID]["before"] is None
    assert changes[NONCURRENT_RULE_ID]["after"] == {
        "ID": NONCURRENT_RULE_ID, "Status": "Enabled", "Filter": {"Tag": TAG},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
    }
    assert changes[NONCURRENT_RULE_ID]["actionsAfter"] == "expire noncurrent versions after 7 days"
    assert changes[MARKERS_RULE_ID]["after"]["Filter"] == {"Prefix": ""}
    assert changes[MARKERS_RULE_ID]["after"]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert changes[MARKERS_RULE_ID]["actionsAfter"] == "remove expired delete markers"
    assert [r["ID"] for r in rules_on(client, bucket)] == ["team-logs"]  # nothing written

    plan = run_json(runner, "lifecycle", "apply", "--noncurrent-days", "10")
    assert plan["written"] is True and plan["added"] == ALL and plan["noncurrentDays"] == 10
    stored = {r["ID"]: r for r in rules_on(client, bucket)}
    assert list(stored) == ["team-logs", *ALL]
    assert stored["team-logs"] == foreign
    # the server keeps both rules as written (read back in the same form)
    assert stored[NONCURRENT_RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 10}
    assert stored[NONCURRENT_RULE_ID]["Filter"] == {"Tag": TAG}
    assert stored[MARKERS_RULE_ID]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert stored[MARKERS_RULE_ID]["Filter"] == {"Prefix": ""}

    again = run_json(runner, "lifecycle", "apply", "--noncurrent-days", "10")
    assert again["changed"] is False and again["written"] is False and again["kept"] == ["team-logs", *ALL]

    human = invoke(runner, "lifecycle", "apply", "--dry-run")  # default 7 again
    assert human.exit_code == 0, human.output
    assert "expire noncurrent versions after 10 days → 7 days" in " ".join(human.stdout.split())
    assert f"bucket {bucket} is versioned (Enabled)" in human.stderr
    assert "would write 5 rules" in human.stderr and "1 updated" in human.stderr
    updated = run_json(runner, "lifecycle", "apply")
    assert updated["updated"] == [NONCURRENT_RULE_ID]
    change = {c["id"]: c for c in updated["changes"]}[NONCURRENT_RULE_ID]
    assert change["before"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 10}
    assert change["after"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
    assert {r["ID"]: r for r in rules_on(client, bucket)}[NONCURRENT_RULE_ID]["NoncurrentVersionExpiration"] \
        == {"NoncurrentDays": 7}


def test_show_flags_a_versioned_bucket_that_keeps_versions_forever(runner, server, set_env) -> None:
    bucket = make_bucket(server, "Enabled")
    set_env(**server.ap_env(bucket))
    run_json(runner, "lifecycle", "apply")  # then take the versioned rules away again
    client = server.client()
    base = [r for r in rules_on(client, bucket) if r["ID"] in BASE]
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": base})

    shown = invoke(runner, "lifecycle", "show", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["versioning"]["status"] == "Enabled"
    assert data["versionsKeptForever"] is True and data["deleteMarkersKept"] is True
    assert data["missingVersionRules"] == [NONCURRENT_RULE_ID, MARKERS_RULE_ID]
    assert data["missing"] == [NONCURRENT_RULE_ID, MARKERS_RULE_ID]
    assert "keeps its bytes forever" in shown.stderr and NONCURRENT_RULE_ID in shown.stderr

    human = invoke(runner, "lifecycle", "show")
    assert human.exit_code == 0 and "versioning: Enabled" in human.stdout
    assert "warning:" in human.stderr and "lifecycle apply" in human.stderr

    run_json(runner, "lifecycle", "apply")
    fixed = invoke(runner, "lifecycle", "show", "--json")
    data = json.loads(fixed.stdout)
    assert data["versionsKeptForever"] is False and data["deleteMarkersKept"] is False
    assert data["missingVersionRules"] == [] and data["missing"] == []
    assert [r["id"] for r in data["rules"] if r["ours"]] == ALL
    assert "forever" not in fixed.stderr


def test_a_foreign_noncurrent_rule_counts_but_ours_are_still_named(runner, seaweed, set_env) -> None:
    """A rule of the operator's that expires every noncurrent version already frees the
    bytes: no warning, but the missing rules are still listed."""
    bucket = make_bucket(seaweed, "Enabled")
    seaweed.client().put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "all-noncurrent", "Filter": {"Prefix": ""}, "Status": "Enabled",
         "NoncurrentVersionExpiration": {"NoncurrentDays": 30}},
    ]})
    set_env(**seaweed.ap_env(bucket))
    shown = invoke(runner, "lifecycle", "show", "--json")
    data = json.loads(shown.stdout)
    assert data["versionsKeptForever"] is False and data["deleteMarkersKept"] is True
    assert data["missingVersionRules"] == [NONCURRENT_RULE_ID, MARKERS_RULE_ID]
    assert "forever" not in shown.stderr


def test_a_suspended_bucket_is_versioned_too(runner, seaweed, set_env) -> None:
    """Suspending keeps every version written while versioning was on."""
    bucket = make_bucket(seaweed, "Suspended")
    set_env(**seaweed.ap_env(bucket))
    plan = run_json(runner, "lifecycle", "apply", "--noncurrent-days", "1")
    assert plan["added"] == ALL and plan["versioning"]["status"] == "Suspended"
    stored = {r["ID"]: r for r in rules_on(seaweed.client(), bucket)}
    assert stored[NONCURRENT_RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", ""])
def test_a_bad_noncurrent_days_is_refused_and_nothing_written(seaweed, set_env, capsys, value) -> None:
    """Through the CLI's own entry point (``apstorage.cli.app.run``): one line, exit 2."""
    from apstorage.cli.app import run

    bucket = make_bucket(seaweed, "Enabled")
    set_env(**seaweed.ap_env(bucket))
    for extra in ((), ("--json",), ("--dry-run",)):
        code = run(["lifecycle", "apply", "--noncurrent-days", value, *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "--noncurrent-days" in err and err.startswith("error:")
        assert len(err.strip().splitlines()) == 1
    assert rules_on(seaweed.client(), bucket) is None


def test_the_service_refuses_what_the_flag_cannot_carry() -> None:
    for bad in (0, -1, True, 2.0, "7", None):
        with pytest.raises(UsageError, match="--noncurrent-days"):
            check_noncurrent_days(bad)
    assert versioned_rules(3)[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 3}


# -- unversioned buckets: exactly as before ------------------------------------------------------


def todays_plan(bucket: str, *, dry_run: bool = False) -> dict[str, Any]:
    """`lifecycle apply --json` on an empty unversioned bucket with the default settings,
    as it was before versioning was known (commit 265411e), key order included."""
    expire = {"ID": EXPIRE_RULE_ID, "Status": "Enabled", "Filter": {"Tag": TAG}, "Expiration": {"Days": 31}}
    abort = {"ID": ABORT_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    return {
        "added": BASE, "updated": [], "kept": [], "removed": [], "dryRun": dry_run, "changed": True,
        "written": not dry_run, "bucket": bucket, "retentionDays": 30, "graceDays": 1, "expirationDays": 31,
        "rules": [expire, abort], "problems": [],
        "changes": [
            {"id": EXPIRE_RULE_ID, "change": "added", "ours": True, "before": None, "after": expire,
             "actionsBefore": None, "actionsAfter": "expire after 31 days"},
            {"id": ABORT_RULE_ID, "change": "added", "ours": True, "before": None, "after": abort,
             "actionsBefore": None, "actionsAfter": "abort incomplete multipart uploads after 1 day"},
        ],
    }


def test_an_unversioned_bucket_gets_exactly_todays_rules(runner, seaweed, set_env) -> None:
    bucket = make_bucket(seaweed, None)
    set_env(**seaweed.ap_env(bucket))
    for args in (("--dry-run",), ("--dry-run", "--noncurrent-days", "3")):
        result = invoke(runner, "lifecycle", "apply", *args, "--json")
        assert result.exit_code == 0, result.output
        # equal, and in the same key order at every level: the same document, byte for byte
        assert json.dumps(json.loads(result.stdout)) == json.dumps(todays_plan(bucket, dry_run=True))
        assert result.stderr == ""
    human = invoke(runner, "lifecycle", "apply", "--dry-run")
    assert "versioned" not in human.stdout + human.stderr
    assert NONCURRENT_RULE_ID not in human.stdout
    plan = invoke(runner, "lifecycle", "apply", "--json")
    assert json.dumps(json.loads(plan.stdout)) == json.dumps(todays_plan(bucket))
    assert [r["ID"] for r in rules_on(seaweed.client(), bucket)] == BASE

    shown = run_json(runner, "lifecycle", "show")
    assert shown["versioning"]["status"] == "Unversioned" and shown["versionsKeptForever"] is False
    assert shown["missing"] == [] and shown["missingVersionRules"] == []


def test_rclone_has_neither_api_and_answers_as_before(runner, rclone, set_env) -> None:
    """rclone's S3 server: no lifecycle API (exit 6, as before) and no versioning API."""
    bucket = f"lv-{secrets.token_hex(6)}"
    rclone.client().create_bucket(Bucket=bucket)
    set_env(**rclone.ap_env(bucket))
    for args in (("lifecycle", "show"), ("lifecycle", "apply"), ("lifecycle", "apply", "--noncurrent-days", "3")):
        result = invoke(runner, *args)
        assert result.exit_code == 6, result.output
        assert "does not support lifecycle" in result.stderr
        assert "versioned" not in result.stderr
