"""Each Lambda handler (functions/<name>/app.py) called in-process with the sample events of
tests/events/, against in-process moto (S3, Secrets Manager, SNS, KMS) and the real Postgres server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from moto import mock_aws

from pgrunbook import aws, operations
from pgrunbook import fargate_task as task
from pgrunbook.lambda_support import LocalContext, UnknownDatabase
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV, project_root

EVENTS = project_root() / "tests" / "events"


def event(name: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    data.update(overrides)
    return data


def handler(name: str) -> Any:
    return load_handler(handler_path(f"{name.capitalize()}Function"))


class Stack:
    def __init__(self, bucket: str, topic: str, secret: str, dbname: str) -> None:
        self.bucket, self.topic, self.secret, self.dbname = bucket, topic, secret, dbname
        self.prefix = f"s3://{bucket}/{dbname}/"

    def keys(self, prefix: str = "") -> list[str]:
        resp = aws.client("s3").list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    def notifications(self) -> list[tuple[str | None, str]]:
        from moto.sns.models import sns_backends

        topic = sns_backends["123456789012"]["us-east-1"].topics[self.topic]
        return [(s, m) for (_i, m, s, _a, _g) in topic.sent_notifications]


@pytest.fixture()
def stack(app_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """What template.yaml gives a function: bucket, topic, key, the database's secret, environment."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    with mock_aws():
        aws.reset_clients()
        aws.client("s3").create_bucket(Bucket="pgrunbook-unit")
        topic = aws.client("sns").create_topic(Name="pgrunbook-unit")["TopicArn"]
        key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
        parts = urlsplit(app_db)
        secret = aws.client("secretsmanager").create_secret(Name="app-db", SecretString=json.dumps({
            "username": parts.username, "password": parts.password, "host": parts.hostname, "port": parts.port,
            "dbname": parts.path.lstrip("/")}))["ARN"]
        monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "app", "secret_arn": secret,
                                                                "dbname": parts.path.lstrip("/")}]))
        monkeypatch.setenv("PGRUNBOOK_BACKUP_DEST", "s3://pgrunbook-unit")
        monkeypatch.setenv("PGRUNBOOK_KMS_KEY_ID", key)
        monkeypatch.setenv("PGRUNBOOK_TOPIC_ARN", topic)
        monkeypatch.setenv("PGRUNBOOK_SSLMODE", "prefer")
        monkeypatch.setenv("PGRUNBOOK_FARGATE", "off")
        yield Stack("pgrunbook-unit", topic, secret, parts.path.lstrip("/"))
    aws.reset_clients()


def emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_backup_handler_streams_to_s3_tags_by_kind_and_emits_metrics(stack: Stack,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    result = handler("backup")(event("backup"), LocalContext())
    assert result["archive"].startswith(stack.prefix + "scheduled/")
    assert result["rows"] > 0 and result["bytes"] > 0
    key = result["archive"][len("s3://pgrunbook-unit/"):]
    keys = stack.keys(stack.dbname + "/")
    assert {key, key + ".sha256", key + ".manifest.json"} <= set(keys)
    for k in (key, key + ".manifest.json"):
        tags = aws.client("s3").get_object_tagging(Bucket=stack.bucket, Key=k)["TagSet"]
        assert tags == [{"Key": "kind", "Value": "scheduled"}]
    blobs = emf(capsys.readouterr().out)
    succeeded = [b for b in blobs if "BackupSucceeded" in b]
    assert succeeded, blobs
    assert succeeded[0]["Database"] == "app"
    assert succeeded[0]["BackupBytes"] == [float(result["bytes"])] and "BackupSeconds" in succeeded[0]


def test_backup_handler_unknown_database_fails_fast(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownDatabase, match="unknown database 'nope' \\(configured: app\\)"):
        handler("backup")(event("backup", database="nope"), LocalContext())
    assert stack.keys() == []


def test_backup_handler_bad_event_names_the_field(stack: Stack) -> None:
    from pgrunbook.events import EventError

    with pytest.raises(EventError, match="missing field 'database'"):
        handler("backup")({"kind": "scheduled"}, LocalContext())
    with pytest.raises(EventError, match="field 'kind' must be one of"):
        handler("backup")({"database": "app", "kind": "weekly"}, LocalContext())


def test_plan_handler(stack: Stack) -> None:
    from pgrunbook.operations import NoBackup

    plan = handler("plan")
    out = plan(event("plan-backup"), LocalContext())
    (item,) = out["items"]  # no backup yet: the size is measured (pg_database_size), not taken as 0
    assert (item["database"], item["kind"], item["runner"], item["size_source"]) == ("app", "scheduled", "lambda",
                                                                                       "measured")
    assert item["size_bytes"] > 1024**2
    assert out["max_concurrency"] == 2
    with pytest.raises(UnknownDatabase):
        plan({"action": "backup", "input": {"databases": ["app", "ghost"]}}, LocalContext())
    with pytest.raises(NoBackup, match="has no backup"):
        plan(event("plan-restore"), LocalContext())
    handler("backup")(event("backup"), LocalContext())
    out = plan(event("plan-restore"), LocalContext())
    assert out["backup"].startswith(stack.prefix + "scheduled/") and out["size_bytes"] > 0
    assert out["target_spec"]["kind"] == "database" and out["runner"] == "lambda"


def test_plan_handler_picks_fargate_for_big_databases(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    handler("backup")(event("backup"), LocalContext())
    monkeypatch.setenv("PGRUNBOOK_FARGATE", "on")
    monkeypatch.setenv("PGRUNBOOK_SIZING_SAFETY", "1e12")  # any size is then too slow for Lambda
    out = handler("plan")(event("plan-backup"), LocalContext())
    assert out["items"][0]["runner"] == "ecs"


def test_plan_handler_reads_a_fargate_result_with_its_error(stack: Stack) -> None:
    aws.client("s3").put_object(Bucket=stack.bucket, Key="_tasks/x/backup-app.json",
                                Body=json.dumps({"result": {"archive": "s3://b/a.dump"}}))
    aws.client("s3").put_object(Bucket=stack.bucket, Key="_tasks/x/restore-app.json",
                                Body=json.dumps({"errorType": "RestoreFailed", "errorMessage": "pg_restore: boom"}))
    plan = handler("plan")
    assert plan({"action": "task-result", "key": "_tasks/x/backup-app.json"}, LocalContext()) == {
        "archive": "s3://b/a.dump"}
    with pytest.raises(Exception, match="pg_restore: boom") as info:
        plan({"action": "task-result", "key": "_tasks/x/restore-app.json"}, LocalContext())
    assert type(info.value).__name__ == "RestoreFailed"  # the errorType Step Functions matches


def test_provision_restore_verify_handlers(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    backup = handler("backup")(event("backup"), LocalContext())
    target = handler("provision")(event("provision-create"), LocalContext())
    assert target["status"] == "available" and target["kind"] == "database"
    assert "password" not in json.dumps(target)
    target = handler("provision")({"action": "status", "target": target}, LocalContext())
    assert target["checks"] == 1
    restored = handler("restore")(event("restore", backup=backup["archive"], target=target), LocalContext())
    assert restored["tables"] >= 3
    report = handler("verify")(event("verify", backup=backup["archive"], target=target, jobs=1), LocalContext())
    assert report["ok"] is True, report["text"]
    assert report["counts"]["jobs"] == 1  # the event's jobs reach verify
    blobs = emf(capsys.readouterr().out)
    assert any(b.get("VerificationFailures") == [0.0] for b in blobs)
    assert any("RestoreSeconds" in b for b in blobs)
    deleted = handler("provision")({"action": "delete", "target": target}, LocalContext())
    assert deleted["status"] == "deleted"
    # the drill database is gone
    secret = json.loads(aws.client("secretsmanager").get_secret_value(SecretId=stack.secret)["SecretString"])
    with psycopg.connect(host=secret["host"], port=secret["port"], user=secret["username"],
                         password=secret["password"], dbname="postgres") as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target["name"],)).fetchone() is None
    assert handler("provision")({"action": "delete", "target": None}, LocalContext())["status"] == "deleted"


def test_report_handler_backup_summary(stack: Stack) -> None:
    out = handler("report")(event("report-backup-summary"), LocalContext())
    assert out["ok"] is False and out["succeeded"] == ["app"]
    assert out["failed"] == [{"database": "billing", "error": "ConnectionFailed",
                              "message": "cannot connect to postgresql://app:***@db/billing: timeout"}]
    (subject, message), = stack.notifications()
    assert subject == "pgrunbook backup FAILED for 1 database(s)"
    assert "FAILED  billing: ConnectionFailed" in message


def test_report_handler_age_metrics(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    out = handler("report")(event("report-metrics"), LocalContext())
    # no backup yet: the age counts from when the metrics first saw the database (a fresh stack is not in ALARM)
    assert out["databases"]["app"]["backup_age_hours"] < 1
    assert stack.keys("_reports/watch/") == ["_reports/watch/app.json"]
    handler("backup")(event("backup"), LocalContext())
    handler("report")({"action": "restore-report", "plan": {"database": "app", "mode": "drill"},
                       "verify": {"ok": True, "text": "VERIFIED"}}, LocalContext())
    capsys.readouterr()
    out = handler("report")(event("report-metrics"), LocalContext())
    assert out["databases"]["app"]["backup_age_hours"] < 1
    assert out["databases"]["app"]["verified_restore_age_days"] < 1
    names = {k for b in emf(capsys.readouterr().out) for k in b if k[0].isupper() and k != "Database"}
    assert {"BackupAgeHours", "LastVerifiedRestoreAgeDays", "OldestBackupAgeHours",
            "OldestVerifiedRestoreAgeDays"} <= names



def test_age_metrics_watch_drills_of_drilled_databases_only(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGRUNBOOK_DRILL_DATABASES", "billing")
    out = handler("report")(event("report-metrics"), LocalContext())
    assert "verified_restore_age_days" not in out["databases"]["app"]


def test_every_function_in_the_template_has_a_handler_and_a_build_target() -> None:
    from pgrunbook.localcloud import function_ids, load_template

    template = load_template()
    makefile = (project_root() / "functions" / "Makefile").read_text()
    for fid in function_ids(template):
        assert handler_path(fid).is_file(), fid
        assert f"build-{fid}:" in makefile, fid


def test_secret_url_quotes_and_requires(stack: Stack) -> None:
    from pgrunbook.lambda_support import ConfigError, secret_url

    arn = aws.client("secretsmanager").create_secret(Name="odd", SecretString=json.dumps(
        {"username": "u@x", "password": "p/:@w", "host": "h", "port": 6543}))["ARN"]
    sslmode = Settings.from_env().sslmode  # PGRUNBOOK_SSLMODE, as the stack sets it
    assert secret_url(arn, dbname="d", sslmode=sslmode) == "postgresql://u%40x:p%2F%3A%40w@h:6543/d?sslmode=prefer"
    bad = aws.client("secretsmanager").create_secret(Name="bad", SecretString="not json")["ARN"]
    with pytest.raises(ConfigError, match="not a JSON object"):
        secret_url(bad)


def test_events_dir_is_valid_json() -> None:
    for path in Path(EVENTS).glob("*.json"):
        json.loads(path.read_text())


# --------------------------------------------------------------------------- the Fargate task shell
# (the same operations as the functions; the result comes back through the bucket)
def task_env(op: str, event: dict[str, Any], key: str) -> dict[str, str]:
    return {**os.environ, "PGRUNBOOK_OPERATION": op, "PGRUNBOOK_EVENT": json.dumps(event),
            "PGRUNBOOK_RESULT_KEY": key}


def test_backup_task_result_has_the_lambda_shape(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert task.main(task_env("backup", {"database": "app", "kind": "manual"}, "_tasks/ex1/backup-app.json")) == 0
    via_task = operations.read_task_result(Settings.from_env(), "_tasks/ex1/backup-app.json")
    via_lambda = handler("backup")({"database": "app", "kind": "manual", "jobs": 1}, LocalContext())
    assert set(via_task) == set(via_lambda)
    assert via_task["archive"].startswith(stack.prefix + "manual/")
    assert '"BackupSucceeded"' in capsys.readouterr().out  # EMF from the task too


def test_failed_task_writes_lambdas_error_shape(stack: Stack) -> None:
    assert task.main(task_env("backup", {"database": "ghost"}, "_tasks/ex2/backup-ghost.json")) == 0
    with pytest.raises(Exception, match="unknown database 'ghost'") as info:
        operations.read_task_result(Settings.from_env(), "_tasks/ex2/backup-ghost.json")
    assert type(info.value).__name__ == UnknownDatabase.__name__
    assert task.main({**task_env("backup", {}, "k"), "PGRUNBOOK_RESULT_KEY": ""}) == 1


def test_missing_task_result_is_an_error(stack: Stack) -> None:
    with pytest.raises(operations.TaskResultMissing):
        operations.read_task_result(Settings.from_env(), "_tasks/none/backup-app.json")


def test_provision_handler_rds_targets_are_created_and_deleted_stepwise(stack: Stack,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """kind rds: create returns at once (status creating; the state machine polls), delete is idempotent."""
    monkeypatch.setenv("PGRUNBOOK_RDS_INSTANCE_CLASS", "db.t4g.micro")
    provision = handler("provision")
    target = provision({"action": "create", "database": "app", "spec": {"kind": "rds", "allocated_storage_gb": 20},
                        "execution": "arn:aws:states:us-east-1:123456789012:execution:Restore:x"}, LocalContext())
    assert target["kind"] == "rds" and target["status"] == "creating"
    assert target["name"].startswith("pgrunbook-drill-app-") and target["dbname"] == stack.dbname
    (inst,) = aws.client("rds").describe_db_instances(DBInstanceIdentifier=target["name"])["DBInstances"]
    assert inst["DBInstanceClass"] == "db.t4g.micro" and inst["BackupRetentionPeriod"] == 0
    assert inst["StorageEncrypted"] is True and inst["PubliclyAccessible"] is False
    assert provision({"action": "delete", "target": target}, LocalContext())["status"] == "deleted"
    assert provision({"action": "delete", "target": target}, LocalContext())["status"] == "deleted"
