"""The real state machines (template.yaml + statemachines/*.asl.json) run in in-process moto,
with the handlers of functions/*/app.py wired in by pgrunbook.localcloud."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgrunbook.localcloud import LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer


@pytest.fixture()
def cloud(app_db: str, pg_server: LocalServer) -> Iterator[LocalCloud]:
    """Databases `app` (the runbook-shaped sample) and `broken` (a database that does not exist)."""
    databases = [LocalDatabase("app", app_db), LocalDatabase("broken", pg_server.url("does_not_exist"))]
    with LocalCloud(databases) as local:
        yield local
