"""Prove a restored copy: the runbook's "Verify the restore" step, exact and automatic.

Checks (each with expected, actual and a verdict):
- connectivity (`SELECT now()`) and no pgrunbook restore mark (in progress / FAILED) on the database;
- with a manifest: the exact row count of EVERY table equals the manifest's, no table missing or
  unexpected, every sequence at least at the manifest's value, the applied Prisma migrations
  (name and checksum) equal the manifest's and none failed;
- without one: the row counts of the runbook's tables "User", "Job", "SecurityEvent" where they
  exist, and no failed Prisma migration;
- with an app URL (a staging app pointed at the copy): `GET /health`, `GET /ready`, configured
  checks `METHOD:PATH:STATUS`, and an optional sign-in request whose credentials come from the
  settings (Settings.smoke: SMOKE_SIGNIN_BODY as JSON, or SMOKE_EMAIL + SMOKE_PASSWORD).
`ok` only when every check passes.

Counting at scale (the manifest's tables):
- Assumes nothing writes to the copy while it is verified (a restored copy before it is put to use):
  each count runs in its own autocommit transaction on one of `jobs` connections, so the counts are
  of what is committed when each table is read, not of one snapshot. The connections are read-only
  (default_transaction_read_only); the first read of a freshly restored table still sets hint bits
  (the server writes those pages back), as the app's first read would.
- Up to `jobs` connections (VerifyOptions.jobs, default `default_jobs()`: the CPU count, at most 4,
  at least 1; never more than there are tables) count one table each at a time, largest table first
  so the longest count does not start last. The size is pg_class.relpages (what the restore's ANALYZE
  recorded; a table never analyzed or vacuumed sorts as empty): a catalog read that takes no lock,
  where pg_relation_size would wait behind any lock on any table before the first count started.
  Each connection keeps the server's own max_parallel_workers_per_gather: the server's
  max_parallel_workers bounds the parallel workers of all of them together, and a lone large table
  at the end still gets them.
- Every table is counted with count(*), whatever its size: no cheaper signal is exact.
  pg_class.reltuples and pg_stat_user_tables.n_live_tup are estimates (ANALYZE samples, statistics
  that lag or are lost); an index-only count IS count(*) (the planner already picks it where the
  visibility map makes it cheaper, e.g. after VACUUM; a fresh restore's map is empty), and
  pg_relation_size says nothing about the number of rows.
- Each row check carries its count's seconds; the report has the jobs, the counting time and the
  slowest tables (text and JSON). `run_verify(..., on_progress=f)`: f(done, total, table, seconds) is
  called in the calling thread once per counted table, `done` going 1, 2, ... total.
- A failed count (a lost connection, a table gone) stops the other counts (no new table starts, the
  running ones are cancelled, every connection is closed) and is ONE failed check "row counts" whose
  detail is one line; the sequence and Prisma checks still run.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from . import dbinfo, tablepool
from .archive import ArchiveRef
from .dburl import DatabaseUrl, mask_secrets
from .errors import ManifestMissing, PgrunbookError, UsageError
from .manifest import Manifest
from .restore import database_mark
from .settings import Settings

RUNBOOK_TABLES = ("User", "Job", "SecurityEvent")
DEFAULT_HTTP = ("GET:/health:200", "GET:/ready:200")
MAX_DEFAULT_JOBS = 4  # counting is I/O bound: more connections than this rarely help and load the server
SLOWEST_SHOWN = 5  # tables named in the text report's slowest line (the JSON lists SLOWEST_LISTED)
SLOWEST_LISTED = 20

ProgressCallback = Callable[[int, int, str, float], None]  # (tables_done, tables_total, table, seconds)


def default_jobs() -> int:
    """Connections that count at once when none is given: the CPU count, at most 4, at least 1."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS))


class TableTime(NamedTuple):
    table: str  # the report's key (manifest.key)
    rows: int
    bytes: int  # pg_class.relpages in bytes when counted
    seconds: float


