"""Versioned buckets on an ``S3Store``: the bucket's versioning state, listings of object
versions and delete markers, deletes of exact versions, and copying a version back as the
current object.

On a bucket whose versioning is ``Enabled`` (or ``Suspended``, which keeps the versions it
already holds) a DeleteObject without a version id removes nothing: it adds a *delete
marker* that becomes the key's current version, and the bytes stay as a *noncurrent
version* until a lifecycle rule (``NoncurrentVersionExpiration``) or a delete naming the
version id removes them (AWS S3 user guide, "Deleting object versions from a
versioning-enabled bucket"). This module only moves those things; what to delete or
restore is the services' call.

Stores without the versioning API (rclone's S3 server answers ``NotImplemented``, or 200
with something that is not a ``VersioningConfiguration``) count as unversioned: never an
error (``Versioning.supported`` is False and ``note`` says what the store answered).
"""

from __future__ import annotations

import threading

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Iterable, Iterator
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from apstorage.errors import BackendUnavailableError, NotSupportedError, PermissionDeniedError

if TYPE_CHECKING:
    from apstorage.stores.s3 import S3Store

ENABLED = "Enabled"
SUSPENDED = "Suspended"
# Entries a range listing may pass that belong to no key asked for, per key asked for,
# before the rest of the keys are listed one by one instead (``versions_of``).
WASTE_PER_KEY = 2
WASTE_FLOOR = 1000
OBJECT_LOCK_REASON = (
    "object lock: the store refused to delete a version under retention or legal hold"
)
# Answers that say the credentials are wrong, not that a permission is missing (AWS S3 API
# reference, "Error responses").
CREDENTIAL_CODES = frozenset({
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "InvalidSecurity", "AccountProblem",
})
# What sweep-expired, gc and du add to an unknown state's note.
UNKNOWN_STATE = "the bucket may be versioned, so the versions of its keys are listed before anything is deleted or counted"
# What a refused version listing adds to its reason.
LIST_VERSIONS_PERMISSION = "listing versions needs s3:ListBucketVersions"
# What a refused delete of a version (not a lock) adds: AWS checks this, not s3:DeleteObject.
DELETE_VERSION_PERMISSION = "deleting a version needs s3:DeleteObjectVersion"
_UNSUPPORTED = (400, 405, 501)  # how stores without an API answer it (NotImplemented, ...)
_REFUSALS = _UNSUPPORTED + (401, 403, 404)


@dataclass(frozen=True)
class Versioning:
    """A bucket's versioning state (GetBucketVersioning).

    ``status`` is ``"Enabled"``, ``"Suspended"`` or ``""`` (versioning never enabled);
    ``supported`` is False when the store has no versioning API (then ``status`` is ``""``);
    ``unknown`` is True when the store has the API but the state could not be read (a
    refused GetBucketVersioning, an answer that is no state): such a bucket may keep
    versions, so nothing is decided as if it did not (``may_keep_versions``); ``note``
    says, for a person, what the store answered when it was not a plain state."""

    status: str = ""
    supported: bool = True
    note: str = ""
    unknown: bool = False

    @property
    def versioned(self) -> bool:
        """Whether the bucket is known to hold noncurrent versions and delete markers:
        Enabled, or Suspended (suspending keeps every version written while it was enabled)."""
        return self.status in (ENABLED, SUSPENDED)

    @property
    def may_keep_versions(self) -> bool:
        """What deletes, counts and restores go by: versioned, or a state that could not
        be read (then the keys' versions are listed, and a listing the store refuses keeps
        the rows it was asked for). Only a store that answered "not versioned", or that
        has no versioning API, is treated as unversioned."""
        return self.versioned or self.unknown

    @property
    def unknown_line(self) -> str:
        """What a run says of a state that could not be read, and what it does about it
        ("" for a state that could)."""
        return f"{self.note}: {UNKNOWN_STATE}" if self.unknown else ""

    def to_json(self) -> dict:
        return {
            "status": "Unknown" if self.unknown else (self.status or "Unversioned"),
            "versioned": self.may_keep_versions,
            "supported": self.supported,
            "note": self.note or None,
        }


