"""Parts of the cutover without an application: the secret switch (plain and JSON, retried, moved back,
refused), the roll webhook's signature, the candidate URL built from the application's (generated,
fixed seed), the data window of an unreachable source, the RDS production-ready step and the approval mark
(moto RDS), the teardown of a protected candidate (unapproved: deleted; approved: refused), kept names
(generated), and the stack's own secret of the database (its switch, and when it may follow: generated)."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.cutover.roll import sign, signature_ok
from pgrunbook.cutover.secret import SecretSlot, rebase_url, version_token
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import CutoverError, UsageError
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings
from tests.conftest import AWS_TEST_ENV


@pytest.fixture()
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        aws.reset_clients()
        yield
    aws.reset_clients()


def test_json_secret_switches_one_key_keeps_the_others_and_a_retry_writes_nothing(moto: None) -> None:
    sm = aws.client("secretsmanager")
    sm.create_secret(Name="app", SecretString=json.dumps({"DATABASE_URL": "postgresql://a:pw@old/app",
                                                          "REDIS_URL": "redis://cache"}))
    slot = SecretSlot("app", "DATABASE_URL")
    token = version_token("execution-1", "cutover")
    first = slot.switch("postgresql://a:pw@new/app", token)
    again = slot.switch("postgresql://a:pw@new/app", token)  # a retried step
    assert first.new_version_id == again.new_version_id == token
    assert again.previous_version_id == first.previous_version_id
    assert len(slot.stages()) == 2
    current = json.loads(sm.get_secret_value(SecretId="app", VersionStage="AWSCURRENT")["SecretString"])
    assert current == {"DATABASE_URL": "postgresql://a:pw@new/app", "REDIS_URL": "redis://cache"}
    assert first.previous_display == "postgresql://a:***@old:5432/app"  # never the password
    back = slot.restore(first.previous_version_id, expected_current=token)
    assert back.url == "postgresql://a:pw@old/app" and back.version_id == first.previous_version_id


def test_secret_shape_and_someone_elses_change_are_refused(moto: None) -> None:
    sm = aws.client("secretsmanager")
    sm.create_secret(Name="plain", SecretString="postgresql://a:pw@old/app")
    sm.create_secret(Name="json", SecretString=json.dumps({"url": "postgresql://a:pw@old/app"}))
    with pytest.raises(UsageError, match="holds a JSON object: name the key"):
        SecretSlot("json").read()
    with pytest.raises(UsageError, match="is not a JSON object: drop --secret-key"):
        SecretSlot("plain", "url").read()
    slot = SecretSlot("plain")
    switch = slot.switch("postgresql://a:pw@new/app", version_token("x", "cutover"))
    sm.put_secret_value(SecretId="plain", SecretString="postgresql://a:pw@third/app")  # someone else
    with pytest.raises(CutoverError, match="was changed since the cutover"):
        slot.restore(switch.previous_version_id, expected_current=switch.new_version_id)
    assert slot.read().url == "postgresql://a:pw@third/app"


def test_webhook_signature_is_the_hmac_of_the_exact_body() -> None:
    rng = random.Random(11)
    for _ in range(200):
        key = rng.randbytes(rng.randint(1, 64))
        body = rng.randbytes(rng.randint(0, 300))
        header = sign(body, key)
        assert header.startswith("sha256=") and signature_ok(body, key, header)
        if body:
            i = rng.randrange(len(body))
            tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
            assert not signature_ok(tampered, key, header)
        assert not signature_ok(body, key + b"x", header)
        assert not signature_ok(body, key, None)


def _random_url(rng: random.Random) -> tuple[str, dict[str, str]]:
    user = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 8)))
    password = "".join(rng.choice(string.ascii_letters + string.digits + "@:/?#%&= '\\") for _ in
                       range(rng.randint(1, 16)))
    host = rng.choice(["db.example.com", "10.0.0.7", "::1", "app-db.abc.eu-west-1.rds.amazonaws.com"])
    port = rng.choice([None, 5432, 6543])
    query = rng.choice(["", "sslmode=require", "sslmode=verify-full&application_name=web"])
    if rng.random() < 0.7:
        hostpart = f"[{host}]" if ":" in host else host
        url = (f"postgresql://{quote(user)}:{quote(password, safe='')}@{hostpart}"
               f"{':' + str(port) if port else ''}/app{'?' + query if query else ''}")
    else:
        esc = password.replace("\\", "\\\\").replace("'", "\\'")
        url = f"host={host} dbname=app user={user} password='{esc}'" + (f" port={port}" if port else "") + \
            (" sslmode=require" if query else "")
    return url, {"user": user, "password": password, "host": host}


def test_the_candidate_url_keeps_the_applications_credentials_and_options() -> None:
    rng = random.Random(20261201)
    for _ in range(300):
        url, parts = _random_url(rng)
        before = DatabaseUrl.parse(url)
        same_server = rebase_url(url, host=None, port=None, dbname="app_cand")
        moved = rebase_url(url, host="new.example.com", port=5433, dbname="app cand/ü")
        for out, host, port, dbname in ((same_server, parts["host"], before.port, "app_cand"),
                                        (moved, "new.example.com", "5433", "app cand/ü")):
            after = DatabaseUrl.parse(out)
            assert (after.user, after.password) == (parts["user"], parts["password"]), (url, out)
            assert (after.host, after.port, after.dbname) == (host, port, dbname), (url, out)
            assert {k: v for k, v in after.params.items() if k not in ("host", "port", "dbname")} == \
                {k: v for k, v in before.params.items() if k not in ("host", "port", "dbname")}, (url, out)


def test_an_unreachable_source_gives_an_unknown_window_not_an_error() -> None:
    from pgrunbook.cutover.window import window_against_manifest
    from pgrunbook.pgserver import free_port

    window = window_against_manifest(DatabaseUrl.parse(f"postgresql://u:pw@127.0.0.1:{free_port()}/gone"),
                                     {"public.User": 3}, "2026-12-01T03:00:00+00:00")
    assert not window.known and window.summary().startswith("data window unknown: the source is not reachable")
    assert "pw" not in window.summary()


def _instance(name: str, **tags: str) -> str:
    aws.client("rds").create_db_instance(
        DBInstanceIdentifier=name, Engine="postgres", EngineVersion="18.1", DBInstanceClass="db.t4g.medium",
        AllocatedStorage=20, MasterUsername="pgrunbook", MasterUserPassword="x" * 16, BackupRetentionPeriod=0,
        DeletionProtection=False, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return name


def _rds_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS", "7")
    monkeypatch.setenv("PGRUNBOOK_RDS_IDENTIFIER_PREFIX", "pgrb-4f1c2d3e")
    monkeypatch.setenv("PGRUNBOOK_STACK", "prod")
    return Settings.from_env()


def test_rds_candidate_is_made_production_ready_kept_and_protected_then_marked_approved(
        moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgrunbook.cutover.prepare import mark_approved, rds_production_ready
    from pgrunbook.provision.rds import instance_tags, kept_identifier

    rds = aws.client("rds")
    settings = _rds_settings(monkeypatch)
    ident = _instance("pgrb-4f1c2d3e-app-0123456789ab", **{"pgrunbook:stack": "prod"})
    ref = {"kind": "rds", "name": ident, "dbname": "app", "status": "available"}
    status, out, rows = rds_production_ready(ref, settings=settings)
    assert (status, out["name"], rows) == ("modifying", ident, [])
    kept = kept_identifier(ident, "pgrb-4f1c2d3e")
    assert kept == "pgrunbook-kept-app-0123456789ab"
    inst = rds.describe_db_instances(DBInstanceIdentifier=kept)["DBInstances"][0]
    assert inst["DeletionProtection"] is True and inst["BackupRetentionPeriod"] == 7
    assert [g["DBParameterGroupName"] for g in inst["DBParameterGroups"]] == ["default.postgres18"]
    tags = instance_tags({"TagList": rds.list_tags_for_resource(ResourceName=inst["DBInstanceArn"])["TagList"]})
    assert (tags["pgrunbook:keep"], tags["pgrunbook:purpose"], tags["pgrunbook:stack"]) == (
        "candidate", "cutover-candidate", "prod")  # deletable by the teardown until approved
    # the next poll finds it under its kept name (no second rename): available, in sync -> ready, new endpoint
    status, out, rows = rds_production_ready({**ref, "status": "modifying"}, settings=settings)
    assert (status, out["name"], out["host"]) == ("ready", kept, inst["Endpoint"]["Address"])
    assert [(r.name, r.ok) for r in rows] == [("parameter group (production)", True), ("backup retention (PITR)", True),
                                              ("deletion protection", True), ("instance name and tags (kept)", True)]
    assert rds.describe_db_instances()["DBInstances"][0]["DBInstanceIdentifier"] == kept  # one instance
    mark_approved(out, DatabaseUrl.parse("postgresql://u@h/app"))
    tags = instance_tags({"TagList": rds.list_tags_for_resource(ResourceName=inst["DBInstanceArn"])["TagList"]})
    assert tags["pgrunbook:keep"] == "approved"


def test_the_teardown_lifts_an_unapproved_candidates_protection_and_never_touches_an_approved_one(
        moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename to the kept name that RDS accepted after the step asking for it failed: the teardown, given
    the name recorded before, still finds and deletes the candidate; an approved one stays, and so does
    another stack's."""
    from pgrunbook.errors import ProvisionFailed
    from pgrunbook.provision.rds import delete_instance, delete_target

    rds = aws.client("rds")
    _rds_settings(monkeypatch)
    names = {}
    for what, keep, stack in (("rejected", "candidate", "prod"), ("approved", "approved", "prod"),
                              ("theirs", "candidate", "staging")):
        kept = _instance(f"pgrunbook-kept-app-{what}", **{"pgrunbook:stack": stack, "pgrunbook:keep": keep})
        rds.modify_db_instance(DBInstanceIdentifier=kept, DeletionProtection=True, ApplyImmediately=True)
        names[what] = kept
    for what in names:
        delete_target(f"pgrb-4f1c2d3e-app-{what}", prefix="pgrb-4f1c2d3e", stack="prod")
    assert {i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]} == {
        names["approved"], names["theirs"]}
    with pytest.raises(ProvisionFailed, match=r"has deletion protection and is kept \(pgrunbook:keep=approved\)"):
        delete_instance(names["approved"])
    plain = _instance("pgrb-4f1c2d3e-app-drill")  # an ordinary drill target: deleted as before
    delete_target(plain, prefix="pgrb-4f1c2d3e", stack="prod")
    assert plain not in {i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]}


