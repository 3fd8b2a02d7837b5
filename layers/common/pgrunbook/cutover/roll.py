"""Rolling the service so every instance reads the new DATABASE_URL.

- ECS: `UpdateService --force-new-deployment`, then poll DescribeServices until the new PRIMARY
  deployment's rolloutState is COMPLETED and it is the only deployment left (old tasks drained);
  FAILED (deployment circuit breaker) or the deadline is a RollFailed.
- Webhook (other platforms): POST `{"event": "roll", "reason", "secret_id", "version_id"}` with
  `X-Pgrunbook-Signature: sha256=<hex HMAC-SHA256 of the exact body>` when a webhook secret is
  configured; any status but 2xx (or no answer) is a RollFailed.

Invariant: a roll never changes the secret; it only makes the service re-read it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from .. import aws
from ..errors import RollFailed, UsageError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pgrunbook-Signature"


def aws_reason(exc: BaseException) -> str:
    """One line for a botocore error: the error code and the first line of its message."""
    from ..dburl import mask_secrets

    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code, message = str(err.get("Code") or ""), str(err.get("Message") or "")
        if "<Code>" in message:  # moto's IAM denials arrive as an XML document in Message
            inner = message.split("<Code>", 1)[1].split("</Code>", 1)[0]
            text = message.split("<Message>", 1)[1].split("</Message>", 1)[0] if "<Message>" in message else ""
            code, message = (inner or code), str(text)
        first = message.strip().splitlines()[0] if message.strip() else ""
        return mask_secrets(f"{code}: {first}" if first else code)
    lines = str(exc).strip().splitlines()
    return mask_secrets(lines[0] if lines else type(exc).__name__)


def sign(body: bytes, key: bytes) -> str:
    """The header value for a webhook body: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, key: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(body, key), header.strip())


@dataclass
class RollResult:
    kind: str  # ecs | webhook
    target: str
    reason: str
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason, "seconds": round(self.seconds, 2),
                **self.detail}

    def line(self) -> str:
        extra = f" (deployment {self.detail['deployment']})" if self.detail.get("deployment") else ""
        return f"{self.kind} {self.target} rolled ({self.reason}) in {self.seconds:.1f} s{extra}"


class Roller(Protocol):
    def roll(self, *, reason: str, secret_id: str, version_id: str) -> RollResult: ...

    @property
    def target(self) -> str: ...


class EcsRoller:
    def __init__(self, service: str, *, timeout: float = 600.0, poll: float = 10.0) -> None:
        cluster, sep, name = service.partition("/")
        if not sep or not cluster or not name or "/" in name:
            raise UsageError(f"--ecs-service wants CLUSTER/SERVICE, not {service!r}")
        self.cluster, self.service = cluster, name
        self.timeout, self.poll = timeout, poll

    @property
    def target(self) -> str:
        return f"{self.cluster}/{self.service}"

    def _describe(self) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = aws.client("ecs").describe_services(cluster=self.cluster, services=[self.service])
        except (ClientError, BotoCoreError) as exc:
            raise RollFailed(f"cannot describe ECS service {self.target}: {aws_reason(exc)}") from None
        services = found.get("services") or []
        if not services or services[0].get("status") != "ACTIVE":
            raise RollFailed(f"ECS service {self.target} not found (or not ACTIVE)")
        return dict(services[0])

    @staticmethod
    def _primary(service: dict[str, Any]) -> dict[str, Any]:
        for dep in service.get("deployments") or []:
            if dep.get("status") == "PRIMARY":
                return dict(dep)
        return {}

    def check(self) -> None:
        """The service exists (a pre-flight check: nothing is changed)."""
        self._describe()

    def roll(self, *, reason: str, secret_id: str, version_id: str) -> RollResult:
        from botocore.exceptions import BotoCoreError, ClientError

        t0 = time.monotonic()
        before = self._primary(self._describe()).get("id")
        try:
            updated = aws.client("ecs").update_service(cluster=self.cluster, service=self.service,
                                                       forceNewDeployment=True)["service"]
        except (ClientError, BotoCoreError) as exc:
            raise RollFailed(f"ECS refused to redeploy {self.target}: {aws_reason(exc)}") from None
        deployment = str(self._primary(updated).get("id") or "")
        log.info("ECS deployment started", extra={"service": self.target, "deployment": deployment})
        deadline = t0 + self.timeout
        last = "no deployment"
        while True:
            service = self._describe()
            primary = self._primary(service)
            state = str(primary.get("rolloutState") or "")
            last = (f"deployment {primary.get('id')} {state or 'unknown'}, {primary.get('runningCount', '?')}/"
                    f"{primary.get('desiredCount', '?')} tasks running, {len(service.get('deployments') or [])} "
                    "deployment(s)")
            is_new = bool(primary.get("id")) and (before is None or primary.get("id") != before)
            if is_new:
                if state == "FAILED":
                    raise RollFailed(f"ECS deployment of {self.target} failed: "
                                     f"{primary.get('rolloutStateReason') or last}")
                if state == "COMPLETED" and len(service.get("deployments") or []) == 1:
                    return RollResult("ecs", self.target, reason, time.monotonic() - t0,
                                      {"deployment": primary.get("id")})
            if time.monotonic() >= deadline:
                raise RollFailed(f"ECS deployment of {self.target} did not complete within {self.timeout:g} s "
                                 f"({last})")
            time.sleep(self.poll)


class WebhookRoller:
    def __init__(self, url: str, *, key: bytes | None = None, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--webhook must be an http(s) URL, not {url!r}")
        self.url, self.key, self.timeout = url, key, timeout

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)  # no query string: it may carry a token
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def check(self) -> None:
        return None

    def body(self, *, reason: str, secret_id: str, version_id: str) -> bytes:
        return json.dumps({"event": "roll", "reason": reason, "secret_id": secret_id, "version_id": version_id},
                          separators=(",", ":")).encode()

    def roll(self, *, reason: str, secret_id: str, version_id: str) -> RollResult:
        t0 = time.monotonic()
        body = self.body(reason=reason, secret_id=secret_id, version_id=version_id)
        headers = {"Content-Type": "application/json", "User-Agent": "pgrunbook-cutover"}
        if self.key is not None:
            headers[SIGNATURE_HEADER] = sign(body, self.key)
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - scheme checked
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            reason_text = getattr(exc, "reason", exc)
            raise RollFailed(f"roll webhook {self.target} unreachable: {reason_text}") from None
        if not 200 <= status < 300:
            raise RollFailed(f"roll webhook {self.target} returned {status}")
        return RollResult("webhook", self.target, reason, time.monotonic() - t0, {"status": status})


def make_roller(*, ecs_service: str | None, webhook_url: str | None, webhook_key: bytes | None,
                timeout: float, poll: float) -> EcsRoller | WebhookRoller:
    if bool(ecs_service) == bool(webhook_url):
        raise UsageError("roll the service with exactly one of --ecs-service CLUSTER/SERVICE or --webhook URL")
    if ecs_service:
        return EcsRoller(ecs_service, timeout=timeout, poll=poll)
    assert webhook_url is not None
    return WebhookRoller(webhook_url, key=webhook_key, timeout=min(timeout, 120.0))
