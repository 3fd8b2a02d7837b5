"""Provision function: create / poll / delete the fresh restore target.

Events: {"action": "create", "database": "app", "spec": {"kind": "database"|"rds", ...}, "execution": "..."}
        {"action": "status", "target": TargetRef}   {"action": "delete", "target": TargetRef | null}
Returns a TargetRef (no password: credentials stay in Secrets Manager). Every action returns at once (the
state machine polls); an RDS target goes through the one RDS provisioner (pgrunbook.provision.rds).
"""

from __future__ import annotations

from typing import Any

from pgrunbook import operations
from pgrunbook.events import ProvisionEvent
from pgrunbook.lambda_support import powertools
from pgrunbook.settings import Settings

tools = powertools()


@tools.handler()
def lambda_handler(event: dict[str, Any], context: Any, settings: Settings) -> dict[str, Any]:
    return operations.provision(ProvisionEvent.parse(event), settings)
