"""Logging for the CLI: one readable line per event on stderr, keyword fields as key=value,
secrets masked. Lambda handlers use powertools' Logger instead (JSON, same fields)."""

from __future__ import annotations

import logging
import sys

from .dburl import mask_secrets

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        text = f"pgrunbook: {record.getMessage()}" + (f" {fields}" if fields else "")
        if record.exc_info and record.levelno >= logging.DEBUG and logging.getLogger("pgrunbook").level <= 10:
            text += "\n" + self.formatException(record.exc_info)
        return mask_secrets(text)


def setup_cli_logging(verbose: bool = False, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("pgrunbook")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
