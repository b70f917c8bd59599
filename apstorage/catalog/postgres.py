"""The catalog in Postgres (the platform's own database), through psycopg 3."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import datetime
from typing import Any, Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from apstorage.catalog.base import INDEXES, Catalog, InitReport
from apstorage.config import Settings
from apstorage.errors import (
    ApStorageError,
    BackendUnavailableError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
)

DDL = """
CREATE TABLE "file" (
    "id" character varying(21) NOT NULL,
    "created" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    "updated" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    "projectId" character varying(21),
    "platformId" character varying(21),
    "data" bytea,
    "location" character varying NOT NULL,
    "fileName" character varying,
    "size" integer,
    "metadata" jsonb,
    "s3Key" character varying,
    "type" character varying NOT NULL DEFAULT 'UNKNOWN',
    "compression" character varying NOT NULL DEFAULT 'NONE',
    CONSTRAINT "PK_file_id" PRIMARY KEY ("id")
)
"""


def _extra_indexes() -> dict[str, str]:
    """apstorage's own indexes on a new Postgres table, beside the platform's (``INDEXES``):
    name → the CREATE INDEX statement's tail (``ON "file" ...``).

    ``idx_file_s3_key_foreign``: a partial index on ``s3Key`` over the foreign-keyed rows
    only (a non-empty ``s3Key`` not ending in ``/{id}``; ``refs.FOREIGN_KEYED_SQL``), normally
    none or a handful, so it costs nothing to keep up; with it, finding the rows that share
    a key (``refs.shared_keys``, once per sweep and migrate run) and the rows at a batch's
    keys (``refs.rows_referencing``) are index scans instead of scans of the table."""
    from apstorage.catalog.refs import FOREIGN_KEYED_SQL

    return {"idx_file_s3_key_foreign": f'ON "file" ("s3Key") WHERE {FOREIGN_KEYED_SQL}'}


CONNECT_TIMEOUT = 10  # seconds: libpq's connect_timeout (a frozen server fails the command)
# Seconds any one statement may run (Postgres' statement_timeout, set per connection). Generous:
# migrate and sweep work in batches of at most a few thousand rows, each statement well under
# a second; du over tens of millions of rows is one aggregate that may take minutes.
STATEMENT_TIMEOUT = 900
# statement_timeout is the server's to enforce: a server that stopped answering mid-session
# (frozen, or a network path that swallows packets while the socket stays open) never
# enforces it. So the client gives every statement statement_timeout plus this much to answer
# (seconds), then shuts the socket: the command fails with exit 8 naming the host.
ANSWER_MARGIN = CONNECT_TIMEOUT
# TCP keepalives (libpq): a peer gone from the network is noticed within about
# idle + interval x count seconds even while a statement runs (an answering kernel keeps a
# legitimately long statement alive); ignored on Unix-domain sockets.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


@contextlib.contextmanager
def _deadline(cursor: Any) -> Iterator[None]:
    """Bound one statement (sent, answered, read) by ``statement_timeout + ANSWER_MARGIN``
    (``apstorage.deadlines``, the watchdog the S3 transport uses): past it the connection's
    socket is shut and the statement fails with an OperationalError saying so."""
    conn = cursor.connection
    sock = getattr(conn, "apstorage_socket", None)
    if sock is None:
        yield
        return
    from apstorage.deadlines import WATCHDOG, Deadline

    deadline = Deadline(conn.apstorage_answer_within)
    deadline.watch(sock)
    WATCHDOG.add(deadline)
    try:
        yield
    except psycopg.OperationalError:
        if deadline.finish():
            raise psycopg.OperationalError(
                f"no answer to a statement within {deadline.seconds:g} s (statement_timeout plus "
                f"{ANSWER_MARGIN} s); the server stopped answering"
            ) from None
        raise
    finally:
        deadline.finish()


def _watchable(conn: psycopg.Connection, seconds: float) -> None:
    """Give ``conn``'s statements a deadline of ``seconds`` (``_deadline``): a socket object
    on a duplicate of libpq's descriptor, made once, for the watchdog to shut down."""
    import socket

    with contextlib.suppress(OSError, psycopg.Error):
        conn.apstorage_socket = socket.socket(fileno=os.dup(conn.pgconn.socket))  # type: ignore[attr-defined]
        conn.apstorage_answer_within = seconds  # type: ignore[attr-defined]


