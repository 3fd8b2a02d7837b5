"""What each Lambda function / Fargate task does with its (parsed) event: resolve credentials,
call the core, return a JSON-able result. Handlers add logging/metrics around these calls; the
Fargate task (`python -m pgrunbook.fargate_task`) calls the same functions, so both paths give the
same result shape. Every function takes the shell's Settings (read once there) and reads nothing else.

Restore targets: `database` (provision.database) and `rds` (provision.rds, the one RDS provisioner,
whose non-blocking steps the state machine polls: create -> status until available -> restore, verify ->
for a kept target `finish` until ready; `delete` until gone).

State-machine contracts (the JSON each step returns) are documented in docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

from .backup import BackupOptions, BackupResult, run_backup
from .backup_index import latest_backup
from .errors import ConfigError, PgrunbookError, StoreError, UsageError, one_line
from .errors import NoBackup as NoBackup  # raised here (and named so by callers)
from .errors import TaskResultMissing as TaskResultMissing
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
from .keys import database_dest
from .lambda_support import database_url, secret_url
from .settings import Settings
from .store import open_store, split_uri

log = logging.getLogger(__name__)

GB = 1024**3


def _dest(settings: Settings) -> str:
    return settings.backup_dest.rstrip("/")


def _runner(operation: str, size_bytes: int | None, settings: Settings, forced: str | None = None,
            archive_bytes: int | None = None) -> dict[str, Any]:
    """lambda, or ecs when the run would not fit Lambda's 900 s or /tmp (sizing.py has the rule)."""
    from .sizing import decide

    return decide(operation, size_bytes, archive_bytes=archive_bytes, forced=forced, limits=settings.sizing).to_dict()


def _measured_size(name: str, settings: Settings) -> int | None:
    """pg_database_size of a configured database now; None when it cannot be reached (the backup
    itself then reports why, on whichever runner)."""
    from . import dbinfo
    from .dburl import DatabaseUrl

    try:
        url = DatabaseUrl.parse(database_url(settings.database(name)))
        with dbinfo.connect(url, application="pgrunbook-plan") as conn:
            return dbinfo.server_identity(conn).database_size_bytes
    except PgrunbookError as exc:
        log.warning("could not measure the database size", extra={"database": name, "reason": str(exc)})
        return None


def backup_size(name: str, settings: Settings) -> tuple[int | None, str]:
    """(size in bytes, where it comes from): the last backup's manifest, else measured now."""
    from .archive import ArchiveRef

    cfg = settings.database(name)
    last = latest_backup(database_dest(_dest(settings), cfg.database), settings=settings)
    if last is not None:
        manifest = ArchiveRef.from_uri(last.archive).manifest()
        size = (manifest.source if manifest else {}).get("database_size_bytes")
        if size is not None:
            return int(size), "last backup"
    measured = _measured_size(name, settings)
    return measured, "measured" if measured is not None else "unknown"


def backup_runner(name: str, settings: Settings) -> dict[str, Any]:
    """Where a backup of configured database `name` runs (the Backup machine's items and the Migrate
    machine's pre-migration backup): {size_bytes, size_source, runner, runner_reason, ...}."""
    size, source = backup_size(name, settings)
    return {"size_bytes": size, "size_source": source,
            **_runner("backup", size, settings, settings.stack.runner_overrides.get(name))}


# --------------------------------------------------------------------------- plan
def plan_backup(ev: BackupPlanEvent, settings: Settings) -> dict[str, Any]:
    """The Backup state machine's first step: which databases, and where each one runs."""
    names = list(ev.databases) or sorted(settings.stack.database_map())
    if not names:
        raise ConfigError("no databases configured (PGRUNBOOK_DATABASES is empty)")
    for name in names:
        settings.database(name)  # raises UnknownDatabase with the configured names
    items = []
    for name in names:
        items.append({"database": name, "kind": ev.kind, **backup_runner(name, settings)})
    return {"kind": ev.kind, "databases": names, "items": items,
            "max_concurrency": settings.stack.backup_max_concurrency}


