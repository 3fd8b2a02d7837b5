"""Shared fixtures: a real PostgreSQL server (packaged binaries, TCP + password auth) and S3
on moto (a threaded server for subprocesses, in-process mock_aws for unit tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.pgserver import LocalServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalServer]:
    """One real PostgreSQL server for the whole session. Its files live outside pytest's temp root: any
    pytest session that starts makes that root private again (chmod 0700), which cut a server running
    as its unprivileged user off from its own data directory (PANIC: could not open pg_control)."""
    root = Path(tempfile.mkdtemp(prefix="pgrunbook-test-pg-"))
    try:
        with LocalServer.running(root / "data") as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def fresh_db(pg_server: LocalServer) -> Iterator[str]:
    """A new empty database on the session server; its URL (with password)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sample_database(server: LocalServer) -> Iterator[str]:
    from pgrunbook.sample import create_sample_database

    name = f"app_{uuid.uuid4().hex[:10]}"
    yield create_sample_database(server.url(), name, users=200, jobs_per_user=3, events=1000)
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def sample_db(pg_server: LocalServer) -> Iterator[str]:
    """A runbook-shaped application database ("User", "Job", "SecurityEvent", _prisma_migrations)."""
    yield from _sample_database(pg_server)


@pytest.fixture(scope="module")
def app_db(pg_server: LocalServer) -> Iterator[str]:
    """The same sample database, one per module, for tests that only read it."""
    yield from _sample_database(pg_server)


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No URL or destination leaks in from the environment; CLI logging reset after main() runs."""
    from tests.fixtures.restore_helpers import reset_cli_logging

    for name in ("DATABASE_URL", "NEW_DATABASE_URL", "PGRUNBOOK_BACKUP_DEST"):
        monkeypatch.delenv(name, raising=False)
    yield
    reset_cli_logging()


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    aws.reset_clients()
    yield
    aws.reset_clients()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on localhost (for subprocesses: the CLI reaches it via AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    from pgrunbook.pgserver import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_endpoint(moto_server: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 (in-process and in child processes) at the moto server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    aws.reset_clients()
    return moto_server


@pytest.fixture()
def bucket(s3_endpoint: str) -> str:
    name = f"pgrunbook-test-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=name)
    return name


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the CLI as a subprocess (inherits AWS_ENDPOINT_URL etc.)."""
    env = dict(os.environ)
    env.update(extra)
    return env


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `pgrunbook` console script as a user would."""
    exe = Path(sys.executable).parent / "pgrunbook"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env or cli_env(), cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)
