"""Plumbing shared by the Lambda handlers, the Fargate task and the local runner.

- which databases the stack manages (PGRUNBOOK_DATABASES, a JSON list) and how to reach them:
  credentials come from Secrets Manager (an RDS-managed secret holds username/password; a
  rotation-style secret may also hold host/port/dbname), never from plain environment values;
- per-database CloudWatch metrics (Embedded Metric Format through powertools);
- Lambda's error shape, so every shell reports a failure the way Step Functions matches it.

Configuration (environment of the functions, set by template.yaml):
  PGRUNBOOK_DATABASES  [{"name": "app", "secret_arn": "arn:...", "host": "...", "port": 5432,
                         "dbname": "app" (default: name), "sslmode": "require"}, ...]
  PGRUNBOOK_BACKUP_DEST s3://bucket   PGRUNBOOK_KMS_KEY_ID   PGRUNBOOK_TOPIC_ARN
  PGRUNBOOK_SSLMODE (default for all databases, "require")
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import aws
from .errors import PgrunbookError, UsageError

DATABASES_ENV = "PGRUNBOOK_DATABASES"
METRICS_NAMESPACE = "pgrunbook"


class UnknownDatabase(UsageError):
    """A state machine input named a database the stack is not configured for."""


class ConfigError(PgrunbookError):
    """The stack's configuration (environment of the function) is invalid."""


class TransientError(PgrunbookError):
    """Worth retrying (throttling, a network blip to an AWS API). State machines retry this name."""


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    secret_arn: str
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    sslmode: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatabaseConfig:
        try:
            name, secret = str(data["name"]), str(data["secret_arn"])
        except (KeyError, TypeError):
            raise ConfigError(f"{DATABASES_ENV}: every entry needs 'name' and 'secret_arn': {data!r}") from None
        port = data.get("port")
        return cls(name=name, secret_arn=secret, host=data.get("host") or None,
                   port=int(port) if port not in (None, "") else None,
                   dbname=data.get("dbname") or None, sslmode=data.get("sslmode") or None)

    @property
    def database(self) -> str:
        """The database name on the server (default: the configured name). Backups of it live under
        `<dest>/<database>/...`, so two configured entries must not share it."""
        return self.dbname or self.name


def configured_databases(env: Mapping[str, str] | None = None) -> dict[str, DatabaseConfig]:
    env = os.environ if env is None else env
    raw = env.get(DATABASES_ENV, "").strip()
    if not raw:
        return {}
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{DATABASES_ENV} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ConfigError(f"{DATABASES_ENV} must be a JSON list of databases")
    found = [DatabaseConfig.from_dict(item) for item in items]
    seen: dict[str, str] = {}
    for db in found:
        if db.database in seen:
            raise ConfigError(f"{DATABASES_ENV}: {seen[db.database]!r} and {db.name!r} are both database "
                              f"{db.database!r}: their backups would share s3://.../{db.database}/")
        seen[db.database] = db.name
    return {db.name: db for db in found}


def database_config(name: str, env: Mapping[str, str] | None = None) -> DatabaseConfig:
    dbs = configured_databases(env)
    if name not in dbs:
        known = ", ".join(sorted(dbs)) or "none"
        raise UnknownDatabase(f"unknown database {name!r} (configured: {known})")
    return dbs[name]


def read_secret(secret_arn: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "InternalServiceError"):
            raise TransientError(f"Secrets Manager: {code}") from None
        raise ConfigError(f"cannot read secret {secret_arn}: {code}") from None
    except BotoCoreError as exc:
        raise TransientError(f"Secrets Manager unreachable: {exc}") from None
    try:
        data = json.loads(resp.get("SecretString") or "")
    except json.JSONDecodeError:
        raise ConfigError(f"secret {secret_arn} is not a JSON object with username/password") from None
    if not isinstance(data, dict) or "password" not in data:
        raise ConfigError(f"secret {secret_arn} holds no password")
    return data


