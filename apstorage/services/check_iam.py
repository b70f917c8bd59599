"""`check-iam`: exercise the configured bucket credentials the way the platform uses them.

Each named check performs the real request and reports the IAM permission it needs, so
CI can gate on the result: list, put (with the execution-data tag), get, a pre-signed GET
and PUT fetched with no credentials, an unsigned GET that must be refused, delete (one
and a DeleteObjects batch of one, then a 404), and the server's clock.

On a versioned bucket (GetBucketVersioning: Enabled or Suspended, asked once) three more
exercise what `sweep-expired --purge-versions`, `gc` and `restore` need: list-versions
(ListObjectVersions of the probes: s3:ListBucketVersions), get-version (GetObject with the
probe's versionId: s3:GetObjectVersion, as restore's CopyObject from a version needs),
delete-versions (DeleteObject naming a version, then DeleteObjects naming the others:
s3:DeleteObjectVersion), after which the listing must show none of the probes' versions
or delete markers. On an unversioned bucket (or a store without the versioning API) they
are skipped, "bucket is not versioned".

Probe objects are always removed, also when a check fails or the run is interrupted
(Ctrl-C or SIGTERM); on a versioned bucket that means every version and delete marker of
every probe key (all share one key prefix, listed once). A probe, version or delete
marker the credentials cannot delete is reported, never hidden.
Raw HTTP (pre-signed and unsigned requests, the Date header) goes through the store's own
HTTP session unsigned: those requests carry no credentials at all, and follow the same
proxy rule, timeouts and error messages as every other request.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, Sequence

from apstorage.errors import (
    ApStorageError,
    BackendUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
)
from apstorage.model import safe_relative_key
from apstorage.services.files import RETENTION_TAG  # the tag `put` gives execution data
from apstorage.text import plural

CHECKS = (
    "list",
    "put",
    "get",
    "list-versions",
    "get-version",
    "presign-get",
    "presign-put",
    "anonymous-denied",
    "delete",
    "delete-versions",
    "clock",
)
VERSION_CHECKS = ("list-versions", "get-version", "delete-versions")
PERMISSIONS = {
    "list": "s3:ListBucket",
    "put": "s3:PutObject, s3:PutObjectTagging",
    "get": "s3:GetObject",
    "presign-get": "s3:GetObject (pre-signed)",
    "presign-put": "s3:PutObject (pre-signed)",
    "anonymous-denied": "no public s3:GetObject",
    "delete": "s3:DeleteObject",
    "list-versions": "s3:ListBucketVersions",
    "get-version": "s3:GetObjectVersion",
    "delete-versions": "s3:DeleteObjectVersion",
    "clock": "-",
}
MAX_SKEW = 300  # seconds: SigV4 requests further off than 5 minutes are refused
PRESIGN_EXPIRES = 300

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
INCONCLUSIVE = "inconclusive"  # the answer proves neither outcome (not a failure)


@dataclass
class CheckResult:
    name: str
    status: str
    detail: str
    permission: str = ""
    hint: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        """True passed, False failed, None skipped or inconclusive."""
        return None if self.status in (SKIPPED, INCONCLUSIVE) else self.status == PASSED

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "permission": self.permission,
            "detail": self.detail,
            "hint": self.hint,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


@dataclass
class CheckReport:
    bucket: str
    prefix: str
    endpoint: str
    checks: list[CheckResult] = field(default_factory=list)
    leftover: list[str] = field(default_factory=list)
    unreachable: str | None = None  # why the endpoint could not be reached
    missing_bucket: str | None = None  # why the run stopped after `list` (exit 4)
    warnings: list[str] = field(default_factory=list)  # degradations worth a line on stderr
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ok(self) -> bool:
        return (
            self.unreachable is None and self.missing_bucket is None
            and all(c.status != FAILED for c in self.checks)
        )

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAILED]

    @property
    def exit_code(self) -> int:
        if self.unreachable is not None:
            return BackendUnavailableError.exit_code
        if self.missing_bucket is not None:
            return NotFoundError.exit_code
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "checks": [c.to_json() for c in self.checks],
            "leftover": self.leftover,
            "warnings": self.warnings,
        }


def parse_skip(value: str | None) -> set[str]:
    """``--skip NAME,..`` → check names; an unknown or empty name, or skipping every check,
    is a usage error (exit 2)."""
    from apstorage.model import split_items

    if not value or not value.strip():  # `--skip "$SKIP"` with SKIP unset: skip nothing (checks more, never less)
        return set()
    names = {part.lower() for part in split_items(value, "--skip", "check name") or ()}
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise UsageError(
            f"--skip: unknown check {', '.join(unknown)}; accepted: {', '.join(CHECKS)}"
        )
    if names >= set(CHECKS):  # a CI gate that checks nothing would always pass
        raise UsageError("--skip: every check is skipped, so nothing would be checked; leave at least one")
    return names


# -- raw HTTP (no credentials) ----------------------------------------------------------


PROBE_BODY_LIMIT = 1024 * 1024  # bytes of a probe's answer read (probes are a few bytes)


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: Any
    body: bytes

    @property
    def error_code(self) -> str:
        """The S3 error code from an XML error body, or ''."""
        match = re.search(rb"<Code>([^<]+)</Code>", self.body)
        return match.group(1).decode("utf-8", "replace") if match else ""

    def describe(self) -> str:
        message = re.search(rb"<Message>([^<]*)</Message>", self.body)
        code = self.error_code
        text = f"HTTP {self.status}"
        if code:
            text += f" {code}"
        if message and message.group(1):
            text += f": {message.group(1).decode('utf-8', 'replace')}"
        return text


class Unreachable(Exception):
    pass


def http(store: Any, method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> HttpResult:
    """One request with no credentials (a pre-signed or anonymous URL) through the store's
    own HTTP session, so the proxy rule, CA bundle, timeouts and error messages are the
    ones every other request has. Any HTTP answer is returned; a network failure raises
    ``Unreachable`` with the store's one-line message (naming the proxy when it failed)."""
    sent = dict(headers or {})
    if data is not None and not any(k.lower() == "content-type" for k in sent):
        sent["Content-Type"] = "application/octet-stream"
    try:
        answer = store.session.request(method, url, sent, data or b"", limit=PROBE_BODY_LIMIT)
    except Exception as exc:  # noqa: BLE001 - translated at the store's one boundary
        translated = store.transport_error(exc)
        if translated is None:
            raise
        raise Unreachable(translated.message) from None
    return HttpResult(answer.status, answer.headers, answer.body)


