"""S3 store: the only module that imports boto3/botocore.

Every S3 detail lives here: the lazily-built client (SigV4, path-style on custom
endpoints, checksums only when required there, standard retries, a pool as large as the
worker count), streaming transfers, and the translation of errors by HTTP status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import itertools
import re
import threading
import time
import zlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator
from urllib.parse import quote, urlencode, urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError as BotoConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from apstorage.errors import (
    ApStorageError,
    BackendUnavailableError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
)
from apstorage.model import Location
from apstorage.stores.base import CHUNK, ObjectInfo, Store
from apstorage.stores.s3_http import (
    MAX_LIST_PAGE,
    BodyCutShortError,
    BodyTooLargeError,
    DeadlineExceededError,
    Multiplexer,
    ProtocolViolationError,
    Response,
    RetryPolicy,
    Session,
    Timeouts,
    read_guarded,
    retry_after,
)

if TYPE_CHECKING:
    from apstorage.config import Settings

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
EXPECT_CONTINUE_OVER = 1024 * 1024  # PUT bodies larger than this wait for "100 Continue"
# A GetObjectTagging asks for this many bytes at most: more than any tag set's XML (AWS
# allows 10 tags of 128 + 256 characters), little of an object a store sends instead.
TAGGING_RANGE = 64 * 1024


class S3Store(Store):
    location = Location.S3

    def __init__(self, settings: Settings, *, workers: int = 10) -> None:
        settings.require_s3()
        self.settings = settings
        self.bucket: str = settings.s3_bucket  # type: ignore[assignment]
        self.workers = max(1, workers)
        self.endpoint = settings.s3_endpoint
        self.where = self.endpoint or f"AWS S3 ({settings.s3_region or 'default region'})"
        self.timeouts = Timeouts.from_read(settings.s3_timeout_seconds)
        self._client: Any = None
        self._fast: _FastS3 | None = None
        self._session: Session | None = None
        self._lock = threading.RLock()
        self._multi_delete = True  # False once the store answered NotImplemented

    # -- client -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    @property
    def session(self) -> Session:
        """The one HTTP session every request goes through (the botocore client's too)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    region = self.settings.s3_region or "us-east-1"
                    url = self.endpoint or f"https://s3.{region}.amazonaws.com"
                    self._session = Session(
                        url, timeouts=self.timeouts, ca_bundle=ca_bundle(),
                        max_pool_connections=max(10, self.workers),
                    )
        return self._session

    def _build_client(self) -> Any:
        from botocore.config import Config

        s = self.settings
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "max_pool_connections": max(10, self.workers),
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": self.timeouts.connect,
            "read_timeout": self.timeouts.read,
        }
        if self.endpoint:
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        kwargs: dict[str, Any] = {
            "region_name": s.s3_region or "us-east-1",
            "endpoint_url": self.endpoint,
            "config": Config(**options),
        }
        if not s.s3_use_irsa:
            kwargs["aws_access_key_id"] = s.s3_access_key_id
            kwargs["aws_secret_access_key"] = s.s3_secret_access_key.reveal()  # type: ignore[union-attr]
        from botocore.exceptions import ProfileNotFound

        try:
            client = _session().create_client("s3", **kwargs)
        except ProfileNotFound as exc:
            raise ConfigError(f"AWS_PROFILE: {exc}") from None
        self.session.attach(client)  # same proxies, TLS, timeouts and deadlines as the signed path
        return client

    def transfer_config(self) -> Any:
        # boto3 (and s3transfer) load only for multipart transfers: importing them costs
        # ~0.2 s on every command otherwise.
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=4,
        )
        # Parts read from a file object are held in memory until sent (default 10):
        # cap them so a 1 GiB upload stays flat (measured in tests/test_streaming.py).
        config.max_in_memory_upload_chunks = 4
        return config

    # -- errors -----------------------------------------------------------------------
    def translate(self, exc: Exception, key: str | None = None) -> ApStorageError:
        """Map a botocore error to ours by HTTP status or exception class, never a
        catch-all: every command reports the same failure with the same words and exit code.
        Transport failures (exit 8) name the host, or the proxy when the proxy failed, and
        say which of these it was: refused/unresolvable, connect timeout, read timeout, no
        complete answer within the request deadline, reset, body cut short, TLS failure."""
        what = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = err.get("Message") or code
            detail = f"{code}: {message}" if code and message != code else (code or message)
            if code == "NoSuchBucket":
                return NotFoundError(f"bucket {self.bucket!r} does not exist at {self.where}")
            if status == 404 or code in ("NoSuchKey", "NotFound"):
                return NotFoundError(f"{what} does not exist")
            if status in (401, 403):
                return PermissionDeniedError(
                    f"S3 at {self.where} refused access to {what} ({detail})"
                )
            if status == 400 and code == "EntityTooLarge":
                return TooLargeError(f"S3 refused {what}: {detail}")
            if status >= 500 or status in (0, 429):
                return BackendUnavailableError(f"S3 at {self.where} failed for {what}: {detail}")
            return ApStorageError(f"S3 error for {what}: {detail} (HTTP {status})")
        if isinstance(exc, NoCredentialsError):
            return no_credentials_error()
        transport = self.transport_error(exc)
        if transport is not None:
            return transport
        if isinstance(exc, BotoCoreError):
            return ApStorageError(f"S3 error for {what}: {exc}")
        if isinstance(exc, ApStorageError):
            return exc
        raise exc

    def transport_error(self, exc: BaseException) -> BackendUnavailableError | None:
        """The exit-8 error for a failure to talk to S3 (``exc`` as botocore raises it),
        or None if ``exc`` is not one."""
        host = self.host
        seconds = self.timeouts
        if isinstance(exc, ProxyConnectionError):
            proxy = exc.kwargs.get("proxy_url", "the proxy")
            return BackendUnavailableError(f"cannot reach S3 at {host} through proxy {proxy}: {_cause(exc)}")
        if isinstance(exc, SSLError):
            return BackendUnavailableError(
                f"TLS with S3 at {host} failed (certificate not verified, or TLS refused): {_cause(exc)}",
                hint="AWS_CA_BUNDLE names the CA certificates to trust",
            )
        if isinstance(exc, ConnectTimeoutError):
            return BackendUnavailableError(f"connecting to S3 at {host} timed out after {seconds.connect:g} s")
        if isinstance(exc, EndpointConnectionError):
            return BackendUnavailableError(f"cannot connect to S3 at {host}: {_cause(exc)}")
        if isinstance(exc, DeadlineExceededError):
            return BackendUnavailableError(
                f"S3 at {host} sent no complete answer within {seconds.request:g} s, retries included "
                "(it stalled or trickled; the bound is 2 x AP_S3_TIMEOUT_SECONDS)"
            )
        if isinstance(exc, ReadTimeoutError):
            return BackendUnavailableError(
                f"S3 at {host} sent nothing for {seconds.read:g} s (read timeout, AP_S3_TIMEOUT_SECONDS)"
            )
        if isinstance(exc, BodyTooLargeError):
            return BackendUnavailableError(f"S3 at {host} sent an answer too large to be S3's: {exc}")
        if isinstance(exc, (IncompleteReadError, ResponseStreamingError, BodyCutShortError)) or _cut_short(exc):
            return BackendUnavailableError(f"S3 at {host} closed the connection before the whole body arrived")
        if isinstance(exc, ProtocolViolationError):
            return BackendUnavailableError(f"S3 at {host} broke HTTP/1.1: {exc.kwargs.get('detail')}")
        if isinstance(exc, (ConnectionClosedError, HTTPClientError)):
            if _in_chain(exc, ConnectionResetError):
                return BackendUnavailableError(f"S3 at {host} reset the connection")
            return BackendUnavailableError(f"S3 at {host} closed the connection without answering")
        return None

    def down_reason(self) -> str | None:
        """Why S3 is given up on for the rest of this run (an operation's deadline passed:
        every later request fails at once), or None."""
        session = self._session
        if session is None or session.down is None:
            return None
        error = self.transport_error(DeadlineExceededError(endpoint_url=session.down, seconds=self.timeouts.request))
        return error.message if error is not None else None

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).netloc if self.endpoint else f"s3.{self.settings.s3_region or 'us-east-1'}.amazonaws.com"

    # -- Store ------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO, size: int, *, tags: dict[str, str] | None = None) -> None:
        if size < MULTIPART_THRESHOLD:
            self.put_bytes(key, source.read(), tags=tags)
            return
        extra: dict[str, Any] = {"Tagging": urlencode(tags)} if tags else {}
        from boto3.s3.inject import upload_fileobj

        try:
            upload_fileobj(
                self.client, source, self.bucket, key, ExtraArgs=extra or None,
                Config=self.transfer_config(),
            )
        except (ClientError, BotoCoreError) as exc:
            self._abort_multipart(key)
            raise self.translate(exc, key) from None
        except ApStorageError:
            self._abort_multipart(key)
            raise
        except Exception as exc:  # s3transfer wraps client errors in its own types
            cause = exc.__cause__ or exc.__context__
            transfers = ("s3transfer", "boto3")
            if isinstance(cause, (ClientError, BotoCoreError)):
                self._abort_multipart(key)
                raise self.translate(cause, key) from None
            if isinstance(exc, KeyError) and _raised_in(exc, transfers):  # an UploadPart answer without its ETag
                detail = f"an answer lacked its {exc.args[0] if exc.args else 'ETag'}"
            elif type(exc).__module__.split(".")[0] in transfers:  # s3transfer's own (RetriesExceededError...)
                detail = f"{type(exc).__name__}: {exc}"
            else:
                # A fault of the program (ours or a library's: ImportError, TypeError, a
                # KeyError of our own...): raised as itself, for the CLI's internal-error
                # path, never reported as the store's failure.
                self._abort_multipart(key)
                raise
            self._abort_multipart(key)
            raise BackendUnavailableError(
                f"S3 at {self.where} did not complete the multipart upload of {key!r} ({detail}); "
                "the upload was aborted and nothing was recorded"
            ) from None
        # A multipart ETag ("hex-N") is no MD5 of the bytes: a HEAD proves the object.
        self._proven_or_raise(key, size, None)

    def _abort_multipart(self, key: str) -> None:
        """Abort the multipart uploads of ``key`` a failed upload left open (best effort:
        s3transfer aborts its own on most failures, not when an answer lacks a field)."""
        with contextlib.suppress(ClientError, BotoCoreError, ApStorageError):
            page = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in page.get("Uploads", []):
                if upload.get("Key") == key:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    def put_bytes(self, key: str, data: bytes, *, tags: dict[str, str] | None = None) -> None:
        """One PutObject carrying Content-MD5, so the server refuses damaged bytes. The
        upload counts only when proven (``_proof_error``): an ETag equal to that MD5, else a
        HEAD. Raises ApStorageError otherwise (a proven-failed object is removed first).

        Sent through ``_FastS3`` (our SigV4 over a keep-alive connection per thread)
        rather than ``client.put_object``: for small objects botocore's per-call machinery
        (endpoint rules, event hooks) costs more than the request itself — see ``_FastS3``'s
        docstring for the profile. Bodies over 1 MiB send ``Expect: 100-continue`` (through
        botocore's connection class), so a server refusing early is heard as a refusal.
        """
        digest = hashlib.md5(data)
        etag = self.fast.put(key, data, _put_headers(digest, tags))
        error = self._proof_error(key, etag, digest, data)
        if error:
            raise error

    def put_many(
        self, items: Iterable[tuple[Any, str, bytes, dict[str, str] | None]], *, concurrency: int,
        expected: int | None = None,
    ) -> Iterator[tuple[Any, ApStorageError | None]]:
        """``put_bytes`` for many (token, key, body, tags) at once: ``concurrency``
        requests in flight from this one thread. Yields (token, None) for each object
        stored and verified, (token, error) for each that failed, in completion order.
        ``items`` is consumed lazily (at most ``concurrency`` bodies are held);
        ``expected``, how many there are, if known, bounds the connections opened."""

        body_of: dict[int, bytes] = {}  # held until proven (a HEAD may need checksums)

        def requests() -> Iterator[tuple[Any, str, bytes, dict[str, str]]]:
            for seq, (token, key, body, tags) in enumerate(items):
                digest = hashlib.md5(body)
                body_of[seq] = body
                yield (seq, token, key, digest), key, body, _put_headers(digest, tags)

        for (seq, token, key, digest), result in self.fast.put_many(requests(), concurrency, expected):
            body = body_of.pop(seq)
            if isinstance(result, ApStorageError):
                yield token, result
            else:
                yield token, self._proof_error(key, result, digest, body)

    # -- proof of an upload -------------------------------------------------------------
    # A 2xx answer is not proof: a proxy or a faulty gateway can answer 2xx without
    # storing anything (no ETag at all), and SSE-KMS / SSE-C buckets and multipart uploads
    # answer with an ETag that is no MD5 of the bytes. So an upload counts when the ETag is
    # the MD5 of the bytes sent; otherwise a HEAD decides: the object must be there with
    # the size sent, and every checksum the store returns that can be computed here
    # (CRC32, SHA-1, SHA-256) must match. A non-MD5 ETag alone is not a failure.

    def _proof_error(self, key: str, etag: str | None, digest: Any, data: bytes) -> ApStorageError | None:
        md5_hex = digest.hexdigest()
        if etag and etag.strip('"').lower() == md5_hex:
            return None
        error = self._head_proof(key, len(data), md5_hex, data, discard=True)
        if error is None:
            return None
        answered = f"the ETag {etag}" if etag else "no ETag"
        return ApStorageError(
            f"{error.message} (the upload was answered with {answered}, not the MD5 {md5_hex} "
            "of the bytes sent, so a HEAD had to prove it)"
        )

    def _proven_or_raise(self, key: str, size: int, data: bytes | None) -> None:
        error = self._head_proof(key, size, None, data, discard=True)
        if error:
            raise error

    def prove(self, key: str, size: int, md5_hex: str, *, data: bytes | None = None) -> ApStorageError | None:
        """None when the object at ``key`` is proven to hold ``size`` bytes whose MD5 is
        ``md5_hex`` (and ``data``'s checksums, when the store returns some); else why not.
        Stricter than an upload's proof, for deciding to delete another copy: an ETag that
        looks like an MD5 must be this MD5 unless the store says the object is encrypted
        with KMS or a customer key (whose ETags are not MD5s). Reads only: never deletes."""
        return self._head_proof(key, size, md5_hex, data, discard=False, strict=True)

    def _head_proof(self, key: str, size: int, md5_hex: str | None, data: bytes | None, *,
                    discard: bool, strict: bool = False) -> ApStorageError | None:
        where = f"s3://{self.bucket}/{key}"
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return ApStorageError(
                    f"{where} is not there after an upload the server answered with success; "
                    "the upload does not count"
                )
            return ApStorageError(f"{where}: the upload could not be proven ({self.translate(exc)})")
        except BotoCoreError as exc:
            return ApStorageError(f"{where}: the upload could not be proven ({self.translate(exc)})")
        stored = int(head.get("ContentLength", -1))
        wrong = None
        if stored != size:
            wrong = f"{where} holds {stored} bytes after uploading {size}"
        elif md5_hex and str(head.get("ETag", "")).strip('"').lower() == md5_hex:
            return None
        elif strict and _md5_like(head.get("ETag")) and not _encrypted_etag(head):
            wrong = f"{where} has the ETag {head.get('ETag')}, not the MD5 {md5_hex} of the bytes"
        elif data is not None:
            for field_name, compute in _CHECKSUMS.items():
                value = head.get(field_name)
                if value and "-" not in value and value != compute(data):
                    wrong = f"{where}: the stored {field_name} {value} is not that of the bytes sent"
                    break
        if wrong is None:
            return None
        if discard:  # the caller owns the key: a proven-failed upload leaves no object
            with contextlib.suppress(ApStorageError):
                self.delete(key)
            wrong += "; the object was removed"
        return ApStorageError(wrong)

    @property
    def fast(self) -> "_FastS3":
        if self._fast is None:
            with self._lock:
                if self._fast is None:
                    self._fast = _FastS3(self)
        return self._fast

    def open(self, key: str) -> Iterator[bytes]:
        started = time.monotonic()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, key) from None
        return self._iter_body(response["Body"], key, started)

    def _iter_body(self, body: Any, key: str, started: float | None = None) -> Iterator[bytes]:
        """The object's bytes. The GetObject and the first chunk (1 MiB) share the
        operation's deadline (``Timeouts.request`` from ``started``); each later chunk
        must arrive within a deadline of its own (a body that trickles in fails with exit 8,
        it does not hang), and all of it must arrive."""
        raw = body._raw_stream  # urllib3's response (botocore's StreamingBody keeps no public handle)
        expected = body._content_length
        received = 0
        session = self.session
        first = self.timeouts.request if started is None else started + self.timeouts.request - time.monotonic()
        try:
            with body:
                while True:
                    seconds = first if received == 0 else self.timeouts.request
                    chunk = read_guarded(raw, CHUNK, session.endpoint_url, seconds, session)
                    if not chunk:
                        break
                    received += len(chunk)
                    yield chunk
            if expected is not None and received != int(expected):
                raise IncompleteReadError(actual_bytes=received, expected_bytes=int(expected))
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc, key) from None
        except Exception as exc:  # noqa: BLE001 - urllib3/socket errors while streaming
            from apstorage.stores.s3_http import _as_botocore_error

            translated = self.transport_error(_as_botocore_error(exc, self.session.endpoint_url))
            if translated is None:
                raise
            raise translated from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NotFound"):
                return
            raise self.translate(exc, key) from None
        except BotoCoreError as exc:
            raise self.translate(exc, key) from None

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Delete ``keys``; returns {refused key: reason}. A missing key counts as deleted.

        DeleteObjects in batches of ``AP_S3_DELETE_BATCH_SIZE``, carrying ``Content-MD5``
        (stores that predate the CRC32 checksums botocore >= 1.36 sends refuse a batch
        without it, ``MissingContentMD5``). One DeleteObject per key instead:

        - for keys XML 1.0 cannot carry (control characters): a batch would fail with
          MalformedXML on every run;
        - for the whole batch when the store refuses the request as MalformedXML;
        - for the rest of the run once the store answers NotImplemented (501): it has no
          multi-object delete;
        - for the whole batch when the answer cannot be matched to the request (an error
          entry for a key that was not sent, or without a key): each key is deleted again
          and a HEAD confirms it is gone, so no row is removed on a guess.
        """
        keys = list(dict.fromkeys(keys))
        one_by_one = [k for k in keys if _xml_unsafe(k)]
        batchable = [k for k in keys if not _xml_unsafe(k)]
        failed: dict[str, str] = {}
        confirm: list[str] = []
        batch_size = max(1, self.settings.s3_delete_batch_size)
        for start in range(0, len(batchable), batch_size):
            batch = batchable[start : start + batch_size]
            if not self._multi_delete:
                one_by_one.extend(batch)
                continue
            outcome = self._delete_batch(batch)
            if outcome is None:
                one_by_one.extend(batch)
            elif outcome is _UNMATCHED:
                confirm.extend(batch)
            else:
                failed.update(outcome)  # type: ignore[arg-type]
        failed.update(self._delete_each(one_by_one))
        if confirm:
            failed.update(self._delete_each(confirm, confirm=True))
        return failed

    def _delete_batch(self, batch: list[str]) -> dict[str, str] | object | None:
        """One DeleteObjects: the refused keys, or None when the batch must go key by key,
        or ``_UNMATCHED`` when the answer names keys that were not sent.

        Sent through ``_FastS3.delete_objects`` (the signed path, as listings and small
        PUTs are): botocore's serializer, parser and event hooks cost more CPU than the
        request itself. The answer is verbose (``Quiet`` false) and every key must be in
        it: a key neither ``<Deleted>`` nor ``<Error>`` was not deleted (its row stays)."""
        try:
            answer = self.fast.delete_objects([(k, None) for k in batch])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NotImplemented", "XNotImplemented") or status == 501:
                self._multi_delete = False  # for the rest of this run
                return None
            if code == "MalformedXML":
                return None
            reason = _reason(self.translate(exc), code)
            return {k: reason for k in batch}
        except BotoCoreError as exc:
            transport = self.transport_error(exc)
            if transport is not None:  # S3 cannot be reached, or stalls: exit 8, as everywhere
                raise transport from None
            reason = str(self.translate(exc))
            return {k: reason for k in batch}
        sent = set(batch)
        if any(key not in sent for key, _ in answer.deleted) or any(e[0] not in sent for e in answer.errors):
            return _UNMATCHED
        refused: dict[str, str] = {}
        answered = {key for key, _ in answer.deleted}
        for key, _, code, message in answer.errors:
            answered.add(key)
            if code in ("NoSuchKey", "NotFound"):
                continue
            refused[key] = f"{code}: {message}".strip(" :")
        for key in batch:
            if key not in answered:
                refused[key] = (
                    f"S3 at {self.where} answered DeleteObjects without an entry for this key "
                    "(neither deleted nor refused); the row is kept"
                )
        return refused

    def _delete_each(self, keys: list[str], *, confirm: bool = False) -> dict[str, str]:
        """DeleteObject per key, a few at a time; with ``confirm``, a HEAD afterwards
        must find nothing. Returns the refused keys with reasons."""
        if not keys:
            return {}
        from concurrent.futures import ThreadPoolExecutor

        def one(key: str) -> str | None:
            try:
                self.delete(key)
                if confirm and self.stat(key) is not None:
                    return "the object is still there after DeleteObject answered success"
            except ApStorageError as exc:
                return _reason(exc)
            return None

        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
            results = list(pool.map(one, keys))
        return {key: reason for key, reason in zip(keys, results) if reason is not None}

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise self.translate(exc, key) from None
        except BotoCoreError as exc:
            raise self.translate(exc, key) from None
        return ObjectInfo(key, int(head["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, page by page (ListObjectsV2 over ``_FastS3``)."""
        return self.fast.list(prefix)

    def check_bucket(self) -> None:
        """A cheap request (ListObjectsV2, one key) that fails early with the right exit
        code: missing bucket 4, refused 5, unreachable 8."""
        fast = self.fast
        fast.request(
            "GET", fast.prefix.rstrip("/") or "/",
            query={"list-type": "2", "max-keys": "1", "encoding-type": "url"},
            operation="ListObjectsV2",
        )

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        if self._client is not None:
            self._client.close()
        if self._session is not None:
            self._session.close()

    # -- signing (a capability only S3 has) ---------------------------------------------
    def presign_get(
        self, key: str, expires: int, *, content_disposition: str | None = None
    ) -> str:
        """A SigV4 query-signed GET URL for ``key``, valid ``expires`` seconds.

        ``content_disposition`` becomes ``response-content-disposition``, signed into the
        URL, so the server answers with that header and a client cannot change it.
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        try:
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires, HttpMethod="GET"
            )
        except BotoCoreError as exc:
            raise self.translate(exc, key) from None

    def presign_put(
        self,
        key: str,
        expires: int,
        *,
        content_length: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """A SigV4 query-signed PUT URL for ``key`` and the headers the client must send.

        ``content_length`` and ``tags`` are signed headers (``content-length``,
        ``x-amz-tagging``): an upload of another size, or without the tag, fails the
        signature check on the server.
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        headers: dict[str, str] = {}
        if content_length is not None:
            params["ContentLength"] = content_length
            headers["Content-Length"] = str(content_length)
        if tags:
            params["Tagging"] = urlencode(tags)
            headers["x-amz-tagging"] = params["Tagging"]
        try:
            url = self.client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires, HttpMethod="PUT"
            )
        except BotoCoreError as exc:
            raise self.translate(exc, key) from None
        return url, headers

    def require_credentials(self) -> None:
        """ConfigError (exit 3, one line) when AP_S3_USE_IRSA=true and the AWS chain finds
        nothing; explicit keys were checked when the settings loaded."""
        if not self.settings.s3_use_irsa:
            return
        try:
            credentials = self.client._get_credentials()  # botocore keeps no public accessor
            if credentials is None:
                raise NoCredentialsError()
            credentials.get_frozen_credentials()  # deferred providers load on first use
        except NoCredentialsError:
            raise no_credentials_error() from None

    def credentials_expiry(self) -> Any:  # datetime | None
        """When the credentials that sign requests expire (temporary STS/IRSA/SSO/process
        credentials), or None for long-lived keys. A pre-signed URL dies with them."""
        try:
            credentials = self.client._get_credentials()  # botocore keeps no public accessor
            if credentials is None:
                return None
            credentials.get_frozen_credentials()  # deferred providers load on first use
        except (BotoCoreError, AttributeError):
            return None
        expiry = getattr(credentials, "_expiry_time", None)
        if expiry is None:
            return None
        from datetime import timezone

        # an aware UTC datetime
        return expiry if expiry.tzinfo else expiry.replace(tzinfo=timezone.utc)

    # -- what check-iam exercises ---------------------------------------------------------
    def list_page(self, prefix: str = "", max_keys: int = 1) -> list[ObjectInfo]:
        """One ListObjectsV2 request (``s3:ListBucket``) — unlike HeadBucket/ListBuckets,
        allowed to object-scoped tokens such as R2's."""
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=max_keys)
        except (ClientError, BotoCoreError) as exc:
            raise self.translate(exc) from None
        return [ObjectInfo(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]

    def read_tags(self, key: str, size: int | None = None) -> dict[str, str] | None:
        """The object's tags (GetObjectTagging), or None when the store answers with
        something that is not a tag set (a store without tagging, such as rclone's,
        returns the object itself). One request; for an object of ``size`` > 0 bytes, a
        ``Range`` of ``TAGGING_RANGE`` bytes keeps that answer short (an empty object has
        no byte 0 to ask for). The range holds any tag set whole: AWS ignores it on a
        tagging request, but a store may apply it to the tag set (moto's server does; with
        ``bytes=0-0`` its answer was ``<`` and every kept tag read as dropped)."""
        import xml.etree.ElementTree as ET

        fast = self.fast
        headers = {"Range": f"bytes=0-{TAGGING_RANGE - 1}"} if size else {}
        response = fast.request(
            "GET", fast._object_path(key), query={"tagging": ""}, headers=headers,
            operation="GetObjectTagging", key=key,
        )
        try:
            root = ET.fromstring(response.body)
        except ET.ParseError:
            return None
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        if root.tag[len(ns):] != "Tagging":
            return None
        return {
            tag.findtext(f"{ns}Key") or "": tag.findtext(f"{ns}Value") or ""
            for tag in root.iter(f"{ns}Tag")
        }

    def unsigned_url(self, key: str) -> str:
        """The plain (unsigned) URL of ``key``, addressed as this store addresses it."""
        client = getattr(self, "_unsigned_client", None)
        if client is None:  # only builds URLs, never sends: no connections to close
            from botocore import UNSIGNED

            options: dict[str, Any] = {"signature_version": UNSIGNED}
            if self.endpoint:
                options["s3"] = {"addressing_style": "path"}
            from botocore.config import Config

            client = _session().create_client(
                "s3",
                region_name=self.settings.s3_region or "us-east-1",
                endpoint_url=self.endpoint,
                config=Config(**options),
            )
            self._unsigned_client = client
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=60
        )

    def public_access_status(self) -> dict[str, Any]:
        """Block Public Access and bucket-policy status, where the provider supports them.

        Each value is a dict of settings/flags, or a word: ``"none"`` (not configured),
        ``"unsupported"`` (the server does not implement it) or ``"denied"``.
        """
        out: dict[str, Any] = {}
        calls = (
            ("publicAccessBlock", "get_public_access_block", "PublicAccessBlockConfiguration"),
            ("policyStatus", "get_bucket_policy_status", "PolicyStatus"),
        )
        for name, operation, field in calls:
            try:
                response = getattr(self.client, operation)(Bucket=self.bucket)
                # A store that ignores the subresource answers 200 with something else
                # (rclone: the bucket listing), which parses as an empty result.
                out[name] = dict(response.get(field) or {}) or "unsupported"
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in ("NoSuchPublicAccessBlockConfiguration", "NoSuchBucketPolicy"):
                    out[name] = "none"
                elif status in (401, 403):
                    out[name] = "denied"
                else:  # NotImplemented, 501, 400 from servers without the feature
                    out[name] = "unsupported"
            except BotoCoreError:
                out[name] = "unsupported"
        return out


