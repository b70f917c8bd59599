"""`gc --orphans` on a versioned bucket: the noncurrent versions of keys no row references,
and delete markers with no version left (DESIGN §6, issue 21).

A plain listing (ListObjectsV2) shows only current objects, so a key whose current
version is a delete marker, or the older versions of any key, are invisible to the
orphan pass. After that pass (and only when it trusted the bucket: the same guard
against a wrong ``AP_S3_BUCKET``), one ListObjectVersions pass over ``platform/`` and
``project/`` takes, for each key:

- a noncurrent version (or noncurrent delete marker) that became noncurrent — the entry
  above it was written — longer ago than the grace, as S3 lifecycle counts
  ``NoncurrentDays`` (AWS S3 user guide, "Lifecycle configuration elements"): a version a
  delete of this very run made noncurrent is young and stays, as its bytes were counted
  as retained;
- the current delete marker, when it is older than the grace and no version is left
  under it once the above are gone (a "lone" marker).

Keys whose orphan this run's own pass deleted with a delete marker are left for a later
run (their bytes were just reported as retained).

The key's current object (a version that is latest) is never taken here: the orphan pass
judged it. Every batch is re-checked against the catalog in a transaction held while its
versions are deleted: a key any row references (a restorable row's key among them) is
never touched. ``--max-delete`` counts each version and marker; ``--dry-run`` lists what
would be taken (kind ``orphanVersions``, with ``versionId``)."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

from apstorage.errors import ApStorageError, BackendUnavailableError
from apstorage.model import Location

if TYPE_CHECKING:
    from apstorage.services.gc import _Collector, _Outcome
    from apstorage.stores.s3 import S3Store
    from apstorage.stores.s3_versions import ObjectVersion

KIND = "orphanVersions"
MARKERS = "deleteMarkers"  # counted apart: a delete marker holds no bytes and is no file
BATCH = 1000  # entries (versions and markers) per re-check and DeleteObjects


def orphan_versions(c: "_Collector", store: "S3Store") -> None:
    """Take old noncurrent versions and lone delete markers of unreferenced keys (see the
    module docstring), ``c.workers`` batches at a time; counted into ``c.report``."""
    from apstorage.services.du import MANAGED_PREFIXES
    from apstorage.stores.s3_versions import list_version_pages

    cutoff = c.report.cutoff
    inflight: dict[Future, None] = {}
    batch: list[tuple[str, list["ObjectVersion"]]] = []
    size = 0

    def submit() -> None:
        nonlocal batch, size
        if not batch:
            return
        inflight[c.pool.submit(_batch, c, store, batch)] = None
        batch, size = [], 0
        while len(inflight) >= c.workers:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                inflight.pop(future)
                c._count(future.result())

    def judge(key: str, entries: list["ObjectVersion"]) -> None:
        nonlocal size
        if key in c.marked:  # this run's orphan pass just made its versions noncurrent
            return
        if "\ufffd" in key:
            # a name the store could not spell (SeaweedFS lists a control character as
            # U+FFFD in version listings): it may be a referenced key's; never judged
            c.report.skip("unreadableName", len(entries))
            return
        taken = _candidates(entries, cutoff)
        if taken:
            batch.append((key, taken))
            size += len(taken)
            if size >= BATCH:
                submit()

    try:
        for prefix in MANAGED_PREFIXES:
            pending: dict[str, list[ObjectVersion]] = {}
            for page in list_version_pages(store, prefix):
                c.progress("listed", len(page))
                for entry in page:
                    pending.setdefault(entry.key, []).append(entry)
                # pages follow each other in key order, but a key's entries may go on into
                # the next page: only keys below the page's greatest are complete
                top = max((e.key for e in page), default=None)
                for key in sorted(k for k in pending if top is None or k < top):
                    judge(key, pending.pop(key))
                if c.exhausted:
                    return
            for key in sorted(pending):
                judge(key, pending.pop(key))
        if not c.exhausted:
            submit()
    except BackendUnavailableError:
        raise  # the store cannot be reached (or stalls): exit 8, as on every command
    except ApStorageError as exc:
        # a failure of the run (exit 1), never a note a weekly cron would not mail
        c.report.fail(Location.S3.value, None, f"orphan versions were not collected: the version listing failed ({exc})")
    finally:
        for future in list(inflight):
            inflight.pop(future)
            c._count(future.result())


def _candidates(entries: list["ObjectVersion"], cutoff) -> list["ObjectVersion"]:
    """What of one key's entries is old enough to take: noncurrent entries superseded
    before ``cutoff``, and the current delete marker when nothing else is left."""
    ordered = sorted(entries, key=lambda e: (not e.is_latest, -(e.modified.timestamp() if e.modified else 0)))
    taken: list[ObjectVersion] = []
    for above, entry in zip(ordered, ordered[1:]):
        if above.modified is not None and above.modified < cutoff:
            taken.append(entry)
    latest = ordered[0]
    if (latest.is_latest and latest.delete_marker and latest.modified is not None and latest.modified < cutoff
            and len(taken) == len(ordered) - 1):
        taken.append(latest)
    return taken


def _batch(c: "_Collector", store: "S3Store", batch: list[tuple[str, list["ObjectVersion"]]]) -> "_Outcome":
    """Worker thread: re-check the keys against the catalog and delete the versions of
    those no row references, in one transaction on this thread's connection."""
    from apstorage.services.gc import _Outcome

    outcome = _Outcome()
    report = c.report
    where = Location.S3.value
    session = c.session()
    with session.transaction() as cur:
        referenced = session.referenced(cur, [k for k, _ in batch], by_s3_key=c.by_s3_key)
        todo = [(k, v) for k, v in batch if k not in referenced and k not in c.aliases]
        report.skip("referenced", sum(len(v) for k, v in batch if k in referenced))
        entries = [(k, e) for k, versions in todo for e in versions]
        entries = entries[: c.take(len(entries))]
        if not entries:
            return outcome
        if report.dry_run:
            for key, e in entries:
                outcome.add(MARKERS if e.delete_marker else KIND, where, e.size, key=key, version_id=e.version_id)
            return outcome
        abandoned = c.abandoned.get(where)
        if abandoned:
            for key, e in entries:
                report.fail(where, key, f"not attempted: {abandoned}")
            return outcome
        # a key's current delete marker goes only after every version under it: else a
        # version refused (Object Lock) would be the current object again, the orphan back
        refused, held = _delete(store, entries)
        report.skip("markerOverKeptVersion", len(held))
        entries = [entry for entry in entries if entry not in held]
    for key, e in entries:
        reason = refused.get((key, e.version_id))
        if reason is not None:
            report.fail(where, key, reason)
        else:
            outcome.add(MARKERS if e.delete_marker else KIND, where, e.size, key=key, version_id=e.version_id)
    return outcome


def _delete(store: "S3Store", entries: list) -> tuple[dict[tuple[str, str], str], list]:
    """``versions.delete_entries``; a request that fails refuses them all (the store
    unreachable: raised, exit 8)."""
    from apstorage.services.versions import delete_entries

    try:
        return delete_entries(store, entries)
    except BackendUnavailableError:
        raise
    except ApStorageError as exc:
        return {(k, e.version_id): str(exc) for k, e in entries}, []


__all__ = ["KIND", "MARKERS", "orphan_versions"]
