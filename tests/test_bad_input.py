"""Bad input, as real processes: every command and variable given what an operator gets wrong
on a bad day, and what a hostile catalog can hold.

Each case asserts the README's promise: exactly one line on stderr, the documented exit code,
no traceback, no raw control character, no secret in any byte of stdout or stderr, and
nothing written (the case's SQLite rows and LOCAL tree, the Postgres rows, the bucket's
listing). The cases run in parallel, each in its own folder with its own copy of a seeded
catalog; the table takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apstorage.config import load_settings
from apstorage.model import FileRow, Location
from apstorage.services.context import Storage
from tests.test_mistakes import MISTAKES

ROOT = Path(__file__).resolve().parent.parent

# Secrets present in every case's environment (decoys where the case does not use them);
# none may appear in any captured byte, in any encoding we can think of.
PG_PASSWORD = "pg-pa#ss/w%zz-0451"
QUERY_PASSWORD = "query-secret-0452"
FIELD_PASSWORD = "field-secret-0453"
S3_DECOY_SECRET = "s3-decoy-secret-0454"
SESSION_TOKEN = "session-token-0455"
ENDPOINT_SECRET = "endpoint-secret-0456"
BASE_SECRETS = [PG_PASSWORD, QUERY_PASSWORD, FIELD_PASSWORD, S3_DECOY_SECRET, SESSION_TOKEN, ENDPOINT_SECRET]

ESC_KEY = "project/p1/FLOW_RUN_LOG/\x1b[2J\x1b]0;pwned\x07gone"
DB_ROW_ID = "dbrow000000000000001"
ESC_ROW_ID = "escrow00000000000001"


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    words: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    dotenv: bytes | None = None
    s3: bool = False  # run with the real bucket configured
    postgres: bool = False  # run against the real Postgres schema
    no_words: list[str] = field(default_factory=list)  # must not appear (e.g. a raw ESC)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_json(depth: int) -> bytes:
    return b'{"files": ' + b"[" * depth + b"]" * depth + b"}"


def upload_doc(**entry: object) -> bytes:
    return json.dumps({"files": [entry]}).encode()


PUT = ["put", "IN", "-t", "FLOW_RUN_LOG"]
UPLOAD = ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p1"]
FROM_JSON = ["presign", "--from-json", "-", "-t", "FLOW_RUN_LOG", "--project", "p1"]
S3_LOC = {"AP_FILE_STORAGE_LOCATION": "S3"}
LOCAL_LOC = {"AP_FILE_STORAGE_LOCATION": "LOCAL"}

CASES: list[Case] = [
    # -- configuration (exit 3): names the variable, never echoes a secret -----------------
    Case("retention days huge", ["sweep-expired"], 3, ["AP_EXECUTION_DATA_RETENTION_DAYS", "36500"],
         {"AP_EXECUTION_DATA_RETENTION_DAYS": "99999999"}),
    Case("retention days negative", ["du"], 3, ["AP_EXECUTION_DATA_RETENTION_DAYS"],
         {"AP_EXECUTION_DATA_RETENTION_DAYS": "-3"}),
    Case("max file size zero", PUT + ["--project", "p1"], 3, ["AP_MAX_FILE_SIZE_MB"], {"AP_MAX_FILE_SIZE_MB": "0"}),
    Case("max file size words", ["config"], 3, ["AP_MAX_FILE_SIZE_MB"], {"AP_MAX_FILE_SIZE_MB": "big"}),
    Case("max file size other digits", ["config", "--json"], 3, ["AP_MAX_FILE_SIZE_MB"], {"AP_MAX_FILE_SIZE_MB": "\u0663"}),
    Case("delete batch too big", ["sweep-expired"], 3, ["AP_S3_DELETE_BATCH_SIZE", "1000"], {"AP_S3_DELETE_BATCH_SIZE": "5000"}),
    Case("db type unknown", ["du"], 3, ["AP_DB_TYPE", "POSTGRES, SQLITE3"], {"AP_DB_TYPE": "MYSQL"}),
    Case("db type the platform's PGlite", ["du"], 3, ["AP_DB_TYPE=PGLITE", "AP_POSTGRES_URL"], {"AP_DB_TYPE": "pglite"}),
    Case("postgres type without server", ["du"], 3, ["AP_POSTGRES_URL"], {"AP_DB_TYPE": "POSTGRES"}),
    Case("postgres port out of range", ["du"], 3, ["AP_POSTGRES_PORT", "65535"],
         {"AP_POSTGRES_HOST": "db", "AP_POSTGRES_PORT": "99999"}),
    Case("postgres ssl not boolean", ["du"], 3, ["AP_POSTGRES_USE_SSL", "true or false"], {"AP_POSTGRES_USE_SSL": "on"}),
    Case("postgres url not postgres", ["du"], 3, ["AP_POSTGRES_URL"], {"AP_POSTGRES_URL": f"mysql://u:{PG_PASSWORD}@db/ap"}),
    Case("postgres url port", ["get", "x"], 3, ["AP_POSTGRES_URL", "port"],
         {"AP_POSTGRES_URL": f"postgresql://u:{PG_PASSWORD}@db:99999/ap"}),
    Case("postgres url unknown parameter", ["config"], 3, ["AP_POSTGRES_URL", "nosuch"],
         {"AP_POSTGRES_URL": f"postgresql://u:{PG_PASSWORD}@db/ap?nosuch=1&password={QUERY_PASSWORD}"}),
    Case("postgres url fragment outside password", ["config", "--json"], 3, ["AP_POSTGRES_URL", "malformed"],
         {"AP_POSTGRES_URL": f"postgresql://u:{PG_PASSWORD}@db/a#p"}),
    Case("postgres url control character", ["du"], 3, ["AP_POSTGRES_URL", "control character"],
         {"AP_POSTGRES_URL": f"postgresql://u:{PG_PASSWORD}\r@db/ap"}),
    Case("postgres url keyword form", ["du"], 3, ["AP_POSTGRES_URL"], {"AP_POSTGRES_URL": f"host=db password={PG_PASSWORD}"}),
    Case("bucket uppercase", PUT + ["--project", "p1"], 3, ["AP_S3_BUCKET", "lowercase"],
         {**S3_LOC, "AP_S3_BUCKET": "My_Bucket"}, s3=True),
    Case("bucket too short", ["check-iam"], 3, ["AP_S3_BUCKET"], {"AP_S3_BUCKET": "ab"}, s3=True),
    Case("bucket ip address", ["lifecycle", "show"], 3, ["AP_S3_BUCKET", "IP address"], {"AP_S3_BUCKET": "10.1.2.3"}, s3=True),
    Case("bucket trailing newline", ["du", "--verify"], 3, ["AP_S3_BUCKET", "control character"],
         {"AP_S3_BUCKET": "bucket\n"}, s3=True),
    Case("config path escape sequence", ["config"], 3, ["AP_CONFIG_PATH", "control character"],
         {"AP_CONFIG_PATH": "/tmp/\x1b[31mred"}),
    Case("location with a carriage return", ["put", "IN", "-t", "FLOW_RUN_LOG", "--project", "p1"], 3,
         ["AP_FILE_STORAGE_LOCATION"], {"AP_FILE_STORAGE_LOCATION": "S3\r"}),
    Case("secret key with a newline", ["check-iam"], 3, ["AP_S3_SECRET_ACCESS_KEY", "control character"],
         {"AP_S3_SECRET_ACCESS_KEY": S3_DECOY_SECRET + "\n"}, s3=True),
    Case("endpoint with credentials", ["check-iam"], 3, ["AP_S3_ENDPOINT", "credentials"],
         {"AP_S3_ENDPOINT": f"http://AKIAX:{ENDPOINT_SECRET}@127.0.0.1:9"}, s3=True),
    Case("endpoint without scheme", ["lifecycle", "show"], 3, ["AP_S3_ENDPOINT", "http(s)://"],
         {"AP_S3_ENDPOINT": "localhost:9000"}, s3=True),
    Case("aws endpoint bad scheme", ["lifecycle", "show"], 3, ["AWS_ENDPOINT_URL"],
         {"AWS_ENDPOINT_URL": "ftp://127.0.0.1:9"}),
    Case("region with spaces", ["lifecycle", "show"], 3, ["AP_S3_REGION"], {"AP_S3_REGION": "us east 1"}, s3=True),
    Case("missing secret key", PUT + ["--project", "p1"], 3, ["AP_S3_SECRET_ACCESS_KEY"],
         {**S3_LOC, "AP_S3_BUCKET": "bucket", "AP_S3_ACCESS_KEY_ID": "k", "AP_S3_SECRET_ACCESS_KEY": ""}),
    Case("config path is a file", ["du"], 3, ["AP_CONFIG_PATH", "folder"], {"AP_CONFIG_PATH": "/etc/hostname"}),
    Case("local path under a file", PUT + ["--project", "p1"], 3, ["AP_LOCAL_STORAGE_PATH", "folder"],
         {**LOCAL_LOC, "AP_LOCAL_STORAGE_PATH": "/etc/hostname/files"}),
    Case("dotenv unparsable line", ["config"], 3, [".env line 2:", "cannot be parsed"],
         dotenv=b"AP_S3_BUCKET=abc\nthis line is not an assignment\n"),
    Case("dotenv unterminated quote", ["du"], 3, [".env line 3:"],
         dotenv=f"# settings\nAP_S3_BUCKET=abc\nAP_S3_SECRET_ACCESS_KEY='{S3_DECOY_SECRET}\n".encode()),
    Case("dotenv binary", ["du"], 3, [".env line 1:", "UTF-8"], dotenv=b"\xff\xfe\x01\x02garbage\n"),
    Case("dotenv NUL byte", ["config"], 3, [".env line 2:", "NUL"], dotenv=b"AP_S3_BUCKET=abc\nAP_X=a\x00b\n"),
    Case("dotenv bad value", ["config"], 3, ["AP_S3_USE_IRSA", "true or false"], dotenv=b"AP_S3_USE_IRSA=maybe\n"),
    # -- flags (exit 2): names the flag and what it accepts --------------------------------
    Case("project id trailing newline", PUT + ["--project", "p1\n"], 2, ["--project", "0-9A-Za-z"], LOCAL_LOC),
    Case("project id 22 characters", PUT + ["--project", "a" * 22], 2, ["--project", "21"], S3_LOC, s3=True),
    Case("project id 64 characters", ["presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "a" * 64, "--name", "a",
                                      "--size", "1"], 2, ["--project"], {}, s3=True),
    Case("project id underscore", PUT + ["--project", "a_b"], 2, ["--project"], LOCAL_LOC),
    Case("project id path", PUT + ["--project", "../x"], 2, ["--project"], LOCAL_LOC),
    Case("platform id empty", PUT + ["--platform", ""], 2, ["--platform"], LOCAL_LOC),
    Case("platform id escape", PUT + ["--platform", "p\x1b[31m"], 2, ["--platform"], LOCAL_LOC, no_words=["\x1b"]),
    Case("no owner", PUT, 2, ["--project"], LOCAL_LOC),
    Case("name with escape", PUT + ["--project", "p1", "--name", "a\x1b[31mb"], 2, ["--name", "control"], LOCAL_LOC),
    Case("compress gzip", PUT + ["--project", "p1", "--compress", "gzip"], 2, ["--compress"], LOCAL_LOC),
    Case("missing --type", ["put", "IN", "--project", "p1"], 2, ["--type"], LOCAL_LOC),
    Case("bad --type choice", ["put", "IN", "-t", "FLOW\x1bLOG", "--project", "p1"], 2, ["--type"], LOCAL_LOC),
    Case("get without id", ["get"], 2, ["ID"]),
    Case("get --json to stdout", ["get", DB_ROW_ID, "--json"], 2, ["--json"]),
    Case("expires words", ["presign", DB_ROW_ID, "--expires", "soon"], 2, ["--expires"]),
    Case("expires too long", ["presign", DB_ROW_ID, "--expires", "8d"], 2, ["7 days"]),
    Case("expires huge", ["presign", DB_ROW_ID, "--expires", "99999999999999999999999999d"], 2, ["--expires"]),
    Case("expires zero", ["presign", DB_ROW_ID, "--expires", "0"], 2, ["--expires"]),
    Case("method delete", ["presign", DB_ROW_ID, "--method", "DELETE"], 2, ["--method", "GET, PUT"]),
    Case("upload negative size", UPLOAD + ["--name", "a", "--size", "-1"], 2, ["--size"], s3=True),
    Case("upload size not a number", UPLOAD + ["--name", "a", "--size", "1e3"], 2, ["--size"], s3=True),
    Case("upload empty name", UPLOAD + ["--name", "", "--size", "1"], 2, ["--name"], s3=True),
    Case("upload newline name", UPLOAD + ["--name", "a\nb", "--size", "1"], 2, ["--name"], s3=True),
    Case("from-json nested too deep", FROM_JSON, 2, ["nested too deep"], stdin=deep_json(100_000), s3=True),
    Case("from-json huge integer", FROM_JSON, 2, ["--from-json"],
         stdin=b'{"files":[{"fileName":"a","fileSize":' + b"9" * 5000 + b"}]}", s3=True),
    Case("from-json over 5 TiB", FROM_JSON, 2, ["files[0].fileSize", "5 TiB"],
         stdin=upload_doc(fileName="a", fileSize=10**20), s3=True),
    Case("from-json negative size", FROM_JSON, 2, ["files[0].fileSize"], stdin=upload_doc(fileName="a", fileSize=-1), s3=True),
    Case("from-json fractional size", FROM_JSON, 2, ["files[0].fileSize"],
         stdin=upload_doc(fileName="a", fileSize=1.5), s3=True),
    Case("from-json infinite size", FROM_JSON, 2, ["files[0].fileSize"],
         stdin=b'{"files":[{"fileName":"a","fileSize":Infinity}]}', s3=True),
    Case("from-json string size", FROM_JSON, 2, ["files[0].fileSize"], stdin=upload_doc(fileName="a", fileSize="1"), s3=True),
    Case("from-json missing size", FROM_JSON, 2, ["files[1].fileSize is missing"],
         stdin=json.dumps({"files": [{"fileName": "a", "fileSize": 1}, {"fileName": "b"}]}).encode(), s3=True),
    Case("from-json missing name", FROM_JSON, 2, ["files[0].fileName"], stdin=upload_doc(fileSize=1), s3=True),
    Case("from-json control in name", FROM_JSON, 2, ["files[0].fileName", "control"],
         stdin=upload_doc(fileName="a\u202eb", fileSize=1), s3=True),
    Case("from-json not json", FROM_JSON, 2, ["not valid JSON"], stdin=b"files: [a]", s3=True),
    Case("from-json binary", FROM_JSON, 2, ["--from-json"], stdin=b"\xff\xfe\xfa\x00\x01", s3=True),
    Case("from-json over the size limit", FROM_JSON, 2, ["MiB"],
         stdin=b'{"files":[{"fileName":"' + b"a" * (17 * 1024 * 1024) + b'","fileSize":1}]}', s3=True),
    Case("from-json empty list", FROM_JSON, 2, ["at least one file"], stdin=b'{"files":[]}', s3=True),
    Case("sweep permanent type", ["sweep-expired", "--types", "PLATFORM_ASSET"], 2, ["PLATFORM_ASSET"]),
    Case("sweep retention huge", ["sweep-expired", "--retention-days", "99999999"], 2, ["--retention-days", "36500"]),
    Case("sweep retention zero", ["sweep-expired", "--retention-days", "0"], 2, ["--retention-days"]),
    Case("sweep batch zero", ["sweep-expired", "--batch-size", "0"], 2, ["--batch-size"]),
    Case("sweep max-delete huge", ["sweep-expired", "--max-delete", "9" * 30], 2, ["--max-delete"]),
    Case("gc grace huge", ["gc", "--dry-run", "--grace", "99999999999d"], 2, ["--grace", "too long"]),
    Case("gc grace too short", ["gc", "--grace", "1s"], 2, ["--grace", "1 hour"]),
    Case("gc max-delete huge", ["gc", "--max-delete", "9" * 30], 2, ["--max-delete"]),
    Case("gc grace with escapes", ["gc", "--grace", "1\x1b[2Jd"], 2, ["--grace"], no_words=["\x1b"]),
    Case("du older-than huge", ["du", "--older-than", "99999999999d"], 2, ["--older-than", "too long"]),
    Case("du older-than words", ["du", "--older-than", "last week"], 2, ["--older-than"]),
    Case("du by unknown", ["du", "--by", "colour"], 2, ["--by"]),
    Case("du project path", ["du", "--project", "../x"], 2, ["--project"]),
    Case("du csv and json", ["du", "--csv", "--json"], 2, ["--json", "--csv"]),
    Case("lifecycle retention huge", ["lifecycle", "apply", "--retention-days", "99999999"], 2, ["--retention-days"], s3=True),
    Case("lifecycle grace negative", ["lifecycle", "apply", "--grace-days", "-1"], 2, ["--grace-days"], s3=True),
    Case("migrate from tape", ["migrate-to-s3", "--from", "tape"], 2, ["--from"], s3=True),
    Case("migrate workers zero", ["migrate-to-s3", "--workers", "0"], 2, ["--workers"], s3=True),
    Case("migrate limit huge", ["migrate-to-s3", "--limit", "9" * 30], 2, ["--limit"], s3=True),
    Case("check-iam unknown check", ["check-iam", "--skip", "nosuch"], 2, ["nosuch"], s3=True),
    Case("check-iam junit into a folder", ["check-iam", "--junit-xml", "DIR"], 2, ["--junit-xml", "folder"], s3=True),
    # an empty item in a filter would widen it to everything (a sweep of every type)
    Case("sweep empty types", ["sweep-expired", "--types", ""], 2, ["--types", "empty"]),
    Case("sweep only commas", ["sweep-expired", "--types", ","], 2, ["--types", "empty"]),
    Case("sweep trailing comma", ["sweep-expired", "--types", "FLOW_RUN_LOG,"], 2, ["--types", "empty"]),
    Case("migrate empty types", ["migrate-to-s3", "--types", ""], 2, ["--types", "empty"], s3=True),
    Case("migrate from trailing comma", ["migrate-to-s3", "--from", "db,"], 2, ["--from", "empty"], s3=True),
    Case("du empty type", ["du", "--type", ""], 2, ["--type", "empty"]),
    Case("put type with a newline", ["put", "IN", "-t", "FLOW_RUN_LOG\n", "--project", "p1"], 2, ["--type"], LOCAL_LOC),
    Case("get to an empty path", ["get", DB_ROW_ID, "-o", ""], 2, ["-o", "empty"]),
    Case("check-iam prefix with a newline", ["check-iam", "--prefix", "a\nb/"], 2, ["--prefix"], s3=True),
    Case("check-iam prefix climbing out", ["check-iam", "--prefix", "../"], 2, ["--prefix"], s3=True),
    Case("check-iam junit to an empty path", ["check-iam", "--junit-xml", ""], 2, ["--junit-xml", "empty"], s3=True),
    Case("check-iam skipping every check", ["check-iam", "--skip", ",".join(__import__("apstorage.services.check_iam",
         fromlist=["CHECKS"]).CHECKS)], 2, ["--skip", "every check"], s3=True),
    Case("no such command", ["colour"], 2, ["colour"]),
    Case("no such subcommand", ["lifecycle", "remove"], 2, ["remove"]),
    Case("option without its value", ["presign", DB_ROW_ID, "--method"], 2, ["--method"]),
    # -- not found, not supported, too large, unreachable ---------------------------------
    Case("get a 5,000-character id", ["get", "a" * 5000], 4, ["no file", "(5,000 characters)"]),
    Case("id that is not UTF-8", ["get", os.fsdecode(b"\xff\xfe")], 4, ["no file"]),
    Case("presign id that is not UTF-8", ["presign", os.fsdecode(b"ab\xc3")], 4, ["no file"]),
    Case("unknown id with escapes", ["get", "\x1b[31mred\x9b"], 4, ["red"], no_words=["\x1b", "\x9b"]),
    Case("key with escapes in a row", ["get", ESC_ROW_ID], 4, ["LOCAL", "gone"], no_words=["\x1b", "\x07"]),
    Case("output folder missing", ["get", DB_ROW_ID, "-o", "/no/such/folder/x"], 4, ["/no/such/folder"]),
    Case("from-json file missing", ["presign", "--from-json", "/no/such.json", "-t", "FLOW_RUN_LOG", "--project", "p1"],
         4, ["/no/such.json"], s3=True),
    Case("presign a DB row", ["presign", DB_ROW_ID], 6, ["database", "migrate-to-s3"]),
    Case("upload over the limit", UPLOAD + ["--name", "a", "--size", str(2 * 1024 * 1024)], 7, ["AP_MAX_FILE_SIZE_MB"],
         {"AP_MAX_FILE_SIZE_MB": "1"}, s3=True),
    Case("unreachable postgres, password with #", ["du"], 8, ["127.0.0.1:PORT"],
         {"AP_POSTGRES_URL": f"postgresql://app:{PG_PASSWORD}@127.0.0.1:PORT/ap?password={QUERY_PASSWORD}"}),
    Case("unreachable postgres socket", ["du"], 8, ["/tmp/no-such-pg-dir/.s.PGSQL.5433"],
         {"AP_POSTGRES_URL": f"postgresql://app:{PG_PASSWORD}@/ap?host=/tmp/no-such-pg-dir&port=5433"}),
    Case("unreachable postgres fields", ["du"], 8, ["127.0.0.1:PORT/ap"],
         {"AP_POSTGRES_HOST": "127.0.0.1", "AP_POSTGRES_PORT": "PORT", "AP_POSTGRES_DATABASE": "ap",
          "AP_POSTGRES_USERNAME": "app", "AP_POSTGRES_PASSWORD": FIELD_PASSWORD}),
    Case("postgres missing database", ["du"], 4, ["nosuchdb_0457", "does not exist"],
         {"AP_POSTGRES_URL": f"postgresql://postgres:{PG_PASSWORD}@/nosuchdb_0457?host=PGSOCK"}),
    Case("postgres unknown user", ["du"], 5, ["nosuchrole_0458"],
         {"AP_POSTGRES_URL": f"postgresql://nosuchrole_0458:{PG_PASSWORD}@/postgres?host=PGSOCK"}),
    Case("postgres catalog, bad project", PUT + ["--project", "p1\n"], 2, ["--project"], LOCAL_LOC, postgres=True),
    Case("postgres catalog, bad upload document", FROM_JSON, 2, ["files[0].fileSize"],
         stdin=upload_doc(fileName="a", fileSize=-5), s3=True, postgres=True),
    Case("unreachable S3", PUT + ["--project", "p1"], 8, ["127.0.0.1:PORT"],
         {**S3_LOC, "AP_S3_BUCKET": "bucket", "AP_S3_ENDPOINT": "http://127.0.0.1:PORT",
          "AP_S3_ACCESS_KEY_ID": "k", "AP_S3_SECRET_ACCESS_KEY": S3_DECOY_SECRET}),
]

# The mistakes of a user's first minutes (tests/test_mistakes.py) belong to the table too.
for _name, _args, _env, _code, _words in MISTAKES:
    _env = {k: (v if k != "AP_POSTGRES_URL" else v.replace("pw-secret", PG_PASSWORD.replace("#", "%23")))
            for k, v in _env.items()}
    CASES.append(Case(f"first minutes: {_name}", list(_args), _code, list(_words), dict(_env)))

# Variables of the platform apstorage does not read: never a word about them.
PLATFORM_ENV = {
    "AP_FRONTEND_URL": "https://ap.example", "AP_ENCRYPTION_KEY": "0123abcd", "AP_JWT_SECRET": "jwt-0459",
    "AP_ENGINE_EXECUTABLE_PATH": "dist/engine", "AP_REDIS_URL": "redis://:redis-0460@r:6379",
    "AP_EXECUTION_MODE": "UNSANDBOXED", "AP_TELEMETRY_ENABLED": "false", "AP_PIECES_SOURCE": "DB",
    "AP_REDIS_PASSWORD": "redis-0461", "AP_REDIS_USE_SSL": "false", "AP_POSTGRES_POOL_SIZE": "10",
}
# Warnings: exit 0, and the one line is the warning.
WARNINGS = [
    Case("near-miss variable", ["config"], 0, ["AP_FILE_STORAGE_LOCATON", "AP_FILE_STORAGE_LOCATION"],
         {"AP_FILE_STORAGE_LOCATON": "S3", "AP_EXECUTION_DATA_RETENTION_DAYS": "45"}),  # > the pause timeout: no race warning
    Case("near-miss variable in .env", ["du", "--json"], 0, ["AP_S3_BUCKT", "AP_S3_BUCKET"], dotenv=b"AP_S3_BUCKT=abc\n"),
]


def test_the_table_is_large() -> None:
    assert len(CASES) + len(WARNINGS) >= 100
    assert len({c.name for c in CASES + WARNINGS}) == len(CASES) + len(WARNINGS)


@pytest.fixture(scope="module")
def table(tmp_path_factory, postgres, seaweed):
    """Run every case once, in parallel, and record what each did and what it wrote."""
    import psycopg

    base = tmp_path_factory.mktemp("bad-input")
    bucket = f"bad-input-{os.getpid()}"
    client = seaweed.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="project/p1/FLOW_RUN_LOG/existing0000000001", Body=b"kept")
    s3_env = seaweed.ap_env(bucket)

    # A seeded embedded catalog, copied for each case: one DB row, one LOCAL row whose key
    # holds terminal escapes and whose file is gone, and one LOCAL file.
    template = base / "template"
    template.mkdir()
    env = {"AP_CONFIG_PATH": str(template)}
    with Storage(load_settings(environ=env, dotenv_path="/nonexistent")) as storage:
        storage.catalog.insert(FileRow(id=DB_ROW_ID, type="FLOW_RUN_LOG", location=Location.DB, project_id="p1", size=2), b"hi")
        storage.catalog.insert(FileRow(id=ESC_ROW_ID, type="FLOW_RUN_LOG", location=Location.LOCAL, project_id="p1",
                                       size=2, s3_key=ESC_KEY))
    (template / "cache" / "project" / "p1").mkdir(parents=True)
    (template / "cache" / "project" / "p1" / "kept").write_bytes(b"kept")

    schema = f"bad_input_{os.getpid()}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    from tests.conftest import _with_search_path

    pg_url = _with_search_path(postgres.url, schema)
    with Storage(load_settings(environ={"AP_POSTGRES_URL": pg_url}, dotenv_path="/nonexistent")) as storage:
        storage.catalog.init_schema()
        storage.catalog.insert(FileRow(id=DB_ROW_ID, type="FLOW_RUN_LOG", location=Location.DB, project_id="p1", size=2), b"hi")
    pg_socket = [p.split("=", 1)[1] for p in postgres.url.split("?", 1)[1].split("&") if p.startswith("host=")][0]

    def run(case: Case) -> dict:
        folder = base / f"case-{(CASES + WARNINGS).index(case)}"
        shutil.copytree(template, folder / "home")
        cwd = folder / "cwd"
        cwd.mkdir()
        (cwd / "in.txt").write_bytes(b"x")
        (cwd / "big.bin").write_bytes(b"x" * (1024 * 1024 + 1))
        (cwd / "folder").mkdir()
        if case.dotenv is not None:
            (cwd / ".env").write_bytes(case.dotenv)
        port = str(closed_port())
        subst = {"IN": str(cwd / "in.txt"), "BIG": str(cwd / "big.bin"), "DIR": str(cwd / "folder")}
        args = [subst.get(a, a) for a in case.args]
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AP_", "AWS_"))}
        full.update(PLATFORM_ENV)
        full.update(
            PYTHONPATH=str(ROOT), AP_CONFIG_PATH=str(folder / "home"),
            AP_POSTGRES_PASSWORD=FIELD_PASSWORD, AP_S3_SECRET_ACCESS_KEY=S3_DECOY_SECRET, AWS_SESSION_TOKEN=SESSION_TOKEN,
        )
        if case.s3:
            full.update(s3_env)
        if case.postgres:
            full["AP_POSTGRES_URL"] = pg_url
        full.update({k: port if v == "PORT" else v.replace(":PORT", f":{port}").replace("PGSOCK", pg_socket)
                     for k, v in case.env.items()})
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "apstorage", *args], env=full, cwd=cwd, input=case.stdin,
                              capture_output=True, timeout=120)
        took = time.monotonic() - started
        with sqlite3.connect(folder / "home" / "apstorage.sqlite") as db:
            rows = db.execute('SELECT count(*) FROM "file"').fetchone()[0]
        local = sorted(str(p.relative_to(folder / "home" / "cache")) for p in (folder / "home" / "cache").rglob("*"))
        return {"proc": proc, "port": port, "rows": rows, "local": local, "took": took,
                "secrets": BASE_SECRETS + ([s3_env["AP_S3_SECRET_ACCESS_KEY"]] if case.s3 else [])}

    def listing() -> list[str]:
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))

    def pg_rows() -> int:
        with psycopg.connect(pg_url) as conn:
            return conn.execute('SELECT count(*) FROM "file"').fetchone()[0]

    before = (listing(), pg_rows())
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = dict(zip([c.name for c in CASES + WARNINGS], pool.map(run, CASES + WARNINGS)))
    after = (listing(), pg_rows())
    if os.environ.get("AP_TEST_TIMINGS"):
        for name, r in sorted(results.items(), key=lambda kv: -kv[1]["took"])[:15]:
            print(f"{r['took']:6.2f}s {name}", file=sys.stderr)
    yield {"results": results, "before": before, "after": after}
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _check(case: Case, outcome: dict) -> None:
    proc = outcome["proc"]
    captured = proc.stdout + proc.stderr
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == case.code, stderr
    assert b"Traceback" not in captured, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for word in case.words:
        assert word.replace(":PORT", f":{outcome['port']}") in lines[0], lines[0]
    for word in case.no_words:
        assert word.encode() not in captured, lines[0]
    # No raw control character reaches the terminal: only line ends (and tabs) pass.
    assert not any(b < 0x20 and b not in (0x0A, 0x09) or b == 0x7F for b in proc.stderr), stderr
    assert "\x9b" not in stderr and "\x85" not in stderr
    from urllib.parse import quote

    for secret in outcome["secrets"]:
        for form in {secret, quote(secret, safe=""), quote(secret), secret.replace("#", "%23")}:
            assert form.encode() not in captured, f"secret {secret!r} shown"
    # Nothing written: the seeded rows and LOCAL tree are as they were.
    assert outcome["rows"] == 2
    assert outcome["local"] == ["project", "project/p1", "project/p1/kept"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(table, case: Case) -> None:
    _check(case, table["results"][case.name])


@pytest.mark.parametrize("case", WARNINGS, ids=[c.name for c in WARNINGS])
def test_a_near_miss_is_one_warning_and_the_command_runs(table, case: Case) -> None:
    outcome = table["results"][case.name]
    _check(case, outcome)
    assert outcome["proc"].stderr.decode().startswith("warning: ")
    assert outcome["proc"].stdout  # the command's own output came


def test_nothing_reached_the_bucket_or_postgres(table) -> None:
    assert table["after"] == table["before"]
