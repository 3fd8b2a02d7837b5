"""What each Lambda function / Fargate task does with its (parsed) event: resolve credentials,
call the core, return a JSON-able result. Handlers add logging/metrics around these calls; the
Fargate task (`python -m pgrunbook.task`) calls the same functions, so both paths give the
same result shape.

State-machine contracts (the JSON each step returns) are documented in docs/deploy.md.
"""

from __future__ import annotations

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
from .catalog_list import latest_backup
from .errors import PgrunbookError, StoreError, UsageError
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


def _runner(size_bytes: int, forced: str | None = None) -> str:
    """lambda, or ecs when the database is too big for Lambda's 15 minutes."""
    if forced in ("lambda", "ecs"):
        return forced
    if (os.environ.get("PGRUNBOOK_FARGATE") or "on").lower() in ("off", "false", "0"):
        return "lambda"  # the stack has no Fargate task (no container image given)
    limit = _env_int("PGRUNBOOK_LAMBDA_MAX_GB", 20) * GB
    return "ecs" if size_bytes > limit else "lambda"


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
        last = latest_backup(f"{_dest(settings)}/{dbs[name].database}", settings=settings)
        size = 0
        if last is not None:
            from .archive import ArchiveRef

            manifest = ArchiveRef.from_uri(last.archive).manifest()
            size = int((manifest.source if manifest else {}).get("database_size_bytes") or 0)
        items.append({"database": name, "kind": ev.kind, "size_bytes": size,
                      "runner": _runner(size, _forced_runner(name))})
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
        entry = latest_backup(f"{_dest(settings)}/{cfg.database}", settings=settings)
        if entry is None:
            raise NoBackup(f"database {ev.database!r} has no backup in {_dest(settings)} yet")
        archive = entry.archive
    else:
        archive = ev.backup
    ref = ArchiveRef.from_uri(archive)
    manifest = ref.manifest()
    if manifest is None:
        raise NoBackup(f"{archive}: no manifest beside it (not a pgrunbook backup, or incomplete)")
    size = int(manifest.source.get("database_size_bytes") or 0)
    spec = ev.target or _default_target(ev.database)
    if spec.kind == "database" and spec.server is not None:
        database_config(spec.server)
    return {
        "database": ev.database, "mode": ev.mode, "backup": ref.uri, "manifest": ref.uri + ".manifest.json",
        "backup_finished_at": manifest.finished_at, "size_bytes": size,
        "runner": _runner(size, _forced_runner(ev.database)),
        "target_spec": asdict(spec),
        "poll_seconds": _env_int("PGRUNBOOK_POLL_SECONDS", 30),
        "max_checks": _env_int("PGRUNBOOK_MAX_POLLS", 120),
        "approval_timeout_seconds": _env_int("PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", 86400),
        "app_url": os.environ.get("PGRUNBOOK_APP_URL") or None,
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


def _server_url(ref_or_server: str) -> str:
    return database_url(database_config(ref_or_server))


def _create(spec: TargetSpec, database: str, execution: str | None) -> TargetRef:
    if spec.kind == "database":
        from .provision.database import DatabaseProvisioner

        server = spec.server or database
        cfg = database_config(server)
        target = DatabaseProvisioner(_server_url(server)).create(database)
        return TargetRef(kind="database", name=target.name, dbname=target.name, secret_arn=cfg.secret_arn,
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


def _rds_create(spec: TargetSpec, database: str, execution: str | None) -> TargetRef:
    """Start a new RDS instance (returns at once; the state machine polls `status`). Its master password
    is managed by RDS in Secrets Manager; its parameter group is the stack's restore-tuned one."""
    from botocore.exceptions import ClientError

    source = database_config(database)
    ident = spec.name or f"pgrunbook-drill-{database}-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    ident = "".join(c if c.isalnum() or c == "-" else "-" for c in ident.lower())[:63].rstrip("-")
    args: dict[str, Any] = {
        "DBInstanceIdentifier": ident, "Engine": "postgres",
        "DBInstanceClass": spec.instance_class or os.environ.get("PGRUNBOOK_RDS_INSTANCE_CLASS", "db.t4g.medium"),
        "AllocatedStorage": spec.allocated_storage_gb or _env_int("PGRUNBOOK_RDS_STORAGE_GB", 50),
        "MasterUsername": "pgrunbook", "ManageMasterUserPassword": True, "BackupRetentionPeriod": 0,
        "MultiAZ": False, "PubliclyAccessible": False, "StorageEncrypted": True, "CopyTagsToSnapshot": False,
        "DeletionProtection": False,
        "Tags": [{"Key": "pgrunbook:purpose", "Value": "restore-target"},
                 {"Key": "pgrunbook:source-database", "Value": database},
                 {"Key": "pgrunbook:execution", "Value": (execution or "-")[:250]}],
    }
    optional = {"EngineVersion": "PGRUNBOOK_RDS_ENGINE_VERSION", "DBSubnetGroupName": "PGRUNBOOK_RDS_SUBNET_GROUP",
                "DBParameterGroupName": "PGRUNBOOK_RDS_PARAMETER_GROUP", "KmsKeyId": "PGRUNBOOK_RDS_KMS_KEY_ID"}
    for key, env_name in optional.items():
        if os.environ.get(env_name):
            args[key] = os.environ[env_name]
    if os.environ.get("PGRUNBOOK_RDS_SECURITY_GROUP_IDS"):
        args["VpcSecurityGroupIds"] = os.environ["PGRUNBOOK_RDS_SECURITY_GROUP_IDS"].split(",")
    try:
        aws.client("rds").create_db_instance(**args)
    except ClientError as exc:
        raise _rds_error(exc, ident) from None
    return TargetRef(kind="rds", name=ident, dbname=source.database, status="creating")


def _rds_error(exc: Any, ident: str) -> PgrunbookError:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in ("Throttling", "ThrottlingException", "InternalFailure"):
        return TransientError(f"RDS {code} for {ident}")
    return PgrunbookError(f"RDS refused for {ident}: {code} {exc.response.get('Error', {}).get('Message', '')}")


def _rds_status(ref: TargetRef) -> TargetRef:
    from botocore.exceptions import ClientError
    from psycopg import sql

    from . import catalog
    from .dburl import DatabaseUrl

    try:
        inst = aws.client("rds").describe_db_instances(DBInstanceIdentifier=ref.name)["DBInstances"][0]
    except ClientError as exc:
        raise _rds_error(exc, ref.name) from None
    status = str(inst.get("DBInstanceStatus"))
    checks = ref.checks + 1
    if status in ("failed", "incompatible-parameters", "incompatible-network", "storage-full"):
        return TargetRef(**{**ref.to_dict(), "status": "failed", "checks": checks})
    if status != "available":
        return TargetRef(**{**ref.to_dict(), "status": "creating", "checks": checks})
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
    from botocore.exceptions import ClientError

    try:
        aws.client("rds").delete_db_instance(DBInstanceIdentifier=ref.name, SkipFinalSnapshot=True,
                                             DeleteAutomatedBackups=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            return
        if exc.response.get("Error", {}).get("Code") == "InvalidDBInstanceState":  # already deleting
            return
        raise _rds_error(exc, ref.name) from None


def target_url(ref: TargetRef) -> str:
    if ref.secret_arn is None:
        raise UsageError(f"target {ref.name} is not available yet (no credentials)")
    if ref.kind == "database" and ref.server is not None:
        cfg = database_config(ref.server)
        return secret_url(cfg.secret_arn, host=cfg.host, port=cfg.port, dbname=ref.dbname, sslmode=cfg.sslmode)
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
    return {**report.to_dict(), "text": report.text()}


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
