"""Loading a proven archive into a proven, marked target: pg_restore or psql, then ANALYZE.

Invariants: the tools run with restore-tuned session settings (RESTORE_SESSION in PGOPTIONS, after
the caller's own); on any exception (an interrupt too) the tool and its workers are stopped before
the exception goes on, so nothing loads into the target afterwards; `--no-owner` on a plain script
drops ownership (and with `no_acl` grant) statements outside COPY data only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from .. import dbinfo, tablepool
from ..dburl import DatabaseUrl, mask_secrets
from ..dumpfile import CHUNK
from ..errors import ChecksumMismatch, PgrunbookError, RestoreFailed
from ..pgtools import PgRestore, Psql, Tool

# Session settings for every restore connection (PGOPTIONS): the load is re-runnable from the
# archive, so a lost commit on a crash costs nothing; index builds get a large memory budget.
RESTORE_SESSION = {
    "synchronous_commit": "off",
    "maintenance_work_mem": "512MB",
    "work_mem": "64MB",
    "jit": "off",
}


def _tool_session(session: Mapping[str, str] | None) -> dict[str, str]:
    return {**RESTORE_SESSION, **(session or {})}


def load_archive(tool: Tool, url: DatabaseUrl, path: Path, *, jobs: int, no_owner: bool, no_acl: bool,
                 session: Mapping[str, str] | None, server_major: int) -> None:
    """pg_restore -j N into the target; on any exception (an interrupt too) pg_restore and its workers are
    stopped before it goes on, so nothing loads into the target afterwards."""
    pg_restore = PgRestore(tool, url, server_major=server_major, session=_tool_session(session))
    with pg_restore.start_restore(path, jobs=jobs, no_owner=no_owner, no_acl=no_acl) as loading:
        loading.check(RestoreFailed)


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


def load_script(tool: Tool, url: DatabaseUrl, path: Path, *, gz: bool, sha256: str, no_owner: bool, no_acl: bool,
                session: Mapping[str, str] | None, server_major: int,
                on_bytes: Callable[[int], None] | None = None) -> None:
    """psql --single-transaction fed the script. psql commits when its input ends, so its input ends only
    after every byte of the file, hashed again on the way, proved to be the `sha256` verified before (a
    file changed or cut since, or unreadable, stops psql: its transaction rolls back); on any exception
    (an interrupt too) psql is stopped before it goes on."""
    psql = Psql(tool, url, server_major=server_major, session=_tool_session(session))
    with psql.start_script() as loading:
        delivered = _feed(loading.stdin, path, gz, _PlainFilter(no_acl) if no_owner else None, on_bytes)
        if delivered is not None and delivered != sha256:
            raise ChecksumMismatch(f"{path.name} changed after it was verified (it now hashes to {delivered}, "
                                   f"not {sha256}): nothing of it was committed")
        with contextlib.suppress(BrokenPipeError, OSError):
            loading.stdin.close()  # the end of the script: psql commits
        loading.check(RestoreFailed, "psql failed (the whole restore was rolled back)")


def _feed(stdin: IO[bytes], path: Path, gz: bool, filt: _PlainFilter | None,
          on_bytes: Callable[[int], None] | None = None) -> str | None:
    """Write the script (inflated, filtered) to psql; the sha256 of the file's bytes, or None when psql
    stopped reading (it failed: its exit status says why). `on_bytes(n)`: the file's bytes fed so far."""
    digest = hashlib.sha256()
    inflater = zlib.decompressobj(31) if gz else None
    fed = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                data = inflater.decompress(chunk) if inflater else chunk
                stdin.write(filt.feed(data) if filt else data)
                fed += len(chunk)
                if on_bytes is not None:
                    on_bytes(fed)
            tail = inflater.flush() if inflater else b""
            stdin.write(filt.feed(tail) + filt.flush() if filt else tail)
    except BrokenPipeError:
        return None
    except zlib.error as exc:
        raise ChecksumMismatch(f"{path.name} changed after it was verified (it no longer inflates: {exc}): "
                               "nothing of it was committed") from None
    return digest.hexdigest()


def _analyze_session(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET maintenance_work_mem = '256MB'")


def analyze(url: DatabaseUrl, jobs: int | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> float:
    """ANALYZE every user table (a restore has no statistics), largest first, over `jobs` connections
    (default: CPU count), as `vacuumdb --analyze-only --jobs` does; returns seconds. `on_progress(done, total)`
    after each table. The pool is tablepool's: the first failure or an interrupt stops it and cancels the
    ANALYZEs still running."""
    t0 = time.monotonic()
    with dbinfo.connect(url, autocommit=True, application="pgrunbook-analyze") as conn:
        rows = conn.execute(f"""
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'm', 'p') AND {dbinfo.USER_SCHEMAS}
            ORDER BY pg_total_relation_size(c.oid) DESC""").fetchall()
    tables = [(str(a), str(b)) for a, b in rows]
    try:
        tablepool.each_on_own_connection(
            url, tables, jobs or os.cpu_count() or 1,
            lambda c, t: c.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*t))),
            application="pgrunbook-analyze",
            setup=_analyze_session,
            on_done=None if on_progress is None else lambda done, total, *_: on_progress(done, total))
    except PgrunbookError:
        raise
    except Exception as exc:
        raise RestoreFailed(f"ANALYZE failed: {mask_secrets(str(exc).strip())}") from None
    return time.monotonic() - t0
