"""apstorage.stores.s3_http (the S3 transport: botocore's urllib3 session with deadlines,
an httptools-parsed multiplexer, botocore-standard retries) and ``_FastS3`` on top of it.

- ``Multiplexer`` and ``Session.request`` against a scripted HTTP server run in a thread of
  this process (127.0.0.1, port 0, bounded lifetime, stopped when the test ends):
  keep-alive, idle connections closed or answered 408 by the server, responses in pieces,
  bytes after an answer, bounded bodies, concurrency, read timeouts and request deadlines
  (silent and trickling servers), 100-continue refusals;
- ``S3Store.put_many`` / ``put_bytes`` against that server acting as a minimal S3 (503,
  429, SlowDown and dropped connections retried with backoff; Retry-After; 403 not
  retried; a wrong ETag; a lasting 500; throttling that slows the batch down);
- TLS (a self-signed certificate for 127.0.0.1): Session, Multiplexer, verification
  failures, ``S3Store`` trusting AWS_CA_BUNDLE;
- proxies: botocore's rule (HTTP_PROXY/HTTPS_PROXY/NO_PROXY; ALL_PROXY not read), a forward
  proxy run by the scripted server (absolute form, CONNECT tunnels, credentials), a dead
  proxy named in the error;
- ``S3Store.put_many`` against the session's real SeaweedFS.
"""

from __future__ import annotations

import base64
import hashlib
import random
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlencode, urlsplit

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    EndpointConnectionError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)

from apstorage.errors import ApStorageError, BackendUnavailableError, PermissionDeniedError
from apstorage.stores.s3 import S3Store, ca_bundle
from apstorage.stores.s3_http import (
    MAX_ERROR_BODY,
    BodyTooLargeError,
    DeadlineExceededError,
    Multiplexer,
    ProtocolViolationError,
    Response,
    RetryPolicy,
    Session,
    Timeouts,
    encode_request,
    retry_after,
)
from tests.conftest import settings_from


# ======================================================================================
# A scripted HTTP server


HOST = "127.0.0.1"
SERVER_LIFETIME = 20.0  # seconds: no scripted server outlives this, whatever a test does
TICK = 0.05  # socket timeout of the server's loops (how fast they notice a stop)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Peer:
    """The server's end of one accepted connection, with its read buffer."""

    def __init__(self, sock: socket.socket, server: ScriptedServer) -> None:
        self.sock = sock
        self.server = server
        self.buf = bytearray()
        sock.settimeout(TICK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fill(self, deadline: float) -> bool:
        """Read what is there; False on EOF, a reset, the server stopping or the deadline."""
        while not self.server.stopping.is_set() and time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not data:
                return False
            self.buf += data
            return True
        return False

    def read_request(self, timeout: float = 5.0) -> Request | None:
        """The next request (its body framed by Content-Length), or None."""
        deadline = time.monotonic() + timeout
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not self._fill(deadline):
                return None
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        stop = end + 4 + int(headers.get("content-length", "0"))
        while len(self.buf) < stop:
            if not self._fill(deadline):
                return None
        body = bytes(self.buf[end + 4 : stop])
        del self.buf[:stop]
        return Request(method, target, headers, body)

    def send(self, data: bytes) -> None:
        self.sock.settimeout(5.0)  # sendall's timeout bounds the whole write
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(TICK)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


Handler = Callable[[Peer], None]


class ScriptedServer:
    """Accepts on 127.0.0.1 (port 0) in a thread; each connection runs ``handler(peer)``
    in a thread of its own. Every loop polls ``stopping``; ``stop`` ends them all.
    With ``ssl_context`` (server side), each accepted socket is wrapped and its TLS
    handshake completed in the connection's thread before the handler runs; a failed
    handshake is kept in ``tls_errors`` and the handler does not run."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.tls_errors: list[BaseException] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(128)
        self.listener.settimeout(TICK)
        self.host = f"{HOST}:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.accepts = 0
        self.peers: list[Peer] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self._accepter = threading.Thread(target=self._accept_loop, name=f"scripted-{self.host}", daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + SERVER_LIFETIME
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            peer = Peer(sock, self)
            thread = threading.Thread(target=self._run, args=(peer,), daemon=True)
            with self.lock:
                self.accepts += 1
                self.peers.append(peer)
                self.threads.append(thread)
            thread.start()
        self.stopping.set()  # lifetime over: the handlers end too

    def _run(self, peer: Peer) -> None:
        try:
            if self.ssl_context is not None and not self._handshake(peer):
                return
            self.handler(peer)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to look at
            with self.lock:
                self.errors.append(exc)
        finally:
            peer.close()

    def _handshake(self, peer: Peer) -> bool:
        """TLS, server side, on ``peer``'s socket (non-blocking, polling ``stopping``)."""
        assert self.ssl_context is not None
        sock = self.ssl_context.wrap_socket(peer.sock, server_side=True, do_handshake_on_connect=False)
        peer.sock = sock
        sock.setblocking(False)
        deadline = time.monotonic() + 5
        try:
            while True:
                if self.stopping.is_set() or time.monotonic() > deadline:
                    raise TimeoutError("the TLS handshake did not finish")
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    select.select([sock], [], [], TICK)
                except ssl.SSLWantWriteError:
                    select.select([], [sock], [], TICK)
        except OSError as exc:  # ssl.SSLError is an OSError
            with self.lock:
                self.tls_errors.append(exc)
            return False
        sock.settimeout(TICK)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self._accepter.join(2)
        self.listener.close()
        with self.lock:
            threads, peers = list(self.threads), list(self.peers)
        for thread in threads:
            thread.join(2)
        for peer in peers:
            peer.close()
        assert not self._accepter.is_alive()
        assert not any(t.is_alive() for t in threads), "a scripted handler did not stop"


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(handler, ssl_context)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def http_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None, reason: str = "X") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return head.encode("latin-1") + b"\r\n" + body


def echo(peer: Peer) -> None:
    """Keep-alive: answers every request with what it saw."""
    while (request := peer.read_request()) is not None:
        body = f"{request.method} {request.target} {len(request.body)}".encode()
        peer.send(http_response(200, body, {"X-Host": request.headers.get("host", "")}))


def drain(mux: Multiplexer, count: int, bound: float = 10.0) -> dict:
    """Poll ``mux`` until ``count`` requests have finished (at most ``bound`` seconds)."""
    results: dict = {}
    deadline = time.monotonic() + bound
    while len(results) < count:
        assert time.monotonic() < deadline, f"only {len(results)} of {count} finished: {results}"
        for token, result in mux.poll(0.1):
            assert token not in results, f"{token!r} reported twice"
            results[token] = result
    return results



# ======================================================================================
# A scripted server acting as a minimal S3

BUCKET = "scripted-bucket"
ACCESS_KEY = "AKIDSCRIPTED0000"


def s3_error(status: int, code: str, message: str) -> bytes:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>r1</RequestId></Error>"
    ).encode()
    return http_response(status, body, {"Content-Type": "application/xml"})


