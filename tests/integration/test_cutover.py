"""`pgrunbook cutover` / `rollback` / `retire` against real PostgreSQL databases, Secrets Manager, ECS,
CloudWatch and SNS on moto, and a real application process (pgrunbook.sampleapp) that reads its
DATABASE_URL from the secret when it starts and when it is rolled (SIGHUP from the ECS stand-in below,
or the signed roll webhook).

The ECS stand-in (`EcsAgent`) plays the part of ECS's deployment controller: when a new deployment
appears it rolls the application process (SIGHUP) and marks the deployment COMPLETED once the app
answers /ready again, as ECS does when new tasks pass their health checks.

The helpers here are shared with tests/statemachine/test_cutover_machine.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgrunbook import aws
from pgrunbook.cli import main
from pgrunbook.pgserver import LocalServer
from tests.conftest import cli_env
from tests.fixtures.restore_helpers import reset_cli_logging

ACCOUNT, REGION = "123456789012", "us-east-1"
WEBHOOK_KEY = "roll-hook-key-for-tests"


# --------------------------------------------------------------------------- databases
@dataclass
class Databases:
    """An application role, the production database (runbook-shaped sample data, granted to the role) and
    a candidate copied from it (CREATE DATABASE ... TEMPLATE: same rows, owners and grants)."""

    server: LocalServer
    role: str
    password: str
    old: str  # database names
    new: str
    made: list[str] = field(default_factory=list)

    def admin(self, db: str) -> str:
        return self.server.url(db)

    def app(self, db: str) -> str:
        return self.server.url(db, user=self.role, password=self.password)

    def execute(self, db: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin(db), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def count(self, db: str, table: str) -> int:
        return int(self.execute(db, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)).as_string())[0][0])

    def read_only_setting(self, db: str) -> bool:
        rows = self.execute(db, """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d
                                   ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0""", (db,))
        return bool(rows) and "default_transaction_read_only=on" in (rows[0][0] or [])

    def comment(self, db: str) -> str | None:
        rows = self.execute("postgres", "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                        "WHERE datname = %s", (db,))
        return rows[0][0] if rows else None

    def sessions(self, db: str) -> int:
        rows = self.execute("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s",
                            (db, self.role))
        return int(rows[0][0])

    def exists(self, db: str) -> bool:
        return bool(self.execute("postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (db,)))

    def copy(self, prefix: str = "cand") -> str:
        """A new database copied from the production one (nobody may be connected to it meanwhile)."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.execute("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                     (self.old,))
        self.execute("postgres", sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(self.old)).as_string())
        self.made.append(name)
        return name

    def empty(self, prefix: str = "empty") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.execute("postgres", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string())
        self.made.append(name)
        return name

    def drop_all(self) -> None:
        for db in {self.old, self.new, *self.made}:
            self.execute("postgres", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(db)).as_string())


@dataclass(frozen=True)
class Golden:
    """The application's role and a production-shaped database granted to it, made once per module: each
    test copies it (CREATE DATABASE ... TEMPLATE is much cheaper than filling a database)."""

    role: str
    password: str
    db: str


def make_golden(server: LocalServer) -> Golden:
    from pgrunbook.sample import create_sample_database

    role, password = f"app_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    name = f"golden_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    create_sample_database(server.url(), name, users=50, jobs_per_user=2, events=100)
    with psycopg.connect(server.url(name), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}; "
                             "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(
            sql.Identifier(role), sql.Identifier(role)))
    return Golden(role, password, name)


def drop_golden(server: LocalServer, golden: Golden) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(golden.db)))


def make_databases(server: LocalServer, golden: Golden | None = None) -> Databases:
    """The production database (a copy of the golden one, or a new golden one) and a candidate copied from it."""
    own = golden is None
    golden = golden or make_golden(server)
    dbs = Databases(server=server, role=golden.role, password=golden.password, old=golden.db, new="")
    dbs.old = dbs.copy("prod")  # (copy() copies dbs.old: first the golden database, then this copy)
    dbs.new = dbs.copy()
    if own:
        dbs.made.append(golden.db)  # dropped with the rest
    return dbs


