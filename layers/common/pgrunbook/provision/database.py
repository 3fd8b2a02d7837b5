"""`database` adapter: a new, uniquely named database on an existing server (cheap drills).

Dropping a target (`destroy`, the state machine's teardown, the sweeper) drops it whatever its owner: a
cutover candidate made production-ready before its approval belongs to the source database's owner, a role
the target role may only SET ROLE to (the production-ready step needed that to give it away); the drop then
runs as that owner. A target labelled `keep` (an approved candidate, or one a person kept) is never dropped
here, unless the label is `keep: candidate` (production-ready, not approved)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..errors import ProvisionFailed, TargetNotOwned
from .base import ProvisionedTarget, unique_name
from .rds import KEEP_CANDIDATE

log = logging.getLogger(__name__)


class DatabaseProvisioner:
    kind = "database"

    def __init__(self, server_url: str, *, prefix: str = "pgrunbook_drill") -> None:
        self.server = DatabaseUrl.parse(server_url, what="server URL (--server-url)")
        self.prefix = prefix

    def create(self, dbname: str, roles: list[str] | None = None, *, name: str | None = None,
               labels: dict[str, str] | None = None) -> ProvisionedTarget:
        """CREATE DATABASE <prefix>_<timestamp>_<random> (the source's name is not reused on a shared server),
        or `name` (derived from an execution by the caller). When `name` exists already it is used again
        only if its label `pgrunbook.execution` is this execution's (`labels["execution"]`: an earlier
        attempt of the same execution made it); any other database of that name is refused
        (TargetNotOwned), never restored into or dropped. `labels` go into the database's comment
        (`COMMENT ON DATABASE`, which its owner may set: database-level settings of a custom parameter
        need a superuser, and the drill role is not one); the sweeper reads them: which stack and
        execution own the database. Roles are not created: the server's roles are what they are
        (restore reports missing ones)."""
        import psycopg

        name = name or unique_name(self.prefix)
        with dbinfo.connect(self.server, autocommit=True, application="pgrunbook-provision") as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                execution = (labels or {}).get("execution") or "-"
                if execution == "-" or database_labels(conn, name).get("execution") != execution:
                    raise TargetNotOwned(f"database {name} already exists and was not created by this "
                                         "execution: refusing to use or drop it") from None
                log.info("database exists: made by an earlier attempt", extra={"database": name})
            if labels:
                conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(LABELS_COMMENT + json.dumps(labels, sort_keys=True))))
        target = self.server.with_dbname(name)
        log.info("database created", extra={"target": target.display()})
        return ProvisionedTarget(kind=self.kind, name=name, url=_url_of(target),
                                 details={"server": self.server.display(), "source_database": dbname})

    def prepare_for_verify(self, target: ProvisionedTarget) -> float:
        """The server keeps its own settings; ANALYZE is done by the restore. Nothing to reset."""
        return 0.0

    def destroy(self, target: ProvisionedTarget) -> None:
        t0 = time.monotonic()
        with dbinfo.connect(self.server, autocommit=True, application="pgrunbook-provision") as conn:
            keep = database_labels(conn, target.name).get("keep")
            if keep is not None and keep != KEEP_CANDIDATE:
                raise ProvisionFailed(f"database {target.name} is kept (label keep={keep}): not dropped")
            drop_database(conn, target.name)
        log.info("database dropped", extra={"database": target.name, "seconds": round(time.monotonic() - t0, 2)})


def drop_database(conn: Any, name: str) -> None:
    """DROP DATABASE IF EXISTS ... WITH (FORCE), whatever the database's owner: when the session's role may
    not drop it (it gave the database to another role, which it may SET ROLE to), as that owner."""
    import psycopg

    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        conn.execute(drop)
        return
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            return
        owner = str(row[0])
    try:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    except psycopg.errors.InsufficientPrivilege:
        raise ProvisionFailed(f"cannot drop database {name}: it belongs to {owner}, which this role may not "
                              f"become (GRANT {owner} TO <the target role>)") from None
    try:
        conn.execute(drop)
    finally:
        conn.execute("RESET ROLE")
    log.info("database dropped as its owner", extra={"database": name, "owner": owner})


def set_labels(conn: Any, name: str, **changes: str | None) -> dict[str, str]:
    """Merge `changes` into database `name`'s labels (its comment; None removes a label); returns them. Runs
    as the database's owner when the session's role is not (COMMENT ON DATABASE needs the owner)."""
    import psycopg

    labels = {k: v for k, v in {**database_labels(conn, name), **changes}.items() if v is not None}
    comment = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(name), sql.Literal(LABELS_COMMENT + json.dumps(labels, sort_keys=True)))
    try:
        conn.execute(comment)
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            raise
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(str(row[0]))))
        try:
            conn.execute(comment)
        finally:
            conn.execute("RESET ROLE")
    return labels


LABELS_COMMENT = "pgrunbook restore target "
LABELS_SQL = ("SELECT d.datname, shobj_description(d.oid, 'pg_database'), "
              "(SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0) "
              "FROM pg_database d")


def parse_labels(comment: str | None, setconfig: Any = None) -> dict[str, str]:
    """A target's labels: the JSON after LABELS_COMMENT in its comment, plus any `pgrunbook.<key>=<value>`
    database-level setting (a superuser may add `pgrunbook.keep` that way)."""
    labels = {}
    for item in setconfig or []:
        key, sep, value = str(item).partition("=")
        if sep and key.startswith("pgrunbook."):
            labels[key.removeprefix("pgrunbook.")] = value
    at = comment.find(LABELS_COMMENT) if comment else -1  # (after a restore's mark too: restore.marks keeps it)
    if comment and at >= 0 and (at == 0 or comment[:at].endswith(": ")):
        try:
            found = json.loads(comment[at + len(LABELS_COMMENT):])
        except ValueError:
            found = None
        if isinstance(found, dict):
            labels.update({str(k): str(v) for k, v in found.items()})
    return labels


def database_labels(conn: Any, name: str) -> dict[str, str]:
    """The labels of database `name` (see parse_labels); {} when it has none."""
    row = conn.execute(LABELS_SQL + " WHERE d.datname = %s", (name,)).fetchone()
    return parse_labels(row[1], row[2]) if row else {}


def _url_of(url: DatabaseUrl) -> str:
    """A libpq conninfo string with the password (kept in memory only)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **url.connect_kwargs())