# -- the run ----------------------------------------------------------------------------


class _Run:
    """State shared by the checks of one run: the store, the probes and what exists."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.bucket = store.bucket
        self.prefix = prefix
        token = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
        # every key this run may write (or put a delete marker on) starts with the stem
        self.stem = safe_relative_key(f"{prefix}apstorage-check-iam-{token}")
        self.probe = f"{self.stem}.probe"
        self.probe2 = f"{self.stem}-presigned.probe"
        self.absent = f"{self.stem}-absent.probe"  # never written; deleting it makes a marker
        self.payload = b"apstorage check-iam probe\n" + secrets.token_bytes(64)
        self.payload2 = b"apstorage check-iam pre-signed probe\n" + secrets.token_bytes(64)
        self.created: set[str] = set()  # keys that may exist and must be removed
        self.readable: set[str] = set()  # keys known to hold their payload
        self.put_outcome = "not run"
        self.warnings: list[str] = []
        self.payloads = {self.probe: self.payload, self.probe2: self.payload2}
        self.touched = False  # a request that may leave a version or marker was sent
        self._versioning: Any = None
        self.listed: list[Any] | None = None  # the probes' versions and markers (list-versions)

    def arn(self, objects: bool = True) -> str:
        return f"arn:aws:s3:::{self.bucket}/{self.prefix}*" if objects else f"arn:aws:s3:::{self.bucket}"

    # -- checks -------------------------------------------------------------------------
    def check_list(self) -> CheckResult:
        try:
            page = self.store.list_page(self.prefix, 1)
        except ApStorageError as exc:
            return self.failure("list", exc, "s3:ListBucket", objects=False)
        where = f"prefix {self.prefix!r}" if self.prefix else "the bucket"
        return CheckResult("list", PASSED, f"ListObjectsV2 (MaxKeys=1) on {where}: {plural(len(page), 'key')} returned")

    def check_put(self) -> CheckResult:
        tag = "&".join(f"{k}={v}" for k, v in RETENTION_TAG.items())
        self.created.add(self.probe)
        self.touched = True
        try:
            self.store.put(self.probe, io.BytesIO(self.payload), len(self.payload), tags=RETENTION_TAG)
        except PermissionDeniedError as exc:
            if _credential_problem(str(exc)):
                self.put_outcome = "put failed"
                self.forget_if_refused(self.probe, exc)
                return self.failure("put", exc, "s3:PutObject")
            # Tell a missing s3:PutObjectTagging apart from a missing s3:PutObject.
            try:
                self.store.put(self.probe, io.BytesIO(self.payload), len(self.payload))
            except ApStorageError as second:
                self.put_outcome = "put failed"
                self.forget_if_refused(self.probe, second)
                return self.failure("put", exc, "s3:PutObject")
            self.readable.add(self.probe)
            self.put_outcome = "ok"
            return CheckResult(
                "put", FAILED,
                f"PutObject works, but not with the tag {tag} that execution data gets: {exc}",
                hint=f"grant s3:PutObjectTagging on {self.arn()}",
            )
        except ApStorageError as exc:
            self.put_outcome = "put failed"
            self.forget_if_refused(self.probe, exc)
            return self.failure("put", exc, "s3:PutObject")
        self.readable.add(self.probe)
        self.put_outcome = "ok"
        detail = f"wrote s3://{self.bucket}/{self.probe} ({len(self.payload)} bytes, tag {tag})"
        kept = self.tag_kept(self.probe, len(self.payload))
        if kept is False:
            self.warnings.append(
                f"the store did not keep the tag {tag} on the probe: the lifecycle rule "
                "(`apstorage lifecycle apply`) will miss execution data here; "
                "`apstorage sweep-expired` still deletes it"
            )
            detail += "; the store did not keep the tag (read back with GetObjectTagging)"
        return CheckResult("put", PASSED, detail, extra={"tagKept": kept})

    def check_get(self) -> CheckResult:
        if self.probe not in self.readable:
            return self.no_probe("get")
        try:
            data = self.store.get(self.probe)
        except ApStorageError as exc:
            return self.failure("get", exc, "s3:GetObject")
        if data != self.payload:
            return CheckResult("get", FAILED, f"read {len(data)} bytes back, but they differ from the {len(self.payload)} written")
        return CheckResult("get", PASSED, f"read the {len(data)} bytes back, identical")

    def check_presign_get(self) -> CheckResult:
        if self.probe not in self.readable:
            return self.no_probe("presign-get")
        try:
            url = self.store.presign_get(self.probe, PRESIGN_EXPIRES)
            answer = http(self.store, "GET", url)
        except (ApStorageError, Unreachable) as exc:
            return CheckResult("presign-get", FAILED, f"could not fetch the pre-signed URL: {exc}")
        if answer.status != 200:
            return self.http_failure("presign-get", answer, "s3:GetObject")
        if answer.body != self.payload:
            return CheckResult("presign-get", FAILED, f"the pre-signed GET returned {len(answer.body)} bytes that differ from the probe")
        return CheckResult("presign-get", PASSED, f"a SigV4 pre-signed GET with no credentials returned the {len(answer.body)} bytes")

    def check_presign_put(self) -> CheckResult:
        self.created.add(self.probe2)
        self.touched = True
        try:
            url, headers = self.store.presign_put(
                self.probe2, PRESIGN_EXPIRES, content_length=len(self.payload2), tags=RETENTION_TAG
            )
            answer = http(self.store, "PUT", url, self.payload2, {k: v for k, v in headers.items() if k != "Content-Length"})
        except (ApStorageError, Unreachable) as exc:
            return CheckResult("presign-put", FAILED, f"could not upload to the pre-signed URL: {exc}")
        if answer.status not in (200, 201, 204):
            if 400 <= answer.status < 500:  # refused: nothing was written
                self.created.discard(self.probe2)
            return self.http_failure("presign-put", answer, "s3:PutObject")
        try:
            data = self.store.get(self.probe2)
        except ApStorageError as exc:
            return CheckResult("presign-put", FAILED, f"the pre-signed PUT was accepted but the object cannot be read back: {exc}")
        if data != self.payload2:
            return CheckResult("presign-put", FAILED, "the pre-signed PUT was accepted but the object reads back different bytes")
        self.readable.add(self.probe2)
        return CheckResult(
            "presign-put", PASSED,
            f"a pre-signed PUT bound to {len(self.payload2)} bytes and the retention tag was accepted and reads back",
        )

    def check_anonymous(self) -> CheckResult:
        target = next((k for k in (self.probe, self.probe2) if k in self.readable), None)
        key = target or f"{self.prefix}apstorage-check-iam-absent-{secrets.token_hex(6)}"
        try:
            answer = http(self.store, "GET", self.store.unsigned_url(key))
        except Unreachable as exc:
            return CheckResult("anonymous-denied", FAILED, f"the unsigned GET did not get an answer: {exc}")
        public = self.store.public_access_status()
        extra = {"publicAccess": public}
        summary = _public_summary(public)
        what = "the probe" if target else "a missing key (no probe object exists)"
        if answer.status in (400, 401, 403):
            return CheckResult(
                "anonymous-denied", PASSED,
                f"an unsigned GET of {what} was refused ({answer.describe()}); {summary}", extra=extra,
            )
        if 200 <= answer.status < 300:
            return CheckResult(
                "anonymous-denied", FAILED,
                f"an unsigned GET of s3://{self.bucket}/{key} returned HTTP {answer.status}: anyone "
                f"can read it; {summary}", extra=extra,
                hint=f"remove grants to everyone (\"Principal\": \"*\" or public-read ACLs) on "
                f"{self.arn()}, or turn on Block Public Access",
            )
        # 404 (the store hides what it will not serve, or anonymous requests reach a
        # listing that lacks the key), redirects, 5xx: neither refused nor served.
        return CheckResult(
            "anonymous-denied", INCONCLUSIVE,
            f"an unsigned GET of {what} got {answer.describe()}: neither refused (400/401/403) "
            f"nor served (2xx), so public access is not proven either way; {summary}", extra=extra,
        )

    def check_delete(self) -> CheckResult:
        absent = self.absent
        self.touched = True  # on a versioned bucket every delete leaves a delete marker
        first = self.probe if self.probe in self.created else absent
        second = self.probe2 if self.probe2 in self.created else first
        problems: list[str] = []
        failure: ApStorageError | None = None
        try:
            self.store.delete(first)
            self.created.discard(first)
            self.readable.discard(first)
        except ApStorageError as exc:
            failure = exc
            problems.append(f"DeleteObject: {exc}")
        refused = self.store.delete_many([second])
        if refused:
            problems.append(f"DeleteObjects (a batch of one): {refused[second]}")
        else:
            self.created.discard(second)
            self.readable.discard(second)
        if problems:
            if failure is not None and _credential_problem(str(failure)):
                return self.failure("delete", failure, "s3:DeleteObject")
            text = "; ".join(problems)
            hint = _cause_hint(text)
            if hint is None and ("AccessDenied" in text or "refused access" in text):
                hint = f"grant s3:DeleteObject on {self.arn()}"
            what = "s3:DeleteObject refused. " if hint and hint.startswith("grant") else "delete failed. "
            return CheckResult("delete", FAILED, what + text, hint=hint)
        try:
            still = self.store.stat(first)
        except ApStorageError as exc:
            return CheckResult("delete", FAILED, f"deleted, but the 404 could not be confirmed: {exc}")
        if still is not None:
            self.created.add(first)
            return CheckResult("delete", FAILED, f"DeleteObject answered success but s3://{self.bucket}/{first} is still there")
        return CheckResult("delete", PASSED, "DeleteObject and a DeleteObjects batch of one succeeded; HEAD then gives 404")

    # -- versioned buckets ------------------------------------------------------------------
    def versioning(self) -> Any:
        """The bucket's versioning state, asked once (GetBucketVersioning). A store without
        the API counts as unversioned; a refusal is an unknown state (``Versioning.unknown``:
        the version checks run, and list-versions fails naming s3:GetBucketVersioning).
        BackendUnavailableError when the store cannot be reached."""
        if self._versioning is None:
            from apstorage.stores.s3_versions import Versioning, get_versioning

            try:
                self._versioning = get_versioning(self.store)
            except BackendUnavailableError:
                raise
            except ApStorageError as exc:
                self._versioning = Versioning("", True, f"the versioning state could not be asked ({exc})", unknown=True)
        return self._versioning

    def not_versioned(self, name: str) -> CheckResult | None:
        """The skip of a versioned check on a bucket that is not versioned, or None."""
        state = self.versioning()
        if state.may_keep_versions:
            return None
        detail = "bucket is not versioned"
        if state.note:
            detail += f" ({state.note})"
        return CheckResult(name, SKIPPED, detail)

    def list_probe_versions(self) -> list[Any]:
        """Every version and delete marker under the probes' stem (one ListObjectVersions
        page or a few). Raises what the listing raises."""
        from apstorage.stores.s3_versions import list_versions

        return [e for e in list_versions(self.store, self.stem) if e.key.startswith(self.stem)]

    def check_list_versions(self) -> CheckResult:
        skipped = self.not_versioned("list-versions")
        if skipped:
            return skipped
        try:
            entries = self.list_probe_versions()
        except ApStorageError as exc:
            result = self.failure("list-versions", exc, "s3:ListBucketVersions", objects=False)
            state = self.versioning()
            if state.unknown:  # both refused: name both
                result.detail += f"; and the bucket's versioning state is unknown: {state.note}"
                result.hint = (result.hint + " and s3:GetBucketVersioning") if result.hint else "grant s3:GetBucketVersioning"
            return result
        self.listed = entries
        versions = sum(1 for e in entries if not e.delete_marker)
        markers = len(entries) - versions
        detail = (
            f"ListObjectVersions under {self.stem!r}: {plural(versions, 'version')} and "
            f"{plural(markers, 'delete marker')} of the probes"
        )
        if self.put_outcome == "ok" and not any(e.key == self.probe and not e.delete_marker for e in entries):
            return CheckResult("list-versions", FAILED, detail + f"; none of s3://{self.bucket}/{self.probe}, which was written")
        state = self.versioning()
        if state.unknown:
            return CheckResult(
                "list-versions", FAILED,
                f"{detail}, but the bucket's versioning state is unknown: {state.note}; sweep-expired, gc, du "
                "and restore then list every key's versions, as if the bucket were versioned",
                permission="s3:GetBucketVersioning", hint="grant s3:GetBucketVersioning on the bucket",
            )
        return CheckResult("list-versions", PASSED, detail)

    def probe_versions(self) -> list[tuple[str, str]]:
        """(key, versionId) of probe versions holding a known payload: from list-versions,
        else the current version's id from a HEAD (a probe not deleted yet)."""
        if self.listed is not None:
            return [(e.key, e.version_id) for e in self.listed if not e.delete_marker and e.key in self.payloads]
        from apstorage.stores.s3_versions import head_version

        found = []
        for key in (self.probe, self.probe2):
            if key not in self.readable:
                continue
            try:
                head = head_version(self.store, key)
            except ApStorageError:
                continue
            if head and head.get("versionId"):
                found.append((key, head["versionId"]))
        return found

    def check_get_version(self) -> CheckResult:
        skipped = self.not_versioned("get-version")
        if skipped:
            return skipped
        from apstorage.stores.s3_versions import get_version

        known = self.probe_versions()
        if not known:
            reason = "put failed" if self.put_outcome != "ok" else "its version id is not known (list-versions failed or was skipped)"
            if self.put_outcome == "not run":
                reason = "put was skipped"
            return CheckResult("get-version", SKIPPED, f"no probe version to read ({reason})")
        key, version_id = known[0]
        try:
            data = get_version(self.store, key, version_id)
        except ApStorageError as exc:
            return self.failure("get-version", exc, "s3:GetObjectVersion")
        if data != self.payloads[key]:
            return CheckResult("get-version", FAILED, f"GetObject of version {version_id} read {len(data)} bytes that differ from the probe")
        return CheckResult(
            "get-version", PASSED,
            f"GetObject with versionId {version_id} read the probe back, {len(data)} bytes, identical",
        )

    def check_delete_versions(self) -> CheckResult:
        skipped = self.not_versioned("delete-versions")
        if skipped:
            return skipped
        from apstorage.stores.s3_versions import delete_version, delete_versions

        listed = True
        try:
            entries = [(e.key, e.version_id, e.delete_marker) for e in self.list_probe_versions()]
        except ApStorageError:
            listed = False
            entries = [(k, v, False) for k, v in self.probe_versions()]
        if not entries:
            if not listed:
                return CheckResult("delete-versions", SKIPPED, "no probe version id known (the versions cannot be listed)")
            if self.put_outcome == "ok" or self.probe2 in self.readable:
                return CheckResult(
                    "delete-versions", SKIPPED,
                    "no version or delete marker of the probes is left to delete (the plain deletes left none)",
                )
            return CheckResult("delete-versions", SKIPPED, "no probe version or delete marker to delete (nothing was written)")
        versions = sum(1 for e in entries if not e[2])
        markers = len(entries) - versions
        (key, vid, _), rest = entries[0], entries[1:]
        refused: dict[tuple[str, str], str] = {}
        reason = delete_version(self.store, key, vid)
        if reason is not None:
            refused[(key, vid)] = f"DeleteObject (versionId): {reason}"
        if rest:
            for item, why in delete_versions(self.store, [(k, v) for k, v, _ in rest]).items():
                refused[item] = f"DeleteObjects (naming versions): {why}"
        if refused:
            text = "; ".join(sorted(set(refused.values())))
            hint = _credential_hint(text) or _cause_hint(text)
            if hint is None and ("AccessDenied" in text or "refused access" in text):
                hint = f"grant s3:DeleteObjectVersion on {self.arn()}"
            what = "s3:DeleteObjectVersion refused. " if hint and hint.startswith("grant") else "delete of versions failed. "
            return CheckResult(
                "delete-versions", FAILED,
                f"{what}{len(refused)} of {plural(len(entries), 'version and marker', 'versions and markers')} kept: {text}",
                hint=hint,
            )
        if not listed:
            return CheckResult(
                "delete-versions", PASSED,
                f"deleted {plural(versions, 'version')} of the probes by version id (the versions cannot be "
                "listed, so what is left cannot be confirmed)",
            )
        try:
            left = self.list_probe_versions()
        except ApStorageError as exc:
            return CheckResult("delete-versions", FAILED, f"deleted, but the listing could not confirm it: {exc}")
        if left:
            return CheckResult(
                "delete-versions", FAILED,
                f"the deletes were answered as done, but ListObjectVersions still shows "
                f"{plural(len(left), 'entry', 'entries')} under {self.stem!r} "
                f"({', '.join(sorted({'delete marker ' + e.version_id if e.delete_marker else 'version ' + e.version_id for e in left}))}): "
                "the store did not remove them; this is not a permission problem",
            )
        self.created.clear()
        self.readable.clear()
        return CheckResult(
            "delete-versions", PASSED,
            f"deleted {plural(versions, 'version')} and {plural(markers, 'delete marker')} of the probes by "
            "version id (DeleteObject, then DeleteObjects naming versions); ListObjectVersions then shows none",
        )

    def purge_probe_versions(self) -> tuple[bool, list[str]]:
        """Cleanup on a versioned bucket: delete every version and delete marker under the
        probes' stem by version id. Returns (whether the listing says what is left, what is
        still there or why that is not known)."""
        from apstorage.stores.s3_versions import delete_versions

        where = f"s3://{self.bucket}/{self.stem}*"
        try:
            entries = self.list_probe_versions()
        except ApStorageError as exc:
            return False, [f"{where} (its versions could not be listed: {exc})"]
        if not entries:
            return True, []
        try:
            refused = delete_versions(self.store, [(e.key, e.version_id) for e in entries])
            entries = self.list_probe_versions()
        except ApStorageError as exc:
            return False, [f"{where} (its versions could not be deleted: {exc})"]
        out = []
        for e in entries:
            what = f"{'delete marker' if e.delete_marker else 'version'} {e.version_id}"
            why = refused.get((e.key, e.version_id))
            why = f"refused: {why}" if why else "still listed after a delete the store answered as done"
            out.append(f"s3://{self.bucket}/{e.key} ({what}: {why})")
        return True, out

    def check_clock(self) -> CheckResult:
        url = self.store.unsigned_url(f"{self.prefix}apstorage-check-iam-clock")
        before = time.time()
        try:
            answer = http(self.store, "HEAD", url)
        except Unreachable as exc:
            return CheckResult("clock", FAILED, f"no answer to read the Date header from: {exc}")
        local = (before + time.time()) / 2
        date = answer.headers.get("Date") if answer.headers is not None else None
        if not date:
            return CheckResult("clock", SKIPPED, "the server sent no Date header; the clock cannot be compared")
        try:
            server = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return CheckResult("clock", SKIPPED, f"the server's Date header {date!r} cannot be parsed")
        skew = server - local
        direction = "ahead of" if skew > 0 else "behind"
        detail = f"the server's clock is {abs(skew):.0f} s {direction} this machine's (Date: {date})"
        if abs(skew) > MAX_SKEW:
            return CheckResult(
                "clock", FAILED, detail + "; SigV4 signatures more than 5 minutes off are refused "
                "(RequestTimeTooSkewed, or a confusing SignatureDoesNotMatch)",
                hint="synchronise this machine's clock (NTP)", extra={"skewSeconds": round(skew, 1)},
            )
        return CheckResult("clock", PASSED, detail, extra={"skewSeconds": round(skew, 1)})

    # -- shared -------------------------------------------------------------------------
    def tag_kept(self, key: str, size: int) -> bool | None:
        """Whether the store kept the retention tag on ``key`` (None: could not read it)."""
        try:
            tags = self.store.read_tags(key, size)
        except ApStorageError:
            return None  # s3:GetObjectTagging may be withheld: not this check's business
        return tags is not None and all(tags.get(k) == v for k, v in RETENTION_TAG.items())

    def no_probe(self, name: str) -> CheckResult:
        reason = "put was skipped" if self.put_outcome == "not run" else "put failed"
        return CheckResult(name, SKIPPED, f"no probe object to read ({reason})")

    def failure(self, name: str, exc: ApStorageError, permission: str, *, objects: bool = True) -> CheckResult:
        message = str(exc)
        hint = _credential_hint(message) or _cause_hint(message)
        if hint is None:
            if isinstance(exc, NotFoundError) and "bucket" in message:
                hint = "check AP_S3_BUCKET (and AP_S3_ENDPOINT / AP_S3_REGION)"
            elif isinstance(exc, PermissionDeniedError):
                hint = f"grant {permission} on {self.arn(objects)}"
        if _credential_problem(message):
            detail = f"authentication failed: {message}"
        elif isinstance(exc, PermissionDeniedError):
            detail = f"{permission} refused: {message}"
        else:
            detail = message
        return CheckResult(name, FAILED, detail, hint=hint)

    def http_failure(self, name: str, answer: HttpResult, permission: str) -> CheckResult:
        method = "PUT" if name == "presign-put" else "GET"
        detail = f"the pre-signed {method} got {answer.describe()}"
        hint = _credential_hint(detail)
        if hint is None and answer.status in (401, 403):
            hint = f"grant {permission} on {self.arn()}"
        return CheckResult(name, FAILED, detail, hint=hint)

    def forget_if_refused(self, key: str, exc: ApStorageError) -> None:
        """A refused write (4xx) created nothing; after a 5xx or a lost connection the
        object may exist, so it stays on the clean-up list."""
        if not isinstance(exc, BackendUnavailableError):
            self.created.discard(key)

    def cleanup(self) -> list[str]:
        """Remove every probe that may exist; return the ones still there afterwards."""
        leftover = []
        for key in sorted(self.created):
            try:
                self.store.delete(key)
                continue
            except ApStorageError:  # checked below, reported, never hidden
                pass
            try:
                if self.store.stat(key) is None:
                    continue  # never written: nothing to remove
            except ApStorageError:  # cannot tell: report it as possibly there
                pass
            leftover.append(f"s3://{self.bucket}/{key}")
        self.created.clear()
        if self.touched:
            try:
                state = self.versioning()
            except ApStorageError:
                state = None  # unreachable: nothing more can be done or known
            if state is not None and state.may_keep_versions:
                known, left = self.purge_probe_versions()
                # the version listing, when it answered, is the whole truth about the probes;
                # refused, what it could not show is named too (a bucket whose state could not
                # be read may hold the probes' versions)
                leftover = left if known else leftover + left
            self.touched = False
        return leftover


