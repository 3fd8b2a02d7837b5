"""pgtools' typed wrappers (PgDump, PgRestore, Psql) and the one reader of a failed tool's stderr
(`failure_line`), without a PostgreSQL server: the stderr texts below are what pg_restore, psql and
pg_dump 18 printed (captured from real runs), and the wrappers run either the real pg binaries on
inputs that need no server (`pg_restore --list`) or stand-in scripts under the tools' names that report
the argv and environment they were given, fail or hang."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import Interrupted, RestoreFailed, ToolError
from pgrunbook.pgtools import PgDump, PgRestore, Psql, Tool, failure_line, find_tool
from pgrunbook.processes import live_tools

PASSWORD = "s3cret-Pa55"
URL = DatabaseUrl.parse(f"postgresql://app:{PASSWORD}@db.example:5433/shop")

# --------------------------------------------------------------------------- failure_line
COPY_FAILED = ("pg_restore: error: COPY failed for table \"z_checked\": ERROR:  new row for relation \"z_checked\" "
               "violates check constraint \"z_checked_v_check\"\n") + """\
DETAIL:  Failing row contains (-1).
CONTEXT:  COPY z_checked, line 2: "-1"
pg_restore: error: a worker process died unexpectedly
"""
QUERY_FAILED = """\
pg_restore: error: could not execute query: ERROR:  function "strict_ok" already exists with same argument types
Command was: CREATE FUNCTION public.strict_ok(v integer) RETURNS boolean
    LANGUAGE sql IMMUTABLE
"""
QUERY_FAILED_VERBOSE = """\
pg_restore: creating FUNCTION "public.strict_ok(integer)"
pg_restore: from TOC entry 215; 1255 16385 FUNCTION public strict_ok(integer) postgres
pg_restore: error: could not execute query: ERROR:  function "strict_ok" already exists with same argument types
"""
PSQL_COPY_FAILED = """\
psql:<stdin>:175: ERROR:  new row for relation "z_checked" violates check constraint "z_checked_v_check"
DETAIL:  Failing row contains (-1).
CONTEXT:  COPY z_checked, line 2: "-1"
psql:<stdin>:175: STATEMENT:  COPY public.z_checked (v) FROM stdin;
"""
PSQL_SYNTAX = """\
psql:<stdin>:2: ERROR:  syntax error at or near "SELEC"
LINE 1: SELEC 2;
        ^
