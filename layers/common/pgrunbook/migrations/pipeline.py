"""The runbook's "Deploying migrations safely": its steps, and `pgrunbook migrate` as one command over them.

The steps are the only implementation of the procedure; the CLI (`run_migrate`) calls them in one
process, the Migrate state machine one per Lambda invocation (`service.handle`):

1. `check_history`: read the database's history; refuse early — an unmanaged database (P3005, unless
   baselining) or a failed migration (P3009) stops here, before any backup is taken — and say what is
   pending;
2. `preflight`: is the latest scheduled backup younger than 26 h? (reported, never silent);
3. `lint_gate` on the pending migrations (strict blocks before anything is touched; `lint_summary` is
   its one line);
4. (CLI only) a rehearsal on a restored copy (`--rehearse` only rehearses; `--require-rehearsal`
   rehearses and runs for real only when it passed), with the same ApplyOptions as the real run;
5. `pre_migration_backup` (kind "pre-migration", app version in the manifest) unless
   `--skip-backup --reason TEXT`;
6. `apply_pending` (Prisma's advisory lock, then runner.deploy), 7. `final_status`.

Progress (the reporter the shell passes; default: log lines every Settings.progress_seconds): the
pre-migration backup's ("backup"), then "migrations": applied of pending.

Invariants: nothing is backed up, locked or applied before steps 1 and 3 passed; ApplyOptions are
derived with dataclasses.replace (every field, including ones added later, reaches the rehearsal
and the real run alike).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .. import progress as progress_
from ..dburl import DatabaseUrl
from ..errors import (
    FailedMigrationsPresent,
    LintBlocked,
    NotManaged,
    PgrunbookError,
    RehearsalFailed,
    UsageError,
)
from ..settings import Settings
from . import history
from .files import Migration, read_migrations
from .lint import LintReport, lint_migrations
from .rehearse import RehearsalReport, describe_failure, rehearse, require_backup
from .runner import (
    BASELINE_ALL,
    ApplyOptions,
    DeployResult,
    deploy,
    failed_message,
    not_managed_message,
    open_connection,
    read_status,
)
from .status import StatusReport, compute_status

if TYPE_CHECKING:
    from ..backup import BackupResult

__all__ = ["LintBlocked", "MigrateOptions", "MigrateReport", "RehearsalFailed", "apply_options", "apply_pending",
           "check_history", "final_status", "lint_gate", "lint_summary", "pre_migration_backup", "preflight",
           "run_migrate"]

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
    from ..backup_index import latest_backup

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


@dataclass
class HistoryCheck:
    """What step 1 found: the status before anything ran, the pending migrations, the server's major version."""

    status: StatusReport
    pending: list[Migration]
    server_major: int


def check_history(url: DatabaseUrl, migrations: list[Migration], migrations_dir: str, *,
                  baseline: str | None = None, schema: str = history.DEFAULT_SCHEMA) -> HistoryCheck:
    """Step 1: refuse an unmanaged database (P3005, unless `baseline`), a baseline on a managed one, a
    failed migration (P3009); return what is pending."""
    with open_connection(url) as conn:
        status = compute_status(conn, migrations, database=url.display(), migrations_dir=migrations_dir,
                                schema=schema)
        server_major = conn.info.server_version // 10000
    if not status.managed and status.schema_objects and baseline is None:
        raise NotManaged(not_managed_message(status.schema_objects, schema, migrations))
    if status.managed and baseline is not None:
        raise UsageError("--baseline is for a database without _prisma_migrations; this one is already managed "
                         "(use `pgrunbook migrate resolve --applied NAME` for a single migration)")
    if status.failed:
        raise FailedMigrationsPresent(failed_message(status.failed))
    if status.managed:
        pending_names = set(status.pending)
        pending = [m for m in migrations if m.name in pending_names]
    elif baseline == BASELINE_ALL:
        pending = []
    elif baseline is not None:
        names = [m.name for m in migrations]
        if baseline not in names:
            raise UsageError(f"--baseline {baseline}: no such migration in {migrations_dir}")
        pending = migrations[names.index(baseline) + 1:]
    else:
        pending = list(migrations)
    return HistoryCheck(status=status, pending=pending, server_major=server_major)


def lint_gate(pending: list[Migration], mode: str, server_major: int, squawk: str | None = None) -> LintReport:
    """Step 3: the lint gate on the pending migrations (`.blocked` in strict mode on an error finding);
    `squawk`: Settings.squawk."""
    return lint_migrations(pending, mode, server_major=server_major, squawk=squawk)


