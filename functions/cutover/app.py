"""Cutover function: the Restore state machine's cutover steps -> pgrunbook.cutover.steps.

Event: {"action": "prepare"|"keep"|"freeze-refresh"|"production-ready"|"switch"|"prove"|"finish"|"rollback"|"abort",
        "execution": "<execution name>", "state": <the execution's state, $>}
Returns what the step's state stores (see pgrunbook.cutover.steps). The event carries no secret: URLs
come from Secrets Manager. The state holds reports with masked URLs only, so it is not logged anyway.
Metrics (dimension Database): CutoverSucceeded, CutoverRolledBack, CutoverRollbackFailed.
"""

from __future__ import annotations

from typing import Any

from pgrunbook.cutover.steps import handle
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    result = handle(event, settings.cutover, settings)
    action = event.get("action")
    database = ((event.get("state") or {}).get("plan") or {}).get("database")
    if action in ("finish", "rollback"):
        metric = {"cut over": "CutoverSucceeded", "rolled back": "CutoverRolledBack"}.get(
            str(result.get("outcome")), "CutoverRollbackFailed")
        emit_metrics(tools.metrics, database, {metric: (1, "Count")})
    return result
