"""The Restore machine with the roles docs/deploy.md recommends, on a real server with real roles:
backups through a read-only role (pg_read_all_data, no CREATEDB), drill targets created, loaded,
verified and dropped through the database's `target_secret_arn` (a role with CREATEDB only, not a
superuser). And a failed drill whose teardown fails too: the execution fails with the original error,
the report keeps it, the teardown failure is notified on its own, and the sweeper removes the target
once it can."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws, operations
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.lambda_support import LocalContext
from pgrunbook.localcloud import ACCOUNT, REGION, LocalCloud, LocalDatabase, handler_path, load_handler
from pgrunbook.pgserver import LocalServer
from pgrunbook.provision.database import DatabaseProvisioner


class Roles:
    def __init__(self, server: LocalServer, app_db: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server, self.dbname = server, DatabaseUrl.parse(app_db).dbname
        self.backup, self.drill = f"backup_ro_{tag}", f"drill_{tag}"
        self.passwords = {self.backup: secrets.token_urlsafe(12), self.drill: secrets.token_urlsafe(12)}
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.backup} LOGIN PASSWORD '{self.passwords[self.backup]}' "
                         "IN ROLE pg_read_all_data")  # the runbook's read-only backup role: no CREATEDB
            conn.execute(f"CREATE ROLE {self.drill} LOGIN PASSWORD '{self.passwords[self.drill]}' CREATEDB")

    def url(self, role: str, dbname: str | None = None) -> str:
        return self.server.url(dbname or self.dbname, user=role, password=self.passwords[role])

    def drop(self) -> None:
        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                                        "WHERE r.rolname = %s", (self.drill,)).fetchall():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f"DROP ROLE {self.backup}")
            conn.execute(f"DROP ROLE {self.drill}")


@pytest.fixture(scope="module")
def roles(pg_server: LocalServer, app_db: str) -> Iterator[Roles]:
    made = Roles(pg_server, app_db)
    yield made
    made.drop()


@pytest.fixture(scope="module")
def stack(roles: Roles) -> Iterator[LocalCloud]:
    """Database `app` configured with the read-only role's secret, and its target secret (the drill role)."""
    with LocalCloud([LocalDatabase("app", roles.url(roles.backup))]) as cloud:
        target = aws.client("secretsmanager").create_secret(
            Name=f"pgrunbook-local/app-target-{cloud.suffix}",
            SecretString=json.dumps(DatabaseUrl.parse(roles.url(roles.drill)).to_secret()))["ARN"]
        (entry,) = json.loads(os.environ["PGRUNBOOK_DATABASES"])
        cloud.databases_without_target = json.dumps([entry])  # type: ignore[attr-defined]
        cloud.databases_with_target = json.dumps([{**entry, "target_secret_arn": target}])  # type: ignore[attr-defined]
        os.environ["PGRUNBOOK_DATABASES"] = cloud.databases_with_target  # type: ignore[attr-defined]
        backup = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
        assert backup.status == "SUCCEEDED", (backup.error, backup.cause)  # pg_dump as the read-only role
        cloud.archive = backup.output["results"][0]["result"]["archive"]  # type: ignore[attr-defined]
        yield cloud  # LocalCloud restores PGRUNBOOK_DATABASES on exit


def drill_databases(server: LocalServer) -> set[str]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgrunbook_drill%'")}


def test_a_read_only_backup_role_drills_through_the_target_secret(stack: LocalCloud, roles: Roles,
                                                                  pg_server: LocalServer) -> None:
    before = drill_databases(pg_server)
    # without a target secret the drill creates its database with the backup's role: refused by the server
    os.environ["PGRUNBOOK_DATABASES"] = stack.databases_without_target  # type: ignore[attr-defined]
    try:
        refused = stack.run("RestoreStateMachine", {"database": "app", "backup": "latest", "mode": "drill"})
    finally:
        os.environ["PGRUNBOOK_DATABASES"] = stack.databases_with_target  # type: ignore[attr-defined]
    assert refused.status == "FAILED" and refused.error == "InsufficientPrivilege", (refused.error, refused.cause)
    assert "permission denied to create database" in (refused.cause or "")
    # with it: created, loaded, verified and dropped by the drill role; the source untouched
    ex = stack.run("RestoreStateMachine", {"database": "app", "backup": "latest", "mode": "drill"})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.output["verify"]["ok"] is True and ex.output["report"]["verified"] is True
    assert ex.output["teardown"]["status"] == "deleted"
    assert drill_databases(pg_server) == before
    with psycopg.connect(roles.url(roles.backup)) as conn:  # the backup role still reads, and writes nothing
        assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (200,)
        assert conn.execute("SELECT has_database_privilege(current_user, current_database(), 'CREATE'), "
                            "(SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user)").fetchone() \
            == (False, False)


