"""Migration status with Prisma's exit semantics.

Exit 0 only when the database is managed (has `_prisma_migrations`), nothing is pending and
nothing has failed. Unlike `prisma migrate status` we also fail (exit 1) when a migration
applied in the database is missing from the local folder: deploying from a stale checkout
is exactly the accident this catches. An applied migration whose local file changed since
(checksum differs) is a warning, as in Prisma.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import history
from .files import Migration, checksum_matches
from .history import HistoryRow


@dataclass
class StatusReport:
    database: str
    migrations_dir: str
    managed: bool
    local: list[str]
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[HistoryRow] = field(default_factory=list)
    missing_locally: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    schema_objects: list[str] = field(default_factory=list)  # when not managed: what is there

    @property
    def up_to_date(self) -> bool:
        return self.managed and not self.pending and not self.failed and not self.missing_locally

    @property
    def state(self) -> str:
        if not self.managed:
            return "not-managed" if self.schema_objects or not self.local else "pending"
        if self.failed:
            return "failed"
        if self.missing_locally:
            return "missing-locally"
        if self.pending:
            return "pending"
        return "up-to-date"

    @property
    def exit_code(self) -> int:
        return 0 if self.up_to_date else 1

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "migrations_dir": self.migrations_dir, "state": self.state,
                "up_to_date": self.up_to_date, "managed": self.managed, "local": self.local,
                "applied": self.applied, "pending": self.pending,
                "failed": [{"name": r.migration_name, "started_at": r.started_at.isoformat(), "logs": r.logs}
                           for r in self.failed],
                "missing_locally": self.missing_locally, "edited": self.edited,
                "schema_objects": self.schema_objects, "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        return [f"migration {name} was edited after it was applied (its checksum differs from the one recorded "
                "in _prisma_migrations); the database has the old version" for name in self.edited]

    def text(self) -> str:
        lines = [f"{len(self.local)} migration{'s' if len(self.local) != 1 else ''} found in {self.migrations_dir}",
                 f"database {self.database}"]
        if not self.managed:
            if self.schema_objects:
                first = self.local[0] if self.local else "<name>"
                lines.append("The database is not managed by migrations: it has tables ("
                             + ", ".join(self.schema_objects) + ") but no _prisma_migrations table. "
                             "Baseline it: pgrunbook migrate --baseline, or "
                             f"pgrunbook migrate resolve --applied {first}")
            elif self.local:
                lines.append("The database is empty (no _prisma_migrations table yet). Not yet applied:")
                lines += [f"  {n}" for n in self.local]
            else:
                lines.append("The database is not managed by migrations and there are no local migrations.")
            return "\n".join(lines)
        for row in self.failed:
            first_log = (row.logs or "no logs").strip().splitlines()[0] if (row.logs or "").strip() else "no logs"
            lines.append(f"FAILED   {row.migration_name} (started {row.started_at.isoformat(timespec='seconds')}): "
                         f"{first_log}")
        if self.failed:
            name = self.failed[0].migration_name
            lines.append(f"  resolve it: pgrunbook migrate resolve --rolled-back {name}  (you reverted it)  or  "
                         f"--applied {name}  (you completed it by hand)")
        lines += [f"PENDING  {n}" for n in self.pending]
        lines += [f"MISSING  {n} (applied in the database, not in {self.migrations_dir})" for n in self.missing_locally]
        lines += [f"WARNING  {w}" for w in self.warnings()]
        lines.append("Database schema is up to date!" if self.up_to_date else f"state: {self.state}")
        return "\n".join(lines)


def compute_status(conn: psycopg.Connection[Any], migrations: list[Migration], *, database: str,
                   migrations_dir: str, schema: str = history.DEFAULT_SCHEMA) -> StatusReport:
    names = [m.name for m in migrations]
    if not history.table_exists(conn, schema):
        return StatusReport(database=database, migrations_dir=migrations_dir, managed=False, local=names,
                            schema_objects=history.schema_objects(conn, schema))
    rows = history.list_rows(conn, schema)
    return status_from_rows(rows, migrations, database=database, migrations_dir=migrations_dir)


def status_from_rows(rows: list[HistoryRow], migrations: list[Migration], *, database: str,
                     migrations_dir: str) -> StatusReport:
    names = [m.name for m in migrations]
    by_name = {m.name: m for m in migrations}
    live = [r for r in rows if r.rolled_back_at is None]
    applied_rows = [r for r in live if r.finished_at is not None]
    report = StatusReport(database=database, migrations_dir=migrations_dir, managed=True, local=names)
    report.applied = [r.migration_name for r in applied_rows]
    report.failed = [r for r in live if r.finished_at is None]
    recorded = {r.migration_name for r in live}
    report.pending = [n for n in names if n not in recorded]
    report.missing_locally = list(dict.fromkeys(
        r.migration_name for r in applied_rows if r.migration_name not in by_name))
    report.edited = list(dict.fromkeys(
        r.migration_name for r in applied_rows
        if r.migration_name in by_name and not checksum_matches(by_name[r.migration_name].data, r.checksum)))
    return report
