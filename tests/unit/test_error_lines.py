"""lambda_support's one place for errors that reach people: the class and ONE line, secrets masked,
never a stack trace, whatever shape the failure arrives in."""

from __future__ import annotations

import json
import logging
import random
import traceback
from typing import Any

import pytest

from pgrunbook.errors import ONE_LINE_LIMIT, ConnectionFailed, PgrunbookError, error_line, one_line
from pgrunbook.lambda_support import (
    TransientError,
    describe_failure,
    error_payload,
    one_line_errors,
)

SEED = 8_0910


def trace_text(exc: BaseException) -> str:
    try:
        raise exc
    except BaseException as caught:
        return "".join(traceback.format_exception(caught))


def test_error_line_keeps_operator_messages_whole_and_cuts_unexpected_ones_to_the_first_line() -> None:
    assert error_line(ConnectionFailed("cannot connect to h: refused\n\tIs the server running?")) == \
        "cannot connect to h: refused Is the server running?"
    assert error_line(ValueError("first\nsecond")) == "first"
    assert error_line(KeyError("x")) == "'x'"
    assert error_line(RuntimeError()) == "no message (see the function's log)"
    assert error_line(RuntimeError("at postgresql://u:pw@h/db and password=pw2")) == \
        "at postgresql://u:***@h/db and password=***"


def test_one_line_drops_python_tracebacks_but_keeps_their_exception_line() -> None:
    text = "restore failed:\n" + trace_text(ValueError("the real reason"))
    assert one_line(text) == "restore failed: ValueError: the real reason"
    chained = trace_text(RuntimeError("outer")) + "\nDuring handling of the above exception, another exception " \
        "occurred:\n\n" + trace_text(KeyError("inner"))
    assert one_line(chained) == "RuntimeError: outer KeyError: 'inner'"
    assert len(one_line("x" * 5000)) == ONE_LINE_LIMIT and one_line("x" * 5000).endswith("\u2026")


def lambda_body(exc: BaseException) -> str:
    return json.dumps({"errorMessage": str(exc), "errorType": type(exc).__name__, "requestId": "r-1",
                       "stackTrace": traceback.format_tb(exc.__traceback__) or ['  File "/var/task/app.py", line 9\n']})


@pytest.mark.parametrize(("error", "expected"), [
    ({"Error": "NoBackup", "Cause": lambda_body(PgrunbookError("no backup yet"))}, ("NoBackup", "no backup yet")),
    ({"Error": "ValueError", "Cause": lambda_body(ValueError("bad\nworse"))}, ("ValueError", "bad")),
    ({"Error": "TargetFailed", "Cause": "the new target did not become available"},
     ("TargetFailed", "the new target did not become available")),
    ({"Error": "States.Timeout"}, ("States.Timeout", "no details")),
    ({"Error": "States.TaskFailed", "Cause": json.dumps({
        "StoppedReason": "Essential container in task exited", "Containers": [
            {"Name": "pgrunbook", "ExitCode": 137, "Reason": "OutOfMemoryError: Container killed"}]})},
     ("States.TaskFailed", "task stopped: Essential container in task exited; container pgrunbook: exit code 137 "
                           "(OutOfMemoryError: Container killed)")),
    ({"Error": "Sandbox.Timedout", "Cause": json.dumps({"errorMessage": "Task timed out after 900.00 seconds",
                                                        "errorType": "Sandbox.Timedout"})},
     ("Sandbox.Timedout", "Task timed out after 900.00 seconds")),
    (None, ("Error", "no details")),
])
def test_describe_failure_of_every_shape_a_catch_gives(error: Any, expected: tuple[str, str]) -> None:
    assert describe_failure(error) == expected


def test_generated_failures_always_come_out_as_one_masked_line() -> None:
    rng = random.Random(SEED)
    pieces = ["connection refused", "\n", "\r\n", "\t", "  ", "postgresql://app:S3CRET@db:5432/app",
              " password=S3CRET", " password='S3 CRET'", " sslpassword=S3CRET", "\npassword = S3CRET",
              "Traceback (most recent call last):\n",
              '  File "/var/task/app.py", line 12, in handler\n', "    raise X\n", "ValueError: boom", "é", "{",
              '"quoted"']
    kinds: list[type[BaseException]] = [PgrunbookError, ConnectionFailed, ValueError, OSError, RuntimeError]
    for _ in range(300):
        message = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        exc = rng.choice(kinds)(message)
        shapes = [error_line(exc), describe_failure({"Error": type(exc).__name__, "Cause": lambda_body(exc)})[1],
                  describe_failure({"Error": "X", "Cause": message})[1], error_payload(exc)["errorMessage"]]
        for line in shapes:
            assert "\n" not in line and "\r" not in line and "S3CRET" not in line and "S3 CRET" not in line, line
            assert 'File "' not in line and "Traceback" not in line, line
            assert 0 < len(line) <= ONE_LINE_LIMIT


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_one_line_errors_keeps_the_class_name_and_logs_the_masked_trace() -> None:
    logger = logging.getLogger("test-one-line-errors")
    recorder = Recorder()
    logger.addHandler(recorder)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["kind"] == "transient":
            raise TransientError("throttled")
        raise ConnectionFailed("cannot connect to postgresql://u:S3CRET@h/db\n\tIs the server running?")

    wrapped = one_line_errors(handler, logger)
    with pytest.raises(TransientError) as same:  # already one line: the very same exception goes out
        wrapped({"kind": "transient"}, None)
    assert str(same.value) == "throttled"
    with pytest.raises(PgrunbookError) as info:
        wrapped({"kind": "connection"}, None)
    assert type(info.value).__name__ == "ConnectionFailed"  # Lambda's errorType: Retry/Catch still match
    assert str(info.value) == "cannot connect to postgresql://u:***@h/db Is the server running?"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    logged = recorder.records[-1]
    assert logged.levelno == logging.ERROR and "ConnectionFailed: cannot connect" in logged.getMessage()
    trace = logged.__dict__["traceback"]
    assert "Traceback (most recent call last)" in trace and "S3CRET" not in trace and "raise ConnectionFailed" in trace
    logger.removeHandler(recorder)
