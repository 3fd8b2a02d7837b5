"""A sample application database shaped like the runbook's: Prisma-managed tables "User",
"Job", "SecurityEvent" and a `_prisma_migrations` table. Used by `make demo` and tests."""

from __future__ import annotations

from pathlib import Path

import psycopg

from .dbinfo import connect
from .dburl import DatabaseUrl
from .migrations import history
from .migrations.files import checksum


def demo_migrations() -> Path:
    """The demo's Prisma migrations folder (package data: it ships with the wheel)."""
    return Path(__file__).resolve().parent / "demo_data" / "prisma" / "migrations"


# The sample database's history: the demo's first two migrations, read from their files (the demo's third,
# an expand migration, is what `pgrunbook demo` then applies).
SAMPLE_MIGRATIONS = {name: (demo_migrations() / name / "migration.sql").read_text(encoding="utf-8")
                     for name in ("20260101000000_init", "20260115000000_security_events")}


def create_sample_database(server_url: str, dbname: str, *, users: int = 500, jobs_per_user: int = 4,
                           events: int = 5000) -> str:
    """Create `dbname` on the server and fill it; returns the database URL (with password)."""
    server = DatabaseUrl.parse(server_url)
    with connect(server, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    target = server.with_dbname(dbname)
    with connect(target, autocommit=False) as conn:
        # recorded exactly as `pgrunbook migrate` (and Prisma) would have
        history.create_table(conn)
        for name, script in SAMPLE_MIGRATIONS.items():
            row_id = history.record_started(conn, name, checksum(script.encode()))
            conn.execute(script)
            history.record_finished(conn, row_id)
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

