"""Loading a proven archive into a proven, marked target: pg_restore or psql, then ANALYZE.

Invariants: the tools run with restore-tuned session settings (RESTORE_SESSION in PGOPTIONS, after
the caller's own); on any exception (an interrupt too) the tool and its workers are stopped before
the exception goes on, so nothing loads into the target afterwards; `--no-owner` on a plain script
drops ownership (and with `no_acl` grant) statements outside COPY data only.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog
from ..archive import CHUNK
from ..dburl import DatabaseUrl, mask_secrets
from ..errors import PgrunbookError
from ..pgtools import StderrTail, Tool, ToolProcess, spawn, tool_env

# Session settings for every restore connection (PGOPTIONS): the load is re-runnable from the
# archive, so a lost commit on a crash costs nothing; index builds get a large memory budget.
RESTORE_SESSION = {
    "synchronous_commit": "off",
    "maintenance_work_mem": "512MB",
    "work_mem": "64MB",
    "jit": "off",
}


class RestoreFailed(PgrunbookError):
    """pg_restore/psql failed part-way: the target is marked failed and must not be used."""


def _pgoptions(overrides: Mapping[str, str] | None) -> str:
    merged = {**RESTORE_SESSION, **(overrides or {})}
    ours = " ".join(f"-c {k}={v}" for k, v in merged.items())
    existing = os.environ.get("PGOPTIONS", "").strip()
    return f"{existing} {ours}".strip()


_TOC_ENTRY = re.compile(r"from TOC entry \d+; \d+ \d+ (.+)$")


def _pg_restore_failure(stderr: str) -> str:
    """'<what failed>: <first error>' from pg_restore's stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    error = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "no output")
    error = re.sub(r"^pg_restore:\s*error:\s*", "", error)
    error = re.sub(r"^could not execute query:\s*", "", error)
    obj = next((m[1] for ln in lines if (m := _TOC_ENTRY.search(ln))), None)
    if obj:
        parts = obj.rsplit(" ", 1)  # drop the owner
        obj = parts[0] if len(parts) == 2 else obj
        return f"failed at {obj}: {error}"
    return error


