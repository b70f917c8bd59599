"""apstorage.stores.http11 (the lean HTTP/1.1 client of the signed S3 path) and the
retries ``_FastS3`` builds on it.

- ``parse_response`` / ``encode_request`` on byte buffers;
- ``Connection`` and ``Multiplexer`` against a scripted HTTP server run in a thread of
  this process (127.0.0.1, port 0, bounded lifetime, stopped when the test ends):
  keep-alive, stale connections, responses in pieces, concurrency, timeouts, big bodies;
- ``S3Store.put_many`` / ``put_bytes`` against that server acting as a minimal S3
  (503, 429 and dropped connections retried; 403 not; a wrong ETag; a lasting 500);
- TLS (a self-signed certificate for 127.0.0.1, the scripted server wrapping its
  sockets): ``Connection``, ``Multiplexer`` (non-blocking TLS sends and reads), untrusted
  certificates, ``S3Store`` trusting AWS_CA_BUNDLE;
- proxies: ``proxy_for`` and the environment, a forward proxy run by the scripted server
  (absolute-form requests, CONNECT tunnels, 407), ``S3Store`` through HTTP(S)_PROXY;
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

from apstorage.errors import ApStorageError, BackendUnavailableError, ConfigError, PermissionDeniedError
from apstorage.stores.http11 import (
    MAX_HEAD,
    ONE_WRITE,
    Connection,
    Multiplexer,
    ProtocolError,
    Proxy,
    Response,
    address_of,
    encode_request,
    parse_response,
    proxy_for,
)
from apstorage.stores.s3 import S3Store, _FastS3, ca_bundle
from tests.conftest import settings_from

# ======================================================================================
# parse_response / encode_request


def parse(raw: bytes, method: str = "GET", eof: bool = False) -> tuple[tuple[Response, bool] | None, bytearray]:
    buf = bytearray(raw)
    return parse_response(buf, method, eof, "test-server"), buf


def test_content_length_body_and_the_next_response_stays_in_the_buffer() -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"abc\"\r\nX-Mixed-Case:  v \r\n\r\nhello"
    second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"
    parsed, buf = parse(first + second[:20])
    assert parsed is not None
    response, keep_alive = parsed
    assert (response.status, response.body, keep_alive) == (200, b"hello", True)
    assert response.headers == {"content-length": "5", "etag": '"abc"', "x-mixed-case": "v"}
    assert bytes(buf) == second[:20]  # the start of the next response, untouched

    assert parse_response(buf, "GET", False, "t") is None  # not complete yet
    assert bytes(buf) == second[:20]
    buf += second[20:]
    parsed = parse_response(buf, "GET", False, "t")
    assert parsed is not None
    assert (parsed[0].status, parsed[0].body, parsed[1]) == (404, b"nop", True)
    assert buf == b""


def test_status_line_without_reason_phrase() -> None:
    parsed, buf = parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert parsed is not None and parsed[0].status == 200 and parsed[0].body == b""
    assert buf == b""


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n"  # chunked wins
        b"5;name=value\r\nhello\r\n"
        b"1 ; quoted=\"a;b\"\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b"0;last\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n"
    )
    parsed, buf = parse(raw + b"HTTP/1.1")
    assert parsed is not None
    response, keep_alive = parsed
    assert response.body == b"hello 0123456789"
    assert keep_alive is True
    assert bytes(buf) == b"HTTP/1.1"  # trailers consumed up to their blank line, no further


def test_chunked_transfer_encoding_is_matched_case_insensitively() -> None:
    parsed, _ = parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert parsed is not None and parsed[0].body == b"abc"


def test_body_framed_by_connection_close() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until the close"
    parsed, buf = parse(raw)
    assert parsed is None  # the server has not closed yet: more may come
    assert bytes(buf) == raw
    parsed, buf = parse(raw, eof=True)
    assert parsed is not None
    response, keep_alive = parsed
    assert response.body == b"all of this until the close"
    assert keep_alive is False
    assert buf == b""

    parsed, _ = parse(b"HTTP/1.0 200 OK\r\n\r\n", eof=True)  # empty body, closed at once
    assert parsed is not None and parsed[0].body == b"" and parsed[1] is False


def test_100_continue_then_the_real_response() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
    )
    parsed, buf = parse(raw)
    assert parsed is not None
    response, keep_alive = parsed
    assert (response.status, response.body, keep_alive) == (201, b"ok", True)
    assert response.headers == {"content-length": "2", "x-final": "yes"}  # not the 1xx headers
    assert buf == b""


def test_a_lone_100_continue_is_incomplete_and_kept() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 O"
    parsed, buf = parse(raw)
    assert parsed is None
    assert bytes(buf) == raw  # nothing consumed: the next call starts over
    with pytest.raises(ProtocolError):
        parse(raw, eof=True)


@pytest.mark.parametrize(
    "method, status_line",
    [("HEAD", b"HTTP/1.1 200 OK"), ("GET", b"HTTP/1.1 204 No Content"), ("GET", b"HTTP/1.1 304 Not Modified")],
)
def test_no_body_for_head_204_and_304(method: str, status_line: bytes) -> None:
    next_response = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    raw = status_line + b"\r\nContent-Length: 1000\r\n\r\n" + next_response
    parsed, buf = parse(raw, method=method)
    assert parsed is not None
    response, keep_alive = parsed
    assert response.body == b"" and keep_alive is True
    assert response.headers["content-length"] == "1000"  # kept, even without a body
    assert bytes(buf) == next_response


@pytest.mark.parametrize(
    "version, connection, keep_alive",
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "close", False),
    ],
)
def test_keep_alive_rules(version: str, connection: str | None, keep_alive: bool) -> None:
    head = f"{version} 200 OK\r\nContent-Length: 2\r\n"
    if connection is not None:
        head += f"Connection: {connection}\r\n"
    parsed, _ = parse(head.encode() + b"\r\nok")
    assert parsed is not None
    assert parsed[0].body == b"ok"
    assert parsed[1] is keep_alive


COMPLETE_RESPONSES = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", "GET"),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n", "GET"),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "PUT"),
    "head": (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", "HEAD"),
    "no-content": (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE"),
}


@pytest.mark.parametrize("name", COMPLETE_RESPONSES)
def test_every_prefix_is_incomplete_and_fails_on_eof(name: str) -> None:
    raw, method = COMPLETE_RESPONSES[name]
    for cut in range(len(raw)):
        parsed, buf = parse(raw[:cut], method=method)
        assert parsed is None, f"{name}: complete after {cut} of {len(raw)} bytes"
        assert bytes(buf) == raw[:cut]  # nothing consumed while incomplete
        with pytest.raises(ProtocolError):
            parse(raw[:cut], method=method, eof=True)
    parsed, buf = parse(raw, method=method)
    assert parsed is not None and buf == b""
    parsed, buf = parse(raw, method=method, eof=True)  # complete: eof does not matter
    assert parsed is not None and buf == b""


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"FOO/1.1 200 OK\r\n\r\n", id="status-not-http"),
        pytest.param(b"HTTP/2 200 OK\r\n\r\n", id="status-http2"),
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="status-not-a-number"),
        pytest.param(b"HTTP/1.1\r\n\r\n", id="status-no-code"),
        pytest.param(b"\r\n\r\n", id="status-empty"),
        pytest.param(b"HTTP/1.1 \xb200 OK\r\nContent-Length: 0\r\n\r\n", id="status-superscript-digit"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", id="header-no-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\r\n\r\n", id="header-stray-cr"),
        pytest.param(CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", id="chunk-size-not-hex"),
        pytest.param(CHUNKED_HEAD + b"\r\nhello\r\n0\r\n\r\n", id="chunk-size-empty"),
        pytest.param(CHUNKED_HEAD + b"-2\r\n5\r\nhello\r\n0\r\n\r\n", id="chunk-size-negative"),
        pytest.param(CHUNKED_HEAD + b"5\r\nhelloXX0\r\n\r\n", id="chunk-without-crlf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc", id="length-not-a-number"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="length-negative"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx", id="length-list"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nxx", id="length-superscript-digit"),
    ],
)
def test_malformed_responses_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_a_head_over_max_head_raises() -> None:
    start = b"HTTP/1.1 200 OK\r\nX-Filler: "
    parsed, _ = parse(start + b"a" * (MAX_HEAD - len(start)))  # MAX_HEAD bytes, no end yet
    assert parsed is None
    with pytest.raises(ProtocolError, match="over"):
        parse(start + b"a" * (MAX_HEAD + 1 - len(start)))
    with pytest.raises(ProtocolError, match="over"):  # also after a skipped 100 Continue
        parse(b"HTTP/1.1 100 Continue\r\n\r\n" + start + b"a" * MAX_HEAD)


def test_encode_request() -> None:
    data = encode_request("127.0.0.1:9000", "PUT", "/b/k%20x?tagging", {"Content-Length": 3, "X-Amz-Date": "20260101T000000Z"})
    assert data == (
        b"PUT /b/k%20x?tagging HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"
        b"Content-Length: 3\r\nX-Amz-Date: 20260101T000000Z\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nX-Injected: 1"},
        {"X-Evil": "a\nb"},
        {"X-Evil": "a\rb"},
        {"X-Evil\r\nX-Injected": "1"},
        {"X-Evil\n": "1"},
        {"X-Evil": "ok", "X-Other": "trailing\r"},
    ],
)
def test_encode_request_refuses_line_breaks(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_request("h", "GET", "/", headers)


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


def drain(mux: Multiplexer, count: int, bound: float = 5.0) -> dict:
    """Poll ``mux`` until ``count`` requests have finished (at most ``bound`` seconds)."""
    results: dict = {}
    deadline = time.monotonic() + bound
    while len(results) < count:
        assert time.monotonic() < deadline, f"only {len(results)} of {count} finished: {results}"
        for token, result in mux.poll(0.1):
            assert token not in results, f"{token!r} reported twice"
            results[token] = result
    return results


# -- Connection ------------------------------------------------------------------------


def test_connection_keeps_one_tcp_connection_alive(serve) -> None:
    server = serve(echo)
    conn = Connection("http", server.host, timeout=5)
    try:
        for i in range(5):
            response = conn.request("GET", f"/item/{i}", {"X-N": str(i)})
            assert response.status == 200
            assert response.body == f"GET /item/{i} 0".encode()
            assert response.headers["x-host"] == server.host
        response = conn.request("PUT", "/upload", {"Content-Length": "3"}, b"abc")
        assert response.body == b"PUT /upload 3"
    finally:
        conn.close()
    assert server.accepts == 1
    assert server.errors == []


def test_connection_notices_an_idle_connection_the_server_closed_then_reconnects(serve) -> None:
    closed = threading.Event()

    def one_then_close(peer: Peer) -> None:  # answers one request per connection, silently closes
        request = peer.read_request()
        if request is None:
            return
        peer.send(http_response(200, request.target.encode()))
        peer.close()
        closed.set()

    server = serve(one_then_close)
    conn = Connection("http", server.host, timeout=5)
    try:
        assert conn.request("GET", "/first", {}).body == b"/first"
        assert conn.sock is not None  # kept: the response said nothing of closing
        assert closed.wait(2)
        with pytest.raises(OSError) as failure:
            conn.request("GET", "/stale", {})
        assert isinstance(failure.value, (ProtocolError, ConnectionResetError, BrokenPipeError)), failure.value
        assert conn.sock is None  # an error closes the connection
        assert conn.request("GET", "/again", {}).body == b"/again"  # reconnects
    finally:
        conn.close()
    assert server.accepts == 2


def test_connection_close_header_is_honoured(serve) -> None:
    def answer_and_close(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(http_response(200, b"bye", {"Connection": "close"}))

    server = serve(answer_and_close)
    conn = Connection("http", server.host, timeout=5)
    try:
        for _ in range(3):
            assert conn.request("GET", "/", {}).body == b"bye"
            assert conn.sock is None  # closed by us, before the server's FIN arrives
    finally:
        conn.close()
    assert server.accepts == 3


def test_connection_reads_a_body_framed_by_the_close(serve) -> None:
    def http10(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            time.sleep(0.05)
            peer.send(b"second part")

    server = serve(http10)
    conn = Connection("http", server.host, timeout=5)
    try:
        response = conn.request("GET", "/", {})
        assert response.body == b"first part, second part"
        assert conn.sock is None
    finally:
        conn.close()


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
    """Keep-alive; each response in small sends with pauses: the head split mid-line and
    mid-CRLF, a chunked body split mid-chunk, trailers."""
    while peer.read_request() is not None:
        for piece in PIECES:
            peer.send(piece)
            time.sleep(0.01)


def test_connection_parses_a_response_sent_in_pieces(serve) -> None:
    server = serve(in_pieces)
    conn = Connection("http", server.host, timeout=5)
    try:
        for _ in range(2):  # the second one proves the first left nothing behind
            response = conn.request("GET", "/", {})
            assert response.status == 200
            assert response.body == b"hello world"
            assert response.headers["content-type"] == "text/plain"
            assert conn.buf == b""
    finally:
        conn.close()
    assert server.accepts == 1


# -- Multiplexer -----------------------------------------------------------------------


def test_multiplexer_parses_responses_sent_in_pieces(serve) -> None:
    server = serve(in_pieces)
    mux = Multiplexer("http", server.host, 3, timeout=5)
    try:
        for round_ in range(2):
            for i in range(3):
                mux.send((round_, i), "GET", f"/{i}", {})
            assert mux.free == 0
            results = drain(mux, 3)
            for token, result in results.items():
                assert isinstance(result, Response), (token, result)
                assert result.body == b"hello world"
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
    mux = Multiplexer("http", server.host, size, timeout=5)
    try:
        mux.warm(size)  # connections opened at once, in threads
        for i in range(size):
            mux.send(i, "GET", f"/{i}", {})
        assert mux.free == 0 and mux.in_flight == size
        started = time.monotonic()
        results = drain(mux, size)
        elapsed = time.monotonic() - started
    finally:
        mux.close()
    assert sorted(results) == list(range(size))
    for result in results.values():
        assert isinstance(result, Response) and result.body == str(size).encode()  # all arrived before any answer
    assert elapsed < 2
    assert server.accepts == size


def test_multiplexer_reports_a_timeout_for_a_server_that_never_answers(serve) -> None:
    def silent(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.server.stopping.wait(SERVER_LIFETIME)  # until the test ends

    server = serve(silent)
    mux = Multiplexer("http", server.host, 2, timeout=0.3)
    try:
        started = time.monotonic()
        mux.send("lost", "GET", "/never", {})
        results = drain(mux, 1, bound=3)
        elapsed = time.monotonic() - started
        assert isinstance(results["lost"], TimeoutError), results
        assert "0.3" in str(results["lost"])
        assert 0.3 <= elapsed < 2.5
        assert mux.free == 2 and mux.in_flight == 0
        assert mux.poll(0) == []  # reported once
    finally:
        mux.close()


def test_multiplexer_reports_a_refused_connection_through_poll() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    mux = Multiplexer("http", f"{HOST}:{port}", 1, timeout=2)
    try:
        mux.send("t", "GET", "/", {})
        results = drain(mux, 1)
        assert isinstance(results["t"], ConnectionRefusedError)
        assert mux.free == 1
    finally:
        mux.close()


def test_multiplexer_notices_an_idle_connection_the_server_closed(serve) -> None:
    release = threading.Event()
    closed = threading.Event()

    def script(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            if request.target == "/slow":
                release.wait(3)
            peer.send(http_response(200, request.target.encode()))
            if request.target == "/close":  # answered, then closed without a word
                peer.close()
                closed.set()
                return

    server = serve(script)
    mux = Multiplexer("http", server.host, 2, timeout=5)
    try:
        mux.send("slow", "GET", "/slow", {})
        mux.send("close", "GET", "/close", {})  # goes on the connection the next send takes
        results = drain(mux, 1)
        assert list(results) == ["close"] and results["close"].body == b"/close"
        assert closed.wait(2)
        for _ in range(3):  # polls while /slow is in flight see the idle socket's EOF
            assert mux.poll(0.05) == []
        mux.send("after", "GET", "/after", {})  # on the connection the server closed
        release.set()
        results = drain(mux, 2)
        assert isinstance(results["after"], Response), results["after"]
        assert results["after"].body == b"/after"
        assert results["slow"].body == b"/slow"
    finally:
        release.set()
        mux.close()
    assert server.accepts == 3  # /after reconnected


def test_multiplexer_reuse_of_a_closed_connection_fails_once_then_reconnects(serve) -> None:
    closed = threading.Event()

    def one_then_close(peer: Peer) -> None:
        if (request := peer.read_request()) is not None:
            peer.send(http_response(200, request.target.encode()))
            peer.close()
            closed.set()

    server = serve(one_then_close)
    mux = Multiplexer("http", server.host, 1, timeout=5)
    try:
        mux.send(1, "GET", "/one", {})
        assert drain(mux, 1)[1].body == b"/one"
        assert closed.wait(2)
        mux.send(2, "GET", "/stale", {})  # nothing was in flight to notice the close
        stale = drain(mux, 1)[2]
        assert isinstance(stale, OSError), stale  # what _FastS3 retries at once
        mux.send(3, "GET", "/three", {})
        assert drain(mux, 1)[3].body == b"/three"
    finally:
        mux.close()
    assert server.accepts == 2


def test_multiplexer_sends_and_receives_bodies_larger_than_one_write(serve) -> None:
    size = 3 * 1024 * 1024
    assert size > ONE_WRITE
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
    mux = Multiplexer("http", server.host, 3, timeout=5)
    try:
        for i, body in bodies.items():
            mux.send(i, "PUT", f"/{i}", {"Content-Length": str(len(body))}, body)
        mux.send("get", "GET", "/big", {})
        results = drain(mux, 3)
    finally:
        mux.close()
    for i, body in bodies.items():
        result = results[i]
        assert isinstance(result, Response), result
        assert result.headers["x-length"] == str(len(body))
        assert result.body == hashlib.sha256(body).hexdigest().encode()
    assert isinstance(results["get"], Response) and results["get"].body == big_response

    conn = Connection("http", server.host, timeout=5)  # the blocking path: head, then body
    try:
        response = conn.request("PUT", "/c", {"Content-Length": str(size)}, bodies[0][:size])
        assert response.body == hashlib.sha256(bodies[0][:size]).hexdigest().encode()
    finally:
        conn.close()


# ======================================================================================
# _FastS3 retries against the scripted server acting as a minimal S3

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
    started = time.monotonic()
    results = dict(store.put_many(iter([(1, "down-1", b"bytes", None), (2, "ok-2", b"fine", None)]), concurrency=2))
    assert results[2] is None
    assert isinstance(results[1], BackendUnavailableError), results[1]
    assert "InternalError" in str(results[1])
    assert fake.attempts["down-1"] == _FastS3.ATTEMPTS
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "key, attempts, error",
    [
        ("ok-single", 1, None),
        ("slow503-single", 2, None),
        ("drop-single", 2, None),
        ("deny-single", 1, PermissionDeniedError),
        ("down-single", _FastS3.ATTEMPTS, BackendUnavailableError),
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


def test_the_cryptography_fallback_makes_a_usable_certificate(tmp_path: Path) -> None:
    """The fallback runs only without openssl on PATH: prove here that it works anyway."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        assert shutil.which("openssl"), "neither openssl nor cryptography: the TLS tests cannot run"
        return  # the fixture uses openssl; the fallback cannot run here
    made = TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem")
    _cert_with_cryptography(made.cert, made.key)
    made.server_context()  # the key matches the certificate
    assert any(
        ("commonName", HOST) in rdn for ca in made.client_context().get_ca_certs() for rdn in ca["subject"]
    )