@dataclass(frozen=True)
class ObjectVersion:
    """One entry of ListObjectVersions: a version (bytes) or a delete marker (none).

    ``size`` in bytes (0 for a delete marker); ``etag`` without quotes (None for a delete
    marker); ``modified`` is LastModified in UTC; ``is_latest`` marks the key's current
    version (a delete marker that is latest means the key has no current object)."""

    key: str
    version_id: str
    size: int
    etag: str | None
    modified: datetime | None
    is_latest: bool
    delete_marker: bool


def get_versioning(store: S3Store) -> Versioning:
    """The bucket's versioning state, one GetBucketVersioning request.

    A store that answers NotImplemented (400/405/501, or a 404 that is not NoSuchBucket), or
    200 with a document that is not a ``VersioningConfiguration``, counts as unversioned
    (``supported=False``). A missing bucket raises NotFoundError (exit 4), an unreachable
    store BackendUnavailableError (8). A refusal (401/403) is not fatal either: the state
    is unknown (``unknown=True``: the bucket may keep versions), with a note naming
    ``s3:GetBucketVersioning``; so is a status this module does not know. Credentials the
    store does not accept (``CREDENTIAL_CODES``) are no refusal of this one permission: they
    raise PermissionDeniedError (exit 5) as every other request would."""
    from apstorage.stores.s3 import _error_response

    fast = store.fast
    response = fast.request(
        "GET", fast.prefix.rstrip("/") or "/", query={"versioning": ""},
        operation="GetBucketVersioning", accept=_REFUSALS,
    )
    if response.status in _REFUSALS:
        code = _error_response(response.status, response.body)["Error"]["Code"]
        if code == "NoSuchBucket" or code in CREDENTIAL_CODES:
            fast.request("GET", fast.prefix.rstrip("/") or "/", query={"versioning": ""},
                         operation="GetBucketVersioning")  # raises NotFoundError (4) / PermissionDeniedError (5)
        if response.status in (401, 403):
            return Versioning("", True, f"GetBucketVersioning was refused ({code}; grant s3:GetBucketVersioning)",
                              unknown=True)
        return Versioning("", False, f"the store has no versioning API ({code}); treated as unversioned")
    try:
        root = ET.fromstring(response.body or b"<none/>")
    except ET.ParseError:
        return Versioning("", False, "the store's versioning answer is not XML; treated as unversioned")
    ns = _ns(root)
    # AWS names the root VersioningConfiguration; moto's server GetBucketVersioningResponse
    if root.tag[len(ns):] not in ("VersioningConfiguration", "GetBucketVersioningResponse"):
        return Versioning(
            "", False,
            f"the store answered <{root.tag[len(ns):]}> for the versioning state; treated as unversioned",
        )
    status = (root.findtext(f"{ns}Status") or "").strip()
    if status not in (ENABLED, SUSPENDED, ""):
        return Versioning("", True, f"unknown versioning status {status[:40]!r}", unknown=True)
    return Versioning(status)


def list_versions(
    store: S3Store, prefix: str = "", *, key_marker: str = "", page_size: int = 1000
) -> Iterator[ObjectVersion]:
    """Every version and delete marker under ``prefix`` with a key greater than
    ``key_marker``, in the store's order, page by page (``list_version_pages``)."""
    for page in list_version_pages(store, prefix, key_marker=key_marker, page_size=page_size):
        yield from page


