"""The restore mark: a comment on the target database while a restore runs and after one failed.

Invariants: the mark is set before the first byte of the archive reaches the target and removed only
after the load and ANALYZE succeeded; a failure or interruption turns it into `MARK_FAILED`, a kill
leaves `MARK_IN_PROGRESS`. `verify` fails on either, and a restore refuses a marked target
(TargetMarked). A comment (not a marker table) leaves the schema being compared untouched. The comment the
target had before (a provisioned target's labels, which the sweeper reads: provision.database) is kept
after the mark and is the comment again once the mark is removed.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import PgrunbookError, TargetMarked

log = logging.getLogger(__name__)

MARK_IN_PROGRESS = "pgrunbook: restore in progress"
MARK_FAILED = "pgrunbook: restore FAILED"
KEPT_COMMENT = " | comment before the restore: "  # what follows it in a mark is the target's own comment


def database_mark(conn: psycopg.Connection[Any]) -> str | None:
    """The database comment when it is a pgrunbook restore mark (in progress / FAILED), else None."""
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    comment = row[0] if row else None
    if comment and str(comment).startswith((MARK_IN_PROGRESS, MARK_FAILED)):
        return str(comment)
    return None


def refuse_marked(url: DatabaseUrl, mark: str | None) -> None:
    """Raise TargetMarked when `mark` (database_mark of the target) is a pgrunbook restore mark."""
    if mark is None:
        return
    db = dbinfo.ident(url.dbname)
    what = ("an earlier restore into it did not finish" if mark.startswith(MARK_FAILED) else
            "an earlier restore into it was killed, or is still running")
    raise TargetMarked(f"the target {url.display()} is marked {mark[:300]!r}: {what}, so it may hold part of an "
                       f"archive; drop and recreate it (DROP DATABASE {db}; CREATE DATABASE {db}), then restore again")


def set_mark(url: DatabaseUrl, text: str | None, *, only_if_ours: bool = False) -> None:
    """Mark the target with `text` (None: remove the mark; with `only_if_ours`, only a pgrunbook mark is
    removed), keeping the comment it had before the first mark after the mark (KEPT_COMMENT) and putting
    it back when the mark goes. A failure to mark is a warning: the restore's own outcome is what the
    caller reports."""
    try:
        with dbinfo.connect(url, autocommit=True, application="pgrunbook-restore") as conn:
            conn.execute("SET default_transaction_read_only = off")
            mark = database_mark(conn)
            if only_if_ours and mark is None:
                return
            if mark is not None:
                own = mark.split(KEPT_COMMENT, 1)[1] if KEPT_COMMENT in mark else None
            else:
                row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                   "WHERE datname = current_database()").fetchone()
                own = str(row[0]) if row and row[0] else None
            comment = (f"{text}{KEPT_COMMENT}{own}" if own else text) if text is not None else own
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(url.dbname), sql.Literal(comment)))
    except (psycopg.Error, PgrunbookError) as exc:
        log.warning("could not mark the target database", extra={"target": url.display(),
                                                                  "reason": mask_secrets(str(exc).strip())})
