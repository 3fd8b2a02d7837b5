"""What people read when an execution fails: the error's class and ONE line, secrets masked, never a
stack trace — in the SNS notification, in the execution's cause and in the stored report.

A Lambda failure reaches a Catch as {"Error": errorType, "Cause": Lambda's error body as JSON}, and
that body holds the stack trace (the local runner writes it as AWS's runtime does, so these tests see
what AWS would). The traces must stay in the history and the function's log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws, operations, reporting
from pgrunbook.localcloud import Execution, LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer

SECRET = "hunter2-not-for-people"


def assert_for_people(text: str | None, *needles: str) -> None:
    assert text, "nothing to read"
    assert "\n" not in text, text
    assert "Traceback" not in text and 'File "' not in text and "stackTrace" not in text, text
    assert SECRET not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def lambda_causes(ex: Execution) -> list[str]:
    return [str(e["lambdaFunctionFailedEventDetails"].get("cause")) for e in ex.history
            if "lambdaFunctionFailedEventDetails" in e]


@pytest.fixture()
def cloud(pg_server: LocalServer) -> Iterator[LocalCloud]:
    """`app` (a real database, no backup yet) and `gone` (a socket directory with no server, with a password)."""
    databases = [LocalDatabase("app", pg_server.url("postgres")),
                 LocalDatabase("gone", f"postgresql://app:{SECRET}@/gone?host=/nonexistent/pgrunbook-socket")]
    with LocalCloud(databases) as local:
        yield local


def test_restore_without_a_backup_fails_with_one_line(cloud: LocalCloud) -> None:
    ex = cloud.run("RestoreStateMachine", {"database": "app", "mode": "drill"})
    assert ex.status == "FAILED" and ex.error == "NoBackup"
    assert_for_people(ex.cause, "database 'app' has no backup in s3://")
    # the trace is still there for whoever debugs it: in the history, not in what people read
    assert any("stackTrace" in c for c in lambda_causes(ex))
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook restore FAILED"
    assert_for_people(message, "failed before provisioning: NoBackup: database 'app' has no backup")


def test_backup_failing_on_a_bad_database_url_fails_with_one_line(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["gone"]})
    assert ex.status == "FAILED" and ex.error == "BackupsFailed"
    assert_for_people(ex.cause, "0 of 1 databases backed up", "gone: ConnectionFailed: cannot connect to",
                      "/nonexistent/pgrunbook-socket")
    assert any("stackTrace" in c for c in lambda_causes(ex))
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook backup FAILED for 1 database(s)"
    (failed,) = [line for line in message.splitlines() if "FAILED" in line]
    assert_for_people(failed, "gone: ConnectionFailed: cannot connect to")
    assert_for_people(message.replace("\n", " "))


def test_an_unexpected_exception_is_its_class_and_first_line(cloud: LocalCloud,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> dict[str, Any]:
        raise RuntimeError(f"plan broke near postgresql://app:{SECRET}@db/app\nsecond line with details")

    monkeypatch.setattr(operations, "plan_restore", broken)
    ex = cloud.run("RestoreStateMachine", {"database": "app"})
    assert ex.status == "FAILED" and ex.error == "RuntimeError"
    assert ex.cause == "plan broke near postgresql://app:***@db/app"
    (_, message), = cloud.notifications()
    assert_for_people(message, "RuntimeError: plan broke near postgresql://app:***@db/app")
    assert "second line" not in message
    assert not any(SECRET in c for c in lambda_causes(ex))  # masked at the source, history included


def test_when_the_describing_function_fails_too_people_still_get_one_line(cloud: LocalCloud,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_data: Any) -> dict[str, str]:
        raise RuntimeError("report function down")

    monkeypatch.setattr(reporting, "describe_error", broken)
    ex = cloud.run("RestoreStateMachine", {"database": "app"})
    assert ex.status == "FAILED" and ex.error == "NoBackup"
    assert ex.states_entered() == ["Plan", "DescribeError", "ErrorNotDescribed", "NotifyFailure", "Failed"]
    assert_for_people(ex.cause, "see the execution history")
    (_, message), = cloud.notifications()
    assert_for_people(message, "NoBackup: not described")


def test_failures_after_provisioning_and_a_failed_teardown_are_one_line(cloud: LocalCloud, pg_server: LocalServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backup = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert backup.status == "SUCCEEDED", backup.cause

    def restore_broken(*_args: Any) -> dict[str, Any]:
        raise RuntimeError(f"pg_restore went away\n  with password={SECRET}")

    def delete_broken(*_args: Any) -> None:
        raise OSError(f"cannot drop the target: host=db password={SECRET}\nmore")

    monkeypatch.setattr(operations, "restore", restore_broken)
    monkeypatch.setattr(operations, "_delete", delete_broken)
    seen = len(cloud.notifications())
    ex = cloud.run("RestoreStateMachine", {"database": "app", "mode": "drill"})
    target = ex.task_outputs("Provision")[0]["target"]["name"]
    try:
        assert ex.status == "FAILED"
        assert_for_people(ex.cause)
        assert (ex.error, ex.cause) == ("RuntimeError", "pg_restore went away")  # the original error
        report, teardown = cloud.notifications()[seen:]
        assert report[0] == "pgrunbook drill app: FAILED"
        (error_line,) = [line for line in report[1].splitlines() if line.startswith("error: ")]
        assert_for_people(error_line, "error: RuntimeError: pg_restore went away")
        assert_for_people(report[1].replace("\n", " "))
        assert teardown[0] == "pgrunbook: restore target NOT deleted"
        assert_for_people(teardown[1], "cannot drop the target")
        # the stored report: class and one line
        keys = [o["Key"] for o in aws.client("s3").list_objects_v2(
            Bucket=cloud.bucket, Prefix="_reports/restore/app/").get("Contents", [])]
        stored = json.loads(aws.client("s3").get_object(Bucket=cloud.bucket, Key=keys[-1])["Body"].read())
        assert stored["error"] == {"error": "RuntimeError", "message": "pg_restore went away"}
        entered = ex.states_entered()
        path = ["FailureReport", "FailureTeardown", "DescribeTeardownError", "TeardownFailedNotify"]
        assert [s for s in entered if s in path] == path and entered[-1] == "Failed"
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_a_failed_migrate_execution_notifies_one_line(cloud: LocalCloud) -> None:
    ex = cloud.run("MigrateStateMachine", {"database": "app", "migrations": f"s3://{cloud.bucket}/_releases/none/"})
    assert ex.status == "FAILED"
    (subject, message), = cloud.notifications()
    assert subject == "pgrunbook migrate FAILED"
    assert_for_people(message, f"Migrate execution {ex.arn} failed: ")
    assert "DescribeError" in ex.states_entered()
