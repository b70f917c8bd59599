"""`migrate-to-s3`: move DB and LOCAL bytes into S3 — verified, crash-safe, resumable.

Per batch, inside one short catalog transaction (which on Postgres holds the claimed rows
with ``FOR UPDATE SKIP LOCKED``, so concurrent runs split the work):

1. claim the next rows by id (keyset pagination: memory stays flat);
2. upload each file to its key with Content-MD5 (the server checks the bytes; the ETag is
   compared too; multipart uploads are checked by size);
3. flip the uploaded rows to ``location='S3'``, ``s3Key``, ``data=NULL``; commit.

Only after the commit are LOCAL files removed. A crash at any instant leaves every row
pointing at bytes that exist (before the commit: the old bytes; after it: the verified
object), and a re-run picks up exactly the rows not yet flipped.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from apstorage.catalog import migrate as sql
from apstorage.catalog.locks import try_run_lock
from apstorage.errors import ApStorageError, UsageError
from apstorage.model import ALL_TYPES, EXECUTION_TYPES, Location, is_execution_type, parse_type
from apstorage.services.context import Storage
from apstorage.services.files import RETENTION_TAG

READ_BUDGET = 32 * 1024 * 1024  # bytes of DB rows held in memory at once
SMALL_OBJECT = 1024 * 1024  # files up to this are uploaded by put_many, larger by the pool
MAX_LISTED_FAILURES = 1000


@dataclass(frozen=True)
class MigrateOptions:
    sources: tuple[Location, ...] = (Location.DB, Location.LOCAL)
    types: tuple[str, ...] = ()
    include_permanent: bool = False
    workers: int = 64
    batch_size: int = 100
    limit: int | None = None
    dry_run: bool = False


Outcome = int | None | Exception  # of one file: bytes moved; None: nothing to move; or why it failed


@dataclass
class MigrateReport:
    migrated: int = 0
    bytes: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict] = field(default_factory=list)
    freed_db_bytes: int = 0
    dry_run: bool = False
    interrupted: bool = False  # stopped early by ``stop``; a re-run moves the rest

    def fail(self, file_id: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append({"id": file_id, "reason": reason})

    def record(self, file_id: str, outcome: Outcome, *, from_db: bool) -> bool:
        """Count one file's outcome; True when it was moved."""
        if isinstance(outcome, ApStorageError):
            self.fail(file_id, outcome.message)
        elif isinstance(outcome, Exception):
            self.fail(file_id, f"{type(outcome).__name__}: {outcome}")
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
            "dryRun": self.dry_run,
            "interrupted": self.interrupted,
        }


def parse_sources(text: str) -> tuple[Location, ...]:
    out = []
    for part in (p.strip().upper() for p in text.split(",") if p.strip()):
        if part not in ("DB", "LOCAL"):
            raise UsageError(f"--from: {part.lower()!r} is not valid; accepted: db, local")
        out.append(Location(part))
    if not out:
        raise UsageError("--from: give db, local or both")
    return tuple(dict.fromkeys(out))


def types_for(source: Location, opts: MigrateOptions) -> frozenset[str]:
    """DB: execution data, plus permanent files with --include-permanent. LOCAL: every type."""
    if opts.types:
        chosen = frozenset(parse_type(t, "--types") for t in opts.types)
        permanent = sorted(t for t in chosen if not is_execution_type(t))
        if source is Location.DB and permanent and not opts.include_permanent:
            raise UsageError(
                f"--types: {', '.join(permanent)} are permanent files; add --include-permanent "
                "to move them out of the database"
            )
        return chosen
    if source is Location.LOCAL or opts.include_permanent:
        return frozenset(ALL_TYPES)
    return EXECUTION_TYPES


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
    """Move the candidates' bytes to S3. ``progress(files, bytes)`` is called as files
    arrive. When ``stop`` is set (the CLI sets it on SIGINT/SIGTERM) no new batch is
    claimed and no new upload starts; the uploads in flight finish, the batch in hand
    commits the rows whose upload was proven, and the report says ``interrupted``."""
    for source in opts.sources:
        types_for(source, opts)  # refuse bad --types before anything happens
    report = MigrateReport(dry_run=opts.dry_run)
    s3 = storage.store(Location.S3)
    if opts.dry_run:
        report.migrated, report.bytes = plan(storage, opts)
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
        for source in opts.sources:
            if stop is not None and stop.is_set():
                break
            _migrate_source(storage, source, types_for(source, opts), opts, report, pool, progress, stop)
    report.interrupted = stop is not None and stop.is_set()
    return report


