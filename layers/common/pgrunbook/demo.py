"""`pgrunbook demo` (`make demo`): the runbook run by the real state machines, on this machine.

What it starts (all stopped again on every way out):
- production: a local PostgreSQL 18 server with the sample application database `app` (pgrunbook.sample:
  "User", "Job", "SecurityEvent", `_prisma_migrations`; `--rows` rows), a small `app_staging` database and
  the application's role `app`;
- targets: a second, fresh local server started restore-tuned (pgserver.RESTORE_TUNED): the host of fresh
  restore targets, the local stand-in for a new RDS instance;
- the stack: template.yaml with `statemachines/*.asl.json` in local Step Functions (moto, in-process), the
  Lambda handlers of `functions/*/app.py` called in-process (pgrunbook.localcloud.LocalCloud), the approval
  function on 127.0.0.1 (pgrunbook.approval.runner);
- the application: pgrunbook.sampleapp for production and for staging, each reading its DATABASE_URL from
  the local Secrets Manager when it starts and when it is rolled (signed webhook), with a light write load
  (sign-ins) on production so that the data window is real.

What it runs: Backup -> Restore in cutover mode (fresh target, restore, verify, staging smoke, approval on the
page, production-ready, switch + roll, proof, old database read-only; the cutover also switches the stack's
own secret of `app`, so Migrate and later backups reach the new database) -> Migrate with the expand migration
of demo_data/prisma/migrations. `DemoStack` is the same machinery for tests/e2e, which inject faults at the
handler boundary.

Invariants:
1. Exit 0 only when every execution SUCCEEDED and the end state holds: the application reads the new
   database, the secret's AWSCURRENT names it, the stack's own secret of `app` names it (the cutover switched
   it: the demo never re-points the stack itself), the old database is read-only, the migration is applied.
2. Every server and thread it starts is stopped on every way out (success, failure, SIGINT/SIGTERM turned
   into Interrupted by pgtools.stop_signals, KeyboardInterrupt); servers left by a run that was killed
   (SIGKILL) are stopped by the next run before it removes their folders.
3. The work folder is removed only when it carries the demo's marker file (or is empty, or holds only
   what the previous demo wrote): `--workdir` never deletes someone else's folder.
4. No password is printed: URLs are masked; the functions' logs go to `<workdir>/demo.log`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from . import aws
from .dburl import DatabaseUrl, mask_secrets
from .errors import DemoFailed, PgrunbookError, UsageError, one_line
from .keys import release_migrations_prefix
from .localcloud.cloud import states_entered, task_outputs
from .pgserver import RESTORE_TUNED, LocalServer
from .sample import demo_migrations

log = logging.getLogger(__name__)

MARKER = ".pgrunbook-demo"
LEGACY_ENTRIES = {"prod", "prod.log", "backups", "drill"}  # what the demo before this one left in .demo
APP_ROLE = "app"
APP_DB = "app"
STAGING_DB = "app_staging"
TARGET_SERVER = "targets"  # the configured database whose server hosts fresh targets
MACHINE_FILES = {"BackupStateMachine": "statemachines/backup.asl.json",
                 "RestoreStateMachine": "statemachines/restore.asl.json",
                 "MigrateStateMachine": "statemachines/migrate.asl.json"}
DEFAULT_ROWS = 300_000
MIN_ROWS, MAX_ROWS = 100, 50_000_000
SIGN_IN = {"email": "user1@example.com", "password": "demo"}  # the sample data's documented test account



def sample_sizes(rows: int) -> dict[str, int]:
    """create_sample_database's arguments for about `rows` rows in all: 1 user in 15, 10 jobs per user,
    the rest security events."""
    if not MIN_ROWS <= rows <= MAX_ROWS:
        raise UsageError(f"--rows must be between {MIN_ROWS} and {MAX_ROWS}, not {rows}")
    users = max(rows // 15, 2)
    jobs_per_user = 10
    return {"users": users, "jobs_per_user": jobs_per_user, "events": max(rows - users - users * jobs_per_user, 1)}


# --------------------------------------------------------------------------- output
class Narrator:
    """Lines on the console, each with the time since the demo started; progress bars (rich)."""

    def __init__(self, out: IO[str] | None = None, *, quiet: bool = False) -> None:
        from rich.console import Console

        self.t0 = time.monotonic()
        self.quiet = quiet
        self.console = Console(file=out if out is not None else sys.stdout, markup=False, highlight=False,
                               soft_wrap=True, emoji=False)
        self.lines: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str = "", *, stamp: bool = True) -> None:
        line = mask_secrets(f"[{self.elapsed():6.1f}s] {text}" if stamp and text else text)
        self.lines.append(line)
        if not self.quiet:
            self.console.print(line)

    def progress(self) -> Any:
        from .progress import rich_progress

        return rich_progress(self.console, indent="          ", disable=self.quiet)


class FunctionLog(io.TextIOBase):
    """Where the functions' stdout goes (what CloudWatch Logs would get): appended to a file, and each
    JSON log line offered to `watchers` (the backup's byte counter comes from its progress lines)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.watchers: list[Callable[[dict[str, Any]], None]] = []
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if self.file.closed:  # a function thread still logging after the demo ended
                return len(text)
            self.file.write(mask_secrets(text))
            self._partial += text
            lines = self._partial.split("\n")
            self._partial = lines.pop()
        for line in lines:
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                for watch in list(self.watchers):
                    watch(record)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if not self.file.closed:
                self.file.flush()

    def close(self) -> None:
        with self._lock:
            self.file.close()
        super().close()


# --------------------------------------------------------------------------- the application's load
class WriteLoad:
    """A sign-in (a "SecurityEvent" row) on the production app every `every` seconds, counted by status."""

    def __init__(self, base_url: str, every: float = 0.25) -> None:
        self.base_url, self.every = base_url.rstrip("/"), every
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-write-load", daemon=True)

    def start(self) -> WriteLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        body = json.dumps(SIGN_IN).encode()
        while not self._stop.wait(self.every):
            req = urllib.request.Request(self.base_url + "/api/auth/sign-in", data=body, method="POST",  # noqa: S310
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - 127.0.0.1
                    status = int(resp.status)
            except urllib.error.HTTPError as exc:
                status = int(exc.code)
            except (urllib.error.URLError, OSError):
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        """Until `more` further sign-ins were answered 200 (or the timeout: the load is best effort)."""
        wanted = self.statuses.get(200, 0) + more
        deadline = time.monotonic() + timeout
        while self.statuses.get(200, 0) < wanted and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def line(self) -> str:
        total = sum(self.statuses.values())
        ok = self.statuses.get(200, 0)
        others = ", ".join(f"{n} x {'no answer' if s == 0 else f'HTTP {s}'}" for s, n in sorted(self.statuses.items())
                           if s != 200)
        return f"{total} sign-ins during the demo, {ok} answered 200" + (f"; {others}" if others else "")


# --------------------------------------------------------------------------- the work folder
def prepare_workdir(workdir: Path) -> None:
    """Empty the work folder of a previous demo (stopping servers a killed run left behind); refuse
    a folder that is not the demo's."""
    if workdir.exists():
        if not workdir.is_dir():
            raise UsageError(f"--workdir {workdir} is a file, not a folder")
        entries = {p.name for p in workdir.iterdir()}
        if entries and MARKER not in entries and not entries <= LEGACY_ENTRIES:
            raise UsageError(f"--workdir {workdir} is not empty and is not a pgrunbook demo folder (no {MARKER}): "
                             "refusing to delete it; pass an empty or new folder")
        for pid_file in [*workdir.glob("servers/*/data/postmaster.pid"), *workdir.glob("*/postmaster.pid")]:
            with contextlib.suppress(PgrunbookError, OSError):
                LocalServer(data_dir=pid_file.parent).stop()  # a server a killed demo left running
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by `pgrunbook demo`: the next demo run empties this folder\n")


# --------------------------------------------------------------------------- executions
@dataclass
class StateRun:
    name: str
    seconds: float


@dataclass
class MachineRun:
    logical_id: str
    arn: str
    status: str = "RUNNING"
    seconds: float = 0.0
    states: list[StateRun] = field(default_factory=list)
    output: Any = None
    error: str | None = None
    cause: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def file(self) -> str:
        return MACHINE_FILES.get(self.logical_id, self.logical_id)

    @property
    def name(self) -> str:
        return self.logical_id.removesuffix("StateMachine")

    def states_entered(self) -> list[str]:
        return states_entered(self.history)

    def task_outputs(self, state: str) -> list[Any]:
        return task_outputs(self.history, state)


@dataclass
class Approval:
    facts: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.facts["approve_url"])

    @property
    def approval_id(self) -> str:
        return str(self.facts["approval_id"])


# --------------------------------------------------------------------------- the stack
@dataclass
class DemoConfig:
    workdir: Path
    rows: int = DEFAULT_ROWS
    keep: bool = False
    staging_rows: int = 200
    soak_seconds: float = 3.0
    write_every: float = 0.25
    parameters: dict[str, str] = field(default_factory=dict)  # template parameters (tests: overrides)
    env: dict[str, str] = field(default_factory=dict)  # the functions' environment (tests: overrides)


class DemoStack:
    """Servers, databases, the local stack, the applications and the approval page; `with` starts them and
    stops all of them on the way out."""

    def __init__(self, cfg: DemoConfig, narrator: Narrator | None = None, *, log: FunctionLog | None = None) -> None:
        """`log`: the functions' log, given when the caller prepared the work folder and redirected output
        there already (run_demo); otherwise the stack prepares the folder and opens its own."""
        self.cfg = cfg
        self.say = (narrator or Narrator(quiet=True)).say
        self.narrator = narrator or Narrator(quiet=True)
        self.password = secrets.token_urlsafe(16)
        self.webhook_key = secrets.token_urlsafe(24)
        tag = uuid.uuid4().hex[:6]
        self.secret_names = {"app": f"demo-{tag}/app/DATABASE_URL", "staging": f"demo-{tag}/staging/DATABASE_URL",
                             "webhook": f"demo-{tag}/roll-webhook-key", "sign_in": f"demo-{tag}/staging-sign-in"}
        self.prod: LocalServer | None = None
        self.targets: LocalServer | None = None
        self.cloud: Any = None
        self.app: Any = None
        self.staging: Any = None
        self.approvals: Any = None
        self.load: WriteLoad | None = None
        self.log: FunctionLog | None = log
        self.runs: list[MachineRun] = []
        self._stack = contextlib.ExitStack()

    # ---- urls
    def app_url(self, server: LocalServer, db: str) -> str:
        return server.url(db, user=APP_ROLE, password=self.password)

    @property
    def prod_server(self) -> LocalServer:
        assert self.prod is not None
        return self.prod

    @property
    def target_server(self) -> LocalServer:
        assert self.targets is not None
        return self.targets

    # ---- start and stop
    def __enter__(self) -> DemoStack:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _server(self, name: str, settings: dict[str, str] | None = None) -> LocalServer:
        server = LocalServer(data_dir=self.cfg.workdir / "servers" / name / "data", settings=settings or {})
        self._stack.callback(self._stop_server, server)  # registered first: a failed start is cleaned up too
        server.init().start()
        return server

    def _stop_server(self, server: LocalServer) -> None:
        if self.cfg.keep:
            with contextlib.suppress(PgrunbookError):
                server.stop()
        else:
            server.destroy()

    def _start(self) -> None:
        from .approval.runner import LocalApprovals
        from .localcloud import LocalCloud, LocalDatabase
        from .sample import create_sample_database
        from .sampleapp import SampleApp

        workdir = self.cfg.workdir
        if self.log is None:
            prepare_workdir(workdir)
            self.log = FunctionLog(workdir / "demo.log")
            self._stack.callback(self.log.close)

        sizes = sample_sizes(self.cfg.rows)
        self.prod = self._server("production")
        self.targets = self._server("targets", RESTORE_TUNED)
        for server in (self.prod, self.targets):
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(self.password)))
        create_sample_database(self.prod.url(), APP_DB, **sizes)
        create_sample_database(self.prod.url(), STAGING_DB, users=max(self.cfg.staging_rows // 15, 2),
                               jobs_per_user=2, events=self.cfg.staging_rows // 2)
        for db in (APP_DB, STAGING_DB):
            with psycopg.connect(self.prod.url(db), autocommit=True) as conn:
                conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}; "
                                     "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                    sql.Identifier(APP_ROLE), sql.Identifier(APP_ROLE)))

        # the applications bind their ports now (the stack's parameters name them); they load their secret later
        self.app = SampleApp(self.secret_names["app"], webhook_key=self.webhook_key.encode())
        self._stack.callback(self.app.server.server_close)
        self.staging = SampleApp(self.secret_names["staging"], webhook_key=self.webhook_key.encode(),
                                 application_name="sampleapp-staging")
        self._stack.callback(self.staging.server.server_close)
        self.approvals = LocalApprovals()
        self._stack.callback(self.approvals.close)

        params = {
            "AppSecretArn": self.secret_names["app"], "AppReadyUrl": f"{self.app.url}/ready",
            "AppRollWebhookUrl": f"{self.app.url}/roll", "RollWebhookSecretArn": self.secret_names["webhook"],
            "CutoverSoakSeconds": f"{self.cfg.soak_seconds:g}", "RetireAfterDays": "7",
            "StagingSecretArn": self.secret_names["staging"], "StagingUrl": self.staging.url,
            "StagingRollWebhookUrl": f"{self.staging.url}/roll", "StagingChecks": "GET:/api/users?q=user1:200",
            "StagingSignIn": "POST:/api/auth/sign-in:200", "StagingSignInSecretArn": self.secret_names["sign_in"],
            "ProvisionPollSeconds": "1",
            **self.cfg.parameters}
        env = {"PGRUNBOOK_CUTOVER_POLL": "0.2", "PGRUNBOOK_READY_TIMEOUT": "30", "PGRUNBOOK_ROLL_TIMEOUT": "30",
               "PGRUNBOOK_SESSIONS_GRACE": "15", "PGRUNBOOK_SOAK_SECONDS": f"{self.cfg.soak_seconds:g}",
               "PGRUNBOOK_PROGRESS_SECONDS": "0.2", "PGRUNBOOK_WORK_DIR": str(workdir / "work"),
               **self.approvals.env, **self.cfg.env}
        (workdir / "work").mkdir(exist_ok=True)
        databases = [LocalDatabase(APP_DB, self.prod.url(APP_DB)),
                     LocalDatabase(TARGET_SERVER, self.targets.url("postgres"))]
        self.cloud = LocalCloud(databases, parameters=params, env=env)
        self.cloud.__enter__()
        self._stack.callback(self.cloud.__exit__, None, None, None)

        sm = aws.client("secretsmanager")
        sm.create_secret(Name=self.secret_names["app"], SecretString=self.app_url(self.prod, APP_DB))
        sm.create_secret(Name=self.secret_names["staging"], SecretString=self.app_url(self.prod, STAGING_DB))
        sm.create_secret(Name=self.secret_names["webhook"], SecretString=self.webhook_key)
        sm.create_secret(Name=self.secret_names["sign_in"], SecretString=json.dumps(SIGN_IN))

        self.approvals.attach(self.cloud)
        self.app.start()
        self._stack.callback(self.app.stop)
        self.staging.start()
        self._stack.callback(self.staging.stop)
        self.load = WriteLoad(self.app.url, self.cfg.write_every)
        self._stack.callback(self.load.stop)

    # ---- facts
    def secret_current(self, name: str = "app") -> tuple[str, str]:
        """(version id, value) of AWSCURRENT (read by stage: see FACTS on moto's default version)."""
        resp = aws.client("secretsmanager").get_secret_value(SecretId=self.secret_names[name],
                                                             VersionStage="AWSCURRENT")
        return str(resp["VersionId"]), str(resp["SecretString"])

    def stack_secret_current(self) -> tuple[str, DatabaseUrl]:
        """(version id, target) of AWSCURRENT of the stack's own secret of `app` (DatabasesJson's secret_arn:
        what the Backup and Migrate functions read)."""
        resp = aws.client("secretsmanager").get_secret_value(SecretId=self.cloud.secret_arns[APP_DB],
                                                             VersionStage="AWSCURRENT")
        return str(resp["VersionId"]), DatabaseUrl.from_secret(json.loads(resp["SecretString"]))

    def secret_versions(self, name: str = "app") -> dict[str, list[str]]:
        resp = aws.client("secretsmanager").describe_secret(SecretId=self.secret_names[name])
        return {k: list(v) for k, v in resp.get("VersionIdsToStages", {}).items()}

    def notifications(self) -> list[tuple[str | None, str]]:
        return list(self.cloud.notifications())

    def query(self, server: LocalServer, db: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(server.url(db), autocommit=True, application_name="pgrunbook-demo") as conn:
            cur = conn.execute(text, params)
            return list(cur.fetchall()) if cur.description else []

    def database_exists(self, server: LocalServer, db: str) -> bool:
        return bool(self.query(server, "postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)))

    def read_only(self, server: LocalServer, db: str) -> bool:
        rows = self.query(server, "postgres", "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
                                              "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0", (db,))
        return bool(rows) and "default_transaction_read_only=on" in (rows[0][0] or [])

    def counts(self, server: LocalServer, db: str) -> dict[str, int]:
        out = {}
        for table in ("User", "Job", "SecurityEvent"):
            out[table] = int(self.query(server, db, sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table)).as_string())[0][0])
        return out

    def applied_migrations(self, server: LocalServer, db: str) -> list[str]:
        return [str(r[0]) for r in self.query(server, db, "SELECT migration_name FROM _prisma_migrations WHERE "
                                                          "finished_at IS NOT NULL AND rolled_back_at IS NULL "
                                                          "ORDER BY migration_name")]

    def manifest(self, uri: str) -> dict[str, Any]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = aws.client("s3").get_object(Bucket=bucket, Key=key + ".manifest.json")["Body"].read()
        data: dict[str, Any] = json.loads(body)
        return data

    # ---- running the state machines
    def start(self, logical_id: str, payload: dict[str, Any]) -> MachineRun:
        run = MachineRun(logical_id, self.cloud.start(logical_id, payload))
        self.runs.append(run)
        return run

    def follow(self, run: MachineRun, *, until: Callable[[MachineRun], bool] | None = None,
               timeout: float = 900.0, on_approval: Callable[[Approval], None] | None = None) -> MachineRun:
        """Poll `run` until it ends (or `until` says so): print each state as it ends with its duration,
        show byte progress during backup and restore states, hand each new approval request of this
        execution to `on_approval`."""
        sfn = aws.client("stepfunctions")
        deadline = time.monotonic() + timeout
        open_states: dict[str, list[datetime]] = {}
        seen_events = 0
        asked: set[str] = set()
        bars = _Bars(self)
        try:
            while True:
                desc = sfn.describe_execution(executionArn=run.arn)
                run.history = self._history(run.arn)
                for event in run.history[seen_events:]:
                    self._on_event(run, event, open_states, bars)
                seen_events = len(run.history)
                bars.update()
                if on_approval is not None:
                    for facts in self.approval_requests(run.arn):
                        if facts["approval_id"] not in asked:
                            asked.add(facts["approval_id"])
                            on_approval(Approval(facts))
                run.status = str(desc["status"])
                if run.status != "RUNNING" or (until is not None and until(run)):
                    break
                if time.monotonic() > deadline:
                    raise DemoFailed(f"{run.name} still running after {timeout:.0f} s")
                time.sleep(0.2)
        finally:
            bars.close()
        if run.status != "RUNNING":
            run.output = json.loads(desc["output"]) if desc.get("output") else None
            run.error, run.cause = desc.get("error"), desc.get("cause")
            stop = desc.get("stopDate") or datetime.now(UTC)
            run.seconds = (stop - desc["startDate"]).total_seconds()
        return run

    def _history(self, arn: str) -> list[dict[str, Any]]:
        sfn = aws.client("stepfunctions")
        events: list[dict[str, Any]] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = sfn.get_execution_history(**kwargs)
            events += page["events"]
            token = page.get("nextToken")
            if not token:
                return events

    def _on_event(self, run: MachineRun, event: dict[str, Any], open_states: dict[str, list[datetime]],
                  bars: _Bars) -> None:
        if "stateEnteredEventDetails" in event:
            name = event["stateEnteredEventDetails"]["name"]
            open_states.setdefault(name, []).append(event["timestamp"])
            bars.entered(name, event)
        elif "stateExitedEventDetails" in event:
            name = event["stateExitedEventDetails"]["name"]
            started = (open_states.get(name) or [event["timestamp"]]).pop()
            seconds = (event["timestamp"] - started).total_seconds()
            bars.exited(name, event)
            run.states.append(StateRun(name, seconds))
            self.say(f"   {run.name:<8} {name:<28} {seconds:6.2f} s")
        elif event.get("type") in ("TaskFailed", "LambdaFunctionFailed", "TaskTimedOut", "ExecutionFailed"):
            details: dict[str, Any] = next((v for k, v in event.items() if k.endswith("EventDetails")), {}) or {}
            self.say(f"   {run.name:<8} {event['type']}: {details.get('error', '')} "
                     f"{_one_line(details.get('cause'))}".rstrip())

    def approval_requests(self, arn: str) -> list[dict[str, Any]]:
        from .approval.service import ATTRIBUTE

        found = []
        for _subject, _message, attrs in self.cloud.published():
            raw = attrs.get(ATTRIBUTE)
            if raw:
                facts = json.loads(raw)
                if facts.get("execution") == arn:
                    found.append(facts)
        return found

    def run(self, logical_id: str, payload: dict[str, Any], **kwargs: Any) -> MachineRun:
        return self.follow(self.start(logical_id, payload), **kwargs)

    # ---- the runbook's steps
    def backup(self, kind: str = "manual") -> MachineRun:
        return self.run("BackupStateMachine", {"kind": kind, "databases": [APP_DB]})

    def restore_input(self, **extra: Any) -> dict[str, Any]:
        return {"database": APP_DB, "backup": "latest", "mode": "cutover", "requested_by": "pgrunbook demo",
                "target": {"kind": "database", "server": TARGET_SERVER, "name": APP_DB}, **extra}

    def upload_migrations(self, folder: Path, version: str) -> str:
        """What the release pipeline does (docs/migrations.md): the migrations folder under `_releases/`."""
        prefix = release_migrations_prefix(version)
        s3 = aws.client("s3")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                s3.put_object(Bucket=self.cloud.bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                              Body=path.read_bytes())
        return f"s3://{self.cloud.bucket}/{prefix}/"

    def export(self, folder: Path) -> int:
        """The local bucket's objects (archives, manifests, reports) and the execution histories, to disk."""
        s3 = aws.client("s3")
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.cloud.bucket):
            for obj in page.get("Contents", []):
                path = folder / "bucket" / obj["Key"]
                if ".." in Path(obj["Key"]).parts:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(s3.get_object(Bucket=self.cloud.bucket, Key=obj["Key"])["Body"].read())
                count += 1
        histories = folder / "executions"
        histories.mkdir(exist_ok=True)
        for i, run in enumerate(self.runs, 1):
            (histories / f"{i}-{run.name}.json").write_text(mask_secrets(json.dumps(
                {"state_machine": run.file, "arn": run.arn, "status": run.status, "error": run.error,
                 "cause": run.cause, "output": run.output, "history": run.history}, indent=1, default=str)))
        return count


class _Bars:
    """Byte progress of the states that move bytes: the backup (archive bytes written, from the backup's own
    progress lines in the function log) and the restore (bytes loaded into the target database, of the
    source database's size recorded in the manifest)."""

    BACKUP_STATES = ("Backup", "BackupDatabase", "BackupOnLambda")
    RESTORE_STATES = ("RestoreOnLambda",)

    def __init__(self, stack: DemoStack) -> None:
        self.stack = stack
        self.progress: Any = None
        self.task: Any = None
        self.kind: str | None = None
        self.target: tuple[LocalServer, str] | None = None
        self.written = 0

    def _open(self, kind: str, total: float | None) -> None:
        self.close()
        self.kind = kind
        self.progress = self.stack.narrator.progress()
        self.progress.start()
        self.task = self.progress.add_task(kind, total=total)

    def _watch(self, record: dict[str, Any]) -> None:
        # the backup's progress lines (progress.Lines): "backup" (streamed) or "backup dump"/"backup upload"
        if str(record.get("progress") or "").startswith("backup") and isinstance(record.get("done"), int):
            self.written = max(self.written, int(record["done"]))

    def entered(self, name: str, event: dict[str, Any]) -> None:
        if name in self.BACKUP_STATES and self.stack.log is not None:
            self.written = 0
            self._open("backup", None)
            self.stack.log.watchers.append(self._watch)
        elif name in self.RESTORE_STATES:
            data = json.loads(event["stateEnteredEventDetails"].get("input") or "{}")
            target = data.get("target") or {}
            plan = data.get("plan") or {}
            total = None
            with contextlib.suppress(PgrunbookError, KeyError, ValueError, OSError):
                total = self.stack.manifest(str(plan["backup"]))["source"].get("database_size_bytes")
            self._open("restore", total)
            if target.get("server") == TARGET_SERVER and target.get("dbname"):
                self.target = (self.stack.target_server, str(target["dbname"]))

    def exited(self, name: str, event: dict[str, Any]) -> None:
        if self.kind == "backup" and name in self.BACKUP_STATES:
            out = json.loads(event["stateExitedEventDetails"].get("output") or "{}")
            size = _find_key(out, "bytes")
            if isinstance(size, int):
                self.progress.update(self.task, total=size, completed=size)
            self.close()
        elif self.kind == "restore" and name in self.RESTORE_STATES:
            self.update()
            self.close()

    def update(self) -> None:
        if self.progress is None:
            return
        if self.kind == "backup":
            self.progress.update(self.task, completed=self.written)
        elif self.kind == "restore" and self.target is not None:
            server, db = self.target
            with contextlib.suppress(psycopg.Error):
                rows = self.stack.query(server, "postgres", "SELECT pg_database_size(%s)", (db,))
                size = int(rows[0][0])
                total = self.progress.tasks[0].total
                self.progress.update(self.task, completed=min(size, total) if total else size)

    def close(self) -> None:
        if self.stack.log is not None and self._watch in self.stack.log.watchers:
            self.stack.log.watchers.remove(self._watch)
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.task, self.kind, self.target = None, None, None, None


def _find_key(data: Any, key: str) -> Any:
    """The first value of `key` in nested dicts/lists (the backup result sits inside the Map's output)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        data = list(data.values())
    if isinstance(data, list):
        for item in data:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def _one_line(text: Any, limit: int = 200) -> str:
    return one_line(str(text or ""), limit=limit)


def _mb(n: float | None) -> str:
    from rich.filesize import decimal

    return "-" if n is None else decimal(int(n))


# --------------------------------------------------------------------------- the demo
@dataclass
class DemoResult:
    ok: bool
    seconds: float
    summary: list[str]
    runs: list[MachineRun]


def run_demo(cfg: DemoConfig, *, approve: str = "auto", narrator: Narrator | None = None) -> DemoResult:
    """The whole runbook; `approve` is "auto" (decide as a person does: GET the page, POST Approve) or
    "wait" (print the link and wait for a person). Raises PgrunbookError when a step failed."""
    from .approval.client import decide_via_link

    say_ = narrator or Narrator()
    say = say_.say
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    say("pgrunbook demo: the runbook, run by the real state machines on this machine")
    say(f"          {', '.join(MACHINE_FILES.values())} from template.yaml, in local Step Functions (moto) with "
        "the Lambda handlers of functions/*/app.py in-process", stamp=False)
    facts: dict[str, Any] = {}
    prepare_workdir(cfg.workdir)
    with contextlib.ExitStack() as outer:
        # the functions' stdout (JSON logs, metric blobs) is their CloudWatch log: into demo.log, from before the
        # stack starts until after it stopped (an execution still running during the cleanup logs too)
        function_log = outer.enter_context(contextlib.closing(FunctionLog(cfg.workdir / "demo.log")))
        outer.enter_context(contextlib.redirect_stdout(function_log))
        outer.enter_context(contextlib.redirect_stderr(function_log))
        say(f"0. starting two PostgreSQL servers, the sample database (about {cfg.rows:,} rows), the local stack "
            "and the sample app")
        stack = outer.enter_context(DemoStack(cfg, say_, log=function_log))
        prod, targets = stack.prod_server, stack.target_server
        counts = stack.counts(prod, APP_DB)
        say(f"1. production: PostgreSQL on 127.0.0.1:{prod.port}, database {APP_DB}: "
            + ", ".join(f'"{t}" {n:,}' for t, n in counts.items())
            + f" rows; migrations {', '.join(stack.applied_migrations(prod, APP_DB))}")
        say(f"   fresh targets: a new PostgreSQL on 127.0.0.1:{targets.port}, started restore-tuned "
            "(wal_level=minimal, autovacuum off, large maintenance_work_mem)")
        say(f"2. sample app {stack.app.url} (GET /health, /ready, /api/users; POST /api/auth/sign-in, /roll), "
            f"DATABASE_URL from secret {stack.secret_names['app']}; staging app {stack.staging.url}")
        assert stack.load is not None
        stack.load.start()
        say(f"   light write load: a sign-in every {cfg.write_every:g} s (each writes a \"SecurityEvent\" row)")

        # ---- Backup
        say(f"3. Backup state machine ({MACHINE_FILES['BackupStateMachine']})")
        backup = stack.backup()
        _require(backup, say)
        result = backup.output["results"][0]["result"]
        manifest = stack.manifest(result["archive"])
        db_size = manifest["source"].get("database_size_bytes")
        facts["backup"] = result
        ratio = f", {result['bytes'] / db_size:.2f} of the database's {_mb(db_size)}" if db_size else ""
        say(f"   archive {result['archive']}: {_mb(result['bytes'])} ({manifest['archive']['compression']}{ratio}), "
            f"{result['rows']:,} rows in {result['tables']} tables counted in the dump's own snapshot")
        stack.load.wait_for(3)  # a few sign-ins after the backup: the data window the approver is shown

        # ---- Restore (cutover)
        say(f"4. Restore state machine in cutover mode ({MACHINE_FILES['RestoreStateMachine']}): fresh target "
            f"database {APP_DB} on 127.0.0.1:{targets.port}, restore, verify, staging smoke, approval")
        restore = stack.start("RestoreStateMachine", stack.restore_input())

        def on_approval(request: Approval) -> None:
            f = request.facts
            facts["approval_link"] = request.url
            say(f"   approval requested: verification {'VERIFIED' if f['verified'] else 'FAILED'}, "
                f"{f['checks_passed']}/{f['checks_total']} checks passed; candidate {f['candidate']}")
            for failure in f.get("failures") or []:
                say(f"     FAIL {failure}")
            say(f"   approval page: {request.url}")
            if approve == "auto":
                _, message = decide_via_link(request.url, decision="approve", name="pgrunbook demo --yes",
                                             comment="approved by the demo: GET the page, POST Approve",
                                             user_agent="pgrunbook-demo")
                say(f"   decided as a person does (GET the page, POST Approve): {_one_line(message)}")
            else:
                say("   open the link in a browser, read the report and press Approve or Reject; waiting ...")

        stack.follow(restore, on_approval=on_approval)
        _require(restore, say)
        out = restore.output or {}
        decision = out.get("approval") or {}
        if decision.get("decision") == "rejected":
            raise DemoFailed(f"the cutover was rejected by {decision.get('approver')}: nothing was switched "
                                 "and the candidate was torn down")
        if (out.get("cutover") or {}).get("outcome") != "cut over":
            raise DemoFailed(f"the cutover did not happen: {(out.get('cutover') or {}).get('outcome')}")
        facts["restore"] = out

        # ---- the end state of the cutover, checked from outside
        version, value = stack.secret_current()
        app_on_new = DatabaseUrl.parse(value).port == str(targets.port)
        ready, body = stack.app.ready()
        old_read_only = stack.read_only(prod, APP_DB)
        stack_version, stack_target = stack.stack_secret_current()
        stack_on_new = stack_target.port == str(targets.port)
        say(f"   end state: secret AWSCURRENT {version[:8]} names the new database: {app_on_new}; app /ready "
            f"{ready} on {body.get('database')}; old database read-only: {old_read_only}")
        say(f"5. the stack's own secret of {APP_DB!r} (DatabasesJson: what Backup and Migrate read), switched by the "
            f"cutover: AWSCURRENT {stack_version[:8]} names the new database: {stack_on_new} ({stack_target})")
        if not (app_on_new and ready == 200 and old_read_only and stack_on_new):
            raise DemoFailed("the cutover's end state does not hold (see the lines above)")

        # ---- Migrate
        uri = stack.upload_migrations(demo_migrations(), "demo")
        say(f"6. Migrate state machine ({MACHINE_FILES['MigrateStateMachine']}) with {uri} "
            f"(demo_data/prisma/migrations: an expand migration)")
        migrate = stack.run("MigrateStateMachine", {"database": APP_DB, "migrations": uri, "app_version": "demo",
                                                    "lint": "strict"})
        _require(migrate, say)
        applied = stack.applied_migrations(targets, APP_DB)
        columns = [r[0] for r in stack.query(targets, APP_DB, "SELECT column_name FROM information_schema.columns "
                                                              "WHERE table_name = 'User' ORDER BY ordinal_position")]
        if "displayName" not in columns:
            raise DemoFailed("the expand migration's column is missing on the new database")
        facts["migrate"] = migrate.output
        facts["applied"] = applied
        stack.load.stop()
        facts["load"] = stack.load.line()
        facts["final_ready"] = stack.app.ready()[0]
        exported = stack.export(cfg.workdir)
        summary = _summary(stack, facts, backup, restore, migrate, say_.elapsed(), exported)
    for line in summary:
        say(line, stamp=False)
    (cfg.workdir / "summary.txt").write_text("\n".join(summary) + "\n")
    return DemoResult(ok=True, seconds=say_.elapsed(), summary=summary, runs=stack.runs)


def _require(run: MachineRun, say: Callable[..., None]) -> None:
    if run.status != "SUCCEEDED":
        say(f"   {run.name} {run.status}: {run.error}: {_one_line(run.cause, 400)}")
        raise DemoFailed(f"the {run.name} state machine {run.status} ({run.error}: {_one_line(run.cause, 300)})")
    say(f"   {run.name} SUCCEEDED in {run.seconds:.1f} s")


def _check_lines(checks: list[dict[str, Any]], indent: str = "      ") -> list[str]:
    return [f"{indent}{'ok  ' if c.get('ok') else 'FAIL'} {c.get('check')}: {c.get('actual')}" for c in checks]


def _summary(stack: DemoStack, facts: dict[str, Any], backup: MachineRun, restore: MachineRun, migrate: MachineRun,
             seconds: float, exported: int) -> list[str]:
    out = facts["restore"]
    result = facts["backup"]
    manifest = stack.manifest(result["archive"])
    db_size = manifest["source"].get("database_size_bytes")
    verify = out.get("verify") or {}
    checks = verify.get("checks") or []
    rows_verified = sum(int(c["actual"]) for c in checks
                        if str(c.get("check", "")).startswith("rows ") and str(c.get("actual", "")).isdigit())
    approval = out.get("approval") or {}
    cut = out.get("cutover") or {}
    switch = cut.get("switch") or {}
    lines = ["", f"pgrunbook demo: DONE in {seconds:.1f} s - every step succeeded", "",
             "State machines run (the files `sam deploy` ships), each state with its duration:"]
    for run in stack.runs:
        lines.append(f"  {run.file:<32} {run.name:<8} {run.status} in {run.seconds:.1f} s")
        lines.append("      " + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in run.states))
    lines += [
        "",
        f"Backup:    {result['archive']}",
        f"           {_mb(result['bytes'])}, {manifest['archive']['compression']}, "
        + (f"{result['bytes'] / db_size:.2f} of the database's {_mb(db_size)}, " if db_size else "")
        + f"{result['rows']:,} rows in {result['tables']} tables counted in the dump's snapshot; sha256 "
          f"{str(manifest['archive'].get('sha256', result.get('sha256', '')))[:16]}...",
        f"Restore:   fresh database {out['target']['dbname']} on the target host; restored copy "
        f"{'VERIFIED' if verify.get('ok') else 'NOT VERIFIED'}: "
        f"{sum(1 for c in checks if c.get('ok'))}/{len(checks)} checks, {rows_verified:,} rows verified "
        "against the manifest",
        f"Approval:  {approval.get('decision')} by {approval.get('approver')} at {approval.get('decided_at')} "
        f"via {approval.get('via') or 'the page'} ({approval.get('user_agent') or '-'}); "
        f"link {str(facts.get('approval_link', '-')).split('?')[0]}?sig=...",
        f"Cutover:   {str(cut.get('outcome', '-')).upper()}: secret {cut.get('secret')} version "
        f"{str(switch.get('previous_version_id', '-'))[:8]} -> {str(switch.get('new_version_id', '-'))[:8]} "
        "(the previous one kept as AWSPREVIOUS)",
        f"           {cut.get('roll') or '-'}",
    ]
    stack_secret = cut.get("stack_secret") or {}
    if stack_secret.get("switched"):
        lines.append(f"           stack secret of {stack_secret.get('database')} (backups, Migrate) version "
                     f"{str(stack_secret.get('previous_version_id'))[:8]} -> "
                     f"{str(stack_secret.get('new_version_id'))[:8]}: {stack_secret.get('new')}")
    else:
        lines.append(f"           stack secret NOT switched: {stack_secret.get('why') or '-'}")
    lines += _check_lines(cut.get("checks") or [], "           ")
    sessions = cut.get("sessions") or {}
    if sessions:
        lines.append(f"           sessions of the app's role: {sessions.get('new')} on the new database, "
                     f"{sessions.get('old')} on the old")
    lines += [f"           {line}" for line in cut.get("old_database") or []]
    lines += ["Data window (written after the backup, not in the copy):"]
    lines += [f"           {line}" for line in cut.get("window") or ["-"]]
    lines += [f"Write load: {facts['load']}; app /ready now {facts['final_ready']}"]
    mig = facts.get("migrate") or {}
    pre = _find_key(mig, "archive")
    lines += [f"Migration: applied on the new database: {', '.join(facts['applied'])}",
              f"           pre-migration backup {pre or '-'}; lint strict passed; status up to date"]
    workdir = stack.cfg.workdir
    lines += ["", "On disk:",
              f"  {workdir / 'bucket'}        the local S3 bucket ({exported} objects: archives, manifests, "
              ".sha256, reports)",
              f"  {workdir / 'executions'}    each execution's history and output (JSON)",
              f"  {workdir / 'demo.log'}      the functions' logs",
              f"  {workdir / 'summary.txt'}   this summary"]
    if stack.cfg.keep:
        lines.append(f"  {workdir / 'servers'}       the servers' data folders (stopped; start one with pg_ctl -D)")
    return lines