class FakeS3:
    """PutObject only. What a key gets depends on the word its name starts with:
    slow503 / throttle429 / drop: 503 / 429 / connection closed unanswered on the first
    attempt, then stored; deny: 403 always; down: 500 always; badetag: stored, answered
    with another ETag; anything else: stored."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.stored: dict[str, bytes] = {}
        self.tagging: dict[str, str | None] = {}

    def __call__(self, peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if not self.answer(peer, request):
                return

    def answer(self, peer: Peer, request: Request) -> bool:
        prefix = f"/{BUCKET}/"
        if request.method != "PUT" or not request.target.startswith(prefix):
            peer.send(s3_error(400, "Unexpected", f"{request.method} {request.target}"))
            return True
        key = unquote(request.target[len(prefix) :])
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if not request.headers.get("authorization", "").startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"):
            peer.send(s3_error(400, "MissingSecurityHeader", "unsigned"))
            return True
        md5 = hashlib.md5(request.body)
        if request.headers.get("content-md5") != base64.b64encode(md5.digest()).decode():
            peer.send(s3_error(400, "BadDigest", "Content-MD5 does not match"))
            return True
        kind = key.rsplit("/", 1)[-1].split("-", 1)[0]
        if kind == "slow503" and attempt == 1:
            peer.send(s3_error(503, "SlowDown", "Please reduce your request rate."))
        elif kind == "throttle429" and attempt == 1:
            peer.send(s3_error(429, "TooManyRequests", "Slow down"))
        elif kind == "drop" and attempt == 1:
            return False  # closed without an answer
        elif kind == "deny":
            peer.send(s3_error(403, "AccessDenied", "Access Denied"))
        elif kind == "down":
            peer.send(s3_error(500, "InternalError", "We encountered an internal error."))
        else:
            with self.lock:
                self.stored[key] = request.body
                self.tagging[key] = request.headers.get("x-amz-tagging")
            etag = hashlib.md5(b"something else").hexdigest() if kind == "badetag" else md5.hexdigest()
            peer.send(http_response(200, b"", {"ETag": f'"{etag}"'}))
        return True


def fake_s3_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    return {
        "AP_CONFIG_PATH": str(tmp_path / "home"),
        "AP_S3_BUCKET": BUCKET,
        "AP_S3_ENDPOINT": endpoint,
        "AP_S3_REGION": "eu-west-3",
        "AP_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "AP_S3_SECRET_ACCESS_KEY": "scripted-secret-0000",
    }


@pytest.fixture
def fake_s3(serve, tmp_path: Path) -> Iterator[tuple[FakeS3, S3Store]]:
    fake = FakeS3()
    server = serve(fake)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{server.host}")), workers=4)
    try:
        yield fake, store
    finally:
        store.close()


# ======================================================================================
# TLS: the scripted server wraps its sockets in a self-signed certificate for 127.0.0.1


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Trusts this certificate only (hostname checked, as the default context does)."""
        return ssl.create_default_context(cafile=str(self.cert))


def _cert_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def make_test_cert(folder: Path) -> TlsFiles:
    """A self-signed certificate for IP 127.0.0.1: the openssl CLI, else the cryptography
    package; neither is a failure (never a skip)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True, capture_output=True, timeout=30,
        )
    else:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            pytest.fail(
                "cannot make the test TLS certificate: no `openssl` on PATH and the "
                "`cryptography` package is not importable (install either)"
            )
        _cert_with_cryptography(cert, key)
    return TlsFiles(cert, key)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_test_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def serve_tls(serve, tls: TlsFiles) -> Callable[[Handler], ScriptedServer]:
    context = tls.server_context()
    return lambda handler: serve(handler, ssl_context=context)



# ======================================================================================
# Proxies: a forward proxy run by the scripted server


class ForwardProxy:
    """A handler making the scripted server a forward HTTP proxy. ``CONNECT host:port``:
    answered 200, then bytes pumped both ways until either side closes. An absolute-form
    request (``GET http://host:port/path``): forwarded in origin form (without
    Proxy-Authorization) over a keep-alive connection to the origin, one response relayed
    (both framed by Content-Length), and the next request read. With ``authorization``,
    a request without that Proxy-Authorization is answered 407 (a CONNECT's connection
    then closes)."""

    def __init__(self, authorization: str | None = None) -> None:
        self.authorization = authorization
        self.lock = threading.Lock()
        self.seen: list[Request] = []  # every request as the proxy received it
        self.connects = 0
        self.absolute = 0
        self.refused = 0

    @property
    def lines(self) -> list[str]:
        with self.lock:
            return [f"{r.method} {r.target}" for r in self.seen]

    def __call__(self, peer: Peer) -> None:
        upstreams: dict[tuple[str, int], Peer] = {}
        try:
            while (request := peer.read_request()) is not None:
                with self.lock:
                    self.seen.append(request)
                if self.authorization is not None and request.headers.get("proxy-authorization") != self.authorization:
                    with self.lock:
                        self.refused += 1
                    peer.send(http_response(
                        407, b"", {"Proxy-Authenticate": 'Basic realm="test"'}, reason="Proxy Authentication Required"
                    ))
                    if request.method == "CONNECT":
                        return
                    continue
                if request.method == "CONNECT":
                    with self.lock:
                        self.connects += 1
                    self._tunnel(peer, request.target)
                    return
                url = urlsplit(request.target)
                if url.scheme != "http" or not url.hostname:
                    peer.send(http_response(400, b"not an absolute-form request"))
                    continue
                with self.lock:
                    self.absolute += 1
                origin = (url.hostname, url.port or 80)
                try:
                    if origin not in upstreams:
                        upstreams[origin] = Peer(socket.create_connection(origin, timeout=5), peer.server)
                    head = f"{request.method} {url.path or '/'}{'?' + url.query if url.query else ''} HTTP/1.1\r\n"
                    head += "".join(f"{n}: {v}\r\n" for n, v in request.headers.items() if n != "proxy-authorization")
                    upstreams[origin].send(head.encode("latin-1") + b"\r\n" + request.body)
                except OSError:
                    return  # the origin is gone: so is this connection
                response = read_response(upstreams[origin])
                if response is None:
                    return  # the origin closed without answering: the client sees a close too
                peer.send(response)
        finally:
            for upstream in upstreams.values():
                upstream.close()

    @staticmethod
    def _tunnel(peer: Peer, target: str) -> None:
        name, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((name.strip("[]"), int(port)), timeout=5)
        except (OSError, ValueError):
            peer.send(http_response(502, b"", reason="Bad Gateway"))
            return
        with upstream:
            peer.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if peer.buf:
                upstream.sendall(bytes(peer.buf))
                peer.buf.clear()
            peer.sock.settimeout(5)
            ends = (peer.sock, upstream)
            while not peer.server.stopping.is_set():
                readable, _, _ = select.select(ends, [], [], TICK)
                for source in readable:
                    try:
                        data = source.recv(1 << 16)
                        if not data:
                            return
                        (upstream if source is peer.sock else peer.sock).sendall(data)
                    except OSError:
                        return


def read_response(peer: Peer, timeout: float = 5.0) -> bytes | None:
    """One response's bytes (framed by Content-Length) from ``peer``'s buffer, or None."""
    deadline = time.monotonic() + timeout
    while (end := peer.buf.find(b"\r\n\r\n")) < 0:
        if not peer._fill(deadline):
            return None
    length = 0
    for line in peer.buf[:end].decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    stop = end + 4 + length
    while len(peer.buf) < stop:
        if not peer._fill(deadline):
            return None
    raw = bytes(peer.buf[:stop])
    del peer.buf[:stop]
    return raw


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch) -> None:
    """No *_PROXY variable of the machine's reaches these tests (proxy_for reads them all)."""
    import os

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name, raising=False)


