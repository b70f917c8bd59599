"""put/get through the services, on both catalogs and all three locations."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import zstandard

from apstorage.errors import NotFoundError, TooLargeError, UnreadableFileError, UsageError
from apstorage.model import Compression, FileRow, Location, new_id
from apstorage.services.files import PutRequest, open_file, put_file
from tests.conftest import settings_from
from apstorage.services.context import Storage


def _env_for(request, catalog_env, tmp_path) -> dict[str, str]:
    env = dict(catalog_env, AP_FILE_STORAGE_LOCATION=request.param, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    if request.param == "S3":
        env.update(request.getfixturevalue("s3_env"))
    return env


@pytest.fixture(params=["DB", "LOCAL", "S3"])
def location_env(request, catalog_env, tmp_path) -> dict[str, str]:
    return _env_for(request, catalog_env, tmp_path)


@pytest.fixture(params=["LOCAL", "S3"])
def object_location_env(request, catalog_env, tmp_path) -> dict[str, str]:
    """Locations where bytes and row are written separately (DB writes both at once)."""
    return _env_for(request, catalog_env, tmp_path)


def read_back(storage: Storage, file_id: str) -> bytes:
    _, chunks = open_file(storage, file_id)
    return b"".join(chunks)


def write_input(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    return str(path)


def test_round_trip_is_byte_identical_in_every_location(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    data = os.urandom(300_000)
    row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_RUN_LOG", project_id="proj1"))
    assert row.location.value == location_env["AP_FILE_STORAGE_LOCATION"]
    assert read_back(storage, row.id) == data
    stored = storage.catalog.get(row.id)
    assert stored.size == len(data) and stored.file_name == "input.bin"
    if row.location is not Location.DB:
        assert stored.s3_key == f"project/proj1/FLOW_RUN_LOG/{row.id}"
        assert storage.catalog.read_data(row.id) is None
        assert storage.store(row.location).stat(stored.s3_key).size == len(data)


def test_permanent_types_always_go_to_the_database(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest(write_input(tmp_path, b"asset"), "PLATFORM_ASSET", platform_id="plat1"))
    assert row.location is Location.DB
    assert storage.catalog.read_data(row.id) == b"asset"


def test_compressed_put_stores_zstd_and_reads_back_the_original(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    data = b"log line\n" * 50_000
    row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_RUN_LOG", project_id="p", compress=True))
    stored = storage.catalog.get(row.id)
    assert stored.compression is Compression.ZSTD
    assert stored.size < len(data) // 10
    assert read_back(storage, row.id) == data


def test_stdin_is_read_when_the_path_is_dash(location_env, storage_factory) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest("-", "WEBHOOK_PAYLOAD", project_id="p"), stdin=io.BytesIO(b"{}"))
    assert row.file_name is None
    assert read_back(storage, row.id) == b"{}"


def test_oversize_input_is_refused_before_anything_is_written(location_env, storage_factory, tmp_path) -> None:
    env = dict(location_env, AP_MAX_FILE_SIZE_MB="1")
    storage = storage_factory(env)
    big = write_input(tmp_path, b"x" * (1024 * 1024 + 1))
    for request, stdin in (
        (PutRequest(big, "FLOW_RUN_LOG", project_id="p"), None),
        (PutRequest("-", "FLOW_RUN_LOG", project_id="p"), io.BytesIO(b"x" * (1024 * 1024 + 1))),
    ):
        with pytest.raises(TooLargeError) as info:
            put_file(storage, request, stdin=stdin)
        assert info.value.exit_code == 7 and "AP_MAX_FILE_SIZE_MB" in str(info.value)
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    if env["AP_FILE_STORAGE_LOCATION"] != "DB":
        assert list(storage.store(Location(env["AP_FILE_STORAGE_LOCATION"])).list("")) == []


def test_dry_run_writes_nothing(location_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(location_env)
    row = put_file(storage, PutRequest(write_input(tmp_path, b"abc"), "FLOW_RUN_LOG", project_id="p"), dry_run=True)
    assert row.size == 3
    with pytest.raises(NotFoundError):
        storage.catalog.get(row.id)


def test_a_failed_row_insert_removes_the_object(object_location_env, storage_factory, tmp_path, monkeypatch) -> None:
    storage = storage_factory(object_location_env)
    store = storage.store(Location(object_location_env["AP_FILE_STORAGE_LOCATION"]))

    def fail(*args, **kwargs):
        raise RuntimeError("the database went away mid-insert")

    monkeypatch.setattr(storage.catalog, "insert", fail)
    with pytest.raises(RuntimeError):
        put_file(storage, PutRequest(write_input(tmp_path, b"orphan?"), "FLOW_RUN_LOG", project_id="p"))
    assert list(store.list("project/p/")) == []


def test_switching_location_leaves_every_earlier_file_readable(catalog_env, s3_env, storage_factory, tmp_path) -> None:
    written: dict[str, bytes] = {}
    for location in ("DB", "LOCAL", "S3", "DB", "LOCAL"):
        env = dict(catalog_env, **s3_env, AP_FILE_STORAGE_LOCATION=location, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
        storage = storage_factory(env)
        data = f"written while location={location} {new_id()}".encode()
        row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_STEP_FILE", project_id="p"))
        assert row.location.value == location
        written[row.id] = data
        for file_id, expected in written.items():
            assert read_back(storage, file_id) == expected
        storage.close()


def test_platform_written_zstd_rows_are_read_back(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    original = b'{"steps": {"a": 1}}' * 1000
    frame = zstandard.ZstdCompressor().compress(original)
    zstd_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", compression=Compression.ZSTD, size=len(frame))
    storage.catalog.insert(zstd_row, frame)
    # The platform also leaves rows marked NONE whose bytes are a zstd frame.
    magic_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", size=len(frame))
    storage.catalog.insert(magic_row, frame)
    # And a streamed frame with no content size in its header.
    streamed = zstandard.ZstdCompressor().compressobj()
    frame2 = streamed.compress(original) + streamed.flush()
    stream_row = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.DB, project_id="p", compression=Compression.ZSTD)
    storage.catalog.insert(stream_row, frame2)
    for row in (zstd_row, magic_row, stream_row):
        assert read_back(storage, row.id) == original


def test_plain_rows_are_not_touched(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    row = FileRow(id=new_id(), type="UNKNOWN", location=Location.DB, project_id="p")
    storage.catalog.insert(row, b"\x28\xb5")  # shorter than the magic
    assert read_back(storage, row.id) == b"\x28\xb5"


def test_unknown_id_is_not_found(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(NotFoundError) as info:
        open_file(storage, "doesnotexist000000000")
    assert info.value.exit_code == 4


def test_a_file_needs_an_owner(catalog_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(UsageError, match="--project"):
        put_file(storage, PutRequest(write_input(tmp_path, b"x"), "FLOW_RUN_LOG"))


def test_missing_input_path_is_not_found(catalog_env, storage_factory, tmp_path) -> None:
    storage = storage_factory(catalog_env)
    with pytest.raises(NotFoundError, match="does not exist"):
        put_file(storage, PutRequest(str(tmp_path / "nope"), "FLOW_RUN_LOG", project_id="p"))


# -- get checks what it read (issue 13, item 5) ---------------------------------------------


def _tamper(storage: Storage, row: FileRow, how: str, request) -> None:
    """Change the stored bytes (or the recorded size) behind the catalog's back."""
    if how == "S3 overwritten shorter":
        seaweed = request.getfixturevalue("seaweed")
        seaweed.client().put_object(Bucket=storage.settings.s3_bucket, Key=row.key, Body=b"short")
    elif how == "S3 overwritten longer":
        seaweed = request.getfixturevalue("seaweed")
        seaweed.client().put_object(Bucket=storage.settings.s3_bucket, Key=row.key, Body=b"x" * (row.size + 100))
    elif how == "LOCAL truncated":
        os.truncate(storage.store(Location.LOCAL).path_for(row.key), row.size // 3)
    elif how == "DB size column disagrees":
        p = storage.catalog.ph
        storage.catalog._execute(f'UPDATE "file" SET "size" = {p} WHERE "id" = {p}', (row.size + 7, row.id))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["S3 overwritten shorter", "S3 overwritten longer", "LOCAL truncated", "DB size column disagrees"]
)
@pytest.mark.parametrize("compress", [False, True])
def test_get_refuses_bytes_whose_size_differs_from_the_row(how, compress, catalog_env, s3_env, set_env, storage_factory, tmp_path, request) -> None:
    from typer.testing import CliRunner

    from apstorage.cli import app

    location = how.split()[0]
    env = dict(catalog_env, **s3_env, AP_FILE_STORAGE_LOCATION=location, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))
    set_env(**env)
    storage = storage_factory(env)
    data = os.urandom(200_000) + b"tail" * 50_000
    row = put_file(storage, PutRequest(write_input(tmp_path, data), "FLOW_STEP_FILE", project_id="p", compress=compress))
    kept = put_file(storage, PutRequest(write_input(tmp_path, b"untouched"), "FLOW_STEP_FILE", project_id="p"))
    recorded = row.size
    _tamper(storage, row, how, request)
    recorded = storage.catalog.get(row.id).size

    with pytest.raises(UnreadableFileError) as info:
        read_back(storage, row.id)
    assert row.id in str(info.value) and str(recorded) in str(info.value)

    runner = CliRunner()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner.invoke(app, ["get", row.id, "-o", str(out_dir / "file.bin")], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and row.id in lines[0] and f"size {recorded}" in lines[0], lines
    assert list(out_dir.iterdir()) == []  # no file, no temp file
    to_stdout = runner.invoke(app, ["get", row.id], catch_exceptions=False)
    assert to_stdout.exit_code == 1 and row.id in to_stdout.stderr
    # One bad row never spoils another.
    assert read_back(storage, kept.id) == b"untouched"


# -- sizes the catalog cannot hold are refused before any byte moves (issue 13, item 6) -----

MIB = 1024 * 1024


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends (/proc/self/io): a count,
    not a clock, showing a big input was never read."""
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def _nothing_written(storage: Storage, env: dict[str, str], tmp_dir: Path) -> None:
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    local_root = Path(env["AP_LOCAL_STORAGE_PATH"])
    assert not local_root.exists() or [p for p in local_root.rglob("*") if p.is_file()] == []
    if env.get("AP_S3_BUCKET"):
        assert list(storage.store(Location.S3).list("")) == []
    assert list(tmp_dir.iterdir()) == []  # no temporary file left behind


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary directory put_file spools into, empty at the start."""
    path = tmp_path / "tmpdir"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def test_a_character_device_stops_at_the_limit(location_env, storage_factory, private_tmp) -> None:
    """/dev/zero never ends: reading stops at AP_MAX_FILE_SIZE_MB + 1 byte, exit 7."""
    env = dict(location_env, AP_MAX_FILE_SIZE_MB="1")
    storage = storage_factory(env)
    before = _rchar()
    with pytest.raises(TooLargeError) as info:
        put_file(storage, PutRequest("/dev/zero", "FLOW_RUN_LOG", project_id="p"))
    assert _rchar() - before < 8 * MIB
    assert info.value.exit_code == 7 and "AP_MAX_FILE_SIZE_MB=1" in str(info.value)
    assert f"more than {MIB} bytes" in str(info.value)
    _nothing_written(storage, env, private_tmp)


def _fifo_writer(path: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        with contextlib.suppress(BrokenPipeError):
            with open(path, "wb") as fh:
                for start in range(0, len(data), 65536):
                    fh.write(data[start : start + 65536])

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_streamed_within_the_limit(object_location_env, storage_factory, private_tmp, tmp_path) -> None:
    env = dict(object_location_env, AP_MAX_FILE_SIZE_MB="1")
    storage = storage_factory(env)
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    writer = _fifo_writer(fifo, b"z" * (3 * MIB))
    with pytest.raises(TooLargeError):
        put_file(storage, PutRequest(str(fifo), "FLOW_RUN_LOG", project_id="p"))
    writer.join(timeout=30)
    assert not writer.is_alive()
    _nothing_written(storage, env, private_tmp)

    small = os.urandom(300_000)
    writer = _fifo_writer(fifo, small)
    row = put_file(storage, PutRequest(str(fifo), "FLOW_RUN_LOG", project_id="p"))
    writer.join(timeout=30)
    assert row.size == len(small) and read_back(storage, row.id) == small


def test_process_substitution_through_the_cli(make_env, tmp_path) -> None:
    """`apstorage put <(...)`: a /dev/fd path to a pipe, in a real shell."""
    tmp_dir = tmp_path / "tmpdir"
    tmp_dir.mkdir()
    files = tmp_path / "files"
    env = dict(os.environ, **make_env(AP_FILE_STORAGE_LOCATION="LOCAL", AP_LOCAL_STORAGE_PATH=str(files),
                                      AP_MAX_FILE_SIZE_MB="1"), TMPDIR=str(tmp_dir))
    py = shlex.quote(sys.executable)
    big = subprocess.run(
        ["bash", "-c", f"{py} -m apstorage put <(head -c 3000000 /dev/zero) -t FLOW_STEP_FILE --project p"],
        env=env, capture_output=True, timeout=120,
    )
    assert big.returncode == 7, big.stderr
    assert b"AP_MAX_FILE_SIZE_MB" in big.stderr and len(big.stderr.strip().splitlines()) == 1
    assert not files.exists() or [p for p in files.rglob("*") if p.is_file()] == []
    assert list(tmp_dir.iterdir()) == []
    small = subprocess.run(
        ["bash", "-c", f"{py} -m apstorage put <(printf 'from a pipe') -t FLOW_STEP_FILE --project p"],
        env=env, capture_output=True, timeout=120,
    )
    assert small.returncode == 0, small.stderr
    got = subprocess.run([sys.executable, "-m", "apstorage", "get", small.stdout.decode().strip()],
                         env=env, capture_output=True, timeout=120)
    assert got.returncode == 0 and got.stdout == b"from a pipe"


def test_over_the_size_column_is_refused_before_reading(object_location_env, storage_factory, private_tmp, tmp_path) -> None:
    """A sparse file of 2 GiB + 1 byte (no real disk): the platform's size column is an
    int32, so it is refused by its size on disk, whatever AP_MAX_FILE_SIZE_MB allows."""
    env = dict(object_location_env, AP_MAX_FILE_SIZE_MB="8192")
    storage = storage_factory(env)
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(2**31 + 1)
    before = _rchar()
    with pytest.raises(TooLargeError) as info:
        put_file(storage, PutRequest(str(sparse), "FLOW_RUN_LOG", project_id="p"))
    assert _rchar() - before < 8 * MIB  # refused by its size, not read
    assert info.value.exit_code == 7 and "2147483647" in str(info.value) and "32-bit" in str(info.value)
    _nothing_written(storage, env, private_tmp)


@pytest.mark.parametrize(("location", "file_type"), [("DB", "FLOW_RUN_LOG"), ("S3", "SAMPLE_DATA")])
def test_a_database_file_over_what_one_value_holds_is_refused_naming_the_location(
    location, file_type, catalog_env, s3_env, storage_factory, private_tmp, tmp_path
) -> None:
    """1 GiB + 1 byte can never go into a bytea (nor a default SQLite BLOB): refused up
    front, naming AP_FILE_STORAGE_LOCATION, without reading the file. A permanent type
    goes to the database whatever the location, so it is refused the same way."""
    env = dict(catalog_env, **s3_env, AP_FILE_STORAGE_LOCATION=location,
               AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"), AP_MAX_FILE_SIZE_MB="2000")
    storage = storage_factory(env)
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(1024**3 + 1)
    before = _rchar()
    with pytest.raises(TooLargeError) as info:
        put_file(storage, PutRequest(str(sparse), file_type, project_id="p"))
    assert _rchar() - before < 8 * MIB
    assert "AP_FILE_STORAGE_LOCATION" in str(info.value) and "database" in str(info.value)
    _nothing_written(storage, env, private_tmp)


def test_the_limits_through_the_cli_exit_7_with_one_line(set_env, tmp_path) -> None:
    from typer.testing import CliRunner

    from apstorage.cli import app

    set_env(AP_MAX_FILE_SIZE_MB="4096")
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(2**31)
    result = CliRunner().invoke(app, ["put", str(sparse), "-t", "FLOW_RUN_LOG", "--project", "p"],
                                catch_exceptions=False)
    assert result.exit_code == 7
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "AP_FILE_STORAGE_LOCATION=DB" in lines[0], lines
    set_env(AP_MAX_FILE_SIZE_MB="1")
    zero = CliRunner().invoke(app, ["put", "/dev/zero", "-t", "SAMPLE_DATA", "--platform", "p"], catch_exceptions=False)
    assert zero.exit_code == 7 and "AP_MAX_FILE_SIZE_MB=1" in zero.stderr
    assert len(zero.stderr.strip().splitlines()) == 1


def test_a_file_that_says_it_is_empty_is_read_for_what_it_holds(object_location_env, storage_factory) -> None:
    """/proc files have size 0 on disk and still have content: streamed like a pipe, so the
    row records the size of what was stored."""
    storage = storage_factory(object_location_env)
    row = put_file(storage, PutRequest("/proc/version", "FLOW_RUN_LOG", project_id="p"))
    expected = Path("/proc/version").read_bytes()
    assert row.size == len(expected) > 0
    assert read_back(storage, row.id) == expected


def test_presign_upload_refuses_a_size_the_catalog_cannot_record(catalog_env, s3_env, storage_factory) -> None:
    from apstorage.services.presign import UploadFile, UploadRequest, presign_uploads

    storage = storage_factory({**catalog_env, **s3_env, "AP_MAX_FILE_SIZE_MB": "8192"})
    request = UploadRequest(file_type="FLOW_RUN_LOG", project_id="p")
    with pytest.raises(TooLargeError) as info:
        presign_uploads(storage, request, [UploadFile("ok", 10), UploadFile("huge", 2**31)])
    assert info.value.exit_code == 7 and "32-bit" in str(info.value) and "'huge'" in str(info.value)
    assert storage.catalog._execute('SELECT count(*) FROM "file"')[0][0] == 0
    assert len(presign_uploads(storage, request, [UploadFile("edge", 2**31 - 1)]).items) == 1
