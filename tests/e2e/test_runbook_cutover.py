"""The runbook's main job end to end, each test on its own stack (a cutover changes production): backup ->
restore in cutover mode -> staging smoke -> approval on the page -> switch + roll of the running app -> proof
-> old database read-only -> migrate on the new database; and /ready failing after the switch -> automatic
rollback to the previous DATABASE_URL. Each asserts on the execution history, the notifications, the
application's secret versions and both databases."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgrunbook import aws
from pgrunbook.approval.client import decide_via_link
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.demo import APP_DB, APP_ROLE
from pgrunbook.sample import demo_migrations
from tests.e2e.conftest import make_stack, new_notifications, until_approval, wrapped

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def test_happy_path_backup_restore_verify_approve_cutover_migrate() -> None:
    with make_stack() as stack:
        prod, targets = stack.prod_server, stack.target_server
        old_version, old_url = stack.secret_current()
        backup = stack.backup()
        assert backup.status == "SUCCEEDED", (backup.error, backup.cause)
        result = backup.output["results"][0]["result"]
        assert stack.manifest(result["archive"])["totals"]["rows"] == sum(stack.counts(prod, APP_DB).values()) + \
            len(stack.applied_migrations(prod, APP_DB))  # exact counts, _prisma_migrations included
        assert stack.load is not None
        stack.load.start()
        stack.load.wait_for(2)  # written after the backup: the data window
        seen = len(stack.notifications())

        run = stack.start("RestoreStateMachine", stack.restore_input())
        facts = until_approval(stack, run)
        assert facts["verified"] is True and facts["checks_passed"] == facts["checks_total"]
        assert stack.database_exists(targets, APP_DB) and stack.secret_current() == (old_version, old_url)
        _, message = decide_via_link(facts["approve_url"], decision="approve", name="Ann Approver", comment="go")
        assert "approved by Ann Approver" in message
        stack.follow(run, timeout=180)
        stack.load.stop()

        assert run.status == "SUCCEEDED", (run.error, run.cause)
        entered = run.states_entered()
        for state in ("RestoreOnLambda", "Verify", "PrepareCandidate", "MakeProductionReady", "RequestApproval",
                      "KeepCandidate", "SwitchAndRoll", "Prove", "Finish", "CutoverDone"):
            assert state in entered, state
        assert entered.index("MakeProductionReady") < entered.index("RequestApproval")  # approved as it serves
        prepared = run.task_outputs("PrepareCandidate")[0]["prepared"]["verify"]["checks"]
        assert {c["check"] for c in prepared if c["ok"]} >= {"staging ready after the roll",
                                                              "staging sign-in POST /api/auth/sign-in"}
        out = run.output
        assert out["approval"]["decision"] == "approved" and out["approval"]["approver"] == "Ann Approver"
        assert out["cutover"]["outcome"] == "cut over"
        assert any(line.startswith("rows written to the source") and "SecurityEvent +" in line
                   for line in out["cutover"]["window"])
        subjects = [s or "" for s, _ in new_notifications(stack, seen)]
        assert subjects[0].startswith("Approve cutover of app?")
        assert subjects[-1].startswith("pgrunbook cutover (cut over) app: verified")

        # the secret: a new AWSCURRENT naming the new database, the previous version kept
        new_version, new_url = stack.secret_current()
        assert new_version != old_version
        assert stack.secret_versions() == {old_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}
        assert DatabaseUrl.parse(new_url).port == str(targets.port) and DatabaseUrl.parse(new_url).user == APP_ROLE
        # both databases: the app runs on the new one, the old one is read-only with every row it had
        status, body = stack.app.ready()
        assert status == 200 and f":{targets.port}/" in str(body["database"])
        assert stack.read_only(prod, APP_DB) and not stack.read_only(targets, APP_DB)
        assert stack.app.sign_in({"email": "user1@example.com", "password": "demo"})[0] == 200
        old_counts = stack.counts(prod, APP_DB)
        new_counts = stack.counts(targets, APP_DB)
        assert new_counts["User"] == old_counts["User"] and new_counts["Job"] == old_counts["Job"]

        # the stack's own secret of app (what Backup and Migrate read) was switched by the cutover itself
        switched = out["cutover"]["stack_secret"]
        assert switched["switched"] is True and f":{targets.port}/{APP_DB}" in switched["new"]
        stack_version, stack_target = stack.stack_secret_current()
        assert stack_version == switched["new_version_id"] and stack_target.port == str(targets.port)

        # migrate: the stack's entry follows the new database; the expand migration lands there only
        uri = stack.upload_migrations(demo_migrations(), "e2e")
        seen = len(stack.notifications())
        migrate = stack.run("MigrateStateMachine", {"database": APP_DB, "migrations": uri, "app_version": "e2e"},
                            timeout=180)
        assert migrate.status == "SUCCEEDED", (migrate.error, migrate.cause)
        assert migrate.states_entered()[-6:] == ["Backup", "Apply", "Status", "StatusVerdict", "NotifySuccess",
                                                 "Succeeded"]
        expand = "20260301000000_user_display_name"
        assert stack.applied_migrations(targets, APP_DB)[-1] == expand
        assert expand not in stack.applied_migrations(prod, APP_DB)
        ((subject, message),) = new_notifications(stack, seen)
        assert subject == "pgrunbook migrations applied" and expand in message
        keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=stack.cloud.bucket,
                                                                    Prefix=f"{APP_DB}/pre-migration/")["Contents"]]
        assert any(k.endswith(".manifest.json") for k in keys)
        assert stack.app.ready()[0] == 200  # the expand migration did not break the running app
        assert stack.password not in str(run.output) + str(migrate.output)


def test_ready_failing_after_the_switch_rolls_back_to_the_previous_database_url() -> None:
    with make_stack(env={"PGRUNBOOK_READY_TIMEOUT": "3"}, parameters={"StagingSecretArn": ""}) as stack:
        prod, targets = stack.prod_server, stack.target_server
        assert stack.backup().status == "SUCCEEDED"
        old_version, old_url = stack.secret_current()
        counts = stack.counts(prod, APP_DB)

        def lock_the_app_out_then_switch(real: Any, event: Any, context: Any) -> Any:
            if event.get("action") == "switch":  # the new database refuses the app's role: /ready fails after the roll
                with psycopg.connect(targets.url(), autocommit=True) as conn:
                    conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC, {}").format(
                        sql.Identifier(APP_DB), sql.Identifier(APP_ROLE)))
            return real(event, context)

        seen = len(stack.notifications())
        run = stack.start("RestoreStateMachine", stack.restore_input())
        facts = until_approval(stack, run)
        with wrapped(stack, "CutoverFunction", lock_the_app_out_then_switch):
            decide_via_link(facts["approve_url"], decision="approve", name="Ann Approver")
            stack.follow(run, timeout=180)

        assert run.status == "FAILED" and run.error == "ProofFailed", (run.error, run.cause)
        assert "/ready" in (run.cause or "")
        assert run.states_entered()[-6:] == ["Prove", "ProofPassed", "ProofFailedError", "Rollback",
                                             "RollbackReport", "CutoverFailed"]
        rollback = run.task_outputs("Rollback")[0]["rollback"]
        assert rollback["outcome"] == "rolled back" and rollback["rollback"]["ok"] is True
        subject, message = new_notifications(stack, seen)[-1]
        assert subject is not None and subject.startswith("pgrunbook cutover (rolled back) app: FAILED")
        assert "ROLLED BACK" in message
        # the secret serves the previous DATABASE_URL again (read by stage: moto's labels after a stage move)
        assert stack.secret_current() == (old_version, old_url)
        assert stack.stack_secret_current()[1].port == str(prod.port)  # the stack's own secret moved back too
        # the app is back on the old database, which stayed writable; the candidate is kept, untouched
        status, body = stack.app.ready()
        assert status == 200 and f":{prod.port}/" in str(body["database"])
        assert not stack.read_only(prod, APP_DB)
        assert stack.app.sign_in({"email": "user1@example.com", "password": "demo"})[0] == 200
        assert stack.counts(prod, APP_DB)["SecurityEvent"] == counts["SecurityEvent"] + 1
        assert stack.database_exists(targets, APP_DB)
        assert stack.counts(targets, APP_DB)["User"] == counts["User"]