def list_version_pages(
    store: S3Store, prefix: str = "", *, key_marker: str = "", page_size: int = 1000
) -> Iterator[list[ObjectVersion]]:
    """The pages of ListObjectVersions (``encoding-type=url``; keys decoded as botocore
    decodes them) under ``prefix`` after ``key_marker``. Pages follow each other in key
    order, but within a page a store may list every version before every delete marker
    (moto's server does), so only a whole page tells which keys it covered.

    NotSupportedError (exit 6) when the store has no ListObjectVersions; a refusal is a
    PermissionDeniedError (exit 5) naming s3:ListBucketVersions; a truncated page without a
    next marker is a BackendUnavailableError naming the store (never a silently short
    listing)."""
    fast = store.fast
    path = fast.prefix.rstrip("/") or "/"
    version_marker = ""
    pages = 0
    while True:
        query = {"versions": "", "prefix": prefix, "max-keys": str(page_size), "encoding-type": "url"}
        if key_marker:
            query["key-marker"] = key_marker
            if version_marker:
                query["version-id-marker"] = version_marker
        try:
            response = fast.request("GET", path, query=query, operation="ListObjectVersions", accept=_UNSUPPORTED)
        except PermissionDeniedError as exc:
            if LIST_VERSIONS_PERMISSION in exc.message:
                raise
            raise PermissionDeniedError(f"{exc.message} ({LIST_VERSIONS_PERMISSION})", hint=exc.hint) from None
        if response.status in _UNSUPPORTED:
            raise NotSupportedError(
                f"S3 at {store.where} has no ListObjectVersions (bucket {store.bucket!r}, HTTP {response.status})"
            )
        pages += 1
        entries, truncated, next_key, next_version = _parse_versions(response.body, store)
        yield entries
        if not truncated:
            return
        if not next_key or (next_key == key_marker and next_version == version_marker):
            raise BackendUnavailableError(
                f"S3 at {store.where} answered page {pages} of the version listing of bucket "
                f"{store.bucket!r} (prefix {prefix!r}) as truncated without a new marker; "
                "the listing cannot be completed"
            )
        key_marker, version_marker = next_key, next_version or ""


def versions_of(store: S3Store, keys: Iterable[str]) -> dict[str, list[ObjectVersion]]:
    """{key: its versions and delete markers, newest first} for exactly ``keys`` (a key
    with none maps to ``[]``); versions of other keys are never returned.

    Keys sharing a folder (the part up to the last ``/``) are listed together, from just
    before the first of them to the last: one request per page rather than one per key.
    When such a range turns out to hold many keys not asked for (more than
    ``WASTE_PER_KEY`` per key asked plus ``WASTE_FLOOR``), the rest of that folder's keys
    are listed one by one (``prefix=key``)."""
    wanted = sorted(set(keys))
    out: dict[str, list[ObjectVersion]] = {k: [] for k in wanted}
    groups: dict[str, list[str]] = {}
    for key in wanted:
        groups.setdefault(key[: key.rfind("/") + 1], []).append(key)
    for folder, group in groups.items():
        if len(group) == 1:
            _versions_of_one(store, group[0], out)
            continue
        _range(store, folder, group, out)
    for entries in out.values():
        # The current entry first, then the store's order (S3 lists a key's versions newest
        # first; moto's server lists delete markers after versions): newest first by
        # LastModified, ties in the store's order.
        entries.sort(key=lambda e: (not e.is_latest, -(e.modified.timestamp() if e.modified else 0)))
    return out


def _range(store: S3Store, folder: str, group: list[str], out: dict[str, list[ObjectVersion]]) -> None:
    """List ``group`` (sorted keys of one folder) as one range; once the range proves to
    hold too many other keys, the keys not reached yet are listed one by one."""
    budget = WASTE_PER_KEY * len(group) + WASTE_FLOOR
    last = group[-1]
    reached = ""  # the greatest key of the pages listed
    # every key >= group[0] sorts after group[0][:-1], a prefix of it
    for page in list_version_pages(store, folder, key_marker=group[0][:-1]):
        for entry in page:
            if entry.key in out:
                out[entry.key].append(entry)
            elif entry.key < last:
                budget -= 1
        reached = max([reached, *(e.key for e in page)])
        if reached > last:
            return _first_again(store, group[0], out)
        if budget < 0:
            break
    else:
        return _first_again(store, group[0], out)
    for key in group:
        if key >= reached:  # the key at a page's end may be listed in part
            out[key] = []
            _versions_of_one(store, key, out)
    _first_again(store, group[0], out)


def _first_again(store: S3Store, key: str, out: dict[str, list[ObjectVersion]]) -> None:
    """List the range's first key on its own too: moto's server drops the first entry at
    or after a ``key-marker`` (AWS and SeaweedFS start right after it, as documented).

    Once a key with versions has been listed both ways with the same answer, the store
    is known to honour the marker and later ranges skip this request (half the listing
    requests of a sweep on a versioned bucket); a store that dropped an entry keeps it."""
    exact = getattr(store, "_version_marker_exact", None)
    if exact:
        return
    out[key] = []
    _versions_of_one(store, key, out)
    if exact is None and out[key]:
        # The probe: the same key after a marker just below it, under a prefix no other
        # key before it can match, so the first entry after the marker is this key's.
        probe = {e.version_id for page in list_version_pages(store, key, key_marker=key[:-1])
                 for e in page if e.key == key}
        store._version_marker_exact = probe == {e.version_id for e in out[key]}  # type: ignore[attr-defined]