_CREDENTIAL_HINTS = (
    ("SignatureDoesNotMatch", "the secret does not match the access key: check AP_S3_SECRET_ACCESS_KEY (and AP_S3_REGION)"),
    ("InvalidAccessKeyId", "the server does not know this access key: check AP_S3_ACCESS_KEY_ID"),
    ("RequestTimeTooSkewed", "this machine's clock is too far off: synchronise it (see the clock check)"),
    ("ExpiredToken", "the session token has expired: refresh the credentials"),
    ("InvalidToken", "the session token is not valid: refresh the credentials"),
    ("AuthorizationHeaderMalformed", "the request was signed for the wrong region: check AP_S3_REGION"),
)


# Refusals that are not about permissions: each hint names the real cause.
_CAUSE_HINTS = (
    ("MissingContentMD5", "the store requires Content-MD5 on the request (apstorage sends it on "
     "DeleteObjects: a proxy in between may strip it); this is not a permission problem"),
    ("MalformedXML", "the store could not parse the request body (keys with control characters "
     "are deleted one by one); this is not a permission problem"),
    ("NotImplemented", "the store does not implement this request; this is not a permission problem"),
    ("InvalidRequest", "the store refused the request's form; this is not a permission problem"),
    ("NoSuchBucket", "check AP_S3_BUCKET (and AP_S3_ENDPOINT / AP_S3_REGION)"),
)


