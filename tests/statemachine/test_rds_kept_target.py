"""RDS restore targets through the real Restore machine (template.yaml + restore.asl.json, the functions
in-process): a target kept by an approved cutover ends with the production parameter group and settings
(autovacuum on, synchronous_commit on, backups kept as configured); a drill's target is deleted.

RDS is moto, made to behave like RDS where it matters here (`FakeRds`): each new instance is a real
PostgreSQL server started with its parameter group's values; its managed master secret holds that
server's credentials; DBName is created; changing the parameter group leaves it "pending-reboot" until the
instance is rebooted, which restarts the server with the new group's values (moto reports every group
"in-sync" and applies nothing)."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.localcloud import REGION, LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer, free_port

ACCOUNT = "123456789012"
RESTORE_GROUP = "pgrunbook-restore-tuned"  # what the local runner gives for the template's RestoreTunedParameterGroup
PRODUCTION_GROUP = "pg-production"
RETENTION_DAYS = 5


def template_restore_parameters() -> dict[str, str]:
    from pgrunbook.localcloud import load_template

    props = load_template()["Resources"]["RestoreTunedParameterGroup"]["Properties"]
    return {str(k): str(v) for k, v in props["Parameters"].items()}


class FakeRds:
    """moto's RDS, with a real server behind every instance (see the module doc). The server, its
    credentials and the group it runs with ride on moto's instance object, so a rename keeps them."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgrb-rds-"))  # short: the servers' sockets live there
        self.servers: list[LocalServer] = []
        self.applied: list[tuple[str, str]] = []  # (instance, parameter group) each time a server took a group

    @staticmethod
    def backend() -> Any:
        from moto.rds.models import rds_backends

        return rds_backends[ACCOUNT][REGION]

    def server_settings(self, group: str) -> dict[str, str]:
        params = self.backend().db_parameter_groups[group.lower()].parameters
        values = {name: str(p.get("ParameterValue", p.get("parameter_value"))) for name, p in params.items()}
        return {k: v for k, v in values.items() if not k.startswith("rds.")}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.rds.models import DBInstance, MasterUserSecret, RDSBackend

        fake = self
        create, reboot, delete = (RDSBackend.create_db_instance, RDSBackend.reboot_db_instance,
                                  RDSBackend.delete_db_instance)

        def generate_secret_string(secret: Any) -> str:
            password = secrets.token_urlsafe(16)
            secret.resource.fake_credentials = (secret.resource.master_username, password)
            return json.dumps({"username": secret.resource.master_username, "password": password})

        def create_db_instance(backend: Any, db_kwargs: dict[str, Any]) -> Any:
            db: Any = create(backend, db_kwargs)
            group = str(db.db_parameter_group_name)
            server = LocalServer(data_dir=fake.root / f"i{len(fake.servers)}" / "data", port=free_port(),
                                 settings=fake.server_settings(group))
            server.init().start()
            fake.servers.append(server)
            db.fake_server, db.fake_group, db.port = server, group, server.port
            fake.applied.append((db.db_instance_identifier, group))
            user, password = db.fake_credentials
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(f"CREATE ROLE \"{user}\" LOGIN SUPERUSER PASSWORD '{password}'")
                if db.db_name:
                    conn.execute(f'CREATE DATABASE "{db.db_name}"')
            return db

        def reboot_db_instance(backend: Any, db_instance_identifier: str) -> Any:
            db: Any = reboot(backend, db_instance_identifier)
            db.fake_group = str(db.db_parameter_group_name)
            db.fake_server.restart(fake.server_settings(db.fake_group))
            fake.applied.append((db.db_instance_identifier, db.fake_group))
            return db

        def delete_db_instance(backend: Any, db_instance_identifier: str, *args: Any, **kwargs: Any) -> Any:
            db: Any = delete(backend, db_instance_identifier, *args, **kwargs)
            db.fake_server.destroy()
            fake.servers.remove(db.fake_server)
            return db

        def status_list(db: Any) -> Any:
            groups = db.db_parameter_groups()
            for group in groups:
                in_sync = getattr(db, "fake_group", "").lower() == group.name
                group.ParameterApplyStatus = "in-sync" if in_sync else "pending-reboot"
            return groups

        monkeypatch.setattr(MasterUserSecret, "_generate_secret_string", generate_secret_string)
        monkeypatch.setattr(RDSBackend, "create_db_instance", create_db_instance)
        monkeypatch.setattr(RDSBackend, "reboot_db_instance", reboot_db_instance)
        monkeypatch.setattr(RDSBackend, "delete_db_instance", delete_db_instance)
        monkeypatch.setattr(DBInstance, "address", property(lambda db: "127.0.0.1"))
        monkeypatch.setattr(DBInstance, "db_parameter_group_status_list", property(status_list))

    def close(self) -> None:
        for server in self.servers:
            server.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, ident: str, dbname: str) -> str:
        """The instance's database as its master user (its server, whatever the instance is called now)."""
        db = self.backend().databases[ident]
        user, password = db.fake_credentials
        return str(db.fake_server.url(dbname, user=user, password=password))


