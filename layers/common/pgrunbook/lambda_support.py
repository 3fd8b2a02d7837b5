"""Plumbing shared by the Lambda handlers, the Fargate task and the local runner.

- the handler shell (Powertools.handler): the function's Settings are read once at the start of each
  invocation (settings.Settings.from_env, with what the function requires named when it is missing) and
  passed to the handler as its third argument; nothing below it reads the environment;
- how to reach the databases the stack manages (Settings.stack.databases, from PGRUNBOOK_DATABASES):
  credentials come from Secrets Manager (an RDS-managed secret holds username/password; a
  rotation-style secret may also hold host/port/dbname), never from plain environment values;
- per-database CloudWatch metrics (Embedded Metric Format through powertools);
- Lambda's error shape, so every shell reports a failure the way Step Functions matches it, and the
  one place that turns any failure into what people read: the error's class and ONE line, secrets
  masked, never a stack trace (error_line for an exception, describe_failure for a Catch's
  {"Error", "Cause"}; see "errors" below).

- the deadline watchdog (with_deadline, in every handler): Lambda ends a function at its timeout
  without a signal, which would leave pg_dump/pg_restore/psql running and a multipart upload, a
  work folder and a restore target's "in progress" mark behind. So a handler stops itself first:
  PGRUNBOOK_DEADLINE_MARGIN_SECONDS (default 20, at most a quarter of the time left) before the
  deadline, read from context.get_remaining_time_in_millis(), SIGALRM raises `Interrupted` in the
  main thread, and the operation cleans up as on SIGTERM (stops its pg tools, removes partial
  output, marks a restore target FAILED); the handler then fails with DeadlineExceeded.

Configuration (the functions' environment, set by template.yaml): see settings.VARIABLES.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from . import aws
from .errors import (
    ConfigError,
    DeadlineExceeded,
    Interrupted,
    PgrunbookError,
    TransientError,
    UnknownDatabase,
    UsageError,
    error_line,
    one_line,
)
from .settings import DatabaseConfig, Settings

__all__ = ["ConfigError", "DatabaseConfig", "DeadlineExceeded", "TransientError", "UnknownDatabase",  # re-exported
           "error_line", "one_line"]

METRICS_NAMESPACE = "pgrunbook"


def read_secret(secret_arn: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        # AWSCURRENT named: a cutover's rollback moves the label back (moto's default version stays stale)
        resp = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn, VersionStage="AWSCURRENT")
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
    """A libpq URL built from a secret (username, password[, host, port, dbname]); explicit values
    win (sslmode: the caller's, from Settings; "require" when none is given). Any host libpq takes
    works (a socket directory, a comma list): the secret is read by
    DatabaseUrl.from_secret, the one reader of its shape."""
    from .dburl import DatabaseUrl

    secret = read_secret(secret_arn)
    if not (host or secret.get("host")) or not (secret.get("username") or secret.get("user")):
        raise ConfigError(f"secret {secret_arn}: no host/username (set them in PGRUNBOOK_DATABASES or the secret)")
    try:
        url = DatabaseUrl.from_secret(secret, host=host, port=port, dbname=dbname or secret.get("dbname") or "postgres",
                                      sslmode=sslmode or "require")
    except UsageError as exc:
        raise ConfigError(f"secret {secret_arn}: {exc}") from None
    return url.secret_url()


def database_url(db: DatabaseConfig) -> str:
    return secret_url(db.secret_arn, host=db.host, port=db.port, dbname=db.database, sslmode=db.sslmode)


# --------------------------------------------------------------------------- metrics
def put_metric(metrics: Any, name: str, value: float, unit: str, database: str | None = None) -> None:
    """One metric with the Database dimension (alarms address it exactly)."""
    emit_metrics(metrics, database, {name: (value, unit)})


def emit_metrics(metrics: Any, database: str | None, values: Mapping[str, tuple[float, str]],
                 namespace: str | None = None) -> None:
    """Several metrics in one Embedded Metric Format blob, dimension Database (when given) only.

    `metrics` is the handler's powertools Metrics (its namespace is used) or None (the Fargate task,
    the local runner: `namespace`, Settings.stack.metrics_namespace): the blob is printed on stdout,
    which CloudWatch Logs turns into metrics."""
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    namespace = getattr(metrics, "namespace", None) or namespace or METRICS_NAMESPACE
    # service="": no `service` dimension (powertools adds POWERTOOLS_SERVICE_NAME as one by default), so
    # the dimensions are exactly these and the alarms in template.yaml address the metrics they watch
    blob = EphemeralMetrics(namespace=namespace, service="")
    if database is not None:
        blob.add_dimension(name="Database", value=database)
    for name, (value, unit) in values.items():
        blob.add_metric(name=name, unit=MetricUnit(unit), value=value)
    blob.flush_metrics()


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
SettingsHandler = Callable[[dict[str, Any], Any, Settings], dict[str, Any]]


@dataclass(frozen=True)
class Powertools:
    """One function's powertools Logger/Tracer/Metrics, wired the same way for every handler."""

    logger: Any
    tracer: Any
    metrics: Any

    def handler(self, *, log_event: bool = True, requires: tuple[str, ...] = ()) -> Callable[[SettingsHandler],
                                                                                              Handler]:
        """Decorate a lambda_handler(event, context, settings): its Settings read once at the start of the
        invocation (a variable of `requires` that is not set fails it at once, named), Lambda context in
        the logs (and the event, unless it may carry secrets), an X-Ray segment without the response,
        metrics flushed at the end, and errors that leave it as one line (one_line_errors). Lambda calls
        the result as lambda_handler(event, context)."""

        def wrap(fn: SettingsHandler) -> Handler:
            def configured(event: dict[str, Any], context: Any) -> dict[str, Any]:
                settings = Settings.from_env().require(*requires)
                return with_deadline(functools.partial(_call, fn, settings=settings),
                                     settings.stack.deadline_margin_seconds)(event, context)

            handler: Handler = functools.wraps(fn)(configured)  # innermost: stop and clean up before the timeout
            handler = self.metrics.log_metrics(raise_on_empty_metrics=False)(handler)
            handler = self.tracer.capture_lambda_handler(capture_response=False)(handler)
            handler = self.logger.inject_lambda_context(log_event=log_event)(handler)
            return one_line_errors(handler, self.logger)  # what leaves the handler: one line (trace logged)

        return wrap


