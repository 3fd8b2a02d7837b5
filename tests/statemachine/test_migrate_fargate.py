"""The Migrate machine's pre-migration backup on Fargate: the real migrate.asl.json in moto, with the
stack's Fargate task (an ECS cluster and task definition in moto; RunTask runs `pgrunbook.fargate_task` in
this process with the container overrides the state machine sends, as the container would) and the
real sizing rule: of two databases, the one over the Lambda limit is backed up on Fargate, the other
on Lambda. The limit is put between their measured sizes through the stack's safety factor
(PGRUNBOOK_SIZING_SAFETY), so the plan decides from the measured size, not from an override."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgrunbook import aws, sizing
from pgrunbook import fargate_task as task
from pgrunbook.localcloud import ACCOUNT, LocalCloud, LocalDatabase, render_definition, state_machine_specs
from pgrunbook.pgserver import LocalServer
from pgrunbook.sample import SAMPLE_MIGRATIONS, create_sample_database

NEW_MIGRATION = {"20260301000000_note": 'ALTER TABLE "Job" ADD COLUMN "note" TEXT;\n'}


def database_size(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def databases(pg_server: LocalServer) -> Iterator[dict[str, str]]:
    small = create_sample_database(pg_server.url(), f"mig_small_{uuid.uuid4().hex[:6]}", users=20, jobs_per_user=1,
                                   events=20)
    big = create_sample_database(pg_server.url(), f"mig_big_{uuid.uuid4().hex[:6]}", users=200, jobs_per_user=1,
                                 events=150_000)
    yield {"small": small, "big": big}
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        for url in (small, big):
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


class FargateInProcess:
    """moto's ECS RunTask, plus what the container would do: `python -m pgrunbook.fargate_task` with the
    environment of the task definition (here: the functions' environment) and the container overrides.

    moto 5.2's Step Functions calls ECS with the state's parameters as written (`LaunchType`,
    `Overrides.ContainerOverrides[].Environment`), where AWS (and LocalStack, whose interpreter moto
    ships with this step left out) translate them to the API's own casing (`launchType`, ...) and the
    answer back (`Tasks[0].ClusterArn`): that translation is put back here, from botocore's ECS model."""

    def __init__(self) -> None:
        self.runs: list[dict[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from botocore.session import get_session
        from moto.ecs.models import EC2ContainerServiceBackend
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (
            StateTaskServiceEcs,
        )

        model = get_session().get_service_model("ecs")

        def operation(service: Any, action: str | None) -> Any:  # run_task -> RunTask
            name = action or service._get_boto_service_action()
            return model.operation_model("".join(p.capitalize() for p in name.split("_")))

        def normalise_parameters(service: Any, parameters: dict[str, Any], boto_service_name: str | None = None,
                                 service_action_name: str | None = None) -> None:
            service._to_boto_request(parameters, operation(service, service_action_name).input_shape)

        def normalise_response(service: Any, response: Any, boto_service_name: str | None = None,
                               service_action_name: str | None = None) -> None:
            service._from_boto_response(response, operation(service, service_action_name).output_shape)

        monkeypatch.setattr(StateTaskServiceEcs, "_normalise_parameters", normalise_parameters)
        monkeypatch.setattr(StateTaskServiceEcs, "_normalise_response", normalise_response)

        original = EC2ContainerServiceBackend.run_task
        runs = self.runs

        def run_task(backend: Any, cluster_str: str, task_definition_str: str, count: int,
                     overrides: dict[str, Any] | None, *args: Any, **kwargs: Any) -> Any:
            tasks = original(backend, cluster_str, task_definition_str, count, overrides, *args, **kwargs)
            (container,) = (overrides or {})["containerOverrides"]
            env = {**os.environ, **{e["name"]: e["value"] for e in container.get("environment", [])}}
            runs.append({k: v for k, v in env.items() if k.startswith("PGRUNBOOK_")})
            code = task.main(env)
            for t in tasks:
                t.last_status = "STOPPED"  # the container exited (its outcome is in the bucket)
                t.stopped_reason = f"Essential container in task exited ({code})"
            return tasks

        monkeypatch.setattr(EC2ContainerServiceBackend, "run_task", run_task)


@pytest.fixture(scope="module")
def stack(databases: dict[str, str]) -> Iterator[tuple[LocalCloud, FargateInProcess]]:
    small, big = database_size(databases["small"]), database_size(databases["big"])
    assert big > 2 * small, (small, big)
    limit_gb = (small + big) / 2 / sizing.GB  # the Lambda backup limit halfway between the two
    safety = sizing.LAMBDA_BUDGET_S / (sizing.BACKUP_S_PER_GB * limit_gb)
    env = {"PGRUNBOOK_FARGATE": "on", "PGRUNBOOK_SIZING_SAFETY": repr(safety)}
    fargate = FargateInProcess()
    with pytest.MonkeyPatch.context() as mp, \
            LocalCloud([LocalDatabase(n, u) for n, u in databases.items()], env=env) as cloud:
        fargate.install(mp)
        ec2 = aws.client("ec2")  # moto checks the subnets the state passes
        vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as VPC endpoints need
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="pgrunbook-task", Description="task", VpcId=vpc)["GroupId"]
        ecs = aws.client("ecs")
        cluster = ecs.create_cluster(clusterName="pgrunbook")["cluster"]["clusterArn"]
        task_definition = ecs.register_task_definition(
            family="pgrunbook", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="1024",
            memory="4096", containerDefinitions=[{"name": "pgrunbook", "image": "pgrunbook:test", "essential": True,
                                   "cpu": 1024, "memory": 4096}],  # moto sums container-level sizes
        )["taskDefinition"]["taskDefinitionArn"]
        # the Migrate machine as the stack deploys it with a container image (HasFargate)
        spec = state_machine_specs(cloud.template)["MigrateStateMachine"]
        values = {k: cloud.intrinsics.eval(v) for k, v in spec.substitutions.items()}
        values.update(TaskClusterArn=cluster, TaskDefinitionArn=task_definition, SubnetIdsCsv=subnet,
                      SecurityGroupIdsCsv=group)
        definition = render_definition((cloud.root / spec.definition_uri).read_text(), values)
        cloud.state_machines["MigrateStateMachine"] = aws.client("stepfunctions").create_state_machine(
            name=f"MigrateStateMachine-fargate-{cloud.suffix}", definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/pgrunbook-local")["stateMachineArn"]
        yield cloud, fargate


def upload_migrations(cloud: LocalCloud, version: str) -> str:
    prefix = f"_releases/{version}/migrations"
    s3 = aws.client("s3")
    s3.put_object(Bucket=cloud.bucket, Key=f"{prefix}/migration_lock.toml", Body=b'provider = "postgresql"\n')
    for name, sql in {**SAMPLE_MIGRATIONS, **NEW_MIGRATION}.items():
        s3.put_object(Bucket=cloud.bucket, Key=f"{prefix}/{name}/migration.sql", Body=sql.encode())
    return f"s3://{cloud.bucket}/{prefix}/"


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations "
                                           "WHERE finished_at IS NOT NULL ORDER BY started_at")]


def test_a_database_too_big_for_lambda_is_backed_up_on_fargate_before_migrating(
        stack: tuple[LocalCloud, FargateInProcess], databases: dict[str, str]) -> None:
    cloud, fargate = stack
    uri = upload_migrations(cloud, "2.0.0")
    ex = cloud.run("MigrateStateMachine", {"database": "big", "migrations": uri, "app_version": "2.0.0"})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    (plan,) = ex.task_outputs("Plan")
    assert plan["plan"]["backup_plan"]["runner"] == "ecs", plan["plan"]["backup_plan"]
    assert plan["plan"]["backup_plan"]["size_source"] == "measured"  # no backup yet: pg_database_size
    entered = ex.states_entered()
    assert entered[entered.index("BackupWanted"):entered.index("Apply")] == [
        "BackupWanted", "PrepareFargateBackup", "BackupOnFargate", "CollectFargateBackup"]
    assert "Backup" not in entered
    # the task ran the Migrate function's own backup step, and its result came back through the bucket
    (run,) = fargate.runs
    assert run["PGRUNBOOK_OPERATION"] == "migrate"
    assert json.loads(run["PGRUNBOOK_EVENT"]) == {"action": "backup", "input": {
        "database": "big", "migrations": uri, "app_version": "2.0.0"}}
    assert run["PGRUNBOOK_RESULT_KEY"] == f"_tasks/{ex.arn.rsplit(':', 1)[1]}/migrate-backup.json"
    backup = ex.output["backup"]
    dbname = databases["big"].rsplit("/", 1)[1]
    assert backup["archive"].startswith(f"s3://{cloud.bucket}/{dbname}/pre-migration/")
    key = backup["archive"][len(f"s3://{cloud.bucket}/"):] + ".manifest.json"
    manifest = json.loads(aws.client("s3").get_object(Bucket=cloud.bucket, Key=key)["Body"].read())
    assert manifest["app_version"] == "2.0.0" and manifest["kind"] == "pre-migration"
    assert applied(databases["big"])[-1] == "20260301000000_note"


def test_a_small_database_is_backed_up_on_lambda(stack: tuple[LocalCloud, FargateInProcess],
                                                databases: dict[str, str]) -> None:
    cloud, fargate = stack
    runs = len(fargate.runs)
    uri = upload_migrations(cloud, "2.0.1")
    ex = cloud.run("MigrateStateMachine", {"database": "small", "migrations": uri, "app_version": "2.0.1"})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.output["plan"]["backup_plan"]["runner"] == "lambda"
    entered = ex.states_entered()
    assert "Backup" in entered and "BackupOnFargate" not in entered
    assert len(fargate.runs) == runs
    assert "/pre-migration/" in ex.output["backup"]["archive"]
    assert applied(databases["small"])[-1] == "20260301000000_note"
