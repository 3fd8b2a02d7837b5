"""The Migrate state machine's steps (functions/migrate/app.py is a thin shell over `handle`).

Each step is one invocation with the same event shape plus an `action`:
  plan    read the migrations and the history; refuse early (P3005 / P3009); pre-flight backup age; where
          the pre-migration backup runs (`backup_plan.runner`: lambda, or ecs for a database too big for
          Lambda's 900 s, by the sizing rule of pgrunbook.sizing, as the Backup machine decides)
  lint    the lint gate on the pending migrations (returns blocked: true|false)
  backup  pre-migration backup (kind pre-migration, app_version in the manifest)
  apply   lock + apply (Prisma's advisory lock; fails naming the migration and the statement)
  status  final status (exit semantics as `migrate-status`: up_to_date true|false)

The migrations come from `migrations`: a folder, or an s3:// prefix holding
`<name>/migration.sql` (+ migration_lock.toml) that the CI release step uploads from
prisma/migrations. They are downloaded into /tmp once per invocation.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dburl import DatabaseUrl
from ..errors import UsageError
from ..settings import Settings
from .files import LOCK_FILE, SCRIPT_NAME, read_migrations
from .lint import LINT_MODES, lint_migrations
from .pipeline import preflight
from .runner import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
    ApplyOptions,
    FailedMigrationsPresent,
    NotManaged,
    _failed_message,
    deploy,
    open_connection,
)
from .status import compute_status

ACTIONS = ("plan", "lint", "backup", "apply", "status")


class EventError(UsageError):
    """The migrate event is missing a field or has a wrong one."""


@dataclass(frozen=True)
class MigrateEvent:
    action: str
    database: str
    migrations: str
    app_version: str | None = None
    lint: str = "strict"
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT
    wait_for_lock: float = 10.0
    skip_backup: bool = False
    reason: str | None = None

    @classmethod
    def parse(cls, event: Any) -> MigrateEvent:
        if not isinstance(event, dict):
            raise EventError(f"migrate event: expected a JSON object, got {type(event).__name__}")
        if isinstance(event.get("input"), dict):  # the state machine passes {"action": ..., "input": <its input>}
            event = {**event["input"], "action": event.get("action")}

        def text(name: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
            value = event.get(name, default)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise EventError(f"migrate event: field '{name}' must be a non-empty string")
            if choices and value not in choices:
                raise EventError(f"migrate event: field '{name}' must be one of {', '.join(choices)}, not {value!r}")
            return value

        action, database, migrations = text("action", None, ACTIONS), text("database"), text("migrations")
        if action is None or database is None or migrations is None:
            raise EventError("migrate event: 'action', 'database' and 'migrations' are required")
        wait = event.get("wait_for_lock", 10.0)
        if not isinstance(wait, int | float) or isinstance(wait, bool):
            raise EventError("migrate event: field 'wait_for_lock' must be a number of seconds")
        skip = event.get("skip_backup", False)
        if not isinstance(skip, bool):
            raise EventError("migrate event: field 'skip_backup' must be true or false")
        reason = text("reason")
        if skip and not reason:
            raise EventError("migrate event: 'skip_backup' needs a 'reason' (it is recorded in the execution)")
        return cls(action=action, database=database, migrations=migrations, app_version=text("app_version"),
                   skip_backup=skip, reason=reason,
                   lint=text("lint", "strict", LINT_MODES) or "strict",
                   lock_timeout=text("lock_timeout", DEFAULT_LOCK_TIMEOUT) or DEFAULT_LOCK_TIMEOUT,
                   statement_timeout=text("statement_timeout", DEFAULT_STATEMENT_TIMEOUT) or DEFAULT_STATEMENT_TIMEOUT,
                   wait_for_lock=float(wait))


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
    folder = fetch_migrations(ev.migrations)
    migrations = read_migrations(folder)
    base = {"database": ev.database, "migrations": ev.migrations}
    if ev.action == "plan":
        with open_connection(url) as conn:
            status = compute_status(conn, migrations, database=url.display(), migrations_dir=ev.migrations)
        if not status.managed and status.schema_objects:
            raise NotManaged(f"the database is not empty ({', '.join(status.schema_objects)}) and has no "
                             "_prisma_migrations table (Prisma's P3005): baseline it with `pgrunbook migrate "
                             "--baseline` first")
        if status.failed:
            raise FailedMigrationsPresent(_failed_message(status.failed))
        pending = status.local if not status.managed else status.pending
        out: dict[str, Any] = {**base, "pending": pending, "pending_count": len(pending),
                               "preflight": preflight(settings.backup_dest, url.dbname, settings),
                               "status": status.to_dict()}
        if pending and not ev.skip_backup:  # where the pre-migration backup runs: Lambda, or Fargate when big
            from ..operations import backup_runner

            out["backup_plan"] = backup_runner(ev.database, settings)
        return out
    if ev.action == "lint":
        with open_connection(url) as conn:
            status = compute_status(conn, migrations, database=url.display(), migrations_dir=ev.migrations)
            major = conn.info.server_version // 10000
        pending_names = set(status.local if not status.managed else status.pending)
        report = lint_migrations([m for m in migrations if m.name in pending_names], ev.lint, server_major=major)
        first = report.errors[0] if report.errors else None
        return {**base, **report.to_dict(),
                "summary": (f"{first.migration}:{first.line} {first.rule}: {first.message}. Fix: {first.fix}"
                            if first else "no blocking finding")}
    if ev.action == "backup":
        from ..backup import BackupOptions, run_backup

        backup = run_backup(BackupOptions(database_url=database_url, dest=settings.backup_dest, kind="pre-migration",
                                          app_version=ev.app_version, jobs=1), settings)
        return {**base, **backup.to_dict()}
    if ev.action == "apply":
        result = deploy(url, migrations, ev.migrations, ApplyOptions(
            lock_timeout=ev.lock_timeout, statement_timeout=ev.statement_timeout, wait_for_lock=ev.wait_for_lock))
        return {**base, **result.to_dict()}
    with open_connection(url) as conn:
        status = compute_status(conn, migrations, database=url.display(), migrations_dir=ev.migrations)
    return {**base, **status.to_dict(), "text": status.text()}
