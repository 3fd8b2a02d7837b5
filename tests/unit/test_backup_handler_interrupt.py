"""The Backup function counts a failure whatever stopped it: an exception, or the deadline watchdog /
a signal (Interrupted, a KeyboardInterrupt that `except Exception` does not see)."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from pgrunbook import operations
from pgrunbook.errors import Interrupted, PgrunbookError
from pgrunbook.lambda_support import LocalContext
from pgrunbook.localcloud import handler_path, load_handler


def _emf(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


@pytest.mark.parametrize("error", [Interrupted(signal.SIGALRM), PgrunbookError("pg_dump failed")],
                         ids=["interrupted", "error"])
def test_backup_failure_metric_whatever_stopped_it(error: BaseException, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Given a backup that is stopped part-way
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "pgrunbook")

    def stopped(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(operations, "backup", stopped)
    handler = load_handler(handler_path("BackupFunction"))
    # When the function runs it
    with pytest.raises(type(error)):
        handler({"database": "app", "kind": "scheduled"}, LocalContext())
    # Then BackupFailed is emitted for the database
    failed = [b for b in _emf(capsys.readouterr().out) if "BackupFailed" in b]
    assert failed and failed[0]["Database"] == "app"
