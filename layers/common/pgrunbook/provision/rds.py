"""`rds` restore targets: ONE provisioner of new RDS for PostgreSQL instances, for the CLI and the state
machine alike.

Its steps each return at once (one AWS call or a few, no waiting):

  start(...)                 CreateDBInstance, restore-tuned: the restore parameter group
                             (PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP: RDS_RESTORE_PARAMETERS, autovacuum off,
                             synchronous_commit off, large maintenance_work_mem and max_wal_size), no automated
                             backups during the load (BackupRetentionPeriod 0, which also keeps WAL archiving
                             off), single-AZ, encrypted, the master password managed by RDS in Secrets Manager.
                             Named after the execution (target_identifier): a retried start finds its own
                             instance; a name taken by anything else is refused (TargetNotOwned).
  poll(ident, dbname)        creating | available | failed (every documented DBInstanceStatus, rds_target_state);
                             once available, the target database exists (RDS made it at create time when the
                             name is a valid DBName, else it is created here, once).
  finish_for_production(id)  modifying | ready: the production parameter group (PGRUNBOOK_RDS_PRODUCTION_
                             PARAMETER_GROUP, default default.postgres<major>: autovacuum on, synchronous_commit
                             on) and automated backups (PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS), applied now, with a
                             reboot when a static parameter waits for one. Stateless: every call looks at the
                             instance and does what is still missing.
  delete_instance(ident)     returns only once the instance is gone; raises TargetDeleting while RDS deletes it
                             (or cannot yet), so a caller retries; never reports done early. A cutover candidate
                             made production-ready before its approval (tag pgrunbook:keep=candidate) has
                             deletion protection: it is lifted first (ModifyDBInstance DeletionProtection=false),
                             then the instance deleted. Any other protected instance (approved, kept by hand) is
                             refused (ProvisionFailed), never unprotected.
  delete_target(ident, ...)  the teardown's delete: the instance under its name and, when a rename to its kept
                             name (kept_identifier) happened after the name was recorded, under that name.

The state machine calls one step per state and polls (operations.provision); the CLI (`create`,
`prepare_for_verify`, `reset_to_production`, `destroy`: the Provisioner port) calls the same steps in a
loop, sleeping between polls, for at most PGRUNBOOK_RDS_WAIT_MINUTES per step. A kept target (an approved
cutover) ends finished for production; a drill target is deleted.

Settings: settings.RdsSettings (the only reader of PGRUNBOOK_RDS_*), the stack's name (tags) and
PGRUNBOOK_SSLMODE (connections to the instance).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from .. import aws
from ..dburl import DatabaseUrl
from ..errors import ConfigError, PgrunbookError, ProvisionFailed, TargetDeleting, TargetNotOwned, TransientError
from ..settings import RdsSettings, Settings
from .base import ProvisionedTarget, analyze_database, create_roles

log = logging.getLogger(__name__)

__all__ = ["KEEP_APPROVED", "KEEP_CANDIDATE", "KEPT_PREFIX", "RDS_FAILED", "RDS_PENDING", "RDS_RESTORE_PARAMETERS",
           "RdsInstance", "RdsProvisioner", "RdsSettings", "delete_instance", "delete_target", "describe",
           "instance_tags", "kept_identifier", "rds_target_state", "target_identifier"]

# The restore-tuned parameter group's values (units as RDS expects them); template.yaml's
# RestoreTunedParameterGroup holds exactly these (tests/unit/test_provision.py).
RDS_RESTORE_PARAMETERS = {
    "autovacuum": "0",
    "synchronous_commit": "off",
    "maintenance_work_mem": "1048576",  # kB = 1 GB
    "max_wal_size": "8192",  # MB: 8 GB, a sixth of the default 50 GB of storage (WAL beyond it is not kept)
    "checkpoint_timeout": "1800",  # s
}

TAG_PURPOSE, TAG_STACK, TAG_EXECUTION, TAG_SOURCE, TAG_KEEP = (
    "pgrunbook:purpose", "pgrunbook:stack", "pgrunbook:execution", "pgrunbook:source-database", "pgrunbook:keep")
# pgrunbook:keep's values set by the cutover: "candidate" while the production-ready candidate waits for its
# approval (deletable by the teardown and the sweeper), "approved" once approved (kept); any other value (a person's
# note) keeps the instance too
KEEP_CANDIDATE, KEEP_APPROVED = "candidate", "approved"
KEPT_PREFIX = "pgrunbook-kept"  # a production-ready candidate's name: outside the drill targets' prefix

# RDS instance states (DBInstanceStatus) a new target can be in, by what they mean for a restore.
RDS_PENDING = frozenset({"creating", "backing-up", "modifying", "configuring-enhanced-monitoring",
                         "configuring-iam-database-auth", "configuring-log-exports", "rebooting", "renaming",
                         "resetting-master-credentials", "starting", "upgrading", "maintenance",
                         "storage-optimization", "storage-config-upgrade", "moving-to-vpc", "converting-to-vpc"})
RDS_FAILED = frozenset({"failed", "incompatible-create", "incompatible-parameters", "incompatible-network",
                        "incompatible-option-group", "incompatible-restore", "incompatible-credentials",
                        "inaccessible-encryption-credentials",
                        "inaccessible-encryption-credentials-recoverable", "restore-error", "storage-full",
                        "insufficient-capacity", "deleting", "stopping", "stopped", "delete-precheck"})

POLL_SECONDS = 15.0  # the CLI's pause between polls
_DBNAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # what RDS accepts as DBName, lower case (no folding questions)
_RESERVED_DBNAMES = frozenset({"postgres", "template0", "template1", "rdsadmin"})
T = TypeVar("T")


def rds_target_state(status: str) -> str:
    """available | creating | failed for a DBInstanceStatus; an unknown new state counts as pending
    (the caller's poll limit bounds the wait)."""
    if status == "available":
        return "available"
    if status in RDS_FAILED:
        return "failed"
    return "creating"


def target_identifier(database: str, execution: str | None, prefix: str) -> str:
    """An RDS instance identifier derived from the execution: a retried start of the same execution finds
    its own instance instead of starting a second one (without an execution: the time and a random tail).
    `<prefix>-<database>-<hash>`: the prefix (PGRUNBOOK_RDS_IDENTIFIER_PREFIX, `pgrb-<stack id>` in the
    template) scopes IAM to this stack's instances; letters, digits and single hyphens, at most 63
    characters, starting with a letter."""
    def clean(text: str) -> str:  # ASCII letters and digits, single hyphens (RDS refuses anything else)
        return "-".join(p for p in "".join(c if c.isascii() and c.isalnum() else "-" for c in text).split("-") if p)

    tail = (hashlib.sha256(execution.encode()).hexdigest()[:12] if execution
            else f"{datetime.now(UTC):%Y%m%d%H%M%S}{secrets.token_hex(2)}")
    head = clean(f"{prefix}-{clean(database.lower())[:20]}")
    if not head[:1].isalpha():
        head = f"t-{head}" if head else "t"
    return f"{head[:63 - len(tail) - 1].rstrip('-')}-{tail}"  # the execution's hash is never cut off


def kept_identifier(ident: str, prefix: str) -> str:
    """The name a cutover candidate `ident` gets when it is made production-ready: `pgrunbook-kept-` and
    the rest of its name after the stack's prefix (`<database>-<execution hash>`), so it is derived from
    `ident` alone (the teardown finds it from the name it recorded) and stays unique per execution. A kept
    name is its own kept name."""
    if ident.startswith(KEPT_PREFIX + "-"):
        return ident
    rest = ident[len(prefix) + 1:] if prefix and ident.startswith(prefix + "-") else ident
    room = 63 - len(KEPT_PREFIX) - 1
    return f"{KEPT_PREFIX}-{rest[-room:].lstrip('-')}"  # the execution's hash at the end is never cut off


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error(exc: Any, ident: str, doing: str) -> Exception:
    code = _code(exc)
    if code in ("Throttling", "ThrottlingException", "InternalFailure", "RequestLimitExceeded"):
        return TransientError(f"RDS {code} for {ident}")
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
    return ProvisionFailed(f"cannot {doing} RDS instance {ident}: {code} {message}".rstrip())


def _not_found(exc: Any) -> bool:
    return _code(exc) in ("DBInstanceNotFound", "DBInstanceNotFoundFault")


def describe(ident: str) -> dict[str, Any] | None:
    """The instance, or None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        return dict(aws.client("rds").describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0])
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise _error(exc, ident, "describe") from None


def instance_tags(inst: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in (inst or {}).get("TagList") or []}


def delete_instance(ident: str) -> None:
    """The one way an RDS target is deleted (the state machine's teardown, the sweeper, the CLI): returns
    only once the instance is gone; while RDS is still deleting it (or cannot delete it yet: creating,
    modifying, backing up) raises TargetDeleting, so the caller retries. Deletion protection is lifted
    only on a cutover candidate that was never approved (tag pgrunbook:keep=candidate); any other protected
    instance is a refusal for good (ProvisionFailed)."""
    from botocore.exceptions import ClientError

    inst = describe(ident)
    if inst is None:
        return
    status = str(inst.get("DBInstanceStatus"))
    if status != "deleting" and inst.get("DeletionProtection"):
        keep = instance_tags(inst).get(TAG_KEEP)
        if keep != KEEP_CANDIDATE:
            kept = f" and is kept ({TAG_KEEP}={keep})" if keep else ""
            raise ProvisionFailed(f"RDS instance {ident} has deletion protection{kept}: not deleted (RDS would refuse: "
                                  "lift the protection by hand if it really must go)")
        try:  # a candidate made production-ready before its approval: rejected, timed out or failed
            aws.client("rds").modify_db_instance(DBInstanceIdentifier=ident, DeletionProtection=False,
                                                 ApplyImmediately=True)
        except ClientError as exc:
            if _not_found(exc):
                return
            if _code(exc) != "InvalidDBInstanceState":
                raise _error(exc, ident, "lift the deletion protection of") from None
            raise TargetDeleting(f"RDS instance {ident} is {status}: its deletion protection cannot be lifted yet, "
                                 "retrying") from None
        log.info("RDS instance: deletion protection lifted (an unapproved cutover candidate)",
                 extra={"instance": ident})
    if status != "deleting":
        try:
            aws.client("rds").delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True,
                                                 DeleteAutomatedBackups=True)
        except ClientError as exc:
            if _not_found(exc):
                return
            if _code(exc) == "InvalidParameterCombination" and inst.get("DeletionProtection"):
                raise TargetDeleting(f"RDS instance {ident}: its deletion protection is still being lifted, "
                                     "retrying") from None
            if _code(exc) != "InvalidDBInstanceState":
                raise _error(exc, ident, "delete") from None
            raise TargetDeleting(f"RDS instance {ident} is {status}: it cannot be deleted yet, retrying") from None
        if describe(ident) is None:
            return
        status = "deleting"
    raise TargetDeleting(f"RDS instance {ident} is {status}: waiting until it is gone")


def delete_target(ident: str, *, prefix: str, stack: str) -> None:
    """The teardown of a restore target: `ident` (delete_instance), and its kept name when this stack's
    unapproved candidate is there (a rename to the kept name may have been accepted by RDS after `ident` was
    recorded: the step that asked for it failed or timed out)."""
    delete_instance(ident)
    kept = kept_identifier(ident, prefix)
    if kept == ident:
        return
    tags = instance_tags(describe(kept))
    if tags.get(TAG_STACK) == stack and tags.get(TAG_KEEP) == KEEP_CANDIDATE:
        delete_instance(kept)


@dataclass(frozen=True)
class RdsInstance:
    """What one poll saw: `state` is creating | available | failed; the rest is known once available."""

    identifier: str
    state: str
    status: str
    host: str | None = None
    port: int | None = None
    secret_arn: str | None = None
    engine_version: str | None = None
    arn: str | None = None


class RdsProvisioner:
    """New RDS instances as restore targets (see the module doc for the steps and the invariants)."""

    kind = "rds"

    def __init__(self, settings: RdsSettings, *, stack: str = "local", sslmode: str = "require",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.stack = stack
        self.sslmode = sslmode
        self._sleep = sleep

    @classmethod
    def of(cls, settings: Settings) -> RdsProvisioner:
        return cls(settings.rds, stack=settings.stack.name, sslmode=settings.sslmode)

    @property
    def rds(self) -> Any:
        return aws.client("rds")

    # ------------------------------------------------------------------ the steps
    def identifier(self, database: str, execution: str | None, name: str | None = None) -> str:
        return name or target_identifier(database, execution, self.settings.identifier_prefix)

    def instance_arguments(self, ident: str, *, database: str, dbname: str, execution: str | None,
                           instance_class: str | None = None, storage_gb: int | None = None) -> dict[str, Any]:
        """CreateDBInstance's arguments: restore-tuned, tagged with who made it and why."""
        s = self.settings
        args: dict[str, Any] = {
            "DBInstanceIdentifier": ident, "Engine": "postgres", "DBInstanceClass": instance_class or s.instance_class,
            "AllocatedStorage": storage_gb or s.storage_gb, "StorageType": s.storage_type,
            "MasterUsername": s.master_username, "ManageMasterUserPassword": True,
            "BackupRetentionPeriod": 0,  # restore-tuned: no automated backups (nor WAL archiving) during the load
            "MultiAZ": False, "PubliclyAccessible": False, "StorageEncrypted": True, "CopyTagsToSnapshot": False,
            "DeletionProtection": False,
            "Tags": [{"Key": TAG_PURPOSE, "Value": "restore-target"},
                     {"Key": TAG_STACK, "Value": self.stack},
                     {"Key": TAG_SOURCE, "Value": database[:250]},
                     {"Key": TAG_EXECUTION, "Value": (execution or "-")[:256]}],
        }
        if _DBNAME.fullmatch(dbname) and dbname not in _RESERVED_DBNAMES:
            args["DBName"] = dbname  # RDS creates it; any other name is created at the first available poll
        optional = {"EngineVersion": s.engine_version, "DBSubnetGroupName": s.subnet_group,
                    "DBParameterGroupName": s.restore_parameter_group, "KmsKeyId": s.kms_key_id}
        args.update({k: v for k, v in optional.items() if v})
        if s.security_group_ids:
            args["VpcSecurityGroupIds"] = list(s.security_group_ids)
        return args

    def start(self, ident: str, *, database: str, dbname: str, execution: str | None,
              instance_class: str | None = None, storage_gb: int | None = None) -> None:
        """Start creating the instance (returns at once). Idempotent per execution: a retry finds the
        instance its first attempt started; an instance of that name made by anyone else is refused."""
        from botocore.exceptions import ClientError

        if not self.settings.enabled:
            raise ConfigError("RDS restore targets are not enabled in this stack: set RdsSubnetGroupName "
                              "(template parameter; PGRUNBOOK_RDS_TARGETS) or use a target of kind 'database'")
        args = self.instance_arguments(ident, database=database, dbname=dbname, execution=execution,
                                       instance_class=instance_class, storage_gb=storage_gb)
        try:
            self.rds.create_db_instance(**args)
        except ClientError as exc:
            if _code(exc) not in ("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"):
                raise _error(exc, ident, "create") from None
            tags = instance_tags(describe(ident))
            if execution is None or tags.get(TAG_EXECUTION) != execution[:256]:
                raise TargetNotOwned(f"RDS instance {ident} already exists and was not created by this execution: "
                                     "refusing to use or touch it") from None
            log.info("RDS target already created by an earlier attempt of this execution", extra={"instance": ident})
            return
        log.info("RDS instance creating", extra={"instance": ident})

    def poll(self, ident: str, dbname: str) -> RdsInstance:
        """Where the instance is. Once available its target database exists (created here when RDS did not)."""
        inst = describe(ident)
        if inst is None:
            raise ProvisionFailed(f"RDS instance {ident} does not exist (deleted while it was being created?)")
        status = str(inst.get("DBInstanceStatus"))
        state = rds_target_state(status)
        if state != "available":
            return RdsInstance(ident, state, status)
        endpoint = inst.get("Endpoint") or {}
        secret_arn = (inst.get("MasterUserSecret") or {}).get("SecretArn")
        if not secret_arn:
            raise ProvisionFailed(f"RDS instance {ident} has no managed master secret")
        found = RdsInstance(ident, state, status, host=endpoint.get("Address"), port=int(endpoint.get("Port") or 5432),
                            secret_arn=str(secret_arn), engine_version=inst.get("EngineVersion"),
                            arn=inst.get("DBInstanceArn"))
        if inst.get("DBName") != dbname:
            self._ensure_database(found, dbname)
        return found

    def url(self, inst: RdsInstance, dbname: str) -> str:
        """A libpq URL of `dbname` on the instance, with the master password from its secret (keep it
        out of logs: ProvisionedTarget.display masks it)."""
        from ..lambda_support import secret_url

        if inst.secret_arn is None:
            raise ProvisionFailed(f"RDS instance {inst.identifier} is not available yet")
        return secret_url(inst.secret_arn, host=inst.host, port=inst.port, dbname=dbname, sslmode=self.sslmode)

    def _ensure_database(self, inst: RdsInstance, dbname: str) -> None:
        from psycopg import sql

        from .. import dbinfo

        server = DatabaseUrl.parse(self.url(inst, "postgres"))
        with dbinfo.connect(server, autocommit=True, application="pgrunbook-provision") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def production_group(self, engine_version: str | None) -> str:
        """The parameter group a kept target ends with."""
        major = str(engine_version or self.settings.engine_version or "18").split(".")[0]
        return self.settings.production_parameter_group or f"default.postgres{major}"

    def production_arguments(self, ident: str, engine_version: str | None = None) -> dict[str, Any]:
        """ModifyDBInstance arguments for production: parameter group and automated backups (PITR), now."""
        return {"DBInstanceIdentifier": ident, "ApplyImmediately": True,
                "BackupRetentionPeriod": self.settings.backup_retention_days,
                "DBParameterGroupName": self.production_group(engine_version)}

    def finish_for_production(self, ident: str) -> tuple[str, dict[str, Any]]:
        """One step towards production settings: ("modifying", ...) until the instance is available with the
        production parameter group in sync and backups on, then ("ready", ...); the second item says which
        group and retention. Modifies, and reboots for a static parameter, only what is still missing (a
        retried or repeated call is harmless)."""
        from botocore.exceptions import ClientError

        inst = describe(ident)
        if inst is None:
            raise ProvisionFailed(f"RDS instance {ident} does not exist")
        args = self.production_arguments(ident, inst.get("EngineVersion"))
        wanted = {"parameter_group": args["DBParameterGroupName"],
                  "backup_retention_days": args["BackupRetentionPeriod"]}
        if str(inst.get("DBInstanceStatus")) != "available" or inst.get("PendingModifiedValues"):
            return "modifying", wanted
        groups = inst.get("DBParameterGroups") or []
        names = [str(g.get("DBParameterGroupName")) for g in groups]
        try:
            if names != [wanted["parameter_group"]] or inst.get("BackupRetentionPeriod") != args[
                    "BackupRetentionPeriod"]:
                self.rds.modify_db_instance(**args)
                log.info("RDS instance: production settings requested", extra={"instance": ident, **wanted})
                return "modifying", wanted
            if any(g.get("ParameterApplyStatus") == "pending-reboot" for g in groups):
                self.rds.reboot_db_instance(DBInstanceIdentifier=ident)
                return "modifying", wanted
        except ClientError as exc:
            raise _error(exc, ident, "apply production settings to") from None
        return "ready", wanted

    # ------------------------------------------------------------------ the CLI: the same steps, waited for
    def _until(self, what: str, ident: str, step: Callable[[], T | None]) -> T:
        deadline = time.monotonic() + self.settings.wait_minutes * 60
        while True:
            result = step()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise ProvisionFailed(f"RDS instance {ident}: {what} not done after {self.settings.wait_minutes} "
                                      "minutes (PGRUNBOOK_RDS_WAIT_MINUTES)")
            self._sleep(POLL_SECONDS)

    def create(self, dbname: str, roles: list[str] | None = None) -> ProvisionedTarget:
        """A new instance, waited for; its URL from the managed secret (the password only in memory)."""
        ident = self.identifier(dbname, None)
        t0 = time.monotonic()
        self.start(ident, database=dbname, dbname=dbname, execution=None)
        try:
            def available() -> RdsInstance | None:
                inst = self.poll(ident, dbname)
                if inst.state == "failed":
                    raise ProvisionFailed(f"RDS instance {ident} failed to start: {inst.status}")
                return inst if inst.state == "available" else None

            inst = self._until("create", ident, available)
            url = self.url(inst, dbname)
        except BaseException:
            self._destroy(ident)
            raise
        target = ProvisionedTarget(kind=self.kind, name=ident, url=url,
                                   details={"instance": ident, "arn": inst.arn, "class": self.settings.instance_class,
                                            "engine_version": inst.engine_version, "settings": "restore-tuned",
                                            "seconds": round(time.monotonic() - t0, 1)})
        if roles:
            try:
                target.details["roles_created"] = create_roles(DatabaseUrl.parse(url), roles)
            except PgrunbookError as exc:
                log.warning("could not create the backup's roles on the instance", extra={"reason": str(exc)})
        return target

    def reset_to_production(self, target: ProvisionedTarget) -> None:
        """finish_for_production, waited for."""
        self._until("production settings", target.name,
                    lambda: True if self.finish_for_production(target.name)[0] == "ready" else None)
        target.details["settings"] = "production"

    def prepare_for_verify(self, target: ProvisionedTarget) -> float:
        """Production settings, then ANALYZE: verification sees the instance as production would."""
        t0 = time.monotonic()
        self.reset_to_production(target)
        analyze_database(DatabaseUrl.parse(target.url))
        return time.monotonic() - t0

    def _destroy(self, ident: str) -> None:
        def gone() -> bool | None:
            try:
                delete_instance(ident)
            except TargetDeleting:
                return None
            return True

        self._until("delete", ident, gone)

    def destroy(self, target: ProvisionedTarget) -> None:
        self._destroy(target.name)
        log.info("RDS instance deleted", extra={"instance": target.name})