def _cause_hint(message: str) -> str | None:
    for code, hint in _CAUSE_HINTS:
        if code in message:
            return hint
    return None


def _credential_hint(message: str) -> str | None:
    for code, hint in _CREDENTIAL_HINTS:
        if code in message:
            return hint
    return None


def _credential_problem(message: str) -> bool:
    return _credential_hint(message) is not None


def _public_summary(status: dict[str, Any]) -> str:
    block = status.get("publicAccessBlock")
    if isinstance(block, dict):
        on = [k for k, v in block.items() if v]
        block_text = f"Block Public Access: {len(on)} of {len(block)} settings on"
    else:
        block_text = {
            "none": "Block Public Access: not configured",
            "denied": "Block Public Access: not readable with these credentials",
        }.get(str(block), "Block Public Access: not supported by this server")
    policy = status.get("policyStatus")
    if isinstance(policy, dict):
        policy_text = "bucket policy: public" if policy.get("IsPublic") else "bucket policy: not public"
    else:
        policy_text = {
            "none": "bucket policy: none",
            "denied": "bucket policy status: not readable with these credentials",
        }.get(str(policy), "bucket policy status: not supported by this server")
    return f"{block_text}; {policy_text}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so the probes are removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_prefix(prefix: str) -> None:
    """The probes' key prefix must make keys that are safe (``model.safe_relative_key``: no
    leading /, no ``..`` or empty folder, no backslash) and printable (no control
    character: a probe key nobody can type cannot be cleaned by hand): UsageError (exit 2)
    naming --prefix otherwise."""
    from apstorage.model import safe_relative_key
    from apstorage.text import has_control, printable

    bad = has_control(prefix) is not None
    if not bad:
        try:
            safe_relative_key(f"{prefix}apstorage-check-iam")
        except UsageError:
            bad = True
    if bad:
        raise UsageError(f"--prefix: {printable(repr(prefix))} is not a key prefix (no leading /, no .. or "
                         "empty folder, no backslash or control character)")


