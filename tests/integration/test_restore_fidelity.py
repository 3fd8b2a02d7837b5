"""Fidelity: the fixture schema (extensions, enum/domain/composite/range types, partitions, identity and
generated columns, deferrable FKs, RLS, triggers, views, a materialized view, grants, comments, large
objects, NaN/Infinity/-0, unicode/tabs/newlines/backslashes, an empty table, a table without a PK)
round-trips backup -> restore -> verify with identical schema text and row fingerprints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.pgserver import LocalServer
from pgrunbook.restore import RestoreOptions, run_restore
from pgrunbook.settings import Settings
from pgrunbook.verify import VerifyOptions, run_verify
from tests.fixtures.restore_helpers import (
    create_fidelity_db,
    db_comment,
    drop_db,
    fingerprints,
    new_db,
    schema_text,
)

SETTINGS = Settings.from_env({})


@pytest.fixture(scope="module")
def fidelity_db(pg_server: LocalServer) -> Iterator[str]:
    url = create_fidelity_db(pg_server)
    yield url
    drop_db(url)


@pytest.fixture(scope="module")
def source_state(fidelity_db: str) -> tuple[str, dict[str, tuple[int, str]]]:
    return schema_text(fidelity_db), fingerprints(fidelity_db)


@pytest.mark.parametrize(("how", "fmt"), [
    ({"jobs": 1}, "custom"),
    ({"jobs": 2}, "directory-tar"),
    ({"out": "db-backup-fidelity.sql.gz"}, "plain"),
])
def test_fidelity_round_trip(how: dict[str, object], fmt: str, fidelity_db: str, pg_server: LocalServer,
                             source_state: tuple[str, dict[str, tuple[int, str]]], tmp_path: Path) -> None:
    # Given a backup of the fidelity database in one of our formats
    opts: dict[str, object] = dict(how)
    if "out" in opts:
        opts["out"] = str(tmp_path / str(opts["out"]))
    else:
        opts["dest"] = str(tmp_path)
    backup = run_backup(BackupOptions(database_url=fidelity_db, **opts), SETTINGS)  # type: ignore[arg-type]
    assert backup.format == fmt
    schema, prints = source_state
    with new_db(pg_server) as target:
        # When it is restored into a new database
        result = run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True, jobs=2), SETTINGS)
        # Then schema text, every table's count and fingerprint, large objects and sequences are identical
        assert result.format == fmt
        assert schema_text(target) == schema
        assert fingerprints(target) == prints
        assert db_comment(target) is None  # the in-progress mark is gone
        # And verify against the manifest passes every check
        report = run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS)
        assert report.ok, report.text()
        assert any(c.name == "rows app.empty_table" and c.actual == "0" for c in report.checks)
