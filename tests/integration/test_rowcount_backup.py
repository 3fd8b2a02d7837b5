"""Exact counts read from a parallel dump's own data files (rowcount.py) against a real server and real pg_dump.
Under concurrent writes: tests/integration/test_backup.py (both counting methods)."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgrunbook import dbinfo, rowcount
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.manifest import Manifest
from pgrunbook.settings import Settings

HOSTILE = ["plain", "Mixed Case", "dot.ted", "new\nline", "tab\there", "back\\slash", 'quo"te', "ünï😀", " lead"]
VALUES = ["", "\\.", "a\nb", "c\rd", "e\tf", "\\N", "g\\h", "é😀", "x" * 3000]


def _settings(method: str) -> Settings:
    return Settings.from_env({"PGRUNBOOK_COUNT_METHOD": method})


def _extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def _rows(manifest_data: dict[str, object]) -> dict[tuple[str, str], int]:
    return {(t["schema"], t["name"]): t["rows"] for t in manifest_data["tables"]}  # type: ignore[attr-defined]


def _live_counts(url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                            "AND n.nspname NOT LIKE 'pg_toast%'").fetchall()
        return {(s, t): int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(s, t))).fetchone()[0]) for s, t in rows}  # type: ignore[index]


def test_generated_tables_count_the_same_from_the_archive_as_in_the_snapshot(
        fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given seeded tables with hostile names and values (escapes, "\." alone, long TOASTed values), one empty,
    # one partitioned (rows in its partitions), in two schemas
    rng = random.Random(14)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "s.x"')
        for i, name in enumerate(rng.sample(HOSTILE, 6)):
            schema = rng.choice(["public", "s.x"])
            table = sql.Identifier(schema, f"{name}{i}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int, body text, doc jsonb)").format(table))
            rows = 0 if i == 0 else rng.choice([1, 7, 500, 4000])
            with conn.cursor().copy(sql.SQL("COPY {} (id, body, doc) FROM STDIN").format(table)) as copy:
                for r in range(rows):
                    copy.write_row((r, rng.choice(VALUES) + rng.choice(VALUES), None if r % 3 else '{"k": "v\\n"}'))
        conn.execute("CREATE TABLE parted (id int, at date) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')")
        conn.execute("CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM ('2021-01-01') TO ('2022-01-01')")
        conn.execute("INSERT INTO parted SELECT g, date '2020-06-01' + (g % 400) FROM generate_series(1, 3000) g")
    live = _live_counts(fresh_db)
    # When it is backed up in parallel with each compression, counting from the archive, and once in the snapshot
    snapshot = run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path / "snap"), jobs=2),
                          _settings("snapshot"))
    expected = _rows(snapshot.manifest_data)
    assert expected == {k: v for k, v in live.items() if k != ("public", "parted")}
    def no_second_read(conn: object, tables: list[object], *args: object) -> dict[object, int]:
        assert not tables, f"count(*) of {tables} in the database: the archive's data files were not counted"
        return {}

    monkeypatch.setattr(dbinfo, "exact_counts", no_second_read)
    for compress in ("zstd", "gzip", "none"):
        result = run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path / compress), jobs=2,
                                          compress=compress), _settings("archive"))
        # Then the counts are the same, and they are the rows the archive holds
        assert result.format == "directory-tar"
        assert _rows(result.manifest_data) == expected, compress
        assert Manifest(result.manifest_data).data["tables"] == snapshot.manifest_data["tables"]


def test_a_data_file_that_cannot_be_counted_is_counted_in_the_snapshot(
        fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Given two tables, and data files that (as if written by another pg_dump) do not end with the terminator
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE a AS SELECT g AS id FROM generate_series(1, 1234) g")
        conn.execute("CREATE TABLE b AS SELECT g AS id FROM generate_series(1, 56) g")
    monkeypatch.setattr(rowcount, "count_copy_rows", lambda stream: None)
    # When it is backed up counting from the archive
    with caplog.at_level("INFO", logger="pgrunbook.backup"):
        result = run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path), jobs=2), _settings("archive"))
    # Then the snapshot's count(*) stands in, and says so
    assert Manifest(result.manifest_data).tables == {"public.a": 1234, "public.b": 56}
    assert any("could not be counted" in r.getMessage() for r in caplog.records)


def test_auto_counts_indexed_all_visible_tables_in_the_snapshot_and_the_rest_from_the_archive(
        fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a vacuumed table with a primary key (count(*) reads the index), a small one (a few pages), one without
    # an index, and one with an index whose pages were just written (not all-visible yet), the last two over 1 MB
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE indexed AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 20000) g")
        conn.execute("ALTER TABLE indexed ADD PRIMARY KEY (id)")
        conn.execute("CREATE TABLE heap_only AS SELECT g AS id FROM generate_series(1, 100000) g")
        conn.execute("CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 300) g")
        conn.execute("VACUUM (ANALYZE) indexed, heap_only, small")
        conn.execute("CREATE TABLE fresh (id int PRIMARY KEY)")
        conn.execute("INSERT INTO fresh SELECT generate_series(1, 50000)")
        conn.execute("ANALYZE fresh")
    asked: list[str] = []
    real = dbinfo.exact_counts

    def spy(conn: psycopg.Connection[object], tables: list[dbinfo.TableRef], *args: object) -> dict[object, int]:
        asked.extend(t.name for t in tables)
        return real(conn, tables)  # type: ignore[return-value]

    monkeypatch.setattr(dbinfo, "exact_counts", spy)
    # When it is backed up in parallel with the default method
    result = run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path), jobs=2), Settings.from_env({}))
    # Then only the indexed, all-visible table was counted with count(*); the others came from their data files
    assert sorted(asked) == ["indexed", "small"]
    assert Manifest(result.manifest_data).tables == {"public.indexed": 20000, "public.heap_only": 100000,
                                                     "public.small": 300, "public.fresh": 50000}
