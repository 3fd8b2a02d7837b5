"""Restore function: a backup archive into a provisioned (empty) target -> pgrunbook.restore.

Event: {"backup": "s3://.../x.dump", "target": TargetRef, "jobs": 2}
Returns RestoreResult.to_dict(). Metric RestoreSeconds (dimension Database = the source database).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from pgrunbook import operations
from pgrunbook.events import RestoreEvent
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
    ev = RestoreEvent.parse(event)
    result = operations.restore(ev, Settings.from_env())
    database = event.get("database") if isinstance(event.get("database"), str) else ev.target.name
    emit_metrics(metrics, database, {"RestoreSeconds": (float(result.get("seconds") or 0.0), "Seconds")})
    return result
