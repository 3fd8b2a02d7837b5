"""Provisioner adapters that need no PostgreSQL: `rds` on moto's in-process mock, the factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import PgrunbookError, UsageError
from pgrunbook.provision import get_provisioner
from pgrunbook.provision.base import unique_name
from pgrunbook.provision.rds import POLL_SECONDS, RDS_RESTORE_PARAMETERS, RdsProvisioner, RdsSettings
from pgrunbook.settings import Settings

ENV = {"PGRUNBOOK_RDS_INSTANCE_CLASS": "db.r6g.large", "PGRUNBOOK_RDS_ENGINE_VERSION": "17.4",
       "PGRUNBOOK_RDS_SECURITY_GROUP_IDS": "sg-1, sg-2", "PGRUNBOOK_RDS_KMS_KEY_ID": "alias/backups",
       "PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP": "pg-restore-tuned",
       "PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP": "pg-prod",
       "PGRUNBOOK_RDS_STORAGE_GB": "50", "PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS": "14"}


@pytest.fixture()
def rds(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        client = aws.client("rds")
        for name in ("pg-restore-tuned", "pg-prod"):
            client.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily="postgres17",
                                             Description=name)
        yield client
    aws.reset_clients()


def test_settings_from_env() -> None:
    s = RdsSettings.from_env(ENV)
    assert s.instance_class == "db.r6g.large" and s.security_group_ids == ("sg-1", "sg-2") and s.storage_gb == 50
    with pytest.raises(UsageError, match="STORAGE_GB"):
        RdsSettings.from_env({"PGRUNBOOK_RDS_STORAGE_GB": "lots"})


def test_instance_arguments_are_restore_tuned() -> None:
    args = RdsProvisioner(RdsSettings.from_env(ENV)).instance_arguments("i-1", database="app", dbname="app",
                                                                        execution=None)
    assert args["BackupRetentionPeriod"] == 0 and args["MultiAZ"] is False
    assert args["DBParameterGroupName"] == "pg-restore-tuned"
    assert args["StorageEncrypted"] is True and args["KmsKeyId"] == "alias/backups"
    assert args["VpcSecurityGroupIds"] == ["sg-1", "sg-2"] and args["EngineVersion"] == "17.4"


def test_rds_create_reset_destroy(rds: Any) -> None:
    polls: list[float] = []  # moto applies a change at once: the provisioner's next poll finds it done
    provisioner = RdsProvisioner(RdsSettings.from_env(ENV), sleep=polls.append)
    # create: a new instance, waited for, its URL built from the endpoint and its RDS-managed secret
    target = provisioner.create("app")
    desc = rds.describe_db_instances(DBInstanceIdentifier=target.name)["DBInstances"][0]
    assert target.name.startswith("pgrunbook-drill-")
    assert desc["DBInstanceClass"] == "db.r6g.large" and desc["BackupRetentionPeriod"] == 0
    assert desc["DBParameterGroups"][0]["DBParameterGroupName"] == "pg-restore-tuned"
    url = DatabaseUrl.parse(target.url)
    assert url.host == desc["Endpoint"]["Address"] and url.dbname == "app" and url.password
    assert url.params["sslmode"] == "require"
    assert url.password not in str(target.to_dict())
    # reset to production: parameter group and backups
    provisioner.reset_to_production(target)
    desc = rds.describe_db_instances(DBInstanceIdentifier=target.name)["DBInstances"][0]
    assert desc["DBParameterGroups"][0]["DBParameterGroupName"] == "pg-prod"
    assert desc["BackupRetentionPeriod"] == 14
    assert target.details["settings"] == "production"
    assert polls == [POLL_SECONDS]  # the CLI waited by polling the same non-blocking step the state machine polls
    # destroy: gone
    provisioner.destroy(target)
    assert rds.describe_db_instances()["DBInstances"] == []


def test_rds_create_failure_is_one_line(rds: Any) -> None:
    provisioner = RdsProvisioner(RdsSettings(restore_parameter_group="no-such-group"))
    with pytest.raises(PgrunbookError, match="cannot create RDS instance"):
        provisioner.create("app")


def test_factory() -> None:
    settings = Settings()
    assert get_provisioner("database", server_url="postgresql://u@h/postgres", settings=settings).kind == "database"
    assert get_provisioner("local-instance", settings=settings).kind == "local-instance"
    assert get_provisioner("rds", settings=settings).kind == "rds"
    with pytest.raises(UsageError, match="--server-url"):
        get_provisioner("database", settings=settings)
    with pytest.raises(UsageError, match="unknown provisioner"):
        get_provisioner("floppy", settings=settings)


def test_unique_names_are_identifiers() -> None:
    names = {unique_name() for _ in range(20)}
    assert len(names) == 20 and all(n.isidentifier() and n.islower() for n in names)


def test_without_a_production_group_a_target_still_leaves_the_restore_tuned_one(rds: Any) -> None:
    """The CLI's reset used to change only the backups when no production group was configured: the
    instance kept autovacuum off and synchronous_commit off. Now it ends on RDS's default.postgres<major>."""
    rds.create_db_parameter_group(DBParameterGroupName="default.postgres17", DBParameterGroupFamily="postgres17",
                                  Description="RDS's own default group (moto has none)")
    provisioner = RdsProvisioner(RdsSettings(restore_parameter_group="pg-restore-tuned", engine_version="17.4"),
                                 sleep=lambda _: None)
    target = provisioner.create("app")
    provisioner.reset_to_production(target)
    desc = rds.describe_db_instances(DBInstanceIdentifier=target.name)["DBInstances"][0]
    assert [g["DBParameterGroupName"] for g in desc["DBParameterGroups"]] == ["default.postgres17"]
    assert desc["BackupRetentionPeriod"] == RdsSettings().backup_retention_days
    assert provisioner.finish_for_production(target.name)[0] == "ready"  # again: nothing left to do
    provisioner.destroy(target)


def test_the_template_restore_tuned_group_is_the_provisioners() -> None:
    """One set of restore-tuned values: template.yaml's RestoreTunedParameterGroup holds RDS_RESTORE_PARAMETERS
    (and forces SSL); the template passes it as the group a new target is created with."""
    from pgrunbook.localcloud import load_template

    template = load_template()
    params = dict(template["Resources"]["RestoreTunedParameterGroup"]["Properties"]["Parameters"])
    assert params.pop("rds.force_ssl") == "1"
    assert params == RDS_RESTORE_PARAMETERS
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert "RestoreTunedParameterGroup" in str(env["PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP"])