def drilled_databases(settings: Settings) -> list[str]:
    """The databases the monthly drill restores (PGRUNBOOK_DRILL_DATABASES, comma separated; empty: all).
    Only these are watched by the "no verified drill" alarm."""
    return list(settings.stack.drill_databases) or sorted(settings.stack.database_map())


def plan_restore(ev: RestorePlanEvent, settings: Settings) -> dict[str, Any]:
    """The Restore state machine's first step: validate the input, resolve `latest`, pick the target
    spec and the runner. Fails fast (before anything is created) on a bad input."""
    from .archive import ArchiveRef

    cfg = settings.database(ev.database)
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
    spec = ev.target or _default_target(ev.database, settings)
    if spec.kind == "database" and spec.server is not None:
        settings.database(spec.server)
    if spec.kind == "rds" and not settings.rds.enabled:
        raise ConfigError("RDS restore targets are not enabled in this stack: set RdsSubnetGroupName "
                          "(template parameter) or use a target of kind 'database'")
    stack = settings.stack
    return {
        "database": ev.database, "mode": ev.mode, "backup": ref.uri, "manifest": ref.uri + ".manifest.json",
        "backup_finished_at": manifest.finished_at, "size_bytes": size,
        **_runner("restore", size, settings, stack.runner_overrides.get(ev.database), archive_bytes=manifest.bytes),
        "target_spec": asdict(spec),
        "poll_seconds": stack.poll_seconds,
        "max_checks": stack.max_polls,
        "approval_timeout_seconds": stack.approval_timeout_seconds,
        # no HTTP checks at Verify: the production app still uses the OLD database, so they would prove nothing
        # about the copy; the cutover's staging smoke (PrepareCandidate) tries the app against the candidate
        "app_url": None,
        "checks": list(stack.http_checks),
    }


def _default_target(database: str, settings: Settings) -> TargetSpec:
    raw = settings.stack.default_target
    if raw:
        return TargetSpec.parse(raw, "PGRUNBOOK_DEFAULT_TARGET")
    return TargetSpec(kind="database", server=database)


# --------------------------------------------------------------------------- backup
def backup(ev: BackupEvent, settings: Settings) -> BackupResult:
    db = settings.database(ev.database)
    return run_backup(BackupOptions(database_url=database_url(db), dest=_dest(settings), kind=ev.kind,
                                    jobs=ev.jobs), settings)


# --------------------------------------------------------------------------- provision
def provision(ev: ProvisionEvent, settings: Settings) -> dict[str, Any]:
    """The Provision function: create | status | delete one restore target (each returns at once; the state
    machine polls status until available and retries delete while TargetDeleting). A kept candidate's
    production settings are the cutover's step (cutover.prepare, with the same RDS provisioner)."""
    if ev.action == "create":
        assert ev.spec is not None and ev.database is not None
        return _create(ev.spec, ev.database, ev.execution, settings).to_dict()
    if ev.target is None:  # delete before anything was created: nothing to do
        return {"kind": None, "status": "deleted", "note": "no target was created"}
    if ev.action == "status":
        return _status(ev.target, settings).to_dict()
    _delete(ev.target, settings)
    return {**ev.target.to_dict(), "status": "deleted"}


def _rds(settings: Settings) -> Any:
    from .provision.rds import RdsProvisioner

    return RdsProvisioner.of(settings)


def _server_url(server: str, settings: Settings) -> str:
    """The server of configured database `server`, reached with its target secret (CREATEDB), not the
    backup's (possibly read-only) credentials."""
    cfg = settings.database(server)
    return secret_url(cfg.target_secret, host=cfg.host, port=cfg.port, dbname=cfg.database, sslmode=cfg.sslmode)


def target_database_name(execution: str) -> str:
    """A database target's name derived from its execution (idempotent create, like provision.rds.target_identifier)."""
    return f"pgrunbook_drill_{hashlib.sha256(execution.encode()).hexdigest()[:16]}"


