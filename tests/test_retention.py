"""Retention exactly as the platform computes it (issue 13, item 1).

- ``FLOW_BUNDLE`` follows AP_FILE_STORAGE_LOCATION but never expires by age: never swept,
  never tagged ``ap-retention=execution`` (put, presign --upload, migrate), refused by
  ``sweep-expired --types``.
- A project's own ``executionDataRetentionDays`` is clamped to
  [AP_PAUSED_FLOW_TIMEOUT_DAYS, AP_EXECUTION_DATA_RETENTION_DAYS]; a sweep warns only when
  the retention is strictly shorter than the pause timeout; the equal case (the platform's
  defaults) is a note where settings are reviewed (issue 22, item 1).
- The bucket never expires objects sooner than the catalog lets them go.

On SQLite and Postgres (``catalog_env``), with SeaweedFS as the bucket. Every scenario that
deletes ends by reading back every remaining row (``assert_intact``).
"""

from __future__ import annotations

import io
import json
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.model import FileRow, Location, effective_retention_days, new_id
from apstorage.services.context import Storage
from apstorage.services.lifecycle import EXPIRE_RULE_ID, expiry_problem
from apstorage.services.migrate import MigrateOptions, migrate_to_s3
from apstorage.services.presign import UploadFile, UploadRequest, presign_uploads
from apstorage.services.sweep import sweep_expired
from tests.integrity import assert_intact

NOW = datetime.now(timezone.utc)
TAG = [{"Key": "ap-retention", "Value": "execution"}]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def age(storage: Storage, file_id: str, days: float) -> None:
    """Set a row's ``created`` ``days`` back (what the platform would have written)."""
    catalog = storage.catalog
    p = catalog.ph
    catalog._execute(
        f'UPDATE "file" SET "created" = {p} WHERE "id" = {p}',
        (catalog._ts_in(NOW - timedelta(days=days)), file_id),
    )


def tags_of(seaweed, bucket: str, key: str) -> list[dict]:
    return seaweed.client().get_object_tagging(Bucket=bucket, Key=key)["TagSet"]


def row_exists(storage: Storage, file_id: str) -> bool:
    return bool(storage.catalog._execute(f'SELECT 1 FROM "file" WHERE "id" = {storage.catalog.ph}', (file_id,)))