def _unwatch(conn: psycopg.Connection) -> None:
    sock = getattr(conn, "apstorage_socket", None)
    if sock is not None:
        conn.apstorage_socket = None  # type: ignore[attr-defined]
        sock.close()


class _Cursor(psycopg.Cursor):
    """A client cursor whose statements are bounded (``_deadline``); its rows arrive with
    the answer, so fetching needs no bound of its own."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        with _deadline(self):
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        with _deadline(self):
            return super().executemany(*args, **kwargs)

    @contextlib.contextmanager
    def copy(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with _deadline(self), super().copy(*args, **kwargs) as copy:
            yield copy


class _ServerCursor(psycopg.ServerCursor):
    """A named (server-side) cursor: each round trip bounded (``_deadline``)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        with _deadline(self):
            return super().execute(*args, **kwargs)

    def fetchone(self) -> Any:
        with _deadline(self):
            return super().fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        with _deadline(self):
            return super().fetchmany(*args, **kwargs)

    def fetchall(self) -> Any:
        with _deadline(self):
            return super().fetchall()

    def __iter__(self) -> Any:
        while True:
            rows = self.fetchmany(self.itersize)
            if not rows:
                return
            yield from rows


class PostgresCatalog(Catalog):
    ph = "%s"
    dialect = "postgres"
    statement_timeout = STATEMENT_TIMEOUT

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dsn = settings.postgres
        self.target = f"postgres://{self.dsn.target}"
        self._ca_file: str | None = None
        self.conn = self.connect()

    # -- connections ----------------------------------------------------------------
    def _conninfo(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "apstorage", **KEEPALIVES}
        # Keywords, never a URL string: libpq does not re-parse the password (config.py
        # parsed AP_POSTGRES_URL once, whatever its password holds).
        kwargs.update(self.dsn.connect_kwargs(), conninfo="")
        if s.postgres_use_ssl:
            kwargs["sslmode"] = "require"
            if s.postgres_ssl_ca:
                if self._ca_file is None:
                    fd, self._ca_file = tempfile.mkstemp(prefix="apstorage-ca-", suffix=".pem")
                    with os.fdopen(fd, "w") as fh:
                        fh.write(s.postgres_ssl_ca)
                kwargs.update(sslmode="verify-ca", sslrootcert=self._ca_file)
        return kwargs

    def connect(self) -> psycopg.Connection:
        """A new autocommit connection; errors name the host, never the password."""
        kwargs = self._conninfo()
        conninfo = kwargs.pop("conninfo")
        try:
            conn = psycopg.connect(conninfo, autocommit=True, cursor_factory=_Cursor, **kwargs)
            conn.server_cursor_factory = _ServerCursor
            _watchable(conn, self.statement_timeout + ANSWER_MARGIN)
            # SET rather than an ``options`` parameter: a DSN's own options (search_path...) stay.
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")
            self._custom_plans(conn)
            return conn
        except psycopg.Error as exc:
            raise self._translate(exc) from None

    @staticmethod
    def _custom_plans(conn: psycopg.Connection) -> None:
        """Plan every statement for its own parameters (``plan_cache_mode``, Postgres 12+).

        psycopg prepares a statement run 5 times on a connection; Postgres then switches a
        prepared statement to one generic plan after 5 more runs when that plan looks no
        dearer. For the sweep's keyset page it is: the generic plan reads every row of the
        type in the date range and sorts them (a bitmap scan and a top-N sort, 57 ms a page
        at 10^6 rows) where the custom plan reads 1,000 index entries in order (1.2 ms);
        README "Scale, measured". Planning each run costs ~0.2 ms. An older server keeps
        its default."""
        with contextlib.suppress(psycopg.Error):
            conn.execute("SET plan_cache_mode = force_custom_plan")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            _unwatch(self.conn)
        with contextlib.suppress(Exception):
            self.conn.close()
        if self._ca_file:
            with contextlib.suppress(OSError):
                os.unlink(self._ca_file)

    def _translate(self, exc: Exception) -> ApStorageError:
        """A psycopg error → the documented exit code, naming the user, database, host and
        port or socket as configured. libpq's own text is shown only scrubbed of every
        secret form, and only after our own words."""
        from apstorage.config import scrub

        text = str(exc).strip()
        reason = scrub(text.splitlines()[0].strip() if text else type(exc).__name__)
        reason = reason.split(" failed: ", 1)[-1]  # 'connection to server at "h" (ip), port p failed: X'
        lowered = text.lower()
        sqlstate = getattr(exc, "sqlstate", None) or ""
        named = re.search(r'(?:user|role) "([^"]*)"', text)
        user = self.dsn.user or (named.group(1) if named else "(the default user)")
        if isinstance(exc, pg_errors.QueryCanceled) and "statement timeout" in reason:
            return BackendUnavailableError(
                f"Postgres at {self.target} did not finish a statement within {self.statement_timeout:g} s "
                "(statement_timeout, set by apstorage); the server is overloaded or a lock is held"
            )
        if isinstance(exc, psycopg.OperationalError) and "timeout expired" in reason:
            return BackendUnavailableError(
                f"Postgres at {self.target} did not answer within {CONNECT_TIMEOUT} s (connect timeout)"
            )
        if isinstance(exc, pg_errors.UndefinedTable):
            return NotFoundError(
                f'the "file" table does not exist in {self.target}; run `apstorage init`'
            )
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return PermissionDeniedError(f"Postgres at {self.target} refused user {user}: {reason}")
        if sqlstate == "3D000" or re.search(r'database ".*" does not exist', text):
            return NotFoundError(
                f"database {self.dsn.dbname or '(the default)'} does not exist on "
                f"{self.target}",
                hint="check AP_POSTGRES_URL or AP_POSTGRES_DATABASE",
            )
        if sqlstate in ("28000", "28P01") or re.search(r'role ".*" does not exist', text) or any(
            marker in lowered
            for marker in (
                "authentication failed", "no password supplied", "password authentication",
                "pg_hba.conf", "scram", "password is required",
                "server requested", "auth method",
            )
        ):
            return PermissionDeniedError(
                f"Postgres at {self.target} refused the credentials of user {user}: {reason}",
                hint="check the user and password in AP_POSTGRES_URL or AP_POSTGRES_USERNAME / AP_POSTGRES_PASSWORD",
            )
        if isinstance(exc, psycopg.OperationalError):
            return BackendUnavailableError(f"cannot reach Postgres at {self.target}: {reason}")
        if isinstance(exc, psycopg.ProgrammingError) and "connection" in lowered and "option" in lowered:
            return ConfigError(f"AP_POSTGRES_URL is not accepted by libpq: {reason}")
        return ApStorageError(f"Postgres error at {self.target}: {reason}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor]:
        """One short transaction; driver errors come out as ApStorageError."""
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._translate(exc) from None

    # -- Catalog ----------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple = (), *, binary: bool = False) -> list[tuple]:
        try:
            with self.conn.cursor(binary=binary) as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise self._translate(exc) from None

    def init_schema(self) -> InitReport:
        report = InitReport(created_table=False, target=self.target)
        with self.transaction() as cur:
            # Serialise concurrent `init` runs; the lock ends with the transaction.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('apstorage:init'))")
            cur.execute("SELECT to_regclass('file') IS NOT NULL")
            exists = cur.fetchone()[0]
            if not exists:
                cur.execute(DDL)
                report.created_table = True
                for name, cols in INDEXES.items():
                    quoted = ", ".join(f'"{c}"' for c in cols)
                    cur.execute(f'CREATE INDEX "{name}" ON "file" ({quoted})')
                    report.created_indexes.append(name)
                for name, tail in _extra_indexes().items():
                    cur.execute(f'CREATE INDEX "{name}" {tail}')
                    report.created_indexes.append(name)
            else:
                cur.execute(
                    """
                    SELECT array_agg(a.attname::text ORDER BY k.ord)
                    FROM pg_index i
                    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE i.indrelid = 'file'::regclass
                    GROUP BY i.indexrelid
                    """
                )
                present = {tuple(r[0]) for r in cur.fetchall()}
                report.missing_indexes = [
                    name for name, cols in INDEXES.items() if cols not in present
                ]
                cur.execute("SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                            "WHERE i.indrelid = 'file'::regclass")
                named = {r[0] for r in cur.fetchall()}
                report.optional_indexes = [
                    {"name": name, "sql": f'CREATE INDEX CONCURRENTLY "{name}" {tail}'}
                    for name, tail in _extra_indexes().items() if name not in named
                ]
        return report

    def _ts_in(self, value: datetime) -> Any:
        return value

    def _ts_out(self, value: Any) -> datetime | None:
        return value

    def _json_in(self, value: dict | None) -> Any:
        return None if value is None else Jsonb(value)

    def _bytes_in(self, value: bytes) -> Any:
        return value
