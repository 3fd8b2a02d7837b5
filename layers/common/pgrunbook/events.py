"""Typed inputs of the Lambda handlers (and of the Fargate task, which takes the same events).

Each model is a frozen dataclass with `parse(event)`: a missing or mistyped field raises
EventError (a UsageError) naming the field, so a state machine fed a bad input fails at its
first step with a readable message. Nothing here touches AWS.

EventError lives in errors.py (one class for every handler, the Migrate function's included).

Secrets never travel in events: a database is named (configured in PGRUNBOOK_DATABASES) and a
provisioned target is described by a TargetRef whose credentials live in Secrets Manager.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .errors import EventError as EventError  # re-exported: handlers import it from here
from .migrations.lint import LINT_MODES
from .migrations.lock import DEFAULT_WAIT_SECONDS
from .migrations.runner import DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT, ApplyOptions
from .settings import KINDS

MODES = ("drill", "cutover")
TARGET_KINDS = ("database", "rds")
PROVISION_ACTIONS = ("create", "status", "delete")
RUNNERS = ("lambda", "ecs")

T = TypeVar("T")


def _get(data: Mapping[str, Any], name: str, typ: type[T], what: str, *, default: Any = ...,
         choices: tuple[str, ...] | None = None) -> T:
    if name not in data or data[name] is None:
        if default is ...:
            raise EventError(f"{what}: missing field '{name}'")
        return default  # type: ignore[no-any-return]
    value = data[name]
    if typ is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise EventError(f"{what}: field '{name}' must be {typ.__name__}, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise EventError(f"{what}: field '{name}' must be one of {', '.join(choices)}, not {value!r}")
    return value


def _mapping(event: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(event, Mapping):
        raise EventError(f"{what}: expected a JSON object, got {type(event).__name__}")
    return event


@dataclass(frozen=True)
class BackupEvent:
    """One database's backup (the Backup state machine's Map item)."""

    database: str
    kind: str = "scheduled"
    jobs: int | None = None

    @classmethod
    def parse(cls, event: Any) -> BackupEvent:
        d = _mapping(event, "backup event")
        return cls(database=_get(d, "database", str, "backup event"),
                   kind=_get(d, "kind", str, "backup event", default="scheduled", choices=KINDS),
                   jobs=_get(d, "jobs", int, "backup event", default=None))


@dataclass(frozen=True)
class BackupPlanEvent:
    """The Backup state machine's input: which databases (default: all configured) and the kind."""

    databases: tuple[str, ...] = ()
    kind: str = "scheduled"

    @classmethod
    def parse(cls, event: Any) -> BackupPlanEvent:
        d = _mapping(event, "backup input")
        names = _get(d, "databases", list, "backup input", default=[])
        if not all(isinstance(n, str) and n for n in names):
            raise EventError("backup input: 'databases' must be a list of database names")
        return cls(databases=tuple(names), kind=_get(d, "kind", str, "backup input", default="scheduled",
                                                     choices=KINDS))


@dataclass(frozen=True)
class TargetSpec:
    """Where a restore goes: a new database on a configured server (`database`, cheap drills) or a
    new RDS instance (`rds`). Optional settings override the stack's defaults."""

    kind: str = "database"
    server: str | None = None  # kind=database: the configured database whose server hosts the new one
    instance_class: str | None = None  # kind=rds
    allocated_storage_gb: int | None = None  # kind=rds
    name: str | None = None  # explicit name of the new database / instance (default: generated)

    @classmethod
    def parse(cls, data: Any, what: str = "target") -> TargetSpec:
        d = _mapping(data, what)
        return cls(kind=_get(d, "kind", str, what, default="database", choices=TARGET_KINDS),
                   server=_get(d, "server", str, what, default=None),
                   instance_class=_get(d, "instance_class", str, what, default=None),
                   allocated_storage_gb=_get(d, "allocated_storage_gb", int, what, default=None),
                   name=_get(d, "name", str, what, default=None))


