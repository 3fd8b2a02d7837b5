"""The runbook's failure paths end to end, on one stack (servers, state machines, the sample app) shared by the
module: each test leaves production as it found it, which each test checks. Each asserts on the execution's
history, the notifications, the application's secret versions and both databases (production and the host of
fresh targets).

No staging service here: moto mislabels a secret's versions after a stage move followed by a put
(docs/architecture.md, tool facts), which a second staging smoke on one stack would hit; the staging smoke runs in
test_runbook_cutover.py, one per stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.approval.client import decide_via_link
from pgrunbook.approval.service import ApprovalConflict, ApprovalGone
from pgrunbook.demo import APP_DB, DemoStack
from pgrunbook.sample import SAMPLE_MIGRATIONS
from tests.e2e.conftest import make_stack, new_notifications, until_approval, wrapped

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture(scope="module")
def stack() -> Iterator[DemoStack]:
    with make_stack(parameters={"StagingSecretArn": ""}) as found:
        backup = found.backup()
        assert backup.status == "SUCCEEDED", (backup.error, backup.cause)
        yield found


class Before:
    """Production as it was before a test: the secret's versions, the app's database, the rows, writability."""

    def __init__(self, stack: DemoStack) -> None:
        self.stack = stack
        self.versions = stack.secret_versions()
        self.current = stack.secret_current()
        self.counts = stack.counts(stack.prod_server, APP_DB)
        self.migrations = stack.applied_migrations(stack.prod_server, APP_DB)
        self.seen = len(stack.notifications())

    def unchanged(self) -> None:
        s = self.stack
        assert s.secret_versions() == self.versions and s.secret_current() == self.current
        assert s.counts(s.prod_server, APP_DB) == self.counts
        assert s.applied_migrations(s.prod_server, APP_DB) == self.migrations
        assert not s.read_only(s.prod_server, APP_DB)
        status, body = s.app.ready()
        assert status == 200 and f":{s.prod_server.port}/" in str(body["database"])
        assert not s.database_exists(s.target_server, APP_DB)  # no candidate left on the target host


def test_verification_failure_requests_no_approval_notifies_and_tears_down(stack: DemoStack) -> None:
    before = Before(stack)

    def restore_then_lose_a_row(real: Any, event: Any, context: Any) -> Any:
        result = real(event, context)
        dbname = event["target"]["dbname"]
        with psycopg.connect(stack.target_server.url(dbname), autocommit=True) as conn:
            conn.execute('DELETE FROM "SecurityEvent" WHERE id = (SELECT max(id) FROM "SecurityEvent")')
        return result

    with wrapped(stack, "RestoreFunction", restore_then_lose_a_row):
        run = stack.run("RestoreStateMachine", stack.restore_input(), timeout=180)

    assert run.status == "FAILED" and run.error == "VerificationFailed", (run.error, run.cause)
    assert "SecurityEvent" in (run.cause or "")
    entered = run.states_entered()
    assert entered[entered.index("Verify"):] == ["Verify", "ChooseMode", "CutoverVerified", "NotVerified",
                                                 "FailureReport", "FailureTeardown", "Failed"]
    assert "RequestApproval" not in entered and not stack.approval_requests(run.arn)
    (verify,) = run.task_outputs("Verify")
    (failed,) = [c for c in verify["verify"]["checks"] if not c["ok"]]
    assert failed["check"] == "rows public.SecurityEvent"
    assert int(failed["expected"]) == int(failed["actual"]) + 1
    ((subject, message),) = new_notifications(stack, before.seen)
    assert subject is not None and "FAILED" in subject and "VerificationFailed" in message
    (teardown,) = run.task_outputs("FailureTeardown")
    assert teardown["teardown"]["status"] == "deleted"
    before.unchanged()


def test_rejected_approval_never_cuts_over_and_tears_down(stack: DemoStack) -> None:
    before = Before(stack)
    run = stack.start("RestoreStateMachine", stack.restore_input())
    facts = until_approval(stack, run)
    assert facts["verified"] is True and facts["checks_passed"] == facts["checks_total"]
    assert stack.database_exists(stack.target_server, APP_DB)  # the candidate waits for the decision

    _, message = decide_via_link(facts["approve_url"], decision="reject", name="Rita Reviewer",
                                 comment="not during the sale")
    assert "rejected by Rita Reviewer" in message
    stack.follow(run, timeout=180)

    assert run.status == "SUCCEEDED", (run.error, run.cause)
    entered = run.states_entered()
    assert entered[-4:] == ["ApprovalDecision", "Rejected", "RejectedTeardown", "RejectedDone"]
    assert not {"CutoverApproved", "SwitchAndRoll", "KeepCandidate"} & set(entered)
    assert entered.index("MakeProductionReady") < entered.index("RequestApproval")  # production-ready, torn down
    assert run.output["approval"]["decision"] == "rejected"
    assert run.output["approval"]["approver"] == "Rita Reviewer"
    subjects = [s for s, _ in new_notifications(stack, before.seen)]
    assert subjects[0] is not None and subjects[0].startswith("Approve cutover of app?")
    assert subjects[-1] == "pgrunbook cutover app: verified, rejected by Rita Reviewer"
    with pytest.raises(ApprovalConflict, match="was rejected by Rita Reviewer"):  # used once
        decide_via_link(facts["approve_url"], decision="approve", name="Late Larry")
    before.unchanged()


def test_expired_approval_times_out_cleanly(stack: DemoStack, monkeypatch: pytest.MonkeyPatch) -> None:
    before = Before(stack)
    monkeypatch.setenv("PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", "2")
    run = stack.start("RestoreStateMachine", stack.restore_input())
    facts = until_approval(stack, run)
    stack.follow(run, timeout=180)  # nobody decides

    assert run.status == "FAILED" and run.error == "ApprovalTimedOut", (run.error, run.cause)
    assert "within 2 seconds" in (run.cause or "")
    assert run.states_entered()[-5:] == ["RequestApproval", "ApprovalTimedOut", "FailureReport", "FailureTeardown",
                                         "Failed"]
    subject, message = new_notifications(stack, before.seen)[-1]
    assert subject == "pgrunbook cutover app: FAILED" and "ApprovalTimedOut" in message
    with pytest.raises(ApprovalGone, match="expired"):
        decide_via_link(facts["approve_url"], decision="approve", name="Late Larry")
    before.unchanged()


@pytest.mark.parametrize("where", ["first tar header", "middle"])
def test_corrupted_archive_is_refused_before_the_target_is_touched(stack: DemoStack, where: str) -> None:
    """One flipped byte, same size. In a tar header it used to surface as 'does not read as a tar: bad checksum'
    (a PgrunbookError that hid the damage): the archive's sha256 is compared whatever breaks first."""
    backup = stack.backup()
    assert backup.status == "SUCCEEDED"
    archive = backup.output["results"][0]["result"]["archive"]
    assert archive.endswith(".dump.tar")  # the parallel dump, staged (this machine has the space)
    bucket, _, key = archive.removeprefix("s3://").partition("/")
    s3 = aws.client("s3")
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[148 if where == "first tar header" else len(data) // 2] ^= 0xFF  # 148: the header's checksum field
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    before = Before(stack)
    seen_at_teardown: list[dict[str, Any]] = []

    def look_before_teardown(real: Any, event: Any, context: Any) -> Any:
        if event.get("action") == "delete" and event.get("target"):
            with psycopg.connect(stack.target_server.url(event["target"]["dbname"]), autocommit=True) as conn:
                tables = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                      "WHERE n.nspname = 'public'").fetchone()
                comment = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                       "WHERE datname = current_database()").fetchone()
            seen_at_teardown.append({"objects": tables[0] if tables else None, "comment": comment[0] if comment else 0})
        return real(event, context)

    try:
        with wrapped(stack, "ProvisionFunction", look_before_teardown):
            run = stack.run("RestoreStateMachine", stack.restore_input(backup=archive), timeout=180)

        assert run.status == "FAILED" and run.error == "ChecksumMismatch", (run.error, run.cause)
        assert "refusing to restore" in (run.cause or "")
        entered = run.states_entered()
        assert entered[entered.index("RestoreOnLambda"):] == ["RestoreOnLambda", "FailureReport", "FailureTeardown",
                                                              "Failed"]
        assert "Verify" not in entered and not stack.approval_requests(run.arn)
        # the target existed, and was still empty and unmarked when it was torn down
        (seen,) = seen_at_teardown
        assert seen["objects"] == 0
        assert seen["comment"].startswith("pgrunbook restore target ")  # the provisioner's label, no restore mark
        subject, message = new_notifications(stack, before.seen)[-1]
        assert subject == "pgrunbook cutover app: FAILED" and "ChecksumMismatch" in message
        before.unchanged()
    finally:
        assert stack.backup().status == "SUCCEEDED"  # "latest" is a sound backup again for the other tests


