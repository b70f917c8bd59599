"""Session fixtures: a real Postgres (pgserver, or AP_TEST_POSTGRES_URL) and a real S3
server (SeaweedFS; rclone's S3 server and moto's as other implementations), all on 127.0.0.1, started once per test session and stopped after.

Nothing here skips: a server that cannot start fails the tests that need it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import pytest

from apstorage.config import Settings, load_settings
from apstorage.services.context import Storage
from tests import servers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running (1 GiB streaming)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AP_* leaks in from the machine, and no stray .env is picked up."""
    for key in list(os.environ):
        if key.startswith("AP_") or key in ("AWS_ENDPOINT_URL", "AWS_REGION"):
            monkeypatch.delenv(key, raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


# -- servers ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.PostgresInfo]:
    with servers.postgres_server() as info:
        yield info


@pytest.fixture(scope="session")
def seaweed() -> Iterator[servers.S3Info]:
    with servers.seaweedfs_server(identities=READONLY_IDENTITY) as info:
        yield info


@pytest.fixture(scope="session")
def rclone() -> Iterator[servers.S3Info]:
    """rclone's S3 server: signatures and pre-signed expiry enforced, no lifecycle API,
    no tags (see ``servers.rclone_server``)."""
    with servers.rclone_server() as info:
        yield info


@pytest.fixture(scope="session")
def moto() -> Iterator[servers.S3Info]:
    """moto's S3 server (``python -m moto.server``) as a third implementation: it accepts
    any key pair (it checks no signature), and keeps lifecycle rules and tags."""
    with servers.moto_server() as info:
        yield servers.S3Info(
            endpoint=info.endpoint, access_key="AKMOTO" + secrets.token_hex(7).upper(),
            secret_key=secrets.token_urlsafe(30), region=servers.S3_REGION, data_dir="",
        )


@pytest.fixture
def faulty_s3(seaweed: servers.S3Info) -> Iterator["FaultyS3"]:
    """The fault-injecting stand-in in front of SeaweedFS (tests/s3_faults.py); its
    ``info`` points apstorage at the stand-in, buckets are SeaweedFS's own."""
    from tests.s3_faults import FaultyS3

    with FaultyS3(seaweed) as stand_in:
        yield stand_in


READONLY_IDENTITY = [
    {
        "name": "reader",
        "credentials": [{"accessKey": "READERKEY0000000", "secretKey": "reader-secret-0000000000"}],
        "actions": ["Read", "List"],
    }
]


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"-csearch_path={schema}"
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def pg_url(postgres: servers.PostgresInfo) -> Iterator[str]:
    """A Postgres URL whose search_path is a fresh, empty schema: one catalog per test."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield _with_search_path(postgres.url, schema)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def bucket(seaweed: servers.S3Info) -> str:
    name = f"t-{secrets.token_hex(6)}"
    seaweed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def versioned_bucket(seaweed: servers.S3Info) -> str:
    """A SeaweedFS bucket with versioning Enabled (as the platform's storage guide
    recommends for production)."""
    name = f"v-{secrets.token_hex(6)}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def versioned_env(seaweed: servers.S3Info, versioned_bucket: str) -> dict[str, str]:
    return seaweed.ap_env(versioned_bucket)


# -- settings --------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def s3_env(seaweed: servers.S3Info, bucket: str) -> dict[str, str]:
    return seaweed.ap_env(bucket)


@pytest.fixture
def make_env(home: Path) -> Callable[..., dict[str, str]]:
    def make(**values: str) -> dict[str, str]:
        env = {"AP_CONFIG_PATH": str(home)}
        env.update({k: str(v) for k, v in values.items()})
        return env

    return make


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch, make_env) -> Callable[..., dict[str, str]]:
    """Put AP_* variables into the process environment (what the CLI reads)."""

    def apply(**values: str) -> dict[str, str]:
        env = make_env(**values)
        for key in list(os.environ):
            if key.startswith("AP_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


def settings_from(env: dict[str, str]) -> Settings:
    return load_settings(environ=env, dotenv_path="/nonexistent/.env")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_env(request: pytest.FixtureRequest, make_env) -> dict[str, str]:
    """Catalog settings for each backend: the embedded SQLite default and real Postgres."""
    if request.param == "sqlite":
        return make_env()
    pg = request.getfixturevalue("pg_url")
    env = make_env(AP_POSTGRES_URL=pg)
    storage = Storage(settings_from(env))
    storage.catalog.init_schema()
    storage.close()
    return env


@pytest.fixture
def storage_factory() -> Iterator[Callable[[dict[str, str]], Storage]]:
    opened: list[Storage] = []

    def factory(env: dict[str, str]) -> Storage:
        storage = Storage(settings_from(env))
        opened.append(storage)
        return storage

    yield factory
    for storage in opened:
        storage.close()
