"""`restore`: bring a row's deleted S3 object back from its newest version, proven.

On a versioned bucket (Enabled or Suspended) a DeleteObject without a version id only adds
a *delete marker*; the bytes stay as a noncurrent version. Copying that version onto its
own key (CopyObject with ``x-amz-copy-source: bucket/key?versionId=...``) makes it the
current object again (AWS S3 user guide, "Restoring previous versions"). A row whose
current object is gone but whose key still has a version is *restorable* (``gc`` counts it
apart and never deletes it); this module restores such rows:

- **which version**: the newest version with bytes (never a delete marker) whose size is
  the row's recorded ``size`` (the stored size, as S3 holds it); a row with no recorded
  size takes the newest version. A key whose versions all have another size is *not
  restorable* (the bytes would not be the row's: ``get`` would refuse them).
- **proof**: after the copy, a HeadObject of the key must show the version's size, and
  its ETag must be the version's ETag (``proof="size+etag"``). When the version's ETag is
  a multipart one (``...-N``, not an MD5 of the bytes) the copy gets a new ETag; then
  the HEAD's ETag must be the one CopyObject answered (``proof="size+copyEtag"``). When
  no ETag could be compared (``proof="size"``) and both the copy and the HEAD name a
  version id, they must be the same (the HEAD saw the copy, not another write); with the
  ETag compared, another current version of that size and ETag holds the same bytes
  (SeaweedFS 4.48 sometimes leaves two versions from one CopyObject: the answer names one,
  the other is current) and the row is restored, reported with the current version's id. A copy or proof that fails is a failure of that row (grouped
  by reason); a copy whose proof failed is deleted again by its version id (``_undo``),
  so the key is as it was and a later run tries again.
- **nothing else changes**: the catalog is only read (the row still points at its key);
  rows whose object is present are left alone ("already present"); ``dry_run`` lists the
  version each row would be restored from and writes nothing.

Statuses of a row (``RowResult.status``; JSON ``rows[].status``): ``restored``,
``wouldRestore`` (dry run), ``alreadyPresent``, ``notRestorable`` (no version to restore from:
none at all, only delete markers, or none of the row's size), ``failed`` (copy or proof),
``notFound`` (no such id), ``notS3`` (a DB or LOCAL row: restore applies to S3 rows only).

Exit codes (``RestoreReport.exit_code``, DESIGN §3): 1 when a copy or proof failed; else
4 when an id does not exist or a row has no version to restore from (also with
``--all-missing``: every restorable row was restored, but some rows cannot be, so a script
sees that bytes are lost); else 6 when a named row is not in S3 (as ``presign`` of a DB
row); else 0 (restored, or already present). Raised before anything is written: an
unversioned bucket, or a store without the versioning API, NotFoundError (4) saying the
bucket is not versioned; a missing bucket NotFoundError (4); S3 unreachable
BackendUnavailableError (8).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from apstorage.errors import ApStorageError, BackendUnavailableError, NotFoundError, UsageError
from apstorage.model import Location, parse_owner_ids

if TYPE_CHECKING:
    from apstorage.catalog.restore import S3Row
    from apstorage.services.context import Storage
    from apstorage.stores.s3 import S3Store
    from apstorage.stores.s3_versions import ObjectVersion

RESTORED = "restored"
WOULD_RESTORE = "wouldRestore"
PRESENT = "alreadyPresent"
NOT_RESTORABLE = "notRestorable"
FAILED = "failed"
NOT_FOUND = "notFound"
NOT_S3 = "notS3"

BATCH = 200  # keys per version listing
KEPT = 1000  # rows kept in the report per run (the counts are always whole)
NOT_S3_REASON = "restore applies to S3 rows only (versions live in a versioned bucket)"


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore: the ``ids`` named, or every S3 row (``all_missing``), optionally
    only of some projects or platforms."""

    ids: tuple[str, ...] = ()
    all_missing: bool = False
    project_ids: tuple[str, ...] = ()
    platform_ids: tuple[str, ...] = ()

    @classmethod
    def from_flags(
        cls,
        ids: Iterable[str] | None,
        all_missing: bool,
        projects: Iterable[str] | None = None,
        platforms: Iterable[str] | None = None,
    ) -> "RestoreRequest":
        """Validate command-line values: exactly one of ``ID...`` and ``--all-missing``;
        ``--project`` / ``--platform`` only with ``--all-missing``, each id checked as
        ``du --project`` checks it. UsageError (exit 2) naming the flags."""
        ids = tuple(dict.fromkeys(ids or ()))
        if bool(ids) == bool(all_missing):
            raise UsageError(
                "give file ids (restore ID...) or --all-missing, exactly one of the two"
                + (" (not both)" if ids else "")
            )
        project_ids = parse_owner_ids(projects, "--project")
        platform_ids = parse_owner_ids(platforms, "--platform")
        if (project_ids or platform_ids) and not all_missing:
            raise UsageError("--project and --platform choose rows for --all-missing; named ids are restored as given")
        for file_id in ids:
            if not file_id:
                raise UsageError("ID: an empty file id")
        return cls(ids, bool(all_missing), project_ids, platform_ids)


