"""The catalog's vocabulary: file types, locations, rows, ids and object keys."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import PurePosixPath
from typing import Iterable

from apstorage.errors import UsageError
from apstorage.text import plural


class Location(str, Enum):
    DB = "DB"
    S3 = "S3"
    LOCAL = "LOCAL"


class Compression(str, Enum):
    """The ``compression`` column. ``GZIP`` was written by older platform versions: it is
    read, never written.

    A value the platform may add later loads too (so one such row never stops a listing,
    a sweep or a migration): ``Compression("BROTLI")`` is an unregistered member whose
    ``known`` is False; decoding such a row fails for that row alone
    (``apstorage.services.decoding``).
    """

    NONE = "NONE"
    ZSTD = "ZSTD"
    GZIP = "GZIP"

    @classmethod
    def _missing_(cls, value: object) -> "Compression | None":
        if value is None:  # a hand-made table without the NOT NULL default: stored as is
            return cls.NONE
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        return self.value in _KNOWN_COMPRESSIONS


_KNOWN_COMPRESSIONS = frozenset(c.value for c in Compression)

# -- types ------------------------------------------------------------------------------------
# The platform's own split (its file service): execution data that expires by age; the flow
# bundle, which follows AP_FILE_STORAGE_LOCATION like execution data but is removed with its
# flow version, never by age; and permanent files, always in the database.

EXPIRING_TYPES = frozenset(
    {
        "FLOW_RUN_LOG",
        "FLOW_RUN_LOG_SLICE",
        "FLOW_STEP_FILE",
        "TRIGGER_PAYLOAD",
        "TRIGGER_EVENT_FILE",
        "WEBHOOK_PAYLOAD",
    }
)
FLOW_BUNDLE = "FLOW_BUNDLE"
LOCATION_TYPES = EXPIRING_TYPES | {FLOW_BUNDLE}  # written where AP_FILE_STORAGE_LOCATION says
PERMANENT_TYPES = frozenset(
    {
        "UNKNOWN",
        "PACKAGE_ARCHIVE",
        "SAMPLE_DATA",
        "SAMPLE_DATA_INPUT",
        "PROJECT_RELEASE",
        "FLOW_VERSION_BACKUP",
        "PLATFORM_ASSET",
        "USER_PROFILE_PICTURE",
        "KNOWLEDGE_BASE",
    }
)
ALL_TYPES = LOCATION_TYPES | PERMANENT_TYPES
LEGACY_TYPES = {"STEP_FILE": "FLOW_STEP_FILE", "FILE": "UNKNOWN"}

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Sizes the platform's schema can hold: ``size`` is a Postgres ``integer``; a ``bytea`` value
# is at most 1 GiB including its 4-byte header (PostgreSQL's MaxAllocSize); SQLite's BLOB
# limit is SQLITE_MAX_LENGTH, 10^9 bytes in its default build.
MAX_CATALOG_SIZE = 2**31 - 1
MAX_DB_BYTES = {"POSTGRES": 2**30 - 1 - 4, "SQLITE3": 1_000_000_000}

# The ``metadata`` key `presign --upload` sets on the rows it creates: when the PUT URL
# expires (ISO-8601 UTC). Until then the row's object may still be on its way; after it
# (and with no object) the upload never came, and `gc --pending` deletes the row.
PENDING_UPLOAD_KEY = "apstorageUploadExpiresAt"

_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Ids the platform makes: 21 characters of 0-9A-Za-z (nanoid over that alphabet; the columns
# are varchar(21)). New rows must use them. Rows already in a catalog are read more
# tolerantly ('_' and '-', up to 64), as before, so an odd existing id still works.
NEW_ID_MAX = 21  # the platform's ids: nanoid, 21 characters
ID_MAX = 64  # ids of rows already in the catalog
_NEW_ID_CHARS, _ID_CHARS = "[0-9A-Za-z]", "[0-9A-Za-z_-]"
NEW_ID_RE = re.compile(rf"{_NEW_ID_CHARS}{{1,{NEW_ID_MAX}}}")
_ID_RE = re.compile(rf"{_ID_CHARS}{{1,{ID_MAX}}}")


def new_id() -> str:
    """A 21-character nanoid-style id over ``0-9A-Za-z``, as the platform makes them."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(21))


