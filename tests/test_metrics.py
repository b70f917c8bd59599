"""--metrics-file: Prometheus text that prometheus_client's own parser reads, with the run's
figures, replaced atomically, and a last-success time that survives failed runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.model import Location
from tests.conftest import READONLY_IDENTITY
from tests.test_sweep import FRESH, OLD, seed


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def env(make_env, s3_env, tmp_path) -> dict[str, str]:
    files = tmp_path / "files"
    files.mkdir()
    return make_env(**s3_env, AP_LOCAL_STORAGE_PATH=str(files), AP_PAUSED_FLOW_TIMEOUT_DAYS="14")


def samples(path: Path) -> dict[tuple[str, tuple], float]:
    """{(name, sorted labels): value}, read by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_sweep_writes_its_figures_and_keeps_last_success_through_failures(
    runner, env, set_env, storage_factory, tmp_path
) -> None:
    storage = storage_factory(env)
    seed(storage, "FLOW_RUN_LOG", Location.S3, OLD, data=b"x" * 100)
    seed(storage, "FLOW_RUN_LOG", Location.DB, OLD, data=b"y" * 10)
    seed(storage, "WEBHOOK_PAYLOAD", Location.LOCAL, OLD, data=b"z" * 5)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH)
    metrics = tmp_path / "textfile" / "apstorage_sweep.prom"
    metrics.parent.mkdir()
    set_env(**env)
    before = time.time()
    result = runner.invoke(app, ["sweep-expired", "--metrics-file", str(metrics)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = samples(metrics)
    job = "apstorage_sweep_expired"
    assert value(found, f"{job}_success") == 1 and value(found, f"{job}_exit_code") == 0
    assert value(found, f"{job}_deleted_files", type="FLOW_RUN_LOG") == 2
    assert value(found, f"{job}_deleted_bytes", type="FLOW_RUN_LOG") == 110
    assert value(found, f"{job}_deleted_files", type="WEBHOOK_PAYLOAD") == 1
    assert value(found, f"{job}_deleted_files_by_location", location="S3") == 1
    assert value(found, f"{job}_failed_files") == 0
    assert value(found, f"{job}_duration_seconds") >= 0
    succeeded = value(found, f"{job}_last_success_timestamp_seconds")
    assert succeeded >= before and value(found, f"{job}_last_run_timestamp_seconds") == succeeded
    assert [p.name for p in metrics.parent.iterdir()] == [metrics.name]  # no temporary file left

    # A run with failures: success 0, the earlier success carried over.
    row = seed(storage, "FLOW_RUN_LOG", Location.S3, OLD)
    reader = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**{**env, "AP_S3_ACCESS_KEY_ID": reader["accessKey"], "AP_S3_SECRET_ACCESS_KEY": reader["secretKey"]})
    failed = runner.invoke(app, ["sweep-expired", "--metrics-file", str(metrics)], catch_exceptions=False)
    assert failed.exit_code == 1 and row.id in failed.stderr
    found = samples(metrics)
    assert value(found, f"{job}_success") == 0 and value(found, f"{job}_exit_code") == 1
    assert value(found, f"{job}_failed_files") == 1
    assert value(found, f"{job}_last_success_timestamp_seconds") == succeeded
    assert value(found, f"{job}_last_run_timestamp_seconds") > succeeded

    # A run that cannot start at all (bad configuration, exit 3): still a file, still carried over.
    set_env(**{**env, "AP_EXECUTION_DATA_RETENTION_DAYS": "thirty"})
    broken = runner.invoke(app, ["sweep-expired", "--metrics-file", str(metrics)], catch_exceptions=False)
    assert broken.exit_code == 3
    found = samples(metrics)
    assert value(found, f"{job}_exit_code") == 3 and value(found, f"{job}_success") == 0
    assert value(found, f"{job}_last_success_timestamp_seconds") == succeeded


def test_a_metrics_folder_that_does_not_exist_is_refused_before_anything_is_deleted(
    runner, env, set_env, storage_factory, tmp_path
) -> None:
    storage = storage_factory(env)
    row = seed(storage, "FLOW_RUN_LOG", Location.DB, OLD)
    set_env(**env)
    result = runner.invoke(app, ["sweep-expired", "--metrics-file", str(tmp_path / "nope" / "x.prom")],
                           catch_exceptions=False)
    assert result.exit_code == 4 and "--metrics-file" in result.stderr
    assert storage.catalog.get(row.id).id == row.id


def test_a_metrics_path_that_is_not_a_regular_file_is_refused_and_left_alone(runner, env, set_env, tmp_path) -> None:
    """The file is replaced by a rename: a FIFO, a device or a symbolic link at the path
    would become a regular file (``--metrics-file /dev/null`` would replace /dev/null)."""
    set_env(**env)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.prom"
    link.symlink_to(tmp_path / "elsewhere.prom")
    for path in (fifo, link):
        result = runner.invoke(app, ["du", "--metrics-file", str(path)], catch_exceptions=False)
        assert result.exit_code == 2 and "not a regular file" in result.stderr, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link)
    assert not (tmp_path / "elsewhere.prom").exists()


def test_migrate_du_check_iam_and_gc_write_parseable_files(runner, env, set_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(env)
    seed(storage, "FLOW_RUN_LOG", Location.DB, FRESH, data=b"a" * 7)
    set_env(**env)
    files = {job: tmp_path / f"{job}.prom" for job in ("migrate_to_s3", "du", "check_iam", "gc")}
    for args in (["migrate-to-s3"], ["du", "--by", "location,type"], ["check-iam", "--skip", "anonymous-denied,clock"],
                 ["gc"]):
        job = args[0].replace("-", "_")
        result = runner.invoke(app, [*args, "--metrics-file", str(files[job])], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert value(samples(files[job]), f"apstorage_{job}_success") == 1
    assert value(samples(files["migrate_to_s3"]), "apstorage_migrate_to_s3_migrated_bytes") == 7
    du = samples(files["du"])
    assert value(du, "apstorage_du_files", location="S3", type="FLOW_RUN_LOG") == 1
    assert value(du, "apstorage_du_total_bytes") == 7
    iam = samples(files["check_iam"])
    assert value(iam, "apstorage_check_iam_check_passed", check="put", permission="s3:PutObject, s3:PutObjectTagging") == 1
    assert value(iam, "apstorage_check_iam_failed_checks") == 0
    assert value(samples(files["gc"]), "apstorage_gc_deleted_files", kind="orphans") == 0


def test_help_does_not_import_prometheus_client(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "apstorage", "--help"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.returncode == 0
    assert "prometheus_client" not in proc.stderr
