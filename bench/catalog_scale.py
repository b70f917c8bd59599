"""The catalog at scale: `du`, `sweep-expired --dry-run` and the sweep's queries over a
``file`` table of ``--rows`` rows (default 10,000,000) in a real Postgres.

The table is shaped like a platform's: created over ``--days`` days (default 90) in
insertion order (the platform appends as it runs), execution data of the six expiring
types (~88 %), flow bundles and permanent files (~12 %), 5,000 projects on 50 platforms,
90 % of execution data in S3 (``s3Key`` set, ``data`` NULL: the bytes are in the bucket)
and the rest in DB with a small payload; permanent files in DB; one row in 100,000 shares
its object with another row (``SHARE_SQL``). It is made by
``apstorage init`` (table and indexes), then filled with one ``INSERT ... SELECT
generate_series`` with the indexes dropped and rebuilt afterwards from their own
definitions (what a bulk load does; the result is the same table), then ``VACUUM
ANALYZE`` (what autovacuum does to a table that has been written to).

Timings run the real CLI as a child process (``python -m apstorage ...``), ``--runs``
times each, alternating: wall time, CPU seconds (user + sys of the child) and peak RSS
(``ru_maxrss`` of the child from ``wait4``, which is exact, where polling with psutil could
miss the peak). Then the queries the commands run are captured from the catalog functions
themselves (a recording wrapper around the catalog's ``_execute``, the same SQL and
parameters) and shown with ``EXPLAIN (ANALYZE, BUFFERS)``; the sweep's page and reference
queries also as the generic plan a prepared statement gets after psycopg prepares it (5
executions) and Postgres' plan cache switches (5 more).

    python bench/catalog_scale.py [--rows 10000000] [--runs 3] [--pg-url URL] [--reuse]
                                  [--no-dry-run] [--explain-only]

``--pg-url`` uses an existing server (default: a private pgserver, removed at the end);
the catalog is the database ``apstorage_scale_<rows>`` on it, and ``--reuse`` keeps one
that already holds that many rows instead of building it again (its data and settings are
left as they are: run the bench once without it for figures from a fresh table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import postgres_server  # noqa: E402

PROJECTS = 5000
PLATFORMS = 50

# (type, share in thousandths, location rule): "mix" = 90 % S3, 10 % DB; "db" = always DB
TYPE_MIX = [
    ("FLOW_RUN_LOG", 350, "mix"),
    ("FLOW_STEP_FILE", 200, "mix"),
    ("TRIGGER_PAYLOAD", 150, "mix"),
    ("WEBHOOK_PAYLOAD", 100, "mix"),
    ("FLOW_RUN_LOG_SLICE", 50, "mix"),
    ("TRIGGER_EVENT_FILE", 30, "mix"),
    ("FLOW_BUNDLE", 50, "mix"),
    ("SAMPLE_DATA", 40, "db"),
    ("PACKAGE_ARCHIVE", 10, "db"),
    ("FLOW_VERSION_BACKUP", 10, "db"),
    ("UNKNOWN", 10, "db"),
]
assert sum(share for _, share, _ in TYPE_MIX) == 1000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def _type_case() -> str:
    """SQL: the type of row i from h = a hash of i in [0, 1000)."""
    out, low = [], 0
    for name, share, _ in TYPE_MIX:
        out.append(f"WHEN h < {low + share} THEN '{name}'")
        low += share
    return "CASE " + " ".join(out) + " END"


def _db_only() -> str:
    return ", ".join(f"'{name}'" for name, _, rule in TYPE_MIX if rule == "db")


def seed(url: str, rows: int, days: int, env: dict[str, str]) -> None:
    """Make the table with `apstorage init`, fill it with ``rows`` rows, rebuild the
    indexes, VACUUM ANALYZE."""
    import psycopg

    proc = subprocess.run([sys.executable, "-m", "apstorage", "init", "--json"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"apstorage init exited {proc.returncode}: {proc.stderr}")
    log(f"init: {proc.stdout.strip()}")
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        defs = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname, pg_get_constraintdef(con.oid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'p' "
            "WHERE i.indrelid = 'file'::regclass"
        ).fetchall()
        for name, _, con, _ in defs:
            if con:
                conn.execute(f'ALTER TABLE "file" DROP CONSTRAINT "{con}"')
            else:
                conn.execute(f'DROP INDEX "{name}"')
        conn.execute("SET synchronous_commit = off")
        span = days * 86400
        insert = f"""
            INSERT INTO "file" ("id", "created", "updated", "projectId", "platformId", "data",
                                "location", "fileName", "size", "metadata", "s3Key", "type",
                                "compression")
            SELECT id, created, created, project, platform,
                   CASE WHEN loc = 'DB' THEN substring(filler FROM 1 FOR dbsize) END,
                   loc, 'output.json',
                   CASE WHEN loc = 'DB' THEN dbsize ELSE s3size END,
                   NULL,
                   CASE WHEN loc = 'S3' THEN 'platform/' || platform || '/' || t || '/' || id END,
                   t, 'NONE'
            FROM (
                SELECT g.i, substr(md5(g.i::text), 1, 21) AS id,
                       now() - make_interval(secs => {span}) + make_interval(secs => (g.i::float8 * {span}) / {rows}) AS created,
                       'p' || lpad(((g.i * 7919) % {PROJECTS})::text, 20, '0') AS project,
                       'P' || lpad((((g.i * 7919) % {PROJECTS}) % {PLATFORMS})::text, 20, '0') AS platform,
                       t, 
                       CASE WHEN t IN ({_db_only()}) OR (g.i * 40503) % 10 = 0 THEN 'DB' ELSE 'S3' END AS loc,
                       (64 + (g.i * 104729) % 448)::int AS dbsize,
                       (200 + (g.i * 1299709) % 60000)::int AS s3size,
                       f.filler
                FROM generate_series(0::bigint, {rows - 1}) AS g(i)
                CROSS JOIN LATERAL (SELECT (g.i * 2654435761) % 1000 AS h) AS hh
                CROSS JOIN LATERAL (SELECT {_type_case()} AS t) AS tt
                CROSS JOIN (SELECT decode(repeat('5b7b226b223a2276227d2c', 48), 'hex') AS filler) AS f
            ) AS s
        """
        step = 2_000_000
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            conn.execute(insert.replace(f"generate_series(0::bigint, {rows - 1})", f"generate_series({start}::bigint, {stop - 1})"))
            log(f"seed: {stop:,}/{rows:,} rows ({time.perf_counter() - t0:.0f} s)")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for name, indexdef, con, condef in defs:
            t = time.perf_counter()
            if con:
                conn.execute(f'ALTER TABLE "file" ADD CONSTRAINT "{con}" {condef}')
            else:
                conn.execute(indexdef)
            log(f"seed: index {name} rebuilt in {time.perf_counter() - t:.0f} s")
        conn.execute(SHARE_SQL.format(rows=rows))
        t = time.perf_counter()
        conn.execute('VACUUM ANALYZE "file"')
        log(f"seed: VACUUM ANALYZE in {time.perf_counter() - t:.0f} s; {rows:,} rows in "
            f"{time.perf_counter() - t0:.0f} s in all")


# One row in 100,000 shares its bytes with the row before it (its s3Key is that row's key,
# which does not end in its own id): what a copy of a file made by pointing at the same
# object looks like, and what the sweep's shared-key checks are there for.
SHARE_EVERY = 100_000
SHARE_SQL = f"""
    UPDATE "file" AS f SET "s3Key" = o."s3Key", "location" = 'S3', "data" = NULL, "size" = o."size"
    FROM generate_series(7::bigint, {{rows}} - 1, {SHARE_EVERY}) AS g(i)
    JOIN "file" AS o ON o."id" = substr(md5((g.i - 1)::text), 1, 21)
    WHERE f."id" = substr(md5(g.i::text), 1, 21) AND o."s3Key" IS NOT NULL
