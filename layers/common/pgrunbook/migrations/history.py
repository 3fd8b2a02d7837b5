"""The `_prisma_migrations` table, kept exactly as Prisma keeps it.

Prisma's schema engine (6.x) creates it with the DDL below, inserts a row when a migration
starts (uuid id, checksum, migration_name, started_at), then bumps `applied_steps_count` and
sets `finished_at` when the script succeeded, or writes the error into `logs` (leaving
`finished_at` NULL) when it failed. A row with neither `finished_at` nor `rolled_back_at` is a
failed migration and blocks further deploys (P3009) until `migrate resolve`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

TABLE = "_prisma_migrations"
DEFAULT_SCHEMA = "public"

CREATE_TABLE = """CREATE TABLE {table} (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)"""


@dataclass(frozen=True)
class HistoryRow:
    id: str
    checksum: str
    finished_at: datetime | None
    migration_name: str
    logs: str | None
    rolled_back_at: datetime | None
    started_at: datetime
    applied_steps_count: int

    @property
    def failed(self) -> bool:
        return self.finished_at is None and self.rolled_back_at is None

    @property
    def applied(self) -> bool:
        return self.finished_at is not None and self.rolled_back_at is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "migration_name": self.migration_name, "checksum": self.checksum,
                "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "rolled_back_at": self.rolled_back_at.isoformat() if self.rolled_back_at else None,
                "applied_steps_count": self.applied_steps_count, "logs": self.logs}


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}").format(sql.Identifier(schema, TABLE))


def table_exists(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                       (sql.Identifier(schema, TABLE).as_string(conn),)).fetchone()
    return bool(row and row[0])


def schema_objects(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA, limit: int = 5) -> list[str]:
    """Tables, views, sequences and types in the schema (what makes Prisma call it not empty)."""
    rows = conn.execute("""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        UNION ALL
        SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = %(s)s AND t.typtype IN ('e', 'd')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                          AND d.objid = t.oid AND d.deptype = 'e')
        ORDER BY 1 LIMIT %(n)s""", {"s": schema, "n": limit}).fetchall()
    return [str(r[0]) for r in rows]


def create_table(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(CREATE_TABLE).format(table=_table(schema)))


def list_rows(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> list[HistoryRow]:
    """Rows in Prisma's order (started_at)."""
    rows = conn.execute(sql.SQL(
        "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count "
        "FROM {} ORDER BY started_at ASC").format(_table(schema))).fetchall()
    return [HistoryRow(*r) for r in rows]


def record_started(conn: psycopg.Connection[Any], name: str, checksum: str, schema: str = DEFAULT_SCHEMA) -> str:
    row_id = str(uuid.uuid4())
    conn.execute(sql.SQL("INSERT INTO {} (id, checksum, started_at, migration_name) "
                         "VALUES (%s, %s, clock_timestamp(), %s)").format(_table(schema)),
                 (row_id, checksum, name))
    return row_id


def record_finished(conn: psycopg.Connection[Any], row_id: str, schema: str = DEFAULT_SCHEMA) -> None:
    conn.execute(sql.SQL("UPDATE {} SET applied_steps_count = applied_steps_count + 1, "
                         "finished_at = clock_timestamp() WHERE id = %s").format(_table(schema)), (row_id,))


def record_failed(conn: psycopg.Connection[Any], row_id: str, logs: str, schema: str = DEFAULT_SCHEMA) -> None:
    conn.execute(sql.SQL("UPDATE {} SET logs = %s WHERE id = %s").format(_table(schema)), (logs, row_id))


def mark_applied(conn: psycopg.Connection[Any], name: str, checksum: str, schema: str = DEFAULT_SCHEMA) -> str:
    """What `prisma migrate resolve --applied` writes: a finished row with applied_steps_count 0."""
    row_id = str(uuid.uuid4())
    conn.execute(sql.SQL("INSERT INTO {} (id, checksum, started_at, finished_at, migration_name, applied_steps_count) "
                         "VALUES (%s, %s, clock_timestamp(), clock_timestamp(), %s, 0)").format(_table(schema)),
                 (row_id, checksum, name))
    return row_id


def mark_rolled_back(conn: psycopg.Connection[Any], row_id: str, schema: str = DEFAULT_SCHEMA) -> None:
    conn.execute(sql.SQL("UPDATE {} SET rolled_back_at = now() WHERE id = %s").format(_table(schema)), (row_id,))
