"""`gc`: clean up what `du --verify` finds — orphan objects and files, execution-data rows
whose bytes are gone, and pre-signed uploads that never came — safely beside every other
command.

Three kinds (all three when none is named):

- **orphans**: objects in S3 and files under the LOCAL root, under ``platform/`` and
  ``project/``, that no row references and whose LastModified (mtime) is older than the
  grace (default 24 h, at least 1 h): an upload in flight — a ``put`` between its bytes
  and its row, a pre-signed PUT — is always younger than that.
- **missing**: rows of an expiring execution-data type created before the grace whose
  bytes are gone (no object, no file, or a DB row with no data) are deleted. Permanent
  rows and ``FLOW_BUNDLE`` (kept by the platform) are never deleted: they are reported
  (the run exits 1), because that is data loss for a person to look at.
- **pending**: rows `presign --upload` made (``metadata`` carries
  ``model.PENDING_UPLOAD_KEY``, the URL's expiry) whose URL expired more than
  ``PENDING_MARGIN`` ago with no object uploaded. A pending row whose object arrived is
  an ordinary row and is left alone.

How it finds them: one streaming pass per location, the merge join of `du --verify`
(rows sorted by key against the store's listing, listing threads ahead of the merge, or
lookups by id when the store lists in neither order), plus one keyset scan of DB rows
without data. Memory stays flat: orphans are deleted in batches while the listing goes
on.

Safety, batch by batch:

- a row created after the run began is never judged (``created`` against the start);
- an orphan batch is re-checked on a connection of its own, in a transaction that stays
  open until its objects are deleted: a key some row at any location points at is kept
  (a row at DB or LOCAL whose migration uploaded the object but did not switch yet
  counts). A row inserted after that check cannot point at one of these objects: every
  writer (``put``, ``presign --upload``, ``migrate-to-s3``, the platform) writes the
  object first, so it is younger than the grace;
- a row judged missing is asked for again (HEAD / stat) and then deleted only if it still
  records the location it was judged at, was created before the run, and — at DB —
  still has no data (``migrate-to-s3`` moving it meanwhile keeps it);
- a run lock (``locks.try_gc_lock``): on Postgres gc's own, so a second gc returns at
  once with ``lock_held`` while sweeps may run beside it (a row a sweep has claimed is
  locked: gc's delete of it waits for that sweep's commit and then finds it gone, or
  deletes it, bytes already gone, if that sweep died); on SQLite the sweep's lock, so a
  sweep or a second gc makes this run return with ``lock_held``;
- guards against a wrong configuration: an empty catalog judges no orphans (it is far
  likelier the wrong database than a bucket of garbage), and a location where no row has
  its bytes while many lack them (a wrong bucket or root) deletes no rows there.

On a versioned S3 bucket (its state asked once, when the S3 pass starts;
``services.versions``): a plain delete of an orphan adds a delete marker, and the bytes
that stay as noncurrent versions are counted (``bytes_retained``) from the listing; with
``purge_versions`` every version and marker of an orphan key is deleted instead.
``orphans`` also takes, after the S3 pass and under the same trust verdict, the
noncurrent versions of keys no row references that became noncurrent longer ago than the
grace, and delete markers with no version left older than the grace
(``gc_versions``; kind ``orphanVersions``). ``missing`` never deletes a row whose key
still has a version: it is *restorable* (``apstorage restore``), counted apart.

Object deletes reuse sweep's ``delete_keys`` (DeleteObjects in
``AP_S3_DELETE_BATCH_SIZE`` keys, a refused batch split in halves to find the bad key),
``workers`` batches at a time.
"""

from __future__ import annotations

import posixpath
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from apstorage.catalog import du as du_sql
from apstorage.catalog import gc as sql
from apstorage.catalog.du import KeyedRow
from apstorage.catalog.locks import try_gc_lock
from apstorage.errors import ApStorageError, BackendUnavailableError, ConfigError, UsageError
from apstorage.model import Location, expires, follows_storage_location, iso_utc
from apstorage.services import du as du_service
from apstorage.services.context import Storage
from apstorage.services.sweep import BROKEN_AFTER, delete_keys
from apstorage.stores.base import ObjectInfo, Store
from apstorage.text import plural

KINDS = ("orphans", "missing", "pending")
DEFAULT_GRACE = 24 * 3600
MIN_GRACE = 3600
MAX_GRACE = 3650 * 86400  # ten years: beyond it, nothing could ever be old enough
PENDING_MARGIN = 15 * 60  # s after a pre-signed URL expired before its row is judged
BATCH = 1000  # objects or rows per batch
DEFAULT_WORKERS = 8
KEPT = 100  # failures and reported rows listed; the counts cover them all
ITEMS_KEPT = 10_000  # deleted (or, dry, would-be-deleted) items listed; the counts cover them all
# A location where most rows lack their bytes: the configuration, not the data, is likely
# wrong (another bucket, another root, a stale copy). Orphans and rows without bytes are
# held until the location is judged, once per pass (_GcTally._decide): at the end of the
# pass, or once HOLD_MAX of either are held. Trusted, they are deleted (and what follows
# streams); not, they are left alone and a note says why. The verdict never changes
# within a pass: nothing is deleted at a location a refusal then says was held back.
HOLD_MAX = 10_000
PROBE_ROWS = 50  # rows looked up once per location to see whether its store is the catalog's


# -- request and report -------------------------------------------------------------------


TRUSTABLE = ("S3", "LOCAL")