psql:<stdin>:2: STATEMENT:  SELEC 2;
"""
DUMP_REFUSED = """\
pg_dump: error: connection to server at "127.0.0.1", port 1 failed: Connection refused
\tIs the server running on that host and accepting TCP/IP connections?
"""
DUMP_AUTH = (f'pg_dump: error: connection to server at "db.example", port 5433 failed: FATAL:  password '
             f'authentication failed for user "app" (postgresql://app:{PASSWORD}@db.example:5433/shop)\n')
LIST_GARBAGE = "pg_restore: error: input file does not appear to be a valid archive (too short?)\n"
PSQL_CONNECT = """\
psql: error: connection to server at "127.0.0.1", port 1 failed: Connection refused
\tIs the server running on that host and accepting TCP/IP connections?
"""


@pytest.mark.parametrize(("returncode", "stderr", "expected"), [
    (1, COPY_FAILED, 'COPY failed for table "z_checked": ERROR:  new row for relation "z_checked" violates check '
                     'constraint "z_checked_v_check"'),
    (1, QUERY_FAILED, 'ERROR:  function "strict_ok" already exists with same argument types'),
    (1, QUERY_FAILED_VERBOSE, 'failed at FUNCTION public strict_ok(integer): ERROR:  function "strict_ok" already '
                              'exists with same argument types'),
    (3, PSQL_COPY_FAILED, 'ERROR:  new row for relation "z_checked" violates check constraint "z_checked_v_check" '
                          'CONTEXT:  COPY z_checked, line 2: "-1" at line 175 of the script'),
    (3, PSQL_SYNTAX, 'ERROR:  syntax error at or near "SELEC" at line 2 of the script'),
    (1, DUMP_REFUSED, 'connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    (1, DUMP_AUTH, 'connection to server at "db.example", port 5433 failed: FATAL:  password authentication failed '
                   'for user "app" (postgresql://app:***@db.example:5433/shop)'),
    (1, LIST_GARBAGE, "input file does not appear to be a valid archive (too short?)"),
    (2, PSQL_CONNECT, 'connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    (-9, "", "killed by signal 9"),
    (-9, COPY_FAILED, 'killed by signal 9 (COPY failed for table "z_checked": ERROR:  new row for relation '
                      '"z_checked" violates check constraint "z_checked_v_check")'),
    (1, "", "exited with status 1"),
    (1, "pg_dump: warning: something odd\nsomething else went wrong\n", "something else went wrong"),
], ids=["copy", "query", "toc-entry", "psql-copy", "psql-syntax", "refused", "auth", "list", "psql-connect",
        "killed", "killed-after-error", "silent", "no-error-word"])
def test_failure_line_reads_each_tool(returncode: int, stderr: str, expected: str) -> None:
    assert failure_line(returncode, stderr) == expected


_line_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@seed(9_0302)
@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(
    _line_text,
    st.builds(lambda t: f"pg_restore: error: {t}", _line_text),
    st.builds(lambda t: f"psql:<stdin>:7: ERROR:  {t}", _line_text),
    st.builds(lambda t: f"pg_dump: error: connection to postgresql://u:{PASSWORD}@h/db failed: {t}", _line_text),
    st.builds(lambda t: f"CONTEXT:  host=h password={PASSWORD} {t}", _line_text),
), max_size=8), returncode=st.sampled_from([1, 2, 3, -9, -15]))
def test_failure_line_is_one_line_without_the_password(lines: list[str], returncode: int) -> None:
    line = failure_line(returncode, "\n".join(lines))
    assert line and "\n" not in line and "\r" not in line
    assert PASSWORD not in line
    assert line.startswith(f"killed by signal {-returncode}") == (returncode < 0)


# --------------------------------------------------------------------------- the wrappers, on stand-ins
STAND_IN = """#!{python}
import json, os, sys, time
report = {{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("PG")}},
          "stdin": sys.stdin.read() if "-f" in sys.argv or sys.argv[1:] == ["--list"] else None}}
print(json.dumps(report))
mode = os.environ.get("STAND_IN_MODE", "ok")
if mode == "fail":
    sys.stderr.write("{name}: error: could not execute query: ERROR:  it broke\\nCommand was: SELECT 1;\\n")
    sys.exit(1)
if mode == "hang":
    sys.stdout.flush()
    time.sleep(120)
