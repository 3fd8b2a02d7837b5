"""Routes by error name, on the real ASL (moto executing statemachines/*.asl.json with the real
handlers and a real PostgreSQL): a state machine sees an exception as its class name (errorType), so
the classes of pgrunbook.errors are what Retry/Catch route on.

- Backup and Migrate: LockTimeout (a table lock held past the backup's lock wait: nothing written) is
  retried once, five minutes later; a second LockTimeout fails that database / the run as before.
- Restore: a damaged archive is reported under its own name (ChecksumMismatch when its bytes are not
  the ones written, ArchiveCorrupt when they are but do not read — was the bare PgrunbookError),
  never retried (another attempt reads the same bytes), and the target is torn down.

moto sleeps a Retry's IntervalSeconds for real; the `retry_waits` fixture records the interval instead
(the route is the ASL's, only the five minutes are not spent) and lets the test act at that moment."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.localcloud import Execution, LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer
from pgrunbook.sample import SAMPLE_MIGRATIONS, create_sample_database
from tests.fixtures.processes import Locker
from tests.integration.test_migrate_statemachine import upload

LOCKED_TABLE = "User"


class RetryWaits:
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.on_wait: list[Callable[[], None]] = []

    def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)
        for hook in self.on_wait:
            hook()


@pytest.fixture()
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> RetryWaits:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    waits = RetryWaits()
    monkeypatch.setattr(retrier_decl, "time", waits)  # the module's only use of time is the retry's sleep
    return waits


@pytest.fixture()
def stack(pg_server: LocalServer) -> Iterator[tuple[LocalCloud, str]]:
    """One configured database `app` (a fresh runbook-shaped sample); backups wait 1 s for a lock."""
    name = f"routes_{uuid.uuid4().hex[:8]}"
    url = create_sample_database(pg_server.url(), name, users=20, jobs_per_user=1, events=20)
    try:
        with LocalCloud([LocalDatabase("app", url)], env={"PGRUNBOOK_LOCK_WAIT_TIMEOUT": "1"}) as cloud:
            yield cloud, url
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def failures(ex: Execution) -> list[str]:
    return [str(e["lambdaFunctionFailedEventDetails"]["error"]) for e in ex.history
            if "lambdaFunctionFailedEventDetails" in e]


def test_backup_retries_a_lock_timeout_once_later(stack: tuple[LocalCloud, str], retry_waits: RetryWaits) -> None:
    cloud, url = stack
    locker = Locker(url, LOCKED_TABLE, application="long-report")
    retry_waits.on_wait.append(locker.release)  # the long transaction ends while the machine waits
    try:
        ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    finally:
        locker.release()
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert failures(ex) == ["LockTimeout"] and retry_waits.seconds == [300]
    assert ex.states_entered().count("BackupOnLambda") == 1  # one state, two attempts
    (item,) = ex.output["results"]
    assert item["ok"] is True and "/manual/" in item["result"]["archive"]


def test_backup_fails_the_database_after_a_second_lock_timeout(stack: tuple[LocalCloud, str],
                                                               retry_waits: RetryWaits) -> None:
    cloud, url = stack
    locker = Locker(url, LOCKED_TABLE, application="long-report")
    try:
        ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    finally:
        locker.release()
    assert ex.status == "FAILED" and ex.error == "BackupsFailed", (ex.error, ex.cause)
    assert failures(ex) == ["LockTimeout", "LockTimeout"] and retry_waits.seconds == [300]
    assert "app: LockTimeout: " in (ex.cause or "") and f"pid {locker.pid}" in (ex.cause or "")
    (_, message), = cloud.notifications()
    assert "FAILED  app" in message


def test_migrate_retries_the_pre_migration_backup_after_a_lock_timeout(stack: tuple[LocalCloud, str],
                                                                      retry_waits: RetryWaits) -> None:
    cloud, url = stack
    uri = upload(cloud, "9.9.9", {**SAMPLE_MIGRATIONS,
                                  "20260301000000_note": 'ALTER TABLE "Job" ADD COLUMN "note" TEXT;\n'})
    locker = Locker(url, LOCKED_TABLE, application="long-report")
    retry_waits.on_wait.append(locker.release)
    try:
        ex = cloud.run("MigrateStateMachine", {"database": "app", "migrations": uri, "app_version": "9.9.9"})
    finally:
        locker.release()
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert failures(ex) == ["LockTimeout"] and retry_waits.seconds == [300]
    entered = ex.states_entered()
    assert entered[entered.index("Backup"):] == ["Backup", "Apply", "Status", "StatusVerdict", "NotifySuccess",
                                                 "Succeeded"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '20260301000000_note' "
                            "AND finished_at IS NOT NULL").fetchone() == (1,)


def _backed_up(cloud: LocalCloud) -> dict[str, Any]:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    result: dict[str, Any] = ex.output["results"][0]["result"]
    return result


def test_restore_reports_an_archive_that_does_not_read_as_archive_corrupt(stack: tuple[LocalCloud, str],
                                                                          pg_server: LocalServer) -> None:
    """The archive, its .sha256 and its manifest agree (it is what the backup wrote), but it is not a
    pg_dump archive: ArchiveCorrupt, one attempt, reported and torn down."""
    cloud, _ = stack
    archive = _backed_up(cloud)["archive"]
    key = archive[len(f"s3://{cloud.bucket}/"):]
    s3 = aws.client("s3")
    garbage = b"PGDMP but not really " * 500
    digest = hashlib.sha256(garbage).hexdigest()
    manifest = json.loads(s3.get_object(Bucket=cloud.bucket, Key=key + ".manifest.json")["Body"].read())
    manifest["archive"].update(sha256=digest, bytes=len(garbage))
    s3.put_object(Bucket=cloud.bucket, Key=key, Body=garbage)
    s3.put_object(Bucket=cloud.bucket, Key=key + ".sha256", Body=f"{digest}  {key.rsplit('/', 1)[1]}\n".encode())
    s3.put_object(Bucket=cloud.bucket, Key=key + ".manifest.json", Body=json.dumps(manifest).encode())
    seen = len(cloud.notifications())
    ex = cloud.run("RestoreStateMachine", {"database": "app", "backup": archive, "mode": "drill"})
    assert ex.status == "FAILED" and ex.error == "ArchiveCorrupt", (ex.error, ex.cause)
    assert "the archive does not read" in (ex.cause or "") and "\n" not in (ex.cause or "")
    assert failures(ex) == ["ArchiveCorrupt"]  # not retried
    entered = ex.states_entered()
    assert entered[entered.index("RestoreOnLambda"):] == ["RestoreOnLambda", "FailureReport", "FailureTeardown",
                                                          "Failed"]
    (target,) = [e for e in ex.task_outputs("Provision")]
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (target["target"]["dbname"],)).fetchone() == (0,)
    (subject, message), = cloud.notifications()[seen:]
    assert subject == "pgrunbook drill app: FAILED" and "error: ArchiveCorrupt: the archive does not read" in message