@dataclass(frozen=True)
class TargetRef:
    """A provisioned target as it travels through a state machine: no password, only where its
    credentials are (a Secrets Manager secret) and how to reach it."""

    kind: str
    name: str  # database name (kind=database) or DB instance identifier (kind=rds)
    dbname: str
    secret_arn: str | None = None
    host: str | None = None
    port: int | None = None
    server: str | None = None  # kind=database: the configured database whose server it is on
    status: str = "creating"  # creating | available | deleted | failed
    checks: int = 0  # status polls so far

    @classmethod
    def parse(cls, data: Any, what: str = "target") -> TargetRef:
        d = _mapping(data, what)
        return cls(kind=_get(d, "kind", str, what, choices=TARGET_KINDS), name=_get(d, "name", str, what),
                   dbname=_get(d, "dbname", str, what), secret_arn=_get(d, "secret_arn", str, what, default=None),
                   host=_get(d, "host", str, what, default=None), port=_get(d, "port", int, what, default=None),
                   server=_get(d, "server", str, what, default=None),
                   status=_get(d, "status", str, what, default="creating"),
                   checks=_get(d, "checks", int, what, default=0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestorePlanEvent:
    """The Restore state machine's input.

    {"database": "app", "backup": "latest" | "s3://.../x.dump", "mode": "drill" | "cutover",
     "target": {"kind": "database" | "rds", ...}}"""

    database: str
    backup: str = "latest"
    mode: str = "drill"
    target: TargetSpec | None = None

    @classmethod
    def parse(cls, event: Any) -> RestorePlanEvent:
        d = _mapping(event, "restore input")
        target = d.get("target")
        return cls(database=_get(d, "database", str, "restore input"),
                   backup=_get(d, "backup", str, "restore input", default="latest"),
                   mode=_get(d, "mode", str, "restore input", default="drill", choices=MODES),
                   target=None if target is None else TargetSpec.parse(target, "restore input: target"))


@dataclass(frozen=True)
class ProvisionEvent:
    action: str
    target: TargetRef | None = None  # status / delete
    spec: TargetSpec | None = None  # create
    database: str | None = None  # create: the source database (names the new target)
    execution: str | None = None  # create: the execution name (makes the target name unique)

    @classmethod
    def parse(cls, event: Any) -> ProvisionEvent:
        d = _mapping(event, "provision event")
        action = _get(d, "action", str, "provision event", choices=PROVISION_ACTIONS)
        if action == "create":
            return cls(action=action, spec=TargetSpec.parse(d.get("spec") or {}, "provision event: spec"),
                       database=_get(d, "database", str, "provision event"),
                       execution=_get(d, "execution", str, "provision event", default=None))
        raw = d.get("target")
        return cls(action=action, target=None if raw is None and action == "delete"
                   else TargetRef.parse(raw, "provision event: target"))


@dataclass(frozen=True)
class RestoreEvent:
    backup: str  # URI of the archive
    target: TargetRef
    jobs: int | None = None

    @classmethod
    def parse(cls, event: Any) -> RestoreEvent:
        d = _mapping(event, "restore event")
        return cls(backup=_get(d, "backup", str, "restore event"),
                   target=TargetRef.parse(d.get("target"), "restore event: target"),
                   jobs=_get(d, "jobs", int, "restore event", default=None))


@dataclass(frozen=True)
class VerifyEvent:
    backup: str  # archive URI (its manifest is beside it)
    target: TargetRef
    database: str | None = None
    app_url: str | None = None
    checks: tuple[str, ...] = ()  # "GET:/health:200"
    jobs: int | None = None  # tables counted at once (default: pgrunbook.verify.default_jobs())

    @classmethod
    def parse(cls, event: Any) -> VerifyEvent:
        d = _mapping(event, "verify event")
        checks = _get(d, "checks", list, "verify event", default=[])
        return cls(backup=_get(d, "backup", str, "verify event"),
                   target=TargetRef.parse(d.get("target"), "verify event: target"),
                   database=_get(d, "database", str, "verify event", default=None),
                   app_url=_get(d, "app_url", str, "verify event", default=None),
                   checks=tuple(str(c) for c in checks),
                   jobs=_get(d, "jobs", int, "verify event", default=None))


@dataclass(frozen=True)
class ReportEvent:
    """The report/notify function's input: `action` picks what it does with `data`."""

    action: str
    data: dict[str, Any] = field(default_factory=dict)

    ACTIONS = ("backup-summary", "restore-report", "request-approval", "metrics", "describe-error")

    @classmethod
    def parse(cls, event: Any) -> ReportEvent:
        d = _mapping(event, "report event")
        action = _get(d, "action", str, "report event", choices=cls.ACTIONS)
        return cls(action=action, data={k: v for k, v in d.items() if k != "action"})


MIGRATE_ACTIONS = ("plan", "lint", "backup", "apply", "status")


@dataclass(frozen=True)
class MigrateEvent:
    """One step of the Migrate state machine: {"action": ..., "input": <the execution's input>} (the
    machine's shape) or the same fields flat. The input: {"database", "migrations" (folder or s3://
    prefix), "app_version", "lint", "lock_timeout", "statement_timeout", "wait_for_lock", "skip_backup",
    "reason"}; skip_backup needs a reason."""

    action: str
    database: str
    migrations: str
    app_version: str | None = None
    lint: str = "strict"
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT
    wait_for_lock: float = DEFAULT_WAIT_SECONDS
    skip_backup: bool = False
    reason: str | None = None

    def apply_options(self) -> ApplyOptions:
        """The Apply step's options: the event's timeouts, the migrator's defaults for the rest."""
        return ApplyOptions(lock_timeout=self.lock_timeout, statement_timeout=self.statement_timeout,
                            wait_for_lock=self.wait_for_lock)

    @classmethod
    def parse(cls, event: Any) -> MigrateEvent:
        what = "migrate event"
        d = _mapping(event, what)
        if isinstance(d.get("input"), Mapping):  # the state machine passes {"action": ..., "input": <its input>}
            d = {**d["input"], "action": d.get("action")}
        if any(d.get(name) is None for name in ("action", "database", "migrations")):
            raise EventError(f"{what}: 'action', 'database' and 'migrations' are required")

        def text(name: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
            value = _get(d, name, str, what, default=default, choices=choices)
            if value is not None and not value:
                raise EventError(f"{what}: field '{name}' must be a non-empty string")
            return value

        wait = d.get("wait_for_lock", DEFAULT_WAIT_SECONDS)
        if not isinstance(wait, int | float) or isinstance(wait, bool):
            raise EventError(f"{what}: field 'wait_for_lock' must be a number of seconds")
        skip = d.get("skip_backup", False)
        if not isinstance(skip, bool):
            raise EventError(f"{what}: field 'skip_backup' must be true or false")
        reason = text("reason")
        if skip and not reason:
            raise EventError(f"{what}: 'skip_backup' needs a 'reason' (it is recorded in the execution)")
        return cls(action=str(text("action", choices=MIGRATE_ACTIONS)), database=str(text("database")),
                   migrations=str(text("migrations")), app_version=text("app_version"), skip_backup=skip,
                   reason=reason, lint=text("lint", "strict", LINT_MODES) or "strict",
                   lock_timeout=text("lock_timeout", DEFAULT_LOCK_TIMEOUT) or DEFAULT_LOCK_TIMEOUT,
                   statement_timeout=text("statement_timeout", DEFAULT_STATEMENT_TIMEOUT) or DEFAULT_STATEMENT_TIMEOUT,
                   wait_for_lock=float(wait))
