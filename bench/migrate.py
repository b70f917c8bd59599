"""migrate-to-s3 vs s5cmd and aws-cli, same files, same SeaweedFS server, one run.

    python bench/migrate.py [--files 2000] [--size 10240] [--workers 128] [--batch-size 100]
                            [--rounds 5] [--no-aws] [--baseline CHECKOUT]

Seeds N rows of SIZE random bytes in a real Postgres (pgserver) catalog and the same N
files on disk, then times (a) `apstorage migrate-to-s3` of the rows, (b) `s5cmd cp` of the
files, (c) `aws s3 cp --recursive` of the files, each into its own fresh bucket, and prints
files/s, the ratios, each tool's CPU seconds (user+sys, which load disturbs less than wall
time) and peak RSS. Target (issue 23): apstorage's time <= 0.9 x s5cmd's. Every round checks that each bucket holds every file and that every row was
switched to S3 with its bytes gone from the table. ``--baseline CHECKOUT`` (a folder holding
another version's ``apstorage`` package, e.g. from ``git archive``) times that version too, in
the same rounds: a before/after under the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import peer_binary, postgres_server, seaweedfs_server  # noqa: E402


def s3_client(info):
    return info.client()


def seed_postgres(url: str, files: dict[str, bytes]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS "file"')
    env = dict(os.environ, AP_POSTGRES_URL=url)
    subprocess.run([sys.executable, "-m", "apstorage", "init"], env=env, check=True, capture_output=True)
    now = datetime.now(timezone.utc)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy('COPY "file" ("id", "created", "updated", "projectId", "location", "type", "size", "data") FROM STDIN') as copy:
            for file_id, data in files.items():
                copy.write_row((file_id, now, now, "benchproj", "DB", "FLOW_RUN_LOG", len(data), data))


# Runs the command and reports its time and peak RSS. A small process of its own: a forked
# child's peak RSS starts at its parent's (this bench holds every file in memory).
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
rss, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
open(sys.argv[1], "w").write(json.dumps([proc.returncode, elapsed, rss, cpu, proc.stderr.decode()[-2000:]]))
"""


REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB, CPU seconds) of one command; exits if it fails. It runs in a folder of
    its own: ``python -m`` puts the working folder first on ``sys.path``, so run from a
    checkout it would import that checkout's package whatever PYTHONPATH says (and a
    ``--baseline`` would time this version twice)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report, tempfile.TemporaryDirectory() as cwd:
        subprocess.run([sys.executable, "-c", _MEASURE, report.name, *cmd], env=env, check=True, cwd=cwd)
        code, elapsed, rss, cpu, err = json.loads(Path(report.name).read_text())
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed ({code}): {err}")
    return elapsed, rss, cpu


