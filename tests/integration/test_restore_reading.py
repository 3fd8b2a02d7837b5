"""Reading an archive, for `verify-backup` and for `restore` alike (dumpfile.read_dump), and feeding it
to the tools: real archives made by `run_backup`, damaged on purpose, against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.errors import ChecksumMismatch
from pgrunbook.localpg import LocalServer
from pgrunbook.restore import MARK_FAILED, RestoreOptions, run_restore
from pgrunbook.restore import run as restore_run
from pgrunbook.settings import Settings
from tests.fixtures.restore_helpers import db_comment, new_db, user_relations

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")

TWO_TABLES = """
CREATE TABLE a_first (id int PRIMARY KEY);
INSERT INTO a_first SELECT generate_series(1, 50);
CREATE TABLE b_second (id int PRIMARY KEY);
INSERT INTO b_second SELECT generate_series(1, 70);
"""


def test_a_script_cut_after_it_was_verified_commits_nothing(pg_server: LocalServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a runbook-style .sql backup, verified by the restore, then cut at a line boundary (after the
    # first table's rows) before psql reads it: psql commits its single transaction when its input ends
    with new_db(pg_server, "cut") as source, new_db(pg_server) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(TWO_TABLES)
        script = tmp_path / "cut.sql"
        run_backup(BackupOptions(database_url=source, out=str(script)), SETTINGS)
        text = script.read_bytes()
        cut = text.index(b"\\.\n", text.index(b"COPY public.a_first")) + 3
        verified: Callable[..., None] = restore_run.refuse_changed  # type: ignore[attr-defined]

        def cut_then_go_on(url: object) -> None:
            script.write_bytes(text[:cut])
            verified(url)

        monkeypatch.setattr(restore_run, "refuse_changed", cut_then_go_on)
        # When it is restored
        with pytest.raises(ChecksumMismatch, match="changed after it was verified"):
            run_restore(RestoreOptions(file=str(script), target_url=target, force=True), SETTINGS)
        # Then none of it was committed (was: a_first restored, b_second missing, and the restore "done")
        assert user_relations(target) == []
        assert (db_comment(target) or "").startswith(MARK_FAILED)
