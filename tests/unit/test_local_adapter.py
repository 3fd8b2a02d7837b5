"""The one patch point of pgrunbook.localcloud: moto's LambdaSimpleBackend.invoke replaced by our handlers.

If a moto upgrade changes how Lambda Tasks reach the backend, the handler's result stops coming
through (moto's simple backend only echoes its input): these tests fail loudly then."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from pgrunbook import aws
from pgrunbook.localcloud import MOTO_MINOR, LambdaAdapter, check_moto
from tests.conftest import AWS_TEST_ENV

ARN = "arn:aws:lambda:us-east-1:123456789012:function:Probe"


class Boom(Exception):
    pass


def probe(event: Any, context: Any) -> dict[str, Any]:
    if event.get("fail"):
        raise Boom("it broke: postgresql://u:secret@h/db")
    return {"marker": event["marker"], "handled_by": "probe", "function": context.function_name}


@pytest.fixture()
def sfn(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        aws.reset_clients()
        adapter = LambdaAdapter({"Probe": probe})
        adapter.install()
        try:
            yield aws.client("stepfunctions")
        finally:
            adapter.uninstall()
    aws.reset_clients()


def run(sfn: Any, definition: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    import time

    arn = sfn.create_state_machine(name=f"probe-{uuid.uuid4().hex[:6]}", definition=json.dumps(definition),
                                   roleArn="arn:aws:iam::123456789012:role/x")["stateMachineArn"]
    ex = sfn.start_execution(stateMachineArn=arn, name=uuid.uuid4().hex, input=json.dumps(payload))["executionArn"]
    for _ in range(300):
        desc: dict[str, Any] = sfn.describe_execution(executionArn=ex)
        if desc["status"] != "RUNNING":
            return desc
        time.sleep(0.05)
    raise AssertionError("execution did not finish")


DEFINITION = {"StartAt": "Call", "States": {
    "Call": {"Type": "Task", "Resource": ARN, "TimeoutSeconds": 10,
             "Retry": [{"ErrorEquals": ["Lambda.ServiceException"], "MaxAttempts": 1}],
             "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.error", "Next": "Caught"}], "End": True},
    "Caught": {"Type": "Pass", "End": True}}}


def test_the_handler_result_comes_through(sfn: Any) -> None:
    marker = uuid.uuid4().hex
    desc = run(sfn, DEFINITION, {"marker": marker})
    assert desc["status"] == "SUCCEEDED"
    output = json.loads(desc["output"])
    assert output == {"marker": marker, "handled_by": "probe", "function": ARN}, (
        "the Lambda Task did not return the handler's result: has moto's Lambda backend changed?")


def test_the_sdk_integration_also_reaches_the_handler(sfn: Any) -> None:
    definition = {"StartAt": "Call", "States": {"Call": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "TimeoutSeconds": 10,
        "Parameters": {"FunctionName": ARN, "Payload.$": "$"}, "ResultSelector": {"result.$": "$.Payload"},
        "End": True}}}
    desc = run(sfn, definition, {"marker": "m1"})
    assert json.loads(desc["output"])["result"]["handled_by"] == "probe"


def test_an_exception_becomes_lambdas_error_shape_and_catch_matches_it(sfn: Any) -> None:
    desc = run(sfn, DEFINITION, {"fail": True})
    assert desc["status"] == "SUCCEEDED"  # caught by errorType "Boom"
    error = json.loads(desc["output"])["error"]
    assert error["Error"] == "Boom"
    cause = json.loads(error["Cause"])
    assert cause["errorType"] == "Boom"
    assert cause["errorMessage"] == "it broke: postgresql://u:***@h/db"  # secrets masked


def test_adapter_invoke_contract() -> None:
    adapter = LambdaAdapter({"Probe": probe})
    headers: dict[str, str] = {}
    assert json.loads(adapter.invoke(ARN, None, b'{"marker": "x"}', {}, headers))["marker"] == "x"
    assert headers == {}
    body = json.loads(adapter.invoke(ARN, None, b'{"fail": true}', {}, headers))
    assert headers == {"x-amz-function-error": "Unhandled"}
    assert body["errorType"] == "Boom" and "stackTrace" in body
    headers = {}
    body = json.loads(adapter.invoke("arn:aws:lambda:us-east-1:1:function:Nope", None, b"{}", {}, headers))
    assert headers and body["errorType"] == "ResourceNotFoundException"


def test_moto_minor_is_pinned() -> None:
    import moto

    check_moto()
    assert moto.__version__.startswith(MOTO_MINOR + ".")
