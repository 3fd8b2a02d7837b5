"""The local cloud: the real state machines run on this machine.

`template.yaml` is read with cfn-lint's CloudFormation-aware YAML loader; each state machine's
`DefinitionSubstitutions` is resolved (a small evaluator for Ref / GetAtt / If / Join / Sub
against local values); the real `statemachines/*.asl.json` is created in an in-process moto
(Step Functions executes real ASL there) and Lambda Task states call the handlers of
`functions/<name>/app.py` in-process through ONE adapter (`LambdaAdapter`) that replaces
moto's LambdaSimpleBackend.invoke and returns Lambda's error shape, so Retry/Catch behave as
on AWS. Written for moto 5.2 (`MOTO_MINOR`); `check_moto()` refuses another minor version.

Used by tests (tests/statemachine/) and by `make demo`; needs the dev dependencies (moto,
cfn-lint), imported lazily so the Lambda layer never loads them.

A shell like the CLI: it reads its own Settings once (the pg tools' folder) and gives the functions their
environment as the template does (settings.set_environment), restored when the cloud is closed; each
function then reads its Settings from it at every invocation, as on Lambda.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocalRunnerError, UsageError
from ..lambda_support import LocalContext, error_payload
from ..settings import Settings, set_environment
from .template import (
    ACCOUNT,
    REGION,
    Handler,
    Intrinsics,
    LazyHandler,
    function_ids,
    handler_path,
    load_template,
    project_root,
    render_definition,
    state_machine_specs,
)

MOTO_MINOR = "5.2"


def check_moto() -> None:
    import moto

    if not str(moto.__version__).startswith(MOTO_MINOR + "."):
        raise LocalRunnerError(f"pgrunbook.localcloud was written for moto {MOTO_MINOR}.x "
                               f"(its Lambda backend is patched); found {moto.__version__}: "
                               "re-check LambdaAdapter and pin the new minor")


# --------------------------------------------------------------------------- Lambda adapter
class LambdaAdapter:
    """Replaces moto's LambdaSimpleBackend.invoke (which only echoes) by a call of our handler.

    Success: the handler's JSON result. Unhandled exception: Lambda's error shape, i.e. header
    `x-amz-function-error: Unhandled` and body {errorType, errorMessage, stackTrace}, which moto's
    Step Functions turns into the state's Error (= errorType) for Retry/Catch matching."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)  # function name -> handler
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._original: Any = None

    def _handler_for(self, function_name: str) -> Handler | None:
        name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        return self.handlers.get(name)

    def invoke(self, function_name: str, qualifier: str | None, body: Any, headers: Any,
               response_headers: dict[str, str]) -> bytes:
        handler = self._handler_for(function_name)
        raw = body.decode() if isinstance(body, bytes) else (body or "{}")
        event = json.loads(raw) if raw else {}
        with self._lock:
            self.calls.append((function_name, event))
        if handler is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "ResourceNotFoundException",
                               "errorMessage": f"no local handler for {function_name}"}).encode()
        try:
            result = handler(event, LocalContext(function_name=function_name))
        except Exception as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(error_payload(exc)).encode()
        return json.dumps(result, default=str).encode()

    def install(self) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend

        check_moto()
        self._original = LambdaSimpleBackend.__dict__["invoke"]
        adapter = self

        def invoke(backend: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
                   response_headers: Any) -> bytes:
            return adapter.invoke(function_name, qualifier, body, headers, response_headers)

        setattr(LambdaSimpleBackend, "invoke", invoke)  # noqa: B010 - the one patch point of moto

    def uninstall(self) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend

        if self._original is not None:
            setattr(LambdaSimpleBackend, "invoke", self._original)  # noqa: B010
            self._original = None


# --------------------------------------------------------------------------- the local cloud
@dataclass
class Execution:
    arn: str
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def states_entered(self) -> list[str]:
        return states_entered(self.history)

    def task_outputs(self, state: str) -> list[Any]:
        """Outputs of every exit of `state` (parsed JSON)."""
        return task_outputs(self.history, state)


def states_entered(history: list[dict[str, Any]]) -> list[str]:
    """The names of the states an execution entered, in order (from its history events)."""
    return [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]


def task_outputs(history: list[dict[str, Any]], state: str) -> list[Any]:
    """Outputs of every exit of `state` (parsed JSON), from an execution's history events."""
    return [json.loads(e["stateExitedEventDetails"]["output"]) for e in history
            if e.get("stateExitedEventDetails", {}).get("name") == state]


@dataclass
class LocalDatabase:
    name: str
    url: str  # a libpq URL with password; stored in a (moto) secret, never in the environment


