"""`gc --orphans` against `s5cmd rm` of the same keys, on the same SeaweedFS, in the same run.

Each round has its own two buckets: ``gc-<r>`` holds N orphan objects (no row) among M
referenced ones (rows in Postgres), and ``s5-<r>`` holds the same N orphan keys. A round
times, alternating who goes first,

  * `apstorage gc --orphans --grace 1h --json` against ``gc-<r>`` (a fresh process: lists
    the bucket, merges it with the catalog, re-checks every batch against the catalog and
    deletes the orphans with DeleteObjects), and
  * `s5cmd run FILE` where FILE holds `rm` commands naming the same N keys, 1,000 per line
    (s5cmd sends one DeleteObjects per line: the fastest way to hand it a list),

then checks that every orphan is gone and every referenced object and row intact, and
prints the ratio of the totals. Target (issue 16): gc <= 1.5 x s5cmd.

Ages. gc never takes an object younger than its grace (at least 1 h), and SeaweedFS stamps
objects with its own clock, so the benchmark cannot backdate them. By default it waits:
after seeding it sleeps until the newest object is over an hour old, then runs the real
command. ``--clock-ahead`` skips the wait for quick runs: gc then runs in a fresh process
through the library (``apstorage.services.gc.collect_garbage(..., now=start + 2 h)`` — the
clock argument the tests use; not a command-line flag), which costs the same as the command
minus Typer's start-up (~0.1 s).

    python bench/gc.py [--orphans 100000] [--referenced N] [--rounds 2] [--workers 8] [--clock-ahead]
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

PROJECTS = 200
GRACE = 3600

CHILD = """
import json, sys
from datetime import datetime, timedelta, timezone
from apstorage.services.context import Storage
from apstorage.services.gc import collect_garbage
with Storage() as storage:
    report = collect_garbage(storage, kinds=["orphans"], grace=3600, workers=int(sys.argv[1]),
                             now=datetime.now(timezone.utc) + timedelta(hours=2))