# -- FLOW_BUNDLE -----------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["S3", "LOCAL"])
def test_a_flow_bundle_follows_the_location_and_is_never_swept_nor_tagged(
    location, catalog_env, s3_env, seaweed, set_env, storage_factory, runner, tmp_path
) -> None:
    """The issue's example: `echo '{}' | apstorage put - --type FLOW_BUNDLE --project p1`,
    created 40 days back, then `sweep-expired`: the bundle stays."""
    env = set_env(**catalog_env, **s3_env, AP_FILE_STORAGE_LOCATION=location,
                  AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    storage = storage_factory(env)
    bundle = json.loads(invoke(runner, "put", "-", "--type", "FLOW_BUNDLE", "--project", "p1", "--json",
                               input=b"{}").stdout)
    log = json.loads(invoke(runner, "put", "-", "--type", "FLOW_RUN_LOG", "--project", "p1", "--json",
                            input=b"log").stdout)
    assert bundle["location"] == location and bundle["s3Key"] == f"project/p1/FLOW_BUNDLE/{bundle['id']}"
    if location == "S3":
        assert tags_of(seaweed, s3_env["AP_S3_BUCKET"], bundle["s3Key"]) == []
        assert tags_of(seaweed, s3_env["AP_S3_BUCKET"], log["s3Key"]) == TAG
    for file_id in (bundle["id"], log["id"]):
        age(storage, file_id, 40)

    refused = invoke(runner, "sweep-expired", "--types", "FLOW_BUNDLE")
    assert refused.exit_code == 2 and "FLOW_BUNDLE" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert row_exists(storage, bundle["id"])

    report = json.loads(invoke(runner, "sweep-expired", "--json").stdout)
    assert report["deleted"] == 1 and "FLOW_BUNDLE" not in report["byType"]
    assert row_exists(storage, bundle["id"]) and not row_exists(storage, log["id"])
    assert storage.store(Location(location)).stat(bundle["s3Key"]) is not None
    assert assert_intact(storage, {bundle["id"]: b"{}"}) == 1


def test_presign_upload_of_a_flow_bundle_carries_no_retention_tag(catalog_env, s3_env, seaweed, storage_factory) -> None:
    storage = storage_factory({**catalog_env, **s3_env})
    request = UploadRequest(file_type="FLOW_BUNDLE", project_id="p1")
    result = presign_uploads(storage, request, [UploadFile("bundle.json", 2)])
    (item,) = result.items
    assert "x-amz-tagging" not in {k.lower() for k in item.headers}
    put = urllib.request.Request(item.url, data=b"{}", method="PUT", headers=item.headers)
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 200
    assert tags_of(seaweed, s3_env["AP_S3_BUCKET"], item.s3_key) == []
    logs = presign_uploads(storage, UploadRequest(file_type="FLOW_RUN_LOG", project_id="p1"), [UploadFile("a", 1)])
    assert logs.items[0].headers.get("x-amz-tagging") == "ap-retention=execution"
    dry = presign_uploads(storage, request, [UploadFile("b", 1)], dry_run=True)
    assert "x-amz-tagging" not in dry.items[0].headers


def test_migrate_moves_flow_bundles_by_default_without_the_tag(catalog_env, s3_env, seaweed, storage_factory) -> None:
    storage = storage_factory({**catalog_env, **s3_env})
    rows = {}
    for file_type in ("FLOW_BUNDLE", "FLOW_RUN_LOG"):
        row = FileRow(id=new_id(), type=file_type, location=Location.DB, project_id="p1", size=7)
        storage.catalog.insert(row, b"content")
        rows[file_type] = row
    report = migrate_to_s3(storage, MigrateOptions(sources=(Location.DB,), workers=2))
    assert report.migrated == 2 and report.failed == 0
    bucket = s3_env["AP_S3_BUCKET"]
    assert tags_of(seaweed, bucket, storage.catalog.get(rows["FLOW_BUNDLE"].id).key) == []
    assert tags_of(seaweed, bucket, storage.catalog.get(rows["FLOW_RUN_LOG"].id).key) == TAG
    assert_intact(storage, {row.id: b"content" for row in rows.values()})


# -- a project's own retention, clamped ------------------------------------------------------


def test_effective_retention_is_the_platforms_clamp() -> None:
    assert effective_retention_days(None, 30, 30) == 30
    assert effective_retention_days(7, 30, 30) == 30  # never below the pause timeout
    assert effective_retention_days(45, 30, 30) == 30  # never above the global
    assert effective_retention_days(7, 30, 5) == 7
    assert effective_retention_days(3, 30, 5) == 5
    assert effective_retention_days(0, 30, 5) == 5
    assert effective_retention_days(10, 30, 60) == 30  # pause above the global: the global


def make_projects(storage: Storage, projects: dict[str, int | None]) -> None:
    catalog = storage.catalog
    catalog._execute(
        'CREATE TABLE "project" ("id" varchar(21) PRIMARY KEY, "displayName" varchar, '
        '"executionDataRetentionDays" integer)'
    )
    p = catalog.ph
    for project_id, days in projects.items():
        catalog._execute(f'INSERT INTO "project" VALUES ({p}, {p}, {p})', (project_id, project_id, days))


def seed(storage: Storage, project: str, days: float, file_type: str = "FLOW_STEP_FILE") -> FileRow:
    row = FileRow(id=new_id(), type=file_type, location=Location.DB, project_id=project,
                  created=NOW - timedelta(days=days), size=4)
    return storage.catalog.insert(row, b"step")


def test_project_retention_is_clamped_to_pause_timeout_and_global(catalog_env, storage_factory) -> None:
    """Project retention 7, pause 30, global 30: a 10-day-old step file survives.
    Project retention 45, global 30: clamped to 30."""
    storage = storage_factory(catalog_env)  # defaults: retention 30, pause 30
    make_projects(storage, {"p7": 7, "p45": 45})
    young = seed(storage, "p7", 10)
    p45_young, p45_old = seed(storage, "p45", 29), seed(storage, "p45", 31)
    p7_old = seed(storage, "p7", 31)
    report = sweep_expired(storage)
    assert report.project_retention and report.projects_with_shorter_retention == 0
    assert row_exists(storage, young.id) and row_exists(storage, p45_young.id)
    assert not row_exists(storage, p45_old.id) and not row_exists(storage, p7_old.id)
    assert report.deleted == 2
    assert assert_intact(storage, {young.id: b"step", p45_young.id: b"step"}) == 2


def test_with_a_shorter_pause_timeout_the_project_keeps_its_own_days(catalog_env, storage_factory) -> None:
    storage = storage_factory({**catalog_env, "AP_PAUSED_FLOW_TIMEOUT_DAYS": "8"})
    make_projects(storage, {"p7": 7, "p12": 12, "pnull": None})
    rows = {(p, d): seed(storage, p, d) for p in ("p7", "p12", "pnull") for d in (7.5, 9, 13, 31)}
    dry = sweep_expired(storage, dry_run=True)
    report = sweep_expired(storage)
    assert dry.deleted == report.deleted
    gone = {key for key, row in rows.items() if not row_exists(storage, row.id)}
    # p7: max(7, 8) = 8 days; p12: 12 days; pnull: the global 30.
    assert gone == {("p7", 9), ("p7", 13), ("p7", 31), ("p12", 13), ("p12", 31), ("pnull", 31)}
    assert report.projects_with_shorter_retention == 2
    assert_intact(storage, {row.id: b"step" for row in rows.values()})


def test_a_sweep_warns_only_when_the_retention_is_shorter_than_the_pause_timeout(catalog_env, set_env, runner) -> None:
    """The platform's defaults (30 and 30) are not a mistake: a sweep with them says nothing.
    A retention strictly shorter than the pause timeout warns on every run, in one line."""
    set_env(**catalog_env)  # the defaults: 30 and 30
    result = invoke(runner, "sweep-expired")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    data = json.loads(invoke(runner, "sweep-expired", "--json").stdout)
    assert data["warnings"] == [] and data["pausedFlowTimeoutDays"] == 30
    equal_flag = invoke(runner, "sweep-expired", "--retention-days", "30")
    assert (equal_flag.exit_code, equal_flag.stderr) == (0, "")

    set_env(**catalog_env, AP_EXECUTION_DATA_RETENTION_DAYS="14")  # pause timeout 30
    shorter = invoke(runner, "sweep-expired")
    assert shorter.exit_code == 0
    lines = shorter.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "warning: AP_EXECUTION_DATA_RETENTION_DAYS=14 is shorter than AP_PAUSED_FLOW_TIMEOUT_DAYS=30")
    assert len(json.loads(invoke(runner, "sweep-expired", "--json").stdout)["warnings"]) == 1

    set_env(**catalog_env)
    flag = invoke(runner, "sweep-expired", "--retention-days", "5")
    assert flag.stderr.startswith("warning: --retention-days=5 is shorter than AP_PAUSED_FLOW_TIMEOUT_DAYS=30")
    assert "paused for more than 1 day finds" in invoke(runner, "sweep-expired", "--retention-days", "1").stderr

    set_env(**catalog_env, AP_PAUSED_FLOW_TIMEOUT_DAYS="7")
    quiet = invoke(runner, "sweep-expired")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert json.loads(invoke(runner, "sweep-expired", "--json").stdout)["warnings"] == []