@dataclass(frozen=True)
class HttpCheck:
    method: str
    path: str
    status: int
    body: Any = None

    @classmethod
    def parse(cls, spec: str) -> HttpCheck:
        """'GET:/health:200' (the path may itself contain ':')."""
        method, sep, rest = spec.partition(":")
        path, sep2, status = rest.rpartition(":")
        if not sep or not sep2 or not method.isalpha() or not path.startswith("/") or not status.isdigit():
            raise UsageError(f"invalid check {spec!r}: expected METHOD:PATH:STATUS, e.g. GET:/health:200")
        return cls(method=method.upper(), path=path, status=int(status))

    @property
    def label(self) -> str:
        return f"http {self.method} {self.path}"


@dataclass
class CheckResult:
    name: str
    expected: str
    actual: str
    ok: bool
    detail: str = ""
    seconds: float | None = None  # a row count's own time

    def to_dict(self) -> dict[str, Any]:
        out = {"check": self.name, "expected": self.expected, "actual": self.actual,
               "verdict": "pass" if self.ok else "FAIL", "ok": self.ok, "detail": self.detail}
        return out if self.seconds is None else {**out, "seconds": round(self.seconds, 3)}


@dataclass
class VerifyReport:
    target: str
    manifest: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 0  # connections that counted rows (0: no table counted in parallel)
    count_seconds: float = 0.0  # wall time of the row counts
    table_times: list[TableTime] = field(default_factory=list)  # every counted table, slowest first

    @property
    def slowest(self) -> list[TableTime]:
        return self.table_times[:SLOWEST_LISTED]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, expected: object, actual: object, ok: bool, detail: str = "",
            seconds: float | None = None) -> CheckResult:
        check = CheckResult(name=name, expected=str(expected), actual=str(actual), ok=ok, detail=detail,
                            seconds=seconds)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "manifest": self.manifest, "ok": self.ok,
               "verdict": "verified" if self.ok else "FAILED", "seconds": round(self.seconds, 3),
               "checks": [c.to_dict() for c in self.checks],
               "failures": [f"{c.name}: expected {c.expected}, actual {c.actual}" for c in self.failures]}
        if self.jobs:
            out["counts"] = {"tables": len(self.table_times), "jobs": self.jobs,
                             "seconds": round(self.count_seconds, 3),
                             "slowest": [{"table": t.table, "rows": t.rows, "bytes": t.bytes,
                                          "seconds": round(t.seconds, 3)} for t in self.slowest]}
        return out

    def text(self) -> str:
        head = f"{'VERIFIED' if self.ok else 'FAILED'}  {self.target}"
        if self.manifest:
            head += f"  (against {self.manifest})"
        width = max([len(c.name) for c in self.checks] + [5])
        ew = max([len(c.expected) for c in self.checks] + [8])
        aw = max([len(c.actual) for c in self.checks] + [6])
        lines = [head, f"  {'CHECK':<{width}}  {'EXPECTED':<{ew}}  {'ACTUAL':<{aw}}  VERDICT"]
        for c in self.checks:
            line = f"  {c.name:<{width}}  {c.expected:<{ew}}  {c.actual:<{aw}}  {'pass' if c.ok else 'FAIL'}"
            lines.append(line + (f"  ({c.detail})" if c.detail else ""))
        if self.jobs:
            slow = ", ".join(f"{t.table} {t.seconds:.2f}s" for t in self.table_times[:SLOWEST_SHOWN])
            lines.append(f"row counts: {len(self.table_times)} tables in {self.count_seconds:.2f}s over "
                         f"{self.jobs} connection{'s' if self.jobs != 1 else ''}"
                         + (f"; slowest: {slow}" if slow else ""))
        lines.append(f"{len(self.checks) - len(self.failures)}/{len(self.checks)} checks passed in "
                     f"{self.seconds:.2f}s")
        return "\n".join(lines)


@dataclass(frozen=True)
class VerifyOptions:
    database_url: str | None = None  # default $NEW_DATABASE_URL, then $DATABASE_URL
    manifest: str | None = None  # URI of the archive or of its .manifest.json
    manifest_data: Manifest | None = None  # or the manifest itself (the drill passes it)
    app_url: str | None = None
    checks: tuple[HttpCheck, ...] = ()
    sign_in: HttpCheck | None = None
    default_http: bool = True  # GET /health and /ready when app_url is given
    http_timeout: float = 10.0
    jobs: int | None = None  # connections counting rows at once (default: default_jobs())


