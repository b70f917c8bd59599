"""The mistakes a user makes in their first minutes: each prints one line saying what to do,
exits with the documented code, and never shows a traceback. Run as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run(home: Path, tmp_path: Path):
    def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
        full = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
        full.update(AP_CONFIG_PATH=str(home), **env)
        return subprocess.run([sys.executable, "-m", "apstorage", *args], env=full, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    return run


S3_UNREACHABLE = {"AP_S3_BUCKET": "bucket", "AP_S3_ACCESS_KEY_ID": "k", "AP_S3_SECRET_ACCESS_KEY": "do-not-print-me"}

MISTAKES = [
    # (name, args, env, exit code, words the one line must contain)
    ("missing bucket variable", ["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p"],
     {"AP_FILE_STORAGE_LOCATION": "S3"}, 3, ["AP_S3_BUCKET"]),
    ("bad boolean", ["config"], {"AP_S3_USE_IRSA": "yes"}, 3, ["AP_S3_USE_IRSA", "true or false"]),
    ("unreachable endpoint", ["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p"],
     {"AP_FILE_STORAGE_LOCATION": "S3", "AP_S3_ENDPOINT": "http://127.0.0.1:PORT", **S3_UNREACHABLE}, 8, ["127.0.0.1:PORT"]),
    ("unreachable postgres", ["get", "abc"], {"AP_POSTGRES_URL": "postgresql://u:pw-secret@127.0.0.1:PORT/db"}, 8, ["127.0.0.1:PORT"]),
    ("unknown id", ["get", "nosuchfileid"], {}, 4, ["nosuchfileid"]),
    ("unknown type", ["put", "IN", "-t", "FLOW_LOG", "--project", "p"], {}, 2, ["--type", "FLOW_RUN_LOG"]),
    ("file too large", ["put", "BIG", "-t", "FLOW_RUN_LOG", "--project", "p"], {"AP_MAX_FILE_SIZE_MB": "1"}, 7, ["AP_MAX_FILE_SIZE_MB"]),
    ("missing input path", ["put", "/no/such/file", "-t", "FLOW_RUN_LOG", "--project", "p"], {}, 4, ["/no/such/file"]),
    ("input path is a folder", ["put", "DIR", "-t", "FLOW_RUN_LOG", "--project", "p"], {}, 2, ["directory"]),
    ("bad duration", ["presign", "abc", "--expires", "soon"], {}, 2, ["--expires"]),
    ("too long an expiry", ["presign", "abc", "--expires", "8d"], {}, 2, ["7 days"]),
    ("permanent type to sweep", ["sweep-expired", "--types", "PLATFORM_ASSET"], {}, 2, ["PLATFORM_ASSET"]),
    ("bad location", ["get", "x"], {"AP_FILE_STORAGE_LOCATION": "GCS"}, 3, ["AP_FILE_STORAGE_LOCATION", "DB, S3, LOCAL"]),
    ("unknown flag", ["put", "--colour"], {}, 2, ["--colour"]),
]


@pytest.mark.parametrize("name, args, env, code, words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_prints_one_line_with_its_exit_code(run, tmp_path, name, args, env, code, words) -> None:
    port = str(closed_port())
    (tmp_path / "in.txt").write_bytes(b"x")
    (tmp_path / "big.bin").write_bytes(b"x" * (1024 * 1024 + 1))
    (tmp_path / "folder").mkdir()
    subst = {"IN": str(tmp_path / "in.txt"), "BIG": str(tmp_path / "big.bin"), "DIR": str(tmp_path / "folder")}
    args = [subst.get(a, a) for a in args]
    env = {k: v.replace("PORT", port) for k, v in env.items()}
    proc = run(args, **env)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if code == 2 and name == "unknown flag":
        assert any("--colour" in line for line in lines)  # click's own usage message
        return
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word.replace("PORT", port) in lines[0], lines[0]
    for secret in ("do-not-print-me", "pw-secret"):
        assert secret not in proc.stderr
