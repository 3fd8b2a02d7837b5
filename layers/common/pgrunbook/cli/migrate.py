"""`pgrunbook migrate`, `migrate resolve`, `migrate lint`, `migrate-status`: Prisma-compatible migrations."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Settings
from .common import add_json, destination, emit, progress

ENV_DIR = "PGRUNBOOK_MIGRATIONS_DIR"


def _common(p: argparse.ArgumentParser, *, database: bool = True) -> None:
    if database:
        p.add_argument("--database-url", metavar="URL", help="the database (default: $DATABASE_URL)")
    p.add_argument("--migrations", metavar="DIR",
                   help=f"the Prisma migrations folder (default: ${ENV_DIR} or prisma/migrations)")


def _timeouts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", metavar="DURATION",
                   help="SET lock_timeout for every migration, e.g. 5s (default: $PGRUNBOOK_MIGRATE_LOCK_TIMEOUT "
                        "or 5s; 0 = wait forever)")
    p.add_argument("--statement-timeout", metavar="DURATION",
                   help="SET statement_timeout for every migration (default: $PGRUNBOOK_MIGRATE_STATEMENT_TIMEOUT "
                        "or 30min)")
    p.add_argument("--wait-for-lock", type=float, metavar="SECONDS",
                   help="how long to wait for another migrator's lock (pg_advisory_lock(72707369)) before failing "
                        "(default 10, like Prisma)")


def register(sub: Any) -> None:
    m = sub.add_parser(
        "migrate", help="apply Prisma migrations safely: pre-flight, backup, lint, lock, apply, status",
        description="The runbook's migration procedure: check that the latest scheduled backup is younger than 26 h, "
                    "lint the pending migrations for locking DDL (squawk + pgrunbook's checks), optionally rehearse "
                    "them on a restored copy, take a pre-migration backup, take Prisma's advisory lock "
                    "(pg_advisory_lock(72707369)) and apply prisma/migrations/<name>/migration.sql in name order, "
                    "keeping _prisma_migrations exactly as `prisma migrate deploy` does. Exit 0 when applied or "
                    "already up to date, 1 on any failure (the migration and statement are named), 2 usage error.")
    _common(m)
    m.add_argument("--backup-to", metavar="DEST", type=destination,
                   help="where the pre-migration backup goes and scheduled backups are looked for (s3://bucket/prefix "
                        "or a folder; default: $PGRUNBOOK_BACKUP_DEST or ./backups)")
    m.add_argument("--skip-backup", action="store_true", help="do not take the pre-migration backup (needs --reason)")
    m.add_argument("--reason", metavar="TEXT", help="why the backup is skipped (recorded in the report and the log)")
    m.add_argument("--lint", choices=("strict", "warn", "off"),
                   help="lint gate: strict blocks on locking DDL, warn reports it (default: $PGRUNBOOK_MIGRATE_LINT "
                        "or strict)")
    m.add_argument("--app-version", metavar="VERSION",
                   help="application version recorded in the pre-migration backup's manifest (default: $APP_VERSION)")
    m.add_argument("--baseline", nargs="?", const="*", metavar="NAME",
                   help="the database already has the schema but no _prisma_migrations: record the local migrations "
                        "(all, or up to and including NAME) as applied without running them, then apply the rest")
    m.add_argument("--rehearse", action="store_true",
                   help="rehearsal only: restore the latest backup into a fresh target, apply the pending migrations "
                        "there and report time and locks per migration; production is not touched")
    m.add_argument("--require-rehearsal", action="store_true",
                   help="rehearse first and run for real only when the rehearsal passed")
    m.add_argument("--rehearse-from", metavar="URI", help="backup to rehearse on (default: the latest in DEST)")
    m.add_argument("--rehearse-on", choices=("database", "local-instance", "rds"),
                   help="where the rehearsal copy lives (default: database with --rehearse-server, "
                        "else local-instance)")
    m.add_argument("--rehearse-server", metavar="URL", help="server for the database provisioner")
    _timeouts(m)
    add_json(m)
    m.set_defaults(handler=cmd_migrate)

    actions = m.add_subparsers(dest="migrate_action", metavar="ACTION")
    r = actions.add_parser(
        "resolve", help="mark a failed migration as rolled back or applied (like prisma migrate resolve)",
        description="After a failed migration, deploys are refused until it is resolved. --rolled-back NAME: you "
                    "reverted what it did; it will run again on the next deploy. --applied NAME: you completed it by "
                    "hand (or the database already has it: baselining); it is recorded as applied without running.")
    _common(r)
    group = r.add_mutually_exclusive_group(required=True)
    group.add_argument("--applied", metavar="NAME")
    group.add_argument("--rolled-back", metavar="NAME")
    r.add_argument("--wait-for-lock", type=float, metavar="SECONDS", help="wait limit for the migration lock")
    add_json(r)
    r.set_defaults(handler=cmd_resolve)

    lint = actions.add_parser(
        "lint", help="lint migrations offline (no database): locking DDL, with the expand/contract fix",
        description="Run the lint gate on the named migrations (default: all in the folder). Exit 1 when an error "
                    "finding remains in strict mode.")
    _common(lint, database=False)
    lint.add_argument("names", nargs="*", metavar="NAME")
    lint.add_argument("--lint", choices=("strict", "warn"), default="strict")
    lint.add_argument("--pg-version", type=int, metavar="MAJOR", help="target server major version (default 16)")
    add_json(lint)
    lint.set_defaults(handler=cmd_lint)

    s = sub.add_parser(
        "migrate-status", help="migration status with Prisma's exit semantics",
        description="Compare prisma/migrations with _prisma_migrations. Exit 0 when up to date; 1 when migrations "
                    "are pending, failed, applied in the database but missing locally, or the database is not "
                    "managed by migrations. A migration edited after it was applied is a warning.")
    _common(s)
    add_json(s)
    s.set_defaults(handler=cmd_status)


def _dir(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.migrations or settings.migrate.migrations_dir)


def _apply_options(args: argparse.Namespace, settings: Settings) -> Any:
    from ..migrations.lock import DEFAULT_WAIT_SECONDS
    from ..migrations.runner import DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT, ApplyOptions

    return ApplyOptions(
        lock_timeout=getattr(args, "lock_timeout", None) or settings.migrate.lock_timeout or DEFAULT_LOCK_TIMEOUT,
        statement_timeout=getattr(args, "statement_timeout", None) or settings.migrate.statement_timeout
        or DEFAULT_STATEMENT_TIMEOUT,
        wait_for_lock=args.wait_for_lock if getattr(args, "wait_for_lock", None) is not None else DEFAULT_WAIT_SECONDS)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from ..errors import Interrupted
    from ..migrations.pipeline import LintBlocked, MigrateOptions, RehearsalFailed, run_migrate

    opts = MigrateOptions(
        database_url=args.database_url, migrations_dir=_dir(args, settings), backup_to=args.backup_to,
        skip_backup=args.skip_backup, reason=args.reason, lint=args.lint or settings.migrate.lint,
        app_version=args.app_version or settings.migrate.app_version, baseline=args.baseline,
        rehearse=args.rehearse, require_rehearsal=args.require_rehearsal, rehearse_from=args.rehearse_from,
        rehearse_on=args.rehearse_on, rehearse_server=args.rehearse_server, apply=_apply_options(args, settings))
    try:
        report = run_migrate(opts, settings, progress=progress(args, settings))
    except (LintBlocked, RehearsalFailed) as exc:
        emit(args, exc.report.to_dict(), exc.report.text)
        raise
    except Interrupted as exc:
        exc.detail = ("the migration run was stopped (its pg tools, partial backup and rehearsal target are gone); "
                      "a migration being applied was cancelled: run `pgrunbook migrate-status` to see where it stands")
        raise
    emit(args, report.to_dict(), report.text)
    return 0


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    from ..dburl import DatabaseUrl
    from ..migrations import read_migrations, resolve

    url = DatabaseUrl.parse(args.database_url or settings.database_url, what="database URL")
    result = resolve(url, read_migrations(_dir(args, settings)), applied=args.applied, rolled_back=args.rolled_back,
                     options=_apply_options(args, settings))
    emit(args, result.to_dict(), lambda: (
        f"migration {result.migration} marked as {result.action} in _prisma_migrations"
        + (" (it will run again on the next deploy)" if result.action == "rolled-back" else "")))
    return 0


def cmd_lint(args: argparse.Namespace, settings: Settings) -> int:
    from ..errors import UsageError
    from ..migrations import lint_migrations, read_migrations

    migrations = read_migrations(_dir(args, settings))
    if args.names:
        unknown = set(args.names) - {m.name for m in migrations}
        if unknown:
            raise UsageError(f"no such migration in {_dir(args, settings)}: {', '.join(sorted(unknown))}")
        migrations = [m for m in migrations if m.name in args.names]
    report = lint_migrations(migrations, args.lint, server_major=args.pg_version or 16, squawk=settings.squawk)
    emit(args, report.to_dict(), report.text)
    return 1 if report.blocked else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ..dburl import DatabaseUrl
    from ..migrations import read_migrations, read_status

    url = DatabaseUrl.parse(args.database_url or settings.database_url, what="database URL")
    report = read_status(url, read_migrations(_dir(args, settings)), _dir(args, settings))
    emit(args, report.to_dict(), report.text)
    return report.exit_code