def run_checks(
    settings: Any,
    *,
    prefix: str = "",
    skip: Sequence[str] = (),
    on_result: Callable[[CheckResult], None] | None = None,
    store: Any = None,
) -> CheckReport:
    """Run every check in order against the configured bucket; never raises for a
    failed check (that is in the report). ConfigError when S3 is not configured."""
    _check_prefix(prefix)
    owned = store is None
    if store is None:
        from apstorage.stores.s3 import S3Store

        store = S3Store(settings, workers=1)  # ConfigError (exit 3) when settings are missing
    store.require_credentials()  # AP_S3_USE_IRSA=true with nothing to find: exit 3, before any check
    skipped = set(skip)
    endpoint = store.endpoint or f"AWS S3 ({settings.s3_region or 'us-east-1'})"
    report = CheckReport(bucket=store.bucket, prefix=prefix, endpoint=endpoint)
    run = _Run(store, prefix)
    steps: dict[str, Callable[[], CheckResult]] = {
        "list": run.check_list,
        "put": run.check_put,
        "get": run.check_get,
        "presign-get": run.check_presign_get,
        "presign-put": run.check_presign_put,
        "anonymous-denied": run.check_anonymous,
        "delete": run.check_delete,
        "list-versions": run.check_list_versions,
        "get-version": run.check_get_version,
        "delete-versions": run.check_delete_versions,
        "clock": run.check_clock,
    }
    try:
        with _sigterm_as_interrupt():
            try:
                http(store, "HEAD", store.unsigned_url(run.probe))
            except Unreachable as exc:
                report.unreachable = str(exc)
            for name in CHECKS:
                started = time.perf_counter()
                if report.missing_bucket is not None:
                    # Nothing after `list` runs: no write may create the misspelled bucket.
                    result = CheckResult(name, SKIPPED, "not run: the bucket does not exist")
                elif name in skipped:
                    result = CheckResult(name, SKIPPED, "skipped (--skip)")
                elif report.unreachable is not None:
                    if any(c.status == FAILED for c in report.checks):
                        result = CheckResult(name, SKIPPED, "not run: the endpoint cannot be reached")
                    else:
                        result = CheckResult(name, FAILED, report.unreachable, hint="check AP_S3_ENDPOINT and the network")
                else:
                    try:
                        result = steps[name]()
                    except BackendUnavailableError as exc:
                        result = CheckResult(name, FAILED, str(exc))
                result.permission = result.permission or PERMISSIONS[name]
                result.seconds = time.perf_counter() - started
                report.checks.append(result)
                if report.unreachable is None and store.down_reason() is not None:
                    # S3 stalled past an operation's deadline: the rest would fail at once,
                    # and the run is an unreachable endpoint (exit 8), not failed checks.
                    report.unreachable = store.down_reason()
                if on_result is not None:
                    on_result(result)
                if name == "list" and report.unreachable is None:
                    report.missing_bucket = _bucket_missing(store, result)
    finally:
        report.warnings.extend(run.warnings)
        report.leftover = run.cleanup()
        if owned:
            store.close()
    return report