def _md5_like(etag: Any) -> bool:
    text = str(etag or "").strip('"').lower()
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _encrypted_etag(head: dict) -> bool:
    """Objects whose ETag is no MD5 of their bytes even when single-part (AWS docs,
    "Checking object integrity"): SSE-KMS, DSSE-KMS and SSE-C."""
    return bool(head.get("SSECustomerAlgorithm")) or str(head.get("ServerSideEncryption", "")).startswith("aws:kms")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_CHECKSUMS = {  # HeadObject fields (ChecksumMode=ENABLED) computable without awscrt
    "ChecksumCRC32": lambda data: _b64(zlib.crc32(data).to_bytes(4, "big")),
    "ChecksumSHA1": lambda data: _b64(hashlib.sha1(data).digest()),
    "ChecksumSHA256": lambda data: _b64(hashlib.sha256(data).digest()),
}


_UNMATCHED = object()  # a DeleteObjects answer that cannot be matched to its request


_XML_UNSAFE = re.compile("[\x00-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_unsafe(key: str) -> bool:
    """Whether ``key`` holds a character a DeleteObjects XML body cannot carry faithfully:
    C0 controls (XML 1.0 forbids most; parsers turn CR into LF), U+FFFE, U+FFFF, lone
    surrogates. (One regular-expression search: a per-character test cost 0.06 ms a key,
    a sweep's largest per-key cost after the request itself.)"""
    return _XML_UNSAFE.search(key) is not None


def _add_content_md5(request: Any, **_: Any) -> None:
    """botocore event handler (before-sign, DeleteObjects): a Content-MD5 of the body,
    which S3 requires on DeleteObjects and which stores older than the CRC32 checksums
    insist on."""
    if "Content-MD5" in request.headers:
        return
    body = request.body
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, (bytes, bytearray)):
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


