"""migrate-to-s3 vs s5cmd and aws-cli, same files, same SeaweedFS server, one run.

    python bench/migrate.py [--files 2000] [--size 10240] [--workers 16] [--no-aws]

Seeds N rows of SIZE random bytes in a real Postgres (pgserver) catalog and the same N
files on disk, then times (a) `apstorage migrate-to-s3` of the rows, (b) `s5cmd cp` of the
files, (c) `aws s3 cp --recursive` of the files, each into its own fresh bucket, and prints
files/s and the ratios. Target (issue 4): apstorage's time <= 1.0 x s5cmd's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import postgres_server, seaweedfs_server  # noqa: E402


def s3_client(info):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=info.endpoint, aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key, region_name=info.region,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


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


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


def count(client, bucket: str) -> int:
    return sum(p.get("KeyCount", 0) for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--no-aws", action="store_true", help="skip aws-cli (slowest)")
    args = parser.parse_args()

    from apstorage.model import new_id

    files = {new_id(): os.urandom(args.size) for _ in range(args.files)}
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    tree = work / "tree"
    for file_id, data in files.items():
        path = tree / "project" / "benchproj" / "FLOW_RUN_LOG" / file_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    with postgres_server() as pg, seaweedfs_server() as s3:
        client = s3_client(s3)
        for bucket in ("bench-ap", "bench-s5", "bench-aws"):
            client.create_bucket(Bucket=bucket)
        # Warm the server: its first writes allocate volumes.
        for i in range(20):
            client.put_object(Bucket="bench-ap", Key=f"warm/{i}", Body=b"x")
            client.put_object(Bucket="bench-s5", Key=f"warm/{i}", Body=b"x")
            client.put_object(Bucket="bench-aws", Key=f"warm/{i}", Body=b"x")
        seed_postgres(pg.url, files)

        peer_env = dict(os.environ, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                        AWS_REGION=s3.region, AWS_DEFAULT_REGION=s3.region)
        ap_env = dict(os.environ, AP_POSTGRES_URL=pg.url, AP_S3_BUCKET="bench-ap", AP_S3_ENDPOINT=s3.endpoint,
                      AP_S3_REGION=s3.region, AP_S3_ACCESS_KEY_ID=s3.access_key,
                      AP_S3_SECRET_ACCESS_KEY=s3.secret_key, AP_CONFIG_PATH=str(work / "home"))

        results = {}
        results["apstorage migrate-to-s3"] = timed(
            [sys.executable, "-m", "apstorage", "migrate-to-s3", "--workers", str(args.workers), "--json"], ap_env)
        results["s5cmd cp"] = timed(
            [shutil.which("s5cmd"), "--endpoint-url", s3.endpoint, "cp", f"{tree}/*", "s3://bench-s5/"], peer_env)
        if not args.no_aws:
            results["aws s3 cp --recursive"] = timed(
                [shutil.which("aws"), "--endpoint-url", s3.endpoint, "s3", "cp", "--recursive", "--quiet",
                 str(tree), "s3://bench-aws/"], peer_env)
        for bucket in ("bench-ap", "bench-s5") + (() if args.no_aws else ("bench-aws",)):
            got = count(client, bucket) - 20
            assert got == args.files, f"{bucket}: {got} objects, expected {args.files}"

    shutil.rmtree(work, ignore_errors=True)
    base = results["s5cmd cp"]
    print(f"{args.files} files of {args.size} bytes, one SeaweedFS server, 2 shared cores")
    for name, secs in results.items():
        print(f"{name:26s} {secs:7.2f} s  {args.files / secs:8.0f} files/s  {secs / base:5.2f} x s5cmd")
    ratio = results["apstorage migrate-to-s3"] / base
    print(f"target: apstorage <= 1.0 x s5cmd -> {'met' if ratio <= 1.0 else 'NOT met'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
