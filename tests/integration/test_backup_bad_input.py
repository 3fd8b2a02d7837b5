"""Bad input: one clear line on stderr, a non-zero exit, no secret shown, and nothing left
behind that looks like a good backup."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from pgrunbook import aws
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.errors import PgrunbookError, StoreError, ToolError
from pgrunbook.pgserver import LocalServer, free_port
from pgrunbook.settings import Settings
from tests.conftest import cli_env, run_cli


def _assert_one_line_failure(proc: subprocess.CompletedProcess[str], *, contains: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pgrunbook: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert contains in lines[0], lines[0]


def _nothing_written(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert leftovers == []


def test_unreachable_host(tmp_path: Path) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/app"
    proc = run_cli("backup", "--database-url", url, "--to", str(tmp_path / "b"))
    _assert_one_line_failure(proc, contains="server unreachable at 127.0.0.1")
    assert "s3cret" not in proc.stderr
    _nothing_written(tmp_path / "b")


def test_wrong_password_is_reported_without_the_password(pg_server: LocalServer, tmp_path: Path) -> None:
    wrong = "Wr0ng-Pa55word"
    proc = run_cli("backup", "--database-url", pg_server.url("postgres", password=wrong), "--to", str(tmp_path))
    _assert_one_line_failure(proc, contains="password authentication failed for user postgres")
    assert wrong not in proc.stderr + proc.stdout
    _nothing_written(tmp_path)


def test_missing_database(pg_server: LocalServer, tmp_path: Path) -> None:
    proc = run_cli("backup", "--database-url", pg_server.url("no_such_db"), "--to", str(tmp_path))
    _assert_one_line_failure(proc, contains='database "no_such_db" does not exist')
    assert pg_server.password not in proc.stderr
    _nothing_written(tmp_path)


def test_no_database_url_is_a_usage_error(tmp_path: Path) -> None:
    env = cli_env()
    env.pop("DATABASE_URL", None)
    proc = run_cli("backup", "--to", str(tmp_path), env=env)
    _assert_one_line_failure(proc, contains="no database URL", code=2)


def test_unknown_option_is_a_usage_error() -> None:
    proc = run_cli("backup", "--frobnicate")
    assert proc.returncode == 2
    assert "unrecognized arguments: --frobnicate" in proc.stderr


def test_pg_dump_missing(sample_db: str, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path / "b"),
                   env=cli_env(PGRUNBOOK_PG_BIN=str(empty)))
    _assert_one_line_failure(proc, contains="pg_dump not found")
    _nothing_written(tmp_path / "b")


def test_pg_dump_older_than_the_server_names_both_versions(sample_db: str, tmp_path: Path) -> None:
    old = tmp_path / "bin"
    old.mkdir()
    fake = old / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.8'\n")
    fake.chmod(0o755)
    proc = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path / "b"),
                   env=cli_env(PGRUNBOOK_PG_BIN=str(old)))
    _assert_one_line_failure(proc, contains="pg_dump must be version 18 or newer")
    assert "is 15.8" in proc.stderr
    _nothing_written(tmp_path / "b")


def test_destination_folder_not_writable(sample_db: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_cli("backup", "--database-url", sample_db, "--to", str(blocker / "backups"))
    _assert_one_line_failure(proc, contains="cannot create backup folder")
    assert blocker.read_text() == "not a folder"


def test_existing_out_file_is_refused_unless_overwrite(sample_db: str, tmp_path: Path) -> None:
    out = tmp_path / "precious.sql.gz"
    out.write_bytes(b"an older backup")
    proc = run_cli("backup", "--database-url", sample_db, "--out", str(out))
    _assert_one_line_failure(proc, contains="already exists")
    assert out.read_bytes() == b"an older backup"
    assert not Path(f"{out}.sha256").exists() and not Path(f"{out}.manifest.json").exists()
    again = run_cli("backup", "--database-url", sample_db, "--out", str(out), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"


def test_bucket_missing(sample_db: str, s3_endpoint: str) -> None:
    proc = run_cli("backup", "--database-url", sample_db, "--to", "s3://no-such-bucket-here/x")
    _assert_one_line_failure(proc, contains="bucket no-such-bucket-here does not exist")


@mock_aws
@set_initial_no_auth_action_count(4)
def test_s3_access_denied(sample_db: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bucket and credentials that may list it but not write to it (moto enforcing IAM)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="locked")
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=(
        '{"Version":"2012-10-17","Statement":['
        '{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::locked"},'
        '{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::locked/*"}]}'))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    aws.reset_clients()
    # When a backup is written there, Then it fails with access denied
    with pytest.raises(StoreError, match=r"access denied to s3://locked/db/.*\.dump \(AccessDenied\)"):
        run_backup(BackupOptions(database_url=sample_db, dest="s3://locked/db", jobs=1), Settings.from_env({}))


def test_pg_dump_killed_mid_stream_aborts_the_multipart_upload(sample_db: str, bucket: str) -> None:
    # Given a streaming backup to S3 whose pg_dump dies
    def kill(proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)

    with pytest.raises(ToolError, match="pg_dump failed: killed by signal 9"):
        run_backup(BackupOptions(database_url=sample_db, dest=f"s3://{bucket}/db", jobs=1),
                   Settings.from_env({}), on_dump_started=kill)
    # Then nothing is in the bucket and no multipart upload is left open
    s3 = aws.client("s3")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_pg_dump_killed_leaves_no_file_in_the_folder(sample_db: str, tmp_path: Path, jobs: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # this test's own staging area

    def kill(proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)

    with pytest.raises(PgrunbookError, match="pg_dump failed"):
        run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path / "backups"), jobs=jobs),
                   Settings.from_env({}), on_dump_started=kill)
    _nothing_written(tmp_path / "backups")
    assert list(staging.iterdir()) == []  # the staging folder of a parallel dump is removed too
