"""A fault of the program inside a request is an internal error, never a network message
(issue 22, item 6).

Each test injects a real fault into a function of OUR code that a request path calls
(the signed path's bounded read, the streaming GET, the multiplexer's parser callbacks,
the botocore client's before-sign handler, the connection hook every urllib3 request
passes through) and runs the command in-process through the CLI's one error boundary
(``apstorage.cli.app.run``): the outcome is the internal-error path — ``error: internal
error (KeyError): ...``, exit 1 — and nothing reads "closed the connection" or names S3
as the culprit. The servers are real (SeaweedFS, the catalogs of conftest).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from apstorage.cli import app  # noqa: F401 - every command registered, whichever test runs first
from apstorage.cli.app import run
from apstorage.model import FileRow, Location, new_id
from apstorage.services.context import Storage
from tests.conftest import settings_from


def boom(kind: type[BaseException]):
    def fault(*args, **kwargs):
        raise kind("injected fault of the program")

    return fault


def assert_internal_error(code: int, err: str, kind: type[BaseException]) -> None:
    assert code == 1, err
    assert f"internal error ({kind.__name__})" in err, err
    for network_words in ("closed the connection", "S3 at", "reset the connection", "broke HTTP"):
        assert network_words not in err, err


@pytest.fixture
def env(s3_env, make_env, set_env, tmp_path: Path) -> dict[str, str]:
    values = make_env(**s3_env, AP_FILE_STORAGE_LOCATION="S3", AP_S3_TIMEOUT_SECONDS="5")
    set_env(**values)
    return values


def stored(env: dict[str, str], data: bytes = b"stored before the fault", *, days: float = 0) -> FileRow:
    storage = Storage(settings_from(env))
    try:
        storage.catalog.init_schema()
        row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p", size=len(data),
                      created=datetime.now(timezone.utc) - timedelta(days=days))
        row = FileRow(**{**row.__dict__, "s3_key": row.key})
        storage.store(Location.S3).put(row.s3_key, io.BytesIO(data), len(data))
        return storage.catalog.insert(row)
    finally:
        storage.close()


@pytest.mark.parametrize("kind", [KeyError, TypeError, ImportError, RuntimeError])
def test_put_through_the_signed_path(env, tmp_path, monkeypatch, capsys, kind) -> None:
    from apstorage.stores import s3_http

    (tmp_path / "in.txt").write_bytes(b"hello")
    monkeypatch.setattr(s3_http, "_read_bounded", boom(kind))
    code = run(["put", str(tmp_path / "in.txt"), "-t", "FLOW_RUN_LOG", "--project", "p"])
    assert_internal_error(code, capsys.readouterr().err, kind)


@pytest.mark.parametrize("kind", [AttributeError, ValueError])
def test_get_while_streaming_the_body(env, monkeypatch, capsys, kind) -> None:
    from apstorage.stores import s3

    row = stored(env)
    monkeypatch.setattr(s3, "read_guarded", boom(kind))
    code = run(["get", row.id, "-o", "-"])
    assert_internal_error(code, capsys.readouterr().err, kind)


@pytest.mark.parametrize("kind", [KeyError, ImportError])
def test_migrate_through_the_multiplexer_parser_callbacks(env, monkeypatch, capsys, kind) -> None:
    """A callback of ours failing inside httptools (HttpParserCallbackError) is our fault,
    not the peer breaking HTTP/1.1."""
    from apstorage.stores import s3_http

    storage = Storage(settings_from({**env, "AP_FILE_STORAGE_LOCATION": "DB"}))
    try:
        storage.catalog.init_schema()
        storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p",
                                       size=5), b"hello")
    finally:
        storage.close()
    monkeypatch.setattr(s3_http._Slot, "on_headers_complete", boom(kind))
    code = run(["migrate-to-s3"])
    assert_internal_error(code, capsys.readouterr().err, kind)


def test_sweep_through_the_signed_delete_path(env, monkeypatch, capsys) -> None:
    """DeleteObjects goes through ``_FastS3``: a fault reading its answer is ours."""
    from apstorage.stores import s3

    stored(env, days=90)
    monkeypatch.setattr(s3, "parse_delete_result", boom(KeyError))
    code = run(["sweep-expired"])
    assert_internal_error(code, capsys.readouterr().err, KeyError)


def test_du_verify_listing(env, monkeypatch, capsys) -> None:
    from apstorage.stores import s3_http

    stored(env)
    monkeypatch.setattr(s3_http, "_read_bounded", boom(TypeError))
    code = run(["du", "--verify"])
    assert_internal_error(code, capsys.readouterr().err, TypeError)


def test_a_multipart_put(env, tmp_path, monkeypatch, capsys) -> None:
    """s3transfer hands the fault back from its worker threads; it is still ours."""
    from apstorage.stores import s3, s3_http

    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (s3.MULTIPART_THRESHOLD + 1024))
    monkeypatch.setattr(s3_http, "_watch_current", boom(TypeError))
    code = run(["put", str(big), "-t", "FLOW_RUN_LOG", "--project", "p"])
    assert_internal_error(code, capsys.readouterr().err, TypeError)


def test_a_keyerror_inside_s3transfer_is_still_the_stores(env, tmp_path, faulty_s3, bucket, set_env, capsys) -> None:
    """The other side of the line: an UploadPart answer without its ETag makes s3transfer
    raise KeyError in its own code — the store's doing, exit 8, as before."""
    from apstorage.stores import s3
    from tests.s3_faults import Fault

    set_env(**{**env, **faulty_s3.info.ap_env(bucket)})
    faulty_s3.add(Fault("drop_etag", method="PUT", query="partNumber"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (s3.MULTIPART_THRESHOLD + 1024))
    code = run(["put", str(big), "-t", "FLOW_RUN_LOG", "--project", "p"])
    err = capsys.readouterr().err
    assert code == 8 and "lacked its ETag" in err and "internal error" not in err, err


def test_get_through_the_botocore_clients_connection_hook(env, monkeypatch, capsys) -> None:
    """botocore's own session wraps any exception in HTTPClientError; ours is unwrapped."""
    from apstorage.stores import s3_http

    row = stored(env)
    monkeypatch.setattr(s3_http, "_watch_current", boom(NameError))
    code = run(["get", row.id, "-o", "-"])
    assert_internal_error(code, capsys.readouterr().err, NameError)


# -- with --json the internal error is also the error document on stdout -----------------


def _json_error_document(out: str) -> dict:
    import json

    lines = out.splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])["error"]


