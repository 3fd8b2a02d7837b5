"""What each Lambda function / Fargate task does with its (parsed) event: resolve credentials,
call the core, return a JSON-able result. Handlers add logging/metrics around these calls; the
Fargate task (`python -m pgrunbook.task`) calls the same functions, so both paths give the
same result shape.

State-machine contracts (the JSON each step returns) are documented in docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from . import aws
from .backup import BackupOptions, BackupResult, run_backup
from .catalog_list import database_dest, latest_backup
from .errors import PgrunbookError, StoreError, TargetNotOwned, UsageError
from .events import (
    BackupEvent,
    BackupPlanEvent,
    ProvisionEvent,
    RestoreEvent,
    RestorePlanEvent,
    TargetRef,
    TargetSpec,
    VerifyEvent,
)
from .lambda_support import (
    ConfigError,
    TransientError,
    configured_databases,
    database_config,
    database_url,
    one_line,
    secret_url,
)
from .settings import Settings
from .store import open_store, split_uri

log = logging.getLogger(__name__)

REPORTS_PREFIX = "_reports"
TASKS_PREFIX = "_tasks"
APPROVALS_PREFIX = "_approvals"
GB = 1024**3


class NoBackup(UsageError):
    """`latest` was asked for but the database has no backup yet."""


def _env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise ConfigError(f"{name} must be an integer") from None


def _dest(settings: Settings) -> str:
    return settings.backup_dest.rstrip("/")


def _runner(operation: str, size_bytes: int | None, forced: str | None = None,
            archive_bytes: int | None = None) -> dict[str, Any]:
    """lambda, or ecs when the run would not fit Lambda's 900 s or /tmp (sizing.py has the rule)."""
    from .sizing import decide

    return decide(operation, size_bytes, archive_bytes=archive_bytes, forced=forced).to_dict()


def _measured_size(name: str) -> int | None:
    """pg_database_size of a configured database now; None when it cannot be reached (the backup
    itself then reports why, on whichever runner)."""
    from . import catalog
    from .dburl import DatabaseUrl

    try:
        url = DatabaseUrl.parse(database_url(database_config(name)))
        with catalog.connect(url, application="pgrunbook-plan") as conn:
            return catalog.server_identity(conn).database_size_bytes
    except PgrunbookError as exc:
        log.warning("could not measure the database size", extra={"database": name, "reason": str(exc)})
        return None


def backup_size(name: str, settings: Settings) -> tuple[int | None, str]:
    """(size in bytes, where it comes from): the last backup's manifest, else measured now."""
    from .archive import ArchiveRef

    cfg = database_config(name)
    last = latest_backup(database_dest(_dest(settings), cfg.database), settings=settings)
    if last is not None:
        manifest = ArchiveRef.from_uri(last.archive).manifest()
        size = (manifest.source if manifest else {}).get("database_size_bytes")
        if size is not None:
            return int(size), "last backup"
    measured = _measured_size(name)
    return measured, "measured" if measured is not None else "unknown"


def backup_runner(name: str, settings: Settings) -> dict[str, Any]:
    """Where a backup of configured database `name` runs (the Backup machine's items and the Migrate
    machine's pre-migration backup): {size_bytes, size_source, runner, runner_reason, ...}."""
    size, source = backup_size(name, settings)
    return {"size_bytes": size, "size_source": source, **_runner("backup", size, _forced_runner(name))}


def _forced_runner(name: str) -> str | None:
    raw = os.environ.get("PGRUNBOOK_RUNNER_OVERRIDES", "")  # {"bigdb": "ecs"} (tests, operators)
    try:
        return dict(json.loads(raw)).get(name) if raw else None
    except (ValueError, TypeError):
        raise ConfigError("PGRUNBOOK_RUNNER_OVERRIDES must be a JSON object") from None


