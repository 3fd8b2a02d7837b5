"""Provision function: create / poll / delete the fresh restore target.

Events: {"action": "create", "database": "app", "spec": {"kind": "database"|"rds", ...}, "execution": "..."}
        {"action": "status", "target": TargetRef}   {"action": "delete", "target": TargetRef | null}
Returns a TargetRef (no password: credentials stay in Secrets Manager).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from pgrunbook import operations
from pgrunbook.events import ProvisionEvent
from pgrunbook.lambda_support import setup_handler_logging
from pgrunbook.settings import Settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
setup_handler_logging(logger)


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return operations.provision(ProvisionEvent.parse(event), Settings.from_env())
