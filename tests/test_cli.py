"""The CLI through Typer's CliRunner: exit codes, --json, errors without secrets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_put_then_get_on_the_embedded_default(runner, set_env, tmp_path: Path) -> None:
    env = set_env()
    src = tmp_path / "report.txt"
    src.write_bytes(b"hello apstorage\n")
    result = invoke(runner, "put", str(src), "--type", "FLOW_RUN_LOG", "--project", "proj1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["location"] == "DB" and data["type"] == "FLOW_RUN_LOG" and data["size"] == 16
    assert data["s3Key"] is None
    assert (Path(env["AP_CONFIG_PATH"]) / "apstorage.sqlite").is_file()
    got = invoke(runner, "get", data["id"])
    assert got.exit_code == 0
    assert got.stdout_bytes == b"hello apstorage\n"
    out = tmp_path / "copy.txt"
    got = invoke(runner, "get", data["id"], "-o", str(out), "--json")
    assert got.exit_code == 0
    assert out.read_bytes() == b"hello apstorage\n"
    assert json.loads(got.stdout)["fileName"] == "report.txt"


def test_put_prints_only_the_id_on_stdout(runner, set_env, tmp_path) -> None:
    set_env()
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "SAMPLE_DATA", "--platform", "plat1")
    assert result.exit_code == 0
    assert len(result.stdout.strip()) == 21


def test_put_from_stdin(runner, set_env) -> None:
    set_env(AP_FILE_STORAGE_LOCATION="LOCAL")
    result = invoke(runner, "put", "-", "-t", "TRIGGER_PAYLOAD", "--project", "p", "--json", input=b"payload")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["location"] == "LOCAL"
    assert invoke(runner, "get", data["id"]).stdout_bytes == b"payload"


def test_put_dry_run_writes_nothing(runner, set_env, tmp_path) -> None:
    env = set_env()
    src = tmp_path / "a"
    src.write_bytes(b"abc")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p", "--dry-run", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["dryRun"] is True
    assert invoke(runner, "get", data["id"]).exit_code == 4


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["get", "nosuchid"], 4, "nosuchid"),
        (["put", "/nonexistent/file", "-t", "FLOW_RUN_LOG", "--project", "p"], 4, "/nonexistent/file"),
        (["put", "IN", "-t", "NOPE", "--project", "p"], 2, "--type"),
        (["put", "IN", "-t", "FLOW_RUN_LOG"], 2, "--project"),
        (["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "../x"], 2, "--project"),
        (["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p", "--compress", "gzip"], 2, "--compress"),
        (["get", "x", "--json"], 2, "--json"),
        (["put", "--bogus"], 2, "--bogus"),
    ],
)
def test_mistakes_give_the_documented_exit_code_and_one_clear_line(runner, set_env, tmp_path, args, code, needle) -> None:
    set_env()
    src = tmp_path / "in"
    src.write_bytes(b"x")
    args = [str(src) if a == "IN" else a for a in args]
    result = invoke(runner, *args)
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_oversize_is_exit_7_and_nothing_is_written(runner, set_env, tmp_path) -> None:
    set_env(AP_MAX_FILE_SIZE_MB="1")
    src = tmp_path / "big"
    src.write_bytes(b"x" * (1024 * 1024 + 10))
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 7
    assert "AP_MAX_FILE_SIZE_MB" in result.stderr
    import sqlite3

    catalog = tmp_path / "home" / "apstorage.sqlite"
    if catalog.exists():  # refused before the catalog was even opened is fine too
        conn = sqlite3.connect(catalog)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'file'").fetchone()[0] in (0, 1)
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'file'").fetchall()
        if tables:
            assert conn.execute('SELECT count(*) FROM "file"').fetchone()[0] == 0


def test_bad_configuration_is_exit_3_naming_the_variable(runner, set_env) -> None:
    set_env(AP_FILE_STORAGE_LOCATION="FTP")
    result = invoke(runner, "get", "x")
    assert result.exit_code == 3
    assert "AP_FILE_STORAGE_LOCATION" in result.stderr and "DB, S3, LOCAL" in result.stderr


def test_missing_bucket_variable_is_exit_3(runner, set_env, tmp_path) -> None:
    set_env(AP_FILE_STORAGE_LOCATION="S3")
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 3
    assert "AP_S3_BUCKET" in result.stderr


def test_unreachable_postgres_is_exit_8_with_the_host_and_no_password(runner, set_env) -> None:
    port = closed_port()
    set_env(AP_POSTGRES_URL=f"postgresql://app:hunter2secret@127.0.0.1:{port}/ap")
    result = invoke(runner, "get", "x")
    assert result.exit_code == 8
    assert f"127.0.0.1:{port}" in result.stderr
    assert "hunter2secret" not in result.output


def test_unreachable_s3_is_exit_8_with_the_host(runner, set_env, tmp_path) -> None:
    port = closed_port()
    set_env(
        AP_FILE_STORAGE_LOCATION="S3",
        AP_S3_BUCKET="bkt",
        AP_S3_ENDPOINT=f"http://127.0.0.1:{port}",
        AP_S3_ACCESS_KEY_ID="k",
        AP_S3_SECRET_ACCESS_KEY="very-secret-value",
    )
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 8
    assert f"127.0.0.1:{port}" in result.stderr
    assert "very-secret-value" not in result.output


def test_wrong_s3_credentials_are_exit_5_without_the_secret(runner, set_env, s3_env, tmp_path) -> None:
    set_env(**dict(s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_S3_SECRET_ACCESS_KEY="wrong-secret-xyz"))
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 5, result.output
    assert "wrong-secret-xyz" not in result.output
    assert "SignatureDoesNotMatch" in result.stderr or "InvalidAccessKeyId" in result.stderr


def test_read_only_credentials_are_exit_5(runner, set_env, s3_env, tmp_path) -> None:
    from tests.conftest import READONLY_IDENTITY

    cred = READONLY_IDENTITY[0]["credentials"][0]
    set_env(**dict(s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_S3_ACCESS_KEY_ID=cred["accessKey"], AP_S3_SECRET_ACCESS_KEY=cred["secretKey"]))
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 5, result.output


def test_missing_bucket_is_exit_4(runner, set_env, s3_env, tmp_path) -> None:
    set_env(**dict(s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_S3_BUCKET="no-such-bucket-here"))
    src = tmp_path / "a"
    src.write_bytes(b"a")
    result = invoke(runner, "put", str(src), "-t", "FLOW_RUN_LOG", "--project", "p")
    assert result.exit_code == 4, result.output
    assert "no-such-bucket-here" in result.stderr


def test_postgres_without_the_table_says_to_run_init(runner, set_env, pg_url) -> None:
    set_env(AP_POSTGRES_URL=pg_url)
    result = invoke(runner, "get", "x")
    assert result.exit_code == 4
    assert "apstorage init" in result.stderr
    result = invoke(runner, "init", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["createdTable"] is True and len(report["createdIndexes"]) == 4  # the platform's 3 + idx_file_s3_key_foreign
    again = json.loads(invoke(runner, "init", "--json").stdout)
    assert again["createdTable"] is False and again["missingIndexes"] == []
    assert invoke(runner, "get", "x").exit_code == 4


def test_init_never_alters_an_existing_table(runner, set_env, pg_url) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "file" ("id" varchar(21) PRIMARY KEY, "extra" int)')
    set_env(AP_POSTGRES_URL=pg_url)
    report = json.loads(invoke(runner, "init", "--json").stdout)
    assert report["createdTable"] is False
    assert len(report["missingIndexes"]) == 3
    with psycopg.connect(pg_url) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'file' "
            "AND table_schema = current_schema() ORDER BY ordinal_position"
        )]
    assert cols == ["id", "extra"]


def test_config_shows_settings_with_secrets_redacted(runner, set_env) -> None:
    set_env(AP_S3_SECRET_ACCESS_KEY="topsecret-abc", AP_POSTGRES_URL="postgresql://u:pw-xyz@db/ap")
    result = invoke(runner, "config", "--json")
    assert result.exit_code == 0
    data = {row["name"]: row for row in json.loads(result.stdout)["settings"]}
    assert data["AP_DB_TYPE"]["value"] == "POSTGRES"
    assert data["AP_S3_SECRET_ACCESS_KEY"] == {"name": "AP_S3_SECRET_ACCESS_KEY", "value": "********", "source": "environment"}
    assert "topsecret-abc" not in result.output and "pw-xyz" not in result.output
    human = invoke(runner, "config")
    assert "topsecret-abc" not in human.output and "pw-xyz" not in human.output


def test_version(runner) -> None:
    from apstorage import __version__

    result = invoke(runner, "--version")
    assert result.exit_code == 0 and __version__ in result.stdout


# -- with --json, a failure leaves an error document on stdout -------------------------------


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["put", "/nonexistent/file", "-t", "FLOW_RUN_LOG", "--project", "p", "--json"], 4, "/nonexistent/file"),
        (["get", "nosuchid", "-o", "OUT", "--json"], 4, "nosuchid"),
        (["presign", "nosuchid", "--json"], 4, "nosuchid"),
        (["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a", "--size", "1", "--json"],
         3, "AP_S3_BUCKET"),
        (["migrate-to-s3", "--from", "ftp", "--json"], 2, "--from"),
        (["sweep-expired", "--types", "PACKAGE_ARCHIVE", "--json"], 2, "PACKAGE_ARCHIVE"),
        (["sweep-expired", "--batch-size", "0", "--json"], 2, "--batch-size"),  # refused by the parser
        (["du", "--by", "colour", "--json"], 2, "--by"),
        (["lifecycle", "apply", "--json"], 3, "AP_S3_BUCKET"),
        (["lifecycle", "show", "--bogus", "--json"], 2, "--bogus"),
        (["check-iam", "--skip", "nope", "--json"], 2, "nope"),
        (["init", "--json"], 3, "AP_FILE_STORAGE_LOCATION"),
    ],
)
def test_json_failures_write_an_error_document(runner, set_env, tmp_path, args, code, needle) -> None:
    set_env(AP_FILE_STORAGE_LOCATION="FTP" if args[0] == "init" else "DB")
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = invoke(runner, *args)
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)  # one document, nothing else on stdout
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "hint", "exitCode"}
    assert doc["error"]["exitCode"] == code and needle in doc["error"]["message"]
    assert needle in result.stderr  # and the line for people, as always


# -- start-up: a run imports only the module of its own command ------------------------------

_LOADED = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write("LOADED " + " ".join(sorted(
    m for m in sys.modules if m.startswith("apstorage.cli.") and m != "apstorage.cli.app")) + "\\n"))
sys.argv = ["apstorage", *sys.argv[1:]]
runpy.run_module("apstorage", run_name="__main__")
"""


