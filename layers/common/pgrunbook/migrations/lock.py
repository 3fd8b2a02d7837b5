"""The single-runner lock: session-level `pg_advisory_lock(72707369)`, the key Prisma Migrate
uses, so pgrunbook and `prisma migrate deploy` exclude each other.

We poll `pg_try_advisory_lock` until a wait limit, then fail with who holds it (pid, since when,
application, state). A holder that has sat idle for a long time is most likely a migrator that
died without closing its connection (the backend lives on behind a pooler or a half-open TCP
connection): the error says so and how to end it. A lock held by a prepared transaction has no
live session at all; that is reported with its gid.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..errors import LockBusy

log = logging.getLogger(__name__)

LOCK_KEY = 72707369  # Prisma Migrate's advisory lock key
DEFAULT_WAIT_SECONDS = 10.0  # Prisma waits 10 s (P1002)
DEFAULT_STALE_SECONDS = 300.0


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    application: str | None
    client: str | None
    state: str | None
    backend_start: datetime | None
    state_change: datetime | None
    query: str | None
    idle_seconds: float | None
    prepared_gid: str | None = None

    def describe(self, stale_after: float) -> str:
        if self.pid is None:
            gid = f" '{self.prepared_gid}'" if self.prepared_gid else ""
            return (f"the lock is held by a prepared transaction{gid} with no live session (leaked); "
                    f"end it with ROLLBACK PREPARED{gid or ' <gid>'}")
        since = self.backend_start.isoformat(timespec="seconds") if self.backend_start else "?"
        parts = [f"pid {self.pid}", f"since {since}"]
        if self.application:
            parts.append(f"application {self.application!r}")
        if self.client:
            parts.append(f"client {self.client}")
        if self.state:
            parts.append(f"state {self.state}")
        text = "another migrator is running (" + ", ".join(parts) + ")"
        if self.leaked(stale_after):
            text += (f"; it has been idle for {self.idle_seconds:.0f}s holding the lock: probably a migrator that died "
                     f"without closing its connection (a leaked lock). If no migration is running, end it with "
                     f"SELECT pg_terminate_backend({self.pid})")
        return text

    def leaked(self, stale_after: float) -> bool:
        return (self.state or "").startswith("idle") and (self.idle_seconds or 0.0) >= stale_after


def lock_holder(conn: psycopg.Connection[Any]) -> LockHolder | None:
    """Who holds the migration lock in this database (granted advisory lock on 72707369)."""
    row = conn.execute("""
        SELECT l.pid, a.application_name, host(a.client_addr), a.state, a.backend_start, a.state_change,
               left(a.query, 200), extract(epoch FROM clock_timestamp() - a.state_change)::float8,
               l.virtualtransaction
        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database
                                                                     WHERE datname = current_database())
          AND l.classid = (%(k)s::bigint >> 32)::oid AND l.objid = (%(k)s::bigint & 4294967295)::oid AND l.objsubid = 1
          AND l.pid IS DISTINCT FROM pg_backend_pid()
        LIMIT 1""", {"k": LOCK_KEY}).fetchone()
    if row is None:
        return None
    gid = None
    if row[0] is None:
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                                "ORDER BY prepared LIMIT 1").fetchone()
        gid = str(prepared[0]) if prepared else None
    return LockHolder(pid=row[0], application=row[1] or None, client=row[2], state=row[3], backend_start=row[4],
                      state_change=row[5], query=row[6], idle_seconds=row[7], prepared_gid=gid)


def try_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


@contextmanager
def migration_lock(conn: psycopg.Connection[Any], *, wait_seconds: float = DEFAULT_WAIT_SECONDS,
                   stale_after: float = DEFAULT_STALE_SECONDS, poll: float = 0.2) -> Iterator[None]:
    """Hold the session-level migration lock on `conn` (autocommit) for the block."""
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    announced = False
    while not try_lock(conn):
        holder = lock_holder(conn)
        if holder is not None and (holder.leaked(stale_after) or holder.pid is None):
            raise LockBusy(f"cannot take the migration lock (pg_advisory_lock({LOCK_KEY})): "
                           f"{holder.describe(stale_after)}")
        if time.monotonic() >= deadline:
            what = holder.describe(stale_after) if holder else "another session held it (it has just let go)"
            raise LockBusy(f"gave up waiting {wait_seconds:g}s for the migration lock "
                           f"(pg_advisory_lock({LOCK_KEY})): {what}")
        if not announced and holder is not None:
            log.warning("waiting for the migration lock", extra={"holder_pid": holder.pid,
                                                                 "wait_limit_s": wait_seconds})
            announced = True
        time.sleep(poll)
    try:
        yield
    finally:
        if not conn.closed:
            # if the connection is going away, the server releases the lock with the session
            with contextlib.suppress(psycopg.Error):
                unlock(conn)