def _call(fn: SettingsHandler, event: dict[str, Any], context: Any, *, settings: Settings) -> dict[str, Any]:
    return fn(event, context, settings)


# --------------------------------------------------------------------------- the deadline watchdog
DEFAULT_DEADLINE_MARGIN = 20.0  # seconds (Settings.stack.deadline_margin_seconds)


class _Watchdog:
    """Fires once, `margin` seconds before the deadline. In the main thread (Lambda runs handlers
    there) SIGALRM raises Interrupted where the handler is, even inside a blocking call; elsewhere
    (the local runner's threads) a timer stops the pg tools, so the operation fails on their exit."""

    def __init__(self, context: Any, margin: float) -> None:
        self.fired = False
        self._alarm = False
        self._thread = threading.get_ident()  # the handler's thread: the timer stops only its tools
        self._previous: Any = None
        self._timer: threading.Timer | None = None
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        left = remaining_ms() / 1000 if callable(remaining_ms) else None
        if not left or left <= 0:
            self.left = self.margin = 0.0
            return
        self.left = float(left)
        self.margin = min(margin, self.left / 4)
        after = max(self.left - self.margin, 0.001)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            self._alarm = True
            signal.setitimer(signal.ITIMER_REAL, after)
        else:
            self._timer = threading.Timer(after, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            return
        self.fired = True
        raise Interrupted(signum)

    def _on_timer(self) -> None:
        from .pgtools import stop_all

        self.fired = True
        stop_all(grace=2, owner=self._thread)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        elif self._alarm:
            self._alarm = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"stopped {self.margin:.0f}s before the function's time limit ({self.left:.0f}s were left when it "
            "started): its pg tools were stopped and partial output removed; give the function a longer "
            "Timeout or run this database on Fargate (PGRUNBOOK_FARGATE)")