class LocalCloud:
    """An in-process moto with the stack's bucket, key, topic, secrets and state machines, and the
    handlers wired in. Use as a context manager; `run(name, input)` executes and waits."""

    def __init__(self, databases: list[LocalDatabase], *, root: Path | None = None,
                 env: Mapping[str, str] | None = None, parameters: Mapping[str, Any] | None = None) -> None:
        self.root = root or project_root()
        self.template = load_template(self.root / "template.yaml")
        self.databases = databases
        self.extra_env = dict(env or {})
        self.parameters = dict(parameters or {})
        self.bucket = f"pgrunbook-local-{uuid.uuid4().hex[:8]}"
        self.suffix = uuid.uuid4().hex[:6]
        self.state_machines: dict[str, str] = {}
        self._mock: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.adapter: LambdaAdapter | None = None
        self.settings = Settings.from_env()  # this shell's own (read once): where the pg tools are
        self.topic_arn = ""
        self.key_arn = ""

    # -- setup
    def __enter__(self) -> LocalCloud:
        from moto import mock_aws

        from .. import aws

        check_moto()
        self._set_env({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": None,
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_DEV": "false"})
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True},
                                      "lambda": {"use_docker": False}})
        self._mock.start()
        aws.reset_clients()
        try:
            self._create_resources()
            self.adapter = LambdaAdapter(self._handlers())
            self.adapter.install()
            # state machines are created on first use (moto parses each definition: ~0.5 s apiece)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from .. import aws

        if self.adapter is not None:
            self.adapter.uninstall()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        aws.reset_clients()
        set_environment(self._saved_env)
        self._saved_env = {}

    def _set_env(self, values: Mapping[str, str | None]) -> None:
        for key, value in set_environment(values).items():
            self._saved_env.setdefault(key, value)

    def _create_resources(self) -> None:
        from .. import aws
        from ..dburl import DatabaseUrl

        self.key_arn = aws.client("kms").create_key(Description="pgrunbook local")["KeyMetadata"]["Arn"]
        aws.client("s3").create_bucket(Bucket=self.bucket)
        self.topic_arn = aws.client("sns").create_topic(Name="pgrunbook-local")["TopicArn"]
        self.secret_arns: dict[str, str] = {}
        entries = []
        for db in self.databases:
            # any form libpq takes (a socket directory as host, key=value conninfo), stored the way the
            # stack stores it: an RDS-style secret plus the PGRUNBOOK_DATABASES entry
            url = DatabaseUrl.parse(db.url, what=f"URL of database {db.name!r}")
            try:
                secret = url.to_secret(self.settings.libpq)
            except UsageError as exc:
                raise UsageError(f"database {db.name!r}: {exc}") from None
            arn = aws.client("secretsmanager").create_secret(
                Name=f"pgrunbook-local/{db.name}-{uuid.uuid4().hex[:6]}", SecretString=json.dumps(secret))["ARN"]
            self.secret_arns[db.name] = arn
            entry: dict[str, Any] = {"name": db.name, "secret_arn": arn, "dbname": url.dbname}
            if url.params.get("sslmode"):
                entry["sslmode"] = url.params["sslmode"]
            entries.append(entry)
        fn_arn = {f"{fid}.Arn": self.function_arn(fid) for fid in function_ids(self.template)}
        refs: dict[str, Any] = {
            "BackupBucket": self.bucket, "NotificationTopic": self.topic_arn, "Key": self.key_arn,
            "DatabasesJson": json.dumps(entries), "DatabaseSecretArns": list(self.secret_arns.values()),
            "SubnetIds": ["subnet-local1", "subnet-local2"], "SecurityGroupIds": ["sg-local"],
            "TaskDefinition": "none", "RestoreTunedParameterGroup": "pgrunbook-restore-tuned",
            "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::StackName": "local",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/local/{uuid.uuid4()}",
            **{fid: fid for fid in function_ids(self.template)},
            **{sid: self.state_machine_arn(sid) for sid in state_machine_specs(self.template)},
        }
        for name, param in self.template.get("Parameters", {}).items():
            refs.setdefault(name, self.parameters.get(name, param.get("Default", "")))
        refs.update(self.parameters)
        attrs = {**fn_arn, "Key.Arn": self.key_arn, "BackupBucket.Arn": f"arn:aws:s3:::{self.bucket}",
                 "TaskCluster.Arn": "none",
                 **{f"{sid}.Name": f"{sid}-{self.suffix}" for sid in state_machine_specs(self.template)}}
        from ..approval.resources import create_local  # the approval table, token key and signing secret

        approval_refs, approval_attrs = create_local(REGION)
        refs.update(approval_refs)
        attrs.update(approval_attrs)
        # the template's conditions on the local parameter values; never Fargate (no containers here)
        conditions: dict[str, Any] = {**self.template.get("Conditions", {}), "HasFargate": False}
        self.intrinsics = Intrinsics(refs, attrs, conditions)
        # the functions' environment, as the template sets it (Globals), plus local overrides
        env = self.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        values = {k: str(self.intrinsics.eval(v)) for k, v in env.items()}
        for fid in function_ids(self.template):  # and each function's own variables (one process: merged)
            own = self.template["Resources"][fid].get("Properties", {}).get("Environment", {}).get("Variables", {})
            values.update({k: str(self.intrinsics.eval(v)) for k, v in own.items()})
        values.update({"PGRUNBOOK_SSLMODE": "prefer", "PGRUNBOOK_POLL_SECONDS": "0", "PGRUNBOOK_FARGATE": "off",
                       "PGRUNBOOK_PG_BIN": self.settings.pg_bin or "", "PGRUNBOOK_WORK_DIR": ""})
        values.update(self.extra_env)
        self._set_env({k: (v or None) for k, v in values.items()})

    def state_machine_arn(self, logical_id: str) -> str:
        return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{logical_id}-{self.suffix}"

    def function_arn(self, logical_id: str) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"

    def _handlers(self) -> dict[str, Handler]:
        return {fid: LazyHandler(handler_path(fid, self.root)) for fid in function_ids(self.template)}

    def create_state_machine(self, logical_id: str) -> str:
        from .. import aws

        specs = state_machine_specs(self.template)
        spec = specs[logical_id]
        values = {k: self.intrinsics.eval(v) for k, v in spec.substitutions.items()}
        definition = render_definition((self.root / spec.definition_uri).read_text(), values)
        for other in specs:  # a machine that starts another (Drill -> Restore): create that one first
            if other != logical_id and other not in self.state_machines \
                    and self.state_machine_arn(other) in definition:
                self.create_state_machine(other)
        arn = aws.client("stepfunctions").create_state_machine(
            name=f"{logical_id}-{self.suffix}", definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/pgrunbook-local")["stateMachineArn"]
        self.state_machines[logical_id] = str(arn)
        return str(arn)

    # -- running
    def start(self, logical_id: str, payload: Any) -> str:
        from .. import aws

        name = f"local-{uuid.uuid4().hex[:12]}"  # moto needs a name: unnamed runs collide
        if logical_id not in self.state_machines:
            self.create_state_machine(logical_id)
        resp = aws.client("stepfunctions").start_execution(
            stateMachineArn=self.state_machines[logical_id], name=name, input=json.dumps(payload))
        return str(resp["executionArn"])

    def wait(self, execution_arn: str, timeout: float = 120.0,
             until: Callable[[Execution], bool] | None = None) -> Execution:
        from .. import aws

        sfn = aws.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while True:
            desc = sfn.describe_execution(executionArn=execution_arn)
            if desc["status"] != "RUNNING":
                return self._execution(desc)
            # `until` sees the status only (no history: fetching it on every poll is slow)
            if until is not None and until(Execution(arn=execution_arn, status=str(desc["status"]))):
                return self._execution(desc)
            if time.monotonic() > deadline:
                raise LocalRunnerError(f"local execution still running after {timeout:.0f}s: {execution_arn}")
            time.sleep(0.2)

    def _execution(self, desc: Mapping[str, Any]) -> Execution:
        from .. import aws

        sfn = aws.client("stepfunctions")
        history: list[dict[str, Any]] = []
        token = None
        while True:
            kwargs = {"executionArn": desc["executionArn"], "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = sfn.get_execution_history(**kwargs)
            history += page["events"]
            token = page.get("nextToken")
            if not token:
                break
        output = json.loads(desc["output"]) if desc.get("output") else None
        return Execution(arn=str(desc["executionArn"]), status=str(desc["status"]), output=output,
                         error=desc.get("error"), cause=desc.get("cause"), history=history)

    def run(self, logical_id: str, payload: Any, timeout: float = 120.0) -> Execution:
        return self.wait(self.start(logical_id, payload), timeout)

    def notifications(self) -> list[tuple[str | None, str]]:
        """(subject, message) of everything published to the stack's topic."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT][REGION].topics[self.topic_arn]
        return [(subject, message) for (_id, message, subject, _attrs, _group) in topic.sent_notifications]

    def published(self) -> list[tuple[str | None, str, dict[str, str]]]:
        """(subject, message, {attribute: string value}) of everything published to the stack's topic."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT][REGION].topics[self.topic_arn]
        return [(subject, message, {k: str(v.get("Value", v.get("StringValue", ""))) for k, v in (attrs or {}).items()})
                for (_id, message, subject, attrs, _group) in topic.sent_notifications]

    def send_task_success(self, token: str, output: Any) -> None:
        from .. import aws

        aws.client("stepfunctions").send_task_success(taskToken=token, output=json.dumps(output))


@contextmanager
def local_cloud(databases: list[LocalDatabase], **kwargs: Any) -> Iterator[LocalCloud]:
    with LocalCloud(databases, **kwargs) as cloud:
        yield cloud
