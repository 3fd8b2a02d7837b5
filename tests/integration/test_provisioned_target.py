"""drill.provisioned_target: the one way the drill and the migrations rehearsal hold a restore target —
created on entering the block, dropped when the block ends however it ends (an error, SIGTERM/SIGINT),
unless kept; a failed teardown is recorded and logged, never raised over the block's own outcome.
Against a real server with the `database` provisioner."""

from __future__ import annotations

import secrets
import signal
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgrunbook.drill import provisioned_target
from pgrunbook.errors import Interrupted
from pgrunbook.pgserver import LocalServer
from pgrunbook.provision.database import DatabaseProvisioner


def exists(server: LocalServer, name: str) -> bool:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (1,)


def drop(server: LocalServer, name: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("ending", [RuntimeError("the restore broke"), Interrupted(signal.SIGTERM)],
                         ids=["error", "sigterm"])
def test_the_target_is_dropped_however_the_block_ends(pg_server: LocalServer, ending: BaseException) -> None:
    lease = provisioned_target(DatabaseProvisioner(pg_server.url()), "app")
    with pytest.raises(type(ending)), lease as target:
        assert exists(pg_server, target.name)
        raise ending
    assert not exists(pg_server, target.name)
    assert lease.teardown_seconds is not None and lease.teardown_error is None and not lease.kept


def test_a_kept_target_stays(pg_server: LocalServer) -> None:
    lease = provisioned_target(DatabaseProvisioner(pg_server.url()), "app", keep=True)
    with lease as target:
        pass
    try:
        assert exists(pg_server, target.name) and lease.kept and lease.teardown_seconds is None
    finally:
        drop(pg_server, target.name)


@pytest.fixture()
def createdb_role(pg_server: LocalServer) -> Iterator[str]:
    """A login role with CREATEDB only (what a drill's target secret has); its URL."""
    role, password = f"drill_{uuid.uuid4().hex[:8]}", secrets.token_hex(8)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CREATEDB")
    yield pg_server.url(user=role, password=password)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_failed_teardown_is_recorded_not_raised_over_the_blocks_error(pg_server: LocalServer,
                                                                         createdb_role: str) -> None:
    """The role may not end a superuser's session in the target, so DROP DATABASE ... WITH (FORCE) fails:
    the block's own error is what propagates; the teardown's is in the lease, one line, no password."""
    lease = provisioned_target(DatabaseProvisioner(createdb_role), "app", what="drill target")
    with pytest.raises(ValueError, match="the verification broke"), lease as target:
        superuser = psycopg.connect(pg_server.url(target.name), autocommit=True)
        raise ValueError("the verification broke")
    try:
        assert exists(pg_server, target.name)
        assert lease.teardown_error is not None and lease.teardown_error.startswith(
            f"could not remove the drill target {target.name}: ")
        assert "permission denied to terminate process" in lease.teardown_error
        assert createdb_role.split(":")[2].split("@")[0] not in lease.teardown_error  # the password
    finally:
        superuser.close()
        drop(pg_server, target.name)
