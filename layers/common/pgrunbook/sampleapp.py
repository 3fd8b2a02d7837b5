"""A small HTTP application shaped like the runbook's: it reads its DATABASE_URL from Secrets Manager
when it starts and again when it is rolled, and serves the endpoints the runbook checks.

    python -m pgrunbook.sampleapp --secret-id ID [--secret-key KEY] [--port 0] [--webhook-secret-env NAME]

Endpoints:
  GET  /health             200 while the process runs (no database)
  GET  /ready              200 when its database answers, "User" is readable and every migration the app
                           needs (pgrunbook.sample's) is applied; 503 otherwise.
                           Body: {"status", "database" (masked), "secret_version", "generation"}
  POST /api/auth/sign-in   {"email", "password"} -> 200 {"user_id"} and a "SecurityEvent" row (a write);
                           401 for an unknown user or a password other than "demo"; 503 when the
                           database refuses the write (read-only)
  GET  /api/users?q=TEXT   a read endpoint: users whose email contains TEXT
  POST /roll               the roll webhook: re-read the secret now (with a webhook secret, the
                           X-Pgrunbook-Signature header must be sha256=<HMAC of the body>)

Rolls: SIGHUP or POST /roll (or `reload()` in-process). A roll opens connections to the database the
secret names now, then closes the old ones: like an instance replaced by a deployment. If the new
database does not answer, the app stays up and /ready says 503 (a new instance failing readiness).

It keeps `pool_size` connections open, so its sessions show in pg_stat_activity (application_name
`sampleapp` unless told otherwise; pgrunbook ignores its own `pgrunbook-*` sessions): that is how a
cutover proves the roll happened.
Used by the cutover tests and `pgrunbook demo`; not part of the Lambda functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from . import aws
from .cutover.roll import SIGNATURE_HEADER, signature_ok
from .cutover.secret import SecretSlot
from .dburl import DatabaseUrl
from .errors import PgrunbookError
from .sample import SAMPLE_MIGRATIONS

log = logging.getLogger("pgrunbook.sampleapp")
DEMO_PASSWORD = "demo"  # noqa: S105 - the sample data's documented password


class _Pool:
    """A few open connections to one database (autocommit)."""

    def __init__(self, url: str, size: int, application_name: str) -> None:
        self.url, self.size, self.application_name = url, size, application_name
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self.error: str | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        target = DatabaseUrl.parse(self.url)
        return psycopg.connect(target.conninfo(), password=target.password, autocommit=True,
                               application_name=self.application_name, connect_timeout=5)

    def fill(self) -> None:
        try:
            conns = [self._connect() for _ in range(self.size)]
        except psycopg.Error as exc:
            self.error = " ".join(str(exc).split())[:200]
            return
        with self._lock:
            self._idle += conns

    def get(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return self._connect()

    def discard_idle(self) -> None:
        """A connection the server ended: the others were probably ended with it (a freeze, a restart)."""
        with self._lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()

    def put(self, conn: psycopg.Connection[Any], broken: bool = False) -> None:
        if broken:
            self.discard_idle()
        if broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()


class SampleApp:
    def __init__(self, secret_id: str, secret_key: str | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 webhook_key: bytes | None = None, pool_size: int = 2,
                 application_name: str = "sampleapp") -> None:
        self.slot = SecretSlot(secret_id, secret_key)
        self.webhook_key = webhook_key
        self.pool_size, self.application_name = pool_size, application_name
        self.generation = 0
        self.secret_version: str | None = None
        self.database: str | None = None
        self._pool: _Pool | None = None
        self._reload_lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reload(self, reason: str = "roll") -> None:
        """Read the secret again and move to the database it names (new connections first)."""
        with self._reload_lock:
            try:
                version = self.slot.read()
            except PgrunbookError as exc:
                log.error("cannot read the secret", extra={"reason": str(exc)})
                return
            pool = _Pool(version.url, self.pool_size, self.application_name)
            pool.fill()
            old, self._pool = self._pool, pool
            self.secret_version, self.database = version.version_id, version.display
            self.generation += 1
            if old is not None:
                old.close()
            log.info("database URL loaded", extra={"reason": reason, "database": self.database,
                                                   "version": self.secret_version, "error": pool.error})

    def start(self) -> SampleApp:
        """Load the secret and serve in a background thread (in-process use: tests, the demo)."""
        self.reload("start")
        self._thread = threading.Thread(target=self.server.serve_forever, name="sampleapp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._pool is not None:
            self._pool.close()

    # ------------------------------------------------------------------ request handling
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection; a connection the server ended (a freeze, a restart)
        is replaced once, as a pool's pre-ping would."""
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise _NotReady("no database loaded")
            try:
                conn = pool.get()
            except psycopg.Error as exc:
                raise _NotReady(" ".join(str(exc).split())[:200]) from None
            broken = False
            try:
                cur = conn.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
            except psycopg.OperationalError as exc:
                broken = True
                if attempt == 2 or not conn.closed:
                    raise _NotReady(" ".join(str(exc).split())[:200]) from None
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise _NotReady(" ".join(str(exc).split())[:200]) from None
            finally:
                pool.put(conn, broken=broken)
        raise _NotReady("unreachable")

    def ready(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"database": self.database, "secret_version": self.secret_version,
                                "generation": self.generation}
        try:
            self._query('SELECT 1 FROM "User" LIMIT 1')
            applied = {str(r[0]) for r in self._query(
                "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL "
                "AND rolled_back_at IS NULL")}
        except (_NotReady, psycopg.Error) as exc:
            return 503, {**body, "status": "not ready", "error": str(exc)[:200]}
        missing = sorted(set(SAMPLE_MIGRATIONS) - applied)
        if missing:  # the schema is older than this app (a database restored from before a migration)
            return 503, {**body, "status": "not ready", "error": f"migrations not applied: {', '.join(missing)}"}
        return 200, {**body, "status": "ready"}

    def sign_in(self, payload: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(payload, dict) or not isinstance(payload.get("email"), str):
            return 400, {"error": "expected {\"email\", \"password\"}"}
        try:
            found = self._query('SELECT id FROM "User" WHERE email = %s', (payload["email"],))
            if not found or payload.get("password") != DEMO_PASSWORD:
                return 401, {"error": "unknown user or wrong password"}
            self._query('INSERT INTO "SecurityEvent"("userId", kind, detail) VALUES (%s, %s, %s)',
                        (found[0][0], "sign-in", "sampleapp"))
        except (_NotReady, psycopg.Error) as exc:
            return 503, {"error": str(exc)[:200]}
        return 200, {"user_id": found[0][0]}

    def users(self, q: str) -> tuple[int, dict[str, Any]]:
        try:
            rows = self._query('SELECT id, email FROM "User" WHERE email LIKE %s ORDER BY id LIMIT 20',
                               (f"%{q}%",))
        except (_NotReady, psycopg.Error) as exc:
            return 503, {"error": str(exc)[:200]}
        return 200, {"users": [{"id": r[0], "email": r[1]} for r in rows]}

    def roll_webhook(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        if self.webhook_key is not None and not signature_ok(body, self.webhook_key, signature):
            return 401, {"error": "bad or missing signature"}
        try:
            event = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return 400, {"error": "not JSON"}
        self.reload(f"webhook {event.get('reason', '')}".strip())
        return 200, {"status": "rolled", "generation": self.generation, "secret_version": self.secret_version}


class _NotReady(Exception):
    pass


def _handler_for(app: SampleApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pgrunbook-sampleapp"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/health":
                self._send(200, {"status": "ok"})
            elif parts.path == "/ready":
                self._send(*app.ready())
            elif parts.path == "/api/users":
                self._send(*app.users((parse_qs(parts.query).get("q") or [""])[0]))
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            if path == "/roll":
                self._send(*app.roll_webhook(body, self.headers.get(SIGNATURE_HEADER)))
            elif path == "/api/auth/sign-in":
                try:
                    payload = json.loads(body or b"{}")
                except json.JSONDecodeError:
                    payload = None
                self._send(*app.sign_in(payload))
            else:
                self._send(404, {"error": "not found"})

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import setup_cli_logging

    p = argparse.ArgumentParser(prog="python -m pgrunbook.sampleapp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secret-id", required=True)
    p.add_argument("--secret-key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--webhook-secret-env", metavar="NAME", help="environment variable holding the webhook key")
    p.add_argument("--application-name", default="sampleapp")
    p.add_argument("--pool-size", type=int, default=2)
    args = p.parse_args(argv)
    setup_cli_logging()
    key = None
    if args.webhook_secret_env:
        from .settings import Settings

        raw = Settings.from_env().variable(args.webhook_secret_env)
        if not raw:
            print(f"sampleapp: {args.webhook_secret_env} is not set", file=sys.stderr)  # noqa: T201
            return 2
        key = raw.encode()
    aws.reset_clients()
    app = SampleApp(args.secret_id, args.secret_key, host=args.host, port=args.port, webhook_key=key,
                    pool_size=args.pool_size, application_name=args.application_name)
    app.reload("start")
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=app.reload, args=("SIGHUP",)).start())
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=app.server.shutdown).start())
    print(f"listening on {app.url}", flush=True)  # noqa: T201 - the parent reads the URL from here
    try:
        app.server.serve_forever(poll_interval=0.1)
    finally:
        app.server.server_close()
        if app._pool is not None:
            app._pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
