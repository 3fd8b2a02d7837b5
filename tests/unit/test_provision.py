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
from pgrunbook.provision.rds import RdsProvisioner, RdsSettings

ENV = {"PGRUNBOOK_RDS_INSTANCE_CLASS": "db.r6g.large", "PGRUNBOOK_RDS_ENGINE_VERSION": "17.4",
       "PGRUNBOOK_RDS_SECURITY_GROUPS": "sg-1, sg-2", "PGRUNBOOK_RDS_KMS_KEY_ID": "alias/backups",
       "PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP": "pg-restore-tuned", "PGRUNBOOK_RDS_PARAMETER_GROUP": "pg-prod",
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
    assert s.instance_class == "db.r6g.large" and s.security_groups == ("sg-1", "sg-2") and s.storage_gb == 50
    with pytest.raises(UsageError, match="STORAGE_GB"):
        RdsSettings.from_env({"PGRUNBOOK_RDS_STORAGE_GB": "lots"})


def test_instance_arguments_are_restore_tuned() -> None:
    args = RdsProvisioner(RdsSettings.from_env(ENV)).instance_arguments("i-1", "app", "pw")
    assert args["BackupRetentionPeriod"] == 0 and args["MultiAZ"] is False
    assert args["DBParameterGroupName"] == "pg-restore-tuned"
    assert args["StorageEncrypted"] is True and args["KmsKeyId"] == "alias/backups"
    assert args["VpcSecurityGroupIds"] == ["sg-1", "sg-2"] and args["EngineVersion"] == "17.4"


def test_rds_create_reset_destroy(rds: Any) -> None:
    provisioner = RdsProvisioner(RdsSettings.from_env(ENV))
    # create: a new instance, waited for, its URL built from the endpoint (password only in memory)
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
    # destroy: gone
    provisioner.destroy(target)
    assert rds.describe_db_instances()["DBInstances"] == []


def test_rds_create_failure_is_one_line(rds: Any) -> None:
    provisioner = RdsProvisioner(RdsSettings(restore_parameter_group="no-such-group"))
    with pytest.raises(PgrunbookError, match="cannot create RDS instance"):
        provisioner.create("app")


def test_factory() -> None:
    assert get_provisioner("database", server_url="postgresql://u@h/postgres").kind == "database"
    assert get_provisioner("local-instance").kind == "local-instance"
    with pytest.raises(UsageError, match="--server-url"):
        get_provisioner("database")
    with pytest.raises(UsageError, match="unknown provisioner"):
        get_provisioner("floppy")


def test_unique_names_are_identifiers() -> None:
    names = {unique_name() for _ in range(20)}
    assert len(names) == 20 and all(n.isidentifier() and n.islower() for n in names)
