"""`du` and `du --verify` on SQLite and real Postgres, with a real S3 (SeaweedFS) and LOCAL
folder: totals against a ground truth computed here independently, the --json and --csv
shapes, and every planted inconsistency found (and nothing on a clean store)."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from itertools import combinations
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apstorage.catalog import du as du_sql
from apstorage.cli import app
from apstorage.model import NEW_ID_RE, Compression, FileRow, Location, new_id
from apstorage.services.du import DuRequest, disk_usage, verify
from apstorage.services.files import PutRequest, put_file
from tests.conftest import settings_from

runner = CliRunner()

NOW = datetime.now(timezone.utc)
TYPES = ["FLOW_RUN_LOG", "FLOW_STEP_FILE", "STEP_FILE", "TRIGGER_PAYLOAD", "SAMPLE_DATA", "PLATFORM_ASSET"]
BY_COLUMN = {"location": "location", "type": "type", "project": "project_id", "platform": "platform_id"}


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- a catalog with known contents -----------------------------------------------------------


def seed_rows(storage, n: int = 300, seed: int = 7) -> list[FileRow]:
    """Rows of every kind, inserted straight into the catalog (no bytes needed for du)."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        project = rnd.choice(["projA", "projB", "projC", None])
        platform = rnd.choice(["plat1", None]) if project else "plat2"
        rows.append(
            FileRow(
                id=new_id(),
                type=rnd.choice(TYPES),
                location=rnd.choice(list(Location)),
                created=NOW - timedelta(days=rnd.randint(0, 90), minutes=rnd.randint(1, 600)),
                project_id=project,
                platform_id=platform,
                size=None if i % 17 == 0 else rnd.randint(0, 10_000_000),
            )
        )
    for row in rows:
        storage.catalog.insert(row)
    return rows


def ground_truth(rows, by, *, types=None, project=None, older_than_days=None):
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if types is not None and r.type not in types:
            continue
        if project is not None and r.project_id != project:
            continue
        if older_than_days is not None and r.created >= NOW - timedelta(days=older_than_days):
            continue
        key = tuple(
            r.location.value if name == "location" else getattr(r, BY_COLUMN[name]) for name in by
        )
        groups[key][0] += 1
        groups[key][1] += r.size or 0
    return {k: tuple(v) for k, v in groups.items()}


def as_groups(data: dict, by) -> dict[tuple, tuple[int, int]]:
    return {tuple(g[name] for name in by): (g["files"], g["bytes"]) for g in data["groups"]}


