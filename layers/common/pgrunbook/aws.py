"""boto3 clients: created on first use, cached, with botocore's standard retry mode.

No client exists at import time. The endpoint comes from the standard AWS_ENDPOINT_URL /
AWS_ENDPOINT_URL_<SERVICE> variables (a local S3 in the demo and tests).
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def client(service: str, region: str | None = None) -> Any:
    # imported here: boto3 costs ~0.3 s to import and a folder backup never needs it
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    session = boto3.session.Session()
    region = region or session.region_name or "us-east-1"
    return session.client(service, region_name=region, config=config)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and credentials)."""
    client.cache_clear()
