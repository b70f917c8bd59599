"""s5cmd as the peer of the S3 benchmarks (`bench/gc.py`, `bench/sweep.py`): run it against
a test server, count a bucket's objects, seed objects, and the CPU time children used."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

from tests.servers import peer_binary


def s5cmd(s3, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    """Run s5cmd against ``s3`` (a ``tests.servers.S3Info``); a failure other than
    `ls` finding nothing stops the benchmark with s5cmd's own last lines."""
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_REGION=s3.region)
    proc = subprocess.run([peer_binary("s5cmd"), "--endpoint-url", s3.endpoint, *args],
                          env=env, capture_output=capture, text=True)
    if proc.returncode != 0 and not (args and args[0] == "ls"):
        tail = "\n".join((proc.stderr or "").splitlines()[-5:])
        raise SystemExit(f"s5cmd {' '.join(args[:3])} exited {proc.returncode}: {tail}")
    proc.check_returncode()
    return proc


def count_objects(s3, bucket: str) -> int:
    try:
        out = s5cmd(s3, "ls", f"s3://{bucket}/*").stdout
    except subprocess.CalledProcessError as exc:  # s5cmd exits 1 on "no object found"
        if "no object found" in (exc.stderr or ""):
            return 0
        raise
    return sum(1 for line in out.splitlines() if line.strip())


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seed_objects(s3, tmp: Path, jobs, size: int, workers: int) -> float:
    """Put one random blob of ``size`` bytes at every (bucket, key) of ``jobs`` with
    `s5cmd run`; returns the seconds it took."""
    blob = tmp / "blob"
    blob.write_bytes(os.urandom(size))
    commands = tmp / "seed.txt"
    with commands.open("w") as fh:
        for bucket, key in jobs:
            fh.write(f"cp {blob} s3://{bucket}/{key}\n")
    start = time.perf_counter()
    s5cmd(s3, "--numworkers", str(workers), "run", str(commands))
    return time.perf_counter() - start
