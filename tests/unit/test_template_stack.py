"""The stack as CloudFormation deploys it (SAM transform applied): two stacks coexist, what backups
need is retained, RDS resources exist only with RDS targets, and the Fargate task can write its work
directory. moto's CloudFormation does not model Scheduler schedules or Lambda layers by name, so
physical names are checked statically: every name the template fixes must carry the stack name."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pgrunbook import sizing
from tests.conftest import project_root
from tests.unit.template_support import STACK, Resolver, expanded, raw_template

# the property that holds each resource type's physical name (when set, it must be per stack)
NAME_PROPERTIES = {
    "AWS::Scheduler::Schedule": "Name", "AWS::Scheduler::ScheduleGroup": "Name", "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::KMS::Alias": "AliasName", "AWS::RDS::DBParameterGroup": "DBParameterGroupName",
    "AWS::SecretsManager::Secret": "Name", "AWS::Lambda::Function": "FunctionName", "AWS::Lambda::LayerVersion":
    "LayerName", "AWS::StepFunctions::StateMachine": "StateMachineName", "AWS::IAM::Role": "RoleName",
    "AWS::SNS::Topic": "TopicName", "AWS::S3::Bucket": "BucketName", "AWS::ECS::Cluster": "ClusterName",
    "AWS::CloudWatch::Alarm": "AlarmName", "AWS::DynamoDB::Table": "TableName", "AWS::Events::Rule": "Name",
    "AWS::SSM::Parameter": "Name", "AWS::SQS::Queue": "QueueName", "AWS::ApiGatewayV2::Stage": "StageName_",
}


@pytest.mark.parametrize("params", [{}, {"RdsSubnetGroupName": "s", "ContainerImageUri": "img", "DrillDatabase": "app",
                                         "NotificationEmail": "ops@example.com"}])
def test_every_fixed_name_carries_the_stack_name(params: dict[str, str]) -> None:
    """Two stacks (staging next to prod) in one account: no two resources may get the same name.
    SAM names a ScheduleV2 after its logical id unless OmitName is set (then CloudFormation names it)."""
    resources = Resolver(expanded(), params).resources()
    fixed = {}
    for lid, res in resources.items():
        prop = NAME_PROPERTIES.get(res["Type"])
        if prop and prop in res["Properties"]:
            fixed[lid] = str(res["Properties"][prop])
    assert fixed, "no named resources found: the check is not looking"
    without = {lid: name for lid, name in fixed.items() if STACK not in name}
    assert without == {}
    assert [r for r in resources.values() if r["Type"] == "AWS::Scheduler::Schedule"], "schedules expected"


def test_the_key_that_encrypts_retained_backups_is_retained_too() -> None:
    t = raw_template()["Resources"]
    assert t["BackupBucket"]["DeletionPolicy"] == "Retain"
    for res in ("Key",):
        assert t[res].get("DeletionPolicy") == "Retain" and t[res].get("UpdateReplacePolicy") == "Retain", res


def test_no_function_reserves_concurrency() -> None:
    """Reserved concurrency fails the deploy on accounts with a low concurrency quota (10 on new accounts)."""
    for lid, res in expanded()["Resources"].items():
        if res["Type"] == "AWS::Lambda::Function":
            assert "ReservedConcurrentExecutions" not in res["Properties"], lid


def test_rds_resources_only_with_rds_targets_and_engine_version_matches_the_family() -> None:
    without = Resolver(expanded(), {}).resources()
    assert not [lid for lid, r in without.items() if r["Type"].startswith("AWS::RDS::")]
    for version, family in (("18", "postgres18"), ("17.4", "postgres17"), ("16", "postgres16")):
        res = Resolver(expanded(), {"RdsSubnetGroupName": "subnets", "RdsEngineVersion": version}).resources()
        groups = [r for r in res.values() if r["Type"] == "AWS::RDS::DBParameterGroup"]
        assert [g["Properties"]["Family"] for g in groups] == [family]
        env = res["ProvisionFunction"]["Properties"]["Environment"]["Variables"]
        assert env["PGRUNBOOK_RDS_ENGINE_VERSION"] == version  # sent with CreateDBInstance
        assert env["PGRUNBOOK_RDS_TARGETS"] == "on"
    pattern = raw_template()["Parameters"]["RdsEngineVersion"]["AllowedPattern"]
    assert re.fullmatch(pattern, "18.1") and not re.fullmatch(pattern, "postgres18")


def test_the_non_root_fargate_task_has_a_writable_work_directory() -> None:
    """Read-only root file system + a bind-mounted ephemeral volume: on Fargate that volume is root-owned
    unless the image declares the path as a VOLUME owned by the task's user."""
    res = Resolver(expanded(), {"ContainerImageUri": "img"}).resources()
    (container,) = res["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["ReadonlyRootFilesystem"] is True
    docker = (project_root() / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", docker, re.M)[-1]
    assert user != "0" and user != "root"
    volumes = {v for line in re.findall(r"^VOLUME\s+(.+)$", docker, re.M) for v in re.findall(r'"([^"]+)"', line)}
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    for mount in container["MountPoints"]:
        assert mount["ContainerPath"] in volumes, f"{mount['ContainerPath']} is not a VOLUME of the image"
        assert re.search(rf"chown {user}\S* {re.escape(mount['ContainerPath'])}\b", docker), "not owned by the user"
    assert env["TMPDIR"] in volumes and env["PGRUNBOOK_WORK_DIR"] in volumes


def test_sizing_matches_the_template() -> None:
    """sizing.LAMBDA_TMP_MB is the functions' EphemeralStorage; the safety factor is the template's parameter."""
    res: dict[str, Any] = Resolver(expanded(), {}).resources()
    for fn in ("BackupFunction", "RestoreFunction", "MigrateFunction"):
        assert res[fn]["Properties"]["EphemeralStorage"]["Size"] == sizing.LAMBDA_TMP_MB, fn
        assert res[fn]["Properties"]["Timeout"] == sizing.LAMBDA_TIMEOUT_S, fn
    env = res["PlanFunction"]["Properties"]["Environment"]["Variables"]
    assert float(env["PGRUNBOOK_SIZING_SAFETY"]) == sizing.DEFAULT_SAFETY
