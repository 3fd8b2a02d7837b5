"""template.yaml as CloudFormation will see it: the SAM transform applied by aws-sam-translator
(the same expansion `sam deploy` asks CloudFormation for), intrinsics resolved for one set of
parameter values, and a small IAM evaluator (Allow/Deny, wildcards, the condition operators the
template uses) to ask "may role R do action A on resource X?"."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
from functools import cache
from typing import Any

from pgrunbook.localcloud import load_template

ACCOUNT, REGION, STACK = "111122223333", "eu-west-1", "pgrunbook-prod"
STACK_UUID = "4f1c2d3e-aaaa-bbbb-cccc-1234567890ab"
STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/{STACK_UUID}"
TARGET_PREFIX = f"pgrb-{STACK_UUID.split('-')[0]}"
BUCKET = "pgrunbook-prod-backupbucket-abc"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1111-key"
REQUIRED = {"DatabasesJson": "[]",
            "DatabaseSecretArns": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:app-db-AbCd",
            "SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1"}


def raw_template() -> dict[str, Any]:
    return dict(json.loads(json.dumps(load_template())))


@cache
def _expanded_json() -> str:
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    t = raw_template()
    for lid, res in t["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = f"s3://artifacts/{lid}.zip"
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://artifacts/{lid}.zip"
        elif res["Type"] == "AWS::Serverless::StateMachine" and isinstance(props.get("DefinitionUri"), str):
            props["DefinitionUri"] = {"Bucket": "artifacts", "Key": props["DefinitionUri"]}
    t.get("Globals", {}).get("Function", {}).pop("CodeUri", None)

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return json.dumps(transform(t, {"AWS::Region": REGION}, NoManagedPolicies()))


def expanded() -> dict[str, Any]:
    """The CloudFormation template after the SAM transform (a fresh copy)."""
    return dict(json.loads(_expanded_json()))


class Resolver:
    """Resolves intrinsics for given parameter values; resource Refs/GetAtts become readable names."""

    def __init__(self, template: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.t = template
        values = {name: p.get("Default") for name, p in template.get("Parameters", {}).items()}
        values.update(REQUIRED)
        values.update(params or {})
        for name, p in template.get("Parameters", {}).items():
            if str(p.get("Type", "")).startswith(("List<", "CommaDelimitedList")) and isinstance(values[name], str):
                values[name] = values[name].split(",")
        self.params = values
        self.pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                       "AWS::StackName": STACK, "AWS::StackId": STACK_ID, "AWS::URLSuffix": "amazonaws.com",
                       "AWS::NoValue": None}
        self.conditions = {name: self.eval(c) for name, c in template.get("Conditions", {}).items()}

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        res = self.t["Resources"][name]
        return {"AWS::S3::Bucket": BUCKET, "AWS::KMS::Key": KEY_ARN}.get(res["Type"], f"ref:{name}")

    def getatt(self, name: str, attr: str) -> Any:
        res = self.t["Resources"][name]
        if res["Type"] == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:aws:s3:::{BUCKET}"
        if res["Type"] == "AWS::KMS::Key" and attr == "Arn":
            return KEY_ARN
        return f"{attr.lower()}:{name}"

    def eval(self, v: Any) -> Any:
        if isinstance(v, list):
            return [x for x in (self.eval(i) for i in v) if x is not None]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::GetAtt":
                name, attr = a if isinstance(a, list) else a.split(".", 1)
                return self.getatt(name, attr)
            if k == "Fn::If":
                return self.eval(a[1] if self.conditions[a[0]] else a[2])
            if k == "Fn::Equals":
                return self.eval(a[0]) == self.eval(a[1])
            if k == "Fn::Not":
                return not self.eval(a[0])
            if k == "Fn::And":
                return all(self.eval(x) for x in a)
            if k == "Fn::Or":
                return any(self.eval(x) for x in a)
            if k == "Condition":
                return self.conditions[a]
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self.eval(a[1]))
            if k == "Fn::Split":
                return str(self.eval(a[1])).split(a[0])
            if k == "Fn::Select":
                return self.eval(a[1])[int(self.eval(a[0]))]
            if k == "Fn::Sub":
                text, local = (a, {}) if isinstance(a, str) else (a[0], {n: self.eval(x) for n, x in a[1].items()})
                import re

                def sub(m: re.Match[str]) -> str:
                    name = m.group(1)
                    if name in local:
                        return str(local[name])
                    if "." in name:
                        return str(self.getatt(*name.split(".", 1)))
                    return str(self.ref(name))
                return re.sub(r"\$\{([A-Za-z0-9_:.]+)\}", sub, text)
        return {k: self.eval(x) for k, x in v.items() if self.eval(x) is not None}

    def resources(self) -> dict[str, dict[str, Any]]:
        """Resources that exist for these parameters, intrinsics resolved."""
        out = {}
        for lid, res in self.t["Resources"].items():
            if "Condition" in res and not self.conditions[res["Condition"]]:
                continue
            out[lid] = {**res, "Properties": self.eval(copy.deepcopy(res.get("Properties", {})))}
        return out


# --------------------------------------------------------------------------- IAM
def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for pol in role["Properties"].get("Policies", []):
        found += pol["PolicyDocument"]["Statement"]
    return found


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def _match(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(cond: dict[str, Any], ctx: dict[str, str]) -> bool:
    for op, pairs in cond.items():
        for key, expected in pairs.items():
            expected = [str(e) for e in _as_list(expected)]
            actual = ctx.get(key)
            base = op.replace("ForAnyValue:", "")
            if_exists = base.endswith("IfExists")
            base = base.removesuffix("IfExists")
            if actual is None:
                if if_exists:
                    continue
                return False
            if base == "StringEquals" and actual not in expected:
                return False
            if base == "StringNotEquals" and actual in expected:
                return False
            if base == "StringLike" and not any(_match(e, actual) for e in expected):
                return False
            if base == "Bool" and actual.lower() not in [e.lower() for e in expected]:
                return False
    return True


def allowed(stmts: list[dict[str, Any]], action: str, resource: str, ctx: dict[str, str] | None = None) -> bool:
    """IAM's verdict for identity policies alone: an explicit Deny wins, then any Allow."""
    ctx = ctx or {}

    def applies(st: dict[str, Any]) -> bool:
        if not any(_match(a.lower(), action.lower()) for a in _as_list(st.get("Action", []))):
            return False
        if "Resource" in st and not any(_match(r, resource) for r in _as_list(st["Resource"])):
            return False
        if "NotResource" in st and any(_match(r, resource) for r in _as_list(st["NotResource"])):
            return False
        return _condition_holds(st.get("Condition", {}), ctx)

    if any(st["Effect"] == "Deny" and applies(st) for st in stmts):
        return False
    return any(st["Effect"] == "Allow" and applies(st) for st in stmts)
