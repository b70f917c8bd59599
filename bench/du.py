"""`apstorage du` and `apstorage du --verify` against `s5cmd du`, on real servers.

A catalog of ``--rows`` rows (default 1,000,000) in a real Postgres, ``--objects`` of
them (default 100,000) in S3 with their objects in SeaweedFS; the other rows are DB rows
with a small payload. Then, interleaved, ``--runs`` times each (wall time of the whole
command, process start included):

- ``apstorage du --json``            (one aggregate over all rows)
- ``apstorage du --verify --json``   (aggregate + list the bucket + merge with the rows)
- ``s5cmd du s3://BUCKET/*``         (lists the same objects)

Targets (issue 6): ``du`` over 1,000,000 rows takes less time than ``s5cmd du`` over
100,000 objects; ``du --verify`` <= 1.5 x ``s5cmd du``.

    python bench/du.py [--rows 1000000] [--objects 100000] [--runs 3]
                       [--pg-url URL] [--platform-share 0.0] [--profile]

Seeding: rows with INSERT ... SELECT generate_series (DB rows) and COPY (S3 rows);
objects by writing a local tree of small files and one ``s5cmd cp`` of it. ``--profile``
also runs verify in-process under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import peer_binary, postgres_server, seaweedfs_server  # noqa: E402

ALPHABET = string.ascii_letters + string.digits
EXEC_TYPES = ["FLOW_RUN_LOG", "FLOW_STEP_FILE", "TRIGGER_PAYLOAD", "WEBHOOK_PAYLOAD", "FLOW_RUN_LOG_SLICE"]
DB_TYPES = EXEC_TYPES + ["SAMPLE_DATA", "PACKAGE_ARCHIVE", "FLOW_VERSION_BACKUP", "UNKNOWN"]
BUCKET = "du-bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed_catalog(pg_url: str, env: dict[str, str], db_rows: int, s3_rows: list[tuple]) -> None:
    import psycopg

    from apstorage.catalog import open_catalog
    from apstorage.config import load_settings

    settings = load_settings(environ=env, dotenv_path="/nonexistent/.env")
    with open_catalog(settings, create=True):
        pass
    t = time.perf_counter()
    types = ", ".join(f"'{x}'" for x in DB_TYPES)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"""
            INSERT INTO "file" ("id", "created", "updated", "projectId", "platformId", "location",
                                "size", "type", "compression", "data", "fileName")
            SELECT 'D' || lpad(i::text, 20, '0'),
                   now() - make_interval(days => i % 90, secs => i % 86400),
                   now(),
                   'proj' || lpad((i % 500)::text, 17, '0'),
                   CASE WHEN i % 10 = 0 THEN 'plat' || lpad((i % 7)::text, 17, '0') END,
                   'DB', 48, (ARRAY[{types}])[1 + i % {len(DB_TYPES)}], 'NONE',
                   decode(repeat('ab', 48), 'hex'), 'f.json'
            FROM generate_series(1, {db_rows}) AS i
            """
        )
        with conn.cursor() as cur:
            with cur.copy(
                'COPY "file" ("id", "created", "updated", "projectId", "platformId", "location", '
                '"size", "s3Key", "type", "compression") FROM STDIN'
            ) as copy:
                for row in s3_rows:
                    copy.write_row(row)
        conn.execute('ANALYZE "file"')
        count = conn.execute('SELECT COUNT(*) FROM "file"').fetchone()[0]
    log(f"catalog: {count:,} rows seeded in {time.perf_counter() - t:.1f} s")


def make_s3_rows(n: int, platform_share: float, seed: int = 1) -> list[tuple]:
    from datetime import datetime, timedelta, timezone

    rnd = random.Random(seed)
    now = datetime.now(timezone.utc)
    projects = ["".join(rnd.choices(ALPHABET, k=21)) for _ in range(300)]
    platforms = ["".join(rnd.choices(ALPHABET, k=21)) for _ in range(5)]
    rows = []
    for i in range(n):
        file_id = "".join(rnd.choices(ALPHABET, k=21))
        file_type = EXEC_TYPES[i % len(EXEC_TYPES)]
        project = projects[i % len(projects)]
        platform = platforms[i % len(platforms)] if rnd.random() < platform_share else None
        key = f"platform/{platform}/{file_type}/{file_id}" if platform else f"project/{project}/{file_type}/{file_id}"
        created = now - timedelta(days=rnd.randint(0, 29))
        size = rnd.randint(1, 2000)
        rows.append((file_id, created, created, project, platform, "S3", size, key, file_type, "NONE"))
    return rows


def seed_objects(s3_rows: list[tuple], tree: Path, s3_env: dict[str, str], endpoint: str, workers: int) -> float:
    t = time.perf_counter()
    made: set[Path] = set()
    filler = b"x" * 2000
    for row in s3_rows:
        path = tree / row[7]
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(filler[: row[6]])
    log(f"objects: local tree of {len(s3_rows):,} files written in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    subprocess.run(["aws", "--endpoint-url", endpoint, "s3", "mb", f"s3://{BUCKET}"],
                   env=s3_env, check=True, capture_output=True)
    subprocess.run(
        [peer_binary("s5cmd"), "--endpoint-url", endpoint, "--numworkers", str(workers), "cp", f"{tree}/*", f"s3://{BUCKET}/"],
        env=s3_env, check=True, stdout=subprocess.DEVNULL,
    )
    upload = time.perf_counter() - t
    log(f"objects: uploaded with s5cmd cp in {upload:.1f} s")
    return upload


def timed(cmd: list[str], env: dict[str, str], ok_codes=(0,)) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def spread(samples: list[float]) -> str:
    return f"median {statistics.median(samples):6.2f} s  (min {min(samples):.2f}, max {max(samples):.2f}, n={len(samples)})"


def profile_verify(env: dict[str, str]) -> None:
    import cProfile
    import pstats

    from apstorage.config import load_settings
    from apstorage.services.context import Storage
    from apstorage.services.du import verify

    from apstorage.model import Location

    storage = Storage(load_settings(environ=env, dotenv_path="/nonexistent/.env"))
    # The listing runs in threads, which cProfile does not follow: profile it alone first.
    profiler = cProfile.Profile()
    t = time.perf_counter()
    profiler.enable()
    listed = sum(1 for _ in storage.store(Location.S3).list("project/"))
    profiler.disable()
    log(f"S3Store.list('project/') under cProfile: {listed:,} objects in {time.perf_counter() - t:.2f} s")
    stats = pstats.Stats(profiler, stream=sys.stderr)
    total = stats.total_tt

    def cumulative(path_end: str, func: str) -> float:
        return max((v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(path_end) and fn == func),
                   default=0.0)

    parse = cumulative("botocore/parsers.py", "parse")
    stamps = cumulative("dateutil/parser/_parser.py", "parse")
    log(f"  of which botocore response parsing {parse:.2f} s ({parse / total:.0%}), "
        f"in it dateutil timestamp parsing {stamps:.2f} s ({stamps / total:.0%}); "
        f"the rest (HTTP, signing, paginator) {total - parse:.2f} s")
    profiler = cProfile.Profile()
    t = time.perf_counter()
    profiler.enable()
    result = verify(storage, limit=10)
    profiler.disable()
    log(f"in-process verify under cProfile: {time.perf_counter() - t:.2f} s, ok={result.ok}")
    storage.close()
    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="catalog rows in all")
    parser.add_argument("--objects", type=int, default=100_000, help="of which S3 rows with an object")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg-url", help="an existing Postgres (default: a private pgserver)")
    parser.add_argument("--platform-share", type=float, default=0.0,
                        help="share of S3 rows keyed platform/... (default 0: all project/...)")
    parser.add_argument("--upload-workers", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="also profile verify in-process")
    args = parser.parse_args()
    if args.objects > args.rows:
        parser.error("--objects cannot exceed --rows")

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="du-bench-")))
        if args.pg_url:
            pg_url = args.pg_url
        else:
            pg_url = stack.enter_context(postgres_server()).url
        s3 = stack.enter_context(seaweedfs_server())
        import psycopg

        schema = f"du_bench_{os.getpid()}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        stack.callback(_drop_schema, pg_url, schema)
        url = _with_search_path(pg_url, schema)

        base = {k: v for k, v in os.environ.items() if not k.startswith(("AP_", "AWS_"))}
        s3_env = dict(base, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                      AWS_REGION=s3.region)
        ap_env = dict(
            base,
            AP_CONFIG_PATH=str(tmp / "home"),
            AP_POSTGRES_URL=url,
            AP_LOCAL_STORAGE_PATH=str(tmp / "local"),
            **s3.ap_env(BUCKET),
        )
        s3_rows = make_s3_rows(args.objects, args.platform_share)
        seed_catalog(url, ap_env, args.rows - args.objects, s3_rows)
        seed_objects(s3_rows, tmp / "tree", s3_env, s3.endpoint, args.upload_workers)
        shutil.rmtree(tmp / "tree", ignore_errors=True)
        expected_bytes = sum(r[6] for r in s3_rows)

        ap = [sys.executable, "-m", "apstorage"]
        cmds = {
            "apstorage du": (ap + ["du", "--json"], ap_env),
            "apstorage du --verify": (ap + ["du", "--verify", "--json"], ap_env),
            "s5cmd du": ([peer_binary("s5cmd"), "--endpoint-url", s3.endpoint, "du", f"s3://{BUCKET}/*"], s3_env),
        }
        # Warm-up: page cache, Postgres buffers, SeaweedFS metadata; and check the answers.
        _, out = timed(*cmds["apstorage du"])
        assert json.loads(out)["total"]["files"] == args.rows, out[:300]
        _, out = timed(*cmds["apstorage du --verify"])
        verified = json.loads(out)["verify"]
        s3_check = next(c for c in verified["locations"] if c["location"] == "S3")
        assert verified["ok"] and s3_check["objects"] == args.objects and s3_check["bytes"] == expected_bytes, verified
        _, out = timed(*cmds["s5cmd du"])
        assert f"{args.objects} objects" in out, out
        log(f"warm-up done; s5cmd says: {out.strip()}")

        samples: dict[str, list[float]] = {name: [] for name in cmds}
        for i in range(args.runs):
            for name, (cmd, env) in cmds.items():
                samples[name].append(timed(cmd, env)[0])
            log(f"run {i + 1}/{args.runs}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in samples.items()))

        # In-process (no interpreter start-up): the aggregate alone, and the S3 store's
        # listing alone (what verify cannot go faster than).
        from apstorage.config import load_settings
        from apstorage.model import Location
        from apstorage.services.context import Storage
        from apstorage.services.du import DuRequest, disk_usage

        inproc, listing = [], []
        with Storage(load_settings(environ=ap_env, dotenv_path="/nonexistent/.env")) as storage:
            storage.catalog  # connect first
            for _ in range(max(3, args.runs)):
                t = time.perf_counter()
                disk_usage(storage, DuRequest())
                inproc.append(time.perf_counter() - t)
            store = storage.store(Location.S3)
            for _ in range(args.runs):
                t = time.perf_counter()
                listed = sum(1 for prefix in ("platform/", "project/") for _ in store.list(prefix))
                listing.append(time.perf_counter() - t)
            assert listed == args.objects

        print(f"catalog rows: {args.rows:,}; S3 objects: {args.objects:,} "
              f"(platform/ share {args.platform_share:.0%}); machine: {os.cpu_count()} cores")
        for name, values in samples.items():
            print(f"{name:24s} {spread(values)}")
        print(f"{'du aggregate in-process':24s} {spread(inproc)}")
        print(f"{'S3Store.list in-process':24s} {spread(listing)}")
        s5 = statistics.median(samples["s5cmd du"])
        du_ratio = statistics.median(samples["apstorage du"]) / s5
        verify_ratio = statistics.median(samples["apstorage du --verify"]) / s5
        print(f"ratio du / s5cmd du          : {du_ratio:.2f} (target < 1)")
        print(f"ratio du --verify / s5cmd du : {verify_ratio:.2f} (target <= 1.5)")
        if args.profile:
            profile_verify(ap_env)
        return 0 if du_ratio < 1 and verify_ratio <= 1.5 else 1


def _with_search_path(url: str, schema: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"-csearch_path={schema}"
    return urlunsplit(parts._replace(query=urlencode(query)))


def _drop_schema(pg_url: str, schema: str) -> None:
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
