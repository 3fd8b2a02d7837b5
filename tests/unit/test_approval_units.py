"""Approval pieces on their own: link and CSRF signatures (generated cases, fixed seed), the page's
escaping (generated hostile text, fixed seed), the HTTP API v2 adapter and the local server's events,
the notification, and template.yaml's guarantees (routes, and who may resume Restore or read tokens)."""

from __future__ import annotations

import html
import json
import random
import string
import time
import uuid
from html.parser import HTMLParser
from typing import Any

import pytest

from pgrunbook.approval.apigw import ROUTES, HttpRequest, handle
from pgrunbook.approval.page import render_page, render_text
from pgrunbook.approval.server import v2_event
from pgrunbook.approval.service import (
    ApprovalRequest,
    Outcome,
    approval_summary,
    build_facts,
    links,
    notification,
)
from pgrunbook.approval.signing import Signer
from pgrunbook.approval.store import ApprovalRecord
from pgrunbook.errors import UsageError
from pgrunbook.lambda_support import ConfigError
from pgrunbook.settings import Settings
from tests.unit.template_support import ACCOUNT, REGION, Resolver, expanded, statements
from tests.unit.template_support import allowed as iam_allows

KEY = b"k" * 40
SEED = 20261125


# --------------------------------------------------------------------------- signatures
def test_link_signature_binds_id_and_expiry() -> None:
    signer = Signer([KEY])
    aid, exp = str(uuid.uuid4()), 1_900_000_000
    sig = signer.link_signature(aid, exp)
    assert signer.verify_link(aid, str(exp), sig) == exp
    assert signer.verify_link(str(uuid.uuid4()), str(exp), sig) is None
    assert signer.verify_link(aid, str(exp + 1), sig) is None
    assert signer.verify_link(aid, f"0{exp}", sig) is None  # same number, other text: not what was signed
    for bad_exp in ("", "-1", "1e9", " 1900000000", "1900000000\n", "9" * 13):
        assert signer.verify_link(aid, bad_exp, sig) is None, bad_exp
    assert signer.verify_link(aid, str(exp), sig + "=") is None
    assert signer.verify_link(aid, str(exp), None) is None
    assert Signer([b"other-key-" * 4]).verify_link(aid, str(exp), sig) is None
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Signer([b"short"])


def test_generated_tampering_never_verifies() -> None:
    """Every one-character change of the signature, and random ids/expiries, fail (fixed seed)."""
    rng = random.Random(SEED)
    signer = Signer([KEY])
    alphabet = string.ascii_letters + string.digits + "-_"
    for _ in range(200):
        aid, exp = str(uuid.UUID(int=rng.getrandbits(128))), rng.randrange(10**9, 10**10)
        sig = signer.link_signature(aid, exp)
        i = rng.randrange(len(sig))
        mutated = sig[:i] + rng.choice(alphabet.replace(sig[i], "")) + sig[i + 1:]
        assert signer.verify_link(aid, str(exp), mutated) is None
        assert signer.verify_link(aid, str(rng.randrange(10**9, 10**10)), sig) in (None, exp)
        assert signer.verify_link(str(uuid.UUID(int=rng.getrandbits(128))), str(exp), sig) is None


def test_csrf_token_is_bound_to_its_approval() -> None:
    signer = Signer([KEY])
    a, b, exp, now = str(uuid.uuid4()), str(uuid.uuid4()), 1_900_000_000, time.time()
    token = signer.csrf_token(a, exp, int(now))
    assert signer.verify_csrf(a, exp, token, now)
    assert not signer.verify_csrf(b, exp, token, now)
    assert not signer.verify_csrf(a, exp + 1, token, now)
    assert not signer.verify_csrf(a, exp, None, now) and not signer.verify_csrf(a, exp, "", now)
    assert not signer.verify_csrf(a, exp, token.replace(".", ".x", 1), now)
    future = signer.csrf_token(a, exp, int(now) + 3600)  # minted "in the future": refused
    assert not signer.verify_csrf(a, exp, future, now)


