"""`pgrunbook migrate`: the runbook's "Deploying migrations safely" as one command.

1. read the migrations folder and the database's history (refuse early: an unmanaged database
   (P3005) or a failed migration (P3009) stops here, before any backup is taken);
2. pre-flight: is the latest scheduled backup younger than 26 h? (reported, never silent);
3. lint gate on the pending migrations (strict blocks before anything is touched);
4. optional rehearsal on a restored copy (`--rehearse` only rehearses; `--require-rehearsal`
   rehearses and runs for real only when it passed);
5. pre-migration backup (kind "pre-migration", app version in the manifest) unless
   `--skip-backup --reason TEXT`;
6. lock + apply (runner.deploy), 7. status.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..dburl import DatabaseUrl
from ..errors import PgrunbookError, UsageError
from ..settings import Settings
from .files import read_migrations
from .lint import LintReport, lint_migrations
from .rehearse import RehearsalReport, describe_failure, rehearse, require_backup
from .runner import (
    ApplyOptions,
    DeployResult,
    FailedMigrationsPresent,
    NotManaged,
    _failed_message,
    deploy,
    open_connection,
)
from .status import StatusReport, compute_status

log = logging.getLogger(__name__)

PREFLIGHT_MAX_AGE_HOURS = 26.0


@dataclass(frozen=True)
class MigrateOptions:
    database_url: str | None = None
    migrations_dir: str = "prisma/migrations"
    backup_to: str | None = None  # where the pre-migration backup goes and scheduled backups are looked for
    skip_backup: bool = False
    reason: str | None = None
    lint: str = "strict"
    app_version: str | None = None
    baseline: str | None = None
    rehearse: bool = False  # rehearse only (production untouched)
    require_rehearsal: bool = False  # rehearse, then run for real only when it passed
    rehearse_from: str | None = None  # backup URI to restore (default: the latest for this database)
    rehearse_on: str | None = None  # provisioner kind (default: database with rehearse_server, else local-instance)
    rehearse_server: str | None = None
    apply: ApplyOptions = field(default_factory=ApplyOptions)


@dataclass
class MigrateReport:
    database: str
    migrations_dir: str
    pending: list[str] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    lint: LintReport | None = None
    rehearsal: RehearsalReport | None = None
    backup: dict[str, Any] | None = None
    backup_skipped: str | None = None
    deploy: DeployResult | None = None
    status: StatusReport | None = None
    seconds: float = 0.0
    outcome: str = ""  # up-to-date | applied | rehearsed | blocked | failed

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "migrations_dir": self.migrations_dir, "outcome": self.outcome,
                "pending": self.pending, "preflight": self.preflight,
                "lint": self.lint.to_dict() if self.lint else None,
                "rehearsal": self.rehearsal.to_dict() if self.rehearsal else None,
                "backup": self.backup, "backup_skipped": self.backup_skipped,
                "applied": [a.to_dict() for a in self.deploy.applied] if self.deploy else [],
                "baselined": self.deploy.baselined if self.deploy else [],
                "status": self.status.to_dict() if self.status else None, "seconds": round(self.seconds, 3)}

    def text(self) -> str:
        lines = [f"migrate {self.database} from {self.migrations_dir}: {self.outcome}"]
        if self.preflight:
            lines.append(f"  pre-flight: {self.preflight.get('message')}")
        if self.lint and self.lint.mode != "off" and self.lint.migrations:
            lines += ["  " + line for line in self.lint.text().splitlines()]
        if self.rehearsal:
            lines += ["  " + line for line in self.rehearsal.text().splitlines()]
        if self.backup:
            lines.append(f"  pre-migration backup: {self.backup.get('archive')} ({self.backup.get('seconds')}s)")
        if self.backup_skipped:
            lines.append(f"  pre-migration backup SKIPPED: {self.backup_skipped}")
        if self.deploy:
            if self.deploy.baselined:
                lines.append(f"  baselined (recorded as applied, not run): {', '.join(self.deploy.baselined)}")
            for a in self.deploy.applied:
                lines.append(f"  applied {a.name} in {a.seconds:.2f}s ({a.statements} statements, {a.mode})")
            if not self.deploy.applied:
                lines.append("  no pending migration")
        if self.status:
            lines += ["  " + line for line in self.status.text().splitlines()[1:]]
        return "\n".join(lines)


def preflight(dest: str, database: str, settings: Settings) -> dict[str, Any]:
    from ..catalog_list import latest_backup

    try:
        latest = latest_backup(dest, database=database, kind="scheduled", settings=settings)
    except PgrunbookError as exc:
        return {"ok": False, "latest": None, "message": f"could not list the backups in {dest}: {exc}"}
    if latest is None:
        return {"ok": False, "latest": None,
                "message": f"no scheduled backup of {database} found in {dest}: automated backups are not healthy"}
    hours = latest.age_seconds / 3600
    ok = hours < PREFLIGHT_MAX_AGE_HOURS
    return {"ok": ok, "latest": latest.to_dict(),
            "message": (f"latest scheduled backup is {hours:.1f}h old ({latest.archive})" if ok else
                        f"latest scheduled backup is {hours:.1f}h old, older than {PREFLIGHT_MAX_AGE_HOURS:g}h "
                        f"({latest.archive}): automated backups look unhealthy")}


def run_migrate(opts: MigrateOptions, settings: Settings | None = None) -> MigrateReport:
    """The whole procedure; raises PgrunbookError on a failure (after logging what was done)."""
    settings = settings or Settings.from_env()
    t0 = time.monotonic()
    url = DatabaseUrl.parse(opts.database_url or settings.database_url, what="database URL (--database-url or "
                                                                            "$DATABASE_URL)")
    if opts.skip_backup and not (opts.reason or "").strip():
        raise UsageError("--skip-backup needs --reason TEXT (it is recorded in the report and the log)")
    if opts.rehearse and opts.require_rehearsal:
        raise UsageError("--rehearse (rehearsal only) and --require-rehearsal (rehearse, then run) exclude each other")
    migrations = read_migrations(opts.migrations_dir)
    dest = opts.backup_to or settings.backup_dest
    report = MigrateReport(database=url.display(), migrations_dir=opts.migrations_dir)

    # 1. history first: cheap refusals before any backup or lock
    with open_connection(url) as conn:
        before = compute_status(conn, migrations, database=url.display(), migrations_dir=opts.migrations_dir,
                                schema=opts.apply.schema)
        server_major = conn.info.server_version // 10000
    if not before.managed and before.schema_objects and opts.baseline is None:
        raise NotManaged(f"the database is not empty ({', '.join(before.schema_objects)}) and has no "
                         "_prisma_migrations table: it is not managed by migrations (Prisma's P3005). If it already "
                         "has the migrations' schema, baseline it: `pgrunbook migrate --baseline` (all local "
                         "migrations) or `--baseline NAME`")
    if before.managed and opts.baseline is not None:
        raise UsageError("--baseline is for a database without _prisma_migrations; this one is already managed "
                         "(use `pgrunbook migrate resolve --applied NAME` for a single migration)")
    if before.failed:
        raise FailedMigrationsPresent(_failed_message(before.failed))
    if not before.managed:
        pending = [] if opts.baseline == "*" else list(migrations)
        if opts.baseline not in (None, "*"):
            names = [m.name for m in migrations]
            if opts.baseline not in names:
                raise UsageError(f"--baseline {opts.baseline}: no such migration in {opts.migrations_dir}")
            pending = migrations[names.index(opts.baseline) + 1:]
    else:
        pending_names = set(before.pending)
        pending = [m for m in migrations if m.name in pending_names]
    report.pending = [m.name for m in pending]

    # 2. pre-flight
    report.preflight = preflight(dest, url.dbname, settings)
    if not report.preflight["ok"]:
        log.warning("pre-flight: " + report.preflight["message"])

    if not pending and before.managed:
        report.status = before
        report.outcome = "up-to-date"
        report.seconds = time.monotonic() - t0
        return report

    # 3. lint gate
    report.lint = lint_migrations(pending, opts.lint, server_major=server_major)
    if report.lint.blocked:
        report.outcome = "blocked"
        report.seconds = time.monotonic() - t0
        raise LintBlocked(report)

    # 4. rehearsal
    if opts.rehearse or opts.require_rehearsal:
        from ..catalog_list import latest_backup

        backup = opts.rehearse_from
        if not backup:
            latest = latest_backup(dest, database=url.dbname, settings=settings)
            backup = require_backup(latest.archive if latest else None)
        report.rehearsal = rehearse(migrations, opts.migrations_dir, backup=backup, provisioner=opts.rehearse_on,
                                    server_url=opts.rehearse_server, apply_options=opts.apply, settings=settings)
        if not report.rehearsal.ok:
            report.outcome = "rehearsal-failed"
            report.seconds = time.monotonic() - t0
            raise RehearsalFailed(report)
        if opts.rehearse:
            report.outcome = "rehearsed"
            report.status = before
            report.seconds = time.monotonic() - t0
            return report

    # 5. pre-migration backup
    if opts.skip_backup:
        report.backup_skipped = (opts.reason or "").strip()
        log.warning("pre-migration backup skipped", extra={"reason": report.backup_skipped})
    else:
        from ..backup import BackupOptions, run_backup

        result = run_backup(BackupOptions(database_url=opts.database_url or settings.database_url, dest=dest,
                                          kind="pre-migration", app_version=opts.app_version), settings)
        report.backup = result.to_dict()

    # 6. lock + apply, 7. status
    apply = ApplyOptions(lock_timeout=opts.apply.lock_timeout, statement_timeout=opts.apply.statement_timeout,
                         wait_for_lock=opts.apply.wait_for_lock, stale_lock_after=opts.apply.stale_lock_after,
                         baseline=opts.baseline, schema=opts.apply.schema, observer=opts.apply.observer)
    report.deploy = deploy(url, migrations, opts.migrations_dir, apply)
    report.status = report.deploy.status
    report.outcome = "applied"
    report.seconds = time.monotonic() - t0
    return report


class LintBlocked(PgrunbookError):
    def __init__(self, report: MigrateReport) -> None:
        assert report.lint is not None
        errors = report.lint.errors
        first = errors[0]
        super().__init__(f"lint gate (strict) blocked {len(errors)} finding(s) in the pending migrations; first: "
                         f"{first.migration}:{first.line} {first.rule}: {first.message}. Fix: {first.fix}")
        self.report = report


class RehearsalFailed(PgrunbookError):
    def __init__(self, report: MigrateReport) -> None:
        assert report.rehearsal is not None
        super().__init__(describe_failure(report.rehearsal) + " (production was not touched)")
        self.report = report
