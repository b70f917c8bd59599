"""HTTP for the S3 requests: one transport under botocore's client and the signed path.

Who does what:

- **urllib3, through botocore's ``URLLib3Session``** (subclassed as ``Session``) sends every
  one-at-a-time request: the botocore client's (GET, HEAD, multipart, DeleteObjects,
  lifecycle...: this session replaces the client's own) and the signed path's (single PUT,
  listing pages, bucket check). So every request has the same proxy rule (botocore's:
  ``get_environ_proxies`` then ``ProxyConfiguration.proxy_url_for`` — HTTP_PROXY,
  HTTPS_PROXY, NO_PROXY; ``ALL_PROXY`` is not read by botocore, so not here either), the same
  CA bundle, the same connect/read timeouts, ``Expect: 100-continue`` (botocore's
  ``AWSHTTPConnection``), a stale-connection check before reuse (urllib3's
  ``is_connection_dropped``) and the same exceptions (botocore's).
- **httptools** (llhttp, the parser inside Node.js) parses the answers for ``Multiplexer``:
  many requests from one thread over N non-blocking keep-alive sockets, which urllib3 opens
  (TLS, CONNECT tunnel). Our own code schedules (which socket is free, which is readable,
  which request is late) and writes request heads. h11 was measured first: 0.21 ms of CPU
  per 10 KiB PUT for its send and receive against 0.007 ms for httptools' parse, on a path
  that costs 0.16 ms a request in all — it would have doubled the client's CPU.
- **Deadlines.** A socket timeout bounds one read; a server that sends a byte every few
  seconds never trips it. So every *operation* — one S3 call with all its attempts and
  retries (a botocore client call, from its ``before-call`` event to its ``after-call``;
  ``_FastS3.request``; one object of ``put_many``; the first chunk of a streamed body) —
  has a total deadline (``Timeouts.request``, 2 × AP_S3_TIMEOUT_SECONDS): each attempt's
  deadline is what is left of it, a watchdog thread shuts the socket down when it passes,
  no retry is started (or slept towards) past it, and the request fails with
  ``DeadlineExceededError``. Once one operation's deadline has passed, the ``Session`` is
  *down*: every later request of the run fails at once with the same error, so a command
  (and the cleanup after a failed multipart upload) gives up within one deadline, not one
  per request.
- **Retries** (``RetryPolicy``): botocore's standard mode — its transient and throttling
  error codes, full-jitter exponential backoff with its base scales (0.05 s, 1 s when
  throttled) and 20 s cap — plus 429/503 counted as throttling, ``Retry-After`` honoured up to
  the cap, more attempts for throttling and a time budget per request.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
    AWSPreparedRequest,
)
from botocore.exceptions import (
    BotoCoreError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import URLLib3Session, mask_proxy_url
from botocore.retries.standard import ExponentialBackoff, ThrottledRetryableChecker, TransientRetryableChecker

from apstorage.deadlines import WATCHDOG, Deadline, shutdown

MAX_HEAD = 64 * 1024  # a response head larger than this is not S3 talking
MAX_ERROR_BODY = 64 * 1024  # an error body (XML) beyond this is cut
MAX_LIST_PAGE = 16 * 1024 * 1024  # a ListObjectsV2 page of 1,000 keys is well under 1 MiB
RECV = 256 * 1024
SWEEP = 0.25  # seconds between checks of the multiplexer's deadlines
REUSE_CHECK_AFTER = 0.05  # seconds idle after which a connection is checked before reuse
PARALLEL_CONNECTS = 16  # connections opened at once (TLS handshakes to a far region add up)
# A connect that took less than this (seconds; the same host or a LAN, no TLS to speak of)
# is not worth threads: the rest of a multiplexer's connections open as requests need them.
CHEAP_CONNECT = 0.002


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read``: the longest wait for any byte; ``request``: the longest a whole
    request may take (a trickling server never trips ``read``)."""

    connect: float = 10
    read: float = 60
    request: float = 120

    @classmethod
    def from_read(cls, read: float) -> "Timeouts":
        """AP_S3_TIMEOUT_SECONDS: connect = min(10, read), request = 2 x read — the bound of
        one operation, every attempt and retry included (README: "Timeouts")."""
        return cls(connect=min(10.0, read), read=read, request=2 * read)


class DeadlineExceededError(ReadTimeoutError):
    fmt = 'No complete answer from endpoint "{endpoint_url}" within {seconds:g} s, retries included (a request deadline)'


