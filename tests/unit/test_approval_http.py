"""The approval endpoint over real HTTP: the real handler (functions/approval/app.py) behind the local
server (HTTP API v2 events), against moto (Step Functions with real task tokens, DynamoDB, KMS,
Secrets Manager, SNS). A small state machine waits on `.waitForTaskToken` the way RequestApproval
does; each test makes its own approval request as the report function would (ApprovalService.create).

Every "Bad input" case of the approval issue is here, with nothing decided unless the test says so."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.approval import service as service_mod
from pgrunbook.approval.client import _FormReader, _http
from pgrunbook.approval.config import SIGNING_SECRET_ENV, TABLE_ENV, TOKEN_KEY_ENV, URL_ENV
from pgrunbook.approval.resources import create_local
from pgrunbook.approval.server import ApprovalServer
from pgrunbook.approval.service import ApprovalRequest, ApprovalService, Created
from pgrunbook.approval.signing import signer_from_secret
from pgrunbook.approval.store import ApprovalStore
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV

REGION = "us-east-1"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
WAIT_DEFINITION = {
    "StartAt": "RequestApproval",
    "States": {
        "RequestApproval": {
            "Type": "Task", "Resource": "arn:aws:states:::sns:publish.waitForTaskToken",
            "Parameters": {"TopicArn": "TOPIC", "Message.$": "States.Format('{}|{}', $$.Execution.Id, $$.Task.Token)"},
            "TimeoutSecondsPath": "$.timeout", "ResultPath": "$.approval",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "TearingDown"}],
            "Next": "Done"},
        # after a timeout the execution is still RUNNING for a while (Restore tears the target down)
        "TearingDown": {"Type": "Wait", "SecondsPath": "$.teardown_seconds", "Next": "Failed"},
        "Failed": {"Type": "Fail", "Error": "TimedOut"},
        "Done": {"Type": "Succeed"},
    },
}
CHECKS = [
    {"check": "connectivity", "expected": "SELECT now() answers", "actual": "2026-11-25T12:00:00+00:00",
     "verdict": "pass", "ok": True, "detail": ""},
    {"check": 'rows public."User"', "expected": "200", "actual": "200", "verdict": "pass", "ok": True, "detail": ""},
    {"check": 'rows public."Job"', "expected": "600", "actual": "600", "verdict": "pass", "ok": True, "detail": ""},
]


class Harness:
    def __init__(self, server: ApprovalServer, topic: str, machine: str, secret: str, table: str) -> None:
        self.server, self.topic, self.machine, self.secret, self.table = server, topic, machine, secret, table
        self.pages: list[str] = []  # every body served in this test (no token may appear in any)
        self.tokens: list[str] = []

    def request(self, *, task_timeout: int = 3600, teardown_seconds: int = 0, approval_timeout: int = 3600,
                database: str = "app",
                checks: list[dict[str, Any]] | None = None) -> tuple[Created, str]:
        """Start an execution waiting for its token; make the approval request as the report function does."""
        from moto.sns.models import sns_backends

        sent = sns_backends["123456789012"][REGION].topics[self.topic].sent_notifications
        before = len(sent)
        arn = aws.client("stepfunctions").start_execution(
            stateMachineArn=self.machine, name=f"t-{uuid.uuid4().hex[:12]}",
            input=json.dumps({"timeout": task_timeout, "teardown_seconds": teardown_seconds,
                              "requested_by": "alice@example.com"}))["executionArn"]
        deadline = time.monotonic() + 30
        while not any(m[1].startswith(arn + "|") for m in sent[before:]):
            assert time.monotonic() < deadline, "the execution never asked for its token"
            time.sleep(0.05)
        token = next(m[1] for m in sent[before:] if m[1].startswith(arn + "|")).split("|", 1)[1]
        self.tokens.append(token)
        checks = CHECKS if checks is None else checks
        req = ApprovalRequest(
            task_token=token, approval_id=str(uuid.uuid4()), execution=arn,
            plan={"database": database, "backup": f"s3://bucket/{database}/manual/2026/11/db-backup.dump",
                  "backup_finished_at": service_mod.iso(time.time() - 7200), "size_bytes": 12_345_678,
                  "manifest": f"s3://bucket/{database}/manual/2026/11/db-backup.dump.manifest.json",
                  "approval_timeout_seconds": approval_timeout},
            target={"kind": "database", "name": "pgrunbook_drill_abc", "dbname": "pgrunbook_drill_abc",
                    "host": "db.internal", "port": 5432, "server": database},
            verify={"ok": all(c["ok"] for c in checks), "verdict": "verified", "checks": checks, "seconds": 0.4,
                    "target": "postgresql://app:***@db.internal:5432/pgrunbook_drill_abc",
                    "text": "VERIFIED  postgresql://app:***@db.internal:5432/pgrunbook_drill_abc"},
            started_at="2026-11-25T11:00:00Z", execution_input={"requested_by": "alice@example.com"})
        return ApprovalService.from_settings(Settings.from_env()).create(req), arn

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        status, body = _http("GET", url, headers=headers or {})
        self.pages.append(body)
        return status, body

    def post(self, url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
        status, body = _http("POST", url, urlencode(form).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        self.pages.append(body)
        return status, body

    def open_form(self, url: str) -> dict[str, str]:
        """GET the page as a browser does; the form's fields (csrf) and where it posts."""
        status, body = self.get(url)
        assert status == 200, body
        reader = _FormReader()
        reader.feed(body)
        assert reader.action and reader.csrf, "no decision form on the page"
        return {"csrf": reader.csrf, "action": reader.action}

    def decide(self, url: str, decision: str, name: str, comment: str = "",
               csrf: str | None = None) -> tuple[int, str]:
        form = self.open_form(url) if csrf is None else {"csrf": csrf, "action": ""}
        return self.post(url, {"csrf": form["csrf"], "name": name, "comment": comment, "decision": decision})

    def record(self, approval_id: str) -> Any:
        return ApprovalStore(self.table).get(approval_id)

    def execution(self, arn: str) -> dict[str, Any]:
        return dict(aws.client("stepfunctions").describe_execution(executionArn=arn))

    def task_results(self, arn: str) -> list[str]:
        events = aws.client("stepfunctions").get_execution_history(executionArn=arn)["events"]
        return [e["type"] for e in events if e["type"] in ("TaskSucceeded", "TaskFailed", "TaskTimedOut")]

    def wait_status(self, arn: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while (ex := self.execution(arn))["status"] != status:
            assert time.monotonic() < deadline, ex
            time.sleep(0.05)
        return ex


def state_text(page: str) -> str:
    reader = _FormReader()
    reader.feed(page)
    return " ".join(reader.state)


def with_query(url: str, **changes: str | None) -> str:
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    for k, v in changes.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    return split._replace(query=urlencode(query)).geturl()


@pytest.fixture(scope="module")
def stack() -> Iterator[Harness]:
    """One moto, one approval table/key/secret, one waiting state machine, one server per module."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in AWS_TEST_ENV.items():
            mp.setenv(key, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
            aws.reset_clients()
            refs, attrs = create_local(REGION)
            topic = aws.client("sns").create_topic(Name="approvals")["TopicArn"]
            machine = aws.client("stepfunctions").create_state_machine(
                name="Restore-approvals", definition=json.dumps(WAIT_DEFINITION).replace("TOPIC", topic),
                roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
            with ApprovalServer() as server:
                mp.setenv(TABLE_ENV, refs["ApprovalTable"])
                mp.setenv(TOKEN_KEY_ENV, attrs["ApprovalTokenKey.Arn"])
                mp.setenv(SIGNING_SECRET_ENV, refs["ApprovalSigningSecret"])
                mp.setenv(URL_ENV, server.url)
                server.serve(load_handler(handler_path("ApprovalFunction")))
                yield Harness(server, topic, machine, refs["ApprovalSigningSecret"], refs["ApprovalTable"])
        aws.reset_clients()


@pytest.fixture()
def h(stack: Harness) -> Iterator[Harness]:
    stack.pages, stack.tokens = [], []
    yield stack
    for page in stack.pages:  # invariant of every test: no raw task token in any page served
        assert not any(t in page for t in stack.tokens)


# --------------------------------------------------------------------------- happy path, scanners
def test_get_twice_decides_nothing_then_one_post_approves(h: Harness) -> None:
    created, arn = h.request()
    for _ in range(2):  # a mail scanner prefetches the link, then the person opens it
        status, page = h.get(created.approve_url, {"User-Agent": "Mimecast-Scanner"})
        assert status == 200 and "Waiting for your decision" in page
    assert h.execution(arn)["status"] == "RUNNING" and h.task_results(arn) == []
    assert h.record(created.approval_id).status == "pending"

    # the page: what changes, the backup, every check, who started it, expiry, the form
    for text in ("Approve cutover of app?", "new database pgrunbook_drill_abc on the server of app",
                 "s3://bucket/app/manual/2026/11/db-backup.dump", "2.0h", "11.8 MB", "3/3 checks passed",
                 "rows public.&quot;User&quot;", "alice@example.com", "2026-11-25T11:00:00Z",
                 '<label for="name">Your name</label>', '<label for="comment">Comment</label>',
                 ">Approve</button>", ">Reject</button>", "console.aws.amazon.com/states"):
        assert text in page, text

    status, page = h.decide(created.approve_url, "approve", "Ann Operator", "counts match")
    assert status == 200, state_text(page)
    assert "approved by Ann Operator" in state_text(page)
    ex = h.wait_status(arn, "SUCCEEDED")
    assert h.task_results(arn) == ["TaskSucceeded"]
    decision = json.loads(ex["output"])["approval"]
    assert decision["decision"] == "approved" and decision["approval_id"] == created.approval_id
    assert decision["approver"] == "Ann Operator" and decision["comment"] == "counts match"
    assert decision["via"] == "page" and decision["source_ip"] == "127.0.0.1"
    assert decision["user_agent"].startswith("Python-urllib")
    assert h.record(created.approval_id).status == "approved"
    # afterwards the link shows the decision, without a form
    status, page = h.get(created.approve_url)
    assert status == 200 and "approved by Ann Operator" in state_text(page) and "<form" not in page


def test_reject_link_preselects_reject_and_rejects(h: Harness) -> None:
    created, arn = h.request()
    status, page = h.get(created.reject_url)
    assert status == 200 and "You opened the reject link" in page
    assert page.index(">Reject</button>") < page.index(">Approve</button>")
    status, page = h.decide(created.reject_url, "reject", "Bob", "row counts look wrong")
    assert status == 200 and "rejected by Bob" in state_text(page)
    ex = h.wait_status(arn, "SUCCEEDED")
    assert json.loads(ex["output"])["approval"]["decision"] == "rejected"


# --------------------------------------------------------------------------- forged, tampered, unknown
def test_forged_or_tampered_links_are_refused_403(h: Harness) -> None:
    created, arn = h.request()
    other, _ = h.request()
    csrf = h.open_form(created.approve_url)["csrf"]
    q = parse_qs(urlsplit(created.approve_url).query)
    exp, sig = q["exp"][0], q["sig"][0]
    forged = "A" * 43
    cases = {
        "forged signature": with_query(created.approve_url, sig=forged),
        "signature of another approval": with_query(created.approve_url,
                                                    sig=parse_qs(urlsplit(other.approve_url).query)["sig"][0]),
        "tampered id": created.approve_url.replace(created.approval_id, str(uuid.uuid4())),
        "tampered expiry": with_query(created.approve_url, exp=str(int(exp) + 86400)),
        "no signature": with_query(created.approve_url, sig=None),
        "no expiry": with_query(created.approve_url, exp=None),
        "repeated signature": created.approve_url + f"&sig={sig}",
        "not an id": created.approve_url.replace(created.approval_id, "..%2F..%2Fetc"),
    }
    for what, url in cases.items():
        status, page = h.get(url)
        assert status == 403, (what, status)
        assert "This link is not valid" in state_text(page) and "<form" not in page, what
        status, page = h.post(url, {"csrf": csrf, "name": "Mallory", "decision": "approve"})
        assert status == 403, (what, status)
    assert h.execution(arn)["status"] == "RUNNING" and h.task_results(arn) == []
    assert h.record(created.approval_id).status == "pending"


def test_unknown_approval_is_404(h: Harness) -> None:
    h.request()  # an approval exists, just not this one
    ghost = str(uuid.uuid4())  # a validly signed link whose record does not exist (e.g. removed after 30 days)
    exp = int(time.time()) + 3600
    sig = signer_from_secret(h.secret).link_signature(ghost, exp)
    url = f"{h.server.url}/approvals/{ghost}?exp={exp}&sig={sig}"
    status, page = h.get(url)
    assert status == 404 and f"There is no approval {ghost}" in state_text(page)
    status, _ = h.post(url, {"csrf": "1.x", "name": "Ann", "decision": "approve"})
    assert status == 404
    assert _http("GET", f"{h.server.url}/nothing/here")[0] == 404


# --------------------------------------------------------------------------- expiry
def test_expired_link_is_410_and_decides_nothing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    created, arn = h.request(approval_timeout=600)
    csrf = h.open_form(created.approve_url)["csrf"]
    real = time.time
    monkeypatch.setattr(service_mod, "_now", lambda: real() + 601)  # the clock moves past the expiry
    status, page = h.get(created.approve_url)
    assert status == 410 and "This approval link expired at" in state_text(page) and "<form" not in page
    status, page = h.decide(created.approve_url, "approve", "Late Larry", csrf=csrf)
    assert status == 410 and "Nothing was decided" in state_text(page)
    assert h.execution(arn)["status"] == "RUNNING" and h.task_results(arn) == []
    assert h.record(created.approval_id).decision is None


def test_link_signed_with_a_past_expiry_is_410(h: Harness) -> None:
    created, _ = h.request()
    past = int(time.time()) - 10
    sig = signer_from_secret(h.secret).link_signature(created.approval_id, past)
    status, _ = h.get(with_query(created.approve_url, exp=str(past), sig=sig))
    assert status == 410


# --------------------------------------------------------------------------- CSRF
def test_post_without_csrf_or_with_another_approvals_csrf_is_403(h: Harness) -> None:
    created, arn = h.request()
    other, _ = h.request()
    other_csrf = h.open_form(other.approve_url)["csrf"]
    own = h.open_form(created.approve_url)["csrf"]
    issued, _, mac = own.partition(".")
    for what, form in {
        "no token": {"name": "Ann", "decision": "approve"},
        "empty token": {"csrf": "", "name": "Ann", "decision": "approve"},
        "another approval's token": {"csrf": other_csrf, "name": "Ann", "decision": "approve"},
        "tampered token": {"csrf": f"{int(issued) + 1}.{mac}", "name": "Ann", "decision": "approve"},
    }.items():
        status, page = h.post(created.approve_url, form)
        assert status == 403, (what, status)
        assert "security token" in state_text(page), what
    status, page = h.post(created.approve_url, {"csrf": own, "name": "Ann", "decision": "approve"},
                          {"Origin": "https://evil.example"})
    assert status == 403 and "another site" in state_text(page)
    assert h.execution(arn)["status"] == "RUNNING" and h.task_results(arn) == []
    status, _ = h.post(created.approve_url, {"csrf": own, "name": "Ann", "decision": "approve"})
    assert status == 200


def test_bad_form_is_400_and_shows_the_form_again(h: Harness) -> None:
    created, arn = h.request()
    csrf = h.open_form(created.approve_url)["csrf"]
    for form, text in (({"csrf": csrf, "name": "  ", "decision": "approve"}, "enter your name"),
                       ({"csrf": csrf, "name": "Ann", "decision": "maybe"}, "choose Approve or Reject"),
                       ({"csrf": csrf, "name": "Ann", "decision": "approve", "comment": "x" * 2001}, "longer than"),
                       ({"csrf": csrf, "name": "Ann\x00", "decision": "approve"}, "control characters")):
        status, page = h.post(created.approve_url, form)
        assert status == 400 and text in state_text(page), (form, state_text(page))
        assert '<input type="hidden" name="csrf"' in page
    assert h.task_results(arn) == [] and h.record(created.approval_id).status == "pending"


# --------------------------------------------------------------------------- single use
def test_second_post_is_409_and_names_the_first_decision(h: Harness) -> None:
    created, arn = h.request()
    late_csrf = h.open_form(created.approve_url)["csrf"]  # Bob opened the page too
    assert h.decide(created.approve_url, "approve", "Ann", "ship it")[0] == 200
    status, page = h.decide(created.approve_url, "reject", "Bob", "wait", csrf=late_csrf)
    assert status == 409
    assert "Already decided: this cutover was approved by Ann at" in state_text(page)
    assert "(comment: ship it)" in state_text(page)
    h.wait_status(arn, "SUCCEEDED")
    assert h.task_results(arn) == ["TaskSucceeded"]
    assert h.record(created.approval_id).decision["approver"] == "Ann"


def test_two_concurrent_posts_make_exactly_one_decision(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests read "pending" and reach the conditional write together (a barrier holds them
    there); moto's DynamoDB is made atomic per request, as DynamoDB is. Exactly one claim wins."""
    from moto.dynamodb.models import DynamoDBBackend

    created, arn = h.request()
    forms = [h.open_form(created.approve_url)["csrf"] for _ in range(2)]
    barrier = threading.Barrier(2, timeout=20)
    original_claim = ApprovalStore.claim

    def claim_together(self: ApprovalStore, *args: Any, **kwargs: Any) -> bool:
        barrier.wait()
        return original_claim(self, *args, **kwargs)

    atomic = threading.Lock()
    original_update = DynamoDBBackend.update_item

    def update_atomically(self: Any, *args: Any, **kwargs: Any) -> Any:
        with atomic:
            return original_update(self, *args, **kwargs)

    deliveries: list[str] = []
    original_deliver = ApprovalService._deliver

    def counted_deliver(self: ApprovalService, record: Any, decision: dict[str, Any]) -> str | None:
        deliveries.append(decision["approver"])
        return original_deliver(self, record, decision)

    monkeypatch.setattr(ApprovalStore, "claim", claim_together)
    monkeypatch.setattr(DynamoDBBackend, "update_item", update_atomically)
    monkeypatch.setattr(ApprovalService, "_deliver", counted_deliver)
    results: dict[str, tuple[int, str]] = {}

    def person(name: str, csrf: str) -> None:
        results[name] = h.decide(created.approve_url, "approve", name, csrf=csrf)

    threads = [threading.Thread(target=person, args=(n, c)) for n, c in zip(("Ann", "Bob"), forms, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(s for s, _ in results.values())
    assert statuses == [200, 409], {k: (s, state_text(p)) for k, (s, p) in results.items()}
    winner = next(n for n, (s, _) in results.items() if s == 200)
    loser_page = next(p for s, p in results.values() if s == 409)
    assert f"approved by {winner}" in state_text(loser_page)
    assert deliveries == [winner]  # exactly one SendTaskSuccess
    h.wait_status(arn, "SUCCEEDED")
    assert h.task_results(arn) == ["TaskSucceeded"]


# --------------------------------------------------------------------------- execution no longer waiting
def wait_for_event(h: Harness, arn: str, event: str) -> None:
    deadline = time.monotonic() + 30
    while event not in h.task_results(arn):
        assert time.monotonic() < deadline, f"no {event} in {arn}"
        time.sleep(0.1)


def refuse_late_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    """After a task timed out AWS refuses its token with TaskTimedOut. moto 5.2 accepts the late
    token while the execution still runs (its own TaskTimedOut path is never armed, and raising it
    fails with a TypeError): answer as AWS does for this token, test-side."""
    from moto.core.exceptions import AWSError
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    class TaskTimedOut(AWSError):
        TYPE = "TaskTimedOut"
        STATUS = 400

    original = StepFunctionsParserBackend.send_task_success

    def send_task_success(self: Any, task_token: str, *args: Any, **kwargs: Any) -> Any:
        if task_token == token:
            raise TaskTimedOut("Task Timed Out")
        return original(self, task_token, *args, **kwargs)

    monkeypatch.setattr(StepFunctionsParserBackend, "send_task_success", send_task_success)


def test_aborted_execution_is_410_and_nothing_is_sent(h: Harness) -> None:
    """An operator stopped the execution (ABORTED). moto 5.2 ignores StopExecution while a task waits
    for its token (AWS aborts at once), so the stop lands while the execution tears down after its
    task timed out: a genuine ABORTED execution with a pending approval record."""
    created, arn = h.request(task_timeout=1, teardown_seconds=60)
    wait_for_event(h, arn, "TaskTimedOut")
    aws.client("stepfunctions").stop_execution(executionArn=arn, error="Operator", cause="changed my mind")
    h.wait_status(arn, "ABORTED")
    status, page = h.get(created.approve_url)
    assert status == 410 and "no longer waiting for this decision (ABORTED)" in state_text(page)
    assert "<form" not in page
    assert h.record(created.approval_id).status == "pending"  # a GET writes nothing
    csrf = signer_from_secret(h.secret).csrf_token(created.approval_id, created.expires_at, int(time.time()))
    status, page = h.decide(created.approve_url, "approve", "Ann", csrf=csrf)
    assert status == 410 and "Nothing was decided" in state_text(page)
    rec = h.record(created.approval_id)
    assert rec.status == "not_waiting" and rec.decision is None and rec.delivery["reason"] == "ABORTED"
    assert h.task_results(arn) == ["TaskTimedOut"]  # no SendTaskSuccess reached it


def test_decision_after_the_task_timed_out_is_410(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task timed out while the execution still runs (it tears the target down): Step Functions
    refuses the token with TaskTimedOut; the record and the page say the decision was not delivered."""
    created, arn = h.request(task_timeout=1, teardown_seconds=60)
    wait_for_event(h, arn, "TaskTimedOut")
    refuse_late_token(monkeypatch, h.tokens[-1])
    assert h.execution(arn)["status"] == "RUNNING"
    status, page = h.decide(created.approve_url, "approve", "Ann")
    assert status == 410, state_text(page)
    assert "no longer waiting for this decision (TaskTimedOut)" in state_text(page)
    assert "was not delivered" in state_text(page)
    rec = h.record(created.approval_id)
    assert rec.status == "not_waiting" and rec.delivery["error"] == "TaskTimedOut"
    assert rec.decision["approver"] == "Ann"  # who tried, and that it was not delivered
    status, page = h.get(created.approve_url)  # and it stays that way
    assert status == 410 and "no longer waiting" in state_text(page)
    aws.client("stepfunctions").stop_execution(executionArn=arn)


def test_step_functions_unreachable_releases_the_claim(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery that could not be attempted (throttled, network) is 503 and decides nothing: the
    claim is released, so the next try works."""
    created, arn = h.request()
    original = ApprovalService._deliver
    monkeypatch.setattr(ApprovalService, "_deliver", lambda self, record, decision: "ThrottlingException")
    status, page = h.decide(created.approve_url, "approve", "Ann")
    assert status == 503 and "Nothing was decided" in state_text(page)
    assert h.record(created.approval_id).status == "pending" and h.record(created.approval_id).decision is None
    monkeypatch.setattr(ApprovalService, "_deliver", original)
    assert h.decide(created.approve_url, "approve", "Ann")[0] == 200
    h.wait_status(arn, "SUCCEEDED")


def test_unexpected_error_while_sending_releases_the_claim(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything unexpected while sending (here the SDK call itself blows up) is a 500 page that
    decides nothing; the claim is released, never left holding the approval."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    created, arn = h.request()
    original = StepFunctionsParserBackend.send_task_success

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("connection reset")

    monkeypatch.setattr(StepFunctionsParserBackend, "send_task_success", broken)
    status, page = h.decide(created.approve_url, "approve", "Ann")
    assert status == 500 and "Nothing was decided" in state_text(page), state_text(page)
    rec = h.record(created.approval_id)
    assert rec.status == "pending" and rec.decision is None and rec.claim is None
    monkeypatch.setattr(StepFunctionsParserBackend, "send_task_success", original)
    assert h.decide(created.approve_url, "approve", "Ann")[0] == 200
    h.wait_status(arn, "SUCCEEDED")


# --------------------------------------------------------------------------- the CLI routes
def test_cli_list_show_approve_reject(h: Harness, capsys: pytest.CaptureFixture[str], clean_env: None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pgrunbook.cli import main

    first, arn1 = h.request(database="app")
    second, arn2 = h.request(database="billing")
    base = ["--endpoint", h.server.url]
    assert main(["approvals", "list", "--json", *base]) == 0
    listed = json.loads(capsys.readouterr().out)["approvals"]
    assert {a["approval_id"] for a in listed} >= {first.approval_id, second.approval_id}
    assert all("token" not in json.dumps(a) for a in listed)
    assert main(["approvals", "show", first.approval_id, *base]) == 0
    shown = capsys.readouterr().out
    assert "cutover of app: pending" in shown and 'rows public."User"' in shown and "3/3 checks passed" in shown

    assert main(["reject", second.approval_id, "--as", "Carol", "--reason", "  ", *base]) == 2
    assert "a rejection needs a reason" in capsys.readouterr().err
    assert main(["approve", first.approval_id, "--as", "Dan", "--comment", "from the CLI", *base]) == 0
    assert "approved by Dan" in capsys.readouterr().out
    ex = h.wait_status(arn1, "SUCCEEDED")
    decision = json.loads(ex["output"])["approval"]
    assert decision["via"] == "cli" and decision["identity"].startswith("arn:aws:iam::123456789012:user/local-")

    assert main(["approve", first.approval_id, "--as", "Eve", *base]) == 1  # second decision
    assert "Already decided: this cutover was approved by Dan" in capsys.readouterr().err
    assert main(["reject", second.approval_id, "--as", "Carol", "--reason", "not today", *base]) == 0
    h.wait_status(arn2, "SUCCEEDED")
    assert main(["approve", str(uuid.uuid4()), "--as", "Eve", *base]) == 1
    assert "There is no approval" in capsys.readouterr().err
    monkeypatch.delenv(URL_ENV)
    assert main(["approvals", "list"]) == 2 and "no approval endpoint" in capsys.readouterr().err


def test_cli_routes_need_the_iam_authorizer(h: Harness) -> None:
    """Behind API Gateway the /cli routes carry an IAM identity; without one the function refuses."""
    from pgrunbook.approval.apigw import handle

    created, arn = h.request()
    body = json.dumps({"decision": "approve", "name": "Mallory"})
    event = {"version": "2.0", "routeKey": "POST /cli/approvals/{id}",
             "rawPath": f"/cli/approvals/{created.approval_id}",
             "rawQueryString": "", "headers": {"content-type": "application/json"},
             "pathParameters": {"id": created.approval_id}, "body": body, "isBase64Encoded": False,
             "requestContext": {"http": {"method": "POST", "path": "/cli/approvals/x", "sourceIp": "203.0.113.9",
                                         "userAgent": "curl"}}}
    resp = handle(event, Settings.from_env())
    assert resp["statusCode"] == 403 and "IAM" in json.loads(resp["body"])["message"]
    assert h.task_results(arn) == []