# --------------------------------------------------------------------------- plan
def plan_backup(ev: BackupPlanEvent, settings: Settings) -> dict[str, Any]:
    """The Backup state machine's first step: which databases, and where each one runs."""
    dbs = configured_databases()
    names = list(ev.databases) or sorted(dbs)
    if not names:
        raise ConfigError("no databases configured (PGRUNBOOK_DATABASES is empty)")
    for name in names:
        database_config(name)  # raises UnknownDatabase with the configured names
    items = []
    for name in names:
        items.append({"database": name, "kind": ev.kind, **backup_runner(name, settings)})
    return {"kind": ev.kind, "databases": names, "items": items,
            "max_concurrency": _env_int("PGRUNBOOK_BACKUP_MAX_CONCURRENCY", 2)}


def drilled_databases(env: Mapping[str, str] | None = None) -> list[str]:
    """The databases the monthly drill restores (PGRUNBOOK_DRILL_DATABASES, comma separated; empty: all).
    Only these are watched by the "no verified drill" alarm."""
    env = os.environ if env is None else env
    names = [n.strip() for n in (env.get("PGRUNBOOK_DRILL_DATABASES") or "").split(",") if n.strip()]
    return names or sorted(configured_databases(env))


def plan_restore(ev: RestorePlanEvent, settings: Settings) -> dict[str, Any]:
    """The Restore state machine's first step: validate the input, resolve `latest`, pick the target
    spec and the runner. Fails fast (before anything is created) on a bad input."""
    from .archive import ArchiveRef

    cfg = database_config(ev.database)
    if ev.backup == "latest":
        entry = latest_backup(database_dest(_dest(settings), cfg.database), settings=settings)
        if entry is None:
            raise NoBackup(f"database {ev.database!r} has no backup in {_dest(settings)} yet")
        archive = entry.archive
    else:
        archive = ev.backup
    ref = ArchiveRef.from_uri(archive)
    manifest = ref.manifest()
    if manifest is None:
        raise NoBackup(f"{archive}: no manifest beside it (not a pgrunbook backup, or incomplete)")
    raw_size = manifest.source.get("database_size_bytes")
    size = int(raw_size) if raw_size is not None else None
    spec = ev.target or _default_target(ev.database)
    if spec.kind == "database" and spec.server is not None:
        database_config(spec.server)
    if spec.kind == "rds" and not rds_targets_enabled():
        raise ConfigError("RDS restore targets are not enabled in this stack: set RdsSubnetGroupName "
                          "(template parameter) or use a target of kind 'database'")
    return {
        "database": ev.database, "mode": ev.mode, "backup": ref.uri, "manifest": ref.uri + ".manifest.json",
        "backup_finished_at": manifest.finished_at, "size_bytes": size,
        **_runner("restore", size, _forced_runner(ev.database), archive_bytes=manifest.bytes),
        "target_spec": asdict(spec),
        "poll_seconds": _env_int("PGRUNBOOK_POLL_SECONDS", 30),
        "max_checks": _env_int("PGRUNBOOK_MAX_POLLS", 120),
        "approval_timeout_seconds": _env_int("PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", 86400),
        # no HTTP checks at Verify: the production app still uses the OLD database, so they would prove nothing
        # about the copy; the cutover's staging smoke (PrepareCandidate) tries the app against the candidate
        "app_url": None,
        "checks": [c for c in (os.environ.get("PGRUNBOOK_HTTP_CHECKS") or "").split(",") if c],
    }


def _default_target(database: str) -> TargetSpec:
    raw = os.environ.get("PGRUNBOOK_DEFAULT_TARGET")
    if raw:
        try:
            return TargetSpec.parse(json.loads(raw), "PGRUNBOOK_DEFAULT_TARGET")
        except json.JSONDecodeError:
            raise ConfigError("PGRUNBOOK_DEFAULT_TARGET is not valid JSON") from None
    return TargetSpec(kind="database", server=database)


