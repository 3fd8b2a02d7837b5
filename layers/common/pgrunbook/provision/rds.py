"""`rds` adapter: a new RDS for PostgreSQL instance per drill, created restore-tuned, deleted after.

Restore-tuned on RDS means: no automated backups during the load (BackupRetentionPeriod=0, which
also keeps WAL archiving off), single-AZ, and a parameter group with autovacuum off, synchronous
commit off, large maintenance_work_mem and max_wal_size (RDS_RESTORE_PARAMETERS, to put in the
group named by PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP). Before verification the instance is switched
to the production parameter group and backup retention, rebooted, and ANALYZEd.

Settings (environment): PGRUNBOOK_RDS_INSTANCE_CLASS, _ENGINE_VERSION, _SUBNET_GROUP, _SECURITY_GROUPS
(comma separated), _KMS_KEY_ID, _RESTORE_PARAMETER_GROUP, _PARAMETER_GROUP, _STORAGE_GB, _STORAGE_TYPE,
_MASTER_USERNAME, _IDENTIFIER_PREFIX, _BACKUP_RETENTION_DAYS, _WAIT_MINUTES, _SSLMODE.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.conninfo import make_conninfo

from .. import aws
from ..dburl import DatabaseUrl
from ..errors import PgrunbookError, UsageError
from .base import ProvisionedTarget, analyze_database, create_roles

log = logging.getLogger(__name__)

# Values for a custom DB parameter group used during the load (units as RDS expects them).
RDS_RESTORE_PARAMETERS = {
    "autovacuum": "0",
    "synchronous_commit": "off",
    "maintenance_work_mem": "1048576",  # kB = 1 GB
    "max_wal_size": "8192",  # MB
    "checkpoint_timeout": "1800",  # s
}


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class RdsSettings:
    instance_class: str = "db.t4g.medium"
    engine_version: str | None = None
    subnet_group: str | None = None
    security_groups: tuple[str, ...] = ()
    kms_key_id: str | None = None
    restore_parameter_group: str | None = None
    parameter_group: str | None = None
    storage_gb: int = 20
    storage_type: str = "gp3"
    master_username: str = "pgrunbook"
    identifier_prefix: str = "pgrunbook-drill"
    backup_retention_days: int = 7
    wait_minutes: int = 60
    sslmode: str = "require"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RdsSettings:
        env = os.environ if env is None else env
        p = "PGRUNBOOK_RDS_"
        groups = tuple(g.strip() for g in (env.get(p + "SECURITY_GROUPS") or "").split(",") if g.strip())
        return cls(
            instance_class=env.get(p + "INSTANCE_CLASS") or cls.instance_class,
            engine_version=env.get(p + "ENGINE_VERSION") or None,
            subnet_group=env.get(p + "SUBNET_GROUP") or None,
            security_groups=groups,
            kms_key_id=env.get(p + "KMS_KEY_ID") or None,
            restore_parameter_group=env.get(p + "RESTORE_PARAMETER_GROUP") or None,
            parameter_group=env.get(p + "PARAMETER_GROUP") or None,
            storage_gb=_env_int(env, p + "STORAGE_GB", cls.storage_gb),
            storage_type=env.get(p + "STORAGE_TYPE") or cls.storage_type,
            master_username=env.get(p + "MASTER_USERNAME") or cls.master_username,
            identifier_prefix=env.get(p + "IDENTIFIER_PREFIX") or cls.identifier_prefix,
            backup_retention_days=_env_int(env, p + "BACKUP_RETENTION_DAYS", cls.backup_retention_days),
            wait_minutes=_env_int(env, p + "WAIT_MINUTES", cls.wait_minutes),
            sslmode=env.get(p + "SSLMODE") or cls.sslmode,
        )


def _password() -> str:
    # RDS forbids / @ " and spaces; token_urlsafe uses only A-Z a-z 0-9 - _
    return secrets.token_urlsafe(24)


class RdsProvisioner:
    kind = "rds"

    def __init__(self, settings: RdsSettings) -> None:
        self.settings = settings

    @property
    def rds(self) -> Any:
        return aws.client("rds")

    def _wait(self, waiter: str, identifier: str) -> None:
        delay = 15
        attempts = max(1, self.settings.wait_minutes * 60 // delay)
        try:
            self.rds.get_waiter(waiter).wait(DBInstanceIdentifier=identifier,
                                             WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        except Exception as exc:  # botocore WaiterError / ClientError
            raise PgrunbookError(f"RDS instance {identifier}: {waiter} not reached: {exc}") from None

    def instance_arguments(self, identifier: str, dbname: str, password: str) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {
            "DBInstanceIdentifier": identifier, "Engine": "postgres", "DBInstanceClass": s.instance_class,
            "DBName": dbname, "MasterUsername": s.master_username, "MasterUserPassword": password,
            "AllocatedStorage": s.storage_gb, "StorageType": s.storage_type, "StorageEncrypted": True,
            "BackupRetentionPeriod": 0,  # restore-tuned: no automated backups during the load
            "MultiAZ": False, "PubliclyAccessible": False, "DeletionProtection": False,
            "CopyTagsToSnapshot": True,
            "Tags": [{"Key": "pgrunbook:purpose", "Value": "restore-drill"},
                     {"Key": "pgrunbook:created", "Value": datetime.now(UTC).isoformat(timespec="seconds")}],
        }
        if s.engine_version:
            args["EngineVersion"] = s.engine_version
        if s.subnet_group:
            args["DBSubnetGroupName"] = s.subnet_group
        if s.security_groups:
            args["VpcSecurityGroupIds"] = list(s.security_groups)
        if s.kms_key_id:
            args["KmsKeyId"] = s.kms_key_id
        if s.restore_parameter_group:
            args["DBParameterGroupName"] = s.restore_parameter_group
        return args

    def create(self, dbname: str, roles: list[str] | None = None) -> ProvisionedTarget:
        identifier = f"{self.settings.identifier_prefix}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        password = _password()
        t0 = time.monotonic()
        try:
            self.rds.create_db_instance(**self.instance_arguments(identifier, dbname, password))
        except Exception as exc:
            raise PgrunbookError(f"cannot create RDS instance {identifier}: {exc}") from None
        log.info("RDS instance creating", extra={"instance": identifier})
        try:
            self._wait("db_instance_available", identifier)
            desc = self.describe(identifier)
            endpoint = desc.get("Endpoint") or {}
            url = make_conninfo("", host=str(endpoint.get("Address")), port=str(endpoint.get("Port", 5432)),
                                dbname=dbname, user=self.settings.master_username, password=password,
                                sslmode=self.settings.sslmode)
        except BaseException:
            self._delete(identifier)
            raise
        target = ProvisionedTarget(kind=self.kind, name=identifier, url=url,
                                   details={"instance": identifier, "arn": desc.get("DBInstanceArn"),
                                            "class": self.settings.instance_class,
                                            "engine_version": desc.get("EngineVersion"),
                                            "settings": "restore-tuned",
                                            "seconds": round(time.monotonic() - t0, 1)})
        if roles:
            try:
                target.details["roles_created"] = create_roles(DatabaseUrl.parse(url), roles)
            except PgrunbookError as exc:
                log.warning("could not create the backup's roles on the instance", extra={"reason": str(exc)})
        return target

    def describe(self, identifier: str) -> dict[str, Any]:
        found = self.rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
        return dict(found[0])

    def production_arguments(self, identifier: str) -> dict[str, Any]:
        """ModifyDBInstance arguments for production: parameter group and automated backups (PITR), now."""
        s = self.settings
        args: dict[str, Any] = {"DBInstanceIdentifier": identifier, "ApplyImmediately": True,
                                "BackupRetentionPeriod": s.backup_retention_days}
        if s.parameter_group:
            args["DBParameterGroupName"] = s.parameter_group
        return args

    def reset_to_production(self, target: ProvisionedTarget) -> None:
        """Production parameter group and automated backups, applied now (reboot for static parameters)."""
        s = self.settings
        self.rds.modify_db_instance(**self.production_arguments(target.name))
        self._wait("db_instance_available", target.name)
        if s.parameter_group:
            self.rds.reboot_db_instance(DBInstanceIdentifier=target.name)
            self._wait("db_instance_available", target.name)
        target.details["settings"] = "production"

    def prepare_for_verify(self, target: ProvisionedTarget) -> float:
        t0 = time.monotonic()
        self.reset_to_production(target)
        analyze_database(DatabaseUrl.parse(target.url))
        return time.monotonic() - t0

    def _delete(self, identifier: str) -> None:
        try:
            self.rds.delete_db_instance(DBInstanceIdentifier=identifier, SkipFinalSnapshot=True,
                                        DeleteAutomatedBackups=True)
        except Exception as exc:
            raise PgrunbookError(f"cannot delete RDS instance {identifier}: {exc}") from None
        self._wait("db_instance_deleted", identifier)

    def destroy(self, target: ProvisionedTarget) -> None:
        self._delete(target.name)
        log.info("RDS instance deleted", extra={"instance": target.name})
