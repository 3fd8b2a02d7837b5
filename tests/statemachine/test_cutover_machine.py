"""The Restore state machine in cutover mode after approval (statemachines/restore.asl.json, template.yaml,
functions/cutover), run by pgrunbook.localcloud on moto (Step Functions, Secrets Manager, ECS, CloudWatch,
SNS, S3) against real PostgreSQL, with the sample application in-process: it reads its DATABASE_URL
secret when it starts and when it is rolled (by the ECS stand-in, or by the signed roll webhook).

Covered: staging smoke, data window and production-ready rows in the approval (the candidate is made
production-ready BEFORE approval), approval -> kept (approved) -> switch -> roll -> proof -> old database
read-only; a rejected candidate that was made production-ready (owned by the source's owner, a role the
target role may only SET ROLE to) is still torn down, an approved one keeps its production settings; the
stack's own secret of the database follows the cutover (the next Backup execution reads the new database)
and its rollback (the next one reads the old database again); an alarm during the soak rolls back; a
rejection never freezes; freeze -> final backup/restore -> cut over; freeze then a failed final restore
(disk full) lifts the freeze and switches nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgrunbook import aws
from pgrunbook.archive import ArchiveRef
from pgrunbook.cutover.stacksecret import ROW as STACK_ROW
from pgrunbook.localcloud import LocalCloud, LocalDatabase
from pgrunbook.pgserver import LocalServer, free_port
from pgrunbook.sampleapp import SampleApp
from tests.integration.test_cutover import (
    Databases,
    EcsAgent,
    Golden,
    create_alarm,
    drop_golden,
    make_databases,
    make_golden,
    secret_value,
    secret_versions,
    set_alarm,
)
from tests.statemachine.test_restore_machine import approval_token, database_exists, pending_approvals

WEBHOOK_KEY = "roll-hook-key"


@dataclass
class Setup:
    cloud: LocalCloud
    dbs: Databases
    app: SampleApp
    staging: SampleApp
    app_secret: str
    staging_secret: str
    service: str
    alarm: str
    agent: EcsAgent | None = None


@pytest.fixture(scope="module")
def golden(pg_server: LocalServer) -> Iterator[Golden]:
    found = make_golden(pg_server)
    yield found
    drop_golden(pg_server, found)


@pytest.fixture(scope="module")
def other_server(golden: Golden) -> Iterator[LocalServer]:
    """A second server (the `targets` entry): the host of a candidate named like the source, as a new
    server would be; the application's role exists there with its password (as on a new RDS instance the
    production-ready step makes it)."""
    root = Path(tempfile.mkdtemp(prefix="pgrunbook-test-pg2-"))
    try:
        with LocalServer.running(root / "data") as server:
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(golden.role), sql.Literal(golden.password)))
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def local_stack(pg_server: LocalServer, golden: Golden, *, roll: str = "ecs", staging: bool = True,
                extra_env: dict[str, str] | None = None, targets: LocalServer | None = None) -> Iterator[Setup]:
    dbs = make_databases(pg_server, golden)
    app_port, staging_port = free_port(), free_port()
    names = {"app": f"app-{uuid.uuid4().hex[:6]}/DATABASE_URL", "staging": f"staging-{uuid.uuid4().hex[:6]}/URL",
             "key": f"roll-key-{uuid.uuid4().hex[:6]}", "sign_in": f"smoke-{uuid.uuid4().hex[:6]}"}
    cluster, alarm = f"c{uuid.uuid4().hex[:6]}", f"errors-{uuid.uuid4().hex[:6]}"
    params = {
        "AppSecretArn": names["app"], "AppReadyUrl": f"http://127.0.0.1:{app_port}/ready",
        "RollWebhookSecretArn": names["key"], "CutoverSoakSeconds": "0", "CutoverAlarmNames": alarm,
        "RetireAfterDays": "7",
        "AppUrl": f"http://127.0.0.1:{app_port}",  # the production app: Verify must not "check the copy" there
    }
    if staging:  # (one staging smoke per test: moto mislabels a secret's versions after a stage move and a put)
        params.update({"StagingSecretArn": names["staging"], "StagingUrl": f"http://127.0.0.1:{staging_port}",
                       "StagingRollWebhookUrl": f"http://127.0.0.1:{staging_port}/roll",
                       "StagingChecks": "GET:/api/users?q=user1:200", "StagingSignIn": "POST:/api/auth/sign-in:200",
                       "StagingSignInSecretArn": names["sign_in"]})
    if roll == "ecs":
        params["AppEcsService"] = f"{cluster}/web"
    else:
        params["AppRollWebhookUrl"] = f"http://127.0.0.1:{app_port}/roll"
    env = {"PGRUNBOOK_CUTOVER_POLL": "0.1", "PGRUNBOOK_READY_TIMEOUT": "3", "PGRUNBOOK_ROLL_TIMEOUT": "5",
           "PGRUNBOOK_SESSIONS_GRACE": "5", "PGRUNBOOK_SOAK_SECONDS": "0.3", "PGRUNBOOK_FREEZE_GRACE": "0.3",
           **(extra_env or {})}
    app = staging_app = None
    setup: Setup | None = None
    databases = [LocalDatabase("app", dbs.admin(dbs.old))]
    if targets is not None:
        databases.append(LocalDatabase("targets", targets.url("postgres")))
    with LocalCloud(databases, parameters=params, env=env) as cloud:
        try:
            sm = aws.client("secretsmanager")
            sm.create_secret(Name=names["app"], SecretString=dbs.app(dbs.old))
            sm.create_secret(Name=names["staging"], SecretString=dbs.app(dbs.new))  # staging's own database
            sm.create_secret(Name=names["key"], SecretString=WEBHOOK_KEY)
            sm.create_secret(Name=names["sign_in"], SecretString=json.dumps(
                {"email": "user1@example.com", "password": "demo"}))
            aws.client("ecs").create_cluster(clusterName=cluster)
            service = create_service_in(cluster)
            create_alarm(alarm)
            app = SampleApp(names["app"], port=app_port, webhook_key=WEBHOOK_KEY.encode()).start()
            staging_app = SampleApp(names["staging"], port=staging_port, webhook_key=WEBHOOK_KEY.encode()).start()
            setup = Setup(cloud, dbs, app, staging_app, names["app"], names["staging"], service, alarm)
            yield setup
        finally:
            if setup is not None and setup.agent is not None:
                setup.agent.stop()
            for a in (app, staging_app):
                if a is not None:
                    a.stop()
            dbs.drop_all()
            _drop_targets(pg_server)
            if targets is not None:
                with psycopg.connect(targets.url(), autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbs.old)))


def create_service_in(cluster: str) -> str:
    ecs = aws.client("ecs")
    ecs.register_task_definition(family="app", containerDefinitions=[{"name": "app", "image": "app", "memory": 128}])
    ecs.create_service(cluster=cluster, serviceName="web", taskDefinition="app", desiredCount=1)
    return f"{cluster}/web"


def _drop_targets(server: LocalServer) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgrunbook\\_drill\\_%'"
                                    ).fetchall():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_agent(s: Setup, **kwargs: Any) -> EcsAgent:
    s.agent = EcsAgent(s.service, lambda: s.app.reload("ECS deployment"), lambda: s.app.generation,
                       lambda: s.app.ready()[0] == 200, **kwargs)
    s.agent.start()
    return s.agent


def sign_in(app: SampleApp) -> int:
    return app.sign_in({"email": "user1@example.com", "password": "demo"})[0]


def backed_up(cloud: LocalCloud) -> None:
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", ex.cause


def until_approval(s: Setup, payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    arn = s.cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover", **payload})
    waiting = s.cloud.wait(arn, until=lambda ex: bool(pending_approvals(arn)))
    assert waiting.status == "RUNNING", (waiting.error, waiting.cause)
    token, record = approval_token(arn)
    return arn, token, record


def approval_message(s: Setup) -> str:
    """The approval request's notification (published just after the approval record is stored)."""
    import time

    deadline = time.monotonic() + 30
    while True:
        found = [m for subject, m in s.cloud.notifications() if (subject or "").startswith("Approve cutover of")]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, "no approval request was published"
        time.sleep(0.05)


