"""Two stacks of the template in one account and region (staging next to prod), deployed in moto's
CloudFormation after the SAM transform (aws-sam-translator, as `sam deploy` asks CloudFormation for).

moto creates what it models (log groups, DynamoDB tables, S3 buckets, SNS topics, KMS keys and aliases,
IAM roles, Lambda functions and layers, state machines, ECS) and refuses a second log group or table of
the same name, as AWS does; the control below shows that refusal. It does not model Scheduler schedules,
Secrets Manager secrets, RDS parameter groups, CloudWatch alarms or API Gateway v2 (it skips them), and
lets a KMS alias or a state machine name be taken twice: for those, test_template_stack checks statically
that every fixed name carries the stack name."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from pgrunbook import aws
from tests.conftest import project_root
from tests.unit.template_support import REGION, REQUIRED, expanded

EVERYTHING = {"RdsSubnetGroupName": "drill-subnets", "ContainerImageUri": "123.dkr.ecr/pgrunbook:1",
              "DrillDatabase": "app", "NotificationEmail": "ops@example.com"}
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


@pytest.fixture()
def cloud(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        yield
    aws.reset_clients()


def upload_artifacts(template: dict[str, Any]) -> None:
    """What `sam package` uploads: the functions' and layers' code, the state machine definitions."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        key = (props.get("Code") or props.get("Content") or {}).get("S3Key")
        if key:
            s3.put_object(Bucket="artifacts", Key=key, Body=code.getvalue())
        if props.get("DefinitionS3Location"):
            key = props["DefinitionS3Location"]["Key"]
            s3.put_object(Bucket="artifacts", Key=key, Body=(project_root() / key).read_bytes())


def deploy(template: dict[str, Any], stack: str, params: dict[str, str]) -> dict[str, str]:
    """Create the stack; {logical id: physical id} of what moto created."""
    cfn = aws.client("cloudformation")
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template), Capabilities=CAPABILITIES,
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in {**REQUIRED, **params}.items()])
    (desc,) = cfn.describe_stacks(StackName=stack)["Stacks"]
    assert desc["StackStatus"] == "CREATE_COMPLETE", desc.get("StackStatusReason")
    return {r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"] if r["ResourceType"]}


@pytest.mark.parametrize("params", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_two_stacks_deploy_side_by_side(cloud: None, params: dict[str, str]) -> None:
    template = expanded()
    upload_artifacts(template)
    prod = deploy(template, "pgrunbook-prod", params)
    staging = deploy(template, "pgrunbook-staging", params)
    assert prod.keys() == staging.keys()
    modelled = {lid: res["Type"] for lid, res in template["Resources"].items() if lid in prod}
    assert {"AWS::Logs::LogGroup", "AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::Lambda::Function",
            "AWS::StepFunctions::StateMachine", "AWS::KMS::Alias"} <= set(modelled.values())
    named = [lid for lid, t in modelled.items() if t in ("AWS::Logs::LogGroup", "AWS::DynamoDB::Table",
                                                          "AWS::KMS::Alias", "AWS::S3::Bucket")]
    assert named, "nothing named was created: the test is not looking"
    for lid in named:
        assert prod[lid] != staging[lid], lid
    groups = {g["logGroupName"] for g in aws.client("logs").describe_log_groups()["logGroups"]}
    assert {prod[lid] for lid, t in modelled.items() if t == "AWS::Logs::LogGroup"} <= groups
    assert {staging[lid] for lid, t in modelled.items() if t == "AWS::Logs::LogGroup"} <= groups


def test_control_a_fixed_name_makes_the_second_stack_fail(cloud: None) -> None:
    """The same deployment with one log group named without the stack name: moto refuses the second stack."""
    template = expanded()
    upload_artifacts(template)
    lid = next(k for k, r in template["Resources"].items() if r["Type"] == "AWS::Logs::LogGroup")
    template["Resources"][lid]["Properties"]["LogGroupName"] = "/pgrunbook/backup"
    deploy(template, "pgrunbook-prod", {})
    with pytest.raises(Exception, match=r"ResourceAlreadyExists|already exists"):
        deploy(template, "pgrunbook-staging", {})
