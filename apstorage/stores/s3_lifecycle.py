"""Bucket lifecycle configuration on an ``S3Store``: read it, replace it.

S3 has no "add one rule" call: PutBucketLifecycleConfiguration replaces every rule on the
bucket. Merging is the service's job (``apstorage.services.lifecycle``); this module only
moves whole configurations and turns the provider's refusals into our errors:

- ``NoSuchLifecycleConfiguration`` (404) on read: the bucket has no rules (an empty list);
- any other answer that is not a lifecycle configuration means the store does not
  implement lifecycle → ``NotSupportedError`` (exit 6) carrying what it answered:
  ``NotImplemented`` / HTTP 501 (or 405); a 409 such as ``BucketAlreadyExists`` (stores
  that take ``PUT ?lifecycle`` for CreateBucket, as rclone's does); a 2xx whose body is
  something else (a bucket listing: the store ignored ``?lifecycle``) or has no rules. (A
  write is not read back: AWS propagates a new configuration with a delay, so an older
  answer right after a write proves nothing);
- HTTP 400 on write: the store refused the rules as given → ``NotSupportedError`` too,
  with the provider's message (S3-compatible stores reject forms they lack this way);
- everything else goes through ``store.translate`` (``NoSuchBucket`` → 4, 403 → 5, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from apstorage.errors import ApStorageError, NotSupportedError

if TYPE_CHECKING:
    from apstorage.stores.s3 import S3Store

NO_CONFIGURATION = "NoSuchLifecycleConfiguration"
_NOT_IMPLEMENTED = ("NotImplemented", "MethodNotAllowed", "XNotImplemented")
_HINT = "expired execution data is still deleted by `apstorage sweep-expired`"
_ROOT_MARK = "ApLifecycleAnswerRoot"  # set by _note_root: the answer's root element
_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")


@dataclass(frozen=True)
class LifecycleConfiguration:
    """A bucket's rules as the provider returned them (boto3's dicts, untouched)."""

    rules: list[dict[str, Any]] = field(default_factory=list)
    # Returned by AWS (and SeaweedFS) next to the rules; written back unchanged.
    transition_default_minimum_object_size: str | None = None
    exists: bool = True


def get_lifecycle(store: S3Store) -> LifecycleConfiguration:
    """The bucket's lifecycle configuration; no configuration is an empty rule list.
    ``NotSupportedError`` when the store answers with anything that is not one."""
    client = store.client
    client.meta.events.register(
        "before-parse.s3.GetBucketLifecycleConfiguration", _note_root, unique_id="apstorage-lifecycle-root"
    )
    try:
        response = client.get_bucket_lifecycle_configuration(Bucket=store.bucket)
    except ClientError as exc:
        if _code(exc) == NO_CONFIGURATION:
            return LifecycleConfiguration(rules=[], exists=False)
        raise _translate(store, exc, "read") from None
    except BotoCoreError as exc:
        raise store.translate(exc) from None
    root = response.get(_ROOT_MARK)
    if root != "LifecycleConfiguration" or not response.get("Rules"):
        what = f"a <{root}> document" if root and root != "LifecycleConfiguration" else (
            "an empty body" if not root else "a configuration without rules"
        )
        raise _not_supported(store, "read", f"HTTP 200 with {what} instead of a lifecycle configuration")
    return LifecycleConfiguration(
        rules=list(response.get("Rules", [])),
        transition_default_minimum_object_size=response.get("TransitionDefaultMinimumObjectSize"),
    )


def _note_root(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore event handler (before-parse, GetBucketLifecycleConfiguration): remember the
    answer's root element, so a 2xx that is not a lifecycle configuration (a store that
    ignores ``?lifecycle`` answers with the bucket listing) is told apart. Such a body is
    not parsed as one: botocore would take a listing it cannot parse for a 500 and retry."""
    status = response_dict.get("status_code", 0)
    body = response_dict.get("body") or b""
    if not isinstance(body, (bytes, bytearray)) or not (200 <= status < 300 or status == 500):
        return
    head = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", b"", bytes(body[:4096]), flags=re.S)
    match = _ROOT.search(head)
    root = match.group(1).decode("ascii", "replace").split(":")[-1] if match else ""
    # botocore's own handler runs first and makes a 200 it cannot parse a 500 (to retry
    # it): a listing holding a key XML cannot carry is one. A real 500 stays a 500.
    if root == "Error" or (status == 500 and root != "ListBucketResult"):
        return
    customized_response_dict[_ROOT_MARK] = root
    if root != "LifecycleConfiguration":
        response_dict["status_code"] = 200
        response_dict["body"] = b""


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


def _not_supported(store: S3Store, action: str, answer: str) -> NotSupportedError:
    return NotSupportedError(
        f"the store does not support lifecycle configuration ({action}) on bucket "
        f"{store.bucket!r} at {store.where}: it answered {answer}",
        hint=_HINT,
    )


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
    if code == "NoSuchBucket":
        return store.translate(exc)
    if code in _NOT_IMPLEMENTED or status in (405, 409, 501):
        return _not_supported(store, action, f"{provider} (HTTP {status})")
    if action == "write" and status == 400 and code != "NoSuchBucket":
        return NotSupportedError(
            f"the store refused the lifecycle rules for {bucket}: {provider} (HTTP 400)",
            hint="apstorage's rules use an object-tag filter and "
            "AbortIncompleteMultipartUpload; this store may lack one of them",
        )
    return store.translate(exc)


__all__ = ["LifecycleConfiguration", "get_lifecycle", "put_lifecycle", "NO_CONFIGURATION"]
