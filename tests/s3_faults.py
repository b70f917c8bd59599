"""A fault-injecting S3 stand-in for the tests (DESIGN.md §5, "S3, faults").

Some answers no real server gives on demand: a 2xx without an ETag, an ETag that is not
an MD5, a DeleteObjects answer whose error entries name keys that were never sent, a
truncated listing without a continuation token, throttling, a stall, a trickle, a reset,
a body cut short. ``FaultyS3`` is an HTTP server on 127.0.0.1 that forwards every request
to a real S3 server (SeaweedFS in the tests) and alters exactly the answers a test asks
for with ``add(Fault(...))``.

Requests are forwarded with the client's own ``Host`` header, so SigV4 signatures (and
pre-signed URLs) verify upstream unchanged. When a fault must change the *request* (drop
a key from a DeleteObjects body), the stand-in signs the changed request again with the
upstream credentials, as a proxy holding them would.

HTTP framing comes from the standard library (``http.server`` for the client side,
``http.client`` upstream); only the faults are ours. The server binds 127.0.0.1 on a free
port, every wait is bounded (a stall ends after ``Fault.delay`` seconds or when the
server stops), and it stops by itself after ``MAX_LIFETIME`` seconds at the latest.
"""

from __future__ import annotations

import http.client
import http.server
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from xml.sax.saxutils import escape

from tests.servers import S3Info

HOST = "127.0.0.1"
MAX_LIFETIME = 1800.0  # seconds; the fixture stops it long before
MAX_BODY = 256 * 1024 * 1024  # bytes buffered per request or answer
EMPTY_PAGE_TOKEN = "stand-in-empty-page"  # the token of an injected empty page
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "expect"}
ACTIONS = {
    "status",             # answer `status`/`code` (or `value` as the body) without forwarding
    "refuse_early",       # answer `status`/`code` before reading the request body, then close
    "throttle",           # over `rate` requests/s: 503 SlowDown (with `headers`), else forward
    "drop_etag",          # forward; remove the ETag header from the answer
    "etag",               # forward; ETag becomes `value`
    "stall",              # read the request, answer nothing for `delay` s, then close
    "trickle",            # forward; send the answer one byte every `delay` s
    "trickle_head",       # forward; send the whole answer, status line and headers too, one
                          #   byte every `delay` s (a PutObject answer has no body to trickle)
    "reset",              # read the request, then close with a TCP RST
    "cut_body",           # forward; announce the full Content-Length, send half, close
    "truncate_listing",   # forward a ListObjectsV2; IsTruncated=true, no continuation token
    "empty_truncated",    # ListObjectsV2 without a token: an empty truncated page first
    "delete_refuse",      # DeleteObjects: keys matching `value` are not deleted; their
                          #   <Error> entries carry the key per `key_form`
    "require_md5",        # DeleteObjects without Content-MD5: 400 MissingContentMD5
    "custom",             # handler(request) -> Answer | None (None: forward)
}


@dataclass
class Request:
    method: str
    path: str  # raw path and query as sent
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def key_path(self) -> str:
        """The decoded path without the query: ``/bucket/key``."""
        from urllib.parse import unquote

        return unquote(urlsplit(self.path).path)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names as sent
    body: bytes