def test_tls_connection_keeps_one_connection_alive(serve_tls, tls: TlsFiles) -> None:
    server = serve_tls(echo)
    conn = Connection("https", server.host, timeout=5, ssl_context=tls.client_context())
    try:
        for i in range(4):
            response = conn.request("GET", f"/tls/{i}", {})
            assert response.status == 200
            assert response.body == f"GET /tls/{i} 0".encode()
            assert response.headers["x-host"] == server.host
        body = random.Random(3).randbytes(ONE_WRITE + 1)  # head, then body: two writes
        assert conn.request("PUT", "/big", {"Content-Length": str(len(body))}, body).body == (
            f"PUT /big {len(body)}".encode()
        )
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()
    assert server.accepts == 1
    assert isinstance(server.peers[0].sock, ssl.SSLSocket)  # the server did speak TLS
    assert server.errors == [] and server.tls_errors == []


def test_tls_multiplexer_concurrent_requests_pieces_and_big_bodies(serve_tls, tls: TlsFiles) -> None:
    """The non-blocking TLS paths: a 3 MiB body sent on a non-blocking socket
    (SSLWantWrite), responses arriving a few bytes at a time and records without
    application data (SSLWantRead), a 3 MiB response read record by record (pending())."""
    size = 8
    big = 3 * 1024 * 1024
    big_response = random.Random(11).randbytes(big)
    big_request = random.Random(12).randbytes(big)
    arrived = 0
    cond = threading.Condition()

    def script(peer: Peer) -> None:
        nonlocal arrived
        while (request := peer.read_request()) is not None:
            with cond:  # first round: no answer until all eight requests are in
                arrived += 1
                cond.notify_all()
                cond.wait_for(lambda: arrived >= size, timeout=3)
            if request.method == "PUT":
                reply = http_response(200, hashlib.sha256(request.body).hexdigest().encode(),
                                      {"X-Length": str(len(request.body))})
                for i in range(0, len(reply), 13):  # thirteen bytes per TLS record
                    peer.send(reply[i : i + 13])
            elif request.target == "/big":
                reply = http_response(200, big_response)
                peer.send(reply[:7])
                time.sleep(0.01)
                peer.send(reply[7:100_000])
                time.sleep(0.01)
                peer.send(reply[100_000:])
            else:
                for piece in PIECES:
                    peer.send(piece)
                    time.sleep(0.005)

    server = serve_tls(script)
    mux = Multiplexer("https", server.host, size, timeout=5, ssl_context=tls.client_context())
    try:
        mux.warm(size)  # handshakes done: every send below goes out on a non-blocking socket
        for round_ in range(2):
            mux.send((round_, "put"), "PUT", "/put", {"Content-Length": str(big)}, big_request)
            mux.send((round_, "big"), "GET", "/big", {})
            for i in range(size - 2):
                mux.send((round_, i), "GET", f"/pieces/{i}", {})
            assert mux.free == 0 and mux.in_flight == size
            results = drain(mux, size, bound=8)
            put = results.pop((round_, "put"))
            assert isinstance(put, Response), put
            assert put.headers["x-length"] == str(big)
            assert put.body == hashlib.sha256(big_request).hexdigest().encode()
            got = results.pop((round_, "big"))
            assert isinstance(got, Response), got
            assert len(got.body) == big
            assert hashlib.sha256(got.body).digest() == hashlib.sha256(big_response).digest()
            for token, result in results.items():
                assert isinstance(result, Response), (token, result)
                assert result.body == b"hello world" and result.headers["content-type"] == "text/plain"
            assert mux.free == size and mux.in_flight == 0
    finally:
        mux.close()
    assert server.accepts == size  # the second round reused the eight TLS connections
    assert server.errors == [] and server.tls_errors == []


