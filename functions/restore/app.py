"""Restore function: a backup archive into a provisioned (empty) target -> pgrunbook.restore.

Event: {"backup": "s3://.../x.dump", "target": TargetRef, "jobs": 2}
Returns RestoreResult.to_dict(). Metric RestoreSeconds (dimension Database = the source database).
"""

from __future__ import annotations

from typing import Any

from pgrunbook import operations
from pgrunbook.events import RestoreEvent
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    ev = RestoreEvent.parse(event)
    result = operations.restore(ev, settings)
    database = event.get("database") if isinstance(event.get("database"), str) else ev.target.name
    emit_metrics(tools.metrics, database, {"RestoreSeconds": (float(result.get("seconds") or 0.0), "Seconds")})
    return result
