"""`pgrunbook verify` against real databases and a real HTTP server (a stand-in staging app)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.cli import main
from pgrunbook.restore import RestoreOptions, run_restore
from pgrunbook.settings import Settings
from pgrunbook.verify import HttpCheck, VerifyOptions, run_verify
from tests.fixtures.restore_helpers import reset_cli_logging

SETTINGS = Settings.from_env({})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("DATABASE_URL", "NEW_DATABASE_URL", "SMOKE_EMAIL", "SMOKE_PASSWORD", "SMOKE_SIGNIN_BODY"):
        monkeypatch.delenv(name, raising=False)
    yield
    reset_cli_logging()


@pytest.fixture()
def restored(sample_db: str, fresh_db: str, tmp_path: Path) -> tuple[BackupResult, str]:
    backup = run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=1), SETTINGS)
    run_restore(RestoreOptions(file=backup.archive, target_url=fresh_db, force=True), SETTINGS)
    return backup, fresh_db


def test_verify_passes_on_exact_copy(restored: tuple[BackupResult, str], capsys: pytest.CaptureFixture[str]) -> None:
    backup, target = restored
    rc = main(["verify", "--database-url", target, "--manifest", backup.manifest, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["verdict"] == "verified"
    names = {c["check"] for c in out["checks"]}
    assert {"connectivity", "rows public.User", "rows public.Job", "rows public.SecurityEvent",
            "sequence public.User_id_seq", "prisma migrations", "prisma failed migrations"} <= names
    assert all({"expected", "actual", "verdict"} <= set(c) for c in out["checks"])


def test_verify_one_row_deleted(restored: tuple[BackupResult, str], capsys: pytest.CaptureFixture[str]) -> None:
    # Given a copy with one row deleted
    backup, target = restored
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute('DELETE FROM "Job" WHERE id = (SELECT min(id) FROM "Job")')
    # When verified; Then exit 1, naming the table and both counts
    rc = main(["verify", "--database-url", target, "--manifest", backup.archive])
    out = capsys.readouterr().out
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "rows public.Job" in ln)
    assert "600" in line and "599" in line and "FAIL" in line
    assert out.startswith("FAILED")


def test_verify_sequence_behind_and_prisma_failed(restored: tuple[BackupResult, str]) -> None:
    backup, target = restored
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("""SELECT setval('"User_id_seq"', 5)""")
        conn.execute("""INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at)
                        VALUES ('x', 'abc', '20260301000000_broken', now())""")
    report = run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS)
    failed = {c.name: c for c in report.failures}
    assert set(failed) == {"sequence public.User_id_seq", "prisma failed migrations", "rows public._prisma_migrations"}
    assert failed["prisma failed migrations"].actual == "20260301000000_broken"


def test_verify_prisma_migrations_differ(restored: tuple[BackupResult, str]) -> None:
    backup, target = restored
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() "
                     "WHERE migration_name = '20260115000000_security_events'")
    report = run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS)
    prisma = next(c for c in report.checks if c.name == "prisma migrations")
    assert not prisma.ok and "missing 20260115000000_security_events" in prisma.detail


def test_verify_without_manifest_counts_runbook_tables(sample_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEW_DATABASE_URL", sample_db)
    report = run_verify(VerifyOptions(), Settings.from_env())
    assert report.ok, report.text()
    counts = {c.name: c.actual for c in report.checks}
    assert counts['rows "User"'] == "200" and counts['rows "Job"'] == "600" and counts['rows "SecurityEvent"'] == "1000"


def test_verify_unreachable_database_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from pgrunbook.pgserver import free_port

    rc = main(["verify", "--database-url", f"postgresql://u:secret@127.0.0.1:{free_port()}/x"])
    out = capsys.readouterr().out
    assert rc == 1 and "connectivity" in out and "secret" not in out


# --------------------------------------------------------------------------- HTTP smoke checks
class _App(http.server.BaseHTTPRequestHandler):
    def _reply(self, status: int, body: bytes = b"{}") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path in ("/health", "/ready", "/api/providers?q=a"):
            self._reply(200)
        elif self.path == "/broken":
            self._reply(500, b'{"error": "boom"}')
        elif self.path == "/slow":
            time.sleep(2)
            self._reply(200)
        else:
            self._reply(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        ok = self.path == "/api/auth/sign-in" and body == {"email": "ops@example.com", "password": "pw-123"}
        self._reply(200 if ok else 401)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture()
def app_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_checks_pass_with_sign_in(sample_db: str, app_url: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMOKE_EMAIL", "ops@example.com")
    monkeypatch.setenv("SMOKE_PASSWORD", "pw-123")
    rc = main(["verify", "--database-url", sample_db, "--app-url", app_url, "--check", "GET:/api/providers?q=a:200",
               "--sign-in", "POST:/api/auth/sign-in:200", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    names = [c["check"] for c in out["checks"]]
    assert {"http GET /health", "http GET /ready", "http GET /api/providers?q=a",
            "sign-in POST /api/auth/sign-in"} <= set(names)
    assert "pw-123" not in json.dumps(out)


def test_http_check_500_and_timeout_fail_named(sample_db: str, app_url: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["verify", "--database-url", sample_db, "--app-url", app_url, "--check", "GET:/broken:200",
               "--check", "GET:/slow:200", "--http-timeout", "0.5"])
    out = capsys.readouterr().out
    assert rc == 1
    broken = next(ln for ln in out.splitlines() if "GET /broken" in ln)
    slow = next(ln for ln in out.splitlines() if "GET /slow" in ln)
    assert "500" in broken and "FAIL" in broken
    assert "timed out" in slow and "FAIL" in slow


def test_sign_in_without_credentials_is_usage_error(sample_db: str, app_url: str) -> None:
    from pgrunbook.errors import UsageError

    with pytest.raises(UsageError, match="SMOKE_EMAIL"):
        run_verify(VerifyOptions(database_url=sample_db, app_url=app_url,
                                 sign_in=HttpCheck.parse("POST:/api/auth/sign-in:200")), SETTINGS)


def test_check_spec_parsing() -> None:
    assert HttpCheck.parse("get:/a:b/c:204") == HttpCheck("GET", "/a:b/c", 204)
    from pgrunbook.errors import UsageError

    for bad in ("GET/health:200", "GET:health:200", "GET:/health:ok"):
        with pytest.raises(UsageError):
            HttpCheck.parse(bad)
