"""`presign`: SigV4 pre-signed URLs for S3 rows, and the worker upload flow.

File bytes stop flowing through the app server: the app mints a short-lived URL and the
worker or browser talks to S3 directly.

- ``presign_file``: a GET (or PUT) URL for an existing S3 row. GET URLs carry a signed
  ``response-content-disposition: attachment`` with the row's file name.
- ``presign_uploads``: the upload flow. The whole batch is validated first (names, sizes
  against ``AP_MAX_FILE_SIZE_MB``), every URL is signed, and only then are all rows
  inserted in one transaction — a failure anywhere leaves no row behind. Each PUT URL
  is bound to its declared size (``content-length`` is a signed header) and, for
  execution data that expires, to the ``ap-retention=execution`` tag (``x-amz-tagging``,
  signed); a ``FLOW_BUNDLE`` is never tagged (the platform never expires it by age).

Expiry: 604800 s (7 days) is the SigV4 maximum; longer is refused, never clamped.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence
from urllib.parse import quote

from apstorage.durations import format_duration, parse_duration
from apstorage.errors import NotSupportedError, TooLargeError, UsageError
from apstorage.model import (
    iso_utc,
    LOCATION_TYPES,
    MAX_CATALOG_SIZE,
    PENDING_UPLOAD_KEY,
    Compression,
    FileRow,
    Location,
    check_owner,
    new_id,
    object_key,
    parse_type,
)
from apstorage.services.context import Storage
from apstorage.services.files import check_file_name, retention_tags, too_large_error
from apstorage.text import plural

MAX_EXPIRES = 604800  # 7 days: the longest a SigV4 pre-signed URL can live
DEFAULT_EXPIRES = {"GET": MAX_EXPIRES, "PUT": 3600}
METHODS = ("GET", "PUT")

# RFC 5987 attr-char: what may appear unencoded in filename*=UTF-8''...
_ATTR_CHARS = "!#$&+-.^_`|~"


@dataclass(frozen=True)
class Presigned:
    """One signed URL and what the client needs to use it."""

    id: str
    method: str
    url: str | None  # None on --dry-run
    expires_at: datetime
    headers: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    size: int | None = None
    s3_key: str | None = None
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fileName": self.file_name,
            "url": self.url,
            "method": self.method,
            "expiresAt": iso_utc(self.expires_at),
            "headers": self.headers,
            "size": self.size,
            "s3Key": self.s3_key,
            "type": self.type,
        }


@dataclass
class PresignResult:
    items: list[Presigned]
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True)
class UploadFile:
    file_name: str
    size: int


@dataclass(frozen=True)
class UploadRequest:
    file_type: str
    project_id: str | None = None
    platform_id: str | None = None


# -- expiry -----------------------------------------------------------------------------


def parse_method(value: str | None) -> str:
    method = (value or "GET").strip().upper()
    if method not in METHODS:
        raise UsageError(f"--method: {value!r} is not valid; accepted: GET, PUT")
    return method


def resolve_expires(value: str | int | None, method: str) -> int:
    """Seconds a URL lives: the default for ``method`` when not given; over 7 days refused."""
    if value is None:
        return DEFAULT_EXPIRES[method]
    seconds = parse_duration(value, "--expires", maximum=10**13)  # over 7 days: refused below
    if seconds > MAX_EXPIRES:
        raise UsageError(
            f"--expires {value}: {seconds} s is longer than 7 days (604800 s), the most a "
            "SigV4 pre-signed URL can live; the URL would be refused by S3, so none was made",
            hint="use --expires 7d or less",
        )
    return seconds


# -- Content-Disposition ----------------------------------------------------------------


def content_disposition(name: str) -> str:
    """``attachment; filename="..."`` for ``name``, safe whatever it contains.

    The quoted ``filename`` is an ASCII fallback (accents stripped, quotes, backslashes,
    control characters and path separators replaced); when the name is not plain ASCII
    the exact name follows as ``filename*=UTF-8''...`` (RFC 6266 / RFC 5987), which
    every current browser prefers.
    """
    # Only the last path component: a name must not suggest a directory.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(" " if _unsafe_char(ch) else ch for ch in base).strip()
    if base in ("", ".", ".."):
        base = "download"
    fallback = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in fallback)
    fallback = fallback.strip() or "download"
    header = f'attachment; filename="{fallback}"'
    if fallback != base:
        header += f"; filename*=UTF-8''{quote(base, safe=_ATTR_CHARS)}"
    return header


def _unsafe_char(ch: str) -> bool:
    """Control characters, line breaks, and bidi overrides (which can disguise an extension)."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS


_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# -- one row ----------------------------------------------------------------------------