@pytest.fixture(scope="module")
def golden(pg_server: LocalServer) -> Iterator[Golden]:
    found = make_golden(pg_server)
    yield found
    drop_golden(pg_server, found)


@pytest.fixture()
def dbs(pg_server: LocalServer, golden: Golden) -> Iterator[Databases]:
    found = make_databases(pg_server, golden)
    yield found
    found.drop_all()


# --------------------------------------------------------------------------- AWS on moto
def secret_versions(secret_id: str) -> dict[str, list[str]]:
    return dict(aws.client("secretsmanager").describe_secret(SecretId=secret_id)["VersionIdsToStages"])


def secret_value(secret_id: str, stage: str = "AWSCURRENT") -> tuple[str, str]:
    resp = aws.client("secretsmanager").get_secret_value(SecretId=secret_id, VersionStage=stage)
    return str(resp["VersionId"]), str(resp["SecretString"])


def create_secret(url: str) -> str:
    return str(aws.client("secretsmanager").create_secret(Name=f"app/{uuid.uuid4().hex[:8]}/DATABASE_URL",
                                                          SecretString=url)["ARN"])


def create_service(name: str | None = None) -> str:
    ecs = aws.client("ecs")
    cluster = f"c{uuid.uuid4().hex[:6]}"
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(family="app", containerDefinitions=[{"name": "app", "image": "app", "memory": 128}])
    service = name or "web"
    ecs.create_service(cluster=cluster, serviceName=service, taskDefinition="app", desiredCount=1)
    return f"{cluster}/{service}"


def deployment(service: str) -> dict[str, Any]:
    cluster, name = service.split("/")
    found = aws.client("ecs").describe_services(cluster=cluster, services=[name])["services"][0]
    return dict(found["deployments"][0])


def create_alarm(name: str | None = None) -> str:
    name = name or f"errors-{uuid.uuid4().hex[:6]}"
    aws.client("cloudwatch").put_metric_alarm(AlarmName=name, MetricName="5xx", Namespace="app", Statistic="Sum",
                                              Period=60, EvaluationPeriods=1, Threshold=1,
                                              ComparisonOperator="GreaterThanThreshold")
    aws.client("cloudwatch").set_alarm_state(AlarmName=name, StateValue="OK", StateReason="quiet")
    return name


def set_alarm(name: str, state: str) -> None:
    aws.client("cloudwatch").set_alarm_state(AlarmName=name, StateValue=state, StateReason="test")


def create_topic() -> str:
    return str(aws.client("sns").create_topic(Name=f"pgrunbook-{uuid.uuid4().hex[:6]}")["TopicArn"])


def notifications(topic_arn: str) -> list[tuple[str | None, str]]:
    from moto.sns.models import sns_backends

    topic = sns_backends[ACCOUNT][REGION].topics[topic_arn]
    return [(subject, message) for (_id, message, subject, _attrs, _group) in topic.sent_notifications]


