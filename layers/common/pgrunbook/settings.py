"""Settings: the one place that reads configuration, once per run, failing loudly.

Each shell builds them once where its work starts and passes them down: the CLI's `main`, a Lambda
handler (lambda_support.Powertools.handler, at the start of each invocation), the Fargate task
(`fargate_task.main`) and the local runner (`localcloud.LocalCloud`, which also writes the functions' environment
through `set_environment`). No other module of the package reads the environment
(tests/unit/test_no_env_reads.py keeps it so; pgtools copies it into the environment of the pg tools it
starts, which is not configuration).

Invariants:
- every variable has ONE meaning and ONE owner, listed in VARIABLES (the settings object and field
  that hold it); a name not listed there is never read, and template.yaml sets only listed names;
- one parser (`_Reader`): a bad value is a SettingsInvalid that names the variable, on one line; a value
  a shell requires and lacks fails at start-up with the variable named (`require`);
- variables that used to mean something and are no longer read (RETIRED) are refused with what
  replaced them, so an old configuration never silently stops working;
- everything here is frozen; secrets (SMOKE_PASSWORD, the sign-in body, URLs with passwords) stay out of
  repr().
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import SettingsInvalid

if TYPE_CHECKING:
    from .cutover.config import CutoverConfig
    from .sizing import Limits

KINDS = ("scheduled", "manual", "pre-migration", "cutover")  # cutover: the final backup of a frozen source
COMPRESSIONS = ("zstd", "gzip", "none")
COUNT_METHODS = ("auto", "archive", "snapshot")
OFF = ("off", "false", "0", "no")
ON = ("on", "true", "1", "yes")


# --------------------------------------------------------------------------- who owns which variable
VARIABLES: dict[str, str] = {
    # the core (CLI and every shell)
    "DATABASE_URL": "Settings.database_url",
    "NEW_DATABASE_URL": "Settings.new_database_url",
    "PGRUNBOOK_BACKUP_DEST": "Settings.backup_dest",
    "BACKUP_DEST": "Settings.backup_dest (the runbook's name, when PGRUNBOOK_BACKUP_DEST is unset)",
    "PGRUNBOOK_KMS_KEY_ID": "Settings.kms_key_id",
    "BACKUP_KMS_KEY_ID": "Settings.kms_key_id (the runbook's name, when PGRUNBOOK_KMS_KEY_ID is unset)",
    "PGRUNBOOK_PG_BIN": "Settings.pg_bin",
    "PGRUNBOOK_COMPRESS_LEVEL": "Settings.compress_level",
    "PGRUNBOOK_DUMP_JOBS": "Settings.dump_jobs",
    "PGRUNBOOK_MULTIPART_CHUNK_MB": "Settings.multipart_chunk_mb",
    "PGRUNBOOK_LOCK_WAIT_TIMEOUT": "Settings.lock_wait_timeout",
    "PGRUNBOOK_WORK_DIR": "Settings.work_dir",
    "PGRUNBOOK_PROGRESS_SECONDS": "Settings.progress_seconds",
    "PGRUNBOOK_COUNT_METHOD": "Settings.count_method",
    "PGRUNBOOK_VERIFY_JOBS": "Settings.verify_jobs",
    "PGRUNBOOK_SQUAWK": "Settings.squawk",
    "PGRUNBOOK_SSLMODE": "Settings.sslmode",
    "PGHOST": "Settings.libpq.host",
    "PGPORT": "Settings.libpq.port",
    "PGUSER": "Settings.libpq.user",
    # the stack (functions, Fargate task, local runner)
    "PGRUNBOOK_DATABASES": "StackSettings.databases",
    "PGRUNBOOK_STACK": "StackSettings.name",
    "PGRUNBOOK_TOPIC_ARN": "StackSettings.topic_arn",
    "PGRUNBOOK_DRILL_DATABASES": "StackSettings.drill_databases",
    "PGRUNBOOK_RUNNER_OVERRIDES": "StackSettings.runner_overrides",
    "PGRUNBOOK_DEFAULT_TARGET": "StackSettings.default_target",
    "PGRUNBOOK_HTTP_CHECKS": "StackSettings.http_checks",
    "PGRUNBOOK_POLL_SECONDS": "StackSettings.poll_seconds",
    "PGRUNBOOK_MAX_POLLS": "StackSettings.max_polls",
    "PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS": "StackSettings.approval_timeout_seconds",
    "PGRUNBOOK_BACKUP_MAX_CONCURRENCY": "StackSettings.backup_max_concurrency",
    "PGRUNBOOK_DEADLINE_MARGIN_SECONDS": "StackSettings.deadline_margin_seconds",
    "POWERTOOLS_METRICS_NAMESPACE": "StackSettings.metrics_namespace",
    "PGRUNBOOK_SIZING_SAFETY": "Settings.sizing.safety (sizing.Limits)",
    "PGRUNBOOK_FARGATE": "Settings.sizing.fargate (sizing.Limits)",
    # the Fargate task's event
    "PGRUNBOOK_OPERATION": "TaskSettings.operation",
    "PGRUNBOOK_EVENT": "TaskSettings.event",
    "PGRUNBOOK_RESULT_KEY": "TaskSettings.result_key",
    # new RDS restore targets (provision.rds)
    "PGRUNBOOK_RDS_TARGETS": "RdsSettings.enabled",
    "PGRUNBOOK_RDS_INSTANCE_CLASS": "RdsSettings.instance_class",
    "PGRUNBOOK_RDS_ENGINE_VERSION": "RdsSettings.engine_version",
    "PGRUNBOOK_RDS_SUBNET_GROUP": "RdsSettings.subnet_group",
    "PGRUNBOOK_RDS_SECURITY_GROUP_IDS": "RdsSettings.security_group_ids",
    "PGRUNBOOK_RDS_KMS_KEY_ID": "RdsSettings.kms_key_id",
    "PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP": "RdsSettings.restore_parameter_group",
    "PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP": "RdsSettings.production_parameter_group",
    "PGRUNBOOK_RDS_STORAGE_GB": "RdsSettings.storage_gb",
    "PGRUNBOOK_RDS_STORAGE_TYPE": "RdsSettings.storage_type",
    "PGRUNBOOK_RDS_MASTER_USERNAME": "RdsSettings.master_username",
    "PGRUNBOOK_RDS_IDENTIFIER_PREFIX": "RdsSettings.identifier_prefix",
    "PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS": "RdsSettings.backup_retention_days",
    "PGRUNBOOK_RDS_WAIT_MINUTES": "RdsSettings.wait_minutes",
    # cutover approvals
    "PGRUNBOOK_APPROVAL_TABLE": "ApprovalSettings.table",
    "PGRUNBOOK_APPROVAL_TOKEN_KEY": "ApprovalSettings.token_key",
    "PGRUNBOOK_APPROVAL_SIGNING_SECRET": "ApprovalSettings.signing_secret",
    "PGRUNBOOK_APPROVAL_URL": "ApprovalSettings.base_url",
    # migrations (CLI)
    "PGRUNBOOK_MIGRATIONS_DIR": "MigrateSettings.migrations_dir",
    "PGRUNBOOK_MIGRATE_LOCK_TIMEOUT": "MigrateSettings.lock_timeout",
    "PGRUNBOOK_MIGRATE_STATEMENT_TIMEOUT": "MigrateSettings.statement_timeout",
    "PGRUNBOOK_MIGRATE_LINT": "MigrateSettings.lint",
    "APP_VERSION": "MigrateSettings.app_version",
    # verify's sign-in check (CLI)
    "SMOKE_SIGNIN_BODY": "SmokeSettings.sign_in_body",
    "SMOKE_EMAIL": "SmokeSettings.email",
    "SMOKE_PASSWORD": "SmokeSettings.password",
    # the cutover function (cutover.config.CutoverConfig)
    "PGRUNBOOK_APP_SECRET_ID": "CutoverConfig.app_secret_id",
    "PGRUNBOOK_APP_SECRET_KEY": "CutoverConfig.app_secret_key",
    "PGRUNBOOK_APP_ECS_SERVICE": "CutoverConfig.ecs_service",
    "PGRUNBOOK_APP_ROLL_WEBHOOK": "CutoverConfig.webhook_url",
    "PGRUNBOOK_ROLL_WEBHOOK_SECRET": "CutoverConfig.webhook_secret",
    "PGRUNBOOK_APP_READY_URL": "CutoverConfig.ready_url",
    "PGRUNBOOK_CUTOVER_ALARMS": "CutoverConfig.alarms",
    "PGRUNBOOK_ATTACHMENT_URL": "CutoverConfig.attachment_url",
    "PGRUNBOOK_SOAK_SECONDS": "CutoverConfig.soak_seconds",
    "PGRUNBOOK_READY_TIMEOUT": "CutoverConfig.ready_timeout",
    "PGRUNBOOK_ROLL_TIMEOUT": "CutoverConfig.roll_timeout",
    "PGRUNBOOK_SESSIONS_GRACE": "CutoverConfig.sessions_grace",
    "PGRUNBOOK_CUTOVER_POLL": "CutoverConfig.poll",
    "PGRUNBOOK_FREEZE_GRACE": "CutoverConfig.freeze_grace",
    "PGRUNBOOK_FREEZE_MAX_SECONDS": "CutoverConfig.freeze_max_seconds",
    "PGRUNBOOK_RETIRE_AFTER_DAYS": "CutoverConfig.retire_after_days",
    "PGRUNBOOK_CUTOVER_STRICT": "CutoverConfig.strict",
    "PGRUNBOOK_APP_DB_USER": "CutoverConfig.app_user",
    "PGRUNBOOK_APP_NAME": "CutoverConfig.app_name",
    "PGRUNBOOK_STAGING_SECRET_ID": "CutoverConfig.staging.secret_id",
    "PGRUNBOOK_STAGING_SECRET_KEY": "CutoverConfig.staging.secret_key",
    "PGRUNBOOK_STAGING_ECS_SERVICE": "CutoverConfig.staging.ecs_service",
    "PGRUNBOOK_STAGING_ROLL_WEBHOOK": "CutoverConfig.staging.webhook_url",
    "PGRUNBOOK_STAGING_URL": "CutoverConfig.staging.url",
    "PGRUNBOOK_STAGING_CHECKS": "CutoverConfig.staging.checks",
    "PGRUNBOOK_STAGING_SIGN_IN": "CutoverConfig.staging.sign_in",
    "PGRUNBOOK_STAGING_SIGN_IN_SECRET": "CutoverConfig.staging.sign_in_secret",
}

# names that used to be read (two meanings, or two names for one thing): refused, with what replaced them
RETIRED: dict[str, str] = {
    "PGRUNBOOK_RDS_PARAMETER_GROUP": "it meant the restore-tuned group in the state machine and the production "
                                     "group in the CLI: set PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP (the group a "
                                     "new target is created with) and/or PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP "
                                     "(the group a kept target ends with)",
    "PGRUNBOOK_RDS_SECURITY_GROUPS": "use PGRUNBOOK_RDS_SECURITY_GROUP_IDS",
    "PGRUNBOOK_TARGET_PREFIX": "use PGRUNBOOK_RDS_IDENTIFIER_PREFIX",
    "PGRUNBOOK_RDS_SSLMODE": "use PGRUNBOOK_SSLMODE (every connection to a database of the stack)",
}


class _Reader:
    """The one parser: reads only names listed in VARIABLES; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str | None = None) -> str | None:
        if name not in VARIABLES:
            raise KeyError(f"{name} is not a configuration variable (add it to settings.VARIABLES)")
        raw = self.env.get(name)
        return raw.strip() if raw is not None and raw.strip() else default

    def string(self, name: str, default: str) -> str:
        value = self.text(name)
        return default if value is None else value

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsInvalid(f"{name} must be an integer, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise SettingsInvalid(f"{name} must be at least {minimum}, got {raw!r}")
        return value

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsInvalid(f"{name} must be a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsInvalid(f"{name} must be a finite number, got {raw!r}")
        if minimum is not None and value < minimum:
            raise SettingsInvalid(f"{name} must be at least {minimum:g}, got {raw!r}")
        return value

    def one_of(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise SettingsInvalid(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ON:
            return True
        if raw.lower() in OFF:
            return False
        raise SettingsInvalid(f"{name} must be on or off, got {raw!r}")

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in (self.text(name) or "").split(",") if p.strip())

    def json(self, name: str, kind: type) -> Any:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsInvalid(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(value, kind):
            raise SettingsInvalid(f"{name} must be a JSON {'list' if kind is list else 'object'}")
        return value


# --------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class DatabaseConfig:
    """One entry of PGRUNBOOK_DATABASES: a database the stack manages and where its credentials are."""

    name: str
    secret_arn: str
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None
    # restore targets of kind "database" on this server are created, loaded and dropped with this secret
    # (a role with CREATEDB), so the backup itself can use a read-only role; default: secret_arn
    target_secret_arn: str | None = None
    # the RDS DB instance (or Aurora cluster) whose PITR window the hourly metrics watch; default: the
    # first label of an RDS endpoint host (<id>.xxxx.<region>.rds.amazonaws.com)
    rds_instance: str | None = None
    rds_cluster: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatabaseConfig:
        try:
            name, secret = str(data["name"]), str(data["secret_arn"])
        except (KeyError, TypeError):
            raise SettingsInvalid(f"PGRUNBOOK_DATABASES: every entry needs 'name' and 'secret_arn': {data!r}") \
                from None
        port = data.get("port")
        try:
            port_number = int(port) if port not in (None, "") else None
        except (TypeError, ValueError):
            raise SettingsInvalid(f"PGRUNBOOK_DATABASES: {name}: port must be a number, got {port!r}") from None
        return cls(name=name, secret_arn=secret, host=data.get("host") or None, port=port_number,
                   dbname=data.get("dbname") or None, sslmode=data.get("sslmode") or None,
                   target_secret_arn=data.get("target_secret_arn") or None,
                   rds_instance=data.get("rds_instance") or None, rds_cluster=data.get("rds_cluster") or None)

    @property
    def target_secret(self) -> str:
        """The secret that creates restore targets on this server (see target_secret_arn)."""
        return self.target_secret_arn or self.secret_arn

    @property
    def database(self) -> str:
        """The database name on the server (default: the configured name). Backups of it live under
        `<dest>/<database>/...`, so two configured entries must not share it."""
        return self.dbname or self.name


def _databases(r: _Reader, sslmode: str) -> tuple[DatabaseConfig, ...]:
    """PGRUNBOOK_DATABASES; an entry without its own sslmode gets PGRUNBOOK_SSLMODE's."""
    items = r.json("PGRUNBOOK_DATABASES", list) or []
    found = tuple(replace(db, sslmode=db.sslmode or sslmode) for db in
                  (DatabaseConfig.from_dict(item if isinstance(item, Mapping) else {}) for item in items))
    seen: dict[str, str] = {}
    for db in found:
        if db.database in seen:
            raise SettingsInvalid(f"PGRUNBOOK_DATABASES: {seen[db.database]!r} and {db.name!r} are both database "
                                  f"{db.database!r}: their backups would share s3://.../{db.database}/")
        seen[db.database] = db.name
    return found


@dataclass(frozen=True)
class StackSettings:
    """What the deployed stack tells its functions (template.yaml, Globals), and the local runner the same."""

    databases: tuple[DatabaseConfig, ...] = ()
    name: str = "local"  # tags and labels of what this stack creates
    topic_arn: str | None = None
    drill_databases: tuple[str, ...] = ()  # empty: every configured database
    runner_overrides: Mapping[str, str] = field(default_factory=dict)  # {"bigdb": "ecs"}
    default_target: Mapping[str, Any] | None = None  # a TargetSpec as JSON
    http_checks: tuple[str, ...] = ()
    poll_seconds: int = 30
    max_polls: int = 120
    approval_timeout_seconds: int = 86400
    backup_max_concurrency: int = 2
    deadline_margin_seconds: float = 20.0
    metrics_namespace: str = "pgrunbook"

    @classmethod
    def read(cls, r: _Reader, sslmode: str = "require") -> StackSettings:
        overrides = r.json("PGRUNBOOK_RUNNER_OVERRIDES", dict) or {}
        bad = {k: v for k, v in overrides.items() if v not in ("lambda", "ecs")}
        if bad:
            raise SettingsInvalid(f"PGRUNBOOK_RUNNER_OVERRIDES: each value must be lambda or ecs, got {bad!r}")
        return cls(databases=_databases(r, sslmode), name=r.string("PGRUNBOOK_STACK", "local"),
                   topic_arn=r.text("PGRUNBOOK_TOPIC_ARN"), drill_databases=r.items("PGRUNBOOK_DRILL_DATABASES"),
                   runner_overrides=MappingProxyType({str(k): str(v) for k, v in overrides.items()}),
                   default_target=r.json("PGRUNBOOK_DEFAULT_TARGET", dict),
                   http_checks=r.items("PGRUNBOOK_HTTP_CHECKS"),
                   poll_seconds=r.integer("PGRUNBOOK_POLL_SECONDS", 30, minimum=0),
                   max_polls=r.integer("PGRUNBOOK_MAX_POLLS", 120, minimum=1),
                   approval_timeout_seconds=r.integer("PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", 86400, minimum=1),
                   backup_max_concurrency=r.integer("PGRUNBOOK_BACKUP_MAX_CONCURRENCY", 2, minimum=1),
                   deadline_margin_seconds=r.number("PGRUNBOOK_DEADLINE_MARGIN_SECONDS", 20.0, minimum=0),
                   metrics_namespace=r.string("POWERTOOLS_METRICS_NAMESPACE", "pgrunbook"))

    def database_map(self) -> dict[str, DatabaseConfig]:
        return {db.name: db for db in self.databases}


@dataclass(frozen=True)
class RdsSettings:
    """New RDS restore targets (provision.rds): the ONLY reader of PGRUNBOOK_RDS_*, one meaning each."""

    enabled: bool = True  # PGRUNBOOK_RDS_TARGETS: the stack created what RDS targets need
    instance_class: str = "db.t4g.medium"
    engine_version: str | None = None
    subnet_group: str | None = None
    security_group_ids: tuple[str, ...] = ()
    kms_key_id: str | None = None
    restore_parameter_group: str | None = None  # a new target is created with it (restore-tuned)
    production_parameter_group: str | None = None  # a kept target ends with it (default: default.postgres<major>)
    storage_gb: int = 50
    storage_type: str = "gp3"
    master_username: str = "pgrunbook"
    identifier_prefix: str = "pgrunbook-drill"  # the template: pgrb-<stack id> (IAM is scoped on it)
    backup_retention_days: int = 7  # automated backups (PITR) of a kept target
    wait_minutes: int = 60  # how long the CLI waits for one step (create, modify, delete)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RdsSettings:
        return cls.read(_Reader(_environ(env)))

    @classmethod
    def read(cls, r: _Reader) -> RdsSettings:
        p = "PGRUNBOOK_RDS_"
        return cls(enabled=r.flag(p + "TARGETS", True),
                   instance_class=r.string(p + "INSTANCE_CLASS", cls.instance_class),
                   engine_version=r.text(p + "ENGINE_VERSION"), subnet_group=r.text(p + "SUBNET_GROUP"),
                   security_group_ids=r.items(p + "SECURITY_GROUP_IDS"), kms_key_id=r.text(p + "KMS_KEY_ID"),
                   restore_parameter_group=r.text(p + "RESTORE_PARAMETER_GROUP"),
                   production_parameter_group=r.text(p + "PRODUCTION_PARAMETER_GROUP"),
                   storage_gb=r.integer(p + "STORAGE_GB", cls.storage_gb, minimum=20),
                   storage_type=r.string(p + "STORAGE_TYPE", cls.storage_type),
                   master_username=r.string(p + "MASTER_USERNAME", cls.master_username),
                   identifier_prefix=r.string(p + "IDENTIFIER_PREFIX", cls.identifier_prefix),
                   backup_retention_days=r.integer(p + "BACKUP_RETENTION_DAYS", cls.backup_retention_days, minimum=1),
                   wait_minutes=r.integer(p + "WAIT_MINUTES", cls.wait_minutes, minimum=1))


APPROVAL_VARIABLES = ("PGRUNBOOK_APPROVAL_TABLE", "PGRUNBOOK_APPROVAL_TOKEN_KEY", "PGRUNBOOK_APPROVAL_SIGNING_SECRET")


@dataclass(frozen=True)
class ApprovalSettings:
    """Where the approval machinery lives (the report and approval functions; the CLI's endpoint)."""

    table: str = ""  # DynamoDB table of approval records
    token_key: str = ""  # KMS key that seals task tokens
    signing_secret: str = ""  # Secrets Manager secret: the HMAC key of the links
    base_url: str = ""  # base URL of the HTTP API (links are built on it)

    @classmethod
    def read(cls, r: _Reader) -> ApprovalSettings:
        return cls(table=r.string("PGRUNBOOK_APPROVAL_TABLE", ""),
                   token_key=r.string("PGRUNBOOK_APPROVAL_TOKEN_KEY", ""),
                   signing_secret=r.string("PGRUNBOOK_APPROVAL_SIGNING_SECRET", ""),
                   base_url=r.string("PGRUNBOOK_APPROVAL_URL", "").rstrip("/"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApprovalSettings:
        return cls.read(_Reader(_environ(env))).required()

    def required(self) -> ApprovalSettings:
        """These settings, or SettingsInvalid naming every variable an approval needs and lacks."""
        values = (self.table, self.token_key, self.signing_secret)
        missing = [n for n, v in zip(APPROVAL_VARIABLES, values, strict=True) if not v]
        if missing:
            raise SettingsInvalid(f"approvals are not configured: {', '.join(missing)} not set")
        return self


@dataclass(frozen=True)
class MigrateSettings:
    """Defaults of `pgrunbook migrate` (its options win)."""

    migrations_dir: str = "prisma/migrations"
    lock_timeout: str | None = None
    statement_timeout: str | None = None
    lint: str = "strict"
    app_version: str | None = None

    @classmethod
    def read(cls, r: _Reader) -> MigrateSettings:
        lint = r.string("PGRUNBOOK_MIGRATE_LINT", "strict")
        if lint not in ("strict", "warn", "off"):
            raise SettingsInvalid(f"PGRUNBOOK_MIGRATE_LINT must be strict, warn or off, got {lint!r}")
        return cls(migrations_dir=r.string("PGRUNBOOK_MIGRATIONS_DIR", "prisma/migrations"),
                   lock_timeout=r.text("PGRUNBOOK_MIGRATE_LOCK_TIMEOUT"),
                   statement_timeout=r.text("PGRUNBOOK_MIGRATE_STATEMENT_TIMEOUT"), lint=lint,
                   app_version=r.text("APP_VERSION"))


@dataclass(frozen=True)
class SmokeSettings:
    """Credentials of verify's sign-in check: SMOKE_SIGNIN_BODY (JSON) or SMOKE_EMAIL + SMOKE_PASSWORD."""

    sign_in_body: Any = field(default=None, repr=False)
    email: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def read(cls, r: _Reader) -> SmokeSettings:
        raw = r.text("SMOKE_SIGNIN_BODY")
        body = None
        if raw is not None:
            try:
                body = json.loads(raw)
            except ValueError:
                raise SettingsInvalid("SMOKE_SIGNIN_BODY is not valid JSON") from None
        return cls(sign_in_body=body, email=r.text("SMOKE_EMAIL"), password=r.text("SMOKE_PASSWORD"))

    def body(self) -> Any:
        """The sign-in request's JSON body, or SettingsInvalid naming the variables to set."""
        if self.sign_in_body is not None:
            return self.sign_in_body
        if not self.email or not self.password:
            raise SettingsInvalid("a sign-in check needs credentials: set SMOKE_SIGNIN_BODY (JSON) or SMOKE_EMAIL "
                                  "and SMOKE_PASSWORD")
        return {"email": self.email, "password": self.password}


@dataclass(frozen=True)
class LibpqDefaults:
    """What libpq itself would take from the environment (dburl.to_secret resolves it once, so a stored
    secret names the same server wherever it is read)."""

    host: str | None = None
    port: str | None = None
    user: str | None = None

    @classmethod
    def read(cls, r: _Reader) -> LibpqDefaults:
        return cls(host=r.text("PGHOST"), port=r.text("PGPORT"), user=r.text("PGUSER"))


TASK_VARIABLES = ("PGRUNBOOK_OPERATION", "PGRUNBOOK_EVENT", "PGRUNBOOK_RESULT_KEY")


@dataclass(frozen=True)
class TaskSettings:
    """The Fargate task's assignment (the state machine sets it in the container's environment)."""

    operation: str = ""
    event: str = field(default="", repr=False)
    result_key: str = ""

    @classmethod
    def read(cls, r: _Reader) -> TaskSettings:
        return cls(operation=r.string("PGRUNBOOK_OPERATION", ""), event=r.string("PGRUNBOOK_EVENT", ""),
                   result_key=r.string("PGRUNBOOK_RESULT_KEY", ""))


def _sizing(r: _Reader) -> Limits:
    from .sizing import DEFAULT_SAFETY, Limits

    return Limits(safety=r.number("PGRUNBOOK_SIZING_SAFETY", DEFAULT_SAFETY, minimum=1),
                  fargate=r.flag("PGRUNBOOK_FARGATE", True))


def _default_sizing() -> Limits:
    from .sizing import Limits

    return Limits()


def _cutover(r: _Reader) -> CutoverConfig:
    from .cutover.config import CutoverConfig, StagingConfig

    staging = None
    if r.text("PGRUNBOOK_STAGING_SECRET_ID"):
        if not r.text("PGRUNBOOK_STAGING_URL") or bool(r.text("PGRUNBOOK_STAGING_ECS_SERVICE")) == bool(
                r.text("PGRUNBOOK_STAGING_ROLL_WEBHOOK")):
            raise SettingsInvalid("a staging service needs PGRUNBOOK_STAGING_URL and one of "
                                  "PGRUNBOOK_STAGING_ECS_SERVICE or PGRUNBOOK_STAGING_ROLL_WEBHOOK")
        staging = StagingConfig(secret_id=r.string("PGRUNBOOK_STAGING_SECRET_ID", ""),
                                url=r.string("PGRUNBOOK_STAGING_URL", ""),
                                secret_key=r.text("PGRUNBOOK_STAGING_SECRET_KEY"),
                                ecs_service=r.text("PGRUNBOOK_STAGING_ECS_SERVICE"),
                                webhook_url=r.text("PGRUNBOOK_STAGING_ROLL_WEBHOOK"),
                                checks=r.items("PGRUNBOOK_STAGING_CHECKS"),
                                sign_in=r.text("PGRUNBOOK_STAGING_SIGN_IN"),
                                sign_in_secret=r.text("PGRUNBOOK_STAGING_SIGN_IN_SECRET"))
    cfg = CutoverConfig(app_secret_id=r.text("PGRUNBOOK_APP_SECRET_ID"),
                        app_secret_key=r.text("PGRUNBOOK_APP_SECRET_KEY"),
                        ecs_service=r.text("PGRUNBOOK_APP_ECS_SERVICE"),
                        webhook_url=r.text("PGRUNBOOK_APP_ROLL_WEBHOOK"),
                        webhook_secret=r.text("PGRUNBOOK_ROLL_WEBHOOK_SECRET"),
                        ready_url=r.text("PGRUNBOOK_APP_READY_URL"),
                        alarms=r.items("PGRUNBOOK_CUTOVER_ALARMS"),
                        attachment_url=r.text("PGRUNBOOK_ATTACHMENT_URL"),
                        soak_seconds=r.number("PGRUNBOOK_SOAK_SECONDS", 60.0, minimum=0),
                        ready_timeout=r.number("PGRUNBOOK_READY_TIMEOUT", 300.0, minimum=0),
                        roll_timeout=r.number("PGRUNBOOK_ROLL_TIMEOUT", 600.0, minimum=0),
                        sessions_grace=r.number("PGRUNBOOK_SESSIONS_GRACE", 60.0, minimum=0),
                        poll=r.number("PGRUNBOOK_CUTOVER_POLL", 5.0, minimum=0),
                        freeze_grace=r.number("PGRUNBOOK_FREEZE_GRACE", 30.0, minimum=0),
                        freeze_max_seconds=r.number("PGRUNBOOK_FREEZE_MAX_SECONDS", 600.0, minimum=0),
                        retire_after_days=r.integer("PGRUNBOOK_RETIRE_AFTER_DAYS", 7, minimum=0),
                        strict=r.flag("PGRUNBOOK_CUTOVER_STRICT", False),
                        app_user=r.text("PGRUNBOOK_APP_DB_USER"), app_name=r.text("PGRUNBOOK_APP_NAME"),
                        work_dir=r.text("PGRUNBOOK_WORK_DIR"), staging=staging)
    if cfg.app_secret_id and cfg.ecs_service and cfg.webhook_url:
        raise SettingsInvalid("set PGRUNBOOK_APP_ECS_SERVICE or PGRUNBOOK_APP_ROLL_WEBHOOK, not both")
    return cfg


def _default_cutover() -> CutoverConfig:
    from .cutover.config import CutoverConfig

    return CutoverConfig()


# --------------------------------------------------------------------------- all of it
@dataclass(frozen=True)
class Settings:
    """Everything configurable, built once by a shell (`from_env`) and passed down. `Settings()` is the
    configuration of an empty environment (tests build exactly what they need)."""

    database_url: str | None = field(default=None, repr=False)
    new_database_url: str | None = field(default=None, repr=False)
    backup_dest: str = "./backups"
    kms_key_id: str | None = None
    pg_bin: str | None = None
    compress_level: int = 1
    dump_jobs: int = 0  # 0 = choose by CPU count
    multipart_chunk_mb: int | None = None  # S3 part size override (default: from the database size, store.py)
    min_free_space_factor: float = 1.5
    lock_wait_timeout: int = 120  # seconds a backup waits for a table lock (0: forever)
    work_dir: str | None = None  # where restores download (default: the system's temporary folder)
    progress_seconds: float = 5.0  # off a terminal, long commands print a progress line this often (0: every poll)
    # exact counts (docs/architecture.md "Exact counts"): "snapshot" = count(*) in the dump's snapshot;
    # with a parallel dump "archive" = every table from the dump's own data files, "auto" = count(*) where
    # it reads an index, the data files for the rest (streamed formats always count in the snapshot)
    count_method: str = "auto"
    verify_jobs: int | None = None  # verify's counting connections (default: verify.default_jobs())
    squawk: str | None = None  # the squawk binary of the lint gate (default: found on PATH)
    sslmode: str = "require"  # connections to the stack's databases and to new RDS targets
    libpq: LibpqDefaults = field(default_factory=LibpqDefaults)
    stack: StackSettings = field(default_factory=StackSettings)
    sizing: Limits = field(default_factory=_default_sizing)
    rds: RdsSettings = field(default_factory=RdsSettings)
    approval: ApprovalSettings = field(default_factory=ApprovalSettings)
    migrate: MigrateSettings = field(default_factory=MigrateSettings)
    smoke: SmokeSettings = field(default_factory=SmokeSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    cutover: CutoverConfig = field(default_factory=_default_cutover)
    # the variables as they were at start-up, for a value whose NAME the user gives (--webhook-secret-env)
    named: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable once (the process environment, or `env`); SettingsInvalid on a bad one."""
        env = _environ(env)
        retired = sorted(n for n in RETIRED if env.get(n))
        if retired:
            raise SettingsInvalid(f"{retired[0]} is no longer read: {RETIRED[retired[0]]}")
        r = _Reader(env)
        return cls(
            database_url=r.text("DATABASE_URL"),
            new_database_url=r.text("NEW_DATABASE_URL"),
            backup_dest=r.text("PGRUNBOOK_BACKUP_DEST") or r.text("BACKUP_DEST") or "./backups",
            kms_key_id=r.text("PGRUNBOOK_KMS_KEY_ID") or r.text("BACKUP_KMS_KEY_ID"),
            pg_bin=r.text("PGRUNBOOK_PG_BIN"),
            compress_level=r.integer("PGRUNBOOK_COMPRESS_LEVEL", 1),
            dump_jobs=r.integer("PGRUNBOOK_DUMP_JOBS", 0, minimum=0),
            multipart_chunk_mb=r.integer("PGRUNBOOK_MULTIPART_CHUNK_MB", 0, minimum=5) or None,
            lock_wait_timeout=r.integer("PGRUNBOOK_LOCK_WAIT_TIMEOUT", 120, minimum=0),
            work_dir=r.text("PGRUNBOOK_WORK_DIR"),
            progress_seconds=r.number("PGRUNBOOK_PROGRESS_SECONDS", 5.0, minimum=0),
            count_method=r.one_of("PGRUNBOOK_COUNT_METHOD", COUNT_METHODS, "auto"),
            verify_jobs=r.integer("PGRUNBOOK_VERIFY_JOBS", 0, minimum=1) or None,
            squawk=r.text("PGRUNBOOK_SQUAWK"),
            sslmode=r.string("PGRUNBOOK_SSLMODE", "require"),
            libpq=LibpqDefaults.read(r),
            stack=StackSettings.read(r, r.string("PGRUNBOOK_SSLMODE", "require")),
            sizing=_sizing(r),
            rds=RdsSettings.read(r),
            approval=ApprovalSettings.read(r),
            migrate=MigrateSettings.read(r),
            smoke=SmokeSettings.read(r),
            task=TaskSettings.read(r),
            cutover=_cutover(r),
            named=MappingProxyType(dict(env)),
        )

    def require(self, *variables: str) -> Settings:
        """These settings, or SettingsInvalid naming every listed variable that is not set (a shell calls
        this at start-up with what it cannot work without)."""
        unknown = [n for n in variables if n not in VARIABLES]
        if unknown:
            raise KeyError(f"not configuration variables: {', '.join(unknown)}")
        missing = [n for n in variables if not self.named.get(n, "").strip()]
        if missing:
            raise SettingsInvalid(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required but not set")
        return self

    def variable(self, name: str) -> str | None:
        """A variable whose name the user gave (e.g. `--webhook-secret-env NAME`), as it was at start-up."""
        value = self.named.get(name)
        return value if value else None

    def database(self, name: str) -> DatabaseConfig:
        """The configured database `name` (PGRUNBOOK_DATABASES), or UnknownDatabase naming the configured ones."""
        from .errors import UnknownDatabase

        dbs = self.stack.database_map()
        if name not in dbs:
            known = ", ".join(sorted(dbs)) or "none"
            raise UnknownDatabase(f"unknown database {name!r} (configured: {known})")
        return dbs[name]


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def set_environment(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) variables of this process; returns their previous values, to give back to
    this function. Only the local runner uses it: its functions read their settings from the environment,
    as on Lambda."""
    previous: dict[str, str | None] = {}
    for key, value in values.items():
        previous[key] = os.environ.get(key)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return previous


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`set_environment` for the duration of a block."""
    previous = set_environment(values)
    try:
        yield
    finally:
        set_environment(previous)