print(json.dumps(report.to_json()))
"""


def key_for(kind: str, i: int) -> tuple[str, str, str]:
    """(id, project, key) of the i-th orphan ("O") or referenced ("R") object."""
    file_id = f"{kind}{i:020d}"
    project = f"proj{i % PROJECTS:04d}"
    return file_id, project, f"project/{project}/FLOW_RUN_LOG/{file_id}"










def seed_rows(pg_url: str, referenced: int, size: int) -> float:
    import psycopg

    created = datetime.now(timezone.utc) - timedelta(days=3)
    start = time.perf_counter()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.cursor().copy(
            'COPY "file" ("id", "created", "updated", "projectId", "location", "size", "s3Key", "type") '
            "FROM STDIN"
        ) as copy:
            for i in range(referenced):
                file_id, project, key = key_for("R", i)
                copy.write_row((file_id, created, created, project, "S3", size, key, "FLOW_RUN_LOG"))
        conn.execute('ANALYZE "file"')
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orphans", type=int, default=100_000, help="orphan objects per round")
    parser.add_argument("--referenced", type=int, default=None, help="referenced objects (default: --orphans)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; who goes first alternates")
    parser.add_argument("--size", type=int, default=256, help="bytes per object")
    parser.add_argument("--workers", type=int, default=8, help="apstorage gc --workers")
    parser.add_argument("--seed-workers", type=int, default=64, help="s5cmd --numworkers for seeding")
    parser.add_argument("--clock-ahead", action="store_true",
                        help="do not wait an hour: run gc through the library with its clock 2 h ahead")
    parser.add_argument("--ours-first", action="store_true", help="apstorage goes first in round 1")
    args = parser.parse_args()
    referenced = args.orphans if args.referenced is None else args.referenced
    try:
        peer_binary("s5cmd")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="ap-bench-gc-"))
    try:
        with postgres_server() as pg, seaweedfs_server() as s3:
            ours = [f"gc-{r}" for r in range(args.rounds)]
            theirs = [f"s5-{r}" for r in range(args.rounds)]
            for bucket in (*ours, *theirs):
                s5cmd(s3, "mb", f"s3://{bucket}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
            env.update(AP_POSTGRES_URL=pg.url, AP_FILE_STORAGE_LOCATION="S3", AP_CONFIG_PATH=str(tmp / "home"),
                       **s3.ap_env(ours[0]))
            subprocess.run([sys.executable, "-m", "apstorage", "init"], env=env, check=True, capture_output=True)

            jobs = []
            for r in range(args.rounds):
                for i in range(args.orphans):
                    key = key_for("O", i)[2]
                    jobs.append((ours[r], key))
                    jobs.append((theirs[r], key))
                jobs.extend((ours[r], key_for("R", i)[2]) for i in range(referenced))
            total = len(jobs)
            print(f"seeding {total:,} objects of {args.size} B ({args.rounds} rounds x ({args.orphans:,} orphans "
                  f"x 2 + {referenced:,} referenced)) ...", flush=True)
            seconds = seed_objects(s3, tmp, jobs, args.size, args.seed_workers)
            seeded_at = time.time()
            print(f"  objects seeded in {seconds:.1f} s ({total / seconds:,.0f}/s)")
            del jobs
            seconds = seed_rows(pg.url, referenced, args.size)
            print(f"  {referenced:,} rows seeded in {seconds:.1f} s", flush=True)

            lists = []
            for r in range(args.rounds):
                path = tmp / f"rm-{r}.txt"
                with path.open("w") as fh:
                    for start in range(0, args.orphans, 1000):
                        keys = (f"s3://{theirs[r]}/{key_for('O', i)[2]}"
                                for i in range(start, min(start + 1000, args.orphans)))
                        fh.write("rm " + " ".join(keys) + "\n")
                lists.append(path)

            if not args.clock_ahead:
                wait = seeded_at + GRACE + 60 - time.time()
                if wait > 0:
                    print(f"waiting {wait / 60:.0f} min until every object is older than gc's 1 h grace "
                          f"(--clock-ahead skips this) ...", flush=True)
                    time.sleep(wait)

            def run_s5cmd(r: int) -> tuple[float, float]:
                cpu0, start = children_cpu(), time.perf_counter()
                s5cmd(s3, "--numworkers", "256", "run", str(lists[r]))
                return time.perf_counter() - start, children_cpu() - cpu0

            def run_ours(r: int) -> tuple[float, float, dict]:
                round_env = {**env, "AP_S3_BUCKET": ours[r]}
                if args.clock_ahead:
                    cmd = [sys.executable, "-c", CHILD, str(args.workers)]
                else:
                    cmd = [sys.executable, "-m", "apstorage", "gc", "--orphans", "--grace", "1h", "--json",
                           "--workers", str(args.workers)]
                cpu0, start = children_cpu(), time.perf_counter()
                proc = subprocess.run(cmd, env=round_env, capture_output=True, text=True)
                seconds, cpu = time.perf_counter() - start, children_cpu() - cpu0
                if proc.returncode != 0:
                    raise SystemExit(f"gc exited {proc.returncode}: {proc.stderr}")
                report = json.loads(next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")))
                return seconds, cpu, report

            results = []
            deleted = failed = 0
            for r in range(args.rounds):
                ours_first = (r % 2 == 0) == args.ours_first
                if ours_first:
                    ap, ap_cpu, report = run_ours(r)
                    s5, s5_cpu = run_s5cmd(r)
                else:
                    s5, s5_cpu = run_s5cmd(r)
                    ap, ap_cpu, report = run_ours(r)
                deleted += report["orphans"]["files"]
                failed += report["failed"]
                results.append((ap, ap_cpu, s5, s5_cpu))
                print(f"round {r + 1}  {report['orphans']['files']:,} orphans  gc {ap:6.2f} s (CPU {ap_cpu:5.2f})  "
                      f"s5cmd {s5:6.2f} s (CPU {s5_cpu:5.2f})  ratio {ap / s5:.2f}  "
                      f"[{'apstorage' if ours_first else 's5cmd'} first]", flush=True)

            import psycopg

            with psycopg.connect(pg.url) as conn:
                rows = conn.execute('SELECT count(*) FROM "file"').fetchone()[0]
            ours_left = [count_objects(s3, b) for b in ours]
            theirs_left = sum(count_objects(s3, b) for b in theirs)
            ok = (deleted == args.orphans * args.rounds and failed == 0 and rows == referenced
                  and all(n == referenced for n in ours_left) and theirs_left == 0)
            ap_total = sum(x[0] for x in results)
            s5_total = sum(x[2] for x in results)
            ratios = [x[0] / x[2] for x in results]
            n = args.orphans * args.rounds
            mode = "library, clock 2 h ahead" if args.clock_ahead else "the command, objects aged 1 h"
            print(f"apstorage gc --orphans : {ap_total:7.2f} s  ({n / ap_total:,.0f} orphans/s; {mode}; "
                  f"CPU {sum(x[1] for x in results):.2f} s; failed {failed})")
            print(f"s5cmd run (rm lists)   : {s5_total:7.2f} s  ({n / s5_total:,.0f} objects/s; "
                  f"CPU {sum(x[3] for x in results):.2f} s)")
            print(f"ratio                  : {ap_total / s5_total:.2f} x s5cmd (target <= 1.5); "
                  f"per round {min(ratios):.2f}..{max(ratios):.2f}")
            print(f"check                  : orphans deleted {deleted:,}/{n:,}, rows {rows:,}/{referenced:,}, "
                  f"referenced objects left {ours_left}, s5cmd's left {theirs_left} -> "
                  f"{'OK' if ok else 'MISMATCH'}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