class BodyTooLargeError(HTTPClientError):
    fmt = 'The answer from endpoint "{endpoint_url}" is over {limit} bytes; refusing to buffer it'


class BodyCutShortError(ConnectionClosedError):
    fmt = 'Endpoint "{endpoint_url}" closed the connection in the middle of the body'


class ProtocolViolationError(ConnectionClosedError):
    fmt = 'Endpoint "{endpoint_url}" broke HTTP/1.1: {detail}'


# -- deadlines ---------------------------------------------------------------------------


# One watchdog for the process (``apstorage.deadlines``): the Postgres catalog's statements
# share it.
_Deadline = Deadline
_shutdown = shutdown
_WATCHDOG = WATCHDOG
_current = threading.local()  # .deadline: the _Deadline of this thread's request, if any


class _DeadlineConnection:
    """Mixin for botocore's urllib3 connections: the socket joins the running request's
    deadline (connect happens inside ``request`` for plain HTTP, before it for TLS)."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_current(self.sock)  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _watch_current(self.sock)  # type: ignore[attr-defined]
        return super().request(*args, **kwargs)  # type: ignore[misc]


def _watch_current(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _HTTPConnection(_DeadlineConnection, AWSHTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, AWSHTTPSConnection):
    pass


class _HTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


# -- proxies -----------------------------------------------------------------------------


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies botocore's client uses for ``url`` (``botocore.utils.get_environ_proxies``:
    urllib's ``getproxies`` unless ``proxy_bypass`` says NO_PROXY covers the host). Reads
    the process environment through urllib, as botocore does."""
    from botocore.utils import get_environ_proxies

    return get_environ_proxies(url)


# -- one request at a time -----------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's) or lower-cased (the multiplexer's)
    body: bytes


