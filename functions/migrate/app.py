"""Migrate function: one step of the Migrate state machine -> pgrunbook.migrations.service.handle, which
runs the step functions of pgrunbook.migrations.pipeline (the same as `pgrunbook migrate`).

Event: {"action": "plan"|"lint"|"backup"|"apply"|"status", "database": "app",
        "migrations": "s3://bucket/_releases/<version>/migrations/", "app_version": "1.2.3",
        "lint": "strict"|"warn"|"off", "lock_timeout": "5s", "statement_timeout": "30min"}
Failures raise (errorType = the exception's class, from pgrunbook.errors: NotManaged, FailedMigrationsPresent,
LockBusy, MigrationFailed, LockTimeout, ...) so the state machine's Retry/Catch route on them and name
them in the notification.
{"action": "describe-error", "error": {"Error", "Cause"}} returns the error as {"Error", "Cause": one
line} for that notification (the same description as the report function's).
Metrics (dimension Database): MigrationsPending, MigrationLintErrors, PreMigrationBackupSeconds,
MigrationsApplied, MigrationFailed, MigrationsUpToDate.
"""

from __future__ import annotations

from typing import Any

from pgrunbook.events import MigrateEvent
from pgrunbook.lambda_support import database_url, described_error, emit_metrics, powertools
from pgrunbook.migrations.service import handle
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("action") == "describe-error":
        return described_error(event.get("error"))
    ev = MigrateEvent.parse(event)
    url = database_url(settings.database(ev.database))
    try:
        result = handle(ev, url, settings)
    except Exception:
        if ev.action == "apply":
            emit_metrics(tools.metrics, ev.database, {"MigrationFailed": (1, "Count")})
        raise
    emit_metrics(tools.metrics, ev.database, {
        "plan": {"MigrationsPending": (result.get("pending_count", 0), "Count")},
        "lint": {"MigrationLintErrors": (result.get("errors", 0), "Count")},
        "backup": {"PreMigrationBackupSeconds": (result.get("seconds", 0), "Seconds")},
        "apply": {"MigrationsApplied": (len(result.get("applied", [])), "Count")},
        "status": {"MigrationsUpToDate": (1 if result.get("up_to_date") else 0, "Count")},
    }[ev.action])
    return result
