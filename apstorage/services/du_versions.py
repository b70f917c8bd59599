"""`du` and `du --verify` on a versioned S3 bucket (issue 21 item 3).

On a bucket whose versioning is Enabled or Suspended, deleting an object leaves its bytes as
*noncurrent versions* behind a *delete marker* (AWS S3 user guide, "Working with objects in
a versioning-enabled bucket"): they are billed like any object, and the catalog cannot see
them. So, on such a bucket only:

- ``du`` lists every version and delete marker under the managed prefixes (ListObjectVersions,
  page by page: one request per 1,000 entries) and counts current objects, noncurrent
  versions (count and bytes) and delete markers apart (``VersionFigures``);
- ``du --verify`` also reports, from the same listing, **orphan versions** (noncurrent
  versions of keys no row references: bytes only a lifecycle rule or ``gc --orphans``
  removes) and **lone delete markers** (keys whose every entry is a delete marker), and the
  rows whose current object is gone but which still have a version are **restorable**
  (``apstorage restore``), counted apart from missing rows (``services.versions.restorable_ids``,
  which gc uses too).

Memory stays flat: entries are grouped by key one page at a time (a key whose entries span
pages appears at the start of the next page too, since pages follow each other in key
order), and catalog lookups go 1,000 keys at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from apstorage.errors import ApStorageError

if TYPE_CHECKING:
    from apstorage.stores.s3 import S3Store
    from apstorage.stores.s3_versions import ObjectVersion, Versioning

LOOKUP = 1000  # keys per catalog lookup


@dataclass
class VersionFigures:
    """What the version listing of the managed prefixes holds: entries in the store's own
    words. Bytes are the listing's ``Size``; a delete marker has none."""

    versioning: "Versioning"
    checked: bool = True
    note: str = ""
    current: int = 0
    current_bytes: int = 0
    noncurrent: int = 0
    noncurrent_bytes: int = 0
    delete_markers: int = 0
    keys_without_current: int = 0  # keys whose newest entry is a delete marker

    def count(self, entries: "list[ObjectVersion]") -> None:
        has_current = False
        for entry in entries:
            if entry.delete_marker:
                self.delete_markers += 1
            elif entry.is_latest:
                has_current = True
                self.current += 1
                self.current_bytes += entry.size
            else:
                self.noncurrent += 1
                self.noncurrent_bytes += entry.size
        if not has_current:
            self.keys_without_current += 1

    def to_json(self) -> dict:
        return {
            # not asked (the store unreachable): null, never "Unversioned"; refused: "Unknown"
            "versioning": (self.versioning.to_json()["status"]
                           if self.checked or self.versioning.status or self.versioning.unknown else None),
            "checked": self.checked,
            "note": self.note or None,
            "currentObjects": {"count": self.current, "bytes": self.current_bytes},
            "noncurrentVersions": {"count": self.noncurrent, "bytes": self.noncurrent_bytes},
            "deleteMarkers": {"count": self.delete_markers},
            "keysWithoutCurrentObject": self.keys_without_current,
        }


def key_groups(store: "S3Store", prefixes: Iterable[str]) -> Iterator[tuple[str, "list[ObjectVersion]"]]:
    """(key, its versions and delete markers) for every key under ``prefixes``, each key
    once, page by page (``list_version_pages``). Raises what the listing raises."""
    from apstorage.stores.s3_versions import list_version_pages

    for prefix in prefixes:
        pending: dict[str, list] = {}
        for page in list_version_pages(store, prefix):
            groups: dict[str, list] = {}
            for entry in page:
                groups.setdefault(entry.key, []).append(entry)
            for key in list(pending):
                if key in groups:
                    groups[key] = pending.pop(key) + groups[key]
            yield from pending.items()  # not on this page: complete
            pending = groups
        yield from pending.items()


def figures(storage, prefixes: Iterable[str]) -> VersionFigures | None:
    """The version figures of the configured bucket, or None when it is not versioned (or
    has no versioning API: rclone's S3 server). Never raises for the listing: plain ``du``
    answers from the catalog, so a store it cannot list gives figures marked unchecked with
    the reason (an unreachable store too)."""
    from apstorage.model import Location
    from apstorage.services.versions import ask_versioning

    try:
        versioning = ask_versioning(storage)
    except ApStorageError as exc:
        from apstorage.stores.s3_versions import Versioning

        return VersionFigures(Versioning(""), checked=False, note=f"versioning could not be asked: {exc}")
    if not versioning.may_keep_versions:
        return None
    out = VersionFigures(versioning)
    try:
        store = storage.store(Location.S3)
        for _key, entries in key_groups(store, prefixes):
            out.count(entries)
    except ApStorageError as exc:
        return VersionFigures(versioning, checked=False, note=f"the version listing failed: {exc}")
    return out


@dataclass
class VersionProblems:
    """What ``check`` found, in ``du --verify``'s shape (``services.du.Problems``)."""

    orphan_versions: object
    lone_markers: object
    figures: VersionFigures


def check(storage, store: "S3Store", versioning: "Versioning", prefixes: Iterable[str], make_problems: Callable,
          tick: Callable[[int], None]) -> VersionProblems:
    """One pass over the version listing: the figures, plus the orphan versions and lone
    delete markers of keys no S3 row references (looked up 1,000 keys at a time: by the id
    each key ends with, then the keys left by their rows' ``s3Key``). Raises what the
    listing raises."""
    from apstorage.catalog import refs

    result = VersionProblems(make_problems("orphanVersions"), make_problems("loneDeleteMarkers"),
                             VersionFigures(versioning))
    catalog = storage.catalog
    todo: list[tuple[str, list]] = []

    def judge() -> None:
        keys = [k for k, _ in todo]
        held = set(refs.rows_referencing(None, catalog, keys, locations=("S3",), by_id_only=True))
        # The rest (few, in a healthy bucket) are looked up by key too: a row whose s3Key
        # does not end in its own id holds such a key alone as well as with others.
        rest = [k for k in keys if k not in held]
        if rest:
            held |= set(refs.rows_referencing(None, catalog, rest, locations=("S3",)))
        for key, entries in todo:
            if key in held:
                continue
            versions = [e for e in entries if not e.delete_marker]
            if not versions:
                result.lone_markers.add(0, location="S3", key=key, deleteMarkers=len(entries))
                continue
            for e in versions:
                if not e.is_latest:  # a current object of an unreferenced key is an orphan already
                    result.orphan_versions.add(e.size, location="S3", key=key, versionId=e.version_id, size=e.size)
        todo.clear()

    for key, entries in key_groups(store, prefixes):
        tick(len(entries))
        result.figures.count(entries)
        if any(e.delete_marker or not e.is_latest for e in entries):
            todo.append((key, entries))
            if len(todo) >= LOOKUP:
                judge()
    if todo:
        judge()
    return result


__all__ = ["VersionFigures", "check", "figures", "key_groups"]
