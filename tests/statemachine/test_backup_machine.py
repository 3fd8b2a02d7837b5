"""Backup state machine: Map over databases, per-database failure isolation, summary, fail-fast input."""

from __future__ import annotations

from pgrunbook import aws
from pgrunbook.localcloud import LocalCloud


def test_backup_all_databases_happy_path(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "scheduled", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.output["summary"]["ok"] is True
    (item,) = ex.output["results"]
    assert item["ok"] is True and item["database"] == "app" and item["runner"] == "lambda"
    archive = item["result"]["archive"]
    assert archive.startswith(f"s3://{cloud.bucket}/") and "/scheduled/" in archive
    key = archive[len(f"s3://{cloud.bucket}/"):]
    aws.client("s3").head_object(Bucket=cloud.bucket, Key=key + ".manifest.json")
    assert ex.states_entered() == ["Plan", "BackupEachDatabase", "ChooseRunner", "BackupOnLambda",
                                   "DatabaseSucceeded", "Summarize", "AllSucceeded", "Done"]
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook backup ok (1 databases)" and archive in message


def test_one_failing_database_does_not_stop_the_others(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["broken", "app"]})
    assert ex.status == "FAILED"
    assert ex.error == "BackupsFailed"
    assert "1 of 2 databases backed up" in (ex.cause or "")
    assert "failed: broken: ConnectionFailed" in (ex.cause or "") and "\n" not in (ex.cause or "")
    entered = ex.states_entered()
    assert entered.count("BackupOnLambda") == 2
    assert "DatabaseSucceeded" in entered and "DatabaseFailed" in entered and "Summarize" in entered
    # the failed item carries Lambda's error, matched by Step Functions as the errorType
    failed = [e for e in ex.history if e.get("lambdaFunctionFailedEventDetails")]
    assert failed and failed[0]["lambdaFunctionFailedEventDetails"]["error"] == "ConnectionFailed"
    # app's backup is complete and in the bucket; nothing of broken's
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=cloud.bucket).get("Contents", [])]
    assert any("/manual/" in k and k.endswith(".manifest.json") for k in keys)
    assert not any(k.startswith("does_not_exist/") for k in keys)
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook backup FAILED for 1 database(s)"
    assert "ok      app" in message and "FAILED  broken" in message


def test_unknown_database_fails_fast_and_notifies(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"databases": ["app", "ghost"]})
    assert ex.status == "FAILED"
    assert ex.error == "UnknownDatabase"
    assert "unknown database 'ghost' (configured: app, broken)" in (ex.cause or "")
    assert "BackupEachDatabase" not in ex.states_entered()
    assert cloud.adapter is not None
    assert [name for name, _ in cloud.adapter.calls] == [cloud.function_arn("PlanFunction"),
                                                         cloud.function_arn("ReportFunction")]  # describe-error
    ((subject, message),) = cloud.notifications()
    assert subject == "pgrunbook backup FAILED" and "ghost" in message


def test_bad_kind_in_input_is_a_readable_error(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "hourly"})
    assert ex.status == "FAILED" and ex.error == "EventError"
    assert "field 'kind' must be one of scheduled, manual, pre-migration" in (ex.cause or "")
