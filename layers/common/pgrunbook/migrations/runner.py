"""Apply pending migrations the way `prisma migrate deploy` does, with the runbook's guarantees.

Per migration: insert its `_prisma_migrations` row (committed, so a crash leaves a visible
failed row), run the script, then set `applied_steps_count = 1` and `finished_at`. A script
runs in ONE transaction together with that final update (so "finished" and "applied" can never
disagree), unless a statement cannot run in a transaction (CREATE INDEX CONCURRENTLY, ...) or
the script manages its own transactions: then it runs statement by statement, autocommit.
Every migration gets `lock_timeout` and `statement_timeout`, so a DDL statement never waits in
the lock queue behind a long transaction while blocking the application behind it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..errors import FailedMigrationsPresent, MigrationFailed, NotManaged, ResolveRefused, UsageError
from . import history
from .files import Migration, Statement
from .lock import DEFAULT_STALE_SECONDS, DEFAULT_WAIT_SECONDS, migration_lock
from .status import StatusReport, compute_status

log = logging.getLogger(__name__)

APPLICATION = "pgrunbook migrate"
DEFAULT_LOCK_TIMEOUT = "5s"
DEFAULT_STATEMENT_TIMEOUT = "30min"
BASELINE_ALL = "*"


@dataclass(frozen=True)
class ApplyOptions:
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT  # SET lock_timeout for every migration ("0" = none)
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT
    wait_for_lock: float = DEFAULT_WAIT_SECONDS  # how long to wait for another migrator
    stale_lock_after: float = DEFAULT_STALE_SECONDS  # an idle holder this old is reported as leaked
    baseline: str | None = None  # "*" = every local migration, or up to and including this name
    schema: str = history.DEFAULT_SCHEMA
    # called with (migration name, phase, connection) for phase "start", "before-commit" (inside the
    # migration's transaction, after its last statement; transaction mode only) and "end" (rehearsal)
    observer: Callable[[str, str, psycopg.Connection[Any]], None] | None = None


@dataclass
class AppliedMigration:
    name: str
    seconds: float
    statements: int
    mode: str  # transaction | no-transaction
    checksum: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": round(self.seconds, 3), "statements": self.statements,
                "mode": self.mode, "checksum": self.checksum}


@dataclass
class DeployResult:
    applied: list[AppliedMigration]
    baselined: list[str]
    status: StatusReport
    seconds: float
    lock_wait_seconds: float
    created_table: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [a.to_dict() for a in self.applied], "baselined": self.baselined,
                "created_table": self.created_table, "seconds": round(self.seconds, 3),
                "lock_wait_seconds": round(self.lock_wait_seconds, 3), "status": self.status.to_dict(),
                "notes": self.notes}


CLIENT_CHECK_INTERVAL = "2s"


def open_connection(url: DatabaseUrl) -> psycopg.Connection[Any]:
    conn = dbinfo.connect(url, autocommit=True, application=APPLICATION)
    conn.prepare_threshold = None  # utility statements (SET, DDL) cannot be prepared
    # if this process dies mid-migration, the server notices within seconds (even during a long
    # statement), rolls back and releases the migration lock instead of holding it for a dead client
    with contextlib.suppress(psycopg.Error):  # PostgreSQL 14+
        conn.execute("SELECT set_config('client_connection_check_interval', %s, false)", (CLIENT_CHECK_INTERVAL,))
    return conn


def read_status(url: DatabaseUrl, migrations: list[Migration], migrations_dir: str,
                schema: str = history.DEFAULT_SCHEMA) -> StatusReport:
    with open_connection(url) as conn:
        return compute_status(conn, migrations, database=url.display(), migrations_dir=migrations_dir, schema=schema)


def deploy(url: DatabaseUrl, migrations: list[Migration], migrations_dir: str,
           options: ApplyOptions | None = None,
           on_applied: Callable[[int, int, str], None] | None = None) -> DeployResult:
    """Take the lock, refuse on an unmanaged or failed history, apply what is pending; `on_applied(done, total,
    name)` after each migration applied (progress)."""
    opts = options or ApplyOptions()
    started = time.monotonic()
    with open_connection(url) as conn:
        lock_started = time.monotonic()
        with migration_lock(conn, wait_seconds=opts.wait_for_lock, stale_after=opts.stale_lock_after):
            lock_wait = time.monotonic() - lock_started
            created, baselined = _initialize(conn, migrations, opts)
            rows = history.list_rows(conn, opts.schema)
            failed = [r for r in rows if r.failed]
            if failed:
                raise FailedMigrationsPresent(failed_message(failed))
            recorded = {r.migration_name for r in rows if r.rolled_back_at is None}
            pending = [m for m in migrations if m.name not in recorded]
            applied: list[AppliedMigration] = []
            for migration in pending:
                applied.append(apply_one(conn, migration, opts))
                if on_applied is not None:
                    on_applied(len(applied), len(pending), migration.name)
            status = compute_status(conn, migrations, database=url.display(), migrations_dir=migrations_dir,
                                    schema=opts.schema)
    result = DeployResult(applied=applied, baselined=baselined, status=status, seconds=time.monotonic() - started,
                          lock_wait_seconds=lock_wait, created_table=created)
    if status.missing_locally:
        result.notes.append("applied in the database but missing locally: " + ", ".join(status.missing_locally))
    result.notes += status.warnings()
    return result


def _initialize(conn: psycopg.Connection[Any], migrations: list[Migration],
                opts: ApplyOptions) -> tuple[bool, list[str]]:
    """Create _prisma_migrations on an empty database; refuse a non-empty unmanaged one unless
    baselining (then the local migrations up to the baseline are recorded as applied, unrun)."""
    if history.table_exists(conn, opts.schema):
        if opts.baseline is not None:
            raise UsageError("--baseline is for a database without _prisma_migrations; this one is already "
                             "managed (use `pgrunbook migrate resolve --applied NAME` for a single migration)")
        return False, []
    objects = history.schema_objects(conn, opts.schema)
    if objects and opts.baseline is None:
        raise NotManaged(not_managed_message(objects, opts.schema, migrations))
    baselined: list[str] = []
    with conn.transaction():
        history.create_table(conn, opts.schema)
        if opts.baseline is not None:
            names = [m.name for m in migrations]
            if opts.baseline != BASELINE_ALL and opts.baseline not in names:
                raise UsageError(f"--baseline {opts.baseline}: no such migration in the migrations folder")
            for m in migrations:
                history.mark_applied(conn, m.name, m.checksum, opts.schema)
                baselined.append(m.name)
                if m.name == opts.baseline:
                    break
    if baselined:
        log.info("baselined: recorded as applied without running them", extra={"migrations": len(baselined)})
    return True, baselined


def not_managed_message(objects: list[str], schema: str, migrations: list[Migration]) -> str:
    """Prisma's P3005, with the ways out."""
    first = migrations[0].name if migrations else "<name>"
    return (f"the database schema \"{schema}\" is not empty ({', '.join(objects)}) and has no _prisma_migrations "
            "table: it is not managed by migrations, and applying them could clash with what is there (Prisma's "
            f"P3005). If it already has the schema of the migrations, baseline it: `pgrunbook migrate --baseline` "
            f"(all local migrations) or `--baseline NAME`, or `pgrunbook migrate resolve --applied {first}`")