def presign_file(
    storage: Storage, file_id: str, method: str = "GET", expires: str | int | None = None
) -> PresignResult:
    """A URL for an existing row in S3; DB and LOCAL rows are refused (exit 6)."""
    method = parse_method(method)
    seconds = resolve_expires(expires, method)
    row = storage.catalog.get(file_id)
    if row.location is not Location.S3:
        raise _not_in_s3(storage, row)
    store = storage.store(Location.S3)
    warnings: list[str] = []
    signed_at = _now()
    if method == "GET":
        url = store.presign_get(  # type: ignore[attr-defined]
            row.key, seconds, content_disposition=content_disposition(row.file_name or row.id)
        )
        headers: dict[str, str] = {}
        if row.compression is not Compression.NONE:
            warnings.append(
                f"file {row.id} is stored compressed (compression {row.compression.value}); "
                "the URL serves the compressed bytes — `apstorage get` decompresses them"
            )
    else:
        url, headers = store.presign_put(  # type: ignore[attr-defined]
            row.key,
            seconds,
            content_length=row.size,
            tags=retention_tags(row.type),
        )
        if row.compression is Compression.ZSTD:
            warnings.append(
                f"file {row.id} is recorded as zstd-compressed (compression ZSTD); upload "
                "zstd-compressed bytes or readers will fail"
            )
    item = Presigned(
        id=row.id,
        method=method,
        url=url,
        expires_at=signed_at + timedelta(seconds=seconds),
        headers=headers,
        file_name=row.file_name,
        size=row.size,
        s3_key=row.key,
        type=row.type,
    )
    warnings.extend(_credential_warnings(store, item.expires_at))
    return PresignResult([item], warnings)


def _not_in_s3(storage: Storage, row: FileRow) -> NotSupportedError:
    if row.location is Location.DB:
        where = f"in the database (location DB, the row's data column in {storage.catalog.target})"
    else:
        path = storage.settings.local_storage_path / row.key
        where = f"on local disk (location LOCAL, at {path})"
    return NotSupportedError(
        f"file {row.id} is stored {where}, not in S3, so it cannot be pre-signed",
        hint="`apstorage migrate-to-s3` moves DB and LOCAL files to S3",
    )


# -- the upload flow --------------------------------------------------------------------


MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # --from-json: a batch of 10,000 entries is ~1 MB
MAX_BATCH_FILES = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4  # 5 TiB, S3's largest object

def parse_upload_json(text: str | bytes, source: str = "--from-json") -> list[UploadFile]:
    """``{"files": [{"fileName": .., "fileSize": ..}, ...]}`` → UploadFiles (exit 2 on errors).

    Refused whole, naming the entry, before anything is created: a document over
    MAX_DOCUMENT_BYTES or nested too deep, more than MAX_BATCH_FILES entries, a missing or
    empty ``fileName`` (or one with control characters), a ``fileSize`` that is missing,
    negative, not a whole number, or over 5 TiB."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{source}: the document is over {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB; split the batch")
    try:
        document = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{source}: the document is nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # a number of thousands of digits, bad bytes
        raise UsageError(f"{source}: not a document this accepts ({str(exc)[:120]})") from None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not files:
        raise UsageError(
            f'{source}: expected {{"files": [{{"fileName": ..., "fileSize": ...}}, ...]}} '
            "with at least one file"
        )
    if len(files) > MAX_BATCH_FILES:
        raise UsageError(f"{source}: {plural(len(files), 'file')}; at most {MAX_BATCH_FILES:,} per batch")
    problems: list[str] = []
    out: list[UploadFile] = []
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            problems.append(f"files[{i}] is not an object")
            continue
        name, size = entry.get("fileName"), entry.get("fileSize")
        problem = check_file_name(name, f"files[{i}].fileName")
        if problem:
            problems.append(problem)
        if "fileSize" not in entry:
            problems.append(f"files[{i}].fileSize is missing")
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"files[{i}].fileSize must be a whole number of bytes >= 0")
        elif size > MAX_OBJECT_SIZE:
            problems.append(f"files[{i}].fileSize is over 5 TiB, the largest S3 object")
        if not problems:
            out.append(UploadFile(name, size))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    return out


class _Float:
    """A JSON number with a fraction or exponent, or NaN/Infinity: never a size or a name."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _no_float(text: str) -> _Float:
    return _Float(text)


