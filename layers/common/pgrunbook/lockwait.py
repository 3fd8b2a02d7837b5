"""Bounded lock waits for a backup: the limit, what is waited for, and who blocks it.

A backup's sessions share one application_name, the backup's tag (pg_dump's sessions through
PGAPPNAME, the counting connection directly). pg_dump gets `--lock-wait-timeout` and the
counting connection `lock_timeout`, both the configured limit. Meanwhile `LockWatch`, on a
connection of its own, polls pg_stat_activity / pg_locks / pg_blocking_pids() for those
sessions, logs every LOG_EVERY seconds which table they wait for and which sessions block it,
and keeps the last sighting: when the limit is reached, `timeout_error()` names the table and the
blocking sessions (pid, application, state, query start).

Invariants: the watch reads only the activity and lock views (it never takes a table lock and
cannot itself be blocked), never shows query text (it may hold secrets), and connects only once a
backup has run for one poll interval, so short backups open no extra connection. After a failure,
`end_sessions()` terminates whatever session of the backup is still on the server (a pg_dump
session killed while it waited for a lock would otherwise wait on until the lock is granted).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from . import dbinfo
from .dburl import DatabaseUrl, mask_secrets
from .errors import LockTimeout, PgrunbookError

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at the server's lock views
LOG_EVERY = 5.0  # seconds between "waiting for a lock" lines

_WAITS = """
SELECT w.pid, n.nspname, c.relname, l.locktype, {waited},
       b.pid, b.application_name, b.state, b.query_start, b.usename
FROM pg_stat_activity w
JOIN pg_locks l ON l.pid = w.pid AND NOT l.granted
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
LEFT JOIN pg_stat_activity b ON b.pid = bp.pid
WHERE w.application_name = %s AND w.wait_event_type = 'Lock'
ORDER BY w.pid, bp.pid
"""


def new_tag(kind: str = "backup") -> str:
    """A fresh application_name for one run's sessions: pgrunbook-backup-<random>."""
    return f"pgrunbook-{kind}-{secrets.token_hex(4)}"


def limit_ms(seconds: float) -> int:
    """The limit in milliseconds as PostgreSQL takes it (0 = wait forever)."""
    return max(0, round(seconds * 1000))


