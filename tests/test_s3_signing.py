"""apstorage's SigV4 for small PUTs must match botocore's signer byte for byte."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from apstorage.stores.s3 import sigv4_headers

FIXED = datetime.datetime(2026, 3, 4, 5, 6, 7)


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize(
    "path, extra",
    [
        ("/bucket/project/P1/FLOW_RUN_LOG/abc", {}),
        ("/bucket/platform/x%20y/FLOW_BUNDLE/%C3%A9t%C3%A9", {"x-amz-tagging": "ap-retention=execution"}),
        ("/key/with~tilde", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}),
    ],
)
def test_signature_matches_botocore(monkeypatch, token, path, extra) -> None:
    body = b"some bytes \x00\xff" * 100
    host = "127.0.0.1:8333"
    region = "eu-west-3"
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: FIXED)
    request = AWSRequest(method="PUT", url=f"http://{host}{path}", data=body, headers=dict(extra))
    request.context["payload_signing_enabled"] = True
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "s3", region).add_auth(request)

    ours = sigv4_headers(
        "PUT", host, path, extra, body, region, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token,
        now=FIXED.replace(tzinfo=datetime.timezone.utc).timestamp(),
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    if token:
        assert ours["x-amz-security-token"] == token


def test_signature_with_a_query_string_matches_botocore(monkeypatch) -> None:
    from urllib.parse import quote, urlencode

    from apstorage.stores.s3 import canonical_query

    query = {"list-type": "2", "prefix": "project/p 1/", "continuation-token": "a+b/c=", "max-keys": "1000"}
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: FIXED)
    url = "http://127.0.0.1:8333/bucket?" + urlencode(query, quote_via=quote, safe="-_.~")
    request = AWSRequest(method="GET", url=url, data=b"", headers={})
    request.context["payload_signing_enabled"] = True
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "s3", "us-east-1").add_auth(request)
    ours = sigv4_headers("GET", "127.0.0.1:8333", "/bucket", {}, b"", "us-east-1", "AKIDEXAMPLE", "secret",
                         now=FIXED.replace(tzinfo=datetime.timezone.utc).timestamp(), query=query)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert "Content-Length" not in ours
    assert canonical_query(query).startswith("continuation-token=a%2Bb%2Fc%3D&list-type=2")