def test_tls_multiplexer_reuses_warmed_connections_left_idle(serve_tls, tls: TlsFiles) -> None:
    """``warm`` opens connections for the requests to come: one left idle while another
    request is polled must still be there for the next send (TLS 1.3 servers send
    session tickets right after the handshake: bytes on an idle socket, but no reply)."""
    server = serve_tls(echo)
    mux = Multiplexer("https", server.host, 4, timeout=5, ssl_context=tls.client_context())
    try:
        mux.warm(4)
        time.sleep(0.1)  # whatever the server sends after its handshake has arrived
        mux.send("first", "GET", "/first", {})
        assert drain(mux, 1)["first"].body == b"GET /first 0"
        for i in range(4):
            mux.send(i, "GET", f"/{i}", {})
        results = drain(mux, 4)
        assert all(isinstance(r, Response) and r.body == f"GET /{i} 0".encode() for i, r in results.items())
    finally:
        mux.close()
    assert server.accepts == 4, f"{server.accepts} TLS connections for a pool of 4 warmed ones"


def test_tls_untrusted_or_wrong_name_fails_with_an_ssl_error(serve_tls, tls: TlsFiles) -> None:
    server = serve_tls(echo)
    untrusting = ssl.create_default_context()  # the system's CAs: not our self-signed certificate
    conn = Connection("https", server.host, timeout=5, ssl_context=untrusting)
    with pytest.raises(ssl.SSLError) as raised:
        conn.request("GET", "/", {})
    assert isinstance(raised.value, OSError)  # what _FastS3 treats as a connection error
    assert isinstance(raised.value, ssl.SSLCertVerificationError), raised.value
    assert conn.sock is None

    port = server.host.rsplit(":", 1)[1]  # trusted, but the certificate names 127.0.0.1 only
    wrong_name = Connection("https", f"localhost:{port}", timeout=5, ssl_context=tls.client_context())
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname|match"):
        wrong_name.request("GET", "/", {})

    mux = Multiplexer("https", server.host, 2, timeout=5, ssl_context=untrusting)
    try:
        mux.send("t", "GET", "/", {})
        results = drain(mux, 1)
        assert isinstance(results["t"], ssl.SSLError) and isinstance(results["t"], OSError), results
        assert mux.free == 2 and mux.in_flight == 0
    finally:
        mux.close()
    deadline = time.monotonic() + 2
    while len(server.tls_errors) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.tls_errors) == 3  # each attempt reached the server's handshake and failed there
    assert server.errors == []  # the handler never ran


