"""Approval records in DynamoDB, and task tokens sealed with KMS.

One item per approval (key `approval_id`). Writes that matter are conditional:
- `put_new`: only when no item has this id, or the same execution's retried request is still
  pending (the report function may be retried by the state machine);
- `claim`: only when the item has no decision and is pending: of two concurrent decisions exactly
  one wins (DynamoDB evaluates the condition and the write atomically);
- `finish` / `release`: only by the holder of the claim (its nonce).
The sealed token is read only by `sealed_token` (the decide path); every other read projects it
away. The table's TTL attribute removes an item 30 days after its link expired (the decision
stays in the execution's report under `_reports/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import AwsCallFailed
from ..lambda_support import ConfigError, TransientError

STATUSES = ("pending", "deciding", "approved", "rejected", "not_waiting")
KEEP_SECONDS = 30 * 86400
# every attribute through a placeholder: several are DynamoDB reserved words (status, database, ...)
_NAMES = {f"#{n}": n for n in ("approval_id", "execution", "database", "requested_at", "expires_at", "status",
                               "facts", "decision", "delivery", "claim")}
_VIEW = ", ".join(_NAMES)


def _names(*names: str) -> dict[str, str]:
    return {f"#{n}": n for n in names}


@dataclass
class ApprovalRecord:
    approval_id: str
    execution: str
    database: str
    requested_at: str
    expires_at: int
    status: str = "pending"
    facts: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None
    claim: str | None = None

    def waiting(self, now: float) -> bool:
        """Still waiting for a decision: pending and its link not expired (what `pgrunbook status` counts)."""
        return self.status == "pending" and now < self.expires_at

    def summary(self) -> dict[str, Any]:
        """What `approvals list` shows (no facts, never the token)."""
        return {"approval_id": self.approval_id, "database": self.database, "execution": self.execution,
                "status": self.status, "requested_at": self.requested_at, "expires_at": self.expires_at,
                "decision": self.decision, "delivery": self.delivery}


def _item_to_record(item: dict[str, Any]) -> ApprovalRecord:
    def s(name: str) -> str | None:
        v = item.get(name)
        return None if v is None else str(v.get("S") if "S" in v else v.get("N"))

    def js(name: str) -> Any:
        raw = s(name)
        return None if raw is None else json.loads(raw)

    return ApprovalRecord(approval_id=s("approval_id") or "", execution=s("execution") or "",
                          database=s("database") or "", requested_at=s("requested_at") or "",
                          expires_at=int(s("expires_at") or 0), status=s("status") or "pending",
                          facts=js("facts") or {}, decision=js("decision"), delivery=js("delivery"),
                          claim=s("claim"))


class ApprovalStore:
    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client

    @property
    def db(self) -> Any:
        if self._client is None:
            from .. import aws

            self._client = aws.client("dynamodb")
        return self._client

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One DynamoDB call; a failed condition returns None, throttling is TransientError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.db, op)(TableName=self.table, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                return None
            if code in ("ProvisionedThroughputExceededException", "ThrottlingException",
                        "RequestLimitExceeded", "InternalServerError"):
                raise TransientError(f"DynamoDB {op}: {code}") from None
            if code in ("ResourceNotFoundException", "AccessDeniedException"):
                raise ConfigError(f"approval table {self.table}: {code}") from None
            raise AwsCallFailed(f"DynamoDB {op} on {self.table}: {code}") from None
        except BotoCoreError as exc:
            raise TransientError(f"DynamoDB unreachable: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ report function (write only)
    def put_new(self, record: ApprovalRecord, sealed_token: bytes) -> bool:
        item = {
            "approval_id": {"S": record.approval_id}, "execution": {"S": record.execution},
            "database": {"S": record.database}, "requested_at": {"S": record.requested_at},
            "expires_at": {"N": str(record.expires_at)}, "status": {"S": "pending"},
            "facts": {"S": json.dumps(record.facts, default=str)}, "token": {"B": sealed_token},
            "ttl": {"N": str(record.expires_at + KEEP_SECONDS)},
        }
        done = self._call("put_item", Item=item,
                          ConditionExpression="attribute_not_exists(#approval_id) OR "
                                              "(#execution = :ex AND #status = :pending)",
                          ExpressionAttributeNames=_names("approval_id", "execution", "status"),
                          ExpressionAttributeValues={":ex": {"S": record.execution}, ":pending": {"S": "pending"}})
        return done is not None

    # ------------------------------------------------------------------ approval function
    def get(self, approval_id: str) -> ApprovalRecord | None:
        resp = self._call("get_item", Key={"approval_id": {"S": approval_id}}, ConsistentRead=True,
                          ProjectionExpression=_VIEW, ExpressionAttributeNames=_NAMES)
        item = (resp or {}).get("Item")
        return _item_to_record(item) if item else None

    def list(self) -> list[ApprovalRecord]:
        records: list[ApprovalRecord] = []
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"ProjectionExpression": _VIEW, "ExpressionAttributeNames": _NAMES}
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._call("scan", **kwargs) or {}
            records += [_item_to_record(i) for i in resp.get("Items", [])]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return sorted(records, key=lambda r: r.requested_at, reverse=True)

    def sealed_token(self, approval_id: str) -> bytes | None:
        resp = self._call("get_item", Key={"approval_id": {"S": approval_id}}, ConsistentRead=True,
                          ProjectionExpression="#tk", ExpressionAttributeNames={"#tk": "token"})
        value = ((resp or {}).get("Item") or {}).get("token", {}).get("B")
        return bytes(value) if value is not None else None

    def claim(self, approval_id: str, decision: dict[str, Any], nonce: str) -> bool:
        """Take the one decision of this approval; False when another decision got there first."""
        done = self._call(
            "update_item", Key={"approval_id": {"S": approval_id}},
            UpdateExpression="SET #decision = :d, #status = :deciding, #claim = :n",
            ConditionExpression="attribute_exists(#approval_id) AND attribute_not_exists(#decision) "
                                "AND #status = :pending",
            ExpressionAttributeNames=_names("approval_id", "decision", "status", "claim"),
            ExpressionAttributeValues={":d": {"S": json.dumps(decision)}, ":deciding": {"S": "deciding"},
                                       ":n": {"S": nonce}, ":pending": {"S": "pending"}})
        return done is not None

    def finish(self, approval_id: str, nonce: str, status: str, delivery: dict[str, Any]) -> bool:
        assert status in STATUSES
        done = self._call(
            "update_item", Key={"approval_id": {"S": approval_id}},
            UpdateExpression="SET #status = :s, #delivery = :dl REMOVE #claim", ConditionExpression="#claim = :n",
            ExpressionAttributeNames=_names("status", "delivery", "claim"),
            ExpressionAttributeValues={":s": {"S": status}, ":dl": {"S": json.dumps(delivery)}, ":n": {"S": nonce}})
        return done is not None

    def release(self, approval_id: str, nonce: str) -> bool:
        """Undo a claim whose delivery could not be attempted: nothing was decided."""
        done = self._call(
            "update_item", Key={"approval_id": {"S": approval_id}},
            UpdateExpression="SET #status = :pending REMOVE #decision, #claim", ConditionExpression="#claim = :n",
            ExpressionAttributeNames=_names("status", "decision", "claim"),
            ExpressionAttributeValues={":pending": {"S": "pending"}, ":n": {"S": nonce}})
        return done is not None

    def mark_not_waiting(self, approval_id: str, reason: str, at: str) -> bool:
        """The execution stopped waiting before anyone decided (aborted, timed out, failed)."""
        done = self._call(
            "update_item", Key={"approval_id": {"S": approval_id}},
            UpdateExpression="SET #status = :nw, #delivery = :dl",
            ConditionExpression="attribute_exists(#approval_id) AND attribute_not_exists(#decision) "
                                "AND #status = :pending",
            ExpressionAttributeNames=_names("approval_id", "status", "decision", "delivery"),
            ExpressionAttributeValues={":nw": {"S": "not_waiting"}, ":pending": {"S": "pending"},
                                       ":dl": {"S": json.dumps({"status": "not_delivered", "reason": reason,
                                                                "at": at})}})
        return done is not None


class TokenSealer:
    """Seals a task token with KMS; the encryption context binds it to its approval id. The key's
    policy lets only the approval function decrypt (template.yaml, ApprovalTokenKey)."""

    PURPOSE = "pgrunbook-approval-token"

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id

    def _context(self, approval_id: str) -> dict[str, str]:
        return {"purpose": self.PURPOSE, "approval_id": approval_id}

    def seal(self, token: str, approval_id: str) -> bytes:
        from .. import aws

        resp = _kms(lambda: aws.client("kms").encrypt(KeyId=self.key_id, Plaintext=token.encode(),
                                                      EncryptionContext=self._context(approval_id)))
        return bytes(resp["CiphertextBlob"])

    def open(self, sealed: bytes, approval_id: str) -> str:
        from .. import aws

        resp = _kms(lambda: aws.client("kms").decrypt(CiphertextBlob=sealed, KeyId=self.key_id,
                                                      EncryptionContext=self._context(approval_id)))
        return bytes(resp["Plaintext"]).decode()


def _kms(call: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "KMSInternalException", "DependencyTimeoutException"):
            raise TransientError(f"KMS: {code}") from None
        raise ConfigError(f"KMS refused the approval token key: {code}") from None
    except BotoCoreError as exc:
        raise TransientError(f"KMS unreachable: {type(exc).__name__}") from None
