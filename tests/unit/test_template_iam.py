"""Least privilege, read from the expanded template (SAM transform applied): each role against a table
of what it may do, and probes of what no role but one may do."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.template_support import (
    ACCOUNT,
    BUCKET,
    KEY_ARN,
    REGION,
    STACK,
    TARGET_PREFIX,
    Resolver,
    allowed,
    expanded,
    statements,
)

PARAMS = {"RdsSubnetGroupName": "drill-subnets", "ContainerImageUri": "123.dkr.ecr/pgrunbook:1"}
OBJ = f"arn:aws:s3:::{BUCKET}/"
OUR_INSTANCE = f"arn:aws:rds:{REGION}:{ACCOUNT}:db:{TARGET_PREFIX}-app-0123456789ab"
OTHER_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-9999-XyZ"
OWN_TARGET_SECRET_CTX = {"aws:ResourceTag/aws:rds:primaryDBInstanceArn": OUR_INSTANCE,
                         "aws:ResourceTag/aws:secretsmanager:owningService": "rds"}
PROD_MASTER_CTX = {"aws:ResourceTag/aws:rds:primaryDBInstanceArn": f"arn:aws:rds:{REGION}:{ACCOUNT}:db:prod-main",
                   "aws:ResourceTag/aws:secretsmanager:owningService": "rds"}


@pytest.fixture(scope="module")
def roles() -> dict[str, list[dict[str, Any]]]:
    res = Resolver(expanded(), PARAMS).resources()
    return {lid: statements(r) for lid, r in res.items() if r["Type"] == "AWS::IAM::Role"}


Roles = dict[str, list[dict[str, Any]]]


def who(roles: Roles, action: str, resource: str, ctx: dict[str, str] | None = None) -> set[str]:
    return {name for name, st in roles.items() if allowed(st, action, resource, ctx)}


def test_no_role_reads_another_instances_master_password(roles: Roles) -> None:
    """Only the roles that reach restore targets read RDS-managed secrets, and only those of this stack's
    target instances (tag aws:rds:primaryDBInstanceArn), never every rds!db-* secret in the account."""
    assert who(roles, "secretsmanager:GetSecretValue", OTHER_SECRET, PROD_MASTER_CTX) == set()
    assert who(roles, "secretsmanager:GetSecretValue", OTHER_SECRET, OWN_TARGET_SECRET_CTX) == {
        "ProvisionFunctionRole", "RestoreFunctionRole", "VerifyFunctionRole", "TaskRole",
        "CutoverFunctionRole"}  # the cutover reaches the kept candidate (production-ready, freeze, proof)


def test_only_the_report_function_writes_reports_and_approvals(roles: Roles) -> None:
    for key in ("_reports/restore/app/2026/01/20260101-000000Z-drill.json", "_reports/watch/app.json"):
        assert who(roles, "s3:PutObject", OBJ + key) == {"ReportFunctionRole"}, key
    assert not who(roles, "s3:PutObject", OBJ + "_approvals/abc.json") & {
        "BackupFunctionRole", "MigrateFunctionRole", "TaskRole", "PlanFunctionRole"}


def test_backups_are_written_by_the_backup_writers_and_deleted_by_nobody(roles: Roles) -> None:
    backup = OBJ + "app/scheduled/2026/01/db-backup-20260101-030000Z.dump"
    assert who(roles, "s3:PutObject", backup) == {"BackupFunctionRole", "MigrateFunctionRole", "TaskRole"}
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutLifecycleConfiguration"):
        assert who(roles, action, backup) == set(), action
    assert who(roles, "s3:PutObject", OBJ + "_tasks/exec/backup-app.json") == {"TaskRole"}
    assert who(roles, "s3:PutObject", OBJ + "_releases/1.2.3/migrations/x/migration.sql") == set()


def test_every_backup_writer_may_update_its_databases_backup_index(roles: Roles) -> None:
    """backup_index.record(): the cutover's final backup too (else list reads its manifest every time)."""
    for index in ("app/_index/backups.json", "team/app/_index/backups.json"):
        assert who(roles, "s3:PutObject", OBJ + index) == {"BackupFunctionRole", "MigrateFunctionRole", "TaskRole",
                                                           "CutoverFunctionRole"}, index


def test_rds_instances_are_created_and_deleted_only_by_name_prefix_and_tag(roles: Roles) -> None:
    other = f"arn:aws:rds:{REGION}:{ACCOUNT}:db:prod-main"
    tagged = {"aws:ResourceTag/pgrunbook:stack": STACK, "aws:RequestTag/pgrunbook:stack": STACK}
    assert who(roles, "rds:DeleteDBInstance", other, tagged) == set()
    assert who(roles, "rds:DeleteDBInstance", OUR_INSTANCE, tagged) == {"ProvisionFunctionRole", "SweeperFunctionRole"}
    assert who(roles, "rds:DeleteDBInstance", OUR_INSTANCE, {"aws:ResourceTag/pgrunbook:stack": "staging"}) == {
        "ProvisionFunctionRole"}  # the sweeper also checks the tag: never another stack's instance
    assert who(roles, "rds:CreateDBInstance", OUR_INSTANCE, tagged) == {"ProvisionFunctionRole"}
    assert who(roles, "rds:CreateDBInstance", OUR_INSTANCE, {"aws:RequestTag/pgrunbook:stack": "x"}) == set()
    assert who(roles, "rds:CreateDBInstance", f"arn:aws:rds:{REGION}:{ACCOUNT}:db:pgrunbook-drill-x", tagged) == set()


def test_without_rds_targets_no_role_touches_rds_or_its_secrets() -> None:
    res = Resolver(expanded(), {"ContainerImageUri": "img"}).resources()
    assert "RestoreTunedParameterGroup" not in res
    roles = {lid: statements(r) for lid, r in res.items() if r["Type"] == "AWS::IAM::Role"}
    assert who(roles, "secretsmanager:GetSecretValue", OTHER_SECRET, OWN_TARGET_SECRET_CTX) == set()
    assert who(roles, "rds:CreateDBInstance", OUR_INSTANCE, {"aws:RequestTag/pgrunbook:stack": STACK}) == set()


# role -> action -> resources (the report function is left to the probes above: the approval work adds
# its own grants there);  it may be granted on (after intrinsics); anything else fails the test
B, K = f"arn:aws:s3:::{BUCKET}", KEY_ARN
DB_SECRETS = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app-db-AbCd"
TABLE: dict[str, dict[str, set[str]]] = {
    "PlanFunctionRole": {"s3:ListBucket": {B}, "s3:GetObject": {B + "/*"}, "kms:Decrypt": {K},
                         "secretsmanager:GetSecretValue": {DB_SECRETS}},
    "BackupFunctionRole": {"s3:ListBucket": {B}, "s3:ListBucketMultipartUploads": {B},
                           **{a: {B + "/*"} for a in ("s3:PutObject", "s3:PutObjectTagging", "s3:GetObject",
                                                     "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")},
                           "kms:GenerateDataKey": {K}, "kms:Decrypt": {K},
                           "secretsmanager:GetSecretValue": {DB_SECRETS}},
    "RestoreFunctionRole": {"s3:ListBucket": {B}, "s3:GetObject": {B + "/*"}, "kms:Decrypt": {K},
                            "secretsmanager:GetSecretValue": {DB_SECRETS,
                                                              f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-*"}},
}
ALWAYS = {"logs:CreateLogStream", "logs:PutLogEvents", "logs:CreateLogGroup", "xray:PutTraceSegments",
          "xray:PutTelemetryRecords", "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
          "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}


@pytest.mark.parametrize("role", sorted(TABLE))
def test_each_role_has_exactly_the_grants_of_the_table(roles: Roles, role: str) -> None:
    granted: dict[str, set[str]] = {}
    for st in roles[role]:
        if st["Effect"] != "Allow":
            continue
        for action in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]):
            res = st.get("Resource", [])
            granted.setdefault(action, set()).update(res if isinstance(res, list) else [res])
    granted = {a: r for a, r in granted.items() if a not in ALWAYS}
    assert granted == TABLE[role]


def test_unapproved_cutover_candidates_are_deleted_only_by_the_teardown_and_the_sweeper(roles: Roles) -> None:
    """A cutover candidate is made production-ready (renamed pgrunbook-kept-..., deletion protection) before
    its approval: the teardown (provision function) and the sweeper may lift that protection and delete it
    while it is this stack's and tagged pgrunbook:keep=candidate, never once approved, kept by hand, or
    another stack's; the cutover function modifies it, never deletes it."""
    kept = f"arn:aws:rds:{REGION}:{ACCOUNT}:db:pgrunbook-kept-app-0123456789ab"

    def tags(stack: str = STACK, keep: str | None = "candidate") -> dict[str, str]:
        return {"aws:ResourceTag/pgrunbook:stack": stack,
                **({"aws:ResourceTag/pgrunbook:keep": keep} if keep is not None else {})}

    teardown = {"ProvisionFunctionRole", "SweeperFunctionRole"}
    assert who(roles, "rds:DeleteDBInstance", kept, tags()) == teardown
    assert who(roles, "rds:ModifyDBInstance", kept, tags()) == teardown | {"CutoverFunctionRole"}
    for ctx in (tags(keep="approved"), tags(keep="ops: keep for the audit"), tags(keep=None), tags(stack="staging")):
        assert who(roles, "rds:DeleteDBInstance", kept, ctx) == set(), ctx
        assert who(roles, "rds:ModifyDBInstance", kept, ctx) == {"CutoverFunctionRole"}, ctx
    for action in ("rds:ModifyDBInstance", "rds:DeleteDBInstance"):  # another name: nobody by this route
        assert who(roles, action, f"arn:aws:rds:{REGION}:{ACCOUNT}:db:prod-main", tags()) == set(), action
    assert "ProvisionFunctionRole" in who(roles, "rds:DescribeDBInstances", kept)  # finds a renamed candidate