# --------------------------------------------------------------------------- backup
def backup(ev: BackupEvent, settings: Settings) -> BackupResult:
    db = database_config(ev.database)
    return run_backup(BackupOptions(database_url=database_url(db), dest=_dest(settings), kind=ev.kind,
                                    jobs=ev.jobs), settings)


# --------------------------------------------------------------------------- provision
def provision(ev: ProvisionEvent, settings: Settings) -> dict[str, Any]:
    if ev.action == "create":
        assert ev.spec is not None and ev.database is not None
        return _create(ev.spec, ev.database, ev.execution).to_dict()
    if ev.target is None:  # delete before anything was created: nothing to do
        return {"kind": None, "status": "deleted", "note": "no target was created"}
    if ev.action == "status":
        return _status(ev.target).to_dict()
    _delete(ev.target)
    return {**ev.target.to_dict(), "status": "deleted"}


class TargetDeleting(TransientError):
    """The target's deletion is under way (an RDS instance takes minutes): the state machine retries
    `delete` until the target is gone, so a teardown never reports done before it is."""


def _server_url(server: str) -> str:
    """The server of configured database `server`, reached with its target secret (CREATEDB), not the
    backup's (possibly read-only) credentials."""
    cfg = database_config(server)
    return secret_url(cfg.target_secret, host=cfg.host, port=cfg.port, dbname=cfg.database, sslmode=cfg.sslmode)


def stack_name(env: Mapping[str, str] | None = None) -> str:
    """The stack that owns what this function creates (tags, names): PGRUNBOOK_STACK."""
    env = os.environ if env is None else env
    return env.get("PGRUNBOOK_STACK") or "local"


def target_database_name(execution: str) -> str:
    """A database target's name derived from its execution (idempotent create, like target_identifier)."""
    return f"pgrunbook_drill_{hashlib.sha256(execution.encode()).hexdigest()[:16]}"


def target_identifier(database: str, execution: str | None, prefix: str | None = None) -> str:
    """An RDS instance identifier derived from the execution: a retried `create` of the same execution
    finds its own instance instead of starting a second one. `<prefix>-<database>-<hash>`: the prefix
    (PGRUNBOOK_TARGET_PREFIX, `pgrb-<stack id>` in the template) scopes IAM to this stack's instances;
    letters, digits and single hyphens, at most 63 characters, starting with a letter."""
    def clean(text: str) -> str:  # ASCII letters and digits, single hyphens (RDS refuses anything else)
        return "-".join(p for p in "".join(c if c.isascii() and c.isalnum() else "-" for c in text).split("-") if p)

    prefix = prefix or os.environ.get("PGRUNBOOK_TARGET_PREFIX") or "pgrunbook-drill"
    tail = (hashlib.sha256(execution.encode()).hexdigest()[:12] if execution
            else f"{datetime.now(UTC):%Y%m%d%H%M%S}{secrets.token_hex(2)}")
    head = clean(f"{prefix}-{clean(database.lower())[:20]}")
    if not head[:1].isalpha():
        head = f"t-{head}" if head else "t"
    return f"{head[:63 - len(tail) - 1].rstrip('-')}-{tail}"  # the execution's hash is never cut off


def _create(spec: TargetSpec, database: str, execution: str | None) -> TargetRef:
    if spec.kind == "database":
        from .provision.database import DatabaseProvisioner

        server = spec.server or database
        cfg = database_config(server)
        name = spec.name or (target_database_name(execution) if execution else None)
        labels = {"stack": stack_name(), "execution": execution or "-", "source": database}
        target = DatabaseProvisioner(_server_url(server)).create(database, name=name, labels=labels)
        return TargetRef(kind="database", name=target.name, dbname=target.name, secret_arn=cfg.target_secret,
                         host=cfg.host, port=cfg.port, server=server, status="available")
    return _rds_create(spec, database, execution)


def _status(ref: TargetRef) -> TargetRef:
    if ref.kind == "database":
        return TargetRef(**{**ref.to_dict(), "status": "available", "checks": ref.checks + 1})
    return _rds_status(ref)