def parse_trust(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--trust LOCATION`` (repeatable, any case): the locations whose configured bucket
    or root the operator vouches for as this catalog's. UsageError (exit 2) naming --trust
    for anything but S3 or LOCAL — exactly: a flag that lifts a safety guard takes no
    stray space or newline, nor an empty value."""
    chosen: list[str] = []
    for value in values or ():
        name = str(value).upper()
        if name not in TRUSTABLE:
            from apstorage.text import printable

            what = "an empty value" if not str(value) else f"'{printable(str(value))}'"  # escaped once
            raise UsageError(
                f"--trust {what}: not a location gc can trust; accepted: S3, LOCAL",
                hint="--trust S3 says AP_S3_BUCKET is this catalog's bucket; --trust LOCAL the same of AP_LOCAL_STORAGE_PATH",
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def parse_kinds(orphans: bool = False, missing: bool = False, pending: bool = False) -> tuple[str, ...]:
    chosen = tuple(k for k, on in zip(KINDS, (orphans, missing, pending)) if on)
    return chosen or KINDS


def parse_grace(value: str | int | None) -> int:
    """``--grace``: a duration from 1 h to 3650 d (UsageError, exit 2, otherwise)."""
    from apstorage.durations import parse_duration

    if value is None:
        return DEFAULT_GRACE
    seconds = parse_duration(value, "--grace", minimum=0, maximum=10**12)  # gc's own bounds below
    if seconds > MAX_GRACE:
        raise UsageError(f"--grace {value}: longer than 3650d (ten years); nothing would ever be old enough")
    if seconds < MIN_GRACE:
        raise UsageError(
            f"--grace {value}: {seconds} s is under 1 hour; an upload in flight (a put "
            "between its bytes and its row, a pre-signed PUT) could be taken for an orphan",
            hint="use --grace 1h or more (default 24h)",
        )
    return seconds


@dataclass
class KindTally:
    """Files (objects or rows) and bytes of one kind, in total and per location."""

    files: int = 0
    bytes: int = 0
    by_location: dict[str, list[int]] = field(default_factory=dict)

    def add(self, location: str, size: int | None, n: int = 1) -> None:
        self.files += n
        self.bytes += size or 0
        entry = self.by_location.setdefault(location, [0, 0])
        entry[0] += n
        entry[1] += size or 0

    def extend(self, other: "KindTally") -> None:
        for location, (files, size) in other.by_location.items():
            self.add(location, size, files)

    def to_json(self) -> dict:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "byLocation": {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(self.by_location.items())},
        }


@dataclass
class GcReport:
    kinds: tuple[str, ...]
    dry_run: bool
    grace: int
    started: datetime
    cutoff: datetime
    orphans: KindTally = field(default_factory=KindTally)
    missing: KindTally = field(default_factory=KindTally)
    pending: KindTally = field(default_factory=KindTally)
    # versioned buckets: orphan keys' noncurrent versions, and their delete markers (no
    # bytes: counted apart, never as files)
    orphan_versions: KindTally = field(default_factory=KindTally)
    delete_markers: KindTally = field(default_factory=KindTally)
    purge_versions: bool = False
    versioning: dict | None = None  # Versioning.to_json(), when the run asked (an S3 pass)
    versioned: bool = False
    bytes_retained: int = 0  # bytes deleted orphans keep as noncurrent versions
    restorable: list[dict] = field(default_factory=list)
    restorable_count: int = 0  # rows without a current object but with a version: kept
    reported: list[dict] = field(default_factory=list)
    reported_count: int = 0
    items: list[dict] = field(default_factory=list)  # the first ITEMS_KEPT deleted, in order
    failures: list[dict] = field(default_factory=list)
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    trusted: tuple[str, ...] = ()  # --trust: locations judged as trusted, whatever the guard says
    refusals: list[dict] = field(default_factory=list)  # the location guard held these back
    lock_held: bool = False
    lock_holders: str = "gc"  # who holds the lock a run found held: "gc" (Postgres), "gc or sweep-expired" (SQLite)
    max_delete_reached: bool = False
    interrupted: bool = False  # stopped early by ``stop``; the rest is left for the next run
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _reported_ids: set = field(default_factory=set, repr=False, compare=False)

    @property
    def deleted(self) -> int:
        return self.orphans.files + self.missing.files + self.pending.files + self.orphan_versions.files

    @property
    def bytes(self) -> int:
        return self.orphans.bytes + self.missing.bytes + self.pending.bytes + self.orphan_versions.bytes

    @property
    def ok(self) -> bool:
        return not self.failed and not self.reported_count and not self.refusals

    def kind(self, name: str) -> KindTally:
        return {"orphans": self.orphans, "missing": self.missing, "pending": self.pending,
                "orphanVersions": self.orphan_versions, "deleteMarkers": self.delete_markers}[name]

    def restorable_row(self, row: sql.JudgedRow) -> None:
        """A row whose current object is gone but whose key still has a version: never
        deleted; ``apstorage restore`` brings it back."""
        with self._lock:
            if row.id in self._reported_ids:
                return
            self._reported_ids.add(row.id)
            self.restorable_count += 1
            if len(self.restorable) < KEPT:
                self.restorable.append({
                    "id": row.id, "type": row.type, "location": row.location, "key": row.key,
                    "size": row.size, "created": iso_utc(row.created),
                })

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self.skipped[reason] = self.skipped.get(reason, 0) + n

    def fail(self, location: str, key: str | None, reason: str, row_id: str | None = None) -> None:
        with self._lock:
            self.failed += 1
            if len(self.failures) < KEPT:
                self.failures.append({"location": location, "key": key, "id": row_id, "reason": reason})

    def report_row(self, row: sql.JudgedRow, reason: str) -> None:
        with self._lock:
            if row.id in self._reported_ids:  # a pass that started over meets it again
                return
            self._reported_ids.add(row.id)
            self.reported_count += 1
            if len(self.reported) < KEPT:
                self.reported.append({
                    "id": row.id, "type": row.type, "location": row.location, "key": row.key,
                    "size": row.size, "created": iso_utc(row.created), "reason": reason,
                })

    def to_json(self) -> dict:
        return {
            "kinds": list(self.kinds),
            "orphans": self.orphans.to_json(),
            "missing": self.missing.to_json(),
            "pending": self.pending.to_json(),
            "orphanVersions": self.orphan_versions.to_json(),
            "deleteMarkers": self.delete_markers.to_json(),
            "purgeVersions": self.purge_versions,
            "versioning": self.versioning,
            "versioned": self.versioned,
            "bytesRetained": self.bytes_retained,
            "restorable": self.restorable_count,
            "restorableRows": list(self.restorable),
            "deleted": self.deleted,
            "bytes": self.bytes,
            "failed": self.failed,
            "failures": list(self.failures),
            "reported": list(self.reported),
            "reportedCount": self.reported_count,
            "items": list(self.items),
            "itemsTruncated": self.deleted > len(self.items),
            "skipped": dict(sorted(self.skipped.items())),
            "notes": list(self.notes),
            "trusted": list(self.trusted),
            "refusals": list(self.refusals),
            "dryRun": self.dry_run,
            "lockHeld": self.lock_held,
            "maxDeleteReached": self.max_delete_reached,
            "interrupted": self.interrupted,
            "graceSeconds": self.grace,
            "cutoff": iso_utc(self.cutoff),
            "startedAt": iso_utc(self.started),
            "seconds": round(self.seconds, 3),
        }


# -- the run -----------------------------------------------------------------------------


def collect_garbage(
    storage: Storage,
    *,
    kinds: Iterable[str] = KINDS,
    grace: int = DEFAULT_GRACE,
    max_delete: int | None = None,
    dry_run: bool = False,
    workers: int = DEFAULT_WORKERS,
    now: datetime | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
    purge_versions: bool = False,
    trust: Iterable[str] = (),
) -> GcReport:
    """Delete (or, with ``dry_run``, count exactly what would be deleted) orphans, rows
    without bytes and expired pending uploads. ``grace`` in seconds (at least 3600).

    ``trust`` (``--trust``: "S3", "LOCAL"): the configured bucket or root of each named
    location is this catalog's, so the location guard is not consulted there — rows
    without bytes older than the grace (execution data only) are deleted however many
    there are, and orphans are judged as at any trusted location. Without it, a location
    where most rows lack their bytes is held back: ``report.refusals`` says so (counts,
    and the ``--trust`` that would take them) and ``report.ok`` is False (exit 1).

    ``now`` is the clock ages are judged by (default: when the run starts). It is for
    the library's callers — tests and ``bench/gc.py``, which cannot make an object in a
    real S3 server an hour old — and is not a command-line flag: rows created after the
    run really began are never judged, whatever ``now`` says.
    ``on_progress(event, n)``: ``("listed", n)`` objects listed, ``("deleted", n)``.
    ``stop`` (set by a signal handler): no new batch is started, the batches in flight
    finish and are counted, and the report says ``interrupted``.
    ``purge_versions``: on a versioned bucket, orphans are deleted with every version and
    delete marker of their keys (``bytes`` then counts every version's bytes).
    """
    kinds = tuple(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UsageError(f"unknown gc kind(s) {unknown}; accepted: {', '.join(KINDS)}")
    if not MIN_GRACE <= grace <= MAX_GRACE:
        raise UsageError(f"--grace: {grace} s is not between 1 hour and 3650 days")
    if max_delete is not None and max_delete < 1:
        raise UsageError("--max-delete must be at least 1")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    started = datetime.now(timezone.utc)
    clock = now or started
    report = GcReport(
        kinds=kinds, dry_run=dry_run, grace=grace, started=started,
        cutoff=clock - timedelta(seconds=grace), trusted=parse_trust(trust),
        purge_versions=purge_versions,
    )
    t0 = time.monotonic()
    lock = None if dry_run else try_gc_lock(storage.catalog)
    if not dry_run and lock is None:
        report.lock_held = True
        report.lock_holders = "gc" if storage.catalog.dialect == "postgres" else "gc or sweep-expired"
        return report
    try:
        _Collector(storage, report, clock=clock, workers=workers, max_delete=max_delete, stop=stop,
                   on_progress=on_progress).run()
    finally:
        if lock is not None:
            lock.release()
        report.seconds = time.monotonic() - t0
    return report


@dataclass
class _Outcome:
    """What one batch did, counted into the report when its pass is kept."""

    counts: dict[str, KindTally] = field(default_factory=dict)
    items: list[dict] = field(default_factory=list)  # at most ITEMS_KEPT
    retained: int = 0  # bytes the deleted orphans keep as noncurrent versions

    def add(self, kind: str, location: str, size: int | None, *, key: str | None,
            row_id: str | None = None, version_id: str | None = None) -> None:
        self.counts.setdefault(kind, KindTally()).add(location, size)
        if len(self.items) < ITEMS_KEPT:
            item = {"kind": kind, "location": location, "key": key, "id": row_id, "size": size}
            if version_id is not None:
                item["versionId"] = version_id
            self.items.append(item)

    def merge(self, other: "_Outcome") -> None:
        for kind, tally in other.counts.items():
            self.counts.setdefault(kind, KindTally()).extend(tally)
        self.items.extend(other.items[: ITEMS_KEPT - len(self.items)])
        self.retained += other.retained


class _Collector:
    def __init__(self, storage: Storage, report: GcReport, *, clock: datetime, workers: int,
                 max_delete: int | None, on_progress: Callable[[str, int], None] | None,
                 stop: threading.Event | None = None) -> None:
        self.storage = storage
        self.stop = stop
        self.catalog = storage.catalog
        self.report = report
        self.clock = clock
        self.workers = workers
        self.budget = max_delete
        self.budget_lock = threading.Lock()
        self.progress = on_progress or (lambda event, n: None)
        self.local = threading.local()
        self.sessions: list[sql.Session] = []
        self.sessions_lock = threading.Lock()
        self.by_s3_key = False
        self.refused_in_a_row: dict[str, int] = {}
        self.abandoned: dict[str, str] = {}
        self.link_targets: set | None = None  # files links under the LOCAL root reach
        self.aliases: set[str] = set()  # collapsed forms of rows' non-canonical keys
        self.versioning = None  # the bucket's Versioning, asked when the S3 pass starts
        self.s3_mode = "plain"  # "plain", "retain" or "purge" (services.versions)
        # keys whose orphan this run deleted with a marker (or, dry, would delete): the
        # versions pass leaves them (their bytes were just counted). One per orphan.
        self.marked: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------
    def session(self) -> sql.Session:
        s = getattr(self.local, "session", None)
        if s is None:
            s = sql.Session(self.catalog)
            self.local.session = s
            with self.sessions_lock:
                self.sessions.append(s)
        return s

    def take(self, n: int) -> int:
        """How many of ``n`` deletions the --max-delete budget still allows (none once
        the run was asked to stop)."""
        if self.stopping:
            return 0
        if self.budget is None:
            return n
        with self.budget_lock:
            allowed = min(n, self.budget)
            self.budget -= allowed
            spent = self.budget <= 0
        if spent:  # spent, exactly or not: the run says where it stopped
            self.report.max_delete_reached = True
        return allowed

    @property
    def stopping(self) -> bool:
        if self.stop is not None and self.stop.is_set():
            self.report.interrupted = True
            return True
        return False

    @property
    def exhausted(self) -> bool:
        """No more deletions in this run: --max-delete spent (``take`` said so in the
        report), or asked to stop."""
        return self.stopping or (self.budget is not None and self.budget <= 0)

    def sample_found(self, location: Location, store: Store) -> tuple[int, int]:
        """(rows asked, rows found with their bytes) among up to PROBE_ROWS rows at
        ``location`` spread over the whole table (``catalog.gc.sample_rows``: whatever the
        ids look like). Rows that may rightly have no bytes yet (a pending upload, a row
        newer than the run) and rows the store would not answer about are not counted."""
        asked = found = 0
        for row in sql.sample_rows(self.catalog, location.value, PROBE_ROWS):
            if row.key is None or row.upload_expires is not None:
                continue
            if row.created is not None and row.created >= self.report.started:
                continue
            try:
                info = store.stat(row.key)
            except (ApStorageError, OSError):
                continue
            asked += 1
            found += info is not None
        return asked, found

    def _stores_hold_objects(self) -> bool:
        """Whether the configured S3 bucket (under the platform's prefixes) or LOCAL root
        holds at least one object: one listing request per prefix at most. A store that
        cannot be asked counts as holding objects (the note is then shown)."""
        settings = self.storage.settings
        try:
            if settings.s3_bucket:
                store = self.storage.store(Location.S3)
                if any(store.list_page(prefix, max_keys=1) for prefix in du_service.MANAGED_PREFIXES):
                    return True
            store = self.storage.store(Location.LOCAL)
            root = getattr(store, "root", None)
            if root is not None and root.is_dir() and next(iter(store.list()), None) is not None:
                return True
        except (ApStorageError, OSError):
            return True
        return False

    def wants(self, kind: str) -> bool:
        return kind in self.report.kinds

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> None:
        report = self.report
        self.judge_orphans = self.wants("orphans")
        if self.judge_orphans and not sql.has_rows(self.catalog):
            self.judge_orphans = False
            # A fresh install (no rows, no objects) is not a mistake: a cron gc stays silent.
            if self._stores_hold_objects():
                report.notes.append(
                    "the catalog has no rows at all: no object is judged an orphan (check "
                    "AP_POSTGRES_* / AP_DB_TYPE point at the platform's database)"
                )
        self.by_s3_key = sql.odd_keys(self.catalog)
        # Keys a store may list under another name (a//b, a\b as a/b): those names are
        # referenced too (one scan of the table for the rare keys that have one).
        if self.judge_orphans:
            self.aliases = {name for k in sql.noncanonical_keys(self.catalog) for name in aliases_of(k)}
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="apstorage-gc")
        try:
            for location in (Location.S3, Location.LOCAL):
                if self.stopping:
                    break
                self._location(location)
            # DB rows without data: judged even once --max-delete is spent (then nothing is
            # deleted, take() allows none), so a permanent row whose bytes are gone is
            # reported by every run, however early its budget ran out.
            if not self.stopping and (self.wants("missing") or self.wants("pending")):
                for ids in sql.iter_db_rows_without_data(self.catalog, report.started, page=BATCH):
                    outcome = _Outcome()
                    self._rows_batch(Location.DB, None, ids, outcome)
                    self._count(outcome)
                    if self.stopping:
                        break
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            with self.sessions_lock:
                for s in self.sessions:
                    s.close()
                self.sessions.clear()

    def _count(self, outcome: _Outcome) -> None:
        self.report.bytes_retained += outcome.retained
        items = self.report.items
        items.extend(outcome.items[: ITEMS_KEPT - len(items)])
        for kind, tally in outcome.counts.items():
            self.report.kind(kind).extend(tally)
            self.progress("deleted", tally.files)

    def _location(self, location: Location) -> None:
        settings = self.storage.settings
        counts = du_sql.count_rows(self.catalog, (location.value,))
        rows, odd = counts[location.value]
        if location is Location.S3 and not settings.s3_bucket:
            if rows:
                raise ConfigError(
                    f"{plural(rows, 'row')} in the catalog {'is' if rows == 1 else 'are'} in S3 but AP_S3_BUCKET is not set: "
                    "set the AP_S3_* variables so gc can check them"
                )
            return
        store = self.storage.store(location)
        if location is Location.S3:
            self._ask_versioning()
        if location is Location.LOCAL:
            root = getattr(store, "root", None)
            if root is None or not root.is_dir():
                if rows:
                    self.report.notes.append(
                        f"AP_LOCAL_STORAGE_PATH {root} is not a directory: its {rows} LOCAL "
                        "rows were not judged"
                    )
                return
        prefixes = du_service.MANAGED_PREFIXES if location is Location.S3 else ("",)
        tick = lambda n: self.progress("listed", n)  # noqa: E731
        for order in du_service.ORDERS:
            tally = _GcTally(self, location, store)
            try:
                du_service._merge(self.catalog, store, prefixes, order, tally, tick)
            except du_service._OutOfOrder:
                # Starts over in the next order. What this pass deleted is gone and counted;
                # a dry pass counts nothing (the next one sees the same things again).
                tally.close(finish=False, keep=not self.report.dry_run)
                continue
            except _Stopped:
                tally.close(finish=False)
                return
            tally.close()
            self._versions_pass(location, store, tally)
            return
        tally = _GcTally(self, location, store)
        try:
            du_service._lookups(self.catalog, store, prefixes, tally, tick, rows=rows, odd=odd)
        except _Stopped:
            tally.close(finish=False)
            return
        tally.close()
        self._versions_pass(location, store, tally)

    # -- versioned buckets --------------------------------------------------------------------
    def _ask_versioning(self) -> None:
        from apstorage.services.versions import ask_versioning, versioning_notes

        if self.versioning is not None:
            return
        self.versioning = ask_versioning(self.storage)
        report = self.report
        report.versioning = self.versioning.to_json()
        report.versioned = self.versioning.may_keep_versions
        report.notes += versioning_notes(self.versioning, report.purge_versions)
        if not self.versioning.may_keep_versions:
            return
        self.s3_mode = "purge" if report.purge_versions else "retain"

    def _versions_pass(self, location: Location, store: Store, tally: "_GcTally") -> None:
        """After the S3 pass on a versioned bucket: orphan keys' old noncurrent versions
        and lone delete markers (``gc_versions``), when orphans are judged and the pass
        trusted the bucket (the same verdict its orphans had)."""
        if location is not Location.S3 or self.s3_mode == "plain" or not self.judge_orphans:
            return
        if self.stopping or tally.orphans_refused or not tally._decide():
            return
        from apstorage.services.gc_versions import orphan_versions

        orphan_versions(self, store)

    def _restorable(self, location: Location, store: Store | None, rows: list[sql.JudgedRow]) -> set[str]:
        """Ids among ``rows`` (no current object) whose key still has a version with bytes
        on a versioned bucket: counted apart as restorable, never deleted. A listing that
        fails keeps the rows (a failure each)."""
        if location is not Location.S3 or store is None or self.s3_mode == "plain" or not rows:
            return set()
        from apstorage.services.versions import restorable_ids

        found, failed = restorable_ids(store, rows)  # type: ignore[arg-type]
        out = set()
        for row in rows:
            if row.id in failed:
                self.report.fail(location.value, row.key, failed[row.id], row.id)
                out.add(row.id)
            elif row.id in found:
                self.report.restorable_row(row)
                out.add(row.id)
        return out

    # -- orphans ----------------------------------------------------------------------------
    def _orphan_batch(self, location: Location, store: Store, infos: list[ObjectInfo]) -> _Outcome:
        """Worker thread: re-check a batch against the catalog and delete what no row
        references, inside one transaction on this thread's own connection."""
        outcome = _Outcome()
        report = self.report
        session = self.session()
        keys = [info.key for info in infos]
        with session.transaction() as cur:
            referenced = session.referenced(cur, keys, by_s3_key=self.by_s3_key)
            todo = [info for info in infos if info.key not in referenced]
            report.skip("referenced", len(infos) - len(todo))
            if self.aliases:
                kept = len(todo)
                todo = [info for info in todo if info.key not in self.aliases]
                report.skip("aliased", kept - len(todo))
            if location is Location.LOCAL:
                todo = self._not_links(store, todo)
            todo = todo[: self.take(len(todo))]  # --max-delete, dry or not
            if not todo:
                return outcome
            mode = self.s3_mode if location is Location.S3 else "plain"
            if report.dry_run:
                sizes = self._dry_version_sizes(store, mode, todo, outcome)
                if mode != "plain":  # the versions pass leaves them, as after a real run
                    with self.sessions_lock:
                        self.marked.update(i.key for i in todo)
                for info in todo:
                    outcome.add("orphans", location.value, sizes.get(info.key, info.size), key=info.key)
                return outcome
            abandoned = self.abandoned.get(location.value)
            if abandoned:
                for info in todo:
                    report.fail(location.value, info.key, f"not attempted: {abandoned}")
                return outcome
            keys = sorted(i.key for i in todo)
            freed: dict[str, int] = {}
            try:
                if mode == "purge":
                    from apstorage.services.versions import purge_keys

                    purged = purge_keys(store, keys)  # type: ignore[arg-type]
                    refused, whole, freed = purged.refused, purged.whole, purged.freed
                else:
                    retained = None
                    if mode == "retain":
                        from apstorage.services.versions import retained_sizes

                        retained = retained_sizes(store, keys, self.versioning, self.report.notes)  # type: ignore[arg-type]
                    refused, whole = delete_keys(store, keys, split=location is Location.S3)
                    if mode == "retain":
                        outcome.retained += sum((retained or {}).get(i.key, i.size or 0)
                                                for i in todo if i.key not in refused)
                        with self.sessions_lock:
                            self.marked.update(k for k in keys if k not in refused)
            except BackendUnavailableError:
                raise  # the store cannot be reached (or stalls): exit 8, as on every command
            except ApStorageError as exc:
                refused, whole = {info.key: str(exc) for info in todo}, True
        for info in todo:
            if info.key in refused:
                report.fail(location.value, info.key, refused[info.key])
            else:
                outcome.add("orphans", location.value, freed.get(info.key, info.size), key=info.key)
        self._judge_store(location, refused, whole)
        return outcome

    def _dry_version_sizes(self, store: Store, mode: str, todo: list[ObjectInfo], outcome: _Outcome) -> dict[str, int]:
        """A dry run on a versioned bucket lists the orphans' versions (read-only): with
        purge, {key: bytes of every version} (what would be freed); else the bytes that
        would stay are added to ``outcome.retained``."""
        if mode == "plain":
            return {}
        from apstorage.services.versions import retained_sizes
        from apstorage.stores.s3_versions import versions_of

        keys = sorted(i.key for i in todo)
        if mode == "retain":
            retained = retained_sizes(store, keys, self.versioning, self.report.notes) or {}  # type: ignore[arg-type]
            outcome.retained += sum(retained.get(i.key, i.size or 0) for i in todo)
            return {}
        listing = versions_of(store, keys)  # type: ignore[arg-type]
        return {k: sum(e.size for e in v if not e.delete_marker) for k, v in listing.items()}

    def _judge_store(self, location: Location, refused: dict[str, str], whole: bool) -> None:
        with self.sessions_lock:
            if whole:
                count = self.refused_in_a_row.get(location.value, 0) + 1
                self.refused_in_a_row[location.value] = count
                if count >= BROKEN_AFTER and location.value not in self.abandoned:
                    reason = next(iter(refused.values()), "refused")
                    self.abandoned[location.value] = f"{location.value} refused {count} batches in a row ({reason})"
                    self.report.notes.append(f"{self.abandoned[location.value]}; left alone for the rest of the run")
            else:
                self.refused_in_a_row[location.value] = 0

    def _not_links(self, store: Store, infos: list[ObjectInfo]) -> list[ObjectInfo]:
        """A file under the LOCAL root that a symbolic link reaches is never an orphan: a
        row whose key is the link reads its bytes through it (listings skip the links
        themselves)."""
        reached = getattr(store, "reached_by_link", None)
        if reached is None:
            return infos
        with self.sessions_lock:
            if self.link_targets is None:
                self.link_targets = store.link_targets()  # type: ignore[attr-defined]
        kept = [info for info in infos if not reached(info.key, self.link_targets)]
        self.report.skip("linked", len(infos) - len(kept))
        return kept

    # -- rows without bytes -----------------------------------------------------------------
    def _rows_batch(self, location: Location, store: Store | None, ids: list[str], outcome: _Outcome) -> None:
        """Main thread: judge rows whose bytes looked absent, ask the store again, and
        delete the ones still without bytes in one short transaction."""
        report = self.report
        session = self.session()
        chosen: dict[str, list[sql.JudgedRow]] = {"missing": [], "pending": []}
        for row in session.rows(ids):
            kind, skipped = self._judge(location, row)
            if skipped:
                report.skip(skipped, 1)
            if kind is not None:
                chosen.setdefault(kind, []).append(row)
        if not any(chosen.values()):
            return
        # Ask the store once more: bytes that arrived meanwhile keep their row.
        candidates = [r for rows in chosen.values() for r in rows]
        present = self._present(location, store, candidates)
        for kind in list(chosen):
            chosen[kind] = [r for r in chosen[kind] if r.id not in present]
        kept = self._restorable(location, store, [r for rows in chosen.values() for r in rows])
        for kind in list(chosen):
            chosen[kind] = [r for r in chosen[kind] if r.id not in kept]
        for row in chosen.pop("report", []):
            report.report_row(row, _loss(row))
        for kind, rows in chosen.items():
            rows = rows[: self.take(len(rows))]
            if not rows:
                continue
            if report.dry_run:
                for row in rows:
                    outcome.add(kind, location.value, row.size, key=row.key, row_id=row.id)
                continue
            deleted = session.delete_rows(location.value, [r.id for r in rows], report.started)
            for row in rows:
                if row.id in deleted:
                    outcome.add(kind, location.value, row.size, key=row.key, row_id=row.id)
                else:
                    report.skip("changed", 1)

    def _judge(self, location: Location, row: sql.JudgedRow) -> tuple[str | None, str | None]:
        """(what gc does with a row of ``location`` whose bytes looked absent, before the
        store is asked again: "pending", "missing", "report" or None; the skip reason counted
        when None, or None): no side effect. ``_rows_batch`` acts on it, ``_deletable``
        counts by it."""
        if row.location != location.value:
            return None, "moved"
        if row.created >= self.report.started:
            return None, "young"
        if location is Location.DB and row.has_data:
            return None, None
        kind, skipped = self._kind(row)
        if kind is not None and kind != "report" and not self.wants(kind):
            return None, None
        return kind, skipped

    def _kind(self, row: sql.JudgedRow) -> tuple[str | None, str | None]:
        """(what gc does with a row whose bytes are absent: "pending", "missing", "report"
        or None; the skip reason counted when None): no side effect."""
        if row.upload_expires is not None:
            url_expiry = _parse_time(row.upload_expires)
            if url_expiry is None or url_expiry + timedelta(seconds=PENDING_MARGIN) > self.clock:
                return None, "inFlight"
            return "pending", None
        if not self.wants("missing"):
            return None, None
        if not expires(row.type):  # only expiring execution data; never FLOW_BUNDLE (DESIGN §1)
            return "report", None
        if row.created >= self.report.cutoff:
            return None, "young"
        return "missing", None

    def _deletable(self, location: Location, ids: list[str]) -> int:
        """How many of ``ids`` (rows whose bytes looked absent) gc would delete once their
        location is trusted, by ``_judge``, the rules ``_rows_batch`` applies before asking the
        store again (rows within the grace, permanent rows and uploads in flight are not counted):
        what a refusal says it held back. A LOCAL row whose path the store will not follow
        (through a linked folder, out of the root) is never deleted either: not counted.
        Read-only."""
        session = self.session()
        store = self.storage.store(location) if location is Location.LOCAL else None
        count = 0
        for start in range(0, len(ids), BATCH):
            for row in session.rows(ids[start : start + BATCH]):
                kind, _ = self._judge(location, row)
                if kind not in ("missing", "pending"):
                    continue
                if store is not None and row.key is not None and not _plain_path(store, row.key):
                    continue
                count += 1
        return count

    def _present(self, location: Location, store: Store | None, rows: list[sql.JudgedRow]) -> set[str]:
        """Ids among ``rows`` whose bytes the store has after all (or that could not be
        asked about: those are kept and counted as failures)."""
        if location is Location.DB or store is None:
            return set()
        present: set[str] = set()

        from apstorage.stores.local import LinkError

        def ask(row: sql.JudgedRow) -> tuple[sql.JudgedRow, bool | str]:
            if row.key is None:
                return row, False
            try:
                return row, store.stat(row.key) is not None
            except LinkError:
                # The key is (or passes through) a symbolic link under the LOCAL root: the
                # row may read its bytes through it; never judged missing.
                self.report.skip("linked", 1)
                return row, True
            except UsageError:
                # A key the store refuses to resolve (``a//b``, ``../``, a leading ``/``):
                # the platform's own path joining may still read bytes through it, so the
                # row is never judged missing.
                self.report.skip("unsafeKey", 1)
                return row, True
            except BackendUnavailableError:
                raise  # exit 8, as on every command
            except ApStorageError as exc:
                return row, str(exc)

        for row, answer in self.pool.map(ask, rows):
            if answer is True:
                present.add(row.id)
            elif isinstance(answer, str):
                present.add(row.id)
                self.report.fail(location.value, row.key, f"could not check: {answer}", row.id)
        return present


def _plain_path(store: Store, key: str) -> bool:
    """Whether gc could judge ``key`` in the LOCAL store: no link on its path and a key
    that stays under the root (``_present`` skips the others as linked or unsafe)."""
    from apstorage.stores.local import LinkError

    try:
        store.stat(key)
    except (LinkError, UsageError):
        return False
    except ApStorageError:
        pass  # any other answer: judged as usual
    return True


def aliases_of(key: str) -> set[str]:
    """Other names a store may file ``key`` under: SeaweedFS turns ``\\`` into ``/`` and
    drops empty segments (``a\\b`` and ``a//b`` are listed as ``a/b``); a file system, and
    the platform's ``path.join``, also drop ``.`` and resolve ``..``."""
    names = set()
    for form in (key, key.replace("\\", "/")):
        names.add("/".join(part for part in form.split("/") if part not in ("", ".")))
        normal = posixpath.normpath("/" + form).lstrip("/")
        if normal and normal != ".":
            names.add(normal)
    names.discard(key)
    return names


def _loss(row: sql.JudgedRow) -> str:
    what = "kept by the platform" if follows_storage_location(row.type) else "permanent"
    where = {"DB": "no data in the row", "S3": "no object", "LOCAL": "no file"}.get(row.location, "no bytes")
    return f"{row.type} is {what} and its bytes are gone ({where}); never deleted by gc"


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class _Stopped(Exception):
    """Asked to stop (a signal): stop listing."""


class _GcTally:
    """What a merge pass over one location hands gc: orphans (old enough) and rows whose
    bytes are absent, batched and dealt with while the listing goes on."""

    def __init__(self, collector: _Collector, location: Location, store: Store) -> None:
        self.c = collector
        self.where = location.value
        self.location = location
        self.store = store
        self.objects = 0
        self.bytes = 0
        self.orphan_batch: list[ObjectInfo] = []
        self.inflight: dict[Future, None] = {}
        self.held_counts = _Outcome()  # a dry pass's counts, kept until the pass is kept
        self.held: list[str] = []  # rows without bytes, held while the location is not trusted
        self.matched = 0  # rows found with their bytes
        self.missing = 0  # rows found without
        self.rows_refused = False
        self.orphans_refused = False
        self.trusted = location.value in collector.report.trusted  # --trust
        self.verdict: bool | None = None  # _decide's, once per pass
        self.probed = False  # the catalog's sample was looked up in this store
        self.sampled = self.sampled_found = 0  # its counts (sample_found)

    # the interface du's merge and lookups call ------------------------------------------------
    def listed(self, info: ObjectInfo) -> None:
        self.objects += 1
        self.bytes += info.size

    def _trusted(self) -> bool:
        """Whether deletes may go ahead here now: under ``--trust``, or once ``_decide``
        judged the location trusted (undecided: not yet, the deletes are held)."""
        return self.trusted or bool(self.verdict)

    def _decide(self) -> bool:
        """Judge the location, once per pass (then always the same answer): the configured
        bucket or root is the one the catalog writes to when at least half of a sample of
        the location's rows have their bytes there (looked up once), and the listing so far
        has not found more rows without their bytes than with them. A location where most
        rows lack their bytes is more likely a wrong AP_S3_BUCKET / AP_LOCAL_STORAGE_PATH
        (or a stale copy of the right one) than lost data. Under ``--trust`` for this
        location: always trusted."""
        if self.trusted:
            return True
        if self.verdict is not None:
            return self.verdict
        if not self.probed:
            self.sampled, self.sampled_found = self.c.sample_found(self.location, self.store)
            self.probed = True
        # No row could be sampled (only pending uploads, rows newer than the run): the
        # merge decides alone.
        found = self.matched > 0 if not self.sampled else 2 * self.sampled_found >= self.sampled
        self.verdict = found and self.missing <= max(self.matched, PROBE_ROWS)
        return self.verdict

    def compare(self, row: KeyedRow, info: ObjectInfo) -> None:
        self.matched += 1
        if self.held and not self.rows_refused and self._trusted():
            self._flush_rows()
        if len(self.orphan_batch) >= BATCH and not self.orphans_refused:
            self._submit_orphans()

    def refused_row(self, row: KeyedRow, reason: str) -> None:
        """The store would not say whether this row's bytes exist: never judged."""
        self.c.report.skip("unchecked", 1)

    def orphan(self, info: ObjectInfo) -> None:
        c = self.c
        if c.stopping:
            raise _Stopped()
        if not c.judge_orphans:
            return
        if info.modified is None:
            c.report.skip("noAge", 1)
            return
        if info.modified >= c.report.cutoff:
            c.report.skip("young", 1)
            return
        if self.orphans_refused or c.exhausted:  # --max-delete spent: rows are still judged
            return
        self.orphan_batch.append(info)
        if self._trusted():
            if len(self.orphan_batch) >= BATCH:
                self._submit_orphans()
        elif len(self.orphan_batch) > HOLD_MAX:
            if self._decide():
                self._submit_orphans()
            else:
                self._refuse_orphans()

    def missing_row(self, row: KeyedRow) -> None:
        c = self.c
        if c.stopping:
            raise _Stopped()
        if not (c.wants("missing") or c.wants("pending")) or self.rows_refused:
            return
        self.held.append(row.id)
        self.missing += 1
        if self._trusted():
            if len(self.held) >= BATCH:
                self._flush_rows()
        elif len(self.held) > HOLD_MAX:
            if self._decide():
                self._flush_rows()
            else:
                self._refuse_rows()

    # batches ----------------------------------------------------------------------------------
    def _submit_orphans(self) -> None:
        """Send the queued orphans (held while the location was not trusted: they may be
        several batches) to the pool, BATCH at a time."""
        while len(self.orphan_batch) > BATCH:
            head, self.orphan_batch = self.orphan_batch[:BATCH], self.orphan_batch[BATCH:]
            self._submit_one(head)
        batch, self.orphan_batch = self.orphan_batch, []
        self._submit_one(batch)

    def _refuse_orphans(self) -> None:
        """Too few rows at this location have their bytes: the bucket or root is likely not the
        catalog's (a wrong AP_S3_BUCKET / AP_LOCAL_STORAGE_PATH pointing at another
        deployment's): nothing in it is an orphan of ours to delete."""
        self.orphans_refused = True
        n, self.orphan_batch = len(self.orphan_batch), []
        self._note_refusal(f"{n:,} or more objects no row references, and too few of the catalog's "
                           "rows have their bytes there", "orphan", n)

    def _note_refusal(self, what: str, kind: str, held: int) -> None:
        """Say why nothing of ``kind`` was deleted here, with the counts the guard went
        by, and the ``--trust`` that takes them (report.refusals, exit 1)."""
        variable = "AP_S3_BUCKET" if self.location is Location.S3 else "AP_LOCAL_STORAGE_PATH"
        flag = f"--trust {self.where}"
        lack = self.sampled - self.sampled_found
        sample = (f"{lack:,} of {plural(self.sampled, 'sampled row')} {'lacks its' if lack == 1 else 'lack their'} bytes "
                  f"({self.sampled_found:,} {'has them' if self.sampled_found == 1 else 'have them'})"
                  if self.sampled else "no row could be sampled")
        message = (
            f"{self.where}: {what}; {sample}, and the listing met {plural(self.missing, 'row')} without "
            f"bytes and {self.matched:,} with. Either the configuration looks wrong ({variable} "
            f"is not this catalog's) or the bytes were removed on purpose (a lifecycle rule "
            f"expiring objects before the catalog's retention): no {self.where} {kind} was deleted. "
            f"If {variable} is this catalog's, run again with {flag}"
        )
        self.c.report.refusals.append({
            "location": self.where, "kind": kind, "held": held,
            "sampled": self.sampled, "sampledWithBytes": self.sampled_found,
            "sampledWithoutBytes": self.sampled - self.sampled_found,
            "listedWithBytes": self.matched, "listedWithoutBytes": self.missing,
            "trust": flag, "message": message,
        })
        self.c.report.notes.append(message)

    def _submit_one(self, batch: list[ObjectInfo]) -> None:
        """Hand one batch to the pool; --max-delete is drawn there, after the batch's
        re-check (objects it keeps spend none of it)."""
        if self.c.exhausted:
            return
        future = self.c.pool.submit(self.c._orphan_batch, self.location, self.store, batch)
        self.inflight[future] = None
        while len(self.inflight) >= self.c.workers:
            done, _ = wait(self.inflight, return_when=FIRST_COMPLETED)
            for f in done:
                self.inflight.pop(f)
                self._collect(f)
        if self.c.stopping:
            raise _Stopped()

    def _collect(self, future: Future) -> None:
        outcome = future.result()
        if self.c.report.dry_run:
            self.held_counts.merge(outcome)
        else:
            self.c._count(outcome)

    def _flush_rows(self) -> None:
        while self.held:
            ids, self.held = self.held[:BATCH], self.held[BATCH:]
            outcome = _Outcome()
            self.c._rows_batch(self.location, self.store, ids, outcome)
            if self.c.report.dry_run:
                self.held_counts.merge(outcome)
            else:
                self.c._count(outcome)
            if self.c.stopping:
                raise _Stopped()

    def _refuse_rows(self) -> None:
        """The location is not trusted: the rows held are not deleted. A refusal (exit 1,
        naming --trust) only when some of them are rows gc would delete; rows within the
        grace, permanent ones or uploads in flight hold nothing back (a weekly ``gc
        --pending`` with no pending upload stays silent), and the pass goes on judging."""
        ids, self.held = self.held, []
        n = self.c._deletable(self.location, ids)  # what --trust would take, not every row seen
        if n == 0:
            return
        self.rows_refused = True
        self._note_refusal(f"{plural(n, 'row')} without bytes that gc would delete {'was' if n == 1 else 'were'} "
                           "held back", "row", n)

    def close(self, *, finish: bool = True, keep: bool = True) -> None:
        """End of the pass: deal with what is queued (``finish``), wait for the batches
        in flight, and count their outcomes (``keep``)."""
        try:
            if finish:
                if self.orphan_batch and not self.c.exhausted and not self.orphans_refused:
                    if not self._decide():
                        self._refuse_orphans()
                    else:
                        try:
                            self._submit_orphans()
                        except _Stopped:
                            pass
                if self.held and not self.rows_refused:
                    if not self._decide():
                        self._refuse_rows()
                    else:
                        try:
                            self._flush_rows()
                        except _Stopped:
                            pass
        finally:
            for future in list(self.inflight):
                self.inflight.pop(future)
                self._collect(future)
        if keep:
            self.c._count(self.held_counts)
        self.held_counts = _Outcome()


__all__ = [
    "DEFAULT_GRACE",
    "TRUSTABLE",
    "parse_trust",
    "GcReport",
    "KINDS",
    "MIN_GRACE",
    "PENDING_MARGIN",
    "collect_garbage",
    "parse_grace",
    "parse_kinds",
]
