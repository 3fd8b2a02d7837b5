"""One migrate procedure (issue 9): `pgrunbook migrate` (pipeline.run_migrate) and the Migrate state
machine's Lambda (service.handle) run the same step functions, and the options the operator gave reach
every apply — the real one and the rehearsal's — field by field, including fields added later."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.errors import LintBlocked, NotManaged
from pgrunbook.events import MigrateEvent
from pgrunbook.migrations import ApplyOptions, pipeline, rehearse
from pgrunbook.migrations.pipeline import MigrateOptions, run_migrate
from pgrunbook.migrations.service import handle
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings
from tests.integration.test_migrations import INIT, rows, write

# an ApplyOptions with a field the procedure has never heard of (as if one were added tomorrow)
ExtendedOptions = dataclasses.make_dataclass("ExtendedOptions", [("added_later", str, "")], bases=(ApplyOptions,),
                                             frozen=True)


def spy_deploys(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ApplyOptions]]:
    """Record the options of every deploy the procedure runs (real and rehearsal), then really deploy."""
    calls: list[tuple[str, ApplyOptions]] = []
    for module in (pipeline, rehearse):
        real = module.deploy

        def recording(*args: Any, _real: Any = real, _where: str = module.__name__, **kwargs: Any) -> Any:
            calls.append((_where, kwargs["options"] if "options" in kwargs else args[3]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "deploy", recording)
    return calls


def test_every_apply_option_reaches_the_rehearsal_and_the_real_run(
        fresh_db: str, pg_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "backups"
    run_backup(BackupOptions(database_url=fresh_db, dest=str(dest), kind="scheduled", jobs=1), Settings())
    mig = write(tmp_path / "m", {"20260101000000_init": INIT})
    given = ExtendedOptions(lock_timeout="7s", statement_timeout="9min", wait_for_lock=3.5,
                            stale_lock_after=77.0, schema="public", added_later="kept")
    calls = spy_deploys(monkeypatch)
    report = run_migrate(MigrateOptions(database_url=fresh_db, migrations_dir=str(mig), backup_to=str(dest),
                                        lint="warn", require_rehearsal=True, rehearse_server=pg_server.url(),
                                        skip_backup=True, reason="test", apply=given), Settings())
    assert report.outcome == "applied" and report.rehearsal is not None and report.rehearsal.ok
    assert [where for where, _ in calls] == ["pgrunbook.migrations.rehearse", "pgrunbook.migrations.pipeline"]
    for where, used in calls:
        assert isinstance(used, ExtendedOptions) and type(used) is ExtendedOptions, where
        for f in dataclasses.fields(given):
            if f.name == "observer" and where.endswith("rehearse"):
                assert used.observer is not None  # the rehearsal adds its lock observer, nothing else
                continue
            assert getattr(used, f.name) == getattr(given, f.name), (where, f.name)
    assert [r["migration_name"] for r in rows(fresh_db)] == ["20260101000000_init"]


def test_a_rehearsal_baselines_its_copy_as_the_real_run_will(fresh_db: str, pg_server: LocalServer,
                                                             tmp_path: Path) -> None:
    """Bug: `migrate --baseline NAME --require-rehearsal` on a database that has the schema but no
    _prisma_migrations failed its rehearsal with P3005 (the rehearsal dropped --baseline), so the
    migration could never be rehearsed and run."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(INIT)  # the schema of the first migration exists, its history does not
    dest = tmp_path / "backups"
    run_backup(BackupOptions(database_url=fresh_db, dest=str(dest), kind="scheduled", jobs=1), Settings())
    mig = write(tmp_path / "m", {"20260101000000_init": INIT,
                                 "20260102000000_col": 'ALTER TABLE "Account" ADD COLUMN "nick" TEXT;\n'})
    report = run_migrate(MigrateOptions(database_url=fresh_db, migrations_dir=str(mig), backup_to=str(dest),
                                        lint="warn", baseline="20260101000000_init", require_rehearsal=True,
                                        rehearse_server=pg_server.url(), skip_backup=True, reason="test"),
                         Settings())
    assert report.rehearsal is not None and report.rehearsal.ok, report.rehearsal.text() if report.rehearsal else ""
    assert [m.name for m in report.rehearsal.migrations] == ["20260102000000_col"]
    assert report.outcome == "applied" and report.deploy is not None
    assert report.deploy.baselined == ["20260101000000_init"]
    assert [a.name for a in report.deploy.applied] == ["20260102000000_col"]


def _event(action: str, mig: Path, **extra: Any) -> MigrateEvent:
    return MigrateEvent.parse({"action": action, "input": {"database": "app", "migrations": str(mig), **extra}})


def test_the_lambda_and_the_cli_refuse_and_lint_alike(fresh_db: str, tmp_path: Path) -> None:
    settings = Settings(backup_dest=str(tmp_path / "backups"))
    mig = write(tmp_path / "m", {"20260101000000_init": INIT})
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE "Stray" (id int)')
    # P3005: one message, whichever shell runs the procedure
    with pytest.raises(NotManaged) as from_lambda:
        handle(_event("plan", mig), fresh_db, settings)
    with pytest.raises(NotManaged) as from_cli:
        run_migrate(MigrateOptions(database_url=fresh_db, migrations_dir=str(mig), skip_backup=True, reason="t"),
                    settings)
    assert str(from_lambda.value) == str(from_cli.value) and "P3005" in str(from_cli.value)

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('DROP TABLE "Stray"')
    assert handle(_event("apply", mig), fresh_db, settings)["applied"][0]["name"] == "20260101000000_init"
    write(mig, {"20260102000000_notnull": 'ALTER TABLE "Account" ALTER COLUMN "oldName" SET NOT NULL;\n'})
    linted = handle(_event("lint", mig), fresh_db, settings)
    assert linted["blocked"] is True
    with pytest.raises(LintBlocked) as blocked:
        run_migrate(MigrateOptions(database_url=fresh_db, migrations_dir=str(mig), skip_backup=True, reason="t"),
                    settings)
    assert str(blocked.value).endswith("first: " + linted["summary"])
    assert linted["summary"].startswith("20260102000000_notnull:1 ")
