"""`verify` at scale: parallel exact counts (--jobs), largest table first, per-table times, progress,
and a failing count that stops the others, on a real PostgreSQL.

- Generated (fixed seed): a database of random tables (count, sizes, names built from the hostile
  names of test_identifiers) backed up once; verifying it with 1 and 3 connections gives the serial
  count(*) of every table, calls the progress callback once per table, counts largest first, and
  still finds a deleted row.
- A count that fails (its backend terminated, or its table dropped while it waits) while the other
  connection waits behind a lock the test holds: verify ends (the waiting count is cancelled) with
  one failed check of one line, and leaves no connection behind.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from pgrunbook import dbinfo
from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.cli import main
from pgrunbook.errors import UsageError
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings
from pgrunbook.verify import VerifyOptions, VerifyReport, run_verify
from tests.fixtures.restore_helpers import reset_cli_logging
from tests.integration.test_identifiers import HAND_SCHEMAS, HAND_TABLES

SETTINGS = Settings.from_env({})
SEED = 14
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("DATABASE_URL", "NEW_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    yield
    reset_cli_logging()


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = f"{rng.choice(HAND_TABLES)}{rng.randrange(1000)}"
        if len(name.encode()) <= 63 and name not in taken:
            taken.add(name)
            return name


def build_random(url: str, rng: random.Random) -> dict[tuple[str, str], int]:
    """Random schemas and tables (hostile names), most small, a few of thousands of rows; ANALYZEd as a
    restore leaves them. {(schema, table): rows}"""
    schemas = ["public", *rng.sample(HAND_SCHEMAS, 3)]
    made: dict[tuple[str, str], int] = {}
    taken: dict[str, set[str]] = {s: set() for s in schemas}
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas[1:]:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for _ in range(rng.randint(18, 30)):
            schema = rng.choice(schemas)
            name = _name(rng, taken[schema])
            rows = rng.choice([0, 1, rng.randint(2, 300), rng.randint(2000, 30000)])
            rel = sql.Identifier(schema, name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int, v text)").format(rel))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, %s) g").format(rel),
                         (rows,))
            made[(schema, name)] = rows
        conn.execute("ANALYZE")
    return made


def new_db(server: LocalServer) -> str:
    name = f"vpar_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{server.url()[: -len('/postgres')]}/{name}"


def drop_db(server: LocalServer, url: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.rsplit("/", 1)[1])))


@pytest.fixture(scope="module")
def generated(pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[str, BackupResult, dict[tuple[str, str], int]]]:
    url = new_db(pg_server)
    try:
        made = build_random(url, random.Random(SEED))
        backup = run_backup(BackupOptions(database_url=url, dest=str(tmp_path_factory.mktemp("vpar")), jobs=1),
                            SETTINGS)
        yield url, backup, made
    finally:
        drop_db(pg_server, url)


def rows_checks(report: VerifyReport) -> dict[str, tuple[str, float | None]]:
    return {c.name.removeprefix("rows "): (c.actual, c.seconds) for c in report.checks if c.name.startswith("rows ")}


@pytest.mark.parametrize("jobs", [1, 3])
def test_parallel_counts_equal_serial_counts(jobs: int,
                                             generated: tuple[str, BackupResult, dict[tuple[str, str], int]]) -> None:
    url, backup, made = generated
    with psycopg.connect(url, autocommit=True) as conn:
        tables = dbinfo.user_tables(conn)
        serial = {dbinfo.display_name(t.schema, t.name): n for t, n in dbinfo.exact_counts(conn, tables).items()}
        pages = {dbinfo.display_name(str(s), str(n)): int(p) for s, n, p in conn.execute(
            "SELECT n.nspname, c.relname, c.relpages FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = ANY(%s)", ([t.oid for t in tables],)).fetchall()}
    assert sorted(serial.values()) == sorted(made.values()) and len(serial) == len(made)
    calls: list[tuple[int, int, str, float]] = []

    report = run_verify(VerifyOptions(database_url=url, manifest=backup.archive, jobs=jobs), SETTINGS,
                        on_progress=lambda *a: calls.append(a))

    assert report.ok, report.text()
    counted = rows_checks(report)
    assert {k: int(v[0]) for k, v in counted.items()} == serial
    assert all(sec is not None and sec >= 0 for _, sec in counted.values())
    assert report.jobs == jobs and sorted(t.table for t in report.table_times) == sorted(serial)
    assert [t.seconds for t in report.table_times] == sorted((t.seconds for t in report.table_times), reverse=True)
    # the callback: once per table, done 1..n, in the calling thread
    assert [c[0] for c in calls] == list(range(1, len(serial) + 1))
    assert {c[1] for c in calls} == {len(serial)} and sorted(c[2] for c in calls) == sorted(serial)
    if jobs == 1:  # one connection finishes tables in the order it starts them: largest first
        sizes = [pages[c[2]] for c in calls]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    out = report.to_dict()
    assert out["counts"]["jobs"] == jobs and out["counts"]["tables"] == len(serial)
    assert [s["table"] for s in out["counts"]["slowest"]] == [t.table for t in report.table_times[:20]]
    assert all("seconds" in c for c in out["checks"] if c["check"].startswith("rows "))
    assert f"row counts: {len(serial)} tables" in report.text()


def test_parallel_verify_finds_a_deleted_row(generated: tuple[str, BackupResult, dict[tuple[str, str], int]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Given the generated database with one row of a randomly chosen non-empty table deleted
    url, backup, made = generated
    schema, name = random.Random(SEED + 1).choice(sorted(k for k, n in made.items() if n))
    rel = sql.Identifier(schema, name)
    with psycopg.connect(url, autocommit=True) as conn:
        gone = conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT min(ctid) FROM {}) RETURNING id, v").format(
            rel, rel)).fetchone()
    try:
        # When verified over three connections from the CLI, as JSON
        rc = main(["verify", "--database-url", url, "--manifest", backup.archive, "--jobs", "3", "--json"])
        # Then exit 1, one JSON object, its one failure that table's count
        out = json.loads(capsys.readouterr().out)
        key = dbinfo.display_name(schema, name)
        assert rc == 1 and out["counts"]["jobs"] == 3
        assert out["failures"] == [f"rows {key}: expected {made[(schema, name)]}, actual {made[(schema, name)] - 1}"]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(rel), gone)


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_below_one_is_a_usage_error(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    # from the CLI: one line, exit 2, before anything connects or any progress is shown
    with pytest.raises(SystemExit) as done:
        main(["verify", "--database-url", "postgresql://nobody@127.0.0.1:9/none", "--jobs", jobs])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1 and "--jobs" in err
    assert ("must be a whole number" if jobs == "two" else f"must be at least 1, not {jobs}") in err
    # and from the API (the drill, the Lambda's event): a UsageError
    if jobs != "two":
        with pytest.raises(UsageError, match="--jobs must be at least 1"):
            run_verify(VerifyOptions(database_url="postgresql://nobody@127.0.0.1:9/none", jobs=int(jobs)), SETTINGS)


def _verify_backends(admin: psycopg.Connection[Any], dbname: str, *, waiting: bool) -> list[int]:
    """pids of verify's connections to `dbname` (waiting: only those running a statement that waits on a lock)."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgrunbook-verify'"
    if waiting:
        query += " AND state = 'active' AND wait_event_type = 'Lock'"
    return [int(r[0]) for r in admin.execute(query, (dbname,)).fetchall()]