@dataclass
class RowResult:
    """One row's outcome. ``size``: the row's recorded size (bytes, None when unknown);
    ``bytes``: the size of the version restored (or that would be); ``version_id``: the
    version restored from; ``new_version_id`` / ``etag``: of the copy, as the store
    answered; ``proof``: what was compared (``size+etag`` or ``size+copyEtag``);
    ``reason``: why the row was not restored, in words shared by every row it hit (a
    report groups by it); ``detail``: what is this row's own (sizes, ETags, versions)."""

    id: str
    status: str
    type: str | None = None
    location: str | None = None
    key: str | None = None
    size: int | None = None
    version_id: str | None = None
    bytes: int | None = None
    etag: str | None = None
    new_version_id: str | None = None
    proof: str | None = None
    reason: str | None = None
    detail: str | None = None  # this row's own words beside the shared reason

    def to_json(self) -> dict:
        return {
            "id": self.id, "status": self.status, "type": self.type, "location": self.location,
            "key": self.key, "size": self.size, "versionId": self.version_id, "bytes": self.bytes,
            "etag": self.etag, "newVersionId": self.new_version_id, "proof": self.proof,
            "reason": self.reason, "detail": self.detail,
        }


@dataclass
class RestoreReport:
    """What a run did. ``counts``: rows per status; ``rows``: the rows (up to ``KEPT``;
    with ``all_missing`` the rows already present are counted, not listed);
    ``bytes_restored``: bytes of the versions copied back (or that would be, dry run),
    a version several rows share (one key) counted once: one copy brings them all back."""

    dry_run: bool
    all_missing: bool
    bucket: str = ""
    versioning: dict | None = None
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[RowResult] = field(default_factory=list)
    bytes_restored: int = 0
    checked: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _copied: set = field(default_factory=set, repr=False)  # (key, version id) counted in bytes_restored

    def add(self, result: RowResult) -> None:
        with self._lock:
            self.counts[result.status] = self.counts.get(result.status, 0) + 1
            if result.status in (RESTORED, WOULD_RESTORE) and (result.key, result.version_id) not in self._copied:
                self._copied.add((result.key, result.version_id))
                self.bytes_restored += result.bytes or 0
            if result.status == PRESENT and self.all_missing:
                return
            if len(self.rows) < KEPT:
                self.rows.append(result)

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def restored(self) -> int:
        """Rows restored (with ``dry_run``: that would be)."""
        return self.count(WOULD_RESTORE if self.dry_run else RESTORED)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """1 failures; 4 not found / not restorable; 6 not an S3 row; else 0."""
        if self.count(FAILED):
            return 1
        if self.count(NOT_FOUND) or self.count(NOT_RESTORABLE):
            return 4
        if self.count(NOT_S3):
            return 6
        return 0

    def of(self, status: str) -> list[RowResult]:
        return [r for r in self.rows if r.status == status]

    def to_json(self) -> dict:
        return {
            "restored": self.restored,
            "bytesRestored": self.bytes_restored,
            "failed": self.count(FAILED),
            "notRestorable": self.count(NOT_RESTORABLE),
            "alreadyPresent": self.count(PRESENT),
            "notFound": self.count(NOT_FOUND),
            "notS3": self.count(NOT_S3),
            "checked": self.checked,
            "allMissing": self.all_missing,
            "dryRun": self.dry_run,
            "bucket": self.bucket,
            "versioning": self.versioning,
            "rows": [r.to_json() for r in self.rows],
            "rowsTruncated": len(self.rows) < self.total - (self.count(PRESENT) if self.all_missing else 0),
            "exitCode": self.exit_code,
            "seconds": round(self.seconds, 3),
        }


