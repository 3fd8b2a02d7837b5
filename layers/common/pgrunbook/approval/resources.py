"""The approval resources of template.yaml (table, token key, signing secret) created in moto for
the local runner and tests. Returns the Refs/GetAtts the template's environment values resolve to."""

from __future__ import annotations

import secrets
import uuid
from typing import Any


def create_local(region: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from .. import aws

    suffix = uuid.uuid4().hex[:8]
    table = f"pgrunbook-local-approvals-{suffix}"
    aws.client("dynamodb").create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "approval_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "approval_id", "AttributeType": "S"}])
    key = aws.client("kms").create_key(Description="pgrunbook local approval tokens")["KeyMetadata"]["Arn"]
    secret = aws.client("secretsmanager").create_secret(
        Name=f"pgrunbook-local/approval-signing-{suffix}", SecretString=secrets.token_urlsafe(48))["ARN"]
    refs = {"ApprovalTable": table, "ApprovalSigningSecret": secret, "ApprovalApi": "local",
            "AWS::URLSuffix": "amazonaws.com"}
    attrs = {"ApprovalTokenKey.Arn": key, "ApprovalTable.Arn": f"arn:aws:dynamodb:{region}:123456789012:table/{table}"}
    return refs, attrs