@pytest.mark.parametrize("argv", [
    ["put", "{file}", "-t", "FLOW_RUN_LOG", "--project", "p"],
    ["get", "{id}", "-o", "{out}"],
    ["du", "--verify"],
    ["sweep-expired"],
    ["gc"],
    ["check-iam"],
    ["lifecycle", "show"],
    ["migrate-to-s3"],
], ids=lambda argv: " ".join(a for a in argv if not a.startswith("{")))
def test_json_mode_leaves_the_error_document_on_stdout(env, tmp_path, monkeypatch, capsys, argv) -> None:
    """Every request of these commands passes through urllib3's pool (botocore's or the
    signed path's); a program fault there with --json is the README's error document on
    stdout as well as the stderr line, so a script never parses an empty stdout."""
    import urllib3.connectionpool

    row = stored(env, days=90)
    storage = Storage(settings_from({**env, "AP_FILE_STORAGE_LOCATION": "DB"}))
    try:
        storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p",
                                       size=5), b"hello")
    finally:
        storage.close()
    (tmp_path / "in.txt").write_bytes(b"hello")
    subs = {"{file}": str(tmp_path / "in.txt"), "{id}": row.id, "{out}": str(tmp_path / "out.bin")}
    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", boom(TypeError))
    code = run([subs.get(a, a) for a in argv] + ["--json"])
    captured = capsys.readouterr()
    assert_internal_error(code, captured.err, TypeError)
    error = _json_error_document(captured.out)
    assert error == {"message": "internal error (TypeError): injected fault of the program",
                     "hint": "this is a bug in apstorage; please report it with the command you ran", "exitCode": 1}


def test_an_internal_error_without_a_message_has_no_dangling_colon(env, monkeypatch, capsys) -> None:
    import urllib3.connectionpool

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", out_of_memory)
    code = run(["lifecycle", "show", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: internal error (MemoryError) (hint: this is a bug in apstorage" in captured.err, captured.err
    assert _json_error_document(captured.out)["message"] == "internal error (MemoryError)"
