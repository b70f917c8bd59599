"""What `sweep-expired` and `gc` do on a versioned S3 bucket (DESIGN §6).

On a bucket whose versioning is Enabled or Suspended, a plain DeleteObject removes no
bytes: it adds a delete marker and the object stays as a *noncurrent version* until a
lifecycle rule (``NoncurrentVersionExpiration``, which `apstorage lifecycle apply` adds)
or a delete naming its version id removes it (AWS S3 user guide, "Deleting object
versions from a versioning-enabled bucket"). So:

- by default the commands delete as before and count the bytes that stay
  (``retained_keys``: the sizes of every version the keys keep, from the listing);
- with ``--purge-versions`` every version and delete marker of the keys being deleted
  goes (``purge_keys``: ListObjectVersions of exactly those keys, then DeleteObjects naming
  each version, every answer entry checked). A key is "deleted" only when none of its
  versions was refused, so its row is deleted only after all its bytes are gone; a key
  that has no version left (a run killed after its deletes) counts as deleted.

The functions run in worker threads and take an ``S3Store``; what to delete is decided by
the callers (never a key another row references).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from apstorage.errors import ApStorageError, BackendUnavailableError

if TYPE_CHECKING:
    from apstorage.stores.s3 import S3Store
    from apstorage.stores.s3_versions import ObjectVersion, Versioning

RETAIN_NOTE = (
    "the bucket is versioned: deletes added delete markers and {size} stay as noncurrent "
    "versions until a lifecycle rule (`apstorage lifecycle apply` adds one) or --purge-versions removes them"
)
UNVERSIONED_PURGE_NOTE = "--purge-versions: the bucket is not versioned; plain deletes already free the bytes"


def versioning_notes(versioning: "Versioning", purge_versions: bool) -> list[str]:
    """The lines a run that deletes S3 bytes prints about the bucket's versioning state:
    ``--purge-versions`` on a bucket that answered "not versioned"; an unknown state (a
    refused GetBucketVersioning) with what is done about it. Shared by sweep-expired and gc."""
    if versioning.unknown:
        return [versioning.unknown_line]
    if purge_versions and not versioning.versioned:
        return [UNVERSIONED_PURGE_NOTE]
    return []


@dataclass
class PurgeResult:
    """What ``purge_keys`` did to a batch of keys.

    ``refused``: {key: reason} of keys one of whose versions the store refused (the key
    keeps its row); ``whole``: the store refused every key (not about a key: permissions, a
    bucket gone); ``freed``: {key: bytes of the versions deleted} for the keys now gone
    (delete markers count 0); ``versions``: versions deleted; ``markers``: delete markers
    deleted."""

    refused: dict[str, str] = field(default_factory=dict)
    whole: bool = False
    freed: dict[str, int] = field(default_factory=dict)
    versions: int = 0
    markers: int = 0


def ask_versioning(storage) -> "Versioning":
    """``storage.versioning()`` (one GetBucketVersioning per run). A refusal of that one
    request is an unknown state (``Versioning.unknown``: the bucket may keep versions, the
    listings and deletes that follow report what they meet); what would fail every request
    is raised as it is: an unreachable store (exit 8), a missing bucket (4), credentials
    the store does not accept (5), a store that cannot be opened (3)."""
    return storage.versioning()


def delete_checked(store: "S3Store", pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """DeleteObjects naming each (key, version id); the ones refused once are tried once
    more (a transient refusal), then explained (``explain_refusals``: object lock, the
    permission). Returns {(key, version id): reason} refused."""
    from apstorage.stores import s3_versions as V

    if not pairs:
        return {}
    refused = V.delete_versions(store, pairs)
    if refused:
        again = [p for p, reason in refused.items() if reason != V.OBJECT_LOCK_REASON]
        if again:
            retried = V.delete_versions(store, again)
            refused = {p: r for p, r in refused.items() if r == V.OBJECT_LOCK_REASON or p in retried}
            refused.update(retried)
        refused = V.explain_refusals(store, refused)
    return refused


def delete_entries(store: "S3Store", entries: "list[tuple[str, ObjectVersion]]") -> tuple[
        dict[tuple[str, str], str], "list[tuple[str, ObjectVersion]]"]:
    """Delete each (key, version or delete marker) by its version id (``delete_checked``),
    a key's current delete marker only once every other entry of that key asked for is
    gone: were a version refused (Object Lock) after its marker was deleted, it would become
    the current object again. Such markers are a second DeleteObjects, only when there are.
    Returns ({(key, version id): reason} refused, the markers not attempted: kept over a
    version that stays)."""
    last = [(k, e) for k, e in entries if e.delete_marker and e.is_latest]
    first = [(k, e) for k, e in entries if not (e.delete_marker and e.is_latest)]
    refused = delete_checked(store, [(k, e.version_id) for k, e in first])
    blocked = {k for k, _ in refused}
    held = [(k, e) for k, e in last if k in blocked]
    refused.update(delete_checked(store, [(k, e.version_id) for k, e in last if k not in blocked]))
    return refused, held


def purge_keys(store: "S3Store", keys: Sequence[str]) -> PurgeResult:
    """Delete every version and delete marker of ``keys`` (sorted, distinct). Versions
    refused once are tried once more (a transient refusal); a bare AccessDenied on a
    version under Object Lock is reported as ``OBJECT_LOCK_REASON``
    (``s3_versions.explain_refusals``). A listing the store refuses refuses every key (no
    version is deleted). Raises BackendUnavailableError when the store cannot be reached."""
    from apstorage.stores import s3_versions as V

    result = PurgeResult()
    if not keys:
        return result
    try:
        listing = V.versions_of(store, keys)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        result.refused = {k: f"versions could not be listed: {exc}" for k in keys}
        result.whole = True
        return result
    from apstorage.stores.s3 import _xml_unsafe

    for key in keys:
        if not listing[key] and _xml_unsafe(key):
            # SeaweedFS lists such a key under another name (U+FFFD for the control
            # character) in ListObjectVersions: "no version" cannot be told from "not shown".
            result.refused[key] = (
                "the store's version listing does not show this key (it has a control character); "
                "its versions cannot be told apart, so the row is kept"
            )
    entries = [(k, e) for k in keys if k not in result.refused for e in listing[k]]
    refused, held = delete_entries(store, entries)
    pairs = [(k, e.version_id) for k, e in entries if (k, e) not in held]
    for (key, _), reason in sorted(refused.items()):
        result.refused.setdefault(key, reason)
    gone_pairs = set(pairs) - set(refused)
    for key in keys:
        entries = listing[key]
        result.versions += sum(1 for e in entries if not e.delete_marker and (key, e.version_id) in gone_pairs)
        result.markers += sum(1 for e in entries if e.delete_marker and (key, e.version_id) in gone_pairs)
        if key not in result.refused:
            result.freed[key] = sum(e.size for e in entries if not e.delete_marker)
    result.whole = len(result.refused) == len(keys) and bool(pairs) and bool(refused)
    return result


def retained_sizes(store: "S3Store", keys: Sequence[str], versioning: "Versioning",
                   notes: list[str] | None = None) -> dict[str, int] | None:
    """{key: bytes that stay in the bucket after a plain delete of it}: every version the
    listing shows, less, on a Suspended bucket, the ``null`` version (which a plain delete
    there does remove, current or not). None when the versions cannot be listed (the caller
    falls back to the rows' sizes), said once in ``notes`` (a run's report notes)."""
    from apstorage.stores import s3_versions as V

    try:
        listing = V.versions_of(store, keys)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        note = (f"the versions of deleted keys could not be listed ({exc}): the bytes said to stay as "
                "noncurrent versions are their rows' sizes, not measured")
        if notes is not None and note not in notes:
            notes.append(note)
        return None
    # a key the listing does not show (a store that renames control characters there) is
    # left out: the caller counts its row's size
    return {k: _retained(entries, versioning) for k, entries in listing.items() if entries}


def _retained(entries: "list[ObjectVersion]", versioning: "Versioning") -> int:
    """On a Suspended bucket a plain delete writes a ``null`` delete marker, which replaces
    the key's ``null`` version wherever it stands, current or noncurrent (AWS S3 user
    guide, "Deleting objects from versioning-suspended buckets"): that version's bytes go."""
    from apstorage.stores.s3_versions import SUSPENDED

    total = 0
    for e in entries:
        if e.delete_marker:
            continue
        if versioning.status == SUSPENDED and e.version_id == "null":
            continue
        total += e.size
    return total