def _delete(ref: TargetRef) -> None:
    if ref.kind == "database":
        from .provision.base import ProvisionedTarget
        from .provision.database import DatabaseProvisioner

        if ref.server is None:
            raise UsageError("a 'database' target needs its 'server'")
        DatabaseProvisioner(_server_url(ref.server)).destroy(ProvisionedTarget(kind="database", name=ref.name,
                                                                                url=""))
        return
    _rds_delete(ref)


def rds_targets_enabled(env: Mapping[str, str] | None = None) -> bool:
    """RDS targets exist only in a stack that enables them (RdsSubnetGroupName set: the template then
    creates the restore-tuned parameter group and grants the RDS permissions)."""
    env = os.environ if env is None else env
    return (env.get("PGRUNBOOK_RDS_TARGETS") or "on").lower() not in ("off", "false", "0")


TAG_PURPOSE, TAG_STACK, TAG_EXECUTION, TAG_SOURCE, TAG_KEEP = (
    "pgrunbook:purpose", "pgrunbook:stack", "pgrunbook:execution", "pgrunbook:source-database", "pgrunbook:keep")


def _rds_create(spec: TargetSpec, database: str, execution: str | None) -> TargetRef:
    """Start a new RDS instance (returns at once; the state machine polls `status`). Its master password
    is managed by RDS in Secrets Manager; its parameter group is the stack's restore-tuned one; its
    engine version is the stack's (PGRUNBOOK_RDS_ENGINE_VERSION, matching that group's family).
    Idempotent per execution: a retry finds the instance the first attempt started."""
    from botocore.exceptions import ClientError

    if not rds_targets_enabled():
        raise ConfigError("RDS restore targets are not enabled in this stack (set RdsSubnetGroupName)")
    source = database_config(database)
    ident = spec.name or target_identifier(database, execution)
    args: dict[str, Any] = {
        "DBInstanceIdentifier": ident, "Engine": "postgres",
        "DBInstanceClass": spec.instance_class or os.environ.get("PGRUNBOOK_RDS_INSTANCE_CLASS", "db.t4g.medium"),
        "AllocatedStorage": spec.allocated_storage_gb or _env_int("PGRUNBOOK_RDS_STORAGE_GB", 50),
        "MasterUsername": "pgrunbook", "ManageMasterUserPassword": True, "BackupRetentionPeriod": 0,
        "MultiAZ": False, "PubliclyAccessible": False, "StorageEncrypted": True, "CopyTagsToSnapshot": False,
        "DeletionProtection": False,
        "Tags": [{"Key": TAG_PURPOSE, "Value": "restore-target"},
                 {"Key": TAG_STACK, "Value": stack_name()},
                 {"Key": TAG_SOURCE, "Value": database[:250]},
                 {"Key": TAG_EXECUTION, "Value": (execution or "-")[:256]}],
    }
    optional = {"EngineVersion": "PGRUNBOOK_RDS_ENGINE_VERSION", "DBSubnetGroupName": "PGRUNBOOK_RDS_SUBNET_GROUP",
                "DBParameterGroupName": "PGRUNBOOK_RDS_PARAMETER_GROUP", "KmsKeyId": "PGRUNBOOK_RDS_KMS_KEY_ID"}
    for key, env_name in optional.items():
        if os.environ.get(env_name):
            args[key] = os.environ[env_name]
    if os.environ.get("PGRUNBOOK_RDS_SECURITY_GROUP_IDS"):
        args["VpcSecurityGroupIds"] = os.environ["PGRUNBOOK_RDS_SECURITY_GROUP_IDS"].split(",")
    rds = aws.client("rds")
    try:
        rds.create_db_instance(**args)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("DBInstanceAlreadyExists",
                                                             "DBInstanceAlreadyExistsFault"):
            raise _rds_error(exc, ident) from None
        tags = _rds_tags(_describe(ident))
        if execution is None or tags.get(TAG_EXECUTION) != execution[:256]:
            raise TargetNotOwned(f"RDS instance {ident} already exists and was not created by this execution: "
                                 "refusing to use or touch it") from None
        log.info("RDS target already created by an earlier attempt of this execution", extra={"instance": ident})
    return TargetRef(kind="rds", name=ident, dbname=source.database, status="creating")