def _load_manifest(opts: VerifyOptions) -> tuple[Manifest | None, str | None]:
    if opts.manifest_data is not None:
        return opts.manifest_data, opts.manifest
    if not opts.manifest:
        return None, None
    ref = ArchiveRef.from_uri(opts.manifest)
    manifest = ref.manifest()
    if manifest is None:
        raise ManifestMissing(f"no manifest found for {opts.manifest} ({ref.uri}.manifest.json)")
    return manifest, ref.uri + ".manifest.json"


class _CountsFailed(Exception):
    """A row count failed (its message is one line); the other counts were stopped."""


def _count(conn: psycopg.Connection[Any], table: dbinfo.TableRef) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.schema, table.name))).fetchone()
    return int(row[0]) if row else 0


def _read_only(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET default_transaction_read_only = on")


def count_rows(report: VerifyReport, conn: psycopg.Connection[Any], url: DatabaseUrl,
               tables: list[dbinfo.TableRef], key: Callable[[dbinfo.TableRef], str], jobs: int,
               on_progress: ProgressCallback | None = None) -> dict[dbinfo.TableRef, tuple[int, float]]:
    """Exact count(*) of `tables` over up to `jobs` connections of their own, largest table first
    (sizes from pg_class.relpages, read on `conn`); records jobs, time and per-table times in `report`.
    {table: (rows, seconds)}; raises _CountsFailed (one line) when any count fails."""
    rows = conn.execute("SELECT c.oid::bigint, c.relpages::bigint * current_setting('block_size')::bigint "
                        "FROM pg_class c WHERE c.oid = ANY(%s)", ([t.oid for t in tables],)).fetchall()
    size = {int(oid): int(n or 0) for oid, n in rows}
    order = sorted(tables, key=lambda t: (-size.get(t.oid, 0), t.schema, t.name))
    report.jobs = min(jobs, len(order))  # 0: no table, no connection opened

    def done(n: int, total: int, table: dbinfo.TableRef, _rows: int, seconds: float) -> None:
        if on_progress is not None:
            on_progress(n, total, key(table), seconds)

    t0 = time.monotonic()

    def work(c: psycopg.Connection[Any], table: dbinfo.TableRef) -> int:
        try:
            return _count(c, table)
        except psycopg.Error as exc:
            raise _CountsFailed(f"counting {key(table)}: {_first_line(exc)}") from None

    try:
        finished = tablepool.each_on_own_connection(url, order, jobs, work, application="pgrunbook-verify",
                                                    setup=_read_only, on_done=done)
    except _CountsFailed:
        raise
    except psycopg.Error as exc:  # setting up a worker's connection
        raise _CountsFailed(f"counting rows: {_first_line(exc)}") from None
    except PgrunbookError as exc:  # a worker could not connect (the message is one line already)
        raise _CountsFailed(f"counting rows: {exc}") from None
    finally:
        report.count_seconds = time.monotonic() - t0
    report.table_times = sorted((TableTime(key(t), n, size.get(t.oid, 0), sec) for t, n, sec in finished),
                                key=lambda x: (-x.seconds, x.table))
    return {t: (n, sec) for t, n, sec in finished}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return mask_secrets(lines[0] if lines else type(exc).__name__)


def _db_checks(report: VerifyReport, url: DatabaseUrl, manifest: Manifest | None, jobs: int,
               on_progress: ProgressCallback | None) -> None:
    try:
        conn = dbinfo.connect(url, autocommit=True, application="pgrunbook-verify")
    except PgrunbookError as exc:
        report.add("connectivity", "SELECT now() answers", "no connection", False, str(exc))
        return
    with conn:
        try:
            now = conn.execute("SELECT now()").fetchone()
            report.add("connectivity", "SELECT now() answers", now[0].isoformat(timespec="seconds") if now else "-",
                       now is not None)
            mark = database_mark(conn)
            report.add("restore mark", "none", "none" if mark is None else mark[:120], mark is None,
                       "" if mark is None else "the restore into this database did not finish")
            if manifest is not None:
                _manifest_checks(report, conn, manifest, url, jobs, on_progress)
            else:
                _runbook_checks(report, conn)
            _prisma_checks(report, conn, manifest)
        except psycopg.Error as exc:
            report.add("database query", "answers", "error", False, _first_line(exc))


def _manifest_checks(report: VerifyReport, conn: psycopg.Connection[Any], manifest: Manifest, url: DatabaseUrl,
                     jobs: int, on_progress: ProgressCallback | None) -> None:
    # both sides keyed by manifest.key(schema, name): unambiguous names (version 2), the old text (version 1)
    expected = manifest.tables
    try:
        timed = count_rows(report, conn, url, dbinfo.user_tables(conn), lambda t: manifest.key(t.schema, t.name),
                           jobs, on_progress)
    except _CountsFailed as exc:
        report.add("row counts", f"{len(expected)} tables counted", "error", False, str(exc))
        _sequence_checks(report, conn, manifest)
        return
    counted = {t: n for t, (n, _) in timed.items()}
    seconds = {manifest.key(t.schema, t.name): sec for t, (_, sec) in timed.items()}
    actual = {manifest.key(t.schema, t.name): count for t, count in counted.items()}
    if len(actual) < len(counted):  # version 1 keys: "s.x".y and s."x.y" both read "s.x.y"
        keys = [manifest.key(t.schema, t.name) for t in counted]
        for key in sorted({k for k in keys if keys.count(k) > 1}):
            report.add(f"rows {key}", expected.get(key, "no such table"), f"{keys.count(key)} tables of this name",
                       False, "the version 1 manifest cannot tell these tables apart")
            expected.pop(key, None)
            actual.pop(key)
    for table in sorted(expected):
        if table not in actual:
            report.add(f"rows {table}", expected[table], "table missing", False)
        else:
            report.add(f"rows {table}", expected[table], actual[table], actual[table] == expected[table],
                       "" if actual[table] == expected[table] else
                       f"{table}: expected {expected[table]} rows, found {actual[table]}", seconds.get(table))
    for table in sorted(set(actual) - set(expected)):
        report.add(f"rows {table}", "no such table", actual[table], False, "a table the backup did not have",
                   seconds.get(table))
    _sequence_checks(report, conn, manifest)


def _sequence_checks(report: VerifyReport, conn: psycopg.Connection[Any], manifest: Manifest) -> None:
    seqs = {manifest.key(schema, name): value for (schema, name), value in dbinfo.sequences(conn).items()}
    for name, value in sorted(manifest.sequences.items()):
        if name not in seqs:
            report.add(f"sequence {name}", f">= {value}", "sequence missing", False)
            continue
        got = seqs[name]
        ok = value is None or (got is not None and got >= value)
        report.add(f"sequence {name}", f">= {value}" if value is not None else "any", got, ok)


def _runbook_checks(report: VerifyReport, conn: psycopg.Connection[Any]) -> None:
    found = 0
    for table in RUNBOOK_TABLES:
        row = conn.execute("SELECT to_regclass(%s)::text", (f'"{table}"',)).fetchone()
        if not row or row[0] is None:
            continue
        found += 1
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        report.add(f'rows "{table}"', "table readable", count[0] if count else "-", count is not None)
    if not found:
        report.add("runbook tables", '"User", "Job" or "SecurityEvent"', "none found", False,
                   "no manifest given and none of the runbook's tables exist: pass --manifest")


def _applied(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {str(r["name"]): str(r["checksum"]) for r in rows if r.get("finished_at") and not r.get("rolled_back_at")}


def _prisma_checks(report: VerifyReport, conn: psycopg.Connection[Any], manifest: Manifest | None) -> None:
    rows = dbinfo.prisma_migrations(conn)
    expected_rows = manifest.prisma_migrations if manifest is not None else None
    if rows is None:
        if expected_rows is not None:
            report.add("prisma migrations", f"{len(_applied(expected_rows))} applied", "no _prisma_migrations", False)
        return
    applied = _applied(rows)
    failed = sorted({str(r["name"]) for r in rows if not r.get("finished_at") and not r.get("rolled_back_at")}
                    - set(applied))
    rolled_back = sorted(str(r["name"]) for r in rows if r.get("rolled_back_at"))
    report.add("prisma failed migrations", "none", ", ".join(failed) or "none", not failed,
               f"rolled back (reported): {', '.join(rolled_back)}" if rolled_back else "")
    if expected_rows is None:
        if manifest is not None:
            report.add("prisma migrations", "no _prisma_migrations (as in the backup)", f"{len(applied)} applied",
                       False)
        return
    want = _applied(expected_rows)
    missing = sorted(set(want) - set(applied))
    extra = sorted(set(applied) - set(want))
    changed = sorted(n for n in set(want) & set(applied) if want[n] != applied[n])
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
               ([f"not in the backup {', '.join(extra)}"] if extra else []) + \
               ([f"checksum differs {', '.join(changed)}"] if changed else [])
    last = max(want) if want else "-"
    report.add("prisma migrations", f"{len(want)} applied (last {last})",
               f"{len(applied)} applied (last {max(applied) if applied else '-'})", not problems, "; ".join(problems))


def http_check(app_url: str, check: HttpCheck, timeout: float, name: str | None = None) -> CheckResult:
    url = app_url.rstrip("/") + check.path
    name = name or check.label
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--app-url must be an http(s) URL, not {app_url!r}")
    data = None if check.body is None else json.dumps(check.body).encode()
    request = urllib.request.Request(url, data=data, method=check.method,  # noqa: S310 - scheme checked above
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              "User-Agent": "pgrunbook-verify"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    except TimeoutError:
        return CheckResult(name, str(check.status), f"timed out after {timeout:g}s", False, url)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return CheckResult(name, str(check.status), f"timed out after {timeout:g}s", False, url)
        return CheckResult(name, str(check.status), f"unreachable ({reason})", False, url)
    except OSError as exc:
        return CheckResult(name, str(check.status), f"unreachable ({exc})", False, url)
    ms = (time.monotonic() - t0) * 1000
    return CheckResult(name, str(check.status), str(status), status == check.status, f"{url} in {ms:.0f} ms")


def run_verify(opts: VerifyOptions, settings: Settings, *, on_progress: ProgressCallback | None = None
               ) -> VerifyReport:
    """Verify a database (and optionally an app pointed at it); never raises for a failed check.
    Row counts run over `opts.jobs` connections (see the module docstring); `on_progress(tables_done,
    tables_total, table, seconds)` is called in this thread after each counted table."""
    if opts.jobs is not None and opts.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {opts.jobs}")
    url = DatabaseUrl.parse(opts.database_url or settings.new_database_url or settings.database_url,
                            what="database URL to verify (--database-url, NEW_DATABASE_URL or DATABASE_URL)")
    manifest, manifest_uri = _load_manifest(opts)
    checks: list[HttpCheck] = []
    if opts.app_url:
        if opts.default_http:
            checks += [HttpCheck.parse(s) for s in DEFAULT_HTTP]
        checks += list(opts.checks)
    elif opts.checks or opts.sign_in:
        raise UsageError("HTTP checks need --app-url (the staging app pointed at the restored copy)")
    sign_in = None
    if opts.sign_in is not None:
        sign_in = HttpCheck(opts.sign_in.method, opts.sign_in.path, opts.sign_in.status,
                            opts.sign_in.body if opts.sign_in.body is not None else settings.smoke.body())

    t0 = time.monotonic()
    report = VerifyReport(target=url.display(), manifest=manifest_uri)
    _db_checks(report, url, manifest, opts.jobs or settings.verify_jobs or default_jobs(), on_progress)
    if opts.app_url:
        for check in checks:
            report.checks.append(http_check(opts.app_url, check, opts.http_timeout))
        if sign_in is not None:
            report.checks.append(http_check(opts.app_url, sign_in, opts.http_timeout,
                                            name=f"sign-in {sign_in.method} {sign_in.path}"))
    report.seconds = time.monotonic() - t0
    return report
