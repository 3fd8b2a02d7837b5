"""The Migrate state machine (template.yaml + statemachines/migrate.asl.json) executed in
in-process moto with functions/migrate/app.py wired in (pgrunbook.localcloud), against real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.localcloud import LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer
from pgrunbook.sample import SAMPLE_MIGRATIONS, create_sample_database

DATABASES = ("applies", "blocked", "failing")


@pytest.fixture(scope="module")
def databases(pg_server: LocalServer) -> Iterator[dict[str, str]]:
    """One runbook-shaped database per test, all configured in one stack (the stack is slow to set up)."""
    urls = {name: create_sample_database(pg_server.url(), f"mig_{name}_{uuid.uuid4().hex[:6]}", users=20,
                                         jobs_per_user=1, events=20) for name in DATABASES}
    yield urls
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for url in urls.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(databases: dict[str, str]) -> Iterator[LocalCloud]:
    with LocalCloud([LocalDatabase(name, url) for name, url in databases.items()]) as local:
        yield local


class Run:
    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.bucket = cloud.bucket
        self.seen = len(cloud.notifications())

    def run(self, payload: dict[str, Any]) -> Any:
        self.seen = len(self.cloud.notifications())
        return self.cloud.run("MigrateStateMachine", payload)

    def notifications(self) -> list[tuple[str | None, str]]:
        return self.cloud.notifications()[self.seen:]


@pytest.fixture()
def cloud(stack: LocalCloud) -> Run:
    return Run(stack)


def upload(cloud: Run | LocalCloud, version: str, migrations: dict[str, str]) -> str:
    """Upload a release's migrations where the CI release step puts them; their s3:// prefix."""
    prefix = f"_releases/{version}/migrations"
    s3 = aws.client("s3")
    s3.put_object(Bucket=cloud.bucket, Key=f"{prefix}/migration_lock.toml", Body=b'provider = "postgresql"\n')
    for name, sql in migrations.items():
        s3.put_object(Bucket=cloud.bucket, Key=f"{prefix}/{name}/migration.sql", Body=sql.encode())
    return f"s3://{cloud.bucket}/{prefix}/"


def applied(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations "
                                           "WHERE finished_at IS NOT NULL ORDER BY started_at")]


def test_migrate_machine_applies_with_a_pre_migration_backup(cloud: Run, databases: dict[str, str]) -> None:
    uri = upload(cloud, "1.2.3", {**SAMPLE_MIGRATIONS,
                                  "20260201000000_note": 'ALTER TABLE "Job" ADD COLUMN "note" TEXT;\n'})
    sample_db = databases["applies"]
    ex = cloud.run({"database": "applies", "migrations": uri, "app_version": "1.2.3"})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.states_entered() == ["Init", "Plan", "AnythingPending", "Lint", "LintVerdict", "BackupWanted",
                                   "Backup", "Apply", "Status", "StatusVerdict", "NotifySuccess", "Succeeded"]
    assert applied(sample_db)[-1] == "20260201000000_note"
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=cloud.bucket).get("Contents", [])]
    assert any("/pre-migration/" in k and k.endswith(".manifest.json") for k in keys)
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook migrations applied" and "20260201000000_note" in message

    # a second run: nothing pending
    again = cloud.run({"database": "applies", "migrations": uri, "app_version": "1.2.3"})
    assert again.status == "SUCCEEDED" and "NotifyUpToDate" in again.states_entered()
    assert "Apply" not in again.states_entered()


def test_migrate_machine_lint_gate_blocks_and_notifies(cloud: Run, databases: dict[str, str]) -> None:
    uri = upload(cloud, "1.2.4", {**SAMPLE_MIGRATIONS,
                                  "20260201000000_index": 'CREATE INDEX "Job_title_idx" ON "Job"("title");\n'})
    sample_db = databases["blocked"]
    ex = cloud.run({"database": "blocked", "migrations": uri})
    assert ex.status == "FAILED" and ex.error == "MigrateFailed"
    entered = ex.states_entered()
    assert "LintBlocked" in entered and "Backup" not in entered and "Apply" not in entered
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook migrate FAILED"
    assert "LintBlocked" in message and "index-not-concurrent" in message and "CONCURRENTLY" in message
    assert applied(sample_db) == list(SAMPLE_MIGRATIONS)


def test_migrate_machine_names_the_failing_migration(cloud: Run, databases: dict[str, str]) -> None:
    uri = upload(cloud, "1.2.5", {**SAMPLE_MIGRATIONS,
                                  "20260201000000_bad": 'ALTER TABLE "Nope" ADD COLUMN x TEXT;\n'})
    ex = cloud.run({"database": "failing", "migrations": uri, "skip_backup": True, "reason": "staging refresh"})
    assert ex.status == "FAILED"
    assert "Backup" not in ex.states_entered() and "Apply" in ex.states_entered()
    ((_, message),) = cloud.notifications()
    assert "MigrationFailed" in message and "20260201000000_bad" in message and "statement 1" in message

    # a skipped backup needs a reason: refused at Plan
    bad = cloud.run({"database": "failing", "migrations": uri, "skip_backup": True})
    assert bad.status == "FAILED" and "Lint" not in bad.states_entered()
    assert any("needs a 'reason'" in m for _, m in cloud.notifications())
