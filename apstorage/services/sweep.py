"""`sweep-expired`: delete expired execution data, bytes first, then exactly the rows whose
bytes are gone.

What expires (DESIGN §1, as the platform computes it): rows of the six expiring types
(``model.EXPIRING_TYPES``; never ``FLOW_BUNDLE``, never permanent types) created longer ago
than their project's effective retention: the project's own ``executionDataRetentionDays``
clamped to [``AP_PAUSED_FLOW_TIMEOUT_DAYS``, ``AP_EXECUTION_DATA_RETENTION_DAYS``] when the
platform's ``project`` table has that column and the project sets it, else the global.

Order of work, one batch at a time:

1. select up to ``batch_size`` expired rows of one execution type by keyset pages on
   (``created``, ``id``) — the (``type``, ``created``) index serves it;
2. keep the bytes another row still references: for keys more than one row holds, one
   transaction finds those referenced outside the batch and deletes the batch's rows at
   them without touching the bytes (likewise a LOCAL file a symbolic link under the root
   reaches); ``_keep_shared_bytes``;
3. delete the other bytes: S3 objects by DeleteObjects (``AP_S3_DELETE_BATCH_SIZE`` keys per
   request), LOCAL files one by one; DB rows carry their bytes and need nothing;
4. delete, in one short transaction, the rows whose bytes are gone. A key the store
   refused keeps its row and is reported. A missing object counts as deleted.

On a versioned S3 bucket (asked once per run, when the run meets its first S3 row;
``services.versions``) a plain delete only adds a delete marker: the run deletes as
above, lists the keys' versions first and reports, as ``bytes_retained``, the bytes that
stay as noncurrent versions. With ``purge_versions`` it deletes every version and delete
marker of each key instead (never of a key another row references: step 2 keeps those),
and a row is deleted only once none of its key's versions is left; ``bytes`` then counts
the bytes of every version deleted (delete markers hold none). A version the store
refuses (Object Lock, a legal hold, a missing permission) keeps its row and is reported.
A kill -9 between a key's last version delete and its row's delete leaves that expired
row with no bytes; the next run deletes it (a key with no version left counts as
deleted), as it does an expired row whose object is gone on an unversioned bucket.

A batch that failed as a whole is split in halves and retried, so one bad key cannot
keep a thousand rows alive; when both halves fail entirely the failure is not about a
key (permissions, a bucket gone) and the batch gives up. After ``BROKEN_AFTER`` such
batches in a row a location is left alone for the rest of the run (its rows are kept and
reported) instead of hammering a store that refuses everything.

Byte deletes of several batches run concurrently (``workers``) while the main thread
selects the next page and deletes rows; nothing holds more than ``workers`` batches, so
memory stays flat whatever the table size.

Several runs at once (DESIGN: one catalog, many hosts). On Postgres there is no run lock:
each page is *claimed* — selected ``FOR UPDATE SKIP LOCKED`` (``catalog.sweep.claim_expired``)
in a transaction on a connection of its own (a *lane*), which stays open while the page's
bytes are deleted and then its rows, and commits after. Rows another run holds are passed
over, so N runs (on one host or many) each delete a disjoint part and each reports only
what it deleted; a row is deleted only by the run that deleted its bytes. A run killed
mid-batch (kill -9, a host lost) loses its connections, Postgres rolls its open claims
back, and their rows are claimable again by the next run — those whose bytes it had
already deleted are then expired rows with no bytes, deleted as such (a missing object
counts as deleted). A claim covers ``ceil(workers / MAX_LANES)`` batches (``workers``
with ``purge_versions``, regrouped by key, see ``_split``), so a run holds at most about
``MAX_LANES`` connections besides its own. SQLite runs one sweep at a time (a lock file
beside the database); a second one returns at once with ``lock_held``.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator

from apstorage.catalog import sweep as sql
from apstorage.catalog.sweep import ExpiredRow
from apstorage.errors import ApStorageError, BackendUnavailableError, UsageError
from apstorage.model import (
    EXPIRING_TYPES,
    FLOW_BUNDLE,
    PERMANENT_TYPES,
    Location,
    effective_retention_days,
    iso_utc,
    object_key,
    parse_type,
    retention_race_warning,
)
from apstorage.services.context import Storage
from apstorage.stores.base import Store

DEFAULT_BATCH_SIZE = 1000
DEFAULT_WORKERS = 8
# A batch's S3 keys go as up to S3_PARTS DeleteObjects at once (each at least MIN_PART keys):
# a store works through one request's keys one after another (SeaweedFS: a filer delete
# each), so 1,000 keys in eight requests come back sooner, while the
# catalog still deletes the batch's rows in one statement (SQLite commits per batch: 100-row
# batches made a 30,000-row DB sweep 5.6 s instead of 1.8 s). bench/sweep.py measures it.
S3_PARTS = 8
MIN_PART = 100
FAILURES_KEPT = 100  # failures listed in the report; the count covers them all
BROKEN_AFTER = 3  # batches in a row refused entirely before a location is left alone
PROJECT_PAGE = 500
MAX_LANES = 8  # Postgres: claims (each a connection and an open transaction) per run at once


@dataclass(frozen=True)
class Failure:
    id: str
    type: str
    location: str
    key: str | None
    reason: str

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "location": self.location,
            "key": self.key,
            "reason": self.reason,
        }


@dataclass
class SweepReport:
    dry_run: bool
    retention_days: int
    cutoff: datetime
    types: list[str]
    deleted: int = 0
    bytes: int = 0
    failed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    lock_held: bool = False
    max_delete_reached: bool = False
    project_retention: bool = False
    projects_with_shorter_retention: int = 0
    pause_timeout_days: int = 0
    abandoned_locations: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    by_location: dict[str, int] = field(default_factory=dict)
    bytes_by_location: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False  # stopped early by ``stop``; the rest is left for the next run
    purge_versions: bool = False
    versioning: dict | None = None  # Versioning.to_json(), when the run asked (it met S3 rows)
    versioned: bool = False
    bytes_retained: int = 0  # bytes the deleted keys keep as noncurrent versions
    versions_deleted: int = 0  # with purge_versions: versions (with bytes) deleted
    markers_deleted: int = 0  # with purge_versions: delete markers deleted
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for t in self.types:
            self.by_type.setdefault(t, 0)
            self.bytes_by_type.setdefault(t, 0)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def count(self, file_type: str, size: int | None, location: str | None = None) -> None:
        self.deleted += 1
        self.bytes += size or 0
        self.by_type[file_type] = self.by_type.get(file_type, 0) + 1
        self.bytes_by_type[file_type] = self.bytes_by_type.get(file_type, 0) + (size or 0)
        if location is not None:
            self.by_location[location] = self.by_location.get(location, 0) + 1
            self.bytes_by_location[location] = self.bytes_by_location.get(location, 0) + (size or 0)

    def fail(self, row: ExpiredRow, file_type: str, key: str | None, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(Failure(row.id, file_type, row.location, key, reason))

    def to_json(self) -> dict:
        return {
            "deleted": self.deleted,
            "bytes": self.bytes,
            "failed": self.failed,
            "byType": dict(self.by_type),
            "bytesByType": dict(self.bytes_by_type),
            "byLocation": dict(self.by_location),
            "bytesByLocation": dict(self.bytes_by_location),
            "interrupted": self.interrupted,
            "dryRun": self.dry_run,
            "lockHeld": self.lock_held,
            "maxDeleteReached": self.max_delete_reached,
            "retentionDays": self.retention_days,
            "cutoff": iso_utc(self.cutoff),
            "projectRetention": self.project_retention,
            "projectsWithShorterRetention": self.projects_with_shorter_retention,
            "pausedFlowTimeoutDays": self.pause_timeout_days,
            "warnings": list(self.warnings),
            "abandonedLocations": dict(self.abandoned_locations),
            "failures": [f.to_json() for f in self.failures],
            "purgeVersions": self.purge_versions,
            "versioning": self.versioning,
            "versioned": self.versioned,
            "bytesRetained": self.bytes_retained,
            "versionsDeleted": self.versions_deleted,
            "deleteMarkersDeleted": self.markers_deleted,
            "notes": list(self.notes),
        }


def resolve_types(values: Iterable[str] | None) -> list[str]:
    """The expiring types to sweep (all by default). A permanent type or ``FLOW_BUNDLE``
    is refused (exit 2): the platform never expires either by age."""
    names = [v for v in (values or []) if v.strip()]
    if not names:
        return sorted(EXPIRING_TYPES)
    out: list[str] = []
    expiring = ", ".join(sorted(EXPIRING_TYPES))
    for value in names:
        name = parse_type(value, "--types")
        if name in PERMANENT_TYPES:
            raise UsageError(
                f"--types: {name} is permanent data and is never swept; "
                f"execution-data types: {expiring}"
            )
        if name == FLOW_BUNDLE:
            raise UsageError(
                f"--types: {name} is never swept: the platform removes a flow bundle with its "
                f"flow version, never by age; execution-data types: {expiring}"
            )
        if name not in out:
            out.append(name)
    return out


def sweep_expired(
    storage: Storage,
    *,
    retention_days: int | None = None,
    types: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_delete: int | None = None,
    dry_run: bool = False,
    workers: int = DEFAULT_WORKERS,
    now: datetime | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    stop: threading.Event | None = None,
    purge_versions: bool = False,
) -> SweepReport:
    """Delete (or, with ``dry_run``, count) expired execution data. ``on_batch(deleted,
    failed, bytes)`` is called after each batch (for a progress bar). When ``stop`` is
    set (the CLI sets it on SIGINT/SIGTERM) no new page is selected: the batches in
    flight finish — bytes deleted, then their rows — and the report says ``interrupted``.

    ``purge_versions``: on a versioned bucket, delete every version and delete marker of
    the swept keys (see the module docstring); with ``dry_run`` the versions are listed
    (read-only) and ``bytes`` counts what would be freed. On an unversioned bucket it
    changes nothing and the report's notes say so once."""
    report, now = _new_report(storage, retention_days, types, dry_run, now)
    report.purge_versions = purge_versions
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if max_delete is not None and max_delete < 1:
        raise UsageError("--max-delete must be at least 1")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    catalog = storage.catalog
    shared = sql.sweep_is_shared(catalog)  # Postgres: runs share the work by claims
    lock = None if dry_run or shared else sql.try_sweep_lock(catalog)
    if not dry_run and not shared and lock is None:
        report.lock_held = True
        return report
    try:
        sweeper = _Sweeper(storage, report, workers=workers, on_batch=on_batch, stop=stop,
                           claims=shared and not dry_run)
        sweeper.run(now, batch_size, max_delete)
    finally:
        if lock is not None:
            lock.release()
    return report