def test_rotated_key_still_verifies_mailed_links(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from pgrunbook import aws
    from pgrunbook.approval import signing
    from tests.conftest import AWS_TEST_ENV

    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        arn = aws.client("secretsmanager").create_secret(Name="sig", SecretString="a" * 64)["ARN"]
        aid, exp = str(uuid.uuid4()), 1_900_000_000
        old_sig = signing.signer_from_secret(arn).link_signature(aid, exp)
        aws.client("secretsmanager").put_secret_value(SecretId=arn, SecretString="b" * 64)
        signing._cache.clear()
        rotated = signing.signer_from_secret(arn)
        assert rotated.verify_link(aid, str(exp), old_sig) == exp  # AWSPREVIOUS verifies
        assert rotated.link_signature(aid, exp) != old_sig  # AWSCURRENT signs
    aws.reset_clients()


# --------------------------------------------------------------------------- the request, facts, notification
def request(**changes: Any) -> ApprovalRequest:
    base: dict[str, Any] = {
        "task_token": "AQCEAAAAKgAAAAMAAAAAAAAAA" + "x" * 600, "approval_id": str(uuid.uuid4()),
        "execution": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:prod-restore:cutover-1",
        "plan": {"database": "app", "backup": "s3://b/app/manual/2026/11/x.dump",
                 "backup_finished_at": "2026-11-25T09:00:00Z", "size_bytes": 5 * 1024**3,
                 "approval_timeout_seconds": 86400},
        "target": {"kind": "rds", "name": "pgrb-1-app", "dbname": "app", "host": "pgrb-1.rds", "port": 5432},
        "verify": {"ok": True, "checks": [{"check": "connectivity", "expected": "x", "actual": "x", "ok": True},
                                          {"check": "rows a", "expected": "1", "actual": "2", "ok": False}]},
        "started_at": "2026-11-25T10:00:00Z", "input": json.dumps({"database": "app", "requested_by": "ops"}),
    }
    base.update(changes)
    return ApprovalRequest.parse(base)


def test_request_event_is_checked() -> None:
    with pytest.raises(UsageError, match="missing field 'task_token'"):
        ApprovalRequest.parse({"approval_id": str(uuid.uuid4())})
    with pytest.raises(UsageError, match="must be a UUID"):
        request(approval_id="../../x")
    assert "task_token" not in repr(request())  # never in a repr, a log line or a traceback


def test_notification_subject_body_and_json_attribute() -> None:
    req = request()
    now = 1_764_064_800.0  # 2025-11-25T10:00:00Z... any fixed instant
    facts = build_facts(req, now, int(now) + 86400)
    approve, reject = links("https://api.example", req.approval_id, int(now) + 86400, "S" * 43)
    subject, text, attribute = notification(facts, req, approve, reject, now)
    assert subject == "Approve cutover of app? 1/2 checks passed"
    assert f"Approve: {approve}" in text and f"Reject:  {reject}" in text and reject.endswith("&intent=reject")
    assert "The links expire at" in text and "Opening a link decides nothing" in text
    assert f"https://{REGION}.console.aws.amazon.com/states/home?region={REGION}#/v2/executions/details/" in text
    assert "new RDS instance pgrb-1-app (pgrb-1.rds:5432), database app" in text and "5.0 GB" in text
    assert req.task_token not in text and req.task_token not in json.dumps(attribute)
    assert attribute["approve_url"] == approve and attribute["reject_url"] == reject
    assert (attribute["checks_passed"], attribute["checks_total"]) == (1, 2)
    assert attribute["failures"] == ["rows a: expected 1, actual 2"]
    assert attribute["started_by"] == "ops" and attribute["console_url"] in text


def test_huge_verification_keeps_every_failure_within_an_item() -> None:
    checks = [{"check": f"rows t{i}", "expected": "1", "actual": "1", "ok": True, "detail": "d" * 100}
              for i in range(5000)] + [{"check": "rows broken", "expected": "1", "actual": "0", "ok": False}]
    facts = build_facts(request(verify={"ok": False, "checks": checks}), time.time(), 2_000_000_000)
    assert len(json.dumps(facts)) <= 300_000
    kept = facts["verification"]["checks"]
    assert any(c["check"] == "rows broken" for c in kept)
    assert facts["verification"]["omitted"] == 5001 - len(kept) and facts["verification"]["total"] == 5001


def test_decision_summary_for_the_final_report() -> None:
    line = approval_summary({"decision": "approved", "approver": "Ann", "decided_at": "2026-11-25T12:00:00Z",
                             "comment": "ok", "via": "page", "source_ip": "203.0.113.9", "user_agent": "Firefox",
                             "identity": None})
    assert line == ("approval: approved by Ann at 2026-11-25T12:00:00Z via page (comment: ok); "
                    "source ip 203.0.113.9, user agent Firefox")
    assert approval_summary(None) is None and approval_summary("approved") is None


# --------------------------------------------------------------------------- the page
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</textarea><b>", "' onmouseover='x",
           "&lt;already&gt;", "javascript:alert(1)", "<!--", "]]>", "\u202e", "<a href='//evil'>x</a>"]


