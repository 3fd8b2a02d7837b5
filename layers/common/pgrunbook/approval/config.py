"""Where the approval machinery lives (environment of the report and approval functions, set by
template.yaml; the local runner sets the same names). Read once by settings.Settings.from_env
(Settings.approval, an ApprovalSettings); `ApprovalSettings.required()` names what is missing."""

from __future__ import annotations

from ..settings import APPROVAL_VARIABLES, ApprovalSettings

TABLE_ENV, TOKEN_KEY_ENV, SIGNING_SECRET_ENV = APPROVAL_VARIABLES  # DynamoDB table, KMS key, HMAC key's secret
URL_ENV = "PGRUNBOOK_APPROVAL_URL"  # base URL of the HTTP API (links are built on it)
ApprovalConfig = ApprovalSettings

__all__ = ["SIGNING_SECRET_ENV", "TABLE_ENV", "TOKEN_KEY_ENV", "URL_ENV", "ApprovalConfig", "ApprovalSettings"]
