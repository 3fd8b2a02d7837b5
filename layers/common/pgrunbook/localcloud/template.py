"""template.yaml read as the local cloud and the ASL checks need it: the CloudFormation-aware YAML loader
(cfn-lint, imported lazily: a dev dependency), the state machines' specs, each Lambda function's handler
file (functions/<name>/app.py, imported on first call), and a small evaluator of the intrinsics (Ref /
GetAtt / If / Join / Sub) that resolves `DefinitionSubstitutions` against local values."""

from __future__ import annotations

import importlib.util
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LocalRunnerError

ACCOUNT = "123456789012"
REGION = "us-east-1"
SUBSTITUTION = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
Handler = Callable[[Any, Any], Any]


def project_root() -> Path:
    """The repository root (template.yaml), found upward from this file or the working directory."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in [start, *start.parents]:
            if (parent / "template.yaml").is_file() and (parent / "statemachines").is_dir():
                return parent
    raise LocalRunnerError("template.yaml not found (run from the repository)")


# --------------------------------------------------------------------------- template
def load_template(path: Path | None = None) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(path or project_root() / "template.yaml"))
    return dict(template)


@dataclass(frozen=True)
class StateMachineSpec:
    logical_id: str
    definition_uri: str
    substitutions: dict[str, Any]


def state_machine_specs(template: Mapping[str, Any]) -> dict[str, StateMachineSpec]:
    found = {}
    for logical_id, res in template.get("Resources", {}).items():
        if res.get("Type") == "AWS::Serverless::StateMachine":
            props = res.get("Properties", {})
            found[logical_id] = StateMachineSpec(logical_id, str(props["DefinitionUri"]),
                                                 dict(props.get("DefinitionSubstitutions") or {}))
    return found


def function_ids(template: Mapping[str, Any]) -> list[str]:
    return [k for k, r in template.get("Resources", {}).items() if r.get("Type") == "AWS::Serverless::Function"]


def handler_path(logical_id: str, root: Path | None = None) -> Path:
    """Convention: <Name>Function -> functions/<name>/app.py (see functions/Makefile)."""
    if not logical_id.endswith("Function"):
        raise LocalRunnerError(f"{logical_id}: function logical ids end in 'Function'")
    return (root or project_root()) / "functions" / logical_id[: -len("Function")].lower() / "app.py"


def load_handler(path: Path) -> Handler:
    """Import functions/<name>/app.py under a unique module name and return its lambda_handler."""
    name = f"pgrunbook_fn_{path.parent.name}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LocalRunnerError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Handler = module.lambda_handler
    return handler


class LazyHandler:
    """A handler imported on its first call (a run imports only the functions it invokes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handler: Handler | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Any, context: Any) -> Any:
        with self._lock:
            if self._handler is None:
                self._handler = load_handler(self.path)
        return self._handler(event, context)


class Intrinsics:
    """Evaluates the few CloudFormation intrinsics our substitutions and environment use
    (Ref, GetAtt, If, Join, Split, Select, Sub)."""

    def __init__(self, refs: Mapping[str, Any], attrs: Mapping[str, Any], conditions: Mapping[str, Any]) -> None:
        self.refs, self.attrs, self.conditions = refs, attrs, conditions

    def condition(self, name: str) -> bool:
        """A condition: a fixed bool, or the template's expression (Fn::Equals/Not/And/Or/Condition)."""
        if name not in self.conditions:
            raise LocalRunnerError(f"local: no condition {name}")
        value = self.conditions[name]
        return value if isinstance(value, bool) else bool(self.eval(value))

    def eval(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.eval(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        if len(value) != 1:
            return {k: self.eval(v) for k, v in value.items()}
        (key, arg), = value.items()
        if key == "Ref":
            if arg not in self.refs:
                raise LocalRunnerError(f"local: no value for Ref {arg}")
            return self.refs[arg]
        if key == "Fn::GetAtt":
            parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
            name = ".".join(parts)
            if name not in self.attrs:
                raise LocalRunnerError(f"local: no value for GetAtt {name}")
            return self.attrs[name]
        if key == "Fn::If":
            cond, yes, no = arg
            return self.eval(yes if self.condition(cond) else no)
        if key == "Fn::Equals":
            left, right = self.eval(arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.eval(arg[0])
        if key == "Fn::And":
            return all(self.eval(a) for a in arg)
        if key == "Fn::Or":
            return any(self.eval(a) for a in arg)
        if key == "Condition":
            return self.condition(str(arg))
        if key == "Fn::Join":
            sep, items = arg
            items = self.eval(items)
            return sep.join(str(i) for i in items)
        if key == "Fn::Split":
            sep, text = arg
            return str(self.eval(text)).split(sep)
        if key == "Fn::Select":
            index, items = arg
            return self.eval(items)[int(self.eval(index))]
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1]))

            def sub(m: re.Match[str]) -> str:
                name = m.group(1)
                if name in local:
                    return str(local[name])
                if name in self.attrs:
                    return str(self.attrs[name])
                return str(self.refs[name])
            return re.sub(r"\$\{([A-Za-z0-9_:.]+)\}", sub, text)
        return {k: self.eval(v) for k, v in value.items()}


def render_definition(text: str, values: Mapping[str, Any]) -> str:
    """Fill ${Name} like CloudFormation's DefinitionSubstitutions; a missing one is an error."""
    missing = sorted({m for m in SUBSTITUTION.findall(text) if m not in values})
    if missing:
        raise LocalRunnerError(f"substitutions not defined: {', '.join(missing)}")
    return SUBSTITUTION.sub(lambda m: str(values[m.group(1)]), text)