def _psql_failure(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    error = next((ln for ln in lines if "ERROR:" in ln or "FATAL:" in ln), lines[-1] if lines else "no output")
    error = re.sub(r"^psql:[^:]*:\d+:\s*", "", error)
    context = next((ln for ln in lines if ln.startswith(("CONTEXT:", "STATEMENT:"))), None)
    where = re.search(r"psql:[^:]*:(\d+):", next((ln for ln in lines if "ERROR:" in ln), ""))
    parts = [error]
    if context:
        parts.append(context[:200])
    if where:
        parts.append(f"at line {where[1]} of the script")
    return " ".join(parts)


def run_pg_restore(tool: Tool, url: DatabaseUrl, path: Path, jobs: int, no_owner: bool, no_acl: bool,
                    session: Mapping[str, str] | None, server_major: int) -> None:
    """pg_restore -j N into the target; on any exception (an interrupt too) pg_restore and its workers are
    stopped before it goes on, so nothing loads into the target afterwards."""
    args = [str(tool.path), f"--dbname={url.conninfo()}", "--no-password", "--exit-on-error", f"--jobs={jobs}"]
    if no_owner:
        args.append("--no-owner")
    if no_acl:
        args.append("--no-acl")
    args.append(str(path))
    env = tool_env({**url.tool_env(), "PGOPTIONS": _pgoptions(session)}, server_major=server_major)
    proc = spawn(args, env=env, stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        errors = StderrTail(proc.stderr)
        rc = proc.wait()
    except BaseException:
        proc.stop()
        raise
    if rc != 0:
        raise RestoreFailed(f"pg_restore failed: {mask_secrets(_pg_restore_failure(errors.text))}")


_OWNER_LINE = re.compile(rb"^(ALTER [A-Z ]+ .* OWNER TO .*;|SET SESSION AUTHORIZATION .*;)\s*$")
_ACL_LINE = re.compile(rb"^(GRANT|REVOKE) .*;\s*$")
_COPY_START = re.compile(rb"^COPY .* FROM stdin;\s*$")


class _PlainFilter:
    """Drops ownership (and grant) statements of a pg_dump script outside COPY data (--no-owner)."""

    def __init__(self, no_acl: bool) -> None:
        self.no_acl = no_acl
        self.in_copy = False
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self.carry + data
        cut = data.rfind(b"\n") + 1
        self.carry = data[cut:]
        return self._lines(data[:cut])

    def flush(self) -> bytes:
        rest, self.carry = self.carry, b""
        return self._lines(rest)

    def _lines(self, data: bytes) -> bytes:
        out = []
        for line in data.splitlines(keepends=True):
            if self.in_copy:
                if line.rstrip(b"\r\n") == b"\\.":
                    self.in_copy = False
                out.append(line)
            elif _COPY_START.match(line):
                self.in_copy = True
                out.append(line)
            elif _OWNER_LINE.match(line) or (self.no_acl and _ACL_LINE.match(line)):
                continue
            else:
                out.append(line)
        return b"".join(out)


def run_psql(tool: Tool, url: DatabaseUrl, path: Path, gz: bool, no_owner: bool, no_acl: bool,
              session: Mapping[str, str] | None, server_major: int) -> None:
    """psql --single-transaction fed the script; on any exception (an interrupt too) psql is stopped
    (its transaction rolls back) before it goes on."""
    args = [str(tool.path), "-X", "-q", "-b", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--no-password",
            f"--dbname={url.conninfo()}", "-f", "-"]
    env = tool_env({**url.tool_env(), "PGOPTIONS": _pgoptions(session)}, server_major=server_major)
    proc = spawn(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        _feed_psql(proc, path, gz, no_owner, no_acl)
    except BaseException:
        proc.stop()
        raise


def _feed_psql(proc: ToolProcess, path: Path, gz: bool, no_owner: bool, no_acl: bool) -> None:
    assert proc.stdin is not None and proc.stderr is not None
    errors = StderrTail(proc.stderr)
    inflater = zlib.decompressobj(31) if gz else None
    filt = _PlainFilter(no_acl) if no_owner else None
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                data = inflater.decompress(chunk) if inflater else chunk
                if filt:
                    data = filt.feed(data)
                proc.stdin.write(data)
            tail = inflater.flush() if inflater else b""
            if filt:
                tail = filt.feed(tail) + filt.flush()
            proc.stdin.write(tail)
    except (BrokenPipeError, OSError):
        pass  # psql stopped on an error: its exit status says why
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.close()
    rc = proc.wait()
    if rc != 0:
        raise RestoreFailed(f"psql failed (the whole restore was rolled back): "
                            f"{mask_secrets(_psql_failure(errors.text))}")


def analyze(url: DatabaseUrl, jobs: int | None = None) -> float:
    """ANALYZE every user table (a restore has no statistics), largest first, over `jobs` connections
    (default: CPU count), as `vacuumdb --analyze-only --jobs` does; returns seconds."""
    t0 = time.monotonic()
    with catalog.connect(url, autocommit=True, application="pgrunbook-analyze") as conn:
        rows = conn.execute(f"""
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'm', 'p') AND {catalog.USER_SCHEMAS}
            ORDER BY pg_total_relation_size(c.oid) DESC""").fetchall()
    tables = [(str(a), str(b)) for a, b in rows]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tables)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    conns: list[psycopg.Connection[Any]] = []

    def work() -> None:
        try:
            with catalog.connect(url, autocommit=True, application="pgrunbook-analyze") as conn:
                with lock:
                    conns.append(conn)
                conn.execute("SET maintenance_work_mem = '256MB'")
                while True:
                    with lock:
                        if not tables or errors:
                            return
                        schema, name = tables.pop(0)
                    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, name=f"analyze-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as stop:  # interrupted: no further table, and cancel the ANALYZEs running
        with lock:
            errors.append(stop)
            running = list(conns)
        for conn in running:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.cancel_safe(timeout=5)
        for t in threads:
            t.join(timeout=10)
        raise
    if errors:
        exc = errors[0]
        raise exc if isinstance(exc, PgrunbookError) else PgrunbookError(
            f"ANALYZE failed: {mask_secrets(str(exc).strip())}")
    return time.monotonic() - t0