"""


def stand_in(tmp_path: Path, name: str) -> Tool:
    path = tmp_path / name
    path.write_text(STAND_IN.format(python=sys.executable, name=name))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return Tool(name=name, path=path, version="18.6")


def report_of(out: bytes | str) -> dict[str, Any]:
    return json.loads(out)  # type: ignore[no-any-return]


def test_pg_restore_gets_the_password_through_the_environment_only(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a caller's own PGOPTIONS and a restore with session settings (one value with a space)
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=0")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    tool = PgRestore(stand_in(tmp_path, "pg_restore"), URL, server_major=18,
                     session={"work_mem": "64MB", "search_path": "a b"})
    # When the archive is restored
    with tool.start(["--exit-on-error", "--jobs=2", tmp_path / "x.dump"]) as running:
        report = report_of(running.stdout.read())
        running.check(RestoreFailed)
    # Then the argv names the database without its password and never prompts
    argv = report["argv"]
    assert isinstance(argv, list) and not any(PASSWORD in a for a in argv)
    assert "--no-password" in argv and any(a.startswith("--dbname=") and "shop" in a for a in argv)
    # and the environment carries the password, our settings after the caller's, and the liveness check
    env = report["env"]
    assert isinstance(env, dict) and env["PGPASSWORD"] == PASSWORD
    assert env["PGOPTIONS"] == ("-c statement_timeout=0 -c work_mem=64MB -c search_path=a\\ b "
                                "-c client_connection_check_interval=2000")


def test_each_wrapper_builds_its_own_argv(tmp_path: Path) -> None:
    dump = PgDump(stand_in(tmp_path, "pg_dump"), URL, server_major=18)
    with dump.start_dump(snapshot="00000003-1", fmt="directory", compression="zstd:1", jobs=3,
                         lock_wait_ms=5000, directory=tmp_path / "d") as running:
        argv = report_of(running.stdout.read())["argv"]
        running.check()
    assert argv[2:] == ["--snapshot=00000003-1", "--lock-wait-timeout=5000", "--format=directory", "--jobs=3",
                        "--no-sync", "--compress=zstd:1", f"--file={tmp_path / 'd'}"]
    with dump.start_dump(snapshot="s", fmt="custom", compression="none") as running:
        assert report_of(running.stdout.read())["argv"][2:] == ["--snapshot=s", "--format=custom", "--compress=0"]
        running.check()
    psql = Psql(stand_in(tmp_path, "psql"), URL)
    with psql.start_script() as running:
        running.stdin.write(b"SELECT 1;\n")
        running.stdin.close()
        running.check()
    pg_restore = PgRestore(stand_in(tmp_path, "pg_restore"), URL)
    with pg_restore.start_restore(tmp_path / "x.dump", jobs=4, no_owner=True, no_acl=True) as running:
        running.check()
    with pytest.raises(ValueError):  # a restore needs its target
        PgRestore(stand_in(tmp_path, "pg_restore")).start_restore(tmp_path / "x.dump", jobs=1)
    with pytest.raises(ValueError):  # a wrapper runs its own tool only
        Psql(stand_in(tmp_path, "pg_dump"))


def test_a_failure_is_one_line_of_the_class_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAND_IN_MODE", "fail")
    tool = PgRestore(stand_in(tmp_path, "pg_restore"), URL)
    with pytest.raises(RestoreFailed) as failed, tool.start_restore(tmp_path / "x.dump", jobs=1) as running:
        running.check(RestoreFailed)
    assert str(failed.value) == "pg_restore failed: ERROR:  it broke"
    with pytest.raises(ToolError, match=r"^pg_restore failed: ERROR:  it broke$"):
        tool.run(["--list", tmp_path / "x.dump"])
    psql = Psql(stand_in(tmp_path, "psql"), URL)
    with pytest.raises(RestoreFailed, match=r"^psql failed \(rolled back\): ERROR:  it broke$"), \
            psql.start_script() as running:
        running.stdin.close()
        running.check(RestoreFailed, "psql failed (rolled back)")


def test_an_exception_in_the_block_stops_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a tool that would run for two minutes
    monkeypatch.setenv("STAND_IN_MODE", "hang")
    tool = PgDump(stand_in(tmp_path, "pg_dump"), URL)
    # When an interrupt arrives while it runs
    with pytest.raises(Interrupted), tool.start_dump(snapshot="s", fmt="custom", compression="none") as running:
        running.stdout.readline()  # it started
        raise Interrupted(signal.SIGTERM)
    # Then it was stopped (its process group is gone) before the interrupt went on
    assert running.proc.returncode == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.killpg(running.proc.pid, 0)
    assert running.proc not in live_tools()


# --------------------------------------------------------------------------- the real pg_restore, no server
def test_real_pg_restore_lists_nothing_from_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "x.dump"
    garbage.write_bytes(b"not an archive\n")
    pg_restore = PgRestore.find()
    with pytest.raises(ToolError, match=r"^pg_restore failed: input file does not appear to be a valid archive"):
        pg_restore.list_toc(garbage)
    with pg_restore.start_list() as running:
        running.stdin.write(b"PGDMP")  # the custom format's magic, then nothing
        running.stdin.close()
        assert running.failure() is not None
    assert find_tool("pg_restore").path == pg_restore.tool.path
