"""Verify function: check a restored target against the backup's manifest -> pgrunbook.verify.

Event: {"backup": "s3://.../x.dump", "target": TargetRef, "database": "app", "app_url": null, "checks": [],
        "jobs": null}  (jobs: tables counted at once; default pgrunbook.verify.default_jobs())
Returns the verification report (VerifyReport.to_dict() + "text"); a failed check is a report with
"ok": false, not an error. Metric VerificationFailures (dimension Database).
"""

from __future__ import annotations

from typing import Any

from pgrunbook import operations
from pgrunbook.events import VerifyEvent
from pgrunbook.lambda_support import emit_metrics, powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    ev = VerifyEvent.parse(event)
    report = operations.verify(ev, settings)
    emit_metrics(tools.metrics, ev.database or ev.target.name,
                 {"VerificationFailures": (len(report.get("failures") or []), "Count")})
    return report
