"""`migrate-to-s3`: move DB and LOCAL bytes into S3 — verified, crash-safe, resumable.

Per batch (on Postgres inside one transaction that holds the claimed rows with ``FOR
UPDATE SKIP LOCKED``, so concurrent runs split the work; on SQLite with no transaction
open during the uploads, so other commands run beside it):

1. claim the next rows by id (keyset pagination: memory stays flat);
2. vet each row: it needs an object key (a row with no ``s3Key``, ``projectId`` or
   ``platformId`` is a failure naming its id), and that key must not be another row's
   bytes — an object another row references is never overwritten (the row is a failure);
3. upload each file with Content-MD5; an upload counts only when proven (S3Store: ETag =
   MD5 of the bytes, else a HEAD: size and checksum);
4. flip the proven rows to ``location='S3'``, ``s3Key``, ``data=NULL`` (and ``size`` where
   the row had none); commit (SQLite: ``synchronous=FULL``, so on disk). A row deleted
   meanwhile (a concurrent sweep) counts as gone, and its new object is removed unless
   another row references the key.

Only after the commit are LOCAL files removed, and only those no remaining row and no
symbolic link under the root still reaches. A crash at any instant leaves every row
pointing at bytes that exist (before the commit: the old bytes; after it: the proven
object), and a re-run picks up exactly the rows not yet flipped; it also removes LOCAL
files left by a crash between a commit and their removal (rows already in S3, object
proven again first).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from apstorage.catalog import migrate as sql
from apstorage.catalog import refs
from apstorage.catalog.locks import try_run_lock
from apstorage.errors import ApStorageError, NotFoundError, UsageError
from apstorage.model import ALL_TYPES, LOCATION_TYPES, Location, follows_storage_location, parse_type
from apstorage.services.context import Storage
from apstorage.services.files import retention_tags

READ_BUDGET = 32 * 1024 * 1024  # bytes of DB rows held in memory at once
SMALL_OBJECT = 1024 * 1024  # files up to this are uploaded by put_many, larger by the pool
MAX_LISTED_FAILURES = 1000
MAX_SIZE_COLUMN = 2_147_483_647  # the platform's "size" is a 32-bit integer


@dataclass(frozen=True)
class MigrateOptions:
    sources: tuple[Location, ...] = (Location.DB, Location.LOCAL)
    types: tuple[str, ...] = ()
    include_permanent: bool = False
    workers: int = 128
    batch_size: int = 100
    limit: int | None = None
    dry_run: bool = False


Outcome = int | None | Exception  # of one file: bytes moved; None: nothing to move; or why it failed


class SourceMissing(ApStorageError):
    """The bytes to move are not there (a LOCAL file, a DB row's data): a failure — unless
    the row itself is gone too, deleted meanwhile (a concurrent sweep)."""


@dataclass
class MigrateReport:
    migrated: int = 0
    bytes: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict] = field(default_factory=list)
    freed_db_bytes: int = 0
    dry_run: bool = False
    gone: int = 0  # rows deleted by someone else (a sweep) while being moved; also skipped
    leftovers_removed: int = 0  # LOCAL copies of rows already in S3, left by a crash
    leftovers_kept: int = 0  # such copies kept: their S3 object could not be proven
    interrupted: bool = False  # stopped early by ``stop``; a re-run moves the rest

    def fail(self, file_id: str, reason: str, key: str | None = None) -> None:
        """Count one row not moved. ``reason`` names the kind of failure, never the row or
        its key (those go in ``id`` and ``key``), so failures of one kind group into one
        line."""
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            entry = {"id": file_id, "reason": reason}
            if key is not None:
                entry["key"] = key
            self.failures.append(entry)

    def record(self, file_id: str, outcome: Outcome, *, from_db: bool, key: str | None = None) -> bool:
        """Count one file's outcome (``key``: its object key); True when it was moved."""
        if isinstance(outcome, ApStorageError):
            self.fail(file_id, outcome.message, key)
        elif isinstance(outcome, Exception):
            self.fail(file_id, f"{type(outcome).__name__}: {outcome}", key)
        elif outcome is None:
            self.skipped += 1
        else:
            self.migrated += 1
            self.bytes += outcome
            if from_db:
                self.freed_db_bytes += outcome
            return True
        return False

    def to_json(self) -> dict:
        return {
            "migrated": self.migrated,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "freedDatabaseBytes": self.freed_db_bytes,
            "gone": self.gone,
            "leftoversRemoved": self.leftovers_removed,
            "leftoversKept": self.leftovers_kept,
            "interrupted": self.interrupted,
            "dryRun": self.dry_run,
        }


def parse_sources(text: str) -> tuple[Location, ...]:
    out = []
    from apstorage.model import split_items

    for part in (p.upper() for p in split_items(text, "--from", "source") or ()):
        if part not in ("DB", "LOCAL"):
            raise UsageError(f"--from: {part.lower()!r} is not valid; accepted: db, local")
        out.append(Location(part))
    if not out:
        raise UsageError("--from: give db, local or both")
    return tuple(dict.fromkeys(out))


def types_for(source: Location, opts: MigrateOptions) -> frozenset[str]:
    """DB: the types that follow AP_FILE_STORAGE_LOCATION (execution data and flow
    bundles), plus permanent files with --include-permanent. LOCAL: every type."""
    if opts.types:
        chosen = frozenset(parse_type(t, "--types") for t in opts.types)
        permanent = sorted(t for t in chosen if not follows_storage_location(t))
        if source is Location.DB and permanent and not opts.include_permanent:
            raise UsageError(
                f"--types: {', '.join(permanent)} are permanent files; add --include-permanent "
                "to move them out of the database"
            )
        return chosen
    if source is Location.LOCAL or opts.include_permanent:
        return frozenset(ALL_TYPES)
    return LOCATION_TYPES


Progress = Callable[[int, int], None]


def plan(storage: Storage, opts: MigrateOptions) -> tuple[int, int]:
    """(files, bytes) the run would move."""
    files = size = 0
    for source in opts.sources:
        f, b = sql.count_candidates(storage.catalog, [source], types_for(source, opts))
        files, size = files + f, size + b
    if opts.limit is not None:
        files = min(files, opts.limit)
    return files, size


def migrate_to_s3(
    storage: Storage,
    opts: MigrateOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> MigrateReport:
    """Move the chosen rows' bytes to S3 (module docstring for the order of work).

    With ``dry_run`` nothing is written: every candidate row is vetted as a real run would
    vet it (key, shared bytes, the LOCAL file there and ours), and the counts are what a
    real run would move. Raises UsageError for bad options before anything happens.

    ``progress(files, bytes)`` is called as uploads are proven. When ``stop`` is set (the
    CLI sets it on SIGINT/SIGTERM) no new batch is claimed and no new upload starts; the
    uploads in flight finish, the batch in hand commits the rows whose upload was proven,
    and the report says ``interrupted``."""
    for source in opts.sources:
        types_for(source, opts)  # refuse bad --types before anything happens
    report = MigrateReport(dry_run=opts.dry_run)
    s3 = storage.store(Location.S3)
    if opts.dry_run:
        _dry_run(storage, opts, report)
        return report
    # Start-up in parallel: build the S3 client and check the bucket (wrong bucket or
    # credentials fail here, with their own exit code) while the catalog connects.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm-s3") as warm:
        s3_ready = warm.submit(_warm_up, s3)
        catalog = storage.catalog
        s3_ready.result()
    # Postgres runs share the work through row locks; SQLite takes one run at a time.
    lock = try_run_lock(catalog, "migrate") if catalog.dialect == "sqlite" else contextlib.nullcontext()
    if lock is None:
        raise ApStorageError(
            f"another migrate-to-s3 run is using {catalog.target}; SQLite catalogs take one "
            "run at a time — wait for it to finish"
        )
    with lock, ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="migrate") as pool:
        run = _Run(storage, opts, report, progress, stop)
        if Location.LOCAL in opts.sources and not run.stopped():
            _remove_leftovers(run)
        for source in opts.sources:
            if run.stopped():
                break
            _migrate_source(run, source, types_for(source, opts), pool)
    report.interrupted = stop is not None and stop.is_set()
    return report


def _warm_up(s3) -> None:
    s3.check_bucket()
    s3.fast  # noqa: B018 - builds the signed upload path once, before the workers need it


class _Run:
    """What one run's batches share: the stores, the report, the keys more than one row
    holds (asked once: ``refs.shared_keys``) and the files links under the LOCAL root reach."""

    def __init__(self, storage: Storage, opts: MigrateOptions, report: MigrateReport,
                 progress: Progress | None, stop: threading.Event | None = None) -> None:
        self.storage = storage
        self.opts = opts
        self.report = report
        self.progress = progress
        self.stop = stop
        self.s3 = storage.store(Location.S3)
        self.lock = threading.Lock()  # guards report and progress
        self.shared = refs.shared_keys(storage.catalog)
        self._links: set | None = None
        self.claimed = 0  # rows claimed by every source's lanes: what --limit bounds

    @property
    def local(self):
        return self.storage.store(Location.LOCAL)

    def stopped(self) -> bool:
        """Asked to stop (SIGINT/SIGTERM): claim no new batch, start no new upload."""
        return self.stop is not None and self.stop.is_set()

    @property
    def link_targets(self) -> set:
        if self._links is None:
            self._links = self.local.link_targets()
        return self._links

    def fail(self, file_id: str, reason: str, key: str | None = None) -> None:
        with self.lock:
            self.report.fail(file_id, reason, key)


@dataclass(frozen=True)
class _Job:
    """A vetted candidate: the key its bytes go to."""

    candidate: sql.Candidate
    key: str

    @property
    def row(self):
        return self.candidate.row


def _vet(run: _Run, cur, catalog, batch: list[sql.Candidate], *, lock_keys: bool) -> list[_Job]:
    """The candidates that may be uploaded; the others are reported as failures.

    A row needs a key; its key must not be another row's S3 object (checked in the
    batch's transaction for the keys more than one row holds); two rows of one batch with
    one key: the first goes. On Postgres a key another run is uploading to is left to it."""
    jobs: list[_Job] = []
    seen: dict[str, str] = {}
    for candidate in batch:
        row = candidate.row
        try:
            key = row.key
        except ApStorageError:
            run.fail(row.id, "no s3Key, projectId or platformId: the row has no object key")
            continue
        if key in seen:
            run.fail(row.id, "shares its key with another row of this run, moved first; not overwritten", key)
            continue
        seen[key] = row.id
        jobs.append(_Job(candidate, key))
    shared = [j.key for j in jobs if j.key in run.shared]
    if shared:
        owners = refs.rows_referencing(cur, catalog, shared, locations=("S3",), exclude=[j.row.id for j in jobs])
        kept = []
        for job in jobs:
            holders = owners.get(job.key)
            if holders:
                run.fail(job.row.id, f"s3://{run.s3.bucket}/{job.key} holds the bytes of row "
                         f"{holders[0][0]}; not moved over them", job.key)
            else:
                kept.append(job)
        jobs = kept
    if lock_keys:
        busy = sql.lock_keys(cur, catalog, [j.key for j in jobs])
        for job in [j for j in jobs if j.key in busy]:
            run.fail(job.row.id, "another migrate-to-s3 run is moving a row to its key; try again later", job.key)
        jobs = [j for j in jobs if j.key not in busy]
    return jobs


LANES = 2  # Postgres: batches in flight at once, each in its own transaction


@dataclass
class _Cursor:
    """What the lanes of one source share: the keyset position (the claim count, which
    --limit bounds, is the run's: ``_Run.claimed``)."""

    after: str = ""
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _migrate_source(run: _Run, source, types, pool) -> None:
    """On Postgres, LANES batches run at once on their own connections (rows are claimed
    with SKIP LOCKED, so they never overlap): while one batch waits for its last uploads
    and commits, the next keeps uploading. SQLite runs one lane."""
    cursor = _Cursor()
    storage, opts = run.storage, run.opts
    if storage.catalog.dialect != "postgres":
        _lane(run, storage.catalog, source, types, opts.workers, pool, cursor)
        return
    per_lane = -(-opts.workers // LANES)  # --workers uploads in flight in all
    from apstorage.catalog import open_catalog

    extra = [open_catalog(storage.settings) for _ in range(LANES - 1)]
    try:
        with ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="lane") as lanes:
            futures = [
                lanes.submit(_lane, run, catalog, source, types, per_lane, pool, cursor)
                for catalog in [storage.catalog, *extra]
            ]
            for future in futures:
                future.result()
    finally:
        for catalog in extra:
            catalog.close()


def _claim(run: _Run, cur, catalog, source, types, cursor: _Cursor, *, lock: bool = True) -> list[sql.Candidate] | None:
    opts = run.opts
    with cursor.lock:  # claims are consecutive id ranges, one lane at a time
        room = opts.batch_size
        if opts.limit is not None:  # one budget for the whole run, whatever the source
            room = min(room, opts.limit - run.claimed)
        if cursor.done or room <= 0 or run.stopped():
            return None
        batch = sql.claim_batch(cur, catalog, [source], types, cursor.after, room, lock=lock)
        if not batch:
            cursor.done = True
            return None
        cursor.after = batch[-1].row.id
        with run.lock:
            run.claimed += len(batch)
        return batch


def _lane(run: _Run, catalog, source, types, concurrency, pool, cursor: _Cursor) -> None:
    s3 = run.s3
    local = run.local if source is Location.LOCAL else None
    postgres = catalog.dialect == "postgres"
    while True:
        uploaded: dict[str, tuple[_Job, int]] = {}  # id -> (job, bytes sent)
        vanished: list[tuple[_Job, Outcome]] = []  # bytes not found: the row may be gone
        with sql.batch_scope(catalog) as cur:
            batch = _claim(run, cur, catalog, source, types, cursor)
            if batch is None:
                return
            jobs = _vet(run, cur, catalog, batch, lock_keys=postgres)
            for group in _by_read_budget(jobs):
                if run.stopped():
                    break  # the rest of the batch stays where it is, untouched
                payloads = dict(sql.read_data(cur, catalog, [j.row.id for j in group])) if local is None else {}
                for job, outcome in _upload_group(s3, local, group, payloads, pool, concurrency, run.stopped):
                    if isinstance(outcome, int):
                        uploaded[job.row.id] = (job, outcome)
                        if run.progress:
                            with run.lock:
                                run.progress(1, outcome)
                    elif isinstance(outcome, SourceMissing) or (outcome is None and job.candidate.has_data):
                        vanished.append((job, outcome))  # settled once the batch is done
                    else:
                        with run.lock:
                            run.report.record(job.row.id, outcome, from_db=local is None, key=job.key)
            moved = [
                (file_id, job.key, source, size if size <= MAX_SIZE_COLUMN else None)
                for file_id, (job, size) in uploaded.items()
            ]
            flipped: set[str] = set()
            if postgres:
                flipped = sql.mark_in_s3(cur, catalog, moved)
        if moved and not postgres:
            with catalog.transaction() as tx:  # short: the uploads are done
                flipped = sql.mark_in_s3(tx, catalog, moved)
        # Committed (and on disk): the flipped rows now point at S3.
        with run.lock:
            for file_id in flipped:
                run.report.record(file_id, uploaded[file_id][1], from_db=local is None)
        _settle_unflipped(run, catalog, [job for i, (job, _) in uploaded.items() if i not in flipped])
        _settle_vanished(run, catalog, vanished, from_db=local is None)
        if local is not None:
            _remove_local_copies(run, catalog, [uploaded[i][0].key for i in flipped])


def _settle_unflipped(run: _Run, catalog, jobs: list[_Job]) -> None:
    """Rows uploaded but not flipped: deleted meanwhile (a concurrent sweep: counted as
    gone) or moved by someone else (skipped). The object just uploaded is removed unless
    some row references its key."""
    if not jobs:
        return
    held = refs.rows_referencing(None, catalog, [j.key for j in jobs], locations=("S3",))
    for job in jobs:
        now = refs.row_exists(None, catalog, job.row.id)
        with run.lock:
            run.report.skipped += 1
            if now is None:
                run.report.gone += 1
        if job.key not in held:
            with contextlib.suppress(ApStorageError):
                run.s3.delete(job.key)


def _settle_vanished(run: _Run, catalog, vanished: list[tuple[_Job, Outcome]], *, from_db: bool) -> None:
    """Rows whose bytes were not found: gone (and skipped) when the row was deleted
    meanwhile, else the outcome as it was (a failure naming the row)."""
    for job, outcome in vanished:
        if refs.row_exists(None, catalog, job.row.id) is None:
            with run.lock:
                run.report.skipped += 1
                run.report.gone += 1
        else:
            with run.lock:
                run.report.record(job.row.id, outcome, from_db=from_db, key=job.key)


def _remove_local_copies(run: _Run, catalog, keys: list[str]) -> None:
    """Remove the LOCAL files of rows now in S3 — unless a remaining LOCAL row references
    the path, or a link under the root reaches the file."""
    if not keys:
        return
    local = run.local
    shared = [k for k in keys if k in run.shared]
    held = refs.rows_referencing(None, catalog, shared, locations=("LOCAL",)) if shared else {}
    for key in keys:
        if key in held or local.reached_by_link(key, run.link_targets):
            continue
        with contextlib.suppress(ApStorageError):
            local.delete(key)
    local.prune_empty_dirs(keys)  # folders the moves emptied


LEFTOVER_PAGE = 400


def _remove_leftovers(run: _Run) -> None:
    """LOCAL files whose rows are all in S3 already (a crash between a batch's commit and
    the removal of its LOCAL files): prove the S3 object against the file, then remove
    the file. A file a LOCAL row or a link still references stays; so does one whose
    object cannot be proven (counted in ``leftoversKept``)."""
    local = run.local
    catalog = run.storage.catalog
    page: list[str] = []

    def settle(keys: list[str]) -> None:
        # The rows whose own key each file is (by id: cheap), and, for the keys several
        # rows hold, every row naming them.
        owners = refs.rows_referencing(None, catalog, keys, by_id_only=True)
        shared = [k for k in keys if k in run.shared]
        if shared:
            for key, holders in refs.rows_referencing(None, catalog, shared).items():
                owners[key] = holders
        for key in keys:
            holders = owners.get(key)
            if not holders or any(location != Location.S3.value for _, location in holders):
                continue  # an orphan (gc's business) or a LOCAL row's file
            if local.reached_by_link(key, run.link_targets):
                continue
            if _prove_copy(run, local, key):
                with contextlib.suppress(ApStorageError):
                    local.delete(key)
                    run.report.leftovers_removed += 1
            else:
                run.report.leftovers_kept += 1

    for info in local.list(""):
        page.append(info.key)
        if len(page) >= LEFTOVER_PAGE:
            settle(page)
            page = []
    if page:
        settle(page)


def _prove_copy(run: _Run, local, key: str) -> bool:
    """True when the S3 object at ``key`` is proven to hold the LOCAL file's bytes."""
    import hashlib

    try:
        fh, size = local.open_file(key)
        with fh:
            digest = hashlib.md5()
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        return run.s3.prove(key, size, digest.hexdigest()) is None
    except ApStorageError:
        return False


def _dry_run(storage: Storage, opts: MigrateOptions, report: MigrateReport) -> None:
    """Count what a real run would move: every candidate vetted as a real run vets it,
    without uploading or locking anything."""
    run = _Run(storage, opts, report, None)
    catalog = storage.catalog
    for source in opts.sources:
        types = types_for(source, opts)
        cursor = _Cursor()
        while True:
            batch = _claim(run, None, catalog, source, types, cursor, lock=False)
            if batch is None:
                break
            for job in _vet(run, None, catalog, batch, lock_keys=False):
                row = job.row
                if source is Location.DB:
                    if not job.candidate.has_data:
                        report.skipped += 1
                        continue
                    size = job.candidate.stored_size
                else:
                    try:
                        info = run.local.stat(job.key)
                    except ApStorageError as exc:
                        report.fail(row.id, exc.message, job.key)
                        continue
                    if info is None:
                        report.fail(row.id, "the LOCAL file is missing", job.key)
                        continue
                    size = info.size
                report.migrated += 1
                report.bytes += size


def _upload_group(
    s3, local, group: list[_Job], payloads, pool, concurrency, stopped: Callable[[], bool] = lambda: False
) -> Iterator[tuple[_Job, Outcome]]:
    """Upload one group's files; yields (job, outcome) as each finishes.

    Small files (<= SMALL_OBJECT: nearly all execution data) go through ``put_many``:
    ``concurrency`` requests in flight from this thread, no thread hand-off per file.
    Larger ones (multipart for big LOCAL files) go to the worker pool meanwhile."""
    large = [j for j in group if j.candidate.stored_size > SMALL_OBJECT]
    small_ones = [j for j in group if j.candidate.stored_size <= SMALL_OBJECT]
    futures = [(j, pool.submit(_upload_one, s3, local, j, payloads.get(j.row.id))) for j in large]
    settled: list[tuple[_Job, Outcome]] = []  # decided without an upload
    sizes: dict[str, int] = {}

    def small() -> Iterator[tuple[_Job, str, bytes, dict[str, str] | None]]:
        for job in small_ones:
            if stopped():
                return  # no new upload; those in flight finish
            row = job.row
            if local is None:
                body = payloads.get(row.id)
                if body is None:
                    settled.append((job, None))  # a DB row with no bytes: nothing to move
                    continue
            else:
                try:
                    body = _read_small(local, job.key)
                except ApStorageError as exc:
                    settled.append((job, exc))
                    continue
                if body is None:  # larger on disk than the catalog says: stream it
                    futures.append((job, pool.submit(_upload_one, s3, local, job, None)))
                    continue
            sizes[row.id] = len(body)
            yield job, job.key, body, _tags(row)

    for job, error in s3.put_many(small(), concurrency=concurrency, expected=len(small_ones)):
        yield job, error or sizes[job.row.id]
    yield from settled
    for job, future in futures:
        try:
            yield job, future.result()
        except (ApStorageError, OSError) as exc:  # reported per file; a bug is raised as itself
            yield job, exc


def _read_small(local, key: str) -> bytes | None:
    """A LOCAL file's bytes, or None when it is over SMALL_OBJECT after all. Links are
    refused (LinkError), never read through."""
    try:
        fh, _ = local.open_file(key)
    except NotFoundError:
        raise SourceMissing(f"LOCAL file for {key} is missing") from None
    try:
        with fh:
            body = fh.read(SMALL_OBJECT + 1)
    except OSError as exc:
        raise ApStorageError(f"cannot read the LOCAL file for {key}: {exc.strerror or exc}") from None
    return body if len(body) <= SMALL_OBJECT else None


def _tags(row) -> dict[str, str] | None:
    return retention_tags(row.type)


def _by_read_budget(batch: list[_Job]) -> Iterable[list[_Job]]:
    group: list[_Job] = []
    held = 0
    for job in batch:
        if group and held + job.candidate.stored_size > READ_BUDGET:
            yield group
            group, held = [], 0
        group.append(job)
        held += job.candidate.stored_size
    if group:
        yield group


def _upload_one(s3, local, job: _Job, payload: bytes | None) -> int | None:
    """Upload one file; returns the bytes sent, or None when there is nothing to move."""
    row = job.row
    tags = _tags(row)
    if row.location is Location.DB:
        if payload is None:
            return None  # a DB row with no bytes: nothing to move
        s3.put_bytes(job.key, payload, tags=tags)
        return len(payload)
    try:
        fh, size = local.open_file(job.key)
    except NotFoundError:
        raise SourceMissing(f"LOCAL file for {job.key} is missing") from None
    with fh:
        s3.put(job.key, fh, size, tags=tags)
    return size