def presign_uploads(
    storage: Storage,
    request: UploadRequest,
    files: Sequence[UploadFile],
    expires: str | int | None = None,
    *,
    dry_run: bool = False,
) -> PresignResult:
    """Create one S3 row per file and a PUT URL bound to its size; all or nothing."""
    seconds = resolve_expires(expires, "PUT")
    file_type = parse_type(request.file_type)
    if file_type not in LOCATION_TYPES:
        raise NotSupportedError(
            f"{file_type} is a permanent type: permanent files are always stored in the "
            "database, so they are not uploaded to S3",
            hint="pre-signed uploads are for execution data and flow bundles: "
            + ", ".join(sorted(LOCATION_TYPES)),
        )
    check_owner(request.project_id, request.platform_id)
    if not files:
        raise UsageError("nothing to upload: give --name and --size, or --from-json")
    for f in files:
        problem = check_file_name(f.file_name, "--name")
        if problem:
            raise UsageError(problem)
        if f.size < 0:
            raise UsageError(f"--size: {f.size} is not a size; give a whole number of bytes >= 0")
    limit = storage.settings.max_file_size_bytes
    too_large = [f for f in files if f.size > limit]
    if too_large:
        names = ", ".join(f"{f.file_name!r} ({f.size} bytes)" for f in too_large[:5])
        more = f" and {len(too_large) - 5} more" if len(too_large) > 5 else ""
        raise too_large_error(f"{names}{more} too large", limit, "nothing was created")
    uncatalogued = [f for f in files if f.size > MAX_CATALOG_SIZE]
    if uncatalogued:  # AP_MAX_FILE_SIZE_MB may be set above what the size column holds
        names = ", ".join(f"{f.file_name!r} ({f.size} bytes)" for f in uncatalogued[:5])
        raise TooLargeError(
            f"{names} over the {MAX_CATALOG_SIZE} bytes the catalog's size column (a 32-bit "
            "integer in the platform's schema) can record; nothing was created"
        )

    store = storage.store(Location.S3)  # ConfigError (exit 3) when S3 is not configured
    tags = retention_tags(file_type)
    signed_at = _now()
    expires_at = signed_at + timedelta(seconds=seconds)
    # Marked pending until the URL expires: `gc --pending` deletes the row after that if
    # no object came (model.PENDING_UPLOAD_KEY).
    pending = {PENDING_UPLOAD_KEY: iso_utc(expires_at)}
    rows = []
    for f in files:
        file_id = new_id()
        rows.append(
            FileRow(
                id=file_id,
                type=file_type,
                location=Location.S3,
                project_id=request.project_id,
                platform_id=request.platform_id,
                file_name=f.file_name,
                size=f.size,
                s3_key=object_key(file_id, file_type, request.project_id, request.platform_id),
                metadata=dict(pending),
            )
        )
    items: list[Presigned] = []
    for row in rows:
        if dry_run:
            url, headers = None, {"Content-Length": str(row.size)}
            if tags:
                headers["x-amz-tagging"] = _tagging(tags)
        else:
            url, headers = store.presign_put(  # type: ignore[attr-defined]
                row.key, seconds, content_length=row.size, tags=tags
            )
        items.append(
            Presigned(
                id=row.id,
                method="PUT",
                url=url,
                expires_at=expires_at,
                headers=headers,
                file_name=row.file_name,
                size=row.size,
                s3_key=row.key,
                type=row.type,
            )
        )
    warnings = _credential_warnings(store, expires_at) if not dry_run else []
    if not dry_run:
        # Every URL is signed before any row exists; the rows go in together or not at all.
        from apstorage.catalog.presign import insert_rows

        insert_rows(storage.catalog, rows)
    return PresignResult(items, warnings, dry_run)


# -- helpers ----------------------------------------------------------------------------


def _credential_warnings(store: Any, expires_at: datetime) -> list[str]:
    """Temporary credentials (STS, IRSA, SSO) make a URL die when they do, not at expiresAt."""
    expiry = store.credentials_expiry()
    if expiry is None or expiry >= expires_at:
        return []
    left = max(0, int((expiry - _now()).total_seconds()))
    return [
        f"the credentials signing this URL are temporary and expire at {iso_utc(expiry)} "
        f"(in {format_duration(left)}), before the URL would ({iso_utc(expires_at)}): "
        "S3 refuses the URL from then on. Use --expires shorter than that, or long-lived "
        "keys (AP_S3_ACCESS_KEY_ID / AP_S3_SECRET_ACCESS_KEY)"
    ]


def _tagging(tags: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(tags)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)



__all__ = [
    "MAX_EXPIRES",
    "DEFAULT_EXPIRES",
    "Presigned",
    "PresignResult",
    "UploadFile",
    "UploadRequest",
    "content_disposition",
    "parse_method",
    "parse_upload_json",
    "presign_file",
    "presign_uploads",
    "resolve_expires",
]