"""


def catalog_rows(url: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('file')").fetchone()[0] is None:
                return None
            return int(conn.execute('SELECT count(*) FROM "file"').fetchone()[0])
    except psycopg.OperationalError:
        return None


def ensure_database(server_url: str, dbname: str, *, drop: bool) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists and drop:
            conn.execute(f'DROP DATABASE "{dbname}"')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{dbname}"')


# -- timing the CLI ---------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall s, CPU s (user+sys) and peak RSS (MiB) of the child, its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024,
            "stdout": stdout, "stderr": stderr}


def med(samples: list[dict], field: str) -> float:
    return statistics.median(s[field] for s in samples)


# -- capturing and explaining the queries ------------------------------------------------------


class Recorder:
    """Wraps a catalog's ``_execute`` (and its transactions' cursors): every statement the
    catalog functions run is kept, in order, with its parameters."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.statements: list[tuple[str, tuple]] = []
        self._execute = catalog._execute
        self._transaction = catalog.transaction
        catalog._execute = self.execute
        catalog.transaction = self.transaction

    def execute(self, sql: str, params: tuple = (), **kw):
        self.statements.append((sql, tuple(params)))
        return self._execute(sql, params, **kw)

    @contextlib.contextmanager
    def transaction(self):
        with self._transaction() as cur:
            recorder = self

            class Cursor:
                def execute(self, sql, params=()):
                    recorder.statements.append((sql, tuple(params)))
                    return cur.execute(sql, params)

                def __getattr__(self, name):
                    return getattr(cur, name)

            yield Cursor()

    def take(self) -> list[tuple[str, tuple]]:
        out, self.statements = self.statements, []
        return out


