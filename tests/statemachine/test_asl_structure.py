"""The ASL files themselves: substitutions, Retry/Catch/timeouts on every Task, notified failures,
JSONPath only; and that the checks catch what they claim to."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgrunbook.localcloud import asl_problems, load_template, state_machine_specs, structure_problems, task_states
from tests.conftest import project_root

NOTIFY = ("arn:aws:states:::sns:publish", "arn:aws:lambda:us-east-1:123456789012:function:Report")


def test_repository_state_machines_pass_every_check() -> None:
    problems, rendered = asl_problems()
    assert problems == []
    assert {"statemachines/backup.asl.json", "statemachines/restore.asl.json"} <= set(rendered)


def test_every_task_has_retry_with_backoff_and_catch() -> None:
    for spec in state_machine_specs(load_template()).values():
        definition = json.loads((project_root() / spec.definition_uri).read_text())
        for name, state in task_states(definition):
            assert state["Retry"] and all(r.get("BackoffRate", 1) >= 1 for r in state["Retry"]), name
            assert any("States.ALL" in c["ErrorEquals"] for c in state["Catch"]), name


def test_backup_map_isolates_failures_and_bounds_concurrency() -> None:
    definition = json.loads((project_root() / "statemachines/backup.asl.json").read_text())
    each = definition["States"]["BackupEachDatabase"]
    assert each["Type"] == "Map" and each["MaxConcurrencyPath"] == "$.plan.max_concurrency"
    inner = each["ItemProcessor"]["States"]
    for name, state in task_states(each["ItemProcessor"]):
        assert state["Catch"][0]["Next"] == "DatabaseFailed", name
    assert inner["DatabaseFailed"]["Type"] == "Pass" and inner["DatabaseFailed"]["End"] is True


def test_large_databases_take_the_fargate_path_with_the_same_result_shape() -> None:
    for file, runner in (("backup.asl.json", "$.runner"), ("restore.asl.json", "$.plan.runner")):
        text = (project_root() / "statemachines" / file).read_text()
        assert "arn:aws:states:::ecs:runTask.sync" in text
        assert f'"Variable": "{runner}"' in text and "task-result" in text


def broken_copy(tmp_path: Path, edit: str) -> Path:
    root = tmp_path / "repo"
    (root / "statemachines").mkdir(parents=True)
    shutil.copy(project_root() / "template.yaml", root / "template.yaml")
    for f in (project_root() / "statemachines").glob("*.json"):
        shutil.copy(f, root / "statemachines" / f.name)
    path = root / "statemachines" / "backup.asl.json"
    definition = json.loads(path.read_text())
    states = definition["States"]
    if edit == "undefined-substitution":
        states["Plan"]["Resource"] = "${NoSuchFunctionArn}"
    elif edit == "unused-substitution":
        text = json.dumps(definition).replace("${ReportFunctionArn}", "arn:aws:lambda:us-east-1:1:function:x")
        path.write_text(text)
        return root
    elif edit == "no-retry":
        del states["Summarize"]["Retry"]
    elif edit == "silent-fail":
        states["Plan"]["Catch"][0]["Next"] = "Failed"
    elif edit == "invalid-json":
        path.write_text(path.read_text()[:-10])
        return root
    path.write_text(json.dumps(definition))
    return root


@pytest.mark.parametrize("edit, message", [
    ("undefined-substitution", "${NoSuchFunctionArn} is used but not in DefinitionSubstitutions"),
    ("unused-substitution", "substitution ReportFunctionArn is defined but never used"),
    ("no-retry", "Task Summarize has no Retry"),
    ("silent-fail", "Fail state Failed is reachable without a notification"),
    ("invalid-json", "not valid JSON"),
])
def test_checks_catch_broken_definitions(tmp_path: Path, edit: str, message: str) -> None:
    problems, _ = asl_problems(broken_copy(tmp_path, edit))
    assert any(message in p for p in problems), problems


def test_structure_rules_on_a_minimal_definition() -> None:
    ok: dict[str, Any] = {"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:1:function:x", "TimeoutSeconds": 5,
              "Retry": [{"ErrorEquals": ["States.ALL"]}], "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "N"}],
              "End": True},
        "N": {"Type": "Task", "Resource": NOTIFY[0], "TimeoutSeconds": 5, "Retry": [{"ErrorEquals": ["X"]}],
              "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "F"}], "Next": "F"},
        "F": {"Type": "Fail"}}}
    assert structure_problems(ok, NOTIFY) == []
    ok["States"]["T"]["Catch"][0]["Next"] = "F"
    assert structure_problems(ok, NOTIFY) == ["Fail state F is reachable without a notification"]


def test_lint_script_runs_statelint_when_available() -> None:
    statelint = project_root() / ".venv-tools" / "bin" / "statelint"
    if not statelint.exists():
        pytest.skip("statelint is installed by `make lint` into .venv-tools")
    res = subprocess.run([sys.executable, "scripts/check_asl.py", "--statelint", str(statelint)],
                         cwd=project_root(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "state machines OK" in res.stdout
