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
