"""`pgrunbook local run`: execute the real state machines of template.yaml on this machine
(in-process moto, handlers in-process, your PostgreSQL servers), e.g.

    pgrunbook local run --database app=$DATABASE_URL Backup '{"kind": "manual"}' \\
                                                     Restore '{"database": "app", "mode": "drill"}'

Several MACHINE INPUT pairs run in order in the same local cloud (the bucket lives as long as the
command). A cutover waits for approval: `--approvals serve[=PORT]` serves the real approval function on
127.0.0.1 and prints `approval link: <url>` on stderr for each request (open it, decide); `--approve`
approves each request as a person would (GET the link, POST Approve through the same endpoint).
NAME=URL takes every connection form the other commands take (a URL, a socket directory as host,
key=value conninfo), stored as the stack stores it (an RDS-style secret). stdout holds only the
outcome (--json: one JSON object); the functions' logs go to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

from ..errors import UsageError
from ..settings import Settings
from .common import add_json


def register(sub: Any) -> None:
    p = sub.add_parser("local", help="run the AWS state machines locally (moto + in-process handlers)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = p.add_subparsers(dest="local_command", metavar="ACTION")
    lsub.required = True
    run = lsub.add_parser("run", help="run state machines: MACHINE INPUT [MACHINE INPUT ...]")
    run.add_argument("steps", nargs="+", metavar="MACHINE_OR_INPUT",
                     help="pairs of a state machine (Backup, Restore, Migrate or the logical id) and its JSON input")
    run.add_argument("--database", action="append", default=[], metavar="NAME=URL",
                     help="a database the stack manages (default: NAME from $DATABASE_URL's database)")
    run.add_argument("--approve", action="store_true",
                     help="approve cutover requests automatically (GET the link, POST Approve: the same endpoint)")
    run.add_argument("--approvals", metavar="serve[=PORT]",
                     help="serve the approval page on 127.0.0.1:PORT (default: a free port) and wait for a person")
    run.add_argument("--timeout", type=float, default=900.0, help="seconds per execution (default 900)")
    add_json(run)
    run.set_defaults(handler=_run)


def _machine_id(name: str, known: list[str]) -> str:
    for candidate in (name, f"{name}StateMachine", f"{name.capitalize()}StateMachine"):
        if candidate in known:
            return candidate
    names = ", ".join(k.removesuffix("StateMachine") for k in known)
    raise UsageError(f"unknown state machine {name!r}: one of {names}")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from ..dburl import DatabaseUrl
    from ..localcloud import LocalCloud, LocalDatabase, load_template, state_machine_specs

    if len(args.steps) % 2:
        raise UsageError("give MACHINE INPUT pairs, e.g. Backup '{\"kind\": \"manual\"}'")
    known = list(state_machine_specs(load_template()))
    steps: list[tuple[str, Any]] = []
    for i in range(0, len(args.steps), 2):
        try:
            payload = json.loads(args.steps[i + 1])
        except json.JSONDecodeError as exc:
            raise UsageError(f"input of {args.steps[i]} is not JSON: {exc}") from None
        steps.append((_machine_id(args.steps[i], known), payload))
    databases = []
    for spec in args.database:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise UsageError(f"--database wants NAME=URL, not {spec!r}")
        databases.append(LocalDatabase(name, url))
    if not databases and settings.database_url:
        url = settings.database_url
        databases.append(LocalDatabase(DatabaseUrl.parse(url).dbname, url))
    if not databases:
        raise UsageError("no database: pass --database NAME=URL or set DATABASE_URL")

    approvals = _approvals(args)
    results = []
    try:
        cloud = LocalCloud(databases, env=approvals.env if approvals else None)
    except BaseException:
        if approvals:
            approvals.close()
        raise
    out = sys.stdout
    with _functions_output_to_stderr(), cloud, _closing(approvals):
        if approvals:
            approvals.attach(cloud)
        for machine, payload in steps:
            arn = cloud.start(machine, payload)
            ex = cloud.wait(arn, timeout=args.timeout,
                            until=(lambda _ex: approvals.poll(cloud)) if approvals else None)
            results.append({"state_machine": machine, "status": ex.status, "output": ex.output,
                            "error": ex.error, "cause": ex.cause, "states": ex.states_entered()})
            if not args.json:
                line = f"{machine}: {ex.status}" + (f" ({ex.error}: {ex.cause})" if ex.error else "")
                out.write(line + "\n")
                if ex.output is not None:
                    out.write(json.dumps(ex.output, indent=2, default=str) + "\n")
        notes = cloud.notifications()
    if args.json:
        sys.stdout.write(json.dumps({"executions": results,
                                     "notifications": [{"subject": s, "message": m} for s, m in notes]},
                                    default=str) + "\n")
    else:
        for subject, message in notes:
            sys.stdout.write(f"--- notification: {subject}\n{message}\n")
    return 0 if all(r["status"] == "SUCCEEDED" for r in results) else 1


def _approvals(args: argparse.Namespace) -> Any:
    from ..approval.runner import LocalApprovals

    mode = args.approvals
    if mode is None and not args.approve:
        return None
    port = 0
    if mode is not None:
        name, sep, raw = str(mode).partition("=")
        if name != "serve" or (sep and not raw.isdigit()) or (raw and not 0 <= int(raw) <= 65535):
            raise UsageError(f"--approvals wants serve or serve=PORT, not {mode!r}")
        port = int(raw or 0)
    try:
        return LocalApprovals(port, auto_approve=args.approve)
    except OSError as exc:
        raise UsageError(f"--approvals: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None


@contextmanager
def _functions_output_to_stderr() -> Iterator[None]:
    """What the functions print (JSON logs, metric blobs) is progress: on stderr, so stdout holds only
    the outcome (--json: one JSON object). moto's own dump of a failing state is not for people: the
    execution's error and one-line cause are printed instead."""
    moto_log = logging.getLogger("moto")
    level = moto_log.level
    moto_log.setLevel(logging.CRITICAL)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        moto_log.setLevel(level)


@contextmanager
def _closing(approvals: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if approvals is not None:
            approvals.close()
