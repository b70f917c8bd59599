"""`lifecycle apply` / `lifecycle show`: bucket lifecycle rules derived from the retention
settings, merged into the bucket's configuration by rule ID, never clobbering.

S3's PutBucketLifecycleConfiguration replaces every rule on the bucket, so `apply` reads
the current configuration, swaps in apstorage's two rules by ID, keeps every other rule
exactly as the provider returned it (unless ``replace``), and writes only when the result
differs from what is there. apstorage's rules:

- ``apstorage-expire-execution-data``: objects tagged ``ap-retention=execution`` (``put``
  tags execution data so) expire after retention + grace days. The catalog sweep normally
  deletes them first; the rule catches objects whose rows were lost. The type sits in the
  middle of the key (``project/{id}/FLOW_RUN_LOG/{file}``), so a prefix cannot select them.
- ``apstorage-abort-incomplete-multipart``: the whole bucket; incomplete multipart uploads
  are aborted one day after they started.

On a versioned bucket (versioning Enabled or Suspended: GetBucketVersioning, asked once) a
delete, the sweep's or the expiry rule's, only adds a delete marker and the bytes stay as a
noncurrent version (AWS S3 user guide, "How S3 Versioning works"), so two more rules:

- ``apstorage-expire-noncurrent-execution-data``: ``NoncurrentVersionExpiration`` of the
  same tagged objects ``--noncurrent-days`` days (default 7, at least 1) after they became
  noncurrent: that long a swept row's bytes can still be brought back (`apstorage restore`).
- ``apstorage-remove-expired-delete-markers``: ``Expiration {ExpiredObjectDeleteMarker:
  true}``, removing a delete marker once no version of its key is left. It is a rule of its
  own with no tag filter: S3 refuses ``ExpiredObjectDeleteMarker`` next to ``Days`` or
  ``Date`` in one Expiration (S3 API reference, LifecycleExpiration), and a rule that
  removes expired delete markers cannot use a tag-based filter (S3 user guide, "Lifecycle
  configuration elements"; delete markers carry no tags, so a tag never matches one). A
  filter holds one prefix, and the platform's keys live under both ``project/`` and
  ``platform/``, so it covers the whole bucket (``Prefix ""``, as the abort rule does): a
  delete marker with no version left hides nothing, so removing one anywhere loses no data.

An unversioned bucket (or a store without the versioning API) gets exactly the two rules
above, and the same output.

Never sooner than the catalog (DESIGN §1, Retention): the catalog keeps execution data for
up to ``AP_EXECUTION_DATA_RETENTION_DAYS`` (a project's own retention is clamped to it), so
`apply` refuses (exit 2) an expiry shorter than that plus ``MIN_GRACE_DAYS``: the bucket
would delete objects whose rows still exist. `show` (and `apply`, for rules it keeps)
flags any enabled expiration rule that reaches apstorage's objects sooner than that, or
reaches objects that never expire (``FLOW_BUNDLE`` and permanent files carry no tag).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from apstorage.errors import UsageError
from apstorage.model import Location
from apstorage.text import plural
from apstorage.services.files import RETENTION_TAG

if TYPE_CHECKING:
    from apstorage.config import Settings

if TYPE_CHECKING:
    from apstorage.services.context import Storage
    from apstorage.stores.s3 import S3Store
    from apstorage.stores.s3_versions import Versioning

EXPIRE_RULE_ID = "apstorage-expire-execution-data"
ABORT_RULE_ID = "apstorage-abort-incomplete-multipart"
NONCURRENT_RULE_ID = "apstorage-expire-noncurrent-execution-data"
MARKERS_RULE_ID = "apstorage-remove-expired-delete-markers"
BASE_RULE_IDS = (EXPIRE_RULE_ID, ABORT_RULE_ID)  # every bucket
VERSIONED_RULE_IDS = (NONCURRENT_RULE_ID, MARKERS_RULE_ID)  # versioned buckets only
OUR_RULE_IDS = BASE_RULE_IDS + VERSIONED_RULE_IDS
DEFAULT_GRACE_DAYS = 1
DEFAULT_NONCURRENT_DAYS = 7
MIN_GRACE_DAYS = 1  # days between the catalog's retention and the bucket's expiry, at least
ABORT_AFTER_DAYS = 1
# Where apstorage puts objects (model.object_key); a rule prefix reaching these reaches ours.
KEY_ROOTS = ("project/", "platform/")

ADDED, UPDATED, KEPT, REMOVED = "added", "updated", "kept", "removed"


# -- our rules --------------------------------------------------------------------------


def our_rules(retention_days: int, grace_days: int = DEFAULT_GRACE_DAYS) -> list[dict[str, Any]]:
    """apstorage's rules, as boto3 dicts, for a retention and a grace period in days."""
    if retention_days < 1:
        raise UsageError(f"--retention-days must be at least 1 (got {retention_days})")
    if grace_days < 0:
        raise UsageError(f"--grace-days must be 0 or more (got {grace_days})")
    ((tag_key, tag_value),) = RETENTION_TAG.items()
    return [
        {
            "ID": EXPIRE_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Tag": {"Key": tag_key, "Value": tag_value}},
            "Expiration": {"Days": retention_days + grace_days},
        },
        {
            "ID": ABORT_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_AFTER_DAYS},
        },
    ]