# --------------------------------------------------------------------------- the application
def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float = 10) -> tuple[int, dict[str, Any]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - local test server
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


class App:
    """The sample application as a process, reading its secret from the moto server."""

    def __init__(self, secret_id: str, *, webhook_key: str | None = None, name: str = "sampleapp") -> None:
        env = cli_env(PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "pgrunbook.sampleapp", "--secret-id", secret_id, "--application-name", name]
        if webhook_key:
            env["APP_WEBHOOK_KEY"] = webhook_key
            args += ["--webhook-secret-env", "APP_WEBHOOK_KEY"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def ready(self) -> tuple[int, dict[str, Any]]:
        return http_json("GET", self.url + "/ready")

    def sign_in(self) -> int:
        return http_json("POST", self.url + "/api/auth/sign-in", {"email": "user1@example.com", "password": "demo"})[0]

    def generation(self) -> int:
        return int(self.ready()[1]["generation"])

    def roll(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def wait_generation(self, above: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.generation() <= above:
            assert time.monotonic() < deadline, "the app did not reload"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class EcsAgent(threading.Thread):
    """ECS's deployment controller, for one service whose task is `app`: a new deployment rolls the app
    (SIGHUP) and completes once the app answers /ready 200; `stall` deployments never complete;
    `on_roll(n)` runs after the n-th roll (e.g. an alarm goes off).

    moto keeps a forced deployment's rolloutState (COMPLETED stays COMPLETED); ECS starts every new
    deployment IN_PROGRESS, so the agent makes moto's UpdateService do that too while it runs."""

    def __init__(self, service: str, rolls: Callable[[], None], app_generation: Callable[[], int],
                 ready: Callable[[], bool], *, stall: tuple[int, ...] = (),
                 on_roll: Callable[[int], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.cluster, self.name = service.split("/")
        self.rolls, self.app_generation, self.ready = rolls, app_generation, ready
        self.stall, self.on_roll = stall, on_roll
        self.stop_event = threading.Event()
        self.seen: list[str] = []

    def _deployment(self) -> dict[str, Any]:
        from moto.ecs.models import ecs_backends

        service = ecs_backends[ACCOUNT][REGION].services[f"{self.cluster}:{self.name}"]
        return service.deployments[0]

    def start(self) -> None:
        from moto.ecs.models import EC2ContainerServiceBackend

        original = EC2ContainerServiceBackend.update_service
        self._original = original

        def update_service(backend: Any, props: dict[str, Any]) -> Any:
            force = props.get("force_new_deployment")
            service = original(backend, props)
            if force and service.deployments:
                service.deployments[0]["rolloutState"] = "IN_PROGRESS"
            return service

        EC2ContainerServiceBackend.update_service = update_service  # type: ignore[method-assign,assignment]
        super().start()

    def run(self) -> None:
        first = self._deployment()
        first["rolloutState"] = "COMPLETED"
        self.seen.append(first["id"])
        while not self.stop_event.wait(0.05):
            dep = self._deployment()
            if dep["id"] in self.seen:
                continue
            self.seen.append(dep["id"])
            n = len(self.seen) - 1
            dep["rolloutState"] = "IN_PROGRESS"
            generation = self.app_generation()
            self.rolls()
            deadline = time.monotonic() + 10
            while self.app_generation() <= generation and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.on_roll is not None:
                self.on_roll(n)
            if n in self.stall:
                continue
            while not self.stop_event.is_set() and self._deployment()["id"] == dep["id"]:
                if self.ready():
                    dep["rolloutState"] = "COMPLETED"
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        from moto.ecs.models import EC2ContainerServiceBackend

        self.stop_event.set()
        self.join(timeout=5)
        EC2ContainerServiceBackend.update_service = self._original  # type: ignore[method-assign]


class RollHook:
    """A platform's roll hook: answers with the scripted statuses first, then forwards to the app's /roll."""

    def __init__(self, app_url: str, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.calls: list[Any] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.calls.append((body, self.headers.get("X-Pgrunbook-Signature")))
                status = hook.statuses.pop(0) if hook.statuses else None
                if status is None:
                    status, _ = http_json("POST", app_url + "/roll", body,
                                          {"X-Pgrunbook-Signature": self.headers.get("X-Pgrunbook-Signature", "")})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/roll"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stage:
    """Everything one cutover needs: databases, the app's secret, the app, an ECS service, an alarm, a topic."""

    dbs: Databases
    secret: str
    app: App
    service: str
    alarm: str
    topic: str
    agent: EcsAgent | None = None
    extra: list[Any] = field(default_factory=list)

    def start_agent(self, **kwargs: Any) -> EcsAgent:
        self.agent = EcsAgent(self.service, self.app.roll, self.app.generation, lambda: self.app.ready()[0] == 200,
                              **kwargs)
        self.agent.start()
        return self.agent

    def args(self, *extra: str, roll: str = "ecs", new: str | None = None) -> list[str]:
        how = ["--ecs-service", self.service] if roll == "ecs" else []
        return ["cutover", "--new-url", new or self.dbs.app(self.dbs.new), "--old-url", self.dbs.admin(self.dbs.old),
                "--secret-id", self.secret, *how, "--ready-url", self.app.url + "/ready", "--ready-timeout", "3",
                "--alarm", self.alarm, "--soak", "0.3", "--attachment-url", self.app.url + "/health",
                "--app-user", self.dbs.role, "--sessions-grace", "5", "--poll", "0.1", "--roll-timeout", "5",
                "--json", *extra]


@pytest.fixture()
def stage(dbs: Databases, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    secret = create_secret(dbs.app(dbs.old))
    app = App(secret, webhook_key=WEBHOOK_KEY)
    topic = create_topic()
    monkeypatch.setenv("PGRUNBOOK_TOPIC_ARN", topic)
    monkeypatch.setenv("ROLL_HOOK_KEY", WEBHOOK_KEY)
    st = Stage(dbs=dbs, secret=secret, app=app, service=create_service(), alarm=create_alarm(), topic=topic)
    try:
        yield st
    finally:
        if st.agent is not None:
            st.agent.stop()
        for thing in st.extra:
            thing.stop()
        app.stop()
        reset_cli_logging()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    rc = main(args)
    out = capsys.readouterr()
    reset_cli_logging()
    data = json.loads(out.out) if out.out.strip() else {}
    return rc, data, out.err


def assert_one_line_error(err: str, contains: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("pgrunbook: error:")]
    assert len(errors) == 1 and contains in errors[0], err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the happy path
def test_cutover_switches_rolls_proves_and_sets_the_old_database_read_only(
        stage: Stage, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from pgrunbook.backup import BackupOptions, run_backup
    from pgrunbook.settings import Settings

    dbs = stage.dbs
    backup = run_backup(BackupOptions(database_url=dbs.admin(dbs.new), dest=str(tmp_path), jobs=1),
                        Settings.from_env({}))  # the backup the candidate "was restored from"
    # Given writes to production after the candidate was copied (the data window)
    for _ in range(3):
        assert stage.app.sign_in() == 200
    old_version, _ = secret_value(stage.secret)
    stage.start_agent()
    before = deployment(stage.service)["id"]

    rc, report, err = run(stage.args("--manifest", backup.archive), capsys)

    assert rc == 0, err
    assert report["outcome"] == "cut over" and report["ok"] is True
    # the secret: a new AWSCURRENT version with the candidate's URL; the old one AWSPREVIOUS
    new_version, value = secret_value(stage.secret)
    assert value == dbs.app(dbs.new) and new_version != old_version
    assert secret_versions(stage.secret) == {old_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}
    assert secret_value(stage.secret, "AWSPREVIOUS") == (old_version, dbs.app(dbs.old))
    # the service was redeployed and the app reads the new database
    assert deployment(stage.service)["id"] != before
    status, ready = stage.app.ready()
    assert status == 200 and ready["secret_version"] == new_version and dbs.new in ready["database"]
    # the data window was stated: the 3 sign-ins wrote 3 SecurityEvent rows the candidate lacks
    assert report["window_data"]["differences"] == {"public.SecurityEvent": 3}
    assert "SecurityEvent +3" in report["text"]
    assert report["window"][0].startswith(f"backup taken {backup.manifest_data['finished_at']} (")
    # sessions moved; the old database is read-only with a retire mark; nothing reached it after the switch
    assert dbs.sessions(dbs.new) > 0 and dbs.sessions(dbs.old) == 0
    assert report["sessions"]["moved"] is True, report["sessions"]
    assert dbs.read_only_setting(dbs.old) and not dbs.read_only_setting(dbs.new)
    assert (dbs.comment(dbs.old) or "").startswith("pgrunbook: retired by cutover")
    assert report["stragglers"] == {}
    # the application writes to the new database now
    events = dbs.count(dbs.new, "SecurityEvent")
    assert stage.app.sign_in() == 200
    assert dbs.count(dbs.new, "SecurityEvent") == events + 1
    # the checks and the notification
    assert [c["check"] for c in report["checks"]] == [
        f"ready GET {stage.app.url}/ready", f"alarm {stage.alarm}", "ready during soak", "attachment GET",
        "sessions moved"]
    assert all(c["ok"] for c in report["checks"])
    ((subject, message),) = notifications(stage.topic)
    assert (subject or "").startswith("pgrunbook cutover: CUT OVER") and message == report["text"]
    assert dbs.password not in message and dbs.server.password not in json.dumps(report)
    print(report["text"])  # noqa: T201 - shown with -s: the report pasted in the closing note


# --------------------------------------------------------------------------- faults: each rolls back or refuses
def assert_back_on_old(stage: Stage, old_version: str) -> None:
    """The previous version is current again, the app reads the old database, which is writable."""
    dbs = stage.dbs
    version, value = secret_value(stage.secret)
    assert (version, value) == (old_version, dbs.app(dbs.old))
    status, ready = stage.app.ready()
    assert status == 200 and ready["secret_version"] == old_version and dbs.old in ready["database"]
    assert not dbs.read_only_setting(dbs.old)
    events = dbs.count(dbs.old, "SecurityEvent")
    assert stage.app.sign_in() == 200
    assert dbs.count(dbs.old, "SecurityEvent") == events + 1
    assert dbs.comment(dbs.old) is None


def test_ready_never_healthy_rolls_back_through_the_signed_webhook(stage: Stage,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    # Given a candidate restored from before the app's last migration: the app refuses to serve from it
    dbs.execute(dbs.new, "DELETE FROM _prisma_migrations WHERE migration_name = '20260115000000_security_events'")
    old_version, _ = secret_value(stage.secret)
    hook = RollHook(stage.app.url, [])
    stage.extra.append(hook)

    rc, report, err = run(stage.args("--webhook", hook.url, "--webhook-secret-env", "ROLL_HOOK_KEY", roll="webhook"),
                          capsys)

    assert rc == 1
    assert_one_line_error(err, "cutover rolled back: /ready never healthy after the roll")
    assert report["outcome"] == "rolled back"
    assert_back_on_old(stage, old_version)
    # both rolls were signed POSTs with the documented body
    import hashlib
    import hmac

    assert len(hook.calls) == 2
    for (body, signature), reason in zip(hook.calls, ("cutover", "rollback"), strict=True):
        assert signature == "sha256=" + hmac.new(WEBHOOK_KEY.encode(), body, hashlib.sha256).hexdigest()
        event = json.loads(body)
        assert event["event"] == "roll" and event["reason"] == reason and event["secret_id"] == stage.secret
    # the candidate is left exactly as it was; the notification says why
    assert dbs.exists(dbs.new) and not dbs.read_only_setting(dbs.new)
    assert dbs.count(dbs.new, "_prisma_migrations") == 1 and dbs.count(dbs.new, "User") == 50
    ((subject, message),) = notifications(stage.topic)
    assert (subject or "").startswith("pgrunbook cutover: ROLLED BACK")
    assert "/ready never healthy" in message and "AWSCURRENT back to version " + old_version in message
    print(report["text"])  # noqa: T201 - the rollback report pasted in the closing note


def test_a_candidate_that_is_not_a_copy_is_refused_before_anything_changes(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    old_version, _ = secret_value(stage.secret)
    empty = dbs.empty()

    rc, report, err = run(stage.args(new=dbs.admin(empty)), capsys)

    assert rc == 1
    assert_one_line_error(err, "the candidate lacks tables the old database has: Job, SecurityEvent, User")
    assert report["outcome"] == "refused" and report["switch"] is None
    # a copy the application's role may not read (its grants were lost) is refused too, in one line
    dbs.execute(dbs.new, sql.SQL('REVOKE SELECT ON "User" FROM {}').format(sql.Identifier(dbs.role)).as_string())
    rc, report, err = run(stage.args(), capsys)
    assert rc == 1
    assert_one_line_error(err, f"cannot count the rows of postgresql://{dbs.role}:***@")
    assert "permission denied for table User" in err
    assert secret_versions(stage.secret) == {old_version: ["AWSCURRENT"]}
    assert not dbs.read_only_setting(dbs.old)


def test_alarm_during_the_soak_rolls_back(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    old_version, _ = secret_value(stage.secret)
    # the error-rate alarm goes off once the app runs on the candidate
    stage.start_agent(on_roll=lambda n: set_alarm(stage.alarm, "ALARM") if n == 1 else None)

    rc, report, err = run(stage.args("--soak", "5"), capsys)

    assert rc == 1
    assert_one_line_error(err, f"alarm {stage.alarm}: expected OK during the soak, actual ALARM")
    assert report["rollback"]["ok"] is True
    assert_back_on_old(stage, old_version)
    assert len(stage.agent.seen) == 3 if stage.agent else False  # first, cutover, rollback deployments
    ((subject, message),) = notifications(stage.topic)
    assert "ROLLED BACK" in (subject or "") and f"alarm {stage.alarm}" in message


def test_secret_update_denied_rolls_nothing(stage: Stage, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core import set_initial_no_auth_action_count

    dbs = stage.dbs
    old_version, _ = secret_value(stage.secret)
    before = deployment(stage.service)["id"]
    # Given credentials that may read the secret and everything else, but not write the secret
    iam = aws.client("iam")
    user = f"ops-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="no-secret-writes", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret",
                                           "ecs:*", "cloudwatch:*", "monitoring:*", "sns:*"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    aws.reset_clients()

    @set_initial_no_auth_action_count(0)
    def cutover() -> tuple[int, dict[str, Any], str]:
        return run(stage.args(), capsys)

    rc, report, err = cutover()

    assert rc == 1
    assert_one_line_error(err, "Secrets Manager denied writing secret")
    assert report["outcome"] == "refused" and report["switch"] is None and report["rollback"] is None
    assert secret_versions(stage.secret) == {old_version: ["AWSCURRENT"]}  # nothing written
    assert deployment(stage.service)["id"] == before  # nothing rolled
    assert_back_on_old(stage, old_version)
    assert dbs.exists(dbs.new) and not dbs.read_only_setting(dbs.new)


def test_ecs_deployment_that_never_completes_rolls_back(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    old_version, _ = secret_value(stage.secret)
    stage.start_agent(stall=(1,))  # the cutover's deployment never completes; the rollback's does

    rc, report, err = run(stage.args("--roll-timeout", "1"), capsys)

    assert rc == 1
    assert_one_line_error(err, "did not complete within 1 s")
    assert report["roll"].startswith("FAILED: ECS deployment of")
    assert report["rollback"]["ok"] is True and "rolled (rollback)" in report["rollback"]["roll"]
    assert_back_on_old(stage, old_version)


def test_webhook_500_rolls_back(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    old_version, _ = secret_value(stage.secret)
    hook = RollHook(stage.app.url, [500])  # the platform refuses the cutover's roll, accepts the rollback's
    stage.extra.append(hook)

    rc, report, err = run(stage.args("--webhook", hook.url, "--webhook-secret-env", "ROLL_HOOK_KEY", roll="webhook"),
                          capsys)

    assert rc == 1
    assert_one_line_error(err, f"roll webhook {hook.url} returned 500")
    assert report["rollback"]["ok"] is True
    assert_back_on_old(stage, old_version)
    ((_, message),) = notifications(stage.topic)
    assert "returned 500" in message


def worker_sign_in(app: App) -> Callable[[int], None]:
    """After the cutover's roll: a second process that was not rolled (a worker) writes once more."""
    def hook(n: int) -> None:
        if n == 1:
            assert app.sign_in() == 200
    return hook


def test_application_still_on_the_old_database_is_reported_and_its_writes_fail_loudly(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    worker = App(stage.secret)  # reads the same secret, but the service roll does not reach it
    stage.extra.append(worker)
    stage.start_agent(on_roll=worker_sign_in(worker))

    rc, report, err = run(stage.args("--sessions-grace", "1"), capsys)

    assert rc == 0, err
    assert report["outcome"] == "cut over"
    assert report["sessions"]["moved"] is False and report["sessions"]["old"] > 0
    assert any("did not all move" in w for w in report["warnings"])
    # the worker's write after the switch is a straggler, counted; its sessions were ended and the old
    # database is read-only, so its next write fails instead of being lost silently
    assert report["stragglers"] == {"public.SecurityEvent": 1}
    assert "SecurityEvent +1" in report["text"]
    assert dbs.read_only_setting(dbs.old)
    assert worker.sign_in() == 503


def test_application_still_on_the_old_database_with_strict_rolls_back(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    old_version, _ = secret_value(stage.secret)
    worker = App(stage.secret)
    stage.extra.append(worker)
    stage.start_agent()

    rc, _, err = run(stage.args("--sessions-grace", "1", "--strict"), capsys)

    assert rc == 1
    assert_one_line_error(err, "sessions moved: expected > 0 on the new, 0 on the old")
    assert_back_on_old(stage, old_version)
    assert worker.sign_in() == 200  # never frozen, never read-only


def test_freeze_lifts_when_counts_differ_and_cuts_over_when_they_are_equal(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    old_version, _ = secret_value(stage.secret)
    before = deployment(stage.service)["id"]
    assert stage.app.sign_in() == 200  # production moved on after the copy
    assert stage.app.sign_in() == 200

    rc, report, err = run(stage.args("--freeze", "--freeze-grace", "0.2"), capsys)

    # refused: the candidate lacks 2 rows; the freeze is lifted, nothing switched or rolled
    assert rc == 1
    assert_one_line_error(err, "the candidate's row counts differ from the frozen source's: SecurityEvent +2")
    assert report["freeze"]["lifted"] is True and report["switch"] is None
    assert secret_versions(stage.secret) == {old_version: ["AWSCURRENT"]}
    assert deployment(stage.service)["id"] == before
    assert_back_on_old(stage, old_version)  # writable again (the app's ended sessions reconnect)

    # a candidate copied now has every row: frozen, switched, and the report says for how long
    dbs.new = dbs.copy()
    stage.start_agent()
    assert stage.app.ready()[0] == 200  # (the copy ended the app's sessions: it reconnects)
    connected = dbs.sessions(dbs.old)
    rc, report, err = run(stage.args("--freeze", "--freeze-grace", "0.2"), capsys)
    assert rc == 0, err
    assert report["freeze"]["kept"] is True and report["freeze"]["frozen_seconds"] > 0
    assert connected > 0 and len(report["freeze"]["ended_sessions"]) == connected  # opened before the freeze
    assert "writes frozen from" in report["text"] and "candidate counts equal the frozen source's" in report["text"]
    assert dbs.read_only_setting(dbs.old) and report["stragglers"] == {}
    assert secret_value(stage.secret)[1] == dbs.app(dbs.new)


def test_read_only_refused_by_permissions_keeps_the_cutover_with_a_warning(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    stage.start_agent()
    args = stage.args()
    args[args.index("--old-url") + 1] = dbs.app(dbs.old)  # the app's role: not the owner of the database

    rc, report, err = run(args, capsys)

    assert rc == 0, err
    assert report["outcome"] == "cut over"
    assert secret_value(stage.secret)[1] == dbs.app(dbs.new)
    assert not dbs.read_only_setting(dbs.old)
    assert any("was not made read-only" in w and "must be owner of database" in w for w in report["warnings"])
    assert "NOT read-only" in report["text"]


def test_rollback_command_refuses_to_lose_writes_then_rolls_back(stage: Stage,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dbs = stage.dbs
    stage.start_agent()
    old_version, _ = secret_value(stage.secret)
    rc, _, err = run(stage.args(), capsys)
    assert rc == 0, err
    new_version, _ = secret_value(stage.secret)
    roll = ["rollback", "--secret-id", stage.secret, "--ecs-service", stage.service, "--ready-url",
            stage.app.url + "/ready", "--poll", "0.1", "--roll-timeout", "5", "--json"]
    # a write to the new database since the cutover: rolling back would lose it, so it is refused
    assert stage.app.sign_in() == 200
    rc, report, err = run(roll, capsys)
    assert rc == 1
    assert_one_line_error(err, "would lose rows written since the cutover: SecurityEvent +1")
    assert secret_value(stage.secret)[0] == new_version and dbs.read_only_setting(dbs.old)
    # with --force it rolls back, lifting pgrunbook's read-only mark before the app reconnects
    rc, report, err = run([*roll, "--force", "--old-url", dbs.admin(dbs.old)], capsys)
    assert rc == 0, err
    assert report["outcome"] == "rolled back"
    assert "read-only setting and retire mark lifted" in report["text"]
    assert_back_on_old(stage, old_version)
    assert secret_versions(stage.secret)[new_version] == ["AWSPREVIOUS"]
    assert dbs.exists(dbs.new) and dbs.count(dbs.new, "SecurityEvent") > 0  # the candidate is untouched


def test_retire_drops_only_a_marked_database_after_its_date(dbs: Databases,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import date, timedelta

    from pgrunbook.cutover import dbstate
    from pgrunbook.cutover.retire import run_retire
    from pgrunbook.dburl import DatabaseUrl
    from pgrunbook.errors import RetireRefused

    def retire(*args: str) -> tuple[int, str]:
        rc, _, err = run(["retire", "--database-url", dbs.admin(dbs.old), *args], capsys)
        return rc, err

    assert retire("--force", "--confirm", dbs.old) == (1, f"pgrunbook: error: {DatabaseUrl.parse(dbs.admin(dbs.old))} "
                                                          "carries no pgrunbook retire mark (only a database pgrunbook "
                                                          "cut over from, and set read-only, can be retired): nothing "
                                                          "dropped\n")
    # marked as a proven cutover marks it (see the cutover tests), retire after a week
    dbstate.set_read_only_and_mark(DatabaseUrl.parse(dbs.admin(dbs.old)), replaced_by="postgresql://x@h/new",
                                   retire_after=date.today() + timedelta(days=7))
    rc, err = retire("--confirm", dbs.old)
    assert rc == 2 and "pass --force" in err
    rc, err = retire("--force", "--confirm", "wrong")
    assert rc == 2 and "--confirm must repeat the database name" in err
    rc, err = retire("--force", "--confirm", dbs.old)
    assert rc == 1 and "may be retired after" in err and "nothing dropped" in err
    later = date.today() + timedelta(days=8)
    with psycopg.connect(dbs.admin(dbs.old), autocommit=True), pytest.raises(RetireRefused, match="1 session"):
        run_retire(dbs.admin(dbs.old), force=True, confirm=dbs.old, today=later)
    assert dbs.exists(dbs.old)
    result = run_retire(dbs.admin(dbs.old), force=True, confirm=dbs.old, today=later)
    assert result.dropped and not dbs.exists(dbs.old)
    assert dbs.exists(dbs.new)




def test_an_interrupt_after_the_switch_rolls_back(stage: Stage) -> None:
    """Ctrl-C (SIGINT) during the proof: the cutover is not left half-done; the CLI rolls back, exit 130."""
    old_version, _ = secret_value(stage.secret)
    proc: list[subprocess.Popen[str]] = []

    def interrupt(n: int) -> None:
        if n == 1:  # the app now reads the candidate; the CLI is waiting for its proof
            proc[0].send_signal(signal.SIGINT)

    stage.start_agent(on_roll=interrupt)
    exe = Path(sys.executable).parent / "pgrunbook"
    args = stage.args("--soak", "30")
    proc.append(subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=cli_env(), stdin=subprocess.DEVNULL))
    _, err = proc[0].communicate(timeout=60)
    assert proc[0].returncode == 130, err
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
    assert_back_on_old(stage, old_version)
