"""`local-instance` adapter: a new local PostgreSQL server, the local stand-in for a new RDS instance.

Started with RESTORE_TUNED settings (wal_level=minimal, no WAL senders, no autovacuum, large
maintenance memory): a parallel pg_restore then skips WAL for the tables it creates. Before
verification it is restarted with PRODUCTION settings and ANALYZEd.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl
from ..pgserver import PRODUCTION, RESTORE_TUNED, LocalServer
from ..pgtools import server_binaries
from .base import ProvisionedTarget, analyze_database, create_roles, unique_name

log = logging.getLogger(__name__)

# On top of pgserver.RESTORE_TUNED: a fresh instance holds nothing but the load, which can be repeated
# from the archive, so during the load it also skips fsync and full-page writes (the data is flushed
# with a sync before the restart with production settings), and gets bigger buffers.
LOAD_SETTINGS = {
    **RESTORE_TUNED,
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "512MB",
    "wal_buffers": "64MB",
    "max_wal_size": "16GB",
}


class LocalInstanceProvisioner:
    kind = "local-instance"

    def __init__(self, work_dir: Path | None = None, *, pg_bin: str | None = None) -> None:
        self.work_dir = work_dir or Path(tempfile.gettempdir()) / "pgrunbook-instances"
        self.pg_bin = pg_bin
        self._servers: dict[str, LocalServer] = {}

    def create(self, dbname: str, roles: list[str] | None = None) -> ProvisionedTarget:
        name = unique_name("instance")
        t0 = time.monotonic()
        data_dir = self.work_dir / name
        if len(str(data_dir)) > 80:  # the server's unix socket lives there: its path must stay < 108 bytes
            data_dir = Path(tempfile.mkdtemp(prefix="pgrunbook-")) / name
        server = LocalServer(data_dir=data_dir, settings=LOAD_SETTINGS,
                             bin_dir=server_binaries(self.pg_bin))
        server.init().start()
        self._servers[name] = server
        try:
            admin = DatabaseUrl.parse(server.url("postgres"))
            with dbinfo.connect(admin, autocommit=True, application="pgrunbook-provision") as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            created = create_roles(admin, roles or [])
        except BaseException:
            self.destroy_server(name)
            raise
        log.info("local instance started restore-tuned",
                 extra={"instance": name, "port": server.port, "seconds": round(time.monotonic() - t0, 2)})
        # the URL with its password, readable only by us (for --keep: how to reach the kept instance)
        url_file = server.data_dir.parent / f"{name}.url"
        url_file.touch(mode=0o600)
        url_file.write_text(server.url(dbname) + "\n")
        return ProvisionedTarget(kind=self.kind, name=name, url=server.url(dbname),
                                 details={"data_dir": str(server.data_dir), "port": server.port,
                                          "url_file": str(url_file), "settings": "restore-tuned",
                                          "roles_created": created})

    def server(self, target: ProvisionedTarget) -> LocalServer:
        return self._servers[target.name]

    def prepare_for_verify(self, target: ProvisionedTarget) -> float:
        """Restart with production settings (WAL for replicas and PITR, autovacuum on), then ANALYZE."""
        t0 = time.monotonic()
        server = self.server(target)
        server.stop()  # a clean shutdown: checkpoint written (without fsync during the load) ...
        os.sync()  # ... so flush it to disk before the server runs with fsync on again
        server.configure(PRODUCTION)
        server.start()
        target.details["settings"] = "production"
        analyze_database(DatabaseUrl.parse(target.url))
        return time.monotonic() - t0

    def destroy(self, target: ProvisionedTarget) -> None:
        self.destroy_server(target.name)

    def destroy_server(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is not None:
            server.destroy()
            (server.data_dir.parent / f"{name}.url").unlink(missing_ok=True)
            if server.data_dir.parent.name.startswith("pgrunbook-"):
                shutil.rmtree(server.data_dir.parent, ignore_errors=True)