def test_page_escapes_everything_it_shows() -> None:
    """Hostile text in every field the page shows (fixed seed): no tag or attribute comes from data,
    and the text is shown as typed."""
    rng = random.Random(SEED)
    allowed_tags = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "div", "strong", "br", "p",
                    "dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "a", "form", "input", "label",
                    "textarea", "button"}
    for _ in range(30):
        def word() -> str:
            return rng.choice(HOSTILE) + "".join(rng.choice(string.printable) for _ in range(rng.randrange(8)))

        checks = [{"check": word(), "expected": word(), "actual": word(), "ok": rng.random() < 0.5,
                   "detail": word()} for _ in range(3)]
        req = request(plan={"database": word(), "backup": word(), "backup_finished_at": word()},
                      target={"kind": "database", "name": word(), "dbname": word(), "server": word()},
                      verify={"ok": True, "checks": checks}, input={"requested_by": word()})
        facts = build_facts(req, time.time(), int(time.time()) + 3600)
        record = ApprovalRecord(approval_id=req.approval_id, execution=req.execution, database=facts["database"],
                                requested_at=facts["requested_at"], expires_at=facts["expires_at"], facts=facts,
                                decision={"decision": "approved", "approver": word(), "decided_at": word(),
                                          "comment": word(), "via": "page", "source_ip": word()})
        form = {"name": word(), "comment": word()}
        page = render_page(Outcome(400, "bad_input", word(), record, csrf=word(), form=form),
                           action="/approvals/x?exp=1&sig=" + word())
        parser = _Tags()
        parser.feed(page)
        assert {t for t, _ in parser.tags} <= allowed_tags, {t for t, _ in parser.tags} - allowed_tags
        assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)
        hrefs = [a["href"] for t, a in parser.tags if t == "a"]
        assert all(str(h).startswith("https://") for h in hrefs), hrefs
        shown = html.unescape(page)
        for value in (facts["database"], checks[0]["check"], (record.decision or {})["approver"], form["name"]):
            assert str(value).strip() in shown
        assert "<textarea" in page and page.count("</textarea>") == 1
    assert render_text(Outcome(200, "pending", "m", record)).startswith(f"approval {record.approval_id}")


# --------------------------------------------------------------------------- HTTP API v2 adapter, local server
def test_v2_events_from_the_local_server_match_the_routes() -> None:
    aid = str(uuid.uuid4())
    ev = v2_event("GET", f"/approvals/{aid}?exp=1&sig=abc&sig=def", {"User-Agent": "UA", "Host": "h"}, b"",
                  "127.0.0.1")
    assert ev is not None
    assert ev["routeKey"] == "GET /approvals/{id}" and ev["pathParameters"] == {"id": aid}
    assert ev["rawQueryString"] == "exp=1&sig=abc&sig=def" and ev["queryStringParameters"]["sig"] == "abc,def"
    assert ev["requestContext"]["http"]["sourceIp"] == "127.0.0.1" and "authorizer" not in ev["requestContext"]
    req = HttpRequest.from_event(ev)
    assert req.single("exp") == "1" and req.single("sig") is None  # a repeated parameter is no parameter
    post = v2_event("POST", f"/cli/approvals/{aid}", {"Content-Type": "application/json"}, b'{"a": 1}', "::1")
    assert post is not None and post["isBase64Encoded"] and post["requestContext"]["authorizer"]["iam"]["userArn"]
    assert HttpRequest.from_event(post).body == b'{"a": 1}'
    assert v2_event("GET", "/", {}, b"", "127.0.0.1") is None
    assert v2_event("DELETE", f"/approvals/{aid}", {}, b"", "127.0.0.1") is None
    jwt = HttpRequest.from_event({**ev, "requestContext": {**ev["requestContext"],
                                                           "authorizer": {"jwt": {"claims": {"email": "a@b"}}}}})
    assert jwt.identity() == "jwt:a@b"


def test_unknown_route_and_oversized_form_are_pages() -> None:
    resp = handle({"version": "2.0", "routeKey": "$default", "rawPath": "/wp-admin", "rawQueryString": "",
                   "requestContext": {"http": {"method": "GET"}}}, Settings())
    assert resp["statusCode"] == 404 and resp["headers"]["Content-Type"].startswith("text/html")
    aid = str(uuid.uuid4())
    big = v2_event("POST", f"/approvals/{aid}", {}, b"x" * 40_000, "127.0.0.1")
    assert big is not None and handle(big, Settings())["statusCode"] == 413