def decide(s: Setup, arn: str, token: str, record: dict[str, Any], decision: str) -> Any:
    s.cloud.send_task_success(token, {"decision": decision, "approval_id": record["approval_id"],
                                      "approver": "ops@example.com", "decided_at": "2026-12-01T12:00:00Z",
                                      "comment": "test"})
    return s.cloud.wait(arn, timeout=180)


def candidate_of(ex: Any) -> str:
    return str(ex.output["target"]["dbname"]) if ex.output else str(ex.task_outputs("Provision")[0]["target"]["dbname"])


def read_only(s: Setup) -> bool:
    return s.dbs.read_only_setting(s.dbs.old)


def labels(s: Setup, db: str) -> dict[str, str]:
    """A target's labels (its comment; provision.database.parse_labels)."""
    from pgrunbook.provision.database import parse_labels

    return parse_labels(s.dbs.comment(db))


def owner(s: Setup, db: str) -> str:
    return str(s.dbs.execute("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             (db,))[0][0])


BEFORE_APPROVAL = ["PrepareCandidate", "CandidateVerified", "AdoptPreparedVerify", "TrimPrepared",
                   "StartProductionReady", "MakeProductionReady", "ProductionReadyDone", "AdoptProductionReadyTarget",
                   "AdoptProductionReadyVerify", "TrimProductionReady", "NewApprovalId", "RequestApproval"]


# --------------------------------------------------------------------------- happy path
def test_approved_cutover_switches_rolls_proves_and_keeps_the_old_database_read_only(pg_server: LocalServer,
                                                                                     golden: Golden) -> None:
    with local_stack(pg_server, golden) as s:
        backed_up(s.cloud)
        assert sign_in(s.app) == 200  # a write after the backup: the data window
        start_agent(s)
        old_version, _ = secret_value(s.app_secret)
        staging_version, _ = secret_value(s.staging_secret)

        arn, token, record = until_approval(s, {})

        # what the approver sees: the staging smoke on the candidate and the data window
        verify = record["verify"]
        names = [c["check"] for c in verify["checks"]]
        assert {"application login", "staging ready after the roll", "staging GET /health", "staging GET /ready",
                "staging GET /api/users?q=user1", "staging sign-in POST /api/auth/sign-in"} <= set(names)
        assert verify["ok"] is True
        (window,) = [c for c in verify["checks"] if c["check"] == "data window (rows since the backup)"]
        assert window["actual"] == "SecurityEvent +1" and "lost at cutover" in window["detail"]
        # ... and the candidate already production-ready: what is approved is what will serve production
        waiting = str(s.cloud.wait(arn, until=lambda ex: True).task_outputs("Provision")[0]["target"]["dbname"])
        assert {"database kept (label)", "database owner as on the source", "database grants as on the source",
                "database settings as on the source"} <= set(names)
        assert labels(s, waiting)["keep"] == "candidate" and owner(s, waiting) == owner(s, s.dbs.old)
        (stack_row,) = [c for c in verify["checks"] if c["check"] == STACK_ROW]  # same server: another name
        assert stack_row["actual"] == "NOT switched" and "point the entry in DatabasesJson" in stack_row["detail"]
        # staging is back on its own database and secret version
        assert secret_value(s.staging_secret)[0] == staging_version
        assert s.dbs.new in str(s.staging.database)
        message = approval_message(s)
        assert "staging sign-in POST /api/auth/sign-in" in message and "SecurityEvent +1" in message
        assert "database owner as on the source" in message and STACK_ROW in message

        ex = decide(s, arn, token, record, "approved")

        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        # Verify ran no HTTP checks: the production app (AppUrl) still reads the old database
        (after_verify,) = ex.task_outputs("Verify")
        assert after_verify["plan"]["app_url"] is None
        assert not [c for c in after_verify["verify"]["checks"] if c["check"].startswith("http ")]
        entered = ex.states_entered()
        assert entered[entered.index("PrepareCandidate"):entered.index("RequestApproval") + 1] == BEFORE_APPROVAL
        assert entered[entered.index("CutoverApproved"):] == [
            "CutoverApproved", "KeepCandidate", "CutoverConfigured", "ChooseFreeze", "SwitchAndRoll", "Prove",
            "ProofPassed", "Finish", "CutoverReport", "CutoverDone"]
        candidate = candidate_of(ex)
        new_version, value = secret_value(s.app_secret)
        assert value == s.dbs.app(candidate)
        assert secret_versions(s.app_secret) == {old_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}
        assert s.app.ready()[0] == 200 and candidate in str(s.app.database)
        assert s.dbs.sessions(candidate) > 0 and s.dbs.sessions(s.dbs.old) == 0
        assert read_only(s) and not s.dbs.read_only_setting(candidate)
        assert (s.dbs.comment(s.dbs.old) or "").startswith("pgrunbook: retired by cutover")
        # the candidate is production-ready and approved: kept, owned as the source
        assert labels(s, candidate)["keep"] == "approved" and owner(s, candidate) == owner(s, s.dbs.old)
        report = ex.output["cutover"]
        assert report["outcome"] == "cut over" and report["stragglers"] == {}
        assert report["stack_secret"]["switched"] is False and any(
            "still read the OLD database" in w for w in report["warnings"])
        subject, message = s.cloud.notifications()[-1]
        assert (subject or "").startswith("pgrunbook cutover (cut over) app: verified")
        assert "pgrunbook cutover: CUT OVER" in message and "sessions moved" in message
        assert s.dbs.password not in json.dumps(ex.output) and pg_server.password not in message


# --------------------------------------------------------------------------- a fault after approval
def test_alarm_during_the_soak_rolls_back_through_the_webhook(pg_server: LocalServer, golden: Golden) -> None:
    with local_stack(pg_server, golden, roll="webhook") as s:
        backed_up(s.cloud)
        old_version, _ = secret_value(s.app_secret)
        arn, token, record = until_approval(s, {})
        set_alarm_after_switch = _AlarmOnSwitch(s)
        set_alarm_after_switch.start()

        ex = decide(s, arn, token, record, "approved")

        set_alarm_after_switch.stop()
        assert ex.status == "FAILED"
        assert ex.error == "ProofFailed" and f"alarm {s.alarm}" in (ex.cause or "")
        assert ex.states_entered()[-4:] == ["ProofFailedError", "Rollback", "RollbackReport", "CutoverFailed"]
        candidate = candidate_of(ex)
        assert secret_value(s.app_secret) == (old_version, s.dbs.app(s.dbs.old))
        assert s.app.ready()[0] == 200 and s.dbs.old in str(s.app.database)
        assert not read_only(s) and sign_in(s.app) == 200
        assert database_exists(pg_server, candidate)  # never dropped or changed by the rollback
        rollback = ex.task_outputs("Rollback")[0]["rollback"]
        assert rollback["outcome"] == "rolled back" and rollback["rollback"]["ok"] is True
        subject, message = s.cloud.notifications()[-1]
        assert (subject or "").startswith("pgrunbook cutover (rolled back) app: FAILED")
        assert "ROLLED BACK" in message and f"alarm {s.alarm}" in message


class _AlarmOnSwitch:
    """The error-rate alarm goes off as soon as the application reads the candidate."""

    def __init__(self, s: Setup) -> None:
        import threading

        self.s, self.stop_event = s, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        first = self.s.app.generation
        while not self.stop_event.wait(0.05):
            if self.s.app.generation > first:
                set_alarm(self.s.alarm, "ALARM")
                return

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- freeze
def test_freeze_never_starts_before_approval_and_closes_the_window_after(pg_server: LocalServer,
                                                                         golden: Golden) -> None:
    with local_stack(pg_server, golden, staging=False) as s:
        backed_up(s.cloud)
        start_agent(s)
        # rejected: nothing is ever frozen
        arn, token, record = until_approval(s, {"freeze": True})
        assert not read_only(s)
        (estimate,) = [c for c in record["verify"]["checks"] if c["check"] == "freeze: expected write downtime"]
        assert estimate["actual"].startswith("about ") and "writes stop only after approval" in estimate["detail"]
        assert "writes to app stop after approval for about" in approval_message(s)
        ex = decide(s, arn, token, record, "rejected")
        assert ex.status == "SUCCEEDED" and ex.states_entered()[-1] == "RejectedDone"
        assert not read_only(s) and not database_exists(pg_server, candidate_of(ex))
        assert sign_in(s.app) == 200  # a write after the backup: the freeze takes it along

        # approved: frozen, final backup (kind cutover) restored, verified, switched
        arn, token, record = until_approval(s, {"freeze": True})
        ex = decide(s, arn, token, record, "approved")
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        assert "FreezeAndRefresh" in ex.states_entered()
        refresh = ex.output["refresh"]
        assert "/cutover/" in refresh["backup"]["archive"] and refresh["backup"]["kind"] == "cutover"
        candidate = candidate_of(ex)
        events = s.dbs.count(s.dbs.old, "SecurityEvent")
        assert s.dbs.count(candidate, "SecurityEvent") >= events  # nothing written to the source is missing
        report = ex.output["cutover"]
        assert report["freeze"]["kept"] is True and report["freeze"]["frozen_seconds"] > 0
        assert "writes frozen from" in report["text"]
        assert read_only(s) and s.dbs.new not in candidate
        # the final copy took the approved candidate's place production-ready like it (owner, keep: approved)
        assert labels(s, candidate)["keep"] == "approved" and owner(s, candidate) == owner(s, s.dbs.old)
        assert labels(s, candidate).get("execution") == arn
        assert s.app.ready()[0] == 200 and candidate in str(s.app.database)


@pytest.fixture()
def full_disk() -> Iterator[Path]:
    """A 2 MB tmpfs: too small for a restore's download (it checks the free space first)."""
    folder = Path(tempfile.mkdtemp(prefix="pgrunbook-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)
    folder.rmdir()


def test_freeze_then_a_failed_final_restore_lifts_the_freeze_and_switches_nothing(
        pg_server: LocalServer, golden: Golden, full_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with local_stack(pg_server, golden, staging=False) as s:
        backed_up(s.cloud)
        start_agent(s)
        old_version, _ = secret_value(s.app_secret)
        arn, token, record = until_approval(s, {"freeze": True})
        monkeypatch.setenv("PGRUNBOOK_WORK_DIR", str(full_disk))  # the final restore downloads here

        ex = decide(s, arn, token, record, "approved")

        assert ex.status == "FAILED"
        assert "not enough free space" in (ex.cause or "") and "freeze lifted" in (ex.cause or "")
        entered = ex.states_entered()
        assert entered[-4:] == ["FreezeAndRefresh", "CutoverAborted", "CutoverAbortedReport", "CutoverFailed"]
        assert "SwitchAndRoll" not in entered
        assert not read_only(s) and sign_in(s.app) == 200  # writable again
        assert secret_versions(s.app_secret) == {old_version: ["AWSCURRENT"]}  # nothing switched
        assert s.dbs.old in str(s.app.database)
        assert database_exists(pg_server, candidate_of(ex))  # the approved candidate is kept
        subject, message = s.cloud.notifications()[-1]
        assert (subject or "").startswith("pgrunbook cutover (refused) app: FAILED") and "NOT CUT OVER" in message


# --------------------------------------------------------------------------- production-ready before approval
@contextmanager
def restricted_target_role(s: Setup) -> Iterator[str]:
    """The stack creates `database` targets with a role of its own (the entry's target_secret_arn) that is
    no superuser: CREATEDB, and allowed to SET ROLE to the source database's owner without inheriting its
    rights (PostgreSQL 16+: WITH INHERIT FALSE). So it may give a candidate to that owner (production-ready)
    but, as itself, no longer drop it. Yields the owner's name."""
    tag = uuid.uuid4().hex[:6]
    own, tgt, password = f"own_{tag}", f"tgt_{tag}", uuid.uuid4().hex
    s.dbs.execute("postgres", sql.SQL("CREATE ROLE {} NOLOGIN; CREATE ROLE {} LOGIN CREATEDB PASSWORD {}; "
                                      "GRANT {} TO {} WITH INHERIT FALSE, SET TRUE; ALTER DATABASE {} OWNER TO {}")
                  .format(sql.Identifier(own), sql.Identifier(tgt), sql.Literal(password), sql.Identifier(own),
                          sql.Identifier(tgt), sql.Identifier(s.dbs.old), sql.Identifier(own)).as_string())
    url = s.dbs.server.url(s.dbs.old, user=tgt, password=password)
    from pgrunbook.dburl import DatabaseUrl

    arn = aws.client("secretsmanager").create_secret(Name=f"targets-{tag}", SecretString=json.dumps(
        DatabaseUrl.parse(url).to_secret()))["ARN"]
    entries = json.loads(os.environ["PGRUNBOOK_DATABASES"])
    for entry in entries:
        if entry["name"] == "app":
            entry["target_secret_arn"] = arn
    os.environ["PGRUNBOOK_DATABASES"] = json.dumps(entries)  # (LocalCloud puts the variable back on exit)
    try:
        yield own
    finally:
        _drop_targets(s.dbs.server)
        s.dbs.execute("postgres", sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(s.dbs.old), sql.Identifier(s.dbs.server.superuser)).as_string())
        s.dbs.execute("postgres", sql.SQL("DROP ROLE {}; DROP ROLE {}").format(sql.Identifier(tgt),
                                                                             sql.Identifier(own)).as_string())


def test_a_rejected_production_ready_candidate_is_torn_down_whatever_its_owner_an_approved_one_keeps_it(
        pg_server: LocalServer, golden: Golden) -> None:
    with local_stack(pg_server, golden, staging=False) as s, restricted_target_role(s) as source_owner:
        backed_up(s.cloud)
        start_agent(s)

        # rejected: made production-ready before the approval (given to the source's owner), still torn down
        arn, token, record = until_approval(s, {})
        candidate = str(s.cloud.wait(arn, until=lambda ex: True).task_outputs("Provision")[0]["target"]["dbname"])
        assert owner(s, candidate) == source_owner and labels(s, candidate)["keep"] == "candidate"
        rows = {c["check"]: c for c in record["verify"]["checks"]}
        assert rows["database owner as on the source"]["actual"] == source_owner
        assert rows["database kept (label)"]["actual"] == "keep: candidate"
        ex = decide(s, arn, token, record, "rejected")
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause, ex.output and ex.output.get("teardown_error"))
        assert ex.states_entered()[-3:] == ["Rejected", "RejectedTeardown", "RejectedDone"]
        assert not s.dbs.exists(candidate)

        # approved: kept with the production settings it was approved with, and the sweeper leaves it alone
        arn, token, record = until_approval(s, {})
        ex = decide(s, arn, token, record, "approved")
        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        candidate = candidate_of(ex)
        assert owner(s, candidate) == source_owner and labels(s, candidate)["keep"] == "approved"
        assert labels(s, candidate).get("execution") == arn, (labels(s, candidate), s.dbs.comment(candidate))
        resp = aws.client("lambda").invoke(FunctionName=s.cloud.function_arn("SweeperFunction"),
                                           Payload=json.dumps({"action": "sweep"}).encode())
        sweep = json.loads(resp["Payload"].read())
        assert candidate in {k["name"] for k in sweep["kept"]} and s.dbs.exists(candidate)


# --------------------------------------------------------------------------- the stack's own secret follows
def backup_source(cloud: LocalCloud) -> dict[str, Any]:
    """The next Backup execution: where it read from (its manifest's source) and its per-table counts."""
    ex = cloud.run("BackupStateMachine", {"kind": "manual", "databases": ["app"]})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    manifest = ArchiveRef.from_uri(ex.output["results"][0]["result"]["archive"]).manifest()
    assert manifest is not None
    return {"port": str(manifest.source["port"]), "events": manifest.tables["public.SecurityEvent"]}


def test_the_stacks_secret_follows_the_cutover_the_next_backup_reads_the_new_database(
        pg_server: LocalServer, golden: Golden, other_server: LocalServer) -> None:
    with local_stack(pg_server, golden, roll="webhook", staging=False, targets=other_server) as s:
        backed_up(s.cloud)
        stack_secret = s.cloud.secret_arns["app"]
        original, _ = secret_value(stack_secret)
        arn, token, record = until_approval(s, {"target": {"kind": "database", "server": "targets",
                                                           "name": s.dbs.old}})  # a new server, the same name
        (row,) = [c for c in record["verify"]["checks"] if c["check"] == STACK_ROW]
        assert row["actual"] == "switched at cutover" and "the role the candidate was restored with" in row["detail"]
        assert secret_value(stack_secret)[0] == original  # nothing written before the approval

        ex = decide(s, arn, token, record, "approved")

        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        report = ex.output["cutover"]
        stack = report["stack_secret"]
        assert stack["switched"] is True and stack["previous_version_id"] == original
        assert secret_versions(stack_secret) == {original: ["AWSPREVIOUS"], stack["new_version_id"]: ["AWSCURRENT"]}
        assert f":{other_server.port}/{s.dbs.old}" in stack["new"] and other_server.password not in json.dumps(report)
        assert f"stack secret  {stack_secret} (database app" in report["text"]
        # the OLD database is the one set read-only and retired (not what the switched secret names now)
        assert report["old"].startswith(f"postgresql://{pg_server.superuser}:***@127.0.0.1:{pg_server.port}/")
        assert f"--database-url {report['old']} --force" in report["text"]
        assert read_only(s) and report["sessions"]["old"] == 0
        with psycopg.connect(other_server.url(s.dbs.old), autocommit=True) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        assert not [w for w in report["warnings"] if "OLD database (read-only" in w]
        print(report["text"])  # noqa: T201 - shown with -s: the cutover report pasted in the closing note
        assert sign_in(s.app) == 200  # a write that reaches the new database only
        with psycopg.connect(other_server.url(s.dbs.old), autocommit=True) as conn:
            row_count = conn.execute('SELECT count(*) FROM "SecurityEvent"').fetchone()
        assert row_count is not None and row_count[0] == s.dbs.count(s.dbs.old, "SecurityEvent") + 1
        assert backup_source(s.cloud) == {"port": str(other_server.port), "events": row_count[0]}


def test_a_rollback_moves_the_stacks_secret_back_the_next_backup_reads_the_old_database(
        pg_server: LocalServer, golden: Golden, other_server: LocalServer) -> None:
    with local_stack(pg_server, golden, roll="webhook", staging=False, targets=other_server) as s:
        backed_up(s.cloud)
        stack_secret = s.cloud.secret_arns["app"]
        original, _ = secret_value(stack_secret)
        arn, token, record = until_approval(s, {"target": {"kind": "database", "server": "targets",
                                                           "name": s.dbs.old}})
        alarm = _AlarmOnSwitch(s)  # an alarm once the application reads the new database: rolled back
        alarm.start()
        ex = decide(s, arn, token, record, "approved")
        alarm.stop()

        assert ex.status == "FAILED" and ex.error == "ProofFailed", (ex.error, ex.cause)
        switched = ex.task_outputs("SwitchAndRoll")[0]["switch"]["stack_secret"]
        assert switched["switched"] is True and switched["previous_version_id"] == original
        rollback = ex.task_outputs("Rollback")[0]["rollback"]
        assert rollback["rollback"]["ok"] is True and rollback["rollback"]["stack_secret"].startswith(
            f"AWSCURRENT back to version {original}")
        assert "stack secret AWSCURRENT back to version" in rollback["text"]
        print(rollback["text"])  # noqa: T201 - shown with -s: the rollback report pasted in the closing note
        assert secret_value(stack_secret)[0] == original  # (read by stage: moto's labels after a stage move)
        assert sign_in(s.app) == 200  # a write to the old database: the next backup has it
        assert backup_source(s.cloud) == {"port": str(pg_server.port),
                                          "events": s.dbs.count(s.dbs.old, "SecurityEvent")}
