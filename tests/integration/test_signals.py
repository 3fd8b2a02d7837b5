"""Stop signals against real processes: `pgrunbook backup`, `restore`, `drill` and `migrate` run as
subprocesses (folder and S3 on the moto server), get SIGTERM, SIGINT or SIGKILL while pg_dump /
pg_restore is running (pg_dump held up by a table lock, pg_restore loading a database big enough
to still be at it), and leave no pg tool process, no .partial file, no multipart upload, no work
or staging folder and no session on the server. SIGTERM/SIGINT end with one line and 143/130 and a
restore target marked FAILED (interrupted); after SIGKILL the kernel (PR_SET_PDEATHSIG) and the
guardian process clean up, the target keeps its "in progress" mark, and a second `restore --force`
refuses it saying what to do. The Fargate task and the Lambda deadline watchdog take the same path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.lambda_support import LocalContext
from pgrunbook.pgserver import LocalServer
from pgrunbook.pgtools import find_tool, spawn, tool_env
from pgrunbook.restore import MARK_FAILED, MARK_IN_PROGRESS
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV, cli_env, run_cli
from tests.fixtures.processes import (
    Locker,
    alive,
    dump_waiting_for_lock,
    files_under,
    make_table,
    one_error_line,
    other_sessions,
    pgrunbook,
    sessions,
    tools_under,
    wait_until,
)
from tests.fixtures.restore_helpers import create_db, drop_db

pytestmark = pytest.mark.usefixtures("clean_env")

EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -9}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def s3(moto_server: str) -> Iterator[tuple[Any, str, dict[str, str]]]:
    """A bucket on the moto server: (boto3 client, bucket, environment for subprocesses)."""
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_server}
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          aws_session_token="testing")
    bucket = f"pgrunbook-signals-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket, env


@pytest.fixture(scope="module")
def big_backup(pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory,
               s3: tuple[Any, str, dict[str, str]]) -> Iterator[dict[str, str]]:
    """A database whose restore takes pg_restore -j2 a couple of seconds (two tables of 400k rows, an
    index each), backed up to a folder, and the same archive copied to S3: {"folder": uri, "s3": uri}."""
    url = create_db(pg_server, "big")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {table} AS SELECT i AS id, md5(i::text) AS v "
                         "FROM generate_series(1, 400000) i")
            conn.execute(f"CREATE INDEX ON {table} (v)")
    folder = tmp_path_factory.mktemp("big-backup")
    result: BackupResult = run_backup(BackupOptions(database_url=url, dest=str(folder), jobs=1),
                                      Settings.from_env({}))
    client, bucket, _ = s3
    archive = Path(result.archive)
    key = archive.relative_to(folder).as_posix()
    for suffix in ("", ".sha256", ".manifest.json"):
        client.upload_file(str(archive) + suffix, bucket, key + suffix)
    yield {"folder": result.archive, "s3": f"s3://{bucket}/{key}"}
    drop_db(url)


@pytest.fixture()
def locked_db(fresh_db: str) -> Iterator[tuple[str, Locker]]:
    """A database whose table "t" another session holds locked: pg_dump waits there, running."""
    make_table(fresh_db, "t")
    locker = Locker(fresh_db, "t")
    yield fresh_db, locker
    locker.release()


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(pgrunbook(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[str], sig: int, tool: str = "pg_dump", at_least: int = 1) -> tuple[list[Any], str]:
    """Send `sig` to pgrunbook while `tool` runs (at least `at_least` processes: a leader and its
    workers); return the pg tools it had running then, and its stderr."""
    tools = tools_under(proc.pid)
    assert [t.name() for t in tools].count(tool) >= at_least, [t.name() for t in tools]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT[signal.Signals(sig)], err
    if sig != signal.SIGKILL:
        line = one_error_line(err)
        assert line.startswith(f"pgrunbook: error: interrupted by {signal.Signals(sig).name}: "), line
    return tools, err


def assert_tools_gone(tools: list[Any]) -> None:
    wait_until(lambda: not alive(tools), f"pg tools {[t.pid for t in alive(tools)]} to end")


def s3_leftovers(s3: tuple[Any, str, dict[str, str]], prefix: str) -> list[str]:
    client, bucket, _ = s3
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]
    return keys + [f"upload:{k}" for k in uploads]


def mark_of(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = current_database()").fetchone()
    return None if row is None else row[0]


# --------------------------------------------------------------------------- backup
@pytest.mark.parametrize(("where", "sig"), [("folder", signal.SIGTERM), ("s3", signal.SIGTERM),
                                            ("folder", signal.SIGKILL), ("s3", signal.SIGKILL),
                                            ("folder", signal.SIGINT)])
def test_backup_stopped_while_pg_dump_runs(where: str, sig: int, locked_db: tuple[str, Locker], tmp_path: Path,
                                           s3: tuple[Any, str, dict[str, str]]) -> None:
    url, locker = locked_db
    staging = tmp_path / "tmp"
    staging.mkdir()
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    # folder: a parallel dump staged in TMPDIR; S3: a dump streamed into a multipart upload
    dest, jobs = (str(tmp_path / "backups"), "2") if where == "folder" else (f"s3://{s3[1]}/{prefix}", "1")
    proc = start("backup", "--database-url", url, "--to", dest, "--jobs", jobs,
                 env=cli_env(TMPDIR=str(staging), **s3[2]))
    try:
        wait_until(lambda: dump_waiting_for_lock(url) or proc.poll() is not None, "pg_dump to wait for the lock")
        assert proc.poll() is None, proc.communicate()
        tools, _err = stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_tools_gone(tools)
    if where == "folder":
        wait_until(lambda: not files_under(Path(dest)), "no file left in the backup folder")
    else:
        wait_until(lambda: not s3_leftovers(s3, prefix), "no object or multipart upload left")
    wait_until(lambda: not list(staging.iterdir()), "the staging folder to be removed")
    wait_until(lambda: not other_sessions(url, locker.pid), "the backup's sessions to leave the server")


# --------------------------------------------------------------------------- restore
@pytest.mark.parametrize(("where", "sig"), [("folder", signal.SIGTERM), ("s3", signal.SIGTERM),
                                            ("folder", signal.SIGKILL), ("s3", signal.SIGKILL)])
def test_restore_stopped_mid_load(where: str, sig: int, big_backup: dict[str, str], fresh_db: str, tmp_path: Path,
                                  s3: tuple[Any, str, dict[str, str]]) -> None:
    work = tmp_path / "work"
    target = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]
    env = cli_env(PGRUNBOOK_WORK_DIR=str(work), **s3[2])
    proc = start("restore", "--file", big_backup[where], "--target-url", fresh_db, "--force", "--jobs", "2", env=env)
    try:
        # pg_restore is loading rows into the target
        wait_until(lambda: sessions(fresh_db, "datname = %s AND query LIKE 'COPY %%'", (target,))
                   or proc.poll() is not None, "pg_restore to load data")
        assert proc.poll() is None, proc.communicate()
        tools, err = stop(proc, sig, "pg_restore", at_least=3)  # the leader and its two workers
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_tools_gone(tools)
    wait_until(lambda: not sessions(fresh_db, "datname = %s", (target,)), "no session left in the target")
    wait_until(lambda: not list(work.iterdir()), "the work folder to be removed")
    mark = mark_of(fresh_db)
    assert mark is not None
    if sig == signal.SIGTERM:
        assert mark.startswith(MARK_FAILED) and mark.endswith("interrupted by SIGTERM"), mark
        assert "marked FAILED (interrupted); drop and recreate it" in err
    else:
        assert mark.startswith(MARK_IN_PROGRESS), mark  # killed: nothing could update it
    # a second restore into the marked target refuses and says what to do
    again = run_cli("restore", "--file", big_backup[where], "--target-url", fresh_db, "--force", env=env)
    assert again.returncode == 1
    line = one_error_line(again.stderr)
    assert f"is marked {mark[:40]!r}"[:-1] in line and "drop and recreate it (DROP DATABASE" in line, line
    assert mark_of(fresh_db) == mark


# --------------------------------------------------------------------------- drill and migrate
def test_drill_sigterm_stops_the_restore_and_removes_its_target(big_backup: dict[str, str], pg_server: LocalServer,
                                                               tmp_path: Path) -> None:
    proc = start("drill", "--backup", big_backup["folder"], "--server-url", pg_server.url(), "--jobs", "2",
                 "--work-dir", str(tmp_path / "work"), env=cli_env())
    try:
        loading = wait_until(lambda: sessions(pg_server.url(), "query LIKE 'COPY %%'") or proc.poll() is not None,
                             "the drill's pg_restore to load data")
        assert proc.poll() is None, proc.communicate()
        drilled = loading[0][1]
        tools, err = stop(proc, signal.SIGTERM, "pg_restore")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"the drill stopped before it finished; its target {drilled} was removed" in err
    assert_tools_gone(tools)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (drilled,)).fetchone() is None
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


def test_migrate_sigterm_during_the_pre_migration_backup(fresh_db: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    (migrations / "20260101000000_init").mkdir(parents=True)
    (migrations / "20260101000000_init" / "migration.sql").write_text('CREATE TABLE "t" (id int PRIMARY KEY);\n')
    done = run_cli("migrate", "--database-url", fresh_db, "--migrations", str(migrations), "--skip-backup",
                   "--reason", "test setup", "--lint", "off")
    assert done.returncode == 0, done.stderr
    (migrations / "20260102000000_more").mkdir()
    (migrations / "20260102000000_more" / "migration.sql").write_text('ALTER TABLE "t" ADD COLUMN "n" int;\n')
    locker = Locker(fresh_db, "t")
    backups = tmp_path / "backups"
    proc = start("migrate", "--database-url", fresh_db, "--migrations", str(migrations), "--backup-to",
                 str(backups), "--lint", "off", env=cli_env())
    try:
        wait_until(lambda: dump_waiting_for_lock(fresh_db) or proc.poll() is not None,
                   "the pre-migration backup's pg_dump to wait for the lock")
        assert proc.poll() is None, proc.communicate()
        tools, err = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        locker.release()
    assert "the migration run was stopped" in err
    assert_tools_gone(tools)
    assert files_under(backups) == []
    wait_until(lambda: not other_sessions(fresh_db), "the backup's sessions to leave the server")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        applied = [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations").fetchall()]
        columns = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass "
                                              "AND attnum > 0").fetchall()]
    assert applied == ["20260101000000_init"] and columns == ["id"]


# --------------------------------------------------------------------------- Fargate and Lambda shells
def test_fargate_task_sigterm_writes_an_interrupted_result(locked_db: tuple[str, Locker],
                                                           s3: tuple[Any, str, dict[str, str]]) -> None:
    """ECS StopTask sends SIGTERM: the task stops pg_dump, aborts the upload, writes the error result
    the state machine reads, and exits 143."""
    url, locker = locked_db
    client, bucket, s3_env = s3
    parts = psycopg.conninfo.conninfo_to_dict(url)
    secrets = boto3.client("secretsmanager", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing",
                           aws_session_token="testing")
    secret = secrets.create_secret(Name=f"db-{uuid.uuid4().hex[:8]}", SecretString=json.dumps({
        "username": parts["user"], "password": parts["password"], "host": parts["host"],
        "port": int(str(parts["port"])), "dbname": parts["dbname"]}))["ARN"]
    prefix = f"task-{uuid.uuid4().hex[:8]}"
    key = f"_tasks/{prefix}/backup-app.json"
    env = cli_env(**s3_env, PGRUNBOOK_OPERATION="backup", PGRUNBOOK_RESULT_KEY=key,
                  PGRUNBOOK_EVENT=json.dumps({"database": "app", "kind": "manual", "jobs": 1}),
                  PGRUNBOOK_DATABASES=json.dumps([{"name": "app", "secret_arn": secret, "dbname": parts["dbname"]}]),
                  PGRUNBOOK_BACKUP_DEST=f"s3://{bucket}/{prefix}", PGRUNBOOK_SSLMODE="prefer")
    proc = subprocess.Popen([sys.executable, "-m", "pgrunbook.fargate_task"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: dump_waiting_for_lock(url) or proc.poll() is not None, "pg_dump to wait for the lock")
        assert proc.poll() is None, proc.communicate()
        tools = tools_under(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    result = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
    assert result["errorType"] == "Interrupted" and result["errorMessage"].startswith("interrupted by SIGTERM")
    assert_tools_gone(tools)
    assert s3_leftovers(s3, prefix + "/") == [f"{prefix}/{key}"]  # the result; no archive, no upload
    wait_until(lambda: not other_sessions(url, locker.pid), "the backup's sessions to leave the server")


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_lambda_handler_stops_itself_before_its_deadline(thread: str, locked_db: tuple[str, Locker],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Lambda kills at its timeout without a signal: the handler's watchdog stops pg_dump and aborts the
    upload shortly before, and the function fails with DeadlineExceeded. Lambda runs handlers in the
    main thread (SIGALRM interrupts the handler); the local runner runs them on worker threads (a
    timer stops the handler's pg tools)."""
    from pgrunbook.localcloud import handler_path, load_handler

    url, locker = locked_db
    parts = psycopg.conninfo.conninfo_to_dict(url)
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    with mock_aws():
        aws.reset_clients()
        aws.client("s3").create_bucket(Bucket="deadline")
        secret = aws.client("secretsmanager").create_secret(Name="db", SecretString=json.dumps({
            "username": parts["user"], "password": parts["password"], "host": parts["host"],
            "port": int(str(parts["port"])), "dbname": parts["dbname"]}))["ARN"]
        monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "app", "secret_arn": secret,
                                                                "dbname": parts["dbname"]}]))
        monkeypatch.setenv("PGRUNBOOK_BACKUP_DEST", "s3://deadline")
        monkeypatch.setenv("PGRUNBOOK_SSLMODE", "prefer")
        monkeypatch.setenv("PGRUNBOOK_DEADLINE_MARGIN_SECONDS", "1")
        handler = load_handler(handler_path("BackupFunction"))
        seen: list[Any] = []

        def watch_tools() -> None:  # the pg_dump this process starts, for the check below
            wait_until(lambda: dump_waiting_for_lock(url), "pg_dump to wait for the lock")
            seen.extend(tools_under(__import__("os").getpid()))

        watcher = threading.Thread(target=watch_tools, daemon=True)
        watcher.start()
        failures: list[BaseException] = []

        def call() -> None:
            try:
                handler({"database": "app", "kind": "manual", "jobs": 1}, LocalContext(timeout_ms=4000))
            except BaseException as exc:
                failures.append(exc)

        if thread == "main":
            call()
        else:
            worker = threading.Thread(target=call)
            worker.start()
            worker.join(timeout=120)
        watcher.join(timeout=60)
        (failure,) = failures
        assert type(failure).__name__ == "DeadlineExceeded", failure
        assert "stopped 1s before the function's time limit" in str(failure)
        assert seen and not alive(seen)  # pg_dump was stopped before the handler returned
        client = aws.client("s3")
        assert client.list_multipart_uploads(Bucket="deadline").get("Uploads", []) == []
        assert client.list_objects_v2(Bucket="deadline").get("KeyCount") == 0
    aws.reset_clients()
    wait_until(lambda: not other_sessions(url, locker.pid), "the backup's sessions to leave the server")