def _poll(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("failure", ["terminated", "dropped"])
def test_a_failed_count_stops_the_others(failure: str, pg_server: LocalServer, tmp_path: Path) -> None:
    # Given a database whose two largest tables are locked by the test, and its manifest
    url = new_db(pg_server)
    dbname = url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for name, rows in (("big", 3000), ("bigger", 6000), ("small", 3), ("tiny", 1)):
                conn.execute(sql.SQL("CREATE TABLE {} AS SELECT g AS id FROM generate_series(1, %s) g").format(
                    sql.Identifier(name)), (rows,))
            conn.execute("ANALYZE")
        backup = run_backup(BackupOptions(database_url=url, dest=str(tmp_path), jobs=1), SETTINGS)
        with psycopg.connect(url) as lock_a, psycopg.connect(url) as lock_b, \
                psycopg.connect(pg_server.url(), autocommit=True) as admin:
            lock_a.execute('LOCK TABLE "bigger" IN ACCESS EXCLUSIVE MODE')
            lock_b.execute('LOCK TABLE "big" IN ACCESS EXCLUSIVE MODE')
            result: list[VerifyReport] = []
            runner = threading.Thread(target=lambda: result.append(run_verify(
                VerifyOptions(database_url=url, manifest=backup.archive, jobs=2), SETTINGS)), daemon=True)
            # When verify's two connections wait on them and one count fails
            runner.start()
            pids = _poll("both counts waiting", lambda: [p for p in [_verify_backends(admin, dbname, waiting=True)]
                                                         if len(p) == 2])[0]
            if failure == "terminated":
                admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            else:
                lock_a.execute('DROP TABLE "bigger"')
                lock_a.commit()
            # Then verify returns while "big" is still locked: the other count was cancelled
            runner.join(timeout=60)
            assert not runner.is_alive(), "verify did not stop its other count"
            report = result[0]
            assert not report.ok
            [failed] = report.failures
            assert failed.name == "row counts" and failed.actual == "error"
            assert failed.detail.startswith("counting ") and "\n" not in failed.detail
            assert ("terminat" in failed.detail) if failure == "terminated" else ("bigger" in failed.detail)
            assert not [c for c in report.checks if c.name.startswith("rows ")]
            # and no connection of verify is left
            _poll("verify's connections closed", lambda: not _verify_backends(admin, dbname, waiting=False) or None)
    finally:
        drop_db(pg_server, url)