def test_s3_put_bytes_and_put_many_over_tls(serve_tls, tls: TlsFiles, tmp_path: Path, monkeypatch) -> None:
    fake = FakeS3()
    server = serve_tls(fake)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls.cert))  # before the store builds its TLS context
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"https://{server.host}")), workers=4)
    try:
        assert store.fast.scheme == "https" and store.fast.proxy is None
        trusted = store.fast.ssl_context.get_ca_certs()  # type: ignore[union-attr]
        assert [ca["subject"] for ca in trusted] == [((("commonName", HOST),),)]  # AWS_CA_BUNDLE, only

        store.put_bytes("tls/one", b"first object")
        store.put_bytes("tls/two", b"second", tags={"ap-retention": "execution"})
        store.put_bytes("tls/drop-3", b"retried on a fresh TLS connection")
        with pytest.raises(ApStorageError, match="ETag"):
            store.put_bytes("tls/badetag-4", b"checked")

        big = random.Random(5).randbytes(ONE_WRITE * 3)
        bodies = {f"many/ok-{i}": f"object {i}".encode() * (i + 1) for i in range(10)}
        bodies.update({"many/slow503-0": b"after a 503", "many/drop-1": b"after a drop", "many/big": big})
        results = dict(store.put_many(((k, k, b, None) for k, b in bodies.items()), concurrency=4))
        assert results == {key: None for key in bodies}  # every ETag matched its MD5
        bad = dict(store.put_many(iter([("bad", "many/badetag-9", b"x", None)]), concurrency=4))
        assert type(bad["bad"]) is ApStorageError and "ETag" in str(bad["bad"])
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


