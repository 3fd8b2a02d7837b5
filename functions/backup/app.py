"""Backup function: one database (a Map item of the Backup state machine) -> pgrunbook.backup.

Event: {"database": "app", "kind": "scheduled"|"manual"|"pre-migration", "jobs": 1}
Returns BackupResult.to_dict(): archive, manifest, sha256, bytes, tables, rows, seconds, ...
Metrics (dimension Database): BackupSucceeded (with BackupBytes, BackupSeconds) or BackupFailed.
"""

from __future__ import annotations

from typing import Any

from pgrunbook import operations
from pgrunbook.events import BackupEvent
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    ev = BackupEvent.parse(event)
    try:
        result = operations.backup(ev, settings)
    except BaseException:  # also Interrupted (SIGTERM, the deadline watchdog): a KeyboardInterrupt
        emit_metrics(tools.metrics, ev.database, {"BackupFailed": (1, "Count")})
        raise
    emit_metrics(tools.metrics, ev.database, {"BackupSucceeded": (1, "Count"), "BackupBytes": (result.bytes, "Bytes"),
                                        "BackupSeconds": (round(result.seconds, 3), "Seconds")})
    return result.to_dict()