def test_a_cron_sweep_on_the_platforms_own_dotenv_prints_nothing(tmp_path) -> None:
    """What cron runs: a real process in the deployment's folder, whose .env holds the
    platform's dozens of variables and its default retention and pause timeout, an
    embedded catalog with nothing expired: no output at all, exit 0."""
    import os
    import subprocess
    import sys

    from tests.test_config import PLATFORM_DOTENV

    folder = tmp_path / "deployment"
    folder.mkdir()
    (folder / ".env").write_text(PLATFORM_DOTENV + f"AP_CONFIG_PATH={tmp_path / 'home'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    for args in (["init"], ["sweep-expired"], ["sweep-expired"]):
        proc = subprocess.run([sys.executable, "-m", "apstorage", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        if args == ["sweep-expired"]:
            assert (proc.stdout, proc.stderr) == ("", "")


def test_settings_reviews_say_the_equal_case_as_a_note_and_the_shorter_one_as_a_warning(
    s3_env, seaweed, set_env, runner,
) -> None:
    """Where settings are reviewed (config, lifecycle show, check-iam): equal is one note
    line (the platform's guide asks for a longer retention), shorter one warning line, longer
    nothing; --json carries the same as retentionCheck."""
    cases = [
        ({}, "note", "note: AP_EXECUTION_DATA_RETENTION_DAYS=30 equals AP_PAUSED_FLOW_TIMEOUT_DAYS=30 (both the platform's defaults)"),
        ({"AP_PAUSED_FLOW_TIMEOUT_DAYS": "40"}, "warning", "warning: AP_EXECUTION_DATA_RETENTION_DAYS=30 is shorter than AP_PAUSED_FLOW_TIMEOUT_DAYS=40"),
        ({"AP_PAUSED_FLOW_TIMEOUT_DAYS": "7"}, None, None),
    ]
    for extra, level, line in cases:
        set_env(**s3_env, **extra)
        for command in (["config"], ["lifecycle", "show"], ["check-iam", "--skip", "anonymous-denied,clock"]):
            result = invoke(runner, *command)
            assert result.exit_code == 0, (command, result.output)
            said = [x for x in result.stderr.splitlines() if "AP_PAUSED_FLOW_TIMEOUT_DAYS" in x]
            if line is None:
                assert said == [], (command, said)
            else:
                assert len(said) == 1 and said[0].startswith(line), (command, said)
            data = json.loads(invoke(runner, *command, "--json").stdout)
            check = data["retentionCheck"]
            assert (check and check["level"]) == (level or None), (command, check)


def test_the_pause_timeout_is_a_validated_setting_shown_by_config(set_env, runner) -> None:
    set_env(AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    shown = invoke(runner, "config", "--json")
    assert shown.exit_code == 0
    rows = {r["name"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["AP_PAUSED_FLOW_TIMEOUT_DAYS"] == {"name": "AP_PAUSED_FLOW_TIMEOUT_DAYS", "value": 14,
                                                   "source": "environment"}
    for bad in ("0", "-3", "ten", "1.5"):
        set_env(AP_PAUSED_FLOW_TIMEOUT_DAYS=bad)
        result = invoke(runner, "config")
        assert result.exit_code == 3 and "AP_PAUSED_FLOW_TIMEOUT_DAYS" in result.stderr, bad
    set_env()
    assert "note: AP_EXECUTION_DATA_RETENTION_DAYS=30 equals AP_PAUSED_FLOW_TIMEOUT_DAYS=30" in invoke(runner, "config").stderr


# -- the bucket never expires sooner than the catalog --------------------------------------


def test_apply_refuses_an_expiry_shorter_than_the_catalogs_retention(s3_env, seaweed, set_env, runner) -> None:
    set_env(**s3_env)
    client = seaweed.client()
    for args in (("--retention-days", "14"), ("--retention-days", "14", "--dry-run"),
                 ("--retention-days", "29", "--grace-days", "1"), ("--grace-days", "0")):
        result = invoke(runner, "lifecycle", "apply", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "AP_EXECUTION_DATA_RETENTION_DAYS" in lines[0] and "31" in lines[0]
    with pytest.raises(ClientError) as info:
        client.get_bucket_lifecycle_configuration(Bucket=s3_env["AP_S3_BUCKET"])
    assert info.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"  # nothing written

    assert invoke(runner, "lifecycle", "apply", "--retention-days", "30", "--grace-days", "1").exit_code == 0
    set_env(**s3_env, AP_EXECUTION_DATA_RETENTION_DAYS="14")
    result = invoke(runner, "lifecycle", "apply", "--retention-days", "14", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["expirationDays"] == 15


TOO_SHORT_AND_FINE = [
    {"ID": EXPIRE_RULE_ID, "Filter": {"Tag": TAG[0]}, "Status": "Enabled", "Expiration": {"Days": 10}},
    {"ID": "everything", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 365}},
    {"ID": "exec-short", "Filter": {"And": {"Prefix": "project/", "Tags": TAG}}, "Status": "Enabled",
     "Expiration": {"Days": 5}},
    {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 1}},
    {"ID": "off", "Filter": {"Prefix": ""}, "Status": "Disabled", "Expiration": {"Days": 1}},
    {"ID": "scratch", "Filter": {"And": {"Prefix": "", "Tags": [{"Key": "kind", "Value": "scratch"}]}},
     "Status": "Enabled", "Expiration": {"Days": 1}},
    {"ID": "exec-ok", "Filter": {"Tag": TAG[0]}, "Status": "Enabled", "Expiration": {"Days": 60}},
]
FLAGGED = {EXPIRE_RULE_ID, "everything", "exec-short"}


def test_show_flags_rules_that_expire_our_objects_too_soon(s3_env, seaweed, set_env, runner) -> None:
    set_env(**s3_env)
    client = seaweed.client()
    bucket = s3_env["AP_S3_BUCKET"]
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": TOO_SHORT_AND_FINE})
    shown = invoke(runner, "lifecycle", "show", "--json")
    assert shown.exit_code == 0
    data = json.loads(shown.stdout)
    assert {r["id"] for r in data["rules"] if r["tooShort"]} == FLAGGED
    assert {p["id"] for p in data["problems"]} == FLAGGED and data["minimumExpiryDays"] == 31
    assert len([l for l in shown.stderr.splitlines() if l.startswith("warning:")]) == len(FLAGGED)
    human = runner.invoke(app, ["lifecycle", "show"], env={"COLUMNS": "300"}, catch_exceptions=False)
    assert "too short" in human.stdout and "'everything'" in human.stderr

    # apply fixes its own rule and keeps (but flags) the others
    plan = json.loads(invoke(runner, "lifecycle", "apply", "--json").stdout)
    assert plan["updated"] == [EXPIRE_RULE_ID] and {p["id"] for p in plan["problems"]} == {"everything", "exec-short"}
    after = json.loads(invoke(runner, "lifecycle", "show", "--json").stdout)
    assert {r["id"] for r in after["rules"] if r["tooShort"]} == {"everything", "exec-short"}


@pytest.mark.parametrize(
    ("rule", "flagged"),
    [
        ({"Prefix": "", "Status": "Enabled", "Expiration": {"Days": 400}}, True),  # legacy form
        ({"Prefix": "project/abc/", "Status": "Enabled", "Expiration": {"Days": 400}}, True),
        ({"Prefix": "pla", "Status": "Enabled", "Expiration": {"Days": 400}}, True),
        ({"Prefix": "exports/", "Status": "Enabled", "Expiration": {"Days": 1}}, False),
        ({"Filter": {}, "Status": "Enabled", "Expiration": {"Days": 400}}, True),
        ({"Filter": {"Tag": TAG[0]}, "Status": "Enabled", "Expiration": {"Days": 31}}, False),
        ({"Filter": {"Tag": TAG[0]}, "Status": "Enabled", "Expiration": {"Days": 30}}, True),
        ({"Filter": {"Tag": TAG[0]}, "Status": "Enabled",
          "Expiration": {"Date": datetime(2031, 1, 1, tzinfo=timezone.utc)}}, True),
        ({"Filter": {"Tag": {"Key": "ap-retention", "Value": "other"}}, "Status": "Enabled",
          "Expiration": {"Days": 1}}, False),
        ({"Filter": {"ObjectSizeGreaterThan": 1000}, "Status": "Enabled", "Expiration": {"Days": 90}}, True),
        ({"Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"ExpiredObjectDeleteMarker": True}}, False),
        ({"Filter": {"Prefix": ""}, "Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}, False),
        ({"Filter": {"Prefix": ""}, "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}, False),
    ],
)
def test_which_rules_are_too_short(rule, flagged) -> None:
    assert (expiry_problem(rule, 31) is not None) is flagged