def count_expired(
    storage: Storage,
    *,
    retention_days: int | None = None,
    types: Iterable[str] | None = None,
    max_delete: int | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """(files, bytes) a run with these options would delete — a progress bar's total.
    One count per scope the sweep pages through (each type, and each project with a
    shorter retention of its own), by the same indexes."""
    report, now = _new_report(storage, retention_days, types, True, now)
    files = size = 0
    for _, stored, cutoff, scope in _scopes(storage, report, now):
        f, b = sql.count_expired(storage.catalog, stored, cutoff, **scope)
        files, size = files + f, size + b
    if max_delete is not None:
        files = min(files, max_delete)
    return files, size


def _new_report(
    storage: Storage, retention_days, types, dry_run: bool, now: datetime | None
) -> tuple[SweepReport, datetime]:
    """(the run's report, its "now"): types and retention checked, the cutoff worked out,
    the retention race warned about."""
    sweep_types = resolve_types(types)
    days = storage.settings.execution_data_retention_days if retention_days is None else retention_days
    if days < 1:
        raise UsageError("--retention-days must be at least 1")
    now = now or datetime.now(timezone.utc)
    pause = storage.settings.paused_flow_timeout_days
    report = SweepReport(
        dry_run=dry_run, retention_days=days, cutoff=now - timedelta(days=days), types=sweep_types,
        pause_timeout_days=pause,
    )
    name = "AP_EXECUTION_DATA_RETENTION_DAYS" if retention_days is None else "--retention-days"
    warning = retention_race_warning(days, pause, name)
    if warning:
        report.warnings.append(warning)
    return report, now


# -- selection -------------------------------------------------------------------------------


def _scopes(storage: Storage, report: SweepReport, now: datetime) -> Iterator[tuple[str, str, datetime, dict]]:
    """(type, stored type name, cutoff, project scope): first every row older than the
    retention, type by type; then, for each project whose effective retention
    (``model.effective_retention_days``: its own value clamped to [pause timeout,
    retention]) is shorter, the younger rows that project no longer keeps (by the
    (projectId, type, created) index)."""
    catalog = storage.catalog
    for file_type in report.types:
        for stored in sql.stored_type_names(file_type):
            yield file_type, stored, report.cutoff, {}
    if not sql.has_project_retention(catalog):
        return
    report.project_retention = True
    if report.pause_timeout_days >= report.retention_days:
        return  # the clamp's floor is the ceiling: no project keeps less than the retention
    after = ""
    while True:
        projects = sql.projects_below(catalog, report.retention_days, after=after, limit=PROJECT_PAGE)
        for project_id, own_days in projects:
            days = effective_retention_days(own_days, report.retention_days, report.pause_timeout_days)
            if days >= report.retention_days:
                continue
            report.projects_with_shorter_retention += 1
            cutoff = now - timedelta(days=days)
            for file_type in report.types:
                for stored in sql.stored_type_names(file_type):
                    yield file_type, stored, cutoff, {"project_id": project_id, "not_before": report.cutoff}
        if len(projects) < PROJECT_PAGE:
            return
        after = projects[-1][0]


# -- deleting --------------------------------------------------------------------------------


@dataclass
class _Batch:
    file_type: str
    db_rows: list[ExpiredRow] = field(default_factory=list)
    # location -> key -> rows (normally one row per key)
    objects: dict[Location, dict[str, list[ExpiredRow]]] = field(default_factory=dict)
    stores: dict[Location, Store] = field(default_factory=dict)
    # S3 on a versioned bucket (services.versions): "plain" (unversioned), "retain" (plain
    # deletes, the versions that stay counted) or "purge" (every version deleted)
    s3_mode: str = "plain"
    versioning: object = None
    freed: dict[str, int] | None = None  # purge: key -> bytes of the versions deleted
    retained: dict[str, int] | None = None  # retain: key -> bytes left as noncurrent versions
    notes: list[str] | None = None  # the report's notes (a listing that failed says so there)
    versions_deleted: int = 0
    markers_deleted: int = 0
    claim: "_Claim | None" = None
    requests: ThreadPoolExecutor | None = None  # where a batch's S3 parts are sent (S3_PARTS)


@dataclass(eq=False)
class _Claim:
    """The rows of one page and the transaction that holds them.

    Postgres (``lane`` set): a lane's open transaction (``cm``, its cursor ``cur``) in which
    the page was claimed ``FOR UPDATE SKIP LOCKED`` and its rows are deleted; it commits
    once each of its ``batches`` is finished, and only then are those deletes counted
    (``pending``). SQLite and dry runs: nothing held (``cur`` None, each delete its own
    short transaction)."""

    catalog: object
    lane: object = None
    cm: object = None
    cur: object = None
    rows: list[ExpiredRow] = field(default_factory=list)
    batches: int = 0  # batches holding its rows, not finished
    # (type, bytes, location, bytes retained) per row deleted, counted at commit
    pending: list[tuple[str, int | None, str, int]] = field(default_factory=list)


class _Sweeper:
    def __init__(
        self,
        storage: Storage,
        report: SweepReport,
        *,
        workers: int,
        on_batch: Callable[[int, int, int], None] | None,
        stop: threading.Event | None = None,
        claims: bool = False,
    ) -> None:
        self.storage = storage
        self.claims = claims  # Postgres, not a dry run: pages claimed on lanes
        self.lanes: list = []  # every lane opened (closed at the end of the run)
        self.free_lanes: list = []
        self.open_claims: list[_Claim] = []
        self.remaining: int | None = None
        self.report = report
        self.workers = workers
        self.on_batch = on_batch
        self.stop = stop
        self.refused_in_a_row: dict[Location, int] = {}
        self.shared: set[str] | None = None  # keys more than one row holds
        self.link_targets: set | None = None  # files links under the LOCAL root reach
        self.kept_for_links: set[str] = set()  # LOCAL files kept only because a link reached them
        self.kept_shared: dict[Location, set[str]] = {}  # keys kept because another row held them
        self.versioning = None  # the bucket's Versioning, asked at the first S3 row
        self.requests: ThreadPoolExecutor | None = None  # S3 parts of batches (run)

    def run(self, now: datetime, batch_size: int, max_delete: int | None) -> None:
        self.remaining = max_delete
        # Batches per page: --purge-versions regroups ``workers`` pages by key (``_split``);
        # claims on Postgres cover several batches when --workers exceeds MAX_LANES.
        per_page = self.workers if self.report.purge_versions else 1
        if self.claims and not self.report.purge_versions:
            per_page = -(-self.workers // MAX_LANES)
        pages = self._pages(now, batch_size * per_page)
        if self.report.dry_run:
            for file_type, rows, claim in pages:
                rows = self._cap(rows)
                self._end(claim)
                if not rows or self._stopped():
                    break
                for chunk in self._split(file_type, rows, batch_size):
                    chunk = self._dry_refusals(file_type, chunk)
                    sizes = self._dry_versions(file_type, chunk)
                    for row in chunk:
                        self.report.count(file_type, sizes.get(row.id, row.size), row.location)
            return
        # Batches whose bytes are being deleted; each is finished (rows deleted) as soon
        # as its own bytes are done, in whatever order that happens.
        inflight: dict[Future, _Batch] = {}
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="apstorage-sweep")
        # A batch's DeleteObjects parts (S3_PARTS), sent from workers of their own: a batch's
        # worker waits for its parts, never the other way round, so this cannot deadlock.
        self.requests = ThreadPoolExecutor(max_workers=self.workers * S3_PARTS, thread_name_prefix="apstorage-s3-part")
        self._warm_s3(pool)
        try:
            for file_type, rows, claim in pages:
                rows = self._cap(rows)
                if not rows or self._stopped():
                    self._end(claim)  # nothing done under it: the rows are released
                    break
                chunks = self._split(file_type, rows, batch_size)
                claim.batches = len(chunks)
                for chunk in chunks:
                    batch = self._plan(file_type, chunk, claim)
                    inflight[pool.submit(_delete_objects, batch)] = batch
                    while len(inflight) >= self.workers:
                        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                        for future in done:
                            self._finish(inflight.pop(future), future)
            for future in as_completed(list(inflight)):
                self._finish(inflight.pop(future), future)
            self._release_unreached()
            self._release_kept_shared()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.requests.shutdown(wait=True, cancel_futures=True)
            # Left open only by an error: roll back (the rows stay for the next run; bytes
            # already deleted leave expired rows without bytes, which it deletes).
            for claim in list(self.open_claims):
                self._end(claim, commit=False)
            for lane in self.lanes:
                lane.close()

    # -- pages and claims ----------------------------------------------------------------

    def _pages(self, now: datetime, limit: int) -> Iterator[tuple[str, list[ExpiredRow], _Claim]]:
        """(type, rows, claim) pages by keyset on (``created``, ``id``), scope by scope
        (``_scopes``). Each page is claimed on a lane when ``claims`` (rows other runs hold
        are passed over), else selected. Once ``--max-delete`` is spent, one unlocked row is
        read to learn whether more remain (``_cap`` then says so)."""
        catalog = self.storage.catalog
        for file_type, stored, cutoff, scope in _scopes(self.storage, self.report, now):
            after = None
            while True:
                room = limit
                if self.remaining is not None:
                    room = min(limit, self.remaining)
                if room <= 0:
                    rows = sql.select_expired(catalog, stored, cutoff, limit=1, after=after, **scope)
                    if rows:
                        yield file_type, rows, _Claim(catalog)
                    break
                claim = self._claim(stored, cutoff, room, after, scope)
                rows = claim.rows
                if rows:
                    yield file_type, rows, claim
                else:
                    self._end(claim)
                if len(rows) < room:
                    break
                after = (rows[-1].created, rows[-1].id)

    def _claim(self, stored: str, cutoff: datetime, limit: int, after, scope: dict) -> _Claim:
        catalog = self.storage.catalog
        if not self.claims:
            claim = _Claim(catalog)
            claim.rows = sql.select_expired(catalog, stored, cutoff, limit=limit, after=after, **scope)
            return claim
        lane = self.free_lanes.pop() if self.free_lanes else None
        if lane is None:
            lane = sql.open_claim_lane(catalog)
            self.lanes.append(lane)
        cm = lane.transaction()
        claim = _Claim(lane, lane=lane, cm=cm, cur=cm.__enter__())
        self.open_claims.append(claim)
        try:
            claim.rows = sql.claim_expired(claim.cur, lane, stored, cutoff, limit=limit, after=after, **scope)
        except BaseException:
            self._end(claim, commit=False)
            raise
        return claim

    def _end(self, claim: _Claim, *, commit: bool = True) -> None:
        """Commit (or roll back) a claim's transaction and give its lane back; once
        committed, count the rows it deleted. A commit that fails raises (the rows stay,
        uncounted); a rollback never does."""
        if claim in self.open_claims:
            self.open_claims.remove(claim)
        cm, claim.cm = claim.cm, None
        if cm is not None:
            try:
                if commit:
                    cm.__exit__(None, None, None)  # type: ignore[attr-defined]
                else:
                    rollback = _Rollback()
                    try:
                        cm.__exit__(_Rollback, rollback, None)  # type: ignore[attr-defined]
                    except Exception:  # a broken connection: Postgres drops the transaction
                        claim.lane.close()  # type: ignore[attr-defined]
                        return
            except BaseException:
                claim.lane.close()  # type: ignore[attr-defined]
                raise
            self.free_lanes.append(claim.lane)
        if not commit or not claim.pending:
            return
        report = self.report
        deleted_before, bytes_before = report.deleted, report.bytes
        for file_type, size, location, retained in claim.pending:
            report.count(file_type, size, location)
            report.bytes_retained += retained
        claim.pending.clear()
        if self.on_batch is not None:
            self.on_batch(report.deleted - deleted_before, 0, report.bytes - bytes_before)

    def _release_unreached(self) -> None:
        """After the last batch: a LOCAL file this run kept only because a link reached it
        (its row deleted), whose link then went with its own row in this same run, is reached
        by nothing and held by no row any more: it is deleted, so the run leaves no orphan
        behind. One more walk of the root (``link_targets``), and only when such files were
        kept; a file some link still reaches, or a row holds (looked up by id, and the keys
        several rows held when the run began), stays."""
        if not self.kept_for_links or self.report.interrupted:
            return
        from apstorage.catalog import refs

        try:
            local = self._store(Location.LOCAL)
            targets = local.link_targets()
        except ApStorageError:
            return
        loose = [k for k in sorted(self.kept_for_links)
                 if k not in (self.shared or ()) and not local.reached_by_link(k, targets)]
        if not loose:
            return
        held = refs.rows_referencing(None, self.storage.catalog, loose, locations=(Location.LOCAL.value,),
                                     by_id_only=True)
        gone = []
        for key in loose:
            if key in held:
                continue
            try:
                local.delete(key)
            except ApStorageError:
                continue  # left for gc --orphans, which reports what it cannot delete
            gone.append(key)
        local.prune_empty_dirs(gone)

    def _release_kept_shared(self) -> None:
        """After the last batch, every claim committed: the bytes of a key kept because
        another row held it, when no row holds it any more, are deleted. Two expired rows of
        one key in two batches (on Postgres two claims open at once) each see the other
        still there and keep the bytes; once both are committed, nothing references the key,
        and leaving it would be an orphan the run itself made. A key some row (or a link
        under the LOCAL root) still holds stays; a delete that fails leaves it to
        ``gc --orphans``. Not after an interrupt or an error (the next run, or gc, sees
        it)."""
        if not self.kept_shared or self.report.interrupted:
            return
        from apstorage.catalog import refs

        for location, keys in self.kept_shared.items():
            held = refs.rows_referencing(None, self.storage.catalog, sorted(keys), locations=(location.value,))
            loose = [k for k in sorted(keys) if k not in held]
            if location is Location.LOCAL:
                loose = [k for k in loose if not self._reached_by_link(k)]
            if not loose:
                continue
            try:
                store = self._store(location)
                if location is Location.S3 and self._s3_mode() == "purge":
                    from apstorage.services.versions import purge_keys

                    purge_keys(store, loose)  # type: ignore[arg-type]
                else:
                    delete_keys(store, loose, split=location is Location.S3)
            except ApStorageError:
                continue  # left for gc --orphans
            if location is Location.LOCAL:
                store.prune_empty_dirs(loose)  # type: ignore[attr-defined]

    def _split(self, file_type: str, rows: list[ExpiredRow], size: int) -> list[list[ExpiredRow]]:
        """A page as batches of ``size`` rows. --purge-versions on a versioned bucket
        (a page then holds ``workers`` batches' worth) sorts the page by key first, so each
        batch holds few folders: listing the versions of a batch costs a request per folder
        it touches (``versions_of``), and a page in date order spreads over every project —
        regrouped, a sweep over 200 projects lists ~25 folders per 1,000 keys instead of
        ~200. The rows are the same; only which batch holds them changes."""
        if (self.report.purge_versions and any(r.location == Location.S3.value for r in rows)
                and self._s3_mode() == "purge"):
            rows = sorted(rows, key=lambda r: (r.location, r.s3_key or "", r.id))
        return [rows[start : start + size] for start in range(0, len(rows), size)]

    def _stopped(self) -> bool:
        if self.stop is not None and self.stop.is_set():
            self.report.interrupted = True
        return self.report.interrupted

    def _warm_s3(self, pool: ThreadPoolExecutor) -> None:
        """Set up the S3 signed path the deletes use (``S3Store.fast``; on AWS itself that
        builds the botocore client, ~0.2 s) in a worker while the main thread selects the
        first page. Errors surface later, per batch."""
        if not self.storage.settings.s3_bucket:
            return
        try:
            store = self.storage.store(Location.S3)
        except ApStorageError:
            return
        pool.submit(getattr, store, "fast")
        if self.report.purge_versions:  # version deletes still go through the botocore client
            pool.submit(getattr, store, "client")

    def _cap(self, rows: list[ExpiredRow]) -> list[ExpiredRow]:
        remaining = self.remaining
        if remaining is None:
            return rows
        if remaining <= 0:
            self.report.max_delete_reached = True
            return []
        self.remaining = remaining - min(len(rows), remaining)
        return rows[:remaining]

    def _located(self, row: ExpiredRow, file_type: str, *,
                 keyed: tuple[Location, ...] = (Location.LOCAL, Location.S3)) -> tuple[Location, str | None] | None:
        """(the row's location, its object key — None at a location not in ``keyed``, DB
        among them), or None when the row is kept for it, reported as a failure: an unknown
        location, no usable key."""
        try:
            location = Location(row.location)
        except ValueError:
            self.report.fail(row, file_type, None, f"unknown location {row.location!r}; row kept")
            return None
        if location not in keyed:
            return location, None
        try:
            return location, row.s3_key or object_key(row.id, file_type, row.project_id, row.platform_id)
        except ApStorageError as exc:
            self.report.fail(row, file_type, row.s3_key, f"no usable object key: {exc}")
            return None

    def _dry_refusals(self, file_type: str, rows: list[ExpiredRow]) -> list[ExpiredRow]:
        """A dry run: the rows a real run would delete, reads only. The ones it would keep
        for a reason known before any delete — an unknown location, no usable key, a LOCAL
        key the store refuses (``Store.check_delete``: through a linked folder, leaving the
        root) — are reported as failures, as the real run reports them, and left out."""
        kept: list[ExpiredRow] = []
        for row in rows:
            located = self._located(row, file_type, keyed=(Location.LOCAL,))  # S3 keys: costly, none refused here
            if located is None:
                continue
            location, key = located
            if key is None:
                kept.append(row)
                continue
            try:
                self._store(location).check_delete(key)
            except ApStorageError as exc:
                self.report.fail(row, file_type, key, str(exc))
                continue
            kept.append(row)
        return kept

    def _plan(self, file_type: str, rows: list[ExpiredRow], claim: _Claim) -> _Batch:
        """Sort a batch by location, work out keys, open stores (main thread only)."""
        batch = _Batch(file_type, claim=claim)
        for row in rows:
            located = self._located(row, file_type)
            if located is None:
                continue
            location, key = located
            if key is None:
                batch.db_rows.append(row)
                continue
            abandoned = self.report.abandoned_locations.get(location.value)
            if abandoned:
                self.report.fail(row, file_type, key, f"not attempted: {abandoned}")
                continue
            batch.objects.setdefault(location, {}).setdefault(key, []).append(row)
        if Location.S3 in batch.objects:
            # The bucket's versioning, asked at the run's first S3 row even when every key
            # of the batch turns out held by another row: the report never says "not
            # versioned" of a bucket it did not ask about. A store that cannot be opened or
            # asked is met again below, row by row.
            try:
                self._store(Location.S3)
                self._s3_mode()
            except ApStorageError:
                pass
            abandoned = self.report.abandoned_locations.get(Location.S3.value)
            if abandoned:
                for key, key_rows in batch.objects.pop(Location.S3).items():
                    for row in key_rows:
                        self.report.fail(row, file_type, key, f"not attempted: {abandoned}")
        self._keep_shared_bytes(batch, rows)
        for location in list(batch.objects):
            try:
                batch.stores[location] = self._store(location)
            except ApStorageError as exc:
                for key, key_rows in batch.objects.pop(location).items():
                    for row in key_rows:
                        self.report.fail(row, file_type, key, str(exc))
                self.report.abandoned_locations[location.value] = str(exc)
        if Location.S3 in batch.stores:
            batch.s3_mode = self._s3_mode()
            batch.versioning = self.versioning
            batch.notes = self.report.notes
            batch.requests = self.requests
        return batch

    def _purging(self) -> bool:
        """--purge-versions on a bucket that may keep versions (asked already)."""
        return bool(self.report.purge_versions and self.versioning is not None and self.versioning.may_keep_versions)

    def _s3_mode(self) -> str:
        """How this run deletes S3 bytes: "plain", "retain" or "purge" (``_Batch``). The
        bucket's versioning state is asked once, at the run's first S3 row (main thread)."""
        from apstorage.services.versions import ask_versioning, versioning_notes

        if self.versioning is None:
            try:
                self.versioning = ask_versioning(self.storage)
            except BackendUnavailableError:
                raise  # exit 8, as on every command
            except ApStorageError as exc:
                # What fails every request (credentials the store does not accept, a missing
                # bucket): S3 is left alone for the rest of the run, its rows kept and named
                # under that one reason; DB and LOCAL rows are still swept.
                from apstorage.stores.s3_versions import Versioning

                self.report.abandoned_locations.setdefault(Location.S3.value, str(exc))
                self.versioning = Versioning("", True, "")
                return "plain"
            report = self.report
            report.versioning = self.versioning.to_json()
            report.versioned = self.versioning.may_keep_versions
            report.notes += versioning_notes(self.versioning, report.purge_versions)
        if not self.versioning.may_keep_versions:
            return "plain"
        return "purge" if self.report.purge_versions else "retain"

    def _dry_versions(self, file_type: str, rows: list[ExpiredRow]) -> dict[str, int]:
        """A dry run on a versioned bucket: list the S3 rows' versions (read-only). With
        purge_versions, {row id: bytes of all its key's versions} (what would be freed; a
        key several rows hold counts once, and a key another row references counts 0, as a
        real run deletes no bytes of it); else the retained bytes are added to the report.
        {} otherwise."""
        from apstorage.catalog import refs
        from apstorage.services.versions import retained_sizes

        # Cheap checks first: on an unversioned bucket (or none) a dry run needs no keys
        # (working them out was about a third of a dry run's CPU, profiled over 10^5 rows).
        s3 = Location.S3.value
        if s3 in self.report.abandoned_locations or not any(row.location == s3 for row in rows):
            return {}
        try:
            store = self._store(Location.S3)
        except ApStorageError:
            return {}
        mode = self._s3_mode()
        if mode == "plain":
            return {}
        by_key: dict[str, list[ExpiredRow]] = {}
        for row in rows:
            if row.location != s3:
                continue
            try:
                key = row.s3_key or object_key(row.id, file_type, row.project_id, row.platform_id)
            except ApStorageError:
                continue
            by_key.setdefault(key, []).append(row)
        if not by_key:
            return {}
        if self.shared is None:
            self.shared = refs.shared_keys(self.storage.catalog)
        # A key another row references keeps its bytes (a real run deletes the row only):
        # looked up among the keys several rows hold, leaving out this batch's own rows.
        shared = sorted(k for k in by_key if k in self.shared)
        held = set(refs.rows_referencing(None, self.storage.catalog, shared, exclude=[r.id for r in rows])) if shared else set()
        keys = sorted(k for k in by_key if k not in held)
        if mode == "retain":
            retained = retained_sizes(store, keys, self.versioning, self.report.notes)  # type: ignore[arg-type]
            for key in keys:
                self.report.bytes_retained += (retained or {}).get(key, by_key[key][0].size or 0)
            return {}
        from apstorage.stores.s3_versions import versions_of

        listing = versions_of(store, keys)  # type: ignore[arg-type]
        sizes: dict[str, int] = {}
        for key in keys:
            entries = listing.get(key, [])
            self.report.versions_deleted += sum(1 for e in entries if not e.delete_marker)
            self.report.markers_deleted += sum(1 for e in entries if e.delete_marker)
            for i, row in enumerate(by_key[key]):
                sizes[row.id] = sum(e.size for e in entries if not e.delete_marker) if i == 0 else 0
        for key in held:  # --purge-versions counts the bytes of versions deleted: none of these
            for row in by_key[key]:
                sizes[row.id] = 0
        return sizes

    def _keep_shared_bytes(self, batch: _Batch, rows: list[ExpiredRow]) -> None:
        """Bytes another row still references are never deleted: for the keys more than
        one row holds (``refs.shared_keys``, asked once per run), check in one transaction
        which are referenced outside this batch, and delete the batch's rows at those keys
        without touching their bytes. A LOCAL file a symbolic link under the root reaches
        is kept the same way (its row is deleted, the file stays). A row whose own key is a
        link owns that link: it is removed with the row (``LocalStore.delete`` unlinks it,
        never its target), even where a folder link reaches it, so no link is left that no
        row owns (``LocalStore.reached_by_link``)."""
        from apstorage.catalog import refs

        if not batch.objects:
            return
        if self.shared is None:
            self.shared = refs.shared_keys(self.storage.catalog)
        shared: dict[str, list[tuple[str, str]]] = {}
        reached: dict[str, list[tuple[str, str]]] = {}
        for location, by_key in batch.objects.items():
            for key, key_rows in by_key.items():
                if key in self.shared:
                    shared.setdefault(key, []).extend((r.id, r.location) for r in key_rows)
                elif location is Location.LOCAL and self._reached_by_link(key):
                    reached.setdefault(key, []).extend((r.id, r.location) for r in key_rows)
        if not shared and not reached:
            return
        claim = batch.claim
        deleted, kept = sql.delete_rows_sharing_bytes(claim.catalog, shared, [r.id for r in rows], cur=claim.cur)
        kept |= set(reached)
        if reached:
            deleted |= sql.delete_rows(claim.catalog, _by_location(reached), cur=claim.cur)
            self.kept_for_links.update(
                key for key, pairs in reached.items() if all(file_id in deleted for file_id, _ in pairs))
        for location in list(batch.objects):
            by_key = batch.objects[location]
            for key in [k for k in by_key if k in kept]:
                if key not in reached:  # looked at again once the run's claims are committed
                    self.kept_shared.setdefault(location, set()).add(key)
                # --purge-versions counts the bytes of the versions it deleted: none here
                freed_none = location is Location.S3 and self._purging()
                for row in by_key.pop(key):
                    if row.id in deleted:
                        claim.pending.append((batch.file_type, 0 if freed_none else row.size, location.value, 0))
            if not by_key:
                del batch.objects[location]

    def _reached_by_link(self, key: str) -> bool:
        try:
            local = self._store(Location.LOCAL)
        except ApStorageError:
            return False
        if self.link_targets is None:
            self.link_targets = local.link_targets()
        try:
            return local.reached_by_link(key, self.link_targets)
        except ApStorageError:
            return False

    def _store(self, location: Location) -> Store:
        store = self.storage.store(location)
        root = getattr(store, "root", None)
        if location is Location.LOCAL and root is not None and not root.is_dir():
            # A wrong AP_LOCAL_STORAGE_PATH would make every file look already deleted.
            raise ApStorageError(
                f"AP_LOCAL_STORAGE_PATH {root} is not a directory; LOCAL rows are kept"
            )
        return store

    def _finish(self, batch: _Batch, future: Future) -> None:
        results: dict[Location, tuple[dict[str, str], bool]] = future.result()
        report = self.report
        gone: dict[str, list[str]] = {Location.DB.value: [r.id for r in batch.db_rows]}
        failed_before = report.failed
        for location, (refused, whole_batch) in results.items():
            ids = gone.setdefault(location.value, [])
            kept_earlier = self.kept_shared.get(location, set())
            for key, rows in batch.objects[location].items():
                if key in refused:
                    for row in rows:
                        report.fail(row, batch.file_type, key, refused[key])
                else:
                    ids.extend(r.id for r in rows)
                    # an earlier batch kept this key for these rows: its bytes are gone now,
                    # and a second delete would only add a second delete marker
                    kept_earlier.discard(key)
            if whole_batch:
                count = self.refused_in_a_row.get(location, 0) + 1
                self.refused_in_a_row[location] = count
                if count >= BROKEN_AFTER and location.value not in report.abandoned_locations:
                    reason = next(iter(refused.values()), "refused")
                    report.abandoned_locations[location.value] = (
                        f"{location.value} refused {count} batches in a row ({reason})"
                    )
            else:
                self.refused_in_a_row[location] = 0
        report.versions_deleted += batch.versions_deleted
        report.markers_deleted += batch.markers_deleted
        claim = batch.claim
        assert claim is not None
        if any(gone.values()):
            deleted = sql.delete_rows(claim.catalog, gone, cur=claim.cur)
            pending = claim.pending
            for row in batch.db_rows:
                if row.id in deleted:
                    pending.append((batch.file_type, row.size, Location.DB.value, 0))
            for location in results:
                for key, rows in batch.objects[location].items():
                    first = True
                    for row in rows:
                        if row.id not in deleted:
                            continue
                        size, retained = row.size, 0
                        if location is Location.S3 and batch.freed is not None:
                            size = batch.freed.get(key, 0) if first else 0
                        if location is Location.S3 and batch.retained is not None and first:
                            retained = batch.retained.get(key, row.size or 0)
                        first = False
                        pending.append((batch.file_type, size, location.value, retained))
        local = batch.stores.get(Location.LOCAL)
        if local is not None and Location.LOCAL in batch.objects:
            local.prune_empty_dirs(batch.objects[Location.LOCAL])  # folders the deletes emptied
        if self.on_batch is not None and report.failed > failed_before:
            self.on_batch(0, report.failed - failed_before, 0)
        claim.batches -= 1
        if claim.batches <= 0:
            self._end(claim)  # commit: the rows are gone now, and counted


class _Rollback(Exception):
    """Thrown into a claim's transaction to roll it back."""


def _by_location(rows_by_key: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pairs in rows_by_key.values():
        for file_id, location in pairs:
            out.setdefault(location, []).append(file_id)
    return out


def _delete_objects(batch: _Batch) -> dict[Location, tuple[dict[str, str], bool]]:
    """Worker thread: delete a batch's S3/LOCAL bytes. Per location: the refused keys
    with reasons, and whether the store refused the whole batch."""
    results = {}
    for location, by_key in batch.objects.items():
        # In key order: stores keep keys sorted, and a request whose keys sit together
        # (same project, same type) is measurably cheaper for them than one in date order.
        keys = sorted(by_key)
        store = batch.stores[location]
        try:
            if location is Location.S3 and batch.s3_mode == "purge":
                purged = _purge_in_parts(store, keys, batch.requests)
                batch.freed = purged.freed
                batch.versions_deleted, batch.markers_deleted = purged.versions, purged.markers
                results[location] = (purged.refused, purged.whole)
                continue
            if location is Location.S3 and batch.s3_mode == "retain":
                from apstorage.services.versions import retained_sizes

                batch.retained = retained_sizes(store, keys, batch.versioning, batch.notes) or {}  # type: ignore[arg-type]
            if location is Location.S3:
                results[location] = _delete_in_parts(store, keys, batch.requests)
            else:
                results[location] = delete_keys(store, keys, split=False)
        except BackendUnavailableError:
            raise  # the store cannot be reached (or stalls): exit 8, as on every command
        except ApStorageError as exc:
            results[location] = ({k: str(exc) for k in keys}, True)
    return results


def _parts(keys: list[str]) -> list[list[str]]:
    """``keys`` (in key order) as up to ``S3_PARTS`` consecutive parts of at least ``MIN_PART``."""
    size = max(MIN_PART, -(-len(keys) // S3_PARTS))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _wait_all(futures: list[Future]) -> list:
    """The results of ``futures`` once every one is done; the first error raised then (so
    no request of the batch is still in flight when the caller hears of it)."""
    wait(futures)
    for future in futures:
        if future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def _purge_in_parts(store: Store, keys: list[str], requests: ThreadPoolExecutor | None):
    """``purge_keys`` of S3 ``keys`` as ``_parts`` sent at once on ``requests`` (each part
    lists its own range of versions, then deletes them): SeaweedFS works through one
    DeleteObjects entry by entry, so parts in flight at once keep both its cores busy. The
    parts' results merged; the store refused the batch whole only if it refused every part
    whole."""
    from apstorage.services.versions import PurgeResult, purge_keys

    parts = _parts(keys)
    if requests is None or len(parts) == 1:
        return purge_keys(store, keys)  # type: ignore[arg-type]
    merged = PurgeResult(whole=True)
    for result in _wait_all([requests.submit(purge_keys, store, part) for part in parts]):
        merged.refused.update(result.refused)
        merged.freed.update(result.freed)
        merged.versions += result.versions
        merged.markers += result.markers
        merged.whole = merged.whole and result.whole
    return merged


def _delete_in_parts(store: Store, keys: list[str], requests: ThreadPoolExecutor | None) -> tuple[dict[str, str], bool]:
    """``delete_keys`` of S3 ``keys`` (in key order) as ``_parts`` sent at once on
    ``requests``: the refused keys of every part, and whether the store refused all of them
    whole. Every part is waited for before an error is raised (``_wait_all``)."""
    parts = _parts(keys)
    if requests is None or len(parts) == 1:
        return delete_keys(store, keys)
    refused: dict[str, str] = {}
    whole = True
    for part_refused, part_whole in _wait_all([requests.submit(delete_keys, store, part) for part in parts]):
        refused.update(part_refused)
        whole = whole and part_whole
    return refused, whole


def delete_keys(store: Store, keys: list[str], *, split: bool = True) -> tuple[dict[str, str], bool]:
    """Delete ``keys``; return ({refused key: reason}, whether the whole batch was refused).

    With ``split`` (S3, where one request carries many keys) a batch that failed as a whole
    is split in halves and each half retried, recursively, until the bad keys are found;
    if both halves fail entirely, the cause is not a key and the batch gives up. Keys
    refused one by one get one more try together (a transient refusal).
    """
    if not keys:
        return {}, False
    refused = store.delete_many(keys)
    if not refused:
        return {}, False
    if not split:
        again = store.delete_many([k for k in keys if k in refused])
        return again, len(again) == len(keys)
    return _retry(store, keys, refused)


def _retry(store: Store, keys: list[str], refused: dict[str, str]) -> tuple[dict[str, str], bool]:
    failed_keys = [k for k in keys if k in refused]
    if len(failed_keys) < len(keys) or len(keys) == 1:
        again = store.delete_many(failed_keys)
        return again, len(keys) == 1 and bool(again)
    mid = len(keys) // 2
    left, right = keys[:mid], keys[mid:]
    left_refused, right_refused = store.delete_many(left), store.delete_many(right)
    if len(left_refused) == len(left) and len(right_refused) == len(right):
        return {**left_refused, **right_refused}, True
    out: dict[str, str] = {}
    if left_refused:
        out.update(_retry(store, left, left_refused)[0])
    if right_refused:
        out.update(_retry(store, right, right_refused)[0])
    return out, False


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WORKERS",
    "Failure",
    "SweepReport",
    "count_expired",
    "delete_keys",
    "resolve_types",
    "sweep_expired",
]
