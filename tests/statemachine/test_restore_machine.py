"""Restore state machine (drill and cutover modes): happy paths, failed verification, failed restore,
bad input, approval (.waitForTaskToken) approved and rejected."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from pgrunbook import aws
from pgrunbook.localcloud import Execution, LocalCloud
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings


def database_exists(server: LocalServer, name: str) -> bool:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def backed_up(cloud: LocalCloud) -> dict[str, Any]:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", ex.cause
    result: dict[str, Any] = ex.output["results"][0]["result"]
    return result


def provisioned_target(ex: Execution) -> str:
    (created,) = ex.task_outputs("Provision")
    return str(created["target"]["name"])


def s3_keys(cloud: LocalCloud, prefix: str) -> list[str]:
    resp = aws.client("s3").list_objects_v2(Bucket=cloud.bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_drill_happy_path_reports_and_tears_down(cloud: LocalCloud, pg_server: LocalServer) -> None:
    backup = backed_up(cloud)
    ex = cloud.run("RestoreStateMachine", {"database": "app", "backup": "latest", "mode": "drill"})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    out = ex.output
    assert out["plan"]["backup"] == backup["archive"]
    assert out["verify"]["ok"] is True and out["verify"]["verdict"] == "verified"
    assert out["report"]["verified"] is True
    assert out["teardown"]["status"] == "deleted"
    assert ex.states_entered() == ["Plan", "Provision", "WaitForTarget", "CheckTarget", "TargetReady",
                                   "ChooseRestoreRunner", "RestoreOnLambda", "Verify", "ChooseMode", "DrillReport",
                                   "DrillTeardown", "DrillVerified", "DrillSucceeded"]
    assert not database_exists(pg_server, out["target"]["name"])
    assert s3_keys(cloud, "_reports/restore/app/")
    subject, message = cloud.notifications()[-1]
    assert subject == "pgrunbook drill app: verified" and "11/11 checks passed" not in subject
    assert "VERIFIED" in message
    assert "password" not in json.dumps(out)


def test_drill_with_failed_verification_notifies_and_tears_down(cloud: LocalCloud, pg_server: LocalServer) -> None:
    backup = backed_up(cloud)
    # the manifest says one more user than the archive holds: verification must catch it
    key = backup["manifest"][len(f"s3://{cloud.bucket}/"):]
    manifest = json.loads(aws.client("s3").get_object(Bucket=cloud.bucket, Key=key)["Body"].read())
    table = next(t for t in manifest["tables"] if t["name"] == "User")
    table["rows"] += 1
    aws.client("s3").put_object(Bucket=cloud.bucket, Key=key, Body=json.dumps(manifest).encode())

    ex = cloud.run("RestoreStateMachine", {"database": "app", "backup": backup["archive"], "mode": "drill"})
    assert ex.status == "FAILED"
    assert ex.error == "VerificationFailed"
    assert "FAILED" in (ex.cause or "") and "User" in (ex.cause or "")
    entered = ex.states_entered()
    assert entered[-3:] == ["DrillTeardown", "DrillVerified", "DrillFailed"]
    assert not database_exists(pg_server, provisioned_target(ex))
    subject, message = cloud.notifications()[-1]
    assert subject == "pgrunbook drill app: FAILED" and "FAIL" in message
    (report,) = ex.task_outputs("DrillReport")
    assert report["report"]["verified"] is False and report["report"]["failures"]


def test_failed_restore_reports_tears_down_and_fails(cloud: LocalCloud, pg_server: LocalServer) -> None:
    backup = backed_up(cloud)
    key = backup["archive"][len(f"s3://{cloud.bucket}/"):]
    aws.client("s3").put_object(Bucket=cloud.bucket, Key=key, Body=b"not a backup" * 100)
    ex = cloud.run("RestoreStateMachine", {"database": "app", "backup": backup["archive"], "mode": "drill"})
    assert ex.status == "FAILED"
    assert ex.error not in (None, "VerificationFailed")
    entered = ex.states_entered()
    assert "RestoreOnLambda" in entered and "Verify" not in entered
    assert entered[-3:] == ["FailureReport", "FailureTeardown", "Failed"]
    assert not database_exists(pg_server, provisioned_target(ex))
    subject, _ = cloud.notifications()[-1]
    assert subject == "pgrunbook drill app: FAILED"


BAD_INPUTS = [
    ({"mode": "drill"}, "EventError", "missing field 'database'"),
    ({"database": "ghost"}, "UnknownDatabase", "unknown database 'ghost'"),
    ({"database": "app", "mode": "yolo"}, "EventError", "field 'mode' must be one of drill, cutover"),
    ({"database": "app", "target": {"kind": "floppy"}}, "EventError", "field 'kind' must be one of database, rds"),
    ({"database": "app"}, "NoBackup", "has no backup"),
]


def test_bad_input_fails_fast_before_provisioning(cloud: LocalCloud) -> None:
    for payload, error, text in BAD_INPUTS:
        seen = len(cloud.notifications())
        ex = cloud.run("RestoreStateMachine", payload)
        assert ex.status == "FAILED", payload
        assert ex.error == error and text in (ex.cause or ""), (payload, ex.error, ex.cause)
        assert ex.states_entered() == ["Plan", "DescribeError", "NotifyFailure", "Failed"]
        ((subject, message),) = cloud.notifications()[seen:]
        assert subject == "pgrunbook restore FAILED" and text in message
    assert cloud.adapter is not None
    assert all("ProvisionFunction" not in name for name, _ in cloud.adapter.calls)


def pending_approvals(execution: str) -> list[Any]:
    from pgrunbook.approval.service import ApprovalService

    return [r for r in ApprovalService.from_settings(Settings.from_env()).store.list() if r.execution == execution]


def approval_token(execution: str) -> tuple[str, dict[str, Any]]:
    """The approval record and its task token, unsealed with full rights (on AWS only the approval
    function can): this test answers with the SDK directly, as an operator with credentials could."""
    from pgrunbook.approval.service import ApprovalService

    service = ApprovalService.from_settings(Settings.from_env())
    (record,) = pending_approvals(execution)
    sealed = service.store.sealed_token(record.approval_id)
    assert sealed is not None
    return service.sealer.open(sealed, record.approval_id), {
        "approval_id": record.approval_id, "database": record.database, "verify": record.facts["verification"]}


def test_cutover_waits_for_approval(cloud: LocalCloud, pg_server: LocalServer) -> None:
    backed_up(cloud)
    for decision in ("approved", "rejected"):
        arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover"})
        waiting = cloud.wait(arn, until=lambda ex, arn=arn: bool(pending_approvals(arn)))  # type: ignore[misc]
        assert waiting.status == "RUNNING" and "RequestApproval" in waiting.states_entered()
        token, record = approval_token(arn)
        assert record["verify"]["ok"] is True and record["database"] == "app"
        subject, message = cloud.notifications()[-1]
        assert (subject or "").startswith("Approve cutover of app? ") and record["approval_id"] in message
        assert token not in message  # the token stays server-side
        cloud.send_task_success(token, {"decision": decision, "approval_id": record["approval_id"],
                                        "approver": "ops@example.com", "decided_at": "2026-11-25T12:00:00Z",
                                        "comment": "test"})
        ex = cloud.wait(arn)
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        assert ex.output["approval"]["decision"] == decision
        target = ex.output["target"]["name"]
        if decision == "approved":
            # no application secret configured: the candidate is kept, the switch is the operator's
            assert ex.states_entered()[-4:] == ["CutoverApproved", "KeepCandidate", "CutoverConfigured", "CutoverReady"]
            assert database_exists(pg_server, target)  # kept for the cutover
            with psycopg.connect(pg_server.url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{target}" WITH (FORCE)')
        else:
            assert ex.states_entered()[-2:] == ["RejectedTeardown", "RejectedDone"]
            assert not database_exists(pg_server, target)
