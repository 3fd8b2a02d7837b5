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
from pgrunbook.pgserver import LocalServer


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
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1  # one JSON object: the functions' logs and metrics went to stderr
    out = json.loads(stdout)
    backup, drill = out["executions"]
    assert code == 0, (backup["cause"], drill["cause"])
    assert {r["database"]: r["ok"] for r in backup["output"]["results"]} == {"q": True, "enc": True, "kv": True}
    assert all(r["result"]["rows"] == 25 for r in backup["output"]["results"])
    assert drill["status"] == "SUCCEEDED" and drill["output"]["verify"]["ok"] is True
    assert pw not in json.dumps(out)


def test_local_run_reports_a_failing_execution_in_one_line(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    bad = "postgresql://app:hunter2@/app?host=/nonexistent/pgrunbook-socket"
    assert main(["local", "run", "--database", f"app={bad}", "Backup", '{"kind": "manual"}']) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("BackupStateMachine: FAILED (BackupsFailed: 0 of 1 databases "
                                                   "backed up; failed: app: ConnectionFailed: cannot connect")
    assert "hunter2" not in captured.out + captured.err
    assert "FailureEventException" not in captured.err  # moto's dump of the failing state stays out
    # forms that cannot be stored are usage errors, one line, before anything runs
    for url, message in (("postgresql:///app", "names no host"), ("host=/tmp port=x dbname=a", "not a port number")):
        assert main(["local", "run", "--database", f"app={url}", "Backup", "{}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pgrunbook: error: database 'app': ") and message in err and "\n" not in err
