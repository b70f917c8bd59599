"""`du`: where the bytes are (from the catalog, one aggregate query), and `du --verify`:
what in the catalog and the stores does not add up.

Usage comes from the catalog alone, so it costs one ``GROUP BY`` whatever the number of
objects. Verify compares the catalog with the S3 and LOCAL stores under the managed
prefixes (``platform/`` and ``project/``) and reports three kinds of problem:

- **missing**: a row at S3/LOCAL whose object or file is not there;
- **orphans**: an object or file no row points at (a project deleted by cascade leaves
  them behind: its rows go, its objects stay); zero-byte "folder" objects (keys ending
  in "/") are not files and never orphans;
- **size mismatches**: the object's size differs from the row's ``size`` (the stored
  size: for ``ZSTD`` rows, the compressed size, which is what the object holds).

Memory stays flat whatever the store holds. Each location is checked by a merge join:
the database streams the rows sorted by object key (a server-side cursor), the store
lists its keys in its own order, and one pass over both finds all three kinds. Listing
runs in background threads (one per managed prefix, each a bounded queue of pages) so
network and merge overlap. S3 documents byte order, but not every S3-compatible store
keeps it: SeaweedFS, like a directory walk, lists folder by folder (``project/p/..``
before ``project/p-x/..``). The orders differ only for keys holding a character below
"/" (never in the platform's own keys), so the merge assumes byte order, and if the
listing proves otherwise starts that location over in folder order. If that fails too
(the LOCAL store lists a folder's files before its subfolders), it falls back to
lookups: each page of listed objects is looked up by primary key (the file id is the
key's last segment), which finds orphans and size mismatches and counts the rows that
have their object; only when that count falls short of the rows are the rows scanned by
keyset pages to find which objects are missing.

Verify never deletes anything; each kind of problem comes with what would clean it.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, Sequence

from apstorage.catalog import du as sql
from apstorage.catalog.du import KeyedRow, UsageFilter, UsageRow
from apstorage.errors import (
    ApStorageError,
    BackendUnavailableError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    UsageError,
)
from apstorage.model import Location, iso_utc, parse_owner_ids, parse_type, split_items
from apstorage.services.context import Storage
from apstorage.stores.base import ObjectInfo, Store
from apstorage.text import plural

GROUP_NAMES = tuple(sql.GROUP_COLUMNS)
DEFAULT_BY = ("location", "type")
MANAGED_PREFIXES = ("platform/", "project/")
LOOKUP_BATCH = 1000  # listed files per primary-key lookup
LIST_PAGE = 1000  # objects per page handed from a listing thread
LIST_QUEUE_PAGES = 8  # pages a listing thread may run ahead
STAT_WORKERS = 8  # concurrent stat/HEAD requests when rows are checked one by one

# What would clean each kind of problem, in a few words (tables) and in full (JSON).
CLEAN_SHORT = {
    "missing": "`apstorage gc --missing` (execution data; permanent rows are reported)",
    "orphans": "`apstorage gc --orphans` (objects older than its --grace, 24h)",
    "sizeMismatches": "none: check with `get ID`, then store the file again",
    "refused": "check the key with your S3 tool; the rest was checked",
    "pendingUploads": (
        "nothing yet: the upload may still come; `apstorage gc --pending` once its URL expired "
        "(a row `presign --upload` did not make: `gc --missing` once older than its --grace, 24h)"
    ),
    "restorable": "`apstorage restore ID...` or `restore --all-missing` (a noncurrent version holds the bytes)",
    "orphanVersions": "`apstorage gc --orphans` (versions older than its --grace) or a lifecycle rule",
    "loneDeleteMarkers": "`apstorage gc --orphans`, or the lifecycle rule `lifecycle apply` adds",
}
CLEAN = {
    "missing": (
        "rows whose bytes are gone: `apstorage gc --missing` deletes execution-data rows "
        "older than its --grace (24h by default); rows `presign --upload` made whose URL "
        "expired with no upload go with `apstorage gc --pending`. Permanent rows are never "
        "deleted: gc reports them (exit 1) for a person to look at. First check "
        "AP_S3_BUCKET and AP_LOCAL_STORAGE_PATH point where the platform writes."
    ),
    "orphans": (
        "objects no row points at: `apstorage gc --orphans` deletes those older than its "
        "--grace (24h by default), re-checking the catalog just before each batch; "
        "`apstorage gc --orphans --dry-run` lists what it would take."
    ),
    "pendingUploads": (
        "S3 rows created for a pre-signed upload whose object has not arrived yet while "
        "its URL may still be used (the row is younger than the expiry `presign --upload` "
        "recorded; a row without one, such as the platform's own, while younger than gc's "
        "default --grace, 24h): not lost bytes. Once the URL has expired with no upload, "
        "`apstorage gc --pending` removes them; a row without a recorded expiry is "
        "`gc --missing`'s once older than the grace."
    ),
    "sizeMismatches": (
        "the stored bytes differ from the row's size: no apstorage command repairs these; "
        "read the file with `apstorage get ID` to check it, then store it again."
    ),
    "restorable": (
        "S3 rows whose current object is gone (a delete marker, or no entry at all) while a "
        "noncurrent version still holds bytes: not lost. `apstorage restore ID...` (or "
        "`apstorage restore --all-missing`) copies the newest version back as the current "
        "object and proves it; `gc --missing` never deletes these rows."
    ),
    "orphanVersions": (
        "noncurrent versions of keys no row references (a sweep without --purge-versions "
        "leaves them): billed bytes nothing can read. `apstorage gc --orphans` deletes those "
        "older than its --grace; the lifecycle rule `apstorage lifecycle apply` adds on a "
        "versioned bucket expires execution data's noncurrent versions."
    ),
    "loneDeleteMarkers": (
        "keys whose every entry is a delete marker (no version left) that no row references: "
        "no bytes, but listed and counted by the store. `apstorage gc --orphans` removes them, "
        "as does the ExpiredObjectDeleteMarker rule `apstorage lifecycle apply` adds."
    ),
    "refused": (
        "rows whose object the store refused to look up (an error other than not-found, "
        "e.g. HTTP 400 for a key it will not take): their bytes could not be checked; the "
        "rest of the catalog was. Look at the key with your S3 tool."
    ),
}

# When a run has left this much reclaimable space in the catalog, say so once.
VACUUM_HINT_BYTES = 64 * 1024 * 1024
VACUUM_HINT_SHARE = 0.20


# -- usage ------------------------------------------------------------------------------------


def _split(values: Iterable[str] | None) -> list[str]:
    """`--x a,b --x c` → [a, b, c] (blank items dropped)."""
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def parse_by(values: Iterable[str] | None) -> tuple[str, ...]:
    names = [v.lower() for v in _split(values)]
    if not names:
        return DEFAULT_BY
    bad = [n for n in names if n not in GROUP_NAMES]
    if bad:
        raise UsageError(
            f"--by: unknown grouping {', '.join(map(repr, bad))}; accepted: {', '.join(GROUP_NAMES)}"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class DuRequest:
    by: tuple[str, ...] = DEFAULT_BY
    types: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    platform_ids: tuple[str, ...] = ()
    older_than: int | None = None  # seconds

    @classmethod
    def from_flags(
        cls,
        by: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        projects: Iterable[str] | None = None,
        platforms: Iterable[str] | None = None,
        older_than: str | None = None,
    ) -> "DuRequest":
        """Validate command-line values (UsageError, exit 2, naming the flag)."""
        from apstorage.durations import parse_duration

        return cls(
            by=parse_by(by),
            types=tuple(dict.fromkeys(parse_type(t, "--type") for t in split_items(types, "--type") or ())),
            project_ids=parse_owner_ids(projects, "--project"),
            platform_ids=parse_owner_ids(platforms, "--platform"),
            older_than=None if older_than is None else parse_duration(older_than, "--older-than"),
        )

    @property
    def filtered(self) -> bool:
        return bool(self.types or self.project_ids or self.platform_ids or self.older_than)


@dataclass
class DuReport:
    by: tuple[str, ...]
    groups: list[UsageRow]
    created_before: datetime | None = None
    verify: "VerifyReport | None" = None
    catalog: "sql.Footprint | None" = None
    versions: object = None  # du_versions.VersionFigures of a versioned bucket, else None

    @property
    def files(self) -> int:
        return sum(g.files for g in self.groups)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.groups)

    @property
    def unsized(self) -> int:
        return sum(g.unsized for g in self.groups)

    def group_dicts(self) -> list[dict]:
        return [
            {**dict(zip(self.by, g.keys)), "files": g.files, "bytes": g.bytes, "unsized": g.unsized}
            for g in self.groups
        ]

    def to_json(self) -> dict:
        data: dict = {
            "total": {"files": self.files, "bytes": self.bytes, "unsized": self.unsized},
            "by": list(self.by),
            "groups": self.group_dicts(),
        }
        if self.created_before is not None:
            data["createdBefore"] = iso_utc(self.created_before)
        if self.catalog is not None:
            data["catalog"] = self.catalog.to_json()
        if self.verify is not None:
            data["verify"] = self.verify.to_json()
        if self.versions is not None:
            data["s3Versions"] = self.versions.to_json()  # type: ignore[attr-defined]
        return data


def disk_usage(storage: Storage, request: DuRequest, *, now: datetime | None = None) -> DuReport:
    """Files and bytes per group, from the catalog in one aggregate query; ordered by the
    ``by`` keys, the last key's groups largest first."""
    created_before = None
    if request.older_than is not None:
        created_before = (now or datetime.now(timezone.utc)) - timedelta(seconds=request.older_than)
    where = UsageFilter(
        types=request.types,
        project_ids=request.project_ids,
        platform_ids=request.platform_ids,
        created_before=created_before,
    )
    groups = sql.usage(storage.catalog, request.by, where)
    # By the --by keys, the last one largest first: `--by location,type` keeps each
    # location's types together, biggest first; `--by project` lists the largest first.
    def order(g: UsageRow) -> tuple:
        keys = tuple("" if k is None else str(k) for k in g.keys)
        return (*keys[:-1], -g.bytes, -g.files, *keys[-1:])

    groups.sort(key=order)
    # Unfiltered, the groups count every row: the footprint need not count them again.
    counted = sum(g.files for g in groups) if where == UsageFilter() else None
    return DuReport(
        by=request.by, groups=groups, created_before=created_before,
        catalog=sql.footprint(storage.catalog, rows=counted),
    )


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"


def vacuum_hint(storage: Storage) -> str | None:
    """One line suggesting VACUUM (SQLite) or VACUUM FULL (Postgres) when the ``file``
    table could return more than ``VACUUM_HINT_BYTES`` and more than
    ``VACUUM_HINT_SHARE`` of its size; None otherwise. Called after the commands that
    empty rows (migrate-to-s3, sweep-expired, gc); the figures come from
    ``catalog.du.footprint``."""
    fp = sql.footprint(storage.catalog)
    if fp.reclaimable <= VACUUM_HINT_BYTES or fp.reclaimable <= VACUUM_HINT_SHARE * fp.on_disk:
        return None
    share = fp.reclaimable / fp.on_disk if fp.on_disk else 0
    if fp.dialect == "postgres":
        how = 'run VACUUM FULL "file" in a quiet window (it locks the table while it rewrites it)'
    else:
        how = f"run VACUUM on {storage.catalog.target.removeprefix('sqlite:')} while no apstorage command runs"
    return (
        f"the catalog's file table could return about {_mib(fp.reclaimable)} of "
        f"{_mib(fp.on_disk)} ({share:.0%}) to the system: {how}"
    )


# -- verify -----------------------------------------------------------------------------------

# The orders a store may list keys in. "bytes" is S3's documented order (and AWS's);
# "segments" compares keys folder by folder, as a directory walk does: SeaweedFS lists
# `project/p/...` before `project/p-x/...`, although "-" sorts before "/". The two
# differ only for keys holding a character below "/" (such as "-" or "."), which the
# platform's own keys (letters, digits, "_") never do.
ORDERS = ("bytes", "segments")


def sort_key(key: str, order: str) -> str:
    """``key`` as it compares in ``order``: folder order is byte order with "/" below
    every other character."""
    return key if order == "bytes" else key.replace("/", "\x01")


@dataclass
class Problems:
    """One kind of problem: counts and bytes always; the items up to ``limit``."""

    kind: str
    limit: int | None = None
    files: int = 0
    bytes: int = 0
    items: list[dict] = field(default_factory=list)

    def add(self, amount: int | None, /, **item: object) -> None:
        self.files += 1
        self.bytes += amount or 0
        if self.limit is None or len(self.items) < self.limit:
            self.items.append(item)

    def extend(self, other: "Problems") -> None:
        self.files += other.files
        self.bytes += other.bytes
        room = len(other.items) if self.limit is None else max(0, self.limit - len(self.items))
        self.items.extend(other.items[:room])

    def to_json(self) -> dict:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "clean": CLEAN[self.kind],
            "items": self.items,
            "itemsShown": len(self.items),
        }


@dataclass
class LocationCheck:
    location: str
    target: str
    objects: int = 0  # listed under the managed prefixes
    bytes: int = 0
    rows: int = 0  # catalog rows at this location
    checked: bool = True
    method: str = ""  # how rows and objects were compared
    note: str = ""

    def to_json(self) -> dict:
        return {
            "location": self.location,
            "target": self.target,
            "checked": self.checked,
            "objects": self.objects,
            "bytes": self.bytes,
            "rows": self.rows,
            "method": self.method,
            "note": self.note,
        }


@dataclass
class VerifyReport:
    locations: list[LocationCheck] = field(default_factory=list)
    missing: Problems = field(default_factory=lambda: Problems("missing"))
    orphans: Problems = field(default_factory=lambda: Problems("orphans"))
    size_mismatches: Problems = field(default_factory=lambda: Problems("sizeMismatches"))
    refused: Problems = field(default_factory=lambda: Problems("refused"))
    # S3 rows with no object yet, young enough that their pre-signed upload may still come:
    # reported apart from lost bytes, and not an inconsistency.
    pending_uploads: Problems = field(default_factory=lambda: Problems("pendingUploads"))
    # A versioned bucket only (services.du_versions): None elsewhere, and absent from JSON.
    restorable: Problems | None = None
    orphan_versions: Problems | None = None
    lone_markers: Problems | None = None
    versions: object = None  # du_versions.VersionFigures

    @property
    def ok(self) -> bool:
        """No problem found; pending uploads are not one (their bytes may still come)."""
        return not any(kind.files for kind in self.kinds() if kind is not self.pending_uploads)

    def kinds(self) -> list[Problems]:
        versioned = [k for k in (self.restorable, self.orphan_versions, self.lone_markers) if k is not None]
        return [self.missing, self.orphans, self.size_mismatches, self.refused, self.pending_uploads, *versioned]

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "locations": [c.to_json() for c in self.locations],
            "missing": self.missing.to_json(),
            "orphans": self.orphans.to_json(),
            "sizeMismatches": self.size_mismatches.to_json(),
            "refused": self.refused.to_json(),
            "pendingUploads": self.pending_uploads.to_json(),
            **({} if self.restorable is None else {"restorable": self.restorable.to_json()}),
            **({} if self.orphan_versions is None else {"orphanVersions": self.orphan_versions.to_json()}),
            **({} if self.lone_markers is None else {"loneDeleteMarkers": self.lone_markers.to_json()}),
            **({} if self.versions is None else {"versions": self.versions.to_json()}),  # type: ignore[attr-defined]
        }


