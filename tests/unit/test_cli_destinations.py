"""Every DEST option (--to, --from, --backup-to) refuses an empty folder or an s3:// prefix with an empty, '.' or
'..' segment as a usage error, before anything connects: `drill --from ''` and `migrate --backup-to ''` used to
fall back silently to the default destination."""

from __future__ import annotations

import pytest

from pgrunbook.cli import main

COMMANDS = [["backup", "--to"], ["list", "--from"], ["drill", "--from"], ["migrate", "--backup-to"],
            ["status", "--from"]]


@pytest.mark.parametrize("dest", ["", "s3://bucket/../x", "s3://bucket/a//b", "s3://bucket/./a"])
@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_bad_destination_is_a_usage_error(command: list[str], dest: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no database reachable (nothing may connect before the usage error)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    # When the command gets a bad destination
    with pytest.raises(SystemExit) as done:
        main([*command, dest])
    # Then it exits 2 with one line naming the option
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2
    assert len(err.splitlines()) == 1 and f"argument {command[1]}" in err, err
