"""Parts of the cutover without an application: the secret switch (plain and JSON, retried, moved back,
refused), the roll webhook's signature, the candidate URL built from the application's (generated,
fixed seed), the data window of an unreachable source, and the RDS production-ready step (moto RDS)."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.cutover.roll import sign, signature_ok
from pgrunbook.cutover.secret import SecretSlot, rebase_url, version_token
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.errors import CutoverError, UsageError
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


def test_rds_candidate_is_made_production_ready_kept_and_protected(moto: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pgrunbook.cutover.prepare import kept_identifier, rds_production_ready

    rds = aws.client("rds")
    rds.create_db_instance(DBInstanceIdentifier="pgrb-4f1c2d3e-app-0123456789ab", Engine="postgres",
                           EngineVersion="18.1", DBInstanceClass="db.t4g.medium", AllocatedStorage=20,
                           MasterUsername="pgrunbook", MasterUserPassword="x" * 16, BackupRetentionPeriod=0,
                           DeletionProtection=False)
    monkeypatch.setenv("PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS", "7")
    settings = Settings.from_env()
    ref = {"kind": "rds", "name": "pgrb-4f1c2d3e-app-0123456789ab", "dbname": "app", "status": "available"}
    status, out = rds_production_ready(ref, source_name="app", execution="arn:exec:1", settings=settings)
    assert status == "modifying" and out["name"] == ref["name"]
    kept = kept_identifier("app", "arn:exec:1")
    assert kept.startswith("pgrunbook-kept-app-")
    inst = rds.describe_db_instances(DBInstanceIdentifier=kept)["DBInstances"][0]
    assert inst["DeletionProtection"] is True and inst["BackupRetentionPeriod"] == 7
    assert [g["DBParameterGroupName"] for g in inst["DBParameterGroups"]] == ["default.postgres18"]
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=inst["DBInstanceArn"])["TagList"]}
    assert tags["pgrunbook:keep"] == "cutover" and tags["pgrunbook:purpose"] == "cutover-candidate"
    # the next poll finds it under its kept name (no second rename): available, in sync -> ready, new endpoint
    status, out = rds_production_ready({**ref, "status": "modifying"}, source_name="app", execution="arn:exec:1",
                                       settings=settings)
    assert (status, out["name"], out["host"]) == ("ready", kept, inst["Endpoint"]["Address"])
    assert rds.describe_db_instances()["DBInstances"][0]["DBInstanceIdentifier"] == kept  # one instance
