"""Sweeper function (hourly, EventBridge Scheduler): deletes this stack's leaked restore targets.

Event: {"action": "sweep", "dry_run": false}
Returns {"deleted": [...], "kept": [...], "failed": [...], "text"}; notifies the topic when it
deleted something or could not (a dry run only returns what it would delete). Metrics (no
dimension): TargetsSwept, TargetsSweepFailed.
"""

from __future__ import annotations

from typing import Any

from pgrunbook import reporting, sweeper
from pgrunbook.events import EventError
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    if not isinstance(event, dict) or event.get("action", "sweep") != "sweep":
        raise EventError("sweeper event: expected {\"action\": \"sweep\"}")
    dry_run = event.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise EventError("sweeper event: field 'dry_run' must be true or false")
    report = sweeper.sweep(settings, dry_run=dry_run)
    emit_metrics(tools.metrics, None, {"TargetsSwept": (len(report.deleted), "Count"),
                                       "TargetsSweepFailed": (len(report.failed), "Count")})
    text = report.text()
    if (report.deleted or report.failed) and not dry_run:  # a dry run deleted nothing: nothing to announce
        reporting.publish(settings, f"pgrunbook sweeper: {len(report.deleted)} leaked target(s) deleted, "
                          f"{len(report.failed)} failed", text)
    return {**report.to_dict(), "text": text}
