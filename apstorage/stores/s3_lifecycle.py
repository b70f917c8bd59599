"""Bucket lifecycle configuration on an ``S3Store``: read it, replace it.

S3 has no "add one rule" call: PutBucketLifecycleConfiguration replaces every rule on the
bucket. Merging is the service's job (``apstorage.services.lifecycle``); this module only
moves whole configurations and turns the provider's refusals into our errors:

- ``NoSuchLifecycleConfiguration`` on read: the bucket has no rules (an empty list);
- ``NotImplemented`` / HTTP 501 (or 405): the store does not implement lifecycle, or not
  this rule form → ``NotSupportedError`` (exit 6) carrying the provider's message;
- HTTP 400 on write: the store refused the rules as given → ``NotSupportedError`` too,
  with the provider's message (S3-compatible stores reject forms they lack this way);
- everything else goes through ``store.translate`` (``NoSuchBucket`` → 4, 403 → 5, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from apstorage.errors import ApStorageError, NotSupportedError

if TYPE_CHECKING:
    from apstorage.stores.s3 import S3Store

NO_CONFIGURATION = "NoSuchLifecycleConfiguration"
_NOT_IMPLEMENTED = ("NotImplemented", "MethodNotAllowed", "XNotImplemented")


@dataclass(frozen=True)
class LifecycleConfiguration:
    """A bucket's rules as the provider returned them (boto3's dicts, untouched)."""

    rules: list[dict[str, Any]] = field(default_factory=list)
    # Returned by AWS (and SeaweedFS) next to the rules; written back unchanged.
    transition_default_minimum_object_size: str | None = None
    exists: bool = True


def get_lifecycle(store: S3Store) -> LifecycleConfiguration:
    """The bucket's lifecycle configuration; no configuration is an empty rule list."""
    try:
        response = store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)
    except ClientError as exc:
        if _code(exc) == NO_CONFIGURATION:
            return LifecycleConfiguration(rules=[], exists=False)
        raise _translate(store, exc, "read") from None
    except BotoCoreError as exc:
        raise store.translate(exc) from None
    return LifecycleConfiguration(
        rules=list(response.get("Rules", [])),
        transition_default_minimum_object_size=response.get("TransitionDefaultMinimumObjectSize"),
    )


def put_lifecycle(
    store: S3Store,
    rules: list[dict[str, Any]],
    *,
    transition_default_minimum_object_size: str | None = None,
) -> None:
    """Replace the bucket's whole lifecycle configuration with ``rules``."""
    kwargs: dict[str, Any] = {
        "Bucket": store.bucket,
        "LifecycleConfiguration": {"Rules": rules},
    }
    if transition_default_minimum_object_size:
        kwargs["TransitionDefaultMinimumObjectSize"] = transition_default_minimum_object_size
    try:
        store.client.put_bucket_lifecycle_configuration(**kwargs)
    except ClientError as exc:
        raise _translate(store, exc, "write") from None
    except BotoCoreError as exc:
        raise store.translate(exc) from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _translate(store: S3Store, exc: ClientError, action: str) -> ApStorageError:
    code = _code(exc)
    status = _status(exc)
    message = exc.response.get("Error", {}).get("Message") or code or f"HTTP {status}"
    provider = f"{code}: {message}" if code and message != code else message
    bucket = f"bucket {store.bucket!r} at {store.where}"
    if code in _NOT_IMPLEMENTED or status in (405, 501):
        return NotSupportedError(
            f"the store does not support lifecycle configuration ({action}) on {bucket}: "
            f"{provider} (HTTP {status})",
            hint="expired execution data is still deleted by `apstorage sweep-expired`",
        )
    if action == "write" and status == 400 and code != "NoSuchBucket":
        return NotSupportedError(
            f"the store refused the lifecycle rules for {bucket}: {provider} (HTTP 400)",
            hint="apstorage's rules use an object-tag filter and "
            "AbortIncompleteMultipartUpload; this store may lack one of them",
        )
    return store.translate(exc)


__all__ = ["LifecycleConfiguration", "get_lifecycle", "put_lifecycle", "NO_CONFIGURATION"]
