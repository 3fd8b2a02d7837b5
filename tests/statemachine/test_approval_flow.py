"""Cutover approval through the real Restore state machine (template.yaml + restore.asl.json in moto,
handlers in-process, a real PostgreSQL), with the real approval function served on 127.0.0.1 through
the HTTP API v2 adapter: approve on the page, reject from the CLI, malformed SDK decisions, timeout,
and `pgrunbook local run --approvals serve`."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.approval.client import decide_via_link
from pgrunbook.approval.runner import LocalApprovals
from pgrunbook.approval.service import ATTRIBUTE, ApprovalGone
from pgrunbook.localcloud import Execution, LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture(scope="class")
def stack(app_db: str) -> Iterator[tuple[LocalCloud, LocalApprovals]]:
    """One local cloud with a backup and the approval server, for the tests of TestRestoreApprovals
    (class scope: it is gone before `pgrunbook local run` starts its own)."""
    approvals = LocalApprovals()
    with LocalCloud([LocalDatabase("app", app_db)], env=approvals.env) as cloud:
        approvals.attach(cloud)
        ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
        assert ex.status == "SUCCEEDED", ex.cause
        yield cloud, approvals
    approvals.close()


def database_exists(server: LocalServer, name: str) -> bool:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop(server: LocalServer, name: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def cli_logging() -> Iterator[None]:
    """main() configures CLI logging: reset it after (clean_env would also unset the cloud's settings)."""
    from tests.fixtures.restore_helpers import reset_cli_logging

    yield
    reset_cli_logging()


def approval_for(cloud: LocalCloud, arn: str) -> tuple[str, str, dict[str, Any]]:
    """Wait until the execution asked for approval: (subject, text, JSON attribute) of its notification."""
    found: list[tuple[str, str, dict[str, Any]]] = []

    def asked(_ex: Execution) -> bool:
        found[:] = [(str(s), m, json.loads(a[ATTRIBUTE])) for s, m, a in cloud.published()
                    if ATTRIBUTE in a and json.loads(a[ATTRIBUTE])["execution"] == arn]
        return bool(found)

    ex = cloud.wait(arn, timeout=120, until=asked)
    assert ex.status == "RUNNING" and found, (ex.status, ex.error, ex.cause)
    return found[0]


def report_of(cloud: LocalCloud, arn: str) -> dict[str, Any]:
    resp = aws.client("s3").list_objects_v2(Bucket=cloud.bucket, Prefix="_reports/restore/app/")
    for obj in resp.get("Contents", []):
        report = json.loads(aws.client("s3").get_object(Bucket=cloud.bucket, Key=obj["Key"])["Body"].read())
        if report.get("execution") == arn:
            return dict(report)
    raise AssertionError(f"no report for {arn}")


class TestRestoreApprovals:
    def test_approved_on_the_page_resumes_with_an_audit_trail(self, stack: tuple[LocalCloud, LocalApprovals],
                                                              pg_server: LocalServer,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
        cloud, _ = stack
        caplog.set_level(logging.DEBUG, logger="pgrunbook")  # our log lines, at every level
        arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover", "requested_by": "alice"})
        subject, text, facts = approval_for(cloud, arn)
        n = facts["checks_total"]
        assert n > 3 and subject == f"Approve cutover of app? {n}/{n} checks passed"
        for part in (f"Approve: {facts['approve_url']}", f"Reject:  {facts['reject_url']}", "The links expire at",
                     "console.aws.amazon.com/states", "old, ", "by alice"):
            assert part in text, part
        assert facts["approve_url"].startswith(cloud_url(stack) + "/approvals/" + facts["approval_id"] + "?exp=")

        _, page = decide_via_link_get(facts["approve_url"])  # a mail scanner, then the person's browser
        assert "Waiting for your decision" in page
        assert cloud.wait(arn, timeout=5, until=lambda _ex: True).status == "RUNNING"

        status, message = decide_via_link(facts["approve_url"], decision="approve", name="Ann Operator",
                                          comment="counts match", user_agent="Firefox/140")
        assert status == 200 and "approved by Ann Operator" in message
        ex = cloud.wait(arn)
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        states = ex.states_entered()
        i = states.index("NewApprovalId")
        assert states[i:i + 4] == ["NewApprovalId", "RequestApproval", "ApprovalDecision", "CutoverApproved"]
        decision = ex.output["approval"]
        assert decision["approval_id"] == facts["approval_id"] == ex.output["approval_request"]["approval_id"]
        expected = {"decision": "approved", "approver": "Ann Operator", "comment": "counts match", "via": "page",
                    "source_ip": "127.0.0.1", "user_agent": "Firefox/140"}
        assert {k: decision[k] for k in expected} == expected
        report = report_of(cloud, arn)
        assert {k: report["approval"][k] for k in expected} == expected and report["approval"]["decided_at"]
        final_subject, final_text, _ = cloud.published()[-1]
        assert final_subject == "pgrunbook cutover app: verified, approved by Ann Operator"
        assert "approval: approved by Ann Operator at" in final_text and "source ip 127.0.0.1" in final_text
        target = ex.output["target"]["name"]
        assert database_exists(pg_server, target)  # kept for the cutover
        drop(pg_server, target)

        token = task_token_of(ex)
        out = capsys.readouterr()
        everything = json.dumps(cloud.published()) + page + json.dumps(report) + out.out + out.err + caplog.text
        assert token not in everything  # never in a link, page, notification, report or log line
        sig = facts["approve_url"].split("sig=")[1]
        assert sig not in out.out + out.err + caplog.text  # nor the link's signature in a log line


    def test_rejected_from_the_cli_tears_down(self, stack: tuple[LocalCloud, LocalApprovals], pg_server: LocalServer,
                                              capsys: pytest.CaptureFixture[str], cli_logging: None) -> None:
        from pgrunbook.cli import main

        cloud, _ = stack
        arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover"})
        _, _, facts = approval_for(cloud, arn)
        capsys.readouterr()
        assert main(["approvals", "list", "--json", "--endpoint", cloud_url(stack)]) == 0
        listed = {a["approval_id"]: a for a in json.loads(capsys.readouterr().out)["approvals"]}
        assert listed[facts["approval_id"]]["status"] == "pending"
        assert main(["reject", facts["approval_id"], "--as", "Bob", "--reason", "not before the release",
                     "--endpoint", cloud_url(stack)]) == 0
        assert "rejected by Bob" in capsys.readouterr().out
        ex = cloud.wait(arn)
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        assert ex.states_entered()[-3:] == ["Rejected", "RejectedTeardown", "RejectedDone"]
        assert not database_exists(pg_server, ex.output["target"]["name"])
        report = report_of(cloud, arn)
        assert report["approval"]["decision"] == "rejected"
        assert report["approval"]["comment"] == "not before the release"
        assert report["approval"]["via"] == "cli" and report["approval"]["identity"].startswith("arn:aws:iam::")
        assert cloud.published()[-1][0] == "pgrunbook cutover app: verified, rejected by Bob"


    @pytest.mark.parametrize("payload", [
        pytest.param({"approver": "someone with the SDK"}, id="no-decision"),
        pytest.param({"decision": "approved", "approval_id": str(uuid.uuid4())}, id="another-approval"),
    ])
    def test_malformed_sdk_decision_is_reported_and_fails(self, stack: tuple[LocalCloud, LocalApprovals],
                                                          pg_server: LocalServer, payload: dict[str, Any]) -> None:
        """Someone with credentials answers the task with the SDK: the execution reports, tears the target
        down and fails with MalformedDecision (no uncaught States.Runtime, nothing left waiting)."""
        from pgrunbook.approval.service import ApprovalService

        cloud, _ = stack
        arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover"})
        _, _, facts = approval_for(cloud, arn)
        service = ApprovalService.from_settings(Settings.from_env())  # full rights (as the test has): unseal the token
        sealed = service.store.sealed_token(facts["approval_id"])
        assert sealed is not None
        cloud.send_task_success(service.sealer.open(sealed, facts["approval_id"]), payload)
        ex = cloud.wait(arn)
        assert ex.status == "FAILED" and ex.error == "MalformedDecision", (ex.error, ex.cause)
        assert facts["approval_id"] in (ex.cause or "")
        assert ex.states_entered()[-5:] == ["ApprovalDecision", "MalformedDecision", "FailureReport",
                                            "FailureTeardown", "Failed"]
        assert not database_exists(pg_server, ex.output["target"]["name"] if ex.output else
                                   ex.task_outputs("Provision")[0]["target"]["name"])
        subject, text, _ = cloud.published()[-1]
        assert subject == "pgrunbook cutover app: FAILED" and "MalformedDecision" in text
        with pytest.raises(ApprovalGone, match=r"no longer waiting for this decision \(FAILED\)"):
            decide_via_link(facts["approve_url"], decision="approve", name="Ann")


    def test_approval_timeout_is_reported_and_torn_down(self, stack: tuple[LocalCloud, LocalApprovals],
                                                        pg_server: LocalServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        cloud, _ = stack
        monkeypatch.setenv("PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", "2")
        arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover"})
        _, _, facts = approval_for(cloud, arn)
        ex = cloud.wait(arn)
        assert ex.status == "FAILED" and ex.error == "ApprovalTimedOut", (ex.error, ex.cause)
        assert "nobody approved or rejected the cutover within 2 seconds" in (ex.cause or "")
        assert ex.states_entered()[-4:] == ["ApprovalTimedOut", "FailureReport", "FailureTeardown", "Failed"]
        assert not database_exists(pg_server, ex.task_outputs("Provision")[0]["target"]["name"])
        assert cloud.published()[-1][0] == "pgrunbook cutover app: FAILED"
        with pytest.raises(ApprovalGone, match="expired"):
            decide_via_link(facts["approve_url"], decision="approve", name="Late Larry")


def test_local_run_approvals_serve_waits_for_a_person(app_db: str, pg_server: LocalServer,
                                                      capsys: pytest.CaptureFixture[str], clean_env: None) -> None:
    from pgrunbook.cli import main

    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.update(code=main([
        "local", "run", "--json", "--approvals", "serve", "--database", f"app={app_db}",
        "Backup", '{"kind": "manual"}', "Restore", '{"database": "app", "mode": "cutover"}'])))
    run.start()
    err = ""
    deadline = time.monotonic() + 180
    while "approval link: " not in err:
        assert run.is_alive() and time.monotonic() < deadline, err
        err += capsys.readouterr().err
        time.sleep(0.1)
    link = err.split("approval link: ", 1)[1].split()[0]
    assert link.startswith("http://127.0.0.1:")
    decide_via_link(link, decision="approve", name="Pat from the terminal")
    run.join(timeout=180)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["code"] == 0, out
    restore = out["executions"][1]
    assert restore["status"] == "SUCCEEDED" and restore["output"]["approval"]["approver"] == "Pat from the terminal"
    drop(pg_server, restore["output"]["target"]["name"])


def test_local_run_approvals_usage_errors(capsys: pytest.CaptureFixture[str], clean_env: None) -> None:
    from pgrunbook.cli import main

    for bad in ("listen", "serve=http", "serve=70000"):
        assert main(["local", "run", "--approvals", bad, "--database", "a=postgresql://x@h/a", "Backup", "{}"]) == 2
        assert "--approvals wants serve or serve=PORT" in capsys.readouterr().err


# --------------------------------------------------------------------------- helpers
def cloud_url(stack: tuple[LocalCloud, LocalApprovals]) -> str:
    return stack[1].server.url


def decide_via_link_get(link: str) -> tuple[int, str]:
    from pgrunbook.approval.client import _http

    for _ in range(2):
        status, page = _http("GET", link, headers={"User-Agent": "SafeLinks-Scanner"})
        assert status == 200
    return status, page


def task_token_of(ex: Execution) -> str:
    for event in ex.history:
        params = event.get("taskScheduledEventDetails", {}).get("parameters")
        if params and "task_token" in params:
            return str(json.loads(params)["Payload"]["task_token"])
    raise AssertionError("no RequestApproval task in the history")