def test_totals_per_group_equal_the_ground_truth_for_every_grouping(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    rows = seed_rows(storage)
    names = ["location", "type", "project", "platform"]
    for size in range(0, 5):
        for by in combinations(names, size):
            report = disk_usage(storage, DuRequest(by=by))
            data = report.to_json()
            truth = ground_truth(rows, by)
            if by:
                assert as_groups(data, by) == truth, by
            assert data["total"] == {
                "files": len(rows),
                "bytes": sum(r.size or 0 for r in rows),
                "unsized": sum(r.size is None for r in rows),
            }
    # Largest groups first.
    sizes = [g["bytes"] for g in disk_usage(storage, DuRequest(by=("project",))).to_json()["groups"]]
    assert sizes == sorted(sizes, reverse=True)


def test_filters_by_type_project_and_age_with_legacy_type_names(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    rows = seed_rows(storage, seed=11)
    by = ("location", "type")
    # FLOW_STEP_FILE also counts the rows stored under its older name STEP_FILE.
    request = DuRequest.from_flags(None, ["flow_step_file,TRIGGER_PAYLOAD"], None, None, None)
    got = as_groups(disk_usage(storage, request).to_json(), by)
    assert got == ground_truth(rows, by, types={"FLOW_STEP_FILE", "STEP_FILE", "TRIGGER_PAYLOAD"})
    assert any(k[1] == "STEP_FILE" for k in got)

    request = DuRequest.from_flags(["project,type"], None, ["projB"], None, "30d")
    got = as_groups(disk_usage(storage, request, now=NOW).to_json(), ("project", "type"))
    assert got == ground_truth(rows, ("project", "type"), project="projB", older_than_days=30)
    assert got  # the filter kept something to compare


def test_cli_json_and_csv_parse_and_agree(catalog_env, storage_factory, set_env) -> None:
    storage = storage_factory(catalog_env)
    rows = seed_rows(storage, n=120, seed=3)
    storage.close()
    set_env(**{k: v for k, v in catalog_env.items() if k != "AP_CONFIG_PATH"})
    code, out, _ = run("du", "--json", "--by", "type", "--by", "project")
    assert code == 0
    data = json.loads(out)
    truth = ground_truth(rows, ("type", "project"))
    assert as_groups(data, ("type", "project")) == truth
    assert data["total"]["files"] == len(rows)

    code, out, _ = run("du", "--csv", "--by", "type,project")
    assert code == 0
    records = list(csv.DictReader(io.StringIO(out)))
    assert list(records[0]) == ["type", "project", "files", "bytes"]
    from_csv = {(r["type"], r["project"] or None): (int(r["files"]), int(r["bytes"])) for r in records}
    assert from_csv == truth

    code, out, _ = run("du")  # the human table: groups and a total row
    assert code == 0
    assert "total" in out and "FLOW_RUN_LOG" in out and f"{len(rows):,}" in out


def test_an_empty_catalog_has_a_zero_total(catalog_env, set_env) -> None:
    set_env(**{k: v for k, v in catalog_env.items() if k != "AP_CONFIG_PATH"})
    code, out, _ = run("du", "--json", "--by", "")
    assert code == 0
    assert json.loads(out)["total"] == {"files": 0, "bytes": 0, "unsized": 0}
    code, out, _ = run("du", "--csv")
    assert code == 0 and out == "location,type,files,bytes\n"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--by", "bucket"], "--by"),
        (["--type", "NOPE"], "--type"),
        (["--older-than", "soon"], "--older-than"),
        (["--project", "../x"], "--project"),
        (["--json", "--csv"], "--csv"),
        (["--verify", "--type", "FLOW_RUN_LOG"], "--verify"),
        (["--verify", "--csv"], "--csv"),
    ],
)
def test_bad_flags_exit_2_and_name_the_flag(args, needle, set_env) -> None:
    set_env()
    code, _, err = run("du", *args)
    assert code == 2
    assert needle in err


def test_key_sql_computes_what_filerow_key_computes(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    rows = [
        FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p1"),
        FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p1", platform_id="pl"),
        FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, platform_id="pl"),
        FileRow(id=new_id(), type="TRIGGER_PAYLOAD", location=Location.S3, project_id="p", s3_key="custom/k"),
        FileRow(id=new_id(), type="TRIGGER_PAYLOAD", location=Location.S3, project_id="p", s3_key=""),
    ]
    for row in rows:
        storage.catalog.insert(row)
    got = {r.id: r.key for r in du_sql.iter_rows_by_key(storage.catalog, "S3")}
    assert got == {r.id: r.key for r in rows}
    assert [r.key for r in du_sql.iter_rows_by_key(storage.catalog, "S3")] == sorted(got.values())
    assert du_sql.count_rows(storage.catalog) == {"S3": (5, 1), "LOCAL": (0, 0)}


# -- verify -----------------------------------------------------------------------------------


@pytest.fixture
def verify_env(catalog_env, s3_env, tmp_path) -> dict[str, str]:
    return dict(catalog_env, **s3_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "files"))


def put_many(storage, tmp_path: Path, location: str, owners) -> list[FileRow]:
    """Files stored with `put`; an owner id `put` refuses for a new file ('-', '_') is
    planted as a catalog may already hold it: the bytes, then the row."""
    rows = []
    for i, (project, platform) in enumerate(owners):
        src = tmp_path / f"in-{location}-{i}"
        src.write_bytes(b"x" * (100 + i))
        file_type = "FLOW_RUN_LOG" if i % 2 else "TRIGGER_PAYLOAD"
        if all(o is None or NEW_ID_RE.fullmatch(o) for o in (project, platform)):
            rows.append(put_file(storage, PutRequest(str(src), file_type, project_id=project,
                                                     platform_id=platform, compress=i % 3 == 0)))
            continue
        data = src.read_bytes()
        if i % 3 == 0:
            import zstandard

            data = zstandard.ZstdCompressor(level=3).compress(data)
        row = FileRow(id=new_id(), type=file_type, location=Location(location), project_id=project,
                      platform_id=platform, size=len(data),
                      compression=Compression.ZSTD if i % 3 == 0 else Compression.NONE)
        row = FileRow(**{**row.__dict__, "s3_key": row.key})
        storage.store(row.location).put(row.key, io.BytesIO(data), len(data))
        rows.append(storage.catalog.insert(row))
    return rows


