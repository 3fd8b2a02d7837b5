"""The real state machines (template.yaml + statemachines/*.asl.json) run in in-process moto,
with the handlers of functions/*/app.py wired in by pgrunbook.local."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgrunbook.local import LocalCloud, LocalDatabase
from pgrunbook.localpg import LocalServer


@pytest.fixture(scope="module")
def app_db(pg_server: LocalServer) -> Iterator[str]:
    """One runbook-shaped sample database per module: these tests only read it (restores go elsewhere)."""
    from pgrunbook.sample import create_sample_database

    name = f"app_{uuid.uuid4().hex[:10]}"
    yield create_sample_database(pg_server.url(), name, users=200, jobs_per_user=3, events=1000)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def cloud(app_db: str, pg_server: LocalServer) -> Iterator[LocalCloud]:
    """Databases `app` (the runbook-shaped sample) and `broken` (a database that does not exist)."""
    databases = [LocalDatabase("app", app_db), LocalDatabase("broken", pg_server.url("does_not_exist"))]
    with LocalCloud(databases) as local:
        yield local
