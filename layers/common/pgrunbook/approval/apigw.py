"""API Gateway HTTP API (payload format 2.0) events in, responses out: the approval function's
whole surface. The same events come from API Gateway and from the local server (server.py).

Routes (template.yaml declares the same; tests/unit/test_approval_http.py keeps them equal):
  GET  /approvals/{id}?exp&sig[&intent=reject]  the page (never decides)
  POST /approvals/{id}?exp&sig                  the page's form (csrf, name, comment, decision)
  GET  /cli/approvals, GET|POST /cli/approvals/{id}   JSON for `pgrunbook approvals|approve|reject`,
                                                      only behind the IAM authorizer
Query parameters are read from rawQueryString: a repeated parameter is a tampered link.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import PgrunbookError
from ..settings import Settings
from .page import SECURITY_HEADERS, render_page, render_text
from .service import ApprovalService, Outcome, RequestMeta

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    iam: bool  # only behind API Gateway's IAM authorizer

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method != self.method:
            return None
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$"
        m = re.match(pattern, path)
        return m.groupdict() if m else None


ROUTES = (
    Route("GET", "/approvals/{id}", iam=False),
    Route("POST", "/approvals/{id}", iam=False),
    Route("GET", "/cli/approvals", iam=True),
    Route("GET", "/cli/approvals/{id}", iam=True),
    Route("POST", "/cli/approvals/{id}", iam=True),
)


def match_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        params = route.match(method, path)
        if params is not None:
            return route, params
    return None


@dataclass
class HttpRequest:
    method: str
    raw_path: str
    route: Route | None
    path_params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    source_ip: str | None = None
    user_agent: str | None = None
    authorizer: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> HttpRequest:
        ctx = event.get("requestContext") or {}
        http = ctx.get("http") or {}
        method = str(http.get("method") or "").upper()
        raw_path = str(event.get("rawPath") or http.get("path") or "/")
        route = next((r for r in ROUTES if r.key == event.get("routeKey")), None)
        params = dict(event.get("pathParameters") or {})
        if route is None:  # $default route, or an event without routeKey: match ourselves
            found = match_route(method, raw_path)
            route, params = found if found else (None, {})
        body = event.get("body") or ""
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        return cls(method=method, raw_path=raw_path, route=route, path_params=params,
                   query=parse_qs(str(event.get("rawQueryString") or ""), keep_blank_values=True), headers=headers,
                   body=raw, source_ip=http.get("sourceIp"),
                   user_agent=http.get("userAgent") or headers.get("user-agent"),
                   authorizer=ctx.get("authorizer") or {})

    def single(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values and len(values) == 1 else None

    def form(self) -> dict[str, str]:
        if "application/x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return {}
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items() if len(v) == 1}

    def iam_identity(self) -> str | None:
        iam = self.authorizer.get("iam") or {}
        return str(iam.get("userArn")) if iam.get("userArn") else None

    def identity(self) -> str | None:
        """The authorizer's identity, when the API has one (IAM, JWT, Lambda authorizer)."""
        if self.iam_identity():
            return self.iam_identity()
        claims = (self.authorizer.get("jwt") or {}).get("claims") or {}
        for name in ("email", "preferred_username", "sub"):
            if claims.get(name):
                return f"jwt:{claims[name]}"
        lam = self.authorizer.get("lambda") or {}
        return f"authorizer:{lam.get('principalId') or lam.get('user')}" if lam else None

    def meta(self) -> RequestMeta:
        return RequestMeta(source_ip=self.source_ip, user_agent=self.user_agent, identity=self.identity())


def html_response(outcome: Outcome, action: str = "") -> dict[str, Any]:
    return {"statusCode": outcome.status, "headers": dict(SECURITY_HEADERS),
            "body": render_page(outcome, action=action), "isBase64Encoded": False}


def json_response(status: int, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
            "body": json.dumps(data, default=str), "isBase64Encoded": False}


def _page_error(status: int, state: str, message: str) -> dict[str, Any]:
    return html_response(Outcome(status, state, message))