class _Tally:
    """What one pass over one location found; kept apart until the pass completes (a
    pass that finds the store's listing order is not the one assumed starts over)."""

    def __init__(self, where: str, limit: int | None) -> None:
        self.where = where
        self.missing = Problems("missing", limit)
        self.orphans = Problems("orphans", limit)
        self.mismatches = Problems("sizeMismatches", limit)
        self.refused = Problems("refused", limit)
        self.pending = Problems("pendingUploads", limit)
        self.now = datetime.now(timezone.utc)
        self.objects = 0
        self.bytes = 0
        # A versioned bucket: rows without a current object wait here, 1,000 at a time, to
        # be sorted into restorable (a version holds bytes) and missing (du_versions).
        self.versions_store: Store | None = None
        self.restorable = Problems("restorable", limit)
        self.unsure: list[KeyedRow] = []
        self.lock = threading.Lock()

    def listed(self, info: ObjectInfo) -> None:
        self.objects += 1
        self.bytes += info.size

    def missing_row(self, row: KeyedRow) -> None:
        if self.versions_store is not None and row.key:
            with self.lock:
                self.unsure.append(row)
                if len(self.unsure) < 1000:
                    return
                rows, self.unsure = self.unsure, []
            self._sort_unsure(rows)
            return
        self._missing(row)

    def _sort_unsure(self, rows: list[KeyedRow]) -> None:
        from apstorage.services.versions import restorable_ids

        found, failed = restorable_ids(self.versions_store, rows)  # type: ignore[arg-type]
        for row in rows:
            if row.id in found:
                self.restorable.add(row.size, location=self.where, id=row.id, key=row.key, size=row.size)
            elif row.id in failed:
                self.refused_row(row, failed[row.id])
            else:
                self._missing(row)

    def _missing(self, row: KeyedRow) -> None:
        expires = _upload_expires(row)
        if self.where == "S3" and expires is not None and expires > self.now:
            self.pending.add(row.size, location=self.where, id=row.id, key=row.key, size=row.size,
                             created=iso_utc(row.created), expiresAt=iso_utc(expires))
            return
        self.missing.add(row.size, location=self.where, id=row.id, key=row.key, size=row.size)

    def refused_row(self, row: KeyedRow, reason: str) -> None:
        self.refused.add(row.size, location=self.where, id=row.id, key=row.key, size=row.size, error=reason)

    def orphan(self, info: ObjectInfo) -> None:
        self.orphans.add(info.size, location=self.where, key=info.key, size=info.size)

    def compare(self, row: KeyedRow, info: ObjectInfo) -> None:
        if row.size is not None and row.size != info.size:
            self.mismatches.add(
                info.size, location=self.where, id=row.id, key=row.key, size=row.size,
                objectSize=info.size,
            )

    def into(self, report: VerifyReport, check: LocationCheck) -> None:
        if self.unsure:
            rows, self.unsure = self.unsure, []
            self._sort_unsure(rows)
        if self.versions_store is not None:
            report.restorable = self.restorable
        check.objects, check.bytes = self.objects, self.bytes
        report.missing.extend(self.missing)
        report.orphans.extend(self.orphans)
        report.size_mismatches.extend(self.mismatches)
        report.refused.extend(self.refused)
        report.pending_uploads.extend(self.pending)


def _upload_expires(row: KeyedRow) -> datetime | None:
    """Until when a row's pre-signed upload may still come: the expiry `presign --upload`
    records; for a row without it (the platform's own pre-signed uploads), its creation
    plus gc's default grace (24 h: ``gc --missing`` takes it after that, so du calls it
    missing from then on too). None when unknown."""
    if row.upload_expires:
        try:
            expires = datetime.fromisoformat(str(row.upload_expires).replace("Z", "+00:00"))
        except ValueError:
            expires = None
        if expires is not None:
            return expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
    if row.created is None:
        return None
    from apstorage.services.gc import DEFAULT_GRACE

    return row.created + timedelta(seconds=DEFAULT_GRACE)


class _OutOfOrder(Exception):
    """The listing (or the rows) did not come in the order a merge assumed."""