def _rds_error(exc: Any, ident: str) -> PgrunbookError:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in ("Throttling", "ThrottlingException", "InternalFailure"):
        return TransientError(f"RDS {code} for {ident}")
    return PgrunbookError(f"RDS refused for {ident}: {code} {exc.response.get('Error', {}).get('Message', '')}")


def _rds_not_found(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("DBInstanceNotFound", "DBInstanceNotFoundFault")


def _describe(ident: str) -> dict[str, Any] | None:
    """The instance, or None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        return dict(aws.client("rds").describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0])
    except ClientError as exc:
        if _rds_not_found(exc):
            return None
        raise _rds_error(exc, ident) from None


def _rds_tags(inst: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in (inst or {}).get("TagList") or []}


# RDS instance states (DBInstanceStatus) a new target can be in, by what they mean for the Restore machine.
RDS_PENDING = frozenset({"creating", "backing-up", "modifying", "configuring-enhanced-monitoring",
                         "configuring-iam-database-auth", "configuring-log-exports", "rebooting", "renaming",
                         "resetting-master-credentials", "starting", "upgrading", "maintenance",
                         "storage-optimization", "storage-config-upgrade", "moving-to-vpc", "converting-to-vpc"})
RDS_FAILED = frozenset({"failed", "incompatible-create", "incompatible-parameters", "incompatible-network",
                        "incompatible-option-group", "incompatible-restore", "incompatible-credentials",
                        "inaccessible-encryption-credentials",
                        "inaccessible-encryption-credentials-recoverable", "restore-error", "storage-full",
                        "insufficient-capacity", "deleting", "stopping", "stopped", "delete-precheck"})


def rds_target_state(status: str) -> str:
    """available | creating | failed for a DBInstanceStatus; an unknown new state counts as pending
    (the state machine's max_checks bounds the wait)."""
    if status == "available":
        return "available"
    if status in RDS_FAILED:
        return "failed"
    return "creating"


def _rds_status(ref: TargetRef) -> TargetRef:
    from psycopg import sql

    from . import catalog
    from .dburl import DatabaseUrl

    inst = _describe(ref.name)
    if inst is None:
        raise PgrunbookError(f"RDS instance {ref.name} does not exist (deleted while it was being created?)")
    status = str(inst.get("DBInstanceStatus"))
    checks = ref.checks + 1
    state = rds_target_state(status)
    if state != "available":
        return TargetRef(**{**ref.to_dict(), "status": state, "checks": checks})
    endpoint = inst.get("Endpoint") or {}
    secret_arn = (inst.get("MasterUserSecret") or {}).get("SecretArn")
    if not secret_arn:
        raise PgrunbookError(f"RDS instance {ref.name} has no managed master secret")
    ready = TargetRef(**{**ref.to_dict(), "status": "available", "checks": checks, "secret_arn": secret_arn,
                         "host": endpoint.get("Address"), "port": int(endpoint.get("Port") or 5432)})
    # a new instance has only `postgres`: create the (empty) target database once
    server = DatabaseUrl.parse(secret_url(secret_arn, host=ready.host, port=ready.port, dbname="postgres"))
    with catalog.connect(server, autocommit=True, application="pgrunbook-provision") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ref.dbname,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ref.dbname)))
    return ready


def _rds_delete(ref: TargetRef) -> None:
    """Delete the instance and return only once it is gone; while RDS is still deleting it (or cannot
    delete it yet: creating, modifying, backing up), raise TargetDeleting so the caller retries."""
    delete_rds_instance(ref.name)