def _dollar(sql: str) -> str:
    """%s placeholders → $1, $2 ... as psycopg sends a statement to the server."""
    n = iter(range(1, 1000))
    return re.sub(r"%s", lambda _m: f"${next(n)}", sql)


def explain(conn, title: str, sql: str, params: tuple, *, how: str = "plain") -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of one statement, rolled back (a DELETE deletes nothing).

    ``how``: "plain" (planned for these parameters); "generic" (the generic plan of it
    prepared by psycopg: what Postgres' plan cache switches a prepared statement to after 5
    runs when it looks no dearer, with plan_cache_mode at its default); "catalog" (``conn``
    is the catalog's own connection, where psycopg has prepared the statement after 5 runs:
    the plan that connection runs, with its settings)."""
    import psycopg

    label = {"plain": "", "generic": " (generic plan, plan_cache_mode=auto would pick it)",
             "catalog": " (as the catalog's connection runs it, prepared)"}[how]
    args = ", ".join(["%s"] * len(params))
    with conn.transaction(force_rollback=True):
        if how == "generic":
            # Prepared by psycopg itself (its parameter types), then explained by name.
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.execute(sql, params, prepare=True)
            (name,) = conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE NOT from_sql ORDER BY prepare_time DESC LIMIT 1"
            ).fetchone()
        elif how == "catalog":
            found = conn.execute(
                "SELECT name FROM pg_prepared_statements WHERE NOT from_sql AND statement = %s",
                (_dollar(sql),), prepare=False,
            ).fetchone()
            if found is None:
                print(f"\n--- {title}{label}: not prepared on the catalog's connection")
                return []
            (name,) = found
            mode = conn.execute("SHOW plan_cache_mode", prepare=False).fetchone()[0]
            label += f", plan_cache_mode={mode}"
        if how == "plain":
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params, prepare=False).fetchall()
        else:
            literal = psycopg.ClientCursor(conn).mogrify(f"EXECUTE {name}({args})", params)
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {literal}", prepare=False).fetchall()
    lines = [r[0] for r in rows]
    print(f"\n--- {title}{label}")
    shown = sql if len(sql) < 400 else sql[:400] + " ..."
    print(f"    SQL: {' '.join(shown.split())}")
    for line in lines:
        print(f"    {line if len(line) <= 240 else line[:240] + ' ...'}")
    seq = [l.strip() for l in lines if "Seq Scan" in l]
    if seq:
        print(f"    !! sequential scan: {seq[0]}")
    return lines


def explain_queries(url: str, env: dict[str, str]) -> dict[str, float]:
    """Capture the queries of du, the sweep (pages, shared keys, references, delete) from the
    catalog functions and EXPLAIN them. Returns {name: execution ms} of the plain plans."""
    import psycopg

    from apstorage.catalog import du as du_sql
    from apstorage.catalog import refs
    from apstorage.catalog import sweep as sweep_sql
    from apstorage.config import load_settings
    from apstorage.services.context import Storage
    from apstorage.services.sweep import DEFAULT_BATCH_SIZE
    from datetime import datetime, timedelta, timezone

    settings = load_settings(environ=env, dotenv_path="/nonexistent/.env")
    timings: dict[str, float] = {}

    def record(name: str, sql: str, params: tuple, how: str = "plain") -> None:
        lines = explain(catalog.conn if how == "catalog" else conn, name, sql, params, how=how)
        for line in lines:
            m = re.match(r"Execution Time: ([\d.]+) ms", line.strip())
            if m:
                timings[name + ("" if how == "plain" else f" ({how})")] = float(m.group(1))

    with Storage(settings) as storage, psycopg.connect(url, autocommit=True) as conn:
        catalog = storage.catalog
        rec = Recorder(catalog)
        # du: the aggregate (default grouping) and the footprint
        du_sql.usage(catalog, ("location", "type"), du_sql.UsageFilter())
        for sql, params in rec.take():
            record("du: usage by location,type", sql, params)
        du_sql.usage(catalog, ("project",), du_sql.UsageFilter(types=("FLOW_RUN_LOG",)))
        for sql, params in rec.take():
            record("du --by project --type FLOW_RUN_LOG", sql, params)
        du_sql.footprint(catalog)
        for i, (sql, params) in enumerate(rec.take()):
            if "pg_class" in sql or "pg_extension" in sql:
                continue
            counting = sql.strip() == 'SELECT COUNT(*) FROM "file"'
            record(f"du: footprint {'COUNT(*) (only a filtered du runs it)' if counting else 'sample'}", sql, params)
        # sweep: the first page, a page further on, the count, shared keys, references, delete
        cutoff = datetime.now(timezone.utc) - timedelta(days=settings.execution_data_retention_days)
        first = sweep_sql.select_expired(catalog, "FLOW_RUN_LOG", cutoff, limit=DEFAULT_BATCH_SIZE)
        (sql, params), = rec.take()
        record("sweep: first page", sql, params)
        after = None
        pages = 0
        rows = first
        for _ in range(200):  # a page some way into the expired range (7 or more: prepared)
            after = (rows[-1].created, rows[-1].id)
            more = sweep_sql.select_expired(catalog, "FLOW_RUN_LOG", cutoff, limit=DEFAULT_BATCH_SIZE, after=after)
            if len(more) < DEFAULT_BATCH_SIZE:
                break
            rows = more
            pages += 1
        sql, params = rec.take()[-1]
        record(f"sweep: page {pages + 1} (after a keyset cursor)", sql, params)
        record(f"sweep: page {pages + 1} (after a keyset cursor)", sql, params, how="generic")
        record(f"sweep: page {pages + 1} (after a keyset cursor)", sql, params, how="catalog")
        sweep_sql.count_expired(catalog, "FLOW_RUN_LOG", cutoff)
        (sql, params), = rec.take()
        record("sweep: count (progress total)", sql, params)
        t = time.perf_counter()
        shared = refs.shared_keys(catalog)
        took = time.perf_counter() - t
        (sql, params), = rec.take()
        print(f"\nrefs.shared_keys: {len(shared)} shared keys in {took:.1f} s")
        record("sweep: refs.shared_keys (once per run)", sql, params)
        keys = [r.s3_key for r in rows if r.s3_key]
        refs.rows_referencing(None, catalog, keys[: refs.CHUNK])
        sql, params = rec.take()[0]
        record("sweep: refs.rows_referencing (a batch's keys)", sql, params)
        record("sweep: refs.rows_referencing (a batch's keys)", sql, params, how="generic")
        ids = {"S3": [r.id for r in rows if r.location == "S3"], "DB": [r.id for r in rows if r.location == "DB"]}
        # the delete: captured inside a transaction that is rolled back
        with contextlib.suppress(_Rollback), catalog.conn.transaction():
            sweep_sql.delete_rows(catalog, ids)
            raise _Rollback
        sql, params = rec.take()[0]
        record("sweep: delete_rows (one batch, rolled back)", sql, params)
    return timings


class _Rollback(Exception):
    pass


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90, help="created dates spread over this many days")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each du command")
    parser.add_argument("--dry-runs", type=int, default=1, help="timed runs of sweep-expired --dry-run")
    parser.add_argument("--pg-url", help="an existing Postgres server (default: a private pgserver)")
    parser.add_argument("--reuse", action="store_true", help="keep apstorage_scale_<rows> if it holds that many rows")
    parser.add_argument("--no-dry-run", action="store_true", help="skip sweep-expired --dry-run")
    parser.add_argument("--explain-only", action="store_true", help="only the EXPLAIN part")
    parser.add_argument("--no-explain", action="store_true", help="skip the EXPLAIN part")
    parser.add_argument("--seed-only", action="store_true", help="build the catalog and stop")
    parser.add_argument("--code", default=str(ROOT),
                        help="PYTHONPATH of the timed CLI (e.g. an earlier commit's apstorage/, "
                             "from `git archive`, for before/after figures); default: this checkout")
    args = parser.parse_args()
    if args.rows < 10_000:
        parser.error("--rows: at least 10000")

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="catalog-scale-")))
        server = args.pg_url or stack.enter_context(postgres_server()).url
        dbname = f"apstorage_scale_{args.rows}"
        url = with_database(server, dbname)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AP_", "AWS_"))}
        env = dict(base, AP_CONFIG_PATH=str(tmp / "home"), AP_DB_TYPE="POSTGRES", AP_POSTGRES_URL=url,
                   PYTHONPATH=args.code, AP_EXECUTION_DATA_RETENTION_DAYS="30",
                   AP_PAUSED_FLOW_TIMEOUT_DAYS="30")
        have = None
        if args.reuse:
            ensure_database(server, dbname, drop=False)
            have = catalog_rows(url)
        if have != args.rows:
            ensure_database(server, dbname, drop=True)
            seed(url, args.rows, args.days, env)
        else:
            log(f"reusing {dbname}: {have:,} rows")
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('file')), "
                                "pg_size_pretty(pg_relation_size('file')), pg_size_pretty(pg_indexes_size('file'))").fetchone()
            version = conn.execute("SHOW server_version").fetchone()[0]
            shared_buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
        print(f"catalog: {args.rows:,} rows over {args.days} days; file table {size[0]} "
              f"(heap {size[1]}, indexes {size[2]}); Postgres {version}, shared_buffers {shared_buffers}; "
              f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")

        if args.seed_only:
            return 0
        results: dict[str, list[dict]] = {}
        if not args.explain_only:
            ap = [sys.executable, "-m", "apstorage"]
            cmds = {"du": ap + ["du"], "du --json": ap + ["du", "--json"],
                    "du --by project --json": ap + ["du", "--by", "project", "--json"]}
            if not args.no_dry_run:
                cmds["sweep-expired --dry-run --json"] = ap + ["sweep-expired", "--dry-run", "--json"]
            run_child(cmds["du --json"], env)  # warm the page cache
            for i in range(max(args.runs, args.dry_runs)):
                for name, cmd in cmds.items():
                    if i >= (args.dry_runs if name.startswith("sweep") else args.runs):
                        continue
                    sample = run_child(cmd, env)
                    results.setdefault(name, []).append(sample)
                    extra = ""
                    if name == "du --json":
                        total = json.loads(sample["stdout"])["total"]["files"]
                        assert total == args.rows, (total, args.rows)
                    if name.startswith("sweep"):
                        data = json.loads(sample["stdout"])
                        sample["rows"] = data["deleted"]
                        extra = f", {data['deleted']:,} rows ({data['deleted'] / sample['wall']:,.0f} rows/s)"
                    log(f"round {i + 1}: {name}: {sample['wall']:.2f} s, {sample['cpu']:.2f} s CPU, "
                        f"{sample['rss']:.0f} MiB peak RSS{extra}")

        timings = {} if args.no_explain else explain_queries(url, env)

        print(f"\n=== summary: {args.rows:,} rows ({args.runs} runs each, medians) ===")
        for name, samples in results.items():
            line = (f"{name:34s} {med(samples, 'wall'):7.2f} s wall  {med(samples, 'cpu'):6.2f} s CPU  "
                    f"{max(s['rss'] for s in samples):6.0f} MiB peak RSS")
            if name.startswith("sweep"):
                line += f"  {samples[0]['rows']:,} rows, {samples[0]['rows'] / med(samples, 'wall'):,.0f} rows/s"
            print(line)
        for name, ms in timings.items():
            print(f"{'EXPLAIN ANALYZE ' + name:70s} {ms:10.1f} ms")
        ok = True
        if "du --json" in results and med(results["du --json"], "wall") >= 10:
            print("du --json took 10 s or more (target < 10 s)")
            ok = False
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