def report(cloud: LocalCloud, arn: str) -> dict[str, Any]:
    s3 = aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cloud.bucket, Prefix="_reports/restore/app/")["Contents"]]
    found = [json.loads(s3.get_object(Bucket=cloud.bucket, Key=k)["Body"].read()) for k in keys]
    (mine,) = [r for r in found if r["execution"] == arn]
    return dict(mine)


def test_the_original_error_survives_a_failed_teardown(stack: LocalCloud, roles: Roles,
                                                       pg_server: LocalServer) -> None:
    """The restore fails (a corrupt archive) and so does the teardown: the drill role cannot drop a
    database a superuser is connected to (DROP DATABASE ... WITH (FORCE) may not end a superuser's session)."""
    archive_key = stack.archive[len(f"s3://{stack.bucket}/"):]  # type: ignore[attr-defined]
    s3 = aws.client("s3")
    good = s3.get_object(Bucket=stack.bucket, Key=archive_key)["Body"].read()
    s3.put_object(Bucket=stack.bucket, Key=archive_key, Body=b"not a backup" * 100)
    name = f"local-{uuid.uuid4().hex[:12]}"
    machine = stack.create_state_machine("RestoreStateMachine") if "RestoreStateMachine" not in stack.state_machines \
        else stack.state_machines["RestoreStateMachine"]
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{machine.rsplit(':', 1)[1]}:{name}"
    target = operations.target_database_name(arn)
    # the execution's target exists already (its first Provision attempt timed out after CREATE DATABASE),
    # and a superuser session is in it
    DatabaseProvisioner(roles.url(roles.drill)).create("app", name=target, labels={
        "stack": os.environ["PGRUNBOOK_STACK"], "execution": arn, "source": "app"})
    seen = len(stack.notifications())
    try:
        with psycopg.connect(pg_server.url(target), autocommit=True):
            started = aws.client("stepfunctions").start_execution(
                stateMachineArn=machine, name=name, input=json.dumps({"database": "app", "mode": "drill",
                                                                      "backup": stack.archive}))  # type: ignore[attr-defined]
            ex = stack.wait(started["executionArn"])
        assert ex.arn == arn
        (restore_failed,) = [e["lambdaFunctionFailedEventDetails"] for e in ex.history
                             if "lambdaFunctionFailedEventDetails" in e
                             and e["lambdaFunctionFailedEventDetails"]["error"] not in ("InsufficientPrivilege",)]
        original = restore_failed["error"]
        assert ex.status == "FAILED" and ex.error == original and original != "TeardownFailed", (ex.error, ex.cause)
        assert ex.states_entered()[-5:] == ["FailureTeardown", "DescribeTeardownError", "TeardownFailedNotify",
                                            "AfterTeardownFailed", "Failed"]
        rep = report(stack, arn)  # written before the teardown: the original error, one line
        assert rep["error"]["error"] == original and rep["verified"] is False
        notes = stack.notifications()[seen:]
        assert [s for s, _ in notes] == ["pgrunbook drill app: FAILED", "pgrunbook: restore target NOT deleted"]
        assert f"error: {original}: " in notes[0][1]
        assert target in notes[1][1] and "permission denied to terminate process" in notes[1][1]
        assert "Traceback" not in notes[1][1] and "hourly sweeper" in notes[1][1]
        assert target in drill_databases(pg_server)
    finally:
        s3.put_object(Bucket=stack.bucket, Key=archive_key, Body=good)
    # the superuser session is gone: the hourly sweeper removes the target (its execution has failed)
    swept = load_handler(handler_path("SweeperFunction"))({"action": "sweep"}, LocalContext())
    assert [d["name"] for d in swept["deleted"]] == [target] and swept["failed"] == []
    assert target not in drill_databases(pg_server)
