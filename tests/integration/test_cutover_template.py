"""The cutover function's role, read from the expanded template (SAM transform applied, intrinsics resolved):
what it may touch, and that nobody else may switch the application's DATABASE_URL or the stack's own secrets
of its databases (which the cutover switches too, never an RDS-managed one)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.template_support import ACCOUNT, BUCKET, REGION, REQUIRED, Resolver, allowed, expanded, statements

APP_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/app/DATABASE_URL-Ab12"
STAGING_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:staging/app/DATABASE_URL-Cd34"
OTHER_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/billing/DATABASE_URL-Ef56"
DB_SECRET = REQUIRED["DatabaseSecretArns"]  # the stack's own secret of its database (DatabasesJson secret_arn)
RDS_MANAGED = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-0123-AbCd"
SERVICE = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/prod/web"
PARAMS = {"AppSecretArn": APP_SECRET, "AppEcsService": "prod/web", "AppReadyUrl": "https://app.example.com/ready",
          "StagingSecretArn": STAGING_SECRET, "StagingRollWebhookUrl": "https://deploy.example.com/roll",
          "StagingUrl": "https://staging.example.com", "RdsSubnetGroupName": "db-subnets"}
OBJ = f"arn:aws:s3:::{BUCKET}/"
Roles = dict[str, list[dict[str, Any]]]


def roles_for(params: dict[str, str]) -> Roles:
    res = Resolver(expanded(), params).resources()
    return {lid: statements(r) for lid, r in res.items() if r["Type"] == "AWS::IAM::Role"}


@pytest.fixture(scope="module")
def roles() -> Roles:
    return roles_for(PARAMS)


def who(roles: Roles, action: str, resource: str) -> set[str]:
    return {name for name, st in roles.items() if allowed(st, action, resource)}


def test_only_the_cutover_function_switches_the_applications_secret_and_nobody_deletes_it(roles: Roles) -> None:
    for action in ("secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"):
        assert who(roles, action, APP_SECRET) == {"CutoverFunctionRole"}, action
        assert who(roles, action, STAGING_SECRET) == {"CutoverFunctionRole"}, action
        assert who(roles, action, OTHER_SECRET) == set(), action
    for action in ("secretsmanager:DeleteSecret", "secretsmanager:UpdateSecret"):
        assert who(roles, action, APP_SECRET) == set(), action


def test_the_cutover_function_writes_only_cutover_backups_and_rolls_only_the_configured_service(roles: Roles) -> None:
    st = roles["CutoverFunctionRole"]
    assert allowed(st, "s3:PutObject", OBJ + "app/cutover/2026/12/db-backup-20261201-120000Z.dump")
    for key in ("app/scheduled/2026/12/db-backup-20261201-030000Z.dump", "_reports/restore/app/x-cutover.json",
                "_approvals/abc.json", "_tasks/x/restore-app.json"):
        assert not allowed(st, "s3:PutObject", OBJ + key), key
    assert not allowed(st, "s3:DeleteObject", OBJ + "app/cutover/2026/12/db-backup-20261201-120000Z.dump")
    assert allowed(st, "ecs:UpdateService", SERVICE)
    assert not allowed(st, "ecs:UpdateService", f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/prod/billing")
    assert who(roles, "ecs:UpdateService", SERVICE) == {"CutoverFunctionRole"}
    # the kept candidate: modified and protected, never deleted by the cutover
    kept = f"arn:aws:rds:{REGION}:{ACCOUNT}:db:pgrunbook-kept-app-0123456789ab"
    assert allowed(st, "rds:ModifyDBInstance", kept) and not allowed(st, "rds:DeleteDBInstance", kept)
    assert not allowed(st, "rds:ModifyDBInstance", f"arn:aws:rds:{REGION}:{ACCOUNT}:db:prod-main")


def test_only_the_cutover_function_switches_the_stacks_database_secrets_never_an_rds_managed_one() -> None:
    roles = roles_for({**PARAMS, "DatabaseSecretArns": f"{DB_SECRET},{RDS_MANAGED}"})
    for action in ("secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"):
        assert who(roles, action, DB_SECRET) == {"CutoverFunctionRole"}, action
        assert who(roles, action, RDS_MANAGED) == set(), action  # RDS rotates it: explicitly denied
    assert "CutoverFunctionRole" in who(roles, "secretsmanager:DescribeSecret", DB_SECRET)
    for action in ("secretsmanager:DeleteSecret", "secretsmanager:UpdateSecret", "secretsmanager:PutResourcePolicy"):
        assert who(roles, action, DB_SECRET) == set(), action


def test_without_an_application_secret_no_role_may_write_any_secret() -> None:
    roles = roles_for({})
    for action in ("secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"):
        assert who(roles, action, APP_SECRET) == set()
        assert who(roles, action, DB_SECRET) == set()  # no automatic cutover: the stack's secrets stay as they are
    assert who(roles, "ecs:UpdateService", SERVICE) == set()
