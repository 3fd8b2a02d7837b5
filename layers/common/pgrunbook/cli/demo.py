"""`pgrunbook demo`: the pipeline on this machine (local PostgreSQL, a folder, a local S3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the pipeline locally on a sample database",
        description="Start a local PostgreSQL server, create a sample application database, back it up to a "
                    "folder and to a local S3, verify the backups and print where they are and what they hold.")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its servers and backups (default .demo)")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from ..demo import run_demo

    if not args.verbose:  # the demo narrates on stdout; keep the core's progress lines out of it
        logging.getLogger("pgrunbook").setLevel(logging.WARNING)
    run_demo(Path(args.workdir).resolve())
    return 0