def _bucket_missing(store: Any, listed: CheckResult) -> str | None:
    """Why the run must stop after `list`, or None: the bucket does not exist. Some
    stores create a bucket on first write, so nothing may be written to a misspelled one.
    When `list` was skipped, one ListObjectsV2 still asks."""
    if listed.status == SKIPPED:
        try:
            store.check_bucket()
        except NotFoundError as exc:
            return str(exc)
        except ApStorageError:
            return None  # refused or failing: the checks report it
        return None
    if listed.status == FAILED and "does not exist" in listed.detail and "bucket" in listed.detail:
        return listed.detail
    return None


MISSING_BUCKET_HINT = "check AP_S3_BUCKET (and AP_S3_ENDPOINT / AP_S3_REGION); nothing was written"


def junit_xml(report: CheckReport) -> bytes:
    """One <testcase> per check, so CI systems show each check natively."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for c in report.checks if c.status == FAILED)
    skipped = sum(1 for c in report.checks if c.status in (SKIPPED, INCONCLUSIVE))
    total = sum(c.seconds for c in report.checks)
    counts = {
        "tests": str(len(report.checks)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{total:.3f}",
    }
    root = ET.Element("testsuites", {"name": "apstorage check-iam", **counts})
    suite = ET.SubElement(
        root, "testsuite",
        {"name": "apstorage check-iam", **counts, "timestamp": report.started.strftime("%Y-%m-%dT%H:%M:%S")},
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (("bucket", report.bucket), ("prefix", report.prefix), ("endpoint", report.endpoint)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for check in report.checks:
        case = ET.SubElement(
            suite, "testcase",
            {"classname": "apstorage.check-iam", "name": check.name, "time": f"{check.seconds:.3f}"},
        )
        if check.status == FAILED:
            failure = ET.SubElement(case, "failure", {"message": check.detail, "type": check.permission})
            failure.text = f"permission: {check.permission}\n{check.detail}" + (
                f"\nhint: {check.hint}" if check.hint else ""
            )
        elif check.status in (SKIPPED, INCONCLUSIVE):
            ET.SubElement(case, "skipped", {"message": check.detail})
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"permission: {check.permission}\n{check.detail}"
    if report.leftover:
        err = ET.SubElement(suite, "system-err")
        err.text = "probe objects left behind: " + ", ".join(report.leftover)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def prepare_junit_path(path: str) -> str:
    """Check the --junit-xml target before any probe runs, creating missing parent folders
    (``reports/s3-iam.xml`` on a fresh checkout). Returns the absolute path."""
    if not path.strip():  # an unset CI variable: the report would silently go missing
        raise UsageError("--junit-xml: an empty path; give a file path such as reports/s3-iam.xml")
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise UsageError(f"--junit-xml: {path} is a folder; give a file path such as {path.rstrip('/')}/s3-iam.xml")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    except PermissionError:
        raise PermissionDeniedError(f"--junit-xml: cannot create the folder {os.path.dirname(target)}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"--junit-xml: cannot create the folder {os.path.dirname(target)}: {exc.strerror}") from None
    return target


def write_junit(report: CheckReport, path: str) -> None:
    data = junit_xml(report)
    target = prepare_junit_path(path)
    try:
        with open(target, "wb") as fh:
            fh.write(data)
    except FileNotFoundError:
        raise NotFoundError(f"--junit-xml: folder {os.path.dirname(target)} does not exist") from None
    except PermissionError:
        raise PermissionDeniedError(f"--junit-xml: cannot write {target}: permission denied") from None


__all__ = [
    "CHECKS",
    "VERSION_CHECKS",
    "PERMISSIONS",
    "CheckReport",
    "CheckResult",
    "junit_xml",
    "parse_skip",
    "prepare_junit_path",
    "run_checks",
    "write_junit",
]
