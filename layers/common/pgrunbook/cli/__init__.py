"""`pgrunbook` command line: thin shells over the core. Exit codes for every command:
0 done, 1 the operation failed, 2 usage error, 128 + the signal's number when SIGTERM (143) or
SIGINT (130) stopped it.

A stop signal raises `Interrupted` in the main thread (pgtools.stop_signals): the command stops its
pg tools (and their workers), removes its partial output (archive, multipart upload, work folder),
marks a restore target FAILED (interrupted), and prints one line. A second signal during that
cleanup is ignored; SIGKILL still ends pgrunbook at once, and the kernel and the guardian process
then stop the pg tools and remove the partial output (see pgtools).

`main` reads the Settings once (settings.Settings.from_env: a bad variable is a usage error naming it)
and passes them to the subcommand: `handler(args, settings)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..dburl import mask_secrets
from ..errors import Interrupted, PgrunbookError, error_line
from ..logs import setup_cli_logging

# Each module registers its subcommands with `register(subparsers)` and imports the core
# it needs inside its handlers, so `pgrunbook --help` stays fast.
COMMAND_MODULES = ["backup", "restore", "drill", "migrate", "local", "approvals", "cutover", "demo", "status"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pgrunbook",
        description="Postgres runbook automation: consistent backups to S3 or a folder, guarded restores "
                    "into fresh databases, exact verification, restore drills and Prisma-compatible migrations.",
        epilog="Connection URLs default to $DATABASE_URL (source) and $NEW_DATABASE_URL (restore target). "
               "A local S3 is reached through AWS_ENDPOINT_URL. Exit codes: 0 done, 1 failed, 2 usage error, "
               "143/130 stopped by SIGTERM/SIGINT (after stopping its pg tools and removing partial output).",
    )
    parser.add_argument("--version", action="version", version=f"pgrunbook {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(verbose=args.verbose, quiet=args.quiet)
    from ..pgtools import stop_signals
    from ..settings import Settings

    try:
        settings = Settings.from_env()
        with stop_signals():
            return int(args.handler(args, settings) or 0)
    except PgrunbookError as exc:
        print(f"pgrunbook: error: {error_line(exc)}", file=sys.stderr)  # noqa: T201
        return exc.exit_code
    except Interrupted as exc:
        detail = exc.detail or "its pg tools were stopped and its partial output removed"
        print(f"pgrunbook: error: interrupted by {exc.signal_name}: {mask_secrets(detail)}",  # noqa: T201
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pgrunbook: interrupted", file=sys.stderr)  # noqa: T201
        return 130
    except Exception as exc:  # a bug or an unmapped failure: still one line, and -v shows the trace
        if args.verbose:
            raise
        print(f"pgrunbook: error: {type(exc).__name__}: {error_line(exc)} (run with -v for details)",  # noqa: T201
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
