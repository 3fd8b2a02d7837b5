"""tests/unit: no PostgreSQL server and no network (`make unit`, well under 30 s). AWS is in-process
moto (mock_aws); a test may talk to a server it starts on the loopback interface (the approval page),
nothing else. A test that needs a database server lives in tests/integration: asking for one here
fails with that advice instead of starting a server."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

ADVICE = "unit tests need no PostgreSQL server and no network: move this test to tests/integration"


@pytest.fixture(scope="session")
def pg_server() -> None:
    pytest.fail(f"{ADVICE} (it asked for pg_server, fresh_db, sample_db or app_db)")


@pytest.fixture(scope="session")
def moto_server() -> None:
    pytest.fail(f"{ADVICE} (it asked for the moto server; use mock_aws in-process)")


def _local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX
        return True
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock: socket.socket, address: Any) -> None:
        if not _local(address):
            raise AssertionError(f"{ADVICE} (it connected to {address!r})")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if not _local(address):
            raise AssertionError(f"{ADVICE} (it connected to {address!r})")
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield
