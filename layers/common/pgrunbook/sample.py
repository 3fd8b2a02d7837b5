"""A sample application database shaped like the runbook's: Prisma-managed tables "User",
"Job", "SecurityEvent" and a `_prisma_migrations` table. Used by `make demo` and tests."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg

from .catalog import connect
from .dburl import DatabaseUrl

PRISMA_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)"""

SAMPLE_MIGRATIONS = {
    "20260101000000_init": """
CREATE TABLE "User" (
    "id" SERIAL PRIMARY KEY,
    "email" TEXT NOT NULL UNIQUE,
    "name" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE "Job" (
    "id" SERIAL PRIMARY KEY,
    "userId" INTEGER NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "title" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'open',
    "payload" JSONB
);
""",
    "20260115000000_security_events": """
CREATE TABLE "SecurityEvent" (
    "id" BIGSERIAL PRIMARY KEY,
    "userId" INTEGER REFERENCES "User"("id"),
    "kind" TEXT NOT NULL,
    "at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "detail" TEXT
);
CREATE INDEX "SecurityEvent_userId_idx" ON "SecurityEvent"("userId");
""",
}


def create_sample_database(server_url: str, dbname: str, *, users: int = 500, jobs_per_user: int = 4,
                           events: int = 5000) -> str:
    """Create `dbname` on the server and fill it; returns the database URL (with password)."""
    server = DatabaseUrl.parse(server_url)
    with connect(server, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    target = server.with_dbname(dbname)
    with connect(target, autocommit=False) as conn:
        conn.execute(PRISMA_TABLE_DDL)
        for name, script in SAMPLE_MIGRATIONS.items():
            conn.execute(script)
            record_prisma_migration(conn, name, script)
        conn.execute("""INSERT INTO "User"(email, name)
                        SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, %s) g""",
                     (users,))
        conn.execute("""INSERT INTO "Job"("userId", title, payload)
                        SELECT u.id, 'job ' || g, jsonb_build_object('n', g)
                        FROM "User" u CROSS JOIN generate_series(1, %s) g""", (jobs_per_user,))
        conn.execute("""INSERT INTO "SecurityEvent"("userId", kind, detail)
                        SELECT 1 + (g %% %s), 'sign-in', 'from 10.0.0.' || (g %% 255) FROM generate_series(1, %s) g""",
                     (users, events))
        conn.commit()
    dsn = dict(target.connect_kwargs())
    password = dsn.pop("password", "")
    user = dsn.get("user", "")
    return f"postgresql://{user}:{password}@{target.host}:{target.port}/{dbname}"


def record_prisma_migration(conn: psycopg.Connection[Any], name: str, script: str) -> None:
    conn.execute(
        """INSERT INTO "_prisma_migrations"(id, checksum, finished_at, migration_name, started_at, applied_steps_count)
           VALUES (%s, %s, now(), %s, now(), 1)""",
        (str(uuid.uuid4()), hashlib.sha256(script.encode()).hexdigest(), name))