def verify(
    storage: Storage,
    *,
    limit: int | None = None,
    on_listed: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Compare the catalog with the S3 and LOCAL stores. Never deletes anything.

    ``limit`` caps the problem items kept per kind (counts and bytes are always exact);
    ``on_listed(n)`` is called as objects are listed (progress).
    """
    report = VerifyReport(
        missing=Problems("missing", limit),
        orphans=Problems("orphans", limit),
        size_mismatches=Problems("sizeMismatches", limit),
        refused=Problems("refused", limit),
        pending_uploads=Problems("pendingUploads", limit),
    )
    tick = on_listed or (lambda n: None)
    catalog = storage.catalog
    settings = storage.settings

    counts = sql.count_rows(catalog, (Location.S3.value, Location.LOCAL.value))
    s3_rows, s3_odd = counts[Location.S3.value]
    if settings.s3_bucket:
        check = LocationCheck("S3", f"s3://{settings.s3_bucket}", rows=s3_rows)
        report.locations.append(check)
        _verify_location(storage, Location.S3, check, report, tick, odd=s3_odd, limit=limit)
    elif s3_rows:
        raise ConfigError(
            f"{plural(s3_rows, 'row')} in the catalog {'is' if s3_rows == 1 else 'are'} in S3 but AP_S3_BUCKET is not set: "
            "set the AP_S3_* variables so verify can check them"
        )
    else:
        report.locations.append(
            LocationCheck("S3", "", checked=False, note="AP_S3_BUCKET not set and no S3 rows")
        )

    local_rows, local_odd = counts[Location.LOCAL.value]
    root = settings.local_storage_path
    check = LocationCheck("LOCAL", str(root), rows=local_rows)
    report.locations.append(check)
    if local_rows or root.is_dir():
        _verify_location(storage, Location.LOCAL, check, report, tick, odd=local_odd, limit=limit)
    else:
        check.checked = False
        check.note = "no LOCAL rows and no folder"
    return report


def _verify_location(storage: Storage, location: Location, check: LocationCheck,
                     report: VerifyReport, tick: Callable[[int], None], *, odd: int,
                     limit: int | None) -> None:
    store = storage.store(location)
    # S3: the two managed prefixes, listed side by side. LOCAL: one walk of the root
    # (the LOCAL store walks the whole root whatever the prefix), filtered.
    prefixes = MANAGED_PREFIXES if location is Location.S3 else ("",)
    notes = []
    versioning = None
    if location is Location.S3:
        from apstorage.services.versions import ask_versioning

        versioning = ask_versioning(storage)
        if versioning.note:
            notes.append(versioning.unknown_line or versioning.note)
        if not versioning.may_keep_versions:
            versioning = None
    for order in ORDERS:
        tally = _Tally(location.value, limit)
        tally.versions_store = store if versioning is not None else None
        try:
            _merge(storage.catalog, store, prefixes, order, tally, tick)
        except _OutOfOrder as exc:
            notes.append(f"not {order} order ({exc})")
            continue
        check.method = f"merge in {order} order"
        check.note = "; ".join(notes)
        tally.into(report, check)
        _check_versions(storage, store, versioning, prefixes, report, tick, limit)
        return
    tally = _Tally(location.value, limit)
    tally.versions_store = store if versioning is not None else None
    _lookups(storage.catalog, store, prefixes, tally, tick, rows=check.rows, odd=odd)
    check.method = "lookups by id"
    check.note = "; ".join(notes)
    tally.into(report, check)
    _check_versions(storage, store, versioning, prefixes, report, tick, limit)


def _check_versions(storage: Storage, store: Store, versioning, prefixes, report: VerifyReport,
                    tick: Callable[[int], None], limit: int | None) -> None:
    """A versioned bucket: one pass over its version listing (services.du_versions)."""
    if versioning is None:
        return
    from apstorage.services.du_versions import check

    found = check(storage, store, versioning, prefixes, lambda kind: Problems(kind, limit), tick)  # type: ignore[arg-type]
    report.orphan_versions = found.orphan_versions  # type: ignore[assignment]
    report.lone_markers = found.lone_markers  # type: ignore[assignment]
    report.versions = found.figures


def _folder_marker(info: ObjectInfo) -> bool:
    """A zero-byte object whose key ends in "/": what consoles and some tools create to
    show a folder. It holds no file, so it is never an orphan (nor counted)."""
    return info.size == 0 and info.key.endswith("/")


def _managed(key: str) -> bool:
    return key.startswith(MANAGED_PREFIXES)


@dataclass(frozen=True)
class _Refused:
    """The store answered a lookup of one key with an error other than not-found."""

    reason: str


def _stat(store: Store, key: str | None) -> ObjectInfo | _Refused | None:
    """stat, with a key the store refuses as unsafe (or no key) counting as absent, and
    any other error about this one key (HTTP 400, a name the disk will not take) kept as
    ``_Refused`` so the rest is still checked. A LOCAL path that is a symbolic link is not
    a file of ours (stores/local.py) and counts as absent. Errors about the store as a
    whole (it is unreachable, refuses the credentials, the bucket is gone) stop the run."""
    from apstorage.stores.local import LinkError

    if key is None:
        return None
    try:
        return store.stat(key)
    except (UsageError, LinkError):
        return None
    except (BackendUnavailableError, PermissionDeniedError, NotFoundError, ConfigError):
        raise
    except ApStorageError as exc:
        return _Refused(exc.message)
    except OSError as exc:  # LOCAL: a name too long, a component that is a file, ...
        return _Refused(f"{exc.strerror or exc}")


# -- the merge join -------------------------------------------------------------------------


def _merge(catalog, store: Store, prefixes: Sequence[str], order: str, tally: _Tally,
           tick: Callable[[int], None]) -> None:
    """One pass over the rows sorted by key and the objects as listed, both in ``order``."""
    listing = _ListingThreads(store, prefixes)
    rows = sql.iter_rows_by_key(catalog, tally.where, order=order)
    try:
        _merge_streams(rows, listing.objects(), store, order, tally, tick)
    finally:
        rows.close()
        listing.close()


def _merge_streams(rows: Iterator[KeyedRow], objects: Iterator[ObjectInfo], store: Store,
                   order: str, tally: _Tally, tick: Callable[[int], None]) -> None:
    last_row = last_obj = ""

    def next_row() -> tuple[str, KeyedRow] | tuple[None, None]:
        nonlocal last_row
        for r in rows:
            if r.key is None:  # no s3Key and no owner: it cannot have an object
                tally.missing_row(r)
                continue
            k = sort_key(r.key, order)
            if k < last_row:
                raise _OutOfOrder(f"the catalog sorted {r.key!r} late")
            last_row = k
            return k, r
        return None, None

    def next_obj() -> tuple[str, ObjectInfo] | tuple[None, None]:
        nonlocal last_obj
        for o in objects:
            if not _managed(o.key):
                continue
            k = sort_key(o.key, order)
            if k <= last_obj:
                raise _OutOfOrder(f"{o.key!r} was listed late")
            last_obj = k
            tally.listed(o)
            if tally.objects % LIST_PAGE == 0:
                tick(LIST_PAGE)
            return k, o
        return None, None

    def unlisted(r: KeyedRow) -> None:
        if not _managed(r.key):  # type: ignore[arg-type]
            # Outside the listed prefixes: ask the store about this one key.
            info = _stat(store, r.key)
            if isinstance(info, _Refused):
                tally.refused_row(r, info.reason)
                return
            if info is not None:
                tally.compare(r, info)
                return
        tally.missing_row(r)

    (rk, row), (ok, obj) = next_row(), next_obj()
    pointed_at = False  # some row points at the current object
    while row is not None or obj is not None:
        if obj is None or (row is not None and rk < ok):
            unlisted(row)
            rk, row = next_row()
        elif row is None or ok < rk:
            if not pointed_at:
                tally.orphan(obj)
            (ok, obj), pointed_at = next_obj(), False
        else:  # the same key (several rows may share one object)
            pointed_at = True
            tally.compare(row, obj)
            rk, row = next_row()
    tick(tally.objects % LIST_PAGE)


class _ListingThreads:
    """List several prefixes at once, each in its own thread feeding a bounded queue of
    pages, and hand the objects back prefix after prefix (in the order of ``prefixes``,
    which must be sorted and not prefixes of one another)."""

    _END = object()

    def __init__(self, store: Store, prefixes: Sequence[str]) -> None:
        self._stop = threading.Event()
        self._queues: list[queue.Queue] = []
        self._threads: list[threading.Thread] = []
        for prefix in prefixes:
            q: queue.Queue = queue.Queue(maxsize=LIST_QUEUE_PAGES)
            t = threading.Thread(target=self._run, args=(store, prefix, q), daemon=True,
                                 name=f"apstorage-du-list-{prefix}")
            self._queues.append(q)
            self._threads.append(t)
            t.start()

    def _put(self, q: queue.Queue, item: object) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, store: Store, prefix: str, q: queue.Queue) -> None:
        page: list[ObjectInfo] = []
        try:
            for info in store.list(prefix):
                if _folder_marker(info):
                    continue
                page.append(info)
                if len(page) >= LIST_PAGE:
                    if not self._put(q, page):
                        return
                    page = []
            if page and not self._put(q, page):
                return
            self._put(q, self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(q, exc)

    def objects(self) -> Iterator[ObjectInfo]:
        for q in self._queues:
            while True:
                item = q.get()
                if item is self._END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield from item

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


# -- lookups: any listing order ----------------------------------------------------------------


def _lookups(catalog, store: Store, prefixes: Sequence[str], tally: _Tally,
             tick: Callable[[int], None], *, rows: int, odd: int) -> None:
    """Each page of listed objects is looked up by primary key (the file id is the key's
    last segment): orphans and size mismatches, and how many rows have their object.
    Only when that falls short of the rows are the rows scanned (keyset pages by id) and
    their objects asked for one by one, stopping once every unmatched row is found."""
    matched = 0
    listing = _ListingThreads(store, prefixes)
    try:
        batch: list[ObjectInfo] = []
        for info in listing.objects():
            if not _managed(info.key):
                continue
            tally.listed(info)
            batch.append(info)
            if len(batch) >= LOOKUP_BATCH:
                matched += _lookup_batch(catalog, batch, tally, odd=odd)
                tick(len(batch))
                batch = []
        if batch:
            matched += _lookup_batch(catalog, batch, tally, odd=odd)
            tick(len(batch))
    finally:
        listing.close()

    unmatched = rows - matched
    if unmatched <= 0:
        return
    seen = 0
    page: list[KeyedRow] = []
    with ThreadPoolExecutor(STAT_WORKERS) as pool:
        for row in sql.iter_rows_by_id(catalog, tally.where, page=LOOKUP_BATCH):
            page.append(row)
            if len(page) < LOOKUP_BATCH:
                continue
            seen += _stat_page(pool, store, page, tally)
            page = []
            if seen >= unmatched:
                return
        if page:
            _stat_page(pool, store, page, tally)


def _stat_page(pool: ThreadPoolExecutor, store: Store, page: list[KeyedRow], tally: _Tally) -> int:
    """Rows not matched by the listing among ``page``: the missing, and those outside
    the listed prefixes (compared here)."""
    seen = 0
    for row, info in zip(page, pool.map(lambda r: _stat(store, r.key), page)):
        if isinstance(info, _Refused):
            tally.refused_row(row, info.reason)
            seen += 1
        elif info is None:
            tally.missing_row(row)
            seen += 1
        elif not _managed(row.key):  # type: ignore[arg-type]
            tally.compare(row, info)
            seen += 1
    return seen


def _lookup_batch(catalog, batch: list[ObjectInfo], tally: _Tally, *, odd: int) -> int:
    """Classify one page of listed objects; returns how many rows have their object."""
    where = tally.where
    ids = [info.key.rsplit("/", 1)[-1] for info in batch]
    found: dict[str, KeyedRow] = {r.id: r for r in sql.rows_by_ids(catalog, where, ids)}
    by_key: dict[str, list[KeyedRow]] = defaultdict(list)
    for r in found.values():
        if r.key is not None:
            by_key[r.key].append(r)
    if odd:  # some rows' keys do not end in their id: look the rest up by key as well
        rest = [info.key for info in batch if info.key not in by_key]
        for r in sql.rows_by_keys(catalog, where, rest):
            if r.id not in found and r.key is not None:
                found[r.id] = r
                by_key[r.key].append(r)
    matched = 0
    for info in batch:
        pointing = by_key.get(info.key)
        if not pointing:
            tally.orphan(info)
            continue
        matched += len(pointing)
        for r in pointing:
            tally.compare(r, info)
    return matched



__all__ = [
    "CLEAN",
    "vacuum_hint",
    "DEFAULT_BY",
    "DuReport",
    "DuRequest",
    "GROUP_NAMES",
    "VerifyReport",
    "disk_usage",
    "parse_by",
    "verify",
]
