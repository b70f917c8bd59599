"""sweep-expired against real catalogs (SQLite, Postgres) and real stores (LOCAL, SeaweedFS).

A store that refuses deletes is real too: SeaweedFS with a read-only identity, a LOCAL
directory made immutable with ``chattr +i`` (which stops root, unlike chmod), and an
object key SeaweedFS cannot parse, which fails a whole DeleteObjects request.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.catalog import sweep as sweep_sql
from apstorage.cli import app
from apstorage.errors import NotFoundError
from apstorage.model import EXPIRING_TYPES, FileRow, Location, new_id
from apstorage.services.context import Storage
from apstorage.services.sweep import sweep_expired
from tests.conftest import READONLY_IDENTITY
from tests.integrity import assert_intact

NOW = datetime.now(timezone.utc)
OLD = 45  # days: older than the default 30-day retention
FRESH = 3


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def full_env(catalog_env, s3_env, tmp_path) -> dict[str, str]:
    """A catalog (parametrized) with every location configured."""
    files = tmp_path / "files"
    files.mkdir()
    return {**catalog_env, **s3_env, "AP_LOCAL_STORAGE_PATH": str(files)}


def seed(
    storage: Storage,
    file_type: str,
    location: Location,
    age_days: float,
    *,
    project: str | None = "proj1",
    platform: str | None = None,
    data: bytes | None = b"some bytes",
    s3_key: str | None = None,
) -> FileRow:
    """A row created ``age_days`` ago, with its bytes where ``location`` says."""
    file_id = new_id()
    row = FileRow(
        id=file_id,
        type=file_type,
        location=location,
        created=NOW - timedelta(days=age_days),
        project_id=project,
        platform_id=platform,
        size=len(data) if data is not None else 0,
    )
    if location is not Location.DB:
        row = FileRow(**{**row.__dict__, "s3_key": s3_key or row.key})
        if data is not None:
            storage.store(location).put(row.s3_key, io.BytesIO(data), len(data))
        return storage.catalog.insert(row)
    return storage.catalog.insert(row, data)


def row_exists(storage: Storage, file_id: str) -> bool:
    try:
        storage.catalog.get(file_id)
    except NotFoundError:
        return False
    return True


def bytes_exist(storage: Storage, row: FileRow) -> bool:
    if row.location is Location.DB:
        return storage.catalog.has_data(row.id)
    return storage.store(row.location).stat(row.key) is not None


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, ["sweep-expired", *args], catch_exceptions=False)


# -- the judged scenario -------------------------------------------------------------------


def test_sweep_deletes_expired_execution_data_and_nothing_else(full_env, storage_factory, set_env, runner) -> None:
    storage = storage_factory(full_env)
    expired, kept = [], []
    for location in Location:
        for file_type in sorted(EXPIRING_TYPES):
            expired.append(seed(storage, file_type, location, OLD))
            kept.append(seed(storage, file_type, location, FRESH))
        expired.append(seed(storage, "FLOW_RUN_LOG", location, 400, project=None, platform="plat1"))
        # Old permanent files, in every location (the platform once put assets in S3), and
        # flow bundles, which follow the location but never expire by age.
        for file_type in ("PLATFORM_ASSET", "SAMPLE_DATA", "PACKAGE_ARCHIVE", "UNKNOWN", "FLOW_BUNDLE"):
            kept.append(seed(storage, file_type, location, 400))
    kept.append(seed(storage, "FLOW_RUN_LOG", Location.DB, 29.9))  # just inside the retention

    # Retention longer than the pause timeout: nothing to warn about.
    set_env(**full_env, AP_PAUSED_FLOW_TIMEOUT_DAYS="14")
    result = invoke(runner)  # not a TTY: cron hears one summary line, nothing on stdout
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"sweep-expired: deleted {len(expired)} files (")
    assert result.stderr.count("\n") == 1 and "0 failed" in result.stderr

    for row in expired:
        assert not row_exists(storage, row.id), row
        if row.location is not Location.DB:
            assert storage.store(row.location).stat(row.key) is None, row
    for row in kept:
        assert row_exists(storage, row.id), row
        assert bytes_exist(storage, row), row
    assert assert_intact(storage, {row.id: b"some bytes" for row in kept}) == len(kept)


def test_json_report_counts_by_type_and_a_rerun_finds_nothing(full_env, set_env, storage_factory, runner) -> None:
    storage = storage_factory(full_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=b"12345")
    seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, data=b"123")
    seed(storage, "WEBHOOK_PAYLOAD", Location.DB, OLD, data=b"1")
    seed(storage, "WEBHOOK_PAYLOAD", Location.DB, FRESH)
    set_env(**full_env)
    data = json.loads(invoke(runner, "--json").stdout)
    assert {"deleted", "bytes", "failed", "byType", "dryRun"} <= set(data)
    assert data["deleted"] == 3 and data["bytes"] == 9 and data["failed"] == 0
    assert data["byType"]["FLOW_RUN_LOG"] == 2 and data["byType"]["WEBHOOK_PAYLOAD"] == 1
    assert data["dryRun"] is False and data["lockHeld"] is False
    again = json.loads(invoke(runner, "--json").stdout)
    assert again["deleted"] == 0 and again["failed"] == 0


def test_dry_run_counts_and_sizes_by_type_and_changes_nothing(full_env, set_env, storage_factory, runner) -> None:
    storage = storage_factory(full_env)
    rows = [
        seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=b"x" * 10),
        seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, data=b"x" * 20),
        seed(storage, "TRIGGER_PAYLOAD", Location.DB, OLD, data=b"x" * 5),
        seed(storage, "TRIGGER_PAYLOAD", Location.DB, FRESH),
        seed(storage, "SAMPLE_DATA", Location.DB, OLD),
    ]
    set_env(**full_env)
    result = invoke(runner, "--dry-run", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["dryRun"] is True and data["deleted"] == 3 and data["bytes"] == 35
    assert data["byType"]["FLOW_RUN_LOG"] == 2 and data["bytesByType"]["FLOW_RUN_LOG"] == 30
    assert data["byType"]["TRIGGER_PAYLOAD"] == 1 and "SAMPLE_DATA" not in data["byType"]
    table = invoke(runner, "--dry-run")
    assert table.exit_code == 0 and "would delete" in table.stdout and "FLOW_RUN_LOG" in table.stdout
    for row in rows:
        assert row_exists(storage, row.id) and bytes_exist(storage, row)


def test_a_dry_run_with_nothing_expired_says_so_in_one_line(full_env, set_env, storage_factory, runner) -> None:
    """A cron run with nothing to do prints nothing; a dry run, asked by a person, answers."""
    storage = storage_factory(full_env)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH)
    set_env(**full_env)
    quiet = invoke(runner)
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    dry = invoke(runner, "--dry-run")
    assert dry.exit_code == 0 and dry.stdout == ""
    assert dry.stderr.strip().splitlines() == ["sweep-expired would delete nothing (nothing older than 30 days)"]


@pytest.mark.parametrize(
    "args",
    [
        ("--types", "SAMPLE_DATA"),
        ("--types", "FLOW_RUN_LOG,PLATFORM_ASSET"),
        ("--types", "NOT_A_TYPE"),
        ("--types", "FLOW_BUNDLE"),
        ("--types", "FLOW_RUN_LOG,flow_bundle"),
        ("--retention-days", "0"),
        ("--batch-size", "0"),
    ],
)
def test_usage_errors_exit_2_and_touch_nothing(args, set_env, storage_factory, runner) -> None:
    env = set_env()
    storage = storage_factory(env)
    row = seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert row_exists(storage, row.id)


def test_types_and_retention_days_narrow_the_sweep(set_env, storage_factory, runner) -> None:
    env = set_env()
    storage = storage_factory(env)
    log = seed(storage, "FLOW_RUN_LOG", Location.DB, 10)
    step = seed(storage, "FLOW_STEP_FILE", Location.DB, 10)
    legacy = FileRow(id=new_id(), type="STEP_FILE", location=Location.DB, created=NOW - timedelta(days=10), project_id="p")
    storage.catalog.insert(legacy, b"old name")
    data = json.loads(invoke(runner, "--types", "step_file", "--retention-days", "7", "--json").stdout)
    assert data["deleted"] == 2 and data["byType"] == {"FLOW_STEP_FILE": 2}
    assert row_exists(storage, log.id)
    assert not row_exists(storage, step.id) and not row_exists(storage, legacy.id)


def test_max_delete_caps_one_run(set_env, storage_factory, runner) -> None:
    env = set_env()
    storage = storage_factory(env)
    for _ in range(25):
        seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    result = invoke(runner, "--max-delete", "10", "--batch-size", "4", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["deleted"] == 10 and data["maxDeleteReached"] is True
    rest = json.loads(invoke(runner, "--batch-size", "4", "--json").stdout)
    assert rest["deleted"] == 15 and rest["maxDeleteReached"] is False


# -- refusals --------------------------------------------------------------------------------


def test_read_only_s3_keeps_the_rows_and_exits_1(full_env, set_env, storage_factory, runner) -> None:
    storage = storage_factory(full_env)
    s3_rows = [seed(storage, t, Location.S3, OLD) for t in sorted(EXPIRING_TYPES)]
    s3_rows.append(seed(storage, "FLOW_RUN_LOG", Location.S3, OLD))
    db_row = seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    local_row = seed(storage, "WEBHOOK_PAYLOAD", Location.LOCAL, OLD)
    reader = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**{**full_env, "AP_S3_ACCESS_KEY_ID": reader["accessKey"], "AP_S3_SECRET_ACCESS_KEY": reader["secretKey"]})
    result = invoke(runner, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["failed"] == len(s3_rows) and data["deleted"] == 2
    assert {f["id"] for f in data["failures"]} == {r.id for r in s3_rows}
    assert all(f["location"] == "S3" for f in data["failures"])
    for row in s3_rows:
        assert row_exists(storage, row.id) and bytes_exist(storage, row)
    assert not row_exists(storage, db_row.id) and not row_exists(storage, local_row.id)
    # Without --json the refusals are said on stderr, secrets never.
    text = invoke(runner)
    assert text.exit_code == 1 and "AccessDenied" in text.stderr
    assert reader["secretKey"] not in text.stderr + text.stdout


def test_a_key_xml_cannot_carry_is_deleted_on_its_own(full_env, storage_factory) -> None:
    """A control character in a key makes SeaweedFS reject a whole DeleteObjects request
    (MalformedXML): such keys go one by one with DeleteObject, the rest in one batch, and
    every run succeeds (issue 14, item 4)."""
    storage = storage_factory(full_env)
    good = [seed(storage, "FLOW_RUN_LOG", Location.S3, OLD) for _ in range(30)]
    bad = seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, s3_key="project/p/FLOW_RUN_LOG/bad\x01key")
    assert bytes_exist(storage, bad)
    report = sweep_expired(storage, batch_size=100)
    assert report.deleted == 31 and report.failed == 0, report.failures
    for row in [*good, bad]:
        assert not row_exists(storage, row.id) and not bytes_exist(storage, row)


def test_immutable_local_directory_keeps_its_rows(set_env, storage_factory, tmp_path, runner) -> None:
    """``chattr +i`` refuses unlink even to root (chmod would not)."""
    files = tmp_path / "files"
    env = set_env(AP_FILE_STORAGE_LOCATION="LOCAL", AP_LOCAL_STORAGE_PATH=str(files))
    storage = storage_factory(env)
    locked = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, project="locked") for _ in range(3)]
    free = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, project="free")
    folder = files / "project" / "locked" / "FLOW_RUN_LOG"
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        result = invoke(runner, "--json")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["deleted"] == 1 and data["failed"] == 3
    for row in locked:
        assert row_exists(storage, row.id) and bytes_exist(storage, row)
    assert not row_exists(storage, free.id) and not bytes_exist(storage, free)


def test_missing_bytes_count_as_deleted_but_unsafe_keys_are_kept(full_env, storage_factory) -> None:
    storage = storage_factory(full_env)
    gone_s3 = seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=None)
    gone_local = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, data=None)
    outside = Path(full_env["AP_LOCAL_STORAGE_PATH"]).parent / "outside.txt"
    outside.write_bytes(b"not ours")
    unsafe = seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD, data=None, s3_key="../outside.txt")
    report = sweep_expired(storage)
    assert report.deleted == 2 and report.failed == 1 and report.failures[0].id == unsafe.id
    assert not row_exists(storage, gone_s3.id) and not row_exists(storage, gone_local.id)
    assert row_exists(storage, unsafe.id) and outside.read_bytes() == b"not ours"


def test_a_missing_local_root_keeps_local_rows(set_env, storage_factory, tmp_path) -> None:
    """A wrong AP_LOCAL_STORAGE_PATH must not make every LOCAL file look deleted."""
    env = set_env(AP_LOCAL_STORAGE_PATH=str(tmp_path / "mounted"))
    storage = storage_factory(env)
    rows = [seed(storage, "FLOW_RUN_LOG", Location.LOCAL, OLD) for _ in range(2)]
    db_row = seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    wrong = storage_factory({**env, "AP_LOCAL_STORAGE_PATH": str(tmp_path / "not-mounted")})
    report = sweep_expired(wrong)
    assert report.failed == 2 and report.deleted == 1 and "not a directory" in report.failures[0].reason
    for row in rows:
        assert row_exists(storage, row.id) and bytes_exist(storage, row)
    assert not row_exists(storage, db_row.id)


# -- per-project retention -------------------------------------------------------------------


def test_a_projects_shorter_retention_wins_clamped_to_the_pause_timeout(catalog_env, storage_factory) -> None:
    """Effective retention = min(global, max(project's own, pause timeout)); NULL = global.
    Global 30, pause 5: "short" (7) keeps 7 days, "floor" (3) and "zero" (0) keep the 5
    of the pause timeout, "longer" (90) and "unset" keep the global 30."""
    storage = storage_factory({**catalog_env, "AP_PAUSED_FLOW_TIMEOUT_DAYS": "5"})
    storage.catalog._execute(
        'CREATE TABLE "project" ("id" varchar(21) PRIMARY KEY, "executionDataRetentionDays" integer)'
    )
    p = storage.catalog.ph
    projects = {"short": 7, "floor": 3, "zero": 0, "unset": None, "longer": 90}
    for project_id, days in projects.items():
        storage.catalog._execute(f'INSERT INTO "project" VALUES ({p}, {p})', (project_id, days))
    rows = {
        (project, age): seed(storage, "FLOW_RUN_LOG", Location.DB, age, project=project)
        for project in projects
        for age in (4, 6, 10, OLD)
    }
    report = sweep_expired(storage)
    assert report.project_retention and report.projects_with_shorter_retention == 3
    gone = {key for key, row in rows.items() if not row_exists(storage, row.id)}
    assert gone == {
        ("short", 10), ("short", OLD),
        ("floor", 6), ("floor", 10), ("floor", OLD),
        ("zero", 6), ("zero", 10), ("zero", OLD),
        ("unset", OLD), ("longer", OLD),
    }
    assert_intact(storage, {row.id: b"some bytes" for row in rows.values()})


# -- cron safety -----------------------------------------------------------------------------


def test_a_held_sqlite_lock_makes_the_run_exit_0_and_do_nothing(make_env, set_env, storage_factory, runner) -> None:
    """SQLite runs one sweep at a time (Postgres runs share the work: test_sweep_shared.py)."""
    env = make_env()
    set_env(**env)
    storage = storage_factory(env)
    row = seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    lock = sweep_sql.try_sweep_lock(storage.catalog)
    assert lock is not None
    try:
        assert sweep_sql.try_sweep_lock(storage_factory(env).catalog) is None
        result = invoke(runner)
        assert result.exit_code == 0 and "holds the sweep lock" in result.stderr
        assert "SQLite" in result.stderr
        assert json.loads(invoke(runner, "--json").stdout)["lockHeld"] is True
        assert row_exists(storage, row.id)
    finally:
        lock.release()
    assert invoke(runner).exit_code == 0
    assert not row_exists(storage, row.id)


def test_two_sweeps_started_together_delete_each_file_once(full_env, storage_factory) -> None:
    storage = storage_factory(full_env)
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda _: seed(storage, "FLOW_RUN_LOG", Location.S3, OLD), range(120)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    env.update(full_env)
    cmd = [sys.executable, "-m", "apstorage", "sweep-expired", "--json", "--batch-size", "5", "--workers", "1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["deleted"] for r in reports) == len(rows)
    assert all(r["failed"] == 0 for r in reports)
    for row in rows:
        assert not row_exists(storage, row.id) and not bytes_exist(storage, row)


# -- memory ----------------------------------------------------------------------------------


def _sweep_peak(storage: Storage, count: int) -> int:
    import tracemalloc

    storage.catalog._execute(
        """
        INSERT INTO "file" ("id", "created", "updated", "projectId", "location", "type", "size", "data")
        SELECT md5(g::text || clock_timestamp()::text)::varchar(21), now() - interval '40 days',
               now(), 'p', 'DB', 'FLOW_RUN_LOG', 3, 'abc'::bytea
        FROM generate_series(1, %s) AS g
        """,
        (count,),
    )
    tracemalloc.start()
    try:
        report = sweep_expired(storage, batch_size=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.deleted == count and report.failed == 0
    return peak


def test_memory_stays_flat_as_the_table_grows(pg_url, make_env, storage_factory) -> None:
    storage = storage_factory(make_env(AP_POSTGRES_URL=pg_url))
    storage.catalog.init_schema()
    _sweep_peak(storage, 200)  # one-time allocations (type caches, imports) happen here
    small = _sweep_peak(storage, 2_000)  # more than the 8 x 100 rows ever in flight
    large = _sweep_peak(storage, 10_000)
    assert large < small * 1.25 + 64 * 1024, (small, large)


# -- the index serves every page -------------------------------------------------------------


def _page_queries(catalog):
    cutoff = NOW - timedelta(days=30)
    after = (catalog._ts_in(NOW - timedelta(days=40)), "0" * 21)
    for by_project in (False, True):
        for cursor in (None, after):
            sql = sweep_sql.expired_page_sql(catalog, by_project=by_project, after=cursor is not None, limit=1000)
            params = sweep_sql.expired_page_params(
                catalog, "FLOW_RUN_LOG", cutoff,
                project_id="p3" if by_project else None,
                not_before=NOW - timedelta(days=60) if by_project else None,
                after=cursor,
            )
            yield sql, params


def test_explain_postgres_pages_use_the_index_not_a_seq_scan(pg_url, make_env, storage_factory) -> None:
    env = make_env(AP_POSTGRES_URL=pg_url)
    storage = storage_factory(env)
    catalog = storage.catalog
    catalog.init_schema()
    # 50,000 rows: most of them expired FLOW_RUN_LOG, the worst case for the planner.
    catalog._execute(
        """
        INSERT INTO "file" ("id", "created", "updated", "projectId", "location", "type", "size")
        SELECT lpad(g::text, 21, '0'), now() - (g %% 90) * interval '1 day' - g * interval '1 second',
               now(), 'p' || (g %% 50), 'DB',
               CASE WHEN g %% 10 < 7 THEN 'FLOW_RUN_LOG' WHEN g %% 10 < 9 THEN 'FLOW_STEP_FILE'
                    ELSE 'SAMPLE_DATA' END, 100
        FROM generate_series(1, 50000) AS g
        """
    )
    catalog._execute('ANALYZE "file"')
    for sql, params in _page_queries(catalog):
        plan = "\n".join(r[0] for r in catalog._execute("EXPLAIN " + sql, params))
        assert "Seq Scan" not in plan, plan
        assert "Index" in plan and "idx_file_" in plan, plan


def test_explain_sqlite_pages_use_the_index(make_env, storage_factory) -> None:
    storage = storage_factory(make_env())
    catalog = storage.catalog
    for i in range(200):
        seed(storage, "FLOW_RUN_LOG", Location.DB, i % 60, project=f"p{i % 5}")
    catalog._execute('ANALYZE "file"')
    for sql, params in _page_queries(catalog):
        plan = " | ".join(str(r[-1]) for r in catalog._execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX idx_file_" in plan, plan
        assert "SCAN file" not in plan.replace("SCAN file USING", ""), plan