def with_deadline(fn: Handler, margin: float = DEFAULT_DEADLINE_MARGIN) -> Handler:
    """Wrap a handler with the deadline watchdog (see the module doc), `margin` seconds before the
    deadline; a failure after the watchdog fired leaves as DeadlineExceeded."""

    @functools.wraps(fn)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        watch = _Watchdog(context, margin)
        try:
            try:
                return fn(event, context)
            finally:
                watch.cancel()
        except (Interrupted, Exception):
            if watch.fired:
                raise watch.error() from None
            raise

    return handler


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
# What reaches people (a notification, an execution's cause, a report) is the error's class and ONE
# line: secrets masked, never a stack trace. The trace stays in the function's log. The path:
#   handler raises -> one_line_errors (errorType = class name, errorMessage = error_line(exc), trace
#   logged) -> Lambda's error body {errorType, errorMessage, stackTrace} (on AWS the runtime always
#   adds stackTrace) -> a Catch's {"Error", "Cause": that body as JSON} -> describe_failure (the report
#   function's `describe-error`, `restore-report`, `backup-summary`) -> SNS / the Fail state's cause.
def describe_failure(error: Any) -> tuple[str, str]:
    """(error name, one line) of a Step Functions error as a Catch stores it, {"Error", "Cause"}.

    The Cause may be Lambda's error body as JSON (its errorMessage is used; the stackTrace stays in the
    execution history and the function's log), an ECS task description (runTask.sync: its stopped
    reason), or plain text (a Pass state, Step Functions' own errors)."""
    if not isinstance(error, Mapping):
        return "Error", one_line(str(error)) if error else "no details"
    name = one_line(str(error.get("Error") or "Error"), first_only=True)
    cause = error.get("Cause")
    body: Any = cause
    if isinstance(cause, str):
        try:
            body = json.loads(cause)
        except ValueError:
            body = cause
    if isinstance(body, Mapping) and ("errorMessage" in body or "errorType" in body):
        message = one_line(str(body.get("errorMessage") or ""), first_only=True)
    elif isinstance(body, Mapping) and ("StoppedReason" in body or "Containers" in body):
        containers = [c for c in body.get("Containers") or [] if isinstance(c, Mapping)]
        details = [f"container {c.get('Name')}: exit code {c.get('ExitCode')}" + (f" ({c['Reason']})" if c.get("Reason")
                                                                                  else "") for c in containers]
        message = one_line("; ".join([f"task stopped: {body.get('StoppedReason') or 'no reason given'}", *details]))
    elif isinstance(body, Mapping | list):
        message = one_line(json.dumps(body, default=str))
    elif isinstance(body, str):
        message = one_line(body)
    else:
        message = one_line(str(body)) if body is not None else ""
    return name, message or "no details"


def described_error(error: Any) -> dict[str, str]:
    """{"Error", "Cause"} with Cause as one line: what a state machine puts in notifications and Fail
    states (the `describe-error` action of the report function and of the migrate function)."""
    name, line = describe_failure(error)
    return {"Error": name, "Cause": line}


def error_type(exc: BaseException) -> str:
    """The errorType Lambda reports for an unhandled exception: the class name."""
    return type(exc).__name__


def error_payload(exc: BaseException) -> dict[str, Any]:
    """Lambda's body for an unhandled exception ({errorType, errorMessage, stackTrace}), as the
    runtime writes it on AWS (the local runner and the Fargate task write the same); errorMessage
    is error_line(exc)."""
    from .dburl import mask_secrets

    return {"errorType": error_type(exc), "errorMessage": error_line(exc),
            "stackTrace": [mask_secrets(line) for line in traceback.format_tb(exc.__traceback__)][-5:]}


def one_line_errors(fn: Handler, logger: Any) -> Handler:
    """Wrap a handler so that an exception leaving it carries one masked line: the same class name
    (Lambda's errorType, which Retry/Catch match) with error_line(exc) as its message. The full
    trace, masked, is logged first (the function's log is where it belongs)."""

    @functools.wraps(fn)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            return fn(event, context)
        except Exception as exc:
            from .dburl import mask_secrets

            line = error_line(exc)
            trace = mask_secrets("".join(traceback.format_exception(exc)))
            logger.error(f"{error_type(exc)}: {line}", extra={"error": error_type(exc), "traceback": trace})
            if str(exc) == line:
                raise
            one = type(error_type(exc), (PgrunbookError,), {"exit_code": getattr(exc, "exit_code", 1)})
            raise one(line) from None

    return handler
