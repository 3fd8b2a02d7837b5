"""The Restore state machine in cutover mode after approval (statemachines/restore.asl.json, template.yaml,
functions/cutover), run by pgrunbook.localcloud on moto (Step Functions, Secrets Manager, ECS, CloudWatch,
SNS, S3) against real PostgreSQL, with the sample application in-process: it reads its DATABASE_URL
secret when it starts and when it is rolled (by the ECS stand-in, or by the signed roll webhook).

Covered: staging smoke and data window in the approval, approval -> keep -> production-ready -> switch
-> roll -> proof -> old database read-only; an alarm during the soak rolls back; a rejection never
freezes; freeze -> final backup/restore -> cut over; freeze then a failed final restore (disk full)
lifts the freeze and switches nothing."""

from __future__ import annotations

import json
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

from pgrunbook import aws
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


@contextmanager
def local_stack(pg_server: LocalServer, golden: Golden, *, roll: str = "ecs", staging: bool = True,
                extra_env: dict[str, str] | None = None) -> Iterator[Setup]:
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
    with LocalCloud([LocalDatabase("app", dbs.admin(dbs.old))], parameters=params, env=env) as cloud:
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
        # staging is back on its own database and secret version
        assert secret_value(s.staging_secret)[0] == staging_version
        assert s.dbs.new in str(s.staging.database)
        message = approval_message(s)
        assert "staging sign-in POST /api/auth/sign-in" in message and "SecurityEvent +1" in message

        ex = decide(s, arn, token, record, "approved")

        assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
        # Verify ran no HTTP checks: the production app (AppUrl) still reads the old database
        (after_verify,) = ex.task_outputs("Verify")
        assert after_verify["plan"]["app_url"] is None
        assert not [c for c in after_verify["verify"]["checks"] if c["check"].startswith("http ")]
        entered = ex.states_entered()
        assert entered[entered.index("CutoverApproved"):] == [
            "CutoverApproved", "CutoverConfigured", "KeepCandidate", "CandidateKept", "AdoptKeptTarget",
            "ChooseFreeze", "MakeProductionReady", "SwitchAndRoll", "Prove", "ProofPassed", "Finish",
            "CutoverReport", "CutoverDone"]
        candidate = candidate_of(ex)
        new_version, value = secret_value(s.app_secret)
        assert value == s.dbs.app(candidate)
        assert secret_versions(s.app_secret) == {old_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}
        assert s.app.ready()[0] == 200 and candidate in str(s.app.database)
        assert s.dbs.sessions(candidate) > 0 and s.dbs.sessions(s.dbs.old) == 0
        assert read_only(s) and not s.dbs.read_only_setting(candidate)
        assert (s.dbs.comment(s.dbs.old) or "").startswith("pgrunbook: retired by cutover")
        # the candidate is production-ready: kept, owned and granted as the source
        labels = s.dbs.execute("postgres", "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
                                           "ON d.oid = s.setdatabase WHERE d.datname = %s", (candidate,))
        assert "pgrunbook.keep=cutover" in labels[0][0]
        report = ex.output["cutover"]
        assert report["outcome"] == "cut over" and report["stragglers"] == {}
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