def _reason(exc: ApStorageError, code: str = "") -> str:
    """A refusal as one line; the S3 code is kept in it (hints are chosen from it)."""
    text = str(exc)
    return text if not code or code in text else f"{text} [{code}]"


def _put_headers(digest: Any, tags: dict[str, str] | None) -> dict[str, str]:
    """Content-MD5 (the server refuses bytes that do not match it) and the tags."""
    headers = {"Content-MD5": base64.b64encode(digest.digest()).decode()}
    if tags:
        headers["x-amz-tagging"] = urlencode(tags)
    return headers


def no_credentials_error() -> ConfigError:
    """The one error for AP_S3_USE_IRSA=true when the AWS chain finds no credentials."""
    return ConfigError(
        "no AWS credentials found for AP_S3_USE_IRSA=true; set AP_S3_ACCESS_KEY_ID "
        "and AP_S3_SECRET_ACCESS_KEY or provide a web identity (AWS_WEB_IDENTITY_TOKEN_FILE, "
        "AWS_ROLE_ARN)"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: botocore's ``error=`` and urllib3's ``reason``, causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        kwargs = getattr(item, "kwargs", None)
        error = kwargs.get("error") if isinstance(kwargs, dict) else None
        todo.append(error if isinstance(error, BaseException) else None)
        linked = (getattr(item, "reason", None), item.__cause__, item.__context__, *getattr(item, "args", ()))
        todo.extend(link for link in linked if isinstance(link, BaseException))


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in one of ``packages`` (top-level
    names): a KeyError raised inside s3transfer reading an answer is the store's doing, one
    raised in our own code is a bug."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in packages


def _in_chain(exc: BaseException, kind: type | tuple[type, ...]) -> bool:
    return any(isinstance(item, kind) for item in _chain(exc))


def _cut_short(exc: BaseException) -> bool:
    """A body that ended before its Content-Length (or last chunk) did."""
    import http.client

    from urllib3.exceptions import IncompleteRead

    return _in_chain(exc, (http.client.IncompleteRead, IncompleteRead))


def _cause(exc: BaseException) -> str:
    """The innermost reason, in a few words (no URLs: the message names the host)."""
    innermost = exc
    for item in _chain(exc):
        if not isinstance(item, BotoCoreError):
            innermost = item
    text = str(innermost) if innermost is not exc else str(exc)
    if "] " in text and text.startswith("["):  # "[Errno 111] Connection refused"
        text = text.split("] ", 1)[1]
    return text.split(" (_ssl.c")[0][:200]


class _StaticCredentials:
    """Explicit keys, in the shape botocore's credentials have (never printed)."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = None

    def get_frozen_credentials(self) -> "_StaticCredentials":
        return self

    def __repr__(self) -> str:
        return "_StaticCredentials(********)"


def ca_bundle() -> str:
    """The CA certificates TLS connections trust, chosen as botocore chooses them (so a
    private CA configured for the AWS CLI works here too): AWS_CA_BUNDLE, then
    REQUESTS_CA_BUNDLE, then botocore's bundle. (A ``ca_bundle`` in ~/.aws/config is not
    read: set AWS_CA_BUNDLE.)"""
    import os

    from botocore.httpsession import get_cert_path

    return os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE") or get_cert_path(True)


def _session() -> Any:
    """A fresh botocore session (clients are built from botocore directly; boto3's
    resource layer is not used)."""
    import botocore.session

    return botocore.session.get_session()


class _FastS3:
    """PutObject and ListObjectsV2 without botocore's per-call overhead, for many small objects.

    Profiled on a 10 KiB PutObject against SeaweedFS on this 2-core machine (CPU per call,
    single thread): ``client.put_object`` 2.2 ms — endpoint-rule resolution, event hooks,
    an ``Expect: 100-continue`` round trip; botocore's signer over urllib3 0.93 ms; this
    class over ``s3_http.Multiplexer`` about 0.16 ms per upload through ``put_many``.
    So: the object URL comes from botocore (a pre-signed URL's scheme, host and path, so
    addressing style and endpoint rules are botocore's own), each request is signed with
    SigV4 here (``sigv4_headers``; tests check it against botocore's signer byte for byte),
    with the client's own credentials (refreshable ones refresh). One-at-a-time requests go
    through the store's ``Session`` (urllib3, as the botocore client's do); ``put_many``
    through a ``Multiplexer``. Errors are parsed into the shape of a ``ClientError`` and
    translated by ``S3Store.translate``; retries follow ``RetryPolicy`` (botocore's standard
    mode, throttling backed off longer and slowing the whole batch down).
    """

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.retry = RetryPolicy(budget=store.timeouts.request)  # retries within the operation's deadline
        s = store.settings
        if store.endpoint and not s.s3_use_irsa:
            # A custom endpoint is always addressed path-style (DESIGN §2), so the object
            # URL is the endpoint, the bucket, the key, and the keys are static: no
            # botocore client (0.14 s) or credential chain (0.15 s of imports) is needed.
            endpoint = urlsplit(store.endpoint)
            self.scheme = endpoint.scheme
            self.host = endpoint.netloc
            self.prefix = f"{endpoint.path.rstrip('/')}/{quote(store.bucket, safe='')}/"
            self.region = s.s3_region or "us-east-1"
            self.credentials: Any = _StaticCredentials(
                s.s3_access_key_id or "", s.s3_secret_access_key.reveal() if s.s3_secret_access_key else ""
            )
        else:
            client = store.client
            try:
                probe = urlsplit(
                    client.generate_presigned_url(
                        "put_object", Params={"Bucket": store.bucket, "Key": "k"}, ExpiresIn=60
                    )
                )
            except NoCredentialsError:
                raise no_credentials_error() from None
            self.scheme = probe.scheme
            self.host = probe.netloc
            self.prefix = probe.path[:-1]  # the path up to the key
            self.region = client.meta.region_name
            self.credentials = client._request_signer._credentials
            if self.credentials is None:
                raise no_credentials_error()
        self.origin = f"{self.scheme}://{self.host}"
        self.session = store.session
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[Multiplexer] = []

    def close(self) -> None:
        """Close every multiplexer any thread opened through this object (the session's
        pools are closed by the store)."""
        with self.lock:
            opened, self.opened = self.opened, []
        for mux in opened:
            mux.close()

    def _sign(
        self, method: str, path: str, headers: dict[str, str], body: bytes, query: dict[str, str] | None = None
    ) -> dict[str, str]:
        try:
            frozen = self.credentials.get_frozen_credentials()  # refreshable ones refresh
        except NoCredentialsError:
            raise no_credentials_error() from None
        return sigv4_headers(
            method, self.host, path, headers, body, self.region,
            frozen.access_key, frozen.secret_key, frozen.token, query=query,
        )

    def _judge(self, result: Response | Exception, operation: str) -> tuple[Response | None, Exception, float | None, bool]:
        """(the response if 2xx; else the error, the Retry-After it carried, and whether it
        was throttling). Whether to retry is ``RetryPolicy``'s call: see ``_retryable``."""
        if isinstance(result, Exception):
            return None, result, None, False
        if 200 <= result.status < 300:
            return result, None, None, False  # type: ignore[return-value]
        shape = _error_response(result.status, result.body)
        code = shape["Error"]["Code"]
        error = ClientError(shape, operation)
        return None, error, retry_after(result.headers), self.retry.is_throttle(result.status, code)

    def _retryable(self, error: Exception) -> bool:
        if self.session.down is not None:  # an operation's deadline passed: no more attempts this run
            return False
        if isinstance(error, ClientError):
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            return self.retry.is_retryable(status, error.response["Error"]["Code"])
        # Transport failures botocore's standard mode retries (its transient exception
        # classes); a TLS verification failure or a refused proxy will not heal.
        return isinstance(error, (HTTPClientError, BotoConnectionError)) and not isinstance(
            error, (SSLError, BodyTooLargeError)
        )

    def request(
        self, method: str, path: str, *, query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None, body: bytes = b"", operation: str, key: str | None = None,
        limit: int = MAX_LIST_PAGE, unsigned: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (), error_in_200: Callable[[bytes], bool] | None = None,
        raw: bool = False,
    ) -> Response:
        """One signed request through the session, retried per ``RetryPolicy``; the response
        on 2xx (its body at most ``limit`` bytes) or on a status in ``accept`` (the caller
        reads that error itself, e.g. 501 from a store without an API), else the translated
        ApStorageError — or, with ``raw``, the error as botocore's client raises it
        (``ClientError`` or a ``BotoCoreError``). ``error_in_200(body)``: whether a 2xx body
        is an error after all; such an answer counts as a 500 and is retried (botocore's
        rule for S3: an ``<Error>`` document, or a body that does not parse, in a 200)."""
        url = self.origin + path + ("?" + canonical_query(query) if query else "")
        started = time.monotonic()
        at = started + self.session.timeouts.request  # every attempt within one deadline
        attempt = 0
        while True:
            attempt += 1
            signed = self._sign(method, path, headers or {}, body, query)
            if unsigned:  # headers SigV4 leaves out (botocore's blacklist: Expect...)
                signed.update(unsigned)
            try:
                result: Response | Exception = self.session.request(method, url, signed, body, limit=limit, at=at)
            except BotoCoreError as exc:
                result = exc
            if error_in_200 is not None and isinstance(result, Response) and 200 <= result.status < 300 \
                    and error_in_200(result.body):
                result = Response(500, result.headers, result.body)
            if accept and isinstance(result, Response) and result.status in accept:
                return result
            response, error, after, throttled = self._judge(result, operation)
            if response is not None:
                return response
            wait = self.retry.delay(
                attempt, started, throttled=throttled, retry_after=after, retryable=self._retryable(error)
            )
            if wait is None:
                if raw:
                    raise error
                raise self.store.translate(error, key)
            time.sleep(wait)

    def delete_objects(self, entries: list[tuple[str, str | None]]) -> "DeleteAnswer":
        """One DeleteObjects naming ``entries`` ((key, version id or None); every key one
        XML 1.0 can carry, ``_xml_unsafe``), verbose (``Quiet`` false: S3 answers an entry
        per object), with the ``Content-MD5`` S3 requires on it. Retried per ``RetryPolicy``
        (503 SlowDown, 500, a 200 whose body is an ``<Error>`` or does not parse, a dropped
        connection); then raises as botocore's client would (``ClientError`` with the S3
        code and status, or a ``BotoCoreError``), for the caller to judge."""
        body = delete_body(entries)
        headers = {"Content-MD5": _b64(hashlib.md5(body).digest()), "Content-Type": "application/xml"}
        parsed: list[Any] = []

        def error_in_200(text: bytes) -> bool:
            import xml.etree.ElementTree as ET

            try:
                root = ET.fromstring(text)
            except ET.ParseError:
                return True
            if _local(root.tag) != "DeleteResult":
                return True  # an <Error> (or anything else) where the result belongs
            parsed[:] = [root]
            return False

        self.request(
            "POST", self.prefix.rstrip("/") or "/", query={"delete": ""}, headers=headers, body=body,
            operation="DeleteObjects", error_in_200=error_in_200, raw=True,
        )
        return parse_delete_result(parsed[0])

    def _object_path(self, key: str) -> str:
        """The request path of ``key`` (URI-encoded once, as SigV4 signs S3 paths)."""
        return self.prefix + quote(key, safe="/~")

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> str:
        path = self._object_path(key)
        # Over 1 MiB, wait for "100 Continue" (botocore's connection class does): a refusal
        # comes before the body is sent, and reads as one. botocore's connection compares
        # the value as bytes.
        expect = {"Expect": b"100-continue"} if len(data) > EXPECT_CONTINUE_OVER else None
        response = self.request(
            "PUT", path, headers=headers, body=data, operation="PutObject", key=key, unsigned=expect
        )
        return response.headers.get("etag", "").strip('"')

    def put_many(
        self, items: Iterable[tuple[Any, str, bytes, dict[str, str]]], concurrency: int,
        expected: int | None = None,
    ) -> Iterator[tuple[Any, str | ApStorageError]]:
        """PutObject for many (token, key, body, headers) at once over ``concurrency``
        connections driven by one selector loop in this thread (``s3_http.Multiplexer``).
        Yields (token, ETag) or (token, error) as each finishes, in completion order.
        ``items`` is pulled only as connections free up, so a generator that reads files
        holds at most ``concurrency`` bodies.

        Retries follow ``RetryPolicy`` per request. Throttling also slows the whole batch, as
        botocore's adaptive mode does for a client: each throttled answer halves the number
        of requests allowed in flight and holds back new sends for the retry's delay; each
        success lets one more in (additive increase, multiplicative decrease).
        """
        mux = self._multiplexer(concurrency)
        # Open the connections this call will use at once (a TLS handshake each, to a far
        # region); the rest of the pool opens when a later call needs it.
        mux.warm(min(concurrency, expected) if expected is not None else concurrency)
        source = iter(items)
        # a heap of (due, order, attempt, started, item)
        retries: list[tuple[float, int, int, float, tuple[Any, str, bytes, dict[str, str]]]] = []
        order = itertools.count()
        exhausted = False
        window = float(concurrency)  # requests allowed in flight
        hold_until = 0.0  # no new sends before this (throttled)
        while True:
            now = time.monotonic()
            while mux.free and len(mux._busy) < int(window) and now >= hold_until:
                if retries and retries[0][0] <= now:
                    _, _, attempt, started, item = heapq.heappop(retries)
                elif not exhausted:
                    item, attempt, started = next(source, None), 0, now  # type: ignore[assignment]
                    if item is None:
                        exhausted = True
                        continue
                else:
                    break
                _, key, body, headers = item
                path = self._object_path(key)
                mux.send((item, attempt + 1, started), "PUT", path, self._sign("PUT", path, headers, body), body,
                         due=started + self.session.timeouts.request)
            if not mux.in_flight:
                if exhausted and not retries:
                    return
                wake = max(hold_until, retries[0][0] if retries else hold_until)
                time.sleep(max(0.0, wake - time.monotonic()))
                continue
            # Block until a request finishes, or until a retry or a hold is due while a
            # connection is free to take it (never a zero wait while all are busy: a spin).
            wait: float | None = None
            if mux.free and (retries or hold_until > now):
                due = max(hold_until, retries[0][0]) if retries else hold_until
                wait = max(0.0, due - now)
            for (item, attempt, started), result in mux.poll(wait):
                token, key = item[0], item[1]
                response, error, after, throttled = self._judge(result, "PutObject")
                if response is not None:
                    window = min(float(concurrency), window + 1)
                    yield token, response.headers.get("etag", "").strip('"')
                    continue
                delay = self.retry.delay(
                    attempt, started, throttled=throttled, retry_after=after, retryable=self._retryable(error)
                )
                if throttled:
                    window = max(1.0, window / 2)
                    if delay is not None:
                        hold_until = max(hold_until, time.monotonic() + delay)
                if delay is None:
                    yield token, self.store.translate(error, key)
                else:
                    heapq.heappush(retries, (time.monotonic() + delay, next(order), attempt, started, item))

    def _multiplexer(self, size: int) -> Multiplexer:
        mux = getattr(self.local, "mux", None)
        if mux is None or mux.size != size:
            if mux is not None:
                mux.close()
                with self.lock:
                    self.opened.remove(mux)
            mux = self.local.mux = Multiplexer(self.session, self.origin, size)
            with self.lock:
                self.opened.append(mux)
        return mux

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """ListObjectsV2 pages parsed for key and size only: botocore spends most of a
        listing parsing every field (LastModified through dateutil alone is over half).
        A page is at most ``MAX_LIST_PAGE`` bytes.

        Faithful (DESIGN §2): every page asks for ``encoding-type=url`` and its keys are
        decoded when the server says it encoded them, so a key holding a character XML
        cannot carry comes back under its own name; an empty truncated page is followed;
        a truncated page without a continuation token, or one repeating the previous
        token, is an error naming the store (never a silently short listing)."""
        path = self.prefix.rstrip("/") or "/"
        token: str | None = None
        pages = 0
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000", "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            response = self.request("GET", path, query=query, operation="ListObjectsV2")
            pages += 1
            page = parse_list_page(response.body, self.store.where, self.store.bucket)
            yield from page.objects
            if not page.truncated:
                return
            if not page.next_token or page.next_token == token:
                what = "no continuation token" if not page.next_token else "the same continuation token again"
                raise BackendUnavailableError(
                    f"S3 at {self.store.where} answered page {pages} of the listing of bucket "
                    f"{self.store.bucket!r} (prefix {prefix!r}) as truncated but with {what}; "
                    "the listing cannot be completed"
                )
            token = page.next_token


class DeleteAnswer:
    """One DeleteObjects answer: ``deleted`` [(key, version id or None)], ``errors``
    [(key, version id or None, code, message)], in document order."""

    __slots__ = ("deleted", "errors")

    def __init__(self, deleted: list[tuple[str, str | None]], errors: list[tuple[str, str | None, str, str]]) -> None:
        self.deleted = deleted
        self.errors = errors


def delete_body(entries: Iterable[tuple[str, str | None]]) -> bytes:
    """The DeleteObjects request body (S3 API reference, DeleteObjects): ``<Delete>`` in
    S3's namespace, ``Quiet`` false, an ``<Object>`` per entry with its ``<Key>`` (and
    ``<VersionId>``), text XML-escaped. Keys must be ones XML 1.0 carries (``_xml_unsafe``)."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>'
             '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>false</Quiet>']
    for key, version_id in entries:
        parts.append(f"<Object><Key>{_xml_text(key)}</Key>")
        if version_id is not None:
            parts.append(f"<VersionId>{_xml_text(version_id)}</VersionId>")
        parts.append("</Object>")
    parts.append("</Delete>")
    return "".join(parts).encode("utf-8")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_delete_result(root: Any) -> DeleteAnswer:
    """The entries of a parsed ``<DeleteResult>`` (any namespace). An empty
    ``<VersionId>`` reads as None, as an absent one does."""
    deleted: list[tuple[str, str | None]] = []
    errors: list[tuple[str, str | None, str, str]] = []
    for item in root:
        name = _local(item.tag)
        if name not in ("Deleted", "Error"):
            continue
        fields = {_local(child.tag): child.text or "" for child in item}
        key, version_id = fields.get("Key", ""), fields.get("VersionId") or None
        if name == "Deleted":
            deleted.append((key, version_id))
        else:
            errors.append((key, version_id, fields.get("Code", ""), fields.get("Message", "")))
    return DeleteAnswer(deleted, errors)


class ListPage:
    """One ListObjectsV2 answer: its objects (keys decoded), whether more follow, the
    token for the next page."""

    __slots__ = ("objects", "truncated", "next_token")

    def __init__(self, objects: list[ObjectInfo], truncated: bool, next_token: str | None) -> None:
        self.objects = objects
        self.truncated = truncated
        self.next_token = next_token


def parse_list_page(body: bytes, where: str, bucket: str) -> ListPage:
    """Parse a ListObjectsV2 body; keys are URL-decoded when ``EncodingType`` is ``url``
    (as botocore decodes them: ``unquote_plus``). An answer that is not a listing is a
    ``BackendUnavailableError`` naming the store."""
    import xml.etree.ElementTree as ET
    from urllib.parse import unquote_plus

    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BackendUnavailableError(
            f"S3 at {where} sent a listing of bucket {bucket!r} that is not valid XML ({exc})"
        ) from None
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag[len(ns):] != "ListBucketResult":
        raise BackendUnavailableError(
            f"S3 at {where} answered a listing of bucket {bucket!r} with "
            f"<{root.tag[len(ns):]}>, not a ListBucketResult"
        )
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
    objects = []
    for item in root.iter(f"{ns}Contents"):
        key = item.findtext(f"{ns}Key") or ""
        size = (item.findtext(f"{ns}Size") or "0").strip()
        if not (size.isascii() and size.isdigit()):
            raise BackendUnavailableError(
                f"S3 at {where} listed {key!r} in bucket {bucket!r} with a size of {size[:40]!r}"
            )
        objects.append(ObjectInfo(
            unquote_plus(key) if encoded else key, int(size), _last_modified(item.findtext(f"{ns}LastModified"))
        ))
    truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") or None
    return ListPage(objects, truncated, token)


def _last_modified(text: str | None) -> datetime | None:
    """A listing's ``LastModified`` (ISO-8601, e.g. ``2026-01-02T03:04:05.000Z``) as a UTC
    datetime; None when absent or unreadable (gc then never judges the object old)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def canonical_query(query: dict[str, str]) -> str:
    """The query string as SigV4 signs it (and as it is sent): sorted, each part encoded."""
    return "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )


_SIGNING_KEYS: dict[tuple[str, str, str], bytes] = {}


def _signing_key(secret: str, date: str, region: str) -> bytes:
    cache_key = (secret, date, region)
    key = _SIGNING_KEYS.get(cache_key)
    if key is None:
        key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
        for part in (region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        _SIGNING_KEYS.clear()  # one live key at a time: the secret is not kept around
        _SIGNING_KEYS[cache_key] = key
    return key


def sigv4_headers(
    method: str,
    host: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    region: str,
    access_key: str,
    secret_key: str,
    token: str | None = None,
    now: float | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, str]:
    """AWS Signature Version 4 for one S3 request (``query`` sent as ``canonical_query``); returns the
    headers to send (``path`` is already URI-encoded, as S3 signs it: no double encoding)."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    date = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed.update({"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date})
    if token:
        signed["x-amz-security-token"] = token
    names = sorted(signed)
    canonical = "\n".join(
        (
            method,
            path,
            canonical_query(query) if query else "",
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_hash,
        )
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    signature = hmac.new(_signing_key(secret_key, date, region), to_sign.encode(), hashlib.sha256).hexdigest()
    out = {**headers, **{k: v for k, v in signed.items() if k.startswith("x-amz-")}}
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    if body or method in ("PUT", "POST"):
        out["Content-Length"] = str(len(body))
    return out


def _error_response(status: int, body: bytes) -> dict[str, Any]:
    """An S3 XML error body in the shape botocore gives ClientError."""
    import xml.etree.ElementTree as ET

    code, message = "", ""
    try:
        root = ET.fromstring(body or b"<Error/>")
        code = root.findtext("Code") or ""
        message = root.findtext("Message") or ""
    except ET.ParseError:
        message = body[:200].decode("utf-8", "replace")
    return {
        "Error": {"Code": code or str(status), "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
