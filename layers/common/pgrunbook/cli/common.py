"""Helpers shared by the subcommands: output as text or one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..units import human_age as human_age  # the CLI's modules take them from here
from ..units import human_bytes as human_bytes


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress and logs stay on stderr)")


def progress(args: argparse.Namespace, settings: Any) -> Any:
    """The progress reporter of a long command (progress.for_cli): a bar on a terminal, lines on stderr
    every Settings.progress_seconds otherwise, nothing with --quiet; never stdout."""
    from ..progress import for_cli

    return for_cli(quiet=bool(getattr(args, "quiet", False)), every=settings.progress_seconds)


def destination(value: str) -> str:
    """argparse type of every DEST option (--to, --from, --backup-to): an empty folder or an s3:// prefix with an
    empty, '.' or '..' segment is a usage error before anything connects (the store's own rule)."""
    from ..errors import UsageError
    from ..store import open_store

    try:
        open_store(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        sys.stdout.write(text().rstrip("\n") + "\n")
    sys.stdout.flush()


def printable(text: str) -> str:
    """text on one line of a terminal: control and other non-printable characters escaped (\\n, \\x1b, …).
    For names that Postgres allows but a table row cannot show (a database name with a newline);
    --json prints them exactly."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
