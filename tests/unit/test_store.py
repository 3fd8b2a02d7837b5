from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.errors import ObjectExists, StoreError, UsageError
from pgrunbook.keys import (
    RESTORE_REPORTS_PREFIX,
    WATCH_PREFIX,
    archive_key,
    database_dest,
    decode_segment,
    encode_segment,
    restore_report_key,
    watch_key,
)
from pgrunbook.manifest import parse_sha256_file, sha256_line
from pgrunbook.store import LocalStore, S3Store, open_store, split_uri, writing
from tests.fixtures.hostile_names import HOSTILE_NAMES, random_names


def test_local_writer_commits_atomically_and_abort_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with writing(store, "a/b/x.dump") as w:
        w.write(b"hello")
        assert not (tmp_path / "a/b/x.dump").exists()  # only the .partial exists while writing
    assert (tmp_path / "a/b/x.dump").read_bytes() == b"hello"
    with pytest.raises(RuntimeError), writing(store, "a/b/y.dump") as w:
        w.write(b"half")
        raise RuntimeError("pg_dump died")
    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["x.dump"]


@mock_aws
def test_s3_writer_streams_parts_and_reads_back(aws_env: None) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt/prefix", part_size=5 * 1024 * 1024)
    data = os.urandom(12 * 1024 * 1024 + 123)
    with writing(store, "db/x.dump") as w:
        for i in range(0, len(data), 1024 * 1024):
            w.write(data[i:i + 1024 * 1024])
    assert hashlib.sha256(store.get_bytes("db/x.dump")).digest() == hashlib.sha256(data).digest()
    assert store.size("db/x.dump") == len(data)
    assert [o.key for o in store.list()] == ["db/x.dump"]
    parts = aws.client("s3").head_object(Bucket="bkt", Key="prefix/db/x.dump", PartNumber=1)
    assert parts["PartsCount"] == 3