# --------------------------------------------------------------------------- the spawn helper
def test_a_tool_outlives_the_short_lived_thread_that_started_it(fresh_db: str) -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that forked exits: tools are forked on one long-lived
    thread, so a tool started from a worker thread keeps running after that thread ended."""
    psql = find_tool("psql")
    started: list[Any] = []
    marker = f"pgrunbook-thread-test-{uuid.uuid4().hex[:6]}"

    with psycopg.connect(fresh_db) as conn:
        major = conn.info.server_version // 10000

    def start_in_thread() -> None:
        started.append(spawn([psql.path, "-X", "-d", fresh_db, "-c", "SELECT pg_sleep(60)"],
                             env=tool_env({"PGAPPNAME": marker}, server_major=major)))

    thread = threading.Thread(target=start_in_thread)
    thread.start()
    thread.join()
    (proc,) = started
    try:
        # the thread is gone; psql still reaches the server and runs its query
        wait_until(lambda: sessions(fresh_db, "application_name = %s AND state = 'active'", (marker,))
                   or proc.poll() is not None, "psql's query to run")
        assert proc.poll() is None
    finally:
        proc.stop()
    assert proc.returncode == -signal.SIGTERM
    # psql does not cancel its query when terminated: the server ends the session on its own, as it
    # checks every 2 s that the client is still there (client_connection_check_interval), long before
    # pg_sleep(60) would have returned
    wait_until(lambda: not sessions(fresh_db, "application_name = %s", (marker,)), "psql's session to end",
               timeout=30)