def delete_rds_instance(ident: str) -> None:
    """The one way an RDS target is deleted (state machine teardown and the sweeper)."""
    from botocore.exceptions import ClientError

    inst = _describe(ident)
    if inst is None:
        return
    status = str(inst.get("DBInstanceStatus"))
    if status != "deleting":
        try:
            aws.client("rds").delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True,
                                                 DeleteAutomatedBackups=True)
        except ClientError as exc:
            if _rds_not_found(exc):
                return
            if exc.response.get("Error", {}).get("Code") != "InvalidDBInstanceState":
                raise _rds_error(exc, ident) from None
            raise TargetDeleting(f"RDS instance {ident} is {status}: it cannot be deleted yet, retrying") from None
        if _describe(ident) is None:
            return
        status = "deleting"
    raise TargetDeleting(f"RDS instance {ident} is {status}: waiting until it is gone")


def target_url(ref: TargetRef) -> str:
    if ref.secret_arn is None:
        raise UsageError(f"target {ref.name} is not available yet (no credentials)")
    if ref.kind == "database" and ref.server is not None:
        cfg = database_config(ref.server)
        return secret_url(cfg.target_secret, host=cfg.host, port=cfg.port, dbname=ref.dbname, sslmode=cfg.sslmode)
    return secret_url(ref.secret_arn, host=ref.host, port=ref.port, dbname=ref.dbname)


# --------------------------------------------------------------------------- restore / verify
def restore(ev: RestoreEvent, settings: Settings) -> dict[str, Any]:
    from .restore import RestoreOptions, run_restore

    result = run_restore(RestoreOptions(file=ev.backup, target_url=target_url(ev.target), force=True,
                                        jobs=ev.jobs, skip_missing_roles=True,
                                        work_dir=os.environ.get("PGRUNBOOK_WORK_DIR") or None), settings)
    return result.to_dict()


def verify(ev: VerifyEvent, settings: Settings) -> dict[str, Any]:
    from .verify import HttpCheck, VerifyOptions, run_verify

    report = run_verify(VerifyOptions(database_url=target_url(ev.target), manifest=ev.backup, app_url=ev.app_url,
                                      checks=tuple(HttpCheck.parse(c) for c in ev.checks)), settings)
    out = report.to_dict()
    passed = len(report.checks) - len(report.failures)
    # one line (a failed verification's cause in the state machine): the counts and what failed
    summary = f"{passed}/{len(report.checks)} checks passed" + (
        f"; failed: {'; '.join(out['failures'])}" if out["failures"] else "")
    return {**out, "text": report.text(), "summary": one_line(summary, limit=4000)}


# --------------------------------------------------------------------------- Fargate task results
def task_result_key(execution: str, name: str) -> str:
    safe = execution.rsplit(":", 1)[-1]
    return f"{TASKS_PREFIX}/{safe}/{name}.json"


def write_task_result(settings: Settings, key: str, payload: dict[str, Any]) -> None:
    open_store(_dest(settings), kms_key_id=settings.kms_key_id).put_bytes(
        key, json.dumps(payload, default=str).encode(), "application/json")


def read_task_result(settings: Settings, key: str) -> dict[str, Any]:
    """The result the Fargate task wrote; its error is raised again under the same errorType."""
    try:
        data = json.loads(open_store(_dest(settings)).get_bytes(key))
    except StoreError:
        raise TaskResultMissing(f"the Fargate task wrote no result at {key} (killed, or out of memory?)") from None
    if "errorType" in data:
        exc_type = type(str(data["errorType"]), (PgrunbookError,), {})
        raise exc_type(str(data.get("errorMessage", "")))
    return dict(data["result"])


class TaskResultMissing(PgrunbookError):
    pass


def uri_exists(uri: str) -> bool:
    store, key = split_uri(uri)
    return store.exists(key)
