"""`pgrunbook demo`: the runbook run by the real state machines on this machine (pgrunbook.demo).

Exit 0 only when every step succeeded; 1 when one failed (one line on stderr, the functions' logs in
<workdir>/demo.log); 2 for a usage error; 130/143 when SIGINT/SIGTERM stopped it (every server and
process it started is stopped first)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the whole runbook locally through the real state machines",
        description="Start a production PostgreSQL server with the sample application database, a host for "
                    "fresh targets, a local AWS (moto) with the stack's state machines and the sample application; "
                    "run Backup, Restore in cutover mode (verify, staging smoke, approval page, cutover of the "
                    "running app) and Migrate (an expand migration); print each state with its duration and a "
                    "summary. Without --yes (and with a terminal on stdin) it waits for you to open the approval "
                    "link and decide.")
    p.add_argument("--yes", action="store_true",
                   help="approve the cutover as a person would (GET the page, POST Approve) instead of waiting")
    p.add_argument("--keep", action="store_true",
                   help="keep the servers' data folders (stopped) in the work folder")
    p.add_argument("--workdir", default=".demo",
                   help="the demo's folder (default .demo); emptied at the start when it is a previous demo's")
    p.add_argument("--rows", type=int, default=None, metavar="N",
                   help="about N rows in the sample database (default 300000)")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from ..demo import DEFAULT_ROWS, DemoConfig, Narrator, run_demo, sample_sizes

    rows = DEFAULT_ROWS if args.rows is None else args.rows
    sample_sizes(rows)  # a usage error before anything starts
    workdir = Path(args.workdir).expanduser().resolve()
    if len(str(workdir)) > 70:  # the servers' unix sockets live in their data folders (paths < 108 bytes)
        raise UsageError(f"--workdir {workdir} is too long a path for the servers' sockets: use a shorter one")
    if not args.verbose:  # the demo narrates on stdout; the core's progress lines stay out of it
        logging.getLogger("pgrunbook").setLevel(logging.WARNING)
    approve = "auto" if args.yes or not sys.stdin.isatty() else "wait"
    narrator = Narrator()
    if approve == "auto" and not args.yes:
        narrator.say("stdin is not a terminal: the demo approves as a person would (GET the page, POST Approve)")
    run_demo(DemoConfig(workdir=workdir, rows=rows, keep=args.keep), approve=approve, narrator=narrator)
    return 0
