"""Fargate task entry point (`python -m pgrunbook.fargate_task`): the same operations as the Lambda
functions, for databases too big for Lambda's 15 minutes. Its Settings are read once, in `main`
(settings.TaskSettings holds the assignment; a missing one is named and exits 1). The state machine
passes:

  PGRUNBOOK_OPERATION  backup | restore | migrate (the Migrate machine's pre-migration backup step)
  PGRUNBOOK_EVENT      the same JSON event the Lambda function would get
  PGRUNBOOK_RESULT_KEY where to write the outcome in the backup bucket (_tasks/<execution>/<name>.json)

The outcome is {"result": <what the function returns>} or Lambda's error shape {errorType,
errorMessage, ...}; the next state (plan function, action task-result) reads it back and returns
the result or raises the same errorType, so both paths look alike to the rest of the machine.
Exit 0 once the outcome is written (even an error: the state machine reports it), 1 otherwise.

ECS StopTask (and a Spot interruption) sends SIGTERM and, `stopTimeout` seconds later, SIGKILL. On
SIGTERM the operation stops the way the CLI's does (pgtools.stop_signals): its pg tools are
stopped, partial output (multipart upload, work folder) removed, a restore target marked FAILED
(interrupted); the outcome written is the error {"errorType": "Interrupted", ...} and the exit
status 143. Should SIGKILL come first, the pg tools die with the task (parent-death signal).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from . import operations
from .errors import Interrupted, PgrunbookError
from .events import BackupEvent, EventError, RestoreEvent
from .lambda_support import emit_metrics, error_payload
from .logs import setup_cli_logging
from .pgtools import stop_signals
from .settings import TASK_VARIABLES, Settings

log = logging.getLogger("pgrunbook.fargate_task")


def run(operation: str, event: Any, settings: Settings) -> dict[str, Any]:
    if operation == "backup":
        ev = BackupEvent.parse(event)
        result = operations.backup(ev, settings)
        emit_metrics(None, ev.database, {"BackupSucceeded": (1, "Count"), "BackupBytes": (result.bytes, "Bytes"),
                                         "BackupSeconds": (round(result.seconds, 3), "Seconds")},
                     settings.stack.metrics_namespace)
        return result.to_dict()
    if operation == "restore":
        rev = RestoreEvent.parse(event)
        restored = operations.restore(rev, settings)
        database = event.get("database") if isinstance(event.get("database"), str) else rev.target.name
        emit_metrics(None, database, {"RestoreSeconds": (float(restored.get("seconds") or 0.0), "Seconds")},
                     settings.stack.metrics_namespace)
        return restored
    if operation == "migrate":  # the Migrate machine's pre-migration backup of a database too big for Lambda
        from .lambda_support import database_url
        from .migrations.service import MigrateEvent, handle

        mev = MigrateEvent.parse(event)
        return handle(mev, database_url(settings.database(mev.database)), settings)
    raise EventError(f"PGRUNBOOK_OPERATION must be backup, restore or migrate, not {operation!r}")


def main(env: Mapping[str, str] | None = None) -> int:
    """The task: settings once (from the process environment, or `env`), the operation, its outcome written."""
    setup_cli_logging()
    try:
        settings = Settings.from_env(env)
        key = settings.require("PGRUNBOOK_RESULT_KEY").task.result_key
    except PgrunbookError as exc:
        log.error(f"the task cannot start (no result written): {exc}")
        return 1
    interrupted: Interrupted | None = None
    try:
        with stop_signals():
            settings.require(*TASK_VARIABLES)
            event = json.loads(settings.task.event)
            payload: dict[str, Any] = {"result": run(settings.task.operation, event, settings)}
    except json.JSONDecodeError as exc:
        payload = error_payload(EventError(f"PGRUNBOOK_EVENT is not JSON: {exc}"))
    except Interrupted as exc:
        interrupted = exc
        log.error("task stopped", extra={"error": "Interrupted", "detail": str(exc)})
        payload = error_payload(exc)
    except Exception as exc:
        log.error("task failed", extra={"error": type(exc).__name__, "detail": str(exc)})
        payload = error_payload(exc)
    try:
        operations.write_task_result(settings, key, payload)
    except Exception as exc:
        log.error("could not write the task result", extra={"key": key, "detail": str(exc)})
        return 1
    return interrupted.exit_code if interrupted is not None else 0


if __name__ == "__main__":
    sys.exit(main())