def test_kept_identifiers_are_valid_unique_and_stable() -> None:
    import re

    from pgrunbook.provision.rds import kept_identifier, target_identifier

    valid = re.compile(r"[a-zA-Z](?:[a-zA-Z0-9]|-(?=[a-zA-Z0-9]))*")
    rng = random.Random(1109)
    seen: dict[str, str] = {}
    for _ in range(400):
        prefix = rng.choice(["pgrb-4f1c2d3e", "pgrunbook-drill", "p" + "x" * rng.randint(1, 40)])
        chars = string.ascii_letters + string.digits + "_-. ü"
        database = "".join(rng.choice(chars) for _ in range(rng.randint(1, 70)))
        execution = f"arn:aws:states:eu-west-1:1:execution:Restore:{rng.getrandbits(64):x}"
        ident = target_identifier(database, execution, prefix)
        kept = kept_identifier(ident, prefix)
        assert valid.fullmatch(kept) and len(kept) <= 63 and kept.startswith("pgrunbook-kept-"), (ident, kept)
        assert kept.endswith(ident[-12:])  # the execution's hash: one kept name per execution
        assert kept_identifier(kept, prefix) == kept  # a kept name is its own
        assert seen.setdefault(kept, ident) == ident


# --------------------------------------------------------------------------- the stack's own secret
def test_the_stacks_secret_switches_its_target_keeps_its_other_keys_and_moves_back(moto: None) -> None:
    from pgrunbook.cutover.secret import StackSecretSlot
    from pgrunbook.settings import DatabaseConfig

    sm = aws.client("secretsmanager")
    before = {"engine": "postgres", "username": "backup", "password": "old pw", "host": "old.example.com",
              "port": 5432, "dbname": "app", "dbInstanceIdentifier": "prod-main"}
    arn = sm.create_secret(Name="app-db", SecretString=json.dumps(before))["ARN"]
    entry = DatabaseConfig(name="app", secret_arn=arn, dbname="app", sslmode="require")
    slot = StackSecretSlot(arn, entry)
    assert slot.read().display == "postgresql://backup:***@old.example.com:5432/app"
    token = version_token("execution-1", "cutover", "stack-secret")
    first = slot.switch("postgresql://backup:new%20pw@new.example.com:6432/app?sslmode=require", token)
    again = slot.switch("postgresql://backup:new%20pw@new.example.com:6432/app?sslmode=require", token)
    assert first.new_version_id == again.new_version_id == token and len(slot.stages()) == 2
    now = json.loads(sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"])
    assert now == {**before, "password": "new pw", "host": "new.example.com", "port": 6432}
    assert "new pw" not in json.dumps(first.to_dict()) and first.previous_display.endswith("@old.example.com:5432/app")
    back = slot.restore(first.previous_version_id, expected_current=token)
    assert back.version_id == first.previous_version_id and back.display.endswith("@old.example.com:5432/app")


def test_the_stacks_secret_follows_only_when_the_entry_lets_it(moto: None, monkeypatch: pytest.MonkeyPatch,
                                                              pg_server: LocalServer) -> None:
    """Generated entries (fixed seed): the secret is switched only when the entry names the candidate's
    database, pins no other host or port, and the secret is pgrunbook's alone (not RDS-managed, not the
    application's, no other entry's); the reason otherwise names what stops it."""
    from pgrunbook.cutover import stacksecret

    sm = aws.client("secretsmanager")
    admin = DatabaseUrl.parse(pg_server.url("postgres"))
    candidate = DatabaseUrl.parse(pg_server.url("postgres") + "?sslmode=prefer")
    secret = {**admin.to_secret(), "host": "old.example.com", "port": 5432}
    rng = random.Random(20261111)
    verdicts = []
    for i in range(40):
        name = f"rds!db-{i}" if rng.random() < 0.15 else f"db-{i}"
        arn = sm.create_secret(Name=name, SecretString=json.dumps(secret))["ARN"]
        entry: dict[str, Any] = {"name": "app", "secret_arn": arn}
        dbname = rng.choice([None, "postgres", "other"])  # (without dbname: the entry's name, "app")
        if dbname:
            entry["dbname"] = dbname
        host = rng.choice([None, candidate.host, "old.example.com"])
        port = rng.choice([None, int(candidate.port), 5432])
        entry.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
        shared = rng.random() < 0.2
        entries = [entry] + ([{"name": "billing", "secret_arn": "x", "target_secret_arn": arn}] if shared else [])
        app_secret = arn if rng.random() < 0.1 else "app-url"
        monkeypatch.setenv("PGRUNBOOK_DATABASES", json.dumps(entries))
        monkeypatch.setenv("PGRUNBOOK_SSLMODE", "prefer")
        plan = stacksecret.plan(Settings.from_env(), "app", candidate, target_kind="rds", app_secret_id=app_secret)
        blockers = [why for why, stops in (
            ("always names database", dbname != "postgres"),
            ("pins", host == "old.example.com" or port == 5432),
            ("managed (and rotated) by RDS", name.startswith("rds!")),
            ("also the application's secret", app_secret == arn),
            ("also the secret of billing", shared)) if stops]
        assert plan.follows == (not blockers), (entry, shared, app_secret == arn, plan)
        verdicts.append(plan.follows)
        if blockers:
            assert blockers[0] in plan.why and plan.url is None and plan.row().actual == "NOT switched"
        else:  # the stack's own role logs in to the candidate: its credentials, the candidate's place
            assert plan.url is not None and DatabaseUrl.parse(plan.url).same_target(candidate)
            assert "the stack's own role postgres logs in" in plan.why and str(admin.password) not in plan.why
    assert 3 <= sum(verdicts) <= 37  # both verdicts drawn
