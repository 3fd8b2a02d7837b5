"""S3 part size from the expected size, and parts larger than the memory threshold spooled to disk."""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pgrunbook.store import (
    DEFAULT_PART,
    MAX_OBJECT,
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    SIZE_MARGIN,
    MiB,
    S3Store,
    open_store,
    part_size_for,
    writing,
)


def _check(expected: int, margin: float) -> None:
    part = part_size_for(expected, margin=margin)
    assert MIN_PART <= part <= MAX_PART and part % MiB == 0
    planned = min(math.ceil(expected * margin), MAX_OBJECT)
    assert math.ceil(planned / part) <= MAX_PARTS, (expected, part)  # the margin is respected
    assert part == DEFAULT_PART or math.ceil(planned / (part - MiB)) > MAX_PARTS  # and no larger than needed


def test_part_size_holds_every_size_from_one_byte_to_5_tib() -> None:
    rng = random.Random(14)
    sizes = [1, MiB, DEFAULT_PART * MAX_PARTS // 2, DEFAULT_PART * MAX_PARTS // 2 + 1, MAX_OBJECT // 2,
             MAX_OBJECT, MAX_OBJECT + 1, 5 * 10**12]
    sizes += [int(math.exp(rng.uniform(0, math.log(MAX_OBJECT)))) for _ in range(2000)]
    for expected in sizes:
        for margin in (1.0, 1.25, SIZE_MARGIN):
            _check(expected, margin)
    # an object of S3's maximum size always fits, whatever the estimate said above it
    assert math.ceil(MAX_OBJECT / part_size_for(MAX_OBJECT)) <= MAX_PARTS
    assert part_size_for(None) == part_size_for(0) == DEFAULT_PART
    assert part_size_for(200 * 1024**3) > DEFAULT_PART  # 160 GB was the ceiling of fixed 16 MiB parts


def test_open_store_sizes_parts_from_the_expected_size_unless_overridden() -> None:
    big = 2 * 1024**4
    store = open_store("s3://bkt/p", expected_bytes=big)
    assert isinstance(store, S3Store) and store.part_size == part_size_for(big) > DEFAULT_PART
    override = open_store("s3://bkt/p", expected_bytes=big, part_size_mb=64)
    assert isinstance(override, S3Store) and override.part_size == 64 * MiB
    assert isinstance(unknown := open_store("s3://bkt/p"), S3Store) and unknown.part_size == DEFAULT_PART


def _spool_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@mock_aws
def test_spooled_parts_upload_the_same_bytes_and_leave_no_files(aws_env: None, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    spool = tmp_path / "spool"
    spool.mkdir()
    store = S3Store("s3://bkt/p", part_size=5 * MiB, spool_over=MiB, spool_dir=str(spool))
    rng = random.Random(4)
    data = rng.randbytes(12 * MiB + 123)
    seen_spooled = False
    with writing(store, "db/x.dump") as w:
        at = 0
        while at < len(data):  # irregular writes, one larger than a whole part
            n = rng.choice([1, 1000, 64 * 1024, 7 * MiB])
            w.write(data[at:at + n])
            at += n
            seen_spooled = seen_spooled or any(n.endswith(".spool") for n in _spool_files(spool))
    assert seen_spooled  # the parts really went through temp files
    assert hashlib.sha256(store.get_bytes("db/x.dump")).hexdigest() == hashlib.sha256(data).hexdigest()
    assert s3.head_object(Bucket="bkt", Key="p/db/x.dump", PartNumber=1)["PartsCount"] == 3
    assert _spool_files(spool) == []


@mock_aws
def test_an_aborted_spooled_upload_leaves_no_upload_object_or_file(aws_env: None, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt", part_size=5 * MiB, spool_over=MiB, spool_dir=str(tmp_path))
    with pytest.raises(RuntimeError), writing(store, "db/x.dump") as w:
        w.write(os.urandom(7 * MiB))  # one part uploaded, 2 MiB spooled in the next
        assert len(_spool_files(tmp_path)) >= 1
        raise RuntimeError("pg_dump died")
    assert _spool_files(tmp_path) == []
    assert s3.list_multipart_uploads(Bucket="bkt").get("Uploads", []) == []
    assert not store.exists("db/x.dump")


@mock_aws
def test_small_parts_stay_in_memory(aws_env: None, tmp_path: Path) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt", part_size=5 * MiB, spool_dir=str(tmp_path))
    with writing(store, "x.dump") as w:
        w.write(os.urandom(6 * MiB))
        assert _spool_files(tmp_path) == []
    assert store.size("x.dump") == 6 * MiB
