"""Rehearsal: restore the latest backup into a fresh target (the drill machinery: a provisioner
and run_restore), apply the pending migrations there, and report per migration how long it
took and which locks it held.

Locks are observed two ways: inside each transactional migration, just before its commit, the
migrator's own pg_locks rows (every lock it took is held until commit, so this list is
complete); and a sampler on a second connection that polls pg_locks for the migrator's pid
every 20 ms (catches statement-level locks of CONCURRENTLY migrations and how long they lasted).

The target is held with drill.provisioned_target (always torn down, also on SIGTERM/SIGINT); the
migrations run with the caller's ApplyOptions (dataclasses.replace adds only the lock observer), so
a rehearsal applies exactly as the real run will (timeouts, baseline, schema).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from .. import dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import BackupNotFound, MigrationFailed, PgrunbookError, UsageError
from ..settings import Settings
from .files import Migration
from .runner import ApplyOptions, DeployResult, deploy

log = logging.getLogger(__name__)

# strongest first: what blocks the application most
LOCK_MODES = ("AccessExclusiveLock", "ExclusiveLock", "ShareRowExclusiveLock", "ShareLock",
              "ShareUpdateExclusiveLock", "RowExclusiveLock", "RowShareLock", "AccessShareLock")
BLOCKS = {
    "AccessExclusiveLock": "blocks reads and writes",
    "ExclusiveLock": "blocks writes (reads go on)",
    "ShareRowExclusiveLock": "blocks writes",
    "ShareLock": "blocks writes",
    "ShareUpdateExclusiveLock": "blocks other DDL and VACUUM only",
    "RowExclusiveLock": "blocks DDL only",
    "RowShareLock": "blocks DDL only",
    "AccessShareLock": "blocks DROP/rewrites only",
}

_LOCKS_SQL = """
    SELECT coalesce(c.relname, l.locktype), coalesce(n.nspname, ''), l.mode, c.relkind::text
    FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.pid = %s AND l.granted AND l.locktype = 'relation' AND c.relkind IN ('r', 'p', 'm', 'v', 'f')
      AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


@dataclass
class LockSeen:
    relation: str
    mode: str
    seconds: float  # how long it was seen held (at least)
    blocks: str

    def to_dict(self) -> dict[str, Any]:
        return {"relation": self.relation, "mode": self.mode, "held_seconds": round(self.seconds, 3),
                "blocks": self.blocks}


@dataclass
class RehearsedMigration:
    name: str
    seconds: float = 0.0
    mode: str = ""
    ok: bool = True
    error: str | None = None
    locks: list[LockSeen] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": round(self.seconds, 3), "mode": self.mode, "ok": self.ok,
                "error": self.error, "locks": [lk.to_dict() for lk in self.locks]}


@dataclass
class RehearsalReport:
    backup: str = ""
    target: dict[str, Any] = field(default_factory=dict)
    restore_seconds: float = 0.0
    migrations: list[RehearsedMigration] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(m.ok for m in self.migrations)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "backup": self.backup, "target": self.target,
                "restore_seconds": round(self.restore_seconds, 3), "seconds": round(self.seconds, 3),
                "migrations": [m.to_dict() for m in self.migrations], "error": self.error}

    def text(self) -> str:
        lines = [f"rehearsal {'PASSED' if self.ok else 'FAILED'} on a restored copy of {self.backup or '?'} "
                 f"(restore {self.restore_seconds:.1f}s, total {self.seconds:.1f}s)"]
        for m in self.migrations:
            lines.append(f"  {m.name}: {'ok' if m.ok else 'FAILED'} in {m.seconds:.2f}s ({m.mode})"
                         + (f": {m.error}" if m.error else ""))
            for lk in m.locks:
                lines.append(f"      {lk.mode:<25} {lk.relation:<40} held {lk.seconds:.2f}s  ({lk.blocks})")
        if self.error and not any(m.error for m in self.migrations):
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


