"""Verify function: check a restored target against the backup's manifest -> pgrunbook.verify.

Event: {"backup": "s3://.../x.dump", "target": TargetRef, "database": "app", "app_url": null, "checks": []}
Returns the verification report (VerifyReport.to_dict() + "text"); a failed check is a report with
"ok": false, not an error. Metric VerificationFailures (dimension Database).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from pgrunbook import operations
from pgrunbook.events import VerifyEvent
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
    ev = VerifyEvent.parse(event)
    report = operations.verify(ev, Settings.from_env())
    emit_metrics(metrics, ev.database or ev.target.name,
                 {"VerificationFailures": (len(report.get("failures") or []), "Count")})
    return report
