"""Plan function: the first step of each state machine. Validates the input (fails fast with a
readable error, before anything is created), resolves `latest`, and picks Lambda or Fargate by
database size. Also reads back a Fargate task's result (same shape as the Lambda path).

Events: {"action": "backup", "databases": [...], "kind": "scheduled"}
        {"action": "restore", "database": "app", "backup": "latest", "mode": "drill", "target": {...}}
        {"action": "task-result", "key": "_tasks/<execution>/<name>.json"}
"""

from __future__ import annotations

from typing import Any

from pgrunbook import operations
from pgrunbook.events import BackupPlanEvent, EventError, RestorePlanEvent
from pgrunbook.lambda_support import powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    action = event.get("action") if isinstance(event, dict) else None
    if action == "backup":
        return operations.plan_backup(BackupPlanEvent.parse(event.get("input") or {}), settings)
    if action == "restore":
        return operations.plan_restore(RestorePlanEvent.parse(event.get("input")), settings)
    if action == "task-result":
        key = event.get("key")
        if not isinstance(key, str):
            raise EventError("task-result event: missing field 'key'")
        return operations.read_task_result(settings, key)
    raise EventError(f"plan event: field 'action' must be one of backup, restore, task-result, not {action!r}")
