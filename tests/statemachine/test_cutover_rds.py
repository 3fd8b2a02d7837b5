"""An `rds` cutover candidate through the real Restore machine (template.yaml + restore.asl.json, the
functions in-process; RDS is moto with a real PostgreSQL server behind each instance: FakeRds): it is made
production-ready BEFORE the approval (kept name, pgrunbook:keep=candidate, deletion protection, production
parameter group and settings, backups for PITR; rows the approver sees), a rejected one is still torn down
(its deletion protection lifted first), an approved one keeps all of it, is marked approved, and neither the
teardown's delete nor the sweeper removes it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.errors import ProvisionFailed
from pgrunbook.localcloud import LocalCloud
from pgrunbook.provision.rds import delete_instance, instance_tags
from tests.statemachine.test_rds_kept_target import (  # noqa: F401 - rds_cloud is a fixture
    PRODUCTION_GROUP,
    RESTORE_GROUP,
    RETENTION_DAYS,
    FakeRds,
    backed_up,
    rds_cloud,
    show,
)
from tests.statemachine.test_restore_machine import approval_token, pending_approvals


def until_approval(cloud: LocalCloud) -> tuple[str, str, dict[str, Any]]:
    arn = cloud.start("RestoreStateMachine", {"database": "app", "mode": "cutover", "target": {"kind": "rds"}})
    waiting = cloud.wait(arn, timeout=180, until=lambda ex: bool(pending_approvals(arn)))
    assert waiting.status == "RUNNING", (waiting.error, waiting.cause)
    token, record = approval_token(arn)
    return arn, token, record


def decide(cloud: LocalCloud, arn: str, token: str, record: dict[str, Any], decision: str) -> Any:
    cloud.send_task_success(token, {"decision": decision, "approval_id": record["approval_id"],
                                    "approver": "ops@example.com", "decided_at": "2026-12-01T12:00:00Z",
                                    "comment": "test"})
    return cloud.wait(arn, timeout=180)


def the_instance() -> dict[str, Any]:
    (inst,) = aws.client("rds").describe_db_instances()["DBInstances"]
    return dict(inst)


def production_ready(inst: dict[str, Any], fake: FakeRds, keep: str) -> None:
    assert inst["DBInstanceIdentifier"].startswith("pgrunbook-kept-app-")
    assert inst["DeletionProtection"] is True and inst["BackupRetentionPeriod"] == RETENTION_DAYS
    assert [(g["DBParameterGroupName"], g["ParameterApplyStatus"]) for g in inst["DBParameterGroups"]] == [
        (PRODUCTION_GROUP, "in-sync")]
    tags = instance_tags(inst)
    assert (tags["pgrunbook:keep"], tags["pgrunbook:purpose"]) == (keep, "cutover-candidate")
    url = fake.url(inst["DBInstanceIdentifier"], inst["DBName"])
    assert show(url, "autovacuum", "synchronous_commit") == {"autovacuum": "on", "synchronous_commit": "on"}


def test_a_rejected_rds_candidate_is_torn_down_an_approved_one_keeps_its_production_settings(
        rds_cloud: tuple[LocalCloud, FakeRds]) -> None:  # noqa: F811 - the fixture imported above
    cloud, fake = rds_cloud
    backed_up(cloud)

    # waiting for the approval: already production-ready (after a restore and verify restore-tuned)
    arn, token, record = until_approval(cloud)
    inst = the_instance()
    production_ready(inst, fake, keep="candidate")
    assert [group for _, group in fake.applied][:2] == [RESTORE_GROUP, PRODUCTION_GROUP]
    rows = {c["check"]: c for c in record["verify"]["checks"]}
    assert rows["deletion protection"]["actual"] == "on"
    assert rows["backup retention (PITR)"]["actual"] == f"{RETENTION_DAYS} days"
    assert rows["parameter group (production)"]["actual"] == f"{PRODUCTION_GROUP} (in-sync)"
    assert rows["instance name and tags (kept)"]["actual"].startswith(inst["DBInstanceIdentifier"])
    assert record["verify"]["target"].endswith(f":{inst['Endpoint']['Port']}/{inst['DBName']}")  # the kept endpoint

    ex = decide(cloud, arn, token, record, "rejected")

    assert ex.status == "SUCCEEDED", (ex.error, ex.cause, (ex.output or {}).get("teardown_error"))
    assert ex.states_entered()[-3:] == ["Rejected", "RejectedTeardown", "RejectedDone"]
    assert ex.output["teardown"]["name"] == inst["DBInstanceIdentifier"]  # the teardown had its kept name
    assert aws.client("rds").describe_db_instances()["DBInstances"] == [] and fake.servers == []

    # approved: kept as approved, production settings unchanged; neither the teardown's delete nor the sweeper
    arn, token, record = until_approval(cloud)
    ex = decide(cloud, arn, token, record, "approved")
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.states_entered()[-4:] == ["CutoverApproved", "KeepCandidate", "CutoverConfigured", "CutoverReady"]
    inst = the_instance()
    production_ready(inst, fake, keep="approved")
    with pytest.raises(ProvisionFailed, match="deletion protection and is kept"):
        delete_instance(inst["DBInstanceIdentifier"])
    sweep = json.loads(aws.client("lambda").invoke(FunctionName=cloud.function_arn("SweeperFunction"),
                                                   Payload=json.dumps({"action": "sweep"}).encode())["Payload"].read())
    assert {k["name"]: k["why"] for k in sweep["kept"]} == {inst["DBInstanceIdentifier"]: "tagged pgrunbook:keep"}
    with psycopg.connect(fake.url(inst["DBInstanceIdentifier"], inst["DBName"])) as conn:  # the data is there
        assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (200,)