class Session(URLLib3Session):
    """botocore's urllib3 session with a deadline on every request.

    ``send`` (an ``AWSPreparedRequest``, as botocore sends) is what the botocore client uses,
    through ``attach``; ``request`` is the signed path's one-request call, its answer read
    whole but bounded. Raises botocore's exceptions (``EndpointConnectionError``,
    ``ProxyConnectionError``, ``SSLError``, ``ConnectTimeoutError``, ``ReadTimeoutError``
    and ``DeadlineExceededError``, ``ConnectionClosedError``).
    """

    def __init__(
        self, endpoint_url: str, *, timeouts: Timeouts, ca_bundle: str | None, max_pool_connections: int = 10
    ) -> None:
        super().__init__(
            verify=ca_bundle or True,
            proxies=environ_proxies(endpoint_url),
            timeout=(timeouts.connect, timeouts.read),
            max_pool_connections=max_pool_connections,
        )
        self._pool_classes_by_scheme = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}
        self._manager.pool_classes_by_scheme = self._pool_classes_by_scheme
        self.timeouts = timeouts
        self.endpoint_url = endpoint_url
        self.down: str | None = None  # the URL of the request whose deadline passed

    def proxy_url(self, url: str) -> str | None:
        return self._proxy_config.proxy_url_for(url)

    def attach(self, client: Any) -> None:
        """Send ``client``'s requests through this session: it becomes the client's
        endpoint's HTTP session, where botocore's own ``URLLib3Session`` was (botocore has no
        public setter; a ``before-send`` handler would also run when another handler, such
        as moto's, has already answered). The client's own session is closed unused."""
        endpoint = client._endpoint
        endpoint.http_session.close()
        endpoint.http_session = self
        # One deadline per client call, all its attempts included (see the module's doc).
        events = client.meta.events
        events.register("before-call.s3", self._begin_operation, unique_id="apstorage-operation-begin")
        events.register("after-call.s3", self._end_operation, unique_id="apstorage-operation-end")
        events.register("after-call-error.s3", self._end_operation, unique_id="apstorage-operation-error")
        self._bound_retries(client)

    def _begin_operation(self, **_: Any) -> None:
        _current.operation = time.monotonic() + self.timeouts.request

    def _end_operation(self, **_: Any) -> None:
        _current.operation = None

    def _bound_retries(self, client: Any) -> None:
        """botocore's standard retry handler, unchanged, behind one more rule: no retry once
        the Session is down, nor one whose backoff would end past the operation's deadline.
        (botocore registers its handler as ``retry-config-s3``; the same handler is made
        again with the client's own attempts and wrapped.)"""
        from botocore.retries import standard

        events = client.meta.events
        attempts = client.meta.config.retries.get("total_max_attempts")
        events.unregister("needs-retry.s3", unique_id="retry-config-s3")
        handler = standard.register_retry_handler(client, **({"max_attempts": attempts} if attempts else {}))
        events.unregister("needs-retry.s3", unique_id="retry-config-s3")

        def needs_retry(**kwargs: Any) -> Any:
            delay = handler.needs_retry(**kwargs)
            if delay is None or delay is False or self.down is not None:
                return False
            at = getattr(_current, "operation", None)
            if at is not None and time.monotonic() + delay >= at:
                return False
            return delay

        events.register("needs-retry.s3", needs_retry, unique_id="apstorage-bounded-retry")

    def send(self, request: AWSPreparedRequest) -> Any:
        with self.deadline(request.url, at=getattr(_current, "operation", None)), _unwrapping_program_faults():
            return super().send(request)

    def deadline(self, url: str, seconds: float | None = None, *, at: float | None = None) -> "_DeadlineScope":
        """The scope of one attempt: its deadline is ``seconds`` (default the whole
        operation's, ``Timeouts.request``) or what is left before ``at`` (monotonic), the
        earlier. Raises ``DeadlineExceededError`` at once when the Session is down or no
        time is left."""
        limit = self.timeouts.request if seconds is None else seconds
        if at is not None:
            limit = min(limit, at - time.monotonic())
        if self.down is not None or limit <= 0:
            self.down = self.down or url
            raise DeadlineExceededError(endpoint_url=url, seconds=self.timeouts.request)
        return _DeadlineScope(url, limit, session=self)

    def mark_down(self, url: str) -> None:
        """An operation's deadline passed: every later request of this run fails at once."""
        if self.down is None:
            self.down = url

    def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes = b"", *, limit: int = MAX_LIST_PAGE,
        at: float | None = None,
    ) -> Response:
        """One request (one attempt); the body read whole if 2xx (up to ``limit`` bytes), at
        most ``MAX_ERROR_BODY`` of it otherwise. ``at``: the operation's deadline
        (monotonic), when it is one attempt of several."""
        prepared = AWSPreparedRequest(method, url, headers, body or None, stream_output=True)
        with self.deadline(url, at=at):
            with _unwrapping_program_faults():
                response = URLLib3Session.send(self, prepared)
            raw = response.raw
            try:
                cap = limit if 200 <= response.status_code < 300 else MAX_ERROR_BODY
                data = _read_bounded(raw, cap, url, whole=200 <= response.status_code < 300)
            except Exception as exc:  # noqa: BLE001 - mapped to botocore's, as send maps them
                raise _as_botocore_error(exc, url) from None
            finally:
                raw.release_conn() if raw.isclosed() else raw.close()
        return Response(response.status_code, response.headers, data)


@contextlib.contextmanager
def _unwrapping_program_faults() -> Iterator[None]:
    """botocore's ``URLLib3Session.send`` wraps ANY exception in ``HTTPClientError`` (which
    reads as "closed the connection without answering"); a fault of the program inside it
    (one of our connection hooks, a missing module) is raised again as itself."""
    try:
        yield
    except HTTPClientError as exc:
        inner = exc.kwargs.get("error")
        if type(exc) is HTTPClientError and isinstance(inner, Exception) and not is_transport_error(inner):
            raise inner from None
        raise


def _read_bounded(raw: Any, cap: int, url: str, *, whole: bool) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = raw.read(min(RECV, cap + 1 - size))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > cap:
            if whole:
                raise BodyTooLargeError(endpoint_url=url, limit=cap)
            return b"".join(parts)[:cap]


class _DeadlineScope:
    """``with``: the running thread's requests (its sockets) get a total deadline; on expiry
    the error raised inside is replaced by ``DeadlineExceededError``."""

    def __init__(self, url: str, seconds: float, *, session: "Session | None" = None) -> None:
        self.url = url
        self.deadline = _Deadline(seconds)
        self.session = session

    def watch(self, sock: socket.socket | None) -> None:
        self.deadline.watch(sock)

    def __enter__(self) -> "_DeadlineScope":
        self.outer = getattr(_current, "deadline", None)
        _current.deadline = self.deadline
        _WATCHDOG.add(self.deadline)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        _current.deadline = self.outer
        fired = self.deadline.finish()  # the watchdog drops it
        if fired and (exc is None or isinstance(exc, Exception)):  # a cut-off read may return short
            seconds = self.deadline.seconds
            if self.session is not None:
                self.session.mark_down(self.url)
                seconds = self.session.timeouts.request
            raise DeadlineExceededError(endpoint_url=self.url, seconds=seconds) from None
        return False