def test_address_of() -> None:
    assert address_of("s3.example.com", "https") == ("s3.example.com", 443)
    assert address_of("s3.example.com", "http") == ("s3.example.com", 80)
    assert address_of("127.0.0.1:9000", "https") == ("127.0.0.1", 9000)
    assert address_of("[::1]:8333", "http") == ("::1", 8333)
    assert address_of("[::1]", "https") == ("::1", 443)


def test_proxy_for_reads_the_environment(monkeypatch) -> None:
    assert proxy_for("http", "s3.example.com") is None  # no *_PROXY variables at all
    assert proxy_for("https", "s3.example.com") is None

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    assert proxy_for("http", "s3.example.com:9000") == Proxy(("proxy.local", 3128), None)
    assert proxy_for("https", "s3.example.com") is None  # HTTP_PROXY is for http:// only

    monkeypatch.setenv("HTTPS_PROXY", "http://secure-proxy.local")  # no port: 80
    assert proxy_for("https", "s3.example.com") == Proxy(("secure-proxy.local", 80), None)
    monkeypatch.setenv("HTTPS_PROXY", "secure-proxy.local:8080")  # no scheme: http://
    assert proxy_for("https", "s3.example.com") == Proxy(("secure-proxy.local", 8080), None)

    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("https_proxy", "http://lower.local:1080")  # lower-case names too
    assert proxy_for("https", "s3.example.com") == Proxy(("lower.local", 1080), None)
    monkeypatch.delenv("https_proxy")
    monkeypatch.setenv("ALL_PROXY", "http://all.local:9")  # for any scheme without its own
    assert proxy_for("https", "s3.example.com") == Proxy(("all.local", 9), None)
    assert proxy_for("http", "s3.example.com") == Proxy(("all.local", 9), None)


