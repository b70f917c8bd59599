"""Concurrent `sweep-expired` runs on one Postgres catalog, behind S3 latency (issue 23).

A real S3 region answers tens of milliseconds away; the test servers answer in
microseconds. ``LatencyProxy`` is a TCP proxy on 127.0.0.1 in front of SeaweedFS that
holds every chunk the client sends for ``--latency-ms`` before passing it on (a delay
line: chunks keep their order and do not add up, so each request/response pays the delay
once, as a round trip to a region does). The runs go through it; seeding does not.

Each trial seeds ``--count`` expired S3 rows (COPY) and their objects (`s5cmd run`), then
starts 1, 2 or 4 `apstorage sweep-expired` processes at once on the same catalog (each
``--workers`` and ``--batch-size`` as given: what one host's run does) and times the first
start to the last exit. Trials go 1, 2, 4 then 4, 2, 1 in alternate rounds (the machine is
shared and noisy). Printed per N: files/s (median over rounds), the ratio to one run, the
CPU seconds (user+sys) of the apstorage processes, and a check that the runs' ``deleted``
add up to the expired count with every live row and object intact.

    python bench/sweep_scale.py [--count 4000] [--rounds 2] [--latency-ms 20] \
        [--batch-size 200] [--workers 2] [--runs 1,2,4]

``--plans ROWS`` also measures the claim query's plan-cache trap on a catalog of ROWS
expired rows: one lane's claim statement executed 30 times (psycopg prepares it after 5)
under Postgres's default ``plan_cache_mode`` and under ``force_custom_plan`` (what a lane
sets), and prints the generic plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s5cmd_peer import children_cpu, count_objects, s5cmd, seed_objects  # noqa: E402
from tests.servers import peer_binary, postgres_server, seaweedfs_server  # noqa: E402

HOST = "127.0.0.1"
MAX_CONNECTIONS = 512  # proxy: connections served at once; more wait for a slot
MAX_LIFETIME = 3 * 3600.0  # proxy: seconds before it stops by itself
TYPE = "FLOW_RUN_LOG"


class LatencyProxy:
    """127.0.0.1:<free port> -> ``upstream`` (host, port); every chunk from the client is
    held ``delay`` seconds before it is sent on (answers pass at once). Bounded: at most
    MAX_CONNECTIONS at a time, and it stops after MAX_LIFETIME seconds or on ``stop()``."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    def __enter__(self) -> "LatencyProxy":
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the latency proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stopping.set)
        self.thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        try:
            await asyncio.wait_for(self._stopping.wait(), MAX_LIFETIME)
        except asyncio.TimeoutError:
            pass
        server.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pipe(reader, up_writer, self.delay), self._pipe(up_reader, writer, 0.0),
                                 return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        """Copy reader to writer; with ``delay``, each chunk leaves ``delay`` s after it
        arrived (a queue drained in order by a second task)."""
        if not delay:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof() if writer.can_write_eof() else None
            return
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def drain() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if chunk is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(drain())
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, chunk))
        finally:
            queue.put_nowait((loop.time() + delay, None))
            await sender


def seed_rows(pg_url: str, prefix: str, count: int, age: timedelta) -> None:
    import psycopg

    now = datetime.now(timezone.utc)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.cursor().copy(
            'COPY "file" ("id", "created", "updated", "projectId", "location", "size", "s3Key", "type") FROM STDIN'
        ) as copy:
            for i in range(count):
                file_id = f"{prefix}{i:08d}"
                created = now - age - timedelta(seconds=i)
                copy.write_row((file_id, created, created, f"proj{i % 50:03d}", "S3", 256,
                                key_of(prefix, i), TYPE))
        conn.execute('ANALYZE "file"')


def key_of(prefix: str, i: int) -> str:
    return f"project/proj{i % 50:03d}/{TYPE}/{prefix}{i:08d}"


def row_count(pg_url: str, like: str) -> int:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute('SELECT count(*) FROM "file" WHERE "id" LIKE %s', (like,)).fetchone()[0]


