"""The fault stand-in itself: each action does what the tests that use it rely on."""

from __future__ import annotations

import hashlib

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.s3_faults import Fault


def _client(info, read_timeout=5, **extra):
    import boto3

    return boto3.client(
        "s3", endpoint_url=info.endpoint, region_name=info.region,
        aws_access_key_id=info.access_key, aws_secret_access_key=info.secret_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=read_timeout, **extra),
    )


def test_forwards_signed_requests_unchanged(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    put = s3.put_object(Bucket=bucket, Key="a/b", Body=b"hello")
    assert put["ETag"].strip('"') == hashlib.md5(b"hello").hexdigest()
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"hello"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b"]


def test_etag_dropped_or_replaced(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    faulty_s3.add(Fault("drop_etag", method="PUT", times=1))
    assert "ETag" not in s3.put_object(Bucket=bucket, Key="k1", Body=b"x")
    faulty_s3.add(Fault("etag", method="PUT", value='"not-an-md5-1"', times=1))
    assert s3.put_object(Bucket=bucket, Key="k2", Body=b"x")["ETag"] == '"not-an-md5-1"'
    assert s3.get_object(Bucket=bucket, Key="k2")["Body"].read() == b"x"


def test_status_and_throttle(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    fault = faulty_s3.add(Fault("status", method="GET", status=503, code="SlowDown", times=1))
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=bucket)
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert fault.applied == 1
    s3.list_objects_v2(Bucket=bucket)  # times=1: the next one passes
    throttle = faulty_s3.add(Fault("throttle", rate=1.0))
    codes = []
    for _ in range(5):
        try:
            s3.list_objects_v2(Bucket=bucket)
            codes.append("ok")
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    assert "SlowDown" in codes and throttle.applied >= 1


def test_truncated_listing_without_token(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    faulty_s3.add(Fault("truncate_listing", query="list-type"))
    page = s3.list_objects_v2(Bucket=bucket)
    assert page["IsTruncated"] is True and "NextContinuationToken" not in page


def test_empty_truncated_page_then_the_real_one(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    faulty_s3.add(Fault("empty_truncated", query="list-type"))
    first = s3.list_objects_v2(Bucket=bucket)
    assert first["IsTruncated"] is True and first["KeyCount"] == 0
    second = s3.list_objects_v2(Bucket=bucket, ContinuationToken=first["NextContinuationToken"])
    assert [o["Key"] for o in second["Contents"]] == ["k"]


@pytest.mark.parametrize("form, shown", [("empty", ""), ("encoded", "bad%20key"), ("exact", "bad key")])
def test_delete_refuse_names_keys_as_asked(faulty_s3, bucket, form, shown):
    s3 = _client(faulty_s3.info)
    for key in ("good", "bad key"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    faulty_s3.add(Fault("delete_refuse", query="delete", value="^bad", key_form=form, code="AccessDenied"))
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "good"}, {"Key": "bad key"}]})
    assert [e["Key"] for e in answer["Errors"]] == [shown]
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert left == ["bad key"]


def test_require_md5_refuses_deletes_without_it(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    faulty_s3.add(Fault("require_md5", query="delete"))
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    try:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
        refused = False  # this botocore sent Content-MD5 itself
    except ClientError as exc:
        refused = exc.response["Error"]["Code"] == "MissingContentMD5"
    sent_md5 = [p for m, p in faulty_s3.requests if m == "POST"]
    assert sent_md5 and (refused or "Contents" not in s3.list_objects_v2(Bucket=bucket))


@pytest.mark.parametrize("action", ["stall", "trickle", "reset", "cut_body"])
def test_broken_answers_surface_as_errors(faulty_s3, bucket, action):
    s3 = _client(faulty_s3.info, read_timeout=1)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    faulty_s3.add(Fault(action, method="GET", delay=3.0))
    with pytest.raises(Exception) as info:
        s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert not isinstance(info.value, AssertionError)


def test_refuse_early_answers_before_the_body(faulty_s3, bucket):
    s3 = _client(faulty_s3.info)
    faulty_s3.add(Fault("refuse_early", method="PUT", status=403, code="AccessDenied"))
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="big", Body=b"x" * (2 * 1024 * 1024))
    assert info.value.response["Error"]["Code"] == "AccessDenied"