def failed_message(failed: list[history.HistoryRow]) -> str:
    """Prisma's P3009, naming each failed migration and how to resolve it."""
    parts = []
    for row in failed:
        logs = (row.logs or "").strip().splitlines()
        parts.append(f"{row.migration_name} (started {row.started_at.isoformat(timespec='seconds')})"
                     + (f": {logs[0]}" if logs else ""))
    name = failed[0].migration_name
    return ("found failed migrations in the database, new migrations will not be applied (Prisma's P3009): "
            + "; ".join(parts) + f". Check what the failed migration left behind, then `pgrunbook migrate resolve "
            f"--rolled-back {name}` (you reverted it; it will run again) or `--applied {name}` "
            "(you completed it by hand)")


def _set_timeouts(conn: psycopg.Connection[Any], opts: ApplyOptions, local: bool) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
                 (opts.lock_timeout, local, opts.statement_timeout, local))


def apply_one(conn: psycopg.Connection[Any], migration: Migration, opts: ApplyOptions) -> AppliedMigration:
    statements = migration.statements()
    mode = migration.run_mode()
    log.info("applying migration", extra={"migration": migration.name, "mode": mode,
                                          "statements": len(statements)})
    row_id = history.record_started(conn, migration.name, migration.checksum, opts.schema)
    if opts.observer:
        opts.observer(migration.name, "start", conn)
    t0 = time.monotonic()
    current: Statement | None = None
    done = 0
    try:
        if mode == "transaction":
            with conn.transaction():
                _set_timeouts(conn, opts, local=True)
                for current in statements:
                    conn.execute(current.sql)
                    done += 1
                current = None
                if opts.observer:
                    opts.observer(migration.name, "before-commit", conn)
                history.record_finished(conn, row_id, opts.schema)
        else:
            _set_timeouts(conn, opts, local=False)
            try:
                for current in statements:
                    conn.execute(current.sql)
                    done += 1
                current = None
                history.record_finished(conn, row_id, opts.schema)
            finally:
                if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("RESET lock_timeout; RESET statement_timeout")
    except psycopg.Error as exc:
        message = _failure_text(migration, current, exc, mode, done, opts)
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            history.record_failed(conn, row_id, message, opts.schema)
        raise MigrationFailed(message.splitlines()[0], migration.name, current) from None
    finally:
        if opts.observer:
            opts.observer(migration.name, "end", conn)
    seconds = time.monotonic() - t0
    log.info("migration applied", extra={"migration": migration.name, "seconds": round(seconds, 3)})
    return AppliedMigration(name=migration.name, seconds=seconds, statements=len(statements), mode=mode,
                            checksum=migration.checksum)