def bound_session(conn: psycopg.Connection[Any], seconds: float, server_major: int) -> None:
    """On a backup's own connection: give up on a lock after `seconds`, and (PostgreSQL 14+) let the
    server end the session within seconds should pgrunbook die while it waits."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{limit_ms(seconds)}ms",))
    if server_major >= 14:
        conn.execute("SELECT set_config('client_connection_check_interval', '2s', false)")


def dump_gave_up_on_lock(stderr: str) -> bool:
    """Whether pg_dump failed because its --lock-wait-timeout expired (on its LOCK TABLE statement)."""
    return "canceling statement due to statement timeout" in stderr and "LOCK TABLE" in stderr


@dataclass(frozen=True)
class Blocker:
    pid: int
    application: str | None
    state: str | None
    query_start: datetime | None
    user: str | None

    def describe(self) -> str:
        if self.state is None:  # pg_stat_activity hides other roles' sessions without pg_read_all_stats
            return f"pid {self.pid} (its details are not visible to this role)"
        started = f"query started {self.query_start:%Y-%m-%d %H:%M:%S %Z}".rstrip() if self.query_start else \
            "no query yet"
        # application_name holds printable ASCII only (the server replaces anything else by '?')
        return (f"pid {self.pid} (application {self.application or '(none)'}, "
                f"user {dbinfo.ident(self.user) if self.user else '(unknown)'}, {self.state}, {started})")


@dataclass
class Sighting:
    """A session of ours waiting for a lock, and who blocks it."""

    table: str  # schema.name as people read it, or the lock type when the lock is not on a table
    waiter_pid: int
    blockers: list[Blocker] = field(default_factory=list)
    since: float = 0.0  # monotonic time it was first seen waiting

    def blocked_by(self) -> str:
        shown = "; ".join(b.describe() for b in self.blockers[:3])
        more = f"; and {len(self.blockers) - 3} more" if len(self.blockers) > 3 else ""
        return shown + more


class LockWatch:
    """Polls the server for lock waits of the sessions named `tag`, on a thread (see the module doc)."""

    def __init__(self, url: DatabaseUrl, tag: str, limit_seconds: float) -> None:
        self.url, self.tag, self.limit = url, tag, limit_seconds
        self.poll = min(POLL, limit_seconds / 3) if limit_seconds > 0 else POLL
        self.last: Sighting | None = None
        self._seen: dict[tuple[int, str], float] = {}
        self._last_log = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        if self._stop.wait(self.poll):
            return
        try:
            conn = dbinfo.connect(self.url, autocommit=True, application=f"{self.tag}-watch")
        except PgrunbookError as exc:
            log.debug("lock watch: cannot connect", extra={"reason": str(exc)})
            return
        try:
            conn.execute("SELECT set_config('statement_timeout', '10s', false)")
            while True:
                self._look(conn)
                if self._stop.wait(self.poll):
                    return
        except psycopg.Error as exc:
            log.debug("lock watch stopped", extra={"reason": mask_secrets(str(exc).strip())})
        finally:
            conn.close()

    def _look(self, conn: psycopg.Connection[Any]) -> None:
        # pg_locks.waitstart (PostgreSQL 14+) says since when; on older servers: since first seen
        waited = "extract(epoch FROM clock_timestamp() - l.waitstart)::float8" \
            if conn.info.server_version >= 140000 else "NULL::float8"
        rows = conn.execute(_WAITS.format(waited=waited), (self.tag,)).fetchall()
        now = time.monotonic()
        sightings: dict[int, Sighting] = {}
        for pid, schema, rel, locktype, waited_s, bpid, app, state, qstart, user in rows:
            table = dbinfo.ident(str(schema)) + "." + dbinfo.ident(str(rel)) if rel is not None \
                else f"a {locktype} lock"
            seen = sightings.get(pid)
            if seen is None:
                since = self._seen.setdefault((pid, table), now - (waited_s or 0.0))
                seen = sightings[pid] = Sighting(table=table, waiter_pid=pid, since=since)
            if bpid is not None:
                seen.blockers.append(Blocker(int(bpid), app, state, qstart, user))
        if not sightings:
            return
        longest = min(sightings.values(), key=lambda s: s.since)
        self.last = longest
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            first = longest.blockers[0] if longest.blockers else None
            log.warning(f"waiting for a lock on {longest.table}, blocked by {longest.blocked_by() or 'no one seen'}",
                        extra={"waited_s": round(now - longest.since, 1),
                               "limit_s": self.limit if self.limit > 0 else "none",
                               "blocking_pid": first.pid if first else None})

    def timeout_error(self) -> LockTimeout:
        limit = f"{self.limit:g}s"
        seen = self.last
        if seen is None:
            return LockTimeout(f"gave up after waiting {limit} for a table lock (--lock-wait-timeout): the blocking "
                               "session ended or was not seen; try again, or raise --lock-wait-timeout")
        return LockTimeout(
            f"gave up after waiting {limit} for a lock on table {seen.table} (--lock-wait-timeout): blocked by "
            f"{seen.blocked_by() or 'a session that has just let go'}; end that session or its transaction, "
            "or raise --lock-wait-timeout")

    def end_sessions(self, keep: Sequence[int] = ()) -> None:
        """Terminate every session of this run still on the server (but those in `keep`). Never raises."""
        try:
            with dbinfo.connect(self.url, autocommit=True, application=f"{self.tag}-cleanup") as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = %s AND pid <> pg_backend_pid() AND pid <> ALL(%s)",
                             (self.tag, list(keep)))
        except (psycopg.Error, PgrunbookError) as exc:
            log.warning("could not end the backup's sessions on the server",
                        extra={"reason": mask_secrets(str(exc).strip())})
