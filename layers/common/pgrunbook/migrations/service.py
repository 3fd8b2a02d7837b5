"""The Migrate state machine's steps (functions/migrate/app.py and the Fargate task are thin shells over
`handle`): one MigrateEvent (events.py) per invocation, each action one step of migrations.pipeline —
the same functions `pgrunbook migrate` runs, so both paths refuse, lint, back up and apply alike.

  plan    pipeline.check_history (refuse early: P3005 / P3009) and what is pending; pre-flight backup age;
          where the pre-migration backup runs (`backup_plan.runner`: lambda, or ecs for a database too big
          for Lambda's 900 s, by the sizing rule of pgrunbook.sizing, as the Backup machine decides)
  lint    pipeline.lint_gate on the pending migrations (returns blocked: true|false and a one-line summary)
  backup  pipeline.pre_migration_backup (kind pre-migration, app_version in the manifest; also what the
          Fargate task runs for a big database)
  apply   pipeline.apply_pending (Prisma's advisory lock; fails naming the migration and the statement)
  status  pipeline.final_status (exit semantics as `migrate-status`: up_to_date true|false)

The output keys the Migrate ASL reads: plan.pending_count, plan.backup_plan.runner, lint.blocked,
lint.summary, apply.applied, status.up_to_date, status.text, status.state.

The migrations come from `migrations`: a folder, or an s3:// prefix holding
`<name>/migration.sql` (+ migration_lock.toml) that the CI release step uploads from
prisma/migrations. They are downloaded into /tmp once per invocation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..dburl import DatabaseUrl
from ..errors import UsageError
from ..events import MIGRATE_ACTIONS, MigrateEvent
from ..settings import Settings
from .files import LOCK_FILE, SCRIPT_NAME, read_migrations
from .pipeline import (
    apply_pending,
    check_history,
    final_status,
    lint_gate,
    lint_summary,
    pre_migration_backup,
    preflight,
)

ACTIONS = MIGRATE_ACTIONS

__all__ = ["ACTIONS", "MigrateEvent", "fetch_migrations", "handle"]


def fetch_migrations(source: str, work_dir: str | None = None) -> Path:
    """A local folder as is; an s3:// prefix downloaded (only */migration.sql and the lock file)."""
    if not source.startswith("s3://"):
        return Path(source)
    from ..store import open_store

    store = open_store(source.rstrip("/"))
    target = Path(tempfile.mkdtemp(prefix="pgrunbook-migrations-", dir=work_dir))
    found = 0
    for info in store.list(""):
        parts = info.key.strip("/").split("/")
        if (parts[-1] == SCRIPT_NAME and len(parts) >= 2) or parts == [LOCK_FILE]:
            dest = target / "/".join(parts[-2:] if parts[-1] == SCRIPT_NAME else parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.get_bytes(info.key))
            found += parts[-1] == SCRIPT_NAME
    if not found:
        raise UsageError(f"no <name>/{SCRIPT_NAME} found under {source}: upload prisma/migrations there first")
    return target


def handle(ev: MigrateEvent, database_url: str, settings: Settings) -> dict[str, Any]:
    url = DatabaseUrl.parse(database_url)
    migrations = read_migrations(fetch_migrations(ev.migrations))
    base = {"database": ev.database, "migrations": ev.migrations}
    if ev.action == "plan":
        checked = check_history(url, migrations, ev.migrations)
        pending = [m.name for m in checked.pending]
        out: dict[str, Any] = {**base, "pending": pending, "pending_count": len(pending),
                               "preflight": preflight(settings.backup_dest, url.dbname, settings),
                               "status": checked.status.to_dict()}
        if pending and not ev.skip_backup:  # where the pre-migration backup runs: Lambda, or Fargate when big
            from ..operations import backup_runner

            out["backup_plan"] = backup_runner(ev.database, settings)
        return out
    if ev.action == "lint":
        checked = check_history(url, migrations, ev.migrations)
        report = lint_gate(checked.pending, ev.lint, checked.server_major, settings.squawk)
        return {**base, **report.to_dict(), "summary": lint_summary(report)}
    if ev.action == "backup":
        backup = pre_migration_backup(database_url, settings.backup_dest, app_version=ev.app_version,
                                      settings=settings, jobs=1)
        return {**base, **backup.to_dict()}
    if ev.action == "apply":
        return {**base, **apply_pending(url, migrations, ev.migrations, ev.apply_options()).to_dict()}
    status = final_status(url, migrations, ev.migrations)
    return {**base, **status.to_dict(), "text": status.text()}