@dataclass
class Fault:
    """One rule: which requests it matches and what it does to them.

    ``method``: HTTP method or None for any. ``path``: regex searched in the decoded
    ``/bucket/key`` path. ``query``: a query parameter that must be present (``delete``,
    ``list-type``, ``tagging``, ``uploads``...). ``body``: regex searched in the request body.
    ``times``: how many matching requests to alter (None: all). ``every``: alter every
    Nth match. ``probability``: alter a match with this chance (seeded by ``seed``).
    ``hits``/``applied`` count matches and alterations, for assertions.
    """

    action: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    body: bytes | None = None
    times: int | None = None
    every: int = 1
    probability: float = 1.0
    seed: int = 0
    status: int = 503
    code: str = "SlowDown"
    value: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    rate: float = 50.0  # throttle: requests per second let through
    delay: float = 2.0  # trickle: seconds between bytes; stall: seconds before closing
    key_form: str = "empty"  # delete_refuse: "empty", "encoded" or "exact"
    handler: Callable[[Request], Answer | None] | None = None
    hits: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        self._rng = random.Random(self.seed)
        self._tokens = self.rate
        self._last = time.monotonic()

    def matches(self, req: Request) -> bool:
        if self.method and req.method != self.method.upper():
            return False
        if self.path and not re.search(self.path, req.key_path):
            return False
        if self.query is not None and self.query not in req.query:
            return False
        if self.body is not None and not re.search(self.body, req.body):
            return False
        return True

    def take(self) -> bool:
        """Count a match; True when this one is to be altered."""
        self.hits += 1
        if self.times is not None and self.applied >= self.times:
            return False
        if self.hits % self.every:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        if self.action == "throttle" and not self._over_rate():
            return False
        self.applied += 1
        return True

    def _over_rate(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return False
        return True


def s3_error(status: int, code: str, message: str = "injected by the test stand-in",
             headers: dict[str, str] | None = None) -> Answer:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error>").encode()
    return Answer(status, {"Content-Type": "application/xml", **(headers or {})}, body)


class FaultyS3:
    """The stand-in. ``info`` is an S3Info whose endpoint is the stand-in itself."""

    def __init__(self, upstream: S3Info) -> None:
        self.upstream = upstream
        up = urlsplit(upstream.endpoint)
        self._up_host, self._up_port = up.hostname or HOST, up.port or 80
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, raw path), last 10,000
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((HOST, 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{HOST}:{self.port}"
        self.info = replace(upstream, endpoint=self.endpoint)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faulty-s3", daemon=True)
        self._timer = threading.Timer(MAX_LIFETIME, self.stop)
        self._timer.daemon = True

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> "FaultyS3":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultyS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules ----------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _pick(self, req: Request) -> Fault | None:
        with self._lock:
            self.requests.append((req.method, req.path))
            del self.requests[:-10000]
            for fault in self.faults:
                if fault.matches(req) and fault.take():
                    return fault
        return None

    # -- upstream -------------------------------------------------------------------------

    def forward(self, req: Request, conn_cache: dict) -> Answer:
        """Send ``req`` to the real server as it came (Host kept) and read its answer."""
        headers = {k: v for k, v in req.headers.items() if k not in HOP_BY_HOP}
        for attempt in (1, 2):
            conn = conn_cache.get("conn")
            if conn is None:
                conn = conn_cache["conn"] = http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)
            try:
                conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                if "content-length" not in headers and req.body:
                    conn.putheader("Content-Length", str(len(req.body)))
                conn.endheaders(req.body or None)
                resp = conn.getresponse()
                body = resp.read(MAX_BODY) if req.method != "HEAD" else b""
                out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
                if resp.will_close:
                    conn.close()
                    conn_cache.pop("conn", None)
                return Answer(resp.status, out, body)
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                conn_cache.pop("conn", None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def resign(self, req: Request, body: bytes) -> Request:
        """``req`` with a new body, signed again with the upstream credentials (SigV4)."""
        import base64
        import hashlib

        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = f"http://{req.headers['host']}{req.path}"
        keep = {k: v for k, v in req.headers.items()
                if k not in HOP_BY_HOP and k not in ("authorization", "x-amz-date", "x-amz-content-sha256",
                                                      "content-md5", "content-length")
                and not k.startswith("x-amz-checksum") and k != "x-amz-sdk-checksum-algorithm"}
        if body:
            keep["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        aws = AWSRequest(method=req.method, url=url, data=body, headers=keep)
        creds = Credentials(self.upstream.access_key, self.upstream.secret_key)
        S3SigV4Auth(creds, "s3", self.upstream.region).add_auth(aws)
        headers = {k.lower(): v for k, v in aws.headers.items()}
        if body or req.method in ("PUT", "POST"):
            headers["content-length"] = str(len(body))
        return Request(req.method, req.path, headers, body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultyS3


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK (~40 ms a request; most of the fault tests' time).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def setup(self) -> None:
        super().setup()
        self._conn_cache: dict = {}

    def finish(self) -> None:
        conn = self._conn_cache.get("conn")
        if conn is not None:
            conn.close()
        super().finish()

    def handle_expect_100(self) -> bool:
        if self._refused_early():
            return False
        self._early_checked = True
        return super().handle_expect_100()

    def _refused_early(self) -> bool:
        """A ``refuse_early`` fault: answer before reading the body, then close."""
        owner = self.server.owner
        req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
        with owner._lock:
            fault = next((f for f in owner.faults if f.action == "refuse_early" and f.matches(req)), None)
            if fault is None or not fault.take():
                return False
        self._send(s3_error(fault.status, fault.code, headers=fault.headers), close=True)
        return True

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise _Unsupported("chunked request bodies")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise _Unsupported("request body too large for the stand-in")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not getattr(self, "_early_checked", False) and self._refused_early():
            return
        self._early_checked = False
        try:
            req = Request(self.command, self.path, headers, self._read_body())
        except _Unsupported as exc:
            self._send(s3_error(501, "NotImplemented", str(exc)), close=True)
            return
        fault = owner._pick(req)
        action = fault.action if fault else None
        if action == "status":
            answer = (Answer(fault.status, {"Content-Type": "application/xml", **fault.headers}, fault.value.encode())
                      if fault.value else s3_error(fault.status, fault.code, headers=fault.headers))
            self._send(answer)
            return
        if action == "throttle":
            self._send(s3_error(503, "SlowDown", "Please reduce your request rate.", headers=fault.headers))
            return
        if action == "stall":
            owner._stopping.wait(fault.delay)
            self.close_connection = True
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if action == "require_md5" and "content-md5" not in headers:
            self._send(s3_error(400, "MissingContentMD5", "Missing required header for this request: Content-Md5."))
            return
        if action == "custom":
            answer = fault.handler(req)  # type: ignore[misc]
            if answer is not None:
                self._send(answer)
                return
        if action == "delete_refuse":
            self._send(self._delete_refuse(req, fault))
            return
        if action == "empty_truncated" and "continuation-token" not in req.query:
            self._send(_empty_truncated_page(req))
            return
        if req.query.get("continuation-token") == EMPTY_PAGE_TOKEN:
            query = [(k, v) for k, v in parse_qsl(urlsplit(req.path).query, keep_blank_values=True)
                     if k != "continuation-token"]
            path = urlsplit(req.path).path + ("?" + urlencode(query, quote_via=quote) if query else "")
            req = owner.resign(replace(req, path=path), b"")
        try:
            answer = owner.forward(req, self._conn_cache)
        except (OSError, http.client.HTTPException) as exc:
            self._send(s3_error(502, "BadGateway", f"stand-in could not reach upstream: {exc}"), close=True)
            return
        if action == "drop_etag":
            answer.headers = {k: v for k, v in answer.headers.items() if k.lower() != "etag"}
        elif action == "etag":
            answer.headers = {k: v for k, v in answer.headers.items() if k.lower() != "etag"}
            answer.headers["ETag"] = fault.value
        elif action == "truncate_listing" and answer.status == 200:
            answer.body = re.sub(rb"<IsTruncated>\w+</IsTruncated>", b"<IsTruncated>true</IsTruncated>", answer.body)
            answer.body = re.sub(rb"<NextContinuationToken>.*?</NextContinuationToken>", b"", answer.body, flags=re.S)
        if action in ("trickle", "trickle_head"):
            self._trickle(answer, fault.delay, head=action == "trickle_head")
        elif action == "cut_body":
            self._send(answer, cut=True)
        else:
            self._send(answer)

    def _delete_refuse(self, req: Request, fault: Fault) -> Answer:
        owner = self.server.owner
        keys = [_xml_unescape(k) for k in re.findall(rb"<Key>(.*?)</Key>", req.body, flags=re.S)]
        refused = [k for k in keys if re.search(fault.value, k)]
        kept = [k for k in keys if k not in refused]
        body = b"<Delete><Quiet>true</Quiet>" + b"".join(
            b"<Object><Key>" + escape(k).encode() + b"</Key></Object>" for k in kept) + b"</Delete>"
        deleted_xml = b""
        if kept:
            answer = owner.forward(owner.resign(req, body), self._conn_cache)
            if answer.status != 200:
                return answer
        deleted_xml = b"".join(b"<Deleted><Key>" + escape(k).encode() + b"</Key></Deleted>" for k in kept)
        errors = b""
        for key in refused:
            shown = {"empty": "", "encoded": quote(key, safe="/"), "exact": key}[fault.key_form]
            errors += (b"<Error><Key>" + escape(shown).encode() + b"</Key><Code>" + fault.code.encode()
                       + b"</Code><Message>injected refusal</Message></Error>")
        xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               + deleted_xml + errors + b"</DeleteResult>")
        return Answer(200, {"Content-Type": "application/xml"}, xml)

    def _head(self, answer: Answer, length: int | None = None) -> None:
        self.send_response(answer.status)
        sent_length = False
        for name, value in answer.headers.items():
            if name.lower() == "content-length":
                if self.command == "HEAD":
                    self.send_header(name, value)
                    sent_length = True
                continue
            if name.lower() in ("date", "server"):
                continue
            self.send_header(name, value)
        if not sent_length:
            self.send_header("Content-Length", str(len(answer.body) if length is None else length))

    def _send(self, answer: Answer, *, close: bool = False, cut: bool = False) -> None:
        self._head(answer)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut:
            self.wfile.write(answer.body[: len(answer.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(answer.body)

    def _trickle(self, answer: Answer, delay: float, *, head: bool = False) -> None:
        self._head(answer)
        data = answer.body if self.command != "HEAD" else b""
        if head:  # the head http.server framed, then the body, all a byte at a time
            self._headers_buffer.append(b"\r\n")
            data = b"".join(self._headers_buffer) + data
            self._headers_buffer = []
        else:
            self.end_headers()
            self.wfile.flush()
        stopping = self.server.owner._stopping
        for i in range(len(data)):
            if stopping.wait(delay):
                break
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                break
        self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _Unsupported(Exception):
    pass


def _xml_unescape(raw: bytes) -> str:
    from xml.sax.saxutils import unescape

    return unescape(raw.decode("utf-8"), {"&quot;": '"', "&apos;": "'"})


def _empty_truncated_page(req: Request) -> Answer:
    """An empty ListObjectsV2 page that says more follows (a legal, if odd, answer)."""
    bucket = req.key_path.strip("/").split("/", 1)[0]
    q = req.query
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           f"<Name>{escape(bucket)}</Name><Prefix>{escape(q.get('prefix', ''))}</Prefix><KeyCount>0</KeyCount>"
           f"<MaxKeys>{escape(q.get('max-keys', '1000'))}</MaxKeys><IsTruncated>true</IsTruncated>"
           f"<NextContinuationToken>{EMPTY_PAGE_TOKEN}</NextContinuationToken></ListBucketResult>")
    return Answer(200, {"Content-Type": "application/xml"}, xml.encode())
