"""Backup function: one database (a Map item of the Backup state machine) -> pgrunbook.backup.

Event: {"database": "app", "kind": "scheduled"|"manual"|"pre-migration", "jobs": 1}
Returns BackupResult.to_dict(): archive, manifest, sha256, bytes, tables, rows, seconds, ...
Metrics (dimension Database): BackupSucceeded (with BackupBytes, BackupSeconds) or BackupFailed.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from pgrunbook import operations
from pgrunbook.events import BackupEvent
from pgrunbook.lambda_support import emit_metrics, setup_handler_logging
from pgrunbook.settings import Settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
setup_handler_logging(logger)


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ev = BackupEvent.parse(event)
    try:
        result = operations.backup(ev, Settings.from_env())
    except Exception:
        emit_metrics(metrics, ev.database, {"BackupFailed": (1, "Count")})
        raise
    emit_metrics(metrics, ev.database, {"BackupSucceeded": (1, "Count"), "BackupBytes": (result.bytes, "Bytes"),
                                        "BackupSeconds": (round(result.seconds, 3), "Seconds")})
    return result.to_dict()
