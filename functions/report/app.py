"""Report / notify function: summaries and reports to SNS (and the bucket), the cutover approval
request, and the hourly age metrics the alarms watch.

Events: {"action": "backup-summary", "kind", "execution", "results": [...]}
        {"action": "restore-report", "execution", "plan", "target", "restore", "verify", "error"}
        {"action": "request-approval", "task_token", "execution", "plan", "target", "verify"}
        {"action": "metrics"}   (EventBridge Scheduler, hourly)
        {"action": "describe-error", "error": {"Error", "Cause"}}  -> {"Error", "Cause": one line}
"""

from __future__ import annotations

from typing import Any

from pgrunbook import reporting
from pgrunbook.events import ReportEvent
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    ev = ReportEvent.parse(event)
    if ev.action == "backup-summary":
        return reporting.backup_summary(ev.data, settings)
    if ev.action == "restore-report":
        out = reporting.restore_report(ev.data, settings)
        if out["verified"]:
            emit_metrics(tools.metrics, (ev.data.get("plan") or {}).get("database"),
                         {"LastVerifiedRestoreAgeDays": (0, "Count")})
        return out
    if ev.action == "request-approval":
        return reporting.request_approval(ev.data, settings)
    if ev.action == "describe-error":
        return reporting.describe_error(ev.data)
    return reporting.age_metrics(settings, tools.metrics)