def test_migration_blocked_by_the_lint_gate_applies_nothing_and_notifies(stack: DemoStack, tmp_path: Path) -> None:
    before = Before(stack)
    folder = tmp_path / "migrations"
    for name, script in {**SAMPLE_MIGRATIONS,
                         "20260401000000_job_title_index": 'CREATE INDEX "Job_title_idx" ON "Job"("title");\n'}.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "migration.sql").write_text(script)
    (folder / "migration_lock.toml").write_text('provider = "postgresql"\n')
    uri = stack.upload_migrations(folder, "blocked")
    keys_before = _keys(stack)

    run = stack.run("MigrateStateMachine", {"database": APP_DB, "migrations": uri, "app_version": "blocked"},
                    timeout=180)

    assert run.status == "FAILED" and run.error == "MigrateFailed", (run.error, run.cause)
    entered = run.states_entered()
    assert "LintBlocked" in entered, new_notifications(stack, before.seen)
    assert not {"Backup", "Apply", "Status"} & set(entered)
    ((subject, message),) = new_notifications(stack, before.seen)
    assert subject == "pgrunbook migrate FAILED"
    assert "index-not-concurrent" in message and "20260401000000_job_title_index" in message
    assert _keys(stack) == keys_before  # no pre-migration backup was taken
    indexes = stack.query(stack.prod_server, APP_DB, "SELECT indexname FROM pg_indexes WHERE tablename = 'Job'")
    assert ("Job_title_idx",) not in indexes
    before.unchanged()


def _keys(stack: DemoStack) -> set[str]:
    resp = aws.client("s3").list_objects_v2(Bucket=stack.cloud.bucket, Prefix=f"{APP_DB}/")
    return {o["Key"] for o in resp.get("Contents", [])}
