"""Database names become path and key segments only after encoding: whatever a database is called,
its archive lands under the destination, `list` shows its real name, and `sha256sum -c` reads the
.sha256 beside it. Destinations that would escape (an empty --to, an S3 prefix with an empty, '.' or
'..' segment) are usage errors."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgrunbook import aws
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings
from tests.conftest import run_cli
from tests.fixtures.hostile_names import CJK_63_BYTES, random_names

SETTINGS = Settings.from_env({})
# every fixed hostile name, and a seeded sample of generated ones (any character but NUL, <= 63 bytes)
NAMES = ["..", ".", "a/b", "../../outside", "-rf", ".hidden", "x\ny", "tab\there\r", "\x1b[31mred", "100%",
         "ü" * 31 + "x", CJK_63_BYTES, "\u2028sep", *random_names(seed=8_2026, count=6, max_chars=63)]


def _url(server: LocalServer, name: str) -> str:
    return make_conninfo(server.url(), dbname=name)


@pytest.fixture(scope="module")
def hostile_dbs(pg_server: LocalServer) -> Iterator[list[str]]:
    """One small database per hostile name (a table with a row, so the archive holds data)."""
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for name in NAMES:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    for name in NAMES:
        with psycopg.connect(_url(pg_server, name), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    yield NAMES
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for name in NAMES:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _safe_segments(key: str) -> bool:
    return all(part not in ("", ".", "..") and part.isascii() and part.isprintable() for part in key.split("/"))


def test_any_database_name_lands_under_the_folder_and_lists_by_its_real_name(
        pg_server: LocalServer, hostile_dbs: list[str], tmp_path: Path) -> None:
    # Given databases named .., a/b, with newlines, escapes, 63 bytes of UTF-8, …
    dest = tmp_path / "sub" / "dest"
    archives = {}
    for name in hostile_dbs:
        # When each is backed up to a folder
        result = run_backup(BackupOptions(database_url=_url(pg_server, name), dest=str(dest), jobs=1), SETTINGS)
        archive = Path(result.archive)
        archives[name] = archive
        # Then its archive, .sha256 and manifest are under the destination, in its own folder
        rel = archive.resolve().relative_to(dest.resolve())  # raises when outside
        assert _safe_segments(rel.as_posix()), rel
        assert rel.parts[1:2] == ("manual",), rel
        # and `sha256sum -c` beside it accepts the .sha256
        check = subprocess.run(["sha256sum", "-c", f"{archive.name}.sha256"], cwd=archive.parent,
                               capture_output=True, text=True)
        assert check.returncode == 0, (name, check.stdout, check.stderr)
    assert len({a.parent.parent.parent.parent for a in archives.values()}) == len(hostile_dbs)  # one folder each
    # nothing was written beside or above the destination
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.iterdir()) == ["sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["dest"]
    assert not [p for p in dest.rglob("*") if p.name.endswith(".partial")]

    # And `list` shows each backup under the database's real name: exactly in --json, one line each in text
    listed = run_cli("list", "--from", str(dest), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["backups"]
    assert sorted(r["database"] for r in rows) == sorted(hostile_dbs)
    assert {r["database"]: Path(r["archive"]) for r in rows} == archives
    text = run_cli("list", "--from", str(dest))
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 1 + len(hostile_dbs)
    assert "x\\ny" in text.stdout and "a/b" in text.stdout and ".." in text.stdout


def test_any_database_name_lands_under_the_s3_prefix_and_lists_by_its_real_name(
        pg_server: LocalServer, hostile_dbs: list[str], bucket: str) -> None:
    # Given the same databases, When each is backed up to an S3 prefix
    for name in hostile_dbs:
        result = run_backup(BackupOptions(database_url=_url(pg_server, name), dest=f"s3://{bucket}/team/backups",
                                          jobs=1), SETTINGS)
        assert result.archive.startswith(f"s3://{bucket}/team/backups/")
    # Then every key is under the prefix, with no empty, '.', '..' or non-printable segment
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 4 * len(hostile_dbs)  # archive, .sha256, manifest and the database's backup index
    for key in keys:
        assert key.startswith("team/backups/") and _safe_segments(key), key
    # And `list` shows the real names
    listed = run_cli("list", "--from", f"s3://{bucket}/team/backups", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["database"] for r in json.loads(listed.stdout)["backups"]) == sorted(hostile_dbs)


def _usage_error(proc: subprocess.CompletedProcess[str], contains: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    # one line: "pgrunbook: error: ..." or, when argparse refuses an option, "pgrunbook backup: error: argument ..."
    assert len(lines) == 1 and lines[0].startswith("pgrunbook") and ": error: " in lines[0], proc.stderr
    assert contains in lines[0], proc.stderr


def test_an_empty_destination_is_a_usage_error(pg_server: LocalServer, tmp_path: Path) -> None:
    # Given --to '' (an unset variable in a script, say)
    proc = run_cli("backup", "--database-url", pg_server.url(), "--to", "", cwd=tmp_path)
    # Then nothing is written to ./backups: it is a usage error
    _usage_error(proc, "empty")
    assert list(tmp_path.iterdir()) == []
    _usage_error(run_cli("list", "--from", "", cwd=tmp_path), "empty")


@pytest.mark.parametrize("dest", ["../x", "a//c", "./a", "/a", "a/.."])
def test_an_s3_prefix_with_an_empty_dot_or_dotdot_segment_is_a_usage_error(
        pg_server: LocalServer, bucket: str, dest: str) -> None:
    proc = run_cli("backup", "--database-url", pg_server.url(), "--to", f"s3://{bucket}/{dest}")
    _usage_error(proc, "segment")
    assert aws.client("s3").list_objects_v2(Bucket=bucket).get("Contents", []) == []
