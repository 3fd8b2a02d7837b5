"""Nothing leaks: database targets named after their execution (a retried create finds its own database,
a name that is someone else's database is refused and never dropped), and the hourly sweeper
(functions/sweeper) on moto (RDS, Step Functions executing real state machines, Secrets Manager, SNS)
and the real PostgreSQL server: it deletes this stack's targets whose execution is no longer running
and which are not kept, reports what it deleted, and leaves the others."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from moto import mock_aws

from pgrunbook import aws, operations
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import TargetNotOwned
from pgrunbook.events import ProvisionEvent
from pgrunbook.lambda_support import LocalContext
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.pgserver import LocalServer
from pgrunbook.provision.database import DatabaseProvisioner
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV

ACCOUNT, REGION, STACK = "123456789012", "us-east-1", "prod"
# a stand-in for the Restore machine: runs for `wait` seconds, then fails or succeeds
MACHINE = {"StartAt": "Work", "States": {
    "Work": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "Outcome"},
    "Outcome": {"Type": "Choice", "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "Failed"}],
                "Default": "Done"},
    "Failed": {"Type": "Fail", "Error": "RestoreFailed"},
    "Done": {"Type": "Succeed"}}}


def databases(server: LocalServer) -> set[str]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgrunbook%'")}


def drop(server: LocalServer, *names: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def stack(app_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto (Step Functions executing), the app database's secret and configuration as the template sets them."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        aws.reset_clients()
        secret = aws.client("secretsmanager").create_secret(
            Name="app-db", SecretString=json.dumps(DatabaseUrl.parse(app_db).to_secret()))["ARN"]
        dbname = DatabaseUrl.parse(app_db).dbname
        monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "app", "secret_arn": secret, "dbname": dbname}]))
        monkeypatch.setenv("PGRUNBOOK_SSLMODE", "prefer")
        monkeypatch.setenv("PGRUNBOOK_STACK", STACK)
        monkeypatch.setenv("PGRUNBOOK_RDS_IDENTIFIER_PREFIX", "pgrb-4f1c2d3e")
        monkeypatch.setenv("PGRUNBOOK_RDS_TARGETS", "on")
        monkeypatch.setenv("PGRUNBOOK_TOPIC_ARN", aws.client("sns").create_topic(Name="pgrunbook")["TopicArn"])
        yield dbname
    aws.reset_clients()


def create_database_target(execution: str | None, **spec: Any) -> dict[str, Any]:
    ev = ProvisionEvent.parse({"action": "create", "database": "app", "spec": {"kind": "database", **spec},
                               "execution": execution})
    return operations.provision(ev, Settings.from_env())


def test_a_retried_create_finds_its_own_database(stack: str, pg_server: LocalServer) -> None:
    execution = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:Restore:{uuid.uuid4().hex}"
    first = create_database_target(execution)
    try:
        again = create_database_target(execution)
        assert again["name"] == first["name"] == operations.target_database_name(execution)
        assert [d for d in databases(pg_server) if d == first["name"]] == [first["name"]]
        other = create_database_target(execution + "-2")
        assert other["name"] != first["name"]
        drop(pg_server, other["name"])
    finally:
        drop(pg_server, first["name"])


def test_a_name_that_is_someone_elses_database_is_refused_and_never_dropped(stack: str,
                                                                          pg_server: LocalServer) -> None:
    """The source itself, or a target of another execution, named in the input (or a hash collision):
    neither restored into nor dropped by the teardown that follows the failed create."""
    execution = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:Restore:{uuid.uuid4().hex}"
    with pytest.raises(TargetNotOwned, match="not created by this execution"):
        create_database_target(execution, name=stack)  # the configured source database
    theirs = create_database_target(execution + "-theirs")["name"]
    try:
        with pytest.raises(TargetNotOwned):
            create_database_target(execution, name=theirs)
        with pytest.raises(TargetNotOwned):  # without an execution nothing is ever reused
            create_database_target(None, name=theirs)
        assert {stack, theirs} <= databases(pg_server) | {stack}
        with psycopg.connect(pg_server.url(stack)) as conn:
            assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (200,)
    finally:
        drop(pg_server, theirs)


class Executions:
    def __init__(self) -> None:
        self.sfn = aws.client("stepfunctions")
        self.machine = self.sfn.create_state_machine(name="RestoreStateMachine-prod", definition=json.dumps(MACHINE),
                                                     roleArn=f"arn:aws:iam::{ACCOUNT}:role/x")["stateMachineArn"]

    def start(self, mode: str = "drill", *, wait: int = 0, fail: bool = False) -> str:
        payload = json.dumps({"mode": mode, "wait": wait, "fail": fail})
        return str(self.sfn.start_execution(stateMachineArn=self.machine, name=uuid.uuid4().hex,
                                            input=payload)["executionArn"])

    def settled(self, arn: str, status: str) -> str:
        deadline = time.monotonic() + 30
        while (now := self.sfn.describe_execution(executionArn=arn)["status"]) != status:
            assert now == "RUNNING" and time.monotonic() < deadline, (arn, now)
            time.sleep(0.05)
        return arn


def rds_target(name: str, execution: str, stack: str = STACK, **extra: str) -> str:
    tags = {"pgrunbook:purpose": "restore-target", "pgrunbook:stack": stack, "pgrunbook:execution": execution, **extra}
    aws.client("rds").create_db_instance(DBInstanceIdentifier=name, Engine="postgres", DBInstanceClass="db.t4g.micro",
                                         AllocatedStorage=20, MasterUsername="pgrunbook", ManageMasterUserPassword=True,
                                         Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return name


def test_the_sweeper_deletes_what_outlived_its_execution_and_only_that(stack: str, pg_server: LocalServer) -> None:
    ex = Executions()
    running = ex.start(wait=3600)
    try:
        stopped = ex.start(wait=3600)
        ex.sfn.stop_execution(executionArn=stopped, error="Stopped", cause="by an operator")  # StopExecution
        failed = ex.settled(ex.start(fail=True), "FAILED")
        drilled = ex.settled(ex.start(), "SUCCEEDED")  # its teardown failed for good
        cutover = ex.settled(ex.start("cutover"), "SUCCEEDED")  # approved: the candidate is kept
        ex.settled(stopped, "ABORTED")
        forgotten = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:RestoreStateMachine-prod:expired-history"
        leaked = {rds_target("pgrb-4f1c2d3e-app-stopped", stopped), rds_target("pgrb-4f1c2d3e-app-failed", failed),
                  rds_target("pgrb-4f1c2d3e-app-drilled", drilled)}
        left = {rds_target("pgrb-4f1c2d3e-app-running", running), rds_target("pgrb-4f1c2d3e-app-cutover", cutover),
                rds_target("pgrb-4f1c2d3e-app-kept", failed, **{"pgrunbook:keep": "ops: keep for the audit"}),
                rds_target("pgrb-4f1c2d3e-app-expired", forgotten), rds_target("pgrb-4f1c2d3e-app-manual", "-"),
                rds_target("pgrb-other-app-stopped", stopped, stack="staging")}
        server = pg_server.url(stack)
        db_leaked = DatabaseProvisioner(server).create("app", name=operations.target_database_name(stopped),
                                                       labels={"stack": STACK, "execution": stopped}).name
        db_running = DatabaseProvisioner(server).create("app", name=operations.target_database_name(running),
                                                        labels={"stack": STACK, "execution": running}).name
        db_kept = DatabaseProvisioner(server).create("app", labels={"stack": STACK, "execution": failed,
                                                                    "keep": "yes"}).name
        db_staging = DatabaseProvisioner(server).create("app", labels={"stack": "staging", "execution": stopped}).name
        sweeper = load_handler(handler_path("SweeperFunction"))

        from moto.sns.models import sns_backends

        (topic,) = sns_backends[ACCOUNT][REGION].topics.values()
        dry = sweeper({"action": "sweep", "dry_run": True}, LocalContext())
        assert {d["name"] for d in dry["deleted"]} == leaked | {db_leaked}
        assert {i["DBInstanceIdentifier"] for i in aws.client("rds").describe_db_instances()["DBInstances"]} \
            == leaked | left
        assert topic.sent_notifications == []  # a dry run deleted nothing: nothing announced

        out = sweeper({"action": "sweep"}, LocalContext())
        assert {d["name"] for d in out["deleted"]} == leaked | {db_leaked} and out["failed"] == []
        assert {i["DBInstanceIdentifier"] for i in aws.client("rds").describe_db_instances()["DBInstances"]} == left
        assert db_leaked not in databases(pg_server)
        assert {db_running, db_kept, db_staging} <= databases(pg_server)
        why = {k["name"]: k["why"] for k in out["kept"]}
        assert why["pgrb-4f1c2d3e-app-running"] == "its execution is still running"
        assert why["pgrb-4f1c2d3e-app-cutover"] == "kept: approved cutover candidate"
        assert why["pgrb-4f1c2d3e-app-kept"] == why[db_kept] == "tagged pgrunbook:keep"
        assert "decide by hand" in why["pgrb-4f1c2d3e-app-expired"]
        assert "pgrb-other-app-stopped" not in why and db_staging not in why  # another stack's: not even looked at
        # what it deleted reaches people: the topic, one line per target naming its execution
        ((_id, message, subject, _attrs, _group),) = topic.sent_notifications
        assert subject == "pgrunbook sweeper: 4 leaked target(s) deleted, 0 failed"
        for name in leaked | {db_leaked}:
            assert any(line.startswith("  deleted  ") and name in line for line in message.splitlines()), name
        assert f"(execution {stopped}: execution aborted)" in message
        # and again: nothing left to delete, nothing sent
        assert sweeper({"action": "sweep"}, LocalContext())["deleted"] == []
        assert len(topic.sent_notifications) == 1
    finally:
        ex.sfn.stop_execution(executionArn=running)
        drop(pg_server, *[d for d in databases(pg_server) if d.startswith("pgrunbook_drill_")])
