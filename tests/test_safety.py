"""Untrusted text printed safely, output paths made safe, partial failures kept partial."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.cli import app
from apstorage.cli.output import Output
from apstorage.model import FileRow, Location
from apstorage.services.files import safe_file_name
from apstorage.text import printable
from tests.conftest import settings_from

runner = CliRunner()


# -- printable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain-key/é/日本", "plain-key/é/日本"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("line\nforged\r", "line\\nforged\\r"),
        ("bell\x07del\x7fc1\x9b", "bell\\x07del\\x7fc1\\x9b"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_printable_escapes_control_characters_only(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_output_escapes_messages_and_table_cells_but_json_stays_exact(capsys) -> None:
    from rich.table import Table

    out = Output()
    out.error("no file \x1b]0;title\x07 here", "hint \x1b[2J")
    out.warn("key\nforged line")
    table = Table("key")
    table.add_row("project/p1/\x1b[31m[bold]x[/bold]:smile:")
    out.out.print(table)
    Output(json_mode=True).result({"key": "a\x1b[31m\n"})
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err and captured.err.count("\n") == 2
    assert "error: no file \\x1b]0;title\\x07 here (hint: hint \\x1b[2J)" in captured.err
    assert "[bold]x[/bold]:smile:" in captured.out and "\\x1b[31m" in captured.out
    assert json.loads(captured.out.splitlines()[-1]) == {"key": "a\x1b[31m\n"}


# -- get -o -------------------------------------------------------------------------------


@pytest.fixture
def stored(set_env, home: Path):
    """Rows in the embedded catalog, bytes in DB, with the given file names."""
    env = set_env()

    def store(name: str | None, data: bytes = b"hello") -> str:
        from apstorage.services.context import Storage

        with Storage(settings_from(env)) as storage:
            row = storage.catalog.insert(
                FileRow(id=f"row{abs(hash(name)) % 10**17:017d}", type="FLOW_RUN_LOG", location=Location.DB,
                        project_id="p1", file_name=name, size=len(data)), data)
        return row.id

    return store


@pytest.mark.parametrize(
    "name, expected",
    [
        ("report.txt", "report.txt"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\run.log", "run.log"),
        ("evil\x1b[31m.txt", "evil_[31m.txt"),
        ("..", None),
        ("a/", None),
        ("", None),
        (None, None),
        ("x" * 300, None),
    ],
)
def test_get_into_a_folder_writes_the_safe_name_or_the_id(stored, tmp_path: Path, name, expected) -> None:
    file_id = stored(name)
    folder = tmp_path / "downloads"
    folder.mkdir()
    result = runner.invoke(app, ["get", file_id, "-o", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in folder.iterdir()] == [expected or file_id]
    assert (folder / (expected or file_id)).read_bytes() == b"hello"
    assert safe_file_name(name, file_id) == (expected or file_id)


def test_get_creates_files_with_the_umask_mode_and_keeps_an_existing_mode(stored, tmp_path: Path) -> None:
    file_id = stored("a.txt")
    old = os.umask(0o027)
    try:
        assert runner.invoke(app, ["get", file_id, "-o", str(tmp_path / "new.txt")]).exit_code == 0
        existing = tmp_path / "existing.txt"
        existing.write_bytes(b"old")
        existing.chmod(0o604)
        assert runner.invoke(app, ["get", file_id, "-o", str(existing)]).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE(existing.stat().st_mode) == 0o604 and existing.read_bytes() == b"hello"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_get_to_a_missing_folder_with_a_slash_is_not_found(stored, tmp_path: Path) -> None:
    result = runner.invoke(app, ["get", stored("a.txt"), "-o", str(tmp_path / "nope") + "/"])
    assert result.exit_code == 4 and "does not exist" in result.stderr


def test_get_to_a_full_device_is_one_line_naming_it(stored) -> None:
    """/dev/full refuses every write with ENOSPC, as a full disk does."""
    result = runner.invoke(app, ["get", stored("a.txt"), "-o", "/dev/full"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: cannot write to /dev/full: No space left on device"]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- check-iam --junit-xml ----------------------------------------------------------------


def test_junit_xml_creates_its_parent_folders(set_env, s3_env) -> None:
    set_env(**s3_env)
    result = runner.invoke(app, ["check-iam", "--skip", "anonymous-denied,clock,presign-get,presign-put",
                                 "--junit-xml", "reports/ci/s3-iam.xml"])
    assert result.exit_code == 0, result.stderr
    assert Path("reports/ci/s3-iam.xml").read_text().startswith("<?xml")


# -- du --verify: a key the store refuses -------------------------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Forwards to the real S3 server, except a HEAD of a key holding "refuse-me": HTTP 400."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "HEAD" and "refuse-me" in self.path:
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body or None, headers=dict(self.headers.items()))
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        # A HEAD answer's Content-Length is the object's size: pass it on.
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_verify_lists_a_key_the_store_refuses_and_checks_the_rest(set_env, s3_env, seaweed, tmp_path) -> None:
    from urllib.parse import urlsplit

    handler = type("Handler", (_Refusing,), {"upstream": (urlsplit(seaweed.endpoint).hostname,
                                                          urlsplit(seaweed.endpoint).port)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = set_env(**{**s3_env, "AP_S3_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"},
                      AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
        client = seaweed.client()
        bucket = s3_env["AP_S3_BUCKET"]
        from apstorage.services.context import Storage

        with Storage(settings_from(env)) as storage:
            for i, key in enumerate(["other/refuse-me", "other/fine", "project/p1/FLOW_RUN_LOG/kept000000000000001",
                                     "other/gone"]):
                if key != "other/gone":
                    client.put_object(Bucket=bucket, Key=key, Body=b"abc")
                # "other/gone" is older than any pre-signed URL lives: lost, not a pending upload.
                created = datetime.now(timezone.utc) - timedelta(days=8 if key == "other/gone" else 0)
                storage.catalog.insert(FileRow(id=f"r{i:020d}", type="FLOW_RUN_LOG", location=Location.S3,
                                               project_id="p1", size=3, s3_key=key, created=created))
        result = runner.invoke(app, ["du", "--verify", "--json"])
        assert result.exit_code == 1, result.stderr
        data = json.loads(result.stdout)["verify"]
        assert [i["key"] for i in data["refused"]["items"]] == ["other/refuse-me"]
        assert "400" in data["refused"]["items"][0]["error"]
        assert [i["key"] for i in data["missing"]["items"]] == ["other/gone"]
        assert data["orphans"]["files"] == 0 and data["sizeMismatches"]["files"] == 0, data["sizeMismatches"]
        human = runner.invoke(app, ["du", "--verify"])
        assert human.exit_code == 1 and "refused by the store" in human.stdout and "other/refuse-me" in human.stdout
    finally:
        server.shutdown()
        server.server_close()


# -- config at any width ------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["20", "80", "300"])
def test_config_shows_every_variable_in_full_at_any_width(set_env, columns: str) -> None:
    long_path = "/srv/" + "very-long-folder-name/" * 12 + "files"
    set_env(AP_LOCAL_STORAGE_PATH=long_path, AP_S3_SECRET_ACCESS_KEY="width-secret-0462",
            AP_EXECUTION_DATA_RETENTION_DAYS="45")
    result = runner.invoke(app, ["config"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    from apstorage.config import VARIABLES

    assert list(lines) == list(VARIABLES)
    assert lines["AP_LOCAL_STORAGE_PATH"][1:] == [long_path, "environment"]
    assert lines["AP_S3_SECRET_ACCESS_KEY"][1:] == ["********", "environment"]
    assert lines["AP_MAX_FILE_SIZE_MB"][1:] == ["25", "default"]
    assert "width-secret-0462" not in result.stdout + result.stderr


# -- sweep-expired: a hostile key in a failure line ------------------------------------------


def test_sweep_prints_a_hostile_key_escaped_and_keeps_it_exact_in_json(set_env, tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from apstorage.services.context import Storage

    root = tmp_path / "files"
    env = set_env(AP_LOCAL_STORAGE_PATH=str(root))
    key = "project/p1/FLOW_RUN_LOG/\x1b[2J\x1b]0;pwned\x07x"
    (root / key / "child").mkdir(parents=True)  # a folder where the file should be: unlink fails
    with Storage(settings_from(env)) as storage:
        storage.catalog.insert(FileRow(id="hostile0000000000001", type="FLOW_RUN_LOG", location=Location.LOCAL,
                                       project_id="p1", size=1, s3_key=key,
                                       created=datetime.now(timezone.utc) - timedelta(days=60)))
    result = runner.invoke(app, ["sweep-expired"])
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b[2J\\x1b]0;pwned\\x07x" in result.stderr
    as_json = runner.invoke(app, ["sweep-expired", "--json"])
    assert as_json.exit_code == 1
    assert [f["key"] for f in json.loads(as_json.stdout)["failures"]] == [key]  # JSON stays exact
