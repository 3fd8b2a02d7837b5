"""RDS restore targets on moto: names derived from the execution (a retried create finds its own
instance, a name taken by someone else is refused), deletes that report done only once the instance
is gone, and every documented DBInstanceStatus handled.

moto deletes an instance at once and never refuses a delete; RDS takes minutes (the instance stays
listed as `deleting`) and refuses DeleteDBInstance with InvalidDBInstanceState in some states. The
`rds` fixture gives moto that behaviour (`RdsLifecycle`), so the code meets what AWS does; which
states refuse on AWS is not asserted here (the code must not depend on it: any refusal is retried)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from pgrunbook import aws, operations
from pgrunbook.errors import PgrunbookError, TargetDeleting, TargetNotOwned
from pgrunbook.events import ProvisionEvent, TargetRef
from pgrunbook.lambda_support import LocalContext, error_payload
from pgrunbook.localcloud import handler_path, load_handler
from pgrunbook.provision import rds as provision_rds
from pgrunbook.settings import Settings
from tests.conftest import project_root

ACCOUNT, REGION = "123456789012", "us-east-1"
EXECUTION = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:RestoreStateMachine-x:run-1"
OTHER_EXECUTION = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:RestoreStateMachine-x:run-2"
PREFIX = "pgrb-4f1c2d3e"  # the template's per-stack identifier prefix

# Every DBInstanceStatus in the RDS User Guide ("Viewing instance status"), by what it means for a new
# restore target: the Restore machine waits (pending), gives up (failed) or goes on (available).
DOCUMENTED = {
    "available": "available",
    **{s: "creating" for s in (
        "backing-up", "configuring-enhanced-monitoring", "configuring-iam-database-auth", "configuring-log-exports",
        "converting-to-vpc", "creating", "maintenance", "modifying", "moving-to-vpc", "rebooting",
        "resetting-master-credentials", "renaming", "starting", "storage-config-upgrade", "storage-optimization",
        "upgrading")},
    **{s: "failed" for s in (
        "delete-precheck", "deleting", "failed", "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable", "incompatible-create", "incompatible-network",
        "incompatible-option-group", "incompatible-parameters", "incompatible-restore", "insufficient-capacity",
        "restore-error", "stopped", "stopping", "storage-full")},
}


class RdsLifecycle:
    """DeleteDBInstance as RDS does it: refused (InvalidDBInstanceState) while the instance is in one of
    `refusing`; otherwise accepted, the instance then `deleting` until `finish(ident)`."""

    def __init__(self, refusing: set[str]) -> None:
        self.refusing = refusing
        self.delete_calls: list[str] = []

    def backend(self) -> Any:
        from moto.rds.models import rds_backends

        return rds_backends[ACCOUNT][REGION]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.rds.exceptions import InvalidDBInstanceStateError
        from moto.rds.models import RDSBackend

        original = RDSBackend.delete_db_instance
        lifecycle = self

        def delete_db_instance(backend: Any, db_instance_identifier: str, *args: Any, **kwargs: Any) -> Any:
            lifecycle.delete_calls.append(db_instance_identifier)
            db = backend.databases.get(db_instance_identifier)
            if db is None or db.deletion_protection:
                return original(backend, db_instance_identifier, *args, **kwargs)  # not found / protected
            if db.status == "deleting" or db.status in lifecycle.refusing:
                raise InvalidDBInstanceStateError(db_instance_identifier, "available")
            db.status = "deleting"
            return db

        monkeypatch.setattr(RDSBackend, "delete_db_instance", delete_db_instance)

    def set_status(self, ident: str, status: str) -> None:
        self.backend().databases[ident].status = status

    def finish(self, ident: str) -> None:
        """RDS is done deleting: the instance is no longer listed."""
        self.backend().databases.pop(ident)


REFUSING = {"backing-up", "modifying", "rebooting", "upgrading", "renaming", "configuring-enhanced-monitoring",
            "storage-optimization", "maintenance", "starting", "stopping", "delete-precheck"}


@pytest.fixture()
def rds(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[RdsLifecycle]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("PGRUNBOOK_STACK", "prod")
    monkeypatch.setenv("PGRUNBOOK_RDS_IDENTIFIER_PREFIX", PREFIX)
    monkeypatch.setenv("PGRUNBOOK_RDS_INSTANCE_CLASS", "db.t4g.micro")
    monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps([{"name": "app", "secret_arn": "arn:secret:app"}]))
    lifecycle = RdsLifecycle(REFUSING)
    with mock_aws():
        aws.reset_clients()
        lifecycle.install(monkeypatch)
        yield lifecycle
    aws.reset_clients()


def create(execution: str | None, **spec: Any) -> dict[str, Any]:
    ev = ProvisionEvent.parse({"action": "create", "database": "app", "spec": {"kind": "rds", **spec},
                               "execution": execution})
    return operations.provision(ev, Settings.from_env())


def instances() -> dict[str, dict[str, str]]:
    found = aws.client("rds").describe_db_instances()["DBInstances"]
    return {i["DBInstanceIdentifier"]: {t["Key"]: t["Value"] for t in i.get("TagList", [])} for i in found}


def test_a_retried_create_finds_its_own_instance(rds: RdsLifecycle) -> None:
    first = create(EXECUTION)
    again = create(EXECUTION)  # Step Functions retried the Provision step (a timeout, a throttled Lambda)
    assert again["name"] == first["name"] and again["status"] == "creating"
    assert list(instances()) == [first["name"]]
    tags = instances()[first["name"]]
    assert tags["pgrunbook:execution"] == EXECUTION and tags["pgrunbook:stack"] == "prod"
    assert first["name"].startswith("pgrb-4f1c2d3e-app-")  # the template's per-stack prefix (IAM scopes on it)
    other = create(OTHER_EXECUTION)
    assert other["name"] != first["name"] and len(instances()) == 2


def test_a_name_taken_by_another_instance_is_refused_and_left_alone(rds: RdsLifecycle) -> None:
    ident = provision_rds.target_identifier("app", EXECUTION, PREFIX)
    aws.client("rds").create_db_instance(DBInstanceIdentifier=ident, Engine="postgres", DBInstanceClass="db.t4g.micro",
                                         AllocatedStorage=20, MasterUsername="x", MasterUserPassword="secret123",
                                         Tags=[{"Key": "team", "Value": "someone-else"}])
    with pytest.raises(TargetNotOwned, match="not created by this execution"):
        create(EXECUTION)
    with pytest.raises(TargetNotOwned):  # an explicit name is checked the same way
        create(OTHER_EXECUTION, name=ident)
    assert instances() == {ident: {"team": "someone-else"}}
    assert rds.delete_calls == []


def test_generated_identifiers_are_valid_rds_identifiers() -> None:
    """Letters, digits and single hyphens, at most 63, starting with a letter; the same execution gives the
    same identifier, another execution another one (fixed seed: database names of every shape)."""
    rng = random.Random(1212)
    alphabet = "abcXYZ019-_. é/\u00e5"
    for _ in range(300):
        database = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        execution = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:R:{rng.getrandbits(64):x}"
        prefix = rng.choice(["pgrunbook-drill", "pgrb-4f1c2d3e", "9x", "a-very-long-prefix-" * 4])
        ident = provision_rds.target_identifier(database, execution, prefix)
        assert 1 <= len(ident) <= 63 and ident[0].isalpha() and not ident.endswith("-"), ident
        assert "--" not in ident and all(c.isascii() and (c.isalnum() or c == "-") for c in ident), ident
        assert ident == provision_rds.target_identifier(database, execution, prefix)
        assert ident != provision_rds.target_identifier(database, execution + "0", prefix)


@pytest.mark.parametrize("status", sorted(DOCUMENTED))
def test_every_documented_status_means_what_it_says(status: str) -> None:
    assert provision_rds.rds_target_state(status) == DOCUMENTED[status]
    assert status == "available" or status in provision_rds.RDS_PENDING | provision_rds.RDS_FAILED, \
        f"{status} is only pending by default (an unknown state): list it"


def test_delete_reports_done_only_once_the_instance_is_gone(rds: RdsLifecycle) -> None:
    ident = create(EXECUTION)["name"]
    with pytest.raises(TargetDeleting, match="waiting until it is gone"):
        provision_rds.delete_instance(ident)  # accepted: RDS is deleting it now
    assert instances() and rds.delete_calls == [ident]
    with pytest.raises(TargetDeleting):
        provision_rds.delete_instance(ident)  # the retry: still deleting, not asked again
    assert rds.delete_calls == [ident]
    rds.finish(ident)
    provision_rds.delete_instance(ident)  # gone: done
    provision_rds.delete_instance(ident)  # and again (a retried teardown): done


def test_delete_in_every_status_waits_until_gone(rds: RdsLifecycle) -> None:
    """Whatever the state, a delete is never reported done while the instance exists: a refusal
    (InvalidDBInstanceState) is retried like a deletion under way."""
    for n, status in enumerate(sorted(DOCUMENTED)):
        ident = create(f"{EXECUTION}-{n}")["name"]
        rds.set_status(ident, status)
        for _ in range(2):
            with pytest.raises(TargetDeleting):
                provision_rds.delete_instance(ident)
        assert ident in instances(), status
        asked = rds.delete_calls.count(ident)
        assert asked == (0 if status == "deleting" else 2 if status in REFUSING else 1), (status, asked)
        rds.set_status(ident, "available")  # what RDS does after the refusing operation ends
        with pytest.raises(TargetDeleting):
            provision_rds.delete_instance(ident)
        rds.finish(ident)
        provision_rds.delete_instance(ident)
        assert ident not in instances()


def test_a_delete_rds_refuses_for_good_is_an_error_not_a_wait(rds: RdsLifecycle) -> None:
    ident = create(EXECUTION)["name"]
    aws.client("rds").modify_db_instance(DBInstanceIdentifier=ident, DeletionProtection=True, ApplyImmediately=True)
    with pytest.raises(PgrunbookError) as info:
        provision_rds.delete_instance(ident)
    assert not isinstance(info.value, TargetDeleting)
    assert "has deletion protection: not deleted" in str(info.value) and "\n" not in str(info.value)


def test_the_provision_function_and_the_state_machine_retry_a_deletion_under_way(rds: RdsLifecycle) -> None:
    """The provision function's delete fails with errorType TargetDeleting while RDS deletes; every
    teardown state of the Restore machine retries exactly that error for longer than an RDS deletion
    takes (about 5-15 minutes), and only then treats it as a failed teardown (notified, swept later)."""
    provision = load_handler(handler_path("ProvisionFunction"))
    target = create(EXECUTION)
    with pytest.raises(Exception) as info:
        provision({"action": "delete", "target": target}, LocalContext())
    assert error_payload(info.value)["errorType"] == "TargetDeleting"
    rds.finish(target["name"])
    assert provision({"action": "delete", "target": target}, LocalContext())["status"] == "deleted"
    definition = json.loads((project_root() / "statemachines" / "restore.asl.json").read_text())
    teardowns = {name: s for name, s in definition["States"].items()
                 if s.get("Type") == "Task" and (s.get("Parameters") or {}).get("action") == "delete"}
    assert len(teardowns) >= 3, sorted(teardowns)
    for name, state in teardowns.items():
        (retry,) = [r for r in state["Retry"] if "TargetDeleting" in r["ErrorEquals"]]
        waited = sum(retry["IntervalSeconds"] * retry.get("BackoffRate", 1.0) ** i for i in range(retry["MaxAttempts"]))
        assert waited >= 20 * 60, (name, waited)
        assert state["Catch"][0]["ErrorEquals"] == ["States.ALL"] and "Teardown" in state["Catch"][0]["Next"], name


def test_a_target_ref_survives_the_state_machine_round_trip() -> None:
    ref = TargetRef(kind="rds", name="pgrb-x-app-0123", dbname="app", status="creating")
    assert TargetRef.parse(json.loads(json.dumps(ref.to_dict())), "t") == ref
