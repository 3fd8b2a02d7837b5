"""`pgrunbook local run`: backup then a cutover (auto-approved) in one local cloud, from the CLI."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgrunbook.cli import main
from pgrunbook.pgserver import LocalServer


def test_local_run_backup_then_cutover_with_approve(app_db: str, pg_server: LocalServer,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["local", "run", "--json", "--approve", "--database", f"app={app_db}",
                 "Backup", '{"kind": "manual"}', "Restore", '{"database": "app", "mode": "cutover"}'])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, out
    backup, restore = out["executions"]
    assert backup["status"] == "SUCCEEDED" and restore["status"] == "SUCCEEDED"
    approval = restore["output"]["approval"]
    assert approval["decision"] == "approved"
    # decided through the approval page (GET the link, POST the form), not by a direct SendTaskSuccess
    assert approval["via"] == "page" and approval["approver"] == "pgrunbook local --approve"
    assert approval["user_agent"] == "pgrunbook-local" and approval["source_ip"] == "127.0.0.1"
    assert any(n["subject"].startswith("Approve cutover of app? ") for n in out["notifications"])
    target = restore["output"]["target"]["name"]
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{target}" WITH (FORCE)')


def test_local_run_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "run", "--database", "a=postgresql://x@h/a", "Nope", "{}"]) == 2
    assert "unknown state machine 'Nope'" in capsys.readouterr().err
    assert main(["local", "run", "Backup"]) == 2
