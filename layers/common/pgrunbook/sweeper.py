"""The sweeper (functions/sweeper, hourly): restore targets that outlived their execution are deleted.

A Restore execution tears its target down on every path it controls, but not when it is stopped
(StopExecution), times out, or its teardown fails for good. Every target carries who made it:
an RDS instance the tags `pgrunbook:stack` and `pgrunbook:execution` (the execution ARN), a
database target the labels `stack` and `execution` in its comment (provision.database.parse_labels).

Invariants:
- only this stack's targets (Settings.stack.name, PGRUNBOOK_STACK) are looked at; nothing without an
  execution is touched;
- a target is deleted only when its execution is known and no longer running, and it is not kept:
  an approved cutover (the execution SUCCEEDED in mode cutover) and a target tagged
  `pgrunbook:keep` (RDS) or labelled `keep` (a database) are kept; an execution that no longer
  exists (history expired) leaves its target alone and reported, for a person to decide;
- `keep: candidate` does not keep: a cutover candidate is made production-ready (kept name, tags,
  deletion protection, the source's owner) BEFORE its approval, and only the approval turns the mark
  into `approved`; a candidate whose execution ended without (rejected, timed out, failed, teardown
  failed) is deleted like any leaked target (its deletion protection lifted, dropped as its owner);
- deletion goes through the state machine's own delete (provision.rds.delete_instance, DROP
  DATABASE ... WITH (FORCE)), and every run reports what it deleted, kept and could not delete.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from . import aws
from .errors import AwsCallFailed, PgrunbookError, TargetDeleting
from .lambda_support import secret_url
from .provision.rds import KEEP_CANDIDATE, TAG_EXECUTION, TAG_KEEP, TAG_STACK, delete_instance, instance_tags
from .settings import Settings

log = logging.getLogger(__name__)
RUNNING = ("RUNNING", "PENDING_REDRIVE")


@dataclass(frozen=True)
class Found:
    kind: str  # rds | database
    name: str
    execution: str | None
    server: str | None = None  # kind database: the configured database whose server holds it
    status: str | None = None  # kind rds: DBInstanceStatus
    keep: bool = False


@dataclass
class SweepReport:
    stack: str = "local"
    deleted: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["stack"]
        return out

    def text(self) -> str:
        lines = [f"pgrunbook sweeper ({self.stack}): {len(self.deleted)} leaked target(s) deleted, "
                 f"{len(self.failed)} could not be deleted, {len(self.kept)} left alone"]
        lines += [f"  deleted  {d['kind']} {d['name']} (execution {d['execution']}: {d['why']})" for d in self.deleted]
        lines += [f"  FAILED   {d['kind']} {d['name']}: {d['why']}" for d in self.failed]
        lines += [f"  kept     {d['kind']} {d['name']}: {d['why']}" for d in self.kept]
        return "\n".join(lines)


def execution_state(arn: str) -> tuple[str, str]:
    """(status, mode) of a Restore execution; ("UNKNOWN", "") when it does not exist (any more)."""
    from botocore.exceptions import ClientError

    try:
        desc = aws.client("stepfunctions").describe_execution(executionArn=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ExecutionDoesNotExist", "InvalidArn"):
            return "UNKNOWN", ""
        raise AwsCallFailed(f"Step Functions: cannot describe {arn}: {code}") from None
    try:
        mode = str((json.loads(desc.get("input") or "{}") or {}).get("mode") or "drill")
    except (ValueError, AttributeError):
        mode = "drill"
    return str(desc["status"]), mode


def verdict(target: Found) -> tuple[bool, str]:
    """(delete?, why) for one of this stack's targets."""
    if target.keep:
        return False, "tagged pgrunbook:keep"
    if target.status == "deleting":
        return False, "already being deleted"
    if not target.execution or target.execution == "-":
        return False, "no execution recorded (not made by a state machine)"
    status, mode = execution_state(target.execution)
    if status in RUNNING:
        return False, "its execution is still running"
    if status == "UNKNOWN":
        return False, "its execution no longer exists (history expired?): decide by hand"
    if status == "SUCCEEDED" and mode == "cutover":
        return False, "kept: approved cutover candidate"
    return True, f"execution {status.lower()}"


