"""The backup index: list uses an entry only when it matches a listed manifest; record() survives races."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pgrunbook import backup_index
from pgrunbook.archive import iter_manifests
from pgrunbook.backup_index import BackupEntry, entries_in, record
from pgrunbook.keys import MANIFEST_SUFFIX, backup_index_key, database_dest
from pgrunbook.store import LocalStore, S3Store, Store
from tests.fixtures.backups import backup_objects, manifest_json, seed_backups


def reference(store: Store) -> list[BackupEntry]:
    """The listing as it was before the index: every manifest read, one by one."""
    out = []
    for key, m in iter_manifests(store):
        out.append(BackupEntry(
            archive=store.uri(key), manifest_uri=store.uri(key + MANIFEST_SUFFIX), kind=m.kind,
            database=str(m.source.get("database")), finished_at=m.finished_at, bytes=m.bytes,
            tables=int(m.data["totals"]["tables"]), rows=int(m.data["totals"]["rows"]), sha256=m.sha256,
            format=m.archive_format))
    return sorted(out, key=lambda e: (e.finished_at, e.archive), reverse=True)


def listed(store: Store, **kw: Any) -> list[BackupEntry]:
    return sorted(entries_in(store, **kw), key=lambda e: (e.finished_at, e.archive), reverse=True)


class Counting:
    """A store that counts manifest reads (and can run something just before an index read returns)."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.manifest_reads = inner, 0
        self.on_index_read: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        if key.endswith(MANIFEST_SUFFIX):
            self.manifest_reads += 1
        got = self.inner.get_versioned(key)
        if key.endswith("_index/backups.json") and self.on_index_read is not None:
            hook, self.on_index_read = self.on_index_read, None
            hook()
        return got


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, aws_env: None) -> Iterator[Store]:
    if request.param == "folder":
        yield LocalStore(tmp_path / "backups")
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
        yield S3Store("s3://bkt/team")


def put(store: Store) -> Any:
    return lambda key, data: store.put_bytes(key, data)


def test_with_and_without_the_index_the_listing_is_the_same(store: Store) -> None:
    keys = seed_backups(put(store), 12, databases=3)
    before = Counting(store)
    assert listed(before) == reference(store) and len(reference(store)) == 12
    assert before.manifest_reads == 12  # no index yet: every manifest read
    assert all(record(store, k) for k in keys)
    after = Counting(store)
    assert listed(after) == reference(store)
    assert after.manifest_reads == 0  # every fact from the three databases' indexes
    assert {k.split("/")[0] for k in keys} == {"db00", "db01", "db02"}
    assert all(store.exists(backup_index_key(f"db0{i}")) for i in range(3))


def test_a_store_opened_at_the_database_folder_uses_the_same_index(store: Store) -> None:
    keys = seed_backups(put(store), 6, databases=2)
    for k in keys:
        record(store, k)
    sub = Counting(S3Store(database_dest(store.base, "db01")) if isinstance(store, S3Store)
                   else LocalStore(database_dest(store.base, "db01")))
    found = listed(sub)
    assert [e.database for e in found] == ["db01"] * 3 and sub.manifest_reads == 0
    assert found == reference(sub.inner)


def test_stale_entries_never_reach_the_listing(store: Store) -> None:
    keys = seed_backups(put(store), 6, databases=1)
    for k in keys:
        record(store, k)
    gone, replaced = keys[1], keys[2]
    for suffix in ("", ".sha256", MANIFEST_SUFFIX):
        store.delete(gone + suffix)  # lifecycle expiry: the index still names it
    finished = datetime(2030, 1, 1, tzinfo=UTC)
    store.delete(replaced + MANIFEST_SUFFIX)  # an operator replaced the manifest: other facts, new version
    store.put_bytes(replaced + MANIFEST_SUFFIX, manifest_json("db00", "manual", finished, "x.dump", b"x", 42))
    counting = Counting(store)
    found = listed(counting)
    assert found == reference(store)
    assert store.uri(gone) not in [e.archive for e in found]
    assert [(e.kind, e.rows) for e in found if e.archive == store.uri(replaced)] == [("manual", 42)]
    assert counting.manifest_reads == 1  # only the replaced manifest


