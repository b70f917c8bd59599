"""What a person or a cron log sees: nothing cut off a terminal, one summary line after
work and none when there was nothing to do, --quiet, numbers and words."""

from __future__ import annotations

import io

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.cli.lifecycle import old_to_new
from apstorage.cli.output import Output, human_duration, human_size, new_table, plural, summary_line
from apstorage.model import Location
from tests.conftest import READONLY_IDENTITY
from tests.test_sweep import FRESH, OLD, seed

LONG = "project/" + "k" * 300 + "/FLOW_RUN_LOG/" + "x" * 21  # far wider than any terminal


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def sweep(runner: CliRunner, *args: str):
    return runner.invoke(app, ["sweep-expired", *args], catch_exceptions=False)


# -- nothing cut ------------------------------------------------------------------------------


def test_a_table_off_a_terminal_prints_every_value_whole(capsys) -> None:
    out = Output()  # pytest's capture is not a TTY, as a pipe or a cron log is not
    table = new_table("key", "files", "bytes", right=("files", "bytes"))
    table.add_row(LONG, f"{1234567:,}", human_size(3 * 1024**3))

    out.result({}, lambda console: console.print(table))
    text = capsys.readouterr().out
    assert LONG in text  # whole, on one line: no "…", no folding
    assert "…" not in text
    row = next(line for line in text.splitlines() if LONG in line)
    assert "1,234,567" in row and "3.0 GiB" in row


def test_a_narrow_terminal_folds_rather_than_cuts() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=60, force_terminal=True, color_system=None)
    table = new_table("key", "files", right=("files",))
    table.add_row(LONG, "7")
    console.print(table)
    text = buffer.getvalue()
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert LONG in cells  # the key, folded over several lines, all there


def test_check_iam_keeps_a_long_prefix_whole_in_a_pipe(runner, set_env, s3_env) -> None:
    set_env(**s3_env)
    prefix = "ci/" + "p" * 200 + "/"
    result = runner.invoke(app, ["check-iam", "--prefix", prefix, "--skip", "anonymous-denied,clock"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert prefix in result.stdout and "…" not in result.stdout


# -- the cron summary line ------------------------------------------------------------------


@pytest.fixture
def cron_env(make_env, s3_env, tmp_path) -> dict[str, str]:
    files = tmp_path / "files"
    files.mkdir()
    # A pause timeout below the retention: no retention-race warning in the log.
    return make_env(**s3_env, AP_LOCAL_STORAGE_PATH=str(files), AP_PAUSED_FLOW_TIMEOUT_DAYS="14")


def test_sweep_in_cron_says_one_line_after_work_and_nothing_otherwise(
    runner, cron_env, set_env, storage_factory, tmp_path
) -> None:
    storage = storage_factory(cron_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=b"x" * 2048)
    local = seed(storage, "WEBHOOK_PAYLOAD", Location.LOCAL, OLD, data=b"y" * 1000)
    seed(storage, "FLOW_RUN_LOG", Location.DB, OLD, data=b"z" * 100)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH)
    set_env(**cron_env)

    first = sweep(runner)
    assert first.exit_code == 0
    assert first.stdout == ""
    lines = first.stderr.splitlines()
    assert len(lines) == 1, first.stderr
    assert lines[0].startswith("sweep-expired: deleted 3 files (3.1 KiB) in ")
    assert lines[0].endswith(" s; 0 failed")
    # The LOCAL file's folders went with it; the root stays.
    root = tmp_path / "files"
    assert root.is_dir() and not (root / local.key).parent.exists() and list(root.iterdir()) == []

    again = sweep(runner)  # nothing expired: the cron log stays empty
    assert again.exit_code == 0
    assert again.stdout == "" and again.stderr == ""


def test_quiet_keeps_only_failures(runner, cron_env, set_env, storage_factory) -> None:
    storage = storage_factory(cron_env)
    seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    set_env(**cron_env)
    quiet = sweep(runner, "--quiet")
    assert quiet.exit_code == 0
    assert quiet.stdout == "" and quiet.stderr == ""

    row = seed(storage, "FLOW_RUN_LOG", Location.S3, OLD)
    reader = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**{**cron_env, "AP_S3_ACCESS_KEY_ID": reader["accessKey"],
               "AP_S3_SECRET_ACCESS_KEY": reader["secretKey"]})
    refused = sweep(runner, "--quiet")
    assert refused.exit_code == 1
    assert row.id in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("sweep-expired: deleted 0 files (0 B) in ")
    assert refused.stderr.splitlines()[-1].endswith("; 1 failed")