def _create(spec: TargetSpec, database: str, execution: str | None, settings: Settings) -> TargetRef:
    if spec.kind == "database":
        from .provision.database import DatabaseProvisioner

        server = spec.server or database
        cfg = settings.database(server)
        name = spec.name or (target_database_name(execution) if execution else None)
        labels = {"stack": settings.stack.name, "execution": execution or "-", "source": database}
        target = DatabaseProvisioner(_server_url(server, settings)).create(database, name=name, labels=labels)
        return TargetRef(kind="database", name=target.name, dbname=target.name, secret_arn=cfg.target_secret,
                         host=cfg.host, port=cfg.port, server=server, status="available")
    source = settings.database(database)
    rds = _rds(settings)
    ident = rds.identifier(database, execution, spec.name)
    rds.start(ident, database=database, dbname=source.database, execution=execution,
              instance_class=spec.instance_class, storage_gb=spec.allocated_storage_gb)
    return TargetRef(kind="rds", name=ident, dbname=source.database, status="creating")


def _status(ref: TargetRef, settings: Settings) -> TargetRef:
    if ref.kind == "database":
        return TargetRef(**{**ref.to_dict(), "status": "available", "checks": ref.checks + 1})
    inst = _rds(settings).poll(ref.name, ref.dbname)
    if inst.state != "available":
        return TargetRef(**{**ref.to_dict(), "status": inst.state, "checks": ref.checks + 1})
    return TargetRef(**{**ref.to_dict(), "status": "available", "checks": ref.checks + 1,
                        "secret_arn": inst.secret_arn, "host": inst.host, "port": inst.port})


def _delete(ref: TargetRef, settings: Settings) -> None:
    if ref.kind == "database":
        from .provision.base import ProvisionedTarget
        from .provision.database import DatabaseProvisioner

        if ref.server is None:
            raise UsageError("a 'database' target needs its 'server'")
        DatabaseProvisioner(_server_url(ref.server, settings)).destroy(ProvisionedTarget(kind="database", name=ref.name,
                                                                                          url=""))
        return
    from .provision.rds import delete_target

    delete_target(ref.name, prefix=settings.rds.identifier_prefix, stack=settings.stack.name)


def target_url(ref: TargetRef, settings: Settings) -> str:
    if ref.secret_arn is None:
        raise UsageError(f"target {ref.name} is not available yet (no credentials)")
    if ref.kind == "database" and ref.server is not None:
        cfg = settings.database(ref.server)
        return secret_url(cfg.target_secret, host=cfg.host, port=cfg.port, dbname=ref.dbname, sslmode=cfg.sslmode)
    return secret_url(ref.secret_arn, host=ref.host, port=ref.port, dbname=ref.dbname, sslmode=settings.sslmode)


# --------------------------------------------------------------------------- restore / verify
def restore(ev: RestoreEvent, settings: Settings) -> dict[str, Any]:
    from .restore import RestoreOptions, run_restore

    result = run_restore(RestoreOptions(file=ev.backup, target_url=target_url(ev.target, settings), force=True,
                                        jobs=ev.jobs, skip_missing_roles=True, work_dir=settings.work_dir), settings)
    return result.to_dict()


def verify(ev: VerifyEvent, settings: Settings) -> dict[str, Any]:
    from .progress import Lines, with_progress
    from .verify import HttpCheck, VerifyOptions, run_verify

    # Lambda/Fargate: progress as log lines (tables counted of all), like the backup's and the restore's
    report = with_progress(run_verify, Lines(settings.progress_seconds), "verify", "tables",
                           VerifyOptions(database_url=target_url(ev.target, settings), manifest=ev.backup,
                                         app_url=ev.app_url,
                                         checks=tuple(HttpCheck.parse(c) for c in ev.checks), jobs=ev.jobs),
                           settings)
    out = report.to_dict()
    passed = len(report.checks) - len(report.failures)
    # one line (a failed verification's cause in the state machine): the counts and what failed
    summary = f"{passed}/{len(report.checks)} checks passed" + (
        f"; failed: {'; '.join(out['failures'])}" if out["failures"] else "")
    return {**out, "text": report.text(), "summary": one_line(summary, limit=4000)}


# ---------------------------------------------------------------- Fargate task results (keys.task_result_key)
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


def uri_exists(uri: str) -> bool:
    store, key = split_uri(uri)
    return store.exists(key)
