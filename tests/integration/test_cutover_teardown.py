"""A `database` cutover candidate made production-ready before its approval, and what may delete it: real
PostgreSQL, the stack's target role a non-superuser (CREATEDB, allowed to SET ROLE to the source database's
owner without inheriting its rights), the hourly sweeper (functions/sweeper) on moto.

- the restore keeps the provisioner's labels (stack, execution) under its mark, so the sweeper still knows
  a restored target;
- production-ready gives the candidate the source's grants (PUBLIC's too), settings and owner and labels it
  `keep: candidate`; a retried step, finding it given away already, ends the same;
- a candidate whose execution ended without approval is dropped by the sweeper although the target role
  does not own it any more; an approved one (`keep: approved`) is left alone, and the teardown's own drop
  refuses it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from moto import mock_aws
from psycopg import sql

from pgrunbook import aws, operations
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.cutover.prepare import database_production_ready, mark_approved
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import ProvisionFailed
from pgrunbook.events import ProvisionEvent, TargetRef
from pgrunbook.lambda_support import LocalContext
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.pgserver import LocalServer
from pgrunbook.provision.database import database_labels
from pgrunbook.restore import RestoreOptions, run_restore
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV
from tests.integration.test_leaks import STACK, Executions


@pytest.fixture()
def restricted(sample_db: str, pg_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto (Step Functions executing); the source database owned by role own_*; the stack's target role
    tgt_* (CREATEDB, GRANT own_* WITH INHERIT FALSE, SET TRUE) in the entry's target_secret_arn."""
    tag = uuid.uuid4().hex[:6]
    own, tgt, password = f"own_{tag}", f"tgt_{tag}", uuid.uuid4().hex
    source = DatabaseUrl.parse(sample_db)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN; CREATE ROLE {} LOGIN CREATEDB PASSWORD {}; "
                             "GRANT {} TO {} WITH INHERIT FALSE, SET TRUE; ALTER DATABASE {} OWNER TO {}; "
                             "REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(own), sql.Identifier(tgt), sql.Literal(password), sql.Identifier(own), sql.Identifier(tgt),
            sql.Identifier(source.dbname), sql.Identifier(own), sql.Identifier(source.dbname)))
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            aws.reset_clients()
            sm = aws.client("secretsmanager")
            src = sm.create_secret(Name="app-db", SecretString=json.dumps(source.to_secret()))["ARN"]
            target_url = DatabaseUrl.parse(pg_server.url(source.dbname, user=tgt, password=password))
            tgt_arn = sm.create_secret(Name="app-targets", SecretString=json.dumps(target_url.to_secret()))["ARN"]
            monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "app", "secret_arn": src,
                                                                    "dbname": source.dbname,
                                                                    "target_secret_arn": tgt_arn}]))
            monkeypatch.setenv("PGRUNBOOK_SSLMODE", "prefer")
            monkeypatch.setenv("PGRUNBOOK_STACK", STACK)
            monkeypatch.setenv("PGRUNBOOK_TOPIC_ARN", aws.client("sns").create_topic(Name="pgrunbook")["TopicArn"])
            yield {"owner": own, "source": source, "target": target_url}
        aws.reset_clients()
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) IN (%s, %s) "
                                        "AND datname <> %s", (own, tgt, source.dbname)).fetchall():
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}; DROP ROLE {}; DROP ROLE {}").format(
                sql.Identifier(source.dbname), sql.Identifier(pg_server.superuser), sql.Identifier(tgt),
                sql.Identifier(own)))


def candidate(env: dict[str, Any], execution: str, archive: str) -> DatabaseUrl:
    """A database target of `execution` (the provisioner's labels), restored and made production-ready as
    the Restore machine does before the approval."""
    settings = Settings.from_env()
    made = operations.provision(ProvisionEvent.parse({"action": "create", "database": "app",
                                                      "spec": {"kind": "database"}, "execution": execution}), settings)
    url: DatabaseUrl = env["target"].with_dbname(made["name"])
    run_restore(RestoreOptions(file=archive, target_url=url.secret_conninfo(), force=True, skip_missing_roles=True),
                settings)
    for _ in range(2):  # a retried step finds the candidate given away already: the same outcome
        rows = database_production_ready(env["source"], url, source_name="app",
                                         execution=execution.rsplit(":", 1)[-1])
        assert all(r.ok for r in rows), rows
    assert {r.name: r.actual for r in rows}["database grants as on the source"] == "PUBLIC:CONNECT"
    return url


def labels(url: DatabaseUrl) -> dict[str, str]:
    with psycopg.connect(url.with_dbname("postgres").secret_conninfo(), autocommit=True) as conn:
        return database_labels(conn, url.dbname)


def test_the_sweeper_drops_an_unapproved_production_ready_candidate_whatever_its_owner_and_keeps_an_approved_one(
        restricted: dict[str, Any], pg_server: LocalServer, tmp_path: Path) -> None:
    settings = Settings.from_env()
    archive = run_backup(BackupOptions(database_url=restricted["source"].secret_conninfo(), dest=str(tmp_path),
                                       jobs=1), settings).archive
    ex = Executions()
    rejected_run = ex.settled(ex.start("cutover", fail=True), "FAILED")  # rejected, its teardown failed
    approved_run = ex.settled(ex.start("cutover", fail=True), "FAILED")  # approved, rolled back: kept
    rejected = candidate(restricted, rejected_run, archive)
    approved = candidate(restricted, approved_run, archive)
    mark_approved({"kind": "database"}, approved)
    for url, run, keep in ((rejected, rejected_run, "candidate"), (approved, approved_run, "approved")):
        found = labels(url)  # the provisioner's labels survived the restore's mark; the owner is the source's
        assert (found["stack"], found["execution"], found["keep"]) == (STACK, run, keep), found
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        owners: dict[str, str] = dict(conn.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN (%s, %s)",
            (rejected.dbname, approved.dbname)).fetchall())
    assert owners == {rejected.dbname: restricted["owner"], approved.dbname: restricted["owner"]}

    out = load_handler(handler_path("SweeperFunction"))({"action": "sweep"}, LocalContext())

    assert [(d["name"], d["why"]) for d in out["deleted"]] == [(rejected.dbname, "execution failed")]
    assert out["failed"] == [] and {k["name"]: k["why"] for k in out["kept"]} == {
        approved.dbname: "tagged pgrunbook:keep"}
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        left = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert rejected.dbname not in left and approved.dbname in left
    with pytest.raises(ProvisionFailed, match="is kept \\(label keep=approved\\): not dropped"):
        operations.provision(ProvisionEvent(action="delete", target=TargetRef(
            kind="database", name=approved.dbname, dbname=approved.dbname, server="app")), settings)