def test_page_headers_forbid_scripts_frames_and_referrers() -> None:
    resp = handle({"version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
                   "requestContext": {"http": {"method": "GET"}}}, Settings())
    headers = resp["headers"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- template.yaml
TOKEN_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/approval-token-key"
TABLE_ARN = "arn:ApprovalTable"
RESTORE = "ref:RestoreStateMachine"


class _Resolver(Resolver):
    def getatt(self, name: str, attr: str) -> Any:
        if name == "ApprovalTokenKey" and attr == "Arn":
            return TOKEN_KEY_ARN
        return super().getatt(name, attr)


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    return _Resolver(expanded(), {"RdsSubnetGroupName": "subnets", "ContainerImageUri": "123.dkr/x:1"}).resources()


def role_statements(resources: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every role's identity statements: inline policies and AWS::IAM::Policy resources attached to it."""
    out = {lid: statements(r) for lid, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    for r in resources.values():
        if r["Type"] == "AWS::IAM::Policy":
            for role in r["Properties"]["Roles"]:
                out[str(role).removeprefix("ref:")] += r["Properties"]["PolicyDocument"]["Statement"]
    return out


def test_the_api_routes_are_the_adapters_routes(resources: dict[str, dict[str, Any]]) -> None:
    paths = resources["ApprovalApi"]["Properties"]["Body"]["paths"]
    declared = {(method.upper(), path, bool(op.get("security")))
                for path, ops in paths.items() for method, op in ops.items()}
    assert declared == {(r.method, r.path, r.iam) for r in ROUTES}
    assert all(op["x-amazon-apigateway-integration"]["payloadFormatVersion"] == "2.0"
               for ops in paths.values() for op in ops.values())
    assert all(op["security"] == [{"AWS_IAM": []}] for path, ops in paths.items() if path.startswith("/cli/")
               for op in ops.values())


def test_only_the_approval_function_resumes_restore(resources: dict[str, dict[str, Any]]) -> None:
    roles = role_statements(resources)
    for action in ("states:SendTaskSuccess", "states:SendTaskFailure"):
        may = sorted(lid for lid, st in roles.items() if iam_allows(st, action, RESTORE))
        assert may == ["ApprovalFunctionRole"], (action, may)
        for other in ("ref:BackupStateMachine", "ref:MigrateStateMachine", "*"):
            assert not iam_allows(roles["ApprovalFunctionRole"], action, other), (action, other)


def test_only_the_approval_function_can_read_task_tokens(resources: dict[str, dict[str, Any]]) -> None:
    roles = role_statements(resources)
    for action in ("dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchGetItem"):
        may = sorted(lid for lid, st in roles.items() if iam_allows(st, action, TABLE_ARN))
        assert may in ([], ["ApprovalFunctionRole"]), (action, may)
    assert iam_allows(roles["ApprovalFunctionRole"], "dynamodb:GetItem", TABLE_ARN)
    assert iam_allows(roles["ReportFunctionRole"], "dynamodb:PutItem", TABLE_ARN)
    assert iam_allows(roles["ReportFunctionRole"], "kms:Encrypt", TOKEN_KEY_ARN)
    assert not any(iam_allows(st, "kms:Decrypt", TOKEN_KEY_ARN) for st in roles.values())
    # the key policy: the account administers and encrypts, only the approval function's role decrypts
    policy = resources["ApprovalTokenKey"]["Properties"]["KeyPolicy"]["Statement"]
    ctx = {"kms:EncryptionContext:purpose": "pgrunbook-approval-token"}
    for action in ("kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant"):
        granted = [st for st in policy if st["Effect"] == "Allow" and iam_allows([st], action, "*", ctx)]
        principals = [st["Principal"]["AWS"] for st in granted]
        expected = {"kms:Decrypt": ["arn:ApprovalFunctionRole"],
                    "kms:CreateGrant": [f"arn:aws:iam::{ACCOUNT}:root"]}.get(action, [])  # administrators
        assert principals == expected, (action, principals)
    other_purpose = {"kms:EncryptionContext:purpose": "something-else"}
    assert not any(iam_allows([st], "kms:Decrypt", "*", other_purpose) for st in policy)


def test_the_report_function_builds_links_to_the_api(resources: dict[str, dict[str, Any]]) -> None:
    env = resources["ReportFunction"]["Properties"]["Environment"]["Variables"]
    assert env["PGRUNBOOK_APPROVAL_URL"] == f"https://ref:ApprovalApi.execute-api.{REGION}.amazonaws.com"
    approval_env = resources["ApprovalFunction"]["Properties"]["Environment"]["Variables"]
    for name in ("PGRUNBOOK_APPROVAL_TABLE", "PGRUNBOOK_APPROVAL_TOKEN_KEY", "PGRUNBOOK_APPROVAL_SIGNING_SECRET"):
        assert env[name] == approval_env[name], name