def test_proxy_for_honours_no_proxy(monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "s3.internal.example, .corp.test,127.0.0.1")
    for host in ("s3.internal.example", "s3.internal.example:9000", "bucket.corp.test", "corp.test",
                 "a.b.corp.test:443", "127.0.0.1:8333"):
        assert proxy_for("https", host) is None, host
        assert proxy_for("http", host) is None, host
    for host in ("s3.example.com", "notcorp.test", "internal.example", "127.0.0.2"):
        assert proxy_for("https", host) == Proxy(("proxy.local", 3128), None), host

    monkeypatch.setenv("NO_PROXY", "*")
    assert proxy_for("https", "s3.example.com") is None
    assert proxy_for("http", "anything.at.all:1") is None

    monkeypatch.setenv("NO_PROXY", "")  # empty: no exception
    assert proxy_for("https", "s3.example.com") == Proxy(("proxy.local", 3128), None)


def test_proxy_for_credentials_and_unsupported_proxies(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.local:3128")
    proxy = proxy_for("https", "s3.example.com")
    assert proxy is not None
    assert proxy.address == ("proxy.local", 3128)
    assert proxy.authorization == basic("user:p@ss")  # the password unquoted before encoding
    for text in (repr(proxy), str(proxy), f"{proxy}", repr([proxy])):
        assert "p@ss" not in text and "p%40ss" not in text and proxy.authorization not in text
        assert "proxy.local:3128" in text

    monkeypatch.setenv("HTTPS_PROXY", "http://only-user@proxy.local:3128")
    assert proxy_for("https", "s3.example.com") == Proxy(("proxy.local", 3128), basic("only-user:"))

    for url in ("https://user:secret@proxy.local:3128", "socks5://proxy.local:1080"):
        monkeypatch.setenv("HTTPS_PROXY", url)
        with pytest.raises(ValueError, match="only http:// proxies") as raised:
            proxy_for("https", "s3.example.com")
        assert "secret" not in str(raised.value)
        monkeypatch.setenv("NO_PROXY", "s3.example.com")  # bypassed: the proxy is never looked at
        assert proxy_for("https", "s3.example.com") is None
        monkeypatch.delenv("NO_PROXY")


def test_connection_through_an_http_proxy_uses_absolute_form_and_keeps_alive(serve) -> None:
    origin_seen, handler = recorder()
    origin = serve(handler)
    auth = basic("user:p@ss")
    forward = ForwardProxy(authorization=auth)
    proxy_server = serve(forward)
    conn = Connection("http", origin.host, timeout=5, proxy=Proxy(address_of(proxy_server.host, "http"), auth))
    try:
        for i in range(3):
            response = conn.request("GET", f"/item/{i}?n={i}", {"X-N": str(i)})
            assert response.status == 200
            assert response.body == f"GET /item/{i}?n={i} 0".encode()  # the origin got origin form
            assert response.headers["x-host"] == origin.host
        assert conn.request("PUT", "/upload", {"Content-Length": "5"}, b"hello").body == b"PUT /upload 5"
    finally:
        conn.close()
    assert forward.lines == [f"GET http://{origin.host}/item/{i}?n={i}" for i in range(3)] + [
        f"PUT http://{origin.host}/upload"
    ]
    assert [r.headers.get("proxy-authorization") for r in forward.seen] == [auth] * 4
    assert [r.headers["host"] for r in forward.seen] == [origin.host] * 4
    assert forward.absolute == 4 and forward.connects == 0 and forward.refused == 0
    assert proxy_server.accepts == 1 and origin.accepts == 1  # one keep-alive connection each way
    assert all("proxy-authorization" not in r.headers for r in origin_seen)
    assert proxy_server.errors == [] and origin.errors == []


def test_connection_through_an_http_proxy_without_credentials(serve) -> None:
    _, handler = recorder()
    origin = serve(handler)
    open_proxy = ForwardProxy()
    open_server = serve(open_proxy)
    conn = Connection("http", origin.host, timeout=5, proxy=Proxy(address_of(open_server.host, "http")))
    try:
        assert conn.request("GET", "/a", {}).body == b"GET /a 0"
    finally:
        conn.close()
    assert open_proxy.lines == [f"GET http://{origin.host}/a"]
    assert "proxy-authorization" not in open_proxy.seen[0].headers

    guarded = ForwardProxy(authorization=basic("user:right"))
    guarded_server = serve(guarded)
    conn = Connection("http", origin.host, timeout=5, proxy=Proxy(address_of(guarded_server.host, "http"), basic("user:wrong")))
    try:
        for _ in range(2):  # a plain request's 407 is the caller's response; the connection stays
            response = conn.request("GET", "/b", {})
            assert response.status == 407
            assert response.headers["proxy-authenticate"] == 'Basic realm="test"'
    finally:
        conn.close()
    assert guarded.refused == 2 and guarded.absolute == 0
    assert guarded_server.accepts == 1


def test_https_through_a_proxy_tunnels_with_connect(serve, serve_tls, tls: TlsFiles) -> None:
    origin_seen, handler = recorder()
    origin = serve_tls(handler)
    auth = basic("tunnel:s3cret")
    forward = ForwardProxy(authorization=auth)
    proxy_server = serve(forward)
    proxy = Proxy(address_of(proxy_server.host, "http"), auth)
    conn = Connection("https", origin.host, timeout=5, ssl_context=tls.client_context(), proxy=proxy)
    try:
        for i in range(3):
            response = conn.request("GET", f"/secret/{i}", {})
            assert response.body == f"GET /secret/{i} 0".encode()
            assert response.headers["x-host"] == origin.host
        assert isinstance(conn.sock, ssl.SSLSocket)
    finally:
        conn.close()
    assert forward.lines == [f"CONNECT {origin.host}"]  # one tunnel, no plain request
    assert forward.seen[0].headers["proxy-authorization"] == auth
    assert forward.seen[0].headers["host"] == origin.host
    assert forward.connects == 1 and forward.absolute == 0
    assert [r.target for r in origin_seen] == [f"/secret/{i}" for i in range(3)]  # origin form, over TLS
    assert all("proxy-authorization" not in r.headers for r in origin_seen)
    assert origin.accepts == 1 and isinstance(origin.peers[0].sock, ssl.SSLSocket)
    assert origin.tls_errors == [] and proxy_server.errors == []

    mux = Multiplexer("https", origin.host, 3, timeout=5, ssl_context=tls.client_context(), proxy=proxy)
    try:
        for round_ in range(2):
            for i in range(3):
                mux.send((round_, i), "GET", f"/mux/{i}", {})
            results = drain(mux, 3)
            assert {t: r.body for t, r in results.items()} == {(round_, i): f"GET /mux/{i} 0".encode() for i in range(3)}
    finally:
        mux.close()
    assert forward.connects == 1 + 3  # a tunnel per multiplexed connection, reused by round two


@pytest.mark.parametrize("authorization", [None, basic("user:wrong")], ids=["no-credentials", "wrong-credentials"])
def test_a_407_to_connect_raises_protocol_error(serve, serve_tls, tls: TlsFiles, authorization: str | None) -> None:
    _, handler = recorder()
    origin = serve_tls(handler)
    guarded = ForwardProxy(authorization=basic("user:right"))
    proxy_server = serve(guarded)
    proxy = Proxy(address_of(proxy_server.host, "http"), authorization)
    conn = Connection("https", origin.host, timeout=5, ssl_context=tls.client_context(), proxy=proxy)
    with pytest.raises(ProtocolError, match="407") as raised:
        conn.request("GET", "/", {})
    assert "refused CONNECT" in str(raised.value) and origin.host in str(raised.value)
    assert "wrong" not in str(raised.value) and "right" not in str(raised.value)
    assert conn.sock is None

    mux = Multiplexer("https", origin.host, 2, timeout=5, ssl_context=tls.client_context(), proxy=proxy)
    try:
        mux.send("t", "GET", "/", {})
        result = drain(mux, 1)["t"]
        assert isinstance(result, ProtocolError) and "407" in str(result), result
        assert mux.free == 2
    finally:
        mux.close()
    assert guarded.refused == 2 and guarded.connects == 0
    assert origin.accepts == 0  # nothing reached the origin


def test_a_proxy_closing_during_connect_raises_protocol_error(serve) -> None:
    def hang_up(peer: Peer) -> None:
        peer.read_request()  # the CONNECT, then a close without an answer

    proxy_server = serve(hang_up)
    conn = Connection("https", "127.0.0.1:9", timeout=5, proxy=Proxy(address_of(proxy_server.host, "http")))
    with pytest.raises(ProtocolError, match="closed the connection during CONNECT"):
        conn.request("GET", "/", {})
    assert conn.sock is None


@pytest.mark.parametrize("credentials", [False, True], ids=["open-proxy", "proxy-with-credentials"])
def test_s3_store_sends_through_http_proxy(serve, tmp_path: Path, monkeypatch, credentials: bool) -> None:
    fake = FakeS3()
    origin = serve(fake)
    forward = ForwardProxy(authorization=basic("ap user:p@ss:word") if credentials else None)
    proxy_server = serve(forward)
    user = "ap%20user:p%40ss%3Aword@" if credentials else ""
    monkeypatch.setenv("HTTP_PROXY", f"http://{user}{proxy_server.host}")
    monkeypatch.setenv("NO_PROXY", "")
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{origin.host}")), workers=4)
    try:
        assert store.fast.proxy == Proxy(address_of(proxy_server.host, "http"), forward.authorization)
        store.put_bytes("single/one", b"one")
        store.put_bytes("single/drop-2", b"two", tags={"k": "v"})  # the origin drops it once
        bodies = {f"many/ok-{i}": f"body {i}".encode() * (i + 1) for i in range(12)}
        bodies.update({"many/slow503-x": b"503 first", "many/drop-y": b"dropped first"})
        results = dict(store.put_many(((k, k, b, None) for k, b in bodies.items()), concurrency=4))
        assert results == {key: None for key in bodies}
    finally:
        store.close()
    bodies.update({"single/one": b"one", "single/drop-2": b"two"})
    assert {key: fake.stored[key] for key in bodies} == bodies
    puts = Counter(
        unquote(line.split(f"http://{origin.host}/{BUCKET}/", 1)[1]) for line in forward.lines if line.startswith("PUT ")
    )
    assert puts == fake.attempts  # every PutObject attempt went through the proxy, none around it
    assert sum(puts.values()) == len(bodies) + 3  # three retried once
    assert forward.lines == [line for line in forward.lines if line.startswith(f"PUT http://{origin.host}/{BUCKET}/")]
    assert forward.refused == 0 and forward.connects == 0
    assert proxy_server.errors == [] and origin.errors == []


def test_s3_store_bypasses_the_proxy_for_no_proxy_hosts(serve, tmp_path: Path, monkeypatch) -> None:
    fake = FakeS3()
    origin = serve(fake)
    forward = ForwardProxy()
    proxy_server = serve(forward)
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy_server.host}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    store = S3Store(settings_from(fake_s3_env(tmp_path, f"http://{origin.host}")), workers=4)
    try:
        assert store.fast.proxy is None
        store.put_bytes("direct", b"not proxied")
        assert dict(store.put_many(iter([(1, "direct-2", b"x", None)]), concurrency=2)) == {1: None}
    finally:
        store.close()
    assert fake.stored == {"direct": b"not proxied", "direct-2": b"x"}
    assert proxy_server.accepts == 0