def rds_targets(stack: str) -> list[Found]:
    found = []
    for page in aws.client("rds").get_paginator("describe_db_instances").paginate():
        for inst in page.get("DBInstances", []):
            tags = instance_tags(inst)
            if tags.get(TAG_STACK) != stack:
                continue
            found.append(Found(kind="rds", name=str(inst["DBInstanceIdentifier"]), execution=tags.get(TAG_EXECUTION),
                               status=str(inst.get("DBInstanceStatus")),
                               keep=tags.get(TAG_KEEP, KEEP_CANDIDATE) != KEEP_CANDIDATE))
    return found


def database_targets(stack: str, settings: Settings) -> list[Found]:
    """pgrunbook_drill_* databases labelled with this stack, on every configured server (once per server)."""
    from . import dbinfo
    from .dburl import DatabaseUrl
    from .provision.database import LABELS_SQL, parse_labels

    found: list[Found] = []
    seen: set[tuple[str | None, int | None, str]] = set()
    for name, cfg in sorted(settings.stack.database_map().items()):
        key = (cfg.host, cfg.port, cfg.target_secret)
        if key in seen:
            continue
        seen.add(key)
        try:
            url = DatabaseUrl.parse(secret_url(cfg.target_secret, host=cfg.host, port=cfg.port, dbname=cfg.database,
                                               sslmode=cfg.sslmode))
            with dbinfo.connect(url, autocommit=True, application="pgrunbook-sweeper") as conn:
                rows = conn.execute(LABELS_SQL + " WHERE d.datname LIKE 'pgrunbook\\_drill\\_%'").fetchall()
        except PgrunbookError as exc:
            log.warning("sweeper: cannot list the targets on a server", extra={"database": name, "reason": str(exc)})
            continue
        for datname, comment, setconfig in rows:
            labels = parse_labels(comment, setconfig)
            if labels.get("stack") != stack:
                continue
            found.append(Found(kind="database", name=str(datname), execution=labels.get("execution"),
                               server=name, keep=labels.get("keep", KEEP_CANDIDATE) != KEEP_CANDIDATE))
    return found


def _delete(target: Found, settings: Settings) -> None:
    if target.kind == "rds":
        delete_instance(target.name)
        return
    from .events import TargetRef
    from .operations import _delete as delete_target

    delete_target(TargetRef(kind="database", name=target.name, dbname=target.name, server=target.server), settings)


def sweep(settings: Settings, *, rds: bool | None = None, dry_run: bool = False) -> SweepReport:
    """Find this stack's targets, delete the leaked ones (see the module's invariants)."""
    rds = settings.rds.enabled if rds is None else rds
    stack = settings.stack.name
    report = SweepReport(stack=stack)
    targets = database_targets(stack, settings) + (rds_targets(stack) if rds else [])
    for target in targets:
        delete, why = verdict(target)
        entry = {"kind": target.kind, "name": target.name, "execution": target.execution, "why": why}
        if not delete:
            report.kept.append(entry)
            continue
        if dry_run:
            report.deleted.append({**entry, "why": why + " (dry run: not deleted)"})
            continue
        try:
            _delete(target, settings)
        except TargetDeleting:
            pass  # deletion started (or under way): it is going
        except PgrunbookError as exc:
            report.failed.append({**entry, "why": str(exc)})
            continue
        # not extra=entry: a LogRecord has its own `name` (logging refuses to overwrite it)
        log.info("sweeper deleted a leaked target", extra={"target": target.name, "kind": target.kind,
                                                           "execution": target.execution, "why": why})
        report.deleted.append(entry)
    return report