def _cli_modules_loaded(env: dict, *args: str) -> tuple[int, set[str], str]:
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _LOADED, *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("LOADED"))
    return proc.returncode, set(line.split()[1:]), proc.stdout


def test_a_command_run_imports_its_own_module_alone(set_env) -> None:
    env = set_env()
    code, loaded, out = _cli_modules_loaded(env, "config", "--json")
    assert code == 0 and json.loads(out)["settings"]
    assert {m for m in loaded if m not in ("apstorage.cli.output", "apstorage.cli.interrupt")} == {"apstorage.cli.admin"}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["migrat"], []])
def test_anything_but_a_command_name_loads_every_command(set_env, args) -> None:
    from apstorage.cli import COMMAND_MODULES

    _, loaded, _ = _cli_modules_loaded(set_env(), *args)
    assert {f"apstorage.cli.{m}" for m in COMMAND_MODULES.values()} <= loaded


def test_the_application_has_every_command_whatever_was_imported_first() -> None:
    """``apstorage.cli.app`` is also a submodule's name: importing a command module first
    must not leave the package's ``app`` as that module."""
    import subprocess
    import sys

    code = ("import apstorage.cli.migrate, apstorage.cli.app\n"
            "from apstorage.cli import app\n"
            "import typer.main\n"
            "print(sorted(typer.main.get_command(app).commands))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    from apstorage.cli import COMMAND_MODULES

    assert eval(out) == sorted(COMMAND_MODULES)  # noqa: S307 - our own subprocess's list