def test_a_corrupt_index_is_ignored_with_a_warning(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    keys = seed_backups(put(store), 4, databases=1)
    for k in keys:
        record(store, k)
    good = json.loads(store.get_bytes(backup_index_key("db00")))
    entry = next(iter(good["entries"].values()))
    for bad in (b"{not json", b"[]", json.dumps({"version": 99, "entries": {}}).encode(),
                json.dumps({**good, "entries": {**good["entries"], "x": {**entry, "rows": "many"}}}).encode(),
                json.dumps({**good, "entries": {**good["entries"], "x": {**entry, "finished_at": "soon"}}}).encode()):
        store.put_bytes(backup_index_key("db00"), bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pgrunbook.backup_index"):
            counting = Counting(store)
            assert listed(counting) == reference(store)
        assert counting.manifest_reads == 4
        assert any("unreadable backup index" in r.getMessage() for r in caplog.records)
    assert record(store, keys[0])  # record replaces a corrupt index with a readable one
    assert len(json.loads(store.get_bytes(backup_index_key("db00")))["entries"]) == 1


def test_a_writer_that_loses_the_race_retries_and_keeps_both_entries(store: Store) -> None:
    keys = seed_backups(put(store), 2, databases=1)
    racing = Counting(store)
    # writer A reads the index; before it writes, writer B records its backup: A's conditional write must
    # fail and A must read again, so neither entry is lost
    racing.on_index_read = lambda: record(store, keys[1])
    assert record(racing, keys[0])
    entries = json.loads(store.get_bytes(backup_index_key("db00")))["entries"]
    assert len(entries) == 2
    assert listed(Counting(store)) == reference(store)


def test_concurrent_backups_of_one_database_all_land_in_the_index(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    keys = seed_backups(put(store), 12, databases=1)
    start = threading.Barrier(len(keys))
    results: list[bool] = []

    def run(key: str) -> None:
        start.wait()
        results.append(record(store, key))

    threads = [threading.Thread(target=run, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * len(keys)
    assert len(json.loads(store.get_bytes(backup_index_key("db00")))["entries"]) == len(keys)


def test_a_write_that_cannot_be_made_never_fails_the_backup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalStore(tmp_path)
    keys = seed_backups(put(store), 1, databases=1)
    (tmp_path / "db00" / "_index").write_text("a file where the index folder should be")
    with caplog.at_level(logging.WARNING, logger="pgrunbook.backup_index"):
        assert record(store, keys[0]) is False
    assert any("not indexed" in r.getMessage() for r in caplog.records)
    assert listed(store) == reference(store)
    assert record(store, "x.dump") is False  # an --out file has no database folder: nothing to index


def test_refresh_rewrites_an_index_that_missed_many_manifests(store: Store) -> None:
    seed_backups(put(store), backup_index.REFRESH_MIN + 2, databases=1)
    assert not store.exists(backup_index_key("db00"))
    assert listed(store) == reference(store)
    assert not store.exists(backup_index_key("db00"))  # reading never writes unless asked
    assert listed(store, refresh=True) == reference(store)
    counting = Counting(store)
    assert listed(counting) == reference(store) and counting.manifest_reads == 0


def test_generated_histories_list_exactly_what_the_manifests_say(store: Store) -> None:
    """Seeded random histories of backups, records, expiries, replaced manifests, lost index writes and
    refreshes: the indexed listing always equals the manifest-by-manifest one."""
    rng = random.Random(1414)
    keys: list[str] = []
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for step in range(60):
        op = rng.random()
        if op < 0.45 or not keys:
            when += timedelta(hours=rng.randrange(1, 30))
            objects = backup_objects(f"db{rng.randrange(3)}", rng.choice(["scheduled", "manual"]), when,
                                     rng.randrange(1000))
            for k, data in objects.items():
                store.put_bytes(k, data)
            key = next(iter(objects))
            keys.append(key)
            if rng.random() < 0.8:  # else: the backup died before recording (or an older pgrunbook wrote it)
                record(store, key)
        elif op < 0.6:
            key = keys.pop(rng.randrange(len(keys)))
            for suffix in rng.choice([("", ".sha256", MANIFEST_SUFFIX), (MANIFEST_SUFFIX,)]):
                store.delete(key + suffix)
        elif op < 0.7:
            key = rng.choice(keys)
            store.delete(key + MANIFEST_SUFFIX)
            store.put_bytes(key + MANIFEST_SUFFIX, manifest_json(
                "db9", "manual", when - timedelta(days=rng.randrange(400)), "x.dump", b"x", rng.randrange(50)))
        elif op < 0.8:
            store.put_bytes(rng.choice(keys) + MANIFEST_SUFFIX, b"{broken")  # unreadable: skipped by both
        elif op < 0.9:
            record(store, rng.choice(keys))  # recorded again (or recorded late)
        else:
            entries_in(store, refresh=True)
        if step % 6 == 5:
            assert listed(store) == reference(store), step
    assert listed(store) == reference(store)


def test_the_parallel_listing_lists_exactly_what_the_plain_one_lists(store: Store) -> None:
    seed_backups(put(store), 9, databases=3)
    store.put_bytes("_reports/watch/db00.json", b"{}")
    store.put_bytes("at-the-root.txt", b"x")
    store.put_bytes("db01/_index/backups.json", b"{}")
    plain = sorted((i.key, i.size, i.etag) for i in store.list())
    assert sorted((i.key, i.size, i.etag) for i in store.list_tree()) == plain and len(plain) == 30
    assert sorted(i.key for i in store.list_tree("db01")) == sorted(i.key for i in store.list("db01/"))


@mock_aws
def test_skipping_sha256_files_leaves_out_nothing_else(aws_env: None) -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
    store = S3Store("s3://bkt/p")
    keys = seed_backups(put(store), 4, databases=2)
    store.delete(keys[0])  # an orphan .sha256 (its archive gone): listed in full
    odd = ["db00/manual/2026/01/x.sha256.dump", "db00/manual/2026/01/x.sha256.dump.manifest.json",
           "db00/manual/2026/01/y.sha256/z.manifest.json", "db01/a.sha256", "top.sha256", "db01/a.sha256.b"]
    for key in odd:
        store.put_bytes(key, b"{}")
    everything = {i.key: i.etag for i in store.list()}
    skipped = {i.key: i.etag for i in store.list_tree(skip_after=".sha256")}
    left_out = set(everything) - set(skipped)
    assert set(skipped) <= set(everything) and all(skipped[k] == everything[k] for k in skipped)
    # only the .sha256 of a listed archive is left out (and what starts with it)
    assert left_out == {k + ".sha256" for k in keys[1:]}


def test_status_and_list_show_the_newest_backup_that_exists(tmp_path: Path, clean_env: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from pgrunbook.cli import main

    store = LocalStore(tmp_path / "b")
    keys = seed_backups(put(store), 6, databases=2)
    for k in keys:
        record(store, k)
    newest = max((k for k in keys if k.startswith("db01/")), key=lambda k: k.rsplit("/", 1)[-1])
    for suffix in ("", ".sha256", MANIFEST_SUFFIX):
        store.delete(newest + suffix)  # expired: its index entry is stale
    expected = next(e for e in reference(store) if e.database == "db01")
    monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "db01", "secret_arn": "arn:aws:secretsmanager:x",
                                                           "dbname": "db01"}]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # AWS is not reached
    assert main(["status", "--from", str(store.base), "--no-pitr", "--json"]) == 1  # backups from 2025: old
    (row,) = json.loads(capsys.readouterr().out)["databases"]
    assert row["backup"]["archive"] == expected.archive != store.uri(newest)
    assert main(["list", "--from", str(store.base), "--json"]) == 0
    assert [b["archive"] for b in json.loads(capsys.readouterr().out)["backups"]] == [
        e.archive for e in reference(store)]
