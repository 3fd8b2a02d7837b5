"""Where the approval machinery lives (environment of the report and approval functions, set by
template.yaml; the local runner sets the same names)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..lambda_support import ConfigError

TABLE_ENV = "PGRUNBOOK_APPROVAL_TABLE"  # DynamoDB table of approval records
TOKEN_KEY_ENV = "PGRUNBOOK_APPROVAL_TOKEN_KEY"  # noqa: S105 - a variable name; KMS key that seals task tokens
SIGNING_SECRET_ENV = "PGRUNBOOK_APPROVAL_SIGNING_SECRET"  # noqa: S105 - a variable name; Secrets Manager secret: the HMAC key
URL_ENV = "PGRUNBOOK_APPROVAL_URL"  # base URL of the HTTP API (links are built on it)


@dataclass(frozen=True)
class ApprovalConfig:
    table: str
    token_key: str
    signing_secret: str
    base_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApprovalConfig:
        env = os.environ if env is None else env
        missing = [n for n in (TABLE_ENV, TOKEN_KEY_ENV, SIGNING_SECRET_ENV) if not env.get(n)]
        if missing:
            raise ConfigError(f"approvals are not configured: {', '.join(missing)} not set")
        return cls(table=env[TABLE_ENV], token_key=env[TOKEN_KEY_ENV], signing_secret=env[SIGNING_SECRET_ENV],
                   base_url=(env.get(URL_ENV) or "").rstrip("/"))
