"""`pgrunbook status [--json]` as an operator runs it: the installed CLI in a subprocess, real backups
(pg_dump through `pgrunbook backup`) in moto's S3 or in a folder, a drill report written by the report
function's own writer, an RDS source with a short PITR window, migrations to apply, and cutover
approvals in the stack's approval table (DynamoDB on moto)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from pgrunbook import aws
from pgrunbook.approval.store import ApprovalRecord, ApprovalStore
from pgrunbook.cli.common import human_bytes
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.pgserver import LocalServer
from pgrunbook.reporting import restore_report
from pgrunbook.sample import SAMPLE_MIGRATIONS
from pgrunbook.settings import Settings
from tests.conftest import cli_env, run_cli

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:RestoreStateMachine-prod:{}"


def migrations_folder(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    new = {"20260401000000_note": 'ALTER TABLE "Job" ADD COLUMN "note" TEXT;\n'}
    for name, sql in {**SAMPLE_MIGRATIONS, **new}.items():
        (root / name).mkdir(parents=True)
        (root / name / "migration.sql").write_text(sql)
    (root / "migration_lock.toml").write_text('provider = "postgresql"\n')
    return root


def secret(url: str) -> str:
    return str(aws.client("secretsmanager").create_secret(
        Name=f"db-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(DatabaseUrl.parse(url).to_secret()))["ARN"])


def approval(table: str, database: str, *, expires_in: int, status: str = "pending") -> str:
    approval_id = uuid.uuid4().hex[:12]
    now = int(time.time())
    record = ApprovalRecord(approval_id=approval_id, execution=EXECUTION.format(approval_id), database=database,
                            requested_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                            expires_at=now + expires_in)
    store = ApprovalStore(table)
    assert store.put_new(record, b"sealed-token")  # the report function's write
    if status != "pending":
        assert store.claim(approval_id, {"decision": status, "approver": "ops"}, "nonce")
        assert store.finish(approval_id, "nonce", status, {"delivered": True})
    return approval_id


def test_status_shows_each_database_on_one_line_from_s3_and_aws(app_db: str, fresh_db: str, bucket: str,
                                                                 tmp_path: Path, pg_server: LocalServer) -> None:
    dest = f"s3://{bucket}"
    backup = run_cli("backup", "--database-url", app_db, "--to", dest, "--kind", "manual", "--json")
    assert backup.returncode == 0, backup.stderr
    archive = json.loads(backup.stdout)
    # a verified drill, reported by the report function's writer (the Restore machine's DrillReport step)
    settings = Settings.from_env({"PGRUNBOOK_BACKUP_DEST": dest})
    restore_report({"plan": {"database": "app", "mode": "drill", "backup": archive["archive"]},
                    "verify": {"ok": True, "text": "VERIFIED"}, "execution": EXECUTION.format("drill-1")}, settings)
    # the source is an RDS instance keeping 3 days of PITR (the runbook asks for 7-14)
    aws.client("rds").create_db_instance(DBInstanceIdentifier="app-prod", Engine="postgres",
                                         DBInstanceClass="db.t4g.micro", AllocatedStorage=20, MasterUsername="x",
                                         MasterUserPassword="secret123", BackupRetentionPeriod=3)
    table = f"approvals-{uuid.uuid4().hex[:6]}"
    aws.client("dynamodb").create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                        KeySchema=[{"AttributeName": "approval_id", "KeyType": "HASH"}],
                                        AttributeDefinitions=[{"AttributeName": "approval_id", "AttributeType": "S"}])
    waiting = approval(table, "app", expires_in=3600)
    approval(table, "app", expires_in=-60)  # expired: nobody can decide it any more
    approval(table, "app", expires_in=3600, status="approved")
    databases = [{"name": "app", "secret_arn": secret(app_db), "dbname": DatabaseUrl.parse(app_db).dbname,
                  "rds_instance": "app-prod"},
                 {"name": "quiet", "secret_arn": secret(fresh_db), "dbname": DatabaseUrl.parse(fresh_db).dbname}]
    env = cli_env(PGRUNBOOK_DATABASES=json.dumps(databases), PGRUNBOOK_BACKUP_DEST=dest,
                  PGRUNBOOK_APPROVAL_TABLE=table, PGRUNBOOK_SSLMODE="prefer")
    migrations = str(migrations_folder(tmp_path))

    text = run_cli("status", "--migrations", migrations, env=env)
    assert text.returncode == 1, text.stderr  # app's PITR window is too short, quiet was never backed up
    app, quiet = text.stdout.splitlines()
    assert app.startswith("app  backup ") and f" {human_bytes(archive['bytes'])} manual  " in app
    assert "  drill " in app and " verified  " in app and "  pitr 3d lag 0m  " in app
    assert "  migrations pending 1  " in app and f"  approvals open 1 ({waiting})  " in app
    assert app.endswith("ATTENTION: PITR window 3 d < 7 d")
    assert quiet.startswith("quiet  backup never  drill never  pitr -  migrations pending 3  approvals open 0  ")
    assert quiet.endswith("ATTENTION: no backup yet; no verified drill in 35 days")

    out = run_cli("status", "--migrations", migrations, "--json", env=env)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)  # one object
    rows = {r["database"]: r for r in data["databases"]}
    assert data["ok"] is False and list(rows) == ["app", "quiet"]
    b = rows["app"]["backup"]
    assert (b["archive"], b["bytes"], b["kind"]) == (archive["archive"], archive["bytes"], "manual")
    assert 0 <= b["age_seconds"] < 600
    assert rows["app"]["drill"]["verified"] is True and rows["app"]["drill"]["mode"] == "drill"
    assert rows["app"]["pitr"]["retention_days"] == 3 and rows["app"]["pitr"]["source"] == "instance app-prod"
    assert rows["app"]["pending_migrations"] == 1 and rows["quiet"]["pending_migrations"] == 3
    assert [a["approval_id"] for a in rows["app"]["approvals"]["open"]] == [waiting]
    assert rows["quiet"]["approvals"] == {"open": []} and rows["quiet"]["pitr"] is None
    for proc in (text, out):  # no password anywhere
        for url in (app_db, fresh_db):
            password = DatabaseUrl.parse(url).password
            assert password and password not in proc.stdout + proc.stderr


def test_status_from_a_folder_needs_no_aws(app_db: str, tmp_path: Path, clean_env: None) -> None:
    dest = tmp_path / "backups"
    for kind in ("scheduled", "pre-migration"):
        proc = run_cli("backup", "--database-url", app_db, "--to", str(dest), "--kind", kind, "--json")
        assert proc.returncode == 0, proc.stderr
    newest = json.loads(proc.stdout)
    env = cli_env(PGRUNBOOK_DATABASES=json.dumps([{"name": "app", "secret_arn": "arn:aws:secretsmanager:x",
                                                   "dbname": DatabaseUrl.parse(app_db).dbname}]),
                  AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")  # AWS is not reached at all
    env.pop("PGRUNBOOK_APPROVAL_TABLE", None)
    env.pop("PGRUNBOOK_BACKUP_DEST", None)
    out = run_cli("status", "--from", str(dest), "--json", env=env)
    data: dict[str, Any] = json.loads(out.stdout)
    (row,) = data["databases"]
    assert (row["backup"]["archive"], row["backup"]["kind"]) == (newest["archive"], "pre-migration")
    assert row["pitr"] is None and row["approvals"] is None and row["pending_migrations"] is None
    assert row["problems"] == ["no verified drill in 35 days"] and out.returncode == 1
    text = run_cli("status", "--from", str(dest), env=env)
    (line,) = text.stdout.splitlines()
    assert "pre-migration  drill never  pitr -  migrations pending -  approvals open -  ATTENTION" in line
    shutil.rmtree(dest)
    empty = run_cli("status", "--from", str(dest), env={**env, "PGRUNBOOK_DATABASES": ""})
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "PGRUNBOOK_DATABASES" in empty.stderr
