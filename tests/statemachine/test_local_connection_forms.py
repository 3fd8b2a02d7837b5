"""`pgrunbook local run` with every connection form the CLI accepts: a URL whose host is a unix-socket
directory (as ?host= or percent-encoded in the authority) and key=value conninfo. Each is stored as
the stack stores it (an RDS-style secret + the PGRUNBOOK_DATABASES entry) and read back by the
functions (backup, provision, restore, verify) against the real server's socket."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

from pgrunbook.cli import main
from pgrunbook.localpg import LocalServer


@pytest.fixture()
def three_databases(pg_server: LocalServer) -> Iterator[list[str]]:
    names = [f"forms_{uuid.uuid4().hex[:8]}_{i}" for i in range(3)]
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    for name in names:
        with psycopg.connect(pg_server.url(name), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 25)")
    yield names
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_local_run_with_socket_urls_and_key_value_conninfo(pg_server: LocalServer, three_databases: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    sock, port, pw = str(pg_server.data_dir), pg_server.port, pg_server.password
    query_host, encoded_host, key_value = three_databases
    forms = {
        "q": f"postgresql://postgres:{quote(pw, safe='')}@/{query_host}?host={sock}&port={port}",
        "enc": f"postgresql://postgres:{quote(pw, safe='')}@{quote(sock, safe='')}:{port}/{encoded_host}",
        "kv": f"host={sock} port={port} user=postgres password={pw} dbname={key_value}",
    }
    args = ["local", "run", "--json"]
    for name, url in forms.items():
        args += ["--database", f"{name}={url}"]
    code = main([*args, "Backup", '{"kind": "manual"}', "Restore", '{"database": "q", "mode": "drill"}'])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    backup, drill = out["executions"]
    assert code == 0, (backup["cause"], drill["cause"])
    assert {r["database"]: r["ok"] for r in backup["output"]["results"]} == {"q": True, "enc": True, "kv": True}
    assert all(r["result"]["rows"] == 25 for r in backup["output"]["results"])
    assert drill["status"] == "SUCCEEDED" and drill["output"]["verify"]["ok"] is True
    assert pw not in json.dumps(out)