# Owner ids whose byte order differs from a locale's order and from a folder walk's order
# ("p-x" sorts before "p/" in bytes; "P" before "a"; "_" after letters).
OWNERS = [("p", None), ("p-x", None), ("P", None), ("p_x", None), ("a", None), ("proj", "plat"), (None, "Z9")]


@pytest.fixture
def populated(verify_env, storage_factory, tmp_path):
    """Files in S3 and in LOCAL (and one in DB), all consistent."""
    s3 = storage_factory(dict(verify_env, AP_FILE_STORAGE_LOCATION="S3"))
    local = storage_factory(dict(verify_env, AP_FILE_STORAGE_LOCATION="LOCAL"))
    s3_rows = put_many(s3, tmp_path, "S3", OWNERS * 2)
    local_rows = put_many(local, tmp_path, "LOCAL", OWNERS * 2)
    src = tmp_path / "db-file"
    src.write_bytes(b"in the database")
    put_file(s3, PutRequest(str(src), "SAMPLE_DATA", project_id="p"))
    return s3, s3_rows, local_rows


def test_verify_finds_nothing_on_a_clean_store(populated, verify_env, set_env) -> None:
    s3, s3_rows, local_rows = populated
    result = verify(s3)
    assert result.ok, result.to_json()
    checked = {c.location: c for c in result.locations}
    # Owner "p-x" makes byte order and folder order differ: whichever the store lists in
    # (SeaweedFS and the LOCAL walk go folder by folder), the merge follows it.
    assert checked["S3"].method in ("merge in bytes order", "merge in segments order")
    assert checked["LOCAL"].method == "merge in segments order"
    assert checked["S3"].objects == checked["S3"].rows == len(s3_rows)
    assert checked["LOCAL"].objects == checked["LOCAL"].rows == len(local_rows)
    assert checked["S3"].bytes == sum(r.size for r in s3_rows)

    set_env(**{k: v for k, v in verify_env.items() if k != "AP_CONFIG_PATH"})
    code, out, _ = run("du", "--verify", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["verify"]["ok"] is True
    assert data["total"]["files"] == len(s3_rows) + len(local_rows) + 1


def test_verify_finds_each_planted_problem(populated, verify_env, set_env) -> None:
    s3, s3_rows, local_rows = populated
    s3_store, local_store = s3.store(Location.S3), s3.store(Location.LOCAL)
    # 1. a deleted object (of a row older than any pre-signed URL lives), and a deleted LOCAL file
    gone_s3, gone_local = s3_rows[3], local_rows[4]
    s3_store.delete(gone_s3.key)
    local_store.delete(gone_local.key)
    with s3.catalog.transaction() as cur:
        cur.execute(f'UPDATE "file" SET "created" = {s3.catalog.ph} WHERE "id" = {s3.catalog.ph}',
                    (s3.catalog._ts_in(datetime.now(timezone.utc) - timedelta(days=8)), gone_s3.id))
    # 1b. a young S3 row without its object: a pre-signed upload that may still come, not a loss
    pending = s3_rows[6]
    s3_store.delete(pending.key)
    # 2. an orphan object (a project deleted by cascade) and an orphan LOCAL file
    orphan_key = f"project/deletedProject/FLOW_RUN_LOG/{new_id()}"
    s3_store.put(orphan_key, io.BytesIO(b"left behind"), 11)
    orphan_file = f"platform/plat/TRIGGER_PAYLOAD/{new_id()}"
    local_store.put(orphan_file, io.BytesIO(b"orphan!"), 7)
    # 3. a wrong size: the object was replaced by something else
    wrong = s3_rows[5]
    s3_store.put(wrong.key, io.BytesIO(b"short"), 5)
    wrong_local = local_rows[1]
    local_store.put(wrong_local.key, io.BytesIO(b"y" * 3), 3)

    result = verify(s3)
    assert not result.ok
    assert {(i["location"], i["key"]) for i in result.missing.items} == {
        ("S3", gone_s3.key), ("LOCAL", gone_local.key)}
    assert result.missing.bytes == gone_s3.size + gone_local.size
    assert {(i["location"], i["key"]) for i in result.orphans.items} == {
        ("S3", orphan_key), ("LOCAL", orphan_file)}
    assert (result.orphans.files, result.orphans.bytes) == (2, 18)
    assert {(i["location"], i["id"], i["size"], i["objectSize"]) for i in result.size_mismatches.items} == {
        ("S3", wrong.id, wrong.size, 5), ("LOCAL", wrong_local.id, wrong_local.size, 3)}
    assert [i["id"] for i in result.pending_uploads.items] == [pending.id]

    set_env(**{k: v for k, v in verify_env.items() if k != "AP_CONFIG_PATH"})
    code, out, _ = run("du", "--verify", "--json")
    assert code == 1
    data = json.loads(out)["verify"]
    assert data["ok"] is False
    assert {i["key"] for i in data["missing"]["items"]} == {gone_s3.key, gone_local.key}
    assert {i["key"] for i in data["orphans"]["items"]} == {orphan_key, orphan_file}
    assert {i["key"] for i in data["sizeMismatches"]["items"]} == {wrong.key, wrong_local.key}
    assert all(data[k]["clean"] for k in ("missing", "orphans", "sizeMismatches"))

    code, out, err = run("du", "--verify")
    assert code == 1
    assert orphan_key in out and gone_s3.key in out and "inconsistent" in out
    assert "pending uploads" in out and pending.key in out and "merge in" not in out
    assert "apstorage gc --orphans" in out and "nothing was changed" in err
    # Verify deleted nothing.
    assert s3_store.stat(orphan_key) is not None and local_store.stat(orphan_file) is not None


def test_verify_tells_pending_uploads_from_lost_bytes_by_the_urls_expiry(verify_env, storage_factory) -> None:
    """A row `presign --upload` made is pending until its URL's expiry (the marker it
    records), then missing; a row without the marker (the platform's own uploads) is
    pending while younger than gc's default grace (24 h), then missing: what `gc --missing`
    takes, du calls missing."""
    from apstorage.model import PENDING_UPLOAD_KEY, iso_utc

    storage = storage_factory(verify_env)
    now = datetime.now(timezone.utc)

    def row(expires: datetime | None, age: timedelta) -> FileRow:
        metadata = {PENDING_UPLOAD_KEY: iso_utc(expires)} if expires else None
        return storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p",
                                              size=3, created=now - age, metadata=metadata))

    waiting = row(now + timedelta(minutes=30), timedelta(minutes=30))  # URL still valid
    expired = row(now - timedelta(minutes=5), timedelta(hours=1))  # URL expired, nothing came
    platform_young = row(None, timedelta(hours=2))  # no marker, younger than gc's grace
    platform_old = row(None, timedelta(days=3))  # gc --missing would take it: missing
    result = verify(storage)
    assert sorted(i["id"] for i in result.pending_uploads.items) == sorted([waiting.id, platform_young.id])
    assert sorted(i["id"] for i in result.missing.items) == sorted([expired.id, platform_old.id])
    assert not result.ok  # the lost bytes count; the pending uploads alone would not


def test_verify_rows_outside_the_managed_prefixes_and_keys_not_ending_in_the_id(
    verify_env, storage_factory
) -> None:
    storage = storage_factory(verify_env)
    s3_store, local_store = storage.store(Location.S3), storage.store(Location.LOCAL)
    present = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p",
                      s3_key="elsewhere/present", size=4)
    absent = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p",
                     s3_key="elsewhere/absent", size=4,
                     created=datetime.now(timezone.utc) - timedelta(days=8))  # no pending upload
    renamed = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.LOCAL, project_id="p",
                      s3_key="project/p/FLOW_RUN_LOG/not-the-id", size=2)
    ownerless = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.LOCAL, size=1)
    zstd = FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p",
                   compression=Compression.ZSTD, size=6)
    s3_store.put(present.s3_key, io.BytesIO(b"1234"), 4)
    s3_store.put("elsewhere/not-managed", io.BytesIO(b"not ours"), 8)  # never an orphan
    local_store.put(renamed.s3_key, io.BytesIO(b"ok"), 2)
    s3_store.put(zstd.key, io.BytesIO(b"zstd!!"), 6)  # the stored (compressed) size
    for row in (present, absent, renamed, ownerless, zstd):
        storage.catalog.insert(row)
    result = verify(storage)
    assert {(i["location"], i["id"]) for i in result.missing.items} == {
        ("S3", absent.id), ("LOCAL", ownerless.id)}
    assert result.orphans.files == 0 and result.size_mismatches.files == 0