def _versions_of_one(store: S3Store, key: str, out: dict[str, list[ObjectVersion]]) -> None:
    for page in list_version_pages(store, key):
        out[key].extend(e for e in page if e.key == key)
        if any(e.key > key and not e.key.startswith(key) for e in page):
            return


_REGISTER = threading.Lock()  # botocore's event registration is not made for threads at once


def delete_versions(store: S3Store, versions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Delete exact versions (and delete markers): DeleteObjects naming each ``(key,
    version_id)``, ``AP_S3_DELETE_BATCH_SIZE`` per request, with ``Content-MD5``; every
    entry of the answer checked. Returns {(key, version_id): reason} for what the store
    refused; a version already gone (NoSuchVersion/NoSuchKey) counts as deleted. A refusal
    because of Object Lock (retention or legal hold) carries ``OBJECT_LOCK_REASON``.

    An answer that cannot be matched to the request (an error for a version not sent)
    refuses the whole batch: nothing is assumed deleted on a guess. As ``S3Store.delete_many``
    does for keys, a version whose key XML 1.0 cannot carry (control characters), and every
    version of a batch the store refuses as MalformedXML or NotImplemented, is deleted by
    its own DeleteObject naming the version. A store that cannot be reached raises
    BackendUnavailableError (exit 8)."""
    from apstorage.stores.s3 import _add_content_md5, _reason, _xml_unsafe

    pending = list(dict.fromkeys(versions))
    refused: dict[tuple[str, str], str] = {}
    one_by_one = [item for item in pending if _xml_unsafe(item[0])]
    pending = [item for item in pending if not _xml_unsafe(item[0])]
    for item in one_by_one:
        reason = _delete_one_version(store, *item)
        if reason is not None:
            refused[item] = reason
    if not pending:
        return refused
    client = store.client
    with _REGISTER:  # parts of one batch are deleted from several threads at once
        client.meta.events.register(
            "before-sign.s3.DeleteObjects", _add_content_md5, unique_id="apstorage-delete-md5"
        )
    size = max(1, store.settings.s3_delete_batch_size)
    for start in range(0, len(pending), size):
        batch = pending[start : start + size]
        try:
            response = client.delete_objects(
                Bucket=store.bucket,
                Delete={"Objects": [{"Key": k, "VersionId": v} for k, v in batch], "Quiet": True},
            )
        except ClientError as exc:
            translated = store.translate(exc)
            if isinstance(translated, BackendUnavailableError):
                raise translated from None
            if _client_code(exc) in ("MalformedXML", "NotImplemented", "XNotImplemented") \
                    or _client_status(exc) == 501:
                for item in batch:
                    reason = _delete_one_version(store, *item)
                    if reason is not None:
                        refused[item] = reason
                continue
            reason = _reason(translated, _client_code(exc))
            refused.update({item: reason for item in batch})
            continue
        except BotoCoreError as exc:
            transport = store.transport_error(exc)
            if transport is not None:
                raise transport from None
            reason = str(store.translate(exc))
            refused.update({item: reason for item in batch})
            continue
        sent = set(batch)
        sent_keys: dict[str, list[tuple[str, str]]] = {}
        for item in batch:
            sent_keys.setdefault(item[0], []).append(item)
        errors = response.get("Errors", [])
        # An error naming a key that was sent but no version id (moto's server answers so)
        # stands for every version of that key in the request: all are kept as refused.
        if any((e.get("Key"), e.get("VersionId", "")) not in sent
               and (e.get("VersionId") or e.get("Key") not in sent_keys) for e in errors):
            reason = f"S3 at {store.where} answered DeleteObjects with errors for versions that were not sent"
            refused.update({item: reason for item in batch})
            continue
        for err in errors:
            code = err.get("Code", "")
            if code in ("NoSuchVersion", "NoSuchKey", "NotFound"):
                continue
            reason = refusal_reason(code, err.get("Message", ""))
            item = (err["Key"], err.get("VersionId", ""))
            for one in ([item] if item in sent else sent_keys[err["Key"]]):
                refused[one] = reason
    return refused


def delete_version(store: S3Store, key: str, version_id: str) -> str | None:
    """DeleteObject of exactly one version (or delete marker) of ``key``: None when it is
    gone (or already was), else the store's reason (``refusal_reason``). Needs
    s3:DeleteObjectVersion. Unreachable: BackendUnavailableError (exit 8)."""
    return _delete_one_version(store, key, version_id)


def get_version(store: S3Store, key: str, version_id: str, *, limit: int = 1024 * 1024) -> bytes:
    """The bytes of one version of ``key`` (GetObject with ``versionId``; needs
    s3:GetObjectVersion), at most ``limit`` bytes (a probe's size; larger versions are not
    read here). Errors translated as everywhere (404 → exit 4, 403 → 5, unreachable → 8)."""
    try:
        response = store.client.get_object(Bucket=store.bucket, Key=key, VersionId=version_id)
        body = response["Body"]
        try:
            return body.read(limit)
        finally:
            body.close()
    except (ClientError, BotoCoreError) as exc:
        raise store.translate(exc, key) from None


def _delete_one_version(store: S3Store, key: str, version_id: str) -> str | None:
    """DeleteObject of one version; None when it is gone (or already was), else the
    reason. Unreachable: BackendUnavailableError."""
    try:
        store.client.delete_object(Bucket=store.bucket, Key=key, VersionId=version_id)
    except ClientError as exc:
        code = _client_code(exc)
        if code in ("NoSuchVersion", "NoSuchKey", "NotFound") or _client_status(exc) == 404:
            return None
        translated = store.translate(exc, key)
        if isinstance(translated, BackendUnavailableError):
            raise translated from None
        message = exc.response.get("Error", {}).get("Message", "") or ""
        return refusal_reason(code, message) if code else str(translated)
    except BotoCoreError as exc:
        transport = store.transport_error(exc)
        if transport is not None:
            raise transport from None
        return str(store.translate(exc, key))
    return None


def explain_refusals(
    store: S3Store, refused: dict[tuple[str, str], str], *, limit: int = 100
) -> dict[tuple[str, str], str]:
    """``refused`` (as ``delete_versions`` returns it) with the reason of a version that
    is under Object Lock made ``OBJECT_LOCK_REASON``, for stores that answer a locked
    version with a bare AccessDenied (SeaweedFS 4.48 does: "Access Denied."). Up to
    ``limit`` such versions are asked about (GetObjectLegalHold, GetObjectRetention: a
    legal hold ON or a retain-until date in the future is a lock); an AccessDenied that is
    not a lock gets the permission a delete naming a version needs appended
    (``DELETE_VERSION_PERMISSION``). Read-only; a store without these APIs leaves the
    reasons as they were (and the permission named)."""
    from datetime import timezone

    out = dict(refused)
    asked = 0
    for (key, vid), reason in refused.items():
        if reason == OBJECT_LOCK_REASON or not reason.startswith("AccessDenied"):
            continue
        if asked < limit:
            asked += 1
            if _locked(store, key, vid, timezone.utc):
                out[(key, vid)] = OBJECT_LOCK_REASON
                continue
        out[(key, vid)] = f"{reason} ({DELETE_VERSION_PERMISSION})"
    return out


def _locked(store: S3Store, key: str, version_id: str, utc) -> bool:
    params = {"Bucket": store.bucket, "Key": key}
    if version_id and version_id != "null":
        params["VersionId"] = version_id
    client = store.client
    try:
        hold = client.get_object_legal_hold(**params).get("LegalHold") or {}
        if str(hold.get("Status", "")).upper() == "ON":
            return True
    except (ClientError, BotoCoreError):
        pass
    try:
        retention = client.get_object_retention(**params).get("Retention") or {}
        until = retention.get("RetainUntilDate")
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=utc)
        return until is not None and until > datetime.now(utc)
    except (ClientError, BotoCoreError):
        return False


def copy_version(store: S3Store, key: str, version_id: str) -> tuple[str | None, str | None]:
    """CopyObject from ``key``'s version ``version_id`` onto ``key`` itself: the version's
    bytes become the key's current object again (AWS S3 user guide, "Restoring previous
    versions"). Returns (the new version's id, its ETag without quotes) as the store
    answered them. Objects over 5 GiB cannot be copied in one request (the store refuses;
    execution data is far smaller). Errors translated as everywhere (404 → exit 4, 403 →
    5, unreachable → 8)."""
    try:
        response = store.client.copy_object(
            Bucket=store.bucket, Key=key,
            CopySource={"Bucket": store.bucket, "Key": key, "VersionId": version_id},
            MetadataDirective="COPY", TaggingDirective="COPY",
        )
    except (ClientError, BotoCoreError) as exc:
        raise store.translate(exc, key) from None
    etag = (response.get("CopyObjectResult") or {}).get("ETag")
    return response.get("VersionId"), etag.strip('"') if etag else None


def restore_version(store: S3Store, key: str, version_id: str) -> tuple[str | None, str | None, str | None]:
    """``copy_version`` for ``apstorage restore``: the version's bytes copied back as the
    key's current object, with a refusal given back instead of raised, so one row's failure
    never stops a run. Returns (new version id, the copy's ETag without quotes, None) or
    (None, None, reason). The reason names the store's error code and message, never the
    key, so a report groups the rows it hit; a refusal naming Object Lock (retention, legal
    hold) is ``OBJECT_LOCK_REASON``; AccessDenied names the permissions a copy from a
    version needs (s3:GetObjectVersion, s3:PutObject). A store that cannot be reached
    raises BackendUnavailableError (exit 8)."""
    source = {"Bucket": store.bucket, "Key": key, "VersionId": version_id}
    try:
        try:
            response = store.client.copy_object(
                Bucket=store.bucket, Key=key, CopySource=source, MetadataDirective="COPY", TaggingDirective="COPY",
            )
        except ClientError as exc:
            if not _copy_to_itself(exc):
                raise
            # SeaweedFS refuses a copy of a version onto its own key on a Suspended bucket
            # unless something changes ("copy an object to itself without changing the
            # object's metadata"): the version's own metadata, given back as a replacement.
            response = store.client.copy_object(
                Bucket=store.bucket, Key=key, CopySource=source, MetadataDirective="REPLACE",
                TaggingDirective="COPY", **_version_metadata(store, key, version_id),
            )
    except ClientError as exc:
        translated = store.translate(exc, key)
        if isinstance(translated, BackendUnavailableError):
            raise translated from None
        code = _client_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or ""
        reason = refusal_reason(code, message)
        if reason == OBJECT_LOCK_REASON:
            return None, None, reason
        if _client_status(exc) in (401, 403):
            reason += " (CopyObject from a version needs s3:GetObjectVersion and s3:PutObject)"
        return None, None, f"CopyObject was refused: {reason} (HTTP {_client_status(exc)})"
    except BotoCoreError as exc:
        transport = store.transport_error(exc)
        if transport is not None:
            raise transport from None
        return None, None, f"CopyObject failed: {store.translate(exc)}"
    etag = (response.get("CopyObjectResult") or {}).get("ETag")
    return response.get("VersionId"), etag.strip('"') if etag else None, None


def _copy_to_itself(exc: ClientError) -> bool:
    message = (exc.response.get("Error", {}).get("Message", "") or "").lower()
    return _client_code(exc) == "InvalidRequest" and "to itself" in message


_HEAD_TO_COPY = {  # HeadObject answer -> CopyObject parameter, for MetadataDirective=REPLACE
    "ContentType": "ContentType", "ContentEncoding": "ContentEncoding", "ContentLanguage": "ContentLanguage",
    "ContentDisposition": "ContentDisposition", "CacheControl": "CacheControl", "Expires": "Expires",
    "Metadata": "Metadata",
}


def _version_metadata(store: S3Store, key: str, version_id: str) -> dict:
    """The metadata of one version (HeadObject with ``versionId``) as CopyObject takes it."""
    head = store.client.head_object(Bucket=store.bucket, Key=key, VersionId=version_id)
    return {param: head[field] for field, param in _HEAD_TO_COPY.items() if head.get(field) not in (None, "", {})}


def head_version(store: S3Store, key: str, version_id: str | None = None) -> dict | None:
    """HeadObject of ``key`` (its current version, or ``version_id``): {"size", "etag",
    "versionId"} or None when absent (404, or the current version is a delete marker)."""
    params = {"Bucket": store.bucket, "Key": key}
    if version_id:
        params["VersionId"] = version_id
    try:
        head = store.client.head_object(**params)
    except ClientError as exc:
        if _client_status(exc) in (404, 405):
            return None
        raise store.translate(exc, key) from None
    except BotoCoreError as exc:
        raise store.translate(exc, key) from None
    return {
        "size": int(head.get("ContentLength", 0)),
        "etag": (head.get("ETag") or "").strip('"') or None,
        "versionId": head.get("VersionId"),
    }


def refusal_reason(code: str, message: str) -> str:
    """The reason a version delete was refused, as one line; a refusal because of Object
    Lock (AWS answers AccessDenied "... protected by object lock", others name retention
    or legal hold) is ``OBJECT_LOCK_REASON`` so a report groups them under one reason."""
    text = f"{code} {message}".lower()
    if "object lock" in text or "objectlock" in text or "legal hold" in text or "retention" in text \
            or code in ("ObjectLocked", "InvalidObjectState"):
        return OBJECT_LOCK_REASON
    return f"{code}: {message}".strip(" :") or "refused"


# -- parsing -----------------------------------------------------------------------------


def _parse_versions(body: bytes, store: S3Store) -> tuple[list[ObjectVersion], bool, str, str]:
    """(entries in document order, truncated, next key marker, next version-id marker)."""
    from apstorage.stores.s3 import _last_modified

    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BackendUnavailableError(
            f"S3 at {store.where} sent a version listing of bucket {store.bucket!r} that is not valid XML ({exc})"
        ) from None
    ns = _ns(root)
    if root.tag[len(ns):] != "ListVersionsResult":
        raise NotSupportedError(
            f"S3 at {store.where} answered ListObjectVersions with <{root.tag[len(ns):]}>, "
            f"not a ListVersionsResult (bucket {store.bucket!r})"
        )
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"

    def decode(text: str | None) -> str:
        text = text or ""
        return unquote_plus(text) if encoded else text

    entries: list[ObjectVersion] = []
    for item in root:
        tag = item.tag[len(ns):]
        if tag not in ("Version", "DeleteMarker"):
            continue
        marker = tag == "DeleteMarker"
        size_text = (item.findtext(f"{ns}Size") or "0").strip()
        if not (size_text.isascii() and size_text.isdigit()):
            raise BackendUnavailableError(
                f"S3 at {store.where} listed a version of {decode(item.findtext(f'{ns}Key'))!r} "
                f"with a size of {size_text[:40]!r}"
            )
        etag = item.findtext(f"{ns}ETag")
        entries.append(ObjectVersion(
            key=decode(item.findtext(f"{ns}Key")),
            version_id=item.findtext(f"{ns}VersionId") or "null",
            size=0 if marker else int(size_text),
            etag=None if marker or not etag else etag.strip().strip('"'),
            modified=_last_modified(item.findtext(f"{ns}LastModified")),
            is_latest=(item.findtext(f"{ns}IsLatest") or "").strip().lower() == "true",
            delete_marker=marker,
        ))
    truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
    return entries, truncated, decode(root.findtext(f"{ns}NextKeyMarker")), root.findtext(f"{ns}NextVersionIdMarker") or ""


def _ns(root: ET.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _client_code(exc: BaseException | None) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "") or ""
    return ""


def _client_status(exc: BaseException | None) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


__all__ = [
    "ENABLED",
    "OBJECT_LOCK_REASON",
    "SUSPENDED",
    "ObjectVersion",
    "Versioning",
    "copy_version",
    "delete_version",
    "delete_versions",
    "explain_refusals",
    "get_version",
    "get_versioning",
    "head_version",
    "list_version_pages",
    "list_versions",
    "refusal_reason",
    "restore_version",
    "versions_of",
]
