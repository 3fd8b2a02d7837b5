"""Settings: one reader of every variable, one meaning per variable, one parser whose errors name the
variable on one line, and names that template.yaml, the docs and the tests agree on."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pgrunbook.cli import main
from pgrunbook.errors import ConfigError, SettingsInvalid, UsageError
from pgrunbook.localcloud import load_template
from pgrunbook.settings import RETIRED, VARIABLES, RdsSettings, Settings
from tests.conftest import project_root

ROOT = project_root()


class Recording(Mapping[str, str]):
    """An environment that remembers which names were asked for."""

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self.data = dict(data or {})
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return self.data.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_every_listed_variable_is_read_and_nothing_else() -> None:
    env = Recording({"PGRUNBOOK_STAGING_SECRET_ID": "s", "PGRUNBOOK_STAGING_URL": "http://staging",
                     "PGRUNBOOK_STAGING_ECS_SERVICE": "c/s"})  # the staging names are read once staging is set
    Settings.from_env(env)
    assert env.asked - set(RETIRED) == set(VARIABLES)


def template_variables() -> dict[str, set[str]]:
    """Every environment variable template.yaml gives a function or the Fargate task -> where."""
    template = load_template()
    found: dict[str, set[str]] = {}
    for name in template["Globals"]["Function"]["Environment"]["Variables"]:
        found.setdefault(name, set()).add("Globals")
    for lid, res in template["Resources"].items():
        props = res.get("Properties") or {}
        for name in (props.get("Environment") or {}).get("Variables") or {}:
            found.setdefault(name, set()).add(lid)
        for container in props.get("ContainerDefinitions") or []:
            for item in container.get("Environment") or []:
                found.setdefault(str(item["Name"]), set()).add(lid)
    return found


def test_the_template_sets_only_variables_the_settings_read() -> None:
    names = template_variables()
    # (POWERTOOLS_* configure the powertools library; TMPDIR, Python's tempfile in the Fargate task)
    unknown = {n: sorted(w) for n, w in names.items() if n not in VARIABLES and n.startswith("PGRUNBOOK_")}
    assert unknown == {}
    assert not set(names) & set(RETIRED)
    rds = {n for n in names if n.startswith("PGRUNBOOK_RDS_")}
    assert {"PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP", "PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP",
            "PGRUNBOOK_RDS_SECURITY_GROUP_IDS", "PGRUNBOOK_RDS_IDENTIFIER_PREFIX",
            "PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS"} <= rds
    # one owner: every PGRUNBOOK_RDS_* variable belongs to RdsSettings
    assert all(VARIABLES[n].startswith("RdsSettings.") for n in VARIABLES if n.startswith("PGRUNBOOK_RDS_"))


def test_docs_code_and_tests_name_only_variables_that_are_read() -> None:
    """Every PGRUNBOOK_RDS_* (and every other PGRUNBOOK_* name) in the docs, the README, the template, the code
    and the tests is one the settings read (settings.py also names the retired ones, to refuse them)."""
    pattern = re.compile(r"\bPGRUNBOOK_[A-Z0-9_]*[A-Z0-9]\b")
    allowed = set(VARIABLES) | {"PGRUNBOOK_RDS"}  # the prefix itself, as in "PGRUNBOOK_RDS_*"
    files = [*ROOT.glob("docs/*.md"), ROOT / "README.md", ROOT / "template.yaml", ROOT / "Makefile",
             *ROOT.glob("tests/**/*.py"), *ROOT.glob("layers/common/pgrunbook/**/*.py"), *ROOT.glob("functions/*/*.py"),
             *ROOT.glob("statemachines/*.json")]
    stray = {}
    for path in files:
        if path.name in ("test_settings.py", "settings.py"):
            continue
        for name in set(pattern.findall(path.read_text())) - allowed:
            if name in RETIRED:
                stray[name] = f"{path.relative_to(ROOT)} names a retired variable"
            else:
                stray[name] = str(path.relative_to(ROOT))
    assert stray == {}


@pytest.mark.parametrize("name", sorted(RETIRED))
def test_a_retired_variable_is_refused_and_its_replacement_named(name: str) -> None:
    with pytest.raises(SettingsInvalid) as info:
        Settings.from_env({name: "x"})
    message = str(info.value)
    assert message.startswith(f"{name} is no longer read") and "\n" not in message
    assert re.search(r"PGRUNBOOK_[A-Z_]+", message.split(":", 1)[1])  # what to set instead


# numbers and flags: every one, with values of every shape (fixed seed)
INTEGERS = ["PGRUNBOOK_COMPRESS_LEVEL", "PGRUNBOOK_DUMP_JOBS", "PGRUNBOOK_MULTIPART_CHUNK_MB",
            "PGRUNBOOK_LOCK_WAIT_TIMEOUT", "PGRUNBOOK_POLL_SECONDS", "PGRUNBOOK_MAX_POLLS",
            "PGRUNBOOK_APPROVAL_TIMEOUT_SECONDS", "PGRUNBOOK_BACKUP_MAX_CONCURRENCY", "PGRUNBOOK_RDS_STORAGE_GB",
            "PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS", "PGRUNBOOK_RDS_WAIT_MINUTES", "PGRUNBOOK_RETIRE_AFTER_DAYS"]
NUMBERS = ["PGRUNBOOK_PROGRESS_SECONDS", "PGRUNBOOK_DEADLINE_MARGIN_SECONDS", "PGRUNBOOK_SIZING_SAFETY",
           "PGRUNBOOK_SOAK_SECONDS", "PGRUNBOOK_READY_TIMEOUT", "PGRUNBOOK_ROLL_TIMEOUT", "PGRUNBOOK_SESSIONS_GRACE",
           "PGRUNBOOK_CUTOVER_POLL", "PGRUNBOOK_FREEZE_GRACE", "PGRUNBOOK_FREEZE_MAX_SECONDS"]
FLAGS = ["PGRUNBOOK_FARGATE", "PGRUNBOOK_RDS_TARGETS", "PGRUNBOOK_CUTOVER_STRICT"]
JSON = {"PGRUNBOOK_DATABASES": list, "PGRUNBOOK_RUNNER_OVERRIDES": dict, "PGRUNBOOK_DEFAULT_TARGET": dict}


def test_every_bad_value_is_one_line_naming_its_variable() -> None:
    rng = random.Random(909)
    junk = ["lots", "1.5.2", "ten", "0x", "--", "1e", "nan", "inf", "-inf", " 4 2 ", "½", "1_0x", "yes please"]
    checked = 0
    for name in INTEGERS + NUMBERS + FLAGS:
        for value in rng.sample(junk, 6):
            try:
                Settings.from_env({name: value})
            except SettingsInvalid as exc:
                message = str(exc)
                assert message.startswith(name) and "\n" not in message and repr(value.strip()) in message
                checked += 1
            else:  # a value the parser takes must be one a person means as that type
                assert name in INTEGERS + NUMBERS and value.strip().replace("_", "").isdigit(), (name, value)
    assert checked > 100
    for name, kind in JSON.items():
        for value in ("{not json", "[1, 2", json.dumps("text"), json.dumps(42)):
            with pytest.raises(SettingsInvalid, match=f"^{name}") as info:
                Settings.from_env({name: value})
            assert "\n" not in str(info.value)
        other: object = {} if kind is list else []
        with pytest.raises(SettingsInvalid, match=f"^{name} must be a JSON"):
            Settings.from_env({name: json.dumps(other)})


def test_good_values_mean_one_thing() -> None:
    s = Settings.from_env({
        "PGRUNBOOK_RDS_RESTORE_PARAMETER_GROUP": "tuned", "PGRUNBOOK_RDS_PRODUCTION_PARAMETER_GROUP": "prod",
        "PGRUNBOOK_RDS_SECURITY_GROUP_IDS": " sg-1, ,sg-2 ", "PGRUNBOOK_RDS_IDENTIFIER_PREFIX": "pgrb-1",
        "PGRUNBOOK_RDS_BACKUP_RETENTION_DAYS": "14", "PGRUNBOOK_RDS_TARGETS": "off", "PGRUNBOOK_SSLMODE": "prefer",
        "PGRUNBOOK_DATABASES": json.dumps([{"name": "app", "secret_arn": "arn:1"},
                                           {"name": "b", "secret_arn": "arn:2", "sslmode": "verify-full"}]),
        "PGRUNBOOK_RUNNER_OVERRIDES": '{"app": "ecs"}', "PGRUNBOOK_FARGATE": "off", "PGRUNBOOK_SIZING_SAFETY": "2.5"})
    assert (s.rds.restore_parameter_group, s.rds.production_parameter_group) == ("tuned", "prod")
    assert s.rds.security_group_ids == ("sg-1", "sg-2") and s.rds.identifier_prefix == "pgrb-1"
    assert s.rds.backup_retention_days == 14 and s.rds.enabled is False
    assert [db.sslmode for db in s.stack.databases] == ["prefer", "verify-full"]  # PGRUNBOOK_SSLMODE is the default
    assert s.stack.runner_overrides == {"app": "ecs"} and (s.sizing.safety, s.sizing.fargate) == (2.5, False)
    assert s.database("app").secret_arn == "arn:1"
    with pytest.raises(UsageError, match=r"unknown database 'x' \(configured: app, b\)"):
        s.database("x")
    assert Settings.from_env({"BACKUP_DEST": "s3://b", "BACKUP_KMS_KEY_ID": "k"}).backup_dest == "s3://b"
    assert Settings.from_env({"PGRUNBOOK_BACKUP_DEST": "s3://a", "BACKUP_DEST": "s3://b"}).backup_dest == "s3://a"
    assert RdsSettings.from_env({}) == RdsSettings() == Settings().rds


def test_settings_are_frozen_and_keep_secrets_out_of_repr() -> None:
    s = Settings.from_env({"DATABASE_URL": "postgresql://u:hunter2@h/d", "SMOKE_PASSWORD": "hunter3",
                           "SMOKE_SIGNIN_BODY": '{"password": "hunter4"}', "ROLL_HOOK_KEY": "hunter5"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.backup_dest = "x"  # type: ignore[misc]
    text = repr(s)
    assert not any(secret in text for secret in ("hunter2", "hunter3", "hunter4", "hunter5"))
    assert s.variable("ROLL_HOOK_KEY") == "hunter5" and s.variable("NOPE") is None
    assert s.smoke.body() == {"password": "hunter4"}


def test_required_values_are_named_at_start_up() -> None:
    with pytest.raises(SettingsInvalid, match=r"^PGRUNBOOK_RESULT_KEY, PGRUNBOOK_EVENT are required but not set$"):
        Settings.from_env({"PGRUNBOOK_OPERATION": "backup"}).require("PGRUNBOOK_RESULT_KEY", "PGRUNBOOK_EVENT",
                                                                     "PGRUNBOOK_OPERATION")
    with pytest.raises(SettingsInvalid, match="approvals are not configured: PGRUNBOOK_APPROVAL_TOKEN_KEY, "
                                              "PGRUNBOOK_APPROVAL_SIGNING_SECRET not set"):
        Settings.from_env({"PGRUNBOOK_APPROVAL_TABLE": "t"}).approval.required()
    with pytest.raises(SettingsInvalid, match="SMOKE_SIGNIN_BODY"):
        Settings().smoke.body()
    assert isinstance(SettingsInvalid("x"), ConfigError) and SettingsInvalid("x").exit_code == 2


def test_the_cli_reads_them_once_and_a_bad_one_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PGRUNBOOK_LOCK_WAIT_TIMEOUT", "soon")
    assert main(["list", "--from", str(ROOT / "no-such-folder")]) == 2
    err = capsys.readouterr().err
    assert err == "pgrunbook: error: PGRUNBOOK_LOCK_WAIT_TIMEOUT must be an integer, got 'soon'\n"
    monkeypatch.delenv("PGRUNBOOK_LOCK_WAIT_TIMEOUT")
    monkeypatch.setenv("PGRUNBOOK_TARGET_PREFIX", "pgrb-1")
    assert main(["list", "--from", str(ROOT / "no-such-folder")]) == 2
    assert "PGRUNBOOK_TARGET_PREFIX is no longer read: use PGRUNBOOK_RDS_IDENTIFIER_PREFIX" in capsys.readouterr().err


def test_the_fargate_task_names_what_it_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    from pgrunbook import fargate_task as task
    from tests.fixtures.restore_helpers import reset_cli_logging

    try:
        assert task.main({"PGRUNBOOK_OPERATION": "backup"}) == 1
        assert "PGRUNBOOK_RESULT_KEY is required but not set" in capsys.readouterr().err
        assert task.main({"PGRUNBOOK_RESULT_KEY": "k", "PGRUNBOOK_POLL_SECONDS": "often"}) == 1
        assert "PGRUNBOOK_POLL_SECONDS must be an integer, got 'often'" in capsys.readouterr().err
    finally:
        reset_cli_logging()
