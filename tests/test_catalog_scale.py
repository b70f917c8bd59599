"""The catalog queries made for large tables (bench/catalog_scale.py, README "Scale,
measured") give the same answers as the plain definitions, on real Postgres and SQLite.

- ``refs.shared_keys`` (Postgres: only foreign-keyed rows and the rows their keys name)
  equals the keys a brute-force count over every row finds, with and without the partial
  index ``init`` makes, across the odd cases: the same ``s3Key`` twice, an ``s3Key`` that is
  another row's derived key, legacy type names, empty ``s3Key``, ids holding ``/``, rows
  with no owner;
- ``refs.rows_referencing`` finds exactly the rows at each key, likewise;
- the partial index's predicate is the one the queries use word for word (the planner can
  serve both from it), ``init`` creates it on a new table and only reports it on an
  existing one;
- ``du``'s figures and footprint are unchanged by counting rows once;
- the catalog's connection plans each statement for its parameters.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from apstorage.catalog import refs
from apstorage.catalog import sweep as sweep_sql
from apstorage.cli import app
from apstorage.services.context import Storage
from apstorage.services.du import DuRequest, disk_usage
from tests.conftest import settings_from

NOW = datetime.now(timezone.utc)
INDEX = "idx_file_s3_key_foreign"

# (id, location, s3Key, type, projectId, platformId)
ROWS = [
    # ordinary rows: s3Key is the derived key (what the platform writes), or none (DB)
    ("a1", "S3", "platform/P1/FLOW_RUN_LOG/a1", "FLOW_RUN_LOG", "p1", "P1"),
    ("a2", "S3", "project/p1/TRIGGER_PAYLOAD/a2", "TRIGGER_PAYLOAD", "p1", None),
    ("a3", "DB", None, "FLOW_RUN_LOG", "p1", "P1"),
    ("a4", "LOCAL", "project/p2/FLOW_STEP_FILE/a4", "FLOW_STEP_FILE", "p2", None),
    # b2 points at a1's object: a shared key, held by an ordinary row and a foreign one
    ("b2", "S3", "platform/P1/FLOW_RUN_LOG/a1", "FLOW_RUN_LOG", "p1", "P1"),
    # d1 (no s3Key, a legacy type name) and d2 whose s3Key is d1's derived key
    ("d1", "DB", None, "STEP_FILE", "p3", None),
    ("d2", "S3", "project/p3/FLOW_STEP_FILE/d1", "FLOW_STEP_FILE", "p3", None),
    # two foreign rows sharing a key whose last segment names no row
    ("e1", "S3", "copies/shared-object", "FLOW_RUN_LOG", "p1", None),
    ("e2", "LOCAL", "copies/shared-object", "FLOW_RUN_LOG", "p1", None),
    # a foreign row alone on its key; and one naming a row whose own key differs
    ("f1", "S3", "copies/only-me", "FLOW_RUN_LOG", "p1", None),
    ("f2", "S3", "project/p9/FLOW_RUN_LOG/a2", "FLOW_RUN_LOG", "p9", None),
    # empty s3Key counts as unset: the derived key, not ''
    ("g1", "S3", "", "FLOW_RUN_LOG", "p4", None),
    ("g2", "S3", "", "FLOW_RUN_LOG", "p4", None),
    # g3 holds g1's derived key
    ("g3", "S3", "project/p4/FLOW_RUN_LOG/g1", "FLOW_RUN_LOG", "p4", None),
    # ids holding "/" and rows with no owner
    ("h/1", "S3", "project/p5/FLOW_RUN_LOG/h/1", "FLOW_RUN_LOG", "p5", None),
    ("1", "S3", "project/p5/FLOW_RUN_LOG/h/1", "FLOW_RUN_LOG", "p5", None),
    ("n1", "DB", None, "UNKNOWN", None, None),
    ("n2", "S3", None, "FLOW_RUN_LOG", None, None),
    # an s3Key ending in the id without a "/" before it is foreign too
    ("k1", "S3", "project/p6/FLOW_RUN_LOG/xk1", "FLOW_RUN_LOG", "p6", None),
    ("xk1", "DB", None, "FLOW_RUN_LOG", "p6", None),
]


def python_key(row: tuple) -> str | None:
    file_id, _, s3_key, file_type, project, platform = row
    return s3_key if s3_key else refs.derived_key(file_id, file_type, project, platform)


def brute_shared() -> set[str]:
    counts = Counter(k for k in map(python_key, ROWS) if k is not None)
    return {k for k, n in counts.items() if n > 1}


def brute_referencing(keys: list[str]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for row in ROWS:
        key = python_key(row)
        if key in keys and row[1] in refs.KEYED_LOCATIONS:
            out.setdefault(key, set()).add((row[0], row[1]))
    return out


@pytest.fixture(params=["postgres", "postgres-without-index", "sqlite"])
def catalog(request, make_env):
    if request.param == "sqlite":
        env = make_env()
    else:
        env = make_env(AP_POSTGRES_URL=request.getfixturevalue("pg_url"))
    storage = Storage(settings_from(env))
    catalog = storage.catalog
    catalog.init_schema()
    if request.param == "postgres-without-index":
        catalog._execute(f'DROP INDEX "{INDEX}"')  # the platform's own table: no such index
    p = catalog.ph
    with catalog.transaction() as cur:
        for file_id, location, s3_key, file_type, project, platform in ROWS:
            cur.execute(
                f'INSERT INTO "file" ("id", "created", "updated", "location", "s3Key", "type", '
                f'"projectId", "platformId", "size") VALUES ({", ".join([p] * 9)})',
                (file_id, catalog._ts_in(NOW), catalog._ts_in(NOW), location, s3_key, file_type,
                 project, platform, 10),
            )
    yield catalog
    storage.close()


def test_shared_keys_are_the_keys_several_rows_hold(catalog) -> None:
    expected = brute_shared()
    # the cases above: b2/a1, d2/d1 (legacy type), e1/e2, g3/g1 (empty s3Key), h/1 and 1,
    # k1/xk1
    assert expected == {
        "platform/P1/FLOW_RUN_LOG/a1", "project/p3/FLOW_STEP_FILE/d1", "copies/shared-object",
        "project/p4/FLOW_RUN_LOG/g1", "project/p5/FLOW_RUN_LOG/h/1", "project/p6/FLOW_RUN_LOG/xk1",
    }
    assert refs.shared_keys(catalog) >= expected
    if catalog.dialect == "postgres":
        assert refs.shared_keys(catalog) == expected


def test_rows_referencing_finds_exactly_the_rows_at_each_key(catalog) -> None:
    keys = sorted({k for k in map(python_key, ROWS) if k is not None} | {"copies/nobody", "project/p1/X/a1"})
    found = refs.rows_referencing(None, catalog, keys)
    assert {k: set(v) for k, v in found.items()} == brute_referencing(keys)
    found = refs.rows_referencing(None, catalog, keys, exclude=["a1", "e1"])
    expected = {k: {r for r in v if r[0] not in ("a1", "e1")} for k, v in brute_referencing(keys).items()}
    assert {k: set(v) for k, v in found.items()} == {k: v for k, v in expected.items() if v}


class _Recorder:
    def __init__(self, catalog) -> None:
        self.statements: list[tuple[str, tuple]] = []
        inner = catalog._execute

        def execute(sql, params=(), **kw):
            self.statements.append((sql, tuple(params)))
            return inner(sql, params, **kw)

        catalog._execute = execute
        outer = catalog.transaction
        recorder = self

        import contextlib

        @contextlib.contextmanager
        def transaction():
            with outer() as cur:
                class Cursor:
                    def execute(self, sql, params=()):
                        if not sql.startswith("SET LOCAL"):
                            recorder.statements.append((sql, tuple(params)))
                        return cur.execute(sql, params)

                    def __getattr__(self, name):
                        return getattr(cur, name)

                yield Cursor()

        catalog.transaction = transaction


def _plan(catalog, sql: str, params: tuple) -> str:
    with catalog.transaction() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(f"EXPLAIN {sql}", params)
        return "\n".join(r[0] for r in cur.fetchall())


def test_the_partial_index_serves_the_shared_key_queries(make_env, pg_url) -> None:
    """The planner uses a partial index only when the query states its predicate: the
    queries and the index share ``refs.FOREIGN_KEYED_SQL`` (seq scans off, so the plan shows
    whether the index *can* serve them, which a table this small would not need)."""
    with Storage(settings_from(make_env(AP_POSTGRES_URL=pg_url))) as storage:
        catalog = storage.catalog
        catalog.init_schema()
        rec = _Recorder(catalog)
        refs.shared_keys(catalog)
        catalog.transaction = type(catalog).transaction.__get__(catalog)  # _plan's own
        refs.rows_referencing(None, catalog, ["copies/x", "project/p/FLOW_RUN_LOG/a"])
        (shared_sql, shared_params), (ref_sql, ref_params) = rec.statements
        shared_plan = _plan(catalog, shared_sql, shared_params)
        ref_plan = _plan(catalog, ref_sql, ref_params)
    assert INDEX in shared_plan and "Seq Scan" not in shared_plan, shared_plan
    assert INDEX in ref_plan and "PK_file_id" in ref_plan and "Seq Scan" not in ref_plan, ref_plan


def test_init_creates_the_partial_index_on_a_new_table_and_reports_it_on_an_existing_one(pg_url, monkeypatch, make_env) -> None:
    import psycopg

    runner = CliRunner()
    for key, value in make_env(AP_POSTGRES_URL=pg_url).items():
        monkeypatch.setenv(key, value)
    fresh = json.loads(runner.invoke(app, ["init", "--json"]).stdout)
    assert INDEX in fresh["createdIndexes"] and fresh["optionalIndexes"] == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        (predicate,) = conn.execute(
            "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s", (INDEX,)
        ).fetchone()
        assert "right" in predicate and "strpos" in predicate
        # the platform's own table: its indexes, not ours
        conn.execute(f'DROP INDEX "{INDEX}"')
        before = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'file' "
                              "AND schemaname = current_schema() ORDER BY 1").fetchall()
    existing = json.loads(runner.invoke(app, ["init", "--json"]).stdout)
    assert existing["createdTable"] is False and existing["createdIndexes"] == []
    assert existing["missingIndexes"] == []
    (optional,) = existing["optionalIndexes"]
    assert optional["name"] == INDEX and optional["sql"].startswith(f'CREATE INDEX CONCURRENTLY "{INDEX}" ON "file"')
    with psycopg.connect(pg_url, autocommit=True) as conn:
        after = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'file' "
                             "AND schemaname = current_schema() ORDER BY 1").fetchall()
        assert after == before  # init altered nothing
        conn.execute(optional["sql"])  # what the operator may run
    again = json.loads(runner.invoke(app, ["init", "--json"]).stdout)
    assert again["optionalIndexes"] == []


def test_du_figures_and_footprint_unchanged(catalog) -> None:
    """The unfiltered footprint takes its row count from the aggregate; a filtered one
    still counts the whole table."""
    storage = Storage.__new__(Storage)
    storage._catalog, storage._stores, storage._versioning = catalog, {}, None
    whole = disk_usage(storage, DuRequest(by=("location",)))
    assert whole.files == len(ROWS) == whole.catalog.rows
    assert {g.keys[0]: g.files for g in whole.groups} == Counter(r[1] for r in ROWS)
    assert whole.bytes == 10 * len(ROWS)
    some = disk_usage(storage, DuRequest(by=("type",), types=("FLOW_STEP_FILE",)))
    assert some.files == 3  # a4, d1 (STEP_FILE), d2
    assert some.catalog.rows == len(ROWS)
    assert whole.catalog.to_json() == some.catalog.to_json()


def test_the_catalog_plans_each_statement_for_its_parameters(make_env, pg_url) -> None:
    """psycopg prepares a statement after 5 runs; with plan_cache_mode at its default,
    Postgres then may switch it to a generic plan (the sweep's page query: a bitmap scan of
    the whole date range and a sort). The catalog's connection keeps custom plans."""
    with Storage(settings_from(make_env(AP_POSTGRES_URL=pg_url))) as storage:
        catalog = storage.catalog
        catalog.init_schema()
        assert catalog._execute("SHOW plan_cache_mode") == [("force_custom_plan",)]
        for _ in range(12):  # prepared by psycopg, then run as prepared
            sweep_sql.select_expired(catalog, "FLOW_RUN_LOG", NOW, limit=10,
                                     after=(NOW - timedelta(days=40), "x"))
        (generic, custom) = catalog._execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT \"id\", \"created\"%%'"
        )[0]
        assert generic == 0 and custom >= 6