def check_noncurrent_days(noncurrent_days: Any) -> int:
    """``--noncurrent-days``: a whole number of days, at least 1 (S3 requires a positive
    NoncurrentDays); anything else is a UsageError (exit 2) naming the flag."""
    if isinstance(noncurrent_days, bool) or not isinstance(noncurrent_days, int):
        raise UsageError(f"--noncurrent-days must be a whole number of days (got {noncurrent_days!r}); nothing was written")
    if noncurrent_days < 1:
        raise UsageError(f"--noncurrent-days must be at least 1 (got {noncurrent_days}); nothing was written")
    return noncurrent_days


def versioned_rules(noncurrent_days: int = DEFAULT_NONCURRENT_DAYS) -> list[dict[str, Any]]:
    """The rules a versioned bucket gets besides ``our_rules``, as boto3 dicts: noncurrent
    versions of tagged execution data expire ``noncurrent_days`` days after they became
    noncurrent; expired delete markers (no version left) are removed (see the module
    docstring for why the second rule has no tag filter)."""
    days = check_noncurrent_days(noncurrent_days)
    ((tag_key, tag_value),) = RETENTION_TAG.items()
    return [
        {
            "ID": NONCURRENT_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Tag": {"Key": tag_key, "Value": tag_value}},
            "NoncurrentVersionExpiration": {"NoncurrentDays": days},
        },
        {
            "ID": MARKERS_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
    ]


def _reaches_execution_data(rule: dict[str, Any]) -> bool:
    """Whether an enabled rule's filter takes in apstorage's tagged execution data."""
    if rule.get("Status") != "Enabled":
        return False
    prefix, tags = _rule_scope(rule)
    if not any(root.startswith(prefix) or prefix.startswith(root) for root in KEY_ROOTS):
        return False
    return set(tags.items()) <= set(RETENTION_TAG.items())


def expires_noncurrent(rules: list[dict[str, Any]]) -> bool:
    """Whether some enabled rule (ours or not) expires noncurrent versions of apstorage's
    execution data (``NoncurrentVersionExpiration`` with NoncurrentDays)."""
    return any(
        "NoncurrentDays" in (rule.get("NoncurrentVersionExpiration") or {}) and _reaches_execution_data(rule)
        for rule in rules
    )


def removes_expired_markers(rules: list[dict[str, Any]]) -> bool:
    """Whether some enabled rule removes expired delete markers under apstorage's keys (a
    rule with a tag filter never matches a delete marker, which has no tags)."""
    return any(
        (rule.get("Expiration") or {}).get("ExpiredObjectDeleteMarker") is True
        and _reaches_execution_data(rule) and not _rule_scope(rule)[1]
        for rule in rules
    )


def minimum_expiry_days(settings: Settings) -> int:
    """The shortest bucket expiry that never deletes bytes the catalog still references:
    the longest retention the catalog can hold (``AP_EXECUTION_DATA_RETENTION_DAYS``;
    projects' own retention is clamped to it) plus ``MIN_GRACE_DAYS``."""
    return settings.execution_data_retention_days + MIN_GRACE_DAYS


def check_expiry(retention_days: int, grace_days: int, settings: Settings) -> None:
    """Refuse (exit 2) rules that would expire objects before the catalog lets them go."""
    minimum = minimum_expiry_days(settings)
    expiry = retention_days + grace_days
    if expiry >= minimum:
        return
    global_days = settings.execution_data_retention_days
    raise UsageError(
        f"--retention-days {retention_days} with --grace-days {grace_days} would make the bucket "
        f"expire execution data after {_days(expiry)}, but the catalog keeps it for up to "
        f"{_days(global_days)} (AP_EXECUTION_DATA_RETENTION_DAYS): the bucket would delete "
        f"objects whose rows still exist; the expiry must be at least {_days(minimum)} "
        f"(retention + {MIN_GRACE_DAYS} day grace); nothing was written",
        hint=f"use --retention-days {global_days} or more, with --grace-days {MIN_GRACE_DAYS} or more",
    )


def expiry_problem(rule: dict[str, Any], minimum_days: int) -> str | None:
    """Why an existing rule would delete bytes the catalog still references, or None.

    Only enabled rules that expire current objects count. A rule reaches apstorage's
    objects when its prefix overlaps ``project/`` or ``platform/`` and its tag condition
    (if any) is met by ``ap-retention=execution``. Without a tag condition it also reaches
    ``FLOW_BUNDLE`` and permanent files, which never expire by age: always a problem.
    With the tag, an expiry sooner than ``minimum_days`` (or on a fixed date) is.
    """
    if rule.get("Status") != "Enabled":
        return None
    expiration = rule.get("Expiration") or {}
    if "Days" not in expiration and "Date" not in expiration:
        return None
    prefix, tags = _rule_scope(rule)
    if not any(root.startswith(prefix) or prefix.startswith(root) for root in KEY_ROOTS):
        return None
    if not set(tags.items()) <= set(RETENTION_TAG.items()):
        return None  # needs a tag apstorage never sets
    if "Date" in expiration:
        when = f"on {jsonable(expiration['Date'])}, whatever their age"
    else:
        when = f"after {_days(expiration['Days'])}"
    if not tags:
        scope = f"objects under {prefix!r}" if prefix else "every object in the bucket"
        return (
            f"expires {scope} {when}, including "
            "FLOW_BUNDLE and permanent files, which carry no retention tag and are never "
            "expired by age"
        )
    if "Date" in expiration or int(expiration["Days"]) < minimum_days:
        return (
            f"expires execution data {when}, sooner than the catalog lets it go "
            f"({_days(minimum_days)}: AP_EXECUTION_DATA_RETENTION_DAYS + {MIN_GRACE_DAYS} day "
            "grace); rows would point at deleted objects"
        )
    return None


def _rule_scope(rule: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(prefix, required tags) of a rule, whatever spelling its filter uses."""
    flt = rule.get("Filter")
    if flt is None:
        return str(rule.get("Prefix") or ""), {}
    body = flt.get("And", flt)
    tags = [body["Tag"]] if "Tag" in body else list(body.get("Tags") or [])
    return str(body.get("Prefix") or ""), {str(t.get("Key")): str(t.get("Value")) for t in tags}


def rule_problems(rules: list[dict[str, Any]], minimum_days: int) -> list[tuple[str, str]]:
    """(rule id or "#N", problem) for each rule that expires objects too soon."""
    out = []
    for index, rule in enumerate(rules):
        problem = expiry_problem(rule, minimum_days)
        if problem:
            out.append((rule.get("ID") or f"#{index + 1}", problem))
    return out


def is_ours(rule: dict[str, Any]) -> bool:
    return rule.get("ID") in OUR_RULE_IDS


def _canonical(rule: dict[str, Any]) -> str:
    """A comparable form: key order ignored, and the spellings of "every object" made one
    (``Filter: {}``, ``Filter: {Prefix: ""}``, a legacy top-level ``Prefix``)."""
    rule = dict(rule)
    if "Filter" not in rule and "Prefix" in rule:
        rule["Filter"] = {"Prefix": rule.pop("Prefix")}
    if rule.get("Filter") == {}:
        rule["Filter"] = {"Prefix": ""}
    return json.dumps(rule, sort_keys=True, default=str)


def same_rule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _canonical(a) == _canonical(b)


# -- planning (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class RuleChange:
    id: str  # the rule's ID, or "#N" (its 1-based position) for a rule without one
    change: str  # added | updated | kept | removed
    ours: bool
    before: dict[str, Any] | None  # as the provider returned it
    after: dict[str, Any] | None  # as it will be written

    def to_json(self) -> dict[str, Any]:
        """``{"id", "change", "ours", "before", "after", "actionsBefore", "actionsAfter"}``:
        the rule as the bucket had it and as it will be (None when added / removed), and
        their actions in words (``expire after 31 days`` → ``expire after 15 days``)."""
        return {
            "id": self.id,
            "change": self.change,
            "ours": self.ours,
            "before": None if self.before is None else jsonable(self.before),
            "after": None if self.after is None else jsonable(self.after),
            "actionsBefore": None if self.before is None else describe_actions(self.before),
            "actionsAfter": None if self.after is None else describe_actions(self.after),
        }


@dataclass
class LifecyclePlan:
    bucket: str
    where: str
    changes: list[RuleChange]
    rules: list[dict[str, Any]]  # the configuration to write, in order
    had_configuration: bool = True
    retention_days: int = 0
    grace_days: int = DEFAULT_GRACE_DAYS
    dry_run: bool = False
    written: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)  # rules kept that expire too soon
    versioning: Versioning | None = None  # the bucket's state, as asked before planning
    noncurrent_days: int = DEFAULT_NONCURRENT_DAYS

    @property
    def versioned(self) -> bool:
        """Versioned, or a state that could not be read (then the versioned rules are planned
        too: on a bucket that turns out unversioned they remove nothing)."""
        return self.versioning is not None and self.versioning.may_keep_versions

    def ids(self, change: str) -> list[str]:
        return [c.id for c in self.changes if c.change == change]

    @property
    def added(self) -> list[str]:
        return self.ids(ADDED)

    @property
    def updated(self) -> list[str]:
        return self.ids(UPDATED)

    @property
    def kept(self) -> list[str]:
        return self.ids(KEPT)

    @property
    def removed(self) -> list[str]:
        return self.ids(REMOVED)

    @property
    def changed(self) -> bool:
        return any(c.change != KEPT for c in self.changes)

    def to_json(self) -> dict[str, Any]:
        """The plan; on a versioned bucket also ``"versioning"`` (``Versioning.to_json``)
        and ``"noncurrentDays"``. An unversioned bucket's document is what it was before
        versioning was known (no key added)."""
        out = {
            "added": self.added,
            "updated": self.updated,
            "kept": self.kept,
            "removed": self.removed,
            "dryRun": self.dry_run,
            "changed": self.changed,
            "written": self.written,
            "bucket": self.bucket,
            "retentionDays": self.retention_days,
            "graceDays": self.grace_days,
            "expirationDays": self.retention_days + self.grace_days,
            "rules": [jsonable(r) for r in self.rules],
            "problems": [{"id": rule_id, "problem": problem} for rule_id, problem in self.problems],
            "changes": [c.to_json() for c in self.changes],
        }
        if self.versioned:
            assert self.versioning is not None
            out["versioning"] = self.versioning.to_json()
            out["noncurrentDays"] = self.noncurrent_days
        return out


def plan_merge(
    current: list[dict[str, Any]], desired: list[dict[str, Any]], *, replace: bool = False
) -> tuple[list[dict[str, Any]], list[RuleChange]]:
    """Merge ``desired`` (our rules) into ``current`` by rule ID.

    Foreign rules keep their place and their exact dicts (or are removed with
    ``replace``); ours replace a rule with the same ID in place, or are appended. A rule
    of ours that already matches is kept as the provider returned it, so applying twice
    changes nothing.
    """
    want = {rule["ID"]: rule for rule in desired}
    merged: list[dict[str, Any]] = []
    changes: list[RuleChange] = []
    placed: dict[str, int] = {}  # our id -> index in changes
    for index, rule in enumerate(current):
        rule_id = rule.get("ID")
        label = rule_id or f"#{index + 1}"
        if rule_id in want:
            if rule_id in placed:
                # A second rule with one of our IDs: dropped; ours counts as updated.
                i = placed[rule_id]
                if changes[i].change == KEPT:
                    changes[i] = RuleChange(rule_id, UPDATED, True, changes[i].before, changes[i].after)
                continue
            placed[rule_id] = len(changes)
            if same_rule(rule, want[rule_id]):
                merged.append(rule)
                changes.append(RuleChange(rule_id, KEPT, True, rule, rule))
            else:
                merged.append(want[rule_id])
                changes.append(RuleChange(rule_id, UPDATED, True, rule, want[rule_id]))
        elif replace:
            changes.append(RuleChange(label, REMOVED, False, rule, None))
        else:
            merged.append(rule)
            changes.append(RuleChange(label, KEPT, False, rule, rule))
    for rule_id, rule in want.items():
        if rule_id not in placed:
            merged.append(rule)
            changes.append(RuleChange(rule_id, ADDED, True, None, rule))
    return merged, changes


# -- against the bucket -----------------------------------------------------------------


@contextlib.contextmanager
def _bucket_store(storage: Storage) -> Iterator[S3Store]:
    """The S3 store alone: lifecycle concerns the bucket, so no catalog is opened."""
    yield storage.store(Location.S3)  # type: ignore[misc]


def apply_lifecycle(
    storage: Storage,
    *,
    retention_days: int | None = None,
    grace_days: int = DEFAULT_GRACE_DAYS,
    replace: bool = False,
    dry_run: bool = False,
    noncurrent_days: int = DEFAULT_NONCURRENT_DAYS,
) -> LifecyclePlan:
    """Merge apstorage's rules into the bucket's lifecycle configuration; write only when
    something changed, and never with ``dry_run``. An expiry shorter than the catalog's
    retention + grace, or ``noncurrent_days`` below 1, is refused before the bucket is
    read (UsageError, exit 2). On a versioned bucket (``Versioning.versioned``: Enabled or
    Suspended) the desired rules include ``versioned_rules(noncurrent_days)``; the state
    is asked after the configuration is read (a store without lifecycle support fails
    first, as before: NotSupportedError, exit 6)."""
    from apstorage.services.versions import ask_versioning
    from apstorage.stores.s3_lifecycle import get_lifecycle, put_lifecycle

    retention = retention_days if retention_days is not None else storage.settings.execution_data_retention_days
    desired = our_rules(retention, grace_days)
    extra = versioned_rules(noncurrent_days)  # validates --noncurrent-days before any request
    check_expiry(retention, grace_days, storage.settings)
    with _bucket_store(storage) as store:
        config = get_lifecycle(store)
        versioning = ask_versioning(storage)
        if versioning.may_keep_versions:  # an unknown state may be versioned: the rules are harmless if not
            desired = desired + extra
        rules, changes = plan_merge(config.rules, desired, replace=replace)
        plan = LifecyclePlan(
            bucket=store.bucket,
            where=store.where,
            changes=changes,
            rules=rules,
            had_configuration=config.exists,
            retention_days=retention,
            grace_days=grace_days,
            dry_run=dry_run,
            problems=rule_problems(rules, minimum_expiry_days(storage.settings)),
            versioning=versioning,
            noncurrent_days=noncurrent_days,
        )
        if plan.changed and not dry_run:
            put_lifecycle(
                store,
                rules,
                transition_default_minimum_object_size=config.transition_default_minimum_object_size,
            )
            plan.written = True
    return plan


@dataclass
class LifecycleView:
    bucket: str
    where: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    exists: bool = True
    minimum_expiry_days: int = 0
    versioning: Versioning | None = None

    @property
    def versioned(self) -> bool:
        return self.versioning is not None and self.versioning.may_keep_versions

    @property
    def problems(self) -> list[tuple[str, str]]:
        return rule_problems(self.rules, self.minimum_expiry_days)

    @property
    def missing(self) -> list[str]:
        """apstorage's rules the bucket lacks: the two every bucket gets, and on a
        versioned bucket the two versioned ones."""
        present = {r.get("ID") for r in self.rules}
        wanted = OUR_RULE_IDS if self.versioned else BASE_RULE_IDS
        return [rule_id for rule_id in wanted if rule_id not in present]

    @property
    def versions_kept_forever(self) -> bool:
        """A versioned bucket on which no enabled rule expires the noncurrent versions of
        execution data: every deleted (or overwritten) object keeps its bytes forever."""
        return self.versioned and not expires_noncurrent(self.rules)

    @property
    def markers_kept(self) -> bool:
        """A versioned bucket on which no enabled rule removes expired delete markers."""
        return self.versioned and not removes_expired_markers(self.rules)

    def _versioning_json(self) -> dict[str, Any]:
        if self.versioning is not None:
            return self.versioning.to_json()
        return {"status": "Unversioned", "versioned": False, "supported": True, "note": None}

    def to_json(self) -> dict[str, Any]:
        """The rules and checks; ``"versioning"`` (``Versioning.to_json``; ``status``
        ``Unversioned`` when never enabled or not supported), ``"versionsKeptForever"``,
        ``"deleteMarkersKept"`` and ``"missingVersionRules"`` (ids of the versioned rules
        missing; empty on an unversioned bucket)."""
        present = {r.get("ID") for r in self.rules}
        return {
            "bucket": self.bucket,
            "configured": self.exists,
            "rules": [
                {
                    "id": rule.get("ID") or f"#{i + 1}",
                    "ours": is_ours(rule),
                    "enabled": rule.get("Status") == "Enabled",
                    "filter": describe_filter(rule),
                    "actions": describe_actions(rule),
                    "tooShort": expiry_problem(rule, self.minimum_expiry_days) is not None,
                    "problem": expiry_problem(rule, self.minimum_expiry_days),
                    "rule": jsonable(rule),
                }
                for i, rule in enumerate(self.rules)
            ],
            "missing": self.missing,
            "minimumExpiryDays": self.minimum_expiry_days,
            "problems": [{"id": rule_id, "problem": problem} for rule_id, problem in self.problems],
            "versioning": self._versioning_json(),
            "versionsKeptForever": self.versions_kept_forever,
            "deleteMarkersKept": self.markers_kept,
            "missingVersionRules": [
                rule_id for rule_id in VERSIONED_RULE_IDS if self.versioned and rule_id not in present
            ],
        }


def show_lifecycle(storage: Storage) -> LifecycleView:
    """The bucket's rules and versioning state (one GetBucketLifecycleConfiguration, then
    one GetBucketVersioning; a store without lifecycle support: NotSupportedError, exit 6)."""
    from apstorage.services.versions import ask_versioning
    from apstorage.stores.s3_lifecycle import get_lifecycle

    with _bucket_store(storage) as store:
        config = get_lifecycle(store)
        return LifecycleView(
            store.bucket, store.where, config.rules, config.exists,
            minimum_expiry_days=minimum_expiry_days(storage.settings),
            versioning=ask_versioning(storage),
        )


# -- describing rules -------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """boto3's rule dicts as JSON: datetimes as ISO-8601 UTC."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _tags(tags: list[dict[str, str]]) -> str:
    return ", ".join(f"{t.get('Key')}={t.get('Value')}" for t in tags)


def describe_filter(rule: dict[str, Any]) -> str:
    flt = rule.get("Filter")
    if flt is None:
        prefix = rule.get("Prefix", "")
        return f"prefix {prefix!r}" if prefix else "all objects"
    parts: list[str] = []
    body = flt.get("And", flt)
    if body.get("Prefix"):
        parts.append(f"prefix {body['Prefix']!r}")
    if "Tag" in body:
        parts.append(f"tag {_tags([body['Tag']])}")
    if body.get("Tags"):
        parts.append(f"tags {_tags(body['Tags'])}")
    if "ObjectSizeGreaterThan" in body:
        parts.append(f"size > {body['ObjectSizeGreaterThan']} B")
    if "ObjectSizeLessThan" in body:
        parts.append(f"size < {body['ObjectSizeLessThan']} B")
    return " and ".join(parts) or "all objects"


def _days(n: Any) -> str:
    """A day count from a rule: ``1 day``, ``31 days`` (``text.plural``); a value that is not
    a whole number (a store may return anything) is shown as it is."""
    return plural(n, "day") if isinstance(n, int) and not isinstance(n, bool) else f"{n} days"


def describe_actions(rule: dict[str, Any]) -> str:
    parts: list[str] = []
    exp = rule.get("Expiration") or {}
    if "Days" in exp:
        parts.append(f"expire after {_days(exp['Days'])}")
    if "Date" in exp:
        parts.append(f"expire on {jsonable(exp['Date'])}")
    if exp.get("ExpiredObjectDeleteMarker"):
        parts.append("remove expired delete markers")
    for t in rule.get("Transitions") or []:
        when = f"after {_days(t['Days'])}" if "Days" in t else f"on {jsonable(t.get('Date'))}"
        parts.append(f"move to {t.get('StorageClass')} {when}")
    nve = rule.get("NoncurrentVersionExpiration") or {}
    if "NoncurrentDays" in nve:
        parts.append(f"expire noncurrent versions after {_days(nve['NoncurrentDays'])}")
    for t in rule.get("NoncurrentVersionTransitions") or []:
        parts.append(f"move noncurrent versions to {t.get('StorageClass')} after {_days(t.get('NoncurrentDays'))}")
    abort = rule.get("AbortIncompleteMultipartUpload") or {}
    if "DaysAfterInitiation" in abort:
        parts.append(f"abort incomplete multipart uploads after {_days(abort['DaysAfterInitiation'])}")
    return "; ".join(parts) or "no action"


__all__ = [
    "ABORT_RULE_ID",
    "BASE_RULE_IDS",
    "DEFAULT_NONCURRENT_DAYS",
    "EXPIRE_RULE_ID",
    "MARKERS_RULE_ID",
    "NONCURRENT_RULE_ID",
    "OUR_RULE_IDS",
    "VERSIONED_RULE_IDS",
    "check_noncurrent_days",
    "expires_noncurrent",
    "removes_expired_markers",
    "versioned_rules",
    "LifecyclePlan",
    "LifecycleView",
    "RuleChange",
    "apply_lifecycle",
    "check_expiry",
    "expiry_problem",
    "minimum_expiry_days",
    "rule_problems",
    "describe_actions",
    "describe_filter",
    "is_ours",
    "our_rules",
    "plan_merge",
    "same_rule",
    "show_lifecycle",
]