def split_items(values: "str | Iterable[str] | None", flag: str, what: str = "type") -> list[str] | None:
    """The items of a comma-separated flag (``--types a,b``; a repeatable one too: ``--type
    a --type b,c``), or None when the flag was not given. Only the spaces around a comma are
    dropped; an empty item (``--types ""``, ``a,,b``, ``a,``) is refused — UsageError (exit
    2) naming ``flag`` — because dropping it would silently widen the filter to every
    ``what`` (a sweep of every type)."""
    if values is None:
        return None
    out: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        for item in value.split(","):
            item = item.strip(" ")
            if not item:
                raise UsageError(f"{flag}: an empty {what}; give one or more, separated by commas")
            out.append(item)
    return out


def parse_type(value: str, flag: str = "--type") -> str:
    """Normalise a file type name (any case, legacy names accepted) or refuse it (exit 2).
    Only spaces around it are dropped: a newline or any other control character is not part
    of a type's name, and is refused like any unknown name."""
    name = value.strip(" ").upper()
    name = LEGACY_TYPES.get(name, name)
    if name not in ALL_TYPES:
        accepted = ", ".join(sorted(ALL_TYPES))
        raise UsageError(f"{flag}: unknown file type {value!r}; accepted: {accepted}")
    return name


def expires(file_type: str) -> bool:
    """True for execution data the platform deletes by age: swept by `sweep-expired`,
    tagged ``ap-retention=execution`` in S3. Never for ``FLOW_BUNDLE`` or permanent types."""
    return file_type in EXPIRING_TYPES


def effective_retention_days(project_days: int | None, global_days: int, pause_days: int) -> int:
    """A project's execution-data retention, as the platform computes it: its own
    ``executionDataRetentionDays`` clamped to [``AP_PAUSED_FLOW_TIMEOUT_DAYS``,
    ``AP_EXECUTION_DATA_RETENTION_DAYS``] — never shorter than a flow may stay paused,
    never longer than the global — or the global when the project sets none. When the
    pause timeout exceeds the global, the global wins (``min`` is applied last)."""
    if project_days is None:
        return global_days
    return min(global_days, max(project_days, pause_days))


# The platform's own default for both AP_EXECUTION_DATA_RETENTION_DAYS and
# AP_PAUSED_FLOW_TIMEOUT_DAYS (its environment-variable reference).
PLATFORM_DEFAULT_DAYS = 30


def retention_race(
    retention_days: int, pause_days: int, name: str = "AP_EXECUTION_DATA_RETENTION_DAYS"
) -> tuple[str, str] | None:
    """How the retention compares with the pause timeout, for where settings are reviewed
    (``config``, ``lifecycle show``, ``check-iam``): ``("warning", line)`` when the retention
    is strictly shorter (a flow may stay paused longer than its files are kept; the platform
    says the pause timeout cannot exceed the retention), ``("note", line)`` when the two are
    equal, None when the retention is longer.

    Equal is the platform's own default (30 and 30), not an operator's mistake, but its
    environment-variable reference asks for a retention *strictly greater* than the pause
    timeout: a resume firing on the boundary can race the file cleanup. ``name`` is what set
    the retention (``--retention-days`` on a sweep)."""
    if retention_days > pause_days:
        return None
    if retention_days < pause_days:
        return "warning", (
            f"{name}={retention_days} is shorter than AP_PAUSED_FLOW_TIMEOUT_DAYS={pause_days}: a flow "
            f"paused for more than {plural(retention_days, 'day')} finds its files swept when it "
            "resumes; the platform requires the pause timeout not to exceed the retention"
        )
    defaults = " (both the platform's defaults)" if retention_days == PLATFORM_DEFAULT_DAYS else ""
    return "note", (
        f"{name}={retention_days} equals AP_PAUSED_FLOW_TIMEOUT_DAYS={pause_days}{defaults}: a flow "
        "resumed on the last day of its pause can race the sweep for its own files; the platform's "
        "guide recommends a retention 1-2 days longer than the pause timeout"
    )


def retention_race_warning(
    retention_days: int, pause_days: int, name: str = "AP_EXECUTION_DATA_RETENTION_DAYS"
) -> str | None:
    """The line a sweep prints about the pause timeout: only when the retention is strictly
    shorter (``retention_race``'s warning), else None. The equal case — the platform's own
    defaults — is said only where settings are reviewed, so a cron sweep with nothing to do
    prints nothing."""
    found = retention_race(retention_days, pause_days, name)
    return found[1] if found and found[0] == "warning" else None


def follows_storage_location(file_type: str) -> bool:
    """True when new files of this type go where ``AP_FILE_STORAGE_LOCATION`` says
    (expiring execution data and ``FLOW_BUNDLE``); permanent types always go to DB."""
    return file_type in LOCATION_TYPES


