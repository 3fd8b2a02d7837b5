"""What every provisioner hands back, and helpers they share."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from .. import dbinfo
from ..dburl import DatabaseUrl


@dataclass
class ProvisionedTarget:
    """A fresh, empty database. `url` carries the password: never log it, use `display`."""

    kind: str
    name: str  # database name, server directory or instance identifier
    url: str = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return DatabaseUrl.parse(self.url).display()

    def to_dict(self) -> dict[str, Any]:
        """Without the password (for reports, logs and state-machine payloads)."""
        return {"kind": self.kind, "name": self.name, "url": self.display, "details": self.details}


def unique_name(prefix: str = "pgrunbook_drill") -> str:
    """prefix_YYYYMMDD_HHMMSS_xxxx: unique, sortable, a valid unquoted identifier."""
    return f"{prefix}_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"


def create_roles(url: DatabaseUrl, roles: list[str]) -> list[str]:
    """Create the roles a backup's objects belong to on a fresh server (NOLOGIN); returns the created ones.
    Roles are cluster-wide and not in pg_dump's archive, so a new instance lacks them."""
    created = []
    with dbinfo.connect(url, autocommit=True, application="pgrunbook-provision") as conn:
        existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        for role in roles:
            if role in existing or role.startswith("pg_"):
                continue
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            created.append(role)
    return created


def analyze_database(url: DatabaseUrl) -> float:
    from ..restore import analyze

    return analyze(url)
