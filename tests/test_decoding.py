"""Reading every row the platform wrote (issue 13, item 4): GZIP, zstd with skippable and
concatenated frames, NONE rows holding a zstd frame, and the rows that cannot be decoded —
an unknown compression, damaged or truncated data, bytes that merely start with the magic —
which fail alone, with one line naming their id, never a traceback.

On both catalogs (SQLite, Postgres) and, for stored bytes outside the row, LOCAL and
SeaweedFS. Reference encodings come from the ``zstandard`` library's own compressor and
Python's ``gzip``.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from apstorage.catalog import migrate as migrate_sql
from apstorage.cli import app
from apstorage.errors import UnreadableFileError
from apstorage.model import Compression, FileRow, Location, new_id
from apstorage.services.context import Storage
from apstorage.services.decoding import decoded, starts_with_zstd_frame
from apstorage.services.files import open_file
from apstorage.services.migrate import MigrateOptions, migrate_to_s3
from tests.integrity import assert_intact

ORIGINAL = b'{"steps": {"http": {"status": 200, "body": "ok"}}}\n' * 2000


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    """A zstd skippable frame: magic 0x184D2A5n little-endian, 4-byte length, payload."""
    return struct.pack("<II", 0x184D2A50 + nibble, len(payload)) + payload


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(params=["DB", "LOCAL", "S3"])
def where(request, catalog_env, tmp_path) -> tuple[dict[str, str], Location]:
    env = dict(catalog_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    if request.param == "S3":
        env.update(request.getfixturevalue("s3_env"))
    return env, Location(request.param)


def insert_raw(storage: Storage, location: Location, stored: bytes, compression: str, *,
               size: int | None | str = "stored", file_type: str = "FLOW_RUN_LOG") -> str:
    """A row as the platform writes it, with any compression value (raw SQL, so values
    apstorage would never write go in too) and its bytes where ``location`` says."""
    file_id = new_id()
    key = f"project/p1/{file_type}/{file_id}"
    recorded = len(stored) if size == "stored" else size
    if location is not Location.DB:
        storage.store(location).put(key, io.BytesIO(stored), len(stored))
    catalog = storage.catalog
    p = catalog.ph
    catalog._execute(
        f'INSERT INTO "file" ("id", "projectId", "location", "type", "size", "s3Key", '
        f'"compression", "data") VALUES ({", ".join([p] * 8)})',
        (file_id, "p1", location.value, file_type, recorded,
         None if location is Location.DB else key, compression,
         catalog._bytes_in(stored) if location is Location.DB else None),
    )
    return file_id


def read(storage: Storage, file_id: str) -> bytes:
    _, chunks = open_file(storage, file_id)
    return b"".join(chunks)


# -- what decodes ----------------------------------------------------------------------------


def test_platform_encodings_decode_in_every_location(where, storage_factory) -> None:
    env, location = where
    storage = storage_factory(env)
    two_members = gzip.compress(ORIGINAL[:1000]) + gzip.compress(ORIGINAL[1000:])
    streamed = zstandard.ZstdCompressor().compressobj()
    cases = {
        "gzip": (gzip.compress(ORIGINAL), "GZIP"),
        "gzip members + zero padding": (two_members + b"\x00" * 16, "GZIP"),
        "zstd": (zstd(ORIGINAL), "ZSTD"),
        "zstd, skippable frame first": (skippable(b"platform metadata") + zstd(ORIGINAL), "ZSTD"),
        "zstd, frames concatenated, skippable between and after": (
            zstd(ORIGINAL[:5000]) + skippable(b"x" * 9, 15) + zstd(ORIGINAL[5000:]) + skippable(b""),
            "ZSTD",
        ),
        "zstd streamed (no content size)": (streamed.compress(ORIGINAL) + streamed.flush(), "ZSTD"),
        "NONE holding a zstd frame": (zstd(ORIGINAL), "NONE"),
        "NONE starting with a skippable frame": (skippable(b"meta", 7) + zstd(ORIGINAL), "NONE"),
    }
    ids = {name: insert_raw(storage, location, stored, compression) for name, (stored, compression) in cases.items()}
    for name, file_id in ids.items():
        assert read(storage, file_id) == ORIGINAL, name
    # The row keeps recording what is stored: nothing is rewritten by reading.
    assert storage.catalog.get(ids["gzip"]).compression is Compression.GZIP
    assert_intact(storage, {file_id: ORIGINAL for file_id in ids.values()})


def test_plain_bytes_that_do_not_start_with_a_frame_are_returned_as_they_are(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    for data in (b"", b"\x28\xb5", b"\x28\xb5\x2f", b"\x50\x2a\x4d", b"plain text", gzip.compress(b"x")):
        file_id = insert_raw(storage, Location.DB, data, "NONE")
        assert read(storage, file_id) == data


def test_frame_magics() -> None:
    assert starts_with_zstd_frame(b"\x28\xb5\x2f\xfd")
    for nibble in range(16):
        assert starts_with_zstd_frame(struct.pack("<I", 0x184D2A50 + nibble))
    assert not starts_with_zstd_frame(struct.pack("<I", 0x184D2A60))
    assert not starts_with_zstd_frame(struct.pack("<I", 0x184D2A4F))
    assert not starts_with_zstd_frame(b"\x28\xb5\x2f")


# -- what fails, alone -----------------------------------------------------------------------


def undecodable_cases() -> dict[str, tuple[bytes, str]]:
    frame = zstd(ORIGINAL)
    damaged = bytearray(frame)
    for i in range(20, len(damaged) - 8, 7):
        damaged[i] ^= 0x5A
    return {
        "unknown compression": (b"whatever", "BROTLI"),
        "zstd truncated": (frame[: len(frame) // 2], "ZSTD"),
        "zstd truncated inside the header": (frame[:6], "ZSTD"),
        "zstd damaged": (bytes(damaged), "ZSTD"),
        "zstd with trailing garbage": (frame + b"trailing", "ZSTD"),
        "skippable frame cut short": (skippable(b"0123456789")[:9], "ZSTD"),
        "NONE merely starting with the magic": (b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 10, "NONE"),
        "NONE with a truncated frame": (frame[:-5], "NONE"),
        "gzip truncated": (gzip.compress(ORIGINAL)[:-12], "GZIP"),
        "gzip damaged": (b"\x1f\x8b\x08\x00" + b"\xff" * 40, "GZIP"),
        "not gzip at all": (b"plain", "GZIP"),
    }


def test_each_undecodable_row_fails_alone_naming_its_id(where, storage_factory) -> None:
    env, location = where
    storage = storage_factory(env)
    good = insert_raw(storage, location, zstd(ORIGINAL), "ZSTD")
    for name, (stored, compression) in undecodable_cases().items():
        file_id = insert_raw(storage, location, stored, compression)
        row = storage.catalog.get(file_id)  # the row itself always loads
        assert row.compression.value == compression
        with pytest.raises(UnreadableFileError) as info:
            read(storage, file_id)
        assert file_id in str(info.value) and info.value.exit_code == 1, name
        assert "\n" not in str(info.value), name
    assert read(storage, good) == ORIGINAL


def test_get_exits_1_with_one_line_and_leaves_no_file(catalog_env, set_env, storage_factory, runner, tmp_path) -> None:
    set_env(**catalog_env)
    storage = storage_factory(catalog_env)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (stored, compression) in undecodable_cases().items():
        file_id = insert_raw(storage, Location.DB, stored, compression)
        target = out_dir / "file.bin"
        result = runner.invoke(app, ["get", file_id, "-o", str(target)], catch_exceptions=False)
        assert result.exit_code == 1, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and file_id in lines[0] and lines[0].startswith("error:"), (name, lines)
        assert "Traceback" not in result.output
        assert list(out_dir.iterdir()) == [], name  # neither the file nor its temp file
        to_stdout = runner.invoke(app, ["get", file_id], catch_exceptions=False)
        assert to_stdout.exit_code == 1 and file_id in to_stdout.stderr, name


def test_unknown_compression_is_refused_before_reading(catalog_env, storage_factory, runner, set_env) -> None:
    set_env(**catalog_env)
    storage = storage_factory(catalog_env)
    file_id = insert_raw(storage, Location.DB, b"x" * 100, "LZ4")
    result = runner.invoke(app, ["get", file_id], catch_exceptions=False)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert "'LZ4'" in result.stderr and file_id in result.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"\x28\xb5\x2f\xfd" + b),
        st.binary(max_size=200).map(lambda b: struct.pack("<I", 0x184D2A53) + b),
        st.tuples(st.binary(min_size=1, max_size=400), st.integers(0, 400), st.integers(0, 255)).map(
            lambda t: _mangle(zstd(t[0]), t[1], t[2])
        ),
        st.tuples(st.binary(min_size=1, max_size=400), st.integers(0, 400), st.integers(0, 255)).map(
            lambda t: _mangle(gzip.compress(t[0]), t[1], t[2])
        ),
    ),
    compression=st.sampled_from(["NONE", "ZSTD", "GZIP", "SNAPPY", ""]),
    chunk=st.integers(1, 64),
)
def test_decoding_never_raises_anything_but_the_documented_error(data, compression, chunk) -> None:
    """Whatever the bytes and however they are chunked: the original, or one
    UnreadableFileError naming the row — never another exception."""
    row = FileRow(id="F" * 21, type="FLOW_RUN_LOG", location=Location.DB, compression=Compression(compression))
    chunks = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    try:
        out = b"".join(decoded(row, chunks))
    except UnreadableFileError as exc:
        assert "F" * 21 in str(exc)
        return
    if compression == "NONE" and not starts_with_zstd_frame(data):
        assert out == data


def _mangle(encoded: bytes, position: int, xor: int) -> bytes:
    """Flip one byte (or none, when xor is 0), sometimes cutting the tail."""
    data = bytearray(encoded)
    if data:
        data[position % len(data)] ^= xor
    return bytes(data[: len(data) - position % 3])


# -- loading such rows never stops a run ---------------------------------------------------


def test_migrate_loads_and_moves_gzip_and_unknown_compression_rows_as_stored(catalog_env, s3_env, storage_factory) -> None:
    """migrate-to-s3 copies stored bytes as they are and keeps the compression column; its
    catalog queries load every compression value."""
    storage = storage_factory({**catalog_env, **s3_env})
    gz = gzip.compress(ORIGINAL)
    ids = {
        "GZIP": insert_raw(storage, Location.DB, gz, "GZIP"),
        "BROTLI": insert_raw(storage, Location.DB, b"opaque future format", "BROTLI"),
        "ZSTD": insert_raw(storage, Location.DB, zstd(ORIGINAL), "ZSTD"),
    }
    claimed = migrate_sql.claim_batch(None, storage.catalog, [Location.DB], ["FLOW_RUN_LOG"], "", 10, lock=False)
    assert {c.row.id for c in claimed} == set(ids.values())
    report = migrate_to_s3(storage, MigrateOptions(sources=(Location.DB,), workers=4))
    assert report.failed == 0 and report.migrated == 3, report.to_json()
    for compression, file_id in ids.items():
        row = storage.catalog.get(file_id)
        assert row.location is Location.S3 and row.compression.value == compression
    s3 = storage.store(Location.S3)
    assert s3.get(storage.catalog.get(ids["GZIP"]).key) == gz
    assert read(storage, ids["GZIP"]) == ORIGINAL and read(storage, ids["ZSTD"]) == ORIGINAL
    with pytest.raises(UnreadableFileError):
        read(storage, ids["BROTLI"])


def test_json_row_output_shows_the_stored_compression(catalog_env, set_env, storage_factory, runner, tmp_path) -> None:
    set_env(**catalog_env)
    storage = storage_factory(catalog_env)
    file_id = insert_raw(storage, Location.DB, gzip.compress(b"hello"), "GZIP")
    target = tmp_path / "hello.txt"
    result = runner.invoke(app, ["get", file_id, "-o", str(target), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compression"] == "GZIP"
    assert Path(target).read_bytes() == b"hello"
