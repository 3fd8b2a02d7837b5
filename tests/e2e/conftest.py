"""The whole runbook end to end: pgrunbook.demo's DemoStack (two real PostgreSQL servers, the stack's real
state machines on moto with the handlers in-process, the sample application reading its secret, the approval
page on 127.0.0.1). Faults are injected at the Lambda boundary (a handler wrapped for one test) or in the
world (a damaged object in the bucket, a revoked grant), never by replacing pgrunbook's logic."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pgrunbook.demo import DemoConfig, DemoStack, MachineRun

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

SMALL = 600  # rows: enough for every table to have some, small enough to keep the suite quick


@contextmanager
def workdir() -> Iterator[Path]:
    """A work folder outside pytest's basetemp: a concurrent pytest run resets /tmp/pytest-of-<user> to mode 0700,
    and the servers (running as an unprivileged user when the tests run as root) must reach their data folders."""
    path = Path(tempfile.mkdtemp(prefix="pgrunbook-e2e-"))
    try:
        yield path / "w"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def make_stack(**kwargs: Any) -> Iterator[DemoStack]:
    with workdir() as folder, DemoStack(DemoConfig(workdir=folder, rows=SMALL, staging_rows=100, soak_seconds=0.5,
                                                   **kwargs)) as stack:
        yield stack


@contextmanager
def wrapped(stack: DemoStack, function: str, wrapper: Callable[[Any, Any, Any], Any]) -> Iterator[None]:
    """Calls of `function` go through wrapper(real_handler, event, context) for the block."""
    handlers = stack.cloud.adapter.handlers
    real = handlers[function]
    handlers[function] = lambda event, context: wrapper(real, event, context)
    try:
        yield
    finally:
        handlers[function] = real


def until_approval(stack: DemoStack, run: MachineRun) -> dict[str, Any]:
    stack.follow(run, until=lambda r: bool(stack.approval_requests(r.arn)), timeout=180)
    assert run.status == "RUNNING", (run.error, run.cause)
    (facts,) = stack.approval_requests(run.arn)
    return facts


def new_notifications(stack: DemoStack, seen: int) -> list[tuple[str | None, str]]:
    return stack.notifications()[seen:]

