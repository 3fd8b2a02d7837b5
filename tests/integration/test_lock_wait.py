"""A backup blocked by another session's lock: it waits a bounded time (--lock-wait-timeout,
PGRUNBOOK_LOCK_WAIT_TIMEOUT), says every few seconds what it waits for, and then fails with one
line naming the table and the blocking session (from pg_blocking_pids) — leaving no .partial, no
multipart upload, no staging folder and no session on the server. Real server, real pg_dump."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgrunbook import aws
from pgrunbook.archive import ArchiveRef, verify_archive
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.dbinfo import ident
from pgrunbook.errors import LockTimeout
from pgrunbook.settings import Settings
from tests.conftest import cli_env
from tests.fixtures.hostile_names import random_names
from tests.fixtures.processes import Locker, backup_sessions, make_table, one_error_line, pgrunbook, wait_until

pytestmark = pytest.mark.usefixtures("clean_env")

TABLE = "Order Items"  # a name that needs quoting


def make_tables(url: str, rows: int = 1000) -> None:
    make_table(url, TABLE, rows)
    make_table(url, "other", 10)


def assert_no_backup_session_left(url: str) -> None:
    wait_until(lambda: not backup_sessions(url), "the backup's sessions to leave the server")


@pytest.fixture()
def locked_db(fresh_db: str) -> Iterator[tuple[str, Locker]]:
    make_tables(fresh_db)
    locker = Locker(fresh_db, TABLE)
    yield fresh_db, locker
    locker.release()


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_backup_gives_up_on_a_held_lock_naming_table_and_blocker(where: str, locked_db: tuple[str, Locker],
                                                                 tmp_path: Path, request: pytest.FixtureRequest
                                                                 ) -> None:
    url, locker = locked_db
    staging = tmp_path / "tmp"
    staging.mkdir()
    env = cli_env(TMPDIR=str(staging))
    if where == "folder":
        # the limit from the environment (Settings), a streamed custom-format dump
        dest = str(tmp_path / "backups")
        env["PGRUNBOOK_LOCK_WAIT_TIMEOUT"] = "2"
        args = ["--jobs", "1"]
    else:
        # the limit from the flag, a parallel dump staged in TMPDIR and uploaded in parts
        bucket = request.getfixturevalue("bucket")  # points AWS_ENDPOINT_URL at the moto server
        env = cli_env(TMPDIR=str(staging))
        dest = f"s3://{bucket}/db"
        args = ["--jobs", "2", "--lock-wait-timeout", "2.5"]
    proc = subprocess.run(pgrunbook("backup", "--database-url", url, "--to", dest, *args), env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    limit = "2s" if where == "folder" else "2.5s"
    assert f"gave up after waiting {limit} for a lock on table public.{ident(TABLE)}" in line, line
    assert f"pid {locker.pid} (application report-job, user postgres, idle in transaction, query started " in line
    # while it waited it said what it waited for
    assert re.search(rf"waiting for a lock on public\.{re.escape(ident(TABLE))}, blocked by pid {locker.pid} ",
                     proc.stderr), proc.stderr
    # nothing left behind: no file, no upload, no staging folder, no session on the server
    if where == "folder":
        assert [p for p in Path(dest).rglob("*") if p.is_file()] == []
    else:
        s3 = aws.client("s3")
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(staging.iterdir()) == []
    assert_no_backup_session_left(url)


def test_backup_waits_and_goes_on_when_the_lock_is_released(locked_db: tuple[str, Locker], tmp_path: Path) -> None:
    url, locker = locked_db
    proc = subprocess.Popen(pgrunbook("backup", "--database-url", url, "--to", str(tmp_path), "--jobs", "1",
                                      "--json"),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")) if proc.stderr else None,
                              daemon=True)
    reader.start()
    try:
        # the default limit (120 s) is far away; the backup reports what it waits for, then we let go
        line = wait_until(lambda: next((ln for ln in list(seen) if "waiting for a lock" in ln), None)
                          or proc.poll() is not None, "the backup to report the wait")
        assert isinstance(line, str), f"pgrunbook ended without reporting the wait: {''.join(seen)}"
        assert f"blocked by pid {locker.pid}" in line
        locker.release()
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen)
    archive = json.loads(out)["archive"]
    assert verify_archive(ArchiveRef.from_uri(archive)).ok
    assert_no_backup_session_left(url)


def test_counting_connection_gives_up_on_a_lock_taken_after_the_dump(fresh_db: str, tmp_path: Path) -> None:
    """The exact counts run beside pg_dump, in the same snapshot, and take their own share locks: a
    lock taken between pg_dump's and theirs blocks only them, and lock_timeout on the counting
    connection ends that wait with the same one line."""
    make_tables(fresh_db, rows=100)
    locker: list[Locker] = []

    def after_dump_started(dump: subprocess.Popen[bytes]) -> None:
        assert dump.wait(timeout=60) == 0  # a small dump: done, its locks released, before the counts start
        locker.append(Locker(fresh_db, TABLE, application="late-migration"))

    try:
        with pytest.raises(LockTimeout) as info:
            run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path), jobs=1, lock_wait_timeout=1),
                       Settings.from_env({}), on_dump_started=after_dump_started)
    finally:
        for held in locker:
            held.release()
    message = str(info.value)
    assert f"lock on table public.{ident(TABLE)}" in message
    assert f"pid {locker[0].pid} (application late-migration, user postgres, idle in transaction, " in message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert_no_backup_session_left(fresh_db)


@pytest.mark.parametrize("seed", [8, 80])
def test_any_table_name_is_named_on_one_line(seed: int, fresh_db: str, tmp_path: Path) -> None:
    """Generated table names (spaces, quotes, newlines, control characters, unicode): the error is one
    line and names the locked table exactly as dbinfo.ident() prints it."""
    names = random_names(seed, 2, max_chars=20)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))
    locker = Locker(fresh_db, names[-1])
    try:
        with pytest.raises(LockTimeout) as info:
            run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path), jobs=1, lock_wait_timeout=1),
                       Settings.from_env({}))
    finally:
        locker.release()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert f"lock on table public.{ident(names[-1])} " in message, message
    assert f"pid {locker.pid} " in message
    assert_no_backup_session_left(fresh_db)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_lock_wait_timeout_is_a_usage_error(value: str, tmp_path: Path) -> None:
    proc = subprocess.run(pgrunbook("backup", "--database-url", "postgresql://u@127.0.0.1:9/db", "--to", str(tmp_path),
                                    f"--lock-wait-timeout={value}"), env=cli_env(), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "--lock-wait-timeout must be 0 (wait forever) or a number of seconds" in one_error_line(proc.stderr)