def handle(event: Mapping[str, Any], settings: Settings, service: ApprovalService | None = None) -> dict[str, Any]:
    """One HTTP API v2 event -> one v2 response. Never raises: a failure is a page/JSON with a status (an
    unconfigured stack, SettingsInvalid naming the variables, is a 503)."""
    try:
        req = HttpRequest.from_event(event)
    except (ValueError, TypeError, AttributeError):
        return _page_error(400, "error", "This request could not be read.")
    if req.route is None:
        return _page_error(404, "not_found", "There is nothing here. Use the link from the notification.")
    if len(req.body) > MAX_BODY:
        return _page_error(413, "bad_input", "The form is too large.")
    try:
        service = service or ApprovalService.from_settings(settings)
        if req.route.iam:
            return _cli(req, service)
        return _page(req, service)
    except PgrunbookError as exc:  # configuration or AWS trouble: nothing was decided
        log.error("approval request failed", extra={"error": type(exc).__name__})
        outcome = Outcome(503, "unavailable", "The approval service cannot answer right now "
                                              f"({type(exc).__name__}). Nothing was decided: try again later.")
    except Exception as exc:  # a bug: still a page, and the log names the error's type only (no token)
        log.error("approval request failed unexpectedly", extra={"error": type(exc).__name__})
        outcome = Outcome(500, "error", "Something went wrong. Nothing was decided: try again later.")
    return _cli_json(outcome) if req.route.iam else html_response(outcome)


def _page(req: HttpRequest, service: ApprovalService) -> dict[str, Any]:
    approval_id = req.path_params.get("id", "")
    exp, sig = req.single("exp"), req.single("sig")
    action = f"{req.raw_path}?exp={quote(exp or '')}&sig={quote(sig or '')}"
    if req.method == "GET":
        outcome = service.view(approval_id, exp, sig, req.single("intent"))
    else:
        origin = req.headers.get("origin")
        if origin and origin != "null" and req.headers.get("host") and urlsplit(origin).netloc != req.headers["host"]:
            outcome = Outcome(403, "forbidden", "This form was sent from another site. Open the link from the "
                                                "notification and decide there.")
        else:
            outcome = service.decide_by_link(approval_id, exp, sig, req.form(), req.meta())
    log.info("approval page", extra={"approval_id": approval_id[:40], "method": req.method,
                                     "status": outcome.status, "state": outcome.state})
    return html_response(outcome, action=action)


def _cli_json(outcome: Outcome, *, with_facts: bool = False) -> dict[str, Any]:
    data = outcome.to_json(with_facts=with_facts)
    if with_facts and outcome.record is not None:
        data["text"] = render_text(outcome)
    return json_response(outcome.status, data)


def _cli(req: HttpRequest, service: ApprovalService) -> dict[str, Any]:
    if not req.iam_identity():  # defence in depth: the route must sit behind the IAM authorizer
        return json_response(403, {"ok": False, "status": 403, "state": "forbidden",
                                   "message": "the CLI routes need AWS IAM authorization (SigV4)"})
    approval_id = req.path_params.get("id")
    if req.method == "GET" and approval_id is None:
        return json_response(200, {"ok": True, "approvals": [r.summary() for r in service.list()]})
    assert approval_id is not None
    if req.method == "GET":
        return _cli_json(service.show(approval_id), with_facts=True)
    try:
        body = json.loads(req.body or b"{}")
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return json_response(400, {"ok": False, "status": 400, "state": "bad_input",
                                   "message": "the body must be a JSON object {decision, name, comment}"})
    fields = {k: (str(body[k]) if body.get(k) is not None else None) for k in ("decision", "name", "comment")}
    outcome = service.decide_by_cli(approval_id, fields["decision"], fields["name"], fields["comment"], req.meta())
    log.info("approval cli", extra={"approval_id": approval_id[:40], "status": outcome.status,
                                    "state": outcome.state})
    return _cli_json(outcome)
