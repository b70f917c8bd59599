"""The versioned-bucket primitives (stores/s3_versions.py) against real servers: SeaweedFS
and moto's server (both keep versions) and rclone's S3 server (no versioning API)."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from apstorage.errors import NotFoundError, NotSupportedError
from apstorage.stores import s3_versions as V
from apstorage.stores.s3 import S3Store
from tests.conftest import settings_from


def _store(info, bucket: str, home) -> S3Store:
    return S3Store(settings_from({"AP_CONFIG_PATH": str(home), **info.ap_env(bucket)}))


@pytest.fixture(params=["seaweed", "moto"])
def versioned(request, home):
    info = request.getfixturevalue(request.param)
    bucket = f"v-{secrets.token_hex(6)}"
    client = info.client()
    client.create_bucket(Bucket=bucket)
    store = _store(info, bucket, home)
    yield client, bucket, store
    store.close()


def test_state_follows_the_bucket(versioned) -> None:
    client, bucket, store = versioned
    assert V.get_versioning(store) == V.Versioning("")
    assert not V.get_versioning(store).versioned
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert V.get_versioning(store).status == V.ENABLED
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    state = V.get_versioning(store)
    assert state.status == V.SUSPENDED and state.versioned  # suspending keeps the versions


def test_versions_of_exact_keys_newest_first_and_delete_them(versioned) -> None:
    client, bucket, store = versioned
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for i in range(6):
        for body in (b"a", b"bb", b"ccc"):
            client.put_object(Bucket=bucket, Key=f"p/T/k{i}", Body=body)
    client.put_object(Bucket=bucket, Key="p/T/k1x", Body=b"another key sharing the prefix")
    assert store.delete_many(["p/T/k2"]) == {}  # a delete marker, the bytes stay
    found = V.versions_of(store, ["p/T/k1", "p/T/k2", "p/T/k4", "absent/k"])
    assert found["absent/k"] == []
    assert [e.size for e in found["p/T/k1"]] == [3, 2, 1]  # k1x never mixed in
    assert found["p/T/k1"][0].is_latest and found["p/T/k1"][0].etag == hashlib.md5(b"ccc").hexdigest()
    k2 = found["p/T/k2"]
    assert k2[0].delete_marker and k2[0].is_latest and [e.size for e in k2[1:]] == [3, 2, 1]
    # every entry the store lists, through a small page size (markers followed)
    listed = list(V.list_versions(store, "p/", page_size=2))
    assert len(listed) == 6 * 3 + 1 + 1
    assert V.delete_versions(store, [(e.key, e.version_id) for e in k2]) == {}
    assert V.versions_of(store, ["p/T/k2"]) == {"p/T/k2": []}
    assert len(V.versions_of(store, ["p/T/k1"])["p/T/k1"]) == 3  # others untouched


def test_range_listing_falls_back_to_key_by_key(versioned, monkeypatch) -> None:
    client, bucket, store = versioned
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for i in range(30):
        client.put_object(Bucket=bucket, Key=f"f/k{i:03d}", Body=b"x" * (i + 1))
    monkeypatch.setattr(V, "WASTE_FLOOR", 0)
    monkeypatch.setattr(V, "WASTE_PER_KEY", 1)  # 2 keys asked: the range gives up after 2 others
    found = V.versions_of(store, ["f/k000", "f/k029"])
    assert [e.size for e in found["f/k000"]] == [1] and [e.size for e in found["f/k029"]] == [30]


def test_copy_version_restores_the_bytes(versioned) -> None:
    client, bucket, store = versioned
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_object(Bucket=bucket, Key="r/k", Body=b"precious bytes")
    store.delete_many(["r/k"])
    assert store.stat("r/k") is None and V.head_version(store, "r/k") is None
    newest = next(e for e in V.versions_of(store, ["r/k"])["r/k"] if not e.delete_marker)
    _, etag = V.copy_version(store, "r/k", newest.version_id)
    assert etag == newest.etag
    assert store.get("r/k") == b"precious bytes"
    head = V.head_version(store, "r/k")
    assert head is not None and head["size"] == len(b"precious bytes") and head["etag"] == newest.etag


def test_missing_bucket_is_not_found(seaweed, home) -> None:
    store = _store(seaweed, f"none-{secrets.token_hex(4)}", home)
    with pytest.raises(NotFoundError):
        V.get_versioning(store)


def test_rclone_counts_as_unversioned(rclone, home) -> None:
    bucket = f"r-{secrets.token_hex(4)}"
    rclone.client().create_bucket(Bucket=bucket)
    store = _store(rclone, bucket, home)
    state = V.get_versioning(store)
    assert not state.versioned and state.status == ""
    with pytest.raises(NotSupportedError):
        list(V.list_versions(store))


@pytest.mark.parametrize(
    "code,message",
    [("AccessDenied", "Access Denied because object protected by object lock."),
     ("InvalidRequest", "Object is WORM protected and cannot be overwritten; legal hold"),
     ("ObjectLocked", "")],
)
def test_object_lock_refusals_share_one_reason(code: str, message: str) -> None:
    assert V.refusal_reason(code, message) == V.OBJECT_LOCK_REASON
    assert V.refusal_reason("AccessDenied", "Access Denied") == "AccessDenied: Access Denied"
