"""Approval function: the cutover approval page and the operators' CLI routes, behind the stack's
HTTP API (payload format 2.0). Thin: pgrunbook.approval does the work.

Events: API Gateway HTTP API v2 for
        GET|POST /approvals/{id}?exp=...&sig=...        (the page; only POST decides)
        GET /cli/approvals, GET|POST /cli/approvals/{id} (IAM-authorized, JSON)
The only function allowed to call states:SendTaskSuccess (on the Restore state machine) and to
decrypt the sealed task tokens. Events are never logged: their query strings carry link signatures.
"""

from __future__ import annotations

from typing import Any

from pgrunbook.approval.apigw import handle
from pgrunbook.lambda_support import powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    return handle(event, settings)