def test_s3_store_over_tls_through_https_proxy(serve, serve_tls, tls: TlsFiles, tmp_path: Path, monkeypatch) -> None:
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
    assert forward.absolute == 0 and forward.connects >= 2  # the blocking connection and the pool's
    assert set(forward.lines) == {f"CONNECT {origin.host}"}
    assert origin.tls_errors == [] and origin.errors == []


def test_s3_store_with_an_https_proxy_url_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://user:secret@proxy.example:3128")
    store = S3Store(settings_from(fake_s3_env(tmp_path, "https://127.0.0.1:9")), workers=2)
    try:
        with pytest.raises(ConfigError, match="only http:// proxies") as raised:
            store.put_bytes("k", b"v")  # the signed path is built on first use
        assert "NO_PROXY" in str(raised.value) and "127.0.0.1:9" in str(raised.value)
        assert "secret" not in str(raised.value)
        with pytest.raises(ConfigError):
            store.check_bucket()
        with pytest.raises(ConfigError):
            list(store.put_many(iter([(1, "k", b"v", None)]), concurrency=2))
    finally:
        store.close()

    http_store = S3Store(settings_from(fake_s3_env(tmp_path, "http://127.0.0.1:9")), workers=2)
    try:
        assert http_store.fast.proxy is None  # HTTPS_PROXY does not apply to an http:// endpoint
    finally:
        http_store.close()


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