class _LockObserver:
    """Collects the locks of the migrating session: exact before commit, sampled meanwhile."""

    def __init__(self, url: DatabaseUrl, interval: float = 0.02) -> None:
        self.url = url
        self.interval = interval
        self.current: str | None = None
        self.pid: int | None = None
        self.started = 0.0
        self.seen: dict[str, dict[tuple[str, str], list[float]]] = {}  # name -> (rel, mode) -> [first, last]
        self.exact: dict[str, set[tuple[str, str]]] = {}
        self.durations: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, name: str, phase: str, conn: psycopg.Connection[Any]) -> None:
        if phase == "start":
            self.pid = conn.info.backend_pid
            self.current = name
            self.started = time.monotonic()
            self.seen.setdefault(name, {})
        elif phase == "before-commit":
            rows = conn.execute(_LOCKS_SQL, (conn.info.backend_pid,)).fetchall()
            self.exact[name] = {(_rel(r), str(r[2])) for r in rows if str(r[0]) != "_prisma_migrations"}
        elif phase == "end":
            self.durations[name] = time.monotonic() - self.started
            self.current = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rehearsal-lock-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with dbinfo.connect(self.url, autocommit=True, application="pgrunbook rehearsal sampler") as conn:
                conn.prepare_threshold = None
                while not self._stop.is_set():
                    name, pid = self.current, self.pid
                    if name is not None and pid is not None:
                        now = time.monotonic()
                        for r in conn.execute(_LOCKS_SQL, (pid,)).fetchall():
                            if str(r[0]) == "_prisma_migrations":
                                continue
                            span = self.seen[name].setdefault((_rel(r), str(r[2])), [now, now])
                            span[1] = now
                    time.sleep(self.interval)
        except (psycopg.Error, PgrunbookError) as exc:
            log.warning("lock sampler stopped", extra={"error": mask_secrets(str(exc))})

    def locks_for(self, name: str, mode: str) -> list[LockSeen]:
        total = self.durations.get(name, 0.0)
        found: dict[tuple[str, str], float] = {}
        for key, (first, last) in self.seen.get(name, {}).items():
            found[key] = last - first
        for key in self.exact.get(name, set()):
            found[key] = total  # held from the statement that took it until commit: at most the whole migration
        out = [LockSeen(rel, lk, secs, BLOCKS.get(lk, "")) for (rel, lk), secs in found.items()]
        order = {m: i for i, m in enumerate(LOCK_MODES)}
        out.sort(key=lambda x: (order.get(x.mode, 99), x.relation))
        return out


def _rel(row: tuple[Any, ...]) -> str:
    schema, name = str(row[1]), str(row[0])
    return f"{schema}.{name}" if schema and schema != "public" else name


def rehearse(migrations: list[Migration], migrations_dir: str, *, backup: str,
             provisioner: str | None = None, server_url: str | None = None, work_dir: str | None = None,
             settings: Settings, apply_options: ApplyOptions | None = None) -> RehearsalReport:
    """Restore `backup` into a fresh target, apply the pending migrations there, report; always tear down."""
    from ..drill import provisioned_target
    from ..provision import get_provisioner, unique_name
    from ..restore import RestoreOptions, run_restore

    kind = provisioner or ("database" if server_url else "local-instance")
    prov = get_provisioner(kind, server_url=server_url, work_dir=work_dir, settings=settings)
    report = RehearsalReport(backup=backup)
    t_all = time.monotonic()
    try:
        with provisioned_target(prov, unique_name("pgrunbook_rehearsal"), [], what="rehearsal target") as target:
            report.target = target.to_dict()
            restored = run_restore(RestoreOptions(file=backup, target_url=target.url, force=True,
                                                  skip_missing_roles=True, analyze=True), settings)
            report.restore_seconds = restored.seconds
            _apply_observed(report, migrations, migrations_dir, DatabaseUrl.parse(target.url),
                            apply_options or ApplyOptions())
    except UsageError:
        raise
    except PgrunbookError as exc:
        report.error = str(exc)
    report.seconds = time.monotonic() - t_all
    return report


def _apply_observed(report: RehearsalReport, migrations: list[Migration], migrations_dir: str,
                    target_url: DatabaseUrl, base: ApplyOptions) -> None:
    observer = _LockObserver(target_url)
    opts = replace(base, observer=observer)
    observer.start()
    result: DeployResult | None = None
    try:
        result = deploy(target_url, migrations, migrations_dir, opts)
    except MigrationFailed as exc:
        report.error = str(exc)
        by_name = {m.name: m for m in migrations}
        for name, seconds in observer.durations.items():  # the ones that went through before it
            if name != exc.migration:
                report.migrations.append(RehearsedMigration(
                    name, seconds=seconds, mode=by_name[name].run_mode() if name in by_name else "",
                    locks=observer.locks_for(name, "")))
        report.migrations.append(RehearsedMigration(exc.migration, seconds=observer.durations.get(exc.migration, 0),
                                                    ok=False, error=str(exc),
                                                    locks=observer.locks_for(exc.migration, "")))
    finally:
        observer.stop()
    if result is not None:
        for applied in result.applied:
            report.migrations.append(RehearsedMigration(applied.name, seconds=applied.seconds, mode=applied.mode,
                                                        locks=observer.locks_for(applied.name, applied.mode)))


def describe_failure(report: RehearsalReport) -> str:
    failed = [m for m in report.migrations if not m.ok]
    if failed:
        return f"rehearsal failed: {failed[0].error}"
    return f"rehearsal failed: {report.error}"


def require_backup(latest: str | None) -> str:
    if not latest:
        raise BackupNotFound("--rehearse needs a backup to restore: none found (take one with `pgrunbook backup`, "
                             "or pass --rehearse-from URI)")
    return latest