def restore(
    storage: "Storage",
    request: RestoreRequest,
    *,
    dry_run: bool = False,
    workers: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Restore the rows ``request`` names (module docstring: which version, the proof,
    statuses, exit codes). ``workers``: batches of keys handled at once, each a version
    listing then, per restorable key, a CopyObject and a HeadObject. ``on_progress(n)``:
    called with the number of rows judged, from the calling thread.

    Raises NotFoundError (exit 4) when the bucket is not versioned (nothing written),
    when the bucket does not exist; BackendUnavailableError (8) when S3 or the catalog
    cannot be reached; ConfigError (3) when S3 is not configured."""
    started = time.monotonic()
    report = RestoreReport(dry_run=dry_run, all_missing=request.all_missing)
    catalog = storage.catalog
    named: list["S3Row"] = []
    if not request.all_missing:
        from apstorage.catalog.restore import S3Row

        for file_id in request.ids:
            try:
                row = catalog.get(file_id)
            except NotFoundError as exc:
                report.add(RowResult(file_id, NOT_FOUND, reason=exc.message))
                continue
            if row.location is not Location.S3:
                report.add(RowResult(row.id, NOT_S3, type=row.type, location=row.location.value,
                                     size=row.size, reason=NOT_S3_REASON))
                continue
            named.append(S3Row(row.id, row.type, row.key, row.size))
        report.checked = len(request.ids)
        if not named:
            report.seconds = time.monotonic() - started
            return report
    store: "S3Store" = storage.store(Location.S3)  # type: ignore[assignment]
    report.bucket = store.bucket
    versioning = storage.versioning()
    report.versioning = versioning.to_json()
    if not versioning.may_keep_versions:
        why = versioning.note or ("its versioning is not enabled: GetBucketVersioning shows no state "
                                  "(never enabled, or a store without versioning)")
        raise NotFoundError(
            f"S3 bucket {store.bucket!r} is not versioned ({why}): there is no version to restore from; nothing was written",
            hint="restore brings back objects deleted from a bucket with versioning Enabled (or Suspended)",
        )
    if request.all_missing:
        from apstorage.catalog.restore import iter_s3_pages

        pages: Iterable[Sequence["S3Row"]] = iter_s3_pages(
            catalog, project_ids=request.project_ids, platform_ids=request.platform_ids, page=BATCH
        )
    else:
        pages = [named[i : i + BATCH] for i in range(0, len(named), BATCH)]
    _run(store, report, pages, dry_run=dry_run, workers=workers, on_progress=on_progress)
    report.seconds = time.monotonic() - started
    return report


def _run(store: "S3Store", report: RestoreReport, pages: Iterable[Sequence["S3Row"]], *, dry_run: bool,
         workers: int, on_progress: Callable[[int], None] | None) -> None:
    """The pages, ``workers`` at a time (at most twice that many queued: memory stays
    flat); the first BackendUnavailableError stops the run and is raised."""
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
        pending: set[Future] = set()

        def drain(limit: int) -> None:
            nonlocal pending
            while len(pending) > limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    n = future.result()  # raises what the batch raised (exit 8)
                    if report.all_missing:
                        report.checked += n
                    if on_progress is not None:
                        on_progress(n)

        try:
            for page in pages:
                if page:
                    pending.add(pool.submit(_batch, store, report, list(page), dry_run))
                drain(2 * workers)
            drain(0)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _batch(store: "S3Store", report: RestoreReport, rows: list["S3Row"], dry_run: bool) -> int:
    """Worker thread: judge and restore one page of rows; returns how many it judged."""
    from apstorage.stores import s3_versions as V

    by_key: dict[str, list["S3Row"]] = {}
    for row in rows:
        if not row.key:
            report.add(RowResult(row.id, NOT_RESTORABLE, type=row.type, location="S3", size=row.size,
                                 reason="the row has no s3Key and no owner: no object key to restore"))
            continue
        by_key.setdefault(row.key, []).append(row)
    if not by_key:
        return len(rows)
    try:
        listing = V.versions_of(store, list(by_key))
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        # Without the listing, a HEAD still tells the rows whose object is there (nothing
        # to restore) from the ones that cannot be judged.
        for key, group in by_key.items():
            try:
                present = V.head_version(store, key) is not None
            except BackendUnavailableError:
                raise
            except ApStorageError:
                present = False
            for row in group:
                report.add(_result(row, PRESENT) if present
                           else _result(row, FAILED, reason=f"versions could not be listed: {exc}"))
        return len(rows)
    for key, group in by_key.items():
        entries = listing.get(key, [])
        first = group[0]
        outcome = _one_key(store, key, first, entries, dry_run)
        for row in group:
            report.add(_result(row, outcome.status, like=outcome))
    return len(rows)


def _one_key(store: "S3Store", key: str, row: "S3Row", entries: list["ObjectVersion"], dry_run: bool) -> RowResult:
    """The outcome for ``key`` (the rows sharing it share it): present, not restorable,
    would be / was restored and proven, or failed."""
    from apstorage.stores import s3_versions as V
    from apstorage.stores.s3 import _xml_unsafe

    if entries and entries[0].is_latest and not entries[0].delete_marker:
        return _result(row, PRESENT)
    try:
        head = V.head_version(store, key)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        return _result(row, FAILED, reason=f"HeadObject failed: {exc}")
    if head is not None:  # the listing did not show it current (a store renaming the key there)
        return _result(row, PRESENT)
    versions = [e for e in entries if not e.delete_marker]
    if not versions:
        if not entries and _xml_unsafe(key):
            reason = ("the store's version listing does not show this key (it has a control character); "
                      "its versions cannot be told apart")
        elif entries:
            reason = f"no version to restore from: the key has only delete markers ({len(entries)})"
        else:
            reason = "no version to restore from: the key has no version and no delete marker"
        return _result(row, NOT_RESTORABLE, reason=reason)
    from apstorage.services.versions import restore_source

    source = restore_source(versions, row.size)
    if source is None:
        sizes = ", ".join(f"{v.size:,}" for v in versions[:5])
        return _result(row, NOT_RESTORABLE, reason=(
            f"no version has the row's size ({row.size:,} bytes; the key's versions have {sizes} bytes): "
            "restoring one would give the row bytes that are not its own"))
    if dry_run:
        return _result(row, WOULD_RESTORE, version_id=source.version_id, bytes=source.size, etag=source.etag)
    new_version, copy_etag, refused = V.restore_version(store, key, source.version_id)
    done = dict(version_id=source.version_id, bytes=source.size)
    if refused is not None:
        return _result(row, FAILED, reason=refused, **done)
    try:
        after = V.head_version(store, key)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        return _result(row, FAILED, reason=f"proof failed: HeadObject after the copy failed ({exc})",
                       new_version_id=new_version, **done)
    reason, proof, detail = _prove(source, after, new_version, copy_etag)
    if reason is not None:
        detail = "; ".join(d for d in (detail, _undo(store, key, new_version, entries, source)) if d)
        return _result(row, FAILED, reason=reason, detail=detail, new_version_id=new_version,
                       etag=after and after["etag"], proof=proof, **done)
    return _result(row, RESTORED, new_version_id=(after or {}).get("versionId") or new_version,
                   etag=after["etag"] if after else None, proof=proof, **done)


def _undo(store: "S3Store", key: str, new_version: str | None, before: list["ObjectVersion"],
          source: "ObjectVersion") -> str:
    """After a proof that failed: delete the copy again, so the key is as it was (its
    delete marker current) and a later run tries again. The copy is the version the
    CopyObject answer named, and any version of the source's size the key gained since
    this run listed it (SeaweedFS 4.x has been seen to keep a second one); the versions
    listed before the copy, the source among them, are never touched. A ``null`` version
    (a Suspended bucket) is left: deleting it could bring back another version than the
    one asked for. Returns what the row's detail adds, as a HEAD shows the key after."""
    from apstorage.stores import s3_versions as V

    if not new_version or new_version == "null":
        return "the copy stays as the current object"
    known = {e.version_id for e in before}
    doomed = [(key, new_version)]
    try:
        doomed += [(key, e.version_id) for e in V.versions_of(store, [key])[key]
                   if e.version_id not in known and e.version_id not in ("null", new_version)
                   and not e.delete_marker and e.size == source.size]
    except BackendUnavailableError:
        raise
    except ApStorageError:
        pass  # the one the answer named is still deleted
    refused = V.delete_versions(store, doomed)
    if refused:
        return f"the copy stays: its delete was refused ({next(iter(refused.values()))})"
    head = V.head_version(store, key)
    if head is not None:
        return f"the key still has a current object (version {head.get('versionId')}) after the copy was deleted"
    return f"the copy (version {new_version}) was deleted again: the key is as it was"


def _prove(source: "ObjectVersion", head: dict | None, new_version: str | None,
           copy_etag: str | None) -> tuple[str | None, str, str]:
    """(None, what was compared, "") when ``head`` (the key's HEAD after the copy) shows
    the version's bytes, else (the reason, what was compared, the row's own detail). The
    reasons are the same words for every row they hit, so a report groups them."""
    multipart = bool(source.etag) and "-" in source.etag  # type: ignore[operator]
    proof = "size+copyEtag" if multipart or not source.etag else "size+etag"
    if head is None:
        return "proof failed: the key has no current object after CopyObject answered success", proof, ""
    if head["size"] != source.size:
        return ("proof failed: the restored object's size is not the version's", proof,
                f"HEAD shows {head['size']:,} bytes, version {source.version_id} has {source.size:,}")
    expected = copy_etag if proof == "size+copyEtag" else source.etag
    if expected and head["etag"] != expected:
        whose = "the copy's (as CopyObject answered)" if proof == "size+copyEtag" else f"version {source.version_id}'s"
        return ("proof failed: the restored object's ETag is not the version's", proof,
                f"HEAD shows {head['etag']!r}, {whose} is {expected!r}")
    if not expected:
        proof = "size"
    if not expected and new_version and head.get("versionId") and head["versionId"] != new_version:
        return ("proof failed: the current version is not the copy (another write to the key?)", proof,
                f"HEAD shows version {head['versionId']!r}, the copy is {new_version!r}")
    return None, proof, ""


def _result(row: "S3Row", status: str, *, like: RowResult | None = None, **values) -> RowResult:
    if like is not None:
        values = {k: getattr(like, k) for k in ("version_id", "bytes", "etag", "new_version_id", "proof", "reason", "detail")}
    return RowResult(row.id, status, type=row.type, location="S3", key=row.key, size=row.size, **values)


__all__ = [
    "FAILED", "NOT_FOUND", "NOT_RESTORABLE", "NOT_S3", "PRESENT", "RESTORED", "WOULD_RESTORE",
    "RestoreReport", "RestoreRequest", "RowResult", "restore",
]
