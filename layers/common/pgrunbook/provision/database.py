"""`database` adapter: a new, uniquely named database on an existing server (cheap drills)."""

from __future__ import annotations

import logging
import time

from psycopg import sql

from .. import catalog
from ..dburl import DatabaseUrl
from .base import ProvisionedTarget, unique_name

log = logging.getLogger(__name__)


class DatabaseProvisioner:
    kind = "database"

    def __init__(self, server_url: str, *, prefix: str = "pgrunbook_drill") -> None:
        self.server = DatabaseUrl.parse(server_url, what="server URL (--server-url)")
        self.prefix = prefix

    def create(self, dbname: str, roles: list[str] | None = None, *, name: str | None = None,
               labels: dict[str, str] | None = None) -> ProvisionedTarget:
        """CREATE DATABASE <prefix>_<timestamp>_<random> (the source's name is not reused on a shared server),
        or `name` (derived from an execution by the caller: when it exists already, an earlier attempt of
        the same execution made it, and it is used again). `labels` become database-level settings
        `pgrunbook.<key>` (the sweeper reads them: which stack and execution own the database).
        Roles are not created: the server's roles are what they are (restore reports missing ones)."""
        import psycopg

        name = name or unique_name(self.prefix)
        with catalog.connect(self.server, autocommit=True, application="pgrunbook-provision") as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                log.info("database exists: made by an earlier attempt", extra={"database": name})
            for key, value in (labels or {}).items():
                conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name), sql.Identifier(f"pgrunbook.{key}"), sql.Literal(value)))
        target = self.server.with_dbname(name)
        log.info("database created", extra={"target": target.display()})
        return ProvisionedTarget(kind=self.kind, name=name, url=_url_of(target),
                                 details={"server": self.server.display(), "source_database": dbname})

    def prepare_for_verify(self, target: ProvisionedTarget) -> float:
        """The server keeps its own settings; ANALYZE is done by the restore. Nothing to reset."""
        return 0.0

    def destroy(self, target: ProvisionedTarget) -> None:
        t0 = time.monotonic()
        with catalog.connect(self.server, autocommit=True, application="pgrunbook-provision") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.name)))
        log.info("database dropped", extra={"database": target.name, "seconds": round(time.monotonic() - t0, 2)})


def _url_of(url: DatabaseUrl) -> str:
    """A libpq conninfo string with the password (kept in memory only)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **url.connect_kwargs())