def recorder() -> tuple[list[Request], Handler]:
    """An echo handler that keeps every request it gets."""
    seen: list[Request] = []

    def handler(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            seen.append(request)
            body = f"{request.method} {request.target} {len(request.body)}".encode()
            peer.send(http_response(200, body, {"X-Host": request.headers.get("host", "")}))

    return seen, handler


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


# ======================================================================================
# Multiplexer: urllib3 connects, httptools parses, our loop schedules


def session_for(host: str, scheme: str = "http", *, read: float = 5, request: float = 30,
                ca: str | None = None) -> Session:
    return Session(f"{scheme}://{host}", timeouts=Timeouts(connect=5, read=read, request=request), ca_bundle=ca)


def mux_for(server: ScriptedServer, size: int, scheme: str = "http", **timeouts) -> Multiplexer:
    return Multiplexer(session_for(server.host, scheme, **timeouts), f"{scheme}://{server.host}", size)


PIECES = [
    b"HTTP/1.1 200 OK\r",
    b"\nContent-Type: text/plain\r\nTransfer-Enc",
    b"oding: chunked\r\n\r",
    b"\n",
    b"5;ext=\"q\"\r\nhel",
    b"lo\r",
    b"\n6\r",
    b"\n world\r\n",
    b"0\r\nX-Trailer: t\r\n",
    b"\r\n",
]


def in_pieces(peer: Peer) -> None:
    """Keep-alive; a 100 Continue first, then each response in small sends with pauses: the
    head split mid-line and mid-CRLF, a chunked body split mid-chunk, trailers."""
    while peer.read_request() is not None:
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        for piece in PIECES:
            peer.send(piece)
            time.sleep(0.01)


def silent(peer: Peer) -> None:
    if peer.read_request() is not None:
        peer.server.stopping.wait(SERVER_LIFETIME)  # until the test ends


def trickle(peer: Peer) -> None:
    """Answers one byte every 0.2 s: never idle long enough for a read timeout."""
    if peer.read_request() is None:
        return
    for byte in http_response(200, b"x" * 1000):
        if peer.server.stopping.is_set():
            return
        try:
            peer.send(bytes([byte]))
        except OSError:
            return
        time.sleep(0.2)


def test_encode_request_refuses_line_breaks_and_nul() -> None:
    assert encode_request("GET", "/k", [("Host", "h"), ("X-A", "1")]) == b"GET /k HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    for headers in ([("X", "a\r\nInjected: 1")], [("X\n", "a")], [("X", "a\0")], [("X Y", "a")]):
        with pytest.raises(ValueError):
            encode_request("GET", "/", headers)
    with pytest.raises(ValueError):
        encode_request("GET", "/a b HTTP/1.1\r\nX: y", [])


def test_multiplexer_keeps_connections_alive_and_parses_pieces(serve) -> None:
    server = serve(in_pieces)
    mux = mux_for(server, 3)
    try:
        for round_ in range(2):
            for i in range(3):
                mux.send((round_, i), "GET", f"/{i}", {})
            assert mux.free == 0
            results = drain(mux, 3)
            for token, result in results.items():
                assert isinstance(result, Response), (token, result)
                assert (result.status, result.body) == (200, b"hello world")
                assert result.headers["content-type"] == "text/plain"
            assert mux.free == 3 and mux.in_flight == 0
    finally:
        mux.close()
    assert server.accepts == 3  # the second round reused the three connections


def test_multiplexer_runs_size_requests_at_once(serve) -> None:
    size = 4
    arrived = 0
    cond = threading.Condition()

    def wait_for_all(peer: Peer) -> None:
        nonlocal arrived
        while peer.read_request() is not None:
            with cond:
                arrived += 1
                cond.notify_all()
                cond.wait_for(lambda: arrived >= size, timeout=3)  # a serial client would stall here
                seen = arrived
            peer.send(http_response(200, str(seen).encode()))

    server = serve(wait_for_all)
    mux = mux_for(server, size)
    try:
        mux.warm(size)  # connections opened at once, in threads
        for i in range(size):
            mux.send(i, "GET", f"/{i}", {})
        assert mux.free == 0 and mux.in_flight == size
        results = drain(mux, size)
    finally:
        mux.close()
    assert sorted(results) == list(range(size))
    for result in results.values():
        assert isinstance(result, Response) and result.body == str(size).encode()  # all arrived before any answer
    assert server.accepts == size


def test_warm_opens_one_connection_when_connecting_is_cheap_and_the_rest_as_requests_need_them(serve, monkeypatch) -> None:
    """A loopback connect costs less than the threads that would open the others: warm
    opens one (timed) and returns; where a connect is dear (CHEAP_CONNECT 0 here: every
    connect counts as dear) it opens them all at once."""
    import apstorage.stores.s3_http as s3_http

    server = serve(silent)
    mux = mux_for(server, 4)
    try:
        mux.warm(4)
        assert sum(slot.sock is not None for slot in mux._idle) == 1
        mux.warm(4)  # asked again: still cheap, nothing more opened ahead of need
        assert sum(slot.sock is not None for slot in mux._idle) == 1
    finally:
        mux.close()
    monkeypatch.setattr(s3_http, "CHEAP_CONNECT", 0.0)
    dear = mux_for(server, 4)
    try:
        dear.warm(4)
        assert sum(slot.sock is not None for slot in dear._idle) == 4
    finally:
        dear.close()


def test_multiplexer_read_timeout_for_a_silent_server(serve) -> None:
    server = serve(silent)
    mux = mux_for(server, 2, read=0.3, request=30)
    try:
        mux.send("lost", "GET", "/never", {})
        results = drain(mux, 1)
        assert type(results["lost"]) is ReadTimeoutError, results
        assert mux.free == 2 and mux.in_flight == 0
        assert mux.poll(0) == []  # reported once
    finally:
        mux.close()


def test_multiplexer_request_deadline_for_a_trickling_server(serve) -> None:
    server = serve(trickle)
    mux = mux_for(server, 1, read=1, request=1.5)
    try:
        mux.send("slow", "GET", "/trickle", {})
        results = drain(mux, 1)
        assert isinstance(results["slow"], DeadlineExceededError), results
        assert server.host in str(results["slow"])
    finally:
        mux.close()


def test_multiplexer_reports_a_refused_connection_through_poll() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    mux = Multiplexer(session_for(f"{HOST}:{port}"), f"http://{HOST}:{port}", 1)
    try:
        mux.send("t", "GET", "/", {})
        results = drain(mux, 1)
        assert isinstance(results["t"], EndpointConnectionError), results
        assert mux.free == 1
    finally:
        mux.close()


def test_multiplexer_lets_a_fault_of_the_program_surface_as_itself(serve, monkeypatch) -> None:
    """A missing module or a bug inside the request path is not the store's doing: it is
    raised as itself, never reported as a connection the server closed (a fresh install
    without httptools once failed every upload as "closed the connection")."""
    server = serve(in_pieces)
    mux = mux_for(server, 1)

    def broken(*args, **kwargs):
        raise ImportError("No module named 'httptools'")

    monkeypatch.setattr(mux, "_open", broken)
    try:
        with pytest.raises(ImportError, match="httptools"):
            mux.send("t", "GET", "/", {})
    finally:
        mux.close()


@pytest.mark.parametrize("idle_reply", [b"", http_response(408, b"idle too long", {"Connection": "close"})],
                         ids=["close", "408"])
def test_multiplexer_never_takes_what_an_idle_connection_got_as_the_next_answer(serve, idle_reply: bytes) -> None:
    sent = threading.Event()

    def answer_then_hang_up(peer: Peer) -> None:
        request = peer.read_request()
        if request is None:
            return
        peer.send(http_response(200, request.target.encode()))
        time.sleep(0.05)
        if idle_reply:
            peer.send(idle_reply)
        peer.close()
        sent.set()

    server = serve(answer_then_hang_up)
    mux = mux_for(server, 1)
    try:
        mux.send(1, "GET", "/one", {})
        assert drain(mux, 1)[1].body == b"/one"
        assert sent.wait(2)
        time.sleep(0.05)
        mux.send(2, "GET", "/two", {})  # the idle connection is checked first: dropped, reopened
        result = drain(mux, 1)[2]
        assert isinstance(result, Response) and (result.status, result.body) == (200, b"/two"), result
    finally:
        mux.close()
    assert server.accepts == 2


def test_multiplexer_bytes_after_a_complete_answer_are_a_protocol_error(serve) -> None:
    def extra(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(http_response(200, b"ok") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmugg")

    server = serve(extra)
    mux = mux_for(server, 1)
    try:
        mux.send(1, "GET", "/", {})
        result = drain(mux, 1)[1]
        assert isinstance(result, ProtocolViolationError), result
        assert "after a complete answer" in str(result)
    finally:
        mux.close()


def test_multiplexer_bounds_what_it_buffers(serve) -> None:
    def big(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            status = 200 if request.target == "/ok" else 500
            peer.send(f"HTTP/1.1 {status} X\r\nContent-Length: {2**40}\r\n\r\n".encode())
            try:
                for _ in range(64):  # 4 MiB of the promised terabyte, then the test ends
                    peer.send(b"z" * 65536)
            except OSError:
                return

    server = serve(big)
    mux = mux_for(server, 2, read=1)
    try:
        mux.send("ok", "GET", "/ok", {}, limit=1024 * 1024)
        mux.send("err", "GET", "/err", {})
        results = drain(mux, 2)
        assert isinstance(results["ok"], BodyTooLargeError), results
        # an error answer is cut at MAX_ERROR_BODY and then waits for its (never-coming) end
        assert isinstance(results["err"], (ReadTimeoutError, ConnectionClosedError)) or (
            isinstance(results["err"], Response) and len(results["err"].body) <= MAX_ERROR_BODY
        ), results
    finally:
        mux.close()


def test_multiplexer_reports_a_body_cut_short(serve) -> None:
    def cut(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    server = serve(cut)
    mux = mux_for(server, 1)
    try:
        mux.send(1, "GET", "/", {})
        result = drain(mux, 1)[1]
        assert isinstance(result, ConnectionClosedError), result
        assert "middle of the body" in str(result)
    finally:
        mux.close()


def test_multiplexer_reads_http10_bodies_framed_by_the_close(serve) -> None:
    def http10(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            time.sleep(0.05)
            peer.send(b"second part")

    server = serve(http10)
    mux = mux_for(server, 1)
    try:
        mux.send(1, "GET", "/", {})
        result = drain(mux, 1)[1]
        assert isinstance(result, Response) and result.body == b"first part, second part", result
    finally:
        mux.close()


def test_multiplexer_sends_and_receives_big_bodies(serve) -> None:
    size = 3 * 1024 * 1024
    big_response = random.Random(7).randbytes(size)

    def digest(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if request.method == "GET":
                peer.send(http_response(200, big_response))
            else:
                sha = hashlib.sha256(request.body).hexdigest()
                peer.send(http_response(200, sha.encode(), {"X-Length": str(len(request.body))}))

    server = serve(digest)
    bodies = {i: random.Random(i).randbytes(size + i) for i in range(2)}
    mux = mux_for(server, 3)
    try:
        for i, body in bodies.items():
            mux.send(i, "PUT", f"/{i}", {"Content-Length": str(len(body))}, body)
        mux.send("get", "GET", "/big", {}, limit=size)
        results = drain(mux, 3)
    finally:
        mux.close()
    for i, body in bodies.items():
        result = results[i]
        assert isinstance(result, Response), result
        assert result.headers["x-length"] == str(len(body))
        assert result.body == hashlib.sha256(body).hexdigest().encode()
    assert isinstance(results["get"], Response) and results["get"].body == big_response


# ======================================================================================
# Session.request: one request at a time through urllib3, with a deadline


def test_session_keeps_one_connection_alive_and_reads_pieces(serve) -> None:
    server = serve(in_pieces)
    session = session_for(server.host)
    try:
        for _ in range(3):
            response = session.request("GET", f"http://{server.host}/x", {})
            assert (response.status, response.body) == (200, b"hello world")
    finally:
        session.close()
    assert server.accepts == 1


def test_session_drops_an_idle_connection_answered_408_before_reuse(serve) -> None:
    def answer_then_408(peer: Peer) -> None:
        request = peer.read_request()
        if request is None:
            return
        peer.send(http_response(200, request.target.encode()))
        time.sleep(0.05)
        peer.send(http_response(408, b"", {"Connection": "close"}))
        peer.close()

    server = serve(answer_then_408)
    session = session_for(server.host)
    try:
        assert session.request("GET", f"http://{server.host}/one", {}).body == b"/one"
        time.sleep(0.3)
        response = session.request("GET", f"http://{server.host}/two", {})
        assert (response.status, response.body) == (200, b"/two")
    finally:
        session.close()
    assert server.accepts == 2


@pytest.mark.parametrize("handler, error", [(silent, ReadTimeoutError), (trickle, DeadlineExceededError)],
                         ids=["silent", "trickle"])
def test_session_bounds_a_silent_or_trickling_server(serve, handler, error) -> None:
    server = serve(handler)
    session = session_for(server.host, read=0.5, request=1.5)
    try:
        with pytest.raises(error) as raised:
            session.request("GET", f"http://{server.host}/slow", {})
        assert server.host in str(raised.value)
        if error is ReadTimeoutError:
            assert not isinstance(raised.value, DeadlineExceededError)
    finally:
        session.close()


def test_session_bounds_bodies(serve) -> None:
    def big(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            status = 200 if request.target == "/ok" else 500
            peer.send(http_response(status, b"z" * (2 * 1024 * 1024)))

    server = serve(big)
    session = session_for(server.host)
    try:
        with pytest.raises(BodyTooLargeError):
            session.request("GET", f"http://{server.host}/ok", {}, limit=1024 * 1024)
        error = session.request("GET", f"http://{server.host}/err", {})
        assert error.status == 500 and len(error.body) == MAX_ERROR_BODY
    finally:
        session.close()


# ======================================================================================
# One deadline per operation, retries included; then the session is down


def silent_counting(seen: list[str]) -> Callable[[Peer], None]:
    def handler(peer: Peer) -> None:
        request = peer.read_request()
        if request is not None:
            seen.append(f"{request.method} {request.target}")
            peer.server.stopping.wait(SERVER_LIFETIME)  # until the test ends

    return handler


def slow_store(serve, tmp_path: Path, seen: list[str]) -> S3Store:
    server = serve(silent_counting(seen))
    env = {**fake_s3_env(tmp_path, f"http://{server.host}"), "AP_S3_TIMEOUT_SECONDS": "1"}
    return S3Store(settings_from(env), workers=2)


@pytest.mark.parametrize("path", ["botocore client (HeadObject)", "signed path (PutObject)", "multiplexer (put_many)"])
def test_a_silent_server_costs_one_operation_deadline_then_nothing_more(serve, tmp_path: Path, path: str) -> None:
    """AP_S3_TIMEOUT_SECONDS=1: an operation's attempts share one 2 s deadline (the read
    timeout ends the first, the deadline the second: at most 2 requests, where botocore's
    4 attempts or the signed path's 3 would each wait their own), and once it has passed,
    the next operation of the run fails at once without a request."""
    seen: list[str] = []
    store = slow_store(serve, tmp_path, seen)

    def operation(key: str) -> ApStorageError | None:
        if path.startswith("botocore"):
            try:
                store.stat(key)
            except ApStorageError as exc:
                return exc
            return None
        if path.startswith("signed"):
            try:
                store.put_bytes(key, b"body")
            except ApStorageError as exc:
                return exc
            return None
        [(_, error)] = list(store.put_many([(key, key, b"body", None)], concurrency=2, expected=1))
        return error

    try:
        first = operation("project/p/FLOW_RUN_LOG/first")
        assert isinstance(first, BackendUnavailableError), first
        assert "retries included" in first.message and "127.0.0.1" in first.message, first.message
        assert 1 <= len(seen) <= 2, seen
        assert store.down_reason() is not None
        sent = len(seen)
        second = operation("project/p/FLOW_RUN_LOG/second")
        assert isinstance(second, BackendUnavailableError) and "retries included" in second.message
        assert len(seen) == sent  # nothing more was sent
    finally:
        store.close()


def test_multiplexer_fails_a_request_whose_operation_is_over_without_connecting(serve) -> None:
    server = serve(echo)
    mux = mux_for(server, 1)
    try:
        mux.send("late", "GET", "/x", {}, due=time.monotonic() - 1)
        result = drain(mux, 1)["late"]
        assert isinstance(result, DeadlineExceededError) and server.accepts == 0
        assert mux.session.down is not None
    finally:
        mux.close()


def test_timeouts_follow_ap_s3_timeout_seconds() -> None:
    assert Timeouts.from_read(60) == Timeouts(connect=10, read=60, request=120)
    assert Timeouts.from_read(2) == Timeouts(connect=2, read=2, request=4)


# ======================================================================================
# Retries: botocore's standard mode, throttling backed off longer


def test_retry_policy_follows_botocore_standard_mode() -> None:
    policy = RetryPolicy(rand=lambda: 1.0)  # the top of each jittered range
    started = time.monotonic()
    assert [policy.delay(n, started, throttled=False) for n in (1, 2, 3)] == [0.05, 0.1, None]
    assert [policy.delay(n, started, throttled=True) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 16, 20]
    assert policy.delay(10, started, throttled=True) is None  # throttled_attempts
    assert policy.delay(1, started, throttled=False, retryable=False) is None
    assert policy.delay(1, started, throttled=True, retry_after=7) == 7  # Retry-After honoured
    assert policy.delay(1, started, throttled=True, retry_after=3600) == 20  # ...up to the cap
    assert policy.delay(1, started - 400, throttled=True) is None  # the time budget is spent
    assert RetryPolicy(rand=lambda: 0.0).delay(2, started, throttled=True) == 0.0  # full jitter: from 0
    for code in ("SlowDown", "Throttling", "RequestLimitExceeded", "ThrottlingException"):
        assert policy.is_throttle(400, code)
    assert policy.is_throttle(429, "") and policy.is_throttle(503, "ServiceUnavailable")
    assert policy.is_retryable(500, "InternalError") and policy.is_retryable(400, "RequestTimeout")
    assert not policy.is_retryable(403, "AccessDenied") and not policy.is_retryable(400, "BadDigest")
    assert retry_after({"retry-after": "3"}) == 3 and retry_after({"x-amz-retry-after": "1500"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None and retry_after({}) is None



def test_put_many_retries_503_429_and_dropped_connections(fake_s3) -> None:
    fake, store = fake_s3
    keys = (
        [f"dir/ok-{i}" for i in range(12)]
        + [f"dir/slow503-{i}" for i in range(4)]
        + [f"throttle429-{i}" for i in range(2)]
        + [f"drop-{i}" for i in range(3)]
        + ["dir/with space/ok-é~"]
    )
    bodies = {key: f"body of {key}".encode() * (i + 1) for i, key in enumerate(keys)}
    tags = {key: {"ap-retention": "execution", "i": str(i)} if i % 3 == 0 else None for i, key in enumerate(keys)}
    items = ((f"token-{key}", key, bodies[key], tags[key]) for key in keys)

    results = list(store.put_many(items, concurrency=4))

    assert sorted(token for token, _ in results) == sorted(f"token-{key}" for key in keys)
    assert [(token, error) for token, error in results if error is not None] == []
    for key in keys:
        retried = key.rsplit("/", 1)[-1].split("-")[0] in ("slow503", "throttle429", "drop")
        assert fake.attempts[key] == (2 if retried else 1), key
        assert fake.stored[key] == bodies[key]
        assert fake.tagging[key] == (urlencode(tags[key]) if tags[key] else None)
    assert store._client is None  # custom endpoint + keys: no botocore client was built
    assert store.fast.host == store.endpoint.split("//", 1)[1]


def test_put_many_pulls_items_only_as_connections_free_up(fake_s3) -> None:
    _, store = fake_s3
    concurrency = 3
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(20):
            pulled += 1
            yield i, f"lazy-{i}", b"x" * i, None

    finished = 0
    for _, error in store.put_many(items(), concurrency=concurrency):
        assert error is None
        assert pulled <= finished + concurrency  # never more bodies held than connections
        finished += 1
    assert (pulled, finished) == (20, 20)


def test_put_many_does_not_retry_403(fake_s3) -> None:
    fake, store = fake_s3
    results = dict(store.put_many(iter([(1, "ok-1", b"a", None), (2, "deny-2", b"b", None)]), concurrency=2))
    assert results[1] is None
    assert isinstance(results[2], PermissionDeniedError), results[2]
    assert "deny-2" in str(results[2]) and "AccessDenied" in str(results[2])
    assert fake.attempts["deny-2"] == 1


def test_put_many_reports_a_wrong_etag(fake_s3) -> None:
    fake, store = fake_s3
    results = dict(store.put_many(iter([(1, "badetag-1", b"bytes", None)]), concurrency=2))
    error = results[1]
    assert type(error) is ApStorageError, error
    assert "ETag" in str(error) and hashlib.md5(b"bytes").hexdigest() in str(error)
    assert fake.attempts["badetag-1"] == 1


def test_put_many_gives_up_after_attempts(fake_s3) -> None:
    fake, store = fake_s3
    results = dict(store.put_many(iter([(1, "down-1", b"bytes", None), (2, "ok-2", b"fine", None)]), concurrency=2))
    assert results[2] is None
    assert isinstance(results[1], BackendUnavailableError), results[1]
    assert "InternalError" in str(results[1])
    assert fake.attempts["down-1"] == RetryPolicy().attempts


@pytest.mark.parametrize(
    "key, attempts, error",
    [
        ("ok-single", 1, None),
        ("slow503-single", 2, None),
        ("drop-single", 2, None),
        ("deny-single", 1, PermissionDeniedError),
        ("down-single", RetryPolicy().attempts, BackendUnavailableError),
        ("badetag-single", 1, ApStorageError),
    ],
)
def test_put_bytes_retries_like_put_many(fake_s3, key: str, attempts: int, error: type | None) -> None:
    fake, store = fake_s3
    store.put_bytes("warm-up", b"w")  # a keep-alive connection exists before the tested request
    if error is None:
        store.put_bytes(key, b"payload", tags={"a": "b"})
        assert fake.stored[key] == b"payload"
        assert fake.tagging[key] == "a=b"
    else:
        with pytest.raises(error) as raised:
            store.put_bytes(key, b"payload")
        assert key in str(raised.value)
    assert fake.attempts[key] == attempts


class ThrottlingS3(FakeS3):
    """FakeS3 behind a token bucket: over ``rate`` requests/s, 503 SlowDown."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()
        self.throttled = 0

    def answer(self, peer: Peer, request: Request) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            allowed = self.tokens >= 1
            if allowed:
                self.tokens -= 1
            else:
                self.throttled += 1
        if not allowed:
            peer.send(s3_error(503, "SlowDown", "Please reduce your request rate."))
            return True
        return super().answer(peer, request)


def test_put_many_against_a_store_throttling_at_50_per_second_finishes(serve, tmp_path: Path) -> None:
    fake = ThrottlingS3(rate=50)
    server = serve(fake)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{server.host}")), workers=64)
    keys = [f"throttled/{i:03d}" for i in range(300)]
    try:
        results = dict(store.put_many(((k, k, k.encode(), None) for k in keys), concurrency=64))
    finally:
        store.close()
    assert results == {key: None for key in keys}  # slower, but every one arrived
    assert set(fake.stored) == set(keys)
    assert fake.throttled > 0  # it was throttled, and it slowed down rather than failing


class EarlyRefusal(FakeS3):
    """Refuses a PUT that announces 100-continue with a 403 before reading its body."""

    def __init__(self) -> None:
        super().__init__()
        self.expects: list[str] = []
        self.body_bytes_read = 0

    def __call__(self, peer: Peer) -> None:
        deadline = time.monotonic() + 5
        while (end := peer.buf.find(b"\r\n\r\n")) < 0:
            if not peer._fill(deadline):
                return
        head = peer.buf[:end].decode("latin-1").lower()
        self.expects.append("expect: 100-continue" in head)
        peer.send(s3_error(403, "AccessDenied", "refused before the body"))
        time.sleep(0.2)
        self.body_bytes_read = len(peer.buf) - end - 4


def test_a_put_over_one_mib_hears_an_early_refusal_as_access_denied(serve, tmp_path: Path) -> None:
    fake = EarlyRefusal()
    server = serve(fake)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{server.host}")), workers=2)
    try:
        with pytest.raises(PermissionDeniedError, match="AccessDenied"):
            store.put_bytes("big", b"b" * (2 * 1024 * 1024))
    finally:
        store.close()
    assert fake.expects == [True]  # one attempt, announced with Expect: 100-continue
    assert fake.body_bytes_read < 1024 * 1024  # the body was not sent




def test_tls_session_and_multiplexer_keep_alive_pieces_and_big_bodies(serve_tls, tls: TlsFiles) -> None:
    """The non-blocking TLS paths: a 3 MiB body on a non-blocking socket (SSLWantWrite),
    answers arriving a few bytes per record and records without application data
    (SSLWantRead), a 3 MiB answer read record by record (pending())."""
    size = 4
    big = 3 * 1024 * 1024
    big_response = random.Random(11).randbytes(big)
    big_request = random.Random(12).randbytes(big)

    def script(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if request.method == "PUT":
                reply = http_response(200, hashlib.sha256(request.body).hexdigest().encode(),
                                      {"X-Length": str(len(request.body))})
                for i in range(0, len(reply), 13):  # thirteen bytes per TLS record
                    peer.send(reply[i : i + 13])
            elif request.target == "/big":
                peer.send(http_response(200, big_response))
            else:
                for piece in PIECES:
                    peer.send(piece)
                    time.sleep(0.005)

    server = serve_tls(script)
    mux = mux_for(server, size, "https", ca=str(tls.cert))
    session = session_for(server.host, "https", ca=str(tls.cert))
    try:
        mux.warm(size)
        time.sleep(0.1)  # TLS 1.3 session tickets arrive on the idle sockets: not a close
        for round_ in range(2):
            mux.send((round_, "put"), "PUT", "/put", {"Content-Length": str(big)}, big_request)
            mux.send((round_, "big"), "GET", "/big", {}, limit=big)
            for i in range(size - 2):
                mux.send((round_, i), "GET", f"/pieces/{i}", {})
            results = drain(mux, size)
            put = results.pop((round_, "put"))
            assert isinstance(put, Response) and put.body == hashlib.sha256(big_request).hexdigest().encode(), put
            got = results.pop((round_, "big"))
            assert isinstance(got, Response) and got.body == big_response
            assert all(isinstance(r, Response) and r.body == b"hello world" for r in results.values()), results
        for _ in range(2):
            assert session.request("GET", f"https://{server.host}/s", {}).body == b"hello world"
    finally:
        mux.close()
        session.close()
    assert server.accepts == size + 1  # the second round reused the TLS connections
    assert server.errors == [] and server.tls_errors == []


def test_tls_verification_failure_is_an_ssl_error_everywhere(serve_tls, tls: TlsFiles, tmp_path: Path, monkeypatch) -> None:
    server = serve_tls(echo)
    session = session_for(server.host, "https")  # botocore's CA bundle: not our certificate
    with pytest.raises(SSLError):
        session.request("GET", f"https://{server.host}/", {})
    mux = Multiplexer(session, f"https://{server.host}", 1)
    try:
        mux.send("t", "GET", "/", {})
        assert isinstance(drain(mux, 1)["t"], SSLError)
    finally:
        mux.close()
        session.close()
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"https://{server.host}")), workers=2)
    try:
        failures = []
        for call in (lambda: store.put_bytes("k", b"v"), lambda: list(store.list("")),
                     lambda: b"".join(store.open("k")), lambda: store.stat("k"),
                     lambda: dict(store.put_many(iter([(1, "k", b"v", None)]), concurrency=2))[1]):
            try:
                result = call()
            except ApStorageError as exc:
                result = exc
            failures.append(result)
    finally:
        store.close()
    for failure in failures:  # the same failure reads the same on every path: exit 8, "TLS", the host
        assert isinstance(failure, BackendUnavailableError), failure
        assert "TLS" in str(failure) and server.host in str(failure), failure


def test_s3_put_bytes_and_put_many_over_tls(serve_tls, tls: TlsFiles, tmp_path: Path, monkeypatch) -> None:
    fake = FakeS3()
    server = serve_tls(fake)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls.cert))  # before the store builds its session
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"https://{server.host}")), workers=4)
    try:
        store.put_bytes("tls/one", b"first object")
        store.put_bytes("tls/two", b"second", tags={"ap-retention": "execution"})
        store.put_bytes("tls/drop-3", b"retried on a fresh TLS connection")
        with pytest.raises(ApStorageError, match="ETag"):
            store.put_bytes("tls/badetag-4", b"checked")
        big = random.Random(5).randbytes(800 * 1024)
        bodies = {f"many/ok-{i}": f"object {i}".encode() * (i + 1) for i in range(10)}
        bodies.update({"many/slow503-0": b"after a 503", "many/drop-1": b"after a drop", "many/big": big})
        results = dict(store.put_many(((k, k, b, None) for k, b in bodies.items()), concurrency=4))
        assert results == {key: None for key in bodies}  # every ETag matched its MD5
    finally:
        store.close()
    for key, body in {**bodies, "tls/one": b"first object", "tls/two": b"second"}.items():
        assert fake.stored[key] == body, key
    assert fake.tagging["tls/two"] == "ap-retention=execution"
    assert fake.attempts["many/slow503-0"] == 2 and fake.attempts["many/drop-1"] == 2
    assert fake.attempts["tls/drop-3"] == 2
    assert server.tls_errors == [] and server.errors == []


def test_ca_bundle_prefers_aws_ca_bundle_then_requests_ca_bundle(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    default = ca_bundle()
    assert Path(default).is_file()  # botocore's bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "requests.pem"))
    assert ca_bundle() == str(tmp_path / "requests.pem")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "aws.pem"))
    assert ca_bundle() == str(tmp_path / "aws.pem")


# ======================================================================================
# Proxies: botocore's rule for every request


def test_proxy_rule_is_botocores(monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy:3128")
    monkeypatch.setenv("HTTPS_PROXY", "secure-proxy:3129")
    monkeypatch.setenv("ALL_PROXY", "http://all-proxy:1")
    monkeypatch.setenv("NO_PROXY", "internal.example,.corp.example")
    assert session_for("s3.example.com").proxy_url("http://s3.example.com/b") == "http://plain-proxy:3128"
    assert session_for("s3.example.com", "https").proxy_url("https://s3.example.com/b") == "http://secure-proxy:3129"
    assert session_for("internal.example").proxy_url("http://internal.example/b") is None
    assert session_for("x.corp.example", "https").proxy_url("https://x.corp.example/b") is None
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("HTTPS_PROXY")
    # ALL_PROXY alone: botocore does not read it, so nothing apstorage sends uses it
    assert session_for("s3.example.com", "https").proxy_url("https://s3.example.com/b") is None


@pytest.mark.parametrize("credentials", [False, True], ids=["open-proxy", "proxy-with-credentials"])
def test_s3_store_sends_everything_through_the_http_proxy(serve, tmp_path: Path, monkeypatch, credentials: bool) -> None:
    fake = FakeS3()
    origin = serve(fake)
    forward = ForwardProxy(authorization=basic("ap user:p@ss:word") if credentials else None)
    proxy_server = serve(forward)
    user = "ap%20user:p%40ss%3Aword@" if credentials else ""
    monkeypatch.setenv("HTTP_PROXY", f"http://{user}{proxy_server.host}")
    monkeypatch.setenv("NO_PROXY", "")
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{origin.host}")), workers=4)
    try:
        store.put_bytes("single/one", b"one")
        store.put_bytes("single/drop-2", b"two", tags={"k": "v"})  # the origin drops it once
        bodies = {f"many/ok-{i}": f"body {i}".encode() * (i + 1) for i in range(12)}
        bodies.update({"many/slow503-x": b"503 first", "many/drop-y": b"dropped first"})
        results = dict(store.put_many(((k, k, b, None) for k, b in bodies.items()), concurrency=4))
        assert results == {key: None for key in bodies}
        with pytest.raises(ApStorageError):  # botocore's GET (FakeS3 answers PUT only): same route
            b"".join(store.open("single/one"))
    finally:
        store.close()
    bodies.update({"single/one": b"one", "single/drop-2": b"two"})
    assert {key: fake.stored[key] for key in bodies} == bodies
    puts = Counter(
        unquote(line.split(f"http://{origin.host}/{BUCKET}/", 1)[1]) for line in forward.lines if line.startswith("PUT ")
    )
    assert puts == fake.attempts  # every PutObject attempt went through the proxy, none around it
    assert any(line.startswith(f"GET http://{origin.host}/{BUCKET}/single/one") for line in forward.lines)
    assert forward.refused == 0 and forward.connects == 0


def test_s3_store_bypasses_the_proxy_for_no_proxy_hosts(serve, tmp_path: Path, monkeypatch) -> None:
    fake = FakeS3()
    origin = serve(fake)
    proxy_server = serve(ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy_server.host}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{origin.host}")), workers=4)
    try:
        store.put_bytes("direct", b"not proxied")
        assert dict(store.put_many(iter([(1, "direct-2", b"x", None)]), concurrency=2)) == {1: None}
    finally:
        store.close()
    assert fake.stored == {"direct": b"not proxied", "direct-2": b"x"}
    assert proxy_server.accepts == 0


def test_s3_store_over_tls_through_a_proxy_tunnel(serve, serve_tls, tls: TlsFiles, tmp_path: Path, monkeypatch) -> None:
    fake = FakeS3()
    origin = serve_tls(fake)
    forward = ForwardProxy()
    proxy_server = serve(forward)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls.cert))
    monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy_server.host}")
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"https://{origin.host}")), workers=4)
    try:
        store.put_bytes("tunnelled/one", b"one")
        bodies = {f"tunnelled/many-{i}": bytes([i]) * 100 for i in range(8)}
        assert dict(store.put_many(((k, k, b, None) for k, b in bodies.items()), concurrency=4)) == {k: None for k in bodies}
    finally:
        store.close()
    assert fake.stored == {"tunnelled/one": b"one", **bodies}
    assert forward.absolute == 0 and forward.connects >= 2  # the session's connection and the multiplexer's
    assert set(forward.lines) == {f"CONNECT {origin.host}"}


def test_a_dead_proxy_is_named_and_exits_8_on_every_path(tmp_path: Path, monkeypatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((HOST, 0))
        dead = f"{HOST}:{probe.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", f"http://user:sekrit@{dead}")
    store = S3Store(settings_from(fake_s3_env(tmp_path, "http://s3.invalid:9000")), workers=2)
    failures = []
    try:
        for call in (lambda: store.put_bytes("k", b"v"), lambda: list(store.list("")),
                     lambda: b"".join(store.open("k")), lambda: store.check_bucket(),
                     lambda: dict(store.put_many(iter([(1, "k", b"v", None)]), concurrency=2))[1]):
            try:
                result = call()
            except ApStorageError as exc:
                result = exc
            failures.append(result)
    finally:
        store.close()
    for failure in failures:
        assert isinstance(failure, BackendUnavailableError), failure
        assert "proxy" in str(failure) and dead in str(failure), failure
        assert "sekrit" not in str(failure)
    # check-iam's unsigned probes go through the same session and read the same.
    from apstorage.services.check_iam import run_checks

    report = run_checks(settings_from(fake_s3_env(tmp_path, "http://s3.invalid:9000")))
    assert report.unreachable is not None and "proxy" in report.unreachable and dead in report.unreachable
    assert "sekrit" not in report.unreachable


# ======================================================================================
# The real thing: SeaweedFS


def test_put_many_against_seaweedfs(seaweed, bucket: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    store = S3Store(settings_from({**s3_env, "AP_CONFIG_PATH": str(tmp_path / "home")}), workers=16)
    rng = random.Random(2026)
    sizes = [0, 1, 100, 4096, 10_000]
    objects: dict[str, bytes] = {}
    tags: dict[str, dict[str, str] | None] = {}
    for i in range(200):
        key = f"many/{i % 7}/obj-{i:03d}"
        objects[key] = rng.randbytes(300 * 1024 if i == 7 else sizes[i % len(sizes)])  # one over ONE_WRITE
        tags[key] = {"ap-retention": "execution", "n": str(i)} if i % 4 == 0 else None
    try:
        results = list(store.put_many(((key, key, body, tags[key]) for key, body in objects.items()), concurrency=16))
        assert sorted(token for token, _ in results) == sorted(objects)
        assert [(token, error) for token, error in results if error is not None] == []

        overwrite = {key: b"second version of " + key.encode() for key in list(objects)[:20]}
        results = list(store.put_many(((k, k, b, None) for k, b in overwrite.items()), concurrency=16))
        assert [(token, error) for token, error in results if error is not None] == []
        objects.update(overwrite)
        tags.update({key: None for key in overwrite})

        assert {info.key: info.size for info in store.list("many/")} == {k: len(b) for k, b in objects.items()}
        client = seaweed.client()
        for key, body in objects.items():
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
        for key, wanted in tags.items():
            if wanted is not None:
                tag_set = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
                assert {t["Key"]: t["Value"] for t in tag_set} == wanted, key
        for key in [k for k, wanted in tags.items() if wanted is None][:10]:
            assert client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [], key
    finally:
        store.close()


# ======================================================================================
# End to end: the CLI against the fault-injecting stand-in (tests/s3_faults.py) and SeaweedFS


def cli(env: dict[str, str | None], *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m apstorage`` with ``env`` on top of this process's environment minus AP_*
    (a None value removes the variable)."""
    import os
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("AP_") and not k.lower().endswith("_proxy")}
    full.update({k: v for k, v in env.items() if v is not None})
    for name in [k for k, v in env.items() if v is None]:
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "apstorage", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def faulty_env(faulty_s3, bucket: str, tmp_path: Path) -> dict[str, str]:
    return {**faulty_s3.info.ap_env(bucket), "AP_CONFIG_PATH": str(tmp_path / "home"),
            "AP_FILE_STORAGE_LOCATION": "S3", "AP_S3_TIMEOUT_SECONDS": "1"}


# Every command against a peer that never answers (stall), one that trickles its answer
# faster than the read timeout (trickle: bodies; trickle_head: the status line and headers
# too, so a PutObject's answer trickles), and one that trickles slower than it (one byte
# every 2 s, as the issue found). AP_S3_TIMEOUT_SECONDS=1: each must give up, exit 8, and
# name the host. ``timeout=`` of subprocess.run is a hang guard, not a speed threshold;
# the bound itself (2 x AP_S3_TIMEOUT_SECONDS, retries included) was measured by hand.
FAULTS = [("stall", 30.0), ("trickle", 0.3), ("trickle_head", 0.3), ("trickle_head", 2.0)]
COMMANDS = {
    "put": ["put", "in.txt", "-t", "FLOW_RUN_LOG", "--project", "p"],
    "put multipart": ["put", "big.bin", "-t", "FLOW_RUN_LOG", "--project", "p"],
    "get": ["get", "{id}", "-o", "-"],
    "du --verify": ["du", "--verify"],
    "sweep-expired": ["sweep-expired"],
    "check-iam": ["check-iam"],
    "migrate-to-s3": ["migrate-to-s3"],
    "gc": ["gc"],
}


@pytest.mark.parametrize("action, delay", FAULTS, ids=[f"{a}-{d:g}s" for a, d in FAULTS])
def test_every_command_gives_up_on_a_stalled_or_trickling_s3_with_exit_8_naming_the_host(
    faulty_s3, faulty_env: dict[str, str], tmp_path: Path, action: str, delay: float,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.s3_faults import Fault

    import io
    from datetime import datetime, timedelta, timezone

    from apstorage.model import FileRow, Location, new_id
    from apstorage.services.context import Storage
    from apstorage.stores.s3 import MULTIPART_THRESHOLD

    (tmp_path / "in.txt").write_bytes(b"stored before the fault")
    (tmp_path / "big.bin").write_bytes(b"m" * (MULTIPART_THRESHOLD + 4096))
    stored = cli(faulty_env, "put", "in.txt", "-t", "FLOW_RUN_LOG", "--project", "p", cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    file_id = stored.stdout.strip()
    storage = Storage(settings_from(faulty_env))
    try:  # an expired S3 row for sweep-expired, a DB row for migrate-to-s3
        row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p", size=3,
                      created=datetime.now(timezone.utc) - timedelta(days=90))
        row = FileRow(**{**row.__dict__, "s3_key": row.key})
        storage.store(Location.S3).put(row.s3_key, io.BytesIO(b"old"), 3)
        storage.catalog.insert(row)
        storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p",
                                       size=5), b"hello")
    finally:
        storage.close()
    faulty_s3.add(Fault(action, delay=delay))
    host = urlsplit(faulty_s3.endpoint).netloc
    commands = {name: [a.format(id=file_id) for a in args] for name, args in COMMANDS.items()}
    if action == "trickle":  # a PutObject answer has no body to trickle: trickle_head covers those
        del commands["put"], commands["migrate-to-s3"]
    run = lambda args: cli(faulty_env, *args, cwd=tmp_path, timeout=90)  # noqa: E731
    gc = commands.pop("gc")  # it shares sweep-expired's run lock: after the others
    with ThreadPoolExecutor(4) as pool:  # each waits out its own deadline
        results = dict(zip(commands, pool.map(run, commands.values())))
    results["gc"] = run(gc)
    for name, result in results.items():
        assert result.returncode == 8, (name, result.returncode, result.stderr[-2000:])
        assert host in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, (name, result.stderr)


def test_presign_upload_needs_no_network_even_when_s3_stalls(faulty_s3, faulty_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    from tests.s3_faults import Fault

    faulty_s3.add(Fault("stall", delay=30.0))
    result = cli(faulty_env, "presign", "--upload", "-t", "FLOW_RUN_LOG", "--project", "p", "--name", "a.txt",
                 "--size", "10", "--json", cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    import json

    answer = json.loads(result.stdout)
    assert urlsplit(answer["url"]).netloc == urlsplit(faulty_s3.endpoint).netloc, answer


@pytest.mark.parametrize("action, words", [("reset", "reset the connection"),
                                           ("cut_body", "before the whole body arrived")])
def test_reset_and_cut_body_read_differently_and_exit_8(
    faulty_s3, faulty_env: dict[str, str], tmp_path: Path, action: str, words: str,
) -> None:
    from tests.s3_faults import Fault

    (tmp_path / "in.txt").write_bytes(b"x" * 5000)
    stored = cli(faulty_env, "put", "in.txt", "-t", "FLOW_RUN_LOG", "--project", "p", cwd=tmp_path)
    assert stored.returncode == 0, stored.stderr
    faulty_s3.add(Fault(action, method="GET"))
    result = cli(faulty_env, "get", stored.stdout.strip(), "-o", "-", cwd=tmp_path)
    assert result.returncode == 8, result.stderr
    assert words in result.stderr and urlsplit(faulty_s3.endpoint).netloc in result.stderr, result.stderr


def test_a_migrate_against_a_store_throttling_at_50_per_second_finishes(
    faulty_s3, faulty_env: dict[str, str], tmp_path: Path,
) -> None:
    import json

    from apstorage.model import new_id
    from apstorage.services.context import Storage
    from tests.s3_faults import Fault

    storage = Storage(settings_from({**faulty_env, "AP_FILE_STORAGE_LOCATION": "DB"}))
    try:
        storage.catalog.init_schema()
        ids = [new_id() for _ in range(300)]
        with storage.catalog.transaction() as cur:
            p = storage.catalog.ph
            cur.executemany(
                f'INSERT INTO "file" ("id", "projectId", "location", "type", "size", "data", "compression", '
                f'"created", "updated") VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)',
                [(i, "proj", "DB", "FLOW_RUN_LOG", 100, i.encode() * 5, "NONE") for i in ids],
            )
    finally:
        storage.close()
    throttle = faulty_s3.add(Fault("throttle", method="PUT", rate=50))
    result = cli({**faulty_env, "AP_S3_TIMEOUT_SECONDS": "30"}, "migrate-to-s3", "--json", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["migrated"], report["failed"]) == (300, 0), report
    assert throttle.applied > 0  # it was throttled, slowed down, and finished


def test_irsa_without_credentials_is_one_line_and_exit_3_on_every_command(
    seaweed, bucket: str, tmp_path: Path,
) -> None:
    env = {
        "AP_CONFIG_PATH": str(tmp_path / "home"), "AP_FILE_STORAGE_LOCATION": "S3",
        "AP_S3_BUCKET": bucket, "AP_S3_ENDPOINT": seaweed.endpoint, "AP_S3_USE_IRSA": "true",
        "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None, "AWS_DEFAULT_PROFILE": None, "AWS_WEB_IDENTITY_TOKEN_FILE": None,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
    }
    (tmp_path / "in.txt").write_bytes(b"data")
    for args in (["put", "in.txt", "-t", "FLOW_RUN_LOG", "--project", "p"], ["du", "--verify"], ["check-iam"],
                 ["lifecycle", "show"], ["migrate-to-s3"]):
        result = cli(env, *args, cwd=tmp_path)
        assert result.returncode == 3, (args, result.stderr)
        assert "AP_S3_USE_IRSA" in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