def lint_summary(report: LintReport) -> str:
    """The gate's verdict in one line: the first blocking finding with its fix."""
    if not report.errors:
        return "no blocking finding"
    first = report.errors[0]
    return f"{first.migration}:{first.line} {first.rule}: {first.message}. Fix: {first.fix}"


def pre_migration_backup(database_url: str | None, dest: str, *, app_version: str | None, settings: Settings,
                         jobs: int | None = None, progress: progress_.Progress | None = None) -> BackupResult:
    """Step 5: a backup of kind pre-migration (the app version in its manifest)."""
    from ..backup import BackupOptions, run_backup

    return run_backup(BackupOptions(database_url=database_url, dest=dest, kind="pre-migration",
                                    app_version=app_version, jobs=jobs), settings, progress=progress)


def apply_options(opts: MigrateOptions) -> ApplyOptions:
    """The options of the real run and of the rehearsal: the command's, with its --baseline."""
    return replace(opts.apply, baseline=opts.baseline)


def apply_pending(url: DatabaseUrl, migrations: list[Migration], migrations_dir: str,
                  options: ApplyOptions, progress: progress_.Progress | None = None) -> DeployResult:
    """Step 6: take Prisma's advisory lock and apply what is pending (runner.deploy); `progress` shows
    "migrations", applied of pending."""
    if progress is None:
        return deploy(url, migrations, migrations_dir, options)
    with progress_.phase(progress, "migrations", None, "migrations") as shown:
        return deploy(url, migrations, migrations_dir, options, on_applied=progress_.counted_callback(shown))


def final_status(url: DatabaseUrl, migrations: list[Migration], migrations_dir: str,
                 schema: str = history.DEFAULT_SCHEMA) -> StatusReport:
    """Step 7: the status with `migrate-status`'s semantics (up to date or not)."""
    return read_status(url, migrations, migrations_dir, schema)


def run_migrate(opts: MigrateOptions, settings: Settings, progress: progress_.Progress | None = None) -> MigrateReport:
    """The whole procedure; raises a PgrunbookError subclass on a failure (after logging what was done).
    `progress`: the reporter the shell chose (default: log lines every Settings.progress_seconds)."""
    reporter = progress_.default(progress, settings.progress_seconds)
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
    apply = apply_options(opts)

    def done(outcome: str) -> MigrateReport:
        report.outcome = outcome
        report.seconds = time.monotonic() - t0
        return report

    # 1. history first: cheap refusals before any backup or lock
    checked = check_history(url, migrations, opts.migrations_dir, baseline=opts.baseline, schema=apply.schema)
    before = checked.status
    report.pending = [m.name for m in checked.pending]

    # 2. pre-flight
    report.preflight = preflight(dest, url.dbname, settings)
    if not report.preflight["ok"]:
        log.warning("pre-flight: " + report.preflight["message"])

    if not checked.pending and before.managed:
        report.status = before
        return done("up-to-date")

    # 3. lint gate
    report.lint = lint_gate(checked.pending, opts.lint, checked.server_major, settings.squawk)
    if report.lint.blocked:
        done("blocked")
        raise LintBlocked(f"lint gate (strict) blocked {len(report.lint.errors)} finding(s) in the pending "
                          f"migrations; first: {lint_summary(report.lint)}", report)

    # 4. rehearsal
    if opts.rehearse or opts.require_rehearsal:
        from ..backup_index import latest_backup

        backup = opts.rehearse_from
        if not backup:
            latest = latest_backup(dest, database=url.dbname, settings=settings)
            backup = require_backup(latest.archive if latest else None)
        report.rehearsal = rehearse(migrations, opts.migrations_dir, backup=backup, provisioner=opts.rehearse_on,
                                    server_url=opts.rehearse_server, apply_options=apply, settings=settings)
        if not report.rehearsal.ok:
            done("rehearsal-failed")
            raise RehearsalFailed(describe_failure(report.rehearsal) + " (production was not touched)", report)
        if opts.rehearse:
            report.status = before
            return done("rehearsed")

    # 5. pre-migration backup
    if opts.skip_backup:
        report.backup_skipped = (opts.reason or "").strip()
        log.warning("pre-migration backup skipped", extra={"reason": report.backup_skipped})
    else:
        report.backup = pre_migration_backup(opts.database_url or settings.database_url, dest,
                                             app_version=opts.app_version, settings=settings,
                                             progress=reporter).to_dict()

    # 6. lock + apply, 7. status
    report.deploy = apply_pending(url, migrations, opts.migrations_dir, apply, reporter)
    report.status = report.deploy.status
    return done("applied")