def test_migrate_in_cron_says_one_line_and_nothing_when_there_is_nothing_to_move(
    runner, cron_env, set_env, storage_factory
) -> None:
    storage = storage_factory(cron_env)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH, data=b"a" * 10)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH, data=b"b" * 10)
    set_env(**cron_env)
    first = runner.invoke(app, ["migrate-to-s3"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert first.stdout == ""
    summary = [line for line in first.stderr.splitlines() if line.startswith("migrate-to-s3:")]
    assert len(summary) == 1
    assert summary[0].startswith("migrate-to-s3: migrated 2 files (20 B) in ")
    assert summary[0].endswith("; 0 skipped, 0 failed")

    again = runner.invoke(app, ["migrate-to-s3"], catch_exceptions=False)
    assert again.exit_code == 0
    assert again.stdout == "" and again.stderr == ""


def test_sweep_dry_run_shows_types_and_locations(runner, cron_env, set_env, storage_factory) -> None:
    storage = storage_factory(cron_env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=b"x" * 10)
    seed(storage, "TRIGGER_PAYLOAD", Location.DB, OLD, data=b"y" * 5)
    set_env(**cron_env)
    result = sweep(runner, "--dry-run", "--retention-days", "1")
    assert result.exit_code == 0
    assert "files older than 1 day" in result.stdout  # "1 day", not "1 days"
    for word in ("FLOW_RUN_LOG", "TRIGGER_PAYLOAD", "in S3", "in DB", "total"):
        assert word in result.stdout
    assert "sweep-expired: would delete 2 files" in result.stderr and "dry run" in result.stderr


# -- words and numbers ------------------------------------------------------------------------


def test_numbers_and_words() -> None:
    assert plural(1, "day") == "1 day" and plural(2, "day") == "2 days" and plural(1234, "file") == "1,234 files"
    assert human_size(512) == "512 B" and human_size(1536) == "1.5 KiB" and human_size(None) == "-"
    assert human_duration(3.21) == "3.2 s" and human_duration(184) == "3 min 04 s"
    assert human_duration(7500) == "2 h 05 min"
    line = summary_line("gc", "deleted", 2000, 20 * 1024**2, 3.2, [(0, "failed")], interrupted=True)
    assert line == "gc: deleted 2,000 files (20.0 MiB) in 3.2 s; 0 failed; interrupted: run it again to finish"
    assert old_to_new("all objects", "all objects") == "all objects"


@pytest.mark.parametrize(("old", "new", "shown"), [
    # one rule for every count: a changed number keeps its unit, each side pluralised on its own
    ("expire after 31 days", "expire after 45 days", "expire after 31 days → 45 days"),
    ("expire after 31 days", "expire after 15 days", "expire after 31 days → 15 days"),
    ("expire noncurrent versions after 2 days", "expire noncurrent versions after 1 day",
     "expire noncurrent versions after 2 days → 1 day"),
    ("abort incomplete multipart uploads after 1 day", "abort incomplete multipart uploads after 2 days",
     "abort incomplete multipart uploads after 1 day → 2 days"),
    ("size > 100 B", "size > 2,000 B", "size > 100 B → 2,000 B"),
    ("move to GLACIER after 30 days", "move to STANDARD_IA after 30 days", "move to GLACIER → STANDARD_IA after 30 days"),
    # actions compared one by one; one added or removed: both whole
    ("expire after 31 days; abort incomplete multipart uploads after 1 day",
     "expire after 45 days; abort incomplete multipart uploads after 1 day",
     "expire after 31 days → 45 days; abort incomplete multipart uploads after 1 day"),
    ("expire after 31 days", "expire after 31 days; remove expired delete markers",
     "expire after 31 days → expire after 31 days; remove expired delete markers"),
])
def test_an_updated_rule_reads_the_same_way_whatever_changed(old, new, shown) -> None:
    assert old_to_new(old, new) == shown


# -- empty LOCAL folders ----------------------------------------------------------------------


def test_emptied_local_folders_are_pruned_up_to_the_root_and_never_through_a_link(tmp_path) -> None:
    from apstorage.stores.local import LocalStore

    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere" / "FLOW_RUN_LOG"
    elsewhere.mkdir(parents=True)
    (elsewhere.parent / "keep").write_bytes(b"")
    store = LocalStore(root)
    keys = ["project/p1/FLOW_RUN_LOG/a", "project/p2/FLOW_RUN_LOG/b", "project/p3/FLOW_RUN_LOG/c"]
    for key in keys:
        store.put(key, io.BytesIO(b"x"), 1)
    (root / "platform").mkdir()
    (root / "platform" / "linked").symlink_to(elsewhere.parent)  # a folder reached through a link
    for key in keys[:2]:
        store.delete(key)

    assert store.prune_empty_dirs([*keys[:2], "platform/linked/FLOW_RUN_LOG/z"]) == 4
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "platform", "platform/linked", "project", "project/p3", "project/p3/FLOW_RUN_LOG",
        "project/p3/FLOW_RUN_LOG/c"]
    assert elsewhere.is_dir()  # never removed through the link
    store.delete(keys[2])
    assert store.prune_empty_dirs(keys[2:]) == 3
    assert root.is_dir()  # the root itself stays


# -- lifecycle apply: an updated rule shows what it was -----------------------------------------


def test_lifecycle_apply_shows_old_and_new_for_an_updated_rule(runner, set_env, s3_env) -> None:
    set_env(**s3_env, AP_PAUSED_FLOW_TIMEOUT_DAYS="7")
    first = runner.invoke(app, ["lifecycle", "apply"], catch_exceptions=False)  # 30 days + 1 of grace
    assert first.exit_code == 0, first.output
    set_env(**s3_env, AP_PAUSED_FLOW_TIMEOUT_DAYS="7", AP_EXECUTION_DATA_RETENTION_DAYS="14")
    second = runner.invoke(app, ["lifecycle", "apply"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    row = next(line for line in second.stdout.splitlines() if "apstorage-expire-execution-data" in line)
    assert "updated" in row and "expire after 31 days → 15 days" in row  # whole, on one line off a terminal
    assert "1 updated" in second.stderr


# -- du: groups by the --by keys, then largest first ----------------------------------------------


def test_du_keeps_each_locations_groups_together_largest_first(runner, make_env, set_env, storage_factory) -> None:
    from apstorage.model import FileRow, new_id

    env = make_env()
    storage = storage_factory(env)
    storage.catalog.init_schema()
    sizes = {("S3", "FLOW_RUN_LOG"): 5_000_000, ("DB", "FLOW_RUN_LOG"): 10, ("DB", "SAMPLE_DATA"): 2_000_000,
             ("LOCAL", "FLOW_STEP_FILE"): 70, ("S3", "TRIGGER_PAYLOAD"): 9_000_000}
    for (location, file_type), size in sizes.items():
        storage.catalog.insert(FileRow(id=new_id(), type=file_type, location=Location(location),
                                       project_id="p", size=size, s3_key=None if location == "DB" else f"k/{new_id()}"))
    set_env(**env)
    data = runner.invoke(app, ["du", "--json"], catch_exceptions=False).stdout
    import json

    order = [(g["location"], g["type"]) for g in json.loads(data)["groups"]]
    assert order == [("DB", "SAMPLE_DATA"), ("DB", "FLOW_RUN_LOG"), ("LOCAL", "FLOW_STEP_FILE"),
                     ("S3", "TRIGGER_PAYLOAD"), ("S3", "FLOW_RUN_LOG")]
    table = runner.invoke(app, ["du"], catch_exceptions=False).stdout
    rows = [line for line in table.splitlines() if "B │" in line]
    assert len(rows) == 6 and "8.6 MiB" in table  # five groups and the total, sizes in units
    assert len({line.rindex("B │") for line in rows}) == 1  # right-aligned: all end in one column


def test_usage_lines_name_arguments_plainly(runner) -> None:
    for args, usage in ((["put", "--help"], "Usage: apstorage put [OPTIONS] PATH\n"),
                        (["get", "--help"], "Usage: apstorage get [OPTIONS] ID\n"),
                        (["presign", "--help"], "Usage: apstorage presign [OPTIONS] [ID]\n")):
        assert runner.invoke(app, args).stdout.startswith(usage)


def test_the_versioned_tail_counts_one_version_in_the_singular() -> None:
    from types import SimpleNamespace

    from apstorage.cli.sweep import versioned_tail

    report = SimpleNamespace(versioned=True, dry_run=False, purge_versions=True, versions_deleted=1, markers_deleted=1)
    assert versioned_tail(report) == "; versioned bucket: 1 version and 1 delete marker deleted"
    report.versions_deleted, report.markers_deleted = 2, 1200
    assert versioned_tail(report) == "; versioned bucket: 2 versions and 1,200 delete markers deleted"
