"""A 1 GiB file goes in and out of S3 and LOCAL with flat memory (peak RSS < 150 MB).

Each command runs in a fresh wrapper process whose only child is apstorage, so
RUSAGE_CHILDREN's max RSS is apstorage's own peak.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GIB = 1024 * 1024 * 1024
RSS_LIMIT_MB = 150

_WRAPPER = (
    "import resource, subprocess, sys;"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE);"
    "sys.stderr.write('MAXRSS_KB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
    "sys.stdout.buffer.write(r.stdout); sys.exit(r.returncode)"
)


def run_measured(args: list[str], env: dict[str, str]) -> tuple[bytes, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "apstorage", *args],
        env=env, capture_output=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    line = [l for l in proc.stderr.decode().splitlines() if l.startswith("MAXRSS_KB=")][-1]
    return proc.stdout, int(line.split("=")[1]) / 1024


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "one-gib.bin"
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for i in range(GIB // len(block)):
            chunk = block[:-8] + i.to_bytes(8, "big")  # no two MiB alike
            out.write(chunk)
            digest.update(chunk)
    return path, digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("location", ["S3", "LOCAL"])
def test_one_gib_round_trip_with_flat_memory(location, big_file, make_env, s3_env, tmp_path) -> None:
    path, expected = big_file
    env = dict(os.environ)
    env.update(make_env(**s3_env, AP_FILE_STORAGE_LOCATION=location, AP_MAX_FILE_SIZE_MB="2048",
                        AP_LOCAL_STORAGE_PATH=str(tmp_path / "files")))
    out, put_rss = run_measured(["put", str(path), "-t", "FLOW_RUN_LOG", "--project", "p", "--json"], env)
    row = json.loads(out)
    assert row["location"] == location and row["size"] == GIB
    target = tmp_path / "back.bin"
    _, get_rss = run_measured(["get", row["id"], "-o", str(target)], env)
    assert sha256_of(target) == expected
    assert put_rss < RSS_LIMIT_MB, f"put peak RSS {put_rss:.0f} MB"
    assert get_rss < RSS_LIMIT_MB, f"get peak RSS {get_rss:.0f} MB"
    print(f"{location}: put peak RSS {put_rss:.0f} MB, get peak RSS {get_rss:.0f} MB")
