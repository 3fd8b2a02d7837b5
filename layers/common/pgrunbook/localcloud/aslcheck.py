"""The ASL checks shared by `make lint` (scripts/check_asl.py) and the state-machine tests: every state
machine of template.yaml is valid JSON in JSONPath (not JSONata), its `${...}` substitutions are all
defined and all used, every Task has Retry, Catch and a timeout, and every way to a Fail state notifies
someone. Static checks of the files: no moto, no AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .template import ACCOUNT, REGION, SUBSTITUTION, load_template, project_root, render_definition, state_machine_specs


# --------------------------------------------------------------------------- structural checks
def task_states(definition: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, state) for every Task, including those inside Map/Parallel."""
    for name, state in definition.get("States", {}).items():
        if state.get("Type") == "Task":
            yield name, state
        for sub in [state.get("ItemProcessor"), state.get("Iterator"), *(state.get("Branches") or [])]:
            if sub:
                yield from task_states(sub)


def structure_problems(definition: Mapping[str, Any], notify_resources: tuple[str, ...]) -> list[str]:
    """Every Task has Retry and Catch (and a timeout); every way into a top-level Fail state
    passes through a notifying state (a Task whose Resource or FunctionName is in notify_resources)."""
    problems = []
    for name, state in task_states(definition):
        for key in ("Retry", "Catch"):
            if not state.get(key):
                problems.append(f"Task {name} has no {key}")
        if "TimeoutSeconds" not in state and "TimeoutSecondsPath" not in state:
            problems.append(f"Task {name} has no TimeoutSeconds")
    states = definition.get("States", {})

    def notifies(state: Mapping[str, Any]) -> bool:
        if state.get("Type") != "Task":
            return False
        target = [state.get("Resource"), (state.get("Parameters") or {}).get("FunctionName")]
        return any(t in notify_resources for t in target)

    def successors(state: Mapping[str, Any]) -> list[str]:
        nxt = [state.get("Next"), state.get("Default")]
        nxt += [c.get("Next") for c in state.get("Choices", [])]
        nxt += [c.get("Next") for c in state.get("Catch", [])]
        return [n for n in nxt if n]

    # states reachable from StartAt without passing through a notifying state
    seen: set[str] = set()
    todo = [definition["StartAt"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = states[name]
        if notifies(state):
            continue  # notified (if the notification itself fails, the execution-failed alarm remains)
        if state.get("Type") == "Fail":
            problems.append(f"Fail state {name} is reachable without a notification")
        todo += successors(state)
    return problems


def placeholder_values(names: list[str]) -> dict[str, str]:
    """Plausible values for substitutions, so validators that need real ARNs can run offline."""
    values = {}
    for name in names:
        base = name[: -len("Arn")] if name.endswith("Arn") else name
        if name.endswith("FunctionArn"):
            values[name] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{base}"
        elif "Topic" in name:
            values[name] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{base}"
        elif name == "TaskClusterArn":
            values[name] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{base}"
        elif name == "TaskDefinitionArn":
            values[name] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{base}:1"
        elif name.endswith("StateMachineArn"):
            values[name] = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{base}"
        elif name.endswith("Csv"):
            values[name] = "id-1,id-2"
        elif name.endswith("Arn"):
            values[name] = f"arn:aws:iam::{ACCOUNT}:role/{base}"
        else:
            values[name] = base
    return values


def asl_problems(root: Path | None = None, *, structure: bool = True) -> tuple[list[str], dict[str, str]]:
    """Checks every state machine of template.yaml: its DefinitionUri file is valid JSON in JSONPath
    (not JSONata), every ${...} in it is defined in DefinitionSubstitutions and every definition is
    used; with `structure`, every Task has Retry, Catch and a timeout and every way to a Fail state
    notifies. Returns (problems, {file: definition with placeholder values filled in})."""
    root = root or project_root()
    template = load_template(root / "template.yaml")
    problems: list[str] = []
    rendered: dict[str, str] = {}
    for logical_id, spec in state_machine_specs(template).items():
        path = root / spec.definition_uri
        where = f"{logical_id} ({spec.definition_uri})"
        if not path.is_file():
            problems.append(f"{where}: file not found")
            continue
        text = path.read_text()
        try:
            definition = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON: {exc}")
            continue
        if "JSONata" in json.dumps(definition.get("QueryLanguage", "")) or '"QueryLanguage": "JSONata"' in text:
            problems.append(f"{where}: JSONata is not supported locally; keep JSONPath")
        used = set(SUBSTITUTION.findall(text))
        defined = set(spec.substitutions)
        problems += [f"{where}: ${{{n}}} is used but not in DefinitionSubstitutions" for n in sorted(used - defined)]
        problems += [f"{where}: substitution {n} is defined but never used" for n in sorted(defined - used)]
        values = placeholder_values(sorted(used | defined))
        rendered[spec.definition_uri] = render_definition(text, values) if used <= defined else text
        if structure:
            notify = ("arn:aws:states:::sns:publish", values.get("ReportFunctionArn", "-"))
            problems += [f"{where}: {p}" for p in structure_problems(json.loads(rendered[spec.definition_uri]),
                                                                     notify)]
    return problems, rendered