def rows_in_s3(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute('''SELECT count(*) FROM "file" WHERE "location" = 'S3' AND "data" IS NULL''').fetchone()[0]


def count(client, bucket: str) -> int:
    return sum(p.get("KeyCount", 0) for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--workers", type=int, default=128, help="apstorage's --workers (its default)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--no-aws", action="store_true", help="skip aws-cli (slowest; run in round 1 only)")
    parser.add_argument("--baseline", type=Path, help="another checkout's folder, timed in the same rounds")
    args = parser.parse_args()

    from apstorage.model import new_id

    files = {new_id(): os.urandom(args.size) for _ in range(args.files)}
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    tree = work / "tree"
    for file_id, data in files.items():
        path = tree / "project" / "benchproj" / "FLOW_RUN_LOG" / file_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    import statistics

    # The package is timed as an install runs it: with its bytecode compiled (pip compiles
    # at install time; a source checkout under PYTHONDONTWRITEBYTECODE=1 would recompile
    # every module on every run, ~70 ms here).
    import compileall

    import apstorage

    compileall.compile_dir(str(Path(apstorage.__file__).parent), quiet=1)
    if args.baseline:
        compileall.compile_dir(str(args.baseline / "apstorage"), quiet=1)

    results: dict[str, list[tuple[float, float, float]]] = {"apstorage migrate-to-s3": [], "s5cmd cp": []}
    if args.baseline:
        results["apstorage (baseline)"] = []
    if not args.no_aws:
        results["aws s3 cp --recursive"] = []
    with postgres_server() as pg, seaweedfs_server() as s3:
        client = s3_client(s3)
        peer_env = dict(os.environ, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                        AWS_REGION=s3.region, AWS_DEFAULT_REGION=s3.region)
        for r in range(args.rounds):
            # Fresh buckets and a re-seeded catalog each round; tools alternate within a round
            # so a burst of load on this shared machine hits both sides alike.
            names = {tool: f"bench-{tag}-{r}" for tool, tag in zip(results, ("ap", "s5", "base" if args.baseline else "aws", "aws"))}
            for bucket in names.values():
                client.create_bucket(Bucket=bucket)
                for i in range(20):  # warm: a new bucket's first writes allocate volumes
                    client.put_object(Bucket=bucket, Key=f"warm/{i}", Body=b"x")
            seed_postgres(pg.url, files)
            ap_env = dict(os.environ, PYTHONPATH=str(REPO), AP_POSTGRES_URL=pg.url, AP_CONFIG_PATH=str(work / "home"),
                          **s3.ap_env(names["apstorage migrate-to-s3"]))
            results["apstorage migrate-to-s3"].append(timed(
                [sys.executable, "-m", "apstorage", "migrate-to-s3", "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--json"], ap_env))
            assert rows_in_s3(pg.url) == args.files, "not every row was switched to S3"
            results["s5cmd cp"].append(timed(
                [peer_binary("s5cmd"), "--endpoint-url", s3.endpoint, "cp", f"{tree}/*",
                 f"s3://{names['s5cmd cp']}/"], peer_env))
            if args.baseline:
                seed_postgres(pg.url, files)
                base_env = dict(ap_env, PYTHONPATH=str(args.baseline.resolve()),
                                **s3.ap_env(names["apstorage (baseline)"]))
                results["apstorage (baseline)"].append(timed(
                    [sys.executable, "-m", "apstorage", "migrate-to-s3", "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--json"], base_env))
                assert rows_in_s3(pg.url) == args.files, "baseline: not every row was switched to S3"
            if not args.no_aws and r == 0:
                results["aws s3 cp --recursive"].append(timed(
                    [shutil.which("aws"), "--endpoint-url", s3.endpoint, "s3", "cp", "--recursive", "--quiet",
                     str(tree), f"s3://{names['aws s3 cp --recursive']}/"], peer_env))
            for tool, bucket in names.items():
                if results[tool] and len(results[tool]) == r + 1:
                    got = count(client, bucket) - 20
                    assert got == args.files, f"{bucket}: {got} objects, expected {args.files}"
            assert rows_in_s3(pg.url) == args.files, "not every row was switched to S3"

    shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(t for t, _, _ in runs) for name, runs in results.items() if runs}
    base = medians["s5cmd cp"]
    print(f"{args.files} files of {args.size} bytes, one SeaweedFS server, 2 shared cores, "
          f"{args.rounds} rounds (median; all runs in brackets; peak RSS of the largest run)")
    for name, secs in medians.items():
        runs = ", ".join(f"{t:.2f}" for t, _, _ in results[name])
        rss = max(m for _, m, _ in results[name])
        cpu = statistics.median(c for _, _, c in results[name])
        print(f"{name:26s} {secs:7.2f} s  {args.files / secs:8.0f} files/s  {secs / base:5.2f} x s5cmd  "
              f"CPU {cpu:5.2f} s  {rss:6.0f} MB  [{runs}]")
    ratio = medians["apstorage migrate-to-s3"] / base
    print(f"target: apstorage <= 0.9 x s5cmd -> {'met' if ratio <= 0.9 else 'NOT met'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
