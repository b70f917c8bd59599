"""Postgres never hangs a command: a connect timeout, a statement timeout, each said so."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from apstorage.catalog import postgres
from apstorage.errors import BackendUnavailableError
from tests.conftest import settings_from


def test_a_frozen_postgres_fails_the_command_with_exit_8(tmp_path: Path) -> None:
    """A server that accepts and never answers (as a frozen postmaster does)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        env = {"AP_CONFIG_PATH": str(tmp_path / "home"), "AP_POSTGRES_HOST": "127.0.0.1",
               "AP_POSTGRES_PORT": str(port), "AP_POSTGRES_DATABASE": "db", "AP_POSTGRES_USERNAME": "u",
               "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        result = subprocess.run([sys.executable, "-m", "apstorage", "du"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for sock in accepted:
            sock.close()
    assert result.returncode == 8, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "connect timeout" in result.stderr, result.stderr


def test_a_statement_over_the_timeout_is_exit_8_and_says_so(pg_url: str, monkeypatch) -> None:
    monkeypatch.setattr(postgres.PostgresCatalog, "statement_timeout", 0.2)
    catalog = postgres.PostgresCatalog(settings_from({"AP_POSTGRES_URL": pg_url}))
    try:
        assert catalog._execute("SHOW statement_timeout") == [("200ms",)]
        with pytest.raises(BackendUnavailableError, match="statement_timeout") as raised:
            catalog._execute("SELECT pg_sleep(2)")
        assert "0.2 s" in str(raised.value)
    finally:
        catalog.close()


class _SwallowingProxy:
    """A TCP proxy on 127.0.0.1 to the test Postgres (its Unix socket) that forwards the
    login and everything else until a client packet names the "file" table; from then on
    it swallows that connection's packets and keeps the socket open — a server that stopped
    answering mid-session. Bounded: every loop polls a stop flag and ends within a second."""

    def __init__(self, upstream_dir: str) -> None:
        self.upstream = str(Path(upstream_dir) / ".s.PGSQL.5432")
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.swallowed = 0
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client = self.listener.accept()[0]
            except OSError:
                continue
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            self.sockets += [client, server]
            state = {"stalled": False}
            for a, b, from_client in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pipe, args=(a, b, from_client, state), daemon=True)
                t.start()
                self.threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool, state: dict) -> None:
        src.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if from_client and b'"file"' in data:
                state["stalled"] = True
            if state["stalled"]:
                self.swallowed += 1
                continue
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_a_postgres_that_stops_answering_mid_session_fails_within_the_bound(request, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """statement_timeout is the server's to enforce; a server that stopped answering never
    does. The client bounds each statement by statement_timeout + ANSWER_MARGIN, then shuts
    the socket: exit 8, naming the host and the bound (here 0.5 + 0.5 s)."""
    from typer.testing import CliRunner

    from apstorage.cli import app
    from urllib.parse import parse_qs, urlsplit

    server = request.getfixturevalue("postgres")  # the fixture (this module's ``postgres`` is the catalog module)
    host_dir = parse_qs(urlsplit(server.url).query)["host"][0]
    proxy = _SwallowingProxy(host_dir)
    monkeypatch.setattr(postgres_module(), "ANSWER_MARGIN", 0.5)
    monkeypatch.setattr(postgres_module().PostgresCatalog, "statement_timeout", 0.5)
    try:
        for name, value in {"AP_CONFIG_PATH": str(tmp_path / "home"), "AP_POSTGRES_HOST": "127.0.0.1",
                            "AP_POSTGRES_PORT": str(proxy.port), "AP_POSTGRES_DATABASE": "postgres",
                            "AP_POSTGRES_USERNAME": "postgres"}.items():
            monkeypatch.setenv(name, value)
        result = CliRunner().invoke(app, ["du"], catch_exceptions=False)
    finally:
        proxy.close()
    assert proxy.swallowed >= 1  # the statement really went unanswered
    assert result.exit_code == 8, result.output
    assert f"127.0.0.1:{proxy.port}" in result.output and "no answer to a statement within 1 s" in result.output, result.output


def postgres_module():
    return postgres
