"""The CLI reports every failure on one line through errors.error_line, the same helper the Lambda shell uses:
an operator message that holds line breaks is joined (it used to print as several lines), secrets are masked,
and an unexpected exception keeps its first line."""

from __future__ import annotations

from typing import Any

import pytest

from pgrunbook.cli import backup as cli_backup
from pgrunbook.cli import main
from pgrunbook.errors import StoreError


@pytest.mark.parametrize(("error", "expected", "code"), [
    (StoreError("cannot read s3://b/x\n\tpostgresql://u:hunter2@h/db refused"),
     "pgrunbook: error: cannot read s3://b/x postgresql://u:***@h/db refused", 1),
    (ValueError("first\nsecond"), "pgrunbook: error: ValueError: first (run with -v for details)", 1),
], ids=["operator-message", "unexpected"])
def test_a_failure_is_one_masked_line(error: Exception, expected: str, code: int, tmp_path: Any,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a command that fails with a message spanning lines and holding a password
    def failing(*_args: Any) -> int:
        raise error

    monkeypatch.setattr(cli_backup, "cmd_list", failing)
    # When the CLI runs it
    rc = main(["list", "--from", str(tmp_path)])
    # Then one masked line on stderr, and the exit code of the failure
    assert rc == code
    assert capsys.readouterr().err.splitlines() == [expected]