def test_verify_without_a_bucket_checks_local_only_and_refuses_unverifiable_s3_rows(
    catalog_env, storage_factory, tmp_path
) -> None:
    env = dict(catalog_env, AP_LOCAL_STORAGE_PATH=str(tmp_path / "none"))
    storage = storage_factory(env)
    result = verify(storage)
    assert result.ok and not any(c.checked for c in result.locations)
    storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p", size=1))
    from apstorage.errors import ConfigError

    with pytest.raises(ConfigError, match="AP_S3_BUCKET"):
        verify(storage)


def test_verify_against_a_missing_bucket_exits_4(catalog_env, s3_env, set_env) -> None:
    set_env(**{k: v for k, v in catalog_env.items() if k != "AP_CONFIG_PATH"},
            **dict(s3_env, AP_S3_BUCKET="no-such-bucket-du"))
    code, _, err = run("du", "--verify")
    assert code == 4
    assert "no-such-bucket-du" in err


@pytest.fixture
def small_pages(monkeypatch) -> int:
    """Pages of 40 instead of thousands, so a few hundred objects span many pages of
    every kind: listing hand-offs, sorted-row fetches, lookups, keyset row pages."""
    import apstorage.services.du as du_service

    for module, name in ((du_service, "LIST_PAGE"), (du_service, "LOOKUP_BATCH"), (du_sql, "STREAM_PAGE")):
        monkeypatch.setattr(module, name, 40)
    monkeypatch.setattr(du_service, "LIST_QUEUE_PAGES", 2)
    return 40


def test_verify_pages_through_many_pages(verify_env, storage_factory, small_pages) -> None:
    """Many pages of everything, one orphan and one missing object in the middle."""
    from concurrent.futures import ThreadPoolExecutor

    storage = storage_factory(verify_env)
    s3_store = storage.store(Location.S3)
    rows = [FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3,
                    project_id=f"p{i % 7}", size=1) for i in range(300)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: s3_store.put(r.key, io.BytesIO(b"z"), 1), rows))
    for row in rows[1:]:  # rows[0] has an object but no row: an orphan
        storage.catalog.insert(row)
    storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id="p3", size=9,
                                   created=datetime.now(timezone.utc) - timedelta(days=8)))
    result = verify(storage)
    assert [i["key"] for i in result.orphans.items] == [rows[0].key]
    assert result.missing.files == 1 and result.missing.bytes == 9
    s3_check = next(c for c in result.locations if c.location == "S3")
    assert s3_check.objects == 300 and s3_check.rows == 300
    assert s3_check.method == "merge in bytes order"  # letters and digits: the orders agree


def test_verify_falls_back_to_lookups_when_the_listing_follows_neither_order(
    verify_env, storage_factory, tmp_path, small_pages
) -> None:
    """The LOCAL store lists a folder's files before its subfolders: a stray file beside
    the type folders breaks both orders, and the lookups still find everything."""
    storage = storage_factory(dict(verify_env, AP_FILE_STORAGE_LOCATION="LOCAL"))
    rows = put_many(storage, tmp_path, "LOCAL", [("p", None)] * 6 + [("q", None)] * 150)
    local_store = storage.store(Location.LOCAL)
    local_store.put("project/p/stray", io.BytesIO(b"stray"), 5)  # next to p's type folders
    local_store.delete(rows[2].key)
    local_store.delete(rows[-1].key)  # another one, anywhere in id order
    local_store.put(rows[4].key, io.BytesIO(b"different"), 9)
    result = verify(storage)
    local = next(c for c in result.locations if c.location == "LOCAL")
    assert local.method == "lookups by id"
    assert local.objects == len(rows) - 2 + 1
    assert {i["key"] for i in result.orphans.items} == {"project/p/stray"}
    assert {i["id"] for i in result.missing.items} == {rows[2].id, rows[-1].id}
    assert [(i["id"], i["objectSize"]) for i in result.size_mismatches.items] == [(rows[4].id, 9)]


def test_sorted_rows_come_in_either_order(catalog_env, storage_factory) -> None:
    storage = storage_factory(catalog_env)
    owners = ["p", "p-x", "P", "p_x", "a.b"]
    for owner in owners:
        storage.catalog.insert(FileRow(id=new_id(), type="FLOW_RUN_LOG", location=Location.S3, project_id=owner))
    by_bytes = [r.key for r in du_sql.iter_rows_by_key(storage.catalog, "S3")]
    by_folder = [r.key for r in du_sql.iter_rows_by_key(storage.catalog, "S3", order="segments")]
    assert by_bytes == sorted(by_bytes)
    assert by_folder == sorted(by_folder, key=lambda k: k.split("/"))
    assert by_bytes != by_folder