@mock_aws
def test_s3_abort_removes_the_upload(aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt")
    with pytest.raises(RuntimeError), writing(store, "x.dump") as w:
        w.write(b"x" * 100)
        raise RuntimeError("boom")
    assert s3.list_multipart_uploads(Bucket="bkt").get("Uploads", []) == []
    assert not store.exists("x.dump")


@mock_aws
def test_missing_s3_object_is_a_store_error(aws_env: None) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    store, key = split_uri("s3://bkt/nope.dump")
    with pytest.raises(StoreError, match="not found"):
        store.get_bytes(key)


def test_sha256_lines_round_trip() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    line = sha256_line(digest, "db-backup.dump")
    assert line == f"{digest}  db-backup.dump\n"
    assert parse_sha256_file(line) == digest
    with pytest.raises(Exception, match="no sha256"):
        parse_sha256_file("garbage")


# --------------------------------------------------------------------------- names as path segments
def test_encoded_segment_is_one_safe_segment_and_decodes_back() -> None:
    for name in HOSTILE_NAMES + random_names(seed=20260108, count=500):
        seg = encode_segment(name)
        assert decode_segment(seg) == name, name
        assert "/" not in seg and seg not in (".", "..") and not seg.startswith((".", "-", "_")), (name, seg)
        assert all(c.isascii() and (c.isalnum() or c in "_.-%") for c in seg), (name, seg)
        assert len(seg) <= 3 * len(name.encode()) <= 189, name


def test_encoding_is_one_to_one_and_keeps_ordinary_names() -> None:
    names = HOSTILE_NAMES + random_names(seed=7, count=2000)
    assert len({encode_segment(n) for n in set(names)}) == len(set(names))
    for plain in ("app", "my_db", "app-2.v1", "App42"):
        assert encode_segment(plain) == plain
    assert encode_segment("..") == "%2E." and encode_segment("-x") == "%2Dx" and encode_segment("a/b") == "a%2Fb"
    assert encode_segment("my_db_") == "my_db_"


@pytest.mark.parametrize("database", ["_reports", "_tasks", "_releases", "_approvals", "_x"])
def test_no_database_name_lands_in_a_reserved_folder(database: str) -> None:
    # Given a database whose name is one of the store's reserved folders
    when = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    # When its archives and reports get keys
    keys = [archive_key(database, "manual", when, "dump"), restore_report_key(database, when, "drill"),
            watch_key(database), database_dest("s3://b", database)[len("s3://b/"):]]
    # Then none starts in a reserved folder other than the report's own, and the name reads back
    assert not keys[0].startswith("_") and not keys[3].startswith("_")
    assert keys[1].startswith(f"{RESTORE_REPORTS_PREFIX}/%5F") and keys[2].startswith(f"{WATCH_PREFIX}/%5F")
    assert decode_segment(keys[0].split("/", 1)[0]) == database


@pytest.mark.parametrize("key", ["", "..", "a/../b", "a//b", "./a", "/abs", "a/"])
def test_keys_with_empty_dot_or_dotdot_segments_are_refused_for_writes(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "dest")
    with pytest.raises(UsageError, match="invalid object key"):
        store.put_bytes(key, b"x")
    assert not (tmp_path / "b").exists() and list(tmp_path.rglob("*")) in ([], [tmp_path / "dest"])


@pytest.mark.parametrize("dest", ["", "  ", "s3://bkt/../x", "s3://bkt/a//c", "s3://bkt/./a", "s3://bkt//a",
                                  "s3://bkt/a/..", "s3://"])
def test_bad_destinations_are_usage_errors(dest: str) -> None:
    with pytest.raises(UsageError):
        open_store(dest)


def test_a_trailing_slash_names_the_same_prefix() -> None:
    assert S3Store("s3://bkt/a/b/").full_key("x") == S3Store("s3://bkt/a/b").full_key("x") == "a/b/x"


# --------------------------------------------------------------------------- never replacing
def test_concurrent_folder_writers_of_one_key_each_commit_their_own_bytes(tmp_path: Path) -> None:
    # Given two writers of the same backup name open at once (two runs in the same second)
    store = LocalStore(tmp_path)
    first = store.open_writer("db/x.dump", unique=True)
    second = store.open_writer("db/x.dump", unique=True)
    first.write(b"first run")
    second.write(b"second run")
    # When both commit
    first.commit()
    second.commit()
    # Then each has its own file, neither replaced the other, and no partial file is left
    assert (first.key, second.key) == ("db/x.dump", "db/x.2.dump")
    assert (tmp_path / "db/x.dump").read_bytes() == b"first run"
    assert (tmp_path / "db/x.2.dump").read_bytes() == b"second run"
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["x.2.dump", "x.dump"]


def test_exclusive_folder_put_never_replaces(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a.sha256", b"theirs", exclusive=True)
    with pytest.raises(ObjectExists, match=r"a\.sha256 already exists"):
        store.put_bytes("a.sha256", b"mine", exclusive=True)
    assert (tmp_path / "a.sha256").read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["a.sha256"]
    store.put_bytes("a.sha256", b"replaced")  # the default still replaces (reports, approvals)
    assert (tmp_path / "a.sha256").read_bytes() == b"replaced"


def test_without_hard_links_the_final_name_is_still_claimed_without_replacing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file system that refuses hard links (EPERM, as some FUSE and SMB mounts do)
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    store = LocalStore(tmp_path)
    first = store.open_writer("x.dump", unique=True)
    second = store.open_writer("x.dump", unique=True)
    first.write(b"first")
    second.write(b"second")
    first.commit()
    second.commit()
    # Then each writer still ends under its own name, and nothing else is left
    assert (first.key, second.key) == ("x.dump", "x.2.dump")
    assert (tmp_path / "x.dump").read_bytes() == b"first" and (tmp_path / "x.2.dump").read_bytes() == b"second"
    with pytest.raises(ObjectExists):
        store.put_bytes("x.dump", b"third", exclusive=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.2.dump", "x.dump"]


@mock_aws
def test_concurrent_s3_writers_of_one_key_claim_distinct_names(aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt/p")
    first = store.open_writer("db/x.dump", unique=True)
    second = store.open_writer("db/x.dump", unique=True)
    assert (first.key, second.key) == ("db/x.dump", "db/x.2.dump")
    first.write(b"first run")
    second.write(b"second run")
    second.commit()
    first.commit()
    assert store.get_bytes("db/x.dump") == b"first run" and store.get_bytes("db/x.2.dump") == b"second run"
    assert sorted(o.key for o in store.list()) == ["db/x.2.dump", "db/x.dump"]  # claims removed


@mock_aws
def test_s3_exclusive_writes_refuse_an_existing_key_and_leave_no_upload(aws_env: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt")
    store.put_bytes("x.sha256", b"theirs", exclusive=True)
    with pytest.raises(ObjectExists, match=r"s3://bkt/x\.sha256 already exists"):
        store.put_bytes("x.sha256", b"mine", exclusive=True)
    # a writer that claimed its name, overtaken by a writer that does not claim (an older version)
    writer = store.open_writer("x.dump", unique=True)
    writer.write(b"mine")
    store.put_bytes("x.dump", b"theirs")
    with pytest.raises(ObjectExists):
        writer.commit()
    assert store.get_bytes("x.dump") == b"theirs" and store.get_bytes("x.sha256") == b"theirs"
    assert s3.list_multipart_uploads(Bucket="bkt").get("Uploads", []) == []
    assert sorted(o.key for o in store.list()) == ["x.dump", "x.sha256"]