@pytest.fixture()
def rds_cloud(app_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalCloud, FakeRds]]:
    """The stack with RDS targets enabled (a DB subnet group), its restore-tuned group as the template
    defines it, an operator's production group, and 5 days of backups for a kept target."""
    fake = FakeRds()
    parameters = {"RdsSubnetGroupName": "pgrunbook-targets", "RdsProductionParameterGroup": PRODUCTION_GROUP,
                  "RdsBackupRetentionDays": str(RETENTION_DAYS), "RdsEngineVersion": "18"}
    with LocalCloud([LocalDatabase("app", app_db)], parameters=parameters,
                    env={"PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS": str(RETENTION_DAYS)}) as cloud:
        fake.install(monkeypatch)
        ec2, rds = aws.client("ec2"), aws.client("rds")
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
                   ["Subnet"]["SubnetId"] for i, z in enumerate("ab")]
        rds.create_db_subnet_group(DBSubnetGroupName="pgrunbook-targets", DBSubnetGroupDescription="targets",
                                   SubnetIds=subnets)
        for name, values in ((RESTORE_GROUP, template_restore_parameters()),
                             (PRODUCTION_GROUP, {"autovacuum": "1", "synchronous_commit": "on"})):
            rds.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily="postgres18",
                                          Description=name)
            rds.modify_db_parameter_group(DBParameterGroupName=name, Parameters=[
                {"ParameterName": k, "ParameterValue": v, "ApplyMethod": "pending-reboot"} for k, v in values.items()])
        try:
            yield cloud, fake
        finally:
            fake.close()


def backed_up(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)


def waiting_approval(cloud: LocalCloud, arn: str, timeout: float = 120.0) -> tuple[str, str]:
    """(task token, approval id) of the execution's RequestApproval, from its history (the SDK's view: as an
    operator with credentials could answer it)."""
    sfn = aws.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]:
            details = event.get("taskScheduledEventDetails") or {}
            if details.get("resource", "").endswith("waitForTaskToken"):
                payload = json.loads(details["parameters"])["Payload"]
                return str(payload["task_token"]), str(payload.get("approval_id") or "")
        status = sfn.describe_execution(executionArn=arn)["status"]
        assert status == "RUNNING", f"the execution ended ({status}) before asking for approval"
        time.sleep(0.2)
    raise AssertionError("no approval was requested in time")


def show(url: str, *names: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def test_an_approved_kept_target_ends_with_production_settings(rds_cloud: tuple[LocalCloud, FakeRds]) -> None:
    cloud, fake = rds_cloud
    backed_up(cloud)
    arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover", "target": {"kind": "rds"}})
    token, approval_id = waiting_approval(cloud, arn)
    cloud.send_task_success(token, {"decision": "approved", "approval_id": approval_id, "approver": "ops@example.com",
                                    "decided_at": "2026-12-01T12:00:00Z", "comment": "keep it"})
    ex = cloud.wait(arn)

    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    (inst,) = aws.client("rds").describe_db_instances()["DBInstances"]  # kept, whatever it is called now
    ident = inst["DBInstanceIdentifier"]
    assert fake.applied[0][1] == RESTORE_GROUP  # it was created (and loaded) restore-tuned
    assert [g["DBParameterGroupName"] for g in inst["DBParameterGroups"]] == [PRODUCTION_GROUP]
    assert [g["ParameterApplyStatus"] for g in inst["DBParameterGroups"]] == ["in-sync"]  # rebooted onto it
    assert inst["BackupRetentionPeriod"] == RETENTION_DAYS
    restored = fake.url(ident, inst["DBName"])
    assert show(restored, "autovacuum", "synchronous_commit") == {"autovacuum": "on", "synchronous_commit": "on"}
    with psycopg.connect(restored) as conn:  # the data is still there
        assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (200,)


def test_a_drill_target_is_deleted(rds_cloud: tuple[LocalCloud, FakeRds]) -> None:
    cloud, fake = rds_cloud
    backed_up(cloud)
    ex = cloud.run("RestoreStateMachine", {"database": "app", "mode": "drill", "target": {"kind": "rds"}})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.output["verify"]["ok"] is True and ex.output["teardown"]["status"] == "deleted"
    (created,) = ex.task_outputs("Provision")
    assert created["target"]["kind"] == "rds"
    assert aws.client("rds").describe_db_instances()["DBInstances"] == []
    assert fake.servers == []