def _warm_up(s3) -> None:
    s3.check_bucket()
    s3.fast  # noqa: B018 - builds the signed upload path once, before the workers need it


LANES = 2  # Postgres: batches in flight at once, each in its own transaction


@dataclass
class _Cursor:
    """What the lanes of one source share: the keyset position and the claim count."""

    after: str = ""
    claimed: int = 0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _migrate_source(storage, source, types, opts, report, pool, progress, stop=None) -> None:
    """On Postgres, LANES batches run at once on their own connections (rows are claimed
    with SKIP LOCKED, so they never overlap): while one batch waits for its last uploads
    and commits, the next keeps uploading. SQLite runs one lane."""
    cursor = _Cursor()
    lock = threading.Lock()  # guards report and progress
    if storage.catalog.dialect != "postgres":
        _lane(storage.catalog, storage, source, types, opts, opts.workers, report, pool, progress, cursor, lock, stop)
        return
    per_lane = -(-opts.workers // LANES)  # --workers uploads in flight in all
    from apstorage.catalog import open_catalog

    extra = [open_catalog(storage.settings) for _ in range(LANES - 1)]
    try:
        with ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="lane") as lanes:
            futures = [
                lanes.submit(
                    _lane, catalog, storage, source, types, opts, per_lane, report, pool, progress, cursor, lock, stop
                )
                for catalog in [storage.catalog, *extra]
            ]
            for future in futures:
                future.result()
    finally:
        for catalog in extra:
            catalog.close()


def _lane(
    catalog, storage, source, types, opts, concurrency, report, pool, progress, cursor: _Cursor, lock, stop=None
) -> None:
    s3 = storage.store(Location.S3)
    local = storage.store(Location.LOCAL) if source is Location.LOCAL else None
    stopped = stop.is_set if stop is not None else (lambda: False)
    while True:
        moved_local: list[str] = []
        with catalog.transaction() as cur:
            with cursor.lock:  # claims are consecutive id ranges, one lane at a time
                room = opts.batch_size
                if opts.limit is not None:
                    room = min(room, opts.limit - cursor.claimed)
                if cursor.done or room <= 0 or stopped():
                    return
                batch = sql.claim_batch(cur, catalog, [source], types, cursor.after, room)
                if not batch:
                    cursor.done = True
                    return
                cursor.after = batch[-1].row.id
                cursor.claimed += len(batch)
            moved: list[tuple[str, str, Location]] = []
            for group in _by_read_budget(batch):
                if stopped():
                    break  # the rest of the batch stays where it is, untouched
                payloads = dict(sql.read_data(cur, catalog, [c.row.id for c in group])) if local is None else {}
                for candidate, outcome in _upload_group(s3, local, group, payloads, pool, concurrency, stopped):
                    row = candidate.row
                    with lock:
                        if not report.record(row.id, outcome, from_db=local is None):
                            continue
                        if progress:
                            progress(1, outcome)
                    moved.append((row.id, row.key, source))
                    if local is not None:
                        moved_local.append(row.key)
            sql.mark_in_s3(cur, catalog, moved)
        # Committed: the rows now point at S3. Only now may the LOCAL copies go.
        for key in moved_local:
            with contextlib.suppress(ApStorageError):
                local.delete(key)
        if moved_local:
            local.prune_empty_dirs(moved_local)  # folders the moves emptied


def _upload_group(
    s3, local, group, payloads, pool, concurrency, stopped: Callable[[], bool] = lambda: False
) -> Iterator[tuple[sql.Candidate, Outcome]]:
    """Upload one group's files; yields (candidate, outcome) as each finishes.

    Small files (<= SMALL_OBJECT: nearly all execution data) go through ``put_many``:
    ``concurrency`` requests in flight from this thread, no thread hand-off per file.
    Larger ones (multipart for big LOCAL files) go to the worker pool meanwhile."""
    large = [c for c in group if c.stored_size > SMALL_OBJECT]
    small_ones = [c for c in group if c.stored_size <= SMALL_OBJECT]
    futures = [(c, pool.submit(_upload_one, s3, local, c, payloads.get(c.row.id))) for c in large]
    settled: list[tuple[sql.Candidate, Outcome]] = []  # decided without an upload
    sizes: dict[str, int] = {}

    def small() -> Iterator[tuple[sql.Candidate, str, bytes, dict[str, str] | None]]:
        for candidate in small_ones:
            if stopped():
                return  # no new upload; those in flight finish
            row = candidate.row
            if local is None:
                body = payloads.get(row.id)
                if body is None:
                    settled.append((candidate, None))  # a DB row with no bytes: nothing to move
                    continue
            else:
                try:
                    body = _read_small(local, row.key)
                except ApStorageError as exc:
                    settled.append((candidate, exc))
                    continue
                if body is None:  # larger on disk than the catalog says: stream it
                    futures.append((candidate, pool.submit(_upload_one, s3, local, candidate, None)))
                    continue
            sizes[row.id] = len(body)
            yield candidate, row.key, body, _tags(row)

    for candidate, error in s3.put_many(small(), concurrency=concurrency, expected=len(small_ones)):
        yield candidate, error or sizes[candidate.row.id]
    yield from settled
    for candidate, future in futures:
        try:
            yield candidate, future.result()
        except Exception as exc:  # noqa: BLE001 - reported per file
            yield candidate, exc


def _read_small(local, key: str) -> bytes | None:
    """A LOCAL file's bytes, or None when it is over SMALL_OBJECT after all."""
    try:
        with open(local.path_for(key), "rb") as fh:
            body = fh.read(SMALL_OBJECT + 1)
    except FileNotFoundError:
        raise ApStorageError(f"LOCAL file for {key} is missing") from None
    except OSError as exc:
        raise ApStorageError(f"cannot read the LOCAL file for {key}: {exc.strerror or exc}") from None
    return body if len(body) <= SMALL_OBJECT else None


def _tags(row) -> dict[str, str] | None:
    return RETENTION_TAG if is_execution_type(row.type) else None


def _by_read_budget(batch: list[sql.Candidate]) -> Iterable[list[sql.Candidate]]:
    group: list[sql.Candidate] = []
    held = 0
    for candidate in batch:
        if group and held + candidate.stored_size > READ_BUDGET:
            yield group
            group, held = [], 0
        group.append(candidate)
        held += candidate.stored_size
    if group:
        yield group


def _upload_one(s3, local, candidate: sql.Candidate, payload: bytes | None) -> int | None:
    """Upload one file; returns the bytes sent, or None when there is nothing to move."""
    row = candidate.row
    tags = _tags(row)
    if row.location is Location.DB:
        if payload is None:
            return None  # a DB row with no bytes: nothing to move
        s3.put_bytes(row.key, payload, tags=tags)
        return len(payload)
    info = local.stat(row.key)
    if info is None:
        raise ApStorageError(f"LOCAL file for {row.key} is missing")
    with open(local.path_for(row.key), "rb") as fh:
        s3.put(row.key, fh, info.size, tags=tags)
    return info.size