def _failure_text(migration: Migration, stmt: Statement | None, exc: psycopg.Error, mode: str, done: int,
                  opts: ApplyOptions) -> str:
    diag = exc.diag
    code = exc.sqlstate or "?"
    primary = diag.message_primary or str(exc).strip().splitlines()[0]
    where = f"statement {stmt.index} (line {stmt.line}: {stmt.short(80)})" if stmt else "recording its completion"
    if mode == "transaction":
        effect = "nothing of it was applied (it ran in one transaction)"
    else:
        effect = (f"it ran outside a transaction: {done} statement{'s' if done != 1 else ''} before the failing one "
                  "stayed applied (a failed CREATE INDEX CONCURRENTLY leaves an INVALID index to drop)")
    hint = ""
    if code == "55P03":
        hint = (f" lock_timeout={opts.lock_timeout} expired: a long transaction holds a conflicting lock; "
                "the migration gave up instead of blocking the application behind it; retry when it is gone.")
    elif code == "57014":
        hint = f" statement_timeout={opts.statement_timeout} expired."
    lines = [f"migration {migration.name} failed at {where}: {code} {primary};{hint} {effect}. "
             f"The migration is recorded as failed; after fixing, run `pgrunbook migrate resolve --rolled-back "
             f"{migration.name}` (or --applied if you completed it by hand)"]
    if diag.message_detail:
        lines.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        lines.append(f"HINT: {diag.message_hint}")
    if stmt is not None:
        lines.append(f"Statement:\n{stmt.sql}")
    return "\n".join(lines)


# --- resolve --------------------------------------------------------------------------------

@dataclass
class ResolveResult:
    action: str  # applied | rolled-back
    migration: str
    rows: list[str]  # ids touched

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "migration": self.migration, "rows": self.rows}


def resolve(url: DatabaseUrl, migrations: list[Migration], *, applied: str | None = None,
            rolled_back: str | None = None, options: ApplyOptions | None = None) -> ResolveResult:
    """`prisma migrate resolve --applied NAME | --rolled-back NAME`, same rules and rows."""
    opts = options or ApplyOptions()
    if (applied is None) == (rolled_back is None):
        raise UsageError("give exactly one of --applied NAME or --rolled-back NAME")
    with open_connection(url) as conn, migration_lock(conn, wait_seconds=opts.wait_for_lock,
                                                      stale_after=opts.stale_lock_after):
        if applied is not None:
            local = {m.name: m for m in migrations}
            if applied not in local:
                raise UsageError(f"migration {applied} is not in the migrations folder (Prisma's P3017)")
            with conn.transaction():
                if not history.table_exists(conn, opts.schema):
                    history.create_table(conn, opts.schema)  # baselining an unmanaged database
                rows = [r for r in history.list_rows(conn, opts.schema) if r.migration_name == applied]
                if any(r.finished_at is not None and r.rolled_back_at is None for r in rows):
                    raise ResolveRefused(f"migration {applied} is already recorded as applied in the database "
                                         "(Prisma's P3008)")
                touched = []
                for r in rows:
                    if r.failed:
                        history.mark_rolled_back(conn, r.id, opts.schema)
                        touched.append(r.id)
                touched.append(history.mark_applied(conn, applied, local[applied].checksum, opts.schema))
            return ResolveResult("applied", applied, touched)
        assert rolled_back is not None
        if not history.table_exists(conn, opts.schema):
            raise ResolveRefused("the database has no _prisma_migrations table: nothing to roll back")
        with conn.transaction():
            rows = [r for r in history.list_rows(conn, opts.schema) if r.migration_name == rolled_back]
            if not rows:
                raise ResolveRefused(f"migration {rolled_back} cannot be rolled back: it was never applied to "
                                     "the database (Prisma's P3011)")
            failed = [r for r in rows if r.failed]
            if not failed:
                raise ResolveRefused(f"migration {rolled_back} cannot be rolled back: it is not in a failed state "
                                     "(Prisma's P3012)")
            for r in failed:
                history.mark_rolled_back(conn, r.id, opts.schema)
        return ResolveResult("rolled-back", rolled_back, [r.id for r in failed])
