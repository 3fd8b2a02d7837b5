"""What the cutover does to a database: freeze (read-only), unfreeze, sessions, retire marks.

Read-only is `ALTER DATABASE ... SET default_transaction_read_only = on`: every NEW session starts
read-only. It is a default, not a wall: a session can still `SET default_transaction_read_only = off`
(pgrunbook's own sessions do, to manage the database). Sessions opened before the freeze keep their
old default, so after a grace period the freeze ends every session that was opened before it (they
could still write); pools reconnect and get read-only sessions.

Invariants:
- `unfreeze` lifts only a read-only setting pgrunbook set: a database that was read-only before the
  freeze stays read-only (FreezeState.was_read_only).
- The retire mark (the database comment) is written only after a successful cutover, keeps the
  previous comment after it, and `clear_retire_mark` restores that comment.
- Nothing here touches a table: only database settings, the database comment and sessions.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import FreezeFailed, PgrunbookError, ReadOnlyRefused

log = logging.getLogger(__name__)

APPLICATION = "pgrunbook-cutover"
RETIRE_MARK = "pgrunbook: retired by cutover"
_RETIRE_AFTER = re.compile(r"retire after (\d{4}-\d{2}-\d{2})")
_PREVIOUS = " | previous comment: "
_TRUE = ("on", "true", "yes", "1")


@contextmanager
def manage(url: DatabaseUrl) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit session that may write even on a read-only database (to manage it)."""
    with dbinfo.connect(url, autocommit=True, application=APPLICATION) as conn:
        conn.execute("SET default_transaction_read_only = off")
        yield conn


def database_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The database's own settings (ALTER DATABASE ... SET), for every role."""
    row = conn.execute("""SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                          WHERE d.datname = current_database() AND s.setrole = 0""").fetchone()
    out = {}
    for item in (row[0] if row and row[0] else []):
        name, _, value = str(item).partition("=")
        out[name] = value
    return out


def is_read_only(conn: psycopg.Connection[Any]) -> bool:
    return database_settings(conn).get("default_transaction_read_only", "off").lower() in _TRUE


def read_only_state(url: DatabaseUrl) -> bool:
    with manage(url) as conn:
        return is_read_only(conn)


def _set_read_only(conn: psycopg.Connection[Any], on: bool) -> None:
    dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None
    ident = sql.Identifier(str(dbname[0]))
    try:
        if on:
            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(ident))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(ident))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ReadOnlyRefused(f"{'setting' if on else 'lifting'} read-only on database {dbname[0]} refused: "
                              f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_secrets(text[0]) if text else type(exc).__name__


@dataclass
class Session:
    pid: int
    user: str | None
    application_name: str | None
    backend_start: str | None
    state: str | None = None

    def label(self) -> str:
        return f"pid {self.pid} ({self.user or '?'}{', ' + self.application_name if self.application_name else ''})"


def sessions(conn: psycopg.Connection[Any], *, user: str | None = None, application_name: str | None = None,
             opened_before: datetime | None = None) -> list[Session]:
    """Client sessions on the connected database other than ours and other than pgrunbook's, optionally
    only those of one user / application_name, or opened before a moment."""
    rows = conn.execute("""
        SELECT pid, usename, application_name, backend_start, state FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
          AND coalesce(application_name, '') NOT LIKE 'pgrunbook%%'
          AND (%(user)s::text IS NULL OR usename = %(user)s)
          AND (%(app)s::text IS NULL OR application_name = %(app)s)
          AND (%(before)s::timestamptz IS NULL OR backend_start < %(before)s)
        ORDER BY pid""", {"user": user, "app": application_name, "before": opened_before}).fetchall()
    return [Session(pid=int(r[0]), user=r[1], application_name=r[2] or None,
                    backend_start=r[3].isoformat() if r[3] else None, state=r[4]) for r in rows]


def count_sessions(url: DatabaseUrl, *, user: str | None = None, application_name: str | None = None) -> int:
    with dbinfo.connect(url, autocommit=True, application=APPLICATION) as conn:
        return len(sessions(conn, user=user, application_name=application_name))


def terminate(conn: psycopg.Connection[Any], targets: list[Session]) -> list[Session]:
    """pg_terminate_backend each session; returns those that could not be ended."""
    refused = []
    for s in targets:
        try:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (s.pid,)).fetchone()
            if not (row and row[0]):
                still = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (s.pid,)).fetchone()
                if still:
                    refused.append(s)
        except psycopg.errors.InsufficientPrivilege:
            refused.append(s)
    return refused


@dataclass
class FreezeState:
    """What `freeze` did, enough to undo it (travels through the state machine as JSON)."""

    database: str
    frozen_at: str
    was_read_only: bool
    ended_sessions: list[dict[str, Any]] = field(default_factory=list)
    grace_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezeState:
        return cls(database=str(data["database"]), frozen_at=str(data["frozen_at"]),
                   was_read_only=bool(data.get("was_read_only")), ended_sessions=list(data.get("ended_sessions") or []),
                   grace_seconds=float(data.get("grace_seconds") or 0.0))

    def frozen_seconds(self, until: datetime | None = None) -> float:
        end = until or datetime.now(UTC)
        return max(0.0, (end - datetime.fromisoformat(self.frozen_at)).total_seconds())