def plan_check(pg_url: str, rows: int) -> None:
    """The claim statement 30 times on one connection (prepared by psycopg after 5), under
    the default plan_cache_mode and under force_custom_plan; ms per execution, and the
    generic plan Postgres may switch to."""
    import psycopg
    import psycopg.sql

    from apstorage.catalog import sweep as sql

    class _Ph:
        ph = "%s"

    text = sql.expired_page_sql(_Ph(), by_project=False, after=True, limit=1000) + " FOR UPDATE SKIP LOCKED"
    seed_rows(pg_url, "P", rows, timedelta(days=60))
    now = datetime.now(timezone.utc)
    cutoff = now - timedelta(days=30)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        keys = conn.execute('SELECT "created", "id" FROM "file" WHERE "id" LIKE %s ORDER BY "created", "id"',
                            ("P%",)).fetchall()
    for mode in ("auto", "force_custom_plan", "auto", "force_custom_plan"):
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a fresh session: nothing prepared yet
            conn.execute(f"SET plan_cache_mode = {mode}")
            times = []
            for n in range(30):
                after = keys[(n * len(keys)) // 30]
                start = time.perf_counter()
                with conn.transaction():
                    conn.execute(text, (TYPE, cutoff, after[0], after[0], after[1]), prepare=True).fetchall()
                times.append((time.perf_counter() - start) * 1000)
        print(f"  claim query, plan_cache_mode={mode:<17}: executions 1-5 median {statistics.median(times[:5]):6.2f} ms, "
              f"10-30 median {statistics.median(times[9:]):6.2f} ms, max {max(times[9:]):6.2f} ms")
    numbered = text
    for i in range(1, 6):
        numbered = numbered.replace("%s", f"${i}", 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE claim_generic AS {numbered}")
        for label, mode in (("generic", "force_generic_plan"), ("custom", "force_custom_plan")):
            conn.execute(f"SET plan_cache_mode = {mode}")
            values = psycopg.sql.SQL(", ").join(
                psycopg.sql.Literal(v) for v in (TYPE, cutoff, keys[0][0], keys[0][0], keys[0][1]))
            plan = conn.execute(psycopg.sql.SQL(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE claim_generic({})").format(values)).fetchall()
            print(f"  {label} plan:\n" + "\n".join("    " + r[0] for r in plan))
        conn.execute('DELETE FROM "file" WHERE "id" LIKE %s', ("P%",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4000, help="expired rows (with S3 objects) per trial")
    parser.add_argument("--live", type=int, default=1000, help="live rows with objects (kept throughout)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every request to SeaweedFS")
    parser.add_argument("--batch-size", type=int, default=200, help="sweep-expired --batch-size of each run")
    parser.add_argument("--workers", type=int, default=2, help="sweep-expired --workers of each run")
    parser.add_argument("--delete-batch", type=int, default=None,
                        help="AP_S3_DELETE_BATCH_SIZE (keys per DeleteObjects; default: apstorage's)")
    parser.add_argument("--runs", default="1,2,4", help="concurrent runs to compare")
    parser.add_argument("--plans", type=int, default=0, metavar="ROWS", help="also measure the claim query's plans")
    args = parser.parse_args()
    runs = [int(x) for x in args.runs.split(",")]
    try:
        peer_binary("s5cmd")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ap-bench-sweep-scale-"))
    try:
        with postgres_server() as pg, seaweedfs_server() as s3:
            up = urlsplit(s3.endpoint)
            with LatencyProxy((up.hostname or HOST, up.port or 80), args.latency_ms / 1000) as proxy:
                return _bench(args, runs, pg, s3, proxy, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, runs: list[int], pg, s3, proxy: LatencyProxy, tmp: Path) -> int:
    bucket = "ap-scale"
    s5cmd(s3, "mb", f"s3://{bucket}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    env.update(AP_POSTGRES_URL=pg.url, AP_CONFIG_PATH=str(tmp / "home"), **s3.ap_env(bucket))
    env["AP_S3_ENDPOINT"] = f"http://{HOST}:{proxy.port}"
    if args.delete_batch:
        env["AP_S3_DELETE_BATCH_SIZE"] = str(args.delete_batch)
    subprocess.run([sys.executable, "-m", "apstorage", "init"], env=env, check=True, capture_output=True)
    if args.plans:
        print(f"claim query plans over {args.plans:,} expired rows:")
        plan_check(pg.url, args.plans)
    seed_objects(s3, tmp, [(bucket, key_of("L", i)) for i in range(args.live)], 256, 64)
    seed_rows(pg.url, "L", args.live, timedelta(hours=1))

    print(f"{args.count:,} expired rows per trial, {args.live:,} live; each run --batch-size {args.batch_size} "
          f"--workers {args.workers}; +{args.latency_ms:g} ms per request to SeaweedFS (loopback proxy)", flush=True)

    figures: dict[int, list[tuple[float, float]]] = {n: [] for n in runs}
    ok = True
    trial = 0
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else list(reversed(runs))
        for n in order:
            trial += 1
            prefix = f"T{trial:03d}E"
            seed_objects(s3, tmp, [(bucket, key_of(prefix, i)) for i in range(args.count)], 256, 64)
            seed_rows(pg.url, prefix, args.count, timedelta(days=60))
            cmd = [sys.executable, "-m", "apstorage", "sweep-expired", "--json",
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
            cpu0, start = children_cpu(), time.perf_counter()
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(n)]
            outs = [p.communicate(timeout=3600) for p in procs]
            seconds, cpu = time.perf_counter() - start, children_cpu() - cpu0
            reports = []
            for p, (out, err) in zip(procs, outs):
                if p.returncode != 0:
                    raise SystemExit(f"sweep-expired exited {p.returncode}: {err}")
                reports.append(json.loads(out))
            deleted = [rep["deleted"] for rep in reports]
            left = row_count(pg.url, prefix + "%")
            live_rows = row_count(pg.url, "L%")
            objects = count_objects(s3, bucket)
            good = sum(deleted) == args.count and left == 0 and live_rows == args.live and objects == args.live
            ok &= good
            figures[n].append((args.count / seconds, cpu))
            print(f"round {r + 1} {n} run(s): {seconds:6.2f} s  {args.count / seconds:7,.0f} files/s  "
                  f"CPU {cpu:5.2f} s  deleted per run {deleted}  check {'OK' if good else 'MISMATCH'}", flush=True)
    base = statistics.median(f for f, _ in figures[runs[0]])
    print("summary (medians over rounds):")
    for n in runs:
        rate = statistics.median(f for f, _ in figures[n])
        cpu = statistics.median(c for _, c in figures[n])
        print(f"  {n} concurrent run(s): {rate:7,.0f} files/s  x{rate / base:4.2f} vs {runs[0]}  "
              f"CPU {cpu:5.2f} s (all runs)")
    print(f"check: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