def restore_source(entries: "Sequence[ObjectVersion]", size: int | None) -> "ObjectVersion | None":
    """The version ``restore`` copies back for a row of recorded ``size`` (bytes; None:
    unknown), from a key's entries newest first (as ListObjectVersions lists them): the
    newest version with bytes (never a delete marker) of that size — the platform's
    ``size`` is the stored size, as S3 holds it — or, with no size recorded, the newest.
    None when no version qualifies: the row is not restorable (a version of another size
    holds bytes that are not the row's own). The one rule of ``restore``, ``du --verify``
    and ``gc``."""
    versions = [e for e in entries if not e.delete_marker]
    if size is None:
        return versions[0] if versions else None
    return next((v for v in versions if v.size == size), None)


def restorable_ids(store: "S3Store", rows: list) -> tuple[set[str], dict[str, str]]:
    """Among ``rows`` (S3 rows without a current object: anything with ``id``, ``key`` and
    ``size``), the ids whose key still has a version ``restore`` would copy back
    (``restore_source``; ``versions_of``, one listing per folder): restorable (du --verify,
    gc); and {id: reason} for rows whose versions could not be listed. An unreachable store
    raises BackendUnavailableError."""
    from apstorage.stores.s3_versions import versions_of

    keys = sorted({r.key for r in rows if r.key})
    try:
        listing = versions_of(store, keys)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        return set(), {r.id: f"versions could not be listed: {exc}" for r in rows}
    found = {r.id for r in rows if r.key and restore_source(listing.get(r.key, []), r.size) is not None}
    return found, {}


__all__ = [
    "PurgeResult",
    "RETAIN_NOTE",
    "UNVERSIONED_PURGE_NOTE",
    "versioning_notes",
    "ask_versioning",
    "delete_checked",
    "delete_entries",
    "purge_keys",
    "restorable_ids",
    "restore_source",
    "retained_sizes",
]