def secret_url(secret_arn: str, *, host: str | None = None, port: int | None = None, dbname: str | None = None,
               sslmode: str | None = None) -> str:
    """A libpq URL built from a secret (username, password[, host, port, dbname]); explicit values win."""
    secret = read_secret(secret_arn)
    host = host or secret.get("host")
    dbname = dbname or secret.get("dbname") or "postgres"
    port = port or (int(secret["port"]) if secret.get("port") else 5432)
    user = secret.get("username") or secret.get("user")
    if not host or not user:
        raise ConfigError(f"secret {secret_arn}: no host/username (set them in {DATABASES_ENV} or the secret)")
    mode = sslmode or os.environ.get("PGRUNBOOK_SSLMODE") or "require"
    return (f"postgresql://{quote(str(user), safe='')}:{quote(str(secret['password']), safe='')}"
            f"@{host}:{port}/{quote(dbname, safe='')}?sslmode={mode}")


def database_url(db: DatabaseConfig) -> str:
    return secret_url(db.secret_arn, host=db.host, port=db.port, dbname=db.database, sslmode=db.sslmode)


# --------------------------------------------------------------------------- metrics
def put_metric(metrics: Any, name: str, value: float, unit: str, database: str | None = None) -> None:
    """One metric with the Database dimension (alarms address it exactly)."""
    emit_metrics(metrics, database, {name: (value, unit)})


def emit_metrics(metrics: Any, database: str | None, values: Mapping[str, tuple[float, str]]) -> None:
    """Several metrics in one Embedded Metric Format blob, dimension Database (when given) only.

    `metrics` is the handler's powertools Metrics (its namespace is used) or None (the Fargate task,
    the local runner): the blob is printed on stdout, which CloudWatch Logs turns into metrics."""
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    namespace = getattr(metrics, "namespace", None) or os.environ.get("POWERTOOLS_METRICS_NAMESPACE") \
        or METRICS_NAMESPACE
    blob = EphemeralMetrics(namespace=namespace)
    if database is not None:
        blob.add_dimension(name="Database", value=database)
    for name, (value, unit) in values.items():
        blob.add_metric(name=name, unit=MetricUnit(unit), value=value)
    blob.flush_metrics()


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Powertools:
    """One function's powertools Logger/Tracer/Metrics, wired the same way for every handler."""

    logger: Any
    tracer: Any
    metrics: Any

    def handler(self, *, log_event: bool = True) -> Callable[[Handler], Handler]:
        """Decorate a lambda_handler: Lambda context in the logs (and the event, unless it may carry
        secrets), an X-Ray segment without the response, metrics flushed at the end."""

        def wrap(fn: Handler) -> Handler:
            fn = self.metrics.log_metrics(raise_on_empty_metrics=False)(fn)
            fn = self.tracer.capture_lambda_handler(capture_response=False)(fn)
            return self.logger.inject_lambda_context(log_event=log_event)(fn)  # type: ignore[no-any-return]

        return wrap


def powertools() -> Powertools:
    """Create a handler's powertools instances (at module level, once per cold start)."""
    from aws_lambda_powertools import Logger, Metrics, Tracer

    tools = Powertools(logger=Logger(), tracer=Tracer(), metrics=Metrics())
    setup_handler_logging(tools.logger)
    return tools


def setup_handler_logging(logger: Any) -> None:
    """The core's loggers (`pgrunbook.*`) write through the handler's powertools Logger (JSON, masked)."""
    import warnings

    from aws_lambda_powertools.logging import utils

    utils.copy_config_to_registered_loggers(source_logger=logger, include={"pgrunbook"})
    # metrics go out through emit_metrics (own EMF blobs, dimension Database), not the handler's Metrics
    warnings.filterwarnings("ignore", message="No application metrics to publish")


@dataclass
class LocalContext:
    """A stand-in for Lambda's context object (unit tests, the local runner, the Fargate task)."""

    function_name: str = "local"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local"
    aws_request_id: str = "local-request"
    log_group_name: str = "local"
    log_stream_name: str = "local"
    function_version: str = "$LATEST"
    timeout_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_ms


# --------------------------------------------------------------------------- errors
def error_type(exc: BaseException) -> str:
    """The errorType Lambda reports for an unhandled exception: the class name."""
    return type(exc).__name__


def error_payload(exc: BaseException) -> dict[str, Any]:
    """Lambda's body for an unhandled exception ({errorType, errorMessage, stackTrace})."""
    from .dburl import mask_secrets

    return {"errorType": error_type(exc), "errorMessage": mask_secrets(str(exc)),
            "stackTrace": [mask_secrets(line) for line in traceback.format_tb(exc.__traceback__)][-5:]}
