"""Provisioning a fresh restore target: one port, three adapters.

- `database`: CREATE DATABASE with a unique name on an existing server (cheap drills);
- `local-instance`: a new local PostgreSQL server (the local stand-in for a new RDS instance),
  started restore-tuned (minimal WAL, no autovacuum, large maintenance memory) and reset to
  production settings before verification;
- `rds`: a new RDS instance created from settings (restore-tuned parameter group, no automated
  backups), switched to the production parameter group and backups before verification, deleted
  after the drill. The same provisioner (provision.rds: non-blocking steps) serves the state machine.

Every adapter: `create(dbname, roles)` -> ProvisionedTarget, `prepare_for_verify(target)` (reset to
production settings + ANALYZE), `destroy(target)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from ..settings import Settings
from .base import ProvisionedTarget, create_roles, unique_name

KINDS = ("database", "local-instance", "rds")


class Provisioner(Protocol):
    kind: str

    def create(self, dbname: str, roles: list[str] | None = None) -> ProvisionedTarget: ...
    def prepare_for_verify(self, target: ProvisionedTarget) -> float: ...
    def destroy(self, target: ProvisionedTarget) -> None: ...


def get_provisioner(kind: str, *, settings: Settings, server_url: str | None = None,
                    work_dir: str | Path | None = None) -> Provisioner:
    """The adapter for `kind` ("database" needs server_url; "local-instance" uses work_dir)."""
    if kind == "database":
        from .database import DatabaseProvisioner

        if not server_url:
            raise UsageError("the database provisioner needs --server-url (a server to create the database on)")
        return DatabaseProvisioner(server_url)
    if kind == "local-instance":
        from .local_instance import LocalInstanceProvisioner

        return LocalInstanceProvisioner(Path(work_dir) if work_dir else None, pg_bin=settings.pg_bin)
    if kind == "rds":
        from .rds import RdsProvisioner

        return RdsProvisioner.of(settings)
    raise UsageError(f"unknown provisioner {kind!r}: one of {', '.join(KINDS)}")


__all__ = ["KINDS", "ProvisionedTarget", "Provisioner", "create_roles", "get_provisioner", "unique_name"]