def read_guarded(raw: Any, size: int, url: str, seconds: float, session: "Session | None" = None) -> bytes:
    """``raw.read(size)`` of a streamed urllib3 response, bounded by ``seconds`` in total
    (a body that trickles in fails rather than hanging; the ``session`` is then down)."""
    if seconds <= 0 or (session is not None and session.down is not None):
        if session is not None:
            session.mark_down(url)
        raise DeadlineExceededError(endpoint_url=url, seconds=session.timeouts.request if session else seconds)
    with _DeadlineScope(url, seconds, session=session) as scope:
        connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
        scope.watch(getattr(connection, "sock", None))
        fp = getattr(raw, "_fp", None)  # http.client's response: its socket when pooled conn is gone
        scope.watch(getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None))
        return raw.read(size)


def _as_botocore_error(exc: BaseException, url: str, proxy_url: str | None = None) -> Exception:
    """An I/O error from urllib3, ssl, http.client, httptools or the socket layer as the
    botocore exception ``URLLib3Session.send`` would raise for it. Anything else — a fault
    of the program itself (ImportError, AttributeError, TypeError, KeyError, ValueError...,
    raised by our code or a library's) — is raised again unchanged: it must reach the CLI's
    internal-error path, never read as "the store closed the connection"."""
    if not is_transport_error(exc):
        raise exc
    import ssl

    from urllib3 import exceptions as u3

    if isinstance(exc, BotoCoreError):
        return exc
    if isinstance(exc, (u3.SSLError, ssl.SSLError, ssl.CertificateError)) and not isinstance(
        exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
    ):
        return SSLError(endpoint_url=url, error=exc)
    if isinstance(exc, u3.ProxyError) and proxy_url:
        return ProxyConnectionError(proxy_url=mask_proxy_url(proxy_url), error=exc)
    if isinstance(exc, (u3.NewConnectionError, socket.gaierror, ConnectionRefusedError)):
        return EndpointConnectionError(endpoint_url=url, error=exc)  # (urllib3 2 makes it a ConnectTimeoutError)
    if isinstance(exc, (u3.ConnectTimeoutError,)):
        return ConnectTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, (u3.ReadTimeoutError, TimeoutError, socket.timeout)):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if _is_parser_error(exc):
        return ProtocolViolationError(endpoint_url=url, detail=str(exc)[:200])
    return ConnectionClosedError(endpoint_url=url, error=exc)


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the network's doing (socket/OSError, ssl, urllib3, http.client,
    an httptools parse error, or botocore's own transport exceptions), as opposed to a
    fault of the program."""
    import http.client
    import ssl

    from urllib3 import exceptions as u3

    if isinstance(exc, BotoCoreError):
        return True
    return isinstance(exc, (OSError, ssl.SSLError, ssl.CertificateError, u3.HTTPError,
                            http.client.HTTPException)) or _is_parser_error(exc)


def _is_parser_error(exc: BaseException) -> bool:
    import sys

    httptools = sys.modules.get("httptools")  # only once the multiplexer has loaded it
    # (a callback's failure, HttpParserCallbackError, is the program's, not the peer's)
    return (httptools is not None and isinstance(exc, httptools.HttpParserError)
            and not isinstance(exc, httptools.HttpParserCallbackError))


# -- retries -----------------------------------------------------------------------------


class RetryPolicy:
    """botocore's standard retry mode for the requests the signed path sends itself.

    Retryable: connection errors and timeouts (botocore's transient exception classes),
    botocore's transient codes and statuses (500, 502, 503, 504, RequestTimeout...), and
    throttling (botocore's throttling codes — SlowDown, Throttling, RequestLimitExceeded... —
    and any 429 or 503). Delay before attempt n+1: rand(0, 1) x min(scale x 2^(n-1), 20 s)
    with botocore's scales (0.05 s; 1 s when throttled), at least ``Retry-After`` (seconds,
    or ``x-amz-retry-after`` in ms) up to the 20 s cap. ``attempts`` (3, botocore's default)
    bounds other failures; throttling may take ``throttled_attempts``; no attempt starts
    after ``budget`` seconds from the first.
    """

    MAX_BACKOFF = ExponentialBackoff._MAX_BACKOFF
    SCALE = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG["non_throttling_base_scale"]
    THROTTLED_SCALE = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG["throttling_base_scale"]
    THROTTLED_CODES = frozenset(ThrottledRetryableChecker()._throttled_error_codes)
    TRANSIENT_CODES = frozenset(TransientRetryableChecker()._transient_error_codes)
    TRANSIENT_STATUSES = frozenset(TransientRetryableChecker()._transient_status_codes)

    def __init__(
        self, attempts: int = 3, throttled_attempts: int = 10, budget: float = 300,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.attempts = attempts
        self.throttled_attempts = throttled_attempts
        self.budget = budget
        self.rand = rand

    def is_throttle(self, status: int, code: str) -> bool:
        return code in self.THROTTLED_CODES or status in (429, 503)

    def is_retryable(self, status: int, code: str) -> bool:
        return (
            self.is_throttle(status, code) or status in self.TRANSIENT_STATUSES or code in self.TRANSIENT_CODES
        )

    def delay(
        self, attempt: int, started: float, *, throttled: bool, retry_after: float | None = None,
        retryable: bool = True,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1), or None
        when no other attempt may be made."""
        if not retryable or attempt >= (self.throttled_attempts if throttled else self.attempts):
            return None
        scale = self.THROTTLED_SCALE if throttled else self.SCALE
        wait = self.rand() * min(scale * 2 ** (attempt - 1), self.MAX_BACKOFF)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.MAX_BACKOFF))
        if time.monotonic() + wait - started > self.budget:
            return None
        return wait


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (a number; an HTTP date is ignored), else
    ``x-amz-retry-after`` in milliseconds; None if neither is usable."""
    for name, scale in (("retry-after", 1.0), ("x-amz-retry-after", 0.001)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if seconds >= 0:
                return seconds
    return None


# -- many requests from one thread --------------------------------------------------------


def encode_request(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request head. Writing one is not parsing: the only rule to keep is that no name or
    value may carry a line break or NUL (which would let a key or header smuggle a second
    request), and no name or target a space; ValueError if one does."""
    items = [(name, str(value)) for name, value in headers]
    text = "".join([target, *(name + value for name, value in items)])
    if "\r" in text or "\n" in text or "\0" in text or " " in target or any(
        not name or " " in name for name, _ in items
    ):
        raise ValueError("a header or the request target holds a line break, NUL or space")
    return "".join(
        [f"{method} {target} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in items), "\r\n"]
    ).encode("latin-1")


class _Slot:
    """One keep-alive connection of a ``Multiplexer``: urllib3 opened it, httptools (llhttp)
    parses its answers; the parser's callbacks fill in the request in flight."""

    def __init__(self) -> None:
        self.conn: Any = None  # a urllib3 connection (owns the socket)
        self.sock: socket.socket | None = None
        self.parser: Any = None
        # the request in flight
        self.token: Any = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.limit = 0
        self.overflow = False
        self.head_done = False
        self.informational = False
        self.done = False  # the final answer is complete
        self.keep_alive = False
        self.extra = False  # bytes after the final answer
        self.idle_at = 0.0  # read timeout: no byte since
        self.due = 0.0  # request deadline
        self.free_since = 0.0  # when its last answer completed

    def start(self, token: Any, limit: int) -> None:
        import httptools

        self.token, self.limit = token, limit
        self.status, self.headers, self.body = 0, {}, bytearray()
        self.overflow = self.head_done = self.informational = self.done = self.extra = False
        self.parser = httptools.HttpResponseParser(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
        self.headers, self.head_done, self.informational = {}, False, False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) < 200:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.informational = 100 <= self.status < 200
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        if self.informational or self.done:
            return
        cap = self.limit if 200 <= self.status < 300 else MAX_ERROR_BODY
        room = cap - len(self.body)
        if len(data) > room:
            self.overflow = 200 <= self.status < 300
            data = data[: max(0, room)]
        self.body += data

    def on_message_complete(self) -> None:
        if self.informational:  # 100 Continue and friends: the real answer follows
            return
        if not self.done:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = self.sock = self.parser = None


class Multiplexer:
    """Many requests at once over up to ``size`` keep-alive connections to one host, one
    request per connection at a time, driven by a selector loop in the calling thread (one
    per thread). ``send`` starts a request on a free connection; ``poll`` returns finished
    requests, each with its ``Response`` or the botocore exception it failed with (its
    connection closed; a later request reconnects). Requests carry no HEAD (the parser is
    not told the method).

    urllib3 opens each connection (TLS, proxy tunnel, timeouts) through the ``Session``'s
    pools; httptools (llhttp, Node.js's parser) parses each answer. An idle connection that
    turns readable (the server closed it, or sent a 408) is closed, never read as the next
    answer; bytes after a complete answer are a protocol error; bodies are bounded.
    """

    def __init__(self, session: Session, url: str, size: int) -> None:
        self.session = session
        self.timeouts = session.timeouts
        self.url = url  # scheme://host[:port]
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.netloc
        self.size = size
        self.proxy_url = session.proxy_url(url)
        self._absolute = bool(self.proxy_url) and self.scheme == "http"  # absolute-form targets
        self._proxy_headers = session._proxy_config.proxy_headers_for(self.proxy_url) if self._absolute else {}
        self._idle = [_Slot() for _ in range(size)]
        self._busy: set[_Slot] = set()
        self._done: list[tuple[Any, Response | Exception]] = []
        self._registered: dict[_Slot, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._next_sweep = 0.0
        self._connect_seconds: float | None = None  # what the first connect took (``warm``)

    @property
    def free(self) -> int:
        return len(self._idle)

    @property
    def in_flight(self) -> int:
        return len(self._busy) + len(self._done)

    # -- connections ---------------------------------------------------------------------
    def _open(self, slot: _Slot, due: float | None = None) -> None:
        """Connect ``slot`` as botocore's session would (its pools: CA bundle, proxy,
        CONNECT tunnel, connect timeout). urllib3 has no public call that only connects,
        so this takes a new connection from the pool (``_new_conn``) and, for a tunnel,
        lets the pool set it up (``_prepare_proxy``) — as ``urlopen`` does."""
        session = self.session
        manager = session._get_connection_manager(self.url, self.proxy_url)
        pool = manager.connection_from_url(self.url)
        session._setup_ssl_cert(pool, self.url, session._verify)
        conn = pool._new_conn()
        # the connect timeout, or what is left of the operation's deadline if that is less
        conn.timeout = self.timeouts.connect if due is None else max(0.001, min(self.timeouts.connect, due - time.monotonic()))
        try:
            if self.proxy_url and self.scheme == "https":
                pool._prepare_proxy(conn)
            else:
                conn.connect()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, Exception):
                raise self._error(exc, connecting=True) from None
            raise
        sock = conn.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.0)  # non-blocking: the selector says when to read
        slot.conn, slot.sock = conn, sock

    def _error(self, exc: Exception, *, connecting: bool = False) -> Exception:
        from urllib3 import exceptions as u3

        if isinstance(exc, BotoCoreError):  # raised by ``_open``, already botocore's
            return exc
        ssl_error = isinstance(exc, u3.SSLError) or _is_ssl(exc)
        if connecting and self.proxy_url and isinstance(exc, (OSError, u3.HTTPError)) and not ssl_error:
            return ProxyConnectionError(proxy_url=mask_proxy_url(self.proxy_url), error=exc)
        timed_out = isinstance(exc, (TimeoutError, socket.timeout, u3.ConnectTimeoutError))
        if connecting and timed_out and not isinstance(exc, u3.NewConnectionError):
            return ConnectTimeoutError(endpoint_url=self.url, error=exc)
        if connecting and isinstance(exc, OSError) and not ssl_error:
            return EndpointConnectionError(endpoint_url=self.url, error=exc)
        return _as_botocore_error(exc, self.url, self.proxy_url)

    def warm(self, n: int) -> None:
        """Open up to ``n`` connections at once (in threads: each connect, and a TLS
        handshake, is a round trip or more). Failures are left for ``send`` to meet.

        The first connection is opened here, timed: one that took under ``CHEAP_CONNECT``
        (the same host or a LAN, plain HTTP) means the rest cost less than the threads that
        would open them, so they open in ``send``, as requests need them, and the first
        request goes out at once (measured, 2,000 PUTs to SeaweedFS on loopback: 0.07 s of a
        1.4 s migrate-to-s3)."""
        cold = [slot for slot in self._idle if slot.sock is None]
        cold = cold[: max(0, n - (self.size - len(cold)))]
        if self._connect_seconds is None and cold:
            slot = cold.pop()
            started = time.monotonic()
            try:
                self._open(slot)
            except BotoCoreError:  # a network failure: send meets it again and reports it
                slot.close()
            else:
                self._connect_seconds = time.monotonic() - started
            self._track(slot)
        if self._connect_seconds is not None and self._connect_seconds < CHEAP_CONNECT:
            return
        if len(cold) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        def connect(slot: _Slot) -> None:
            try:
                self._open(slot)
            except BotoCoreError:  # a network failure: send meets it again and reports it
                slot.close()  # (a fault of the program is raised here, as itself)

        with ThreadPoolExecutor(min(PARALLEL_CONNECTS, len(cold)), thread_name_prefix="connect") as pool:
            list(pool.map(connect, cold))
        for slot in cold:
            self._track(slot)

    # -- requests ------------------------------------------------------------------------
    def send(
        self, token: Any, method: str, target: str, headers: Mapping[str, str], body: bytes = b"",
        *, limit: int = MAX_ERROR_BODY, due: float | None = None,
    ) -> None:
        """Start a request on a free connection (the caller checks ``free`` first). A 2xx
        answer's body may hold ``limit`` bytes; an error's is cut at ``MAX_ERROR_BODY``.
        ``due``: the operation's deadline (monotonic; default ``Timeouts.request`` from now);
        past it — or with the Session down — the request fails with
        ``DeadlineExceededError`` (at once, if it already is)."""
        slot = self._idle.pop()
        connecting = False
        now = time.monotonic()
        due = now + self.timeouts.request if due is None else min(due, now + self.timeouts.request)
        if self.session.down is not None or due <= now:
            self.session.mark_down(self.url)
            self._idle.append(slot)
            self._done.append((token, DeadlineExceededError(endpoint_url=self.url, seconds=self.timeouts.request)))
            return
        try:
            # An idle socket is watched by the selector while ``poll`` runs; one left idle
            # since (between batches) is checked here before it carries a request.
            stale = slot.sock is not None and time.monotonic() - slot.free_since > REUSE_CHECK_AFTER
            if stale and not self._still_open(slot):
                self._drop(slot)
            if slot.sock is None:
                connecting = True
                self._open(slot, due)
                connecting = False
            self._track(slot)
            now = time.monotonic()
            slot.start(token, limit)
            slot.idle_at, slot.due = now, due
            if self._absolute:
                target = f"{self.url}{target}"
                headers = {**headers, **self._proxy_headers}
            head = encode_request(method, target, [("Host", self.host), *headers.items()])
            self._write(slot, head + body if body else head)
        except Exception as exc:  # noqa: BLE001 - reported through poll, like any failure
            self._drop(slot)
            self._idle.append(slot)
            self._done.append((token, self._error(exc, connecting=connecting)))
            return
        self._busy.add(slot)

    def _write(self, slot: _Slot, data: bytes) -> None:
        """Send all of ``data`` on the non-blocking socket, waiting for room up to the read
        timeout (a small request fits the socket buffer and goes in one send)."""
        import select
        import ssl

        sock = slot.sock
        assert sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                wants_read = isinstance(exc, ssl.SSLWantReadError)  # TLS may need to read first
                left = slot.due - time.monotonic()  # a peer taking the body slowly: the deadline holds
                if left <= 0:
                    self.session.mark_down(self.url)
                    raise DeadlineExceededError(endpoint_url=self.url, seconds=self.timeouts.request) from None
                ready = select.select(
                    [sock] if wants_read else [], [] if wants_read else [sock], [], min(self.timeouts.read, left)
                )
                if not any(ready) and left > self.timeouts.read:
                    raise TimeoutError(f"{self.host} did not take the request within {self.timeouts.read:g} s")

    def _recv(self, slot: _Slot) -> bytes | None:
        """What the socket holds (b"" at EOF), or None when nothing (TLS: a record without
        application data, such as a TLS 1.3 session ticket)."""
        import ssl

        sock = slot.sock
        assert sock is not None
        try:
            data = sock.recv(RECV)
            if data and isinstance(sock, ssl.SSLSocket):
                while sock.pending():
                    data += sock.recv(RECV)
            return data
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None

    def _still_open(self, slot: _Slot) -> bool:
        """An idle connection is reusable only if the server sent nothing since its last
        answer (a close, a 408, anything: the connection is dropped)."""
        import select

        if slot.sock is None or slot.sock.fileno() < 0:
            return False
        readable, _, _ = select.select([slot.sock], [], [], 0)
        if not readable:
            return True
        try:
            return self._recv(slot) is None  # readable with no data: a TLS session ticket
        except OSError:
            return False

    def _receive(self, slot: _Slot) -> Response | None:
        """Feed what arrived to the parser; the response once complete, else None."""
        import httptools

        data = self._recv(slot)
        if data is None:
            return None
        if not data:  # EOF
            if slot.done:
                return self._complete(slot)
            framed = "content-length" in slot.headers or "transfer-encoding" in slot.headers
            if slot.head_done and not slot.informational and not framed:  # framed by the close
                slot.done, slot.keep_alive = True, False
                return self._complete(slot)
            if slot.head_done:
                raise BodyCutShortError(endpoint_url=self.url)
            raise ConnectionClosedError(endpoint_url=self.url, error=ConnectionError("closed before answering"))
        try:
            slot.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # One of our callbacks (``_Slot.on_*``) failed: a fault of the program, raised as
            # itself, never read as the server breaking HTTP.
            raise (exc.__context__ or exc) from None
        except httptools.HttpParserError as exc:
            if slot.done:
                slot.extra = True
            else:
                raise ProtocolViolationError(endpoint_url=self.url, detail=str(exc)[:200]) from None
        if slot.overflow:
            raise BodyTooLargeError(endpoint_url=self.url, limit=slot.limit)
        return self._complete(slot) if slot.done else None

    def _complete(self, slot: _Slot) -> Response:
        if slot.extra:
            raise ProtocolViolationError(endpoint_url=self.url, detail="bytes after a complete answer")
        response = Response(slot.status, slot.headers, bytes(slot.body))
        slot.body = bytearray()
        if not slot.keep_alive:  # Connection: close, HTTP/1.0, a body framed by the close
            self._drop(slot)
        return response

    def poll(self, timeout: float | None) -> list[tuple[Any, Response | Exception]]:
        """Wait up to ``timeout`` seconds (None: until something finishes) and return the
        requests that finished since the last call."""
        if self._done:
            timeout = 0
        if self._busy:
            wait = SWEEP if timeout is None else min(timeout, SWEEP)
            for key, _ in self._selector.select(wait):
                slot: _Slot = key.data
                if slot not in self._busy:  # idle and readable: closed by the server, or a 408
                    if not self._still_open(slot):
                        self._drop(slot)
                    continue
                try:
                    response = self._receive(slot)
                except Exception as exc:  # noqa: BLE001 - reported to the caller
                    self._finish(slot, self._error(exc))
                    continue
                if response is not None:
                    self._finish(slot, response)
                else:  # alive: the read timeout restarts (the request deadline does not)
                    slot.idle_at = time.monotonic()
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP
                for slot in list(self._busy):
                    if slot.due <= now:
                        self.session.mark_down(self.url)
                        self._finish(
                            slot, DeadlineExceededError(endpoint_url=self.url, seconds=self.timeouts.request)
                        )
                    elif slot.idle_at + self.timeouts.read <= now:
                        error = TimeoutError(f"no byte within {self.timeouts.read:g} s")
                        self._finish(slot, ReadTimeoutError(endpoint_url=self.url, error=error))
        done, self._done = self._done, []
        return done

    def _finish(self, slot: _Slot, result: Response | Exception) -> None:
        self._busy.discard(slot)
        slot.free_since = time.monotonic()
        if isinstance(result, Exception):
            self._drop(slot)
        self._idle.append(slot)
        self._done.append((slot.token, result))
        slot.token = None

    def _drop(self, slot: _Slot) -> None:
        slot.close()
        self._track(slot)

    def _track(self, slot: _Slot) -> None:
        """Keep the selector in step with ``slot``'s socket (right after anything that may
        open or close it, before another socket can reuse its number)."""
        old = self._registered.get(slot)
        if old is slot.sock:
            return
        if old is not None:
            self._selector.unregister(old)
            del self._registered[slot]
        if slot.sock is not None:
            self._selector.register(slot.sock, selectors.EVENT_READ, slot)
            self._registered[slot] = slot.sock

    def close(self) -> None:
        for slot in [*self._idle, *self._busy]:
            self._drop(slot)
        self._busy.clear()
        self._selector.close()


def _is_ssl(exc: BaseException) -> bool:
    import ssl

    return isinstance(exc, (ssl.SSLError, ssl.CertificateError))

