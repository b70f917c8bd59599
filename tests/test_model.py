"""Ids, types and the one key-building function."""

from __future__ import annotations

import re

import pytest

from apstorage.errors import UsageError
from apstorage.model import FileRow, Location, new_id, object_key, parse_type, safe_relative_key


def test_ids_are_21_characters_of_the_platform_alphabet() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9A-Za-z]{21}", i) for i in ids)


def test_keys_use_the_platform_when_there_is_one_else_the_project() -> None:
    assert object_key("F1", "FLOW_RUN_LOG", "P1", "PL1") == "platform/PL1/FLOW_RUN_LOG/F1"
    assert object_key("F1", "FLOW_RUN_LOG", "P1", None) == "project/P1/FLOW_RUN_LOG/F1"


def test_an_existing_s3_key_is_reused() -> None:
    row = FileRow(id="F1", type="FLOW_RUN_LOG", location=Location.S3, project_id="P1", s3_key="legacy/x/F1")
    assert row.key == "legacy/x/F1"
    assert FileRow(id="F1", type="FLOW_RUN_LOG", location=Location.S3, project_id="P1").key == "project/P1/FLOW_RUN_LOG/F1"


@pytest.mark.parametrize("owner", ["..", "../x", "a/b", "", "a b"])
def test_owner_ids_cannot_shape_the_key(owner: str) -> None:
    with pytest.raises(UsageError):
        object_key("F1", "FLOW_RUN_LOG", owner or None, None)


@pytest.mark.parametrize("key", ["../a", "/a", "a/../b", "a/./b", "a//b", "a\\b", ""])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(UsageError):
        safe_relative_key(key)


def test_types_accept_any_case_and_legacy_names() -> None:
    assert parse_type("flow_run_log") == "FLOW_RUN_LOG"
    assert parse_type("STEP_FILE") == "FLOW_STEP_FILE"
    assert parse_type("FILE") == "UNKNOWN"
    with pytest.raises(UsageError, match="accepted"):
        parse_type("NOPE")


def test_every_compression_value_loads_and_only_known_ones_decode() -> None:
    from apstorage.model import Compression

    assert Compression("GZIP") is Compression.GZIP and Compression.GZIP.known
    odd = Compression("BROTLI")
    assert odd.value == "BROTLI" and not odd.known and odd is not Compression.NONE
    assert Compression(None) is Compression.NONE
    assert [c.value for c in Compression] == ["NONE", "ZSTD", "GZIP"]  # what can be written or read
    with pytest.raises(ValueError):
        Compression(3)


def test_the_type_vocabulary() -> None:
    from apstorage.model import (
        ALL_TYPES, EXPIRING_TYPES, FLOW_BUNDLE, LOCATION_TYPES, PERMANENT_TYPES, expires,
        follows_storage_location,
    )

    assert FLOW_BUNDLE in LOCATION_TYPES and FLOW_BUNDLE not in EXPIRING_TYPES
    assert len(EXPIRING_TYPES) == 6 and EXPIRING_TYPES < LOCATION_TYPES
    assert not LOCATION_TYPES & PERMANENT_TYPES and ALL_TYPES == LOCATION_TYPES | PERMANENT_TYPES
    assert follows_storage_location("FLOW_BUNDLE") and not expires("FLOW_BUNDLE")
    assert expires("FLOW_STEP_FILE") and not follows_storage_location("SAMPLE_DATA")


@pytest.mark.parametrize(("value", "new", "limit"), [("a" * 65, False, 64), ("a" * 300, False, 64), ("Ab9_-" * 13, False, 64),
                                                    ("a" * 22, True, 21)])
def test_an_id_of_id_characters_too_long_is_refused_for_its_length(value: str, new: bool, limit: int) -> None:
    from apstorage.model import check_owner_id

    with pytest.raises(UsageError) as info:
        check_owner_id(value, "--platform", new=new)
    assert info.value.message == (
        f"--platform: {value[:80]!r} is too long for an id ({len(value):,} characters; at most {limit})")
    assert "accepted" not in info.value.message


@pytest.mark.parametrize("value", ["a b", "a" * 65 + "!", "é" * 70, "a\n"])
def test_an_id_with_a_character_no_id_has_is_refused_for_its_characters(value: str) -> None:
    from apstorage.model import check_owner_id

    with pytest.raises(UsageError) as info:
        check_owner_id(value, "--platform")
    assert "is not a valid id; accepted: letters, digits, '_' and '-' only, at most 64" in info.value.message
    assert "too long" not in info.value.message


def test_du_names_the_length_of_a_too_long_platform_id(make_env, set_env, capsys) -> None:
    from apstorage.cli import app  # noqa: F401 - every command registered
    from apstorage.cli.app import run

    set_env()
    assert run(["du", "--platform", "a" * 65]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --platform: {'a' * 65!r} is too long for an id (65 characters; at most 64)\n", err
