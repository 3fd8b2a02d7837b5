from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.errors import StoreError
from pgrunbook.manifest import parse_sha256_file, sha256_line
from pgrunbook.store import LocalStore, S3Store, split_uri, writing


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
