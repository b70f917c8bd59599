"""sweep-expired against `s5cmd rm` on the same SeaweedFS, in the same run.

Seeds N expired S3 rows (rows in Postgres, objects in SeaweedFS) plus as many live ones,
and an identical copy of the expired objects in other buckets. The expired set is split
by type into ``--rounds`` rounds (the machine is shared and noisy: alternating who goes
first, round by round, spreads the noise over both). Each round times

  * `apstorage sweep-expired --types T` (a fresh process: selects the rows by the
    (type, created) index, deletes the objects with DeleteObjects, deletes the rows), and
  * `s5cmd rm 's3://<round's copy>/*'` (lists the bucket and deletes the same objects),

then checks that every expired object and row is gone and every live one intact, and
prints the ratio of the totals. Target (issue 23): apstorage <= 0.9 x s5cmd, although it
also deletes the rows.

    python bench/sweep.py [--count 100000] [--live N] [--rounds 4] [--workers 8] [--profile out.svg]

``--versioned`` (issue 21): every bucket has versioning Enabled, each key is written
``--versions`` times (default 1), and the round times `sweep-expired --purge-versions`
(lists the keys' versions, deletes every version by id, then the rows) against
`s5cmd rm --all-versions 's3://<round's copy>/*'`; the check counts versions and delete
markers left (none of an expired key, every live key's intact). Target: within 1.2x.

    python bench/sweep.py --versioned --count 20000 --rounds 2

Objects are seeded with `s5cmd run` (one `cp` per key of a single small file), so no
local tree of N files is needed. ``--profile`` records the sweep with py-spy
(``pip install py-spy``) and writes a flame graph.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s5cmd_peer import children_cpu, count_objects, s5cmd, seed_objects  # noqa: E402
from tests.servers import peer_binary, postgres_server, seaweedfs_server  # noqa: E402

TYPES = (
    "FLOW_RUN_LOG", "FLOW_STEP_FILE", "TRIGGER_PAYLOAD", "WEBHOOK_PAYLOAD",
    "TRIGGER_EVENT_FILE", "FLOW_RUN_LOG_SLICE",
)  # the six expiring types (FLOW_BUNDLE is never swept)
PROJECTS = 200


def key_for(kind: str, i: int, rounds: int) -> tuple[str, str, str, str]:
    """(id, project, type, key) of the i-th expired ("E") or live ("L") file; the type
    (one per round) is i modulo the number of rounds."""
    file_id = f"{kind}{i:020d}"
    project = f"proj{i % PROJECTS:04d}"
    file_type = TYPES[i % rounds]
    return file_id, project, file_type, f"project/{project}/{file_type}/{file_id}"










def count_versions(s3, bucket: str) -> int:
    """Versions and delete markers in ``bucket`` (ListObjectVersions through boto3)."""
    n = 0
    for page in s3.client().get_paginator("list_object_versions").paginate(Bucket=bucket):
        n += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return n


def seed_rows(pg_url: str, count: int, live: int, size: int, rounds: int) -> float:
    import psycopg

    now = datetime.now(timezone.utc)
    start = time.perf_counter()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.cursor().copy(
            'COPY "file" ("id", "created", "updated", "projectId", "location", "size", "s3Key", "type") '
            "FROM STDIN"
        ) as copy:
            for kind, n, age in (("E", count, timedelta(days=60)), ("L", live, timedelta(hours=1))):
                for i in range(n):
                    file_id, project, file_type, key = key_for(kind, i, rounds)
                    created = now - age - timedelta(seconds=i)
                    copy.write_row((file_id, created, created, project, "S3", size, key, file_type))
        conn.execute('ANALYZE "file"')
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="expired rows with S3 objects")
    parser.add_argument("--live", type=int, default=None, help="live rows with objects (default: --count)")
    parser.add_argument("--rounds", type=int, default=4, choices=range(1, len(TYPES) + 1), metavar="1-6",
                        help="split the expired set by type into rounds; who goes first alternates")
    parser.add_argument("--size", type=int, default=256, help="bytes per object")
    parser.add_argument("--workers", type=int, default=8, help="apstorage sweep-expired --workers")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed-workers", type=int, default=64, help="s5cmd --numworkers for seeding")
    parser.add_argument("--ours-first", action="store_true", help="apstorage goes first in round 1")
    parser.add_argument("--versioned", action="store_true",
                        help="versioned buckets: sweep-expired --purge-versions against s5cmd rm --all-versions")
    parser.add_argument("--versions", type=int, default=1, help="--versioned: versions written per key")
    parser.add_argument("--profile", metavar="FILE", help="record round 1's sweep with py-spy: a flame "
                        "graph (.svg) or collapsed stacks (.txt)")
    args = parser.parse_args()
    live = args.count if args.live is None else args.live
    rounds = args.rounds
    try:
        peer_binary("s5cmd")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="ap-bench-sweep-"))
    try:
        with postgres_server() as pg, seaweedfs_server() as s3:
            ours = "ap-sweep"
            theirs = [f"s5-rm-{r}" for r in range(rounds)]  # round r's expired keys, copied
            for bucket in (ours, *theirs):
                s5cmd(s3, "mb", f"s3://{bucket}")
                if args.versioned:
                    s5cmd(s3, "bucket-version", "--set", "Enabled", f"s3://{bucket}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
            env.update(
                AP_POSTGRES_URL=pg.url,
                AP_FILE_STORAGE_LOCATION="S3",
                AP_CONFIG_PATH=str(tmp / "home"),
                **s3.ap_env(ours),
            )
            subprocess.run([sys.executable, "-m", "apstorage", "init"], env=env, check=True, capture_output=True)

            jobs = []
            for i in range(args.count):
                key = key_for("E", i, rounds)[3]
                jobs.append((ours, key))
                jobs.append((theirs[i % rounds], key))
            jobs.extend((ours, key_for("L", i, rounds)[3]) for i in range(live))
            copies = args.versions if args.versioned else 1
            print(f"seeding {len(jobs) * copies:,} objects of {args.size} B ({args.count:,} expired x 2 + {live:,} live"
                  f"{f', {copies} versions each' if args.versioned else ''}) ...", flush=True)
            seconds = 0.0
            for _ in range(copies):
                seconds += seed_objects(s3, tmp, jobs, args.size, args.seed_workers)
            print(f"  objects seeded in {seconds:.1f} s ({len(jobs) * copies / seconds:,.0f}/s)")
            del jobs
            seconds = seed_rows(pg.url, args.count, live, args.size, rounds)
            print(f"  {args.count + live:,} rows seeded in {seconds:.1f} s", flush=True)

            def run_s5cmd(r: int) -> tuple[float, float]:
                cpu0, start = children_cpu(), time.perf_counter()
                s5cmd(s3, "rm", *(["--all-versions"] if args.versioned else []), f"s3://{theirs[r]}/*")
                return time.perf_counter() - start, children_cpu() - cpu0

            def run_ours(r: int) -> tuple[float, float, dict]:
                cmd = [
                    sys.executable, "-m", "apstorage", "sweep-expired", "--json", "--types", TYPES[r],
                    "--workers", str(args.workers), "--batch-size", str(args.batch_size),
                    *(["--purge-versions"] if args.versioned else []),
                ]
                if args.profile and r == 0:
                    fmt = "raw" if args.profile.endswith(".txt") else "flamegraph"
                    cmd = ["py-spy", "record", "--subprocesses", "--threads", "--idle", "--format", fmt,
                           "-o", args.profile, "--", *cmd]
                cpu0, start = children_cpu(), time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                seconds, cpu = time.perf_counter() - start, children_cpu() - cpu0
                if proc.returncode != 0:
                    raise SystemExit(f"sweep-expired exited {proc.returncode}: {proc.stderr}")
                report = json.loads(next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")))
                return seconds, cpu, report

            results = []
            deleted = failed = 0
            for r in range(rounds):
                ours_first = (r % 2 == 0) == args.ours_first
                if ours_first:
                    ap, ap_cpu, report = run_ours(r)
                    s5, s5_cpu = run_s5cmd(r)
                else:
                    s5, s5_cpu = run_s5cmd(r)
                    ap, ap_cpu, report = run_ours(r)
                deleted += report["deleted"]
                failed += report["failed"]
                results.append((ap, ap_cpu, s5, s5_cpu))
                n = report["deleted"]
                print(f"round {r + 1} {TYPES[r]:<18} {n:,} files  apstorage {ap:6.2f} s (CPU {ap_cpu:5.2f})  "
                      f"s5cmd {s5:6.2f} s (CPU {s5_cpu:5.2f})  ratio {ap / s5:.2f}  "
                      f"[{'apstorage' if ours_first else 's5cmd'} first]", flush=True)

            import psycopg

            with psycopg.connect(pg.url) as conn:
                rows_left = conn.execute('SELECT count(*) FROM "file" WHERE "id" LIKE %s', ("E%",)).fetchone()[0]
                live_rows = conn.execute('SELECT count(*) FROM "file" WHERE "id" LIKE %s', ("L%",)).fetchone()[0]
            if args.versioned:
                ours_left = count_versions(s3, ours)
                theirs_left = sum(count_versions(s3, b) for b in theirs)
                live *= args.versions  # every live key keeps all its versions
            else:
                ours_left = count_objects(s3, ours)
                theirs_left = sum(count_objects(s3, b) for b in theirs)
            live_keys = args.count if args.live is None else args.live
            ok = (
                deleted == args.count and failed == 0 and rows_left == 0 and live_rows == live_keys
                and ours_left == live and theirs_left == 0
            )
            ap_total = sum(x[0] for x in results)
            s5_total = sum(x[2] for x in results)
            ratios = [x[0] / x[2] for x in results]
            if args.versioned:
                print(f"mode                    : versioned buckets, {args.versions} version(s) per key; "
                      "sweep-expired --purge-versions vs s5cmd rm --all-versions")
            print(f"apstorage sweep-expired : {ap_total:7.2f} s  ({args.count / ap_total:,.0f} files/s; deleted "
                  f"{deleted:,} rows+objects, failed {failed}; CPU {sum(x[1] for x in results):.2f} s)")
            print(f"s5cmd rm                : {s5_total:7.2f} s  ({args.count / s5_total:,.0f} objects/s; "
                  f"CPU {sum(x[3] for x in results):.2f} s)")
            target = "1.2" if args.versioned else "0.9"  # issue 21 / issue 23
            print(f"ratio                   : {ap_total / s5_total:.2f} x s5cmd (target <= {target}); "
                  f"per round {min(ratios):.2f}..{max(ratios):.2f}")
            what = "versions+markers" if args.versioned else "objects"
            print(f"check                   : expired rows left {rows_left}, live rows {live_rows:,}/{live_keys:,}, "
                  f"{what} left: ours {ours_left:,} (live {live:,}), s5cmd's {theirs_left} -> {'OK' if ok else 'MISMATCH'}")
            if args.profile:
                print(f"profile                 : {args.profile}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