def freeze(url: DatabaseUrl, *, grace_seconds: float = 30.0, poll: float = 0.5) -> FreezeState:
    """Make the database read-only for new sessions, wait up to `grace_seconds` for the sessions opened
    before to end, then end the rest. On any failure the read-only setting is lifted again."""
    with manage(url) as conn:
        was = is_read_only(conn)
        if not was:
            try:
                _set_read_only(conn, True)
            except ReadOnlyRefused as exc:
                raise FreezeFailed(f"cannot freeze {url.display()}: {exc}") from None
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        frozen_at: datetime = row[0]
        state = FreezeState(database=url.dbname, frozen_at=frozen_at.astimezone(UTC).isoformat(),
                            was_read_only=was, grace_seconds=grace_seconds)
        log.info("source frozen (read-only for new sessions)", extra={"database": url.display()})
        try:
            deadline = time.monotonic() + grace_seconds
            while True:
                before = sessions(conn, opened_before=frozen_at)
                if not before or time.monotonic() >= deadline:
                    break
                time.sleep(poll)
            if before:
                refused = terminate(conn, before)
                if refused:
                    raise FreezeFailed(f"cannot end {len(refused)} session(s) on {url.display()} that could still "
                                       f"write: {', '.join(s.label() for s in refused[:5])}")
                state.ended_sessions = [asdict(s) for s in before]
                log.info("ended sessions opened before the freeze", extra={"count": len(before)})
        except BaseException:
            if not was:
                _lift(conn)
            raise
    return state


def _lift(conn: psycopg.Connection[Any]) -> None:
    try:
        _set_read_only(conn, False)
    except (PgrunbookError, psycopg.Error) as exc:
        log.error("could not lift the freeze", extra={"reason": _first_line(exc)})
        raise


def unfreeze(url: DatabaseUrl, state: FreezeState | None) -> bool:
    """Lift a freeze pgrunbook set (nothing when the database was read-only before). True when lifted."""
    if state is not None and state.was_read_only:
        return False
    with manage(url) as conn:
        if not is_read_only(conn):
            return False
        _set_read_only(conn, False)
    log.info("freeze lifted: the source is writable again", extra={"database": url.display()})
    return True


# --------------------------------------------------------------------------- after a cutover
def _comment(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _set_comment(conn: psycopg.Connection[Any], text: str | None) -> None:
    dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None
    try:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(str(dbname[0])), sql.Literal(text)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ReadOnlyRefused(f"commenting database {dbname[0]} refused: {_first_line(exc)}") from None


def retire_mark(conn: psycopg.Connection[Any]) -> tuple[str, date] | None:
    """(comment, retire-after date) when pgrunbook marked the database as retired."""
    comment = _comment(conn)
    if not comment or not comment.startswith(RETIRE_MARK):
        return None
    found = _RETIRE_AFTER.search(comment.split(_PREVIOUS, 1)[0])
    if not found:
        return None
    return comment, date.fromisoformat(found.group(1))


def set_read_only_and_mark(url: DatabaseUrl, *, replaced_by: str, retire_after: date) -> None:
    """After a cutover: read-only (unless already) and the retire mark; raises ReadOnlyRefused."""
    with manage(url) as conn:
        if not is_read_only(conn):
            _set_read_only(conn, True)
        previous = _comment(conn)
        if previous and previous.startswith(RETIRE_MARK):
            previous = previous.split(_PREVIOUS, 1)[1] if _PREVIOUS in previous else None
        text = (f"{RETIRE_MARK} on {datetime.now(UTC).isoformat(timespec='seconds')}; now served by "
                f"{replaced_by}; read-only; retire after {retire_after.isoformat()}")
        _set_comment(conn, text + (f"{_PREVIOUS}{previous}" if previous else ""))


def clear_retire_mark(url: DatabaseUrl) -> bool:
    """Undo `set_read_only_and_mark` (a manual rollback after a completed cutover). True when a mark was there."""
    with manage(url) as conn:
        mark = retire_mark(conn)
        if mark is None:
            return False
        comment = mark[0]
        _set_comment(conn, comment.split(_PREVIOUS, 1)[1] if _PREVIOUS in comment else None)
        if is_read_only(conn):
            _set_read_only(conn, False)
    return True


def end_sessions_before(url: DatabaseUrl, moment: datetime) -> list[Session]:
    """End the sessions opened before `moment` (after a cutover: stragglers of the old database).
    Returns those ended; sessions we may not end are left and logged."""
    with manage(url) as conn:
        before = sessions(conn, opened_before=moment)
        refused = terminate(conn, before)
    if refused:
        log.warning("could not end sessions", extra={"sessions": ", ".join(s.label() for s in refused)})
    return [s for s in before if s not in refused]