def check_owner_id(value: str, flag: str, *, new: bool = False) -> str:
    """Project and platform ids become path segments: only id characters are allowed.

    ``new`` (an id for a row about to be written): at most 21 characters of ``0-9A-Za-z``,
    the platform's alphabet. Otherwise (a row already in the catalog) ``_`` and ``-`` and up
    to 64 characters pass too. A trailing newline or any control character never passes.
    """
    pattern, chars, limit = (NEW_ID_RE, _NEW_ID_CHARS, NEW_ID_MAX) if new else (_ID_RE, _ID_CHARS, ID_MAX)
    if not pattern.fullmatch(value):
        from apstorage.text import printable

        shown = printable(repr(value[:80]))
        if len(value) > limit and re.fullmatch(f"{chars}+", value):
            # Every character is an id character: the length alone is what is wrong.
            raise UsageError(f"{flag}: {shown} is too long for an id ({len(value):,} characters; at most {limit})")
        accepted = f"1 to {NEW_ID_MAX} letters and digits (0-9A-Za-z), as the platform makes ids" if new \
            else f"letters, digits, '_' and '-' only, at most {ID_MAX}"
        raise UsageError(f"{flag}: {shown} is not a valid id; accepted: {accepted}")
    return value


def parse_owner_ids(values: Iterable[str] | None, flag: str) -> tuple[str, ...]:
    """The ids an owner filter names (``du --project a,b --project c`` → ``("a", "b", "c")``),
    each checked by ``check_owner_id`` — the validator ``put`` uses — so a bad one is refused
    the same way: UsageError (exit 2) naming ``flag``. A filter matches rows already in the
    catalog, so ids are as tolerant as those rows' (``_`` and ``-``, up to 64 characters).

    Only the spaces around a comma are dropped. A newline, a tab or any other control
    character is refused, and so is an empty id (``--project ""``, ``a,,b``): dropping it
    would silently widen the filter to every owner."""
    items = split_items(values, flag, "id") or []
    return tuple(dict.fromkeys(check_owner_id(item, flag) for item in items))


def check_owner(project_id: str | None, platform_id: str | None) -> None:
    """Every new file has an owner, and owner ids become key segments: refuse anything else."""
    if not project_id and not platform_id:
        raise UsageError("give --project ID or --platform ID: every file has an owner")
    if project_id is not None:
        check_owner_id(project_id, "--project", new=True)
    if platform_id is not None:
        check_owner_id(platform_id, "--platform", new=True)


def object_key(
    file_id: str, file_type: str, project_id: str | None, platform_id: str | None
) -> str:
    """The one place object keys are built (S3 and LOCAL share them).

    ``platform/{platformId}/{TYPE}/{fileId}`` when the row has a platform, else
    ``project/{projectId}/{TYPE}/{fileId}`` — the platform's own layout.
    """
    if platform_id:
        owner = ("platform", check_owner_id(platform_id, "platformId"))
    elif project_id:
        owner = ("project", check_owner_id(project_id, "projectId"))
    else:
        raise UsageError("a file needs a project or a platform (--project or --platform)")
    check_owner_id(file_id, "id")
    if file_type not in ALL_TYPES:
        raise UsageError(f"unknown file type {file_type!r}")
    return f"{owner[0]}/{owner[1]}/{file_type}/{file_id}"


def safe_relative_key(key: str) -> str:
    """Refuse a key that could escape a store's root (absolute, ``..``, empty parts)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise UsageError(f"unsafe object key {key!r}")
    parts = PurePosixPath(key).parts
    if any(part in ("", ".", "..") for part in parts) or len(parts) != key.count("/") + 1:
        raise UsageError(f"unsafe object key {key!r}")
    return key


@dataclass(frozen=True)
class FileRow:
    """One row of the ``file`` table, without its bytes."""

    id: str
    type: str
    location: Location
    created: datetime | None = None
    updated: datetime | None = None
    project_id: str | None = None
    platform_id: str | None = None
    file_name: str | None = None
    size: int | None = None
    metadata: dict | None = field(default=None, compare=False)
    s3_key: str | None = None
    compression: Compression = Compression.NONE

    @property
    def key(self) -> str:
        """Where the bytes live in S3 or LOCAL: the row's own ``s3Key`` is always reused."""
        return self.s3_key or object_key(self.id, self.type, self.project_id, self.platform_id)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "location": self.location.value,
            "created": iso_utc(self.created),
            "updated": iso_utc(self.updated),
            "projectId": self.project_id,
            "platformId": self.platform_id,
            "fileName": self.file_name,
            "size": self.size,
            "s3Key": self.s3_key,
            "compression": self.compression.value,
        }


def iso_utc(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``, as every --json output gives times (naive = UTC)."""
    if value is None:
        return None
    from datetime import timezone

    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
